/*
 * harness.c - timing one operation from 1 or 2 pinned threads, and the
 * reference counters every cost table compares against (one shared
 * atomic, a LongAdder-style striped counter).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>

#include "bench.h"

long bench_iters;
int bench_cpus[2];

#define CACHELINE 64
struct padded {
	long v;
	char pad[CACHELINE - sizeof(long)];
} __attribute__((aligned(CACHELINE)));

static long shared_counter __attribute__((aligned(CACHELINE)));
static struct padded stripes[64];
static __thread unsigned stripe_hint;

void bench_op_atomic(void)
{
	for (long i = 0; i < bench_iters; i++)
		__atomic_fetch_add(&shared_counter, 1, __ATOMIC_RELAXED);
}

/* LongAdder: CAS on a stripe; on a failed CAS move to another stripe. */
void bench_op_striped(void)
{
	unsigned h = stripe_hint;
	for (long i = 0; i < bench_iters; i++) {
		struct padded *s = &stripes[h % 64];
		long v = __atomic_load_n(&s->v, __ATOMIC_RELAXED);
		if (!__atomic_compare_exchange_n(&s->v, &v, v + 1, false,
						 __ATOMIC_RELAXED,
						 __ATOMIC_RELAXED)) {
			h = h * 1103515245u + 12345u;
			i--;
		}
	}
	stripe_hint = h;
}

void bench_pick_cpus(void)
{
	cpu_set_t set;
	int n = 0;
	sched_getaffinity(0, sizeof(set), &set);
	for (int c = 0; c < CPU_SETSIZE && n < 2; c++)
		if (CPU_ISSET(c, &set))
			bench_cpus[n++] = c;
	if (n < 2)
		bench_cpus[1] = bench_cpus[0];
}

struct run {
	void (*fn)(void);
	int cpu;
	pthread_barrier_t *bar;
	double secs;
};

static void *runner(void *arg)
{
	struct run *r = arg;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(r->cpu, &set);
	sched_setaffinity(0, sizeof(set), &set);
	stripe_hint = (unsigned)r->cpu * 2654435761u;
	pthread_barrier_wait(r->bar);
	double t0 = bench_now();
	r->fn();
	r->secs = bench_now() - t0;
	return NULL;
}

double bench_measure(void (*fn)(void), int nthreads,
		     void (*before)(void *), void (*after)(void *, int),
		     void *arg)
{
	double best = 1e30;
	for (int rep = 0; rep < 3; rep++) {
		pthread_t t[2];
		struct run r[2];
		pthread_barrier_t bar;
		if (before)
			before(arg);
		pthread_barrier_init(&bar, NULL, (unsigned)nthreads);
		for (int i = 0; i < nthreads; i++) {
			r[i] = (struct run){ fn, bench_cpus[i], &bar, 0 };
			pthread_create(&t[i], NULL, runner, &r[i]);
		}
		double worst = 0;
		for (int i = 0; i < nthreads; i++) {
			pthread_join(t[i], NULL);
			if (r[i].secs > worst)
				worst = r[i].secs;
		}
		pthread_barrier_destroy(&bar);
		if (after)
			after(arg, nthreads);
		double ns = worst * 1e9 / (double)bench_iters;
		if (ns < best)
			best = ns;
	}
	return best;
}
