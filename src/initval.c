/*
 * initval.c - initial values that follow indexes (pcpu_alloc_init), and
 * what the library must know about them: the fill of an index coming
 * into use, the zeroing of coming copies at free, the release scan.
 *
 * pcpu_alloc_init keeps its area's initial bytes out of band, in a slot
 * array of records (slots never move, so a fill's cursor is a slot
 * number) under rec_lock, indexed by address with open addressing and
 * tombstones, written under that lock and probed without it: a free
 * takes the lock only when the probe finds the freed address, i.e. only
 * for pcpu_alloc_init areas.  (A rebuilt index is published and the old
 * one freed once no probe can walk it.)
 *
 * An index coming into use (index.c, FILLING) is "coming": its bit in
 * coming is set and nr_coming counts it.  The fill copies every live
 * record into the index's copies in batches, each batch's pages backed
 * first with MADV_POPULATE_WRITE (no memory is a clean -ENOMEM, never an
 * OOM kill on a later write), holding only rec_lock and handing it to
 * waiters between batches.  Meanwhile pcpu_alloc_init writes its value
 * into every index in use *and coming*, and a free zeroes coming copies
 * (chunk.c and cache.c zero the ones in use), so the batches miss no
 * area and leave no freed one non-zero.  A free that reads nr_coming 0
 * skips that step, so the count is never below the bits: a unit is
 * counted before its bit is set and its bit is cleared before it is
 * counted out.  A fill that found no record needs no lock: it announces
 * the index as coming, then reads the count of records; pcpu_alloc_init
 * counts up, then reads the coming set (sequentially consistent both
 * sides: one of them sees the other).
 *
 * Locking: rec_lock comes after the allocator lock; fills and cache.c's
 * frees take it alone.  Every holder blocks signals (index.c's rule: an
 * operation in a signal handler may wait for a fill, which takes it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chunk.h"

#define HP_INLINE_INIT 16       /* init bytes kept in the record */
#define HP_REC_BLOCK 1024       /* records per block */
#define HP_BATCH_RECS 4096      /* records per fill batch */
#define HP_BATCH_PAGES 64       /* pages backed per fill batch */
#define HP_SCAN_PAGES 1         /* pages scanned per allocator-lock hold */

#define now_ns _pcpu_now_ns
#define cpu_relax _pcpu_cpu_relax

/* Indexes coming into use (index.c FILLING), and those written so far. */
static struct pcpu_cpuset coming, touched; /* atomic bits */
static int nr_coming; /* >= the bits in coming (coming_on) */


/* ThreadSanitizer: the release scan reads copies that a concurrent free
 * may be zeroing (see page_clean); tell it that this race is known. */
#if defined(__SANITIZE_THREAD__)
#define HP_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define HP_TSAN 1
#endif
#endif
#ifdef HP_TSAN
void AnnotateIgnoreReadsBegin(const char *file, int line);
void AnnotateIgnoreReadsEnd(const char *file, int line);
#define HP_IGNORE_READS_BEGIN() AnnotateIgnoreReadsBegin(__FILE__, __LINE__)
#define HP_IGNORE_READS_END() AnnotateIgnoreReadsEnd(__FILE__, __LINE__)
#else
#define HP_IGNORE_READS_BEGIN() ((void)0)
#define HP_IGNORE_READS_END() ((void)0)
#endif

/* Longest stretch a fill or the release scan held the allocator lock or
 * rec_lock: wall time and the thread's CPU time, in ns; for pcpu-bench
 * hotplug (the CPU time excludes preemption of the holder). */
static unsigned long long hold_max_ns[2];

struct hold {
	long long wall, cpu;
};

static long long cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static struct hold hold_start(void)
{
	struct hold h = { now_ns(), cpu_ns() };
	return h;
}

static void hold_max(int i, unsigned long long d)
{
	unsigned long long m = __atomic_load_n(&hold_max_ns[i], __ATOMIC_RELAXED);
	while (d > m && !__atomic_compare_exchange_n(&hold_max_ns[i], &m, d,
						     true, __ATOMIC_RELAXED,
						     __ATOMIC_RELAXED))
		;
}

static void hold_note(struct hold h)
{
	hold_max(0, (unsigned long long)(now_ns() - h.wall));
	hold_max(1, (unsigned long long)(cpu_ns() - h.cpu));
}

unsigned long long _pcpu_hotplug_lock_hold_max_ns(bool cpu, bool reset)
{
	if (reset)
		return __atomic_exchange_n(&hold_max_ns[cpu], 0,
					   __ATOMIC_RELAXED);
	return __atomic_load_n(&hold_max_ns[cpu], __ATOMIC_RELAXED);
}

/*
 * Drops @m between two batches and takes it again, first letting a thread
 * that waits for it have it: glibc's mutex is not fair, and a thread that
 * unlocks and locks again at once keeps it while the waiter it woke is
 * still getting up, batch after batch.
 */
