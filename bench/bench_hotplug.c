/*
 * bench_hotplug.c - pcpu-bench hotplug: Bharata B Rao's RFC table, and
 * the cost of a CPU coming online.
 *
 * Runs in a child simulating 1024 possible CPUs of which 0-15 are online
 * (the RFC's powerpc KVM guest), without the balance worker (its passes
 * would add their own pauses to the latencies measured).
 *
 * 1. Percpu memory.  The RFC measured /proc/meminfo "Percpu" before and
 *    after creating 1000 memory cgroups: the kernel backs every possible
 *    CPU's copy, the patch only online CPUs'.  Model:
 *      - "before": the boot-time per-CPU data, sized so that the kernel
 *        model matches the RFC's 1441792 kB for 1024 CPUs (1408 kB per
 *        CPU, as 11 areas of 128 kB), written on each online CPU;
 *      - a memcg-like object: the per-CPU allocations a memory cgroup
 *        makes (Linux 5.13, x86_64, one NUMA node): struct
 *        memcg_vmstats_percpu (state[41], events[96], state_prev[41],
 *        events_prev[96], nr_page_events, targets[3]: 2224 bytes), one
 *        lruvec_stats_percpu (state[40] and state_prev[40]: 640 bytes),
 *        cgroup_rstat_cpu (80 bytes) and two percpu_ref counts (8 bytes
 *        each): 2960 bytes per CPU in 5 allocations; the RFC's own
 *        figures give (4390912 - 1441792) kB / 1000 / 1024 = 2.88 kB.
 *        Every word is written on each of the 16 online CPUs (pcpu_add).
 *    Percpu for libpcpu is pcpu_stats_get().backed_bytes (mincore of the
 *    units of used CPUs); the kernel model is every populated page of the
 *    unit layout (pop_pages) backed on all 1024 possible CPUs.  Target:
 *    libpcpu within 1.1x of (kernel model x 16/1024).
 * 2. A CPU coming online with 100k live pcpu_alloc_init areas (one online
 *    callback registered): pcpu_sim_cpu_online, worst of 5 CPUs (target
 *    < 50 ms), and pcpu_sim_cpu_offline; meanwhile 2 threads (on another
 *    real CPU when there is one) allocate and free: the longest single
 *    pcpu_alloc/pcpu_free, less the time its thread waited for a CPU
 *    (target: none blocked longer than 1 ms), the longest stretch the
 *    hotplug side held a lock that alloc or free may wait for (the
 *    allocator lock while it scans or discards a unit, the init table's
 *    while it fills one: only frees of pcpu_alloc_init areas take it;
 *    same target), and the same threads' longest call in an equal window
 *    without hotplug.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "bench.h"
#include "internal.h"
#include "pcpu/pcpu.h"

#define ONLINE 16
#define NR_MEMCG 1000
#define BOOT_AREAS 11
#define BOOT_AREA_SIZE (128 * 1024)

static const size_t memcg_sizes[] = { 2224, 640, 80, 8, 8 };
#define MEMCG_ALLOCS (sizeof(memcg_sizes) / sizeof(memcg_sizes[0]))

static void *boot[BOOT_AREAS];
static void *memcg[NR_MEMCG][MEMCG_ALLOCS];

struct writer {
	int cpu;
	bool boot;
};

static void *write_cpu(void *arg)
{
	struct writer *w = arg;
	pcpu_sim_set_cpu(w->cpu);
	if (w->boot) {
		for (int i = 0; i < BOOT_AREAS; i++) {
			pcpu_add((long *)boot[i], 1L); /* makes the CPU ready */
			memset(pcpu_ptr((char *)boot[i], w->cpu), 1,
			       BOOT_AREA_SIZE);
		}
	} else {
		for (int m = 0; m < NR_MEMCG; m++)
			for (size_t a = 0; a < MEMCG_ALLOCS; a++)
				for (size_t o = 0; o < memcg_sizes[a]; o += 8)
					pcpu_add((long *)((char *)memcg[m][a] + o),
						 1L);
	}
	pcpu_sim_set_cpu(-1);
	return NULL;
}

