/*
 * index.c - the one state machine of indexes: when an index's copies are
 * in use, and how its writers write them.
 *
 * An index selects a copy: a CPU, an rseq concurrency id, a simulated
 * CPU, a counter's thread id; this file does not care which.  Every index
 * k < nr_ids is in one of five states (st[k]; changed under ix_lock,
 * except the one CAS a writer may make, noted below):
 *
 *   ABSENT --use--> FILLING --filled--> INUSE --release--> RELEASING
 *     ^               | abort (no         ^   a writer comes   |
 *     |               |  memory, hotplug  +--------------------+ clean:
 *     +---------------+  context only)                         v
 *     +------------------------- discarded ----------------- DISCARDING
 *
 * In use (_pcpu_g.used) means INUSE or RELEASING: the copies count in
 * pcpu_sum, pcpu_for_each_cpu, the zeroing of frees and the statistics.
 * An index comes into use the first time anything reaches one of its
 * copies: a this-CPU operation, pcpu_ptr, a counter or a reference.  It
 * leaves use only through a release (hotplug.c asks for one when a CPU
 * went away), which needs every live area's copy equal to its initial
 * value and drops the memory; an index reached through a pointer
 * (PINNED) never leaves.  While FILLING the index is "coming" (initval.c):
 * the initial values of pcpu_alloc_init are copied in, and
 * pcpu_alloc_init and frees keep coming copies right meanwhile.
 *
 * Flags:
 *   READY     (in use) writers commit with rseq sections: pcpu__ok[k] on
 *             the rseq path.  Otherwise k's writers use atomic RMW
 *             inside k's gate.  hotplug.c says when an index may be
 *             READY (no online callback to wait for).
 *   DEMOTING  pcpu__ok[k] was cleared and the fence is running: sections
 *             may still be in flight, atomic writers wait.
 *   PINNED    never released; pcpu__ptrok[k], which pcpu_ptr tests.
 *   DIRTY     (ABSENT) a discard failed: discarded before the next fill.
 *
 * One kind of writer per copy at a time (cpu.c's top says why):
 *   - promotion sets READY, waits for k's gate without ix_lock (every
 *     atomic writer that saw READY clear has finished; later ones see it
 *     and go to the sections), then sets pcpu__ok[k] unless a demotion
 *     came meanwhile; a gate that does not drain in 50 ms (a thread in it
 *     stopped in a signal handler that waits for this very promotion)
 *     calls the promotion off;
 *   - demotion clears pcpu__ok[k] and sets DEMOTING, fences k (every
 *     section in flight has committed or aborted; later ones see
 *     pcpu__ok[k] == 0 inside themselves), then clears both flags;
 *   - a release sets RELEASING and waits for the gate (writers that saw
 *     INUSE finish), then scans; a writer that comes afterwards turns
 *     RELEASING back into INUSE with a CAS, and the release's own move
 *     to DISCARDING (a CAS under ix_lock) then fails, so the scan's
 *     verdict never outlives a write.  During DISCARDING the releaser
 *     holds the init table's lock, so no initial value is written into a
 *     unit being dropped, and takes no lock a waiter could hold.
 * A writer nested inside its own thread's gate hold of k (a signal
 * handler) writes atomically whatever READY says: the outer hold keeps
 * a promotion from completing, so no section can run on k meanwhile.
 *
 * Waiting: a thread that finds k FILLING or DISCARDING sleeps on ix_cv.
 * Every holder of ix_lock, and every fill and release, runs with signals
 * blocked, so an operation in a signal handler never waits for its own
 * interrupted thread.  The gates never wait.
 *
 * Locks: ix_lock is a leaf: no other lock is taken while it is held, and
 * it is held only briefly (transitions, the ok bytes, the path switch),
 * never across a fill, a scan or a discard.  The others, in order:
 * hotplug.c's hp_lock, reclaim.c's reclaim_lock, the allocator lock,
 * initval.c's record lock.
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

enum { IX_ABSENT, IX_FILLING, IX_INUSE, IX_RELEASING, IX_DISCARDING };
#define IX_MASK 0xffu
#define IX_READY 0x100u
#define IX_DEMOTING 0x200u
#define IX_PINNED 0x400u
#define IX_DIRTY 0x800u

static uint32_t st[PCPU_MAX_CPUS];          /* atomic */
static pthread_t filler[PCPU_MAX_CPUS];     /* of a FILLING index (fork) */
static pthread_mutex_t ix_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ix_cv = PTHREAD_COND_INITIALIZER;
unsigned char pcpu__ptrok[PCPU__OK_SIZE];

