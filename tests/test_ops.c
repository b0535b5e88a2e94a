/*
 * test_ops.c - this-CPU operations: no update is ever lost.
 *
 * Threads hammer pcpu_add/sub/inc/dec on counters of every supported type
 * while being moved between CPUs (by themselves and by a mover thread with
 * sched_setaffinity) and interrupted by signals whose handlers also add;
 * pcpu_sum must equal the exact total.  CTest runs this program in each
 * mode (rseq cpu, rseq cid, fallback without rseq, simulation); the
 * expected mode comes in PCPU_TEST_PATH / PCPU_TEST_INDEX so that a run
 * cannot pass in the wrong mode.  The last phase switches a running rseq
 * process to the atomic path (pcpu_sim_set_cpu) mid-storm: still exact.
 */
#define _GNU_SOURCE
#undef NDEBUG /* pcpu_ptr's range check is what a debug build has */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "cpus.h"
#include "pcpu/pcpu.h"

static long scale = 1;        /* divides iteration counts */

static void setup_scale(void)
{
	const char *s = getenv("PCPU_TEST_SCALE");
	if (s && !strcmp(s, "valgrind"))
		scale = 50;
	else if (PCPU_TEST_TSAN)
		scale = 2; /* four variants; the storms dominate */
	real_cpus_init();
}

/* ---- the mode this run must be in ---- */

static void check_mode(void)
{
	check_test_path();
	fprintf(stderr, "mode: path %s, index %s, %d cpu ids\n",
		pcpu_path() == PCPU_PATH_RSEQ ? "rseq" : "atomic",
		pcpu_index_mode() == PCPU_INDEX_CID ? "cid" : "cpu",
		pcpu_nr_cpu_ids());
}

/* ---- single-thread semantics of every type ---- */

#define TYPE_CHECK(T, val)                                                     \
	do {                                                                   \
		T *p = pcpu_alloc(sizeof(T), 0);                               \
		REQUIRE(p);                                                    \
		CHECK(pcpu_sum(p) == 0);                                       \
		CHECK(pcpu_read(p) == 0);                                      \
		pcpu_add(p, (T)(val));                                         \
		pcpu_inc(p);                                                   \
		pcpu_dec(p);                                                   \
		pcpu_sub(p, (T)1);                                             \
		pcpu_add(p, (T)1);                                             \
		CHECK(pcpu_sum(p) == (T)(val));                                \
		const T *cp = p;                                               \
		CHECK(pcpu_sum(cp) == (T)(val));                               \
		pcpu_write(p, (T)7);                                           \
		CHECK(pcpu_read(cp) == (T)7);                                  \
		CHECK(*pcpu_ptr(p, pcpu_this_cpu()) == (T)7);                  \
		pcpu_free(p);                                                  \
	} while (0)

static void test_types(void)
{
	move_to(0, real_cpus[0]); /* read-after-write needs one CPU */
	TYPE_CHECK(int, -5);
	TYPE_CHECK(unsigned int, 4000000000u);
	TYPE_CHECK(long, -(1L << 40));
	TYPE_CHECK(unsigned long, 1UL << 63);
	TYPE_CHECK(long long, 123456789012LL);
	TYPE_CHECK(unsigned long long, 99ULL);
	TYPE_CHECK(int32_t, 17);
	TYPE_CHECK(uint32_t, 17);
	TYPE_CHECK(int64_t, -17);
	TYPE_CHECK(uint64_t, 17);
	TYPE_CHECK(size_t, 17);

	/* unsigned wrap-around is exact modular arithmetic */
	uint32_t *w = pcpu_alloc(4, 4);
	REQUIRE(w);
	pcpu_sub(w, 1u);
	CHECK(pcpu_sum(w) == UINT32_MAX);
	pcpu_inc(w);
	CHECK(pcpu_sum(w) == 0);
	pcpu_free(w);

	/* pcpu_sub converts the value to the type of *p, then negates it,
	 * as this_cpu_sub does: -(1u) would be +4294967295 */
	unsigned long *ul = pcpu_alloc(sizeof(*ul), 0);
	REQUIRE(ul);
	pcpu_add(ul, 5UL);
	pcpu_sub(ul, 1u);
	CHECK(pcpu_sum(ul) == 4UL);
	pcpu_free(ul);
	unpin_self();
}

/* ---- the storm ---- */

#define NR_WORKERS 4

struct storm {
	long *c64;
	int *c32;
	unsigned long *cu64;
	long iters;
	int stop_mover; /* atomic */
	pid_t tids[NR_WORKERS];
	volatile int ready;
	volatile int switch_at; /* worker 0 switches to atomic at this iter */
};

