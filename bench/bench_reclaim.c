/*
 * bench_reclaim.c - pcpu-bench reclaim: giving memory back.
 *
 * Seed 001's scenario under PCPU_SIM_POSSIBLE=1024: inflate with 1M areas
 * of a memcg-like mix (8, 16, 64, 256, 1024 bytes), each written on two
 * CPUs; free 99% at random; pcpu_trim().  Backed bytes (stats, mincore)
 * and VmRSS at each stage, against live bytes and the exact floor: the
 * pages that still hold a live area on the two CPUs, plus the high
 * watermark (4 pages per CPU) and one spare chunk (reserved, unbacked after
 * a trim).  Targets: after trim, backed bytes within 1.05x of the floor;
 * alloc/free throughput with the balance worker running within 5% of
 * without.  The same run without depopulation (PCPU_BALANCE=0 and no trim:
 * what librseq's mempool does) is printed beside it.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "pcpu/pcpu.h"

static long **areas;
static size_t *sizes;
static long n;

struct writer {
	int cpu;
};

static void *write_areas(void *arg)
{
	struct writer *w = arg;
	pcpu_sim_set_cpu(w->cpu);
	for (long i = 0; i < n; i++)
		if (areas[i])
			for (size_t k = 0; k < sizes[i] / sizeof(long); k++)
				pcpu_add(&areas[i][k], 1L);
	pcpu_sim_set_cpu(-1);
	return NULL;
}

static void write_on_two_cpus(void)
{
	pthread_t t[2];
	struct writer w[2] = { { 0 }, { 1 } };
	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, write_areas, &w[i]);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
}

static int cmp_ptr(const void *a, const void *b)
{
	uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
	return x < y ? -1 : x > y;
}

/* Distinct pages of the unit layout that hold a live area. */
static long live_pages(long page)
{
	long cap = 1024, k = 0;
	uintptr_t *pg = malloc((size_t)cap * sizeof(*pg));
	for (long i = 0; i < n; i++) {
		if (!areas[i])
			continue;
		uintptr_t a = (uintptr_t)areas[i] & ~(uintptr_t)(page - 1);
		uintptr_t e = ((uintptr_t)areas[i] + sizes[i] - 1) &
			      ~(uintptr_t)(page - 1);
		for (; a <= e; a += (uintptr_t)page) {
			if (k == cap)
				pg = realloc(pg, (size_t)(cap *= 2) * sizeof(*pg));
			pg[k++] = a;
		}
	}
	qsort(pg, (size_t)k, sizeof(*pg), cmp_ptr);
	long d = 0;
	for (long i = 0; i < k; i++)
		d += !i || pg[i] != pg[i - 1];
	free(pg);
	return d;
}

static double mib(double b)
{
	return b / 1048576.0;
}

/* Child: prints one line of numbers for the parent. */
static int reclaim_child(bool trim)
{
	static const size_t mix[] = { 8, 16, 64, 256, 1024 };
	long page = sysconf(_SC_PAGESIZE);
	unsigned seed = 2021;
	struct pcpu_stats s0, s1, s2, s3;
	long r0, r1, r2, r3;

	n = bench_quick ? 100000 : 1000000;
	areas = calloc((size_t)n, sizeof(*areas));
	sizes = calloc((size_t)n, sizeof(*sizes));
	memset(areas, 0xff, (size_t)n * sizeof(*areas)); /* touch now */
	memset(sizes, 0xff, (size_t)n * sizeof(*sizes));
	pcpu_init();
	pcpu_stats_get(&s0);
	r0 = bench_vmrss();

	double t0 = bench_now();
	for (long i = 0; i < n; i++) {
		sizes[i] = mix[rand_r(&seed) % 5];
		areas[i] = pcpu_alloc(sizes[i], 0);
		if (!areas[i]) {
			perror("pcpu_alloc");
			return 1;
		}
	}
	double t_alloc = bench_now() - t0;
	write_on_two_cpus();
	pcpu_stats_get(&s1);
	r1 = bench_vmrss();

	t0 = bench_now();
	for (long i = 0; i < n; i++)
		if (rand_r(&seed) % 100) {
			pcpu_free(areas[i]);
			areas[i] = NULL;
		}
	double t_free = bench_now() - t0;
	/* what the balance worker does by itself once the frees are over
	 * (it waits out a burst of frees, then runs a pass) */
	if (trim)
		usleep(1200 * 1000);
	pcpu_stats_get(&s2);
	r2 = bench_vmrss();
	if (trim)
		pcpu_trim();
	pcpu_stats_get(&s3);
	r3 = bench_vmrss();

	long lp = live_pages(page);
	double floor = ((double)lp + 4) * (double)page * 2;
	long bad = 0;
	for (long i = 0; i < n; i++)
		if (areas[i])
			bad += pcpu_sum(areas[i]) != 2;
	printf("%llu %llu %llu %llu %ld %ld %ld %ld %llu %.0f %f %f %ld %llu %d\n",
	       (unsigned long long)s0.backed_bytes,
	       (unsigned long long)s1.backed_bytes,
	       (unsigned long long)s2.backed_bytes,
	       (unsigned long long)s3.backed_bytes, r0, r1, r2, r3,
	       (unsigned long long)s3.live_bytes, floor, t_alloc, t_free, bad,
	       (unsigned long long)s3.nr_chunks, pcpu_validate() == 0);
	return 0;
}

