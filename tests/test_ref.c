/*
 * test_ref.c - per-CPU reference counts: exact across mode switches, the
 * release function runs exactly once, after the last put, never before.
 *
 * Phases: the life cycle of every init flag, confirm callbacks, reinit and
 * resurrect, misuse reports; a storm of balanced get/put/tryget on threads
 * moved between CPUs (and acting as simulated CPUs) while a switcher
 * flips the ref between atomic and per-CPU mode and a signal handler also
 * takes references; kill/put races; a fork whose child must still switch;
 * last, on the rseq path, a storm during which the process itself moves to
 * the atomic path (pcpu_sim_set_cpu).  CTest runs it on the rseq path, on
 * the fallback path (GLIBC_TUNABLES=glibc.pthread.rseq=0) and in
 * simulation (PCPU_SIM_POSSIBLE); PCPU_TEST_PATH says which path the run
 * must be on.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "cpus.h"
#include "pcpu/ref.h"


static long scale = 1; /* divides iteration counts */
static bool sim;       /* simulated CPUs: threads act as them */

static void setup(void)
{
	const char *s = getenv("PCPU_TEST_SCALE");
	if (s && !strcmp(s, "valgrind"))
		scale = 50;
#if PCPU_TEST_TSAN || defined(PCPU_TEST_LSAN)
	if (scale < 4)
		scale = 4;
#endif
	s = getenv("PCPU_SIM_POSSIBLE");
	sim = s && *s;
	real_cpus_init();
}

/* Moves the calling thread to another real CPU, or (simulation) makes it
 * act as another simulated CPU. */
static void hop(unsigned *seed)
{
	if (sim)
		CHECK(pcpu_sim_set_cpu((int)(rand_r(seed) %
					     (unsigned)pcpu_nr_cpu_ids())) == 0);
	else if (nr_real_cpus > 1)
		move_to(0, real_cpus[rand_r(seed) % nr_real_cpus]);
}

static void check_mode(void)
{
	check_test_path();
	fprintf(stderr, "mode: path %s, %d cpu ids%s\n",
		pcpu_path() == PCPU_PATH_RSEQ ? "rseq" : "atomic",
		pcpu_nr_cpu_ids(), sim ? ", simulated" : "");
}

/* Polls until *v == want (switches complete on another thread). */
static bool wait_for(atomic_int *v, int want)
{
	for (int i = 0; i < 200000; i++) { /* 20 s */
		if (atomic_load(v) == want)
			return true;
		usleep(100);
	}
	return atomic_load(v) == want;
}

/* ---- misuse reports ---- */

static atomic_int reports;

static void count_report(const char *what, const void *ptr, void *arg)
{
	(void)what, (void)ptr, (void)arg;
	atomic_fetch_add(&reports, 1);
}

/* ---- a tracked object ---- */

struct obj {
	struct pcpu_ref ref;  /* first: release and confirm cast back */
	atomic_int released;  /* times release ran */
	atomic_int confirmed; /* times confirm ran */
	atomic_long holders;  /* references the test still counts as held */
	atomic_int early;     /* release ran with holders != 0 */
	atomic_int misorder;  /* confirm after release, or release before
				 an expected confirm */
	bool want_confirm;    /* release must come after a confirm */
	atomic_int confirm_delay_us;
};

static void obj_release(struct pcpu_ref *ref)
{
	struct obj *o = (struct obj *)ref;
	if (atomic_load(&o->holders) != 0)
		atomic_fetch_add(&o->early, 1);
	if (o->want_confirm && atomic_load(&o->confirmed) == 0)
		atomic_fetch_add(&o->misorder, 1);
	atomic_fetch_add(&o->released, 1);
}

static void obj_confirm(struct pcpu_ref *ref)
{
	struct obj *o = (struct obj *)ref;
	int delay = atomic_load(&o->confirm_delay_us);
	if (delay)
		usleep((useconds_t)delay);
	if (atomic_load(&o->released))
		atomic_fetch_add(&o->misorder, 1);
	atomic_fetch_add(&o->confirmed, 1);
}