static struct storm st;
static long *sig_counter;
static volatile long sig_adds;
static long main_adds; /* every add of the main thread, all storms */

static void on_alarm(int sig)
{
	(void)sig;
	pcpu_add(sig_counter, 3L);
	sig_adds++; /* only the main thread takes the signal: see below */
}

static void *worker(void *arg)
{
	long id = (long)arg;
	unsigned seed = (unsigned)id * 7919u + 1;
	st.tids[id] = gettid();
	__atomic_add_fetch(&st.ready, 1, __ATOMIC_RELEASE);
	for (long i = 0; i < st.iters; i++) {
		pcpu_add(st.c64, id + 1);
		pcpu_inc(st.c32);
		pcpu_sub(st.cu64, 2UL);
		if (i % 1000 == 0 && nr_real_cpus > 1)
			move_to(0, real_cpus[rand_r(&seed) % nr_real_cpus]);
		if (id == 0 && i == st.switch_at)
			CHECK(pcpu_sim_set_cpu(0) == 0);
	}
	return NULL;
}


static void run_storm(long iters, int switch_at)
{
	pthread_t w[NR_WORKERS], mv;
	sigset_t block;

	memset(&st, 0, sizeof(st));
	st.iters = iters;
	st.switch_at = switch_at;
	st.c64 = pcpu_alloc(sizeof(long), 0);
	st.c32 = pcpu_alloc(sizeof(int), 0);
	st.cu64 = pcpu_alloc(sizeof(unsigned long), 0);
	REQUIRE(st.c64 && st.c32 && st.cu64);

	/* workers do not take SIGALRM: the handler's count stays exact */
	sigemptyset(&block);
	sigaddset(&block, SIGALRM);
	pthread_sigmask(SIG_BLOCK, &block, NULL);
	for (long i = 0; i < NR_WORKERS; i++)
		REQUIRE(pthread_create(&w[i], NULL, worker, (void *)i) == 0);
	while (__atomic_load_n(&st.ready, __ATOMIC_ACQUIRE) < NR_WORKERS)
		sched_yield();
	struct cpus_mover mover = { st.tids, NR_WORKERS, &st.stop_mover };
	REQUIRE(pthread_create(&mv, NULL, cpus_mover_main, &mover) == 0);
	pthread_sigmask(SIG_UNBLOCK, &block, NULL);

	/* the main thread adds too, interrupted by its own signal handler */
	struct itimerval it = { { 0, 500 }, { 0, 500 } };
	setitimer(ITIMER_REAL, &it, NULL);
	for (long i = 0; i < iters; i++) {
		pcpu_add(sig_counter, 1L);
		main_adds++;
	}
	struct itimerval off = { { 0, 0 }, { 0, 0 } };
	setitimer(ITIMER_REAL, &off, NULL);

	for (int i = 0; i < NR_WORKERS; i++)
		pthread_join(w[i], NULL);
	__atomic_store_n(&st.stop_mover, 1, __ATOMIC_RELEASE);
	pthread_join(mv, NULL);

	long want64 = 0;
	for (int i = 0; i < NR_WORKERS; i++)
		want64 += (long)(i + 1) * iters;
	CHECK_EQ(pcpu_sum(st.c64), want64);
	CHECK_EQ(pcpu_sum(st.c32), (int)(NR_WORKERS * iters));
	CHECK(pcpu_sum(st.cu64) == (unsigned long)(-2L * NR_WORKERS * iters));
	CHECK_EQ(pcpu_sum(sig_counter), main_adds + 3 * sig_adds);
	fprintf(stderr, "storm: %ld iters x %d threads, %ld signal adds\n",
		iters, NR_WORKERS, (long)sig_adds);
	pcpu_free(st.c64);
	pcpu_free(st.c32);
	pcpu_free(st.cu64);
}

/* ---- threads without an rseq registration ---- */

/*
 * A thread that gave up its rseq registration (as a thread made with a
 * raw clone never had one) shares the process with registered threads
 * on the rseq path.  Its cpu_id reads -1 and its mm_cid 0: it must write
 * its own CPU's copy with atomics after the library turned that index's
 * sections off, neither spin on sections that can never match nor commit
 * unprotected stores to a copy that registered threads commit to.  Sums
 * stay exact, and pcpu_this_cpu() is a valid index.
 */
struct unreg {
	long *c;
	long iters;
	int unregister;
	int unregistered; /* out: the unregistration worked */
};

