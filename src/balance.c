/*
 * balance.c - the balance worker, memory pressure, pcpu_balance/pcpu_trim.
 *
 * One background thread per process, started lazily by the first
 * allocation (PCPU_BALANCE=0 disables it; nothing needs it for
 * correctness: pcpu_balance and pcpu_trim do the same work synchronously).
 * It sleeps in poll() on an eventfd that frees and non-blocking
 * allocations write when there is work (at most one write per wake-up),
 * on a PSI trigger when the kernel offers one, and on a timeout
 * (PCPU_BALANCE_INTERVAL_MS, default 1000).  Each wake-up runs one reclaim
 * pass (reclaim.c), at most one per tenth of the interval, and not while
 * areas are being freed at more than 100k a second (for at most one
 * interval: wait_burst_end); a memory-pressure event runs a trim at
 * once.  The
 * worker never holds a lock that pcpu_alloc or pcpu_free need while it
 * calls the OS (see reclaim.c).
 *
 * PSI: a trigger "some 150000 2000000" (150 ms of stall in a 2 s window;
 * unprivileged processes need a window that is a multiple of 2 s) on the
 * cgroup's memory.pressure (cgroup v2) or /proc/pressure/memory; without
 * PSI the worker just polls its eventfd.
 *
 * fork(): the child has no worker; the next allocation starts one.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "chunk.h"

static pthread_mutex_t worker_lock = PTHREAD_MUTEX_INITIALIZER;
static int worker_state; /* 0 not started, 1 running, -1 disabled/failed */
static int wake_fd = -1;
static int psi_fd = -1;
static int interval_ms = 1000;
static int min_gap_ms = 100; /* interval / 10, at least 10 ms */
static int kick_pending;
static int grow_pending;

