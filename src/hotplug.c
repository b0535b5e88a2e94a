/*
 * hotplug.c - CPUs that come and go: readiness of indexes, initial values
 * that follow CPUs (pcpu_alloc_init), callbacks in the manner of the
 * kernel's cpuhp states, and the detection of changes.
 *
 * States of a CPU index k (all bits of struct pcpu_cpuset, changed with
 * atomic RMW so that the fast and slow paths read them without a lock):
 *
 *   possible  k < nr_ids
 *   online    sysfs "online" (or the simulated machine)        hp_online
 *   allowed   cgroup cpuset & the main thread's affinity        hp_allowed
 *   down      libpcpu saw k leave online/allowed; it is not
 *             brought up again until it comes back              hp_down
 *   ready     CPU-indexed operations write k's copies           hp_ready
 *   failed    the last bring-up failed; retried by the tick     hp_failed
 *   wanted    an operation ran on k but could not bring it up
 *             itself (callbacks to run, lock busy)              hp_wanted
 *
 * and of the unit of index k (every chunk's k-th unit), guarded by
 * unit_lock:
 *
 *   EMPTY --begin--> PREP --publish--> USED --release--> RELEASING --> EMPTY
 *                     |  (fill: every live init area copied in,   ^
 *                     |   online callbacks)                       |
 *                     +--abort (discard) --> EMPTY     scan: clean?
 *
 * USED is _pcpu_g.used: the copies count (pcpu_sum, pcpu_for_each_cpu,
 * the zeroing in pcpu_free, stats).  ready implies USED.  hp_other marks
 * units written by writers that are not indexed by CPU (thread ids of
 * counters, pcpu_ref's atomic route): they are never released.  The
 * shared slot (nr_ids) is USED from its first use on and never released.
 *
 * Readiness is demand-driven, as before hotplug: an operation on a CPU
 * that is not ready brings it up on the spot when that is cheap (no
 * callbacks registered, the hotplug mutex free; trylock only) and
 * otherwise marks it wanted and goes to the shared slot with atomics.
 * Wanted and failed CPUs are brought up by the hotplug context:
 * pcpu_cpus_refresh, pcpu_sim_cpu_*, pcpu_hotplug_register and the tick
 * (_pcpu_hotplug_tick, from the balance worker).
 *
 * Bring-up (hotplug mutex held): begin, fill (copy every pcpu_alloc_init
 * area in batches of a few dozen pages, each backed first with
 * MADV_POPULATE_WRITE, holding only the init table's rec_lock, handed to
 * waiters between batches), online callbacks in registration order,
 * publish (used, then ready, then pcpu__ok[k] in the rseq path).  A
 * failure (no memory, a callback) runs the dead callbacks of those that
 * ran in reverse order, discards what was written, marks the CPU failed:
 * nothing was ever visible, nothing is half set up.
 *
 * While a unit is PREP its index is in hp_coming: pcpu_alloc_init writes
 * its initial value to every used or coming index, and pcpu_free zeroes
 * coming copies (chunk.c and cache.c zero used ones), so a fill that
 * walks the init table in batches, dropping the lock in between, never
 * misses an area and never leaves a freed one non-zero.  The init table
 * is a slot array (slots never move: a fill's cursor is a slot number)
 * plus an index by address that frees probe without a lock.
 *
 * Teardown (hotplug mutex held): mark down, clear ready, then make sure
 * no operation can still write k's copies: in the rseq path clear
 * pcpu__ok[k] and fence CPU k with membarrier (every section re-checks
 * pcpu__ok inside itself); in the atomic path wait for k's gate (below).
 * Then the dead callbacks (reverse registration order) and the counters'
 * fold, then release: the unit is scanned and released (used bit cleared,
 * MADV_DONTNEED) only when every live area's copy on it equals its
 * initial value; otherwise it is kept, its values still counted, and the
 * scan is retried by the tick after frees.  A fence that fails undoes the
 * teardown (ready again) and leaves it pending.
 *
 * Gates (atomic path): an atomic write to a CPU copy runs between
 * gate_enter (count in the current phase, then re-check ready) and
 * gate_exit.  Teardown clears ready, flips the phase and waits for the
 * old phase's count to drain, twice (both phases), like SRCU: every
 * writer that saw ready has finished, later ones see it clear.
 *
 * Lock order: hotplug mutex (hp_lock; callbacks run holding only it),
 * unit_lock, cpu.c's cpu lock (pcpu__ok[] and the path), the allocator
 * lock (_pcpu_alloc_lock), rec_lock (the init table).  Operations never
 * wait for hp_lock, and take unit_lock and rec_lock (trylock first) only
 * to bring a CPU up, which the caller could not do otherwise.  Fills hold
 * rec_lock alone: allocations never wait for them, frees only when they
 * free a pcpu_alloc_init area.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/netlink.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "chunk.h"

#define HP_MAX_CALLBACKS 64
#define HP_INLINE_INIT 16       /* init bytes kept in the record */
#define HP_REC_BLOCK 1024       /* records per block */
#define HP_BATCH_RECS 4096      /* records per fill batch */
#define HP_BATCH_PAGES 64       /* pages backed per fill batch */
#define HP_OP_MAX_RECS 4096     /* an operation fills at most this many */
#define HP_SCAN_PAGES 1         /* pages scanned per allocator-lock hold */

enum { UNIT_EMPTY, UNIT_PREP, UNIT_USED, UNIT_RELEASING };

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

/* ---- state ---- */

static long long now_ns(void);

/* A spin-wait hint. */
static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__asm__ __volatile__("pause");
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

static bool hp_inited;
static bool hp_sim;
static bool hp_cpu_mode; /* indexes are CPUs: hotplug manages them */

static pthread_mutex_t hp_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread bool tls_hp_held; /* this thread holds hp_lock as the
				     hotplug context (callbacks may run) */
static pthread_mutex_t unit_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t unit_cv = PTHREAD_COND_INITIALIZER;

static struct pcpu_cpuset hp_ready, hp_other, hp_down, hp_failed, hp_wanted;
static struct pcpu_cpuset hp_want_other; /* other-use set-ups to do */
static struct pcpu_cpuset hp_dirty;      /* EMPTY but a discard failed */
static struct pcpu_cpuset hp_coming;     /* PREP units being filled */
static struct pcpu_cpuset hp_touched;    /* PREP units written so far */
static struct pcpu_cpuset hp_online, hp_allowed, hp_up;
static unsigned char unit_state[PCPU_MAX_CPUS + 1]; /* unit_lock */
static pthread_t unit_owner[PCPU_MAX_CPUS + 1]; /* of a PREP unit (fork) */
static int nr_coming;  /* >= the bits in hp_coming (coming_on) */
static int hp_pending; /* work for the tick */

/* Callbacks: hp_lock; nr_cbs is read without it. */
struct hp_callback {
	char name[32];
	int (*online)(int cpu, void *arg);
	void (*dead)(int cpu, void *arg);
	void *arg;
	bool active;
};
static struct hp_callback cbs[HP_MAX_CALLBACKS];
static int nr_cbs;

/* Detection: hp_lock. */
static struct pcpu_topology *hp_topo; /* refreshed copy (real topology) */
static int nl_fd = -1; /* written under hp_lock, read by the tick */
static bool nl_tried;
static long long next_read_ns; /* atomic: next periodic re-read */
static unsigned long free_gen, scanned_gen; /* pcpu_free count, atomic */
/* atomic: some used CPU is not ready (its memory waits for frees to be
 * released); only then does a free count in free_gen, so that pcpu_free
 * writes no shared line in the common case */
