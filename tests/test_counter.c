/*
 * test_counter.c - per-CPU counters: exact totals, the error bound under
 * concurrency, limited adds that never overshoot, the adaptive switch, and
 * (in simulation) a bound that does not grow with CPUs.
 *
 * Threads move between real CPUs (by themselves and by a mover thread)
 * while they update.  The reader phase keeps two totals of its own around
 * every add (started before, done after; updaters add positive amounts
 * only), so the exact value at the moment of a read lies between them and
 * |read - exact| <= bound can be checked for every read.  CTest runs this
 * program in each mode (rseq, fallback without rseq, simulation); the
 * expected path comes in PCPU_TEST_PATH.  The last phases act as simulated
 * CPUs (pcpu_sim_set_cpu), which switches the process to the atomic path,
 * the first time in the middle of a storm.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "cpus.h"
#include "internal.h"
#include "pcpu/counter.h"

/* counter.c's index fold hook (to move into internal.h) */
void _pcpu_counter_fold_index(int idx, unsigned int which);
#define FOLD_CPU 1u
#define FOLD_CID 2u

static long scale = 1; /* divides iteration counts */

static void setup_scale(void)
{
	const char *s = getenv("PCPU_TEST_SCALE");
	if (s && !strcmp(s, "valgrind"))
		scale = 5;
	else if (PCPU_TEST_TSAN)
		scale = 5; /* six variants of about 40 s each otherwise */
	real_cpus_init();
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t cur_allocs(void)
{
	struct pcpu_stats st;
	pcpu_stats_get(&st);
	return st.nr_cur_alloc;
}

static bool sim_mode(void)
{
	const char *s = getenv("PCPU_SIM_POSSIBLE");
	return s && *s;
}

static void check_mode(void)
{
	pcpu_init();
	check_test_path();
	fprintf(stderr, "mode: path %s, index %s, %d cpu ids, mm_cid fast "
			"path %s\n",
		pcpu_path() == PCPU_PATH_RSEQ ? "rseq" : "atomic",
		pcpu_index_mode() == PCPU_INDEX_CID ? "cid" : "cpu",
		pcpu_nr_cpu_ids(), pcpu__fast.cid_nr ? "yes" : "no");
}

struct mode {
	const char *name;
	unsigned int flags;
};

static const struct mode modes[] = {
	{ "default eager", PCPU_COUNTER_EAGER },
	{ "default adaptive", 0 },
	{ "percpu eager", PCPU_COUNTER_PERCPU | PCPU_COUNTER_EAGER },
	{ "percpu adaptive", PCPU_COUNTER_PERCPU },
	{ "exact reads", PCPU_COUNTER_EXACT_READS | PCPU_COUNTER_EAGER },
	{ "atomic", PCPU_COUNTER_ATOMIC },
};
#define NR_MODES (int)(sizeof(modes) / sizeof(modes[0]))

/* ------------------------------------------------------------------ */
/* Single-thread semantics                                             */

static int errors_seen;
static void record_error(const char *what, const void *ptr, void *arg)
{
	(void)what, (void)ptr, (void)arg;
	errors_seen++;
}

static void test_semantics(void)
{
	struct pcpu_counter c, many[4];
	move_to(0, real_cpus[0]);

	CHECK_EQ(pcpu_counter_init(&c, 0, 0x100), -EINVAL);
	CHECK_EQ(pcpu_counter_init(&c, 0, PCPU_COUNTER_ATOMIC |
						  PCPU_COUNTER_EAGER),
		 -EINVAL);
	CHECK_EQ(pcpu_counter_init_many(many, 0, 0, 0), -EINVAL);
	CHECK_EQ(pcpu_counter_init_many(many, 0, 1u << 30, 0), -EINVAL);

	for (int m = 0; m < NR_MODES; m++) {
		unsigned int fl = modes[m].flags;
		REQUIRE(pcpu_counter_init(&c, 100, fl) == 0);
		CHECK_EQ(pcpu_counter_read(&c), 100);
		CHECK_EQ(pcpu_counter_sum(&c), 100);
		CHECK_EQ(pcpu_counter_is_percpu(&c),
			 (fl & PCPU_COUNTER_EAGER) != 0);
		for (int i = 0; i < 10; i++)
			pcpu_counter_add(&c, 1);
		pcpu_counter_sub(&c, 3);
		CHECK_EQ(pcpu_counter_sum(&c), 107);
		int64_t b, r = pcpu_counter_read_bounded(&c, &b);
		CHECK(r >= 107 - b && r <= 107 + b);
		CHECK(b == pcpu_counter_error_bound(&c));
		if (fl & (PCPU_COUNTER_EXACT_READS | PCPU_COUNTER_ATOMIC) ||
		    !(fl & PCPU_COUNTER_EAGER)) {
			CHECK_EQ(r, 107); /* exact kinds */
			CHECK_EQ(b, 0);
		}
		/* |v| >= batch goes straight to count */
		int64_t before = pcpu_counter_read(&c);
		pcpu_counter_add(&c, 1000);
		CHECK_EQ(pcpu_counter_read(&c), before + 1000);
		pcpu_counter_add_batch(&c, 40, 1000); /* stays in the slot */
		CHECK_EQ(pcpu_counter_sum(&c), 1147);
		r = pcpu_counter_read_bounded(&c, &b);
		CHECK(r >= 1147 - b && r <= 1147 + b);
		/* compare: decided cheaply far away, exactly near */
		CHECK_EQ(pcpu_counter_compare(&c, 1146), 1);
		CHECK_EQ(pcpu_counter_compare(&c, 1147), 0);
		CHECK_EQ(pcpu_counter_compare(&c, 1148), -1);
		CHECK_EQ(pcpu_counter_compare(&c, INT64_MIN), 1);
		CHECK_EQ(pcpu_counter_compare(&c, INT64_MAX), -1);
		/* set */
		pcpu_counter_set(&c, -5);
		CHECK_EQ(pcpu_counter_sum(&c), -5);
		CHECK_EQ(pcpu_counter_sum_positive(&c), 0);
		pcpu_counter_add(&c, -500);
		CHECK_EQ(pcpu_counter_read_positive(&c), 0);
		CHECK(pcpu_counter_read(&c) < 0);
		pcpu_counter_set(&c, 7);
		CHECK_EQ(pcpu_counter_sum(&c), 7);
		/* limited add, alone: exact */
		CHECK(pcpu_counter_limited_add(&c, 10, 3));
		CHECK(!pcpu_counter_limited_add(&c, 10, 1));
		CHECK(pcpu_counter_limited_add(&c, 10, -4));
		CHECK(pcpu_counter_limited_add(&c, 10, 4));
		CHECK(!pcpu_counter_limited_add(&c, 10, 1000));
		CHECK_EQ(pcpu_counter_sum(&c), 10);
		for (int i = 0; i < 50; i++)
			CHECK(pcpu_counter_limited_add(&c, 1000000, 1));
		CHECK_EQ(pcpu_counter_sum(&c), 60);
		/* wrap-around is modular */
		pcpu_counter_set(&c, INT64_MAX);
		pcpu_counter_add(&c, 1);
		CHECK(pcpu_counter_sum(&c) == INT64_MIN);
		/* go_percpu */
		int ret = pcpu_counter_go_percpu(&c);
		CHECK_EQ(ret, (fl & PCPU_COUNTER_ATOMIC) ? -EINVAL : 0);
		CHECK_EQ(pcpu_counter_is_percpu(&c), ret == 0);
		CHECK(pcpu_counter_sum(&c) == INT64_MIN);
		pcpu_counter_destroy(&c);
	}

	/* a single thread never allocates per-CPU memory */
	uint64_t a0 = cur_allocs();
	REQUIRE(pcpu_counter_init(&c, 0, 0) == 0);
	unsigned seed = 5;
	int64_t want = 0;
	for (long i = 0; i < 1000000 / scale; i++) {
		int64_t v = (int64_t)(rand_r(&seed) % 2001) - 1000;
		pcpu_counter_add(&c, v);
		want += v;
		if (i % 1024 == 0)
			CHECK_EQ(pcpu_counter_read(&c), want);
	}
	CHECK(pcpu_counter_limited_add(&c, want + 1, 1));
	CHECK_EQ(pcpu_counter_read(&c), want + 1);
	CHECK(!pcpu_counter_is_percpu(&c));
	CHECK_EQ(cur_allocs(), a0);
	CHECK_EQ(pcpu_counter_error_bound(&c), 0);
	pcpu_counter_destroy(&c);
	CHECK_EQ(cur_allocs(), a0);

	/* init_many: one allocation for the group, eager or on switch */
	REQUIRE(pcpu_counter_init_many(many, 3, 4, PCPU_COUNTER_EAGER) == 0);
	CHECK_EQ(cur_allocs(), a0 + 1);
	for (int i = 0; i < 4; i++) {
		CHECK(pcpu_counter_is_percpu(&many[i]));
		pcpu_counter_add(&many[i], i + 1);
	}
	for (int i = 0; i < 4; i++)
		CHECK_EQ(pcpu_counter_sum(&many[i]), 3 + i + 1);
	CHECK(many[1].slots == many[0].slots + 1);
	CHECK(many[3].slots == many[0].slots + 3);
	pcpu_counter_destroy_many(many, 4);
	CHECK_EQ(cur_allocs(), a0);

	REQUIRE(pcpu_counter_init_many(many, 0, 4, PCPU_COUNTER_PERCPU) == 0);
	CHECK_EQ(cur_allocs(), a0);
	for (int i = 0; i < 4; i++)
		pcpu_counter_add(&many[i], 10 * (i + 1));
	CHECK_EQ(pcpu_counter_go_percpu(&many[2]), 0);
	CHECK_EQ(cur_allocs(), a0 + 1);
	for (int i = 0; i < 4; i++) {
		CHECK(pcpu_counter_is_percpu(&many[i]));
		pcpu_counter_add(&many[i], 1);
		CHECK_EQ(pcpu_counter_sum(&many[i]), 10 * (i + 1) + 1);
	}
	CHECK_EQ(pcpu_counter_go_percpu(&many[0]), 0);
	CHECK_EQ(cur_allocs(), a0 + 1);

	/* misuse is reported, and the handler's return makes it a no-op */
	pcpu_set_error_handler(record_error, NULL);
	errors_seen = 0;
	pcpu_counter_destroy(&many[1]);
	pcpu_counter_destroy_many(many, 3);
	CHECK_EQ(errors_seen, 2);
	pcpu_set_error_handler(NULL, NULL);
	CHECK_EQ(cur_allocs(), a0 + 1);
	pcpu_counter_destroy_many(many, 4);
	CHECK_EQ(cur_allocs(), a0);
	unpin_self();
}

/*
 * Destroying a counter that was never initialised but is all zero (a
 * zero-initialised or memset struct, as error paths leave it) does
 * nothing, like the kernel's percpu_counter_destroy; misuse of initialised
 * counters is still reported.
 */
static void destroy_zeroed(void)
{
	struct pcpu_counter z = { 0 }, zs[3];
	memset(zs, 0, sizeof(zs));
	pcpu_counter_destroy(&z);
	pcpu_counter_destroy_many(zs, 3);
	pcpu_counter_destroy_many(zs, 1);
	pcpu_counter_destroy(&zs[1]);
}

static void test_destroy_zeroed(void)
{
	uint64_t a0 = cur_allocs();
	/* with the default handler a report aborts: in a child */
	pid_t pid = fork();
	REQUIRE(pid >= 0);
	if (pid == 0) {
		destroy_zeroed();
		_exit(0);
	}
	int status;
	REQUIRE(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	if (WIFSIGNALED(status))
		fprintf(stderr, "  destroy of a zeroed counter: child killed by "
				"signal %d\n",
			WTERMSIG(status));

	pcpu_set_error_handler(record_error, NULL);
	errors_seen = 0;
	destroy_zeroed();
	CHECK_EQ(errors_seen, 0);
	/* initialised counters: a member or a part of a group is still
	 * reported, and a counter destroyed twice is a no-op as before */
	errors_seen = 0;
	struct pcpu_counter c, many[3];
	REQUIRE(pcpu_counter_init_many(many, 0, 3, PCPU_COUNTER_EAGER) == 0);
	pcpu_counter_destroy(&many[1]);
	pcpu_counter_destroy_many(many, 2);
	CHECK_EQ(errors_seen, 2);
	pcpu_counter_destroy_many(many, 3);
	CHECK_EQ(cur_allocs(), a0);
	REQUIRE(pcpu_counter_init(&c, 1, PCPU_COUNTER_EAGER) == 0);
	pcpu_counter_destroy(&c);
	pcpu_counter_destroy(&c);
	CHECK_EQ(errors_seen, 2);
	pcpu_set_error_handler(NULL, NULL);
	CHECK_EQ(cur_allocs(), a0);
}

/*
 * Values near +-2^63.  The value is an int64_t that adds wrap modulo 2^64
 * (sum() is count + slots, wrapped); compare() and limited_add() decide on
 * that value with exact integer arithmetic: no answer may come from a
 * comparison that overflowed or from a read on the other side of the wrap,
 * and a limited add never takes the value past its limit.
 */
static void test_wrap(void)
{
	struct pcpu_counter c;
	move_to(0, real_cpus[0]);
	for (int m = 0; m < NR_MODES; m++) {
		unsigned int fl = modes[m].flags;
		bool slots = !(fl & PCPU_COUNTER_ATOMIC);

		/* count alone near the top */
		REQUIRE(pcpu_counter_init(&c, INT64_MAX - 5, fl) == 0);
		CHECK_EQ(pcpu_counter_compare(&c, -1), 1);
		CHECK_EQ(pcpu_counter_compare(&c, -100), 1);
		CHECK_EQ(pcpu_counter_compare(&c, INT64_MIN), 1);
		CHECK_EQ(pcpu_counter_compare(&c, INT64_MAX), -1);
		CHECK_EQ(pcpu_counter_compare(&c, INT64_MAX - 5), 0);
		CHECK_EQ(pcpu_counter_compare(&c, INT64_MAX - 6), 1);
		CHECK(!pcpu_counter_limited_add(&c, INT64_MAX, 10));
		CHECK(!pcpu_counter_limited_add(&c, INT64_MAX, INT64_MAX));
		CHECK(!pcpu_counter_limited_add(&c, INT64_MIN + 5, 1));
		CHECK(pcpu_counter_limited_add(&c, INT64_MAX, 5));
		CHECK(pcpu_counter_sum(&c) == INT64_MAX);
		CHECK(!pcpu_counter_limited_add(&c, INT64_MAX, 1));
		CHECK(pcpu_counter_sum(&c) == INT64_MAX);
		pcpu_counter_destroy(&c);

		/* count alone near the bottom */
		REQUIRE(pcpu_counter_init(&c, INT64_MIN + 5, fl) == 0);
		CHECK_EQ(pcpu_counter_compare(&c, 1), -1);
		CHECK_EQ(pcpu_counter_compare(&c, 100), -1);
		CHECK_EQ(pcpu_counter_compare(&c, INT64_MAX), -1);
		CHECK_EQ(pcpu_counter_compare(&c, INT64_MIN), 1);
		CHECK_EQ(pcpu_counter_compare(&c, INT64_MIN + 5), 0);
		CHECK(!pcpu_counter_limited_add(&c, INT64_MIN + 10, 6));
		CHECK(!pcpu_counter_limited_add(&c, INT64_MIN + 10, INT64_MAX));
		CHECK(!pcpu_counter_limited_add(&c, INT64_MIN, 1));
		CHECK(pcpu_counter_limited_add(&c, INT64_MIN + 10, 5));
		CHECK(pcpu_counter_sum(&c) == INT64_MIN + 10);
		CHECK(pcpu_counter_limited_add(&c, INT64_MAX, INT64_MAX));
		CHECK(pcpu_counter_sum(&c) == 9);
		pcpu_counter_destroy(&c);

		/* residue in a slot carries the value over the top: it is
		 * INT64_MIN + 4, although count reads INT64_MAX - 5 */
		REQUIRE(pcpu_counter_init(&c, INT64_MAX - 5, fl) == 0);
		if (slots)
			REQUIRE(pcpu_counter_go_percpu(&c) == 0);
		pcpu_counter_add(&c, 10);
		CHECK(pcpu_counter_sum(&c) == INT64_MIN + 4);
		CHECK_EQ(pcpu_counter_compare(&c, -1), -1);
		CHECK_EQ(pcpu_counter_compare(&c, INT64_MAX - 5), -1);
		CHECK_EQ(pcpu_counter_compare(&c, INT64_MIN + 4), 0);
		CHECK_EQ(pcpu_counter_compare(&c, INT64_MIN), 1);
		CHECK(!pcpu_counter_limited_add(&c, INT64_MIN + 5, 2));
		CHECK(pcpu_counter_limited_add(&c, 0, 1));
		CHECK(pcpu_counter_sum(&c) == INT64_MIN + 5);
		CHECK(pcpu_counter_limited_add(&c, INT64_MIN + 6, 1));
		CHECK(pcpu_counter_sum(&c) == INT64_MIN + 6);
		pcpu_counter_destroy(&c);

		/* ... and under the bottom: the value is INT64_MAX - 4, above
		 * any limit below it */
		REQUIRE(pcpu_counter_init(&c, INT64_MIN + 5, fl) == 0);
		if (slots)
			REQUIRE(pcpu_counter_go_percpu(&c) == 0);
		pcpu_counter_add(&c, -10);
		CHECK(pcpu_counter_sum(&c) == INT64_MAX - 4);
		CHECK_EQ(pcpu_counter_compare(&c, 0), 1);
		CHECK_EQ(pcpu_counter_compare(&c, INT64_MIN + 5), 1);
		CHECK_EQ(pcpu_counter_compare(&c, INT64_MAX - 4), 0);
		CHECK_EQ(pcpu_counter_compare(&c, INT64_MAX), -1);
		CHECK(!pcpu_counter_limited_add(&c, 0, 1));
		CHECK(!pcpu_counter_limited_add(&c, INT64_MAX - 1, 4));
		CHECK(pcpu_counter_sum(&c) == INT64_MAX - 4);
		CHECK(pcpu_counter_limited_add(&c, INT64_MAX, 4));
		CHECK(pcpu_counter_sum(&c) == INT64_MAX);
		CHECK(!pcpu_counter_limited_add(&c, INT64_MAX, 1));
		pcpu_counter_destroy(&c);
	}
	unpin_self();
}

/*
 * The rest of the kernel's percpu_counter API: inc/dec, set_batch (the
 * batch of add), sync (fold the calling thread's slot), add_local (a
 * batch so large that adds nearly never fold, with an error bound that
 * says so) and compare_batch.
 */
static void test_kernel_api(void)
{
	struct pcpu_counter c;
	move_to(0, real_cpus[0]);
	for (int m = 0; m < NR_MODES; m++) {
		unsigned int fl = modes[m].flags;
		bool slots = !(fl & PCPU_COUNTER_ATOMIC);
		/* read() is count, and lags the slots */
		bool lags = slots && !(fl & PCPU_COUNTER_EXACT_READS);
		REQUIRE(pcpu_counter_init(&c, 0, fl) == 0);
		if (slots)
			REQUIRE(pcpu_counter_go_percpu(&c) == 0);

		for (int i = 0; i < 10; i++)
			pcpu_counter_inc(&c);
		for (int i = 0; i < 3; i++)
			pcpu_counter_dec(&c);
		CHECK_EQ(pcpu_counter_sum(&c), 7);
		CHECK_EQ(pcpu_counter_read(&c), lags ? 0 : 7);

		/* sync moves the thread's residue into count */
		pcpu_counter_sync(&c);
		CHECK_EQ(pcpu_counter_read(&c), 7);
		CHECK_EQ(pcpu_counter_sum(&c), 7);
		pcpu_counter_sync(&c);
		CHECK_EQ(pcpu_counter_read(&c), 7);

		/* set_batch */
		CHECK_EQ(pcpu_counter_set_batch(&c, 0), -EINVAL);
		CHECK_EQ(pcpu_counter_set_batch(&c, -5), -EINVAL);
		CHECK_EQ(pcpu_counter_set_batch(&c, (int64_t)INT32_MAX + 1),
			 -EINVAL);
		CHECK_EQ(pcpu_counter_set_batch(&c, INT64_MIN), -EINVAL);
		CHECK_EQ(pcpu_counter_set_batch(&c, 1000), 0);
		pcpu_counter_add(&c, 500); /* stays in the slot */
		CHECK_EQ(pcpu_counter_read(&c), lags ? 7 : 507);
		CHECK_EQ(pcpu_counter_sum(&c), 507);
		int64_t b, r = pcpu_counter_read_bounded(&c, &b);
		CHECK(r >= 507 - b && r <= 507 + b);
		if (lags)
			CHECK(b >= 999);
		CHECK_EQ(pcpu_counter_set_batch(&c, 4), 0);
		pcpu_counter_add(&c, 4); /* |v| >= batch: straight to count */
		CHECK_EQ(pcpu_counter_read(&c), lags ? 11 : 511);
		pcpu_counter_add(&c, 3); /* 503 is out of (-4, 4): a fold */
		CHECK_EQ(pcpu_counter_read(&c), 514);
		CHECK_EQ(pcpu_counter_sum(&c), 514);
		/* residue of the larger batch may remain elsewhere: B stays */
		if (lags)
			CHECK(pcpu_counter_error_bound(&c) >= 999);
		pcpu_counter_add(&c, 2);
		CHECK_EQ(pcpu_counter_read(&c), lags ? 514 : 516);
		pcpu_counter_add(&c, 2); /* 4 is out of (-4, 4) */
		CHECK_EQ(pcpu_counter_read(&c), 518);
		CHECK_EQ(pcpu_counter_set_batch(&c, PCPU_COUNTER_BATCH), 0);

		/* compare_batch: the right answer whatever the batch */
		pcpu_counter_add(&c, 20); /* residue 20 */
		CHECK_EQ(pcpu_counter_sum(&c), 538);
		int32_t batches[] = { -1, 1, 32, 1000, INT32_MAX };
		for (int i = 0; i < 5; i++) {
			int32_t bt = batches[i];
			CHECK_EQ(pcpu_counter_compare_batch(&c, 538, bt), 0);
			CHECK_EQ(pcpu_counter_compare_batch(&c, 537, bt), 1);
			CHECK_EQ(pcpu_counter_compare_batch(&c, 539, bt), -1);
			CHECK_EQ(pcpu_counter_compare_batch(&c, 520, bt), 1);
			CHECK_EQ(pcpu_counter_compare_batch(&c, -1000000, bt), 1);
			CHECK_EQ(pcpu_counter_compare_batch(&c, INT64_MAX, bt),
				 -1);
			CHECK_EQ(pcpu_counter_compare_batch(&c, INT64_MIN, bt),
				 1);
		}

		/* add_local: nearly never folds; the bound covers it */
		pcpu_counter_sync(&c);
		CHECK_EQ(pcpu_counter_read(&c), 538);
		pcpu_counter_add_local(&c, 100000);
		pcpu_counter_add_local(&c, 100000);
		CHECK_EQ(pcpu_counter_sum(&c), 200538);
		r = pcpu_counter_read_bounded(&c, &b);
		CHECK_EQ(r, lags ? 538 : 200538);
		CHECK(r >= 200538 - b && r <= 200538 + b);
		if (lags)
			CHECK(b >= PCPU_COUNTER_LOCAL_BATCH - 1);
		CHECK_EQ(pcpu_counter_compare(&c, 200538), 0);
		CHECK_EQ(pcpu_counter_compare(&c, 539), 1);
		pcpu_counter_add_local(&c, -PCPU_COUNTER_LOCAL_BATCH); /* count */
		CHECK_EQ(pcpu_counter_sum(&c), 200538 - PCPU_COUNTER_LOCAL_BATCH);
		pcpu_counter_add_local(&c, PCPU_COUNTER_LOCAL_BATCH);
		pcpu_counter_sync(&c);
		CHECK_EQ(pcpu_counter_read(&c), 200538);
		/* a plain add folds what add_local left */
		pcpu_counter_add_local(&c, 5000);
		pcpu_counter_add(&c, 1);
		CHECK_EQ(pcpu_counter_read(&c), 205539);
		CHECK_EQ(pcpu_counter_sum(&c), 205539);
		pcpu_counter_destroy(&c);
	}

	/* an adaptive counter still one word: sync is nothing, and the
	 * value exact */
	REQUIRE(pcpu_counter_init(&c, 3, 0) == 0);
	pcpu_counter_add_local(&c, 10);
	pcpu_counter_sync(&c);
	CHECK(!pcpu_counter_is_percpu(&c));
	CHECK_EQ(pcpu_counter_read(&c), 13);
	pcpu_counter_destroy(&c);

	/* a thread that never wrote a default counter has nothing to sync,
	 * and syncing does not count its id among those with residue */
	REQUIRE(pcpu_counter_init(&c, 0, PCPU_COUNTER_EAGER) == 0);
	int64_t b0 = pcpu_counter_error_bound(&c);
	pcpu_counter_sync(&c);
	CHECK_EQ(pcpu_counter_error_bound(&c), b0);
	pcpu_counter_destroy(&c);
	unpin_self();
}

/* An adaptive counter whose switch cannot allocate stays atomic, exact,
 * and switches once memory is back. */
static void test_switch_oom(void)
{
	/* With the size classes on, the counter's per-CPU part comes from a
	   pageset that may have room although every chunk is full: the
	   test_counter_nocache variant runs this. */
	if (_pcpu_cache_mode() != PCPU_CACHE_NONE) {
		fprintf(stderr, "switch oom: skipped (size classes on)\n");
		return;
	}
	void *held[512];
	int nh = 0;
	size_t umax = pcpu_alloc_max();
	/* fill every chunk until the next allocation needs a new one */
	for (;;) {
		long c0 = _pcpu_os_calls(PCPU_OS_MMAP);
		void *p = pcpu_alloc(umax, 0);
		REQUIRE(p);
		held[nh++] = p;
		if (_pcpu_os_calls(PCPU_OS_MMAP) > c0)
			break;
		REQUIRE(nh < 511);
	}
	struct pcpu_counter c;
	uint64_t a0 = cur_allocs();
	REQUIRE(pcpu_counter_init(&c, 1, 0) == 0);
	_pcpu_os_fault_set(PCPU_OS_MMAP, 1);
	CHECK_EQ(pcpu_counter_go_percpu(&c), -ENOMEM);
	_pcpu_os_fault_set(PCPU_OS_MMAP, 0);
	CHECK(!pcpu_counter_is_percpu(&c));
	CHECK_EQ(cur_allocs(), a0);
	pcpu_counter_add(&c, 5);
	CHECK_EQ(pcpu_counter_read(&c), 6);
	struct pcpu_counter e;
	_pcpu_os_fault_set(PCPU_OS_MMAP, 1);
	CHECK_EQ(pcpu_counter_init(&e, 0, PCPU_COUNTER_EAGER), -ENOMEM);
	_pcpu_os_fault_set(PCPU_OS_MMAP, 0);
	CHECK_EQ(pcpu_counter_go_percpu(&c), 0);
	CHECK(pcpu_counter_is_percpu(&c));
	CHECK_EQ(pcpu_counter_sum(&c), 6);
	pcpu_counter_destroy(&c);
	while (nh > 0)
		pcpu_free(held[--nh]);
	CHECK_EQ(pcpu_validate(), 0);
}

/* ------------------------------------------------------------------ */
/* Storms                                                              */

#define NR_WORKERS 4

struct storm {
	struct pcpu_counter *c;
	long iters;
	bool positive;        /* positive adds, started/done maintained */
	int switch_at;        /* worker 0 acts as a simulated CPU here */
	int hop_every;        /* > 0: hop between simulated CPUs */
	bool fold;            /* worker 0 runs the index fold hook */
	atomic_llong started, done;
	int64_t total[NR_WORKERS];
	_Atomic pid_t tids[NR_WORKERS];
	atomic_int ready, stop_mover, workers_left;
	long violations, reads;
	int64_t worst_excess;  /* max of (lo - bound) - read seen */
	int64_t max_bound;
};

static struct storm st;

static void *storm_worker(void *arg)
{
	long id = (long)arg;
	unsigned seed = (unsigned)id * 7919u + 17;
	int64_t total = 0;
	int n = pcpu_nr_cpu_ids();
	st.tids[id] = gettid();
	atomic_fetch_add(&st.ready, 1);
	while (atomic_load(&st.ready) < NR_WORKERS)
		sched_yield();
	for (long i = 0; i < st.iters; i++) {
		int64_t v;
		unsigned r = (unsigned)rand_r(&seed);
		if (st.positive)
			v = 1 + r % 50;
		else
			v = (int64_t)(r % 201) - 100;
		if (r % 97 == 0)
			v *= 1000; /* straight to count */
		if (st.positive)
			atomic_fetch_add(&st.started, v);
		if (r % 13 == 0)
			pcpu_counter_add_batch(st.c, v, 1 + (int32_t)(r % 64));
		else
			pcpu_counter_add(st.c, v);
		if (st.positive)
			atomic_fetch_add(&st.done, v);
		total += v;
		if (st.hop_every && i % st.hop_every == 0)
			CHECK(pcpu_sim_set_cpu(rand_r(&seed) % n) == 0);
		else if (!st.hop_every && i % 1000 == 0 && nr_real_cpus > 1)
			move_to(0, real_cpus[rand_r(&seed) % nr_real_cpus]);
		if (id == 0 && i == st.switch_at)
			CHECK(pcpu_sim_set_cpu(0) == 0);
		if (id == 0 && st.fold && i % 64 == 0)
			_pcpu_counter_fold_index(rand_r(&seed) % (n + 1),
						 FOLD_CPU | FOLD_CID);
	}
	if (st.hop_every)
		CHECK(pcpu_sim_set_cpu(-1) == 0);
	st.total[id] = total;
	atomic_fetch_sub(&st.workers_left, 1);
	return NULL;
}

static void *storm_mover(void *arg)
{
	(void)arg;
	unsigned seed = 42;
	while (!atomic_load(&st.stop_mover)) {
		if (nr_real_cpus > 1 && !st.hop_every)
			for (int i = 0; i < NR_WORKERS; i++)
				if (st.tids[i])
					move_to(st.tids[i],
						real_cpus[rand_r(&seed) %
							  nr_real_cpus]);
		usleep(200);
	}
	return NULL;
}

/* The reader: every read_bounded() must bracket the exact value. */
static void *storm_reader(void *arg)
{
	(void)arg;
	while (atomic_load(&st.workers_left) > 0) {
		int64_t lo = atomic_load(&st.done);
		int64_t b, v = pcpu_counter_read_bounded(st.c, &b);
		int64_t hi = atomic_load(&st.started);
		st.reads++;
		if (b > st.max_bound)
			st.max_bound = b;
		if (v < lo - b || v > hi + b) {
			st.violations++;
			if (lo - b - v > st.worst_excess)
				st.worst_excess = lo - b - v;
		}
		/* compare() agrees with the bracket: decided from the read
		 * when it is decisive, else by a sum, which includes every
		 * add counted in done before it */
		if (st.reads % 64 == 0) {
			lo = atomic_load(&st.done);
			int cmp = pcpu_counter_compare(st.c, lo);
			CHECK(cmp >= 0);
			if (cmp < 0)
				fprintf(stderr, "  compare(%lld) = %d, read %lld "
						"bound %lld\n",
					(long long)lo, cmp, (long long)v,
					(long long)b);
		}
	}
	return NULL;
}

static void run_storm(unsigned int flags, long iters, bool positive,
		      int switch_at, int hop_every, bool fold,
		      const char *what)
{
	struct pcpu_counter c;
	pthread_t w[NR_WORKERS], mv, rd;
	uint64_t a0 = cur_allocs();

	memset(&st, 0, sizeof(st));
	REQUIRE(pcpu_counter_init(&c, 0, flags) == 0);
	st.c = &c;
	st.iters = iters;
	st.positive = positive;
	st.switch_at = switch_at;
	st.hop_every = hop_every;
	st.fold = fold;
	atomic_store(&st.workers_left, NR_WORKERS);
	for (long i = 0; i < NR_WORKERS; i++)
		REQUIRE(pthread_create(&w[i], NULL, storm_worker, (void *)i) ==
			0);
	REQUIRE(pthread_create(&mv, NULL, storm_mover, NULL) == 0);
	if (positive)
		REQUIRE(pthread_create(&rd, NULL, storm_reader, NULL) == 0);
	for (int i = 0; i < NR_WORKERS; i++)
		pthread_join(w[i], NULL);
	if (positive)
		pthread_join(rd, NULL);
	atomic_store(&st.stop_mover, 1);
	pthread_join(mv, NULL);

	int64_t want = 0;
	for (int i = 0; i < NR_WORKERS; i++)
		want += st.total[i];
	CHECK_EQ(pcpu_counter_sum(&c), want);
	int64_t b, r = pcpu_counter_read_bounded(&c, &b);
	CHECK(r >= want - b && r <= want + b);
	CHECK(b == pcpu_counter_error_bound(&c));
	if (flags & (PCPU_COUNTER_ATOMIC | PCPU_COUNTER_EXACT_READS))
		CHECK_EQ(r, want);
	if (!pcpu_counter_is_percpu(&c))
		CHECK_EQ(r, want);
	CHECK_EQ(st.violations, 0);
	if (st.violations)
		fprintf(stderr, "  %ld of %ld reads out of bound, worst by %lld\n",
			st.violations, st.reads, (long long)st.worst_excess);
	fprintf(stderr,
		"storm %-16s %-22s %7ld iters x %d: %s, %ld reads, max bound %lld, "
		"quiescent bound %lld\n",
		what, "", iters, NR_WORKERS,
		pcpu_counter_is_percpu(&c) ? "per-CPU" : "atomic word",
		st.reads, (long long)st.max_bound, (long long)b);
	pcpu_counter_destroy(&c);
	CHECK_EQ(cur_allocs(), a0);
}

/* ------------------------------------------------------------------ */
/* sum() is exact with respect to completed adds                       */

/*
 * Adders add amounts near the batch, so that about every other add folds
 * (takes its slot's residue and adds it to count), and after each add
 * publish it in done (release).  The reader takes done (acquire), then
 * sum(): every add counted in done completed before the sum started, so
 * the sum must include it: sum >= done for positive adds (<= for negative
 * ones).  started, read after the sum, bounds it on the other side (a sum
 * counts no add twice).  The adders and the reader move between CPUs.
 */
#define EX_ADDERS 3

static struct {
	struct pcpu_counter *c;
	int64_t sign;
	long iters;
	bool api;             /* syncs, add_local, set_batch race the adds */
	atomic_llong started, done;
	atomic_int adders_left, stop_mover, reader_ready;
	_Atomic pid_t tids[EX_ADDERS + 1];
	long sums, short_sums, long_sums, bad_compares;
	int64_t worst_short, worst_long;
} ex;

static void *ex_adder(void *arg)
{
	long id = (long)arg;
	unsigned seed = (unsigned)id * 977u + 3;
	ex.tids[id] = gettid();
	while (!atomic_load(&ex.reader_ready))
		sched_yield();
	for (long i = 0; i < ex.iters; i++) {
		unsigned r = (unsigned)rand_r(&seed);
		/* valgrind runs one thread at a time: let the reader in */
		if (scale > 1 && i % 64 == 0)
			sched_yield();
		int64_t v = ex.sign * (PCPU_COUNTER_BATCH / 2 +
				       (int64_t)(r % (PCPU_COUNTER_BATCH / 2)));
		atomic_fetch_add(&ex.started, v);
		if (ex.api && id == 0 && r % 8 == 0)
			pcpu_counter_add_local(ex.c, v);
		else
			pcpu_counter_add(ex.c, v);
		atomic_fetch_add_explicit(&ex.done, v, memory_order_release);
		if (ex.api && r % 16 == 1)
			pcpu_counter_sync(ex.c);
		if (i % 256 == 0 && nr_real_cpus > 1)
			move_to(0, real_cpus[(r >> 8) % nr_real_cpus]);
	}
	atomic_fetch_sub(&ex.adders_left, 1);
	return NULL;
}

static void ex_note(int64_t s, int64_t lo, int64_t hi)
{
	if (s < lo) {
		ex.short_sums++;
		if (lo - s > ex.worst_short)
			ex.worst_short = lo - s;
	}
	if (s > hi) {
		ex.long_sums++;
		if (s - hi > ex.worst_long)
			ex.worst_long = s - hi;
	}
}

static void *ex_reader(void *arg)
{
	(void)arg;
	ex.tids[EX_ADDERS] = gettid();
	atomic_store(&ex.reader_ready, 1);
	while (atomic_load(&ex.adders_left) > 0) {
		int64_t t = atomic_load_explicit(&ex.done, memory_order_acquire);
		int64_t s = pcpu_counter_sum(ex.c);
		int64_t h = atomic_load(&ex.started);
		ex.sums++;
		if (scale > 1 && ex.sums % 16 == 0)
			sched_yield(); /* valgrind: the adders' turn */
		if (ex.sign > 0)
			ex_note(s, t, h);
		else
			ex_note(s, h, t);
		if (ex.api) {
			/* read_bounded brackets the value too */
			int64_t b;
			t = atomic_load_explicit(&ex.done, memory_order_acquire);
			s = pcpu_counter_read_bounded(ex.c, &b);
			h = atomic_load(&ex.started);
			if (ex.sign > 0)
				ex_note(s, t - b, h + b);
			else
				ex_note(s, h - b, t + b);
		}
		if (ex.sums % 4)
			continue;
		/* compare's exact part, sum_positive, exact reads */
		t = atomic_load_explicit(&ex.done, memory_order_acquire);
		if (pcpu_counter_compare(ex.c, t) * ex.sign < 0)
			ex.bad_compares++;
		if (pcpu_counter_compare(ex.c, t - ex.sign) != ex.sign)
			ex.bad_compares++;
		if (ex.sign > 0 && pcpu_counter_sum_positive(ex.c) < t)
			ex.bad_compares++;
		if ((ex.c->flags & PCPU_COUNTER_EXACT_READS) &&
		    (pcpu_counter_read(ex.c) - t) * ex.sign < 0)
			ex.bad_compares++;
	}
	return NULL;
}

static void *ex_mover(void *arg)
{
	(void)arg;
	unsigned seed = 99;
	for (int n = 0; !atomic_load(&ex.stop_mover); n++) {
		if (ex.api)
			CHECK_EQ(pcpu_counter_set_batch(ex.c, n % 2 ? 8 : 48),
				 0);
		if (nr_real_cpus > 1)
			for (int i = 0; i <= EX_ADDERS; i++)
				if (ex.tids[i])
					move_to(ex.tids[i],
						real_cpus[rand_r(&seed) %
							  nr_real_cpus]);
		usleep(300);
	}
	return NULL;
}

static void run_sum_exact(unsigned int flags, int64_t sign, long iters,
			  bool api, const char *what)
{
	struct pcpu_counter c;
	pthread_t w[EX_ADDERS], rd, mv;
	memset(&ex, 0, sizeof(ex));
	REQUIRE(pcpu_counter_init(&c, 0, flags) == 0);
	ex.c = &c;
	ex.sign = sign;
	ex.iters = iters;
	ex.api = api;
	atomic_store(&ex.adders_left, EX_ADDERS);
	double t0 = now();
	for (long i = 0; i < EX_ADDERS; i++)
		REQUIRE(pthread_create(&w[i], NULL, ex_adder, (void *)i) == 0);
	REQUIRE(pthread_create(&rd, NULL, ex_reader, NULL) == 0);
	REQUIRE(pthread_create(&mv, NULL, ex_mover, NULL) == 0);
	for (int i = 0; i < EX_ADDERS; i++)
		pthread_join(w[i], NULL);
	pthread_join(rd, NULL);
	atomic_store(&ex.stop_mover, 1);
	pthread_join(mv, NULL);
	CHECK_EQ(pcpu_counter_sum(&c), atomic_load(&ex.done));
	CHECK_EQ(ex.short_sums, 0);
	CHECK_EQ(ex.long_sums, 0);
	CHECK_EQ(ex.bad_compares, 0);
	fprintf(stderr,
		"sum exact %-14s %s: %ld sums in %.2f s, %ld short (worst by "
		"%lld), %ld long (worst by %lld), %ld bad compares\n",
		what, sign > 0 ? "+" : "-", ex.sums, now() - t0, ex.short_sums,
		(long long)ex.worst_short, ex.long_sums,
		(long long)ex.worst_long, ex.bad_compares);
	pcpu_counter_destroy(&c);
}

static void test_sum_exact(void)
{
	static const struct mode ex_modes[] = {
		{ "default", PCPU_COUNTER_EAGER },
		{ "percpu", PCPU_COUNTER_PERCPU | PCPU_COUNTER_EAGER },
		{ "exact reads", PCPU_COUNTER_EXACT_READS | PCPU_COUNTER_EAGER },
	};
	long iters = 100000 / scale / (PCPU_TEST_TSAN ? 2 : 1);
	for (int m = 0; m < 3; m++) {
		run_sum_exact(ex_modes[m].flags, 1, iters, false,
			      ex_modes[m].name);
		run_sum_exact(ex_modes[m].flags, -1, iters, false,
			      ex_modes[m].name);
	}
	/* with syncs, add_local and batch changes racing */
	run_sum_exact(PCPU_COUNTER_EAGER, 1, iters, true, "default+api");
	run_sum_exact(PCPU_COUNTER_PERCPU | PCPU_COUNTER_EAGER, -1, iters,
		      true, "percpu+api");
}

/* ------------------------------------------------------------------ */
/* Adaptive switch under contention                                    */

static struct pcpu_counter ad;
static atomic_int ad_stop, ad_turn;
static int64_t ad_total[NR_WORKERS];

static void *ad_worker(void *arg)
{
	long id = (long)arg;
	int64_t t = 0;
	if (nr_real_cpus > 1)
		move_to(0, real_cpus[id % nr_real_cpus]);
	while (!atomic_load(&ad_stop)) {
		for (int i = 0; i < 1000; i++) {
			pcpu_counter_add(&ad, id + 1);
			t += id + 1;
			/* valgrind runs one thread at a time: let the other
			 * one in now and then, as a second CPU would */
			if (scale > 1 && i % 8 == 0)
				sched_yield();
		}
	}
	ad_total[id] = t;
	return NULL;
}

/* Two threads taking turns: every update comes from the other thread. */
static void *ad_pingpong(void *arg)
{
	long id = (long)arg;
	for (int i = 0; i < 50; i++) {
		while (atomic_load(&ad_turn) != id)
			sched_yield();
		pcpu_counter_add(&ad, 1);
		atomic_store(&ad_turn, !id);
	}
	return NULL;
}

static void *ad_once(void *arg)
{
	(void)arg;
	pcpu_counter_add(&ad, 1);
	return NULL;
}

static void test_adaptive_switch(void)
{
	uint64_t a0 = cur_allocs();
	pthread_t w[2];

	/* two threads hammering switch it (failed CAS, bouncing line) */
	REQUIRE(pcpu_counter_init(&ad, 1000, 0) == 0);
	atomic_store(&ad_stop, 0);
	for (long i = 0; i < 2; i++)
		REQUIRE(pthread_create(&w[i], NULL, ad_worker, (void *)i) == 0);
	double t0 = now();
	while (!pcpu_counter_is_percpu(&ad) && now() - t0 < 20)
		usleep(1000);
	double took = now() - t0;
	usleep(20000); /* keep going on the slots for a while */
	atomic_store(&ad_stop, 1);
	for (int i = 0; i < 2; i++)
		pthread_join(w[i], NULL);
	CHECK(pcpu_counter_is_percpu(&ad));
	CHECK(ad.switches >= 1);
	CHECK_EQ(cur_allocs(), a0 + 1);
	CHECK_EQ(pcpu_counter_sum(&ad), 1000 + ad_total[0] + ad_total[1]);
	fprintf(stderr, "adaptive: switched after %.3f s, %lld adds\n", took,
		(long long)(ad_total[0] + ad_total[1]));
	pcpu_counter_destroy(&ad);
	CHECK_EQ(cur_allocs(), a0);

	/* alternating updaters switch it too, deterministically */
	REQUIRE(pcpu_counter_init(&ad, 0, 0) == 0);
	atomic_store(&ad_turn, 0);
	for (long i = 0; i < 2; i++)
		REQUIRE(pthread_create(&w[i], NULL, ad_pingpong, (void *)i) ==
			0);
	for (int i = 0; i < 2; i++)
		pthread_join(w[i], NULL);
	CHECK(pcpu_counter_is_percpu(&ad));
	CHECK_EQ(pcpu_counter_sum(&ad), 100);
	pcpu_counter_destroy(&ad);

	/* another thread now and then is no contention */
	REQUIRE(pcpu_counter_init(&ad, 0, 0) == 0);
	for (int r = 0; r < 20; r++) {
		for (int i = 0; i < PCPU_COUNTER_SWITCH_WINDOW; i++)
			pcpu_counter_add(&ad, 1);
		REQUIRE(pthread_create(&w[0], NULL, ad_once, NULL) == 0);
		pthread_join(w[0], NULL);
	}
	CHECK_EQ(pcpu_counter_read(&ad), 20 * (PCPU_COUNTER_SWITCH_WINDOW + 1));
	CHECK(!pcpu_counter_is_percpu(&ad));
	CHECK_EQ(cur_allocs(), a0);
	pcpu_counter_destroy(&ad);
}

/* ------------------------------------------------------------------ */
/* Limited adds racing at the limit                                    */

#define LIMIT 5000
static struct pcpu_counter lc;
static atomic_llong lc_lower; /* <= the value at every moment */
static atomic_long lc_overshoot, lc_ok, lc_refused;
static int64_t lc_held[NR_WORKERS];
static long lc_iters;

static void *lim_worker(void *arg)
{
	long id = (long)arg;
	unsigned seed = (unsigned)id * 31 + 7;
	int64_t fifo[64];
	int head = 0, n = 0;
	int64_t held = 0;
	for (long i = 0; i < lc_iters; i++) {
		int64_t v = 1 + rand_r(&seed) % 40; /* some >= batch */
		if (pcpu_counter_limited_add(&lc, LIMIT, v)) {
			int64_t low = atomic_fetch_add(&lc_lower, v) + v;
			if (low > LIMIT)
				atomic_fetch_add(&lc_overshoot, 1);
			fifo[(head + n++) % 64] = v;
			held += v;
			atomic_fetch_add(&lc_ok, 1);
		} else {
			atomic_fetch_add(&lc_refused, 1);
		}
		if (n == 64 || (n > 0 && rand_r(&seed) % 3 == 0)) {
			int64_t u = fifo[head];
			head = (head + 1) % 64;
			n--;
			held -= u;
			atomic_fetch_sub(&lc_lower, u);
			pcpu_counter_sub(&lc, u);
		}
		if (i % 1000 == 0 && nr_real_cpus > 1)
			move_to(0, real_cpus[rand_r(&seed) % nr_real_cpus]);
	}
	lc_held[id] = held;
	return NULL;
}

static void test_limited(unsigned int flags, const char *what)
{
	pthread_t w[NR_WORKERS];
	REQUIRE(pcpu_counter_init(&lc, 0, flags) == 0);
	atomic_store(&lc_lower, 0);
	atomic_store(&lc_overshoot, 0);
	atomic_store(&lc_ok, 0);
	atomic_store(&lc_refused, 0);
	lc_iters = 200000 / scale;
	for (long i = 0; i < NR_WORKERS; i++)
		REQUIRE(pthread_create(&w[i], NULL, lim_worker, (void *)i) == 0);
	for (int i = 0; i < NR_WORKERS; i++)
		pthread_join(w[i], NULL);
	int64_t held = 0;
	for (int i = 0; i < NR_WORKERS; i++)
		held += lc_held[i];
	CHECK_EQ(atomic_load(&lc_overshoot), 0);
	if (atomic_load(&lc_overshoot))
		fprintf(stderr, "  overshoot in %s\n", what);
	CHECK_EQ(pcpu_counter_sum(&lc), held);
	CHECK(held <= LIMIT);
	CHECK(atomic_load(&lc_refused) > 0);
	/* alone, it fills up to the limit exactly */
	while (pcpu_counter_limited_add(&lc, LIMIT, 1))
		;
	CHECK_EQ(pcpu_counter_sum(&lc), LIMIT);
	CHECK(!pcpu_counter_limited_add(&lc, LIMIT, 1));
	fprintf(stderr, "limited %-16s: %ld added, %ld refused, %s\n", what,
		(long)atomic_load(&lc_ok), (long)atomic_load(&lc_refused),
		pcpu_counter_is_percpu(&lc) ? "per-CPU" : "atomic word");
	pcpu_counter_destroy(&lc);
}

/* Pure racing to a limit, nobody gives back: the final value is the sum
 * of the successful adds and never above the limit. */
static atomic_llong race_added;
static void *race_worker(void *arg)
{
	unsigned seed = (unsigned)(long)arg + 1000;
	int64_t mine = 0;
	int refusals = 0;
	while (refusals < 100) {
		int64_t v = 1 + rand_r(&seed) % 20;
		if (pcpu_counter_limited_add(&lc, 100000 / scale, v)) {
			mine += v;
			refusals = 0;
		} else {
			refusals++;
		}
	}
	atomic_fetch_add(&race_added, mine);
	return NULL;
}

static void test_limited_race(unsigned int flags)
{
	pthread_t w[NR_WORKERS];
	REQUIRE(pcpu_counter_init(&lc, 0, flags) == 0);
	atomic_store(&race_added, 0);
	for (long i = 0; i < NR_WORKERS; i++)
		REQUIRE(pthread_create(&w[i], NULL, race_worker, (void *)i) ==
			0);
	for (int i = 0; i < NR_WORKERS; i++)
		pthread_join(w[i], NULL);
	int64_t s = pcpu_counter_sum(&lc);
	CHECK_EQ(s, atomic_load(&race_added));
	CHECK(s <= 100000 / scale);
	CHECK(s > 100000 / scale - 20 * NR_WORKERS - 64);
	pcpu_counter_destroy(&lc);
}

/* ------------------------------------------------------------------ */
/* Simulation: the error bound does not grow with CPUs                 */

static void test_fold_hook(void)
{
	int n = pcpu_nr_cpu_ids();
	struct pcpu_counter pc, dc;
	REQUIRE(pcpu_counter_init(&pc, 0, PCPU_COUNTER_PERCPU |
						  PCPU_COUNTER_EAGER) == 0);
	REQUIRE(pcpu_counter_init(&dc, 0, PCPU_COUNTER_EAGER) == 0);
	int cpu = n - 1;
	CHECK(pcpu_sim_set_cpu(cpu) == 0);
	pcpu_counter_add(&pc, 10);
	pcpu_counter_add(&dc, 10);
	CHECK_EQ(pcpu_counter_read(&pc), 0);
	CHECK_EQ(pcpu_counter_read(&dc), 0);
	CHECK_EQ(*pcpu_ptr(pc.slots, cpu), 10);
	/* folding another index or kind changes nothing */
	_pcpu_counter_fold_index(cpu == 0 ? 1 : 0, FOLD_CPU);
	_pcpu_counter_fold_index(cpu, FOLD_CID);
	CHECK_EQ(pcpu_counter_read(&pc), 0);
	_pcpu_counter_fold_index(cpu, FOLD_CPU);
	CHECK_EQ(pcpu_counter_read(&pc), 10);
	CHECK_EQ(pcpu_counter_sum(&pc), 10);
	CHECK_EQ(*pcpu_ptr(pc.slots, cpu), 0);
	/* the default counter's slot is the thread's id, not the CPU */
	for (int i = 0; i <= n; i++)
		_pcpu_counter_fold_index(i, FOLD_CID);
	CHECK_EQ(pcpu_counter_read(&dc), 10);
	CHECK_EQ(pcpu_counter_sum(&dc), 10);
	_pcpu_counter_fold_index(-1, FOLD_CPU);
	_pcpu_counter_fold_index(n + 1, FOLD_CPU);
	CHECK(pcpu_sim_set_cpu(-1) == 0);
	pcpu_counter_destroy(&pc);
	pcpu_counter_destroy(&dc);
}

struct sim_res {
	int64_t max_err, bound;
};

/* 5 threads hop to a random simulated CPU every @k adds; positive adds
 * only; returns the max |sum - read| seen at quiescent points and the
 * bound at the end. */
#define SIM_THREADS 5
static struct pcpu_counter sc;
static pthread_barrier_t sim_bar;
static int64_t sim_max_err;
static long sim_rounds;
static int sim_k;

static void *sim_worker(void *arg)
{
	unsigned seed = (unsigned)(long)arg * 13 + 1;
	int n = pcpu_nr_cpu_ids();
	long step = 0;
	for (long r = 0; r < sim_rounds; r++) {
		for (int i = 0; i < 64; i++, step++) {
			if (step % sim_k == 0)
				CHECK(pcpu_sim_set_cpu(rand_r(&seed) % n) == 0);
			pcpu_counter_add(&sc, 1 + rand_r(&seed) % 8);
		}
		if (pthread_barrier_wait(&sim_bar) ==
		    PTHREAD_BARRIER_SERIAL_THREAD) {
			int64_t b, v = pcpu_counter_read_bounded(&sc, &b);
			int64_t e = pcpu_counter_sum(&sc) - v;
			if (e < 0)
				e = -e;
			CHECK(e <= b);
			if (e > sim_max_err)
				sim_max_err = e;
		}
		pthread_barrier_wait(&sim_bar);
	}
	CHECK(pcpu_sim_set_cpu(-1) == 0);
	return NULL;
}

static struct sim_res sim_run(unsigned int flags, int k, long rounds)
{
	pthread_t t[SIM_THREADS];
	REQUIRE(pcpu_counter_init(&sc, 0, flags) == 0);
	sim_max_err = 0;
	sim_rounds = rounds;
	sim_k = k;
	pthread_barrier_init(&sim_bar, NULL, SIM_THREADS);
	for (long i = 0; i < SIM_THREADS; i++)
		REQUIRE(pthread_create(&t[i], NULL, sim_worker, (void *)i) == 0);
	for (int i = 0; i < SIM_THREADS; i++)
		pthread_join(t[i], NULL);
	pthread_barrier_destroy(&sim_bar);
	struct sim_res r = { sim_max_err, pcpu_counter_error_bound(&sc) };
	pcpu_counter_destroy(&sc);
	return r;
}

static void test_sim(void)
{
	int n = pcpu_nr_cpu_ids();
	test_fold_hook();
	long rounds = 2000 / scale; /* x 64 adds x 5 threads */
	struct sim_res d = sim_run(PCPU_COUNTER_EAGER, 1, rounds);
	struct sim_res p =
		sim_run(PCPU_COUNTER_EAGER | PCPU_COUNTER_PERCPU, 1, rounds);
	struct pcpu_stats stt;
	pcpu_stats_get(&stt);
	int visited = stt.nr_used_cpus;
	fprintf(stderr, "sim %d cpus (%d used): default max err %lld bound "
			"%lld; percpu max err %lld bound %lld\n",
		n, visited, (long long)d.max_err, (long long)d.bound,
		(long long)p.max_err, (long long)p.bound);
	/* default: at most one slot per thread that ever ran at once (the
	 * workers, main, and the earlier storms' threads are gone) */
	CHECK(d.bound <= (int64_t)(PCPU_COUNTER_BATCH - 1) * (SIM_THREADS + 8));
	CHECK(d.max_err <= d.bound);
	/* PERCPU: (batch - 1) x used CPUs, which the hops made many */
	CHECK(p.bound >= (int64_t)(PCPU_COUNTER_BATCH - 1) * visited);
	CHECK(p.max_err <= p.bound);
	if (n >= 250 && scale == 1) {
		CHECK(visited > 200);
		CHECK(p.bound > 20 * d.bound);
		CHECK(p.max_err > d.max_err);
	}
}

int main(void)
{
	setup_scale();
	check_mode();
	double t0 = now();
	test_semantics();
	test_destroy_zeroed();
	test_wrap();
	test_kernel_api();
	test_switch_oom();
	test_adaptive_switch();
	test_sum_exact();

	long iters = 300000 / scale;
	for (int m = 0; m < NR_MODES; m++)
		run_storm(modes[m].flags, iters, false, -1, 0, false,
			  modes[m].name);
	for (int m = 0; m < NR_MODES; m++)
		run_storm(modes[m].flags, iters / 2, true, -1, 0, false,
			  modes[m].name);
	for (int m = 0; m < NR_MODES; m++)
		test_limited(modes[m].flags, modes[m].name);
	test_limited_race(PCPU_COUNTER_EAGER);
	test_limited_race(PCPU_COUNTER_PERCPU | PCPU_COUNTER_EAGER);
	test_limited_race(0);
	fprintf(stderr, "real-CPU phases: %.1f s\n", now() - t0);

	/* switch the process to the atomic path in the middle of a storm */
	if (pcpu_path() == PCPU_PATH_RSEQ) {
		run_storm(PCPU_COUNTER_EAGER, iters, true, (int)iters / 2, 0,
			  false, "switch (default)");
		CHECK(pcpu_path() == PCPU_PATH_ATOMIC);
	}
	/* simulated CPUs: hops and index folds racing the updates */
	run_storm(PCPU_COUNTER_EAGER, iters / 2, true, -1, 16, true,
		  "sim hops+folds");
	run_storm(PCPU_COUNTER_EAGER | PCPU_COUNTER_PERCPU, iters / 2, true,
		  -1, 16, true, "sim percpu folds");
	run_storm(0, iters / 2, false, -1, 16, true, "sim adaptive");
	test_sim();
	CHECK(pcpu_validate() == 0);
	fprintf(stderr, "total %.1f s (sim mode %s)\n", now() - t0,
		sim_mode() ? "yes" : "no");
	return check_done();
}
