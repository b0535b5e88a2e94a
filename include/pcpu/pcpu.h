/*
 * pcpu.h - libpcpu: per-CPU memory for Linux user space.
 *
 * pcpu_alloc() hands out an area that exists once per CPU, like the
 * kernel's alloc_percpu().  The pointer it returns is CPU 0's copy; CPU
 * i's copy is pcpu_ptr(p, i).  The operations (ops.h) act on the calling
 * CPU's copy without atomic instructions, inside rseq restartable
 * sequences; pcpu_sum() adds the copies up.
 *
 * The contract, for every index i in 0..pcpu_nr_cpu_ids()-1, whether or
 * not CPU i ever ran anything:
 *   - pcpu_ptr(p, i) is index i's copy.  In a fresh area it reads zero
 *     (or the pcpu_alloc_init value).
 *   - Whatever is written to it (through pcpu_ptr, or by operations of a
 *     thread running on CPU i) is seen by pcpu_sum, pcpu_for_each_cpu and
 *     the operations of CPU i, is counted in pcpu_stats, is zeroed before
 *     the space is handed out again, and is given back by depopulation and
 *     pcpu_trim once freed.
 *   - pcpu_this_cpu() is always such an index, and an operation always
 *     changes the calling CPU's own copy: a CPU reads back what it wrote.
 * And memory is spent only on copies that are written: the library's own
 * reads (sums, frees, trims, the validator) never touch a page that holds
 * no data, so they back nothing even on a kernel without a shared zero
 * page; a free never adds resident memory; the work of a free or a sum
 * follows the indexes in use, not the possible CPUs, unless the program
 * itself reached every possible CPU's copy.  docs/DESIGN.md ("The
 * per-CPU contract") says how.
 *
 * Errors: functions returning int give 0 or -errno; functions returning a
 * pointer give NULL and set errno.
 */
#ifndef PCPU_PCPU_H
#define PCPU_PCPU_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PCPU_VERSION_MAJOR 0
#define PCPU_VERSION_MINOR 1

/* Largest CPU id + 1 the library handles (the kernel's NR_CPUS limit). */
#define PCPU_MAX_CPUS 8192

/* ------------------------------------------------------------------ */
/* Allocation                                                          */

/*
 * pcpu_alloc - allocate @size bytes on every CPU, aligned to @align.
 * Every CPU's copy reads as zero.  Returns CPU 0's copy, or NULL with
 * errno EINVAL (size 0, size > pcpu_alloc_max(), align not a power of two
 * or above the page size) or ENOMEM (the OS refused memory).  align 0
 * means the natural alignment for the size (up to 8 bytes).
 */
void *pcpu_alloc(size_t size, size_t align);

/* pcpu_free - free an area; NULL is a no-op.  A pointer that is not the
 * start of a live area is reported to the error handler.  The space is
 * zeroed on every CPU in use before it is handed out again; when that
 * needs the kernel's word on which pages hold data, the zeroing waits
 * for a batch of such frees (pcpu_drain, pcpu_trim, pcpu_stats_get and
 * pcpu_validate do it at once), and the space is reused after it. */
void pcpu_free(void *p);

/* Usable size of a live area (the size rounded up to 4 bytes); 0 with
 * errno EINVAL for a pointer that is not a live area. */
size_t pcpu_alloc_size(const void *p);

/* Largest size pcpu_alloc accepts (the unit size). */
size_t pcpu_alloc_max(void);

/*
 * pcpu_alloc_nonblock - like pcpu_alloc, for contexts that must not block
 * (the kernel's atomic allocations): never maps memory, never sleeps on
 * the allocator lock, serves only from chunks already reserved.  NULL with
 * errno EAGAIN when it cannot (a running balance worker is then asked to
 * reserve room; it is never started from here), EINVAL as pcpu_alloc.
 * Usable from a signal handler once the library is initialised (the
 * allocator lock only ever with trylock, no memory mapped, no malloc).
 * Room held by frees still waiting for their zeroing (see pcpu_free) is
 * reused only when the kernel need not be asked about its pages; the
 * balance worker, pcpu_drain or the next pcpu_alloc make the rest free.
 */
void *pcpu_alloc_nonblock(size_t size, size_t align);

