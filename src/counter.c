/*
 * counter.c - per-CPU counters: slots indexed by concurrency id, lock-free
 * folds, an adaptive start as one atomic word, limited adds.
 *
 * A counter's value is
 *
 *     exact = count + sum of slots + amounts of folds in flight
 *
 *     count (atomic)      slots (pcpu_alloc, one int64 per index)
 *     +-----------+       | id 0 | id 1 | ... | id hi-1 |  ...  | shared |
 *     |  folded   | <---- fold: take a slot's residue r (xchg with 0),
 *     +-----------+       then count += r + v
 *
 * Invariants:
 *   - a slot stays in (-max_batch, max_batch): every write to it is a
 *     bounded add (rseq section, or a CAS in the atomic path) that refuses
 *     to leave (-batch, batch), and max_batch is raised before an add with
 *     a larger batch writes;
 *   - default mode: only ids below hi are ever written; hi is raised
 *     before the write.  ids are compact (mm_cid, or the per-thread ids of
 *     cpu.c), so hi <= the most threads that ever updated the counter at
 *     once (and <= the CPU ids: beyond them thread ids are shared, by
 *     atomic writers only).  PERCPU mode: only
 *     used indexes (pcpu_for_each_cpu) are written;
 *   - a fold reserves max_batch - 1 in fold_res before taking the residue
 *     and releases it in fold_rel after adding it to count (an exact
 *     limited add reserves its amount the same way), so the amounts in
 *     flight are at most fold_res - fold_rel, and a reader that loads
 *     fold_rel before count and fold_res after it bounds every amount in
 *     flight at the moment it read count;
 *   - a fold reserves before it takes the residue, and every reservation
 *     is > 0 (max_batch >= PCPU_COUNTER_BATCH > 1, limited amounts > 0):
 *     fold_res == fold_rel means nothing is moving between slots and count;
 *   - while hold is non-zero no fold takes a slot's residue except those
 *     that reserved before they could see it (the adds of the others go
 *     straight to count); while hold's high half is non-zero, exact limited
 *     adds, syncs and index folds do not start either (see sum below);
 *   - a slot written by rseq commits (index = the thread's current mm_cid
 *     or CPU, in the rseq path) is never written by an atomic from
 *     another thread, and the other way round (cpu.c's rule); sum() and
 *     the fold hook read/exchange remotely only with that in mind.
 *
 * So |count - exact| <= (max_batch - 1) x (slots that can hold residue) +
 * (fold_res - fold_rel): pcpu_counter_error_bound().
 *
 * Adaptive: slots == NULL means one atomic word; adds CAS it, failed CASes
 * and changes of updating thread count as contention, and a few in one
 * window of updates switch the counter (its whole init_many group,
 * one allocation published by CAS on the leader's slots pointer; the
 * loser frees its allocation).  Slots start at zero, so the value stays
 * exact through the switch.
 *
 * limited_add: see pcpu_counter_limited_add() below for the protocol
 * (optimistic slot add validated by a sequence count far from the limit,
 * exact sum + CAS near it).
 *
 * Locking: the registry of counters with slots (the leaders of groups) is
 * sharded by address, each shard under its own lock, taken at switch and
 * destroy; the index fold hook takes them one after the other.
 * No update path takes it except the one add that switches a counter.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "pcpu/counter.h"


/* ThreadSanitizer does not model atomic_thread_fence: there the
 * store-load fence of limited_add becomes an RMW on lim_seq, and the
 * load-load fence of a sum an RMW on fold_res. */
#if defined(__SANITIZE_THREAD__)
#define PCPU_COUNTER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PCPU_COUNTER_TSAN 1
#endif
#endif

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */

_Static_assert(PCPU_COUNTER_BATCH > 1, "fold reservations are > 0");

#define cpu_relax _pcpu_cpu_relax

/* Spin @n: a short pause first, then give the CPU away (the thread waited
 * for may be preempted, or share the CPU). */
static inline void backoff(int n)
{
	if (n < 64)
		cpu_relax();
	else
		sched_yield();
}

static inline uint64_t uabs64(int64_t v)
{
	return v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
}

static inline int64_t wrap_add(int64_t a, int64_t b)
{
	return (int64_t)((uint64_t)a + (uint64_t)b);
}

/*
 * The largest the value can be when it is @x + m wrapped to int64_t, for
 * some |m| <= @e (exact integers): @x + @e, capped at INT64_MAX (past it
 * the value wraps to the bottom), or INT64_MAX when @x - @e goes below
 * INT64_MIN (the value may have wrapped to the top).
 */
static inline __int128 value_max(int64_t x, __int128 e)
{
	if ((__int128)x - e < INT64_MIN)
		return INT64_MAX;
	__int128 h = (__int128)x + e;
	return h > INT64_MAX ? INT64_MAX : h;
}

/* The same test as pcpu__arch_add_bounded64: x in (-lim, lim). */
static inline bool in_range(int64_t x, int32_t lim)
{
	return (uint64_t)x + (uint64_t)(lim - 1) < 2 * (uint64_t)lim - 1;
}

static inline bool index_used(int idx)
{
	return (__atomic_load_n(&_pcpu_g.used.bits[idx / 64],
				__ATOMIC_ACQUIRE) >>
		(idx % 64)) & 1;
}

/* Indexes whose copies can be non-zero. */
static int used_count(void)
{
	int n = 0;
	for (int w = 0; w <= _pcpu_g.nr_ids / 64; w++)
		n += __builtin_popcountll(__atomic_load_n(
			&_pcpu_g.used.bits[w], __ATOMIC_ACQUIRE));
	return n;
}

