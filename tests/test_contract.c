/*
 * test_contract.c - the per-CPU contract of pcpu.h, tried the way code
 * ported from the kernel uses it (issue 12's items 1 to 4 and 10):
 *
 *   idiom     per_cpu_ptr on every possible CPU right after alloc_percpu:
 *             every copy is summed, yielded, counted, zeroed at free;
 *   init      pcpu_alloc_init values through pcpu_ptr on CPUs that never
 *             ran anything;
 *   trim      areas written that way from two threads, 99% freed,
 *             pcpu_trim: what stays resident follows the live areas;
 *   nobacking the library's own reads (sums, frees, the validator) back no
 *             page, kernel zero page or not: resident memory never grows
 *             at a free or a sum;
 *   own view  a CPU whose online callbacks failed, or that has more
 *             pcpu_alloc_init areas than anything could copy in a blink,
 *             still reads back what it wrote;
 *   together  threads that start at once (two a simulated CPU) each work
 *             in their own CPU's copy: no index beyond the ones they run
 *             on, and every add in its CPU's copy;
 *   get/put   pcpu_get_cpu_ptr pins, pcpu_put_cpu_ptr restores.
 *
 * Each part runs in a fresh process (this program re-executed with the
 * part's name and environment: simulated topologies must be set before
 * the library starts).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "cpus.h"
#include "internal.h"

static long scale = 1;


static uint64_t backed(void)
{
	struct pcpu_stats st;
	pcpu_stats_get(&st);
	return st.backed_bytes;
}

static uint64_t rng_state = 0x243f6a8885a308d3ULL;
static uint64_t rng(void)
{
	return check_rng(&rng_state);
}

/* ---- idiom: per_cpu_ptr on every possible CPU ---- */

static int part_idiom(void)
{
	int nr = pcpu_nr_cpu_ids(), cpu;
	long *p = pcpu_alloc(sizeof(long), 0);
	REQUIRE(p);
	pcpu_for_each_possible_cpu(cpu)
		*pcpu_ptr(p, cpu) = cpu + 1;
	long want = (long)nr * (nr + 1) / 2;
	CHECK_EQ(pcpu_sum(p), want);
	int yielded = 0;
	pcpu_for_each_cpu(cpu)
		yielded += *pcpu_ptr(p, cpu) != 0;
	CHECK_EQ(yielded, nr);
	struct pcpu_stats st;
	pcpu_stats_get(&st);
	CHECK_EQ(st.nr_used_cpus, nr);
	CHECK(st.backed_bytes >= (uint64_t)nr * 4096);
	/* the area is zeroed everywhere before its space comes back */
	pcpu_free(p);
	long bad = 0;
	long *q[256];
	for (int i = 0; i < 256; i++) {
		q[i] = pcpu_alloc(sizeof(long), 0);
		REQUIRE(q[i]);
		pcpu_for_each_possible_cpu(cpu)
			bad += *pcpu_ptr(q[i], cpu) != 0;
	}
	CHECK_EQ(bad, 0);
	for (int i = 0; i < 256; i++)
		pcpu_free(q[i]);
	/* a larger area the same */
	char *big = pcpu_alloc(3000, 8);
	REQUIRE(big);
	pcpu_for_each_possible_cpu(cpu)
		memset(pcpu_ptr(big, cpu), 0x5a, 3000);
	pcpu_free(big);
	big = pcpu_alloc(3000, 8);
	REQUIRE(big);
	pcpu_for_each_possible_cpu(cpu)
		for (int i = 0; i < 3000; i++)
			bad += pcpu_ptr(big, cpu)[i] != 0;
	CHECK_EQ(bad, 0);
	pcpu_free(big);
	CHECK_EQ(pcpu_validate(), 0);
	return check_done();
}

/* ---- init: pcpu_alloc_init through pcpu_ptr ---- */

static int part_init(void)
{
	int nr = pcpu_nr_cpu_ids(), cpu;
	long init = 42;
	char binit[300];
	for (size_t i = 0; i < sizeof(binit); i++)
		binit[i] = (char)(i * 7 + 1);
	long *p = pcpu_alloc_init(sizeof(long), 0, &init);
	char *b = pcpu_alloc_init(sizeof(binit), 8, binit);
	REQUIRE(p && b);
	long bad = 0;
	pcpu_for_each_possible_cpu(cpu) {
		bad += *pcpu_ptr(p, cpu) != 42;
		bad += memcmp(pcpu_ptr(b, cpu), binit, sizeof(binit)) != 0;
	}
	CHECK_EQ(bad, 0);
	CHECK_EQ(pcpu_sum(p), 42L * nr);
	pcpu_free(p);
	pcpu_free(b);
	CHECK_EQ(pcpu_validate(), 0);
	return check_done();
}

