/*
 * ops.h - this-CPU operations on per-CPU memory: the fast paths.
 *
 * Included by pcpu.h; do not include directly.  Every operation first reads
 * the calling thread's index (CPU number or concurrency id) from its rseq
 * area, checks that the index may use the fast path (pcpu__ok[idx], which
 * the library clears before it fences a CPU or switches the process to the
 * atomic path), then commits with a single non-atomic instruction (a store,
 * or an add/and/or on memory) inside an rseq critical section that
 * re-checks both the index and pcpu__ok[idx]; the loads before it (the old
 * value of xchg, cmpxchg, add_return) are inside the same section.
 * Anything else (no rseq, simulation, a CPU not yet ready, before
 * initialisation) leaves through one unlikely branch to an out-of-line
 * slow path that uses atomic read-modify-write instead.
 *
 * The operations are the kernel's this_cpu_* operations (see "The
 * operations" below for the types they take).
 */
#ifndef PCPU_OPS_H
#define PCPU_OPS_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define pcpu__likely(x) __builtin_expect(!!(x), 1)
#define pcpu__unlikely(x) __builtin_expect(!!(x), 0)

/* State the inline fast paths read; written only by the library. */
struct pcpu__fast {
	long idx_tpoff;       /* thread-pointer offset of rseq cpu_id/mm_cid */
	long cs_tpoff;        /* thread-pointer offset of rseq rseq_cs */
	unsigned int nr;      /* indexes below this may try the fast path;
				 0 = never (not initialised, no rseq) */
	unsigned int nr_ids;  /* CPU ids (pcpu_nr_cpu_ids) */
	unsigned int shift;   /* log2 of the distance between two CPUs'
				 copies (the unit size) */
	long cid_tpoff;       /* thread-pointer offset of rseq mm_cid */
	unsigned int cid_nr;  /* like nr, for fast paths indexed by mm_cid
				 whatever the index mode (counters); 0 when
				 the kernel has no mm_cid */
	long cpu_tpoff;       /* thread-pointer offset of rseq cpu_id */
};
extern struct pcpu__fast pcpu__fast;
/* pcpu__ok[idx] != 0: the fast path may commit on index idx.  Twice
 * PCPU_MAX_CPUS entries: the upper half, where negative indexes land, is
 * always 0. */
#define PCPU__OK_SIZE 16384
extern unsigned char pcpu__ok[PCPU__OK_SIZE];
/* pcpu__ptrok[idx] != 0: idx is in use for good, pcpu_ptr need not tell
 * the library (same layout). */
extern unsigned char pcpu__ptrok[PCPU__OK_SIZE];

/*
 * Out-of-line slow paths, one per operation and width W (8, 16, 32, 64):
 * src/cpu.c has add, write, read and sum for 32 and 64 bits, src/ops.c
 * the rest.  They take and return the value as the W-bit unsigned
 * integer; the macros below convert from and to the caller's type.
 */
#define PCPU__DECLARE_SLOW(W)                                                  \
	void pcpu__add_slow##W(void *p, uint##W##_t v);                        \
	void pcpu__write_slow##W(void *p, uint##W##_t v);                      \
	void pcpu__and_slow##W(void *p, uint##W##_t v);                        \
	void pcpu__or_slow##W(void *p, uint##W##_t v);                         \
	uint##W##_t pcpu__add_return_slow##W(void *p, uint##W##_t v);          \
	uint##W##_t pcpu__xchg_slow##W(void *p, uint##W##_t v);                \
	uint##W##_t pcpu__cmpxchg_slow##W(void *p, uint##W##_t old,            \
					  uint##W##_t nv);                     \
	uint##W##_t pcpu__read_slow##W(const void *p);                         \
	uint##W##_t pcpu__sum##W(const void *p);
PCPU__DECLARE_SLOW(8)
PCPU__DECLARE_SLOW(16)
PCPU__DECLARE_SLOW(32)
PCPU__DECLARE_SLOW(64)
void *pcpu__ptr_slow(const void *p, int cpu);

