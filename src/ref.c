/*
 * ref.c - per-CPU reference counts (the kernel's lib/percpu-refcount.c).
 *
 * A ref is in one of three states; ref_lock guards every transition, the
 * fast paths read only the two bytes of struct pcpu_ref:
 *
 *   per-CPU    pcpu__percpu == 1.  get/put add to the calling index's
 *              per-CPU count.  The true count is
 *                  data->count - BIAS + sum of the per-CPU counts,
 *              and data->count carries BIAS (2^63), so it cannot reach 0
 *              whatever the atomic part does meanwhile.
 *   switching  pcpu__percpu == 0, data->confirm_switch != NULL, queued for
 *              the switch thread.  New get/put go to data->count; writes
 *              to per-CPU counts that started before may still land.  The
 *              switch holds one reference of its own.
 *   atomic     pcpu__percpu == 0, confirm_switch == NULL.  data->count is
 *              the count; the put that brings it to 0 calls release.
 *
 * PCPU__REF_DEAD (killed) implies switching or atomic.  force_atomic
 * (switch_to_atomic) keeps a ref atomic; a ref leaves atomic mode only
 * with allow_reinit, otherwise its per-CPU counts are freed once the
 * switch completes (as the kernel does).
 *
 *         init ---------> per-CPU --kill/switch_to_atomic--> switching
 *           |  ATOMIC/DEAD   ^                                   |
 *           v                |    fence + grace period, fold     |
 *         atomic <-----------+-----------------------------------+
 *                 switch_to_percpu / resurrect (allow_reinit)
 *
 * Why the fold is exact.  Every write to a per-CPU count is either
 *   (a) an rseq critical section that reads pcpu__percpu inside itself,
 *       before its commit (pcpu__arch_add_if64), or
 *   (b) an atomic add inside a liburcu (memb) read-side critical section
 *       that read pcpu__percpu == 1 after the section began.
 * To switch, ref_lock's holder clears the byte; the switch thread then
 * fences rseq (membarrier ..._RSEQ: every section in flight has committed
 * or aborted, later ones see 0 and leave without writing) and waits for a
 * urcu grace period (every read-side section that may have seen 1 has
 * ended).  After both nothing writes the per-CPU counts, so their sum is
 * final, and one atomic add of (sum - BIAS) turns data->count into the
 * true count.  Until that add the count carried BIAS; the switch's own
 * reference keeps it >= 1 across the add; dropping that reference after
 * the confirm callback lets whoever reaches zero release, exactly once.
 *
 * Paths.  Which kind writes the calling CPU's count is index.c's choice
 * (_pcpu_slow_enter): a section (a) while the index is READY, an atomic
 * add (b) inside the index's gate otherwise, so a count is never written
 * by both kinds at once.  The switch always waits for the grace period
 * and also fences rseq when the process is (still) on the rseq path, so
 * a ref switching while the process changes path stays exact.
 *
 * Back to per-CPU (under ref_lock, no switch pending, so nothing writes
 * the per-CPU counts): add BIAS, zero the counts, then store 1 to the byte
 * with release; sections load it before the count (x86 TSO, aarch64
 * ldarb), read-side sections with acquire.
 *
 * The switch thread: a switch needs a fence and a grace period, which may
 * neither block an asynchronous caller nor run where the caller stands (a
 * signal handler, a read-side section).  So kill and switch_to_atomic
 * queue the ref and return; one thread per process takes the whole queue,
 * fences and waits once for the batch, then folds, confirms and drops
 * each ref.  Synchronous waiters wait on ref_switched.  The thread starts
 * at the first queued switch; if it cannot be created, the caller runs the
 * batch itself.  Fork: the prepare handler waits until no batch is being
 * run (so the child never inherits half a batch or a grace period in
 * progress); the child forgets the thread and restarts it when it next
 * queues or waits.  Limitation (liburcu memb's own): if another thread is
 * inside one of the read-side sections below (a few instructions, atomic
 * route only) at the instant of fork, the child's copy of liburcu's
 * registry shows that reader active forever, and the child's next switch
 * to atomic mode waits forever.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>

#include "internal.h"
#include "pcpu/ref.h"

#ifndef PCPU_HAVE_URCU
#if __has_include(<urcu/urcu-memb.h>)
#define PCPU_HAVE_URCU 1
#else
#define PCPU_HAVE_URCU 0
#endif
#endif
#if PCPU_HAVE_URCU
#include <urcu/urcu-memb.h>
#endif

/* ThreadSanitizer cannot see the ordering liburcu gives (membarrier). */
#if defined(__SANITIZE_THREAD__)
#define REF_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define REF_TSAN 1
#endif
#endif
#ifdef REF_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
static char ref_tsan_gp;
#endif

