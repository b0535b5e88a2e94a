/*
 * chunk.c - chunks, units and the allocation API (pcpu_alloc/pcpu_free).
 *
 * A chunk is one reservation (one mapping) of nr_ids units at a constant
 * stride (the unit size), so index i's copy of an area at offset o lives
 * at base + i * stride + o:
 *
 *     base                base+stride          base+(nr_ids-1)*stride
 *     | unit 0 (CPU 0)    | unit 1 (CPU 1) |...| unit nr_ids-1 |
 *     |  [a][b]   [c]     |  [a][b]   [c]  |...|  [a][b]  [c]  |
 *
 * Every unit has the same layout, described once by the chunk's area map
 * (areamap.c).  Metadata is out of band: struct pcpu_chunk and its maps
 * live in malloc'd memory, never inside units.  Address space is reserved
 * with MAP_NORESERVE and pages are backed by the kernel when first
 * written, so an index that never writes costs nothing but address
 * space.  The base is aligned to the unit size, so that a lock-free table
 * finds a chunk from any address of its first unit (_pcpu_chunk_find).
 *
 * Invariants (docs/DESIGN.md, checked by pcpu_validate):
 *   - every free word of every unit of an index in use reads zero: frees
 *     zero the area on the indexes in use, reading only pages known to
 *     hold data (backed.c), so a page nobody wrote stays unbacked;
 *   - a chunk sits in slot fls(map.contig_hint), and contig_hint is never
 *     below the largest free run;
 *   - chunks[] is sorted by base and holds every chunk once, and the
 *     lock-free table maps each installed chunk's first unit to it;
 *   - nr_alloc of a chunk equals its live allocation starts.
 *
 * Reclaim (reclaim.c) moves chunks between three states: active (in the
 * slot its contig hint says), isolated (being depopulated: in no list, so
 * no allocation lands in it) and sidelined (depopulated but still holding
 * areas: tried after the active slots below the fully-free one and before
 * fully free chunks, so new areas pack into fewer chunks).
 *
 * Locking: alloc_lock guards chunks[], the lists, the maps and the
 * counters.  Reserving and releasing a chunk call the OS without it.
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
/* slots[0..PCPU_NR_SLOTS) by contig hint, then the sidelined list. */
static struct pcpu_chunk_list lists[PCPU_NR_SLOTS + 1];
#define SIDELINED_LIST PCPU_NR_SLOTS

static int fls32(uint32_t x)
{
	return x ? 32 - __builtin_clz(x) : 0;
}

int _pcpu_chunk_slot(const struct pcpu_chunk *c)
{
	return fls32(c->map.contig_hint);
}

/* The slot of fully free chunks (contig hint = the whole unit). */
static int free_slot(void)
{
	return fls32((uint32_t)(_pcpu_g.unit_size / 4));
}

static void list_unlink(struct pcpu_chunk *c)
{
	struct pcpu_chunk_list *l = &lists[c->list];
	if (c->prev)
		c->prev->next = c->next;
	else
		l->head = c->next;
	if (c->next)
		c->next->prev = c->prev;
	else
		l->tail = c->prev;
	c->next = c->prev = NULL;
	c->list = -1;
}

static void list_append(struct pcpu_chunk *c, int list)
{
	struct pcpu_chunk_list *l = &lists[list];
	c->list = list;
	c->prev = l->tail;
	c->next = NULL;
	if (l->tail)
		l->tail->next = c;
	else
		l->head = c;
	l->tail = c;
}

/* Puts an active chunk in the slot its contig hint says (at the tail). */
static void slot_update(struct pcpu_chunk *c)
{
	if (c->state != PCPU_CHUNK_ACTIVE)
		return;
	int slot = _pcpu_chunk_slot(c);
	if (c->list != slot) {
		if (c->list >= 0)
			list_unlink(c);
		list_append(c, slot);
	}
}

void _pcpu_chunk_isolate(struct pcpu_chunk *c)
{
	if (c->state == PCPU_CHUNK_ISOLATED)
		return;
	if (c->list >= 0)
		list_unlink(c);
	c->state = PCPU_CHUNK_ISOLATED;
	_pcpu_counters.chunks_isolated++;
}

void _pcpu_chunk_reintegrate(struct pcpu_chunk *c)
{
	if (c->list >= 0)
		list_unlink(c);
	if (c->nr_alloc) {
		if (c->state != PCPU_CHUNK_SIDELINED)
			_pcpu_counters.chunks_sidelined++;
		c->state = PCPU_CHUNK_SIDELINED;
		list_append(c, SIDELINED_LIST);
	} else {
		c->state = PCPU_CHUNK_ACTIVE;
		slot_update(c);
	}
}

/* A sidelined chunk that takes an allocation is active again. */
static void chunk_activate(struct pcpu_chunk *c)
{
	if (c->state == PCPU_CHUNK_SIDELINED) {
		list_unlink(c);
		c->state = PCPU_CHUNK_ACTIVE;
		_pcpu_counters.chunks_reintegrated++;
	}
	slot_update(c);
}