/* Counts frees while an index waits to be released (see count_free). */
static unsigned long free_gen;
static int lingering;

static inline unsigned int state_of(uint32_t s)
{
	return s & IX_MASK;
}

static inline bool in_use(uint32_t s)
{
	return state_of(s) == IX_INUSE || state_of(s) == IX_RELEASING;
}

static inline uint32_t load_st(int k)
{
	return __atomic_load_n(&st[k], __ATOMIC_SEQ_CST);
}

static inline bool rseq_path(void)
{
	return __atomic_load_n(&_pcpu_g.path, __ATOMIC_ACQUIRE) ==
	       PCPU_PATH_RSEQ;
}

/* ---- signals, and the lock ---- */

static void sig_block(sigset_t *old)
{
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, old);
}

static void sig_restore(const sigset_t *old)
{
	pthread_sigmask(SIG_SETMASK, old, NULL);
}

/* Context: signals blocked. */
static void set_state(int k, uint32_t s)
{
	__atomic_store_n(&st[k], s, __ATOMIC_SEQ_CST);
}

/* The used bit follows INUSE/RELEASING; pcpu__ok and pcpu__ptrok follow
 * the flags.  Context: ix_lock held. */
static void sync_bytes(int k)
{
	uint32_t s = load_st(k);
	bool ok = in_use(s) && (s & IX_READY) && !(s & IX_DEMOTING) &&
		  _pcpu_g.path == PCPU_PATH_RSEQ;
	if (__atomic_load_n(&pcpu__ok[k], __ATOMIC_RELAXED) != ok)
		__atomic_store_n(&pcpu__ok[k], ok, __ATOMIC_SEQ_CST);
	bool pin = in_use(s) && (s & IX_PINNED);
	if (__atomic_load_n(&pcpu__ptrok[k], __ATOMIC_RELAXED) != pin)
		__atomic_store_n(&pcpu__ptrok[k], pin, __ATOMIC_RELEASE);
}

/* The generation first (backed.c): a reader that sees the new bit sees
 * a newer generation than any answer that did not cover it. */
static void used_on(int k)
{
	_pcpu_backed_gen_bump();
	__atomic_fetch_or(&_pcpu_g.used.bits[k / 64], (uint64_t)1 << (k % 64),
			  __ATOMIC_SEQ_CST);
}

static void used_off(int k)
{
	__atomic_fetch_and(&_pcpu_g.used.bits[k / 64],
			   ~((uint64_t)1 << (k % 64)), __ATOMIC_SEQ_CST);
}

/* ---- gates ---- */

/*
 * An atomic write to k's copies runs between gate_enter and gate_exit:
 * count in the current phase, then check the state.  A waiter (promotion,
 * release) changes the state first, then flips the phase and waits for
 * the old phase's count to drain, twice (SRCU's scheme): every writer
 * that read the old state has finished.  Writers never wait inside.
 */
struct gate {
	unsigned long n[2];
	unsigned int phase;
} __attribute__((aligned(64)));
static struct gate gates[PCPU_MAX_CPUS];
static __thread int tls_gate_idx = -1, tls_gate_depth;

static unsigned int gate_enter(int k)
{
	struct gate *g = &gates[k];
	unsigned int ph = __atomic_load_n(&g->phase, __ATOMIC_SEQ_CST) & 1;
	__atomic_fetch_add(&g->n[ph], 1, __ATOMIC_SEQ_CST);
	return ph;
}

static void gate_exit(int k, unsigned int ph)
{
	__atomic_fetch_sub(&gates[k].n[ph], 1, __ATOMIC_RELEASE);
}

/* Waits for both phases to drain; with @limit_ns > 0 gives up after that
 * long and returns false. */
static bool gate_wait_for(int k, long long limit_ns)
{
	struct gate *g = &gates[k];
	long long until = limit_ns > 0 ? _pcpu_now_ns() + limit_ns : 0;
	for (int round = 0; round < 2; round++) {
		unsigned int old = __atomic_load_n(&g->phase, __ATOMIC_SEQ_CST);
		__atomic_store_n(&g->phase, old ^ 1, __ATOMIC_SEQ_CST);
		for (int spins = 0;
		     __atomic_load_n(&g->n[old & 1], __ATOMIC_SEQ_CST); spins++) {
			if (spins < 64) {
				sched_yield();
			} else {
				if (until && _pcpu_now_ns() >= until)
					return false;
				struct timespec ts = { 0, 20000 };
				nanosleep(&ts, NULL);
			}
		}
	}
	return true;
}

