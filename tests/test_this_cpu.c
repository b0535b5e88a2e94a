/*
 * test_this_cpu.c - the kernel's this_cpu operations (ops.h), every one
 * on every width: add, sub, inc, dec, and, or, add_return, sub_return,
 * inc_return, dec_return, read, write, xchg, cmpxchg, try_cmpxchg, sum.
 *
 * Parts:
 *   types   single-thread semantics of every integer type against plain C
 *           arithmetic (wrap-around at the type's limits, signed and
 *           unsigned, cmpxchg success and failure, try_cmpxchg updating
 *           the old value), _Bool, enums and pointers, and the types the
 *           macros return;
 *   sub     pcpu_sub converts its value to the type of *p before negating,
 *           as the kernel's this_cpu_sub (issue 12 item 5);
 *   storm   threads moved between CPUs, and the main thread interrupted by
 *           a signal handler that operates too, run every operation on
 *           every width; checked afterwards with invariants that a lost,
 *           doubled or misplaced update breaks: exact sums, the values
 *           add_return and friends returned, tokens that xchg only swaps,
 *           CAS-loop increments, bits that and/or clear or set once;
 *   switch  (rseq path) the storm while a thread switches the process to
 *           the atomic path;
 *   sim     every operation as several simulated CPUs, each copy read back
 *           with pcpu_ptr, then the storm with threads changing simulated
 *           CPU.
 * CTest runs it in each mode (rseq cpu, rseq cid, no rseq, simulation);
 * PCPU_TEST_PATH / PCPU_TEST_INDEX say which, so that no run passes in
 * the wrong one.
 */
#define _GNU_SOURCE
#undef NDEBUG /* pcpu_ptr's range check is what a debug build has */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "cpus.h"
#include "pcpu/pcpu.h"

static long scale = 1; /* divides iteration counts */

/* ---- types: single-thread semantics ---- */

/*
 * The checks of one run of a sequence: a failure is counted and the first
 * remembered, and the sequence is run again when the thread's index
 * changed meanwhile (return values need one copy: with PCPU_INDEX=cid a
 * pinned thread can still change index).
 */