static void obj_reset(struct obj *o)
{
	memset(o, 0, sizeof(*o));
}

/* ---- life cycle ---- */

static void test_basic(void)
{
	static struct obj o;
	obj_reset(&o);
	CHECK(pcpu_ref_init(&o.ref, obj_release, 0) == 0);
	CHECK(!pcpu_ref_is_zero(&o.ref));
	CHECK(!pcpu_ref_is_dying(&o.ref));

	/* balanced: 1 + 5 + 1 + 3 + 1 taken, all dropped */
	pcpu_ref_get(&o.ref);
	pcpu_ref_get_many(&o.ref, 5);
	CHECK(pcpu_ref_tryget(&o.ref));
	CHECK(pcpu_ref_tryget_many(&o.ref, 3));
	CHECK(pcpu_ref_tryget_live(&o.ref));
	pcpu_ref_put(&o.ref);
	pcpu_ref_put_many(&o.ref, 5);
	pcpu_ref_put(&o.ref);
	pcpu_ref_put_many(&o.ref, 3);
	pcpu_ref_put(&o.ref);
	CHECK(!pcpu_ref_is_zero(&o.ref));

	pcpu_ref_get(&o.ref); /* an extra holder across the kill */
	atomic_store(&o.holders, 1);
	pcpu_ref_kill(&o.ref);
	CHECK(pcpu_ref_is_dying(&o.ref));
	CHECK(!pcpu_ref_tryget_live(&o.ref));
	CHECK(pcpu_ref_tryget(&o.ref)); /* the count is not zero */
	pcpu_ref_put(&o.ref);
	CHECK(!pcpu_ref_is_zero(&o.ref));
	CHECK_EQ(atomic_load(&o.released), 0);
	atomic_store(&o.holders, 0);
	pcpu_ref_put(&o.ref);
	CHECK(wait_for(&o.released, 1));
	CHECK(pcpu_ref_is_zero(&o.ref));
	CHECK(!pcpu_ref_tryget(&o.ref));
	CHECK(!pcpu_ref_tryget_live(&o.ref));
	CHECK_EQ(atomic_load(&o.early), 0);
	pcpu_ref_exit(&o.ref);
	CHECK(pcpu_ref_is_zero(&o.ref));
	CHECK(pcpu_ref_is_dying(&o.ref));
	pcpu_ref_exit(&o.ref); /* idempotent */
	CHECK_EQ(atomic_load(&o.released), 1);

	/* a zeroed ref is "not initialised": exit is a no-op */
	struct pcpu_ref z;
	memset(&z, 0, sizeof(z));
	pcpu_ref_exit(&z);

	CHECK(pcpu_ref_init(NULL, obj_release, 0) == -EINVAL);
	CHECK(pcpu_ref_init(&o.ref, obj_release, 1u << 7) == -EINVAL);
}