/*
 * The balance worker: a background thread, started by the first
 * allocation and never needed for correctness, that depopulates chunks
 * whose backed pages are more than a quarter empty (docs/DESIGN.md,
 * "Reclaim"), unmaps fully free chunks beyond one spare, reserves a chunk
 * after a failed pcpu_alloc_nonblock, drains idle object caches, answers
 * memory pressure (a PSI trigger on the cgroup's memory.pressure or
 * /proc/pressure/memory: a trim at once) and notices CPUs that came or
 * went.  It lets a burst of frees (over 100k areas a second) finish
 * before it works, for at most one period.  Environment: PCPU_BALANCE=0 (no worker), PCPU_BALANCE_INTERVAL_MS
 * (its period, default 1000).  Other environment variables: PCPU_INDEX
 * (cpu|cid), PCPU_STATS (1|json), PCPU_CACHE, PCPU_CACHE_MAX,
 * PCPU_CACHE_IDLE_MS (below), PCPU_SIM_POSSIBLE and PCPU_SIM_ONLINE
 * (simulation), PCPU_FAULT=mmap:N|madvise:N|munmap:N (the Nth call of
 * that kind fails: fault injection for tests).
 *
 * pcpu_balance - one pass of what the balance worker does, now: reserve
 * room for non-blocking allocations if one failed, release the empty pages
 * of chunks marked for depopulation down to the high watermark (4 empty
 * pages), unmap fully free chunks beyond one spare, drain idle caches,
 * process CPU changes.  Returns 0.
 */
int pcpu_balance(void);

/*
 * pcpu_trim - release everything releasable now (like malloc_trim): every
 * cached object back to its pageset and every empty pageset (pcpu_drain),
 * every empty page of every chunk, every fully free chunk but one.  Returns 1
 * if memory was released, 0 if there was nothing to release.
 */
int pcpu_trim(void);

/*
 * Error handler for invalid use caught at run time (in release builds
 * too): @what names the fault ("invalid free", "double free", ...), @ptr
 * the pointer.  The default prints one line and aborts; a handler that
 * returns makes the faulty call a no-op.  NULL restores the default.
 */
typedef void (*pcpu_error_handler_t)(const char *what, const void *ptr,
				     void *arg);
void pcpu_set_error_handler(pcpu_error_handler_t fn, void *arg);

/* ------------------------------------------------------------------ */
/* CPUs and indexing                                                   */

enum pcpu_index_mode {
	PCPU_INDEX_CPU = 0, /* copies indexed by CPU number (default) */
	PCPU_INDEX_CID = 1, /* by rseq concurrency id (mm_cid, Linux 6.3+) */
};

enum pcpu_path {
	PCPU_PATH_RSEQ = 0,   /* rseq critical sections, no atomics */
	PCPU_PATH_ATOMIC = 1, /* sched_getcpu() + atomic RMW (fallback,
				 simulation) */
};

/*
 * pcpu_init - initialise now instead of at first use.  Reads PCPU_INDEX,
 * PCPU_SIM_POSSIBLE and PCPU_SIM_ONLINE.  Idempotent; returns 0.
 */
int pcpu_init(void);

/* Choose the index mode before first use: 0, -EINVAL, or -EBUSY once the
 * library is initialised.  PCPU_INDEX=cpu|cid does the same. */
int pcpu_set_index_mode(enum pcpu_index_mode mode);
/* The mode in effect (cid falls back to cpu without kernel mm_cid). */
enum pcpu_index_mode pcpu_index_mode(void);
/* The path in effect for operations of the calling thread. */
enum pcpu_path pcpu_path(void);

/* Number of CPU ids (possible CPUs, or the simulated count): every index
 * 0..pcpu_nr_cpu_ids()-1 has a copy. */
int pcpu_nr_cpu_ids(void);
/* The calling thread's index: its CPU (or concurrency id, or simulated
 * CPU), always 0..pcpu_nr_cpu_ids()-1.  A snapshot: the thread may move
 * right after. */
int pcpu_this_cpu(void);
/*
 * pcpu_cpu_next - the next index after @cpu (-1 to start) in use, or -1
 * at the end.  An index comes into use the first time anything reaches
 * one of its copies (an operation of a thread running there, pcpu_ptr,
 * a counter or a reference) and leaves only when the library releases a
 * CPU that went offline with nothing left in it: every copy that can
 * differ from its initial value is yielded.  pcpu_for_each_cpu walks
 * them; pcpu_sum adds them up.
 */
int pcpu_cpu_next(int cpu);
#define pcpu_for_each_cpu(cpu)                                                 \
	for ((cpu) = pcpu_cpu_next(-1); (cpu) >= 0; (cpu) = pcpu_cpu_next(cpu))
/* Every index (the kernel's for_each_possible_cpu).  Reaching each one's
 * copy through pcpu_ptr keeps them all in use: sums and frees then visit
 * them all. */
#define pcpu_for_each_possible_cpu(cpu)                                        \
	for ((cpu) = 0; (cpu) < pcpu_nr_cpu_ids(); (cpu)++)
/* The next online CPU after @cpu (-1 to start), as libpcpu last saw them
 * (sysfs online, or the simulated machine), or -1 at the end. */