struct pcpu_chunk *_pcpu_chunk_first(int list)
{
	return lists[list].head;
}

/*
 * The lock-free table: chunk by (address of its first unit) >> unit
 * shift, in two levels of 2^14 entries (48-bit addresses; a chunk mapped
 * above that is found through chunks[] under the lock).  Entries are
 * written under alloc_lock at install and uninstall; leaves are never
 * freed.
 */
#define TAB_BITS 14
#define TAB_SIZE ((size_t)1 << TAB_BITS)
static struct pcpu_chunk **tab_top[TAB_SIZE];

static unsigned int unit_shift(void)
{
	return (unsigned int)__builtin_ctzl(_pcpu_g.unit_size);
}

/* Context: alloc_lock held.  0 or -ENOMEM. */
static int tab_set(struct pcpu_chunk *c, struct pcpu_chunk *val)
{
	uintptr_t key = (uintptr_t)c->base >> unit_shift();
	if (key >> (2 * TAB_BITS))
		return 0; /* above the table: chunks[] finds it */
	struct pcpu_chunk **leaf = tab_top[key >> TAB_BITS];
	if (!leaf) {
		if (!val)
			return 0;
		leaf = calloc(TAB_SIZE, sizeof(*leaf));
		if (!leaf)
			return -ENOMEM;
		__atomic_store_n(&tab_top[key >> TAB_BITS], leaf,
				 __ATOMIC_RELEASE);
	}
	__atomic_store_n(&leaf[key & (TAB_SIZE - 1)], val, __ATOMIC_RELEASE);
	return 0;
}

/* The table's entry for @p; NULL when none or above the table. */
static struct pcpu_chunk *tab_get(const void *p)
{
	uintptr_t key = (uintptr_t)p >> unit_shift();
	if (key >> (2 * TAB_BITS))
		return NULL;
	struct pcpu_chunk **leaf =
		__atomic_load_n(&tab_top[key >> TAB_BITS], __ATOMIC_ACQUIRE);
	return leaf ? __atomic_load_n(&leaf[key & (TAB_SIZE - 1)],
				      __ATOMIC_ACQUIRE)
		    : NULL;
}

