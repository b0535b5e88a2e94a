/*
 * test_fork.c - fork() while other threads allocate, free and operate.
 *
 * Background threads allocate and free areas and run pcpu_add/pcpu_sum on
 * them in a loop, moving between CPUs; the main thread forks many times
 * meanwhile.  Each child must, within 10 seconds (a deadlock is a
 * failure: the parent kills it), allocate, free, add and sum, pass
 * pcpu_validate(), see its per-CPU data as a copy separate from the
 * parent's (neither sees what the other writes after the fork), and, on
 * some forks, act as a CPU with pcpu_sim_set_cpu (which fences with
 * membarrier: the registration must be redone in the new process).
 *
 * ThreadSanitizer does not support fork from a multithreaded process: under
 * TSan the background threads are not started and the library's balance
 * worker is disabled (PCPU_BALANCE=0), so the forks are single-threaded.
 * Elsewhere a child's first allocation starts its own worker.
 * PCPU_TEST_SCALE=valgrind shrinks the loops 50x; PCPU_DEBUG >= 2 (the
 * library validates itself after every operation) makes 100 forks, >= 3
 * (everything validated each time) 20.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "cpus.h"
#include "internal.h"

#define NR_BG 3
#define CHILD_TIMEOUT_MS 10000

static long scale = 1;
static volatile int stop_bg;
static long bg_loops[NR_BG];
static long bg_bad[NR_BG];

static uint64_t rng(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545f4914f6cdd1dULL;
}

static long now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000L + t.tv_nsec / 1000000;
}

/* ---- background load ---- */

static void *bg_worker(void *arg)
{
	int id = (int)(intptr_t)arg;
	uint64_t rs = 0x9e3779b97f4a7c15ULL * (uint64_t)(id + 1);
	long *a[16] = { 0 };
	long k[16] = { 0 };

	/* PCPU_DEBUG >= 3 validates everything on every free: fewer areas */
	const int slots = PCPU_DEBUG >= 3 ? 4 : 16;

	while (!__atomic_load_n(&stop_bg, __ATOMIC_RELAXED)) {
		int j = (int)(rng(&rs) % (uint64_t)slots);
		if (!a[j]) {
			size_t size = 8 + rng(&rs) % (rng(&rs) % 8 ? 512 : 65536);
			a[j] = pcpu_alloc(size, 8);
			k[j] = 0;
			if (!a[j] || pcpu_sum(a[j]) != 0)
				bg_bad[id]++;
		} else if (rng(&rs) % 4 == 0) {
			if (pcpu_sum(a[j]) != k[j])
				bg_bad[id]++;
			pcpu_free(a[j]);
			a[j] = NULL;
		} else {
			pcpu_add(a[j], 1L);
			k[j]++;
		}
		if (++bg_loops[id] % 256 == 0 && nr_real_cpus > 1)
			pin_self(real_cpus[rng(&rs) % (uint64_t)nr_real_cpus]);
	}
	for (int j = 0; j < 16; j++) {
		if (a[j] && pcpu_sum(a[j]) != k[j])
			bg_bad[id]++;
		pcpu_free(a[j]);
	}
	unpin_self();
	return NULL;
}

/* ---- the child ---- */

static long *shared_ctr; /* allocated before the forks */
static long ctr_at_fork; /* its sum when the child was forked */

/* Waits for one byte on @fd; false on timeout or EOF. */
static bool wait_byte(int fd, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	char b;
	while (poll(&p, 1, timeout_ms) < 0)
		if (errno != EINTR)
			return false;
	return read(fd, &b, 1) == 1;
}