#if defined(__x86_64__) && !defined(PCPU_NO_RSEQ)
#include "pcpu/arch/x86_64.h"
#elif defined(__aarch64__) && !defined(PCPU_NO_RSEQ)
#include "pcpu/arch/aarch64.h"
#else
#include "pcpu/arch/generic.h"
#endif

/*
 * The int at thread-pointer offset @io (cpu_id or mm_cid), or all ones
 * when the calling thread has no rseq registration (its cpu_id is
 * negative; its mm_cid field would read 0, and a section it ran would
 * not be restarted).  Both fields share one cache line.
 */
static inline unsigned int pcpu__load_index(long io)
{
	return (unsigned int)(pcpu__arch_load_index(io) |
			      (pcpu__arch_load_index(pcpu__fast.cpu_tpoff) >>
			       31));
}

/*
 * The index the fast path would use, or -1 when it must not be tried.
 * pcpu__ok[] is 0 for every index that may not use the fast path, and for
 * all of them before initialisation, in the atomic path and after a
 * switch to it; the index is masked into the array (all ones for an
 * unregistered thread lands in its upper half, always 0), so two loads
 * of the thread's rseq area and one test decide.
 */
static inline int pcpu__fast_index(void)
{
	unsigned int idx =
		pcpu__load_index(pcpu__fast.idx_tpoff) & (PCPU__OK_SIZE - 1);
	if (pcpu__unlikely(!__atomic_load_n(&pcpu__ok[idx], __ATOMIC_ACQUIRE)))
		return -1;
	return (int)idx;
}

static inline void *pcpu__copy(const void *p, int idx)
{
	return (char *)p + ((size_t)idx << pcpu__fast.shift);
}

/*
 * The fast paths of one width W, on the W-bit unsigned integer.  Each
 * tries the rseq section of the calling thread's index until it commits,
 * and goes to the slow path when the index may not use the fast path (or
 * stops being allowed to after an abort).
 */

/* An operation that returns nothing: add, write, and, or. */
#define PCPU__DEFINE_VOID_OP(op, W)                                            \
	static inline void pcpu__##op##W(void *p, uint##W##_t v)               \
	{                                                                      \
		int idx;                                                       \
		while ((idx = pcpu__fast_index()) >= 0) {                      \
			if (pcpu__likely(pcpu__arch_##op##W(                   \
				    (uint##W##_t *)pcpu__copy(p, idx), v, idx, \
				    pcpu__fast.idx_tpoff) == 0))               \
				return;                                        \
		}                                                              \
		pcpu__##op##_slow##W(p, v);                                    \
	}

/* An operation that returns a value its section read or computed:
 * add_return (the new value), xchg (the old one). */
#define PCPU__DEFINE_RET_OP(op, W)                                             \
	static inline uint##W##_t pcpu__##op##W(void *p, uint##W##_t v)        \
	{                                                                      \
		int idx;                                                       \
		uint##W##_t r;                                                 \
		while ((idx = pcpu__fast_index()) >= 0) {                      \
			if (pcpu__likely(pcpu__arch_##op##W(                   \
				    (uint##W##_t *)pcpu__copy(p, idx), v, &r,  \
				    idx, pcpu__fast.idx_tpoff) == 0))          \
				return r;                                      \
		}                                                              \
		return pcpu__##op##_slow##W(p, v);                             \
	}