#define REF_BIAS (1UL << 63)
#define REF_FLAGS_ALL                                                          \
	(PCPU_REF_INIT_ATOMIC | PCPU_REF_INIT_DEAD | PCPU_REF_ALLOW_REINIT)

typedef void (*ref_func_t)(struct pcpu_ref *);

/*
 * The cold part of a ref.  Invariant: confirm_switch != NULL exactly while
 * the ref is queued or in a batch, and then the ref is not in per-CPU
 * mode and count includes the switch's reference.
 */
struct pcpu__ref_data {
	unsigned long count;       /* atomics only */
	ref_func_t release;
	ref_func_t confirm_switch; /* ref_lock */
	struct pcpu_ref *ref;
	struct pcpu__ref_data *next; /* switch queue link, ref_lock */
	bool force_atomic;         /* ref_lock */
	bool allow_reinit;         /* ref_lock */
};

static pthread_mutex_t ref_lock = PTHREAD_MUTEX_INITIALIZER;
/* Broadcast when a confirm_switch becomes NULL and when a batch ends. */
static pthread_cond_t ref_switched = PTHREAD_COND_INITIALIZER;
/* Signalled when the queue gets work. */
static pthread_cond_t ref_work = PTHREAD_COND_INITIALIZER;
static struct pcpu__ref_data *queue_head, **queue_tail = &queue_head;
static bool worker_running;  /* the switch thread exists in this process */
static pthread_t worker_thread;
static bool batch_busy;      /* a batch is being run, by batch_thread */
static pthread_t batch_thread;
static pthread_once_t ref_once = PTHREAD_ONCE_INIT;

static void ref_noop_confirm(struct pcpu_ref *ref)
{
	(void)ref;
}

/* ---- read-side sections (the atomic route) ---- */

#if PCPU_HAVE_URCU
static pthread_key_t reader_key;
static pthread_once_t reader_once = PTHREAD_ONCE_INIT;
static __thread bool tls_reader;

static void reader_exit(void *arg)
{
	(void)arg;
	if (tls_reader) {
		urcu_memb_unregister_thread();
		tls_reader = false;
	}
}

static void reader_key_init(void)
{
	if (pthread_key_create(&reader_key, reader_exit))
		_pcpu_fatal("pcpu_ref: no pthread key for liburcu threads");
}

/* Registers the calling thread with liburcu; unregistered at its exit. */
static void __attribute__((noinline)) reader_register(void)
{
	pthread_once(&reader_once, reader_key_init);
	urcu_memb_register_thread();
	tls_reader = true;
	pthread_setspecific(reader_key, (void *)1);
}

static void ref_read_lock(void)
{
	if (PCPU_UNLIKELY(!tls_reader))
		reader_register();
	urcu_memb_read_lock();
}

static void ref_read_unlock(void)
{
	urcu_memb_read_unlock();
}

static void ref_synchronize(void)
{
	urcu_memb_synchronize_rcu();
}
#else
/* Without liburcu: a reader-writer lock is a (slow) grace period. */
static pthread_rwlock_t ref_gp_lock = PTHREAD_RWLOCK_INITIALIZER;

static void ref_read_lock(void)
{
	pthread_rwlock_rdlock(&ref_gp_lock);
}