static void write_online(bool is_boot)
{
	pthread_t t[ONLINE];
	struct writer w[ONLINE];
	for (int c = 0; c < ONLINE; c++) {
		w[c].cpu = c;
		w[c].boot = is_boot;
		pthread_create(&t[c], NULL, write_cpu, &w[c]);
	}
	for (int c = 0; c < ONLINE; c++)
		pthread_join(t[c], NULL);
}

static double kb(double bytes)
{
	return bytes / 1024.0;
}

static int memory_table(void)
{
	struct pcpu_stats s0, s1, s2;
	long page = sysconf(_SC_PAGESIZE);
	int possible = pcpu_nr_cpu_ids(), bad = 0;

	pcpu_stats_get(&s0);
	for (int i = 0; i < BOOT_AREAS; i++)
		if (!(boot[i] = pcpu_alloc(BOOT_AREA_SIZE, (size_t)page)))
			bad = 1;
	if (!bad)
		write_online(true);
	pcpu_stats_get(&s1);
	for (int m = 0; m < NR_MEMCG && !bad; m++)
		for (size_t a = 0; a < MEMCG_ALLOCS; a++)
			if (!(memcg[m][a] = pcpu_alloc(memcg_sizes[a], 8)))
				bad = 1;
	if (!bad)
		write_online(false);
	pcpu_stats_get(&s2);
	long wrong = 0;
	for (int m = 0; m < NR_MEMCG && !bad; m += 37)
		wrong += pcpu_sum((long *)memcg[m][0]) != ONLINE;

	/* kB: kernel model (every possible CPU), libpcpu (measured) */
	double k_before = kb((double)(s1.pop_pages - s0.pop_pages) * page *
			     possible);
	double k_after = kb((double)(s2.pop_pages - s0.pop_pages) * page *
			    possible);
	double l_before = kb((double)(s1.backed_bytes - s0.backed_bytes));
	double l_after = kb((double)(s2.backed_bytes - s0.backed_bytes));
	double ideal = (double)ONLINE / possible;
	static const double rfc_wo[3] = { 1441792, 4390912, 4390912 - 1441792 };
	static const double rfc_w[3] = { 22528, 68608, 68608 - 22528 };
	double k[3] = { k_before, k_after, k_after - k_before };
	double l[3] = { l_before, l_after, l_after - l_before };
	static const char *const rows[3] = { "Before", "After 1000 memcgs",
					      "Delta (1000 memcgs)" };
	static const char *const cols[] = {
		"Percpu", "kernel model kB", "libpcpu kB", "RFC w/o patch kB",
		"RFC w/ patch kB", "libpcpu / (model x 16/1024)"
	};
	bench_table("hotplug", "Percpu memory: 1024 possible CPUs, 16 online",
		    6, cols);
	for (int r = 0; r < 3; r++) {
		bench_cell_str(rows[r]);
		bench_cell_num("%.0f", k[r]);
		bench_cell_num("%.0f", l[r]);
		bench_cell_num("%.0f", rfc_wo[r]);
		bench_cell_num("%.0f", rfc_w[r]);
		bench_cell_num("%.3f", k[r] > 0 ? l[r] / (k[r] * ideal) : 0);
		bench_row_end();
	}
	double ratio = k_after > 0 ? l_after / (k_after * ideal) : 99;
	bench_note("model: boot data 1408 kB/CPU (11 x 128 kB), memcg %d B/CPU "
		   "in %zu allocations (Linux 5.13 sizes); written on CPUs 0-15",
		   2960, MEMCG_ALLOCS);
	bench_note("used indexes %d (the 16 CPUs written on); "
		   "sums %s",
		   s2.nr_used_cpus, wrong || bad ? "WRONG" : "exact");
	bench_note("target: libpcpu after <= 1.1 x kernel model x 16/1024: "
		   "%.3fx %s",
		   ratio, ratio <= 1.1 && !wrong && !bad ? "met" : "NOT MET");
	bench_table_end();
	for (int m = 0; m < NR_MEMCG; m++)
		for (size_t a = 0; a < MEMCG_ALLOCS; a++)
			pcpu_free(memcg[m][a]);
	for (int i = 0; i < BOOT_AREAS; i++)
		pcpu_free(boot[i]);
	return bad || wrong || ratio > 1.1;
}