static long sem_bad, sem_checks;
static char sem_first[256];
#define EXPECT(c)                                                              \
	do {                                                                   \
		sem_checks++;                                                  \
		if (!(c) && !sem_bad++)                                        \
			snprintf(sem_first, sizeof(sem_first), "%s:%d: %s",    \
				 __FILE__, __LINE__, #c);                      \
	} while (0)

static void sem_run(const char *name, void (*fn)(void))
{
	for (int tries = 0;; tries++) {
		int before = pcpu_this_cpu();
		sem_bad = 0;
		fn();
		if (pcpu_this_cpu() == before || tries == 10)
			break;
	}
	if (sem_bad)
		fprintf(stderr, "%s: %ld of %ld checks failed, first %s\n",
			name, sem_bad, sem_checks, sem_first);
	CHECK(sem_bad == 0);
}

#define SAME_TYPE(e, T)                                                        \
	_Static_assert(__builtin_types_compatible_p(__typeof__(e), T),         \
		       #e " is not " #T)

/* T's limits, and a value of unsigned long long arithmetic wrapped to T
 * (the plain C reference every operation is checked against). */
#define TSIGNED(T) ((T)-1 < (T)1)
#define TMAX(T) (TSIGNED(T) ? (T)((1ULL << (8 * sizeof(T) - 1)) - 1) : (T)-1)
#define TMIN(T) (TSIGNED(T) ? (T)(1ULL << (8 * sizeof(T) - 1)) : (T)0)
#define WR(T, x) ((T)(unsigned long long)(x))
#define ULL(x) ((unsigned long long)(x))

/*
 * Every operation on every pair of interesting values of T, each result
 * and each copy checked.  The values include both limits and their
 * neighbours, so that every add, sub, inc and dec wraps somewhere.
 */
#define DEFINE_SEM(name, T)                                                    \
	static void sem_##name(void)                                           \
	{                                                                      \
		T *p = pcpu_alloc(sizeof(T), 0);                               \
		REQUIRE(p);                                                    \
		const T *cp = p;                                               \
		SAME_TYPE(pcpu_read(p), T);                                    \
		SAME_TYPE(pcpu_read(cp), T);                                   \
		SAME_TYPE(pcpu_sum(cp), T);                                    \
		SAME_TYPE(pcpu_add_return(p, 1), T);                           \
		SAME_TYPE(pcpu_sub_return(p, 1), T);                           \
		SAME_TYPE(pcpu_inc_return(p), T);                              \
		SAME_TYPE(pcpu_dec_return(p), T);                              \
		SAME_TYPE(pcpu_xchg(p, 1), T);                                 \
		SAME_TYPE(pcpu_cmpxchg(p, 1, 2), T);                           \
		const T vals[] = {                                             \
			0, 1, 2, 3, (T)-1, (T)-2, TMAX(T), (T)(TMAX(T) - 1),   \
			TMIN(T), (T)(TMIN(T) + 1), (T)0x5a5a5a5a5a5a5a5aULL,   \
			(T)0xa5a5a5a5a5a5a5a5ULL,                              \
		};                                                             \
		const size_t nv = sizeof(vals) / sizeof(vals[0]);              \
		for (size_t i = 0; i < nv; i++) {                              \
			for (size_t j = 0; j < nv; j++) {                      \
				T a = vals[i], b = vals[j], r, o;              \
				bool ok;                                       \
				pcpu_write(p, a);                              \
				EXPECT(pcpu_read(p) == a);                     \
				EXPECT(pcpu_read(cp) == a);                    \
				r = pcpu_add_return(p, b);                     \
				EXPECT(r == WR(T, ULL(a) + ULL(b)));           \
				EXPECT(pcpu_read(p) == r);                     \
				r = pcpu_sub_return(p, b);                     \
				EXPECT(r == a);                                \
				pcpu_add(p, b);                                \
				EXPECT(pcpu_read(p) ==                         \
				       WR(T, ULL(a) + ULL(b)));                \
				pcpu_sub(p, b);                                \
				EXPECT(pcpu_read(p) == a);                     \
				pcpu_sub(p, b);                                \
				EXPECT(pcpu_read(p) ==                         \
				       WR(T, ULL(a) - ULL(b)));                \
				r = pcpu_add_return(p, b);                     \
				EXPECT(r == a);                                \
				pcpu_and(p, b);                                \
				EXPECT(pcpu_read(p) == (T)(a & b));            \
				pcpu_write(p, a);                              \
				pcpu_or(p, b);                                 \
				EXPECT(pcpu_read(p) == (T)(a | b));            \
				pcpu_write(p, a);                              \
				r = pcpu_xchg(p, b);                           \
				EXPECT(r == a);                                \
				EXPECT(pcpu_read(p) == b);                     \
				/* cmpxchg: stores only on a match */          \
				pcpu_write(p, a);                              \
				r = pcpu_cmpxchg(p, b, (T)(b ^ 0x11));         \
				EXPECT(r == a);                                \
				EXPECT(pcpu_read(p) ==                         \
				       (a == b ? (T)(b ^ 0x11) : a));          \
				pcpu_write(p, a);                              \
				o = b;                                         \
				ok = pcpu_try_cmpxchg(p, &o, (T)(b ^ 0x11));   \
				EXPECT(ok == (a == b));                        \
				EXPECT(o == a);                                \
				EXPECT(pcpu_read(p) ==                         \
				       (a == b ? (T)(b ^ 0x11) : a));          \
			}                                                      \
			T a = vals[i];                                         \
			pcpu_write(p, a);                                      \
			pcpu_inc(p);                                           \
			EXPECT(pcpu_read(p) == WR(T, ULL(a) + 1));             \
			pcpu_dec(p);                                           \
			pcpu_dec(p);                                           \
			EXPECT(pcpu_read(p) == WR(T, ULL(a) - 1));             \
			EXPECT(pcpu_inc_return(p) == a);                       \
			EXPECT(pcpu_inc_return(p) == WR(T, ULL(a) + 1));       \
			EXPECT(pcpu_dec_return(p) == a);                       \
			EXPECT(pcpu_dec_return(p) == WR(T, ULL(a) - 1));       \
			/* values of other types: converted to T first */      \
			pcpu_write(p, a);                                      \
			pcpu_sub(p, 1u);                                       \
			EXPECT(pcpu_read(p) == WR(T, ULL(a) - 1));             \
			pcpu_add(p, -1);                                       \
			EXPECT(pcpu_read(p) == WR(T, ULL(a) - 2));             \
			EXPECT(pcpu_sub_return(p, 0x100000003LL) ==            \
			       WR(T, ULL(a) - 2 - ULL((T)0x100000003LL)));     \
			EXPECT(pcpu_add_return(p, 0x100000003LL) ==            \
			       WR(T, ULL(a) - 2));                             \
			EXPECT(pcpu_cmpxchg(p, WR(T, ULL(a) - 2) + 0x100LL,    \
					    0) == WR(T, ULL(a) - 2));          \
			pcpu_write(p, 0);                                      \
		}                                                              \
		/* all of it on one copy: the sum is that copy */              \
		pcpu_write(p, TMAX(T));                                        \
		EXPECT(pcpu_sum(cp) == pcpu_read(cp));                         \
		pcpu_free(p);                                                  \
	}

DEFINE_SEM(char, char)
DEFINE_SEM(schar, signed char)
DEFINE_SEM(uchar, unsigned char)
DEFINE_SEM(short, short)
DEFINE_SEM(ushort, unsigned short)
DEFINE_SEM(int, int)
DEFINE_SEM(uint, unsigned int)
DEFINE_SEM(long, long)
DEFINE_SEM(ulong, unsigned long)
DEFINE_SEM(llong, long long)
DEFINE_SEM(ullong, unsigned long long)
DEFINE_SEM(i8, int8_t)
DEFINE_SEM(u8, uint8_t)
DEFINE_SEM(i16, int16_t)
DEFINE_SEM(u16, uint16_t)
DEFINE_SEM(i32, int32_t)
DEFINE_SEM(u32, uint32_t)
DEFINE_SEM(i64, int64_t)
DEFINE_SEM(u64, uint64_t)
DEFINE_SEM(size, size_t)
DEFINE_SEM(ptrdiff, ptrdiff_t)

/*
 * An operation whose result is ignored must still happen.  gcc 12 deletes
 * an asm goto whose outputs are unused unless it is marked volatile (the
 * sections of xchg, cmpxchg and add_return hand their value out as asm
 * outputs); it did so in a function like these, not where the result
 * feeds a check, so each discards its result in a function of its own.
 */
#define DEFINE_IGNORED(W)                                                      \
	static __attribute__((noinline)) void ignore##W(uint##W##_t *p,        \
							uint##W##_t v)         \
	{                                                                      \
		(void)pcpu_xchg(p, v);                                         \
	}                                                                      \
	static __attribute__((noinline)) void ignore_ret##W(uint##W##_t *p)    \
	{                                                                      \
		(void)pcpu_add_return(p, 3);                                   \
		(void)pcpu_sub_return(p, 1);                                   \
		(void)pcpu_inc_return(p);                                      \
		(void)pcpu_dec_return(p);                                      \
		(void)pcpu_inc_return(p); /* +3 in all */                      \
	}                                                                      \
	static __attribute__((noinline)) void ignore_cas##W(                   \
		uint##W##_t *p, uint##W##_t old, uint##W##_t nv)               \
	{                                                                      \
		(void)pcpu_cmpxchg(p, old, nv);                                \
	}                                                                      \
	static __attribute__((noinline)) void ignore_try##W(                   \
		uint##W##_t *p, uint##W##_t old, uint##W##_t nv)               \
	{                                                                      \
		(void)pcpu_try_cmpxchg(p, &old, nv);                           \
	}                                                                      \
	static void sem_ignored##W(void)                                       \
	{                                                                      \
		uint##W##_t *p = pcpu_alloc(W / 8, 0);                         \
		REQUIRE(p);                                                    \
		pcpu_write(p, 1);                                              \
		ignore##W(p, 5);                                               \
		EXPECT(pcpu_read(p) == 5);                                     \
		ignore_ret##W(p);                                              \
		EXPECT(pcpu_read(p) == 8);                                     \
		ignore_cas##W(p, 7, 9); /* fails */                            \
		EXPECT(pcpu_read(p) == 8);                                     \
		ignore_cas##W(p, 8, 10);                                       \
		EXPECT(pcpu_read(p) == 10);                                    \
		ignore_try##W(p, 10, 12);                                      \
		EXPECT(pcpu_read(p) == 12);                                    \
		pcpu_free(p);                                                  \
	}
DEFINE_IGNORED(8)
DEFINE_IGNORED(16)
DEFINE_IGNORED(32)
DEFINE_IGNORED(64)

struct node;
static __attribute__((noinline)) void ignore_ptr(struct node **pp,
						 struct node *n)
{
	(void)pcpu_xchg(pp, n);
}

static void sem_ignored(void)
{
	sem_ignored8();
	sem_ignored16();
	sem_ignored32();
	sem_ignored64();
	struct node **pp = pcpu_alloc(sizeof(*pp), 0);
	REQUIRE(pp);
	ignore_ptr(pp, (struct node *)pp);
	EXPECT(pcpu_read(pp) == (struct node *)pp);
	pcpu_free(pp);
}

enum colour { RED = 1, GREEN = 1000, BLUE = 70000 };
struct node {
	int v;
};

/* _Bool, enums and pointers: the operations the kernel allows on them. */
static void sem_values(void)
{
	bool *b = pcpu_alloc(sizeof(bool), 0);
	enum colour *e = pcpu_alloc(sizeof(enum colour), 0);
	struct node **pp = pcpu_alloc(sizeof(struct node *), 0);
	REQUIRE(b && e && pp);
	SAME_TYPE(pcpu_xchg(b, true), bool);
	SAME_TYPE(pcpu_read(e), enum colour);
	SAME_TYPE(pcpu_xchg(pp, NULL), struct node *);
	SAME_TYPE(pcpu_cmpxchg(pp, NULL, NULL), struct node *);
	SAME_TYPE(pcpu_try_cmpxchg(pp, pp, NULL), bool);

	EXPECT(pcpu_read(b) == false);
	pcpu_write(b, 5); /* converted to _Bool: 1 */
	EXPECT(*(unsigned char *)pcpu_ptr(b, pcpu_this_cpu()) == 1);
	EXPECT(pcpu_xchg(b, false) == true);
	EXPECT(pcpu_cmpxchg(b, true, true) == false);
	EXPECT(pcpu_cmpxchg(b, false, true) == false);
	bool ob = false;
	EXPECT(!pcpu_try_cmpxchg(b, &ob, false) && ob == true);
	EXPECT(pcpu_try_cmpxchg(b, &ob, false) && pcpu_read(b) == false);

	pcpu_write(e, GREEN);
	EXPECT(pcpu_add_return(e, 1) == GREEN + 1);
	EXPECT(pcpu_xchg(e, BLUE) == GREEN + 1);
	EXPECT(pcpu_cmpxchg(e, BLUE, RED) == BLUE);
	EXPECT(pcpu_read(e) == RED);

	struct node n1 = { 1 }, n2 = { 2 };
	struct node *const *cpp = pp;
	EXPECT(pcpu_read(cpp) == NULL);
	pcpu_write(pp, &n1);
	EXPECT(pcpu_read(pp) == &n1);
	EXPECT(pcpu_read(cpp)->v == 1);
	EXPECT(pcpu_xchg(pp, &n2) == &n1);
	EXPECT(pcpu_cmpxchg(pp, &n1, NULL) == &n2); /* fails */
	EXPECT(pcpu_read(pp) == &n2);
	EXPECT(pcpu_cmpxchg(pp, &n2, &n1) == &n2); /* succeeds */
	EXPECT(pcpu_read(pp) == &n1);
	struct node *o = &n2;
	EXPECT(!pcpu_try_cmpxchg(pp, &o, NULL) && o == &n1);
	EXPECT(pcpu_try_cmpxchg(pp, &o, &n2) && o == &n1);
	EXPECT(pcpu_read(pp) == &n2);
	/* a pointer with all 64 bits in use survives every operation */
	struct node *far = (struct node *)(uintptr_t)0xfedcba9876543210ULL;
	EXPECT(pcpu_xchg(pp, far) == &n2);
	EXPECT(pcpu_cmpxchg(pp, far, NULL) == far);
	EXPECT(pcpu_read(pp) == NULL);
	pcpu_free(b);
	pcpu_free(e);
	pcpu_free(pp);
}

static void test_types(void)
{
	static const struct {
		const char *name;
		void (*fn)(void);
	} sems[] = {
#define SEM(n) { #n, sem_##n }
		SEM(char), SEM(schar), SEM(uchar), SEM(short), SEM(ushort),
		SEM(int), SEM(uint), SEM(long), SEM(ulong), SEM(llong),
		SEM(ullong), SEM(i8), SEM(u8), SEM(i16), SEM(u16), SEM(i32),
		SEM(u32), SEM(i64), SEM(u64), SEM(size), SEM(ptrdiff),
		SEM(values), SEM(ignored),
#undef SEM
	};
	move_to(0, real_cpus[0]); /* return values need one copy */
	sem_checks = 0;
	for (size_t i = 0; i < sizeof(sems) / sizeof(sems[0]); i++)
		sem_run(sems[i].name, sems[i].fn);
	fprintf(stderr, "types: %zu types, %ld checks\n",
		sizeof(sems) / sizeof(sems[0]), sem_checks);
	unpin_self();
}

/* ---- sub: the value is converted to the type of *p, then negated ---- */

static void sem_sub(void)
{
	/* -(1u) is 4294967295u: added to an unsigned long as it was before
	 * the fix, the counter would gain 4294967295 instead of losing 1 */
	unsigned long *ul = pcpu_alloc(sizeof(*ul), 0);
	unsigned long long *ull = pcpu_alloc(sizeof(*ull), 0);
	long *l = pcpu_alloc(sizeof(*l), 0);
	unsigned short *us = pcpu_alloc(sizeof(*us), 0);
	REQUIRE(ul && ull && l && us);
	pcpu_write(ul, 10UL);
	pcpu_sub(ul, 1u);
	EXPECT(pcpu_read(ul) == 9UL);
	EXPECT(pcpu_sub_return(ul, 1u) == 8UL);
	EXPECT(pcpu_sub_return(ul, (unsigned char)8) == 0UL);
	pcpu_sub(ul, 1u);
	EXPECT(pcpu_read(ul) == ~0UL);
	pcpu_sub(ull, 3u);
	EXPECT(pcpu_read(ull) == ~0ULL - 2);
	pcpu_sub(l, 1u); /* (long)1u: -1, not +4294967295 */
	EXPECT(pcpu_read(l) == -1L);
	pcpu_sub(us, 70000); /* (unsigned short)70000 is 4464 */
	EXPECT(pcpu_read(us) == (unsigned short)(0 - 4464));
	pcpu_free(ul);
	pcpu_free(ull);
	pcpu_free(l);
	pcpu_free(us);
}

static void test_sub(void)
{
	move_to(0, real_cpus[0]);
	sem_run("sub", sem_sub);
	/* the same through the sums alone, which need no single copy */
	unsigned long *c = pcpu_alloc(sizeof(*c), 0);
	REQUIRE(c);
	pcpu_add(c, 5UL);
	pcpu_sub(c, 1u);
	CHECK(pcpu_sum(c) == 4UL);
	pcpu_free(c);
	unpin_self();
}

/* ---- the storm ---- */

/*
 * Phases, each run by every thread for the same time (a barrier between
 * them), so that all threads hammer the same variables with the same
 * operation at once; the last phase mixes every operation.  A SIGALRM
 * handler on the main thread does the main thread's phase too, on the
 * same variables (on the word of the and/or arrays the main thread is
 * changing): a section that were not restartable would lose an update
 * when the signal comes between its load and its store, and another when
 * a thread is preempted there and others run on its CPU.
 */
enum { PH_XCHG, PH_RET, PH_CAS, PH_BITS, PH_MIXED, NR_PHASES };
static const char *const phase_names[NR_PHASES] = { "xchg", "return",
						     "cas", "bits", "mixed" };

#define NR_WORKERS 4
#define MAIN NR_WORKERS     /* the main thread takes part too */
#define SIG (NR_WORKERS + 1) /* and so does its signal handler */
#define NT (NR_WORKERS + 2) /* threads, the handler counted as one */
#define CAS_LIMIT 10000000L /* a CAS loop that long is broken */
#define NBITS (1L << 20)    /* bits threads take from each and/or array */
#define NB(W) ((NBITS + W - 5) / (W - 4)) /* its words */
#define CLAIM 4             /* bits taken at once */

/* Per width W: the per-CPU variables, and what one thread accumulates. */
#define DECLARE_W(W)                                                           \
	struct vars##W {                                                       \
		uint##W##_t *inc;  /* inc_return */                            \
		uint##W##_t *add;  /* add_return(3) */                         \
		int##W##_t *dec;   /* dec_return */                            \
		int##W##_t *sub;   /* sub_return(2u) */                        \
		uint##W##_t *plain; /* add 5, sub 2u, inc, dec: +3 */          \
		uint##W##_t *xchg; /* tokens swapped with xchg */              \
		uint##W##_t *cas;  /* CAS-loop increments with cmpxchg */      \
		uint##W##_t *tcas; /* the same with try_cmpxchg */             \
		uint##W##_t *bits[2]; /* and/or: phase bits, phase mixed */    \
		long claim[2];        /* the next bit of each to take */       \
		volatile char *sigw[2]; /* words the signal handler changed */ \
		volatile long main_word[2]; /* the main thread's last word */  \
	};                                                                     \
	struct acc##W {                                                        \
		uint64_t inc, add, dec, sub; /* sums of the values returned */ \
		uint##W##_t tok;             /* the token held */              \
	};
