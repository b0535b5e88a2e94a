/*
 * bench_alloc.c - pcpu-bench alloc and pcpu-bench mem.
 *
 * alloc: the scenarios of the kernel's bitmap allocator series: 1M
 * allocations of 4, 16, 64, 256 and 1024 bytes, freed in order, in
 * reverse, and alternating (evens, then odds); and 1M 4-byte allocations
 * at 8-byte alignment.  Target: each scenario under 1 s here.
 *
 * mem: 1M 8-byte allocations, each written on 2 real CPUs, in processes
 * simulating 2, 64 and 1024 possible CPUs (PCPU_SIM_POSSIBLE).  Reports ns
 * per pcpu_alloc, backed bytes (stats, mincore) and resident growth
 * (VmRSS) against the ideal 16 MB, page-table growth (VmPTE), and a model
 * of the kernel's allocator, which backs every possible CPU.  Targets: under
 * 100 ns per allocation; resident growth within 1.25x of the ideal plus
 * metadata; page tables not growing with possible CPUs.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "pcpu/pcpu.h"

static void **ptrs;

static double alloc_all(long n, size_t size, size_t align)
{
	double t0 = bench_now();
	for (long i = 0; i < n; i++) {
		ptrs[i] = pcpu_alloc(size, align);
		if (!ptrs[i]) {
			perror("pcpu_alloc");
			exit(1);
		}
	}
	return bench_now() - t0;
}

enum order { IN_ORDER, REVERSE, ALTERNATING };

static double free_all(long n, enum order o)
{
	double t0 = bench_now();
	switch (o) {
	case IN_ORDER:
		for (long i = 0; i < n; i++)
			pcpu_free(ptrs[i]);
		break;
	case REVERSE:
		for (long i = n - 1; i >= 0; i--)
			pcpu_free(ptrs[i]);
		break;
	case ALTERNATING:
		for (long i = 0; i < n; i += 2)
			pcpu_free(ptrs[i]);
		for (long i = 1; i < n; i += 2)
			pcpu_free(ptrs[i]);
		break;
	}
	return bench_now() - t0;
}

int bench_alloc(int argc, char **argv)
{
	(void)argc, (void)argv;
	long n = bench_quick ? 100000 : 1000000;
	static const size_t sizes[] = { 4, 16, 64, 256, 1024 };
	static const char *const orders[] = { "in order", "reverse",
					      "alternating" };
	static const char *const cols[] = { "scenario", "alloc s", "free s",
					    "total s", "ns/alloc", "ns/free",
					    "target <1 s" };
	ptrs = malloc((size_t)n * sizeof(*ptrs));
	memset(ptrs, 0, (size_t)n * sizeof(*ptrs));
	bench_table("alloc", "1M allocations then free (kernel bitmap allocator scenarios)",
		    7, cols);
	int bad = 0;
	for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
		for (int o = 0; o < 3; o++) {
			double ta = alloc_all(n, sizes[s], 0);
			double tf = free_all(n, (enum order)o);
			char name[64];
			snprintf(name, sizeof(name), "%ldk x %zu B, free %s",
				 n / 1000, sizes[s], orders[o]);
			bench_cell_str(name);
			bench_cell_num("%.3f", ta);
			bench_cell_num("%.3f", tf);
			bench_cell_num("%.3f", ta + tf);
			bench_cell_num("%.0f", ta * 1e9 / n);
			bench_cell_num("%.0f", tf * 1e9 / n);
			bench_cell_str(ta + tf < 1.0 ? "met" : "NOT MET");
			bad |= ta + tf >= 1.0;
			bench_row_end();
		}
	}
	double ta = alloc_all(n, 4, 8);
	double tf = free_all(n, IN_ORDER);
	char name[64];
	snprintf(name, sizeof(name), "%ldk x 4 B align 8, free in order",
		 n / 1000);
	bench_cell_str(name);
	bench_cell_num("%.3f", ta);
	bench_cell_num("%.3f", tf);
	bench_cell_num("%.3f", ta + tf);
	bench_cell_num("%.0f", ta * 1e9 / n);
	bench_cell_num("%.0f", tf * 1e9 / n);
	bench_cell_str(ta + tf < 1.0 ? "met" : "NOT MET");
	bench_row_end();
	struct pcpu_stats st;
	pcpu_stats_get(&st);
	bench_note("%d CPU ids; chunks at the end %llu (max %llu); validate %s",
		   pcpu_nr_cpu_ids(), (unsigned long long)st.nr_chunks,
		   (unsigned long long)st.nr_max_chunks,
		   pcpu_validate() == 0 ? "ok" : "FAILED");
	bench_table_end();
	free(ptrs);
	return 0;
}

/* ---- mem ---- */

static long status_kb(const char *key)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kb = -1;
	size_t klen = strlen(key);
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, klen) && line[klen] == ':') {
			kb = atol(line + klen + 1);
			break;
		}
	fclose(f);
	return kb;
}

struct writer {
	long n;
	int cpu;
};

static void *write_all(void *arg)
{
	struct writer *w = arg;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(w->cpu, &set);
	sched_setaffinity(0, sizeof(set), &set);
	for (long i = 0; i < w->n; i++)
		pcpu_write((long *)ptrs[i], i + 1);
	return NULL;
}