static void gate_wait(int k)
{
	gate_wait_for(k, 0);
}

/* ---- promotion and demotion (ix_lock held) ---- */

/* Flags change with atomic RMW: a writer may CAS the state meanwhile. */
static void flags_on(int k, uint32_t f)
{
	__atomic_fetch_or(&st[k], f, __ATOMIC_SEQ_CST);
}

static void flags_off(int k, uint32_t f)
{
	__atomic_fetch_and(&st[k], ~f, __ATOMIC_SEQ_CST);
}

/*
 * promote_begin - set READY when hotplug.c agrees; true when it did and
 * the caller must finish with promote_end once ix_lock is dropped.
 * The gate is waited for without ix_lock: a writer inside the gate may
 * be interrupted by a signal handler whose operation needs ix_lock (to
 * bring its own index into use), and must be able to get it.
 */
static bool promote_begin(int k)
{
	uint32_t s = load_st(k);
	if (!in_use(s) || (s & (IX_READY | IX_DEMOTING)) ||
	    !_pcpu_hotplug_may_ready(k))
		return false;
	flags_on(k, IX_READY);
	return true;
}

/*
 * Context: ix_lock not held, signals blocked.  The wait is bounded: a
 * thread inside the gate may be stopped in a signal handler whose own
 * operation on k waits for this promotion (it sees READY and no
 * pcpu__ok yet, and must not write with atomics then); after 50 ms the
 * promotion is called off (READY cleared: the handler goes on with
 * atomics, its thread leaves the gate) and left to the hotplug tick.
 */
static void promote_end(int k)
{
	bool drained = _pcpu_g.path != PCPU_PATH_RSEQ ||
		       gate_wait_for(k, 50 * 1000000LL);
	pthread_mutex_lock(&ix_lock);
	if (!drained)
		flags_off(k, IX_READY);
	sync_bytes(k); /* pcpu__ok[k], unless demoted meanwhile */
	pthread_mutex_unlock(&ix_lock);
	if (!drained)
		_pcpu_hotplug_note_use(k); /* try again later */
}

/*
 * Fences the sections that may run on index @k: CPU @k's; every CPU's
 * where an index is not a CPU, or where counters commit sections on
 * slots by mm_cid (their pcpu__ok entries are the CPUs': a thread with
 * mm_cid k may run on any CPU).  A few tries.
 */
static int fence_index(int k)
{
	int cpu = _pcpu_g.index_mode == PCPU_INDEX_CPU &&
				  !__atomic_load_n(&pcpu__fast.cid_nr,
						   __ATOMIC_ACQUIRE)
			  ? k
			  : -1;
	for (int i = 0; i < 3; i++)
		if (!_pcpu_os_rseq_fence(cpu))
			return 0;
	for (int i = 0; i < 3 && cpu >= 0; i++)
		if (!_pcpu_os_rseq_fence(-1))
			return 0;
	return -EIO;
}

/* Returns 0, or -EAGAIN when the fence failed (k stays READY). */
static int demote_locked(int k)
{
	if (!(load_st(k) & IX_READY))
		return 0;
	if (_pcpu_g.path != PCPU_PATH_RSEQ) {
		flags_off(k, IX_READY);
		sync_bytes(k);
		return 0;
	}
	flags_on(k, IX_DEMOTING);
	sync_bytes(k); /* pcpu__ok[k] = 0 */
	if (fence_index(k)) {
		flags_off(k, IX_DEMOTING);
		sync_bytes(k);
		return -EAGAIN;
	}
	flags_off(k, IX_READY | IX_DEMOTING);
	sync_bytes(k);
	return 0;
}

/* ---- bring-up ---- */

/*
 * use - bring @k into use (and pin it with @pin), waiting for a fill or
 * a discard elsewhere.  @ctx: the hotplug context, which may fail on
 * -ENOMEM (the fill is undone); elsewhere a fill that found no memory is
 * retried until it succeeds (an operation cannot fail).
 * Returns 0 or -ENOMEM (@ctx only).
 */