/* ---- trim: the pattern of a million areas, written that way ---- */

struct trim_job {
	long **areas;
	size_t n;
	int cpu; /* the real CPU the thread pins itself to, -1 none */
	int half;
};

static void *trim_writer(void *arg)
{
	struct trim_job *j = arg;
	int cpu;
	if (j->cpu >= 0)
		pin_self(j->cpu);
	for (size_t i = (size_t)j->half; i < j->n; i += 2)
		pcpu_for_each_possible_cpu(cpu)
			*pcpu_ptr(j->areas[i], cpu) = (long)i + 1;
	return NULL;
}

static int cmp_ul(const void *a, const void *b)
{
	unsigned long x = *(const unsigned long *)a,
		      y = *(const unsigned long *)b;
	return x < y ? -1 : x > y;
}

static int part_trim(void)
{
	/* 512-byte areas, 8 a page: 1% left leaves most pages empty */
	int nr = pcpu_nr_cpu_ids();
	size_t n = (size_t)(8000 / scale);
	long **areas = malloc(n * sizeof(*areas));
	REQUIRE(areas);
	long rss0 = check_rss_kib();
	for (size_t i = 0; i < n; i++) {
		areas[i] = pcpu_alloc(512, 0);
		REQUIRE(areas[i]);
	}
	pthread_t t[2];
	struct trim_job j[2];
	for (int k = 0; k < 2; k++) {
		j[k] = (struct trim_job){ areas, n,
					  nr_real_cpus > k ? real_cpus[k] : -1,
					  k };
		REQUIRE(pthread_create(&t[k], NULL, trim_writer, &j[k]) == 0);
	}
	for (int k = 0; k < 2; k++)
		pthread_join(t[k], NULL);
	long rss1 = check_rss_kib();
	/* free 99%, scattered */
	size_t live = 0;
	unsigned long *pages = malloc(n * sizeof(*pages));
	REQUIRE(pages);
	long want = 0;
	for (size_t i = 0; i < n; i++) {
		if (rng() % 100 == 0) {
			areas[live] = areas[i];
			pages[live] = (unsigned long)areas[i] / 4096;
			want += (long)(i + 1) * nr;
			live++;
		} else {
			pcpu_free(areas[i]);
		}
	}
	CHECK_EQ(pcpu_trim() >= 0, 1);
	long rss2 = check_rss_kib();
	struct pcpu_stats st;
	pcpu_stats_get(&st);
	/* the floor: every page that holds a live area, on every index */
	qsort(pages, live, sizeof(*pages), cmp_ul);
	size_t npages = 0;
	for (size_t i = 0; i < live; i++)
		npages += !i || pages[i] != pages[i - 1];
	long floor_kib = (long)(npages * (size_t)nr * 4);
	fprintf(stderr,
		"trim: %zu areas on %d indexes: rss +%ld KiB written, +%ld KiB "
		"after 99%% freed and trim; floor %ld KiB (%zu live pages); "
		"backed %llu KiB, %d indexes in use\n",
		n, nr, rss1 - rss0, rss2 - rss0, floor_kib, npages,
		(unsigned long long)st.backed_bytes / 1024, st.nr_used_cpus);
	CHECK_EQ(st.nr_used_cpus, nr);
	CHECK(st.backed_bytes / 1024 >= (uint64_t)floor_kib);
	CHECK(st.backed_bytes / 1024 <= (uint64_t)floor_kib * 5 / 4 + 64);
#if !defined(PCPU_TEST_LSAN) && !PCPU_TEST_TSAN /* sanitizers' shadow */
	CHECK(rss2 - rss0 <= floor_kib * 3 / 2 + 4096);
#endif
	long sum = 0;
	for (size_t i = 0; i < live; i++)
		sum += pcpu_sum(areas[i]);
	CHECK_EQ(sum, want);
	for (size_t i = 0; i < live; i++)
		pcpu_free(areas[i]);
	free(pages);
	free(areas);
	CHECK_EQ(pcpu_validate(), 0);
	return check_done();
}

/* ---- nobacking: the library's reads back no page ---- */

static long *warm;
static void *as_cpu_add(void *arg)
{
	int cpu = (int)(intptr_t)arg;
	CHECK_EQ(pcpu_sim_set_cpu(cpu), 0);
	pcpu_add(warm, 1L);
	return NULL;
}

