/*
 * pcpu-demo - the short tour of libpcpu that `make demo` runs.
 *
 * Prints one table: how the process indexes CPUs, per-CPU counting from
 * several threads (exact sum, cost per operation), allocation speed, and
 * what the memory costs: measured backed bytes against the ideal and
 * against a model of the kernel's allocator, which backs every possible
 * CPU; memory given back (pcpu_trim); a pcpu_counter's error bound and a
 * pcpu_ref's single release; the per-CPU object caches and their drain.
 * The memory part runs again in a child that simulates a machine of 1024
 * possible CPUs (PCPU_SIM_POSSIBLE) on this one, with CPUs going offline
 * and online (hotplug).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pcpu/counter.h"
#include "pcpu/pcpu.h"
#include "pcpu/ref.h"

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
	printf("| %-46s | %-68s |\n", what, buf);
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
	cpu_set_t old;
	sched_getaffinity(0, sizeof(old), &old);
	for (int k = 0; k < 2; k++) {
		if (sim) {
			pcpu_sim_set_cpu(cpus[k]);
		} else { /* run on each real CPU in turn */
			cpu_set_t one;
			CPU_ZERO(&one);
			CPU_SET(cpus[k], &one);
			sched_setaffinity(0, sizeof(one), &one);
		}
		for (long i = 0; i < n; i++)
			pcpu_write(v[i], i);
	}
	if (sim)
		pcpu_sim_set_cpu(-1);
	else
		sched_setaffinity(0, sizeof(old), &old);
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

/* Inflates, frees 99%, and gives the memory back. */
static void tour_reclaim(void)
{
	enum { N = 200000 };
	static const size_t sizes[] = { 8, 64, 512, 1024 };
	void **v = malloc(N * sizeof(*v));
	if (!v)
		return;
	for (long i = 0; i < N; i++) {
		v[i] = pcpu_alloc(sizes[i % 4], 0);
		if (v[i])
			memset(pcpu_ptr((char *)v[i], pcpu_this_cpu() <
						pcpu_nr_cpu_ids() ?
					pcpu_this_cpu() : 0),
			       1, sizes[i % 4]);
	}
	struct pcpu_stats a, b, c;
	pcpu_stats_get(&a);
	for (long i = 0; i < N; i++)
		if (i % 100)
			pcpu_free(v[i]);
	pcpu_stats_get(&b);
	pcpu_trim();
	pcpu_stats_get(&c);
	row("200k mixed areas, 99% freed, then pcpu_trim",
	    "backed %.1f -> %.1f -> %.1f MiB (%llu pages released)",
	    a.backed_bytes / 1048576.0, b.backed_bytes / 1048576.0,
	    c.backed_bytes / 1048576.0,
	    (unsigned long long)(c.depopulated_pages - a.depopulated_pages));
	for (long i = 0; i < N; i += 100)
		pcpu_free(v[i]);
	free(v);
}

static struct pcpu_counter events;

static void *counter_thread(void *arg)
{
	(void)arg;
	for (long i = 0; i < OPS; i++)
		pcpu_counter_add(&events, 1);
	return NULL;
}

static int released;
static void ref_release(struct pcpu_ref *r)
{
	(void)r;
	released++;
}

static void *ref_thread(void *arg)
{
	struct pcpu_ref *r = arg; /* the caller took a reference for us */
	for (long i = 0; i < OPS / 5; i++) {
		pcpu_ref_get(r);
		pcpu_ref_put(r);
	}
	pcpu_ref_put(r);
	return NULL;
}

