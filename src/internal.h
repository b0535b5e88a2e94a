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

/* ---- small helpers shared by every file ---- */

#include <time.h>
static inline long long _pcpu_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* A spin-wait hint. */
static inline void _pcpu_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__asm__ __volatile__("pause" ::: "memory");
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#endif
}

/* ---- cpuset: a fixed-size CPU mask (topology.c, used everywhere) ---- */

/* One word more than PCPU_MAX_CPUS needs: bit PCPU_MAX_CPUS can stand for
 * cache.c's locked cache (index nr_ids). */
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

/* The same bits shared between threads: sequentially consistent atomics,
 * read without a lock. */
static inline bool _pcpu_cpuset_atomic_test(const struct pcpu_cpuset *s, int i)
{
	return (__atomic_load_n(&s->bits[i / 64], __ATOMIC_SEQ_CST) >>
		(i % 64)) & 1;
}
static inline void _pcpu_cpuset_atomic_set(struct pcpu_cpuset *s, int i)
{
	__atomic_fetch_or(&s->bits[i / 64], (uint64_t)1 << (i % 64),
			  __ATOMIC_SEQ_CST);
}
static inline void _pcpu_cpuset_atomic_clear(struct pcpu_cpuset *s, int i)
{
	__atomic_fetch_and(&s->bits[i / 64], ~((uint64_t)1 << (i % 64)),
			   __ATOMIC_SEQ_CST);
}
static inline uint64_t _pcpu_cpuset_atomic_word(const struct pcpu_cpuset *s,
						int w)
{
	return __atomic_load_n(&s->bits[w], __ATOMIC_SEQ_CST);
}

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
/* The checks an operation on blocks [b0, b1] can break (cheap enough to
 * run after every operation in debug builds). */
int _pcpu_areamap_validate_blocks(const struct pcpu_areamap *m, uint32_t b0,
				  uint32_t b1);

/* ---- os.c: the only file that calls mmap/madvise/munmap/mincore/membarrier ---- */

enum pcpu_os_op {
	PCPU_OS_MMAP = 0,
	PCPU_OS_MADVISE,
	PCPU_OS_MUNMAP,
	PCPU_OS_MEMBARRIER,
	PCPU_OS_PAGEMAP,
	PCPU_OS_NR_OPS,
};

/* Reserves @len bytes of zeroed, lazily backed, writable address space
 * (one mapping) aligned to @align (a power of two).  Returns NULL with
 * errno ENOMEM on failure. */
void *_pcpu_os_reserve(size_t len, size_t align);
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
/* Sets bit i of @out (pages / 64 words, rounded up) when page i of
 * [p, p + pages * page size) holds data (present or swapped out), without
 * touching the pages; 0, or -errno with every bit set (unknown: counted
 * as holding data). */
int _pcpu_os_backed_map(const void *p, size_t pages, uint64_t *out);
/* rseq fence: every thread running on @cpu (-1: on any CPU) has left any
 * rseq critical section when this returns.  0 or -errno. */
int _pcpu_os_rseq_fence(int cpu);
/* Forget per-process registrations (after fork, in the child). */
void _pcpu_os_atfork_child(void);

/* Fault injection for tests: the @nth next call (1 = the very next) of
 * @op fails; 0 disarms.  PCPU_FAULT=mmap:N,madvise:N,munmap:N,
 * membarrier:N,pagemap:N does the same from the environment at start. */
void _pcpu_os_fault_set(enum pcpu_os_op op, long nth);
/* Calls of @op made so far (to size a sweep over every call site). */
long _pcpu_os_calls(enum pcpu_os_op op);
/* Parses a PCPU_FAULT spec; 0 or -EINVAL. */
int _pcpu_os_fault_env(const char *spec);

/* ---- error.c ---- */

void _pcpu_report(const char *what, const void *ptr);
/* "@call with cpu @cpu, out of range" to the error handler. */
void _pcpu_report_cpu(const char *call, const void *p, int cpu);
void _pcpu_fatal(const char *fmt, ...)
	__attribute__((noreturn, format(printf, 1, 2)));
