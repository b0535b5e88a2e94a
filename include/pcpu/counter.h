/*
 * counter.h - per-CPU counters (the kernel's percpu_counter) whose error
 * does not grow with the number of CPUs.
 *
 * A counter is a folded value (count, one atomic word) plus a small signed
 * delta ("slot") per index, kept in per-CPU memory.  An add changes the
 * calling thread's slot inside an rseq critical section, no atomic
 * instruction; when the slot would leave (-batch, batch) its residue and
 * the add are folded into count.  pcpu_counter_read() is count alone, O(1);
 * pcpu_counter_sum() adds the slots.
 *
 * Indexing.  By default slots are indexed by CONCURRENCY ID, not CPU: the
 * kernel's rseq mm_cid (Linux 6.3+), whose values are compact (below the
 * number of threads and below the number of CPUs the process may use), or
 * where the kernel has none (and in the atomic path: no rseq, simulation)
 * a compact id per live thread, released when the thread exits.  Residue
 * can then only sit in as many slots as the process ever ran threads at
 * once, whatever the number of CPUs, and the thread that scheduling moves
 * around keeps one slot.  PCPU_COUNTER_PERCPU indexes by CPU instead (the
 * process's index mode, pcpu_this_cpu()), like Linux: better locality for
 * write-heavy counters in many-threaded programs, error batch x used CPUs.
 *
 * Error bounds (B = the largest batch any add used, 32 unless
 * pcpu_counter_add_batch, pcpu_counter_add_local or pcpu_counter_set_batch
 * used more; F = the amounts of folds in flight, each at most B - 1 and
 * only while an add is between taking a slot's residue and adding it to
 * count):
 *
 *   default               |read - exact| <= (B - 1) x N + F, where N is the
 *                         number of concurrency ids the counter has used:
 *                         at most the largest number of threads that ever
 *                         updated it at once (and at most the CPU ids).
 *                         Independent of CPU count.
 *   PCPU_COUNTER_PERCPU   (B - 1) x U + F, U = indexes (CPUs) the process
 *                         has used (pcpu_for_each_cpu).  Grows with the
 *                         CPUs the threads visit, like Linux's
 *                         batch x online CPUs.
 *   adaptive, not yet     0: a single atomic word is exact.
 *   switched, or
 *   PCPU_COUNTER_ATOMIC
 *   PCPU_COUNTER_EXACT_READS  read() is sum(): exact when no update runs
 *                         concurrently; F (folds that raced the sum)
 *                         otherwise.
 *
 * pcpu_counter_error_bound() returns the bound that holds now;
 * pcpu_counter_read_bounded() returns a read and a bound that hold
 * together even while folds race the read.  With the default batch of 32,
 * a 5-thread program on 250 CPUs is off by at most 31 x 5 = 155 units
 * (Linux: (max(32, 2 x 250) - 1) x 250 = 124750).
 *
 * Adaptive start.  Unless PCPU_COUNTER_EAGER is given, a counter starts as
 * one atomic word (no per-CPU memory, exact): adds are a compare-and-swap
 * loop that also notes contention: a failed CAS, or an update by another
 * thread than the previous one (the cache line moved).  After
 * PCPU_COUNTER_SWITCH_EVENTS such events within one window of
 * PCPU_COUNTER_SWITCH_WINDOW updates it switches itself to per-CPU slots,
 * so a counter that other threads touch now and then stays one word.  The
 * switch allocates (pcpu_alloc; if that fails the counter stays atomic
 * and tries again in a later window: an add never fails), publishes the
 * slots with one CAS, and keeps the value exact (the slots start at
 * zero).  A single-threaded program never allocates per-CPU
 * memory for its counters.  pcpu_counter_go_percpu() switches at once.
 *
 * Cost.  pcpu_counter_add: one load of the slots pointer, the index, one
 * compare and an rseq section (no atomics); a fold every ~batch adds costs
 * four atomics on the counter's cache line.  |v| >= batch goes straight to
 * count (one atomic add).  pcpu_counter_sum: proportional to the slots that
 * can be non-zero (N above, or U), never to possible CPUs.
 *
 * Concurrency.  Every function may run concurrently with any other on the
 * same counter except init/destroy.  sum() (and what uses it: compare()'s
 * exact part, EXACT_READS reads, set()) is exact with respect to the adds
 * that completed before it, like the kernel's.  set() is exact only when
 * no update runs concurrently (like the kernel's).  No update path takes a
 * lock, except the rare slow path that switches a counter to slots
 * (pcpu_alloc) or readies an index (cpu.c): adds are not
 * async-signal-safe.
 *
 * Hotplug.  A CPU that goes away keeps its residue in PCPU_COUNTER_PERCPU
 * counters (sum() still sees it); the library folds it into count with
 * _pcpu_counter_fold_index() (counter.c) from its CPU-dead handling.
 *
 * Range.  The value is an int64_t that adds wrap modulo 2^64, like the
 * kernel's s64: sum() returns count + slots wrapped, and read() + and -
 * the error bound brackets it modulo 2^64.  compare() and limited_add()
 * decide on that wrapped value with exact integer arithmetic (128 bits):
 * compare() trusts read() only when read() +- bound stays inside int64_t,
 * and a limited add takes the value at most to its limit, so it never
 * wraps it (the limit is at most INT64_MAX).  Amounts that are not limited
 * (add(), limited_add() with v <= 0) wrap.
 *
 * Errors: int functions return 0 or -errno.
 */