static void tour_counter_ref(void)
{
	pthread_t t[2];
	pcpu_counter_init(&events, 0, 0); /* adaptive: one atomic word */
	bool percpu0 = pcpu_counter_is_percpu(&events);
	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, counter_thread, NULL);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	row("pcpu_counter, 2 threads x 5M adds",
	    "%s -> %s; read %lld, bound %lld, sum %lld",
	    percpu0 ? "per-CPU" : "atomic",
	    pcpu_counter_is_percpu(&events) ? "per-CPU" : "atomic",
	    (long long)pcpu_counter_read(&events),
	    (long long)pcpu_counter_error_bound(&events),
	    (long long)pcpu_counter_sum(&events));
	pcpu_counter_destroy(&events);

	struct pcpu_ref ref;
	if (pcpu_ref_init(&ref, ref_release, 0))
		return;
	for (int i = 0; i < 2; i++) {
		pcpu_ref_get(&ref); /* the thread's own reference */
		pthread_create(&t[i], NULL, ref_thread, &ref);
	}
	pcpu_ref_kill(&ref); /* drops the initial reference */
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	row("pcpu_ref: 2 threads get/put 1M, killed midway",
	    "released %d time(s), zero %s", released,
	    pcpu_ref_is_zero(&ref) ? "yes" : "no");
	pcpu_ref_exit(&ref);
}

static void tour_cache(void)
{
	enum { N = 2000000 };
	double t0 = now();
	for (long i = 0; i < N; i++)
		pcpu_free(pcpu_alloc(8, 0));
	double dt = now() - t0;
	long *keep[64];
	for (int i = 0; i < 64; i++)
		keep[i] = pcpu_alloc(16, 0);
	for (int i = 0; i < 64; i++)
		pcpu_free(keep[i]);
	struct pcpu_stats a, b;
	pcpu_stats_get(&a);
	size_t n = pcpu_drain(0);
	pcpu_stats_get(&b);
	row("pcpu_alloc(8) + pcpu_free, per-CPU caches",
	    "%.1f ns per pair, %.1f%% from the cache", dt * 1e9 / N,
	    100.0 * (double)b.cache_hits /
		    (double)(b.cache_hits + b.cache_misses + 1));
	row("  pcpu_drain", "%zu objects back, %llu CPUs fenced, %llu skipped",
	    n, (unsigned long long)(b.cache_cpus_fenced - a.cache_cpus_fenced),
	    (unsigned long long)(b.cache_cpus_skipped - a.cache_cpus_skipped));
}

/* Simulation: CPU 5 goes offline, its memory goes; it comes back and its
 * copies start from pcpu_alloc_init's value again. */
static void tour_hotplug(void)
{
	long init = 42;
	long *v = pcpu_alloc_init(sizeof(long), 0, &init);
	if (!v)
		return;
	pcpu_sim_set_cpu(5);
	long before = pcpu_read(v);
	pcpu_sim_set_cpu(-1);
	int off = pcpu_sim_cpu_offline(5);
	int st_off = pcpu_cpu_state(5);
	int on = pcpu_sim_cpu_online(5);
	pcpu_sim_set_cpu(5);
	long after = pcpu_read(v);
	pcpu_sim_set_cpu(-1);
	row("hotplug: pcpu_alloc_init(42); CPU 5 off, on",
	    "reads %ld; offline %s, memory %s; online %s, reads %ld", before,
	    off == 0 ? "ok" : "refused",
	    st_off & PCPU_CPU_BACKED ? "kept" : "released",
	    on == 0 ? "ok" : "failed", after);
	pcpu_free(v);
}

int main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "--sim-child")) {
		tour_memory(200000, 1);
		tour_hotplug();
		return 0;
	}
	printf("libpcpu %d.%d: per-CPU memory for Linux user space\n\n",
	       PCPU_VERSION_MAJOR, PCPU_VERSION_MINOR);
	printf("| %-46s | %-68s |\n", "what", "result");
	printf("|%.48s|%.70s|\n",
	       "----------------------------------------------------------"
	       "----------------------------------------------------------",
	       "----------------------------------------------------------"
	       "----------------------------------------------------------");
	row("fast path", "%s, index by %s, %d CPU ids",
	    pcpu_path() == PCPU_PATH_RSEQ ? "rseq (no atomics)"
					  : "atomic fallback",
	    pcpu_index_mode() == PCPU_INDEX_CID ? "concurrency id" : "CPU",
	    pcpu_nr_cpu_ids());
	tour_counting();
	tour_memory(200000, 0);
	tour_reclaim();
	tour_counter_ref();
	tour_cache();
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