struct pcpu_chunk *_pcpu_chunk_find(const void *p)
{
	struct pcpu_chunk *c;
	if (PCPU_LIKELY(!(((uintptr_t)p >> unit_shift()) >> (2 * TAB_BITS))))
		return tab_get(p);
	pthread_mutex_lock(&_pcpu_alloc_lock);
	c = _pcpu_chunk_lookup(p);
	pthread_mutex_unlock(&_pcpu_alloc_lock);
	return c;
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

size_t _pcpu_chunk_after(const char *base)
{
	size_t lo = 0, hi = _pcpu_nr_chunks;
	while (base && lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (_pcpu_chunks[mid]->base <= base)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/*
 * _pcpu_chunk_create - reserve and set up a new chunk.
 * Context: alloc_lock not held (calls the OS).
 * Returns: the chunk, or NULL with errno ENOMEM and nothing leaked.
 */
struct pcpu_chunk *_pcpu_chunk_create(void)
{
	size_t unit = _pcpu_g.unit_size, page = _pcpu_g.page_size;
	size_t len = (size_t)_pcpu_g.nr_ids * unit;
	size_t pages = unit / page, words = (pages + 63) / 64;
	struct pcpu_chunk *c = calloc(1, sizeof(*c));

	if (!c)
		goto fail;
	c->list = -1;
	c->page_touched = calloc(2 * words, sizeof(uint64_t));
	if (!c->page_touched)
		goto fail;
	c->page_used = c->page_touched + words;
	c->backed_words = (uint32_t)words;
	c->backed = calloc((size_t)_pcpu_g.nr_ids * words, sizeof(uint64_t));
	if (!c->backed)
		goto fail;
	if (_pcpu_areamap_init(&c->map, (uint32_t)(unit / 4),
			       (uint32_t)(page / 4)))
		goto fail;
	c->base = _pcpu_os_reserve(len, unit);
	if (!c->base)
		goto fail;
	c->len = len;
	return c;
fail:
	if (c) {
		_pcpu_areamap_destroy(&c->map);
		free(c->page_touched);
		free(c->backed);
		free(c);
	}
	errno = ENOMEM;
	return NULL;
}

/*
 * _pcpu_chunk_install - add a new chunk to chunks[] and its slot.
 * Context: alloc_lock held.  Returns 0 or -ENOMEM (chunk not added).
 */
int _pcpu_chunk_install(struct pcpu_chunk *c)
{
	if (tab_set(c, c))
		return -ENOMEM;
	if (_pcpu_nr_chunks == chunks_cap) {
		size_t cap = chunks_cap ? chunks_cap * 2 : 16;
		struct pcpu_chunk **n =
			realloc(_pcpu_chunks, cap * sizeof(*n));
		if (!n) {
			tab_set(c, NULL);
			return -ENOMEM;
		}
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
	c->state = PCPU_CHUNK_ACTIVE;
	slot_update(c);
	_pcpu_counters.nr_chunks++;
	if (_pcpu_counters.nr_chunks > _pcpu_counters.nr_max_chunks)
		_pcpu_counters.nr_max_chunks = _pcpu_counters.nr_chunks;
	_pcpu_counters.pop_pages += c->nr_pop_pages;
	_pcpu_counters.empty_pop_pages += c->nr_empty_pop_pages;
	return 0;
}

/*
 * _pcpu_chunk_uninstall - take a fully free chunk out of chunks[] and its
 * list, so that it can be released.  Context: alloc_lock held.
 */
void _pcpu_chunk_uninstall(struct pcpu_chunk *c)
{
	size_t i = 0;
	while (i < _pcpu_nr_chunks && _pcpu_chunks[i] != c)
		i++;
	PCPU_ASSERT(i < _pcpu_nr_chunks && c->nr_alloc == 0);
	memmove(&_pcpu_chunks[i], &_pcpu_chunks[i + 1],
		(_pcpu_nr_chunks - i - 1) * sizeof(*_pcpu_chunks));
	_pcpu_nr_chunks--;
	tab_set(c, NULL);
	if (c->list >= 0)
		list_unlink(c);
	c->state = PCPU_CHUNK_ISOLATED;
	_pcpu_counters.nr_chunks--;
	_pcpu_counters.pop_pages -= c->nr_pop_pages;
	_pcpu_counters.empty_pop_pages -= c->nr_empty_pop_pages;
	if (c->to_depopulate) {
		c->to_depopulate = false;
		_pcpu_counters.nr_to_depopulate--;
	}
}

/*
 * _pcpu_chunk_destroy - unmap an uninstalled chunk and free its metadata.
 * Context: alloc_lock not held.  Returns 0, or -errno with nothing freed
 * (the caller installs it again).
 */
int _pcpu_chunk_destroy(struct pcpu_chunk *c)
{
	int ret = _pcpu_os_release(c->base, c->len);
	if (ret)
		return ret;
	_pcpu_areamap_destroy(&c->map);
	free(c->page_touched);
	free(c->backed);
	free(c);
	return 0;
}

/*
 * _pcpu_chunk_pages_sync - bring the page bookkeeping of pages [pg0, pg1]
 * in line with the map: page_used mirrors "holds an area", a page that
 * holds one is touched (it may be backed on used indexes), and the
 * populated/empty counts follow.  Context: alloc_lock held.
 */
void _pcpu_chunk_pages_sync(struct pcpu_chunk *c, uint32_t pg0, uint32_t pg1)
{
	for (uint32_t pg = pg0; pg <= pg1; pg++) {
		uint64_t bit = (uint64_t)1 << (pg % 64);
		bool used = !_pcpu_areamap_block_empty(&c->map, pg);
		bool was_used = c->page_used[pg / 64] & bit;
		bool touched = c->page_touched[pg / 64] & bit;

		if (used == was_used)
			continue;
		if (used) {
			c->page_used[pg / 64] |= bit;
			if (touched) {
				c->nr_empty_pop_pages--;
				_pcpu_counters.empty_pop_pages--;
			} else {
				c->page_touched[pg / 64] |= bit;
				c->nr_pop_pages++;
				_pcpu_counters.pop_pages++;
			}
		} else {
			c->page_used[pg / 64] &= ~bit;
			c->nr_empty_pop_pages++; /* it was touched */
			_pcpu_counters.empty_pop_pages++;
		}
	}
}

static void pages_sync_range(struct pcpu_chunk *c, uint32_t off, uint32_t bits)
{
	uint32_t wpp = (uint32_t)(_pcpu_g.page_size / 4);
	_pcpu_chunk_pages_sync(c, off / wpp, (off + bits - 1) / wpp);
}

/* Tries one chunk; returns the address or NULL (and remembers no-fits). */
static void *alloc_in_chunk(struct pcpu_chunk *c, uint32_t bits,
			    uint32_t align_bits)
{
	if (c->nofit_bits && bits >= c->nofit_bits &&
	    align_bits >= c->nofit_align)
		return NULL;
	long off = _pcpu_areamap_alloc(&c->map, bits, align_bits);
	if (off < 0) {
		c->nofit_bits = bits;
		c->nofit_align = align_bits;
		slot_update(c); /* the hint is exact now */
		return NULL;
	}
	c->nr_alloc++;
	chunk_activate(c);
	pages_sync_range(c, (uint32_t)off, bits);
	return c->base + (size_t)off * 4;
}

/* Walks one list, trying each chunk (the list may change under it). */
static void *alloc_from_list(int list, uint32_t bits, uint32_t align_bits)
{
	struct pcpu_chunk *c = lists[list].head, *next;
	for (; c; c = next) {
		next = c->next;
		void *p = alloc_in_chunk(c, bits, align_bits);
		if (p)
			return p;
	}
	return NULL;
}

/*
 * alloc_from_slots - first fit: the active slots from the smallest that
 * can hold @bits, up to (not including) the slot of fully free chunks;
 * then the sidelined chunks; then the fully free ones.
 * Context: alloc_lock held.  Returns the address or NULL.
 */
static void *alloc_from_slots(uint32_t bits, uint32_t align_bits)
{
	int top = free_slot();
	void *p;
	for (int s = fls32(bits); s < top; s++)
		if ((p = alloc_from_list(s, bits, align_bits)))
			return p;
	if ((p = alloc_from_list(SIDELINED_LIST, bits, align_bits)))
		return p;
	for (int s = top < fls32(bits) ? fls32(bits) : top; s < PCPU_NR_SLOTS;
	     s++)
		if ((p = alloc_from_list(s, bits, align_bits)))
			return p;
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

/*
 * debug_validate - after an operation on @c: PCPU_DEBUG >= 3 checks every
 * invariant of the whole allocator (pcpu_validate); PCPU_DEBUG == 2 checks
 * the chunk the operation touched (its map, list, page bookkeeping) and
 * the global counters, which keeps the ASan suite fast.
 */
static int validate_list_state(const struct pcpu_chunk *c);
static int check_pages(const struct pcpu_chunk *c);
static void debug_validate(const struct pcpu_chunk *c, const void *p,
			   uint32_t bytes)
{
#if PCPU_DEBUG >= 3
	(void)c, (void)p, (void)bytes;
	if (_pcpu_validate_locked())
		_pcpu_fatal("allocator invariant broken (see above)");
#elif PCPU_DEBUG >= 2
	uint32_t off = (uint32_t)((const char *)p - c->base);
	uint32_t pg = (uint32_t)_pcpu_g.page_size;
	if (_pcpu_areamap_validate_blocks(&c->map, off / pg,
					  (off + bytes - 1) / pg) ||
	    validate_list_state(c) || check_pages(c))
		_pcpu_fatal("allocator invariant broken at %p (see above)", p);
#else
	(void)c, (void)p, (void)bytes;
#endif
}

static size_t nr_deferred;
static bool defer_clean_locked(bool may_learn, bool *kick);

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
	void *obj;
	if (size - 1 < PCPU_CACHE_MAX_SIZE && _pcpu_cache_alloc(size, align, &obj))
		return obj; /* a size class (cache.c) */
	uint32_t bits = alloc_args(size, &align);
	if (!bits)
		return NULL;
	uint32_t align_bits = align < 4 ? 1 : (uint32_t)(align / 4);

	bool kick = false;
	pthread_mutex_lock(&_pcpu_alloc_lock);
	for (;;) {
		void *p = alloc_from_slots(bits, align_bits);
		if (p) {
			count_alloc((size_t)bits * 4);
			debug_validate(_pcpu_chunk_lookup(p), p, bits * 4);
			pthread_mutex_unlock(&_pcpu_alloc_lock);
			if (kick)
				_pcpu_balance_kick(false);
			_pcpu_balance_start();
			return p;
		}
		if (defer_clean_locked(true, &kick))
			continue; /* room freed but not zeroed until now */
		pthread_mutex_unlock(&_pcpu_alloc_lock);
		if (kick)
			_pcpu_balance_kick(false);
		kick = false;
		struct pcpu_chunk *c = _pcpu_chunk_create();
		if (!c)
			return NULL; /* errno ENOMEM */
		pthread_mutex_lock(&_pcpu_alloc_lock);
		if (_pcpu_chunk_install(c)) {
			pthread_mutex_unlock(&_pcpu_alloc_lock);
			_pcpu_chunk_destroy(c);
			errno = ENOMEM;
			return NULL;
		}
	}
}

void *pcpu_alloc_nonblock(size_t size, size_t align)
{
	if (!__atomic_load_n(&_pcpu_g.initialised, __ATOMIC_ACQUIRE)) {
		errno = EAGAIN; /* initialising may block */
		return NULL;
	}
	uint32_t bits = alloc_args(size, &align);
	if (!bits)
		return NULL;
	uint32_t align_bits = align < 4 ? 1 : (uint32_t)(align / 4);

	if (pthread_mutex_trylock(&_pcpu_alloc_lock)) {
		__atomic_add_fetch(&_pcpu_counters.nonblock_fails, 1,
				   __ATOMIC_RELAXED);
		errno = EAGAIN;
		return NULL;
	}
	void *p = alloc_from_slots(bits, align_bits);
	bool kick = false;
	if (!p && defer_clean_locked(false, &kick)) /* pages known: no read */
		p = alloc_from_slots(bits, align_bits);
	if (p) {
		count_alloc((size_t)bits * 4);
		debug_validate(_pcpu_chunk_lookup(p), p, bits * 4);
	} else {
		__atomic_add_fetch(&_pcpu_counters.nonblock_fails, 1,
				   __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&_pcpu_alloc_lock);
	if (!p || kick)
		_pcpu_balance_kick_nonblock(); /* reserve a chunk for later,
						 do the deferred frees */
	if (!p)
		errno = EAGAIN;
	return p;
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

/* Areas are 4-byte aligned and a multiple of 4 bytes long. */
static bool mem_is_zero(const void *p, size_t n)
{
	const uint32_t *w = p;
	for (size_t i = 0; i < n / 4; i++)
		if (w[i])
			return false;
	return true;
}

/* The pages [*pg0, *pg1] of the unit layout that [p, p + bytes) of @c
 * spans. */
static void area_pages(const struct pcpu_chunk *c, const char *p,
		       size_t bytes, uint32_t *pg0, uint32_t *pg1)
{
	size_t off = (size_t)(p - c->base);
	*pg0 = (uint32_t)(off / _pcpu_g.page_size);
	*pg1 = (uint32_t)((off + bytes - 1) / _pcpu_g.page_size);
}

/* Zeroes [p, p + bytes) of @c on the indexes of @used, reading only
 * pages known to hold data (the caller asked the kernel first where it
 * had to: area_known, or a batch of deferred frees). */
static void zero_used(struct pcpu_chunk *c, char *p, size_t bytes,
		      const struct pcpu_cpuset *used)
{
	const size_t page = _pcpu_g.page_size, unit = _pcpu_g.unit_size;
	size_t off = (size_t)(p - c->base);
	uint32_t pg0, pg1;
	area_pages(c, p, bytes, &pg0, &pg1);

	_pcpu_cpuset_for_each(idx, used) {
		if (idx >= _pcpu_g.nr_ids)
			break;
		for (uint32_t pg = pg0; pg <= pg1; pg++) {
			if (!_pcpu_backed_test(c, idx, pg))
				continue; /* holds no data: reads zero */
			size_t lo = pg == pg0 ? off : (size_t)pg * page;
			size_t hi = pg == pg1 ? off + bytes : (size_t)(pg + 1) * page;
			char *q = c->base + (size_t)idx * unit + lo;
			if (!mem_is_zero(q, hi - lo))
				memset(q, 0, hi - lo);
		}
	}
}

/* Whether every index of @used is known to hold data on every page of
 * [p, p + bytes): the free may zero it at once. */
static bool area_known(const struct pcpu_chunk *c, const char *p,
		       size_t bytes, const struct pcpu_cpuset *used)
{
	uint32_t pg0, pg1;
	area_pages(c, p, bytes, &pg0, &pg1);
	_pcpu_cpuset_for_each(idx, used) {
		if (idx >= _pcpu_g.nr_ids)
			break;
		if (!_pcpu_backed_all(c, idx, pg0, pg1))
			return false;
	}
	return true;
}

/*
 * free_locked - the free of @c's area at @p (@bits long): zero it on the
 * indexes of @used (zero_used), give it back to the map.
 * Context: alloc lock held.  Returns whether the balance worker is to be
 * kicked.
 */
static bool free_locked(struct pcpu_chunk *c, char *p, uint32_t bits,
			const struct pcpu_cpuset *used)
{
	uint32_t off = (uint32_t)((size_t)(p - c->base) / 4);
	zero_used(c, p, (size_t)bits * 4, used);
	_pcpu_areamap_free(&c->map, off);
	c->nofit_bits = 0;
	c->nr_alloc--;
	if (c->state == PCPU_CHUNK_SIDELINED && !c->nr_alloc)
		_pcpu_chunk_reintegrate(c); /* empty: an active free chunk */
	slot_update(c);
	pages_sync_range(c, off, bits);
	_pcpu_counters.nr_dealloc++;
	_pcpu_counters.nr_cur_alloc--;
	_pcpu_counters.live_bytes -= (size_t)bits * 4;
	bool kick = _pcpu_reclaim_note_free(c);
	debug_validate(c, p, bits * 4);
	return kick;
}

/*
 * Deferred frees.  A free whose area has a page that some index in use
 * is not known to hold data on must ask the kernel before it may zero
 * the area (a pagemap read, 2-3 us; a page nobody wrote must not be
 * read).  One read covers a chunk's whole unit, so such frees wait here,
 * under the allocator lock, and are done in batches: one read per chunk
 * and index a batch.  A deferred area stays allocated in its chunk's
 * map until then (live in the counters, never handed out again), its
 * init record is gone and its coming copies are zeroed at once; a second
 * free of it is reported (defer_set).  The batch is done when it is
 * full, by pcpu_alloc and a cache refill before they grow a chunk, by
 * pcpu_drain, pcpu_trim, the balance worker, a release scan,
 * pcpu_stats_get, pcpu_stats_chunks and pcpu_validate
 * (_pcpu_chunk_clean_deferred); by pcpu_alloc_nonblock only when no
 * page of it needs the kernel's word (it then kicks the worker).
 */
#define DEFER_BATCH 256
#define DEFER_SET (4 * DEFER_BATCH) /* a power of 2 */
struct deferred {
	struct pcpu_chunk *c;
	char *p;
	uint32_t bits;
};
static struct deferred deferred[DEFER_BATCH];
static const void *defer_set[DEFER_SET]; /* open addressing, no removal */

static size_t defer_hash(const void *p)
{
	return (size_t)(((uintptr_t)p >> 2) * 0x9e3779b97f4a7c15ULL >> 40) &
	       (DEFER_SET - 1);
}

static bool deferred_has(const void *p)
{
	if (!nr_deferred)
		return false;
	for (size_t h = defer_hash(p);; h = (h + 1) & (DEFER_SET - 1)) {
		if (defer_set[h] == p)
			return true;
		if (!defer_set[h])
			return false;
	}
}

/* Sorts the deferred frees by chunk: a shell sort, which allocates
 * nothing (glibc's qsort may malloc, and pcpu_alloc_nonblock cleans). */
static void sort_deferred(size_t n)
{
	static const size_t gaps[] = { 57, 23, 10, 4, 1 };
	for (size_t g = 0; g < sizeof(gaps) / sizeof(gaps[0]); g++)
		for (size_t i = gaps[g]; i < n; i++) {
			struct deferred x = deferred[i];
			size_t j = i;
			for (; j >= gaps[g] && (uintptr_t)deferred[j - gaps[g]].c >
							(uintptr_t)x.c;
			     j -= gaps[g])
				deferred[j] = deferred[j - gaps[g]];
			deferred[j] = x;
		}
}

/*
 * Does the deferred frees; *@kick |= whether the balance worker is to be
 * kicked.  Without @may_learn (pcpu_alloc_nonblock: no pagemap read,
 * whose first use opens the file and maps a probe page under a lock a
 * signal handler may interrupt) only a batch whose every page is known
 * already.  Context: alloc lock held.  Returns whether it ran.
 */
static bool defer_clean_locked(bool may_learn, bool *kick)
{
	size_t n = nr_deferred;
	struct pcpu_cpuset used;

	if (!n)
		return false;
	_pcpu_used_snapshot(&used);
	if (!may_learn)
		for (size_t i = 0; i < n; i++)
			if (!area_known(deferred[i].c, deferred[i].p,
					(size_t)deferred[i].bits * 4, &used))
				return false;
	sort_deferred(n);
	for (size_t a = 0, b; a < n; a = b) {
		struct pcpu_chunk *c = deferred[a].c;
		for (b = a; b < n && deferred[b].c == c; b++)
			;
		_pcpu_cpuset_for_each(idx, &used) {
			if (idx >= _pcpu_g.nr_ids)
				break;
			for (size_t i = a; i < b; i++) {
				uint32_t pg0, pg1;
				area_pages(c, deferred[i].p,
					   (size_t)deferred[i].bits * 4, &pg0,
					   &pg1);
				if (!_pcpu_backed_all(c, idx, pg0, pg1)) {
					_pcpu_backed_learn(c, idx);
					break;
				}
			}
		}
	}
	for (size_t i = n; i-- > 0;) {
		/* off the list first: the debug validator may run inside */
		__atomic_store_n(&nr_deferred, i, __ATOMIC_RELAXED);
		*kick |= free_locked(deferred[i].c, deferred[i].p,
				     deferred[i].bits, &used);
	}
	memset(defer_set, 0, sizeof(defer_set));
	__atomic_add_fetch(&_pcpu_counters.deferred_cleans, 1,
			   __ATOMIC_RELAXED);
	return true;
}

void _pcpu_chunk_clean_deferred(void)
{
	if (!__atomic_load_n(&nr_deferred, __ATOMIC_RELAXED))
		return;
	bool kick = false;
	pthread_mutex_lock(&_pcpu_alloc_lock);
	defer_clean_locked(true, &kick);
	pthread_mutex_unlock(&_pcpu_alloc_lock);
	if (kick)
		_pcpu_balance_kick(false);
}

/* Defers the free of @c's area at @p.  Context: alloc lock held. */
static bool defer_locked(struct pcpu_chunk *c, char *p, uint32_t bits)
{
	bool kick = false;
	if (nr_deferred == DEFER_BATCH)
		defer_clean_locked(true, &kick);
	deferred[nr_deferred] = (struct deferred){ c, p, bits };
	size_t h = defer_hash(p);
	while (defer_set[h])
		h = (h + 1) & (DEFER_SET - 1);
	defer_set[h] = p;
	__atomic_store_n(&nr_deferred, nr_deferred + 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&_pcpu_counters.deferred_frees, 1,
			   __ATOMIC_RELAXED);
	return kick;
}

void pcpu_free(void *p)
{
	uint32_t off = 0;
	const char *why;

	if (!p)
		return;
	if (_pcpu_cache_free(p))
		return; /* an object of a pageset (cache.c) */
	_pcpu_ensure_init();
	pthread_mutex_lock(&_pcpu_alloc_lock);
	struct pcpu_chunk *c = area_lookup(p, &off, &why);
	if (c && deferred_has(p)) {
		c = NULL;
		why = "double free";
	}
	if (!c) {
		pthread_mutex_unlock(&_pcpu_alloc_lock);
		_pcpu_report(why, p);
		return;
	}
	uint32_t bits = _pcpu_areamap_size(&c->map, off);
	_pcpu_initval_area_freed(c, p, (size_t)bits * 4);
	struct pcpu_cpuset used;
	_pcpu_used_snapshot(&used);
	bool kick;
	if (area_known(c, p, (size_t)bits * 4, &used))
		kick = free_locked(c, p, bits, &used);
	else
		kick = defer_locked(c, p, bits);
	pthread_mutex_unlock(&_pcpu_alloc_lock);
	if (kick)
		_pcpu_balance_kick(false);
}

/* Pages the pagesets hold (cache.c): areas in the maps, not allocations
 * in the counters. */
static uint64_t pageset_pages;

void *_pcpu_chunk_page_get(void)
{
	uint32_t bits = (uint32_t)(_pcpu_g.page_size / 4);
	bool kick = false; /* (the worker's next tick does it) */
	for (;;) {
		void *p = alloc_from_slots(bits, bits);
		if (p) {
			pageset_pages++;
			return p;
		}
		if (defer_clean_locked(true, &kick))
			continue; /* room freed but not zeroed until now */
		pthread_mutex_unlock(&_pcpu_alloc_lock);
		struct pcpu_chunk *c = _pcpu_chunk_create();
		pthread_mutex_lock(&_pcpu_alloc_lock);
		if (!c)
			return NULL; /* errno ENOMEM */
		if (_pcpu_chunk_install(c)) {
			pthread_mutex_unlock(&_pcpu_alloc_lock);
			_pcpu_chunk_destroy(c);
			pthread_mutex_lock(&_pcpu_alloc_lock);
			errno = ENOMEM;
			return NULL;
		}
	}
}

bool _pcpu_chunk_page_put(void *page)
{
	uint32_t off = 0;
	const char *why;
	struct pcpu_chunk *c = area_lookup(page, &off, &why);
	if (!c)
		_pcpu_fatal("pageset page %p is not an area", page);
	uint32_t bits = _pcpu_areamap_size(&c->map, off);
	/* every object of a retired pageset is free, and free objects read
	 * zero on every index in use (cache.c): nothing to zero, nothing
	 * to read */
	_pcpu_areamap_free(&c->map, off);
	c->nofit_bits = 0;
	c->nr_alloc--;
	if (c->state == PCPU_CHUNK_SIDELINED && !c->nr_alloc)
		_pcpu_chunk_reintegrate(c);
	slot_update(c);
	pages_sync_range(c, off, bits);
	pageset_pages--;
	return _pcpu_reclaim_note_free(c);
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
	if (_pcpu_cache_alloc_size(p, &size))
		return size; /* an object of a pageset (cache.c) */
	_pcpu_ensure_init();
	pthread_mutex_lock(&_pcpu_alloc_lock);
	struct pcpu_chunk *c = area_lookup(p, &off, &why);
	if (c && deferred_has(p))
		c = NULL; /* freed, its free deferred */
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

/* Checks that every free word of touched pages reads zero on every index
 * in use, reading only pages that hold data (asks the kernel once per
 * unit). */
static int check_free_zero(struct pcpu_chunk *c, const struct pcpu_cpuset *used)
{
	const struct pcpu_areamap *m = &c->map;
	uint32_t wpp = (uint32_t)(_pcpu_g.page_size / 4);
	_pcpu_cpuset_for_each(idx, used) {
		if (idx >= _pcpu_g.nr_ids)
			break;
		bool learnt = false;
		const uint32_t *u =
			(const uint32_t *)(c->base + (size_t)idx * _pcpu_g.unit_size);
		for (uint32_t pg = 0; pg < m->nr_blocks; pg++) {
			if (!test_bit(c->page_touched, pg))
				continue;
			if (!_pcpu_backed_test(c, idx, pg) && !learnt) {
				_pcpu_backed_learn(c, idx);
				learnt = true;
			}
			if (!_pcpu_backed_test(c, idx, pg))
				continue;
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

/* page_used mirrors the map; used implies touched; the counts agree. */
static int check_pages(const struct pcpu_chunk *c)
{
	uint32_t pop = 0, empty = 0;
	for (uint32_t pg = 0; pg < c->map.nr_blocks; pg++) {
		bool used = test_bit(c->page_used, pg);
		bool touched = test_bit(c->page_touched, pg);
		if (used == _pcpu_areamap_block_empty(&c->map, pg) ||
		    (used && !touched))
			return -1;
		pop += touched;
		empty += touched && !used;
	}
	return pop == c->nr_pop_pages && empty == c->nr_empty_pop_pages ? 0
									 : -1;
}

/* Every chunk of every list is installed, listed once, in its state. */
static int check_lists(void)
{
	size_t n = 0;
	for (int l = 0; l <= SIDELINED_LIST; l++)
		for (struct pcpu_chunk *c = lists[l].head; c; c = c->next) {
			if (c->list != l || (c->next && c->next->prev != c) ||
			    (!c->next && lists[l].tail != c))
				return -1;
			n++;
		}
	for (size_t i = 0; i < _pcpu_nr_chunks; i++)
		n -= _pcpu_chunks[i]->list >= 0;
	return n == 0 ? 0 : -1;
}

/* A chunk sits in the list its state says. */
static int validate_list_state(const struct pcpu_chunk *c)
{
	const char *bad = NULL;
	if (c->state == PCPU_CHUNK_ACTIVE && c->list != _pcpu_chunk_slot(c))
		bad = "active chunk in the wrong slot";
	else if (c->state == PCPU_CHUNK_SIDELINED &&
		 (c->list != SIDELINED_LIST || !c->nr_alloc))
		bad = "sidelined chunk misplaced or empty";
	else if (c->state == PCPU_CHUNK_ISOLATED && c->list >= 0)
		bad = "isolated chunk in a list";
	if (bad)
		fprintf(stderr, "libpcpu: validate: chunk %p: %s\n",
			(void *)c->base, bad);
	return bad ? -EUCLEAN : 0;
}

/* The checks of one chunk, the zero-when-free one over every populated
 * page of every used index included. */
static int validate_chunk(struct pcpu_chunk *c,
			  const struct pcpu_cpuset *used)
{
	const char *bad = NULL;
	if (_pcpu_areamap_validate(&c->map))
		bad = "area map";
	else if (validate_list_state(c))
		bad = "list";
	else if (check_pages(c))
		bad = "page bookkeeping differs from the map";
	else if (count_starts(&c->map) != c->nr_alloc)
		bad = "nr_alloc differs from the live areas";
	else if (!(((uintptr_t)c->base >> unit_shift()) >> (2 * TAB_BITS)) &&
		 tab_get(c->base) != c)
		bad = "the lock-free table does not find it";
	else if (check_free_zero(c, used))
		bad = "a free word is not zero";
	if (bad) {
		fprintf(stderr, "libpcpu: validate: chunk %p: %s\n",
			(void *)c->base, bad);
		return -EUCLEAN;
	}
	return 0;
}

int _pcpu_validate_locked(void)
{
	struct pcpu_cpuset used;
	uint64_t live = 0, nr = 0, pop = 0, empty = 0;

	_pcpu_used_snapshot(&used);
	for (size_t i = 0; i < _pcpu_nr_chunks; i++) {
		struct pcpu_chunk *c = _pcpu_chunks[i];
		if (i && _pcpu_chunks[i - 1]->base >= c->base) {
			fprintf(stderr, "libpcpu: validate: chunks[] not "
					"sorted\n");
			return -EUCLEAN;
		}
		if (validate_chunk(c, &used))
			return -EUCLEAN;
		nr += c->nr_alloc;
		live += (uint64_t)(c->map.nr_bits - c->map.free_bits) * 4;
		pop += c->nr_pop_pages;
		empty += c->nr_empty_pop_pages;
	}
	if (check_lists() || pop != _pcpu_counters.pop_pages ||
	    empty != _pcpu_counters.empty_pop_pages) {
		fprintf(stderr, "libpcpu: validate: chunk lists or page "
				"counts differ\n");
		return -EUCLEAN;
	}
	/* the pagesets' pages are areas but not allocations */
	nr -= pageset_pages;
	live -= pageset_pages * _pcpu_g.page_size;
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
	/* deferred frees: live areas of the map, each in the set once */
	for (size_t i = 0; i < nr_deferred; i++) {
		const struct deferred *d = &deferred[i];
		uint32_t off = (uint32_t)((size_t)(d->p - d->c->base) / 4);
		size_t twins = 0;
		for (size_t j = 0; j < nr_deferred; j++)
			twins += deferred[j].p == d->p;
		if (!_pcpu_areamap_is_start(&d->c->map, off) ||
		    _pcpu_areamap_size(&d->c->map, off) != d->bits ||
		    !deferred_has(d->p) || twins != 1) {
			fprintf(stderr, "libpcpu: validate: deferred free of %p "
					"is not one live area\n",
				(void *)d->p);
			return -EUCLEAN;
		}
	}
	return _pcpu_cache_validate_locked();
}

int pcpu_validate(void)
{
	_pcpu_ensure_init();
	if (_pcpu_index_validate())
		return -EUCLEAN;
	_pcpu_chunk_clean_deferred(); /* a deferred area is freed, not live */
	pthread_mutex_lock(&_pcpu_alloc_lock);
	int ret = _pcpu_validate_locked();
	pthread_mutex_unlock(&_pcpu_alloc_lock);
	return ret;
}

/* Lock order: reclaim_lock, then alloc_lock. */
void _pcpu_chunk_atfork_prepare(void)
{
	_pcpu_reclaim_atfork_prepare();
	pthread_mutex_lock(&_pcpu_alloc_lock);
}

void _pcpu_chunk_atfork_parent(void)
{
	pthread_mutex_unlock(&_pcpu_alloc_lock);
	_pcpu_reclaim_atfork_parent();
}

void _pcpu_chunk_atfork_child(void)
{
	pthread_mutex_unlock(&_pcpu_alloc_lock);
	_pcpu_reclaim_atfork_child();
	_pcpu_balance_atfork_child();
}