static void lock_yield(pthread_mutex_t *m)
{
#ifdef __GLIBC__
	/* the lock word: 0 free, 1 taken, 2 taken with waiters */
	int *word = &m->__data.__lock;
	bool waiters = __atomic_load_n(word, __ATOMIC_RELAXED) > 1;
#else
	bool waiters = true;
#endif
	pthread_mutex_unlock(m);
	if (!waiters) {
		pthread_mutex_lock(m);
		return;
	}
	/* wait (briefly) until a waiter has it, then take it back as soon
	 * as it is free again, spinning rather than sleeping: a sleeper
	 * needs a wake-up, and the running threads take the lock first */
	long long t = now_ns(), until = t + 200000;
#ifdef __GLIBC__
	while (!__atomic_load_n(word, __ATOMIC_RELAXED) && t < until) {
		sched_yield();
		t = now_ns();
	}
#endif
	for (until = t + 1000000; t < until; t = now_ns()) {
		if (!pthread_mutex_trylock(m))
			return;
		for (int i = 0; i < 64; i++)
			cpu_relax();
	}
	pthread_mutex_lock(m);
}

/*
 * ---- init records (pcpu_alloc_init): rec_lock ----
 *
 * rec_lock guards the table.  Order: the allocator lock, then rec_lock
 * (pcpu_alloc_init, chunk.c's frees, the release scan); fills and
 * cache.c's frees take rec_lock alone, so a fill never holds a lock that
 * allocation takes.
 */
static pthread_mutex_t rec_lock = PTHREAD_MUTEX_INITIALIZER;

struct hp_rec {
	char *p;       /* CPU 0's copy; NULL: free slot */
	uint32_t size; /* bytes of init */
	uint32_t next; /* free list (slot + 1, 0 ends) */
	union {
		unsigned char b[HP_INLINE_INIT];
		unsigned char *ext;
	} init;
};
static struct hp_rec **rec_blocks;
static uint32_t rec_nblocks, rec_blocks_cap;
static uint32_t recs_hi;  /* slots ever handed out */
static uint32_t rec_free; /* free list head, slot + 1 */
static long nr_recs; /* live records; atomic for lock-free readers */

/*
 * The index by address: open addressing (linear probing) of (address,
 * slot) pairs with tombstones, written only under rec_lock and probed
 * without a lock by frees (rec_maybe), so that a free that is not of a
 * pcpu_alloc_init area never waits for a fill.  Deletions leave
 * tombstones, so the probe path of a present key never crosses an empty
 * entry.  A rebuild publishes a new table, waits until no probe can still
 * walk the old one (probes count themselves in striped two-phase
 * counters, like the gates) and frees it.  Load (live + tombstones) <=
 * 1/2.
 */
#define KEY_EMPTY 0
#define KEY_TOMB 1 /* areas are 4-byte aligned: no address is 1 */
struct rec_ent {
	uintptr_t key;
	uint32_t slot;
};
struct rec_index {
	size_t cap; /* a power of two */
	struct rec_ent e[];
};
static struct rec_index *rec_idx; /* atomic pointer */
static size_t rec_idx_used;       /* live + tombstones (rec_lock) */

#define PROBE_STRIPES 16
struct probe_stripe {
	unsigned long n[2];
} __attribute__((aligned(64)));
static struct probe_stripe probes[PROBE_STRIPES];
static unsigned int probe_phase;
static unsigned int probe_next_stripe;
static __thread unsigned int tls_probe_stripe = ~0u;
static uintptr_t *pop_lo, *pop_hi; /* last range populated per index */

/* ---- the init table (allocator lock held) ---- */

static inline struct hp_rec *rec_at(uint32_t slot)
{
	return &rec_blocks[slot / HP_REC_BLOCK][slot % HP_REC_BLOCK];
}

static inline const unsigned char *rec_init(const struct hp_rec *r)
{
	return r->size <= HP_INLINE_INIT ? r->init.b : r->init.ext;
}

static inline size_t key_hash(uintptr_t k)
{
	return (size_t)(((uint64_t)(k >> 2) * 0x9E3779B97F4A7C15ull) >> 24);
}

static bool probe_index(const struct rec_index *t, uintptr_t p)
{
	if (!t)
		return false;
	size_t m = t->cap - 1, i = key_hash(p) & m;
	for (size_t n = 0; n < t->cap; n++, i = (i + 1) & m) {
		uintptr_t k = __atomic_load_n(&t->e[i].key, __ATOMIC_ACQUIRE);
		if (k == p)
			return true;
		if (k == KEY_EMPTY)
			return false;
	}
	return true;
}