DECLARE_W(8)
DECLARE_W(16)
DECLARE_W(32)
DECLARE_W(64)

struct token {
	int id;
};

struct acc {
	struct acc8 a8;
	struct acc16 a16;
	struct acc32 a32;
	struct acc64 a64;
	struct token *ptok;
	long n[NR_PHASES]; /* iterations done in each phase */
	long ret;          /* of them, those that did add_return & co */
	long cas;          /* ... and CAS-loop increments */
	long cas_fails;    /* cmpxchg/try_cmpxchg that found another value */
	bool broken;       /* a CAS loop ran past CAS_LIMIT */
};

static struct storm {
	struct vars8 v8;
	struct vars16 v16;
	struct vars32 v32;
	struct vars64 v64;
	struct token **ptok;
	struct token tokens[NT];
	long phase_ms;  /* how long each phase runs */
	int sim;        /* threads act as simulated CPUs */
	bool switching; /* worker 0 switches to the atomic path */
	int phase_done; /* phases finished (the main thread ends them) */
	volatile int main_phase; /* the main thread's, -1 outside */
	int stop_mover;
	int ready;
	pthread_barrier_t barrier;
	pid_t tids[NR_WORKERS];
	struct acc acc[NT];
} st;

/*
 * The and/or arrays (one for the bits phase, one for the mixed phase)
 * start as pattern P (even bits set) in every copy.  Threads take bits
 * 4..W-1 from a shared cursor, CLAIM at a time, spread over the words so
 * that each word keeps changing all along, and change each bit once:
 * clear it (an even bit, with and) or set it (odd, with or).  The signal
 * handler clears bit 2 and sets bit 3 of the word the main thread was
 * changing, and flags that word in sigw (a flag per word, not a log: a
 * slow run under ThreadSanitizer took 40000 handler steps, which once
 * overflowed a 65536-entry log).  Bits 0 and 1 are never touched.  A bit once cleared (set)
 * in a copy stays so unless an update is lost; so afterwards the AND of
 * every copy has, of the even bits, exactly those nobody cleared, bit 0
 * included (every copy did start as P), and the OR has, of the odd bits,
 * exactly those somebody set, bit 1 never.
 */