/* ---- bring-up latency ---- */

/*
 * What a call waited for besides a CPU: its wall time minus the time its
 * thread spent runnable but not running (run_delay in
 * /proc/thread-self/schedstat), i.e. running plus sleeping on a lock.
 * With more threads than CPUs (and other processes, VM steal) a thread
 * woken when a lock frees may wait for a CPU for a whole time slice: that
 * is the machine, not the lock holder.
 */
struct churn {
	int cpu, real_cpu;
	volatile int *stop;
	volatile int *measure; /* 0: idle, 1: during hotplug, 2: baseline */
	double max_alloc[3], max_free[3], max_wall[3];
	long calls;
};

static long long run_delay(int fd)
{
	char buf[128];
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
	long long exec = 0, delay = 0;
	if (n <= 0)
		return 0;
	buf[n] = 0;
	sscanf(buf, "%lld %lld", &exec, &delay);
	return delay;
}

static void *churn_main(void *arg)
{
	struct churn *c = arg;
	enum { RING = 256 };
	void *ring[RING] = { 0 };
	unsigned long n = 0;
	int fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
	pcpu_sim_set_cpu(c->cpu);
	if (c->real_cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(c->real_cpu, &set);
		sched_setaffinity(0, sizeof(set), &set);
	}
	while (!*c->stop) {
		int m = *c->measure;
		size_t i = n % RING, size = 8 << (n % 5);
		long long d0 = run_delay(fd);
		double t0 = bench_now();
		pcpu_free(ring[i]);
		double t1 = bench_now();
		long long d1 = run_delay(fd);
		double t2 = bench_now();
		ring[i] = pcpu_alloc(size, 0);
		double t3 = bench_now();
		long long d2 = run_delay(fd);
		double f = t1 - t0 - (d1 - d0) * 1e-9;
		double a = t3 - t2 - (d2 - d1) * 1e-9;
		if (f > c->max_free[m])
			c->max_free[m] = f;
		if (a > c->max_alloc[m])
			c->max_alloc[m] = a;
		if (t1 - t0 > c->max_wall[m])
			c->max_wall[m] = t1 - t0;
		if (t3 - t2 > c->max_wall[m])
			c->max_wall[m] = t3 - t2;
		n++;
	}
	for (int i = 0; i < RING; i++)
		pcpu_free(ring[i]);
	c->calls = (long)n * 2;
	if (fd >= 0)
		close(fd);
	pcpu_sim_set_cpu(-1);
	return NULL;
}

static int cb_online(int cpu, void *arg)
{
	(void)cpu;
	__atomic_add_fetch((long *)arg, 1, __ATOMIC_RELAXED);
	return 0;
}


