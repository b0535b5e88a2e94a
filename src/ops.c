/*
 * ops.c - the slow paths of the this-CPU operations (include/pcpu/ops.h):
 * add, write, read, and, or, add_return, xchg, cmpxchg and sum on every
 * width.
 *
 * A slow path runs when the inline fast path may not commit on the
 * calling thread's index: no rseq, simulation, an index that is not
 * READY, before initialisation.  It asks index.c for the index to use now
 * (_pcpu_slow_enter: always the thread's own CPU, brought into use if
 * need be) and does the operation on that copy either with the same rseq
 * section as the fast path (a READY index on the rseq path: retried, on
 * the index of the moment, after an abort) or with __atomic builtins
 * inside the index's gate.  See cpu.c for why a copy is written by only
 * one of the two kinds.
 *
 * A sum reads the copies of the indexes in use whose page holds data
 * (backed.c): an index that never wrote the page reads zero, and reading
 * it could back a page.
 */
#include "chunk.h"

/* An operation's operands and result, as 64-bit integers whatever the
 * width. */
struct slow_arg {
	uint64_t v;   /* the operand (new value of xchg and cmpxchg) */
	uint64_t old; /* cmpxchg's expected value */
	uint64_t ret; /* the result of operations that return one */
};

/*
 * slow_run - the one slow-path loop, and the only place this file names
 * the slow path's enter/exit pair.  @rseq_op runs the section on copy @q of
 * index @idx and returns 0 after its commit, 1 after an abort; @atomic_op
 * does the same change with atomics.  Always inlined, so each caller's
 * constant @rseq_op and @atomic_op are inlined too.
 */
static inline __attribute__((always_inline)) void
slow_run(const void *p, struct slow_arg *a,
	 int (*rseq_op)(void *q, struct slow_arg *a, int idx, long io),
	 void (*atomic_op)(void *q, struct slow_arg *a))
{
	for (;;) {
		bool rs;
		int t, idx = _pcpu_slow_enter(&rs, &t);
		void *q = pcpu__copy(p, idx);
		if (!rs) {
			atomic_op(q, a);
			_pcpu_slow_exit(idx, t);
			return;
		}
		if (rseq_op(q, a, idx, pcpu__fast.idx_tpoff) == 0)
			return;
	}
}

/*
 * Each slow path: its rseq operation (the arch section the fast path
 * uses), its atomic operation and the exported function.  W is the width,
 * T its unsigned type.
 */