#define PCPU__DEFINE_WIDTH(W)                                                  \
	PCPU__DEFINE_VOID_OP(add, W)                                           \
	PCPU__DEFINE_VOID_OP(write, W)                                         \
	PCPU__DEFINE_VOID_OP(and, W)                                           \
	PCPU__DEFINE_VOID_OP(or, W)                                            \
	PCPU__DEFINE_RET_OP(add_return, W)                                     \
	PCPU__DEFINE_RET_OP(xchg, W)                                           \
	/* The value found; @nv was stored only if it equals @old. */          \
	static inline uint##W##_t pcpu__cmpxchg##W(void *p, uint##W##_t old,   \
						   uint##W##_t nv)             \
	{                                                                      \
		int idx;                                                       \
		uint##W##_t r;                                                 \
		while ((idx = pcpu__fast_index()) >= 0) {                      \
			if (pcpu__likely(pcpu__arch_cmpxchg##W(                \
				    (uint##W##_t *)pcpu__copy(p, idx), old,    \
				    nv, &r, idx, pcpu__fast.idx_tpoff) == 0))  \
				return r;                                      \
		}                                                              \
		return pcpu__cmpxchg_slow##W(p, old, nv);                      \
	}                                                                      \
	static inline uint##W##_t pcpu__read##W(const void *p)                 \
	{                                                                      \
		int idx = pcpu__fast_index();                                  \
		if (pcpu__likely(idx >= 0))                                    \
			return __atomic_load_n(                                \
				(const uint##W##_t *)pcpu__copy(p, idx),       \
				__ATOMIC_RELAXED);                             \
		return pcpu__read_slow##W(p);                                  \
	}

PCPU__DEFINE_WIDTH(8)
PCPU__DEFINE_WIDTH(16)
PCPU__DEFINE_WIDTH(32)
PCPU__DEFINE_WIDTH(64)

_Static_assert(sizeof(int) == 4 && sizeof(long) == 8 && sizeof(void *) == 8,
	       "libpcpu needs an LP64 target");

/*
 * The type-generic layer.  The width comes from sizeof(*p), the value
 * type from __typeof__(*p): a value is converted to the type of *p first
 * (as the kernel's macros do), then to the W-bit unsigned integer; a
 * result is converted back, so every macro returns the type of *p.
 * Conversions go through uintptr_t so that pointers and integers of any
 * width pass without warnings in the branches not taken.  For a type the
 * checks below reject, PCPU__T is long, so that their message is the only
 * error.
 */
#define PCPU__T(p)                                                             \
	__typeof__(__builtin_choose_expr(PCPU__IS_VALUE(p), *(p), 0L))
#define PCPU__IN(W, p, v) ((uint##W##_t)(uintptr_t)(PCPU__T(p))(v))
#define PCPU__OUT(p, x) ((PCPU__T(p))(uintptr_t)(x))

/* m(W, ...) for the width of *@p: only that branch is evaluated. */
#define PCPU__SIZED(p, m, ...)                                                 \
	__builtin_choose_expr(                                                 \
		sizeof(*(p)) == 1, m(8, __VA_ARGS__),                          \
		__builtin_choose_expr(                                         \
			sizeof(*(p)) == 2, m(16, __VA_ARGS__),                 \
			__builtin_choose_expr(sizeof(*(p)) == 4,               \
					      m(32, __VA_ARGS__),              \
					      m(64, __VA_ARGS__))))

/*
 * Compile-time checks, with a message naming the operation.  Integer
 * types (char and enums included, _Bool excluded) of 1, 2, 4 or 8 bytes
 * take every operation; _Bool and pointers only those the kernel allows
 * on them (read, write, xchg, cmpxchg, try_cmpxchg).  The operations
 * that write reject a pointer to const.  Nothing here is evaluated.
 */
#define PCPU__CHECK(cond, msg)                                                 \
	((void)sizeof(struct {                                                 \
		_Static_assert(cond, msg);                                     \
		char pcpu__unused;                                             \
	}))
#define PCPU__IS_VOID(p) __builtin_types_compatible_p(__typeof__(*(p)), void)
#define PCPU__IS_BOOL(p) __builtin_types_compatible_p(__typeof__(*(p)), _Bool)
/* The type class of *p (1 integer, 5 pointer), a double's for void. */
#define PCPU__CLASS(p)                                                         \
	__builtin_classify_type(                                               \
		*__builtin_choose_expr(PCPU__IS_VOID(p), (double *)0, (p)))
#define PCPU__IS_INT(p)                                                        \
	(PCPU__CLASS(p) == 1 && !PCPU__IS_BOOL(p) &&                           \
	 (sizeof(*(p)) == 1 || sizeof(*(p)) == 2 || sizeof(*(p)) == 4 ||       \
	  sizeof(*(p)) == 8))
#define PCPU__IS_VALUE(p)                                                      \
	(PCPU__IS_INT(p) || PCPU__IS_BOOL(p) ||                                \
	 (PCPU__CLASS(p) == 5 && sizeof(*(p)) == 8))
#define PCPU__IS_CONST(p)                                                      \
	__builtin_types_compatible_p(__typeof__(p), const __typeof__(*(p)) *)
#define PCPU__INT_MSG(op)                                                      \
	#op ": *p must be an integer type of 1, 2, 4 or 8 bytes"
#define PCPU__VALUE_MSG(op)                                                    \
	#op ": *p must be an integer type of 1, 2, 4 or 8 bytes, _Bool or a "  \
	    "pointer"
#define PCPU__CONST_MSG(op) #op ": p points to const"
/* Reads: integers (pcpu_sum) or values (pcpu_read), const allowed. */
#define PCPU__CHECK_INT_RO(op, p)                                              \
	PCPU__CHECK(PCPU__IS_INT(p), PCPU__INT_MSG(op))
#define PCPU__CHECK_VALUE_RO(op, p)                                            \
	PCPU__CHECK(PCPU__IS_VALUE(p), PCPU__VALUE_MSG(op))
#define PCPU__CHECK_INT(op, p)                                                 \
	(PCPU__CHECK_INT_RO(op, p),                                            \
	 PCPU__CHECK(!PCPU__IS_CONST(p), PCPU__CONST_MSG(op)))
#define PCPU__CHECK_VALUE(op, p)                                               \
	(PCPU__CHECK_VALUE_RO(op, p),                                          \
	 PCPU__CHECK(!PCPU__IS_CONST(p), PCPU__CONST_MSG(op)))

/* One branch of PCPU__SIZED per operation. */
#define PCPU__VOID(W, op, p, v) pcpu__##op##W((void *)(p), (v))
#define PCPU__RET(W, op, p, v) PCPU__OUT(p, pcpu__##op##W((void *)(p), (v)))
#define PCPU__ADD(W, p, v) PCPU__VOID(W, add, p, PCPU__IN(W, p, v))
/* -(typeof(*p))v, as the kernel's this_cpu_sub: negated in the W-bit
 * unsigned type, which wraps where the signed negation could overflow. */
#define PCPU__NEG(W, p, v) ((uint##W##_t)-PCPU__IN(W, p, v))
#define PCPU__SUB(W, p, v) PCPU__VOID(W, add, p, PCPU__NEG(W, p, v))
#define PCPU__INC(W, p) PCPU__VOID(W, add, p, (uint##W##_t)1)
#define PCPU__DEC(W, p) PCPU__VOID(W, add, p, (uint##W##_t)-1)
#define PCPU__WRITE(W, p, v) PCPU__VOID(W, write, p, PCPU__IN(W, p, v))
#define PCPU__AND(W, p, v) PCPU__VOID(W, and, p, PCPU__IN(W, p, v))
#define PCPU__OR(W, p, v) PCPU__VOID(W, or, p, PCPU__IN(W, p, v))
#define PCPU__ADD_RETURN(W, p, v) PCPU__RET(W, add_return, p, PCPU__IN(W, p, v))
#define PCPU__SUB_RETURN(W, p, v)                                              \
	PCPU__RET(W, add_return, p, PCPU__NEG(W, p, v))
#define PCPU__INC_RETURN(W, p) PCPU__RET(W, add_return, p, (uint##W##_t)1)
#define PCPU__DEC_RETURN(W, p) PCPU__RET(W, add_return, p, (uint##W##_t)-1)
#define PCPU__XCHG(W, p, v) PCPU__RET(W, xchg, p, PCPU__IN(W, p, v))
#define PCPU__CMPXCHG(W, p, o, n)                                              \
	PCPU__OUT(p, pcpu__cmpxchg##W((void *)(p), PCPU__IN(W, p, o),          \
				      PCPU__IN(W, p, n)))