static void ref_read_unlock(void)
{
	pthread_rwlock_unlock(&ref_gp_lock);
}

static void ref_synchronize(void)
{
	pthread_rwlock_wrlock(&ref_gp_lock);
	pthread_rwlock_unlock(&ref_gp_lock);
}
#endif

/* ---- per-CPU and atomic operations ---- */

/*
 * Inside a read-side section that saw per-CPU mode: add @v to a per-CPU
 * count.  Returns false when an rseq section found the ref no longer in
 * per-CPU mode (the caller then uses the atomic count).
 */
static bool ref_add_percpu_locked(struct pcpu_ref *ref, unsigned long v)
{
	unsigned long *pc = __atomic_load_n(&ref->pcpu__count, __ATOMIC_RELAXED);

	for (;;) {
		bool rs;
		int t, idx = _pcpu_slow_enter(&rs, &t);
		unsigned long *q = pcpu__copy(pc, idx);
		if (rs) {
			int r = pcpu__arch_add_if64((uint64_t *)q, v, idx,
						    pcpu__fast.idx_tpoff,
						    &ref->pcpu__percpu);
			if (r == 0)
				return true;
			if (r == 2)
				return false;
			continue; /* preempted, migrated, signal */
		}
		__atomic_fetch_add(q, v, __ATOMIC_RELAXED);
		_pcpu_slow_exit(idx, t);
#ifdef REF_TSAN
		__tsan_release(&ref_tsan_gp);
#endif
		return true;
	}
}

/* Adds @v to a per-CPU count if @ref is in per-CPU mode; false if not. */
static bool ref_add_percpu_slow(struct pcpu_ref *ref, unsigned long v)
{
	bool done = false;
	if (!__atomic_load_n(&ref->pcpu__percpu, __ATOMIC_RELAXED))
		return false;
	ref_read_lock();
	if (__atomic_load_n(&ref->pcpu__percpu, __ATOMIC_ACQUIRE))
		done = ref_add_percpu_locked(ref, v);
	ref_read_unlock();
	return done;
}

/* The cold part, or NULL after a report of use after exit. */
static struct pcpu__ref_data *ref_data(struct pcpu_ref *ref, const char *call)
{
	struct pcpu__ref_data *d =
		__atomic_load_n(&ref->pcpu__data, __ATOMIC_ACQUIRE);
	if (PCPU_UNLIKELY(!d))
		_pcpu_report(call, ref);
	return d;
}

static void ref_put_atomic(struct pcpu_ref *ref, struct pcpu__ref_data *d,
			   unsigned long nr)
{
	ref_func_t release = d->release;
	if (__atomic_sub_fetch(&d->count, nr, __ATOMIC_ACQ_REL) == 0 && release)
		release(ref);
}

void pcpu__ref_get_slow(struct pcpu_ref *ref, unsigned long nr)
{
	if (ref_add_percpu_slow(ref, nr))
		return;
	struct pcpu__ref_data *d = ref_data(ref, "pcpu_ref_get after exit");
	if (d)
		__atomic_fetch_add(&d->count, nr, __ATOMIC_RELAXED);
}

void pcpu__ref_put_slow(struct pcpu_ref *ref, unsigned long nr)
{
	if (ref_add_percpu_slow(ref, -nr))
		return;
	struct pcpu__ref_data *d = ref_data(ref, "pcpu_ref_put after exit");
	if (d)
		ref_put_atomic(ref, d, nr);
}

bool pcpu__ref_tryget_slow(struct pcpu_ref *ref, unsigned long nr, bool live)
{
	if (ref_add_percpu_slow(ref, nr))
		return true;
	if (live && pcpu_ref_is_dying(ref))
		return false;
	struct pcpu__ref_data *d = ref_data(ref, "pcpu_ref_tryget after exit");
	if (!d)
		return false;
	unsigned long c = __atomic_load_n(&d->count, __ATOMIC_RELAXED);
	do {
		if (c == 0)
			return false;
	} while (!__atomic_compare_exchange_n(&d->count, &c, c + nr, true,
					      __ATOMIC_ACQ_REL,
					      __ATOMIC_RELAXED));
	return true;
}