static void test_init_flags(void)
{
	static struct obj o;

	/* INIT_ATOMIC: confirm and release happen at once, in this thread */
	obj_reset(&o);
	o.want_confirm = true;
	CHECK(pcpu_ref_init(&o.ref, obj_release, PCPU_REF_INIT_ATOMIC) == 0);
	CHECK(!pcpu_ref_is_zero(&o.ref));
	CHECK(!pcpu_ref_is_dying(&o.ref));
	pcpu_ref_get(&o.ref);
	pcpu_ref_put(&o.ref);
	pcpu_ref_kill_and_confirm(&o.ref, obj_confirm);
	CHECK_EQ(atomic_load(&o.confirmed), 1);
	CHECK_EQ(atomic_load(&o.released), 1);
	CHECK(pcpu_ref_is_zero(&o.ref));
	/* reinit keeps it atomic (forced); switch_to_percpu lifts that */
	pcpu_ref_reinit(&o.ref);
	CHECK(!pcpu_ref_is_dying(&o.ref));
	CHECK(!pcpu_ref_is_zero(&o.ref));
	pcpu_ref_switch_to_percpu(&o.ref);
	pcpu_ref_get_many(&o.ref, 7);
	pcpu_ref_put_many(&o.ref, 7);
	CHECK(!pcpu_ref_is_zero(&o.ref));
	pcpu_ref_switch_to_atomic_sync(&o.ref);
	CHECK(!pcpu_ref_is_zero(&o.ref));
	pcpu_ref_kill(&o.ref);
	CHECK_EQ(atomic_load(&o.released), 2);
	CHECK_EQ(atomic_load(&o.early) + atomic_load(&o.misorder), 0);
	pcpu_ref_exit(&o.ref);

	/* INIT_DEAD: count 0 until reinit */
	obj_reset(&o);
	CHECK(pcpu_ref_init(&o.ref, obj_release, PCPU_REF_INIT_DEAD) == 0);
	CHECK(pcpu_ref_is_zero(&o.ref));
	CHECK(pcpu_ref_is_dying(&o.ref));
	CHECK(!pcpu_ref_tryget(&o.ref));
	CHECK(!pcpu_ref_tryget_live(&o.ref));
	for (int round = 1; round <= 3; round++) {
		pcpu_ref_reinit(&o.ref);
		CHECK(!pcpu_ref_is_dying(&o.ref));
		CHECK(!pcpu_ref_is_zero(&o.ref));
		CHECK(pcpu_ref_tryget_live(&o.ref));
		pcpu_ref_get_many(&o.ref, 3);
		pcpu_ref_put_many(&o.ref, 4);
		pcpu_ref_kill(&o.ref);
		CHECK(wait_for(&o.released, round));
		CHECK(pcpu_ref_is_zero(&o.ref));
	}
	CHECK_EQ(atomic_load(&o.early), 0);
	pcpu_ref_exit(&o.ref);

	/* INIT_ATOMIC | INIT_DEAD */
	obj_reset(&o);
	CHECK(pcpu_ref_init(&o.ref, obj_release,
			    PCPU_REF_INIT_ATOMIC | PCPU_REF_INIT_DEAD) == 0);
	CHECK(pcpu_ref_is_zero(&o.ref));
	pcpu_ref_reinit(&o.ref);
	pcpu_ref_put(&o.ref); /* atomic: releases at once */
	CHECK_EQ(atomic_load(&o.released), 1);
	pcpu_ref_exit(&o.ref);
	CHECK(pcpu_ref_is_zero(&o.ref));

	/* NULL release is allowed */
	struct pcpu_ref r;
	CHECK(pcpu_ref_init(&r, NULL, 0) == 0);
	pcpu_ref_kill(&r);
	pcpu_ref_switch_to_atomic_sync(&r);
	CHECK(pcpu_ref_is_zero(&r));
	pcpu_ref_exit(&r);
}