/* Without a lock: false only when @p certainly has no record. */
static bool rec_maybe(const void *p)
{
	unsigned int st = tls_probe_stripe;
	if (PCPU_UNLIKELY(st >= PROBE_STRIPES))
		st = tls_probe_stripe =
			__atomic_fetch_add(&probe_next_stripe, 1,
					   __ATOMIC_RELAXED) % PROBE_STRIPES;
	unsigned int ph = __atomic_load_n(&probe_phase, __ATOMIC_SEQ_CST) & 1;
	__atomic_fetch_add(&probes[st].n[ph], 1, __ATOMIC_SEQ_CST);
	bool maybe = probe_index(__atomic_load_n(&rec_idx, __ATOMIC_SEQ_CST),
				 (uintptr_t)p);
	__atomic_fetch_sub(&probes[st].n[ph], 1, __ATOMIC_RELEASE);
	return maybe;
}

/* After a new index was published: every probe that may have loaded the
 * old one has finished (both phases, as gate_wait). */
static void probes_drain(void)
{
	for (int round = 0; round < 2; round++) {
		unsigned int old = __atomic_load_n(&probe_phase, __ATOMIC_SEQ_CST);
		__atomic_store_n(&probe_phase, old ^ 1, __ATOMIC_SEQ_CST);
		for (int st = 0; st < PROBE_STRIPES; st++)
			while (__atomic_load_n(&probes[st].n[old & 1],
					       __ATOMIC_SEQ_CST))
				sched_yield();
	}
}

/* @p's entry in the current index, or NULL.  Context: rec_lock. */
static struct rec_ent *idx_find(uintptr_t p)
{
	struct rec_index *t = rec_idx;
	if (!t)
		return NULL;
	size_t m = t->cap - 1, i = key_hash(p) & m;
	for (size_t n = 0; n < t->cap; n++, i = (i + 1) & m) {
		if (t->e[i].key == p)
			return &t->e[i];
		if (t->e[i].key == KEY_EMPTY)
			return NULL;
	}
	return NULL;
}

/* Puts (p, slot) in @t, which has room.  Context: rec_lock. */
static void idx_put(struct rec_index *t, uintptr_t p, uint32_t slot)
{
	size_t m = t->cap - 1, i = key_hash(p) & m;
	while (t->e[i].key > KEY_TOMB)
		i = (i + 1) & m;
	t->e[i].slot = slot;
	__atomic_store_n(&t->e[i].key, p, __ATOMIC_RELEASE);
}

/* A new index of @cap entries holding every live record, published; the
 * old one freed once no probe can walk it.  false (unchanged) without
 * memory.  Context: rec_lock. */
static bool idx_rebuild(size_t cap)
{
	struct rec_index *t = calloc(1, sizeof(*t) + cap * sizeof(t->e[0]));
	if (!t)
		return false;
	t->cap = cap;
	for (uint32_t s = 0; s < recs_hi; s++)
		if (rec_at(s)->p)
			idx_put(t, (uintptr_t)rec_at(s)->p, s);
	rec_idx_used = (size_t)nr_recs;
	struct rec_index *old = rec_idx;
	__atomic_store_n(&rec_idx, t, __ATOMIC_SEQ_CST);
	if (old) {
		probes_drain();
		free(old);
	}
	return true;
}

/* Room for one more entry; false without memory.  Context: rec_lock. */
static bool idx_reserve(void)
{
	size_t cap = rec_idx ? rec_idx->cap : 0;
	if ((rec_idx_used + 1) * 2 <= cap)
		return true;
	/* mostly tombstones: rebuild at the same size */
	size_t want = cap && ((size_t)nr_recs + 1) * 4 <= cap ? cap
			: cap ? cap * 2 : 1024;
	return idx_rebuild(want) || (rec_idx_used + 1) < cap;
}

/* A new record for @p, indexed; NULL without memory. */
static struct hp_rec *rec_insert(char *p)
{
	if (!idx_reserve())
		return NULL;
	uint32_t slot;
	if (rec_free) {
		slot = rec_free - 1;
		rec_free = rec_at(slot)->next;
	} else {
		if (recs_hi == rec_nblocks * HP_REC_BLOCK) {
			if (rec_nblocks == rec_blocks_cap) {
				uint32_t cap = rec_blocks_cap ? rec_blocks_cap * 2 : 16;
				struct hp_rec **nb = realloc(rec_blocks,
							     cap * sizeof(*nb));
				if (!nb)
					return NULL;
				rec_blocks = nb;
				rec_blocks_cap = cap;
			}
			struct hp_rec *blk = calloc(HP_REC_BLOCK, sizeof(*blk));
			if (!blk)
				return NULL;
			rec_blocks[rec_nblocks++] = blk;
		}
		slot = recs_hi++;
	}
	struct hp_rec *r = rec_at(slot);
	r->p = p;
	idx_put(rec_idx, (uintptr_t)p, slot);
	rec_idx_used++;
	__atomic_store_n(&nr_recs, nr_recs + 1, __ATOMIC_SEQ_CST);
	return r;
}