/* add, write, and, or: no result. */
#define DEFINE_VOID_SLOW(op, W, atomic)                                        \
	static int op##_rseq##W(void *q, struct slow_arg *a, int idx, long io) \
	{                                                                      \
		return pcpu__arch_##op##W((uint##W##_t *)q,                    \
					  (uint##W##_t)a->v, idx, io);         \
	}                                                                      \
	static void op##_atomic##W(void *q, struct slow_arg *a)                \
	{                                                                      \
		atomic((uint##W##_t *)q, (uint##W##_t)a->v, __ATOMIC_RELAXED); \
	}                                                                      \
	void pcpu__##op##_slow##W(void *p, uint##W##_t v)                      \
	{                                                                      \
		struct slow_arg a = { .v = v };                                \
		slow_run(p, &a, op##_rseq##W, op##_atomic##W);                 \
	}

/* add_return (the new value), xchg (the old value). */
#define DEFINE_RET_SLOW(op, W, atomic)                                         \
	static int op##_rseq##W(void *q, struct slow_arg *a, int idx, long io) \
	{                                                                      \
		uint##W##_t r;                                                 \
		if (pcpu__arch_##op##W((uint##W##_t *)q, (uint##W##_t)a->v,    \
				       &r, idx, io))                           \
			return 1;                                              \
		a->ret = r;                                                    \
		return 0;                                                      \
	}                                                                      \
	static void op##_atomic##W(void *q, struct slow_arg *a)                \
	{                                                                      \
		a->ret = atomic((uint##W##_t *)q, (uint##W##_t)a->v,           \
				__ATOMIC_RELAXED);                             \
	}                                                                      \
	uint##W##_t pcpu__##op##_slow##W(void *p, uint##W##_t v)               \
	{                                                                      \
		struct slow_arg a = { .v = v };                                \
		slow_run(p, &a, op##_rseq##W, op##_atomic##W);                 \
		return (uint##W##_t)a.ret;                                     \
	}

/* cmpxchg: the value found; @nv stored only if it equals @old.  Relaxed,
 * like every this-CPU operation (the kernel's this_cpu_cmpxchg orders
 * nothing either). */
#define DEFINE_CMPXCHG_SLOW(W)                                                 \
	static int cmpxchg_rseq##W(void *q, struct slow_arg *a, int idx,       \
				   long io)                                    \
	{                                                                      \
		uint##W##_t r;                                                 \
		if (pcpu__arch_cmpxchg##W((uint##W##_t *)q,                    \
					  (uint##W##_t)a->old,                 \
					  (uint##W##_t)a->v, &r, idx, io))     \
			return 1;                                              \
		a->ret = r;                                                    \
		return 0;                                                      \
	}                                                                      \
	static void cmpxchg_atomic##W(void *q, struct slow_arg *a)             \
	{                                                                      \
		uint##W##_t expected = (uint##W##_t)a->old;                    \
		__atomic_compare_exchange_n((uint##W##_t *)q, &expected,       \
					    (uint##W##_t)a->v, false,          \
					    __ATOMIC_RELAXED,                  \
					    __ATOMIC_RELAXED);                 \
		a->ret = expected; /* the value found, either way */           \
	}                                                                      \
	uint##W##_t pcpu__cmpxchg_slow##W(void *p, uint##W##_t old,            \
					  uint##W##_t nv)                      \
	{                                                                      \
		struct slow_arg a = { .v = nv, .old = old };                   \
		slow_run(p, &a, cmpxchg_rseq##W, cmpxchg_atomic##W);           \
		return (uint##W##_t)a.ret;                                     \
	}

/* The __atomic builtins with the shape DEFINE_*_SLOW wants. */
#define ATOMIC_ADD(q, v, mo) ((void)__atomic_fetch_add(q, v, mo))
#define ATOMIC_AND(q, v, mo) ((void)__atomic_fetch_and(q, v, mo))
#define ATOMIC_OR(q, v, mo) ((void)__atomic_fetch_or(q, v, mo))
#define ATOMIC_STORE(q, v, mo) __atomic_store_n(q, v, mo)

/*
 * read: a relaxed load of the copy _pcpu_slow_enter picked, the thread's
 * own CPU's (inside the gate when it is not READY).
 */
#define DEFINE_READ_SLOW(W)                                                    \
	static int read_rseq##W(void *q, struct slow_arg *a, int idx, long io) \
	{                                                                      \
		(void)idx, (void)io;                                           \
		a->ret = __atomic_load_n((uint##W##_t *)q, __ATOMIC_RELAXED);  \
		return 0;                                                      \
	}                                                                      \
	static void read_atomic##W(void *q, struct slow_arg *a)                \
	{                                                                      \
		a->ret = __atomic_load_n((uint##W##_t *)q, __ATOMIC_RELAXED);  \
	}                                                                      \
	uint##W##_t pcpu__read_slow##W(const void *p)                          \
	{                                                                      \
		struct slow_arg a = { 0 };                                     \
		slow_run(p, &a, read_rseq##W, read_atomic##W);                 \
		return (uint##W##_t)a.ret;                                     \
	}

/* The chunk of a pointer summed; a pointer that is no per-CPU area is
 * reported (NULL). */
static struct pcpu_chunk *sum_chunk(const void *p)
{
	_pcpu_ensure_init();
	struct pcpu_chunk *c = _pcpu_chunk_find(p);
	if (PCPU_UNLIKELY(!c))
		_pcpu_report("pcpu_sum of a pointer that is no per-CPU area", p);
	return c;
}

/* sum: the indexes in use, only where the page holds data. */
#define DEFINE_SUM(W)                                                          \
	uint##W##_t pcpu__sum##W(const void *p)                                \
	{                                                                      \
		struct pcpu_chunk *c = sum_chunk(p);                           \
		uint##W##_t sum = 0;                                           \
		if (!c)                                                        \
			return 0;                                              \
		uint32_t pg = (uint32_t)(((const char *)p - c->base) /         \
					 _pcpu_g.page_size);                   \
		int cpu;                                                       \
		pcpu_for_each_cpu(cpu) if (_pcpu_backed_page(c, cpu, pg)) sum += \
			__atomic_load_n((const uint##W##_t *)pcpu__copy(p, cpu), \
					__ATOMIC_RELAXED);                     \
		return sum;                                                    \
	}

#define DEFINE_ALL(W)                                                          \
	DEFINE_VOID_SLOW(add, W, ATOMIC_ADD)                                   \
	DEFINE_VOID_SLOW(write, W, ATOMIC_STORE)                               \
	DEFINE_READ_SLOW(W)                                                    \
	DEFINE_SUM(W)                                                          \
	DEFINE_VOID_SLOW(and, W, ATOMIC_AND)                                   \
	DEFINE_VOID_SLOW(or, W, ATOMIC_OR)                                     \
	DEFINE_RET_SLOW(add_return, W, __atomic_add_fetch)                     \
	DEFINE_RET_SLOW(xchg, W, __atomic_exchange_n)                          \
	DEFINE_CMPXCHG_SLOW(W)

DEFINE_ALL(8)
DEFINE_ALL(16)
DEFINE_ALL(32)
DEFINE_ALL(64)