static void test_switches(void)
{
	static struct obj o;
	obj_reset(&o);
	CHECK(pcpu_ref_init(&o.ref, obj_release, PCPU_REF_ALLOW_REINIT) == 0);

	pcpu_ref_get_many(&o.ref, 10); /* per-CPU */
	pcpu_ref_switch_to_atomic(&o.ref, obj_confirm);
	CHECK(wait_for(&o.confirmed, 1));
	CHECK(!pcpu_ref_is_zero(&o.ref));
	pcpu_ref_put_many(&o.ref, 5); /* atomic */
	pcpu_ref_switch_to_percpu(&o.ref);
	CHECK(!pcpu_ref_is_zero(&o.ref));
	pcpu_ref_put_many(&o.ref, 5); /* per-CPU */
	pcpu_ref_switch_to_atomic_sync(&o.ref);
	CHECK(!pcpu_ref_is_zero(&o.ref));
	/* already atomic: confirm at once */
	pcpu_ref_switch_to_atomic(&o.ref, obj_confirm);
	CHECK_EQ(atomic_load(&o.confirmed), 2);
	/* forced atomic: a kill keeps it so; switch_to_percpu then waits
	 * for resurrect */
	pcpu_ref_switch_to_percpu(&o.ref);

	/* a slow confirm: exit and further switches wait for it */
	atomic_store(&o.confirm_delay_us, 20000);
	pcpu_ref_switch_to_atomic(&o.ref, obj_confirm);
	pcpu_ref_switch_to_percpu(&o.ref); /* waits for the pending one */
	CHECK_EQ(atomic_load(&o.confirmed), 3);
	atomic_store(&o.confirm_delay_us, 0);

	o.want_confirm = true;
	atomic_store(&o.confirmed, 0);
	pcpu_ref_kill_and_confirm(&o.ref, obj_confirm);
	CHECK(wait_for(&o.released, 1));
	CHECK_EQ(atomic_load(&o.confirmed), 1);
	CHECK_EQ(atomic_load(&o.early) + atomic_load(&o.misorder), 0);
	pcpu_ref_exit(&o.ref);

	/* exit waits for a pending switch (and its slow confirm) */
	obj_reset(&o);
	CHECK(pcpu_ref_init(&o.ref, obj_release, 0) == 0);
	atomic_store(&o.confirm_delay_us, 20000);
	pcpu_ref_switch_to_atomic(&o.ref, obj_confirm);
	pcpu_ref_exit(&o.ref);
	CHECK_EQ(atomic_load(&o.confirmed), 1);
	CHECK(!pcpu_ref_is_zero(&o.ref)); /* exited holding the initial ref */
	CHECK_EQ(atomic_load(&o.released), 0);

	/* no ALLOW_REINIT: once atomic, for good (counts freed) */
	obj_reset(&o);
	CHECK(pcpu_ref_init(&o.ref, obj_release, 0) == 0);
	pcpu_ref_get(&o.ref);
	pcpu_ref_switch_to_atomic_sync(&o.ref);
	pcpu_set_error_handler(count_report, NULL);
	atomic_store(&reports, 0);
	pcpu_ref_switch_to_percpu(&o.ref);
	CHECK_EQ(atomic_load(&reports), 1);
	pcpu_set_error_handler(NULL, NULL);
	CHECK(!pcpu_ref_is_zero(&o.ref));
	pcpu_ref_put(&o.ref);
	pcpu_ref_get(&o.ref);
	pcpu_ref_kill(&o.ref);
	CHECK_EQ(atomic_load(&o.released), 0);
	pcpu_ref_put(&o.ref);
	CHECK_EQ(atomic_load(&o.released), 1);
	pcpu_ref_exit(&o.ref);
}

static void test_reinit_resurrect(void)
{
	static struct obj o;
	obj_reset(&o);
	CHECK(pcpu_ref_init(&o.ref, obj_release, PCPU_REF_ALLOW_REINIT) == 0);

	/* resurrect while a holder keeps it alive */
	pcpu_ref_get(&o.ref);
	pcpu_ref_kill(&o.ref);
	CHECK(pcpu_ref_is_dying(&o.ref));
	pcpu_ref_resurrect(&o.ref); /* takes a ref: now 2 */
	CHECK(!pcpu_ref_is_dying(&o.ref));
	CHECK(!pcpu_ref_is_zero(&o.ref)); /* back in per-CPU mode */
	CHECK(pcpu_ref_tryget_live(&o.ref));
	pcpu_ref_put(&o.ref);
	pcpu_ref_put(&o.ref); /* the holder's: 1 left */
	atomic_store(&o.holders, 0);
	pcpu_ref_kill(&o.ref);
	CHECK(wait_for(&o.released, 1));
	CHECK(pcpu_ref_is_zero(&o.ref));

	/* reinit after release: count 1, per-CPU again */
	for (int round = 2; round <= 4; round++) {
		pcpu_ref_reinit(&o.ref);
		CHECK(!pcpu_ref_is_dying(&o.ref));
		CHECK(!pcpu_ref_is_zero(&o.ref));
		pcpu_ref_get_many(&o.ref, 4);
		pcpu_ref_put_many(&o.ref, 4);
		pcpu_ref_kill(&o.ref);
		CHECK(wait_for(&o.released, round));
	}
	CHECK_EQ(atomic_load(&o.early), 0);

	/* misuse is reported and the call does nothing */
	pcpu_set_error_handler(count_report, NULL);
	atomic_store(&reports, 0);
	pcpu_ref_reinit(&o.ref);
	pcpu_ref_resurrect(&o.ref); /* live */
	CHECK_EQ(atomic_load(&reports), 1);
	pcpu_ref_get(&o.ref);
	pcpu_ref_reinit(&o.ref); /* count not zero */
	CHECK_EQ(atomic_load(&reports), 2);
	pcpu_ref_kill(&o.ref);
	pcpu_ref_kill(&o.ref); /* twice: no second put */
	CHECK_EQ(atomic_load(&reports), 3);
	pcpu_ref_switch_to_atomic_sync(&o.ref);
	CHECK_EQ(atomic_load(&o.released), 4);
	pcpu_ref_put(&o.ref);
	CHECK_EQ(atomic_load(&o.released), 5);
	pcpu_ref_exit(&o.ref);
	pcpu_ref_kill(&o.ref); /* after exit */
	pcpu_ref_get(&o.ref);
	CHECK_EQ(atomic_load(&reports), 5);

	/* no ALLOW_REINIT: a killed ref stays dead */
	obj_reset(&o);
	CHECK(pcpu_ref_init(&o.ref, obj_release, 0) == 0);
	pcpu_ref_get(&o.ref);
	pcpu_ref_kill(&o.ref);
	pcpu_ref_resurrect(&o.ref);
	CHECK_EQ(atomic_load(&reports), 6);
	CHECK(pcpu_ref_is_dying(&o.ref));
	pcpu_ref_put(&o.ref);
	CHECK(wait_for(&o.released, 1));
	pcpu_ref_exit(&o.ref);
	pcpu_set_error_handler(NULL, NULL);
}