/* A row "what | worst ms | | < 1 ms | met": the 1 ms latency target. */
static void ms_row(const char *what, double secs)
{
	bench_cell_str(what);
	bench_cell_num("%.3f", secs * 1e3);
	bench_cell_str("");
	bench_cell_str("< 1 ms");
	bench_cell_str(secs < 0.001 ? "met" : "NOT MET");
	bench_row_end();
}
static int bringup_table(void)
{
	long nr = bench_quick ? 20000 : 100000, calls = 0;
	long init = 0x5eed;
	long **areas = malloc((size_t)nr * sizeof(*areas));
	int bad = !areas;
	for (long i = 0; i < nr && !bad; i++)
		if (!(areas[i] = pcpu_alloc_init(sizeof(long), 0, &init)))
			bad = 1;
	int h = pcpu_hotplug_register("bench", cb_online, NULL, &calls);
	bad |= h < 0;

	/* with two real CPUs or more: the hotplug thread on one, the
	 * allocating threads on the others */
	cpu_set_t orig, set;
	int real[2] = { -1, -1 }, nreal = 0;
	sched_getaffinity(0, sizeof(orig), &orig);
	for (int c = 0; c < CPU_SETSIZE && nreal < 2; c++)
		if (CPU_ISSET(c, &orig))
			real[nreal++] = c;
	if (nreal == 2) {
		CPU_ZERO(&set);
		CPU_SET(real[0], &set);
		sched_setaffinity(0, sizeof(set), &set);
	}

	volatile int stop = 0, measure = 0;
	struct churn ch[2];
	pthread_t t[2];
	memset(ch, 0, sizeof(ch));
	for (int i = 0; i < 2; i++) {
		ch[i].real_cpu = nreal == 2 ? real[1] : -1;
		ch[i].cpu = i;
		ch[i].stop = &stop;
		ch[i].measure = &measure;
		pthread_create(&t[i], NULL, churn_main, &ch[i]);
	}
	usleep(20000);
	_pcpu_hotplug_lock_hold_max_ns(false, true);
	_pcpu_hotplug_lock_hold_max_ns(true, true);

	enum { N = 5 };
	double up[N], down[N], up_max = 0, down_max = 0, up_sum = 0;
	double t_hot = 0;
	int errors = 0;
	long wrong = 0;
	for (int i = 0; i < N; i++) {
		int cpu = 100 + i;
		measure = 1;
		double t0 = bench_now();
		errors += pcpu_sim_cpu_online(cpu) != 0;
		double t1 = bench_now();
		measure = 0;
		for (long k = 0; k < nr; k += 997)
			wrong += *pcpu_ptr(areas[k], cpu) != init;
		measure = 1;
		double t2 = bench_now();
		errors += pcpu_sim_cpu_offline(cpu) != 0;
		double t3 = bench_now();
		measure = 0;
		up[i] = t1 - t0;
		down[i] = t3 - t2;
		t_hot += up[i] + down[i];
		up_sum += up[i];
		if (up[i] > up_max)
			up_max = up[i];
		if (down[i] > down_max)
			down_max = down[i];
		usleep(5000);
	}
	double hold = _pcpu_hotplug_lock_hold_max_ns(false, false) * 1e-9;
	double hold_cpu = _pcpu_hotplug_lock_hold_max_ns(true, false) * 1e-9;
	/* the same threads, the same pattern (this thread busy as long as
	 * the hotplug operations took, in 5 ms pauses), no hotplug */
	measure = 2;
	for (int i = 0; i < N; i++) {
		double e = bench_now() + up[i] + down[i];
		while (bench_now() < e)
			;
		usleep(5000);
	}
	measure = 0;
	stop = 1;
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	sched_setaffinity(0, sizeof(orig), &orig);

	double a_hot = 0, f_hot = 0, a_base = 0, f_base = 0;
	double w_hot = 0, w_base = 0;
	long churn_calls = 0;
	for (int i = 0; i < 2; i++) {
		if (ch[i].max_wall[1] > w_hot)
			w_hot = ch[i].max_wall[1];
		if (ch[i].max_wall[2] > w_base)
			w_base = ch[i].max_wall[2];
		if (ch[i].max_alloc[1] > a_hot)
			a_hot = ch[i].max_alloc[1];
		if (ch[i].max_free[1] > f_hot)
			f_hot = ch[i].max_free[1];
		if (ch[i].max_alloc[2] > a_base)
			a_base = ch[i].max_alloc[2];
		if (ch[i].max_free[2] > f_base)
			f_base = ch[i].max_free[2];
		churn_calls += ch[i].calls;
	}

	char title[96];
	snprintf(title, sizeof(title),
		 "a CPU coming online with %ldk live pcpu_alloc_init areas", nr / 1000);
	static const char *const cols[] = { "operation", "worst ms", "mean ms",
					    "target", "result" };
	bench_table("hotplug", title, 5, cols);
	bench_cell_str("pcpu_sim_cpu_online");
	bench_cell_num("%.2f", up_max * 1e3);
	bench_cell_num("%.2f", up_sum / N * 1e3);
	bench_cell_str("< 50 ms");
	bench_cell_str(up_max < 0.050 && !errors && !wrong ? "met" : "NOT MET");
	bench_row_end();
	bench_cell_str("pcpu_sim_cpu_offline");
	bench_cell_num("%.2f", down_max * 1e3);
	bench_cell_str("");
	bench_cell_str("");
	bench_cell_str("");
	bench_row_end();
	ms_row("longest pcpu_alloc meanwhile", a_hot);
	ms_row("longest pcpu_free meanwhile", f_hot);
	ms_row("longest lock hold by hotplug, CPU time", hold_cpu);
	bench_cell_str("... the same, wall time");
	bench_cell_num("%.3f", hold * 1e3);
	bench_cell_str("");
	bench_cell_str("(the machine)");
	bench_cell_str("");
	bench_row_end();
	bench_cell_str("longest alloc / free, no hotplug");
	bench_cell_num("%.3f", (a_base > f_base ? a_base : f_base) * 1e3);
	bench_cell_str("");
	bench_cell_str("(noise floor)");
	bench_cell_str("");
	bench_row_end();
	bench_cell_str("... wall time (CPU waits included)");
	bench_cell_num("%.3f", w_hot * 1e3);
	bench_cell_num("%.3f", w_base * 1e3);
	bench_cell_str("(hotplug, none)");
	bench_cell_str("");
	bench_row_end();
	bench_note("%d bring-ups and take-downs of CPUs 100-104 (an online "
		   "callback registered: %ld calls); %ld alloc/free calls by 2 "
		   "threads (%s) meanwhile",
		   N, calls, churn_calls,
		   nreal == 2 ? "on another real CPU" : "sharing one real CPU");
	bench_note("initial values on the new CPUs: %s; errors %d",
		   wrong ? "WRONG" : "all correct", errors);
	bench_note("call latency = wall time - time runnable without a CPU "
		   "(schedstat run_delay): running plus waiting for a lock");
	bench_note("locks: the allocator's (scan, discard) or the init "
		   "table's (fill: <= 4096 values / 64 pages a batch)");
	bench_note("a holder descheduled by the machine (other processes, VM "
		   "steal) shows as wall >> CPU time of a hold");
	bench_table_end();
	pcpu_hotplug_unregister(h);
	for (long i = 0; areas && i < nr; i++)
		pcpu_free(areas[i]);
	free(areas);
	return bad || errors || wrong || up_max >= 0.050 || a_hot >= 0.001 ||
	       f_hot >= 0.001 || hold_cpu >= 0.001;
}

static int hotplug_child(void)
{
	if (pcpu_nr_cpu_ids() != 1024) {
		fprintf(stderr, "pcpu-bench hotplug: not simulated\n");
		return 1;
	}
	int r = memory_table();
	r |= bringup_table();
	return r;
}

int bench_hotplug(int argc, char **argv)
{
	if (argc > 0 && !strcmp(argv[0], "--child"))
		return hotplug_child();
	static const char *const env[] = { "PCPU_SIM_POSSIBLE=1024",
					   "PCPU_SIM_ONLINE=0-15",
					   "PCPU_BALANCE=0", NULL };
	static const char *const args[] = { "hotplug", "--child", NULL };
	int r = bench_reexec(env, args);
	if (r)
		fprintf(stderr, "\npcpu-bench hotplug: a target was not met or "
				"the child failed (%d)\n",
			r);
	return r;
}