static int open_psi(void)
{
	static const char trigger[] = "some 150000 2000000";
	char path[512] = "/proc/pressure/memory", line[400];
	FILE *f = fopen("/proc/self/cgroup", "re");
	if (f) {
		while (fgets(line, sizeof(line), f)) {
			if (strncmp(line, "0::/", 4))
				continue;
			line[strcspn(line, "\n")] = 0;
			char cg[512];
			snprintf(cg, sizeof(cg), "/sys/fs/cgroup%s/memory.pressure",
				 line + 3);
			if (access(cg, W_OK) == 0)
				snprintf(path, sizeof(path), "%s", cg);
		}
		fclose(f);
	}
	int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return -1;
	if (write(fd, trigger, sizeof(trigger)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static int stopping;       /* at exit: the worker returns */
static pthread_t worker_thread;

static bool worker_stopping(void)
{
	return __atomic_load_n(&stopping, __ATOMIC_ACQUIRE);
}

static uint64_t area_frees(void)
{
	pthread_mutex_lock(&_pcpu_alloc_lock);
	uint64_t n = _pcpu_counters.nr_dealloc;
	pthread_mutex_unlock(&_pcpu_alloc_lock);
	return n;
}

/*
 * A pass in the middle of a burst of frees only competes with it (the
 * allocator lock, TLB shootdowns of madvise and munmap on the freeing
 * CPU) and depopulates chunks that are about to be unmapped whole
 * anyway.  So wait, in steps of 10 ms, while more than BURST_FREES areas
 * were freed in the last step (100k a second), at most one interval.
 */
#define BURST_FREES 1000
static void wait_burst_end(void)
{
	struct timespec step = { 0, 10 * 1000000 };
	uint64_t last = area_frees();
	for (int ms = 0; ms < interval_ms && !worker_stopping(); ms += 10) {
		nanosleep(&step, NULL);
		uint64_t now = area_frees();
		if (now - last <= BURST_FREES)
			return;
		last = now;
	}
}

static void *worker_main(void *arg)
{
	(void)arg;
	while (!worker_stopping()) {
		struct pollfd pfd[2] = { { wake_fd, POLLIN, 0 },
					 { psi_fd, POLLPRI, 0 } };
		int n = poll(pfd, psi_fd >= 0 ? 2 : 1, interval_ms);
		bool pressure = n > 0 && psi_fd >= 0 &&
				(pfd[1].revents & POLLPRI);
		if (n > 0 && (pfd[0].revents & POLLIN)) {
			uint64_t v;
			ssize_t r = read(wake_fd, &v, sizeof(v));
			(void)r;
		}
		if (n > 0 && psi_fd >= 0 && (pfd[1].revents & (POLLERR | POLLNVAL))) {
			close(psi_fd); /* the trigger went away */
			psi_fd = -1;
		}
		if (worker_stopping())
			break;
		__atomic_store_n(&kick_pending, 0, __ATOMIC_RELEASE);
		bool grow = __atomic_exchange_n(&grow_pending, 0,
						__ATOMIC_ACQ_REL);
		if (pressure) {
			pthread_mutex_lock(&_pcpu_alloc_lock);
			_pcpu_counters.pressure_events++;
			pthread_mutex_unlock(&_pcpu_alloc_lock);
		} else if (!grow) {
			wait_burst_end();
		}
		/* idle caches; under pressure every cache and empty pageset,
		 * before depopulating */
		_pcpu_cache_tick(pressure);
		_pcpu_reclaim_pass(pressure, grow);
		/* CPUs that came or went, memory of CPUs waiting for frees */
		_pcpu_hotplug_tick();
		/* Rate limit: frees may kick at any pace, but reclaiming in
		 * the middle of a burst of frees only competes with it (the
		 * lock, TLB shootdowns of madvise).  Kicks that arrive
		 * meanwhile wait in the eventfd. */
		if (!pressure && !grow) {
			struct timespec tick = { 0, 10 * 1000000 };
			for (int ms = 0; ms < min_gap_ms && !worker_stopping();
			     ms += 10)
				nanosleep(&tick, NULL);
		}
	}
	return NULL;
}

/* At exit: stop the worker and join it (its thread-local memory would
 * otherwise show as lost to leak checkers).  Bounded: one second. */
static void stop_worker(void)
{
	if (__atomic_load_n(&worker_state, __ATOMIC_ACQUIRE) != 1)
		return;
	__atomic_store_n(&stopping, 1, __ATOMIC_RELEASE);
	uint64_t one = 1;
	ssize_t r = write(wake_fd, &one, sizeof(one));
	(void)r;
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 1;
	/* never restarted at exit: later frees only kick a dead worker */
	if (pthread_timedjoin_np(worker_thread, NULL, &until) == 0)
		__atomic_store_n(&worker_state, -1, __ATOMIC_RELEASE);
}

/* Context: worker_lock held. */
static void start_worker(void)
{
	const char *env = getenv("PCPU_BALANCE");
	if (env && !strcmp(env, "0")) {
		__atomic_store_n(&worker_state, -1, __ATOMIC_RELEASE);
		return;
	}
	env = getenv("PCPU_BALANCE_INTERVAL_MS");
	if (env && atoi(env) > 0)
		interval_ms = atoi(env);
	min_gap_ms = interval_ms / 10 > 10 ? interval_ms / 10 : 10;
	wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (wake_fd < 0) {
		__atomic_store_n(&worker_state, -1, __ATOMIC_RELEASE);
		return;
	}
	psi_fd = open_psi();

	/* The worker takes no signals: they belong to the application. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 256 * 1024); /* runs hotplug callbacks */
	int ret = pthread_create(&worker_thread, &attr, worker_main, NULL);
	pthread_attr_destroy(&attr);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret) {
		close(wake_fd);
		wake_fd = -1;
		if (psi_fd >= 0)
			close(psi_fd);
		psi_fd = -1;
		__atomic_store_n(&worker_state, -1, __ATOMIC_RELEASE);
		return;
	}
	__atomic_store_n(&worker_state, 1, __ATOMIC_RELEASE);
	static bool atexit_done;
	if (!atexit_done) {
		atexit_done = true;
		atexit(stop_worker);
	}
}

void _pcpu_balance_start(void)
{
	if (PCPU_LIKELY(__atomic_load_n(&worker_state, __ATOMIC_ACQUIRE)))
		return;
	pthread_mutex_lock(&worker_lock);
	if (!__atomic_load_n(&worker_state, __ATOMIC_ACQUIRE))
		start_worker();
	pthread_mutex_unlock(&worker_lock);
}

/* Wakes a running worker; async-signal-safe (an eventfd write). */
static void wake_worker(void)
{
	if (__atomic_load_n(&worker_state, __ATOMIC_ACQUIRE) != 1)
		return;
	if (!__atomic_exchange_n(&kick_pending, 1, __ATOMIC_ACQ_REL)) {
		uint64_t one = 1;
		ssize_t r = write(wake_fd, &one, sizeof(one));
		(void)r;
	}
}

void _pcpu_balance_kick(bool grow)
{
	if (grow)
		__atomic_store_n(&grow_pending, 1, __ATOMIC_RELEASE);
	_pcpu_balance_start();
	wake_worker();
}

/* From pcpu_alloc_nonblock: never starts the worker (that creates a
 * thread and maps its stack); a worker that is not running grows the
 * reserve when it starts, or the next blocking allocation does. */
void _pcpu_balance_kick_nonblock(void)
{
	__atomic_store_n(&grow_pending, 1, __ATOMIC_RELEASE);
	wake_worker();
}

void _pcpu_balance_atfork_child(void)
{
	/* No worker in the child; close the parent's descriptors. */
	if (wake_fd >= 0)
		close(wake_fd);
	if (psi_fd >= 0)
		close(psi_fd);
	wake_fd = psi_fd = -1;
	kick_pending = grow_pending = 0;
	stopping = 0;
	__atomic_store_n(&worker_state, 0, __ATOMIC_RELEASE);
	pthread_mutex_init(&worker_lock, NULL);
}

int pcpu_balance(void)
{
	_pcpu_ensure_init();
	bool grow = __atomic_exchange_n(&grow_pending, 0, __ATOMIC_ACQ_REL);
	_pcpu_cache_tick(false);
	_pcpu_reclaim_pass(false, grow);
	_pcpu_hotplug_tick();
	return 0;
}

int pcpu_trim(void)
{
	_pcpu_ensure_init();
	pcpu_drain(PCPU_DRAIN_PAGES); /* cached objects hold whole pages */
	return _pcpu_reclaim_pass(true, false) ? 1 : 0;
}