int pcpu_cpu_next_online(int cpu);
#define pcpu_for_each_online_cpu(cpu)                                          \
	for ((cpu) = pcpu_cpu_next_online(-1); (cpu) >= 0;                     \
	     (cpu) = pcpu_cpu_next_online(cpu))

/*
 * pcpu_get_cpu_ptr, pcpu_put_cpu_ptr - this CPU's copy of @p for a short
 * sequence, like the kernel's get_cpu_ptr/put_cpu_ptr.  What it does in
 * user space: get pins the calling thread to the CPU it runs on
 * (sched_setaffinity; the thread's own mask comes back at put; pairs
 * nest) and returns that CPU's copy, whose index stays in use for good
 * (as pcpu_ptr).  What it cannot do: disable preemption.  Between get and
 * put the thread stays on that CPU, but other threads may run there in
 * between and change the same copy with their own operations.  So an
 * update through the pointer is safe with one atomic instruction
 * (__atomic_fetch_add and friends) or with the pcpu_ operations, not as
 * a plain read-modify-write; plain reads see this CPU's copy.  With
 * PCPU_INDEX=cid the index is a concurrency id, which pinning does not
 * fix: the pointer is the copy of the id the thread had at get.  In
 * simulation the simulated CPU is used and nothing is pinned.  A failed
 * pin (a cpuset that forbids it) leaves the thread where it was: the
 * pointer is then a snapshot, as pcpu_this_cpu().
 */
void *pcpu__get_cpu_ptr(const void *p);
void pcpu__put_cpu_ptr(const void *p);
#define pcpu_get_cpu_ptr(p) ((__typeof__(p))pcpu__get_cpu_ptr(p))
#define pcpu_put_cpu_ptr(p) pcpu__put_cpu_ptr(p)

/* ------------------------------------------------------------------ */
/* Simulation: behave as a machine of many CPUs (tests, benchmarks)    */

/*
 * pcpu_sim_configure - before first use, simulate @possible CPUs of which
 * @online (a cpulist, NULL for all) are online; the same as the
 * environment PCPU_SIM_POSSIBLE / PCPU_SIM_ONLINE.  Every operation then
 * takes the atomic path.  Returns 0, -EINVAL or -EBUSY.
 */
int pcpu_sim_configure(int possible, const char *online);

/*
 * pcpu_sim_set_cpu - make the calling thread act as @cpu for every libpcpu
 * operation (-1 to stop).  Switches the process to the atomic path (with
 * an rseq fence, so no operation in flight is lost).  Returns 0 or -EINVAL.
 */
int pcpu_sim_set_cpu(int cpu);

/* ------------------------------------------------------------------ */
/* Per-CPU object caches                                               */

/*
 * Small allocations are served by size classes: pcpu_alloc of at most
 * 256 bytes with an alignment no larger than its class (the size rounded
 * up to a power of two, at least 4) takes an object of that class.
 * Objects of one class pack into whole pages of the unit layout
 * ("pagesets"), and each CPU (each concurrency id with PCPU_INDEX=cid)
 * keeps a few dozen of every class in a cache that pcpu_alloc and
 * pcpu_free use with rseq critical sections: no lock, no atomic
 * instruction.  Nothing changes for the caller: every copy of a new
 * object reads zero, pcpu_alloc_size and the statistics report the size
 * asked for (rounded up to 4 bytes), invalid and double frees are
 * reported alike.  The environment: PCPU_CACHE=0 turns the per-CPU caches
 * off (every small allocation and free takes the allocator lock),
 * PCPU_CACHE=none the size classes too; PCPU_CACHE_MAX=<bytes> is the
 * largest class (4..256, default 256); PCPU_CACHE_IDLE_MS the time after
 * which the balance worker drains a cache nobody used (default 2000).
 */

#define PCPU_DRAIN_PAGES 1u /* also give back the pages of every empty
			       pageset, spares included (pcpu_trim) */

/*
 * pcpu_drain - return the objects of every per-CPU cache to their
 * pagesets (like the kernel's drain_all_pages).  Only the caches that
 * hold objects are stopped, each with an rseq fence of its CPU alone;
 * the CPUs with empty caches are not touched.  A cache whose fence fails
 * keeps its objects (counted in cache_fence_fails).  Allocates nothing,
 * so it can run when memory is short.  Returns the objects drained.
 */
size_t pcpu_drain(unsigned int flags);

/* ------------------------------------------------------------------ */
/* Statistics                                                          */