static int use(int k, bool pin, bool ctx)
{
	sigset_t old;
	int r = 0;
	bool note = false, promoting = false;

	sig_block(&old);
	pthread_mutex_lock(&ix_lock);
	for (;;) {
		uint32_t s = load_st(k);
		unsigned int phase = state_of(s);
		if (phase == IX_INUSE || phase == IX_RELEASING) {
			uint32_t want = (s & ~IX_MASK) | IX_INUSE |
					(pin ? IX_PINNED : 0);
			if (!__atomic_compare_exchange_n(&st[k], &s, want, false,
							 __ATOMIC_SEQ_CST,
							 __ATOMIC_SEQ_CST))
				continue; /* a writer called a release off */
			sync_bytes(k);
			break;
		}
		if (phase != IX_ABSENT) {
			pthread_cond_wait(&ix_cv, &ix_lock);
			continue;
		}
		bool dirty = s & IX_DIRTY;
		set_state(k, IX_FILLING);
		filler[k] = pthread_self();
		pthread_mutex_unlock(&ix_lock);
		for (unsigned int backoff_us = 100;;) {
			r = _pcpu_initval_fill(k, &dirty);
			if (!r || ctx)
				break;
			/* no memory for the initial values: give back what
			 * can go and try again, as an operation cannot fail */
			pcpu_trim();
			struct timespec ts = { 0, (long)backoff_us * 1000 };
			nanosleep(&ts, NULL);
			if (backoff_us < 100000)
				backoff_us *= 2;
		}
		if (r) /* still dirty if the discard failed, or if the
			* abort's own discard of what the fill wrote did */
			dirty = _pcpu_initval_abort(k) || dirty;
		pthread_mutex_lock(&ix_lock);
		if (r) {
			set_state(k, IX_ABSENT | (dirty ? IX_DIRTY : 0));
			pthread_cond_broadcast(&ix_cv);
			break;
		}
		set_state(k, IX_INUSE | (pin ? IX_PINNED : 0));
		used_on(k);
		_pcpu_initval_filled(k); /* not coming: used now */
		sync_bytes(k);
		promoting = promote_begin(k);
		pthread_cond_broadcast(&ix_cv);
		note = !ctx && !promoting;
		break;
	}
	pthread_mutex_unlock(&ix_lock);
	if (promoting)
		promote_end(k);
	sig_restore(&old);
	if (note)
		_pcpu_hotplug_note_use(k); /* online callbacks to run */
	return r;
}

int _pcpu_index_use(int k, bool pin)
{
	if (k < 0 || k >= _pcpu_g.nr_ids)
		return -EINVAL;
	uint32_t s = load_st(k);
	if (PCPU_LIKELY(in_use(s) && state_of(s) == IX_INUSE &&
			(!pin || (s & IX_PINNED))))
		return 0;
	return use(k, pin, false);
}

int _pcpu_index_use_ctx(int k)
{
	return use(k, false, true);
}

/* ---- writers ---- */

int _pcpu_index_enter(int k, bool unregistered, bool *rseq, int *ticket)
{
	if (!rseq_path()) {
		/* the fallback's common case, the loop's own steps for it
		 * without the nesting bookkeeping (see below) */
		if (PCPU_LIKELY(state_of(load_st(k)) == IX_INUSE)) {
			unsigned int ph = gate_enter(k);
			if (PCPU_LIKELY(state_of(load_st(k)) == IX_INUSE)) {
				*rseq = false;
				*ticket = (int)ph;
				return k;
			}
			gate_exit(k, ph);
		}
	}
	for (unsigned int spins = 0;; spins++) {
		uint32_t s = load_st(k);
		bool nested = tls_gate_depth && tls_gate_idx == k;
		if (in_use(s) && rseq_path() && !nested) {
			if ((s & IX_READY) && unregistered) {
				/* a thread without rseq may not write copies
				 * that sections commit to: sections off here */
				sigset_t old;
				sig_block(&old);
				pthread_mutex_lock(&ix_lock);
				demote_locked(k);
				pthread_mutex_unlock(&ix_lock);
				sig_restore(&old);
				_pcpu_hotplug_note_demoted(k);
				continue;
			}
			if ((s & IX_READY) && !(s & IX_DEMOTING) &&
			    __atomic_load_n(&pcpu__ok[k], __ATOMIC_ACQUIRE)) {
				*rseq = true;
				*ticket = -1;
				return k;
			}
			if (s & (IX_READY | IX_DEMOTING)) {
				/* a promotion or demotion is under way */
				if (spins > 16)
					sched_yield();
				continue;
			}
		}
		if (in_use(s)) {
			unsigned int ph = gate_enter(k);
			s = load_st(k);
			if (state_of(s) == IX_RELEASING) {
				/* a write: the release is off */
				uint32_t want = (s & ~IX_MASK) | IX_INUSE;
				if (__atomic_compare_exchange_n(&st[k], &s, want,
								false,
								__ATOMIC_SEQ_CST,
								__ATOMIC_SEQ_CST))
					s = want;
			}
			bool rp = rseq_path();
			if (state_of(s) == IX_INUSE &&
			    (nested || !rp || !(s & (IX_READY | IX_DEMOTING)))) {
				*rseq = false;
				/* the hold is counted for nesting only on the
				 * rseq path: off it no promotion runs, and
				 * the process never returns to it (the
				 * fallback's cost, bench/bench_ops) */
				*ticket = (int)ph | (rp ? 2 : 0);
				if (rp) {
					tls_gate_idx = k;
					tls_gate_depth++;
				}
				return k;
			}
			gate_exit(k, ph);
			continue;
		}
		use(k, false, false);
	}
}

