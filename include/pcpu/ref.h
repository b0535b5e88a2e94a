/*
 * ref.h - per-CPU reference counts, like the kernel's percpu_ref.
 *
 * A pcpu_ref starts in per-CPU mode: get and put add to the calling CPU's
 * count inside one rseq critical section, without atomic instructions,
 * and the counts are not added up, so nothing can tell when they reach
 * zero.  Killing the ref (or pcpu_ref_switch_to_atomic) moves it to atomic
 * mode: after a grace period the per-CPU counts are folded into one
 * atomic count, and from then on the put that brings it to zero calls
 * the release function, exactly once.
 *
 *	static void obj_release(struct pcpu_ref *ref)
 *	{
 *		struct obj *o = container_of(ref, struct obj, ref);
 *		pcpu_ref_exit(&o->ref);
 *		free(o);
 *	}
 *	pcpu_ref_init(&o->ref, obj_release, 0);    the caller holds one ref
 *	if (pcpu_ref_tryget_live(&o->ref)) { use(o); pcpu_ref_put(&o->ref); }
 *	pcpu_ref_kill(&o->ref);                    drops the initial ref
 *
 * Callbacks (release, confirm) run either in the thread whose put or kill
 * brought the count to zero or confirmed at once, or on the library's
 * switch thread (one per process, started at the first switch to atomic
 * mode).  A callback running there must not wait for a pending switch
 * (pcpu_ref_switch_to_atomic_sync, or a switch or exit of a ref whose
 * switch is still pending, its own included): that is reported as fatal
 * instead of hanging.  Nor may it wait for a thread that is in fork():
 * fork waits until the switch thread is between batches.
 *
 * Signals: get, put and the trygets are async-signal-safe once the thread
 * has made one ref operation outside a handler (on the atomic path the
 * thread registers with liburcu at its first operation, which takes a
 * lock).  The other functions take a mutex and are not.
 *
 * Misuse the library can see (killing a dead ref, resurrecting a live one,
 * reinit without PCPU_REF_ALLOW_REINIT, use after exit) goes to the error
 * handler (pcpu_set_error_handler); a handler that returns makes the call a
 * no-op.
 */
#ifndef PCPU_REF_H
#define PCPU_REF_H

#include <stdbool.h>
#include <stdint.h>

#include "pcpu/pcpu.h"