/* ---- the switch thread ---- */

/* Every per-CPU count write that may have seen the old mode is done. */
static void ref_grace_period(void)
{
	if (pcpu_path() == PCPU_PATH_RSEQ) {
		int err = 0;
		for (int tries = 0; tries < 3; tries++)
			if (!(err = _pcpu_os_rseq_fence(-1)))
				break;
		if (err)
			_pcpu_fatal("pcpu_ref: cannot fence rseq critical "
				    "sections (membarrier: %d)", err);
	}
	ref_synchronize();
#ifdef REF_TSAN
	__tsan_acquire(&ref_tsan_gp);
#endif
}

/* After the grace period: fold, confirm, drop the switch's reference. */
static void ref_finish_switch(struct pcpu__ref_data *d)
{
	struct pcpu_ref *ref = d->ref;
	unsigned long *pc = __atomic_load_n(&ref->pcpu__count, __ATOMIC_RELAXED);
	unsigned long sum = pcpu_sum(pc);
	unsigned long c = __atomic_add_fetch(&d->count, sum - REF_BIAS,
					     __ATOMIC_ACQ_REL);
	if (PCPU_UNLIKELY((long)c <= 0))
		_pcpu_report("pcpu_ref count underflow (more puts than gets)",
			     ref);

	d->confirm_switch(ref);

	/* Under the lock: pcpu_ref_exit waits for confirm_switch == NULL and
	 * must not free @d before this put. */
	pthread_mutex_lock(&ref_lock);
	d->confirm_switch = NULL;
	if (!d->allow_reinit) {
		__atomic_store_n(&ref->pcpu__count, NULL, __ATOMIC_RELAXED);
	} else {
		pc = NULL;
	}
	ref_func_t release = d->release;
	c = __atomic_sub_fetch(&d->count, 1, __ATOMIC_ACQ_REL);
	pthread_cond_broadcast(&ref_switched);
	pthread_mutex_unlock(&ref_lock);
	pcpu_free(pc); /* nothing reads them: the byte is 0 for good */
	if (c == 0 && release)
		release(ref);
}

/* Runs every queued switch; ref_lock held on entry and exit (dropped in
 * between).  Caller: the switch thread, or a thread that could not start
 * it, and never while a batch is being run. */
static void ref_run_batches_locked(void)
{
	while (queue_head) {
		struct pcpu__ref_data *batch = queue_head;
		queue_head = NULL;
		queue_tail = &queue_head;
		batch_busy = true;
		batch_thread = pthread_self();
		pthread_mutex_unlock(&ref_lock);

		ref_grace_period();
		while (batch) {
			struct pcpu__ref_data *d = batch;
			batch = d->next; /* d may be freed by its release */
			ref_finish_switch(d);
		}

		pthread_mutex_lock(&ref_lock);
		batch_busy = false;
		pthread_cond_broadcast(&ref_switched);
		if (worker_running && !pthread_equal(worker_thread,
						     pthread_self())) {
			/* the thread appeared meanwhile: its job */
			if (queue_head)
				pthread_cond_signal(&ref_work);
			break;
		}
	}
}

static void *ref_worker(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&ref_lock);
	for (;;) {
		while (!queue_head || batch_busy)
			pthread_cond_wait(&ref_work, &ref_lock);
		ref_run_batches_locked();
	}
	return NULL;
}