/* ---- the storm: balanced operations while the mode flips ---- */

#define NR_WORKERS 4

static struct {
	struct obj o;
	long iters;
	atomic_int ready;
	atomic_int stop;
	atomic_long fails;       /* a tryget that failed */
	atomic_long switches;
	int path_switch_at;      /* worker 0 calls pcpu_sim_set_cpu here */
	pid_t tids[NR_WORKERS];
} storm;

static void storm_ops(unsigned *seed, long iters, int id)
{
	struct pcpu_ref *ref = &storm.o.ref;
	unsigned long held = 0;
	long fails = 0;

	for (long i = 0; i < iters; i++) {
		unsigned r = rand_r(seed);
		unsigned long k = 1 + r % 4;
		switch (r % 7) {
		case 0:
			pcpu_ref_get(ref);
			held++;
			break;
		case 1:
			if (held) {
				pcpu_ref_put(ref);
				held--;
			}
			break;
		case 2:
			pcpu_ref_get_many(ref, k);
			held += k;
			break;
		case 3:
			if (held >= k) {
				pcpu_ref_put_many(ref, k);
				held -= k;
			}
			break;
		case 4:
			if (pcpu_ref_tryget(ref))
				pcpu_ref_put(ref);
			else
				fails++;
			break;
		case 5:
			if (pcpu_ref_tryget_live(ref))
				pcpu_ref_put(ref);
			else
				fails++;
			break;
		default:
			if (pcpu_ref_tryget_many(ref, k))
				held += k;
			else
				fails++;
			break;
		}
		if (held > 32) {
			pcpu_ref_put_many(ref, held);
			held = 0;
		}
		if (i % (sim ? 97 : 997) == 0)
			hop(seed);
		if (id == 0 && i == storm.path_switch_at)
			CHECK(pcpu_sim_set_cpu(0) == 0);
	}
	pcpu_ref_put_many(ref, held);
	atomic_fetch_add(&storm.fails, fails);
}

static void *storm_worker(void *arg)
{
	long id = (long)arg;
	unsigned seed = (unsigned)id * 7919u + 3;
	storm.tids[id] = gettid();
	atomic_fetch_add(&storm.ready, 1);
	storm_ops(&seed, storm.iters, (int)id);
	if (sim || id == 0)
		CHECK(pcpu_sim_set_cpu(-1) == 0);
	return NULL;
}