/* Runs in the forked child; returns its exit code. */
static int child_main(int from_parent, int to_parent, int nr, bool sim)
{
	long before = atomic_load(&check__failed);
	char byte = 1;

#ifdef PCPU_TEST_VALGRIND_H
	/* what the other threads had in hand at the fork is lost here by
	 * construction: no leak check in the child */
	if (RUNNING_ON_VALGRIND)
		VALGRIND_CLO_CHANGE("--leak-check=no");
#endif

	/* the parent changes its copy after the fork: not seen here */
	CHECK(wait_byte(from_parent, CHILD_TIMEOUT_MS));
	CHECK_EQ(pcpu_sum(shared_ctr), ctr_at_fork);
	pcpu_add(shared_ctr, 1000L);
	CHECK_EQ(pcpu_sum(shared_ctr), ctr_at_fork + 1000);
	CHECK(write(to_parent, &byte, 1) == 1);

	/* the allocator works: allocate, operate, free */
	long *p[8];
	for (int i = 0; i < 8; i++) {
		p[i] = pcpu_alloc(8 + (size_t)i * 100, 8);
		CHECK(p[i] != NULL);
		if (!p[i])
			return 1;
		CHECK_EQ(pcpu_sum(p[i]), 0);
		pcpu_add(p[i], (long)i + nr);
		pcpu_inc(p[i]);
	}
	for (int i = 0; i < 8; i++) {
		CHECK_EQ(pcpu_sum(p[i]), i + nr + 1);
		pcpu_free(p[i]);
	}
	void *big = pcpu_alloc(pcpu_alloc_max(), 0);
	CHECK(big != NULL);
	pcpu_free(big);
	CHECK_EQ(pcpu_validate(), 0);

	if (sim) {
		/* switching to the atomic path fences with membarrier */
		CHECK_EQ(pcpu_sim_set_cpu(0), 0);
		CHECK(pcpu_path() == PCPU_PATH_ATOMIC);
		CHECK_EQ(pcpu_this_cpu(), 0);
		long *c = pcpu_alloc(sizeof(long), 0);
		CHECK(c != NULL);
		if (c) {
			pcpu_add(c, 5L);
			CHECK_EQ(*pcpu_ptr(c, 0), 5);
			CHECK_EQ(pcpu_sum(c), 5);
			pcpu_free(c);
		}
		if (pcpu_nr_cpu_ids() > 1) {
			CHECK_EQ(pcpu_sim_set_cpu(pcpu_nr_cpu_ids() - 1), 0);
			pcpu_add(shared_ctr, 7L);
			CHECK_EQ(pcpu_sum(shared_ctr), ctr_at_fork + 1007);
		}
		CHECK_EQ(pcpu_sim_set_cpu(-1), 0);
		CHECK_EQ(pcpu_validate(), 0);
	}
	return atomic_load(&check__failed) != before;
}

/* ---- the parent ---- */

/* Waits for @pid up to CHILD_TIMEOUT_MS; kills it after.  Returns true
 * if it exited 0. */