#define BITS_P(W) ((uint##W##_t)0x5555555555555555ULL)
#define BITS_STEP(W, v, m, t)                                                  \
	do {                                                                   \
		uint##W##_t *bits = (v)->bits[m];                              \
		if ((t) == SIG) {                                              \
			long word = (v)->main_word[m];                         \
			pcpu_and(&bits[word], ~(uint##W##_t)4);                \
			pcpu_or(&bits[word], (uint##W##_t)8);                  \
			(v)->sigw[m][word] = 1;                                \
			break;                                                 \
		}                                                              \
		long g0 = __atomic_fetch_add(&(v)->claim[m], CLAIM,            \
					     __ATOMIC_RELAXED);                \
		for (long g = g0; g < g0 + CLAIM && g < NBITS; g++) {          \
			long word = g % NB(W);                                 \
			int b = 4 + (int)(g / NB(W));                          \
			if ((t) == MAIN)                                       \
				(v)->main_word[m] = word;                      \
			if (b % 2)                                             \
				pcpu_or(&bits[word], (uint##W##_t)1 << b);     \
			else                                                   \
				pcpu_and(&bits[word], ~((uint##W##_t)1 << b)); \
		}                                                              \
	} while (0)

/* One iteration of phase @ph of thread @t on width W. */
#define STEP_W(W)                                                              \
	static void step##W(int ph, int t, struct vars##W *v,                  \
			    struct acc##W *a, struct acc *ta)                  \
	{                                                                      \
		if (ph == PH_XCHG || ph == PH_MIXED)                           \
			a->tok = pcpu_xchg(v->xchg, a->tok);                   \
		if (ph == PH_RET || ph == PH_MIXED) {                          \
			a->inc += pcpu_inc_return(v->inc);                     \
			a->add += pcpu_add_return(v->add, 3);                  \
			a->dec += (uint64_t)(int64_t)pcpu_dec_return(v->dec);  \
			a->sub += (uint64_t)(int64_t)pcpu_sub_return(v->sub,   \
								     2u);      \
			pcpu_add(v->plain, 5);                                 \
			pcpu_sub(v->plain, 2u);                                \
			pcpu_inc(v->plain);                                    \
			pcpu_dec(v->plain);                                    \
		}                                                              \
		if (ph == PH_CAS || ph == PH_MIXED) {                          \
			uint##W##_t o = pcpu_read(v->cas), f;                  \
			long n = 0;                                            \
			while ((f = pcpu_cmpxchg(v->cas, o,                    \
						 (uint##W##_t)(o + 1))) !=     \
			       o) {                                            \
				o = f;                                         \
				if (++n > CAS_LIMIT) {                         \
					ta->broken = true;                     \
					break;                                 \
				}                                              \
			}                                                      \
			o = pcpu_read(v->tcas);                                \
			while (!pcpu_try_cmpxchg(v->tcas, &o,                  \
						 (uint##W##_t)(o + 1)))        \
				if (++n > CAS_LIMIT) {                         \
					ta->broken = true;                     \
					break;                                 \
				}                                              \
			ta->cas_fails += n;                                    \
		}                                                              \
		if (ph == PH_BITS || ph == PH_MIXED)                           \
			BITS_STEP(W, v, ph == PH_MIXED, t);                    \
	}
STEP_W(8)
STEP_W(16)
STEP_W(32)
STEP_W(64)

/* One iteration of phase @ph of thread @t on every width. */
static void step(int ph, int t)
{
	struct acc *a = &st.acc[t];
	step8(ph, t, &st.v8, &a->a8, a);
	step16(ph, t, &st.v16, &a->a16, a);
	step32(ph, t, &st.v32, &a->a32, a);
	step64(ph, t, &st.v64, &a->a64, a);
	if (ph == PH_XCHG || ph == PH_MIXED)
		a->ptok = pcpu_xchg(st.ptok, a->ptok);
	a->n[ph]++;
	a->ret += ph == PH_RET || ph == PH_MIXED;
	a->cas += ph == PH_CAS || ph == PH_MIXED;
}

static void on_alarm(int sig)
{
	(void)sig;
	int ph = st.main_phase;
	if (ph >= 0)
		step(ph, SIG);
}

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* One of at most 16 simulated CPUs spread over the @n: a run brings up
 * (and copies the and/or arrays' initial values to) only those. */
static int sim_cpu(unsigned *seed, int n)
{
	int k = n < 16 ? n : 16;
	return (int)(rand_r(seed) % (unsigned)k) * (n / k);
}

static void storm_loop(int t)
{
	unsigned seed = (unsigned)t * 7919u + 1;
	int n = pcpu_nr_cpu_ids();
	bool switched = false;
	for (int ph = 0; ph < NR_PHASES; ph++) {
		pthread_barrier_wait(&st.barrier);
		double start = now_ms(), end = start + (double)st.phase_ms;
		if (t == MAIN)
			st.main_phase = ph;
		for (long i = 0;
		     __atomic_load_n(&st.phase_done, __ATOMIC_ACQUIRE) <= ph;
		     i++) {
			step(ph, t);
			if (st.sim && i % 50 == 0)
				CHECK(pcpu_sim_set_cpu(sim_cpu(&seed, n)) == 0);
			else if (!st.sim && i % 1000 == 0 && nr_real_cpus > 1)
				move_to(0, real_cpus[rand_r(&seed) %
						     nr_real_cpus]);
			/* the switch, half way through the mixed phase */
			if (st.switching && t == 0 && ph == PH_MIXED &&
			    !switched && i % 64 == 0 &&
			    now_ms() >= start + (double)st.phase_ms / 2) {
				CHECK(pcpu_sim_set_cpu(0) == 0);
				switched = true;
			}
			/* the bits phase ends early once every bit is taken */
			if (t == MAIN && i % 64 == 63 && i >= 256 &&
			    (now_ms() >= end ||
			     (ph == PH_BITS &&
			      __atomic_load_n(&st.v8.claim[0],
					      __ATOMIC_RELAXED) >= NBITS)))
				__atomic_store_n(&st.phase_done, ph + 1,
						 __ATOMIC_RELEASE);
		}
	}
	if (t == MAIN)
		st.main_phase = -1;
	if (st.switching && t == 0 && !switched)
		CHECK(pcpu_sim_set_cpu(0) == 0); /* the phase was too short */
	if (st.sim || (t == 0 && st.switching))
		CHECK(pcpu_sim_set_cpu(-1) == 0);
}

static void *worker(void *arg)
{
	int t = (int)(long)arg;
	st.tids[t] = gettid();
	__atomic_add_fetch(&st.ready, 1, __ATOMIC_RELEASE);
	storm_loop(t);
	return NULL;
}


#define ALLOC_W(W)                                                             \
	do {                                                                   \
		struct vars##W *v = &st.v##W;                                  \
		v->inc = pcpu_alloc(W / 8, 0);                                 \
		v->add = pcpu_alloc(W / 8, 0);                                 \
		v->dec = pcpu_alloc(W / 8, 0);                                 \
		v->sub = pcpu_alloc(W / 8, 0);                                 \
		v->plain = pcpu_alloc(W / 8, 0);                               \
		v->xchg = pcpu_alloc(W / 8, 0);                                \
		v->cas = pcpu_alloc(W / 8, 0);                                 \
		v->tcas = pcpu_alloc(W / 8, 0);                                \
		uint##W##_t *init = malloc(NB(W) * (W / 8));                   \
		REQUIRE(init);                                                 \
		for (long k = 0; k < NB(W); k++)                               \
			init[k] = BITS_P(W);                                   \
		v->bits[0] = pcpu_alloc_init(NB(W) * (W / 8), 0, init);        \
		v->bits[1] = pcpu_alloc_init(NB(W) * (W / 8), 0, init);        \
		v->sigw[0] = calloc((size_t)NB(W), 1);                         \
		v->sigw[1] = calloc((size_t)NB(W), 1);                         \
		free(init);                                                    \
		REQUIRE(v->inc && v->add && v->dec && v->sub && v->plain &&    \
			v->xchg && v->cas && v->tcas && v->bits[0] &&          \
			v->bits[1] && v->sigw[0] && v->sigw[1]);               \
		for (int t = 0; t < NT; t++)                                   \
			st.acc[t].a##W.tok = (uint##W##_t)(t + 1);             \
	} while (0)

#define FREE_W(W)                                                              \
	do {                                                                   \
		struct vars##W *v = &st.v##W;                                  \
		pcpu_free(v->inc);                                             \
		pcpu_free(v->add);                                             \
		pcpu_free(v->dec);                                             \
		pcpu_free(v->sub);                                             \
		pcpu_free(v->plain);                                           \
		pcpu_free(v->xchg);                                            \
		pcpu_free(v->cas);                                             \
		pcpu_free(v->tcas);                                            \
		pcpu_free(v->bits[0]);                                         \
		pcpu_free(v->bits[1]);                                         \
		free((char *)v->sigw[0]);                                      \
		free((char *)v->sigw[1]);                                      \
	} while (0)

static uint64_t tri(uint64_t n)
{
	return n * (n + 1) / 2;
}

/*
 * The checks of width W after a storm of @nret iterations of add_return &
 * co and @ncas CAS-loop increments.  Sums wrap at W bits.  For 32 and 64
 * bits no copy wraps, and the values returned are checked too: a copy
 * only ever incremented from 0 to k returned 1, 2, ..., k, which add up
 * to k(k+1)/2, so the values all threads got add up to the sum of that
 * over the copies (a stale or doubled return, or a lost update, breaks
 * it).
 */
#define CHECK_W(W, nret, ncas)                                                 \
	do {                                                                   \
		struct vars##W *v = &st.v##W;                                  \
		typedef uint##W##_t U;                                         \
		typedef int##W##_t S;                                          \
		uint64_t inc = 0, add = 0, dec = 0, sub = 0;                   \
		for (int t = 0; t < NT; t++) {                                 \
			inc += st.acc[t].a##W.inc;                             \
			add += st.acc[t].a##W.add;                             \
			dec += st.acc[t].a##W.dec;                             \
			sub += st.acc[t].a##W.sub;                             \
		}                                                              \
		CHECK_EQ(pcpu_sum(v->inc), (U)(nret));                         \
		CHECK_EQ(pcpu_sum(v->add), (U)(3 * (nret)));                   \
		CHECK_EQ(pcpu_sum(v->dec), (S)(-(nret)));                      \
		CHECK_EQ(pcpu_sum(v->sub), (S)(-2 * (nret)));                  \
		CHECK_EQ(pcpu_sum(v->plain), (U)(3 * (nret)));                 \
		CHECK_EQ(pcpu_sum(v->cas), (U)(ncas));                         \
		CHECK_EQ(pcpu_sum(v->tcas), (U)(ncas));                        \
		int cpu;                                                       \
		if (W >= 32) {                                                 \
			uint64_t winc = 0, wadd = 0, wdec = 0, wsub = 0;       \
			pcpu_for_each_cpu(cpu) {                               \
				winc += tri(*pcpu_ptr(v->inc, cpu));           \
				U a3 = *pcpu_ptr(v->add, cpu);                 \
				CHECK(a3 % 3 == 0);                            \
				wadd += 3 * tri(a3 / 3);                       \
				S d = *pcpu_ptr(v->dec, cpu);                  \
				wdec -= tri((uint64_t)(-(int64_t)d));          \
				S s2 = *pcpu_ptr(v->sub, cpu);                 \
				CHECK(s2 % 2 == 0);                            \
				wsub -= 2 * tri((uint64_t)(-(int64_t)s2 / 2)); \
			}                                                      \
			CHECK_EQ(inc, winc);                                   \
			CHECK_EQ(add, wadd);                                   \
			CHECK_EQ(dec, wdec);                                   \
			CHECK_EQ(sub, wsub);                                   \
		}                                                              \
		/* xchg only swaps: tokens 1..NT are each in exactly one       \
		 * place, and nothing else is non-zero */                      \
		int seen[NT + 1] = { 0 };                                      \
		long other = 0;                                                \
		pcpu_for_each_cpu(cpu) {                                       \
			U x = *pcpu_ptr(v->xchg, cpu);                         \
			if (x >= 1 && x <= NT)                                 \
				seen[x]++;                                     \
			else if (x)                                            \
				other++;                                       \
		}                                                              \
		for (int t = 0; t < NT; t++) {                                 \
			U x = st.acc[t].a##W.tok;                              \
			if (x >= 1 && x <= NT)                                 \
				seen[x]++;                                     \
			else if (x)                                            \
				other++;                                       \
		}                                                              \
		for (int k = 1; k <= NT; k++)                                  \
			CHECK_EQ(seen[k], 1);                                  \
		CHECK_EQ(other, 0);                                            \
		/* the bits (see BITS_P) */                                    \
		for (int m = 0; m < 2; m++) {                                  \
			long taken =                                           \
				v->claim[m] < NBITS ? v->claim[m] : NBITS;     \
			long wrong = 0;                                        \
			volatile char *changed = v->sigw[m];                   \
			for (long k = 0; k < NB(W); k++) {                     \
				U all_or = 0, all_and = (U)~(U)0, mine = 0;    \
				pcpu_for_each_cpu(cpu) {                       \
					U x = pcpu_ptr(v->bits[m], cpu)[k];    \
					all_or |= x;                           \
					all_and &= x;                          \
				}                                              \
				for (int b = 4; b < W; b++)                    \
					if ((b - 4) * NB(W) + k < taken)       \
						mine |= (U)((U)1 << b);        \
				if (changed[k])                                \
					mine |= 12;                            \
				U odd = (U)~BITS_P(W), even = BITS_P(W);       \
				wrong += (U)(all_or & odd) != (U)(mine & odd); \
				wrong += (U)(all_and & even) !=                \
					 (U)(even & ~mine);                    \
			}                                                      \
			CHECK_EQ(wrong, 0);                                    \
			CHECK(taken > 0);                                      \
		}                                                              \
	} while (0)

/* Runs the storm, each phase for @phase_ms; worker 0 switches the process
 * to the atomic path in the mixed phase if @switching; @sim: threads act
 * as simulated CPUs. */
static void run_storm(const char *name, long phase_ms, bool switching,
		      int sim)
{
	pthread_t w[NR_WORKERS], mv;
	sigset_t block;

	memset(&st, 0, sizeof(st));
	st.phase_ms = phase_ms;
	st.switching = switching;
	st.sim = sim;
	st.main_phase = -1;
	REQUIRE(pthread_barrier_init(&st.barrier, NULL, NR_WORKERS + 1) == 0);
	ALLOC_W(8);
	ALLOC_W(16);
	ALLOC_W(32);
	ALLOC_W(64);
	st.ptok = pcpu_alloc(sizeof(struct token *), 0);
	REQUIRE(st.ptok);
	for (int t = 0; t < NT; t++) {
		st.tokens[t].id = t;
		st.acc[t].ptok = &st.tokens[t];
	}

	/* workers do not take SIGALRM: the main thread's sections do */
	sigemptyset(&block);
	sigaddset(&block, SIGALRM);
	pthread_sigmask(SIG_BLOCK, &block, NULL);
	for (long i = 0; i < NR_WORKERS; i++)
		REQUIRE(pthread_create(&w[i], NULL, worker, (void *)i) == 0);
	while (__atomic_load_n(&st.ready, __ATOMIC_ACQUIRE) < NR_WORKERS)
		sched_yield();
	struct cpus_mover mover = { st.tids, NR_WORKERS, &st.stop_mover };
	if (!sim)
		REQUIRE(pthread_create(&mv, NULL, cpus_mover_main, &mover) == 0);
	pthread_sigmask(SIG_UNBLOCK, &block, NULL);
	/* every 100 us; under valgrind, where a handler's run alone takes
	 * longer than that, every 5 ms, or the main thread would do nothing
	 * but run its handler and never end a phase */
	long tick_us = scale >= 30 ? 5000 : 100;
	struct itimerval it = { { 0, tick_us }, { 0, tick_us } };
	setitimer(ITIMER_REAL, &it, NULL);
	storm_loop(MAIN);
	struct itimerval off = { { 0, 0 }, { 0, 0 } };
	setitimer(ITIMER_REAL, &off, NULL);
	for (int i = 0; i < NR_WORKERS; i++)
		pthread_join(w[i], NULL);
	if (!sim) {
		__atomic_store_n(&st.stop_mover, 1, __ATOMIC_RELEASE);
		pthread_join(mv, NULL);
	}
	pthread_barrier_destroy(&st.barrier);

	long nret = 0, ncas = 0, fails = 0, per_phase[NR_PHASES] = { 0 };
	for (int t = 0; t < NT; t++) {
		nret += st.acc[t].ret;
		ncas += st.acc[t].cas;
		fails += st.acc[t].cas_fails;
		for (int ph = 0; ph < NR_PHASES; ph++)
			per_phase[ph] += st.acc[t].n[ph];
		CHECK(!st.acc[t].broken);
	}
	CHECK_W(8, nret, ncas);
	CHECK_W(16, nret, ncas);
	CHECK_W(32, nret, ncas);
	CHECK_W(64, nret, ncas);

	/* pointer tokens: each exactly once, in a copy or with a thread */
	int seen[NT] = { 0 };
	long other = 0;
	int cpu;
	pcpu_for_each_cpu(cpu) {
		struct token *x = *pcpu_ptr(st.ptok, cpu);
		if (x >= st.tokens && x < st.tokens + NT)
			seen[x - st.tokens]++;
		else if (x)
			other++;
	}
	for (int t = 0; t < NT; t++) {
		struct token *x = st.acc[t].ptok;
		if (x >= st.tokens && x < st.tokens + NT)
			seen[x - st.tokens]++;
		else if (x)
			other++;
	}
	for (int t = 0; t < NT; t++)
		CHECK_EQ(seen[t], 1);
	CHECK_EQ(other, 0);

	int used = 0;
	pcpu_for_each_cpu(cpu) used++;
	long sigs = 0;
	for (int ph = 0; ph < NR_PHASES; ph++)
		sigs += st.acc[SIG].n[ph];
	fprintf(stderr, "%s: iterations", name);
	for (int ph = 0; ph < NR_PHASES; ph++)
		fprintf(stderr, " %s %ld", phase_names[ph], per_phase[ph]);
	fprintf(stderr,
		" (%ld by the signal handler); %ld CAS retries, %d copies\n",
		sigs, fails, used);
	FREE_W(8);
	FREE_W(16);
	FREE_W(32);
	FREE_W(64);
	pcpu_free(st.ptok);
}

static void test_storm(void)
{
	run_storm("storm", 400 / scale, false, 0);
}

static void test_switch(void)
{
	if (pcpu_path() != PCPU_PATH_RSEQ) {
		fprintf(stderr, "switch: not on the rseq path, skipped\n");
		return;
	}
	run_storm("switch", 150 / scale, true, 0);
	CHECK(pcpu_path() == PCPU_PATH_ATOMIC);
}

/* ---- simulation ---- */

/*
 * One thread acts as a few CPUs in turn, each operation done on all of
 * them before the next; a model of every copy predicts each result, and
 * at the end every copy (read with pcpu_ptr) must equal its model: an
 * operation never touches another CPU's copy.
 */
#define SIM_CPUS 4
#define SIM_W(W)                                                               \
	static void sim_one##W(const int *cpus, int ncpu)                      \
	{                                                                      \
		typedef uint##W##_t U;                                         \
		U *p = pcpu_alloc(sizeof(U), 0);                               \
		REQUIRE(p);                                                    \
		U model[PCPU_MAX_CPUS + 1];                                    \
		int idx[SIM_CPUS];                                             \
		for (int k = 0; k < ncpu; k++) {                               \
			CHECK(pcpu_sim_set_cpu(cpus[k]) == 0);                 \
			idx[k] = pcpu_this_cpu();                              \
			CHECK(idx[k] == cpus[k] ||                             \
			      idx[k] == pcpu_nr_cpu_ids());                    \
			model[idx[k]] = 0;                                     \
		}                                                              \
		for (int step = 0; step < 12; step++) {                        \
			for (int k = 0; k < ncpu; k++) {                       \
				CHECK(pcpu_sim_set_cpu(cpus[k]) == 0);         \
				U *m = &model[idx[k]], r;                      \
				U v = (U)(0x51 * (k + 1) + step);              \
				switch (step) {                                \
				case 0:                                        \
					pcpu_write(p, v);                      \
					*m = v;                                \
					break;                                 \
				case 1:                                        \
					r = pcpu_add_return(p, (U)-3);         \
					*m = (U)(*m - 3);                      \
					CHECK_EQ(r, *m);                       \
					break;                                 \
				case 2:                                        \
					r = pcpu_xchg(p, v);                   \
					CHECK_EQ(r, *m);                       \
					*m = v;                                \
					break;                                 \
				case 3:                                        \
					r = pcpu_cmpxchg(p, (U)(v + 1), 0);    \
					CHECK_EQ(r, *m); /* fails */           \
					r = pcpu_cmpxchg(p, *m, (U)(v * 3));   \
					CHECK_EQ(r, *m); /* succeeds */        \
					*m = (U)(v * 3);                       \
					break;                                 \
				case 4: {                                      \
					U o = (U)(*m + 1);                     \
					CHECK(!pcpu_try_cmpxchg(p, &o, 1));    \
					CHECK_EQ(o, *m);                       \
					CHECK(pcpu_try_cmpxchg(p, &o, (U)~v)); \
					*m = (U)~v;                            \
					break;                                 \
				}                                              \
				case 5:                                        \
					pcpu_and(p, (U)0xf0f0f0f0f0f0f0f0ULL); \
					*m &= (U)0xf0f0f0f0f0f0f0f0ULL;        \
					pcpu_or(p, (U)(1u << k));              \
					*m |= (U)(1u << k);                    \
					break;                                 \
				case 6:                                        \
					pcpu_add(p, v);                        \
					pcpu_sub(p, 1u);                       \
					pcpu_inc(p);                           \
					pcpu_inc(p);                           \
					pcpu_dec(p);                           \
					*m = (U)(*m + v);                      \
					break;                                 \
				case 7:                                        \
					CHECK_EQ(pcpu_inc_return(p),           \
						 (U)(*m + 1));                 \
					CHECK_EQ(pcpu_dec_return(p), *m);      \
					CHECK_EQ(pcpu_dec_return(p),           \
						 (U)(*m - 1));                 \
					CHECK_EQ(pcpu_sub_return(p, 2),        \
						 (U)(*m - 3));                 \
					*m = (U)(*m - 3);                      \
					break;                                 \
				default:                                       \
					CHECK_EQ(pcpu_read(p), *m);            \
					pcpu_add(p, (U)step);                  \
					*m = (U)(*m + step);                   \
					break;                                 \
				}                                              \
			}                                                      \
		}                                                              \
		CHECK(pcpu_sim_set_cpu(-1) == 0);                              \
		int cpu, seen = 0;                                             \
		U sum = 0;                                                     \
		pcpu_for_each_cpu(cpu) {                                       \
			bool acted = false;                                    \
			for (int k = 0; k < ncpu; k++)                         \
				acted |= idx[k] == cpu;                        \
			CHECK_EQ(*pcpu_ptr(p, cpu), acted ? model[cpu] : 0);   \
			seen += acted;                                         \
			sum = (U)(sum + (acted ? model[cpu] : 0));             \
		}                                                              \
		CHECK(seen >= 1);                                              \
		CHECK_EQ(pcpu_sum(p), sum);                                    \
		pcpu_free(p);                                                  \
	}
SIM_W(8)
SIM_W(16)
SIM_W(32)
SIM_W(64)

static void sim_pointers(const int *cpus, int ncpu)
{
	struct node nodes[SIM_CPUS][2];
	bool own[SIM_CPUS]; /* the simulated CPU has its own copy (not the
			       shared slot, which CPUs not ready share) */
	struct node **pp = pcpu_alloc(sizeof(struct node *), 0);
	REQUIRE(pp);
	for (int k = 0; k < ncpu; k++) {
		CHECK(pcpu_sim_set_cpu(cpus[k]) == 0);
		own[k] = pcpu_this_cpu() == cpus[k];
		if (own[k])
			CHECK(pcpu_xchg(pp, &nodes[k][0]) == NULL);
	}
	for (int k = 0; k < ncpu; k++) {
		CHECK(pcpu_sim_set_cpu(cpus[k]) == 0);
		if (!own[k])
			continue;
		struct node *o = &nodes[k][1];
		CHECK(!pcpu_try_cmpxchg(pp, &o, NULL) && o == &nodes[k][0]);
		CHECK(pcpu_cmpxchg(pp, o, &nodes[k][1]) == &nodes[k][0]);
		CHECK(pcpu_read(pp) == &nodes[k][1]);
	}
	CHECK(pcpu_sim_set_cpu(-1) == 0);
	for (int k = 0; k < ncpu; k++)
		if (own[k])
			CHECK(*pcpu_ptr(pp, cpus[k]) == &nodes[k][1]);
	pcpu_free(pp);
}

static void test_sim(void)
{
	int n = pcpu_nr_cpu_ids();
	int cpus[SIM_CPUS], ncpu = 0;
	const int want[SIM_CPUS] = { 0, n - 1, n / 2, 1 };
	for (int i = 0; i < SIM_CPUS; i++) {
		bool dup = want[i] >= n;
		for (int k = 0; k < ncpu; k++)
			dup |= cpus[k] == want[i];
		if (!dup)
			cpus[ncpu++] = want[i];
	}
	sim_one8(cpus, ncpu);
	sim_one16(cpus, ncpu);
	sim_one32(cpus, ncpu);
	sim_one64(cpus, ncpu);
	sim_pointers(cpus, ncpu);
	CHECK(pcpu_path() == PCPU_PATH_ATOMIC);
	run_storm("sim storm", 150 / scale, false, 1);
}

static void check_mode(void)
{
	check_test_path();
	fprintf(stderr, "mode: path %s, index %s, %d cpu ids\n",
		pcpu_path() == PCPU_PATH_RSEQ ? "rseq" : "atomic",
		pcpu_index_mode() == PCPU_INDEX_CID ? "cid" : "cpu",
		pcpu_nr_cpu_ids());
}

int main(void)
{
	const char *s = getenv("PCPU_TEST_SCALE");
	if (s && !strcmp(s, "valgrind"))
		scale = 30;
	else if (PCPU_TEST_TSAN)
		scale = 4;
	real_cpus_init();
	signal(SIGALRM, on_alarm);
	check_mode();
	static const struct check_part parts[] = {
		{ "types", test_types }, { "sub", test_sub },
		{ "storm", test_storm }, { "switch", test_switch },
		{ "sim", test_sim },
	};
	check_run_parts(parts, sizeof(parts) / sizeof(parts[0]), NULL);
	CHECK(pcpu_validate() == 0);
	return check_done();
}