static long **objs;
static size_t nobjs;
static char *big;
static void *as_cpu_write(void *arg)
{
	int cpu = (int)(intptr_t)arg;
	CHECK_EQ(pcpu_sim_set_cpu(cpu), 0);
	for (size_t i = 0; i < nobjs; i++)
		pcpu_write(objs[i], (long)i + 1);
	for (size_t off = 0; off < 256 * 1024; off += 64)
		pcpu_write((long *)(big + off), 7L);
	return NULL;
}

static void run_as(int cpu, void *(*fn)(void *))
{
	pthread_t t;
	REQUIRE(pthread_create(&t, NULL, fn, (void *)(intptr_t)cpu) == 0);
	pthread_join(t, NULL);
}

static int part_nobacking(void)
{
	/* indexes 0..15 in use, then areas written only as CPU 5 */
	warm = pcpu_alloc(sizeof(long), 0);
	REQUIRE(warm);
	for (int c = 0; c < 16; c++)
		run_as(c, as_cpu_add);
	nobjs = (size_t)(20000 / scale);
	objs = malloc(nobjs * sizeof(*objs));
	REQUIRE(objs);
	for (size_t i = 0; i < nobjs; i++) {
		objs[i] = pcpu_alloc(sizeof(long), 0);
		REQUIRE(objs[i]);
	}
	big = pcpu_alloc(256 * 1024, 4096);
	REQUIRE(big);
	run_as(5, as_cpu_write);
	uint64_t b0 = backed();
	long r0 = check_rss_kib();
	long sum = 0;
	for (size_t i = 0; i < nobjs; i++)
		sum += pcpu_sum(objs[i]);
	CHECK_EQ(sum, (long)(nobjs * (nobjs + 1) / 2));
	CHECK_EQ(pcpu_sum((long *)big), 7);
	CHECK_EQ(pcpu_validate(), 0);
	uint64_t b1 = backed();
	long r1 = check_rss_kib();
	for (size_t i = 0; i < nobjs; i++)
		pcpu_free(objs[i]);
	pcpu_free(big);
	pcpu_drain(0); /* pended frees zeroed */
	CHECK_EQ(pcpu_validate(), 0);
	uint64_t b2 = backed();
	long r2 = check_rss_kib();
	fprintf(stderr,
		"nobacking: written as cpu 5 of 16: backed %llu KiB, after "
		"sums %llu, after frees %llu; rss %ld, %ld, %ld KiB\n",
		(unsigned long long)b0 / 1024, (unsigned long long)b1 / 1024,
		(unsigned long long)b2 / 1024, r0, r1, r2);
	CHECK(b1 <= b0);
	CHECK(b2 <= b0);
#if !defined(PCPU_TEST_LSAN) && !PCPU_TEST_TSAN /* sanitizers' shadow */
	CHECK(r1 <= r0 + 512); /* malloc and stack noise only */
	CHECK(r2 <= r0 + 512);
#endif
	return check_done();
}

/* ---- own view: write, then read on the same CPU ---- */

static int fail_online(int cpu, void *arg)
{
	(void)arg;
	return cpu == 70 ? -EIO : 0;
}

static long *view;
static long got;
static int got_this;
static void *as_cpu_write_read(void *arg)
{
	int cpu = (int)(intptr_t)arg;
	CHECK_EQ(pcpu_sim_set_cpu(cpu), 0);
	pcpu_write(view, 5L);
	got = pcpu_read(view);
	got_this = pcpu_this_cpu();
	return NULL;
}

static long **inits;
static size_t ninits;
static long init_bad;
static void *as_cpu_read_inits(void *arg)
{
	int cpu = (int)(intptr_t)arg;
	CHECK_EQ(pcpu_sim_set_cpu(cpu), 0);
	for (size_t i = 0; i < ninits; i++)
		init_bad += pcpu_read(inits[i]) != 9;
	return NULL;
}