void _pcpu_notice(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void _pcpu_assert_fail(const char *expr, const char *file, int line,
		       const char *func) __attribute__((noreturn));

/* ---- cpu.c: initialisation, index modes, paths, slow paths ---- */

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
	/* Indexes in use (index.c): their copies can hold data and count
	 * in sums, frees and statistics. */
	struct pcpu_cpuset used;
};
extern struct pcpu_global _pcpu_g;

void _pcpu_init_slow(void);
/* Words of a cpuset that hold index bits. */
static inline int _pcpu_nr_words(void)
{
	return (_pcpu_g.nr_ids + 63) / 64;
}
/* Initialises on first use (one acquire load after that). */
static inline void _pcpu_ensure_init(void)
{
	if (PCPU_UNLIKELY(!__atomic_load_n(&_pcpu_g.initialised,
					   __ATOMIC_ACQUIRE)))
		_pcpu_init_slow();
}
/* Snapshot of the indexes in use (acquire loads). */
void _pcpu_used_snapshot(struct pcpu_cpuset *out);
/* The index a slow-path write of the calling thread uses now: *@rseq,
 * commit with an rseq section (it re-checks pcpu__ok[idx]; retry on an
 * abort); else an atomic write followed by _pcpu_slow_exit(idx, *@ticket).
 * Never fails; may wait for a fill (signals blocked meanwhile). */
int _pcpu_slow_enter(bool *rseq, int *ticket);
/* The same for slots indexed by concurrency (counters): by mm_cid (the
 * section then compares the mm_cid field) or by thread id (atomic). */
int _pcpu_cid_enter(bool *rseq, int *ticket);
/* Counters' slots are committed with rseq sections by mm_cid. */
bool _pcpu_cid_rseq_path(void);

/* ---- chunk.c: chunks and the area allocator ---- */

/* True when the copy of @p (an address in a chunk's first unit) on index
 * @idx may be read without backing a page: its page holds data (known,
 * or the kernel says so now).  False: the copy reads zero, and reading
 * it could back a page (backed.c). */
bool _pcpu_copy_backed(const void *p, int idx);

/*
 * Drops the backing of index @idx's unit in every chunk (MADV_DONTNEED):
 * its copies read zero afterwards.  Context: nothing may write @idx's
 * copies meanwhile (not in use).  Takes reclaim_lock and the allocator
 * lock.  Returns 0 or the first -errno (the other chunks are still
 * discarded).
 */
int _pcpu_chunks_discard_index(int idx);
/* reclaim.c's lock (chunks are unmapped only under it). */
void _pcpu_reclaim_lock(void);
void _pcpu_reclaim_unlock(void);
void _pcpu_chunk_atfork_prepare(void);
void _pcpu_chunk_atfork_parent(void);
void _pcpu_chunk_atfork_child(void);

/* ---- balance.c: the background worker ---- */

/* Starts the worker if it is not running (and not disabled with
 * PCPU_BALANCE=0) and, when @now, wakes it for a pass; @grow asks it to
 * reserve room for non-blocking allocations.  Cheap when nothing is to
 * do: one load. */
void _pcpu_balance_kick(bool grow);
void _pcpu_balance_kick_nonblock(void);
/* Starts the worker lazily, without waking it. */
void _pcpu_balance_start(void);
void _pcpu_balance_atfork_child(void);

/* ---- counter.c ---- */

/* Kinds of counters _pcpu_counter_fold_index() folds. */
#define PCPU_COUNTER_FOLD_CPU 1u /* PCPU_COUNTER_PERCPU: the process index */
#define PCPU_COUNTER_FOLD_CID 2u /* default: concurrency ids */
/*
 * Folds index @idx's residue of every live counter of the kinds in @which
 * into its shared value.  Context: nothing writes @idx's slots meanwhile
 * (a dead CPU whose pcpu__ok entry was cleared and fenced), or the atomic
 * path.  The hotplug dead path calls it with PCPU_COUNTER_FOLD_CPU.
 */
void _pcpu_counter_fold_index(int idx, unsigned int which);

/* ---- index.c: the states of indexes (see its top) ---- */

/* Bits of _pcpu_index_state(). */
#define PCPU_INDEX_IN_USE 1 /* its copies count */
#define PCPU_INDEX_READY 2  /* rseq sections commit on it */
#define PCPU_INDEX_PINNED 4 /* never released */

