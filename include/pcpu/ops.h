/*
 * ops.h - this-CPU operations on per-CPU memory: the fast paths.
 *
 * Included by pcpu.h; do not include directly.  Every operation first reads
 * the calling thread's index (CPU number or concurrency id) from its rseq
 * area, checks that the index may use the fast path (pcpu__ok[idx], which
 * the library clears before it fences a CPU or switches the process to the
 * atomic path), then commits with a single non-atomic instruction inside
 * an rseq critical section that re-checks both the index and pcpu__ok[idx].
 * Anything else (no rseq, simulation, a CPU not yet ready, before
 * initialisation) leaves through one unlikely branch to an out-of-line
 * slow path that uses atomic read-modify-write instead.
 *
 * The type-generic macros accept pointers to int, unsigned int, long,
 * unsigned long, long long and unsigned long long (so int32_t, uint32_t,
 * int64_t, uint64_t, size_t and friends), const-qualified for reads.
 * Arithmetic wraps like unsigned arithmetic of the same width.
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

/* Out-of-line slow paths (src/cpu.c). */
void pcpu__add_slow32(void *p, uint32_t v);
void pcpu__add_slow64(void *p, uint64_t v);
void pcpu__write_slow32(void *p, uint32_t v);
void pcpu__write_slow64(void *p, uint64_t v);
uint32_t pcpu__read_slow32(const void *p);
uint64_t pcpu__read_slow64(const void *p);
uint32_t pcpu__sum32(const void *p);
uint64_t pcpu__sum64(const void *p);
/* Slow path of what is indexed by concurrency id (counters): the index to
 * use now, made ready (mm_cid, else a compact per-thread id; the shared
 * slot pcpu_nr_cpu_ids() when none fits). */
int pcpu__cid_slow_index(void);
/* True when a copy at concurrency index @idx must be changed with an rseq
 * commit (indexed by mm_cid); false when atomics are right. */
_Bool pcpu__cid_rseq(int idx);
void pcpu__bad_cpu(const char *call, const void *p, int cpu)
	__attribute__((noreturn));

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