static int part_ownview(void)
{
	/* a CPU whose online callback fails */
	int h = pcpu_hotplug_register("fail70", fail_online, NULL, NULL);
	REQUIRE(h >= 0);
	view = pcpu_alloc(sizeof(long), 0);
	REQUIRE(view);
	CHECK_EQ(pcpu_sim_cpu_online(70), -EIO);
	run_as(70, as_cpu_write_read);
	CHECK_EQ(got, 5);
	CHECK_EQ(got_this, 70);
	CHECK_EQ(*pcpu_ptr(view, 70), 5);
	CHECK_EQ(pcpu_sum(view), 5);
	/* a CPU that never ran, with callbacks registered (they run later) */
	run_as(90, as_cpu_write_read);
	CHECK_EQ(got, 5);
	CHECK_EQ(got_this, 90);
	CHECK_EQ(pcpu_sum(view), 10);
	CHECK_EQ(pcpu_hotplug_unregister(h), 0);
	/* more pcpu_alloc_init areas than a blink's worth of copying */
	ninits = (size_t)(6000 / scale);
	inits = malloc(ninits * sizeof(*inits));
	REQUIRE(inits);
	long nine = 9;
	for (size_t i = 0; i < ninits; i++) {
		inits[i] = pcpu_alloc_init(sizeof(long), 0, &nine);
		REQUIRE(inits[i]);
	}
	run_as(100, as_cpu_read_inits);
	CHECK_EQ(init_bad, 0);
	CHECK_EQ(pcpu_sim_cpu_online(101), 0);
	run_as(101, as_cpu_read_inits);
	CHECK_EQ(init_bad, 0);
	for (size_t i = 0; i < ninits; i++)
		pcpu_free(inits[i]);
	pcpu_free(view);
	CHECK_EQ(pcpu_validate(), 0);
	return check_done();
}

/* ---- together: threads that start at once ---- */

#define TOGETHER 16
static pthread_barrier_t together_bar;
static long *together_area;
static int together_this[TOGETHER];

static void *together_main(void *arg)
{
	int i = (int)(intptr_t)arg;
	if (getenv("PCPU_SIM_POSSIBLE")) /* two threads a CPU: each finds
					    the other bringing it up */
		CHECK_EQ(pcpu_sim_set_cpu(200 + i / 2), 0);
	else
		pin_self(real_cpus[i % nr_real_cpus]);
	pthread_barrier_wait(&together_bar);
	pcpu_add(together_area, 1L);
	together_this[i] = pcpu_this_cpu();
	return NULL;
}

static int part_together(void)
{
	bool sim = getenv("PCPU_SIM_POSSIBLE") != NULL;
	int n = sim ? TOGETHER : (nr_real_cpus < 4 ? 4 : nr_real_cpus);
	if (n > TOGETHER)
		n = TOGETHER;
	together_area = pcpu_alloc(sizeof(long), 0);
	REQUIRE(together_area);
	pthread_t t[TOGETHER];
	REQUIRE(pthread_barrier_init(&together_bar, NULL, (unsigned)n) == 0);
	for (int i = 0; i < n; i++)
		REQUIRE(pthread_create(&t[i], NULL, together_main,
				       (void *)(intptr_t)i) == 0);
	for (int i = 0; i < n; i++)
		pthread_join(t[i], NULL);
	CHECK_EQ(pcpu_sum(together_area), n);
	/* each thread's index is its CPU; nothing else came into use */
	struct pcpu_cpuset want;
	_pcpu_cpuset_zero(&want);
	int on[PCPU_MAX_CPUS] = { 0 };
	for (int i = 0; i < n; i++) {
		int expect = sim ? 200 + i / 2 : real_cpus[i % nr_real_cpus];
		CHECK_EQ(together_this[i], expect);
		_pcpu_cpuset_set(&want, expect);
		on[expect]++;
	}
	/* and each add landed in its own CPU's copy */
	for (int c = 0; c < pcpu_nr_cpu_ids(); c++)
		if (on[c])
			CHECK_EQ(*pcpu_ptr(together_area, c), on[c]);
	int cpu, extra = 0;
	pcpu_for_each_cpu(cpu)
		extra += !_pcpu_cpuset_test(&want, cpu) &&
			 (!sim || cpu >= 200) && cpu >= 0;
	CHECK_EQ(extra, 0);
	return check_done();
}

/* ---- get/put ---- */

static int reports;
static void count_report(const char *what, const void *ptr, void *arg)
{
	(void)what, (void)ptr, (void)arg;
	reports++;
}