#ifndef PCPU_COUNTER_H
#define PCPU_COUNTER_H

#include <stdbool.h>
#include <stdint.h>

#include "pcpu/pcpu.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Flags of pcpu_counter_init(). */
/* Index slots by CPU (the process's index mode) instead of by concurrency
 * id: error (B - 1) x used CPUs; see the top. */
#define PCPU_COUNTER_PERCPU 0x1u
/* read() returns sum(): exact when quiescent, cost of a sum (proportional
 * to the slots in use) on every read. */
#define PCPU_COUNTER_EXACT_READS 0x2u
/* Allocate the per-CPU slots at init instead of on contention. */
#define PCPU_COUNTER_EAGER 0x4u
/* Never use per-CPU slots: one atomic word for good (exact reads, every
 * add an atomic RMW).  Excludes PCPU_COUNTER_EAGER. */
#define PCPU_COUNTER_ATOMIC 0x8u
#define PCPU_COUNTER_FLAGS_ALL 0xfu

/* Batch of pcpu_counter_add() unless pcpu_counter_set_batch() changed it:
 * slots stay in (-32, 32). */
#define PCPU_COUNTER_BATCH 32
/* Largest batch of pcpu_counter_set_batch() (slots are int64_t; the batch
 * is kept in 32 bits). */
#define PCPU_COUNTER_MAX_BATCH INT32_MAX
/* Batch of pcpu_counter_add_local(), the kernel's
 * PERCPU_COUNTER_LOCAL_BATCH. */
#define PCPU_COUNTER_LOCAL_BATCH (INT32_MAX / 2)
/* Contention events (failed CAS, change of updating thread) within one
 * window of updates after which an adaptive counter switches to slots. */
#define PCPU_COUNTER_SWITCH_EVENTS 4
#define PCPU_COUNTER_SWITCH_WINDOW 256

/*
 * The counter.  Fields are private; 112 bytes.  The first 64 bytes are
 * read by every add and written almost never; count and the fold
 * bookkeeping follow, so that folds by one thread do not take the line
 * every other thread's adds read.  For write-heavy counters shared by
 * many threads, place the struct on a cache-line boundary
 * (_Alignas(64)) so that the two halves sit on different lines.
 */
struct pcpu_counter {
	/* read by every add */
	int64_t *slots;       /* per-index deltas (pcpu_alloc), NULL while a
				 single atomic word */
	long io;              /* thread-pointer offset of the index the fast
				 path reads (mm_cid or the process index) */
	uint32_t fast_nr;     /* indexes below this may commit with rseq */
	int32_t batch;        /* of pcpu_counter_add */
	/* read by slow paths, written rarely */
	uint32_t flags;
	int32_t max_batch;    /* largest batch any add used (slots stay in
				 (-max_batch, max_batch)) */
	uint32_t hi;          /* default mode: ids below this may hold
				 residue */
	uint32_t gidx;        /* place in an init_many group (0: leader) */
	uint32_t gn;          /* size of the init_many group */
	uint32_t switches;    /* switches attempted (tests, statistics) */
	struct pcpu_counter *reg_prev, *reg_next; /* registry (leaders with
						     slots) */
	/* written by folds, limited adds and the atomic-word mode */
	int64_t count;        /* the folded value */
	uint64_t adapt;       /* atomic-word mode: last updater (32 bits),
				 updates in this window (16), contention
				 events in it (16) */
	uint64_t fold_res;    /* bounds reserved by folds (monotonic) */
	uint64_t fold_rel;    /* ... released once folded (monotonic) */
	uint64_t lim_seq;     /* limited_add: exact adders in progress (low
				 32 bits) and started (high 32 bits) */
	uint64_t hold;        /* sums that keep folds from moving residue
				 (low 32 bits) and that also hold off
				 limited adds' exact commits, syncs and
				 index folds (high 32 bits) */
};

