/*
 * pcpu-demo - the short tour of libpcpu that `make demo` runs.
 *
 * Prints one table: how the process indexes CPUs, per-CPU counting from
 * several threads (exact sum, cost per operation), allocation speed, and
 * what the memory costs: measured backed bytes against the ideal and
 * against a model of the kernel's allocator, which backs every possible
 * CPU.  The memory part runs again in a child that simulates a machine of
 * 1024 possible CPUs (PCPU_SIM_POSSIBLE) on this one.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pcpu/pcpu.h"

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void row(const char *what, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void row(const char *what, const char *fmt, ...)
{
	char buf[160];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	printf("| %-44s | %-52s |\n", what, buf);
}

#define OPS 5000000L
static long *counter;

static void *count_thread(void *arg)
{
	(void)arg;
	for (long i = 0; i < OPS; i++)
		pcpu_inc(counter);
	return NULL;
}

static void tour_counting(void)
{
	pthread_t t[2];
	counter = pcpu_alloc(sizeof(long), 0);
	double t0 = now();
	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, count_thread, NULL);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	double dt = now() - t0;
	long sum = pcpu_sum(counter);
	row("pcpu_inc from 2 threads, 5M each",
	    "sum %ld (%s), %.2f ns/op per thread", sum,
	    sum == 2 * OPS ? "exact" : "WRONG", dt * 1e9 / OPS);
	pcpu_free(counter);
}

/* Allocates n 8-byte areas, writes each on every used CPU (real, or two
 * simulated ones), and reports time and memory. */
static void tour_memory(long n, int sim)
{
	long **v = malloc(n * sizeof(*v));
	double t0 = now();
	for (long i = 0; i < n; i++)
		v[i] = pcpu_alloc(8, 8);
	double t_alloc = now() - t0;
	int cpus[2] = { 0, pcpu_nr_cpu_ids() > 1 ? 1 : 0 };
	for (int k = 0; k < 2; k++) {
		if (sim)
			pcpu_sim_set_cpu(cpus[k]);
		for (long i = 0; i < n; i++)
			pcpu_write(v[i], i);
	}
	if (sim)
		pcpu_sim_set_cpu(-1);
	struct pcpu_stats st;
	pcpu_stats_get(&st);
	double ideal = (double)n * 8 * st.nr_used_cpus;
	double kernel = (double)n * 8 * pcpu_nr_cpu_ids();
	char what[80];
	snprintf(what, sizeof(what), "%ldk x pcpu_alloc(8), %d possible CPUs",
		 n / 1000, pcpu_nr_cpu_ids());
	row(what, "%.0f ns per alloc", t_alloc * 1e9 / n);
	row("  backed (measured, mincore)",
	    "%.1f MiB on %d used CPUs = %.2fx the ideal",
	    st.backed_bytes / 1048576.0, st.nr_used_cpus,
	    st.backed_bytes / ideal);
	row("  kernel model (backs every possible CPU)", "%.1f MiB = %.0fx libpcpu",
	    kernel / 1048576.0, kernel / (double)st.backed_bytes);
	for (long i = 0; i < n; i++)
		pcpu_free(v[i]);
	pcpu_stats_get(&st);
	row("  after freeing everything", "%llu live areas, validate %s",
	    (unsigned long long)st.nr_cur_alloc,
	    pcpu_validate() == 0 ? "ok" : "FAILED");
	free(v);
}

int main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "--sim-child")) {
		tour_memory(200000, 1);
		return 0;
	}
	printf("libpcpu %d.%d: per-CPU memory for Linux user space\n\n",
	       PCPU_VERSION_MAJOR, PCPU_VERSION_MINOR);
	printf("| %-44s | %-52s |\n", "what", "result");
	printf("|%.46s|%.54s|\n",
	       "----------------------------------------------------------",
	       "----------------------------------------------------------");
	row("fast path", "%s, index by %s, %d CPU ids",
	    pcpu_path() == PCPU_PATH_RSEQ ? "rseq (no atomics)"
					  : "atomic fallback",
	    pcpu_index_mode() == PCPU_INDEX_CID ? "concurrency id" : "CPU",
	    pcpu_nr_cpu_ids());
	tour_counting();
	tour_memory(200000, 0);
	fflush(stdout);

	pid_t pid = fork();
	if (pid == 0) {
		setenv("PCPU_SIM_POSSIBLE", "1024", 1);
		setenv("PCPU_SIM_ONLINE", "0-15", 1);
		execl("/proc/self/exe", argv[0], "--sim-child", (char *)NULL);
		_exit(127);
	}
	int status = 0;
	waitpid(pid, &status, 0);
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