static int part_getput(void)
{
	long *p = pcpu_alloc(sizeof(long), 0);
	REQUIRE(p);
	cpu_set_t before, during, after;
	REQUIRE(sched_getaffinity(0, sizeof(before), &before) == 0);
	long *mine = pcpu_get_cpu_ptr(p);
	REQUIRE(sched_getaffinity(0, sizeof(during), &during) == 0);
	CHECK_EQ(CPU_COUNT(&during), 1);
	int cpu = sched_getcpu();
	CHECK(CPU_ISSET(cpu, &during));
	CHECK(mine == pcpu_ptr(p, cpu));
	long *nested = pcpu_get_cpu_ptr(p);
	CHECK(nested == mine);
	__atomic_fetch_add(mine, 3, __ATOMIC_RELAXED);
	pcpu_add(p, 4L); /* the same CPU: the same copy */
	CHECK_EQ(*mine, 7);
	pcpu_put_cpu_ptr(p);
	REQUIRE(sched_getaffinity(0, sizeof(after), &after) == 0);
	CHECK(CPU_EQUAL(&after, &during)); /* still pinned: nested */
	pcpu_put_cpu_ptr(p);
	REQUIRE(sched_getaffinity(0, sizeof(after), &after) == 0);
	CHECK(CPU_EQUAL(&after, &before));
	CHECK_EQ(pcpu_sum(p), 7);
	/* an unpaired put is reported */
	pcpu_set_error_handler(count_report, NULL);
	pcpu_put_cpu_ptr(p);
	CHECK_EQ(reports, 1);
	pcpu_set_error_handler(NULL, NULL);
	pcpu_free(p);
	/* online CPUs: at least the one running */
	int online = 0, c;
	pcpu_for_each_online_cpu(c)
		online += c >= 0 && c < pcpu_nr_cpu_ids();
	CHECK(online >= 1);
	int possible = 0;
	pcpu_for_each_possible_cpu(c)
		possible++;
	CHECK_EQ(possible, pcpu_nr_cpu_ids());
	return check_done();
}

/* ---- the parts, each in a fresh process ---- */

struct part {
	const char *name;
	int (*fn)(void);
	const char *env[4];
};

static const struct part parts[] = {
	{ "idiom", part_idiom, { "PCPU_SIM_POSSIBLE=64", NULL } },
	{ "idiom-real", part_idiom, { NULL } },
	{ "idiom-nocache", part_idiom,
	  { "PCPU_SIM_POSSIBLE=64", "PCPU_CACHE=none", NULL } },
	{ "idiom-cid", part_idiom, { "PCPU_INDEX=cid", NULL } },
	{ "init", part_init,
	  { "PCPU_SIM_POSSIBLE=1024", "PCPU_SIM_ONLINE=0-15", NULL } },
	{ "init-real", part_init, { NULL } },
	{ "trim", part_trim, { "PCPU_SIM_POSSIBLE=64", NULL } },
	{ "nobacking", part_nobacking,
	  { "PCPU_SIM_POSSIBLE=64", "PCPU_BALANCE=0", NULL } },
	{ "nobacking-nocache", part_nobacking,
	  { "PCPU_SIM_POSSIBLE=64", "PCPU_BALANCE=0", "PCPU_CACHE=none",
	    NULL } },
	{ "ownview", part_ownview,
	  { "PCPU_SIM_POSSIBLE=1024", "PCPU_SIM_ONLINE=0-15",
	    "PCPU_BALANCE=0", NULL } },
	{ "together-sim", part_together,
	  { "PCPU_SIM_POSSIBLE=1024", "PCPU_SIM_ONLINE=0-15", NULL } },
	{ "together", part_together, { NULL } },
	{ "getput", part_getput, { NULL } },
};
#define NR_PARTS (sizeof(parts) / sizeof(parts[0]))

static int run_part(const struct part *p)
{
	fflush(stderr);
	pid_t pid = fork();
	REQUIRE(pid >= 0);
	if (pid == 0) {
		exec_self_with_env(check_self_exe(), p->name, p->env);
		_exit(127);
	}
	int st = 0;
	REQUIRE(waitpid(pid, &st, 0) == pid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int main(int argc, char **argv)
{
	const char *s = getenv("PCPU_TEST_SCALE");
	if (s && !strcmp(s, "valgrind"))
		scale = 20;
	if (PCPU_TEST_TSAN)
		scale = scale < 4 ? 4 : scale;
	real_cpus_init();
	if (argc == 2) {
		for (size_t i = 0; i < NR_PARTS; i++)
			if (!strcmp(argv[1], parts[i].name))
				return parts[i].fn();
		fprintf(stderr, "test_contract: no part %s\n", argv[1]);
		return 2;
	}
	for (size_t i = 0; i < NR_PARTS; i++) {
		/* two threads starting at once: a race, so several tries */
		int tries = !strncmp(parts[i].name, "together", 8) ? 10 : 1;
		for (int t = 0; t < tries; t++) {
			int rc = run_part(&parts[i]);
			if (rc)
				fprintf(stderr, "part %s: exit %d\n",
					parts[i].name, rc);
			CHECK_EQ(rc, 0);
			if (rc)
				break;
		}
	}
	return check_done();
}