#define PCPU__TRY_CMPXCHG(W, p, po, n)                                         \
	__extension__({                                                        \
		PCPU__T(p) *pcpu__po = (po);                                   \
		uint##W##_t pcpu__old = PCPU__IN(W, p, *pcpu__po);             \
		uint##W##_t pcpu__found = pcpu__cmpxchg##W(                    \
			(void *)(p), pcpu__old, PCPU__IN(W, p, n));            \
		if (pcpu__found != pcpu__old)                                  \
			*pcpu__po = PCPU__OUT(p, pcpu__found);                 \
		(_Bool)(pcpu__found == pcpu__old);                             \
	})
#define PCPU__READ(W, p) PCPU__OUT(p, pcpu__read##W((const void *)(p)))
#define PCPU__SUM(W, p) PCPU__OUT(p, pcpu__sum##W((const void *)(p)))

/*
 * The operations, each named after the kernel's this_cpu_* operation
 * with the same semantics (include/linux/percpu-defs.h), on the calling
 * CPU's copy of *@p.  @p points to an integer type of 1, 2, 4 or 8 bytes
 * (char, short, int, long, long long, signed or unsigned, int8_t ...
 * uint64_t, size_t, enums); read, write, xchg, cmpxchg and try_cmpxchg
 * also take _Bool and pointer types (@p a T **).  Any other type, or a
 * pointer to const for an operation that writes, is a compile-time
 * error.  Values are converted to the type of *@p first; arithmetic
 * wraps like unsigned arithmetic of that width; results have the type
 * of *@p.  Each operation is atomic with respect to every other
 * operation on the same copy, signal handlers' included (the thread's
 * CPU may change right after it), and orders no other memory access
 * (relaxed), like the kernel's.
 */