static int lingering;
#define HP_RESCAN_NS (10 * 1000000000LL) /* a lingering CPU's rescan */
static long long next_rescan_ns; /* hp_lock */

/* Longest stretch the hotplug context held the allocator lock or rec_lock
 * (fill, scan, discard): wall time and the thread's CPU time, in ns; for
 * pcpu-bench hotplug (the CPU time excludes preemption of the holder). */
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

/* A ring of the last unit transitions, for _pcpu_hotplug_debug (what
 * happened to an index, when a test finds a copy it did not expect). */
#define HP_EV_RING 1024
struct hp_ev {
	unsigned long seq;
	int idx;
	char what; /* b begin, p publish, a abort (arg: wrote | ctx << 1 |
		      discard failed << 2), r release (arg: discard error),
		      d dirty unit discarded */
	int arg;
};
static struct hp_ev hp_evs[HP_EV_RING];
static unsigned long hp_ev_seq;

static void hp_event(int idx, char what, int arg)
{
	unsigned long n = __atomic_fetch_add(&hp_ev_seq, 1, __ATOMIC_RELAXED);
	struct hp_ev *e = &hp_evs[n % HP_EV_RING];
	__atomic_store_n(&e->idx, idx, __ATOMIC_RELAXED);
	__atomic_store_n(&e->what, what, __ATOMIC_RELAXED);
	__atomic_store_n(&e->arg, arg, __ATOMIC_RELAXED);
	__atomic_store_n(&e->seq, n + 1, __ATOMIC_RELEASE);
}

/* ---- bit helpers ---- */

static inline bool bit_get(const struct pcpu_cpuset *s, int i)
{
	return (__atomic_load_n(&s->bits[i / 64], __ATOMIC_SEQ_CST) >>
		(i % 64)) & 1;
}

static inline void bit_on(struct pcpu_cpuset *s, int i)
{
	__atomic_fetch_or(&s->bits[i / 64], (uint64_t)1 << (i % 64),
			  __ATOMIC_SEQ_CST);
}

static inline void bit_off(struct pcpu_cpuset *s, int i)
{
	__atomic_fetch_and(&s->bits[i / 64], ~((uint64_t)1 << (i % 64)),
			   __ATOMIC_SEQ_CST);
}

static inline uint64_t word_get(const struct pcpu_cpuset *s, int w)
{
	return __atomic_load_n(&s->bits[w], __ATOMIC_SEQ_CST);
}

static inline int nr_words(void)
{
	return _pcpu_g.nr_ids / 64 + 1;
}

static void set_pending(void)
{
	__atomic_store_n(&hp_pending, 1, __ATOMIC_SEQ_CST);
}

static bool needs_context(void)
{
	return hp_cpu_mode && __atomic_load_n(&nr_cbs, __ATOMIC_ACQUIRE) > 0;
}

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- gates (atomic path) ---- */

struct hp_gate {
	unsigned long n[2];
	unsigned int phase;
} __attribute__((aligned(64)));
static struct hp_gate gates[PCPU_MAX_CPUS];

/* Returns the phase entered, or -1 (nothing held) when @k is not ready. */
static int gate_enter(int k)
{
	struct hp_gate *g = &gates[k];
	unsigned int ph = __atomic_load_n(&g->phase, __ATOMIC_SEQ_CST) & 1;
	__atomic_fetch_add(&g->n[ph], 1, __ATOMIC_SEQ_CST);
	if (bit_get(&hp_ready, k))
		return (int)ph;
	__atomic_fetch_sub(&g->n[ph], 1, __ATOMIC_RELEASE);
	return -1;
}

static void gate_exit(int k, int ph)
{
	__atomic_fetch_sub(&gates[k].n[ph], 1, __ATOMIC_RELEASE);
}

static void gate_drain(struct hp_gate *g, unsigned int ph)
{
	for (int spins = 0; __atomic_load_n(&g->n[ph], __ATOMIC_SEQ_CST);
	     spins++) {
		if (spins < 64) {
			sched_yield();
		} else {
			struct timespec ts = { 0, 20000 };
			nanosleep(&ts, NULL);
		}
	}
}

/* After ready[k] was cleared: every writer that saw it set has left. */
static void gate_wait(int k)
{
	struct hp_gate *g = &gates[k];
	for (int i = 0; i < 2; i++) {
		unsigned int old = __atomic_load_n(&g->phase, __ATOMIC_SEQ_CST);
		__atomic_store_n(&g->phase, old ^ 1, __ATOMIC_SEQ_CST);
		gate_drain(g, old & 1);
	}
}

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

/* Backs the pages of [dst, dst + size) on index @idx unless the last
 * range populated there covers them.  0 or -ENOMEM. */
static int populate_cached(int idx, const char *dst, size_t size)
{
	uintptr_t page = _pcpu_g.page_size;
	uintptr_t lo = (uintptr_t)dst & ~(page - 1);
	uintptr_t hi = ((uintptr_t)dst + size + page - 1) & ~(page - 1);
	if (pop_lo && lo >= pop_lo[idx] && hi <= pop_hi[idx])
		return 0;
	if (_pcpu_os_populate((void *)lo, hi - lo))
		return -ENOMEM;
	if (pop_lo) {
		pop_lo[idx] = lo;
		pop_hi[idx] = hi;
	}
	return 0;
}

/* ---- units ---- */

/* The shared slot needs no set-up (it is used before any init record
 * exists) and is never released: one atomic OR, no lock, so that an
 * operation in a signal handler can always fall back to it. */
static void shared_make_used(void)
{
	int s = _pcpu_g.nr_ids;
	if (PCPU_LIKELY(bit_get(&_pcpu_g.used, s)))
		return;
	bit_on(&_pcpu_g.used, s);
}

/* Drops @idx's memory in every chunk; 0 or -errno. */
static int unit_discard(int idx)
{
	struct hold h = hold_start();
	int r = _pcpu_chunks_discard_index(idx); /* OS calls: no alloc lock */
	hold_note(h);
	pthread_mutex_lock(&_pcpu_alloc_lock);
	if (pop_lo)
		pop_lo[idx] = pop_hi[idx] = 0;
	pthread_mutex_unlock(&_pcpu_alloc_lock);
	return r;
}

/*
 * unit_begin - EMPTY -> PREP.
 * @wait: wait for a set-up or release in progress elsewhere.
 * Returns: 1 when the unit is USED already, 0 when the caller now owns it
 * in PREP (it must publish or abort), -EAGAIN when busy and !@wait.
 */
static int unit_begin(int idx, bool wait)
{
	/* Without @wait (an operation, maybe in a signal handler that
	 * interrupted this very lock's holder) never block on it.  Once
	 * the trylock succeeded, the interrupted code holds none of our
	 * locks, so the blocking locks that follow (publish, abort) are
	 * safe. */
	if (wait)
		pthread_mutex_lock(&unit_lock);
	else if (pthread_mutex_trylock(&unit_lock))
		return -EAGAIN;
	for (;;) {
		unsigned char st = unit_state[idx];
		if (st == UNIT_USED) {
			pthread_mutex_unlock(&unit_lock);
			return 1;
		}
		if (st == UNIT_EMPTY)
			break;
		if (!wait) {
			pthread_mutex_unlock(&unit_lock);
			return -EAGAIN;
		}
		pthread_cond_wait(&unit_cv, &unit_lock);
	}
	unit_state[idx] = UNIT_PREP;
	unit_owner[idx] = pthread_self();
	pthread_mutex_unlock(&unit_lock);
	hp_event(idx, 'b', wait);
	return 0;
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
 * hp_coming and nr_coming: a free skips the coming bits when it reads
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
	if (__atomic_fetch_or(&hp_coming.bits[idx / 64], bit,
			      __ATOMIC_SEQ_CST) & bit)
		__atomic_sub_fetch(&nr_coming, 1, __ATOMIC_SEQ_CST);
}