static struct hp_rec *rec_lookup(const void *p)
{
	struct rec_ent *e = idx_find((uintptr_t)p);
	return e ? rec_at(e->slot) : NULL;
}

/* Unindexes and frees @p's record; returns its size, 0 if there was
 * none.  Context: rec_lock. */
static uint32_t rec_remove(const void *p)
{
	struct rec_ent *e = idx_find((uintptr_t)p);
	if (!e)
		return 0;
	uint32_t slot = e->slot;
	struct hp_rec *r = rec_at(slot);
	uint32_t size = r->size;
	__atomic_store_n(&e->key, KEY_TOMB, __ATOMIC_RELEASE);
	if (size > HP_INLINE_INIT)
		free(r->init.ext);
	r->p = NULL;
	r->next = rec_free;
	rec_free = slot + 1;
	__atomic_store_n(&nr_recs, nr_recs - 1, __ATOMIC_SEQ_CST);
	return size;
}

/* Records that the pages of @p's copy on @idx ([p, p + size), an address
 * of a chunk's first unit) hold data now: the library wrote them. */
static void mark_backed(const char *p, int idx, size_t size)
{
	struct pcpu_chunk *c = _pcpu_chunk_find(p);
	if (!c)
		return;
	size_t off = (size_t)(p - c->base), page = _pcpu_g.page_size;
	_pcpu_backed_mark(c, idx, (uint32_t)(off / page),
			  (uint32_t)((off + size - 1) / page));
}

/* Backs the pages of @p's copy on @idx ([p, p + size), an address of a
 * chunk's first unit) unless the last range populated there covers them.
 * 0 or -ENOMEM.  Context: rec_lock held. */
static int populate_cached(int idx, const char *p, size_t size)
{
	uintptr_t page = _pcpu_g.page_size;
	uintptr_t dst = (uintptr_t)p + (uintptr_t)idx * _pcpu_g.unit_size;
	uintptr_t lo = dst & ~(page - 1);
	uintptr_t hi = (dst + size + page - 1) & ~(page - 1);
	if (pop_lo && lo >= pop_lo[idx] && hi <= pop_hi[idx])
		return 0;
	struct pcpu_chunk *c = _pcpu_chunk_find(p);
	size_t off = c ? (size_t)(p - c->base) : 0;
	if (c && _pcpu_backed_all(c, idx, (uint32_t)(off / page),
				  (uint32_t)((off + size - 1) / page)))
		return 0; /* holds data already: nothing to back */
	if (_pcpu_os_populate((void *)lo, hi - lo))
		return -ENOMEM;
	mark_backed(p, idx, size);
	if (pop_lo) {
		pop_lo[idx] = lo;
		pop_hi[idx] = hi;
	}
	return 0;
}

/* rec_lock with signals blocked (index.c's rule, see the top). */
static void rec_lock_sig(sigset_t *old)
{
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, old);
	pthread_mutex_lock(&rec_lock);
}

static void rec_unlock_sig(const sigset_t *old)
{
	pthread_mutex_unlock(&rec_lock);
	pthread_sigmask(SIG_SETMASK, old, NULL);
}

void (*_pcpu_hotplug_pause)(const char *where, int idx);

static void pause_point(const char *where, int idx)
{
	void (*f)(const char *, int) =
		__atomic_load_n(&_pcpu_hotplug_pause, __ATOMIC_ACQUIRE);
	if (f)
		f(where, idx);
}

/*
 * coming and nr_coming: a free skips the coming bits when it reads
 * nr_coming 0, so the count must never be below the bits set, at any
 * point of the order of these seq_cst operations: count up before the bit
 * is set, clear the bit before counting down.  (The bit first let a free
 * read 0 after a pcpu_alloc_init had seen the bit and written the copy,
 * and the copy kept its initial value.)  Both are idempotent: a unit is
 * counted once however often it is marked.
 */
static void coming_on(int idx)
{
	uint64_t bit = (uint64_t)1 << (idx % 64);
	__atomic_add_fetch(&nr_coming, 1, __ATOMIC_SEQ_CST);
	pause_point("coming", idx);
	if (__atomic_fetch_or(&coming.bits[idx / 64], bit,
			      __ATOMIC_SEQ_CST) & bit)
		__atomic_sub_fetch(&nr_coming, 1, __ATOMIC_SEQ_CST);
}

static void coming_off(int idx)
{
	uint64_t bit = (uint64_t)1 << (idx % 64);
	if (__atomic_fetch_and(&coming.bits[idx / 64], ~bit,
			       __ATOMIC_SEQ_CST) & bit)
		__atomic_sub_fetch(&nr_coming, 1, __ATOMIC_SEQ_CST);
}

/*
 * fill_batch - copy the init values of records [*cur, ...) into @idx's
 * copies: at most HP_BATCH_RECS records, about HP_BATCH_PAGES pages, each
 * page backed first.  Context: rec_lock held (a record's area stays live,
 * so does its chunk).  Returns 0 (with *cur advanced) or -ENOMEM (nothing
 * copied by this batch).
 */