/* Pinned indexes, tested by pcpu_ptr (ops.h). */
extern unsigned char pcpu__ptrok[PCPU__OK_SIZE];

/* Brings @k into use (and pins it with @pin: pointers and writers that are
 * not indexed by CPU); waits for a fill or discard elsewhere; a fill that
 * finds no memory is retried.  0, or -EINVAL for an index out of range. */
int _pcpu_index_use(int k, bool pin);
/* The same in the hotplug context: -ENOMEM instead of retrying. */
int _pcpu_index_use_ctx(int k);
/* A write to index @k (0..nr_ids-1) of the calling thread: brings @k into
 * use if need be; *@rseq: commit with a section; else an atomic write,
 * then _pcpu_index_exit(k, *@ticket).  @unregistered: the thread has no
 * rseq registration (sections are then turned off on @k). */
int _pcpu_index_enter(int k, bool unregistered, bool *rseq, int *ticket);
void _pcpu_index_exit(int k, int ticket);
static inline void _pcpu_slow_exit(int idx, int ticket)
{
	_pcpu_index_exit(idx, ticket);
}
/* PCPU_INDEX_* bits of @k. */
int _pcpu_index_state(int k);
/* Hotplug context: make @k ready if hotplug.c agrees; stop sections on
 * @k (0, or -EAGAIN when the fence failed); take @k out of use if every
 * copy there holds its initial value (0, -EBUSY, -ENOMEM); discard a
 * dirty unit (0 when clean). */
void _pcpu_index_promote(int k);
int _pcpu_index_demote(int k);
int _pcpu_index_release(int k);
int _pcpu_index_clean_dirty(int k);
bool _pcpu_index_dirty(int k);
/* Frees counted while an index waits in use to be released. */
void _pcpu_index_count_free(void);
unsigned long _pcpu_index_free_gen(void);
void _pcpu_index_set_lingering(bool on);
/* Leaves the rseq path for good (pcpu_sim_set_cpu); true if it did. */
bool _pcpu_index_leave_rseq(void);
int _pcpu_index_validate(void);
void _pcpu_index_atfork_prepare(void);
void _pcpu_index_atfork_parent(void);
void _pcpu_index_atfork_child(void);

/* ---- initval.c: initial values (pcpu_alloc_init), fills, release scans ---- */

void _pcpu_initval_init(void);
/* Fill of @idx coming into use (index.c; signals blocked): 0 or -ENOMEM.
 * *@dirty: discard the unit first; cleared once that succeeded. */
int _pcpu_initval_fill(int idx, bool *dirty);
void _pcpu_initval_filled(int idx);
/* A failed fill undone; true when the unit is left dirty. */
bool _pcpu_initval_abort(int idx);
void _pcpu_initval_forget(int idx);
/* Every live area's copy on @idx equals its initial value (reclaim_lock
 * held; takes the allocator lock and the record lock). */
bool _pcpu_initval_unit_clean(int idx);
/* The record lock, held by index.c while an index's unit is dropped. */
void _pcpu_initval_lock(void);
void _pcpu_initval_unlock(void);
void _pcpu_initval_released(int idx);
int _pcpu_initval_validate_idle(void);
void _pcpu_initval_debug(FILE *f, const void *p, int idx);
void _pcpu_initval_atfork_prepare(void);
void _pcpu_initval_atfork_parent(void);
void _pcpu_initval_atfork_child(void);
/* Longest time a fill or release scan held the allocator lock or the
 * record lock in one stretch, in ns of wall time or (@cpu) of its
 * thread's CPU time, since the last @reset; for pcpu-bench. */
unsigned long long _pcpu_hotplug_lock_hold_max_ns(bool cpu, bool reset);
/* Test support: when set, called at the named steps of a fill ("coming":
 * @idx is being counted as coming), so that a test can run operations in
 * the window between two of its stores. */
extern void (*_pcpu_hotplug_pause)(const char *where, int idx);

/* ---- hotplug.c: CPU events and callbacks ---- */

/* Sets up the hotplug state; called once by _pcpu_init_slow (init lock
 * held) after the topology, path and index mode are known. */