struct result {
	unsigned long long b0, b1, b2, b3, live, chunks;
	long r0, r1, r2, r3, bad;
	double floor, t_alloc, t_free;
	int valid;
};

static int run(const char *const env[], const char *mode, struct result *r)
{
	const char *args[] = { "reclaim", mode, NULL };
	char out[1024];
	if (bench_reexec_capture(env, args, out, sizeof(out)))
		return -1;
	return sscanf(out, "%llu %llu %llu %llu %ld %ld %ld %ld %llu %lf %lf %lf %ld %llu %d",
		      &r->b0, &r->b1, &r->b2, &r->b3, &r->r0, &r->r1, &r->r2,
		      &r->r3, &r->live, &r->floor, &r->t_alloc, &r->t_free,
		      &r->bad, &r->chunks, &r->valid) == 15
		       ? 0
		       : -1;
}

static void stage(const char *name, unsigned long long a, long ra,
		  unsigned long long b, long rb)
{
	bench_cell_str(name);
	bench_cell_num("%.1f", mib((double)a));
	bench_cell_num("%.1f", mib((double)ra));
	bench_cell_num("%.1f", mib((double)b));
	bench_cell_num("%.1f", mib((double)rb));
	bench_row_end();
}

int bench_reclaim(int argc, char **argv)
{
	if (argc > 0 && !strcmp(argv[0], "--child-trim"))
		return reclaim_child(true);
	if (argc > 0 && !strcmp(argv[0], "--child-keep"))
		return reclaim_child(false);

	const char *with[] = { "PCPU_SIM_POSSIBLE=1024", NULL };
	const char *without[] = { "PCPU_SIM_POSSIBLE=1024", "PCPU_BALANCE=0",
				  NULL };
	struct result a, b;
	if (run(with, "--child-trim", &a) || run(without, "--child-keep", &b)) {
		fprintf(stderr, "pcpu-bench reclaim: a child failed\n");
		return 1;
	}
	/* Throughput: the same work again, worker on and off, best of 3. */
	double best_on = 1e30, best_off = 1e30;
	for (int i = 0; i < 3; i++) {
		struct result x, y;
		if (!run(with, "--child-keep", &x) &&
		    x.t_alloc + x.t_free < best_on)
			best_on = x.t_alloc + x.t_free;
		if (!run(without, "--child-keep", &y) &&
		    y.t_alloc + y.t_free < best_off)
			best_off = y.t_alloc + y.t_free;
	}

	static const char *const cols[] = { "stage", "libpcpu backed MiB",
					    "libpcpu VmRSS MiB",
					    "no depopulation backed MiB",
					    "no depopulation VmRSS MiB" };
	bench_table("reclaim",
		    "1M areas (8-1024 B mix) on 2 of 1024 CPUs, 99% freed",
		    5, cols);
	stage("before inflation", a.b0, a.r0, b.b0, b.r0);
	stage("inflated", a.b1, a.r1, b.b1, b.r1);
	stage("99% freed, 1.2 s later", a.b2, a.r2, b.b2, b.r2);
	stage("after pcpu_trim (libpcpu)", a.b3, a.r3, b.b3, b.r3);
	bench_note("live bytes (one CPU's layout) %.2f MiB; floor (pages holding a live area x 2 CPUs + 4 pages x 2) %.2f MiB; chunks left %llu",
		   mib((double)a.live), mib(a.floor), a.chunks);
	bench_note("target: after trim <= 1.05x floor: %.3fx %s", a.b3 / a.floor,
		   a.b3 <= 1.05 * a.floor ? "met" : "NOT MET");
	bench_note("without depopulation: %.1fx the floor after the same frees",
		   b.b3 / a.floor);
	bench_note("target: alloc+free time with the worker within 5%% of without: %.3f s vs %.3f s (%+.1f%%) %s",
		   best_on, best_off, (best_on / best_off - 1) * 100,
		   best_on <= best_off * 1.05 ? "met" : "NOT MET");
	bench_note("live values intact: %s; validate %s",
		   a.bad || b.bad ? "NO" : "yes",
		   a.valid && b.valid ? "ok" : "FAILED");
	bench_table_end();
	return a.bad || b.bad || !a.valid || !b.valid;
}