static void *storm_switcher(void *arg)
{
	(void)arg;
	struct pcpu_ref *ref = &storm.o.ref;
	unsigned seed = 17;
	long n = 0;
	while (!atomic_load(&storm.stop)) {
		switch (n % 4) {
		case 0:
			pcpu_ref_switch_to_atomic_sync(ref);
			break;
		case 2:
			pcpu_ref_switch_to_atomic(ref, obj_confirm);
			break;
		default:
			pcpu_ref_switch_to_percpu(ref); /* waits if pending */
			break;
		}
		atomic_store(&storm.switches, ++n);
		usleep(rand_r(&seed) % 300);
	}
	return NULL;
}

/* Moves the workers around from outside, like preemption would. */
static void *storm_mover(void *arg)
{
	(void)arg;
	unsigned seed = 42;
	while (!atomic_load(&storm.stop)) {
		if (nr_real_cpus > 1 && !sim)
			for (int i = 0; i < NR_WORKERS; i++)
				if (storm.tids[i])
					move_to(storm.tids[i],
						real_cpus[rand_r(&seed) %
							  nr_real_cpus]);
		usleep(300);
	}
	return NULL;
}

static atomic_long sig_ops;

static void on_alarm(int sig)
{
	(void)sig;
	pcpu_ref_get(&storm.o.ref);
	pcpu_ref_put(&storm.o.ref);
	atomic_fetch_add(&sig_ops, 1);
}

static void run_storm(long iters, int path_switch_at)
{
	pthread_t w[NR_WORKERS], sw, mv;
	sigset_t block;

	memset(&storm, 0, sizeof(storm));
	storm.iters = iters;
	storm.path_switch_at = path_switch_at;
	storm.o.want_confirm = true;
	REQUIRE(pcpu_ref_init(&storm.o.ref, obj_release,
			      PCPU_REF_ALLOW_REINIT) == 0);
	pcpu_ref_get(&storm.o.ref); /* registers the main thread before the
				       handler can run */
	pcpu_ref_put(&storm.o.ref);
	atomic_store(&storm.o.holders, 1);

	sigemptyset(&block);
	sigaddset(&block, SIGALRM);
	pthread_sigmask(SIG_BLOCK, &block, NULL);
	for (long i = 0; i < NR_WORKERS; i++)
		REQUIRE(pthread_create(&w[i], NULL, storm_worker, (void *)i) ==
			0);
	while (atomic_load(&storm.ready) < NR_WORKERS)
		sched_yield();
	REQUIRE(pthread_create(&sw, NULL, storm_switcher, NULL) == 0);
	REQUIRE(pthread_create(&mv, NULL, storm_mover, NULL) == 0);
	pthread_sigmask(SIG_UNBLOCK, &block, NULL);

	/* the main thread too, interrupted by a handler that gets and puts */
	struct itimerval it = { { 0, 700 }, { 0, 700 } };
	struct itimerval off = { { 0, 0 }, { 0, 0 } };
	unsigned seed = 5;
	setitimer(ITIMER_REAL, &it, NULL);
	storm_ops(&seed, iters / 4, -1);
	setitimer(ITIMER_REAL, &off, NULL);
	if (sim)
		CHECK(pcpu_sim_set_cpu(-1) == 0);

	for (int i = 0; i < NR_WORKERS; i++)
		pthread_join(w[i], NULL);
	while (atomic_load(&storm.switches) < 8) /* slow machines, valgrind */
		usleep(1000);
	atomic_store(&storm.stop, 1);
	pthread_join(sw, NULL);
	pthread_join(mv, NULL);

	/* never released early, every tryget succeeded */
	CHECK_EQ(atomic_load(&storm.o.released), 0);
	CHECK_EQ(atomic_load(&storm.fails), 0);
	CHECK(!pcpu_ref_is_zero(&storm.o.ref));
	CHECK(pcpu_ref_tryget_live(&storm.o.ref));
	pcpu_ref_put(&storm.o.ref);

	/* exact: with one extra holder the count is 2; the kill drops the
	 * initial ref, and only our last put may release */
	pcpu_ref_get(&storm.o.ref);
	pcpu_ref_switch_to_percpu(&storm.o.ref); /* after any pending one */
	int confirmed = atomic_load(&storm.o.confirmed);
	pcpu_ref_kill_and_confirm(&storm.o.ref, obj_confirm);
	CHECK(wait_for(&storm.o.confirmed, confirmed + 1));
	CHECK(pcpu_ref_is_dying(&storm.o.ref));
	CHECK(!pcpu_ref_tryget_live(&storm.o.ref));
	CHECK(!pcpu_ref_is_zero(&storm.o.ref));
	CHECK_EQ(atomic_load(&storm.o.released), 0);
	atomic_store(&storm.o.holders, 0);
	pcpu_ref_put(&storm.o.ref);
	CHECK_EQ(atomic_load(&storm.o.released), 1);
	CHECK(pcpu_ref_is_zero(&storm.o.ref));
	CHECK_EQ(atomic_load(&storm.o.early), 0);
	CHECK_EQ(atomic_load(&storm.o.misorder), 0);
	pcpu_ref_exit(&storm.o.ref);
	fprintf(stderr,
		"storm: %ld iters x %d threads, %ld switches, %ld signal "
		"ops%s\n",
		iters, NR_WORKERS, (long)atomic_load(&storm.switches),
		(long)atomic_load(&sig_ops),
		path_switch_at >= 0 ? ", process moved to the atomic path" : "");
	CHECK(atomic_load(&storm.switches) >= 8);
}