static int fill_batch(int idx, uint32_t *cur)
{
	enum { MAX_RUNS = 8 };
	uintptr_t run_lo[MAX_RUNS], run_hi[MAX_RUNS];
	uintptr_t page = _pcpu_g.page_size;
	size_t off = (size_t)idx * _pcpu_g.unit_size, pages = 0;
	uint32_t end = recs_hi - *cur > HP_BATCH_RECS ? *cur + HP_BATCH_RECS
						      : recs_hi;
	int nruns = 0;
	uint32_t s;

	for (s = *cur; s < end; s++) {
		const struct hp_rec *r = rec_at(s);
		if (!r->p)
			continue;
		uintptr_t a = (uintptr_t)r->p + off;
		uintptr_t lo = a & ~(page - 1);
		uintptr_t hi = (a + r->size + page - 1) & ~(page - 1);
		if (nruns && lo <= run_hi[nruns - 1] && hi >= run_lo[nruns - 1]) {
			uintptr_t olo = run_lo[nruns - 1], ohi = run_hi[nruns - 1];
			run_lo[nruns - 1] = lo < olo ? lo : olo;
			run_hi[nruns - 1] = hi > ohi ? hi : ohi;
			pages += (run_hi[nruns - 1] - run_lo[nruns - 1] -
				  (ohi - olo)) / page;
			continue;
		}
		if (nruns == MAX_RUNS || pages >= HP_BATCH_PAGES)
			break;
		run_lo[nruns] = lo;
		run_hi[nruns] = hi;
		pages += (hi - lo) / page;
		nruns++;
	}
	end = s;
	for (int i = 0; i < nruns; i++)
		if (_pcpu_os_populate((void *)run_lo[i], run_hi[i] - run_lo[i]))
			return -ENOMEM;
	for (s = *cur; s < end; s++) {
		const struct hp_rec *r = rec_at(s);
		if (!r->p)
			continue;
		mark_backed(r->p, idx, r->size);
		memcpy(r->p + off, rec_init(r), r->size);
	}
	*cur = end;
	return 0;
}

/*
 * _pcpu_initval_fill - copy every live initial value into @idx's copies
 * (index.c: @idx is FILLING, owned by the caller, signals blocked).
 * *@dirty: a discard of @idx's unit failed before: discard it first, and
 * clear *@dirty once that succeeded (a failed discard leaves it set: the
 * unit still holds data, and an abort must keep it dirty).
 * Returns 0 or -ENOMEM (the caller retries or aborts).
 */
int _pcpu_initval_fill(int idx, bool *dirty)
{
	if (*dirty) {
		if (_pcpu_chunks_discard_index(idx))
			return -ENOMEM;
		*dirty = false;
	}
	coming_on(idx);
	/* Dekker with pcpu_alloc_init (count up, then read coming): either
	 * we see its record or it sees us coming and writes our copy. */
	if (__atomic_load_n(&nr_recs, __ATOMIC_SEQ_CST) == 0)
		return 0;
	pthread_mutex_lock(&rec_lock);
	uint32_t cur = 0;
	int r = 0;
	struct hold h = hold_start();
	while (cur < recs_hi) {
		_pcpu_cpuset_atomic_set(&touched, idx);
		r = fill_batch(idx, &cur);
		if (r || cur >= recs_hi)
			break;
		hold_note(h);
		lock_yield(&rec_lock);
		h = hold_start();
	}
	hold_note(h);
	pthread_mutex_unlock(&rec_lock);
	return r;
}

/* The fill of @idx is published (index.c: in use now): not coming. */
void _pcpu_initval_filled(int idx)
{
	coming_off(idx); /* after the used bit: a free sees one or the other */
	_pcpu_cpuset_atomic_clear(&touched, idx);
}

/*
 * The fill of @idx failed (hotplug context): @idx is no longer coming;
 * what was written is dropped.  Returns true when the unit is left dirty
 * (the discard failed: it is discarded before the next fill).
 */
bool _pcpu_initval_abort(int idx)
{
	coming_off(idx);
	/* a pcpu_alloc_init that saw @idx coming writes its copy under
	 * rec_lock: wait it out before reading touched */
	sigset_t old;
	rec_lock_sig(&old);
	rec_unlock_sig(&old);
	bool wrote = _pcpu_cpuset_atomic_test(&touched, idx);
	_pcpu_cpuset_atomic_clear(&touched, idx);
	return wrote && _pcpu_chunks_discard_index(idx) != 0;
}

/* fork, in the child: the thread filling @idx is gone. */
void _pcpu_initval_forget(int idx)
{
	coming_off(idx);
	_pcpu_cpuset_atomic_clear(&touched, idx);
}