/*
 * pcpu_counter_init - initialise @c to @initial with @flags
 * (PCPU_COUNTER_*).  Without PCPU_COUNTER_EAGER no memory is allocated.
 * Returns 0, -EINVAL (unknown or conflicting flags), or -ENOMEM
 * (PCPU_COUNTER_EAGER and pcpu_alloc failed; @c is then unusable).
 */
int pcpu_counter_init(struct pcpu_counter *c, int64_t initial,
		      unsigned int flags);
/*
 * pcpu_counter_init_many - initialise the array c[0..n) with ONE per-CPU
 * allocation for all of them (counter i's slot is at slots + i), made now
 * with PCPU_COUNTER_EAGER, else when any of them first switches.  The
 * group is destroyed with pcpu_counter_destroy_many(c, n).  Returns 0,
 * -EINVAL (n == 0, too many for one area, bad flags) or -ENOMEM.
 */
int pcpu_counter_init_many(struct pcpu_counter *c, int64_t initial,
			   unsigned int n, unsigned int flags);
/*
 * Frees the slots.  No other call may run on @c concurrently.  A counter
 * that was never initialised but is all zero (= { 0 }, memset) is left
 * alone, as the kernel's percpu_counter_destroy does, so error paths can
 * destroy counters they never got to initialise; for destroy_many, c[0]
 * all zero means an array that was never initialised.  Destroying a
 * counter again after destroy is a no-op.  Anything else that is not a
 * whole group (a member, a wrong n) is reported (pcpu_set_error_handler).
 */
void pcpu_counter_destroy(struct pcpu_counter *c);
void pcpu_counter_destroy_many(struct pcpu_counter *c, unsigned int n);

/* Out-of-line parts of the inline functions below (src/counter.c). */
void pcpu__counter_add_slow(struct pcpu_counter *c, int64_t v, int32_t batch);
int64_t pcpu_counter_sum(struct pcpu_counter *c);

/* Slot of the calling thread (fast path): commits and returns true, or
 * returns false when the slow path must take the add. */
static inline bool pcpu__counter_add_fast(struct pcpu_counter *c, int64_t v,
					  int32_t batch)
{
	int64_t *s = __atomic_load_n(&c->slots, __ATOMIC_ACQUIRE);
	if (pcpu__unlikely(s == NULL))
		return false;
	long io = c->io;
	unsigned int idx = pcpu__load_index(io);
	if (pcpu__unlikely(idx >= __atomic_load_n(&c->fast_nr,
						  __ATOMIC_RELAXED)))
		return false;
	return pcpu__arch_add_bounded64((int64_t *)pcpu__copy(s, (int)idx), v,
					(int)idx, io, batch) == 0;
}

/* Add @v (any int64_t; arithmetic wraps like uint64_t: see "Range" at
 * the top), with the counter's batch (pcpu_counter_set_batch). */
static inline void pcpu_counter_add(struct pcpu_counter *c, int64_t v)
{
	/* read twice (set_batch may change it): one value kept across the
	 * fast path costs a register there */
	if (pcpu__likely(pcpu__counter_add_fast(
		    c, v, __atomic_load_n(&c->batch, __ATOMIC_RELAXED))))
		return;
	pcpu__counter_add_slow(c, v, __atomic_load_n(&c->batch,
						     __ATOMIC_RELAXED));
}

static inline void pcpu_counter_sub(struct pcpu_counter *c, int64_t v)
{
	pcpu_counter_add(c, (int64_t)(0 - (uint64_t)v));
}