static inline void count_add(struct pcpu_counter *c, int64_t v)
{
	__atomic_fetch_add(&c->count, v, __ATOMIC_SEQ_CST);
}

static inline uint64_t fold_reserve(struct pcpu_counter *c)
{
	uint64_t r =
		(uint64_t)__atomic_load_n(&c->max_batch, __ATOMIC_RELAXED) - 1;
	__atomic_fetch_add(&c->fold_res, r, __ATOMIC_SEQ_CST);
	return r;
}

static inline void fold_release(struct pcpu_counter *c, uint64_t r)
{
	__atomic_fetch_add(&c->fold_rel, r, __ATOMIC_SEQ_CST);
}

/* hold: sums that keep adders' folds from moving residue (each adds
 * HOLD_FOLDS), and those that also keep the other movers out (each adds
 * HOLD_MOVES on top). */
#define HOLD_FOLDS ((uint64_t)1)
#define HOLD_MOVES ((uint64_t)1 << 32)

static inline bool folds_held(struct pcpu_counter *c)
{
	return __atomic_load_n(&c->hold, __ATOMIC_SEQ_CST) != 0;
}

/*
 * Reserve for an adder's fold (taking a slot's residue into count).  False
 * with nothing reserved while a sum holds folds: the caller adds its
 * amount straight to count and leaves the slot as it is.  The second look
 * at hold, after the reservation, pairs with the sum's raise of hold
 * before its loads of fold_res (both seq_cst): either the sum sees the
 * reservation, or the fold sees the hold.  It also keeps the residue's
 * exchange after the reservation where an RMW alone would not (a
 * seq_cst load after a seq_cst RMW, then the exchange).
 */
static bool fold_begin(struct pcpu_counter *c, uint64_t *res)
{
	if (folds_held(c))
		return false;
	*res = fold_reserve(c);
	if (!folds_held(c))
		return true;
	fold_release(c, *res);
	return false;
}

/* Before an exact limited add's commit, a sync or an index fold: wait
 * while a sum holds them off (one does after passes that folds alone
 * cannot explain).  A sum never waits for a thread that waits here, so
 * this ends. */
static void wait_moves(struct pcpu_counter *c)
{
	for (int n = 0; __atomic_load_n(&c->hold, __ATOMIC_SEQ_CST) >= HOLD_MOVES;
	     n++)
		backoff(n);
}

/* ------------------------------------------------------------------ */
/* Registry of counters with slots (group leaders)                     */

/*
 * Sharded by the leader's address, so that threads creating and destroying
 * counters (seed 002: a few counters per process, at every execve) take
 * different locks; the fold of a dead index walks every shard.  16: fork
 * holds every shard's lock (with the library's other locks), and
 * ThreadSanitizer aborts a thread that holds more than 64 at once.
 */
#define REG_SHARDS 16 /* reg_of takes the top 4 bits of a hash */
static struct reg_shard {
	pthread_mutex_t lock;
	struct pcpu_counter *head;
} __attribute__((aligned(64))) reg[REG_SHARDS];
static pthread_once_t reg_once = PTHREAD_ONCE_INIT;

static void reg_prepare(void)
{
	for (int i = 0; i < REG_SHARDS; i++)
		pthread_mutex_lock(&reg[i].lock);
}

static void reg_parent(void)
{
	for (int i = REG_SHARDS - 1; i >= 0; i--)
		pthread_mutex_unlock(&reg[i].lock);
}

static void reg_init_once(void)
{
	for (int i = 0; i < REG_SHARDS; i++)
		pthread_mutex_init(&reg[i].lock, NULL);
	pthread_atfork(reg_prepare, reg_parent, reg_parent);
}

static struct reg_shard *reg_of(const struct pcpu_counter *lead)
{
	/* all the address's bits above the line offset count: threads'
	 * stacks are often a power of two apart, with counters at the same
	 * offsets */
	uint64_t h = ((uint64_t)(uintptr_t)lead >> 6) * 0x9E3779B97F4A7C15ull;
	return &reg[h >> 60]; /* REG_SHARDS == 16 */
}

/* Context: @r's lock held. */
static void reg_insert(struct reg_shard *r, struct pcpu_counter *lead)
{
	lead->reg_prev = NULL;
	lead->reg_next = r->head;
	if (r->head)
		r->head->reg_prev = lead;
	r->head = lead;
}

/* Context: @r's lock held. */
static void reg_unlink(struct reg_shard *r, struct pcpu_counter *lead)
{
	if (lead->reg_prev)
		lead->reg_prev->reg_next = lead->reg_next;
	else
		r->head = lead->reg_next;
	if (lead->reg_next)
		lead->reg_next->reg_prev = lead->reg_prev;
	lead->reg_prev = lead->reg_next = NULL;
}

/* ------------------------------------------------------------------ */
/* Switching to slots                                                  */

static inline struct pcpu_counter *leader(struct pcpu_counter *c)
{
	return c - c->gidx;
}

/* @c's slots, adopting the group's when a sibling switched it; NULL while
 * the group is a set of atomic words. */
static int64_t *slots_of(struct pcpu_counter *c)
{
	int64_t *s = __atomic_load_n(&c->slots, __ATOMIC_ACQUIRE);
	if (PCPU_LIKELY(s != NULL) || c->gidx == 0)
		return s;
	int64_t *base = __atomic_load_n(&leader(c)->slots, __ATOMIC_ACQUIRE);
	if (!base)
		return NULL;
	s = base + c->gidx;
	int64_t *expect = NULL;
	__atomic_compare_exchange_n(&c->slots, &expect, s, false,
				    __ATOMIC_RELEASE, __ATOMIC_ACQUIRE);
	return s;
}

