/*
 * chunk.c - chunks, units and the allocation API (pcpu_alloc/pcpu_free).
 *
 * A chunk is one reservation (one mapping) of nr_ids + 1 units at a
 * constant stride (the unit size), so CPU c's copy of an area at offset o
 * lives at base + c * stride + o and the shared slot's at
 * base + nr_ids * stride + o:
 *
 *     base                base+stride          base+nr_ids*stride
 *     | unit 0 (CPU 0)    | unit 1 (CPU 1) |...| shared slot |
 *     |  [a][b]   [c]     |  [a][b]   [c]  |...| [a][b] [c]  |
 *
 * Every unit has the same layout, described once by the chunk's area map
 * (areamap.c).  Metadata is out of band: struct pcpu_chunk and its maps
 * live in malloc'd memory, never inside units.  Address space is reserved
 * with MAP_NORESERVE and pages are backed by the kernel when first
 * written, so a CPU that never runs the program costs nothing but address
 * space.
 *
 * Invariants (docs/DESIGN.md, checked by pcpu_validate):
 *   - every free word of every unit of a used index reads zero: frees zero
 *     the area on used indexes (only words that are not zero already, so a
 *     page no one wrote stays unbacked);
 *   - a chunk sits in slot fls(map.contig_hint), and contig_hint is never
 *     below the largest free run;
 *   - chunks[] is sorted by base and holds every chunk once;
 *   - nr_alloc of a chunk equals its live allocation starts.
 *
 * Locking: alloc_lock guards chunks[], the slots, the maps and the
 * counters.  Reserving a new chunk calls the OS without the lock.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "chunk.h"

pthread_mutex_t _pcpu_alloc_lock = PTHREAD_MUTEX_INITIALIZER;
struct pcpu_chunk **_pcpu_chunks;
size_t _pcpu_nr_chunks;
struct pcpu_alloc_counters _pcpu_counters;

static size_t chunks_cap;
static struct pcpu_chunk *slots[PCPU_NR_SLOTS];

static int fls32(uint32_t x)
{
	return x ? 32 - __builtin_clz(x) : 0;
}

int _pcpu_chunk_slot(const struct pcpu_chunk *c)
{
	return fls32(c->map.contig_hint);
}

static void slot_unlink(struct pcpu_chunk *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		slots[c->slot] = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->next = c->prev = NULL;
}

/* Appends @c to the tail of the slot its contig hint says. */
static void slot_insert(struct pcpu_chunk *c)
{
	struct pcpu_chunk **pp = &slots[_pcpu_chunk_slot(c)], *last = NULL;
	c->slot = _pcpu_chunk_slot(c);
	while (*pp) {
		last = *pp;
		pp = &(*pp)->next;
	}
	*pp = c;
	c->prev = last;
	c->next = NULL;
}

static void slot_update(struct pcpu_chunk *c)
{
	if (c->slot != _pcpu_chunk_slot(c)) {
		slot_unlink(c);
		slot_insert(c);
	}
}

struct pcpu_chunk *_pcpu_chunk_lookup(const void *p)
{
	size_t lo = 0, hi = _pcpu_nr_chunks;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		struct pcpu_chunk *c = _pcpu_chunks[mid];
		if ((const char *)p < c->base)
			hi = mid;
		else if ((const char *)p >= c->base + _pcpu_g.unit_size)
			lo = mid + 1;
		else
			return c;
	}
	return NULL;
}

/*
 * chunk_create - reserve and set up a new chunk.
 * Context: alloc_lock not held (calls the OS).
 * Returns: the chunk, or NULL with errno ENOMEM and nothing leaked.
 */
static struct pcpu_chunk *chunk_create(void)
{
	size_t unit = _pcpu_g.unit_size, page = _pcpu_g.page_size;
	size_t len = (size_t)(_pcpu_g.nr_ids + 1) * unit;
	size_t pages = unit / page;
	struct pcpu_chunk *c = calloc(1, sizeof(*c));

	if (!c)
		goto fail;
	c->page_touched = calloc((pages + 63) / 64, sizeof(uint64_t));
	if (!c->page_touched)
		goto fail;
	if (_pcpu_areamap_init(&c->map, (uint32_t)(unit / 4),
			       (uint32_t)(page / 4)))
		goto fail;
	c->base = _pcpu_os_reserve(len);
	if (!c->base)
		goto fail;
	c->len = len;
	return c;
fail:
	if (c) {
		_pcpu_areamap_destroy(&c->map);
		free(c->page_touched);
		free(c);
	}
	errno = ENOMEM;
	return NULL;
}