/* The kernel's percpu_counter_inc and percpu_counter_dec. */
static inline void pcpu_counter_inc(struct pcpu_counter *c)
{
	pcpu_counter_add(c, 1);
}

static inline void pcpu_counter_dec(struct pcpu_counter *c)
{
	pcpu_counter_add(c, -1);
}

/*
 * pcpu_counter_add_batch - add with slots kept in (-@batch, @batch) for
 * this call, like the kernel's percpu_counter_add_batch; |v| >= batch goes
 * straight to count.  A batch larger than any before raises the error
 * bound (B above) for the counter's life.  batch < 1 counts as 1.
 */
static inline void pcpu_counter_add_batch(struct pcpu_counter *c, int64_t v,
					  int32_t batch)
{
	if (pcpu__likely(batch > 0 &&
			 batch <= __atomic_load_n(&c->max_batch,
						  __ATOMIC_RELAXED)) &&
	    pcpu__likely(pcpu__counter_add_fast(c, v, batch)))
		return;
	pcpu__counter_add_slow(c, v, batch);
}

/*
 * pcpu_counter_add_local - the kernel's percpu_counter_add_local: add to
 * the calling thread's slot, folding only when the slot would leave
 * (-PCPU_COUNTER_LOCAL_BATCH, PCPU_COUNTER_LOCAL_BATCH): for counters
 * written often and read with sum() (or made current with sync()).  read()
 * then lags by up to PCPU_COUNTER_LOCAL_BATCH - 1 per slot, and the error
 * bound says so: like any add_batch with a batch larger than the ones
 * before, the first add_local raises B to PCPU_COUNTER_LOCAL_BATCH for the
 * counter's life, so pcpu_counter_error_bound() becomes (B - 1) x slots
 * and stays a true bound (limited_add then takes its exact path more
 * often).  Plain adds keep the counter's batch and fold the residue
 * add_local left when they overflow it.
 */
static inline void pcpu_counter_add_local(struct pcpu_counter *c, int64_t v)
{
	pcpu_counter_add_batch(c, v, PCPU_COUNTER_LOCAL_BATCH);
}

/*
 * pcpu_counter_set_batch - the batch of pcpu_counter_add() (and sub, inc,
 * dec, limited_add's slot path) on @c from now on: slots stay in (-@batch,
 * @batch), |v| >= @batch goes straight to count; the kernel sets one batch
 * for all counters (percpu_counter_batch), here each counter has its own.
 * May run concurrently with updates.  A batch larger than any before
 * raises B (the error bound) for the counter's life; a smaller one does
 * not lower it, as residue of the larger batch can stay in slots until
 * they fold (sync() folds the calling thread's).  Returns 0, or -EINVAL
 * when @batch < 1 or > PCPU_COUNTER_MAX_BATCH.
 */
int pcpu_counter_set_batch(struct pcpu_counter *c, int64_t batch);

/*
 * pcpu_counter_sync - the kernel's percpu_counter_sync: fold the residue
 * of the calling thread's slot (its concurrency id; its CPU for
 * PCPU_COUNTER_PERCPU) into count, so that read() includes the adds that
 * went there; the value does not change.  Nothing to do for a counter
 * without slots.  Waits while a sum holds such moves off (briefly: see
 * pcpu_counter_sum).  Other threads' residue stays where it is.
 */
void pcpu_counter_sync(struct pcpu_counter *c);

/* The folded value: O(1), off by at most pcpu_counter_error_bound() (sum
 * for PCPU_COUNTER_EXACT_READS). */
static inline int64_t pcpu_counter_read(struct pcpu_counter *c)
{
	if (pcpu__unlikely(c->flags & PCPU_COUNTER_EXACT_READS))
		return pcpu_counter_sum(c);
	return __atomic_load_n(&c->count, __ATOMIC_RELAXED);
}

/* read(), or 0 when negative. */
static inline int64_t pcpu_counter_read_positive(struct pcpu_counter *c)
{
	int64_t v = pcpu_counter_read(c);
	return v > 0 ? v : 0;
}