void _pcpu_initval_lock(void)
{
	pthread_mutex_lock(&rec_lock);
}

void _pcpu_initval_unlock(void)
{
	pthread_mutex_unlock(&rec_lock);
}

/* @idx's unit was dropped.  Context: rec_lock held. */
void _pcpu_initval_released(int idx)
{
	if (pop_lo)
		pop_lo[idx] = pop_hi[idx] = 0;
}

/* The start of the live area holding word @w (nearest bound bit <= w). */
static uint32_t area_start(const struct pcpu_areamap *m, uint32_t w)
{
	uint32_t g = w / 64;
	uint64_t x = m->bound_map[g] & (~(uint64_t)0 >> (63 - w % 64));
	while (!x && g > 0)
		x = m->bound_map[--g];
	return x ? g * 64 + 63 - (uint32_t)__builtin_clzll(x) : 0;
}

/*
 * True when every live word of page @pg of @c's unit @idx (a page that
 * holds data) holds its initial value.  Context: allocator lock and
 * rec_lock held; no operation writes @idx (RELEASING).  One writer remains: cache.c's pcpu_free zeroes an
 * object on every index of its used snapshot without the allocator lock,
 * so this may read a copy while it is being zeroed.  Harmless: a value
 * read before the zeroing keeps the unit (conservative), a zero read is
 * the truth, and a zeroing that lands after the release only writes
 * zeros into a discarded unit, on an object nobody can get back before
 * that free returns.
 */
static bool page_clean_racy(const struct pcpu_chunk *c, int idx, uint32_t pg);

static bool page_clean(const struct pcpu_chunk *c, int idx, uint32_t pg)
{
	HP_IGNORE_READS_BEGIN();
	bool clean = page_clean_racy(c, idx, pg);
	HP_IGNORE_READS_END();
	return clean;
}

static bool page_clean_racy(const struct pcpu_chunk *c, int idx, uint32_t pg)
{
	const struct pcpu_areamap *m = &c->map;
	const char *unit = c->base + (size_t)idx * _pcpu_g.unit_size;
	const uint32_t *u = (const uint32_t *)unit;
	uint32_t w0 = pg * m->block_bits, w1 = w0 + m->block_bits, skip = 0;
	if (w1 > m->nr_bits)
		w1 = m->nr_bits;
	for (uint32_t g = w0 / 64; g < (w1 + 63) / 64; g++) {
		uint64_t am = m->alloc_map[g];
		while (am) {
			uint32_t w = g * 64 + (uint32_t)__builtin_ctzll(am);
			am &= am - 1;
			if (w < skip || w >= w1 ||
			    !*(const volatile uint32_t *)&u[w])
				continue;
			uint32_t s = area_start(m, w);
			const struct hp_rec *r = rec_lookup(c->base + (size_t)s * 4);
			uint32_t words = _pcpu_areamap_size(m, s);
			if (r && (r->size + 3) / 4 != words)
				r = NULL; /* an object at the start of a page */
			if (!r) {
				/* an object of a pageset (cache.c): size
				 * classes are powers of two from 4 to 256
				 * bytes, aligned to their size in the page */
				for (uint32_t cw = 1; cw <= 64 && !r; cw *= 2) {
					s = w & ~(cw - 1);
					r = rec_lookup(c->base + (size_t)s * 4);
					if (r && r->size > (size_t)cw * 4)
						r = NULL;
					words = cw;
				}
				if (!r)
					return false;
			}
			const unsigned char *q =
				(const unsigned char *)unit + (size_t)s * 4;
			if (memcmp(q, rec_init(r), r->size))
				return false;
			for (size_t b = r->size; b < (size_t)words * 4; b++)
				if (q[b])
					return false;
			skip = s + words;
		}
	}
	return true;
}

/* The chunk with the lowest base above @base (NULL: the first), or NULL. */
static struct pcpu_chunk *chunk_after(const char *base)
{
	size_t i = _pcpu_chunk_after(base);
	return i < _pcpu_nr_chunks ? _pcpu_chunks[i] : NULL;
}

/*
 * _pcpu_initval_unit_clean - true when every live area's copy on @idx
 * equals its initial value.  Reads only pages that hold data (backed.c;
 * the kernel is asked once per chunk): a page that holds none reads zero
 * and holds no initial value either (every copy of an initial value on
 * an index in use was written, and marked, by a fill or
 * pcpu_alloc_init).  Context: @idx RELEASING (index.c: no writer),
 * reclaim_lock held; takes the allocator lock and rec_lock a page at a
 * time.
 */
