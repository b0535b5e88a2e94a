/*
 * cpus.h - the real CPUs a test may run on, and moving threads between
 * them (sched_setaffinity), shared by the tests that migrate threads.
 */
#ifndef PCPU_TESTS_CPUS_H
#define PCPU_TESTS_CPUS_H

#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "check.h"
#include "pcpu/pcpu.h"

static int nr_real_cpus;
static int real_cpus[CPU_SETSIZE];

/* Learns the CPUs this process may run on (at least one). */
static inline void real_cpus_init(void)
{
	cpu_set_t set;
	REQUIRE(sched_getaffinity(0, sizeof(set), &set) == 0);
	nr_real_cpus = 0;
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &set))
			real_cpus[nr_real_cpus++] = c;
	REQUIRE(nr_real_cpus > 0);
}

/* Pins thread @tid (0: the caller) to @cpu. */
static inline void move_to(pid_t tid, int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	sched_setaffinity(tid, sizeof(set), &set);
}

static inline void pin_self(int cpu)
{
	move_to(0, cpu);
}

/*
 * A thread that moves threads between the real CPUs until *stop: @tids
 * (0 entries are skipped, so threads may register late) every 200 us.
 */
struct cpus_mover {
	pid_t *tids;
	int n;
	int *stop;
};

static inline void *cpus_mover_main(void *arg)
{
	struct cpus_mover *m = arg;
	unsigned seed = 42;
	while (!__atomic_load_n(m->stop, __ATOMIC_ACQUIRE)) {
		if (nr_real_cpus > 1)
			for (int i = 0; i < m->n; i++) {
				pid_t t = __atomic_load_n(&m->tids[i],
							  __ATOMIC_ACQUIRE);
				if (t)
					move_to(t, real_cpus[rand_r(&seed) %
							     nr_real_cpus]);
			}
		usleep(200);
	}
	return NULL;
}

/* Lets the caller run on every real CPU again. */
static inline void unpin_self(void)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	for (int i = 0; i < nr_real_cpus; i++)
		CPU_SET(real_cpus[i], &set);
	sched_setaffinity(0, sizeof(set), &set);
}

/* Checks the path the run must be in: PCPU_TEST_PATH=rseq|atomic (set by
 * CTest for each variant), and PCPU_TEST_INDEX=cpu|cid likewise. */
static inline void check_test_path(void)
{
	const char *path = getenv("PCPU_TEST_PATH");
	const char *index = getenv("PCPU_TEST_INDEX");
	if (path && !strcmp(path, "rseq"))
		CHECK(pcpu_path() == PCPU_PATH_RSEQ);
	if (path && !strcmp(path, "atomic"))
		CHECK(pcpu_path() == PCPU_PATH_ATOMIC);
	if (index && !strcmp(index, "cid"))
		CHECK(pcpu_index_mode() == PCPU_INDEX_CID);
	if (index && !strcmp(index, "cpu"))
		CHECK(pcpu_index_mode() == PCPU_INDEX_CPU);
}

/* In a forked child: applies @env (NAME=VALUE sets, NAME alone unsets;
 * NULL-terminated), then re-executes @self with the one argument @mode.
 * Returns only if the exec failed. */
static inline void exec_self_with_env(const char *self, const char *mode,
				      const char *const *env)
{
	for (const char *const *e = env; e && *e; e++) {
		if (strchr(*e, '='))
			putenv(strdup(*e));
		else
			unsetenv(*e);
	}
	char *argv[] = { (char *)self, (char *)mode, NULL };
	execv(self, argv);
}

#endif