static int ref_worker_start(void)
{
	sigset_t all, old;
	pthread_attr_t attr;
	int err;

	if (pthread_attr_init(&attr))
		return -ENOMEM;
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	err = pthread_create(&worker_thread, &attr, ref_worker, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	if (err)
		return -err;
	worker_running = true;
	return 0;
}

/* Makes sure the queue will be run (ref_lock held; may drop it when no
 * thread can be started and the caller has to run the batch). */
static void ref_kick_locked(void)
{
	if (!queue_head)
		return;
	if (worker_running) {
		pthread_cond_signal(&ref_work);
		return;
	}
	if (ref_worker_start() == 0)
		return;
	if (!batch_busy)
		ref_run_batches_locked();
}

static bool ref_in_batch(void)
{
	return batch_busy && pthread_equal(batch_thread, pthread_self());
}

/* Waits until @d has no switch pending (ref_lock held, may be dropped). */
static void ref_wait_switch_locked(struct pcpu__ref_data *d)
{
	while (d->confirm_switch) {
		if (ref_in_batch())
			_pcpu_fatal("pcpu_ref: a confirm or release callback "
				    "waits for a pending switch of %p; that "
				    "would never end",
				    (void *)d->ref);
		ref_kick_locked();
		if (d->confirm_switch)
			pthread_cond_wait(&ref_switched, &ref_lock);
	}
}

static void ref_atfork_prepare(void)
{
	pthread_mutex_lock(&ref_lock);
	while (batch_busy && !ref_in_batch())
		pthread_cond_wait(&ref_switched, &ref_lock);
}

static void ref_atfork_parent(void)
{
	pthread_mutex_unlock(&ref_lock);
}

static void ref_atfork_child(void)
{
	/* Only the forking thread lives on: the switch thread survives only
	 * if it forked (from a callback), and waiters are gone. */
	worker_running = worker_running &&
			 pthread_equal(worker_thread, pthread_self());
	pthread_cond_init(&ref_switched, NULL);
	pthread_cond_init(&ref_work, NULL);
	pthread_mutex_unlock(&ref_lock);
}

static void ref_once_init(void)
{
	/* After cpu.c's handlers (pcpu_init registered them): ours prepare
	 * first, while the batch may still need the allocator's locks. */
	pthread_atfork(ref_atfork_prepare, ref_atfork_parent,
		       ref_atfork_child);
}

/* ---- mode switches (kernel: __percpu_ref_switch_*) ---- */

/*
 * Starts the switch to atomic mode (ref_lock held).  Returns the confirm
 * function to call at once, after unlocking, when @ref is already atomic.
 */
static ref_func_t ref_start_atomic_locked(struct pcpu_ref *ref,
					  struct pcpu__ref_data *d,
					  ref_func_t confirm)
{
	if (!ref->pcpu__percpu)
		return confirm;
	__atomic_store_n(&ref->pcpu__percpu, 0, __ATOMIC_SEQ_CST);
	d->confirm_switch = confirm ? confirm : ref_noop_confirm;
	__atomic_fetch_add(&d->count, 1, __ATOMIC_RELAXED); /* put by the
							       switch */
	d->next = NULL;
	*queue_tail = d;
	queue_tail = &d->next;
	return NULL;
}

/* Back to per-CPU mode (ref_lock held, no switch pending). */
static const char *ref_start_percpu_locked(struct pcpu_ref *ref,
					   struct pcpu__ref_data *d)
{
	unsigned long *pc = ref->pcpu__count;
	int cpu;

	if (ref->pcpu__percpu)
		return NULL;
	if (!d->allow_reinit || !pc)
		return "pcpu_ref: leaving atomic mode needs "
		       "PCPU_REF_ALLOW_REINIT";
	__atomic_fetch_add(&d->count, REF_BIAS, __ATOMIC_RELAXED);
	pcpu_for_each_cpu(cpu) /* a copy that holds no data reads zero */
		if (_pcpu_copy_backed(pc, cpu) &&
		    __atomic_load_n((unsigned long *)pcpu__copy(pc, cpu),
				    __ATOMIC_RELAXED))
			__atomic_store_n((unsigned long *)pcpu__copy(pc, cpu), 0,
					 __ATOMIC_RELAXED);
	__atomic_store_n(&ref->pcpu__percpu, 1, __ATOMIC_RELEASE);
	return NULL;
}

/* Kernel __percpu_ref_switch_mode.  *misuse gets a report to make. */
static ref_func_t ref_switch_mode_locked(struct pcpu_ref *ref,
					 struct pcpu__ref_data *d,
					 ref_func_t confirm, const char **misuse)
{
	ref_wait_switch_locked(d);
	if (d->force_atomic || (ref->pcpu__flags & PCPU__REF_DEAD))
		return ref_start_atomic_locked(ref, d, confirm);
	*misuse = ref_start_percpu_locked(ref, d);
	return NULL;
}

/* Takes ref_lock and returns the cold part, or NULL (unlocked, reported)
 * when @ref is not initialised. */
static struct pcpu__ref_data *ref_lock_data(struct pcpu_ref *ref,
					    const char *call)
{
	pthread_mutex_lock(&ref_lock);
	struct pcpu__ref_data *d = ref->pcpu__data;
	if (!d) {
		pthread_mutex_unlock(&ref_lock);
		_pcpu_report(call, ref);
	}
	return d;
}

static void ref_unlock_report(struct pcpu_ref *ref, const char *misuse)
{
	ref_kick_locked();
	pthread_mutex_unlock(&ref_lock);
	if (misuse)
		_pcpu_report(misuse, ref);
}

/* ---- public API ---- */

int pcpu_ref_init(struct pcpu_ref *ref, void (*release)(struct pcpu_ref *),
		  unsigned flags)
{
	if (!ref || (flags & ~REF_FLAGS_ALL))
		return -EINVAL;
	unsigned long *pc = pcpu_alloc(sizeof(unsigned long), 0);
	struct pcpu__ref_data *d = calloc(1, sizeof(*d));
	if (!pc || !d) {
		pcpu_free(pc);
		free(d);
		return -ENOMEM;
	}
	_pcpu_ensure_init();
	pthread_once(&ref_once, ref_once_init);

	unsigned long count = 0;
	unsigned char percpu = 0, fl = 0;
	d->allow_reinit = flags & PCPU_REF_ALLOW_REINIT;
	d->force_atomic = flags & PCPU_REF_INIT_ATOMIC;
	if (flags & (PCPU_REF_INIT_ATOMIC | PCPU_REF_INIT_DEAD)) {
		d->allow_reinit = true;
	} else {
		count += REF_BIAS;
		percpu = 1;
	}
	if (flags & PCPU_REF_INIT_DEAD)
		fl = PCPU__REF_DEAD;
	else
		count++;
	d->count = count;
	d->release = release;
	d->ref = ref;
	ref->pcpu__count = pc;
	ref->pcpu__flags = fl;
	__atomic_store_n(&ref->pcpu__data, d, __ATOMIC_RELEASE);
	__atomic_store_n(&ref->pcpu__percpu, percpu, __ATOMIC_RELEASE);
	return 0;
}

void pcpu_ref_exit(struct pcpu_ref *ref)
{
	pthread_mutex_lock(&ref_lock);
	struct pcpu__ref_data *d = ref->pcpu__data;
	if (!d) {
		pthread_mutex_unlock(&ref_lock);
		return;
	}
	ref_wait_switch_locked(d);
	unsigned long *pc = ref->pcpu__count;
	bool zero = !ref->pcpu__percpu &&
		    __atomic_load_n(&d->count, __ATOMIC_ACQUIRE) == 0;
	__atomic_store_n(&ref->pcpu__percpu, 0, __ATOMIC_RELEASE);
	__atomic_store_n(&ref->pcpu__flags,
			 PCPU__REF_DEAD | PCPU__REF_EXITED |
				 (zero ? PCPU__REF_ZERO : 0),
			 __ATOMIC_RELEASE);
	__atomic_store_n(&ref->pcpu__count, NULL, __ATOMIC_RELAXED);
	__atomic_store_n(&ref->pcpu__data, NULL, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&ref_lock);
	pcpu_free(pc);
	free(d);
}

void pcpu_ref_kill_and_confirm(struct pcpu_ref *ref,
			       void (*confirm_kill)(struct pcpu_ref *))
{
	const char *misuse = NULL;
	struct pcpu__ref_data *d = ref_lock_data(ref, "pcpu_ref_kill after exit");
	if (!d)
		return;
	if (ref->pcpu__flags & PCPU__REF_DEAD) {
		ref_unlock_report(ref, "pcpu_ref_kill of a dying ref");
		return;
	}
	__atomic_store_n(&ref->pcpu__flags, ref->pcpu__flags | PCPU__REF_DEAD,
			 __ATOMIC_RELEASE);
	ref_func_t now = ref_switch_mode_locked(ref, d, confirm_kill, &misuse);
	ref_unlock_report(ref, misuse);
	if (now)
		now(ref);
	ref_put_atomic(ref, d, 1); /* the initial reference */
}

void pcpu_ref_kill(struct pcpu_ref *ref)
{
	pcpu_ref_kill_and_confirm(ref, NULL);
}

void pcpu_ref_switch_to_atomic(struct pcpu_ref *ref,
			       void (*confirm_switch)(struct pcpu_ref *))
{
	const char *misuse = NULL;
	struct pcpu__ref_data *d =
		ref_lock_data(ref, "pcpu_ref_switch_to_atomic after exit");
	if (!d)
		return;
	d->force_atomic = true;
	ref_func_t now = ref_switch_mode_locked(ref, d, confirm_switch, &misuse);
	ref_unlock_report(ref, misuse);
	if (now)
		now(ref);
}

void pcpu_ref_switch_to_atomic_sync(struct pcpu_ref *ref)
{
	pcpu_ref_switch_to_atomic(ref, NULL);
	struct pcpu__ref_data *d =
		ref_lock_data(ref, "pcpu_ref_switch_to_atomic_sync after exit");
	if (!d)
		return;
	ref_wait_switch_locked(d);
	pthread_mutex_unlock(&ref_lock);
}

void pcpu_ref_switch_to_percpu(struct pcpu_ref *ref)
{
	const char *misuse = NULL;
	struct pcpu__ref_data *d =
		ref_lock_data(ref, "pcpu_ref_switch_to_percpu after exit");
	if (!d)
		return;
	d->force_atomic = false;
	ref_switch_mode_locked(ref, d, NULL, &misuse);
	ref_unlock_report(ref, misuse);
}

void pcpu_ref_resurrect(struct pcpu_ref *ref)
{
	const char *misuse = NULL;
	struct pcpu__ref_data *d =
		ref_lock_data(ref, "pcpu_ref_resurrect after exit");
	if (!d)
		return;
	if (!(ref->pcpu__flags & PCPU__REF_DEAD) || ref->pcpu__percpu) {
		misuse = "pcpu_ref_resurrect of a live ref";
	} else if (!d->allow_reinit) {
		misuse = "pcpu_ref_resurrect needs PCPU_REF_ALLOW_REINIT";
	} else {
		__atomic_store_n(&ref->pcpu__flags,
				 ref->pcpu__flags & ~PCPU__REF_DEAD,
				 __ATOMIC_RELEASE);
		__atomic_fetch_add(&d->count, 1, __ATOMIC_RELAXED);
		ref_switch_mode_locked(ref, d, NULL, &misuse);
	}
	ref_unlock_report(ref, misuse);
}

void pcpu_ref_reinit(struct pcpu_ref *ref)
{
	if (!pcpu_ref_is_zero(ref)) {
		_pcpu_report("pcpu_ref_reinit of a ref whose count is not zero",
			     ref);
		return;
	}
	pcpu_ref_resurrect(ref);
}

bool pcpu_ref_is_zero(struct pcpu_ref *ref)
{
	if (__atomic_load_n(&ref->pcpu__percpu, __ATOMIC_ACQUIRE))
		return false;
	pthread_mutex_lock(&ref_lock);
	struct pcpu__ref_data *d = ref->pcpu__data;
	bool zero = d ? __atomic_load_n(&d->count, __ATOMIC_ACQUIRE) == 0
		      : (ref->pcpu__flags & PCPU__REF_ZERO) != 0;
	pthread_mutex_unlock(&ref_lock);
	return zero;
}