struct pcpu_stats {
	/* the /proc/meminfo "Percpu" analogue: bytes of units actually
	   backed by memory, measured with mincore() */
	uint64_t backed_bytes;
	uint64_t reserved_bytes;  /* address space of all chunks */
	uint64_t metadata_bytes;  /* out-of-band bookkeeping */
	uint64_t unit_size;
	int nr_cpu_ids;
	int nr_used_cpus;         /* CPUs whose copies can be non-zero */
	/* debugfs percpu_stats */
	uint64_t nr_alloc;        /* allocations ever made */
	uint64_t nr_dealloc;      /* frees ever made */
	uint64_t nr_cur_alloc;    /* live allocations */
	uint64_t nr_max_alloc;    /* most live allocations at once */
	uint64_t nr_chunks;
	uint64_t nr_max_chunks;
	uint64_t min_alloc_size;  /* 0 before the first allocation */
	uint64_t max_alloc_size;
	uint64_t empty_pop_pages; /* pages (of unit 0's layout) that hold no
				     allocation but may be backed */
	uint64_t live_bytes;      /* sum of live area sizes */
	uint64_t free_bytes;      /* sum over chunks */
	uint64_t sum_frag;        /* free bytes outside each chunk's largest
				     free run */
	uint64_t max_frag;        /* largest such run */
	/* reclaim (the balance worker, pcpu_balance, pcpu_trim) */
	uint64_t pop_pages;          /* pages (of the unit layout) that may be
					backed: they held an area */
	uint64_t depopulated_pages;  /* pages released with MADV_DONTNEED
					(of the unit layout, all CPUs) */
	uint64_t chunks_isolated;    /* taken aside for depopulation */
	uint64_t chunks_sidelined;   /* put back after allocations packed */
	uint64_t chunks_reintegrated;/* sidelined chunks used again */
	uint64_t chunks_freed;       /* unmapped fully free chunks */
	uint64_t chunks_grown;       /* reserved for non-blocking allocations */
	uint64_t trims;
	uint64_t pressure_events;    /* PSI memory-pressure wake-ups */
	uint64_t balance_passes;
	uint64_t nonblock_fails;     /* pcpu_alloc_nonblock that gave EAGAIN */
	/* object caches (docs/DESIGN.md, "Object caches"); the objects are
	   also counted above as allocations, the pagesets' pages are not */
	uint64_t cache_hits;         /* small allocations a per-CPU cache
					served */
	uint64_t cache_misses;       /* refills of a per-CPU cache */
	uint64_t cache_flushes;      /* overflows: half a cache given back */
	uint64_t cache_objs_cached;  /* objects in per-CPU caches now */
	uint64_t cache_bytes_cached; /* their size (per CPU copy) */
	uint64_t cache_pagesets;     /* pagesets (pages of the unit layout) */
	uint64_t cache_drains;       /* pcpu_drain, trim, pressure, idle */
	uint64_t cache_cpus_fenced;  /* caches drains stopped and emptied */
	uint64_t cache_cpus_skipped; /* indexes drains did not touch: their
					caches were empty */
	uint64_t cache_fence_fails;  /* caches left full: the fence failed */
	uint64_t cache_fences;       /* rseq fences (membarrier) of drains */
	uint64_t cache_objs_drained; /* objects drains gave back */
	/* zeroing freed copies without reading pages that hold no data
	   (docs/DESIGN.md, "The per-CPU contract") */
	uint64_t backed_queries;     /* questions to the kernel (pagemap) */
	uint64_t zero_pending;       /* freed objects waiting to be zeroed */
	uint64_t zero_pended;        /* frees that waited so, ever (objects,
					and areas: see pcpu_free) */
	uint64_t zero_cleans;        /* batches of them zeroed */
};

struct pcpu_chunk_stats {
	void *base;
	uint64_t nr_alloc;        /* live areas */
	uint64_t free_bytes;
	uint64_t contig_bytes;    /* largest free run */
	uint64_t sum_frag;
	uint64_t max_frag;
	uint64_t backed_bytes;
	uint64_t empty_pop_pages;
};

/* Fills @st; returns 0. */
int pcpu_stats_get(struct pcpu_stats *st);
/* Copies up to @n chunks' stats; returns how many chunks there are. */
size_t pcpu_stats_chunks(struct pcpu_chunk_stats *out, size_t n);

#define PCPU_STATS_JSON 1   /* one JSON object instead of text */
#define PCPU_STATS_CHUNKS 2 /* include one line/object per chunk */
/* Prints the stats; returns 0 or -errno from writing.  PCPU_STATS=1 in the
 * environment prints them (text) to stderr at exit, PCPU_STATS=json as
 * JSON. */
int pcpu_stats_print(FILE *f, int flags);

/* Checks every allocator invariant (docs/DESIGN.md); 0 or -EUCLEAN after
 * printing the first violation.  Cheap enough for tests, not hot paths. */
int pcpu_validate(void);

#ifdef __cplusplus
}
#endif

#include "pcpu/hotplug.h"
#include "pcpu/ops.h"

#endif