/* ---- kill/put races: release exactly once, after the last put ---- */

static struct {
	struct obj o;
	pthread_barrier_t start, end;
	atomic_int quit;
	long rounds;
} race;

static void spin(unsigned *seed)
{
	for (unsigned n = rand_r(seed) % 2000; n; n--)
		__asm__ __volatile__("" ::: "memory");
}

static void *race_worker(void *arg)
{
	unsigned seed = (unsigned)(long)arg * 31u + 7;
	for (;;) {
		pthread_barrier_wait(&race.start);
		if (atomic_load(&race.quit))
			return NULL;
		struct pcpu_ref *ref = &race.o.ref;
		spin(&seed);
		for (int i = 0; i < 8; i++) { /* racing the kill */
			if (pcpu_ref_tryget(ref))
				pcpu_ref_put(ref);
			pcpu_ref_get(ref);
			pcpu_ref_put(ref);
		}
		if (rand_r(&seed) % 4 == 0)
			hop(&seed);
		atomic_fetch_sub(&race.o.holders, 1);
		pcpu_ref_put(ref); /* may be the last one */
		pthread_barrier_wait(&race.end);
	}
}

static void test_kill_races(void)
{
	pthread_t t[NR_WORKERS];
	unsigned seed = 99;
	long released = 0;

	memset(&race, 0, sizeof(race));
	race.rounds = 400 / scale + 4;
	pthread_barrier_init(&race.start, NULL, NR_WORKERS + 1);
	pthread_barrier_init(&race.end, NULL, NR_WORKERS + 1);
	for (long i = 0; i < NR_WORKERS; i++)
		REQUIRE(pthread_create(&t[i], NULL, race_worker, (void *)i) == 0);
	bool have = false, reinit_ok = false;
	for (long round = 0; round < race.rounds; round++) {
		bool reuse = have && reinit_ok && round % 3 == 2;
		bool confirm = round % 2;
		if (reuse) {
			/* the same ref again, with reinit */
			CHECK(pcpu_ref_is_zero(&race.o.ref));
			pcpu_ref_reinit(&race.o.ref);
		} else {
			if (have)
				pcpu_ref_exit(&race.o.ref);
			obj_reset(&race.o);
			reinit_ok = round % 2;
			REQUIRE(pcpu_ref_init(&race.o.ref, obj_release,
					      reinit_ok ? PCPU_REF_ALLOW_REINIT
							: 0) == 0);
			have = true;
			released = 0;
		}
		race.o.want_confirm = confirm;
		atomic_store(&race.o.confirmed, 0);
		pcpu_ref_get_many(&race.o.ref, NR_WORKERS);
		atomic_store(&race.o.holders, NR_WORKERS + 1);
		pthread_barrier_wait(&race.start);
		spin(&seed);
		atomic_fetch_sub(&race.o.holders, 1);
		if (confirm)
			pcpu_ref_kill_and_confirm(&race.o.ref, obj_confirm);
		else
			pcpu_ref_kill(&race.o.ref);
		CHECK(!pcpu_ref_tryget_live(&race.o.ref));
		pthread_barrier_wait(&race.end);
		released++;
		CHECK(wait_for(&race.o.released, (int)released));
		if (confirm)
			CHECK_EQ(atomic_load(&race.o.confirmed), 1);
	}
	atomic_store(&race.quit, 1);
	pthread_barrier_wait(&race.start);
	for (int i = 0; i < NR_WORKERS; i++)
		pthread_join(t[i], NULL);
	usleep(20000); /* a second release would show up by now */
	CHECK_EQ(atomic_load(&race.o.released), (int)released);
	CHECK_EQ(atomic_load(&race.o.early), 0);
	CHECK_EQ(atomic_load(&race.o.misorder), 0);
	pcpu_ref_exit(&race.o.ref);
	pthread_barrier_destroy(&race.start);
	pthread_barrier_destroy(&race.end);
	fprintf(stderr, "kill races: %ld rounds x %d threads\n", race.rounds,
		NR_WORKERS);
}