bool _pcpu_initval_unit_clean(int idx)
{
	const char *pos = NULL;  /* the chunk being scanned */
	const char *done = NULL; /* chunks up to this base are scanned */
	uint32_t pg = 0;
	bool clean = true;

	pthread_mutex_lock(&_pcpu_alloc_lock);
	pthread_mutex_lock(&rec_lock);
	struct hold h = hold_start();
	for (;;) {
		struct pcpu_chunk *c = chunk_after(done);
		if (!c)
			break;
		if (c->base != pos) {
			pos = c->base;
			pg = 0;
			_pcpu_backed_learn(c, idx);
		}
		for (int budget = HP_SCAN_PAGES;
		     pg < c->map.nr_blocks && budget > 0; pg++) {
			const uint64_t *am = c->map.alloc_map;
			uint32_t g0 = pg * c->map.block_bits / 64;
			uint32_t g1 = (pg + 1) * c->map.block_bits / 64;
			bool any = false;
			for (uint32_t g = g0; g < g1 && !any; g++)
				any = am[g] != 0;
			if (!any || !_pcpu_backed_test(c, idx, pg))
				continue;
			budget--;
			if (!page_clean(c, idx, pg)) {
				clean = false;
				goto out;
			}
		}
		if (pg >= c->map.nr_blocks) {
			done = c->base;
			pos = NULL;
			pg = 0;
		}
		hold_note(h);
		pthread_mutex_unlock(&rec_lock);
		lock_yield(&_pcpu_alloc_lock);
		pthread_mutex_lock(&rec_lock);
		h = hold_start();
	}
out:
	hold_note(h);
	pthread_mutex_unlock(&rec_lock);
	pthread_mutex_unlock(&_pcpu_alloc_lock);
	return clean;
}

/* ---- pcpu_alloc_init and pcpu_free ---- */

/* Writes @r's init into every index in use or coming.  Context: rec_lock
 * held.  0 or -ENOMEM. */
static int init_write_all(const struct hp_rec *r)
{
	int nr = _pcpu_g.nr_ids;
	size_t unit = _pcpu_g.unit_size;
	for (int w = 0; w < _pcpu_nr_words(); w++) {
		uint64_t com = _pcpu_cpuset_atomic_word(&coming, w);
		for (uint64_t x = _pcpu_cpuset_atomic_word(&_pcpu_g.used, w) | com; x;
		     x &= x - 1) {
			int idx = w * 64 + __builtin_ctzll(x);
			if (idx >= nr)
				break;
			if (populate_cached(idx, r->p, r->size))
				return -ENOMEM;
			if ((com >> (idx % 64)) & 1)
				_pcpu_cpuset_atomic_set(&touched, idx);
			memcpy(r->p + (size_t)idx * unit, rec_init(r), r->size);
		}
	}
	return 0;
}

void *pcpu_alloc_init(size_t size, size_t align, const void *init)
{
	const unsigned char *b = init;
	size_t i = 0;

	if (b && size && size <= pcpu_alloc_max())
		while (i < size && !b[i])
			i++;
	if (!b || i == size || size > pcpu_alloc_max())
		return pcpu_alloc(size, align); /* zero: nothing to keep */
	_pcpu_ensure_init();
	unsigned char *ext = NULL;
	if (size > HP_INLINE_INIT) {
		ext = malloc(size);
		if (!ext) {
			errno = ENOMEM;
			return NULL;
		}
		memcpy(ext, init, size);
	}
	char *p = pcpu_alloc(size, align);
	if (!p) {
		free(ext);
		return NULL;
	}
	/* rec_lock orders the writes below against an index leaving use:
	 * index.c drops a unit with it held */
	sigset_t old;
	rec_lock_sig(&old);
	struct hp_rec *r = rec_insert(p);
	if (r) {
		r->size = (uint32_t)size;
		if (ext)
			r->init.ext = ext;
		else
			memcpy(r->init.b, init, size);
		if (init_write_all(r) == 0) {
			rec_unlock_sig(&old);
			return p;
		}
		rec_remove(p); /* frees ext */
		ext = NULL;
	}
	rec_unlock_sig(&old);
	free(ext);
	pcpu_free(p); /* zeroes what init_write_all wrote */
	errno = ENOMEM;
	return NULL;
}

static bool mem_zero(const unsigned char *q, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (q[i])
			return false;
	return true;
}

/* Zeroes [p, p + bytes) of @c on coming indexes (a fill may have written
 * it; their pages are known exactly: only the fill and pcpu_alloc_init
 * write a coming unit, and they mark what they write); the caller zeroes
 * it on the indexes in use afterwards. */
static void zero_coming(struct pcpu_chunk *c, char *p, size_t bytes)
{
	size_t page = _pcpu_g.page_size, off = (size_t)(p - c->base);
	uint32_t pg0 = (uint32_t)(off / page);
	uint32_t pg1 = (uint32_t)((off + bytes - 1) / page);
	for (int w = 0; w < _pcpu_nr_words(); w++)
		for (uint64_t x = _pcpu_cpuset_atomic_word(&coming, w); x; x &= x - 1) {
			int idx = w * 64 + __builtin_ctzll(x);
			for (uint32_t pg = pg0; pg <= pg1; pg++) {
				if (!_pcpu_backed_test(c, idx, pg))
					continue;
				size_t lo = pg == pg0 ? off : (size_t)pg * page;
				size_t hi = pg == pg1 ? off + bytes
						      : (size_t)(pg + 1) * page;
				unsigned char *q = (unsigned char *)c->base +
						   (size_t)idx * _pcpu_g.unit_size +
						   lo;
				if (!mem_zero(q, hi - lo))
					memset(q, 0, hi - lo);
			}
		}
}