static void coming_off(int idx)
{
	uint64_t bit = (uint64_t)1 << (idx % 64);
	if (__atomic_fetch_and(&hp_coming.bits[idx / 64], ~bit,
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
		if (r->p)
			memcpy(r->p + off, rec_init(r), r->size);
	}
	*cur = end;
	return 0;
}

/*
 * unit_fill - copy every live init area into @idx's unit (PREP, owned).
 * @ctx: hotplug context (may block, may discard a dirty unit); otherwise
 * an operation's slow path: -EAGAIN rather than wait or do much.
 * Returns: 0, -EAGAIN or -ENOMEM; the caller aborts on error.
 */
static int unit_fill(int idx, bool ctx)
{
	if (bit_get(&hp_dirty, idx)) {
		if (!ctx)
			return -EAGAIN;
		if (unit_discard(idx))
			return -ENOMEM;
		bit_off(&hp_dirty, idx);
		hp_event(idx, 'd', 0);
	}
	coming_on(idx);
	/* Dekker with pcpu_alloc_init (count up, then read coming): either
	 * we see its record or it sees us coming and writes our copy. */
	long n = __atomic_load_n(&nr_recs, __ATOMIC_SEQ_CST);
	if (n == 0)
		return 0;
	if (!ctx && n > HP_OP_MAX_RECS)
		return -EAGAIN;
	if (ctx)
		pthread_mutex_lock(&rec_lock);
	else if (pthread_mutex_trylock(&rec_lock))
		return -EAGAIN;
	/* (A trylock that succeeded proved the interrupted code of this
	 * thread, if any, does not hold the lock: later blocking locks are
	 * safe.) */
	uint32_t cur = 0;
	int r = 0;
	struct hold h = hold_start();
	while (cur < recs_hi) {
		bit_on(&hp_touched, idx);
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

/* PREP -> USED (owned by the caller): the copies count from now on; with
 * @as_cpu CPU-indexed operations may write them. */
static void unit_publish(int idx, bool as_cpu, bool as_other)
{
	pthread_mutex_lock(&unit_lock);
	hp_event(idx, 'p', as_cpu);
	bit_on(&_pcpu_g.used, idx);
	unit_state[idx] = UNIT_USED;
	if (as_other)
		bit_on(&hp_other, idx);
	if (as_cpu)
		bit_on(&hp_ready, idx);
	coming_off(idx); /* after used: pcpu_free sees one or the other */
	bit_off(&hp_touched, idx);
	pthread_cond_broadcast(&unit_cv);
	pthread_mutex_unlock(&unit_lock);
	if (as_cpu)
		_pcpu_cpu_ok_set(idx, true);
}

/* PREP (owned) -> EMPTY, dropping what was written (or marking the unit
 * dirty for the hotplug context when it cannot discard here). */
static void unit_abort(int idx, bool ctx)
{
	coming_off(idx);
	/* A pcpu_alloc_init that saw @idx coming writes its copy and marks
	 * it touched under the allocator lock: wait it out before reading
	 * touched.  Not in an operation's slow path (it may interrupt the
	 * lock's holder): there, a busy lock counts as written. */
	bool synced = true;
	if (ctx)
		pthread_mutex_lock(&_pcpu_alloc_lock);
	else
		synced = !pthread_mutex_trylock(&_pcpu_alloc_lock);
	if (synced)
		pthread_mutex_unlock(&_pcpu_alloc_lock);
	bool wrote = !synced || bit_get(&hp_touched, idx);
	bit_off(&hp_touched, idx);
	int dr = 0;
	if (wrote && ctx && (dr = unit_discard(idx)) == 0)
		wrote = false;
	hp_event(idx, 'a', (wrote ? 1 : 0) | (ctx ? 2 : 0) | (dr ? 4 : 0));
	pthread_mutex_lock(&unit_lock);
	if (wrote) {
		bit_on(&hp_dirty, idx);
		set_pending();
	}
	unit_state[idx] = UNIT_EMPTY;
	pthread_cond_broadcast(&unit_cv);
	pthread_mutex_unlock(&unit_lock);
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
 * True when every live word of page @pg of @c's unit @idx holds its
 * initial value.  Context: allocator lock held; no operation writes @idx
 * (not ready, fenced).  One writer remains: cache.c's pcpu_free zeroes an
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

/* True when every live area's copy on @idx equals its initial value.
 * Context: unit RELEASING (no writer); takes the allocator lock and
 * rec_lock a page at a time. */
static bool unit_clean(int idx)
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
		}
		for (int budget = HP_SCAN_PAGES;
		     pg < c->map.nr_blocks && budget > 0; pg++) {
			const uint64_t *am = c->map.alloc_map;
			uint32_t g0 = pg * c->map.block_bits / 64;
			uint32_t g1 = (pg + 1) * c->map.block_bits / 64;
			bool any = false;
			for (uint32_t g = g0; g < g1 && !any; g++)
				any = am[g] != 0;
			if (!any)
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

/*
 * unit_release - USED -> EMPTY for a CPU unit nobody indexes any more,
 * when nothing is left in it.  Context: hotplug context.
 * Returns: 0 released, -EBUSY kept (in use, or values left).
 */
static int unit_release(int idx)
{
	if (idx >= _pcpu_g.nr_ids)
		return -EBUSY;
	pthread_mutex_lock(&unit_lock);
	if (unit_state[idx] != UNIT_USED || bit_get(&hp_ready, idx) ||
	    bit_get(&hp_other, idx)) {
		pthread_mutex_unlock(&unit_lock);
		return -EBUSY;
	}
	unit_state[idx] = UNIT_RELEASING;
	pthread_mutex_unlock(&unit_lock);

	bool clean = unit_clean(idx);
	pthread_mutex_lock(&unit_lock);
	if (clean)
		bit_off(&_pcpu_g.used, idx);
	else
		unit_state[idx] = UNIT_USED;
	pthread_cond_broadcast(&unit_cv);
	pthread_mutex_unlock(&unit_lock);
	if (!clean)
		return -EBUSY;
	/* A pcpu_free that saw the used bit finishes before the discard
	 * (both under the allocator lock); later ones skip this index. */
	int r = unit_discard(idx);
	hp_event(idx, 'r', r);
	pthread_mutex_lock(&unit_lock);
	if (r)
		bit_on(&hp_dirty, idx);
	unit_state[idx] = UNIT_EMPTY;
	pthread_cond_broadcast(&unit_cv);
	pthread_mutex_unlock(&unit_lock);
	return 0;
}

/* ---- callbacks (hp_lock held) ---- */

/* Online callbacks in order; on a failure the dead callbacks of those
 * before it, in reverse.  Returns 0 or the (negative) error. */
static int run_online(int cpu)
{
	int i, r = 0;
	for (i = 0; i < HP_MAX_CALLBACKS; i++) {
		if (!cbs[i].active || !cbs[i].online)
			continue;
		r = cbs[i].online(cpu, cbs[i].arg);
		if (r)
			break;
	}
	if (!r)
		return 0;
	while (--i >= 0)
		if (cbs[i].active && cbs[i].dead)
			cbs[i].dead(cpu, cbs[i].arg);
	return r < 0 ? r : -ECANCELED;
}

static void run_dead(int cpu)
{
	for (int i = HP_MAX_CALLBACKS - 1; i >= 0; i--)
		if (cbs[i].active && cbs[i].dead)
			cbs[i].dead(cpu, cbs[i].arg);
}

/* ---- bring-up and teardown (hp_lock held) ---- */

/*
 * cpu_up_locked - make CPU @k ready.
 * @ctx: hotplug context (callbacks, may block); otherwise an operation's
 * slow path (only when no callback is registered; never waits).
 * Returns: 0 ready, -ENODEV down, -EAGAIN (not in context: would block),
 * -ENOMEM, or an online callback's error (the CPU is then failed).
 */
static int cpu_up_locked(int k, bool ctx)
{
	if (bit_get(&hp_ready, k))
		return 0;
	if (bit_get(&hp_down, k))
		return -ENODEV;
	int r = unit_begin(k, ctx);
	if (r < 0)
		return r;
	bool fresh = r == 0;
	if (fresh) {
		r = unit_fill(k, ctx);
		if (r) {
			unit_abort(k, ctx);
			goto fail;
		}
	}
	if (ctx && hp_cpu_mode) {
		r = run_online(k);
		if (r) {
			if (fresh) {
				bit_on(&hp_touched, k); /* callbacks may have */
				unit_abort(k, true);
			}
			goto fail;
		}
	}
	if (fresh) {
		unit_publish(k, true, false);
	} else {
		pthread_mutex_lock(&unit_lock);
		bit_on(&hp_ready, k);
		pthread_mutex_unlock(&unit_lock);
		_pcpu_cpu_ok_set(k, true);
	}
	bit_off(&hp_failed, k);
	bit_off(&hp_wanted, k);
	return 0;
fail:
	if (r != -EAGAIN) {
		bit_on(&hp_failed, k);
		set_pending();
	}
	return r;
}

/* membarrier rseq fence of CPU @k (else of every CPU), a few tries. */
static int fence_cpu(int k)
{
	for (int i = 0; i < 3; i++)
		if (!_pcpu_os_rseq_fence(k))
			return 0;
	for (int i = 0; i < 3; i++)
		if (!_pcpu_os_rseq_fence(-1))
			return 0;
	return -EIO;
}

/*
 * cpu_down_locked - CPU @k left: stop indexing it, run the dead callbacks,
 * release its memory if nothing is left in it.
 * Returns: 0, or -EAGAIN when running sections could not be fenced (the
 * CPU stays ready and the teardown pending).
 */
static int cpu_down_locked(int k)
{
	bool was;

	bit_on(&hp_down, k);
	bit_off(&hp_wanted, k);
	bit_off(&hp_failed, k);
	pthread_mutex_lock(&unit_lock);
	was = bit_get(&hp_ready, k);
	if (was)
		bit_off(&hp_ready, k);
	pthread_mutex_unlock(&unit_lock);
	if (was) {
		bool rseq = _pcpu_cpu_ok_set(k, false);
		/* mm_cid k (counters' slots, folded below) may run on any
		 * CPU: then every CPU is fenced */
		int fk = __atomic_load_n(&pcpu__fast.cid_nr, __ATOMIC_ACQUIRE)
				 ? -1
				 : k;
		if (rseq && fence_cpu(fk)) {
			pthread_mutex_lock(&unit_lock);
			bit_on(&hp_ready, k);
			pthread_mutex_unlock(&unit_lock);
			_pcpu_cpu_ok_set(k, true);
			set_pending();
			return -EAGAIN;
		}
		gate_wait(k);
		if (hp_cpu_mode)
			run_dead(k);
		unsigned int which = PCPU_COUNTER_FOLD_CPU;
		if (__atomic_load_n(&pcpu__fast.cid_nr, __ATOMIC_ACQUIRE))
			which |= PCPU_COUNTER_FOLD_CID; /* mm_cid k was only ever
						 written while k was ready */
		_pcpu_counter_fold_index(k, which);
	}
	/* frees from here on count (free_gen): a release that finds values
	   left is retried after them; the next pass recomputes this */
	__atomic_store_n(&lingering, 1, __ATOMIC_SEQ_CST);
	if (bit_get(&_pcpu_g.used, k))
		unit_release(k); /* values left: kept, retried after frees */
	set_pending();
	return 0;
}

/* Sets up @k's unit for other writers (hotplug context). */
static void other_up_locked(int k)
{
	bit_off(&hp_want_other, k);
	int r = unit_begin(k, true);
	if (r == 1) {
		pthread_mutex_lock(&unit_lock);
		if (unit_state[k] == UNIT_USED)
			bit_on(&hp_other, k);
		pthread_mutex_unlock(&unit_lock);
	} else if (r == 0) {
		if (unit_fill(k, true) == 0)
			unit_publish(k, false, true);
		else
			unit_abort(k, true);
	}
}

/*
 * process_pending_locked - bring up wanted CPUs (and failed ones with
 * @retry), finish pending teardowns, discard dirty units, and with @scan
 * try again to release units of CPUs that are not ready.
 */
static void process_pending_locked(bool retry, bool scan)
{
	int nw = nr_words(), nr = _pcpu_g.nr_ids;
	bool left = false;

	__atomic_store_n(&hp_pending, 0, __ATOMIC_SEQ_CST);
	/* frees during this pass count; the end of the pass says whether
	   later ones must */
	__atomic_store_n(&lingering, 1, __ATOMIC_SEQ_CST);
	for (int w = 0; w < nw; w++) {
		uint64_t x = word_get(&hp_wanted, w) |
			     (retry ? word_get(&hp_failed, w) : 0);
		x &= ~word_get(&hp_down, w) & ~word_get(&hp_ready, w);
		for (; x; x &= x - 1) {
			int k = w * 64 + __builtin_ctzll(x);
			if (k < nr)
				cpu_up_locked(k, true);
		}
		for (x = word_get(&hp_want_other, w); x; x &= x - 1) {
			int k = w * 64 + __builtin_ctzll(x);
			if (k < nr)
				other_up_locked(k);
		}
		for (x = word_get(&hp_down, w) & word_get(&hp_ready, w); x;
		     x &= x - 1) {
			int k = w * 64 + __builtin_ctzll(x);
			if (k < nr)
				cpu_down_locked(k);
		}
		for (x = word_get(&hp_dirty, w); x; x &= x - 1) {
			int k = w * 64 + __builtin_ctzll(x);
			pthread_mutex_lock(&unit_lock);
			bool empty = unit_state[k] == UNIT_EMPTY;
			pthread_mutex_unlock(&unit_lock);
			if (empty && unit_discard(k) == 0) {
				bit_off(&hp_dirty, k);
				hp_event(k, 'd', 1);
			}
		}
		if (scan)
			for (x = word_get(&_pcpu_g.used, w) &
				 ~word_get(&hp_ready, w) & ~word_get(&hp_other, w);
			     x; x &= x - 1) {
				int k = w * 64 + __builtin_ctzll(x);
				if (k < nr)
					unit_release(k);
			}
	}
	for (int w = 0; w < nw && !left; w++) {
		uint64_t live = word_get(&hp_ready, w) | word_get(&hp_other, w);
		left = ((word_get(&hp_wanted, w) | word_get(&hp_failed, w)) &
			~word_get(&hp_down, w) & ~word_get(&hp_ready, w)) ||
		       word_get(&hp_want_other, w) || word_get(&hp_dirty, w) ||
		       (word_get(&hp_down, w) & word_get(&hp_ready, w)) ||
		       (word_get(&_pcpu_g.used, w) & ~live &
			(w == nr / 64 ? ~((uint64_t)1 << (nr % 64)) : ~(uint64_t)0));
	}
	bool ling = false;
	for (int w = 0; w < nw && !ling; w++)
		ling = word_get(&_pcpu_g.used, w) &
		       ~(word_get(&hp_ready, w) | word_get(&hp_other, w)) &
		       (w == nr / 64 ? ~((uint64_t)1 << (nr % 64)) : ~(uint64_t)0);
	__atomic_store_n(&lingering, ling, __ATOMIC_SEQ_CST);
	if (left)
		set_pending();
}

static void hp_lock_ctx(void)
{
	pthread_mutex_lock(&hp_lock);
	tls_hp_held = true;
}

static void hp_unlock_ctx(void)
{
	tls_hp_held = false;
	pthread_mutex_unlock(&hp_lock);
}

/* ---- the operation side ---- */

/* Asks the hotplug context to bring @k up. */
static void want(int k)
{
	if (bit_get(&hp_wanted, k))
		return;
	bit_on(&hp_wanted, k);
	set_pending();
	_pcpu_balance_kick(false);
}

/* An operation on CPU @k, which is not ready: bring it up here if that is
 * cheap and allowed.  0 when it is ready now. */
static int cpu_up_fast(int k)
{
	if (bit_get(&hp_down, k) || bit_get(&hp_failed, k))
		return -ENODEV;
	if (needs_context() || pthread_mutex_trylock(&hp_lock)) {
		want(k);
		return -EAGAIN;
	}
	int r = needs_context() ? -EAGAIN : cpu_up_locked(k, false);
	pthread_mutex_unlock(&hp_lock);
	if (r == -EAGAIN)
		want(k);
	return r;
}

int _pcpu_hotplug_enter(int raw, bool gate, int *ticket)
{
	int nr = _pcpu_g.nr_ids;

	*ticket = -1;
	if (raw >= 0 && raw < nr) {
		for (int tries = 0; tries < 4; tries++) {
			if (PCPU_LIKELY(bit_get(&hp_ready, raw))) {
				if (!gate)
					return raw;
				int ph = gate_enter(raw);
				if (PCPU_LIKELY(ph >= 0)) {
					*ticket = ph;
					return raw;
				}
				continue; /* taken down meanwhile */
			}
			if (cpu_up_fast(raw))
				break;
		}
	}
	shared_make_used();
	return nr;
}

void _pcpu_hotplug_exit(int idx, int ticket)
{
	if (ticket >= 0)
		gate_exit(idx, ticket);
}

int _pcpu_hotplug_other(int idx)
{
	int nr = _pcpu_g.nr_ids;

	if (idx >= 0 && idx < nr) {
		if (PCPU_LIKELY(bit_get(&hp_other, idx)))
			return idx;
		int r = unit_begin(idx, false);
		if (r == 1 && !pthread_mutex_trylock(&unit_lock)) {
			bool ok = unit_state[idx] == UNIT_USED;
			if (ok)
				bit_on(&hp_other, idx);
			pthread_mutex_unlock(&unit_lock);
			if (ok)
				return idx;
		} else if (r == 0) {
			r = unit_fill(idx, false);
			if (r == 0) {
				unit_publish(idx, false, true);
				return idx;
			}
			unit_abort(idx, false);
			if (!bit_get(&hp_want_other, idx)) {
				bit_on(&hp_want_other, idx);
				set_pending();
				_pcpu_balance_kick(false);
			}
		}
	}
	shared_make_used();
	return nr;
}

/* ---- pcpu_alloc_init and pcpu_free ---- */

/* Writes @r's init into every used or coming index.  Context: allocator
 * lock and rec_lock held.  0 or -ENOMEM. */
static int init_write_all(const struct hp_rec *r)
{
	int nr = _pcpu_g.nr_ids;
	size_t unit = _pcpu_g.unit_size;
	for (int w = 0; w < nr_words(); w++) {
		uint64_t coming = word_get(&hp_coming, w);
		for (uint64_t x = word_get(&_pcpu_g.used, w) | coming; x;
		     x &= x - 1) {
			int idx = w * 64 + __builtin_ctzll(x);
			if (idx > nr)
				break;
			char *dst = r->p + (size_t)idx * unit;
			if (populate_cached(idx, dst, r->size))
				return -ENOMEM;
			if ((coming >> (idx % 64)) & 1)
				bit_on(&hp_touched, idx);
			memcpy(dst, rec_init(r), r->size);
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
	/* The shared slot is used before any record exists, so it never
	 * needs a fill. */
	shared_make_used();
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
	/* The allocator lock orders the writes below against the discard of
	 * a unit being released or dropped (chunk.c takes it). */
	pthread_mutex_lock(&_pcpu_alloc_lock);
	pthread_mutex_lock(&rec_lock);
	struct hp_rec *r = rec_insert(p);
	if (r) {
		r->size = (uint32_t)size;
		if (ext)
			r->init.ext = ext;
		else
			memcpy(r->init.b, init, size);
		if (init_write_all(r) == 0) {
			pthread_mutex_unlock(&rec_lock);
			pthread_mutex_unlock(&_pcpu_alloc_lock);
			return p;
		}
		rec_remove(p); /* frees ext */
		ext = NULL;
	}
	pthread_mutex_unlock(&rec_lock);
	pthread_mutex_unlock(&_pcpu_alloc_lock);
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

/* Zeroes [p, p + bytes) on coming indexes (their fill or callbacks may
 * have written it); the caller zeroes it on used ones afterwards. */
static void zero_coming(void *p, size_t bytes)
{
	for (int w = 0; w < nr_words(); w++)
		for (uint64_t x = word_get(&hp_coming, w); x; x &= x - 1) {
			int idx = w * 64 + __builtin_ctzll(x);
			unsigned char *q = (unsigned char *)p +
					   (size_t)idx * _pcpu_g.unit_size;
			if (!mem_zero(q, bytes))
				memset(q, 0, bytes);
		}
}

static inline void count_free(void)
{
	if (PCPU_UNLIKELY(__atomic_load_n(&lingering, __ATOMIC_SEQ_CST)))
		__atomic_add_fetch(&free_gen, 1, __ATOMIC_RELAXED);
}

void _pcpu_hotplug_area_freed(void *p)
{
	count_free();
	if (__atomic_load_n(&nr_recs, __ATOMIC_SEQ_CST) && rec_maybe(p)) {
		pthread_mutex_lock(&rec_lock);
		rec_remove(p);
		pthread_mutex_unlock(&rec_lock);
	}
	if (!__atomic_load_n(&nr_coming, __ATOMIC_SEQ_CST))
		return;
	struct pcpu_chunk *c = _pcpu_chunk_lookup(p);
	if (!c)
		return;
	uint32_t off = (uint32_t)(((char *)p - c->base) / 4);
	zero_coming(p, (size_t)_pcpu_areamap_size(&c->map, off) * 4);
}

/*
 * cache.c's hook: an object of @bytes (its class size) is being freed,
 * without the allocator lock, before it is zeroed on used indexes.
 * rec_lock is taken only when the object has an init record (a lock-free
 * probe of the index says so): a record removed under it is either
 * copied by a fill batch before (and zeroed here after) or never.
 */
void _pcpu_hotplug_object_freed(void *p, size_t bytes)
{
	if (__atomic_load_n(&nr_recs, __ATOMIC_SEQ_CST) && rec_maybe(p)) {
		pthread_mutex_lock(&rec_lock);
		rec_remove(p);
		pthread_mutex_unlock(&rec_lock);
	}
	if (__atomic_load_n(&nr_coming, __ATOMIC_SEQ_CST))
		zero_coming(p, bytes);
}

/*
 * cache.c's second hook, after the object was zeroed (without the
 * allocator lock, which orders chunk.c's frees against the release
 * scan).  No fence: a full one here doubled the cost of an alloc+free
 * pair.  So a free that races the store of `lingering` may go uncounted
 * while the scan read its object before the zeros: the tick then rescans
 * a lingering CPU anyway every HP_RESCAN_NS, which bounds the delay of
 * the release instead of leaving it to the next free.
 */
void _pcpu_hotplug_object_zeroed(void)
{
	__asm__ __volatile__("" ::: "memory");
	count_free();
}

/* ---- detection ---- */

/* The main thread's affinity (the process's); 0 or -errno. */
static int main_affinity(struct pcpu_cpuset *out)
{
	size_t size = CPU_ALLOC_SIZE(PCPU_MAX_CPUS);
	cpu_set_t *mask = CPU_ALLOC(PCPU_MAX_CPUS);
	int ret = 0;

	if (!mask)
		return -ENOMEM;
	if (sched_getaffinity(getpid(), size, mask) &&
	    sched_getaffinity(0, size, mask))
		ret = -errno;
	if (!ret) {
		_pcpu_cpuset_zero(out);
		for (int c = 0; c < PCPU_MAX_CPUS; c++)
			if (CPU_ISSET_S(c, size, mask))
				_pcpu_cpuset_set(out, c);
	}
	CPU_FREE(mask);
	return ret;
}

/* Applies new online/allowed masks: CPUs that left are torn down, CPUs
 * that came back may be brought up again.  Context: hp_lock. */
static void apply_locked(const struct pcpu_cpuset *online,
			 const struct pcpu_cpuset *allowed)
{
	int nr = _pcpu_g.nr_ids;
	for (int w = 0; w < nr_words(); w++) {
		uint64_t now = online->bits[w] & allowed->bits[w];
		if (w == nr / 64)
			now &= ((uint64_t)1 << (nr % 64)) - 1;
		uint64_t before = word_get(&hp_up, w);
		__atomic_store_n(&hp_online.bits[w], online->bits[w],
				 __ATOMIC_SEQ_CST);
		__atomic_store_n(&hp_allowed.bits[w], allowed->bits[w],
				 __ATOMIC_SEQ_CST);
		__atomic_store_n(&hp_up.bits[w], now, __ATOMIC_SEQ_CST);
		if (!hp_cpu_mode)
			continue;
		for (uint64_t x = before & ~now; x; x &= x - 1)
			cpu_down_locked(w * 64 + __builtin_ctzll(x));
		for (uint64_t x = now & ~before; x; x &= x - 1) {
			int k = w * 64 + __builtin_ctzll(x);
			bit_off(&hp_down, k);
			if (bit_get(&hp_failed, k) || bit_get(&hp_wanted, k))
				set_pending();
		}
	}
}

/* Re-reads online and allowed CPUs (real topology).  Context: hp_lock. */
static void refresh_locked(void)
{
	struct pcpu_cpuset aff, allowed;

	if (hp_sim || !hp_topo)
		return;
	/* "/" as the root: topology.c then reads the files but not the
	 * calling thread's affinity; the process's is the main thread's. */
	_pcpu_topology_refresh(hp_topo, "/");
	allowed = hp_topo->allowed;
	if (main_affinity(&aff) == 0) {
		bool any = false;
		for (int w = 0; w < PCPU_CPUSET_WORDS; w++) {
			allowed.bits[w] &= aff.bits[w];
			any |= allowed.bits[w] != 0;
		}
		if (!any)
			allowed = hp_topo->online;
	}
	apply_locked(&hp_topo->online, &allowed);
	__atomic_store_n(&next_read_ns, now_ns() + (nl_fd >= 0 ? 5 : 1) *
						    1000000000LL,
			 __ATOMIC_RELAXED);
}

int _pcpu_hotplug_uevent_parse(const char *msg, size_t len, int *cpu)
{
	static const char *const actions[] = { "online", "offline", "add",
					       "remove" };
	static const char devdir[] = "/devices/system/cpu/cpu";
	const char *end = msg + len, *action = NULL, *devpath = NULL;
	const char *subsys = NULL;
	size_t alen = 0, dlen = 0, slen = 0;

	const char *nul = memchr(msg, '\0', len);
	if (!nul)
		return -EINVAL;
	const char *at = memchr(msg, '@', (size_t)(nul - msg));
	if (!at || at == msg)
		return -EINVAL;
	action = msg;
	alen = (size_t)(at - msg);
	devpath = at + 1;
	dlen = (size_t)(nul - devpath);
	for (const char *s = nul + 1; s < end;) {
		const char *e = memchr(s, '\0', (size_t)(end - s));
		size_t n = e ? (size_t)(e - s) : (size_t)(end - s);
		if (n > 7 && !memcmp(s, "ACTION=", 7)) {
			action = s + 7;
			alen = n - 7;
		} else if (n > 8 && !memcmp(s, "DEVPATH=", 8)) {
			devpath = s + 8;
			dlen = n - 8;
		} else if (n >= 10 && !memcmp(s, "SUBSYSTEM=", 10)) {
			subsys = s + 10;
			slen = n - 10;
		}
		s += n + 1;
	}
	if (!subsys || slen != 3 || memcmp(subsys, "cpu", 3))
		return 0;
	if (dlen <= sizeof(devdir) - 1 ||
	    memcmp(devpath, devdir, sizeof(devdir) - 1))
		return 0;
	const char *d = devpath + sizeof(devdir) - 1, *de = devpath + dlen;
	long id = 0;
	if (*d == '0' && de - d > 1)
		return 0;
	for (; d < de; d++) {
		if (*d < '0' || *d > '9')
			return 0;
		id = id * 10 + (*d - '0');
		if (id >= PCPU_MAX_CPUS)
			return 0;
	}
	for (size_t i = 0; i < sizeof(actions) / sizeof(actions[0]); i++)
		if (alen == strlen(actions[i]) &&
		    !memcmp(action, actions[i], alen)) {
			*cpu = (int)id;
			return (int)i + 1;
		}
	return 0;
}

/* Opens the kernel uevent socket once (silently nothing where the
 * process may not).  Context: hp_lock. */
static void nl_open(void)
{
	if (nl_tried)
		return;
	nl_tried = true;
	int saved = errno;
	int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
			NETLINK_KOBJECT_UEVENT);
	if (fd >= 0) {
		struct sockaddr_nl sa;
		memset(&sa, 0, sizeof(sa));
		sa.nl_family = AF_NETLINK;
		sa.nl_groups = 1; /* the kernel's own messages */
		if (bind(fd, (struct sockaddr *)&sa, sizeof(sa))) {
			close(fd);
			fd = -1;
		}
	}
	__atomic_store_n(&nl_fd, fd, __ATOMIC_RELAXED);
	errno = saved;
}

/* Reads what the socket holds; true when a CPU event (or an overflow)
 * means the masks must be re-read.  Context: hp_lock. */
static bool nl_drain(void)
{
	char buf[8192];
	bool any = false;
	int saved = errno;

	for (int n = 0; n < 256; n++) {
		struct sockaddr_nl sa;
		struct iovec iov = { buf, sizeof(buf) };
		struct msghdr mh;
		int cpu;
		memset(&mh, 0, sizeof(mh));
		memset(&sa, 0, sizeof(sa));
		mh.msg_name = &sa;
		mh.msg_namelen = sizeof(sa);
		mh.msg_iov = &iov;
		mh.msg_iovlen = 1;
		ssize_t r = recvmsg(nl_fd, &mh, MSG_DONTWAIT);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ENOBUFS) { /* lost some: re-read */
				any = true;
				continue;
			}
			break;
		}
		if (mh.msg_namelen < sizeof(sa) || sa.nl_pid != 0)
			continue; /* not from the kernel */
		if ((mh.msg_flags & MSG_TRUNC) ||
		    _pcpu_hotplug_uevent_parse(buf, (size_t)r, &cpu) > 0)
			any = true;
	}
	errno = saved;
	return any;
}

/* ---- public API ---- */

int pcpu_cpu_state(int cpu)
{
	_pcpu_ensure_init();
	if (cpu < 0 || cpu >= _pcpu_g.nr_ids)
		return -EINVAL;
	int s = PCPU_CPU_POSSIBLE;
	if (bit_get(&hp_online, cpu))
		s |= PCPU_CPU_ONLINE;
	if (bit_get(&hp_allowed, cpu))
		s |= PCPU_CPU_ALLOWED;
	if (bit_get(&hp_ready, cpu))
		s |= PCPU_CPU_READY;
	if (bit_get(&_pcpu_g.used, cpu))
		s |= PCPU_CPU_BACKED;
	if (bit_get(&hp_failed, cpu))
		s |= PCPU_CPU_FAILED;
	return s;
}

int pcpu_cpus_refresh(void)
{
	_pcpu_ensure_init();
	if (tls_hp_held)
		return -EDEADLK;
	hp_lock_ctx();
	if (!hp_sim) {
		nl_open();
		if (nl_fd >= 0)
			nl_drain();
		refresh_locked();
	}
	__atomic_store_n(&scanned_gen,
			 __atomic_load_n(&free_gen, __ATOMIC_RELAXED),
			 __ATOMIC_RELAXED);
	process_pending_locked(true, true);
	hp_unlock_ctx();
	return 0;
}

void _pcpu_hotplug_tick(void)
{
	if (!__atomic_load_n(&hp_inited, __ATOMIC_ACQUIRE))
		return;
	bool pending = __atomic_load_n(&hp_pending, __ATOMIC_ACQUIRE);
	long long now = 0;
	bool reread = false;
	if (!hp_sim) {
		now = now_ns();
		reread = now >= __atomic_load_n(&next_read_ns, __ATOMIC_RELAXED);
	}
	if (!pending && !reread &&
	    (hp_sim || __atomic_load_n(&nl_fd, __ATOMIC_RELAXED) < 0))
		return;
	if (pthread_mutex_trylock(&hp_lock))
		return;
	tls_hp_held = true;
	if (!hp_sim) {
		nl_open();
		if (nl_fd >= 0 && nl_drain())
			reread = true;
		if (reread)
			refresh_locked();
	}
	unsigned long gen = __atomic_load_n(&free_gen, __ATOMIC_RELAXED);
	bool scan = gen != __atomic_load_n(&scanned_gen, __ATOMIC_RELAXED);
	if (__atomic_load_n(&lingering, __ATOMIC_SEQ_CST)) {
		/* frees racing the scan may have gone uncounted */
		long long t = now ? now : now_ns();
		if (t >= next_rescan_ns) {
			scan = true;
			next_rescan_ns = t + HP_RESCAN_NS;
		}
	}
	if (scan)
		__atomic_store_n(&scanned_gen, gen, __ATOMIC_RELAXED);
	if (pending || scan)
		process_pending_locked(true, scan);
	hp_unlock_ctx();
}

/* The checks of pcpu_sim_cpu_online/offline; on 0 the hotplug context
 * is entered (hp_lock held). */
static int sim_enter(int cpu)
{
	_pcpu_ensure_init();
	if (!hp_sim)
		return -ENOENT;
	if (cpu < 0 || cpu >= _pcpu_g.nr_ids)
		return -EINVAL;
	if (tls_hp_held)
		return -EDEADLK;
	hp_lock_ctx();
	return 0;
}

int pcpu_sim_cpu_online(int cpu)
{
	int e = sim_enter(cpu);
	if (e)
		return e;
	bit_on(&hp_online, cpu);
	bit_on(&hp_allowed, cpu);
	bit_on(&hp_up, cpu);
	bit_off(&hp_down, cpu);
	int r = cpu_up_locked(cpu, true);
	process_pending_locked(false, false);
	hp_unlock_ctx();
	return r;
}

int pcpu_sim_cpu_offline(int cpu)
{
	int e = sim_enter(cpu);
	if (e)
		return e;
	int r = 0, online = 0;
	for (int w = 0; w < nr_words(); w++)
		online += __builtin_popcountll(word_get(&hp_online, w));
	if (bit_get(&hp_online, cpu) && online == 1) {
		r = -EBUSY;
	} else {
		bit_off(&hp_online, cpu);
		bit_off(&hp_allowed, cpu);
		bit_off(&hp_up, cpu);
		r = cpu_down_locked(cpu);
	}
	hp_unlock_ctx();
	return r;
}

int pcpu_hotplug_register(const char *name, int (*online)(int cpu, void *arg),
			  void (*dead)(int cpu, void *arg), void *arg)
{
	if (!name || (!online && !dead))
		return -EINVAL;
	_pcpu_ensure_init();
	if (tls_hp_held)
		return -EDEADLK;
	hp_lock_ctx();
	int h = 0;
	while (h < HP_MAX_CALLBACKS && cbs[h].active)
		h++;
	if (h == HP_MAX_CALLBACKS) {
		hp_unlock_ctx();
		return -ENOSPC;
	}
	struct hp_callback *cb = &cbs[h];
	snprintf(cb->name, sizeof(cb->name), "%s", name);
	cb->online = online;
	cb->dead = dead;
	cb->arg = arg;
	int nr = _pcpu_g.nr_ids, k, r = 0;
	if (hp_cpu_mode && online) {
		for (k = 0; k < nr; k++) {
			if (!bit_get(&hp_ready, k))
				continue;
			r = online(k, arg);
			if (r)
				break;
		}
		if (r) {
			while (--k >= 0)
				if (dead && bit_get(&hp_ready, k))
					dead(k, arg);
			hp_unlock_ctx();
			return r < 0 ? r : -ECANCELED;
		}
	}
	cb->active = true;
	__atomic_add_fetch(&nr_cbs, 1, __ATOMIC_RELEASE);
	process_pending_locked(false, false);
	hp_unlock_ctx();
	return h;
}

int pcpu_hotplug_unregister(int handle)
{
	_pcpu_ensure_init();
	if (handle < 0 || handle >= HP_MAX_CALLBACKS)
		return -EINVAL;
	if (tls_hp_held)
		return -EDEADLK;
	hp_lock_ctx();
	struct hp_callback *cb = &cbs[handle];
	if (!cb->active) {
		hp_unlock_ctx();
		return -EINVAL;
	}
	if (hp_cpu_mode && cb->dead)
		for (int k = _pcpu_g.nr_ids - 1; k >= 0; k--)
			if (bit_get(&hp_ready, k))
				cb->dead(k, cb->arg);
	cb->active = false;
	__atomic_sub_fetch(&nr_cbs, 1, __ATOMIC_RELEASE);
	process_pending_locked(false, false);
	hp_unlock_ctx();
	return 0;
}

/* ---- init and fork ---- */

void _pcpu_hotplug_init(void)
{
	int nr = _pcpu_g.nr_ids;

	hp_sim = _pcpu_g.sim;
	hp_cpu_mode = _pcpu_g.index_mode == PCPU_INDEX_CPU;
	hp_online = _pcpu_g.topo.online;
	hp_allowed = _pcpu_g.topo.allowed;
	for (int w = 0; w < PCPU_CPUSET_WORDS; w++)
		hp_up.bits[w] = hp_online.bits[w] & hp_allowed.bits[w];
	pop_lo = calloc((size_t)nr + 1, sizeof(*pop_lo));
	pop_hi = calloc((size_t)nr + 1, sizeof(*pop_hi));
	if (!pop_lo || !pop_hi) {
		free(pop_lo);
		free(pop_hi);
		pop_lo = pop_hi = NULL;
	}
	if (!hp_sim) {
		hp_topo = malloc(sizeof(*hp_topo));
		if (hp_topo)
			*hp_topo = _pcpu_g.topo;
		__atomic_store_n(&next_read_ns, now_ns() + 1000000000LL,
				 __ATOMIC_RELAXED);
	}
	__atomic_store_n(&hp_inited, true, __ATOMIC_RELEASE);
}

void _pcpu_hotplug_atfork_prepare(void)
{
	pthread_mutex_lock(&unit_lock);
}

void _pcpu_hotplug_atfork_prepare_late(void)
{
	pthread_mutex_lock(&rec_lock);
}

void _pcpu_hotplug_atfork_parent_early(void)
{
	pthread_mutex_unlock(&rec_lock);
}

void _pcpu_hotplug_atfork_parent(void)
{
	pthread_mutex_unlock(&unit_lock);
}

void _pcpu_hotplug_atfork_child(void)
{
	/* Only this thread lives on.  Operations other threads had in
	 * flight end here: gates drain, units being set up or released are
	 * dropped (dirty: discarded before reuse), the hotplug mutex is
	 * free unless this thread holds it (fork from a callback). */
	for (int i = 0; i < _pcpu_g.nr_ids; i++)
		if (gates[i].n[0] || gates[i].n[1])
			gates[i].n[0] = gates[i].n[1] = 0;
	memset(probes, 0, sizeof(probes));
	bool ctx = tls_hp_held;
	for (int i = 0; i <= _pcpu_g.nr_ids; i++) {
		/* a unit this thread is setting up (fork from an online
		 * callback) goes on; releases never run callbacks */
		if (unit_state[i] == UNIT_PREP &&
		    !(ctx && pthread_equal(unit_owner[i], pthread_self()))) {
			bit_off(&hp_coming, i);
			bit_off(&hp_touched, i);
			bit_on(&hp_dirty, i);
			unit_state[i] = UNIT_EMPTY;
		} else if (unit_state[i] == UNIT_RELEASING) {
			if (bit_get(&_pcpu_g.used, i)) {
				unit_state[i] = UNIT_USED;
			} else {
				bit_on(&hp_dirty, i);
				unit_state[i] = UNIT_EMPTY;
			}
		}
	}
	/* count what is left coming: this thread's unit, if any */
	nr_coming = 0;
	for (int w = 0; w < nr_words(); w++)
		nr_coming += __builtin_popcountll(hp_coming.bits[w]);
	hp_pending = 1;
	pthread_cond_init(&unit_cv, NULL);
	pthread_mutex_unlock(&rec_lock);
	pthread_mutex_unlock(&unit_lock);
	if (!tls_hp_held)
		pthread_mutex_init(&hp_lock, NULL);
	if (nl_fd >= 0)
		close(nl_fd);
	nl_fd = -1;
	nl_tried = false;
}

/*
 * The unit invariants (docs/DESIGN.md, Hotplug), under unit_lock (taken by
 * pcpu_validate before the allocator lock): for every CPU index, ready
 * and other-writer units are USED; a USED unit is used and an EMPTY or
 * PREP one is not; only an EMPTY or PREP unit is dirty; only a PREP unit
 * is coming; and with no unit in PREP nothing is coming and nr_coming is
 * 0 (it is never below the coming bits).  Returns 0 or -EUCLEAN.
 */
int _pcpu_hotplug_validate(void)
{
	const char *bad = NULL;
	int idx = -1, nr_prep = 0;

	pthread_mutex_lock(&unit_lock);
	for (int i = 0; i < _pcpu_g.nr_ids && !bad; i++) {
		unsigned char st = unit_state[i];
		bool used = bit_get(&_pcpu_g.used, i);
		idx = i;
		nr_prep += st == UNIT_PREP;
		if ((bit_get(&hp_ready, i) || bit_get(&hp_other, i)) &&
		    st != UNIT_USED)
			bad = "ready or other-writer unit not USED";
		else if (st == UNIT_USED && !used)
			bad = "USED unit without its used bit";
		else if ((st == UNIT_EMPTY || st == UNIT_PREP) && used)
			bad = "EMPTY or PREP unit with its used bit";
		else if (bit_get(&hp_dirty, i) && st != UNIT_EMPTY &&
			 st != UNIT_PREP)
			bad = "dirty unit in use";
		else if (bit_get(&hp_coming, i) && st != UNIT_PREP)
			bad = "coming unit not PREP";
	}
	if (!bad && !nr_prep) {
		idx = -1;
		int n = __atomic_load_n(&nr_coming, __ATOMIC_SEQ_CST);
		for (int w = 0; w < nr_words() && !n; w++)
			n = word_get(&hp_coming, w) != 0;
		if (n)
			bad = "coming count or bits without a unit in PREP";
	}
	pthread_mutex_unlock(&unit_lock);
	if (!bad)
		return 0;
	fprintf(stderr, "libpcpu: validate: hotplug: %s (index %d)\n", bad,
		idx);
	return -EUCLEAN;
}

/* Test support: what libpcpu knows of @p's copy on @idx, and the last
 * unit transitions of @idx, on @f. */
void _pcpu_hotplug_debug(FILE *f, const void *p, int idx)
{
	pthread_mutex_lock(&rec_lock);
	const struct hp_rec *r = rec_lookup(p);
	fprintf(f, "  %p: record %s (size %u); index %d: state %d used %d "
		   "ready %d coming %d touched %d dirty %d\n",
		p, r ? "yes" : "no", r ? r->size : 0, idx,
		idx <= _pcpu_g.nr_ids ? unit_state[idx] : -1,
		bit_get(&_pcpu_g.used, idx), bit_get(&hp_ready, idx),
		bit_get(&hp_coming, idx), bit_get(&hp_touched, idx),
		bit_get(&hp_dirty, idx));
	pthread_mutex_unlock(&rec_lock);
	unsigned long end = __atomic_load_n(&hp_ev_seq, __ATOMIC_ACQUIRE);
	unsigned long start = end > HP_EV_RING ? end - HP_EV_RING : 0;
	fprintf(f, "  events of index %d (of the last %lu):", idx,
		end - start);
	for (unsigned long n = start; n < end; n++) {
		const struct hp_ev *e = &hp_evs[n % HP_EV_RING];
		if (__atomic_load_n(&e->seq, __ATOMIC_ACQUIRE) == n + 1 &&
		    __atomic_load_n(&e->idx, __ATOMIC_RELAXED) == idx)
			fprintf(f, " %lu:%c%d", n,
				__atomic_load_n(&e->what, __ATOMIC_RELAXED),
				__atomic_load_n(&e->arg, __ATOMIC_RELAXED));
	}
	fputc('\n', f);
}