#define PCPU__DEFINE_WIDTH(W)                                                  \
	static inline void pcpu__add##W(void *p, uint##W##_t v)                \
	{                                                                      \
		int idx;                                                       \
		while ((idx = pcpu__fast_index()) >= 0) {                      \
			if (pcpu__likely(pcpu__arch_add##W(                    \
				    (uint##W##_t *)pcpu__copy(p, idx), v, idx, \
				    pcpu__fast.idx_tpoff) == 0))               \
				return;                                        \
		}                                                              \
		pcpu__add_slow##W(p, v);                                       \
	}                                                                      \
	static inline void pcpu__write##W(void *p, uint##W##_t v)              \
	{                                                                      \
		int idx;                                                       \
		while ((idx = pcpu__fast_index()) >= 0) {                      \
			if (pcpu__likely(pcpu__arch_write##W(                  \
				    (uint##W##_t *)pcpu__copy(p, idx), v, idx, \
				    pcpu__fast.idx_tpoff) == 0))               \
				return;                                        \
		}                                                              \
		pcpu__write_slow##W(p, v);                                     \
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

PCPU__DEFINE_WIDTH(32)
PCPU__DEFINE_WIDTH(64)

/* Per-type wrappers, so the macros keep the caller's type. */
#define PCPU__DEFINE_TYPE(name, T, W)                                          \
	static inline void pcpu__add_##name(T *p, T v)                         \
	{                                                                      \
		pcpu__add##W((void *)p, (uint##W##_t)v);                       \
	}                                                                      \
	static inline void pcpu__write_##name(T *p, T v)                       \
	{                                                                      \
		pcpu__write##W((void *)p, (uint##W##_t)v);                     \
	}                                                                      \
	static inline T pcpu__read_##name(const T *p)                          \
	{                                                                      \
		return (T)pcpu__read##W((const void *)p);                      \
	}                                                                      \
	static inline T pcpu__sum_##name(const T *p)                           \
	{                                                                      \
		return (T)pcpu__sum##W((const void *)p);                       \
	}

_Static_assert(sizeof(int) == 4 && sizeof(long) == 8,
	       "libpcpu needs an LP64 target");
PCPU__DEFINE_TYPE(i, int, 32)
PCPU__DEFINE_TYPE(u, unsigned int, 32)
PCPU__DEFINE_TYPE(l, long, 64)
PCPU__DEFINE_TYPE(ul, unsigned long, 64)
PCPU__DEFINE_TYPE(ll, long long, 64)
PCPU__DEFINE_TYPE(ull, unsigned long long, 64)

#define PCPU__GENERIC(op, p)                                                   \
	_Generic((p),                                                          \
		int *: pcpu__##op##_i,                                         \
		unsigned int *: pcpu__##op##_u,                                \
		long *: pcpu__##op##_l,                                        \
		unsigned long *: pcpu__##op##_ul,                              \
		long long *: pcpu__##op##_ll,                                  \
		unsigned long long *: pcpu__##op##_ull)

#define PCPU__GENERIC_CONST(op, p)                                             \
	_Generic((p),                                                          \
		int *: pcpu__##op##_i,                                         \
		unsigned int *: pcpu__##op##_u,                                \
		long *: pcpu__##op##_l,                                        \
		unsigned long *: pcpu__##op##_ul,                              \
		long long *: pcpu__##op##_ll,                                  \
		unsigned long long *: pcpu__##op##_ull,                        \
		const int *: pcpu__##op##_i,                                   \
		const unsigned int *: pcpu__##op##_u,                          \
		const long *: pcpu__##op##_l,                                  \
		const unsigned long *: pcpu__##op##_ul,                        \
		const long long *: pcpu__##op##_ll,                            \
		const unsigned long long *: pcpu__##op##_ull)

/* Add @v to the calling CPU's copy of *@p. */
#define pcpu_add(p, v) PCPU__GENERIC(add, p)((p), (v))
/* Subtract @v from the calling CPU's copy: add -(typeof(*p))v, as the
 * kernel's this_cpu_sub (-(v) in v's own type would add 4294967295 to an
 * unsigned long for v = 1u), negated as unsigned long long so that no
 * signed negation can overflow. */
#define pcpu_sub(p, v)                                                         \
	PCPU__GENERIC(add, p)                                                  \
	((p), (__typeof__(*(p)))(0ULL - (unsigned long long)(__typeof__(*(p)))(v)))
#define pcpu_inc(p) PCPU__GENERIC(add, p)((p), 1)
#define pcpu_dec(p) PCPU__GENERIC(add, p)((p), -1)
/* Store @v into the calling CPU's copy. */
#define pcpu_write(p, v) PCPU__GENERIC(write, p)((p), (v))
/* The calling CPU's copy (a snapshot: the thread may move right after). */
#define pcpu_read(p) PCPU__GENERIC_CONST(read, p)((p))
/* Sum of every copy that can be non-zero (pcpu_for_each_cpu), read with
 * relaxed atomic loads: exact when no update runs concurrently. */
#define pcpu_sum(p) PCPU__GENERIC_CONST(sum, p)((p))

/*
 * pcpu_ptr - typed address of CPU @cpu's copy of @p.  @cpu may be any id
 * below pcpu_nr_cpu_ids(), or pcpu_nr_cpu_ids() itself for the shared
 * slot.  Unless NDEBUG is defined, an out-of-range cpu aborts with a
 * message naming the call.
 */
#ifdef NDEBUG
#define pcpu_ptr(p, cpu) ((__typeof__(p))pcpu__copy((p), (cpu)))
#else
static inline void *pcpu__ptr_checked(const void *p, int cpu)
{
	if (pcpu__unlikely((unsigned int)cpu > pcpu__fast.nr_ids ||
			   pcpu__fast.nr_ids == 0))
		pcpu__bad_cpu("pcpu_ptr", p, cpu);
	return pcpu__copy(p, cpu);
}
#define pcpu_ptr(p, cpu) ((__typeof__(p))pcpu__ptr_checked((p), (cpu)))
#endif

#ifdef __cplusplus
}
#endif

#endif