/*
 * switch_group - give @c's group its slots (one allocation).
 * Context: any; may allocate and takes a registry shard's lock.
 * Returns: 0 (also when already switched), -EINVAL for an atomic-only
 * counter, -ENOMEM with the group unchanged.
 */
static int switch_group(struct pcpu_counter *c)
{
	if (c->flags & PCPU_COUNTER_ATOMIC)
		return -EINVAL;
	if (slots_of(c))
		return 0;
	struct pcpu_counter *lead = leader(c);
	int64_t *base = pcpu_alloc((size_t)c->gn * sizeof(int64_t),
				   sizeof(int64_t));
	if (!base)
		return -ENOMEM;
	pthread_once(&reg_once, reg_init_once);
	struct reg_shard *r = reg_of(lead);
	pthread_mutex_lock(&r->lock);
	int64_t *expect = NULL;
	bool won = __atomic_compare_exchange_n(&lead->slots, &expect, base,
					       false, __ATOMIC_RELEASE,
					       __ATOMIC_ACQUIRE);
	if (won)
		reg_insert(r, lead);
	pthread_mutex_unlock(&r->lock);
	if (!won)
		pcpu_free(base);
	for (uint32_t i = 1; i < lead->gn; i++)
		slots_of(lead + i);
	return 0;
}

/*
 * Contention watch of the atomic word: @events failed CASes by this
 * update, plus one when the previous update came from another thread.
 * Windows of PCPU_COUNTER_SWITCH_WINDOW updates; PCPU_COUNTER_SWITCH_EVENTS
 * events in one switch the group.  The state is one word written with
 * relaxed atomics on the line the CAS just took: updates racing here can
 * lose each other's counts, which only delays a switch.
 */
static __thread char tls_tag;

static void adapt_note(struct pcpu_counter *c, uint32_t events)
{
	if (c->flags & PCPU_COUNTER_ATOMIC)
		return;
	uint32_t me = (uint32_t)((uintptr_t)&tls_tag >> 3) | 1;
	uint64_t a = __atomic_load_n(&c->adapt, __ATOMIC_RELAXED);
	uint32_t owner = (uint32_t)(a >> 32);
	uint32_t ops = (uint32_t)(a >> 16) & 0xffff;
	uint32_t score = (uint32_t)a & 0xffff;
	score += events + (owner != me && owner != 0);
	if (score >= PCPU_COUNTER_SWITCH_EVENTS) {
		__atomic_fetch_add(&c->switches, 1, __ATOMIC_RELAXED);
		(void)switch_group(c);
		ops = score = 0;
	} else if (++ops >= PCPU_COUNTER_SWITCH_WINDOW) {
		ops = score = 0;
	}
	__atomic_store_n(&c->adapt,
			 (uint64_t)me << 32 | (uint64_t)ops << 16 | score,
			 __ATOMIC_RELAXED);
}

/* Add to the single atomic word (no slots). */
static void atomic_word_add(struct pcpu_counter *c, int64_t v)
{
	if (c->flags & PCPU_COUNTER_ATOMIC) {
		count_add(c, v); /* no contention to watch for */
		return;
	}
	int64_t cur = __atomic_load_n(&c->count, __ATOMIC_RELAXED);
	uint32_t fails = 0;
	while (!__atomic_compare_exchange_n(&c->count, &cur, wrap_add(cur, v),
					    false, __ATOMIC_SEQ_CST,
					    __ATOMIC_RELAXED))
		fails++;
	adapt_note(c, fails);
}

/* ------------------------------------------------------------------ */
/* Indexes                                                             */

/* Default mode: count @idx among the ids that may hold residue, and let
 * the fast path use it when it commits with rseq.  Before any write. */