void _pcpu_index_exit(int k, int ticket)
{
	if (ticket < 0)
		return;
	if (ticket & 2)
		tls_gate_depth--;
	gate_exit(k, (unsigned int)ticket & 1);
}

/* ---- the hotplug context ---- */

void _pcpu_index_promote(int k)
{
	sigset_t old;
	sig_block(&old);
	pthread_mutex_lock(&ix_lock);
	bool promoting = promote_begin(k);
	pthread_mutex_unlock(&ix_lock);
	if (promoting)
		promote_end(k);
	sig_restore(&old);
}

int _pcpu_index_demote(int k)
{
	sigset_t old;
	sig_block(&old);
	pthread_mutex_lock(&ix_lock);
	int r = demote_locked(k);
	pthread_mutex_unlock(&ix_lock);
	sig_restore(&old);
	return r;
}

int _pcpu_index_state(int k)
{
	uint32_t s = load_st(k);
	int r = 0;
	if (in_use(s))
		r |= PCPU_INDEX_IN_USE;
	if (in_use(s) && (s & IX_READY))
		r |= PCPU_INDEX_READY;
	if (s & IX_PINNED)
		r |= PCPU_INDEX_PINNED;
	return r;
}

/*
 * Frees are counted while an index waits in use for its values to go
 * (lingering), so that the hotplug tick scans it again only after frees;
 * otherwise a free writes no shared line for this.
 */
void _pcpu_index_count_free(void)
{
	if (PCPU_UNLIKELY(__atomic_load_n(&lingering, __ATOMIC_RELAXED)))
		__atomic_add_fetch(&free_gen, 1, __ATOMIC_RELAXED);
}

unsigned long _pcpu_index_free_gen(void)
{
	return __atomic_load_n(&free_gen, __ATOMIC_RELAXED);
}

void _pcpu_index_set_lingering(bool on)
{
	__atomic_store_n(&lingering, on, __ATOMIC_SEQ_CST);
}

/*
 * _pcpu_index_release - take @k out of use if nothing is left in it: every
 * live area's copy equals its initial value.  Context: hotplug context
 * (no lock held).  Returns 0 (released), -EBUSY (in use: pinned, ready,
 * values left, or a writer came), or -ENOMEM.
 */