/*
 * chunk_install - add a new chunk to chunks[] and its slot.
 * Context: alloc_lock held.  Returns 0 or -ENOMEM (chunk not added).
 */
static int chunk_install(struct pcpu_chunk *c)
{
	if (_pcpu_nr_chunks == chunks_cap) {
		size_t cap = chunks_cap ? chunks_cap * 2 : 16;
		struct pcpu_chunk **n =
			realloc(_pcpu_chunks, cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		_pcpu_chunks = n;
		chunks_cap = cap;
	}
	size_t i = _pcpu_nr_chunks;
	while (i > 0 && _pcpu_chunks[i - 1]->base > c->base) {
		_pcpu_chunks[i] = _pcpu_chunks[i - 1];
		i--;
	}
	_pcpu_chunks[i] = c;
	_pcpu_nr_chunks++;
	slot_insert(c);
	_pcpu_counters.nr_chunks++;
	if (_pcpu_counters.nr_chunks > _pcpu_counters.nr_max_chunks)
		_pcpu_counters.nr_max_chunks = _pcpu_counters.nr_chunks;
	return 0;
}

static void chunk_discard_new(struct pcpu_chunk *c)
{
	_pcpu_os_release(c->base, c->len);
	_pcpu_areamap_destroy(&c->map);
	free(c->page_touched);
	free(c);
}

/* Marks the pages [off, off + bits) of the unit layout as touched. */
static void mark_touched(struct pcpu_chunk *c, uint32_t off, uint32_t bits)
{
	uint32_t words_per_page = (uint32_t)(_pcpu_g.page_size / 4);
	for (uint32_t pg = off / words_per_page;
	     pg <= (off + bits - 1) / words_per_page; pg++)
		c->page_touched[pg / 64] |= (uint64_t)1 << (pg % 64);
}

/* First fit over the slots from the smallest that can hold @bits.
 * Context: alloc_lock held.  Returns the address or NULL. */
static void *alloc_from_slots(uint32_t bits, uint32_t align_bits)
{
	for (int s = fls32(bits); s < PCPU_NR_SLOTS; s++) {
		struct pcpu_chunk *c = slots[s], *next;
		for (; c; c = next) {
			next = c->next;
			if (c->nofit_bits && bits >= c->nofit_bits &&
			    align_bits >= c->nofit_align)
				continue;
			long off = _pcpu_areamap_alloc(&c->map, bits, align_bits);
			if (off < 0) {
				c->nofit_bits = bits;
				c->nofit_align = align_bits;
				slot_update(c); /* the hint is exact now */
				continue;
			}
			slot_update(c);
			mark_touched(c, (uint32_t)off, bits);
			c->nr_alloc++;
			return c->base + (size_t)off * 4;
		}
	}
	return NULL;
}

static void count_alloc(size_t bytes)
{
	struct pcpu_alloc_counters *k = &_pcpu_counters;
	k->nr_alloc++;
	k->nr_cur_alloc++;
	k->live_bytes += bytes;
	if (k->nr_cur_alloc > k->nr_max_alloc)
		k->nr_max_alloc = k->nr_cur_alloc;
	if (!k->min_alloc_size || bytes < k->min_alloc_size)
		k->min_alloc_size = bytes;
	if (bytes > k->max_alloc_size)
		k->max_alloc_size = bytes;
}

static void debug_validate(void)
{
#if PCPU_DEBUG >= 2
	if (_pcpu_validate_locked())
		_pcpu_fatal("allocator invariant broken (see above)");
#endif
}

/* Validates the arguments; returns the word count or 0 with errno set. */
static uint32_t alloc_args(size_t size, size_t *align)
{
	_pcpu_ensure_init();
	if (size == 0 || size > _pcpu_g.unit_size) {
		errno = EINVAL;
		return 0;
	}
	if (*align == 0) {
		size_t a = 1;
		while (a < size && a < 8)
			a <<= 1;
		*align = a;
	}
	if ((*align & (*align - 1)) || *align > _pcpu_g.page_size) {
		errno = EINVAL;
		return 0;
	}
	return (uint32_t)((size + 3) / 4);
}

void *pcpu_alloc(size_t size, size_t align)
{
	uint32_t bits = alloc_args(size, &align);
	if (!bits)
		return NULL;
	uint32_t align_bits = align < 4 ? 1 : (uint32_t)(align / 4);

	pthread_mutex_lock(&_pcpu_alloc_lock);
	for (;;) {
		void *p = alloc_from_slots(bits, align_bits);
		if (p) {
			count_alloc((size_t)bits * 4);
			debug_validate();
			pthread_mutex_unlock(&_pcpu_alloc_lock);
			return p;
		}
		pthread_mutex_unlock(&_pcpu_alloc_lock);
		struct pcpu_chunk *c = chunk_create();
		if (!c)
			return NULL; /* errno ENOMEM */
		pthread_mutex_lock(&_pcpu_alloc_lock);
		if (chunk_install(c)) {
			pthread_mutex_unlock(&_pcpu_alloc_lock);
			chunk_discard_new(c);
			errno = ENOMEM;
			return NULL;
		}
	}
}

static bool test_bit(const uint64_t *map, uint32_t bit)
{
	return (map[bit / 64] >> (bit % 64)) & 1;
}

/*
 * area_lookup - the chunk and word offset of a live area.
 * Context: alloc_lock held.  Returns the chunk, or NULL and sets *why to
 * the kind of misuse.
 */
static struct pcpu_chunk *area_lookup(const void *p, uint32_t *off,
				      const char **why)
{
	struct pcpu_chunk *c = _pcpu_chunk_lookup(p);
	*why = "invalid free";
	if (!c)
		return NULL;
	size_t byte = (size_t)((const char *)p - c->base);
	if (byte % 4)
		return NULL;
	*off = (uint32_t)(byte / 4);
	if (_pcpu_areamap_is_start(&c->map, *off))
		return c;
	if (test_bit(c->map.bound_map, *off) &&
	    !test_bit(c->map.alloc_map, *off))
		*why = "double free";
	return NULL;
}

static bool mem_is_zero(const void *p, size_t n)
{
	const uint64_t *w = p;
	for (size_t i = 0; i < n / 8; i++)
		if (w[i])
			return false;
	const unsigned char *b = (const unsigned char *)p + n / 8 * 8;
	for (size_t i = 0; i < n % 8; i++)
		if (b[i])
			return false;
	return true;
}

/* Zeroes an area on every used index, writing only where it is not zero
 * already (so pages no one wrote stay unbacked). */
static void area_zero(struct pcpu_chunk *c, uint32_t off, uint32_t bits)
{
	struct pcpu_cpuset used;
	_pcpu_used_snapshot(&used);
	for (int idx = _pcpu_cpuset_next(&used, 0);
	     idx >= 0 && idx <= _pcpu_g.nr_ids;
	     idx = _pcpu_cpuset_next(&used, idx + 1)) {
		char *q = c->base + (size_t)idx * _pcpu_g.unit_size +
			  (size_t)off * 4;
		if (!mem_is_zero(q, (size_t)bits * 4))
			memset(q, 0, (size_t)bits * 4);
	}
}

void pcpu_free(void *p)
{
	uint32_t off = 0;
	const char *why;

	if (!p)
		return;
	_pcpu_ensure_init();
	pthread_mutex_lock(&_pcpu_alloc_lock);
	struct pcpu_chunk *c = area_lookup(p, &off, &why);
	if (!c) {
		pthread_mutex_unlock(&_pcpu_alloc_lock);
		_pcpu_report(why, p);
		return;
	}
	uint32_t bits = _pcpu_areamap_size(&c->map, off);
	area_zero(c, off, bits);
	_pcpu_areamap_free(&c->map, off);
	c->nofit_bits = 0;
	slot_update(c);
	c->nr_alloc--;
	_pcpu_counters.nr_dealloc++;
	_pcpu_counters.nr_cur_alloc--;
	_pcpu_counters.live_bytes -= (size_t)bits * 4;
	debug_validate();
	pthread_mutex_unlock(&_pcpu_alloc_lock);
}

size_t pcpu_alloc_size(const void *p)
{
	uint32_t off = 0;
	const char *why;
	size_t size = 0;

	if (!p) {
		errno = EINVAL;
		return 0;
	}
	_pcpu_ensure_init();
	pthread_mutex_lock(&_pcpu_alloc_lock);
	struct pcpu_chunk *c = area_lookup(p, &off, &why);
	if (c)
		size = (size_t)_pcpu_areamap_size(&c->map, off) * 4;
	pthread_mutex_unlock(&_pcpu_alloc_lock);
	if (!c)
		errno = EINVAL;
	return size;
}

size_t pcpu_alloc_max(void)
{
	_pcpu_ensure_init();
	return _pcpu_g.unit_size;
}

/* Counts live allocation starts (bound and alloc bits both set). */
static uint32_t count_starts(const struct pcpu_areamap *m)
{
	uint32_t n = 0;
	for (uint32_t w = 0; w < (m->nr_bits + 63) / 64; w++)
		n += (uint32_t)__builtin_popcountll(m->alloc_map[w] &
						    m->bound_map[w]);
	return n;
}

/* Checks that every free word of touched pages reads zero on every used
 * index. */
static int check_free_zero(const struct pcpu_chunk *c,
			   const struct pcpu_cpuset *used)
{
	const struct pcpu_areamap *m = &c->map;
	uint32_t wpp = (uint32_t)(_pcpu_g.page_size / 4);
	for (uint32_t pg = 0; pg < m->nr_blocks; pg++) {
		if (!test_bit(c->page_touched, pg))
			continue;
		for (int idx = _pcpu_cpuset_next(used, 0);
		     idx >= 0 && idx <= _pcpu_g.nr_ids;
		     idx = _pcpu_cpuset_next(used, idx + 1)) {
			const uint32_t *u =
				(const uint32_t *)(c->base +
						   (size_t)idx * _pcpu_g.unit_size);
			for (uint32_t w = pg * wpp; w < (pg + 1) * wpp; w++) {
				if (!test_bit(m->alloc_map, w) &&
				    __atomic_load_n(&u[w], __ATOMIC_RELAXED)) {
					fprintf(stderr,
						"libpcpu: validate: free word %u of "
						"chunk %p reads %#x on index %d\n",
						w, (void *)c->base, u[w], idx);
					return -1;
				}
			}
		}
	}
	return 0;
}

int _pcpu_validate_locked(void)
{
	struct pcpu_cpuset used;
	uint64_t live = 0, nr = 0;

	_pcpu_used_snapshot(&used);
	for (size_t i = 0; i < _pcpu_nr_chunks; i++) {
		struct pcpu_chunk *c = _pcpu_chunks[i];
		const char *bad = NULL;
		if (i && _pcpu_chunks[i - 1]->base >= c->base)
			bad = "chunks[] not sorted";
		else if (_pcpu_areamap_validate(&c->map))
			bad = "area map";
		else if (c->slot != _pcpu_chunk_slot(c))
			bad = "chunk in the wrong slot";
		else if (count_starts(&c->map) != c->nr_alloc)
			bad = "nr_alloc differs from the live areas";
		else if (check_free_zero(c, &used))
			bad = "a free word is not zero";
		if (bad) {
			fprintf(stderr, "libpcpu: validate: chunk %p: %s\n",
				(void *)c->base, bad);
			return -EUCLEAN;
		}
		nr += c->nr_alloc;
		live += (uint64_t)(c->map.nr_bits - c->map.free_bits) * 4;
	}
	if (nr != _pcpu_counters.nr_cur_alloc ||
	    live != _pcpu_counters.live_bytes ||
	    _pcpu_nr_chunks != _pcpu_counters.nr_chunks) {
		fprintf(stderr,
			"libpcpu: validate: counters differ (live %llu/%llu "
			"bytes, %llu/%llu areas, %zu/%llu chunks)\n",
			(unsigned long long)live,
			(unsigned long long)_pcpu_counters.live_bytes,
			(unsigned long long)nr,
			(unsigned long long)_pcpu_counters.nr_cur_alloc,
			_pcpu_nr_chunks,
			(unsigned long long)_pcpu_counters.nr_chunks);
		return -EUCLEAN;
	}
	return 0;
}

int pcpu_validate(void)
{
	_pcpu_ensure_init();
	pthread_mutex_lock(&_pcpu_alloc_lock);
	int ret = _pcpu_validate_locked();
	pthread_mutex_unlock(&_pcpu_alloc_lock);
	return ret;
}

void _pcpu_chunk_atfork_prepare(void)
{
	pthread_mutex_lock(&_pcpu_alloc_lock);
}

void _pcpu_chunk_atfork_parent(void)
{
	pthread_mutex_unlock(&_pcpu_alloc_lock);
}

void _pcpu_chunk_atfork_child(void)
{
	pthread_mutex_unlock(&_pcpu_alloc_lock);
}
