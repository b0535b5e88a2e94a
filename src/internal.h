/*
 * internal.h - declarations shared between libpcpu's source files.
 *
 * Names: _pcpu_ for functions and data shared across files (never exported
 * to users), grouped below by the file that defines them; pcpu__ for what
 * the public inline fast paths need (include/pcpu/ops.h).
 */
#ifndef PCPU_INTERNAL_H
#define PCPU_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "pcpu/pcpu.h"

#define PCPU_LIKELY(x) __builtin_expect(!!(x), 1)
#define PCPU_UNLIKELY(x) __builtin_expect(!!(x), 0)

/*
 * Debug assertions (liburcu style): with PCPU_DEBUG=0 the expression is
 * still type-checked but never evaluated.  Hardening checks that must stay
 * on in release builds do not use this macro: they call _pcpu_fatal() or
 * _pcpu_report().  PCPU_DEBUG >= 2 also runs the whole-structure
 * validator after every allocator operation.
 */
#ifndef PCPU_DEBUG
#define PCPU_DEBUG 0
#endif
#if PCPU_DEBUG
#define PCPU_ASSERT(expr)                                                       \
	((expr) ? (void)0 : _pcpu_assert_fail(#expr, __FILE__, __LINE__, __func__))
#else
#define PCPU_ASSERT(expr) ((void)sizeof((void)(expr), 0))
#endif

/* ---- cpuset: a fixed-size CPU mask (topology.c, used everywhere) ---- */

/* One word more than PCPU_MAX_CPUS needs: bit PCPU_MAX_CPUS can stand for
 * the shared slot. */
#define PCPU_CPUSET_WORDS (PCPU_MAX_CPUS / 64 + 1)
struct pcpu_cpuset {
	uint64_t bits[PCPU_CPUSET_WORDS];
};

static inline void _pcpu_cpuset_zero(struct pcpu_cpuset *s)
{
	for (int i = 0; i < PCPU_CPUSET_WORDS; i++)
		s->bits[i] = 0;
}
static inline void _pcpu_cpuset_set(struct pcpu_cpuset *s, int cpu)
{
	s->bits[cpu / 64] |= (uint64_t)1 << (cpu % 64);
}
static inline void _pcpu_cpuset_clear(struct pcpu_cpuset *s, int cpu)
{
	s->bits[cpu / 64] &= ~((uint64_t)1 << (cpu % 64));
}
static inline bool _pcpu_cpuset_test(const struct pcpu_cpuset *s, int cpu)
{
	return (s->bits[cpu / 64] >> (cpu % 64)) & 1;
}
/* Lowest set CPU >= from, or -1. */
static inline int _pcpu_cpuset_next(const struct pcpu_cpuset *s, int from)
{
	if (from < 0)
		from = 0;
	for (int w = from / 64; w < PCPU_CPUSET_WORDS; w++) {
		uint64_t x = s->bits[w];
		if (w == from / 64)
			x &= ~(uint64_t)0 << (from % 64);
		if (x)
			return w * 64 + __builtin_ctzll(x);
	}
	return -1;
}
static inline int _pcpu_cpuset_count(const struct pcpu_cpuset *s)
{
	int n = 0;
	for (int i = 0; i < PCPU_CPUSET_WORDS; i++)
		n += __builtin_popcountll(s->bits[i]);
	return n;
}
#define _pcpu_cpuset_for_each(cpu, s)                                          \
	for (int cpu = _pcpu_cpuset_next((s), 0); cpu >= 0;                    \
	     cpu = _pcpu_cpuset_next((s), cpu + 1))

/* ---- topology.c ---- */

/*
 * What the process can know about its CPUs.  possible/online/allowed are
 * masks over CPU ids < nr_cpu_ids; node[cpu] is the NUMA node of a possible
 * CPU (0 where unknown).  In simulation (PCPU_SIM_POSSIBLE) the masks are
 * the simulated ones and allowed == online.
 */
struct pcpu_topology {
	int nr_cpu_ids; /* highest possible CPU + 1, >= 1 */
	int nr_nodes;   /* highest node + 1, >= 1 */
	bool simulated;
	struct pcpu_cpuset possible;
	struct pcpu_cpuset online;
	struct pcpu_cpuset allowed; /* affinity & cgroup cpuset & online */
	uint16_t node[PCPU_MAX_CPUS];
};

/*
 * _pcpu_cpulist_parse - parse a kernel cpulist ("0-3,8,10-11\n").
 * @s, @len: the text (need not be NUL-terminated; one trailing newline and
 * surrounding blanks are accepted; an empty list is valid and empty).
 * Only "a" and "a-b" with a <= b are accepted (no strides).  Every id must
 * be < PCPU_MAX_CPUS.
 * Returns: 0, or -EINVAL for malformed text, -ERANGE for an id too large;
 * @out is only written on success.  Never reads past s[len-1].
 */
int _pcpu_cpulist_parse(const char *s, size_t len, struct pcpu_cpuset *out);

/* Formats @set as a cpulist into buf (always NUL-terminated); returns the
 * length it needed (like snprintf). */
int _pcpu_cpulist_format(const struct pcpu_cpuset *set, char *buf, size_t len);

/*
 * _pcpu_topology_read - read the real topology.
 * @root: prefix for every path read ("" or NULL for the real /sys and
 * /proc; tests pass a fake tree).  Missing or malformed files fall back
 * (possible -> present -> online -> affinity -> sysconf); never fails.
 */
void _pcpu_topology_read(struct pcpu_topology *t, const char *root);

/*
 * _pcpu_topology_sim - build a simulated topology of @possible_str CPUs
 * (decimal, 1..PCPU_MAX_CPUS) of which @online_str (a cpulist, NULL for
 * all) are online.  NUMA: nodes of 64 consecutive CPUs.
 * Returns: 0, or -EINVAL with a one-line reason in @err.
 */
int _pcpu_topology_sim(struct pcpu_topology *t, const char *possible_str,
		       const char *online_str, char *err, size_t errlen);

/* Re-reads only the online and allowed masks (cheap refresh). */
void _pcpu_topology_refresh(struct pcpu_topology *t, const char *root);

/* ---- areamap.c: the bitmap area allocator of one chunk ---- */

/*
 * One unit's worth of 4-byte words, each either allocated or free, with
 * alloc_map/bound_map bitmaps and per-block hints in the manner of
 * mm/percpu.c.  A block is one page (block_bits words).  Pure data
 * structure: no locking, no OS calls beyond malloc for its own metadata.
 */
struct pcpu_block_md {
	uint32_t contig_hint;       /* largest free run inside the block */
	uint32_t contig_hint_start; /* its start, block-relative */
	uint32_t left_free;         /* free run touching the block's start */
	uint32_t right_free;        /* free run touching the block's end */
	uint32_t first_free;        /* first free bit, block-relative */
	uint32_t nr_free;           /* free bits in the block */
	uint32_t other_hint;        /* upper bound on every free run of the
				       block other than the contig_hint one */
	uint32_t pad;               /* 8-byte multiple: the summary bitmaps
				       follow the md array (areamap.c) */
};

struct pcpu_areamap {
	uint32_t nr_bits;       /* words in the map */
	uint32_t block_bits;    /* words per block (page_size / 4) */
	uint32_t nr_blocks;
	uint32_t free_bits;     /* exact */
	uint32_t contig_hint;   /* upper bound on the largest free run; exact
				   after any failed allocation scan */
	uint32_t first_free;    /* no free bit below this */
	/* Fit cache: no request of at least fit_bits words at an alignment
	 * of at least fit_align can start below fit_pos (0 = no cache).
	 * Set by each allocation's first fit, lowered by frees; it keeps
	 * repeated requests that skip many unusable holes (4-byte areas at
	 * 8-byte alignment) from rescanning them. */
	uint32_t fit_pos, fit_bits, fit_align;
	uint64_t *alloc_map;    /* nr_bits bits: 1 = allocated */
	uint64_t *bound_map;    /* nr_bits + 1 bits: 1 at the start of every
				   allocation and one past its end */
	struct pcpu_block_md *md;
};

int _pcpu_areamap_init(struct pcpu_areamap *m, uint32_t nr_bits,
		       uint32_t block_bits);
void _pcpu_areamap_destroy(struct pcpu_areamap *m);
/* First fit of @bits words aligned to @align_bits (power of two); returns
 * the bit offset or -1 when no free run fits (and then contig_hint is
 * exact). */
long _pcpu_areamap_alloc(struct pcpu_areamap *m, uint32_t bits,
			 uint32_t align_bits);
/* True iff @off is the start of a live allocation. */
bool _pcpu_areamap_is_start(const struct pcpu_areamap *m, uint32_t off);
/* Size in words of the live allocation starting at @off. */
uint32_t _pcpu_areamap_size(const struct pcpu_areamap *m, uint32_t off);
/* Frees the allocation at @off (must satisfy is_start); returns its size. */
uint32_t _pcpu_areamap_free(struct pcpu_areamap *m, uint32_t off);
/* True iff block @b holds no allocated word. */
bool _pcpu_areamap_block_empty(const struct pcpu_areamap *m, uint32_t b);
/* Exact largest free run (scans; for stats). */
uint32_t _pcpu_areamap_max_contig(const struct pcpu_areamap *m);
/* Checks every invariant of the map; returns 0 or -1 after printing the
 * first violation to stderr. */
int _pcpu_areamap_validate(const struct pcpu_areamap *m);

/* ---- os.c: the only file that calls mmap/madvise/munmap/mincore/membarrier ---- */

enum pcpu_os_op {
	PCPU_OS_MMAP = 0,
	PCPU_OS_MADVISE,
	PCPU_OS_MUNMAP,
	PCPU_OS_MEMBARRIER,
	PCPU_OS_NR_OPS,
};

/* Reserves @len bytes of zeroed, lazily backed, writable address space
 * (one mapping).  Returns NULL with errno ENOMEM on failure. */
void *_pcpu_os_reserve(size_t len);
/* Unmaps a reservation; 0 or -errno (errno preserved). */
int _pcpu_os_release(void *p, size_t len);
/* Drops the backing of [p, p+len) (MADV_DONTNEED: reads zero after);
 * 0 or -errno (errno preserved). */
int _pcpu_os_discard(void *p, size_t len);
/* Backs [p, p+len) now (MADV_POPULATE_WRITE); 0 or -ENOMEM (errno
 * preserved). */
int _pcpu_os_populate(void *p, size_t len);
/* Counts resident pages of [p, p+len) (p page aligned); -errno on error. */
long _pcpu_os_resident_pages(const void *p, size_t len);
/* rseq fence: every thread running on @cpu (-1: on any CPU) has left any
 * rseq critical section when this returns.  0 or -errno. */
int _pcpu_os_rseq_fence(int cpu);
/* Forget per-process registrations (after fork, in the child). */
void _pcpu_os_atfork_child(void);

/* Fault injection for tests: the @nth next call (1 = the very next) of
 * @op fails; 0 disarms.  PCPU_FAULT=mmap:N,madvise:N,munmap:N,
 * membarrier:N does the same from the environment at start. */
void _pcpu_os_fault_set(enum pcpu_os_op op, long nth);
/* Calls of @op made so far (to size a sweep over every call site). */
long _pcpu_os_calls(enum pcpu_os_op op);
/* Parses a PCPU_FAULT spec; 0 or -EINVAL. */
int _pcpu_os_fault_env(const char *spec);

/* ---- error.c ---- */

void _pcpu_report(const char *what, const void *ptr);
void _pcpu_fatal(const char *fmt, ...)
	__attribute__((noreturn, format(printf, 1, 2)));
void _pcpu_notice(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void _pcpu_assert_fail(const char *expr, const char *file, int line,
		       const char *func) __attribute__((noreturn));

/* ---- cpu.c: initialisation, index modes, readiness, slow paths ---- */

#define PCPU_RSEQ_CPU_ID_OFFSET 4
#define PCPU_RSEQ_CS_OFFSET 8
#define PCPU_RSEQ_MM_CID_OFFSET 24

struct pcpu_global {
	bool initialised;
	bool rseq;               /* glibc registered rseq in this process */
	bool sim;                /* simulated topology */
	enum pcpu_index_mode index_mode;
	enum pcpu_path path;     /* process-wide */
	int nr_ids;              /* pcpu_nr_cpu_ids() */
	size_t page_size;
	size_t unit_size;        /* bytes of one CPU's unit == stride */
	unsigned int rseq_feature_size;
	struct pcpu_topology topo;
	/* Indexes whose copies can be non-zero (ready at some time); bits
	 * only ever get set, with release stores, under the cpu lock.  Bit
	 * nr_ids is the shared slot. */
	struct pcpu_cpuset used;
};
extern struct pcpu_global _pcpu_g;

void _pcpu_init_slow(void);
/* Initialises on first use (one acquire load after that). */
static inline void _pcpu_ensure_init(void)
{
	if (PCPU_UNLIKELY(!__atomic_load_n(&_pcpu_g.initialised,
					   __ATOMIC_ACQUIRE)))
		_pcpu_init_slow();
}
/* Marks @idx (0..nr_ids) used, so its copies may be written; in the rseq
 * path that also lets the fast path commit on it. */
void _pcpu_index_make_used(int idx);
/* Snapshot of the used indexes (acquire loads), shared slot as bit
 * nr_ids. */
void _pcpu_used_snapshot(struct pcpu_cpuset *out);

/* ---- chunk.c: chunks and the area allocator ---- */

void _pcpu_chunk_atfork_prepare(void);
void _pcpu_chunk_atfork_parent(void);
void _pcpu_chunk_atfork_child(void);

/* ---- stats.c ---- */

void _pcpu_stats_at_exit(void);

#endif