#ifdef __cplusplus
extern "C" {
#endif

/* pcpu_ref_init flags (the kernel's PERCPU_REF_*). */
#define PCPU_REF_INIT_ATOMIC (1u << 0)  /* start in atomic mode, stay there
					   until pcpu_ref_switch_to_percpu */
#define PCPU_REF_INIT_DEAD (1u << 1)    /* start killed with count 0:
					   pcpu_ref_reinit brings it alive */
#define PCPU_REF_ALLOW_REINIT (1u << 2) /* may go back to per-CPU mode
					   (switch_to_percpu, reinit,
					   resurrect); implied by the two
					   above */

struct pcpu__ref_data;

/*
 * What the inline fast paths read; the rest lives in pcpu__data (ref.c).
 * A zeroed struct is "not initialised": pcpu_ref_exit on it is a no-op.
 */
struct pcpu_ref {
	unsigned long *pcpu__count;        /* per-CPU counts (pcpu_alloc);
					      NULL once freed */
	struct pcpu__ref_data *pcpu__data; /* NULL before init, after exit */
	unsigned char pcpu__percpu;        /* != 0: per-CPU mode; read inside
					      the rseq section */
	unsigned char pcpu__flags;         /* PCPU__REF_* */
};

#define PCPU__REF_DEAD 1   /* killed (or exited) */
#define PCPU__REF_EXITED 2 /* pcpu_ref_exit ran */
#define PCPU__REF_ZERO 4   /* the count was zero at exit */

/* Out-of-line paths (src/ref.c): anything but a per-CPU-mode commit. */
void pcpu__ref_get_slow(struct pcpu_ref *ref, unsigned long nr);
void pcpu__ref_put_slow(struct pcpu_ref *ref, unsigned long nr);
bool pcpu__ref_tryget_slow(struct pcpu_ref *ref, unsigned long nr, bool live);

/*
 * One rseq critical section: the calling CPU's count += v, if the ref is
 * in per-CPU mode when the section commits.  False when that did not
 * happen (abort, atomic mode, no fast path here): go slow.
 */
static inline bool pcpu__ref_add_fast(struct pcpu_ref *ref, unsigned long v)
{
	int idx = pcpu__fast_index();
	if (pcpu__unlikely(idx < 0))
		return false;
	/* Integer arithmetic: the pointer may be NULL once the counts are
	 * freed, and is then never dereferenced (the mode byte is 0). */
	uintptr_t q = (uintptr_t)__atomic_load_n(&ref->pcpu__count,
						 __ATOMIC_RELAXED) +
		      ((uintptr_t)idx << pcpu__fast.shift);
	return pcpu__arch_add_if64((uint64_t *)q, v, idx, pcpu__fast.idx_tpoff,
				   &ref->pcpu__percpu) == 0;
}

/* ------------------------------------------------------------------ */
/* Life cycle                                                          */

/*
 * pcpu_ref_init - initialise @ref with a count of 1 (0 with
 * PCPU_REF_INIT_DEAD), in per-CPU mode unless @flags has
 * PCPU_REF_INIT_ATOMIC or PCPU_REF_INIT_DEAD.  @release (may be NULL) is
 * called once the count drops to zero in atomic mode.
 * Context: any thread, not a signal handler; allocates.
 * Returns: 0, -EINVAL (NULL @ref, unknown flag) or -ENOMEM.
 */
int pcpu_ref_init(struct pcpu_ref *ref, void (*release)(struct pcpu_ref *),
		  unsigned flags);

/*
 * pcpu_ref_exit - free what init allocated.  Waits for a pending switch
 * of @ref to finish.  Afterwards only pcpu_ref_is_zero (the count at
 * exit), pcpu_ref_is_dying (true), pcpu_ref_exit (no-op) and
 * pcpu_ref_init may be used.  Typically called from the release function.
 * Context: not from @ref's confirm callback.
 */
void pcpu_ref_exit(struct pcpu_ref *ref);

/* ------------------------------------------------------------------ */
/* Fast paths                                                          */

/* pcpu_ref_get_many - take @nr references.  The caller must already hold
 * one (or know the count cannot be zero).  Context: any, see the top. */
static inline void pcpu_ref_get_many(struct pcpu_ref *ref, unsigned long nr)
{
	if (pcpu__likely(pcpu__ref_add_fast(ref, nr)))
		return;
	pcpu__ref_get_slow(ref, nr);
}

/* pcpu_ref_get - take one reference; see pcpu_ref_get_many. */
static inline void pcpu_ref_get(struct pcpu_ref *ref)
{
	pcpu_ref_get_many(ref, 1);
}

/* pcpu_ref_tryget_many - take @nr references unless the count is zero
 * (atomic mode only: in per-CPU mode this always succeeds, even after
 * kill until the switch completes).  Returns: true if taken. */
static inline bool pcpu_ref_tryget_many(struct pcpu_ref *ref, unsigned long nr)
{
	if (pcpu__likely(pcpu__ref_add_fast(ref, nr)))
		return true;
	return pcpu__ref_tryget_slow(ref, nr, false);
}

/* pcpu_ref_tryget - pcpu_ref_tryget_many(ref, 1). */
static inline bool pcpu_ref_tryget(struct pcpu_ref *ref)
{
	return pcpu_ref_tryget_many(ref, 1);
}

/*
 * pcpu_ref_tryget_live - take a reference unless @ref has been killed (or
 * its count is zero).  It may still succeed between pcpu_ref_kill and the
 * confirmation of the kill; never after.  Returns: true if taken.
 */
static inline bool pcpu_ref_tryget_live(struct pcpu_ref *ref)
{
	if (pcpu__likely(pcpu__ref_add_fast(ref, 1)))
		return true;
	return pcpu__ref_tryget_slow(ref, 1, true);
}

/* pcpu_ref_put_many - drop @nr references; in atomic mode, the put that
 * brings the count to zero calls the release function (in this thread). */
static inline void pcpu_ref_put_many(struct pcpu_ref *ref, unsigned long nr)
{
	if (pcpu__likely(pcpu__ref_add_fast(ref, -nr)))
		return;
	pcpu__ref_put_slow(ref, nr);
}

/* pcpu_ref_put - drop one reference; see pcpu_ref_put_many. */
static inline void pcpu_ref_put(struct pcpu_ref *ref)
{
	pcpu_ref_put_many(ref, 1);
}

/* pcpu_ref_is_dying - true once @ref was killed (until resurrected) or
 * exited.  A snapshot; any context. */
static inline bool pcpu_ref_is_dying(struct pcpu_ref *ref)
{
	return __atomic_load_n(&ref->pcpu__flags, __ATOMIC_ACQUIRE) &
	       PCPU__REF_DEAD;
}

/* ------------------------------------------------------------------ */
/* Mode switches                                                       */

/*
 * pcpu_ref_kill_and_confirm - mark @ref dead, switch it to atomic mode and
 * drop the initial reference.  @confirm_kill (may be NULL) is called once
 * every later pcpu_ref_tryget_live is sure to fail, before the release
 * function can run: at once if @ref was already in atomic mode, otherwise
 * on the switch thread after a grace period.  Returns at once, unless a
 * switch of @ref is still pending (then it waits for it first).
 * Killing a dying ref is reported as misuse.
 * Context: not a signal handler.
 */
void pcpu_ref_kill_and_confirm(struct pcpu_ref *ref,
			       void (*confirm_kill)(struct pcpu_ref *));

/* pcpu_ref_kill - pcpu_ref_kill_and_confirm(ref, NULL). */
void pcpu_ref_kill(struct pcpu_ref *ref);

/*
 * pcpu_ref_switch_to_atomic - put @ref in atomic mode and keep it there
 * (until pcpu_ref_switch_to_percpu).  Asynchronous: returns at once (after
 * waiting for a pending switch of @ref, if any); the switch completes
 * after a grace period on the switch thread, which then calls
 * @confirm_switch (may be NULL).  Already atomic: confirm is called at
 * once, in this thread.  Context: not a signal handler.
 */
void pcpu_ref_switch_to_atomic(struct pcpu_ref *ref,
			       void (*confirm_switch)(struct pcpu_ref *));

/* pcpu_ref_switch_to_atomic_sync - the same, and wait until the switch
 * has completed.  Context: may sleep; not from a callback of @ref. */
void pcpu_ref_switch_to_atomic_sync(struct pcpu_ref *ref);

/*
 * pcpu_ref_switch_to_percpu - let @ref use per-CPU counts again: at once
 * if it is neither dying nor forced atomic by pcpu_ref_switch_to_atomic,
 * otherwise when it is resurrected.  Waits for a pending switch.  Needs
 * PCPU_REF_ALLOW_REINIT (or INIT_ATOMIC/INIT_DEAD) to leave atomic mode;
 * without it that is reported as misuse.  Context: not a signal handler.
 */
void pcpu_ref_switch_to_percpu(struct pcpu_ref *ref);

/*
 * pcpu_ref_resurrect - bring a dying @ref back to life: clear the dead
 * mark, take a reference, and return to per-CPU mode unless forced
 * atomic.  Waits for the pending kill to complete first.  Needs
 * PCPU_REF_ALLOW_REINIT (or INIT_ATOMIC/INIT_DEAD); a live or exited ref
 * is misuse.  Context: not a signal handler.
 */
void pcpu_ref_resurrect(struct pcpu_ref *ref);

/*
 * pcpu_ref_reinit - pcpu_ref_resurrect for a ref whose count is zero
 * (after its release ran): it comes back with count 1.  Reported as misuse
 * when the count is not zero.
 */
void pcpu_ref_reinit(struct pcpu_ref *ref);

/*
 * pcpu_ref_is_zero - true if @ref is in atomic mode and its count is zero
 * (after exit: whether it was then).  Context: not a signal handler
 * (takes the switch mutex unless in per-CPU mode).
 */
bool pcpu_ref_is_zero(struct pcpu_ref *ref);

#ifdef __cplusplus
}
#endif

#endif