/* ---- fork: the child still switches ---- */

static void test_fork(void)
{
#if PCPU_TEST_TSAN
	fprintf(stderr, "fork: skipped under ThreadSanitizer\n");
#else
	static struct obj o;
	obj_reset(&o);
	CHECK(pcpu_ref_init(&o.ref, obj_release, PCPU_REF_ALLOW_REINIT) == 0);
	pcpu_ref_switch_to_atomic_sync(&o.ref); /* the switch thread runs */
	pcpu_ref_switch_to_percpu(&o.ref);
	pcpu_ref_get(&o.ref);

	fflush(NULL);
	pid_t pid = fork();
	REQUIRE(pid >= 0);
	if (pid == 0) {
		int bad = 0;
		o.want_confirm = true;
		pcpu_ref_kill_and_confirm(&o.ref, obj_confirm);
		bad |= !wait_for(&o.confirmed, 1);
		bad |= atomic_load(&o.released) != 0;
		pcpu_ref_put(&o.ref);
		bad |= !wait_for(&o.released, 1);
		struct obj o2;
		obj_reset(&o2);
		bad |= pcpu_ref_init(&o2.ref, obj_release, 0) != 0;
		pcpu_ref_kill(&o2.ref);
		bad |= !wait_for(&o2.released, 1);
		pcpu_ref_exit(&o2.ref);
		pcpu_ref_exit(&o.ref);
		_exit(bad ? 3 : 0);
	}
	int st = 0;
	CHECK(waitpid(pid, &st, 0) == pid);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	/* the parent's copy is untouched */
	CHECK_EQ(atomic_load(&o.released), 0);
	CHECK(!pcpu_ref_is_dying(&o.ref));
	pcpu_ref_kill(&o.ref);
	atomic_store(&o.holders, 0);
	pcpu_ref_put(&o.ref);
	CHECK(wait_for(&o.released, 1));
	pcpu_ref_exit(&o.ref);
#endif
}

int main(void)
{
	setup();
	signal(SIGALRM, on_alarm);
	check_mode();
	test_basic();
	test_init_flags();
	test_switches();
	test_reinit_resurrect();
	run_storm(4000000 / scale, -1);
	test_kill_races();
	test_fork();
	if (pcpu_path() == PCPU_PATH_RSEQ) {
		/* the process moves to the atomic path mid-storm */
		run_storm(2000000 / scale, (int)(1000000 / scale));
		CHECK(pcpu_path() == PCPU_PATH_ATOMIC);
		test_kill_races();
	}
	CHECK(pcpu_validate() == 0);
	return check_done();
}