/* this_cpu_add: *p += v. */
#define pcpu_add(p, v)                                                         \
	(PCPU__CHECK_INT(pcpu_add, p), PCPU__SIZED(p, PCPU__ADD, p, v))
/* this_cpu_sub: *p -= v, i.e. *p += -(typeof(*p))v. */
#define pcpu_sub(p, v)                                                         \
	(PCPU__CHECK_INT(pcpu_sub, p), PCPU__SIZED(p, PCPU__SUB, p, v))
/* this_cpu_inc, this_cpu_dec: *p += 1, *p -= 1. */
#define pcpu_inc(p) (PCPU__CHECK_INT(pcpu_inc, p), PCPU__SIZED(p, PCPU__INC, p))
#define pcpu_dec(p) (PCPU__CHECK_INT(pcpu_dec, p), PCPU__SIZED(p, PCPU__DEC, p))
/* this_cpu_and, this_cpu_or: *p &= v, *p |= v. */
#define pcpu_and(p, v)                                                         \
	(PCPU__CHECK_INT(pcpu_and, p), PCPU__SIZED(p, PCPU__AND, p, v))
#define pcpu_or(p, v)                                                          \
	(PCPU__CHECK_INT(pcpu_or, p), PCPU__SIZED(p, PCPU__OR, p, v))
/* this_cpu_add_return, this_cpu_sub_return: *p += v (-= v); returns the
 * new value. */
#define pcpu_add_return(p, v)                                                  \
	(PCPU__CHECK_INT(pcpu_add_return, p),                                  \
	 PCPU__SIZED(p, PCPU__ADD_RETURN, p, v))
#define pcpu_sub_return(p, v)                                                  \
	(PCPU__CHECK_INT(pcpu_sub_return, p),                                  \
	 PCPU__SIZED(p, PCPU__SUB_RETURN, p, v))