/*
 * pcpu_counter_sum - count plus every slot that can be non-zero (default:
 * the N concurrency ids used; PCPU_COUNTER_PERCPU: the used CPUs).  Like
 * the kernel's percpu_counter_sum, exact with respect to every add that
 * completed before the call: the result includes all of them, counts no
 * add twice, and includes any subset of the adds that run concurrently.
 * A sum reads count and the slots as one consistent view: it retries when
 * a fold moved residue from a slot into count while it read, and after one
 * retry it asks folds to leave the slots alone until it is done (they add
 * their amounts straight to count meanwhile), so folds do not starve it.
 * Lock-free for adds; it waits only for folds that had already taken a
 * slot's residue when it started (a few instructions each).
 */
/* (declared above) */

/* sum(), or 0 when negative. */
int64_t pcpu_counter_sum_positive(struct pcpu_counter *c);

/*
 * pcpu_counter_set - make the value @v: adds @v - sum() to count, so it is
 * exact when no update runs concurrently, and concurrent updates are
 * neither lost nor counted twice (they land before or after the set).
 */
void pcpu_counter_set(struct pcpu_counter *c, int64_t v);

/*
 * pcpu_counter_compare - -1, 0 or 1 as the value is below, equal to or
 * above @rhs, like the kernel's percpu_counter_compare.  Decided from
 * read() alone when |read - rhs| exceeds the error bound and read() +-
 * bound does not wrap (cheap), else from sum() (exact with respect to the
 * adds that completed before the call).
 */
int pcpu_counter_compare(struct pcpu_counter *c, int64_t rhs);

/*
 * pcpu_counter_limited_add - add @v only if the value stays <= @limit;
 * returns whether it added.  Never overshoots because of other
 * limited_add calls racing it, however many: far from the limit (count +
 * error bound <= limit) it is an add that stays inside the thread's slot,
 * re-validated after the commit (taken back if an exact adder ran
 * meanwhile); near it, it sums count, the slots and the folds in flight
 * and commits with a CAS on the fold bookkeeping, which fails if anything
 * moved between slots and count since the sum.  It can refuse an add that
 * would have fitted while others race it near the limit (never when
 * alone).  @v <= 0 is always added like pcpu_counter_add (it cannot push
 * the value up to the limit; like add it wraps below INT64_MIN) and
 * returns true; unlike the kernel's, @limit is never a floor.  For @v > 0
 * the value checked is the wrapped one (see "Range"): a value that wrapped
 * to near INT64_MAX is above any lower limit, and value + @v is computed
 * without overflow, so no add crosses the limit by wrapping.
 * Plain adds racing it are not constrained and can push the value above
 * the limit, as they would without it.
 */
bool pcpu_counter_limited_add(struct pcpu_counter *c, int64_t limit,
			      int64_t v);

/*
 * pcpu_counter_compare_batch - the kernel's __percpu_counter_compare(fbc,
 * rhs, batch): compare() with the error bound computed for adds with a
 * batch of @batch.  The kernel's caller passes the batch its adds used,
 * since its bound is batch x online CPUs; here the counter knows the
 * largest batch its adds used, and the bound takes the larger of the two,
 * so a @batch that is too small cannot make the answer wrong, and a larger
 * one only sends more calls to the exact sum.
 */
int pcpu_counter_compare_batch(struct pcpu_counter *c, int64_t rhs,
			       int32_t batch);

/* The bound on |read() - exact| that holds now (see the top). */
int64_t pcpu_counter_error_bound(struct pcpu_counter *c);

/*
 * pcpu_counter_read_bounded - read() and, in *@bound, a bound on its error
 * that holds for that very read even when folds race it: exact lies in
 * [v - *bound, v + *bound] (modulo 2^64) at the moment of the read.
 */
int64_t pcpu_counter_read_bounded(struct pcpu_counter *c, int64_t *bound);

/*
 * pcpu_counter_go_percpu - switch an adaptive counter to per-CPU slots now
 * (the whole init_many group).  0 (also when already switched), -EINVAL
 * for PCPU_COUNTER_ATOMIC, -ENOMEM.
 */
int pcpu_counter_go_percpu(struct pcpu_counter *c);

/* True once @c uses per-CPU slots. */
static inline bool pcpu_counter_is_percpu(const struct pcpu_counter *c)
{
	return __atomic_load_n(&c->slots, __ATOMIC_ACQUIRE) != NULL;
}

#ifdef __cplusplus
}
#endif

#endif