static int rseq_unregister(void)
{
	char *area = (char *)__builtin_thread_pointer() + __rseq_offset;
	if (__rseq_size == 0)
		return -1;
	/* glibc registers 32 bytes whatever __rseq_size reports */
	if (syscall(SYS_rseq, area, 32, 1 /* RSEQ_FLAG_UNREGISTER */,
		    RSEQ_SIG) == 0)
		return 0;
	return (int)syscall(SYS_rseq, area, __rseq_size, 1, RSEQ_SIG);
}

static void *unreg_worker(void *arg)
{
	struct unreg *u = arg;
	unsigned seed = (unsigned)(uintptr_t)arg;
	if (u->unregister) {
		u->unregistered = rseq_unregister() == 0;
		if (u->unregistered)
			CHECK(*(volatile int *)((char *)__builtin_thread_pointer() +
						__rseq_offset + 4) < 0);
	}
	for (long i = 0; i < u->iters; i++) {
		pcpu_add(u->c, 1L);
		if (i % 2000 == 0 && nr_real_cpus > 1)
			move_to(0, real_cpus[rand_r(&seed) % nr_real_cpus]);
	}
	int me = pcpu_this_cpu();
	CHECK(me >= 0 && me < pcpu_nr_cpu_ids());
	return NULL;
}

static void test_unregistered(void)
{
	enum { N = 4 };
	struct unreg u[N];
	pthread_t t[N];
	long *c = pcpu_alloc(sizeof(long), 0);
	REQUIRE(c);
	for (int i = 0; i < N; i++) {
		u[i] = (struct unreg){ c, 400000 / scale, i % 2, 0 };
		REQUIRE(pthread_create(&t[i], NULL, unreg_worker, &u[i]) == 0);
	}
	int unreg = 0;
	for (int i = 0; i < N; i++) {
		pthread_join(t[i], NULL);
		unreg += u[i].unregistered;
	}
	CHECK_EQ(pcpu_sum(c), N * (400000 / scale));
	if (pcpu_path() == PCPU_PATH_RSEQ)
		CHECK_EQ(unreg, N / 2); /* the kernel let them unregister */
	fprintf(stderr, "unregistered: %d of %d threads without rseq\n",
		unreg, N);
	pcpu_free(c);
}

/* ---- simulation: threads acting as many CPUs ---- */

static long *sim_counter;

static void *sim_worker(void *arg)
{
	long id = (long)arg;
	unsigned seed = (unsigned)id + 99;
	int n = pcpu_nr_cpu_ids();
	for (long i = 0; i < 20000 / scale; i++) {
		if (i % 100 == 0)
			CHECK(pcpu_sim_set_cpu(rand_r(&seed) % n) == 0);
		pcpu_add(sim_counter, 2L);
	}
	CHECK(pcpu_sim_set_cpu(-1) == 0);
	return NULL;
}

static void test_sim(void)
{
	int n = pcpu_nr_cpu_ids();
	CHECK(pcpu_sim_set_cpu(n) == -EINVAL);
	CHECK(pcpu_sim_set_cpu(-2) == -EINVAL);
	sim_counter = pcpu_alloc(8, 8);
	REQUIRE(sim_counter);
	pthread_t t[NR_WORKERS];
	for (long i = 0; i < NR_WORKERS; i++)
		REQUIRE(pthread_create(&t[i], NULL, sim_worker, (void *)i) == 0);
	for (int i = 0; i < NR_WORKERS; i++)
		pthread_join(t[i], NULL);
	CHECK_EQ(pcpu_sum(sim_counter), 2L * NR_WORKERS * (20000 / scale));
	CHECK(pcpu_path() == PCPU_PATH_ATOMIC);

	/* acting as CPU k puts the value in CPU k's copy */
	CHECK(pcpu_sim_set_cpu(n - 1) == 0);
	CHECK_EQ(pcpu_this_cpu(), n - 1);
	pcpu_add(sim_counter, 1000L);
	CHECK(*pcpu_ptr(sim_counter, n - 1) >= 1000);
	CHECK(pcpu_read(sim_counter) == *pcpu_ptr(sim_counter, n - 1));

	/* only used CPUs are visited */
	int visited = 0, cpu, last = -1;
	pcpu_for_each_cpu(cpu) {
		CHECK(cpu > last);
		last = cpu;
		visited++;
	}
	CHECK(visited >= 1 && visited <= n + 1);
	CHECK(pcpu_sim_set_cpu(-1) == 0);
	pcpu_free(sim_counter);
}

/* ---- bad input ---- */

/* Runs "self --child what" with @env added; returns the exit status (or
 * 128 + signal) and the child's stderr in @err. */