static bool reap(pid_t pid, int nr)
{
	long t0 = now_ms();
	int status;
	for (;;) {
		pid_t r = waitpid(pid, &status, WNOHANG);
		if (r == pid)
			break;
		if (r < 0 && errno != EINTR) {
			fprintf(stderr, "fork %d: waitpid: %s\n", nr,
				strerror(errno));
			return false;
		}
		if (now_ms() - t0 > CHILD_TIMEOUT_MS) {
			fprintf(stderr, "fork %d: child %d still running after "
					"%d ms: deadlock? killing it\n", nr,
				(int)pid, CHILD_TIMEOUT_MS);
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			return false;
		}
		struct timespec ts = { 0, 500000 };
		nanosleep(&ts, NULL);
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return true;
	if (WIFSIGNALED(status))
		fprintf(stderr, "fork %d: child killed by signal %d\n", nr,
			WTERMSIG(status));
	else
		fprintf(stderr, "fork %d: child exited %d\n", nr,
			WEXITSTATUS(status));
	return false;
}

int main(void)
{
	const char *s = getenv("PCPU_TEST_SCALE");
	if (s && !strcmp(s, "valgrind"))
		scale = 50;
	real_cpus_init();
	/* the balance worker is a thread too: none under TSan (set before
	 * the first allocation starts it) */
	if (PCPU_TEST_TSAN)
		setenv("PCPU_BALANCE", "0", 1);
	/* elsewhere a busy worker (a pass every millisecond), so that forks
	 * also happen while it holds the library's locks */
	setenv("PCPU_BALANCE_INTERVAL_MS", "1", 0);
	REQUIRE(pcpu_init() == 0);
	enum pcpu_path path = pcpu_path();
	/* register the rseq membarrier in the parent (without leaving the
	 * rseq path), so that a child must not count on its inheritance */
	int fence = _pcpu_os_rseq_fence(-1);
	CHECK(fence == 0 || fence == -ENOSYS);

	shared_ctr = pcpu_alloc(sizeof(long), 0);
	REQUIRE(shared_ctr);
	pcpu_add(shared_ctr, 100L);

	int nr_bg = PCPU_TEST_TSAN ? 0 : NR_BG;
	if (PCPU_TEST_TSAN)
		fprintf(stderr, "test_fork: ThreadSanitizer does not support "
				"fork from a multithreaded process: forking "
				"with no background threads (and "
				"PCPU_BALANCE=0: no balance worker)\n");
	pthread_t bg[NR_BG];
	for (intptr_t i = 0; i < nr_bg; i++)
		REQUIRE(pthread_create(&bg[i], NULL, bg_worker, (void *)i) == 0);
	/* let them get going */
	while (nr_bg && __atomic_load_n(&bg_loops[nr_bg - 1], __ATOMIC_RELAXED) < 100)
		sched_yield();

	long forks = 300 / scale, failed = 0;
	if (PCPU_TEST_TSAN)
		forks = 60;
#if PCPU_DEBUG >= 3
	/* the library validates everything after every operation: slow */
	forks = 20;
#elif PCPU_DEBUG >= 2
	forks = 100;
#endif
	if (forks < 4)
		forks = 4;
	long t0 = now_ms();
	for (int nr = 0; nr < forks; nr++) {
		int down[2], up[2];
		REQUIRE(pipe(down) == 0 && pipe(up) == 0);
		bool sim = nr % 4 == 3;
		ctr_at_fork = pcpu_sum(shared_ctr);
		fflush(NULL);
		pid_t pid = fork();
		REQUIRE(pid >= 0);
		if (pid == 0) {
			close(down[1]);
			close(up[0]);
			_exit(child_main(down[0], up[1], nr, sim));
		}
		close(down[0]);
		close(up[1]);
		/* change the parent's copy, then let the child look */
		pcpu_add(shared_ctr, 1L);
		char byte = 1;
		CHECK(write(down[1], &byte, 1) == 1);
		/* the child has added 1000 to its copy: not seen here */
		if (wait_byte(up[0], CHILD_TIMEOUT_MS))
			CHECK_EQ(pcpu_sum(shared_ctr), ctr_at_fork + 1);
		bool ok = reap(pid, nr);
		CHECK(ok);
		failed += !ok;
		close(down[1]);
		close(up[0]);
		CHECK_EQ(pcpu_sum(shared_ctr), ctr_at_fork + 1);
		if (failed > 5) {
			fprintf(stderr, "too many failed children; stopping\n");
			break;
		}
	}
	long ms = now_ms() - t0;

	__atomic_store_n(&stop_bg, 1, __ATOMIC_RELAXED);
	long loops = 0, bad = 0;
	for (int i = 0; i < nr_bg; i++) {
		pthread_join(bg[i], NULL);
		loops += bg_loops[i];
		bad += bg_bad[i];
	}
	CHECK_EQ(bad, 0);
	CHECK_EQ(failed, 0);
	/* the children's pcpu_sim_set_cpu did not switch the parent */
	CHECK(pcpu_path() == path);
	CHECK_EQ(pcpu_sum(shared_ctr), 100 + forks);
	pcpu_free(shared_ctr);
	CHECK_EQ(pcpu_validate(), 0);
	struct pcpu_stats st;
	CHECK_EQ(pcpu_stats_get(&st), 0);
	CHECK_EQ(st.nr_cur_alloc, 0);
	fprintf(stderr, "test_fork: %ld forks in %ld ms, %d background threads "
			"(%ld operations)\n", forks, ms, nr_bg, loops);
	return check_done();
}