/* Child: prints "ns_alloc backed rss_growth pte_growth_kb used ok". */
static int mem_child(void)
{
	long n = bench_quick ? 100000 : 1000000;
	cpu_set_t set;
	int cpus[2], k = 0;
	sched_getaffinity(0, sizeof(set), &set);
	for (int c = 0; c < CPU_SETSIZE && k < 2; c++)
		if (CPU_ISSET(c, &set))
			cpus[k++] = c;
	if (k < 2)
		cpus[1] = cpus[0];
	ptrs = malloc((size_t)n * sizeof(*ptrs));
	memset(ptrs, 0xff, (size_t)n * sizeof(*ptrs)); /* touched now: not part of the growth (0 would become calloc) */
	pcpu_init();
	/* touch the library's own start-up memory before the baseline */
	void *warm = pcpu_alloc(8, 8);
	pcpu_free(warm);
	long rss0 = bench_vmrss(), pte0 = status_kb("VmPTE");
	struct pcpu_stats st0;
	pcpu_stats_get(&st0);
	double ta = alloc_all(n, 8, 8);
	pthread_t t[2];
	struct writer w[2] = { { n, cpus[0] }, { n, cpus[1] } };
	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, write_all, &w[i]);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	long rss1 = bench_vmrss(), pte1 = status_kb("VmPTE");
	struct pcpu_stats st;
	pcpu_stats_get(&st);
	long sum_ok = 1;
	for (long i = 0; i < n; i += n / 97)
		sum_ok &= pcpu_sum((long *)ptrs[i]) == 2 * (i + 1);
	printf("%f %llu %ld %ld %d %ld %llu\n", ta * 1e9 / n,
	       (unsigned long long)(st.backed_bytes - st0.backed_bytes),
	       rss1 - rss0, pte1 - pte0, st.nr_used_cpus, sum_ok,
	       (unsigned long long)st.metadata_bytes);
	return 0;
}

int bench_mem(int argc, char **argv)
{
	if (argc > 0 && !strcmp(argv[0], "--child"))
		return mem_child();
	long n = bench_quick ? 100000 : 1000000;
	static const char *const cols[] = {
		"possible CPUs", "ns/alloc", "backed MiB", "RSS growth MiB",
		"x ideal", "page tables KiB", "metadata MiB", "kernel model MiB"
	};
	static const char *const sims[] = { "PCPU_SIM_POSSIBLE=2",
					    "PCPU_SIM_POSSIBLE=64",
					    "PCPU_SIM_POSSIBLE=1024" };
	static const int possible[] = { 2, 64, 1024 };
	double ideal = (double)n * 8 * 2;
	int bad = 0;
	double pte_first = -1, pte_last = -1, worst_ratio = 0, worst_ns = 0;

	bench_table("mem", "1M x 8-byte areas written on 2 CPUs", 8, cols);
	for (int i = 0; i < 3; i++) {
		const char *env[] = { sims[i], NULL };
		const char *args[] = { "mem", "--child", NULL };
		char out[512];
		double ns;
		unsigned long long backed, meta;
		long rss, pte, ok;
		int used;
		if (bench_reexec_capture(env, args, out, sizeof(out)) ||
		    sscanf(out, "%lf %llu %ld %ld %d %ld %llu", &ns, &backed,
			   &rss, &pte, &used, &ok, &meta) != 7) {
			bench_note("possible=%d: child failed", possible[i]);
			bad = 1;
			continue;
		}
		bench_cell_num("%.0f", possible[i]);
		bench_cell_num("%.0f", ns);
		bench_cell_num("%.1f", backed / 1048576.0);
		bench_cell_num("%.1f", rss / 1048576.0);
		bench_cell_num("%.2f", rss / ideal);
		bench_cell_num("%.0f", (double)pte);
		bench_cell_num("%.2f", meta / 1048576.0);
		bench_cell_num("%.0f", (double)n * 8 * possible[i] / 1048576.0);
		bench_row_end();
		bad |= !ok;
		if (pte_first < 0)
			pte_first = pte;
		pte_last = pte;
		if (rss / ideal > worst_ratio)
			worst_ratio = rss / ideal;
		if (ns > worst_ns)
			worst_ns = ns;
	}
	bench_note("ideal: %.1f MiB (n x 8 B x 2 CPUs); RSS growth includes metadata",
		   ideal / 1048576.0);
	bench_note("target: < 100 ns per pcpu_alloc: worst %.0f ns %s", worst_ns,
		   worst_ns < 100 ? "met" : "NOT MET");
	bench_note("target: RSS growth <= 1.25x ideal: worst %.2fx %s",
		   worst_ratio, worst_ratio <= 1.25 ? "met" : "NOT MET");
	/* Page tables follow touched pages; each chunk that spans more than
	 * a GiB of address adds one upper-level table page, so the growth is
	 * per chunk and bounded, never per possible CPU. */
	bench_note("target: page tables not growing with possible CPUs: %.0f KiB at 2, %.0f KiB at 1024 (512x the CPUs: %.2fx) %s",
		   pte_first, pte_last, pte_last / pte_first,
		   pte_last <= pte_first * 2 ? "met" : "NOT MET");
	bench_table_end();
	return bad;
}