static int run_child(const char *what, const char *const env[], char *err,
		     size_t len)
{
	int fd[2];
	const char *self = check_self_exe();
	REQUIRE(pipe(fd) == 0);
	pid_t pid = fork();
	REQUIRE(pid >= 0);
	if (pid == 0) {
		dup2(fd[1], 2);
		close(fd[0]);
		/* the child sees only the modes named in @env */
		unsetenv("PCPU_INDEX");
		unsetenv("PCPU_SIM_POSSIBLE");
		unsetenv("PCPU_SIM_ONLINE");
		for (int i = 0; env[i]; i++)
			putenv((char *)env[i]);
		execl(self, "test_ops", "--child", what, (char *)NULL);
		_exit(127);
	}
	close(fd[1]);
	size_t got = 0;
	ssize_t r;
	while (got < len - 1 && (r = read(fd[0], err + got, len - 1 - got)) > 0)
		got += (size_t)r;
	err[got] = 0;
	close(fd[0]);
	int status;
	waitpid(pid, &status, 0);
	return WIFEXITED(status) ? WEXITSTATUS(status)
				 : 128 + WTERMSIG(status);
}

static int count_lines(const char *s)
{
	int n = 0;
	for (; *s; s++)
		n += *s == '\n';
	return n;
}

static int child_main(const char *what)
{
	if (!strcmp(what, "ptr")) {
		long *p = pcpu_alloc(sizeof(long), 0);
		long *q = pcpu_ptr(p, pcpu_nr_cpu_ids() + 1); /* aborts */
		printf("%p\n", (void *)q);
		return 0;
	}
	/* "report": the exit status tells the CPU ids this process got */
	return pcpu_nr_cpu_ids();
}

static void test_bad_input(void)
{
	char err[4096];
	const char *none[] = { NULL };
	int rc = run_child("ptr", none, err, sizeof(err));
	CHECK_EQ(rc, 128 + SIGABRT);
	CHECK(strstr(err, "pcpu_ptr") != NULL);
	CHECK_EQ(count_lines(err), 1);

	/* malformed simulation: one line, then the real topology */
	cpu_set_t set;
	sched_getaffinity(0, sizeof(set), &set);
	const char *bad_poss[] = { "PCPU_SIM_POSSIBLE=12x", NULL };
	rc = run_child("report", bad_poss, err, sizeof(err));
	CHECK(strstr(err, "PCPU_SIM_POSSIBLE") != NULL);
	CHECK_EQ(count_lines(err), 1);
	CHECK(rc >= 1 && rc < 64); /* the real machine's ids, not 12 */
	const char *bad_onl[] = { "PCPU_SIM_POSSIBLE=64",
				  "PCPU_SIM_ONLINE=0-99", NULL };
	rc = run_child("report", bad_onl, err, sizeof(err));
	CHECK(strstr(err, "PCPU_SIM_ONLINE") != NULL);
	CHECK_EQ(count_lines(err), 1);
	CHECK(rc != 64);
	const char *good[] = { "PCPU_SIM_POSSIBLE=100", NULL };
	rc = run_child("report", good, err, sizeof(err));
	CHECK_EQ(rc, 100);
	CHECK_EQ(count_lines(err), 0);

	/* cid mode where it cannot be had: one notice, then cpu mode */
	const char *cid_sim[] = { "PCPU_SIM_POSSIBLE=64", "PCPU_INDEX=cid",
				  NULL };
	rc = run_child("report", cid_sim, err, sizeof(err));
	CHECK_EQ(rc, 64);
	CHECK(strstr(err, "cid") != NULL);
	CHECK_EQ(count_lines(err), 1);
	const char *bad_idx[] = { "PCPU_INDEX=bogus", NULL };
	rc = run_child("report", bad_idx, err, sizeof(err));
	CHECK(strstr(err, "PCPU_INDEX") != NULL);
	CHECK_EQ(count_lines(err), 1);
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "--child"))
		return child_main(argv[2]);
	setup_scale();
	sig_counter = pcpu_alloc(sizeof(long), 0);
	REQUIRE(sig_counter);
	signal(SIGALRM, on_alarm);
	check_mode();
	CHECK(pcpu_set_index_mode(PCPU_INDEX_CPU) == -EBUSY);
	CHECK(pcpu_sim_configure(4, NULL) == -EBUSY);
	test_types();
	test_bad_input();
	test_unregistered();
	run_storm(2000000 / scale, -1);
	if (pcpu_path() == PCPU_PATH_RSEQ) {
		/* switch the process to the atomic path mid-storm */
		run_storm(1000000 / scale, 500000 / (int)scale);
		CHECK(pcpu_path() == PCPU_PATH_ATOMIC);
	}
	test_sim();
	CHECK(pcpu_validate() == 0);
	return check_done();
}