int _pcpu_index_release(int k)
{
	sigset_t old;
	int r = -EBUSY;

	sig_block(&old);
	pthread_mutex_lock(&ix_lock);
	uint32_t s = load_st(k);
	if (state_of(s) != IX_INUSE || (s & (IX_READY | IX_DEMOTING | IX_PINNED))) {
		pthread_mutex_unlock(&ix_lock);
		sig_restore(&old);
		return -EBUSY;
	}
	set_state(k, (s & ~IX_MASK) | IX_RELEASING); /* from INUSE: no CAS */
	pthread_mutex_unlock(&ix_lock);
	gate_wait(k); /* writers that saw INUSE have finished */
	_pcpu_cache_clean_pending(); /* freed objects still to be zeroed */
	_pcpu_chunk_clean_deferred(); /* ... and freed areas */

	_pcpu_reclaim_lock();
	struct pcpu_chunk **snap = NULL;
	size_t nsnap = 0;
	bool clean = _pcpu_initval_unit_clean(k);
	if (clean) {
		/* the chunks to drop k's unit in; initial values can no
		 * longer be written into k from the moment it leaves use
		 * (the record lock is held until it is ABSENT) */
		pthread_mutex_lock(&_pcpu_alloc_lock);
		_pcpu_initval_lock();
		snap = malloc((_pcpu_nr_chunks + 1) * sizeof(*snap));
		if (snap) {
			nsnap = _pcpu_nr_chunks;
			memcpy(snap, _pcpu_chunks, nsnap * sizeof(*snap));
		} else {
			r = -ENOMEM;
		}
		pthread_mutex_lock(&ix_lock);
		s = load_st(k);
		/* a CAS: a writer may turn RELEASING back at any moment */
		if (snap && state_of(s) == IX_RELEASING &&
		    __atomic_compare_exchange_n(&st[k], &s,
						(s & ~IX_MASK) | IX_DISCARDING,
						false, __ATOMIC_SEQ_CST,
						__ATOMIC_SEQ_CST)) {
			used_off(k);
			sync_bytes(k);
		} else {
			s = load_st(k);
			if (state_of(s) == IX_RELEASING)
				__atomic_compare_exchange_n(
					&st[k], &s, (s & ~IX_MASK) | IX_INUSE,
					false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
			free(snap);
			snap = NULL;
		}
		pthread_mutex_unlock(&ix_lock);
		if (!snap)
			_pcpu_initval_unlock();
		pthread_mutex_unlock(&_pcpu_alloc_lock);
	} else {
		pthread_mutex_lock(&ix_lock);
		s = load_st(k);
		if (state_of(s) == IX_RELEASING)
			__atomic_compare_exchange_n(&st[k], &s,
						    (s & ~IX_MASK) | IX_INUSE, false,
						    __ATOMIC_SEQ_CST,
						    __ATOMIC_SEQ_CST);
		pthread_mutex_unlock(&ix_lock);
	}
	if (snap) {
		/* DISCARDING: no lock taken that a waiter could hold */
		bool failed = false;
		for (size_t i = 0; i < nsnap; i++) {
			struct pcpu_chunk *c = snap[i];
			char *u = c->base + (size_t)k * _pcpu_g.unit_size;
			if (_pcpu_os_discard(u, _pcpu_g.unit_size))
				failed = true;
			else
				_pcpu_backed_forget(c, k, 0, c->map.nr_blocks - 1);
		}
		free(snap);
		_pcpu_initval_released(k);
		_pcpu_initval_unlock();
		pthread_mutex_lock(&ix_lock);
		set_state(k, IX_ABSENT | (failed ? IX_DIRTY : 0));
		pthread_cond_broadcast(&ix_cv);
		pthread_mutex_unlock(&ix_lock);
		r = 0;
	}
	_pcpu_reclaim_unlock();
	sig_restore(&old);
	return r;
}

/* Discards an ABSENT index's dirty unit (hotplug context).  0 when clean. */
int _pcpu_index_clean_dirty(int k)
{
	sigset_t old;
	sig_block(&old);
	pthread_mutex_lock(&ix_lock);
	uint32_t s = load_st(k);
	bool dirty = state_of(s) == IX_ABSENT && (s & IX_DIRTY);
	if (dirty)
		set_state(k, IX_FILLING); /* owned while discarding */
	pthread_mutex_unlock(&ix_lock);
	int r = 0;
	if (dirty) {
		r = _pcpu_chunks_discard_index(k);
		pthread_mutex_lock(&ix_lock);
		set_state(k, IX_ABSENT | (r ? IX_DIRTY : 0));
		pthread_cond_broadcast(&ix_cv);
		pthread_mutex_unlock(&ix_lock);
	}
	sig_restore(&old);
	return r;
}

bool _pcpu_index_dirty(int k)
{
	uint32_t s = load_st(k);
	return state_of(s) == IX_ABSENT && (s & IX_DIRTY);
}

/* ---- the path ---- */

bool _pcpu_index_leave_rseq(void)
{
	sigset_t old;
	bool left = false;
	sig_block(&old);
	pthread_mutex_lock(&ix_lock);
	if (_pcpu_g.path == PCPU_PATH_RSEQ) {
		__atomic_store_n(&pcpu__fast.nr, 0, __ATOMIC_RELEASE);
		__atomic_store_n(&pcpu__fast.cid_nr, 0, __ATOMIC_RELEASE);
		for (int i = 0; i < PCPU_MAX_CPUS; i++)
			__atomic_store_n(&pcpu__ok[i], 0, __ATOMIC_RELEASE);
		if (_pcpu_os_rseq_fence(-1))
			_pcpu_fatal("cannot fence rseq critical sections "
				    "(membarrier); cannot leave the rseq path");
		__atomic_store_n(&_pcpu_g.path, PCPU_PATH_ATOMIC,
				 __ATOMIC_RELEASE);
		left = true;
	}
	pthread_mutex_unlock(&ix_lock);
	sig_restore(&old);
	return left;
}

/* ---- fork ---- */

static sigset_t fork_sigs;

void _pcpu_index_atfork_prepare(void)
{
	sigset_t old;
	sig_block(&old);
	pthread_mutex_lock(&ix_lock);
	fork_sigs = old;
}

void _pcpu_index_atfork_parent(void)
{
	sigset_t old = fork_sigs;
	pthread_mutex_unlock(&ix_lock);
	sig_restore(&old);
}

/*
 * Only the forking thread lives on in the child.  Writers of other
 * threads in gates are gone; an index another thread was filling is
 * dropped (dirty: discarded before reuse); a release in flight (only the
 * hotplug context releases, and it holds the record lock while
 * DISCARDING, which the fork also held, so a release is at most
 * RELEASING here) is called off.
 */
void _pcpu_index_atfork_child(void)
{
	sigset_t old = fork_sigs;
	for (int k = 0; k < _pcpu_g.nr_ids; k++) {
		gates[k].n[0] = gates[k].n[1] = 0;
		uint32_t s = load_st(k);
		switch (state_of(s)) {
		case IX_FILLING:
			if (!pthread_equal(filler[k], pthread_self())) {
				_pcpu_initval_forget(k);
				st[k] = IX_ABSENT | IX_DIRTY;
			}
			break;
		case IX_RELEASING:
			st[k] = (s & ~IX_MASK) | IX_INUSE;
			break;
		case IX_DISCARDING:
			st[k] = IX_ABSENT | IX_DIRTY;
			break;
		}
	}
	tls_gate_depth = 0;
	pthread_cond_init(&ix_cv, NULL);
	pthread_mutex_unlock(&ix_lock); /* this thread took it to fork */
	sig_restore(&old);
}

/*
 * The invariants of indexes (docs/DESIGN.md, item 11), under ix_lock:
 * the used bit, pcpu__ok and pcpu__ptrok follow the states; READY,
 * DEMOTING and PINNED only in use; DIRTY only when ABSENT; with no index
 * FILLING, nothing is coming (initval.c).  Returns 0 or -EUCLEAN.
 */
int _pcpu_index_validate(void)
{
	const char *bad = NULL;
	int k, filling = 0;
	sigset_t old;

	sig_block(&old);
	pthread_mutex_lock(&ix_lock);
	for (k = 0; k < _pcpu_g.nr_ids && !bad; k++) {
		uint32_t s = load_st(k);
		filling += state_of(s) == IX_FILLING;
		bool used = _pcpu_cpuset_test(&_pcpu_g.used, k);
		bool ok = pcpu__ok[k], ptrok = pcpu__ptrok[k];
		if (used != in_use(s))
			bad = "used bit differs from the state";
		else if (ok && !(in_use(s) && (s & IX_READY) &&
				 !(s & IX_DEMOTING) &&
				 _pcpu_g.path == PCPU_PATH_RSEQ))
			bad = "pcpu__ok set on an index that is not ready";
		else if (ptrok != (in_use(s) && (s & IX_PINNED)))
			bad = "pcpu__ptrok differs from the state";
		else if (!in_use(s) && (s & (IX_READY | IX_DEMOTING | IX_PINNED)))
			bad = "flags of an index not in use";
		else if ((s & IX_DIRTY) && state_of(s) != IX_ABSENT)
			bad = "dirty index not absent";
	}
	int r = !bad && !filling ? _pcpu_initval_validate_idle() : 0;
	pthread_mutex_unlock(&ix_lock);
	sig_restore(&old);
	if (!bad)
		return r;
	fprintf(stderr, "libpcpu: validate: index %d: %s\n", k - 1, bad);
	return -EUCLEAN;
}