/* this_cpu_inc_return, this_cpu_dec_return: the new value. */
#define pcpu_inc_return(p)                                                     \
	(PCPU__CHECK_INT(pcpu_inc_return, p),                                  \
	 PCPU__SIZED(p, PCPU__INC_RETURN, p))
#define pcpu_dec_return(p)                                                     \
	(PCPU__CHECK_INT(pcpu_dec_return, p),                                  \
	 PCPU__SIZED(p, PCPU__DEC_RETURN, p))
/* this_cpu_write: *p = v. */
#define pcpu_write(p, v)                                                       \
	(PCPU__CHECK_VALUE(pcpu_write, p), PCPU__SIZED(p, PCPU__WRITE, p, v))
/* this_cpu_read: the calling CPU's copy (a snapshot: the thread may move
 * right after).  @p may point to const. */
#define pcpu_read(p)                                                           \
	(PCPU__CHECK_VALUE_RO(pcpu_read, p), PCPU__SIZED(p, PCPU__READ, p))
/* this_cpu_xchg: *p = v; returns the old value. */
#define pcpu_xchg(p, v)                                                        \
	(PCPU__CHECK_VALUE(pcpu_xchg, p), PCPU__SIZED(p, PCPU__XCHG, p, v))
/* this_cpu_cmpxchg: if *p == old, *p = nv; returns the value found
 * (equal to @old when @nv was stored). */
#define pcpu_cmpxchg(p, old, nv)                                               \
	(PCPU__CHECK_VALUE(pcpu_cmpxchg, p),                                   \
	 PCPU__SIZED(p, PCPU__CMPXCHG, p, old, nv))
/* this_cpu_try_cmpxchg: if *p == *pold, *p = nv and true; else false and
 * *pold = the value found.  @pold points to the type of *p. */
#define pcpu_try_cmpxchg(p, pold, nv)                                          \
	(PCPU__CHECK_VALUE(pcpu_try_cmpxchg, p),                               \
	 PCPU__SIZED(p, PCPU__TRY_CMPXCHG, p, pold, nv))
/* Sum of every copy that can be non-zero (pcpu_for_each_cpu), read with
 * relaxed atomic loads, wrapping in the type of *p: exact when no update
 * runs concurrently.  No kernel namesake (the kernel sums by hand with
 * for_each_possible_cpu).  @p may point to const. */
#define pcpu_sum(p)                                                            \
	(PCPU__CHECK_INT_RO(pcpu_sum, p), PCPU__SIZED(p, PCPU__SUM, p))

/*
 * pcpu_ptr - typed address of index @cpu's copy of @p (the kernel's
 * per_cpu_ptr), for any @cpu in 0..pcpu_nr_cpu_ids()-1, whether or not
 * that CPU ever ran anything: in a fresh area it reads zero (or the
 * pcpu_alloc_init value), and whatever is written through it is seen by
 * pcpu_sum, pcpu_for_each_cpu and the operations of that CPU, and is
 * zeroed when the area is freed.  The first pcpu_ptr of an index tells
 * the library (one predictable branch here, a slow path once per index),
 * which keeps that index in use for good.  An out-of-range @cpu goes to
 * the error handler (default: abort), in every build; if the handler
 * returns, pcpu_ptr returns NULL with errno EINVAL.
 */
static inline void *pcpu__ptr(const void *p, int cpu)
{
	if (pcpu__unlikely((unsigned int)cpu >= PCPU__OK_SIZE ||
			   !__atomic_load_n(&pcpu__ptrok[cpu], __ATOMIC_ACQUIRE)))
		return pcpu__ptr_slow(p, cpu);
	return pcpu__copy(p, cpu);
}
#define pcpu_ptr(p, cpu) ((__typeof__(p))pcpu__ptr((p), (cpu)))

#ifdef __cplusplus
}
#endif

#endif