/* Forgets @p's record, if it has one (a lock-free probe first). */
static void rec_forget(const void *p)
{
	if (__atomic_load_n(&nr_recs, __ATOMIC_SEQ_CST) && rec_maybe(p)) {
		sigset_t old;
		rec_lock_sig(&old);
		rec_remove(p);
		rec_unlock_sig(&old);
	}
}

void _pcpu_initval_area_freed(struct pcpu_chunk *c, void *p, size_t bytes)
{
	_pcpu_index_count_free();
	rec_forget(p);
	if (__atomic_load_n(&nr_coming, __ATOMIC_SEQ_CST))
		zero_coming(c, p, bytes);
}

/*
 * cache.c's hook: an object of @bytes (its class size) is being freed,
 * without the allocator lock, before it is zeroed on the indexes in use.
 * rec_lock is taken only when the object has an init record (a lock-free
 * probe of the index says so): a record removed under it is either
 * copied by a fill batch before (and zeroed here after) or never.
 */
void _pcpu_initval_object_freed(struct pcpu_chunk *c, void *p, size_t bytes)
{
	rec_forget(p);
	if (__atomic_load_n(&nr_coming, __ATOMIC_SEQ_CST))
		zero_coming(c, p, bytes);
}

/*
 * cache.c's second hook, after the object was zeroed (without the
 * allocator lock, which orders chunk.c's frees against the release
 * scan).  No fence: a full one here doubled the cost of an alloc+free
 * pair.  So a free that races the store of `lingering` may go uncounted
 * while the scan read its object before the zeros: the tick then rescans
 * a lingering index anyway every few seconds, which bounds the delay of
 * the release instead of leaving it to the next free.
 */
void _pcpu_initval_object_zeroed(void)
{
	__asm__ __volatile__("" ::: "memory");
	_pcpu_index_count_free();
}

void _pcpu_initval_init(void)
{
	int nr = _pcpu_g.nr_ids;
	pop_lo = calloc((size_t)nr, sizeof(*pop_lo));
	pop_hi = calloc((size_t)nr, sizeof(*pop_hi));
	if (!pop_lo || !pop_hi) {
		free(pop_lo);
		free(pop_hi);
		pop_lo = pop_hi = NULL;
	}
}

/* fork: rec_lock is held across it (after the allocator lock). */
void _pcpu_initval_atfork_prepare(void)
{
	pthread_mutex_lock(&rec_lock);
}

void _pcpu_initval_atfork_parent(void)
{
	pthread_mutex_unlock(&rec_lock);
}

void _pcpu_initval_atfork_child(void)
{
	memset(probes, 0, sizeof(probes));
	pthread_mutex_unlock(&rec_lock);
	/* count what is left coming: this thread's fill, if any */
	nr_coming = 0;
	for (int w = 0; w < _pcpu_nr_words(); w++)
		nr_coming += __builtin_popcountll(coming.bits[w]);
}

/* Test support: what libpcpu knows of @p's initial value. */
void _pcpu_initval_debug(FILE *f, const void *p, int idx)
{
	sigset_t old;
	rec_lock_sig(&old);
	const struct hp_rec *r = rec_lookup(p);
	fprintf(f, "  %p: record %s (size %u); index %d: coming %d touched %d "
		   "state %#x\n",
		p, r ? "yes" : "no", r ? r->size : 0, idx,
		idx >= 0 && idx < _pcpu_g.nr_ids ? _pcpu_cpuset_atomic_test(&coming, idx) : -1,
		idx >= 0 && idx < _pcpu_g.nr_ids ? _pcpu_cpuset_atomic_test(&touched, idx) : -1,
		idx >= 0 && idx < _pcpu_g.nr_ids ? _pcpu_index_state(idx) : -1);
	rec_unlock_sig(&old);
}

/* The coming invariant (docs/DESIGN.md): with no index FILLING (the
 * caller says so), nothing is coming and the count is 0. */
int _pcpu_initval_validate_idle(void)
{
	int n = __atomic_load_n(&nr_coming, __ATOMIC_SEQ_CST);
	for (int w = 0; w < _pcpu_nr_words() && !n; w++)
		n = _pcpu_cpuset_atomic_word(&coming, w) != 0;
	if (!n)
		return 0;
	fprintf(stderr, "libpcpu: validate: initial values: coming count or "
			"bits without an index filling\n");
	return -EUCLEAN;
}