static void note_cid(struct pcpu_counter *c, int idx, bool rs)
{
	uint32_t want = (uint32_t)idx + 1;
	uint32_t h = __atomic_load_n(&c->hi, __ATOMIC_RELAXED);
	while (h < want &&
	       !__atomic_compare_exchange_n(&c->hi, &h, want, false,
					    __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
		;
	if (!rs)
		return;
	uint32_t f = __atomic_load_n(&c->fast_nr, __ATOMIC_RELAXED);
	while (f < want && !__atomic_compare_exchange_n(&c->fast_nr, &f, want,
							false, __ATOMIC_RELEASE,
							__ATOMIC_RELAXED))
		;
}

/*
 * The index the slow path writes now, and whether with rseq; the write
 * ends with _pcpu_slow_exit(idx, *@ticket).  An atomic write to a slot
 * runs inside its index's gate (index.c), so the index can neither turn
 * to rseq sections nor be released under it: the write is never lost.
 */
static int slow_index(struct pcpu_counter *c, bool *rs, int *ticket)
{
	if (c->flags & PCPU_COUNTER_PERCPU)
		return _pcpu_slow_enter(rs, ticket);
	int idx = _pcpu_cid_enter(rs, ticket);
	note_cid(c, idx, *rs);
	return idx;
}

/* Number of slots that can hold residue. */
static uint64_t nr_slots(struct pcpu_counter *c, const int64_t *s)
{
	if (!s)
		return 0;
	if (c->flags & PCPU_COUNTER_PERCPU)
		return (uint64_t)used_count();
	uint32_t h = __atomic_load_n(&c->hi, __ATOMIC_SEQ_CST);
	return h;
}

/* (B - 1) x slots that can hold residue, B the larger of max_batch and
 * @batch. */
static inline uint64_t slot_budget_for(struct pcpu_counter *c,
				       const int64_t *s, int32_t batch)
{
	int32_t m = __atomic_load_n(&c->max_batch, __ATOMIC_SEQ_CST);
	if (batch > m)
		m = batch;
	return ((uint64_t)m - 1) * nr_slots(c, s);
}

static inline uint64_t slot_budget(struct pcpu_counter *c, const int64_t *s)
{
	return slot_budget_for(c, s, 0);
}

/* ------------------------------------------------------------------ */
/* Adds                                                                */

static void raise_max_batch(struct pcpu_counter *c, int32_t batch)
{
	int32_t m = __atomic_load_n(&c->max_batch, __ATOMIC_RELAXED);
	while (m < batch && !__atomic_compare_exchange_n(&c->max_batch, &m,
							 batch, false,
							 __ATOMIC_SEQ_CST,
							 __ATOMIC_RELAXED))
		;
}

/* Fold with an rseq commit: take the slot's residue, add it and @v to
 * count (only @v while a sum holds folds).  False when the exchange
 * aborted (nothing done). */
static bool fold_rseq(struct pcpu_counter *c, int64_t *q, int idx, int64_t v)
{
	uint64_t res;
	if (!fold_begin(c, &res)) {
		count_add(c, v);
		return true;
	}
	int64_t r;
	if (pcpu__arch_xchg0_64(q, &r, idx, c->io) != 0) {
		fold_release(c, res);
		return false;
	}
	count_add(c, wrap_add(r, v));
	fold_release(c, res);
	return true;
}

/* Bounded add on a slot owned by atomics; folds when out of range. */
static void slot_add_atomic(struct pcpu_counter *c, int64_t *q, int64_t v,
			    int32_t batch)
{
	int64_t cur = __atomic_load_n(q, __ATOMIC_RELAXED);
	for (;;) {
		int64_t n = wrap_add(cur, v);
		if (!in_range(n, batch))
			break;
		if (__atomic_compare_exchange_n(q, &cur, n, true,
						__ATOMIC_RELAXED,
						__ATOMIC_RELAXED))
			return;
	}
	uint64_t res;
	if (!fold_begin(c, &res)) {
		count_add(c, v);
		return;
	}
	int64_t r = __atomic_exchange_n(q, 0, __ATOMIC_SEQ_CST);
	count_add(c, wrap_add(r, v));
	fold_release(c, res);
}

void pcpu__counter_add_slow(struct pcpu_counter *c, int64_t v, int32_t batch)
{
	if (batch < 1)
		batch = 1;
	if (batch > __atomic_load_n(&c->max_batch, __ATOMIC_RELAXED))
		raise_max_batch(c, batch);
	int64_t *s = slots_of(c);
	if (!s) {
		atomic_word_add(c, v);
		return;
	}
	if (uabs64(v) >= (uint64_t)batch) {
		count_add(c, v);
		return;
	}
	for (;;) {
		bool rs;
		int t, idx = slow_index(c, &rs, &t);
		int64_t *q = pcpu__copy(s, idx);
		if (!rs) {
			slot_add_atomic(c, q, v, batch);
			_pcpu_slow_exit(idx, t);
			return;
		}
		int r = pcpu__arch_add_bounded64(q, v, idx, c->io, batch);
		if (r == 0)
			return;
		if (r == 2 && fold_rseq(c, q, idx, v))
			return;
		/* aborted (preempted, migrated, fenced): again */
	}
}

/*
 * max_batch first, so that slots stay in (-max_batch, max_batch) when an
 * add reads the new batch; max_batch never comes down (residue of the
 * larger batch can stay in slots).
 */
int pcpu_counter_set_batch(struct pcpu_counter *c, int64_t batch)
{
	if (batch < 1 || batch > PCPU_COUNTER_MAX_BATCH)
		return -EINVAL;
	raise_max_batch(c, (int32_t)batch);
	__atomic_store_n(&c->batch, (int32_t)batch, __ATOMIC_SEQ_CST);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Init and destroy                                                    */

_Static_assert(offsetof(struct pcpu_counter, count) == 64,
	       "the fast-path half of struct pcpu_counter is one line");

static int init_group(struct pcpu_counter *c, int64_t initial, unsigned int n,
		      unsigned int flags)
{
	if (n == 0 || (flags & ~PCPU_COUNTER_FLAGS_ALL) ||
	    ((flags & PCPU_COUNTER_ATOMIC) &&
	     (flags & (PCPU_COUNTER_EAGER | PCPU_COUNTER_PERCPU))))
		return -EINVAL;
	_pcpu_ensure_init();
	if (n > 1 && (size_t)n * sizeof(int64_t) > _pcpu_g.unit_size)
		return -EINVAL;
	bool percpu = flags & PCPU_COUNTER_PERCPU;
	long io = percpu ? pcpu__fast.idx_tpoff : pcpu__fast.cid_tpoff;
	uint32_t fast_nr =
		percpu ? __atomic_load_n(&pcpu__fast.nr, __ATOMIC_ACQUIRE) : 0;
	/* field by field: a struct assignment becomes rep stos, whose
	 * start-up alone costs more than malloc + free */
	for (unsigned int i = 0; i < n; i++) {
		struct pcpu_counter *m = &c[i];
		m->slots = NULL;
		m->io = io;
		m->fast_nr = fast_nr;
		m->batch = PCPU_COUNTER_BATCH;
		m->flags = flags;
		m->max_batch = PCPU_COUNTER_BATCH;
		m->hi = 0;
		m->gidx = i;
		m->gn = n;
		m->switches = 0;
		m->reg_prev = m->reg_next = NULL;
		m->count = initial;
		m->adapt = 0;
		m->fold_res = m->fold_rel = 0;
		m->lim_seq = 0;
		m->hold = 0;
	}
	if ((flags & PCPU_COUNTER_EAGER) && switch_group(c) != 0)
		return -ENOMEM;
	return 0;
}

int pcpu_counter_init(struct pcpu_counter *c, int64_t initial,
		      unsigned int flags)
{
	return init_group(c, initial, 1, flags);
}

int pcpu_counter_init_many(struct pcpu_counter *c, int64_t initial,
			   unsigned int n, unsigned int flags)
{
	return init_group(c, initial, n, flags);
}

/* Every byte zero: a counter that was never initialised (init sets gn >= 1)
 * but zero-filled, which error paths destroy like the kernel's
 * percpu_counter_destroy allows. */
static bool all_zero(const struct pcpu_counter *c)
{
	const unsigned char *p = (const unsigned char *)c;
	for (size_t i = 0; i < sizeof(*c); i++)
		if (p[i])
			return false;
	return true;
}

static void destroy_group(struct pcpu_counter *c, unsigned int n,
			  const char *what)
{
	if (!c)
		return;
	if (c->gn == 0 && all_zero(c))
		return;
	if (c->gidx != 0 || c->gn != n) {
		_pcpu_report(what, c);
		return;
	}
	int64_t *base = __atomic_load_n(&c->slots, __ATOMIC_ACQUIRE);
	if (base) {
		struct reg_shard *r = reg_of(c);
		pthread_mutex_lock(&r->lock);
		reg_unlink(r, c);
		pthread_mutex_unlock(&r->lock);
		pcpu_free(base);
	}
	for (unsigned int i = 0; i < n; i++)
		c[i].slots = NULL;
}

void pcpu_counter_destroy(struct pcpu_counter *c)
{
	destroy_group(c, 1, "pcpu_counter_destroy: not a single counter");
}

void pcpu_counter_destroy_many(struct pcpu_counter *c, unsigned int n)
{
	destroy_group(c, n, "pcpu_counter_destroy_many: not a whole group");
}

int pcpu_counter_go_percpu(struct pcpu_counter *c)
{
	return switch_group(c);
}

/* ------------------------------------------------------------------ */
/* Reads                                                               */

/* Sum of the slots (not count); relaxed loads. */
static int64_t slots_sum(struct pcpu_counter *c, const int64_t *s)
{
	uint64_t sum = 0;
	if (c->flags & PCPU_COUNTER_PERCPU) {
		int cpu;
		pcpu_for_each_cpu(cpu) if (_pcpu_copy_backed(s, cpu)) sum +=
			(uint64_t)__atomic_load_n(
				(const int64_t *)pcpu__copy(s, cpu),
				__ATOMIC_RELAXED);
		return (int64_t)sum;
	}
	uint32_t h = __atomic_load_n(&c->hi, __ATOMIC_ACQUIRE);
	uint32_t n = h;
	for (uint32_t i = 0; i < n; i++)
		if (index_used((int)i) && _pcpu_copy_backed(s, (int)i))
			sum += (uint64_t)__atomic_load_n(
				(const int64_t *)pcpu__copy(s, (int)i),
				__ATOMIC_RELAXED);
	return (int64_t)sum;
}

/*
 * One read of count and then the slots.  True when no residue moved from a
 * slot into count during it: fold_res == fold_rel before (nothing in
 * flight: a reservation precedes the residue's exchange and its release
 * follows the add to count) and fold_res unchanged after (nothing started;
 * every reservation is > 0).  Then every fold either ended before count
 * was read (count has its residue, the slot is zero or newer) or began
 * after the slots were read (neither seen), so the value is count + slots
 * at one instant and includes every add that ended before.  Without slots
 * count is the value.
 */
static bool sum_pass(struct pcpu_counter *c, int64_t *out)
{
	int64_t *s = slots_of(c);
	if (!s) {
		*out = __atomic_load_n(&c->count, __ATOMIC_SEQ_CST);
		return true;
	}
	uint64_t rel = __atomic_load_n(&c->fold_rel, __ATOMIC_SEQ_CST);
	uint64_t res = __atomic_load_n(&c->fold_res, __ATOMIC_SEQ_CST);
	int64_t v = __atomic_load_n(&c->count, __ATOMIC_SEQ_CST);
	*out = wrap_add(v, slots_sum(c, s));
	if (res != rel)
		return false;
	/* the slot loads before the second look at fold_res */
#ifdef PCPU_COUNTER_TSAN
	return __atomic_fetch_add(&c->fold_res, 0, __ATOMIC_SEQ_CST) == res;
#else
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	return __atomic_load_n(&c->fold_res, __ATOMIC_SEQ_CST) == res;
#endif
}

/* Retries of a sum holding folds before it holds the other movers off. */
#define SUM_HOLD_MOVES_AFTER 8

/*
 * A pass; when a fold raced it, hold folds and pass again until one is
 * clean.  Once the hold is visible (seq_cst, against fold_begin), adders'
 * folds stop taking residue, so only the few that reserved before can
 * still dirty a pass (at most two per thread: one in flight, one that saw
 * the hold only after reserving); each ends in a few instructions.  Exact
 * limited adds, syncs and index folds do not look at the low hold (they
 * are not driven by adds in a loop); if they keep a pass dirty, the sum
 * holds them off too.  So passes come clean after a bounded number of
 * other threads' steps, however fast the adders fold.
 */
int64_t pcpu_counter_sum(struct pcpu_counter *c)
{
	int64_t v;
	if (sum_pass(c, &v))
		return v;
	uint64_t held = HOLD_FOLDS;
	__atomic_fetch_add(&c->hold, held, __ATOMIC_SEQ_CST);
	for (int n = 0; !sum_pass(c, &v); n++) {
		if (n == SUM_HOLD_MOVES_AFTER) {
			__atomic_fetch_add(&c->hold, HOLD_MOVES,
					   __ATOMIC_SEQ_CST);
			held += HOLD_MOVES;
		}
		backoff(n);
	}
	__atomic_fetch_sub(&c->hold, held, __ATOMIC_SEQ_CST);
	return v;
}

int64_t pcpu_counter_sum_positive(struct pcpu_counter *c)
{
	int64_t v = pcpu_counter_sum(c);
	return v > 0 ? v : 0;
}

/*
 * Folds in flight when count is read were reserved before fold_res is
 * loaded and not released before fold_rel is: so fold_res (after) -
 * fold_rel (before) bounds them.  That window also holds every fold that
 * merely started and ended between the two loads; when fold_rel did not
 * move across the read (checked by loading it again) none did, and the
 * window is just the folds in flight.  A few tries get such a read.
 */
static int64_t read_bounded_for(struct pcpu_counter *c, int64_t *bound,
				int32_t batch)
{
	for (int tries = 0;; tries++) {
		uint64_t rel = __atomic_load_n(&c->fold_rel, __ATOMIC_SEQ_CST);
		int64_t v;
		uint64_t b = 0;
		if (c->flags & PCPU_COUNTER_EXACT_READS) {
			v = pcpu_counter_sum(c);
		} else {
			v = __atomic_load_n(&c->count, __ATOMIC_SEQ_CST);
			b = slot_budget_for(c, slots_of(c), batch);
		}
		uint64_t res = __atomic_load_n(&c->fold_res, __ATOMIC_SEQ_CST);
		if (tries < 3 &&
		    __atomic_load_n(&c->fold_rel, __ATOMIC_SEQ_CST) != rel)
			continue;
		if (__builtin_add_overflow(b, res - rel, &b) || b > INT64_MAX)
			b = INT64_MAX;
		*bound = (int64_t)b;
		return v;
	}
}

int64_t pcpu_counter_read_bounded(struct pcpu_counter *c, int64_t *bound)
{
	return read_bounded_for(c, bound, 0);
}

int64_t pcpu_counter_error_bound(struct pcpu_counter *c)
{
	int64_t b;
	(void)pcpu_counter_read_bounded(c, &b);
	return b;
}

void pcpu_counter_set(struct pcpu_counter *c, int64_t v)
{
	count_add(c, (int64_t)((uint64_t)v - (uint64_t)pcpu_counter_sum(c)));
}

/*
 * The value lies in [v - b, v + b] taken modulo 2^64: decided from the
 * read alone when that interval stays inside int64_t (no wrap in it) and
 * leaves out @rhs; else by the sum, the wrapped value itself.  The
 * interval is computed in 128 bits.
 */
static int compare_for(struct pcpu_counter *c, int64_t rhs, int32_t batch)
{
	int64_t b;
	int64_t v = read_bounded_for(c, &b, batch);
	__int128 lo = (__int128)v - b, hi = (__int128)v + b;
	if (lo >= INT64_MIN && hi <= INT64_MAX) {
		if (lo > rhs)
			return 1;
		if (hi < rhs)
			return -1;
	}
	if (!(c->flags & PCPU_COUNTER_EXACT_READS))
		v = pcpu_counter_sum(c);
	return v > rhs ? 1 : v < rhs ? -1 : 0;
}

int pcpu_counter_compare(struct pcpu_counter *c, int64_t rhs)
{
	return compare_for(c, rhs, 0);
}

/* The bound takes the larger of @batch and max_batch as B, so a @batch
 * below what the adds used cannot make the answer wrong. */
int pcpu_counter_compare_batch(struct pcpu_counter *c, int64_t rhs,
			       int32_t batch)
{
	return compare_for(c, rhs, batch);
}

/* ------------------------------------------------------------------ */
/* Limited add                                                         */

#define LIM_STARTED ((uint64_t)1 << 32)

/* The add of limited_far at @idx: 1 committed, 0 not attempted. */
static int limited_far_at(struct pcpu_counter *c, int64_t *s, int64_t limit,
			  int64_t v, int idx, bool rs, int32_t batch)
{
	uint64_t rel = __atomic_load_n(&c->fold_rel, __ATOMIC_SEQ_CST);
	int64_t cnt = __atomic_load_n(&c->count, __ATOMIC_SEQ_CST);
	uint64_t budget = slot_budget(c, s);
	uint64_t res = __atomic_load_n(&c->fold_res, __ATOMIC_SEQ_CST);
	if (value_max(cnt, (__int128)budget + (res - rel)) + v > limit)
		return 0;
	int64_t *q = pcpu__copy(s, idx);
	if (rs)
		return pcpu__arch_add_bounded64(q, v, idx, c->io, batch) == 0;
	int64_t cur = __atomic_load_n(q, __ATOMIC_RELAXED);
	do {
		if (!in_range(wrap_add(cur, v), batch))
			return 0;
	} while (!__atomic_compare_exchange_n(q, &cur, wrap_add(cur, v), true,
					      __ATOMIC_RELAXED,
					      __ATOMIC_RELAXED));
	return 1;
}

/*
 * Far from the limit: an add that stays inside the calling thread's slot
 * changes neither count nor the slot budget, so if count + budget +
 * folds in flight <= limit before it, the value stays <= limit after it,
 * however many such adds race (each slot stays below max_batch).  In 128
 * bits, and with count - budget - folds in flight inside int64_t too:
 * below it the value may have wrapped to the top (value_max).  The
 * thread's slot must already be counted in the budget it checked, and the
 * add must not fold (a fold moves the slot into count: it would then need
 * the exact check).  What can invalidate the check is an exact adder
 * (below) raising count on a sum that missed this add; exact adders
 * announce themselves in lim_seq first, so after the commit and a full
 * fence, an unchanged lim_seq proves none overlapped; otherwise the add is
 * taken back (a decrease, always safe) and the exact path decides.
 * Returns 1 (added) or 0 (not attempted or taken back).
 */
static int limited_far(struct pcpu_counter *c, int64_t *s, int64_t limit,
		       int64_t v, int32_t batch)
{
	uint64_t seq = __atomic_load_n(&c->lim_seq, __ATOMIC_SEQ_CST);
	if ((uint32_t)seq != 0)
		return 0; /* an exact adder is running */
	bool rs;
	int t, idx;
	if (c->flags & PCPU_COUNTER_PERCPU) {
		/* used before the budget is read */
		idx = _pcpu_slow_enter(&rs, &t);
	} else {
		idx = _pcpu_cid_enter(&rs, &t);
		uint32_t h = __atomic_load_n(&c->hi, __ATOMIC_SEQ_CST);
		if ((uint32_t)idx >= h) {
			_pcpu_slow_exit(idx, t);
			return 0; /* not in the budget yet: the exact path
				     adds it */
		}
	}
	int added = limited_far_at(c, s, limit, v, idx, rs, batch);
	_pcpu_slow_exit(idx, t);
	if (!added)
		return 0;
	/* store (slot) - load (lim_seq) ordering against limited_exact's
	 * RMW (lim_seq) - load (slots): one of the two sees the other */
#ifdef PCPU_COUNTER_TSAN
	if (__atomic_fetch_add(&c->lim_seq, 0, __ATOMIC_SEQ_CST) == seq)
		return 1;
#else
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (__atomic_load_n(&c->lim_seq, __ATOMIC_RELAXED) == seq)
		return 1;
#endif
	pcpu_counter_add(c, -v);
	return 0;
}

/*
 * Near the limit: announce in lim_seq, then count + every slot (wrapped:
 * the value) + folds in flight (counted as if positive, value_max) + v <=
 * limit in 128 bits, so that the add never wraps, committed by a CAS on
 * fold_res that reserves v as in flight, then count += v and the
 * reservation released.  The commit is not a CAS on count: a fold moving a
 * negative residue into count and another adder raising it back would
 * leave count where it was read while the slots moved (ABA).  fold_res
 * changes whenever a fold or another exact adder starts, so an unchanged
 * fold_res proves the count and slots read are still a valid view (folds
 * in flight when they were read are in the window; adds straight to count
 * change count and the value alike).  Slot adders racing are either seen
 * by the sum or see lim_seq change and take their add back.
 */
static bool limited_exact(struct pcpu_counter *c, int64_t limit, int64_t v)
{
	__atomic_fetch_add(&c->lim_seq, LIM_STARTED + 1, __ATOMIC_SEQ_CST);
#ifndef PCPU_COUNTER_TSAN
	__atomic_thread_fence(__ATOMIC_SEQ_CST); /* pairs with limited_far */
#endif
	int64_t *s = slots_of(c);
	if (s) {
		/* count this thread's slot in the budget, so that its next
		 * limited add can take the slot path */
		bool rs;
		int t, idx = slow_index(c, &rs, &t);
		_pcpu_slow_exit(idx, t);
	}
	bool ok;
	uint64_t held = 0;
	for (;;) {
		wait_moves(c);
		uint64_t rel = __atomic_load_n(&c->fold_rel, __ATOMIC_SEQ_CST);
		uint64_t res = __atomic_load_n(&c->fold_res, __ATOMIC_SEQ_CST);
		int64_t cnt = __atomic_load_n(&c->count, __ATOMIC_SEQ_CST);
		s = slots_of(c);
		if (s)
			cnt = wrap_add(cnt, slots_sum(c, s));
		ok = value_max(cnt, res - rel) + v <= limit;
		if (!ok)
			break;
		if (__atomic_compare_exchange_n(&c->fold_res, &res,
						res + (uint64_t)v, false,
						__ATOMIC_SEQ_CST,
						__ATOMIC_RELAXED)) {
			count_add(c, v);
			fold_release(c, (uint64_t)v);
			break;
		}
		if (!s)
			adapt_note(c, 1);
		else if (!held) {
			/* folds keep moving fold_res: hold them, as a sum
			 * does, so that the next commit can succeed */
			held = HOLD_FOLDS;
			__atomic_fetch_add(&c->hold, held, __ATOMIC_SEQ_CST);
		}
	}
	if (held)
		__atomic_fetch_sub(&c->hold, held, __ATOMIC_SEQ_CST);
	__atomic_fetch_sub(&c->lim_seq, 1, __ATOMIC_SEQ_CST);
	return ok;
}

bool pcpu_counter_limited_add(struct pcpu_counter *c, int64_t limit,
			      int64_t v)
{
	if (v <= 0) {
		pcpu_counter_add(c, v);
		return true;
	}
	int64_t *s = slots_of(c);
	int32_t batch = __atomic_load_n(&c->batch, __ATOMIC_RELAXED);
	if (s && v < batch && limited_far(c, s, limit, v, batch))
		return true;
	return limited_exact(c, limit, v);
}

/* ------------------------------------------------------------------ */
/* Sync                                                                */

/*
 * The calling thread's index for sync, in *@rs whether it commits with
 * rseq; -1 when this counter's slot there cannot hold residue (default
 * mode: an id above hi; not counted, as nothing is written).  The index
 * ends with _pcpu_slow_exit(idx, *@ticket).
 */
static int sync_index(struct pcpu_counter *c, bool *rs, int *ticket)
{
	if (c->flags & PCPU_COUNTER_PERCPU)
		return _pcpu_slow_enter(rs, ticket);
	int idx = _pcpu_cid_enter(rs, ticket);
	uint32_t h = __atomic_load_n(&c->hi, __ATOMIC_SEQ_CST);
	if ((uint32_t)idx >= h) {
		_pcpu_slow_exit(idx, *ticket);
		return -1;
	}
	return idx;
}

/*
 * Fold the slot @q (index @idx) into count: 0 done (or nothing to fold),
 * 1 when the rseq exchange aborted (nothing done).  A move like an index
 * fold: waits while a sum holds moves off, announced in lim_seq.
 */
static int sync_at(struct pcpu_counter *c, int64_t *s, int idx, bool rs)
{
	int64_t *q = pcpu__copy(s, idx);
	if (!_pcpu_copy_backed(s, idx) || !__atomic_load_n(q, __ATOMIC_RELAXED))
		return 0;
	wait_moves(c);
	__atomic_fetch_add(&c->lim_seq, LIM_STARTED + 1, __ATOMIC_SEQ_CST);
	uint64_t res = fold_reserve(c);
	int64_t r;
	int ret = 0;
	if (rs) {
		/* a seq_cst load keeps the exchange after the reservation
		 * (see fold_begin) */
		(void)folds_held(c);
		ret = pcpu__arch_xchg0_64(q, &r, idx, c->io);
	} else {
		r = __atomic_exchange_n(q, 0, __ATOMIC_SEQ_CST);
	}
	if (ret == 0)
		count_add(c, r);
	fold_release(c, res);
	__atomic_fetch_sub(&c->lim_seq, 1, __ATOMIC_SEQ_CST);
	return ret;
}

void pcpu_counter_sync(struct pcpu_counter *c)
{
	int64_t *s = slots_of(c);
	if (!s)
		return;
	for (;;) {
		bool rs;
		int t, idx = sync_index(c, &rs, &t);
		if (idx < 0)
			return;
		int ret = sync_at(c, s, idx, rs);
		_pcpu_slow_exit(idx, t);
		if (ret == 0)
			return;
	}
}

/* ------------------------------------------------------------------ */
/* Folding a leaving index                                             */

/* Folds @idx's slot of member @i of group @g into its count. */
static void fold_member(struct pcpu_counter *g, uint32_t i, int idx,
			unsigned int which)
{
	struct pcpu_counter *m = g + i;
	bool percpu = m->flags & PCPU_COUNTER_PERCPU;
	if (!(which & (percpu ? PCPU_COUNTER_FOLD_CPU : PCPU_COUNTER_FOLD_CID)))
		return;
	if (!percpu) {
		uint32_t h = __atomic_load_n(&m->hi, __ATOMIC_ACQUIRE);
		if ((uint32_t)idx >= h)
			return;
	}
	int64_t *q = pcpu__copy(g->slots + i, idx);
	if (!_pcpu_copy_backed(g->slots + i, idx) ||
	    !__atomic_load_n(q, __ATOMIC_RELAXED))
		return;
	wait_moves(m);
	/* announced like an exact limited add: moving a positive residue
	 * into count frees room in the slot that slot-path limited adds
	 * must not count on */
	__atomic_fetch_add(&m->lim_seq, LIM_STARTED + 1, __ATOMIC_SEQ_CST);
	uint64_t res = fold_reserve(m);
	int64_t r = __atomic_exchange_n(q, 0, __ATOMIC_SEQ_CST);
	count_add(m, r);
	fold_release(m, res);
	__atomic_fetch_sub(&m->lim_seq, 1, __ATOMIC_SEQ_CST);
}

/*
 * _pcpu_counter_fold_index - fold index @idx's residue of every live
 * counter of the kinds in @which (PCPU_COUNTER_FOLD_CPU: counters indexed
 * by the process index, i.e. PCPU_COUNTER_PERCPU; PCPU_COUNTER_FOLD_CID:
 * default counters, indexed by concurrency id) into their counts.
 * Context: nothing may commit an rseq section on @idx while this runs: the
 * CPU is dead (hotplug, after the CPU-dead callback), or pcpu__ok[idx] was
 * cleared and fenced, or the process is on the atomic path (then slots are
 * only ever changed with atomics and this is safe at any time).  Takes
 * the registry shards' locks in turn; does not allocate.  The value (sum)
 * is unchanged; read() moves closer to it.
 */
void _pcpu_counter_fold_index(int idx, unsigned int which)
{
	_pcpu_ensure_init();
	if (idx < 0 || idx >= _pcpu_g.nr_ids || !index_used(idx))
		return;
	pthread_once(&reg_once, reg_init_once);
	for (int sh = 0; sh < REG_SHARDS; sh++) {
		pthread_mutex_lock(&reg[sh].lock);
		for (struct pcpu_counter *g = reg[sh].head; g; g = g->reg_next)
			for (uint32_t i = 0; i < g->gn; i++)
				fold_member(g, i, idx, which);
		pthread_mutex_unlock(&reg[sh].lock);
	}
}