void _pcpu_hotplug_init(void);
/* Asked by index.c (lock-free, under its leaf lock): may @k be READY? */
bool _pcpu_hotplug_may_ready(int k);
/* @k came into use without being ready: callbacks to run (no lock held). */
void _pcpu_hotplug_note_use(int k);
/* @k was demoted for a thread without rseq: ready again a bit later. */
void _pcpu_hotplug_note_demoted(int k);
/*
 * For the balance worker, about once a second: drain CPU uevents, re-read
 * online CPUs and the cpuset (at most once a second), run callbacks and
 * make wanted indexes ready, release CPUs that left.  One load when there
 * is nothing to do; never blocks on the hotplug mutex.
 */
void _pcpu_hotplug_tick(void);
void _pcpu_hotplug_atfork_child(void);

/*
 * Parses one NETLINK_KOBJECT_UEVENT message ("action@devpath\0KEY=VALUE
 * \0..."): returns PCPU_UEVENT_* for an event of the "cpu" subsystem about
 * /devices/system/cpu/cpu<N> (with *@cpu = N), 0 for any other event,
 * -EINVAL for a malformed message.  Never reads past msg[len-1].
 */
#define PCPU_UEVENT_ONLINE 1
#define PCPU_UEVENT_OFFLINE 2
#define PCPU_UEVENT_ADD 3
#define PCPU_UEVENT_REMOVE 4
int _pcpu_hotplug_uevent_parse(const char *msg, size_t len, int *cpu);

/* ---- cache.c: size classes, pagesets, per-CPU object caches ---- */

/* Largest request the size classes can serve (PCPU_CACHE_MAX lowers it). */
#define PCPU_CACHE_MAX_SIZE 256

/* Modes (PCPU_CACHE=1|0|none). */
#define PCPU_CACHE_ON 0     /* per-CPU caches in front of the pagesets */
#define PCPU_CACHE_SHARED 1 /* pagesets only, the allocator lock per call */
#define PCPU_CACHE_NONE 2   /* no size classes: the area allocator */

/*
 * pcpu_alloc's hook.  Returns true when the request belongs to a size
 * class, with *@out the object, or NULL with errno ENOMEM; false when the
 * area allocator serves it.  Context: any; no lock held.
 */
bool _pcpu_cache_alloc(size_t size, size_t align, void **out);
/* pcpu_free's hook: true when @p points into a pageset (then freed or
 * reported), false when it is the area allocator's to judge. */
bool _pcpu_cache_free(void *p);
/* pcpu_alloc_size's hook: true when @p points into a pageset, with
 * *@size its size, or 0 and errno EINVAL when it is not a live object. */
bool _pcpu_cache_alloc_size(const void *p, size_t *size);

/* Zeroes the pended frees and gives their objects back (before a scan
 * that must not mistake a freed object for a value).  Returns how many. */
size_t _pcpu_cache_clean_pending(void);
/* Checks the pagesets and caches (docs/DESIGN.md, "Object caches");
 * 0 or -EUCLEAN after printing the first violation.  The accounting
 * (every object in exactly one place) assumes no small allocation or free
 * is in flight.  Context: alloc_lock held. */
int _pcpu_cache_validate_locked(void);
/* Fills the cache_* statistics and folds the objects into the allocation
 * counters (pageset pages are not allocations).  Context: no lock held. */
void _pcpu_cache_stats(struct pcpu_stats *st);
/* The balance worker, each pass: drains the caches nobody used for
 * PCPU_CACHE_IDLE_MS; with @pressure every cache and empty pageset. */
void _pcpu_cache_tick(bool pressure);
/* Tests and benchmarks: switch the mode and the largest class at run time
 * (objects already out stay valid: frees find their pagesets). */
void _pcpu_cache_set_mode(int mode, size_t max_size);
int _pcpu_cache_mode(void);

/* Defined in chunk.c for cache.c; Context: alloc_lock held.
 * _pcpu_chunk_page_get: a page-sized, page-aligned area for a pageset
 * (not an allocation in the statistics); may drop and retake the lock to
 * reserve a chunk; NULL with errno ENOMEM.  _pcpu_chunk_page_put: gives
 * it back (every copy reads zero); true when the balance worker should
 * run (kick it after unlocking). */
void *_pcpu_chunk_page_get(void);
bool _pcpu_chunk_page_put(void *page);

/* ---- stats.c ---- */

void _pcpu_stats_at_exit(void);

#endif
