/*
 * cache.c - size classes, pagesets and per-CPU object caches.
 *
 * Small requests (at most PCPU_CACHE_MAX_SIZE bytes, alignment no larger
 * than the class) are objects of a size class: 4, 8, 16, ... 256 bytes.
 * The seed's vocabulary (Mateusz Guzik, seed 002): the chunk allocator
 * *assigns* whole pages to the classes; the caching layer *hands out*
 * objects; an object not handed out is *cached*.
 *
 *   pcpu_alloc(8)                                  pcpu_free(p)
 *       |  pop                                  push  |
 *   [ CPU k's cache, class 8: stack of 32 (object, pageset) ]
 *       |  empty: refill half      full: flush half  |   rseq sections,
 *       v  (alloc lock once per batch)               v   no lock, no RMW
 *   [ class 8 pagesets: partial | full | empty lists; free bitmap ]
 *       |  a page-sized, page-aligned area per pageset
 *   [ chunk allocator: _pcpu_chunk_page_get / _pcpu_chunk_page_put ]
 *
 * A pageset is one page of the unit layout dedicated to one class: its
 * objects pack together on every CPU's unit.  Its metadata is out of band
 * (struct pageset, malloc'd): a free bitmap (objects in the shared free
 * set, alloc lock) and a state byte per object: 0 = not handed out (in
 * the free set, in some cache, or in transit between them; reads zero on
 * every used index), 1..64 = handed out (the size in 4-byte words, for
 * pcpu_alloc_size and the statistics), 0xff = being freed.
 *
 * Invariants (docs/DESIGN.md "Object caches", checked by
 * _pcpu_cache_validate_locked):
 *   - every object of a live pageset is in exactly one of {handed out,
 *     one per-CPU cache, its pageset's free set};
 *   - an object that is not handed out reads zero on every used index:
 *     pcpu_free zeroes it (writing only words that are not zero) before
 *     it enters a cache;
 *   - a CPU whose cache holds objects has its bit in `nonempty`.
 *
 * Per-CPU caches.  caches[idx] (idx a CPU, a concurrency id with
 * PCPU_INDEX=cid, or nr_ids for the locked cache of threads whose CPU is
 * not ready or unknown) is malloc'd when idx
 * first needs one.  Per class, one word st packs the count (bits 0-15)
 * and the pops ever made (bits 16-63), followed by the stack of (object,
 * pageset) pairs.  Who may change CPU k's stacks is decided like cpu.c
 * decides who writes CPU k's copies:
 *   rseq path  rseq sections (arch/ *.h: pcpu__arch_stack_pop/push) that
 *              check the index, pcpu__ok[k] and k's `stopped` byte inside
 *              themselves and commit with one store of st;
 *   otherwise  a spinlock per cache (atomic path, the locked cache, a CPU
 *              between ready and ok): uncontended but for drains.
 * Leaving the rseq path (pcpu_sim_set_cpu) clears pcpu__ok[] and fences
 * every CPU before the path reads atomic, so the two kinds never overlap.
 *
 * Drain (pcpu_drain; the kernel's drain_all_pages with Gilad Ben-Yossef's
 * targeting, seed 003).  A push that finds its stack empty sets k's bit in
 * `nonempty` (one atomic OR: empty->non-empty transitions are rare since
 * refills and flushes move half a cache).
 * Pops do not clear it: the drain does, after it emptied the cache or
 * found it empty (then it clears, re-reads the counts and sets the bit
 * again if a push raced).  So the mask is a superset of the non-empty
 * caches and costs the fast path nothing.  A drain takes, for each k in
 * the mask whose cache holds objects: k's lock; on the rseq path
 * stopped = 1 and an rseq fence of CPU k alone (membarrier
 * MEMBARRIER_CMD_FLAG_CPU; every CPU in cid mode, where an index is not
 * a CPU; one fence for all when many caches hold objects): every section
 * in flight on k has committed or aborted and later ones see `stopped`.
 * Then, under the allocator lock, it moves the objects to their pagesets,
 * clears the bit and stopped (release).  A failed fence leaves that cache
 * as it was (cache_fence_fails).  It allocates nothing: the mask, the
 * target list and the scratch space are static.
 *
 * Pagesets: the lookup from a pointer to its pageset is lock-free: a hash
 * of leaves by page number (leaves of 512 pages, table grown by copying,
 * old tables kept), never shrunk.  A pageset struct is bound to its page
 * for life: created the first time the page becomes a pageset, reused if
 * it becomes one again, never freed.  A pageset is retired (live = 0, its
 * page given back) under the allocator lock only when every object is in
 * its free set, in the same lock hold as the page goes back.  So no legal
 * pointer into it exists when it goes; a lookup racing a retirement reads
 * a struct that is still valid and bound to the same page, and can only
 * misjudge a pointer that is already invalid.  One empty pageset per
 * class is kept as a spare; pcpu_drain(PCPU_DRAIN_PAGES) and pcpu_trim
 * give back the spares too.
 *
 * Double free.  pcpu_free reads the state byte: 0 or 0xff is reported
 * as "double free" (always, for a sequential double free or a free of an
 * object a drain took back), else it stores 0xff, zeroes, stores 0 and
 * pushes.  No atomic RMW: two frees racing at the same instant can both
 * pass; the object then has two copies in the caches, and the second is
 * reported and dropped when it surfaces (hand_out finds it handed out,
 * shared_return finds it free or handed out).  Both copies handed out at
 * the same instant by two CPUs is the case that goes unseen.
 *
 * Locking: the shared layer (class lists, free bitmaps, pageset creation
 * and retirement, the cache list) is guarded by the allocator lock, taken
 * once per refill, flush or drained cache and held while that batch is
 * pushed or popped; cache spinlocks nest inside it and take nothing
 * else; drain_lock serialises drains and is taken before both.  fork():
 * see cache_atfork_child.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chunk.h"

#define NR_CLASSES 7      /* 4, 8, 16, 32, 64, 128, 256 bytes */
#define MAX_CAP 32
#define STATE_FREEING 0xff
#define STATE_PENDING 0xfd /* freed, waiting to be zeroed (see pend) */
#define SPARE_PAGESETS 1  /* empty pagesets a class keeps */
#define FENCE_ALL_MIN 8   /* caches to drain from which one fence of every
			     CPU is cheaper than one per CPU */
#define LEAF_BITS 9
#define LEAF_PAGES (1u << LEAF_BITS)

/* Objects per cache and class (a refill or flush moves half). */
static const uint16_t class_cap[NR_CLASSES] = { 32, 32, 32, 32, 32, 16, 16 };

/* Offset of each class's st word in struct cache_cpu's stack[]. */
#define OFF1 (1 + 2 * 32)
#define OFF2 (OFF1 * 2)
#define OFF3 (OFF1 * 3)
#define OFF4 (OFF1 * 4)
#define OFF5 (OFF1 * 5)
#define OFF6 (OFF5 + 1 + 2 * 16)
#define STACK_WORDS (OFF6 + 1 + 2 * 16)
static const uint16_t class_off[NR_CLASSES] = { 0,    OFF1, OFF2, OFF3,
						OFF4, OFF5, OFF6 };

#define COUNT(st) ((unsigned int)((st) & 0xffff))

struct cache_cpu {
	unsigned char stopped;  /* a drain is emptying this cache */
	int lock;               /* the locked path's spinlock */
	uint64_t flush_pops;    /* pops that were flushes (atomic) */
	/* balance worker (drain_lock): idle detection */
	uint64_t idle_sig;
	long long idle_since;
	/* the pageset this cache refills from, per class with one state
	 * line a page (see shared_take; alloc lock) */
	struct pageset *own[NR_CLASSES];
	uint64_t stack[STACK_WORDS] __attribute__((aligned(64)));
};

struct pageset {
	char *page;                  /* CPU 0's copy; bound for life */
	struct pageset *next, *prev; /* its class list (alloc lock) */
	unsigned char live;          /* atomic: 1 while a pageset */
	unsigned char cls;           /* atomic (lock-free readers) */
	unsigned char list;          /* LIST_* (alloc lock) */
	uint16_t nr_objs, nr_free;   /* alloc lock */
	uint64_t *free_map;          /* 1 = in the free set (alloc lock) */
	unsigned char *state;        /* per object, see the top */
	int owner;                   /* the cache that refills from it, -1
					(one-line classes; alloc lock) */
	struct pcpu_chunk *chunk;    /* of the page, and its page number */
	uint32_t pg;
	/* _pcpu_backed_gen when every index in use was last seen to hold
	 * data on this page, and when the kernel was last asked about the
	 * ones not known (atomic; see ps_backed) */
	unsigned long backed_gen, learnt_gen;
};

enum { LIST_PARTIAL, LIST_FULL, LIST_EMPTY, NR_LISTS, LIST_NONE = NR_LISTS };

/*
 * Object @i's state byte.  Sixteen objects shared a 64-byte line at first
 * (4 bytes of metadata per object: 8.5 bytes per 8-byte object, 1.59x
 * the ideal resident memory in pcpu-bench mem); now a line holds the
 * states of a group of 64 objects, one word of the free map, 1 byte per
 * object.  A refill takes from a whole free group when it can (16 of its
 * 64), so that two CPUs allocating one class write different lines; in
 * the 64-, 128- and 256-byte classes a page is one group (64 objects or
 * fewer), so a cache refills from pages it owns instead (take_owned).
 */
#define STATE_GROUP 64
static inline unsigned char *state_of(const struct pageset *ps, size_t i)
{
	return &ps->state[(i / STATE_GROUP) * 64 + i % STATE_GROUP];
}

/* A pageset's page (never changes; atomic only for ThreadSanitizer,
 * since lock-free readers find the struct through rseq asm). */
static inline char *ps_page(const struct pageset *ps)
{
	return __atomic_load_n(&ps->page, __ATOMIC_RELAXED);
}

struct cache_class {
	struct pageset *head[NR_LISTS], *tail[NR_LISTS];
	uint32_t nr[NR_LISTS];
};

struct ps_leaf {
	uintptr_t key; /* page number >> LEAF_BITS */
	struct pageset *ps[LEAF_PAGES];
};

struct ps_table {
	struct ps_table *older; /* kept: lock-free readers may hold it */
	uint32_t bits, used;
	struct ps_leaf *slot[];
};

/* ---- state ---- */

static int cache_mode = -1; /* atomic; -1 before cache_init */
static size_t cache_max = PCPU_CACHE_MAX_SIZE; /* atomic */
static long long idle_ns = 2000000000LL;
static unsigned int page_shift;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;

static struct cache_cpu *caches[PCPU_MAX_CPUS + 1]; /* atomic pointers */
static struct pcpu_cpuset nonempty;                 /* atomic bits */

/* alloc lock: */
static struct cache_class classes[NR_CLASSES];
static struct ps_table *ps_table; /* atomic pointer */
static int cache_list[PCPU_MAX_CPUS + 1]; /* indexes with a cache */
static int nr_cache_list;                 /* atomic */
static uint64_t nr_pagesets, direct_allocs, nr_misses, nr_flushes;
static uint64_t max_live; /* nr_max_alloc as the statistics sampled it */
static uint64_t sizes_seen; /* atomic: bit w-1 = a request of w words */

/* drain_lock: */
static pthread_mutex_t drain_lock = PTHREAD_MUTEX_INITIALIZER;
static int drain_target[PCPU_MAX_CPUS + 1];
/* atomic (statistics): */
static uint64_t st_drains, st_fenced, st_skipped, st_fence_fails;
static uint64_t st_fences, st_drained;

/* ---- small helpers ---- */

static inline unsigned int class_of(size_t size)
{
	return size <= 4 ? 0 : (unsigned int)(64 - __builtin_clzll(size - 1)) - 2;
}

static inline size_t class_size(unsigned int cls)
{
	return (size_t)4 << cls;
}

static inline uint64_t *stack_of(struct cache_cpu *cc, unsigned int cls)
{
	return &cc->stack[class_off[cls]];
}

/*
 * The rseq stack operations (arch/ *.h), with the happens-before edge they
 * make (a push publishes the pair and the zeroed object, a pop takes
 * them) told to ThreadSanitizer, which cannot see into the asm.
 */
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define TSAN_RELEASE(a) __tsan_release(a)
#define TSAN_ACQUIRE(a) __tsan_acquire(a)
#else
#define TSAN_RELEASE(a) ((void)(a))
#define TSAN_ACQUIRE(a) ((void)(a))
#endif

static inline int stack_pop(struct cache_cpu *cc, unsigned int cls,
			    void **pair, int idx)
{
	uint64_t *st = stack_of(cc, cls);
	int r = pcpu__arch_stack_pop(st, pair, &cc->stopped, idx,
				     pcpu__fast.idx_tpoff);
	if (r == 0)
		TSAN_ACQUIRE(st);
	return r;
}

static inline int stack_push(struct cache_cpu *cc, unsigned int cls,
			     void *obj, void *ps, int idx)
{
	uint64_t *st = stack_of(cc, cls);
	TSAN_RELEASE(st);
	return pcpu__arch_stack_push(st, obj, ps, class_cap[cls], &cc->stopped,
				     idx, pcpu__fast.idx_tpoff);
}

#define cpu_relax _pcpu_cpu_relax

static inline void spin_lock(int *l)
{
	for (int spins = 0; __atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE);) {
		while (__atomic_load_n(l, __ATOMIC_RELAXED)) {
			if (++spins < 100)
				cpu_relax();
			else
				sched_yield();
		}
	}
}

static inline bool stopped(const struct cache_cpu *cc)
{
	return __atomic_load_n(&cc->stopped, __ATOMIC_ACQUIRE);
}

static inline void spin_unlock(int *l)
{
	__atomic_store_n(l, 0, __ATOMIC_RELEASE);
}

#define now_ns _pcpu_now_ns

/*
 * After a push that found @idx's stack empty: one atomic OR, even when
 * the bit looks set.  A drain clears the bit with an atomic AND and then
 * re-reads the counts; the two read-modify-writes are ordered on the
 * mask word, so either the OR comes last or the drain sees the push's
 * commit (a load of the bit instead could read it set before the AND and
 * leave it clear over a non-empty cache).  Transitions are rare: refills
 * and flushes move half a cache.
 */
static inline void mask_set(int idx)
{
	__atomic_fetch_or(&nonempty.bits[idx / 64], (uint64_t)1 << (idx % 64),
			  __ATOMIC_SEQ_CST);
}

static bool cache_empty(struct cache_cpu *cc)
{
	for (unsigned int c = 0; c < NR_CLASSES; c++)
		if (COUNT(__atomic_load_n(stack_of(cc, c), __ATOMIC_RELAXED)))
			return false;
	return true;
}

/* Clears @idx's bit after its cache was seen empty; sets it again if a
 * push raced (the push's own OR may have come before our AND). */
static void mask_clear(int idx, struct cache_cpu *cc)
{
	uint64_t bit = (uint64_t)1 << (idx % 64);
	__atomic_fetch_and(&nonempty.bits[idx / 64], ~bit, __ATOMIC_SEQ_CST);
	if (!cache_empty(cc))
		__atomic_fetch_or(&nonempty.bits[idx / 64], bit, __ATOMIC_SEQ_CST);
}

/* ---- pagesets: lookup (lock-free) ---- */

static inline size_t leaf_hash(uintptr_t key, uint32_t bits)
{
	return (size_t)((key * 0x9e3779b97f4a7c15ULL) >> (64 - bits));
}

/* The pageset bound to the page holding @addr, or NULL.  Lock-free. */
static inline struct pageset *ps_lookup(uintptr_t addr)
{
	struct ps_table *t = __atomic_load_n(&ps_table, __ATOMIC_ACQUIRE);
	if (!t)
		return NULL;
	uintptr_t pn = addr >> page_shift, key = pn >> LEAF_BITS;
	size_t mask = ((size_t)1 << t->bits) - 1;
	for (size_t h = leaf_hash(key, t->bits);; h = (h + 1) & mask) {
		struct ps_leaf *l = __atomic_load_n(&t->slot[h], __ATOMIC_ACQUIRE);
		if (!l)
			return NULL;
		if (l->key == key)
			return __atomic_load_n(&l->ps[pn % LEAF_PAGES],
					       __ATOMIC_ACQUIRE);
	}
}

/* The last page this thread looked up and its pageset: pageset structs
 * are bound to their page for life, so the pair never goes stale. */
static __thread uintptr_t tls_last_pn
	__attribute__((tls_model("initial-exec")));
static __thread struct pageset *tls_last_ps
	__attribute__((tls_model("initial-exec")));

/* The live pageset holding @p, or NULL. */
static inline struct pageset *ps_find(const void *p)
{
	uintptr_t pn = (uintptr_t)p >> page_shift;
	struct pageset *ps;
	if (PCPU_LIKELY(pn == tls_last_pn && tls_last_ps)) {
		ps = tls_last_ps;
	} else {
		ps = ps_lookup((uintptr_t)p);
		if (ps) {
			tls_last_pn = pn;
			tls_last_ps = ps;
		}
	}
	if (!ps || !__atomic_load_n(&ps->live, __ATOMIC_ACQUIRE))
		return NULL;
	return ps;
}

/* ---- pagesets: binding, creation, retirement (alloc lock) ---- */

/* Inserts @l into a table with room.  Context: alloc lock held. */
static void table_put(struct ps_table *t, struct ps_leaf *l)
{
	size_t mask = ((size_t)1 << t->bits) - 1;
	size_t h = leaf_hash(l->key, t->bits);
	while (t->slot[h])
		h = (h + 1) & mask;
	__atomic_store_n(&t->slot[h], l, __ATOMIC_RELEASE);
	t->used++;
}

/* The leaf of page number @pn, created if need be.  Context: alloc lock
 * held.  NULL when memory is short. */
static struct ps_leaf *leaf_get(uintptr_t pn)
{
	uintptr_t key = pn >> LEAF_BITS;
	struct ps_table *t = ps_table;
	if (t) {
		size_t mask = ((size_t)1 << t->bits) - 1;
		for (size_t h = leaf_hash(key, t->bits); t->slot[h];
		     h = (h + 1) & mask)
			if (t->slot[h]->key == key)
				return t->slot[h];
	}
	struct ps_leaf *l = calloc(1, sizeof(*l));
	if (!l)
		return NULL;
	l->key = key;
	if (!t || (t->used + 1) * 2 > ((uint32_t)1 << t->bits)) {
		uint32_t bits = t ? t->bits + 1 : 4;
		struct ps_table *n =
			calloc(1, sizeof(*n) + (sizeof(n->slot[0]) << bits));
		if (!n) {
			free(l);
			return NULL;
		}
		n->bits = bits;
		n->older = t;
		for (uint32_t i = 0; t && i < (1u << t->bits); i++)
			if (t->slot[i])
				table_put(n, t->slot[i]);
		__atomic_store_n(&ps_table, n, __ATOMIC_RELEASE);
		t = n;
	}
	table_put(t, l);
	return l;
}

/* The pageset struct bound to @page (created the first time).  Context:
 * alloc lock held.  NULL when memory is short. */
static struct pageset *ps_bind(char *page)
{
	uintptr_t pn = (uintptr_t)page >> page_shift;
	struct ps_leaf *l = leaf_get(pn);
	if (!l)
		return NULL;
	struct pageset *ps = l->ps[pn % LEAF_PAGES];
	if (ps)
		return ps;
	size_t max_objs = _pcpu_g.page_size / 4;
	size_t map_words = (max_objs + 63) / 64;
	size_t head = (sizeof(*ps) + map_words * 8 + 63) / 64 * 64;
	size_t len = head + (max_objs + STATE_GROUP - 1) / STATE_GROUP * 64;
	void *mem;
	if (posix_memalign(&mem, 64, len))
		return NULL;
	memset(mem, 0, len);
	ps = mem;
	__atomic_store_n(&ps->page, page, __ATOMIC_RELAXED); /* for life */
	ps->list = LIST_NONE;
	ps->free_map = (uint64_t *)(ps + 1);
	ps->state = (unsigned char *)mem + head;
	__atomic_store_n(&l->ps[pn % LEAF_PAGES], ps, __ATOMIC_RELEASE);
	return ps;
}

static void list_del(struct cache_class *k, struct pageset *ps)
{
	if (ps->list == LIST_NONE)
		return;
	if (ps->prev)
		ps->prev->next = ps->next;
	else
		k->head[ps->list] = ps->next;
	if (ps->next)
		ps->next->prev = ps->prev;
	else
		k->tail[ps->list] = ps->prev;
	k->nr[ps->list]--;
	ps->next = ps->prev = NULL;
	ps->list = LIST_NONE;
}

static void list_add(struct cache_class *k, struct pageset *ps, int list)
{
	ps->list = (unsigned char)list;
	ps->prev = k->tail[list];
	ps->next = NULL;
	if (k->tail[list])
		k->tail[list]->next = ps;
	else
		k->head[list] = ps;
	k->tail[list] = ps;
	k->nr[list]++;
}

/* Puts @ps in the list its free count says. */
static void ps_relist(struct cache_class *k, struct pageset *ps)
{
	int list = ps->nr_free == 0		  ? LIST_FULL
		   : ps->nr_free == ps->nr_objs ? LIST_EMPTY
						  : LIST_PARTIAL;
	if (ps->list != list) {
		list_del(k, ps);
		list_add(k, ps, list);
	}
}

/*
 * ps_create - make a pageset of class @cls from a new page.
 * Context: alloc lock held; dropped and retaken when a chunk must be
 * reserved.  Returns it (in the empty list), or NULL with errno ENOMEM.
 */
static struct pageset *ps_create(unsigned int cls, bool *kick)
{
	char *page = _pcpu_chunk_page_get();
	if (!page)
		return NULL;
	struct pageset *ps = ps_bind(page);
	if (!ps) {
		*kick |= _pcpu_chunk_page_put(page);
		errno = ENOMEM;
		return NULL;
	}
	unsigned int n = (unsigned int)(_pcpu_g.page_size >> (cls + 2));
	ps->nr_objs = ps->nr_free = (uint16_t)n;
	ps->owner = -1;
	ps->chunk = _pcpu_chunk_lookup(page);
	ps->pg = (uint32_t)((size_t)(page - ps->chunk->base) >> page_shift);
	__atomic_store_n(&ps->backed_gen, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&ps->learnt_gen, 0, __ATOMIC_RELAXED);
	memset(ps->free_map, 0, (n + 63) / 64 * 8);
	for (unsigned int i = 0; i < n; i++)
		ps->free_map[i / 64] |= (uint64_t)1 << (i % 64);
	/* state bytes: 0 from calloc, or left 0 by the last retirement (every
	 * object was free) */
	__atomic_store_n(&ps->cls, (unsigned char)cls, __ATOMIC_RELAXED);
	list_add(&classes[cls], ps, LIST_EMPTY);
	nr_pagesets++;
	__atomic_store_n(&ps->live, 1, __ATOMIC_RELEASE);
	return ps;
}

/* Gives an empty pageset's page back.  Context: alloc lock held; the
 * same hold clears live and returns the page (see the top). */
static void ps_retire(struct pageset *ps, bool *kick)
{
	PCPU_ASSERT(ps->nr_free == ps->nr_objs);
	__atomic_store_n(&ps->live, 0, __ATOMIC_RELEASE);
	list_del(&classes[ps->cls], ps);
	nr_pagesets--;
	*kick |= _pcpu_chunk_page_put(ps_page(ps));
}

/* Retires the empty pagesets of @cls beyond @keep. */
static void retire_empty(unsigned int cls, uint32_t keep, bool *kick)
{
	struct cache_class *k = &classes[cls];
	while (k->nr[LIST_EMPTY] > keep)
		ps_retire(k->head[LIST_EMPTY], kick);
}

/* ---- the shared layer (alloc lock) ---- */

/* Double frees found with the alloc lock held, reported after it. */
static void *dup_found[8];
static int nr_dup_found;

static void note_dup(void *obj)
{
	if (nr_dup_found < 8)
		dup_found[nr_dup_found++] = obj;
}

/* Takes the free objects of @ps among [@first, @first + @count) into
 * @out from @got on, up to @n in all; returns the new total. */
static size_t take_range(struct pageset *ps, unsigned int cls,
			 unsigned int first, unsigned int count, size_t n,
			 void **out, size_t got)
{
	unsigned int end = first + count;
	for (unsigned int i = first; i < end && got < n;) {
		uint64_t w = ps->free_map[i / 64] >> (i % 64);
		if (!w) {
			i = (i / 64 + 1) * 64;
			continue;
		}
		i += (unsigned int)__builtin_ctzll(w);
		if (i >= end)
			break;
		ps->free_map[i / 64] &= ~((uint64_t)1 << (i % 64));
		ps->nr_free--;
		out[2 * got] = ps_page(ps) + ((size_t)i << (cls + 2));
		out[2 * got + 1] = ps;
		got++;
		i++;
	}
	return got;
}

/* The first entirely free group of STATE_GROUP objects of @ps from group
 * @g0 on (cyclically), or -1. */
static int free_group(const struct pageset *ps, unsigned int g0)
{
	unsigned int ng = ps->nr_objs / STATE_GROUP;
	for (unsigned int i = 0; i < ng; i++) {
		unsigned int g = (g0 + i) % ng;
		if (ps->free_map[g] == ~(uint64_t)0) /* a group is a word */
			return (int)g;
	}
	return -1;
}

/* True when no cache refills from @ps any more (its owner took another
 * page since, or never had a cache): it may be taken over.  Context:
 * alloc lock held. */
static bool owner_gone(const struct pageset *ps, unsigned int cls)
{
	if (ps->owner < 0)
		return true;
	struct cache_cpu *cc = __atomic_load_n(&caches[ps->owner],
					       __ATOMIC_ACQUIRE);
	return !cc || cc->own[cls] != ps;
}

/*
 * take_owned - shared_take for a cache (@idx) of a class whose page has
 * at most STATE_GROUP objects, so that every state byte of a page shares
 * one line: two CPUs refilling from one page would write that line on
 * every allocation and free.  So a cache refills from a pageset it owns:
 * the one it took last, while it has free objects; else the first of the
 * first four partial pagesets whose owner refills elsewhere now (taken
 * over; the owned ones among the four move to the tail of the list, so
 * the next refill looks at others), or the spare; else a new pageset.  A
 * class so keeps at most one partly used page per cache that allocated
 * it and went quiet, plus what the rotation has not reached yet (an empty
 * page is retired as always).  Context: alloc lock held.  Returns how
 * many.
 */
static size_t take_owned(unsigned int cls, size_t n, void **out, int idx,
			 bool *kick)
{
	struct cache_class *k = &classes[cls];
	struct cache_cpu *cc = __atomic_load_n(&caches[idx], __ATOMIC_ACQUIRE);
	size_t got = 0;

	for (int round = 0; round < 2 && got < n; round++) {
		struct pageset *ps = cc ? cc->own[cls] : NULL;
		if (!ps || !__atomic_load_n(&ps->live, __ATOMIC_RELAXED) ||
		    ps->cls != cls || ps->owner != idx || !ps->nr_free) {
			/* the first partial pages; those still owned go to
			 * the tail, so that later refills look further */
			struct pageset *busy[4];
			int nb = 0;
			ps = NULL;
			for (struct pageset *q = k->head[LIST_PARTIAL];
			     q && nb < 4 && !ps; q = q->next)
				if (owner_gone(q, cls))
					ps = q;
				else
					busy[nb++] = q;
			for (int i = 0; i < nb; i++) {
				list_del(k, busy[i]);
				list_add(k, busy[i], LIST_PARTIAL);
			}
			if (!ps)
				ps = k->head[LIST_EMPTY];
			if (!ps && got)
				break; /* ps_create may drop the lock: never
					  with objects taken */
			if (!ps)
				ps = ps_create(cls, kick);
			if (!ps)
				break;
			ps->owner = idx;
			if (cc)
				cc->own[cls] = ps;
		}
		got = take_range(ps, cls, 0, ps->nr_objs, n, out, got);
		ps_relist(k, ps);
	}
	return got;
}

/*
 * shared_take - take up to @n objects of @cls out of the free sets into
 * @out (pairs: object, pageset), for the cache of index @idx (-1: none).
 * Creates a pageset only when it has nothing yet (objects taken are never
 * held over a dropped lock).
 *
 * Spreading: for a cache, a whole free group of STATE_GROUP objects (one
 * line of state bytes) from the first partial pagesets or a spare,
 * starting at group idx % groups, so that CPUs allocating one class do
 * not write each other's state lines; only then any free object.
 * Context: alloc lock held.  Returns how many (0: errno ENOMEM).
 */
static size_t shared_take(unsigned int cls, size_t n, void **out, int idx,
			  bool *kick)
{
	struct cache_class *k = &classes[cls];
	size_t got = 0;

	if (idx >= 0 && (size_t)_pcpu_g.page_size >> (cls + 2) <= STATE_GROUP)
		got = take_owned(cls, n, out, idx, kick);
	else if (idx >= 0) {
		/* candidates: the first partial pagesets, then a spare */
		struct pageset *cand[5];
		int nc = 0;
		for (struct pageset *ps = k->head[LIST_PARTIAL]; ps && nc < 4;
		     ps = ps->next)
			cand[nc++] = ps;
		if (k->head[LIST_EMPTY])
			cand[nc++] = k->head[LIST_EMPTY];
		for (int c = 0; c < nc; c++) {
			struct pageset *ps = cand[c];
			unsigned int ng = ps->nr_objs / STATE_GROUP;
			if (!ng)
				continue; /* 128 and 256 bytes: one line */
			int g = free_group(ps, (unsigned int)idx % ng);
			if (g < 0)
				continue;
			got = take_range(ps, cls, (unsigned int)g * STATE_GROUP,
					 STATE_GROUP, n, out, 0);
			ps_relist(k, ps);
			break;
		}
	}
	while (got < n) {
		struct pageset *ps = k->head[LIST_PARTIAL];
		if (!ps)
			ps = k->head[LIST_EMPTY];
		if (!ps) {
			if (got || !ps_create(cls, kick))
				break;
			continue;
		}
		got = take_range(ps, cls, 0, ps->nr_objs, n, out, got);
		ps_relist(k, ps);
	}
	return got;
}

/* Returns @n objects (pairs) of @cls to their free sets.  Context: alloc
 * lock held. */
static void shared_return(unsigned int cls, void *const *pairs, size_t n)
{
	struct cache_class *k = &classes[cls];
	for (size_t j = 0; j < n; j++) {
		struct pageset *ps = pairs[2 * j + 1];
		size_t i = (size_t)((char *)pairs[2 * j] - ps_page(ps)) >> (cls + 2);
		uint64_t bit = (uint64_t)1 << (i % 64);
		if ((ps->free_map[i / 64] & bit) ||
		    __atomic_load_n(state_of(ps, i), __ATOMIC_ACQUIRE)) {
			/* a second copy (two racing frees): drop it */
			note_dup(pairs[2 * j]);
			continue;
		}
		ps->free_map[i / 64] |= bit;
		ps->nr_free++;
		ps_relist(k, ps);
	}
}

/* The same, then retires the empty pagesets beyond the spare. */
static void shared_put(unsigned int cls, void *const *pairs, size_t n,
		       bool *kick)
{
	shared_return(cls, pairs, n);
	retire_empty(cls, SPARE_PAGESETS, kick);
}

/*
 * hand_out - mark a taken object handed out (its owner's to write from
 * now on).  False when it is handed out already: a second copy of an
 * object that two racing frees both let in (see the top); the caller
 * drops it and reports it (after unlocking, if it holds the lock).
 */
static inline bool hand_out(void *const *pair, unsigned int cls,
			    uint32_t words)
{
	struct pageset *ps = pair[1];
	unsigned char *state =
		state_of(ps, (size_t)((char *)pair[0] - ps_page(ps)) >> (cls + 2));
	/* acquire: pairs with the release store of 0 by the free that zeroed
	 * it (the caches' own hand-over is rseq asm, which TSan cannot see) */
	if (PCPU_UNLIKELY(__atomic_load_n(state, __ATOMIC_ACQUIRE)))
		return false;
	__atomic_store_n(state, (unsigned char)words, __ATOMIC_RELEASE);
	return true;
}

static void unlock_kick(bool kick)
{
	void *dups[8];
	int nd = nr_dup_found;
	memcpy(dups, dup_found, sizeof(dups));
	nr_dup_found = 0;
	pthread_mutex_unlock(&_pcpu_alloc_lock);
	if (kick)
		_pcpu_balance_kick(false);
	for (int i = 0; i < nd; i++)
		_pcpu_report("double free", dups[i]);
}

/* One object straight from the shared layer (no cache). */
static void *shared_get_one(unsigned int cls, uint32_t words)
{
	void *pair[2];
	bool kick = false;
	size_t n;
	pthread_mutex_lock(&_pcpu_alloc_lock);
	while ((n = shared_take(cls, 1, pair, -1, &kick)) &&
	       !hand_out(pair, cls, words))
		note_dup(pair[0]);
	if (n)
		direct_allocs++;
	unlock_kick(kick);
	_pcpu_balance_start();
	return n ? pair[0] : NULL; /* errno ENOMEM */
}

static void shared_put_one(unsigned int cls, void *obj, struct pageset *ps)
{
	void *pair[2] = { obj, ps };
	bool kick = false;
	pthread_mutex_lock(&_pcpu_alloc_lock);
	shared_put(cls, pair, 1, &kick);
	unlock_kick(kick);
}

/* ---- per-CPU caches ---- */

/*
 * Zeroing a freed object reads its copy on every index in use and writes
 * the words that are not zero.  It reads only pages that hold data
 * (backed.c): ps_backed says whether every index of @used holds data on
 * @ps's page, an answer kept per pageset until _pcpu_backed_gen moves (a
 * page written on every index in use then costs one compare per free).
 * A free on a page some index in use never wrote is pended instead: the
 * object waits in a list, and a batch of them is zeroed after one
 * question to the kernel per chunk and index (pend_clean).
 *
 * The order: the snapshot of the indexes in use first, then the
 * generation: index.c bumps the generation before it sets a used bit, so
 * an index in the snapshot that the pageset's answer did not cover shows
 * as a newer generation.
 */
struct used_snap {
	int nw;
	uint64_t w[PCPU_CPUSET_WORDS];
};

static inline void used_take(struct used_snap *u)
{
	u->nw = (_pcpu_g.nr_ids + 63) / 64;
	for (int w = 0; w < u->nw; w++)
		u->w[w] = __atomic_load_n(&_pcpu_g.used.bits[w], __ATOMIC_ACQUIRE);
}

/* The indexes of @u not known to hold data on @ps's page: asks the
 * kernel about them when @learn.  True when none is left. */
static bool ps_check(struct pageset *ps, const struct used_snap *u,
		     bool learn)
{
	bool all = true;
	for (int w = 0; w < u->nw; w++)
		for (uint64_t x = u->w[w]; x; x &= x - 1) {
			int idx = w * 64 + __builtin_ctzll(x);
			if (_pcpu_backed_test(ps->chunk, idx, ps->pg))
				continue;
			if (!learn)
				return false;
			_pcpu_backed_learn(ps->chunk, idx);
			all &= _pcpu_backed_test(ps->chunk, idx, ps->pg);
		}
	return all;
}

/* The kernel is asked about a pageset's page once per generation; a page
 * some index in use has not written stays incomplete until the
 * generation moves or a cleaning learns better (pend_clean asks once per
 * batch), and its frees are pended meanwhile. */
static __attribute__((noinline)) bool ps_backed_slow(struct pageset *ps,
						      const struct used_snap *u,
						      unsigned long g)
{
	bool learn = __atomic_exchange_n(&ps->learnt_gen, g,
					 __ATOMIC_RELAXED) != g;
	if (!ps_check(ps, u, learn))
		return false;
	__atomic_store_n(&ps->backed_gen, g, __ATOMIC_RELAXED);
	return true;
}

static inline bool ps_backed(struct pageset *ps, const struct used_snap *u)
{
	unsigned long g = __atomic_load_n(&_pcpu_backed_gen, __ATOMIC_ACQUIRE);
	if (PCPU_LIKELY(__atomic_load_n(&ps->backed_gen, __ATOMIC_RELAXED) == g))
		return true;
	return ps_backed_slow(ps, u, g);
}

/* Zeroes @p's @size bytes on index copy @q when not zero already.
 * Objects of 8 bytes and more are 8-byte aligned. */
static inline __attribute__((always_inline)) void zero_copy(char *q,
							     size_t size)
{
	uint64_t any;
	if (size == 4) {
		any = *(uint32_t *)q;
	} else {
		any = 0;
		for (size_t i = 0; i < size / 8; i++)
			any |= ((uint64_t *)q)[i];
	}
	if (PCPU_UNLIKELY(any))
		memset(q, 0, size);
}

/* Zeroes @p on every index of @u (every one known to hold data there). */
static inline __attribute__((always_inline)) void zero_all(
	char *p, size_t size, const struct used_snap *u)
{
	const unsigned int shift = pcpu__fast.shift;
	for (int w = 0; w < u->nw; w++) {
		char *base = p + ((size_t)w << (shift + 6));
		for (uint64_t x = u->w[w]; x; x &= x - 1)
			zero_copy(base + ((size_t)__builtin_ctzll(x) << shift),
				  size);
	}
}

/* Zeroes @p on the indexes of @u that hold data on @ps's page now
 * (asking the kernel for those that are not known). */
static void zero_backed(struct pageset *ps, char *p, size_t size,
			const struct used_snap *u)
{
	for (int w = 0; w < u->nw; w++)
		for (uint64_t x = u->w[w]; x; x &= x - 1) {
			int idx = w * 64 + __builtin_ctzll(x);
			if (_pcpu_backed_page(ps->chunk, idx, ps->pg))
				zero_copy(p + ((size_t)idx << pcpu__fast.shift),
					  size);
		}
}

/* ---- pended frees ---- */

#define PEND_CAP 4096   /* pended objects at most */
#define PEND_BATCH 256  /* the free that pends this many cleans them */

struct pend_item {
	char *obj;
	struct pageset *ps;
};
static pthread_mutex_t pend_lock = PTHREAD_MUTEX_INITIALIZER;
static struct pend_item pend_list[PEND_CAP];
static size_t nr_pend; /* pend_lock; read racily for statistics */
/* Objects in state STATE_PENDING by the books: listed, or taken by a
 * cleaning that has not given them back yet.  Atomic: a pend adds to it,
 * a cleaning subtracts under the alloc lock as it gives its objects back
 * (their states go to 0 there too), so the validator, which holds that
 * lock, finds it equal to the objects it sees pended even while the
 * background worker cleans. */
static uint64_t pend_total;
/* clean_lock: one cleaning at a time, owner of the scratch space */
static pthread_mutex_t clean_lock = PTHREAD_MUTEX_INITIALIZER;
static struct pend_item clean_items[PEND_CAP];
static void *clean_pairs[2 * PEND_CAP];
static uint64_t st_pended, st_pend_cleans; /* atomic */

static void shared_put(unsigned int cls, void *const *pairs, size_t n,
		       bool *kick);
static void unlock_kick(bool kick);

static int cmp_item(const void *a, const void *b)
{
	const struct pend_item *x = a, *y = b;
	uintptr_t cx = (uintptr_t)x->ps->chunk, cy = (uintptr_t)y->ps->chunk;
	return cx < cy ? -1 : cx > cy;
}

/*
 * pend_clean - zero the pended objects and give them back to their
 * pagesets.  The kernel is asked once per chunk and index in use that
 * is not known to hold data on some pended object's page; the copies
 * that hold data are zeroed, the others read zero.  Allocates nothing.
 * Returns the objects given back.
 */
static size_t pend_clean(void)
{
	struct used_snap u;
	bool kick = false;

	pthread_mutex_lock(&clean_lock);
	pthread_mutex_lock(&pend_lock);
	size_t n = nr_pend;
	memcpy(clean_items, pend_list, n * sizeof(clean_items[0]));
	__atomic_store_n(&nr_pend, 0, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&pend_lock);
	if (!n) {
		pthread_mutex_unlock(&clean_lock);
		return 0;
	}
	used_take(&u);
	qsort(clean_items, n, sizeof(clean_items[0]), cmp_item);
	for (size_t a = 0; a < n;) {
		struct pcpu_chunk *c = clean_items[a].ps->chunk;
		size_t b = a;
		while (b < n && clean_items[b].ps->chunk == c)
			b++;
		for (int w = 0; w < u.nw; w++)
			for (uint64_t x = u.w[w]; x; x &= x - 1) {
				int idx = w * 64 + __builtin_ctzll(x);
				for (size_t i = a; i < b; i++)
					if (!_pcpu_backed_test(c, idx,
							       clean_items[i].ps->pg)) {
						_pcpu_backed_learn(c, idx);
						break;
					}
			}
		a = b;
	}
	for (size_t i = 0; i < n; i++) {
		struct pageset *ps = clean_items[i].ps;
		char *obj = clean_items[i].obj;
		unsigned int cls = ps->cls;
		for (int w = 0; w < u.nw; w++)
			for (uint64_t x = u.w[w]; x; x &= x - 1) {
				int idx = w * 64 + __builtin_ctzll(x);
				if (_pcpu_backed_test(ps->chunk, idx, ps->pg))
					zero_copy(obj + ((size_t)idx
							 << pcpu__fast.shift),
						  class_size(cls));
			}
		_pcpu_initval_object_zeroed();
	}
	pthread_mutex_lock(&_pcpu_alloc_lock);
	/* pended until here: the validator holds the lock */
	for (size_t i = 0; i < n; i++) {
		struct pageset *ps = clean_items[i].ps;
		char *obj = clean_items[i].obj;
		__atomic_store_n(state_of(ps, (size_t)(obj - ps_page(ps)) >>
						     (ps->cls + 2)),
				 0, __ATOMIC_RELEASE);
	}
	__atomic_sub_fetch(&pend_total, n, __ATOMIC_RELAXED);
	for (unsigned int cls = 0; cls < NR_CLASSES; cls++) {
		size_t m = 0;
		for (size_t i = 0; i < n; i++)
			if (clean_items[i].ps->cls == cls) {
				clean_pairs[2 * m] = clean_items[i].obj;
				clean_pairs[2 * m + 1] = clean_items[i].ps;
				m++;
			}
		if (m)
			shared_put(cls, clean_pairs, m, &kick);
	}
	unlock_kick(kick);
	__atomic_add_fetch(&st_pend_cleans, 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&clean_lock);
	return n;
}

size_t _pcpu_cache_clean_pending(void)
{
	if (!__atomic_load_n(&nr_pend, __ATOMIC_RELAXED))
		return 0;
	return pend_clean();
}

/* Pends the free of @obj (state STATE_PENDING, zeroed where known). */
static void pend(char *obj, struct pageset *ps)
{
	for (;;) {
		pthread_mutex_lock(&pend_lock);
		size_t n = nr_pend;
		if (n < PEND_CAP) {
			pend_list[n].obj = obj;
			pend_list[n].ps = ps;
			__atomic_store_n(&nr_pend, n + 1, __ATOMIC_RELAXED);
			__atomic_add_fetch(&pend_total, 1, __ATOMIC_RELAXED);
		}
		pthread_mutex_unlock(&pend_lock);
		if (n < PEND_CAP) {
			__atomic_add_fetch(&st_pended, 1, __ATOMIC_RELAXED);
			if (n + 1 >= PEND_BATCH)
				pend_clean();
			return;
		}
		pend_clean();
	}
}

#define STATE_CACHED 0xfe /* a mark of cache_atfork_child only */

/*
 * cache_atfork_child - the forking thread is alone: the other threads'
 * spinlock holds and drains are gone (each hold and section committed
 * with one store or not at all; a drain stops a cache before it takes
 * the allocator lock, which the fork held, so a stopped cache still has
 * its objects).  Objects those threads had in flight (popped and not yet
 * marked handed out, or being freed) would be lost: they go back to
 * their free sets, zeroed, so that the invariants hold in the child.
 * Pended objects are zeroed and given back the same way (a free may have
 * marked one and not listed it yet): the list starts empty.  Costs one
 * pass over the pagesets.
 */
static void cache_atfork_child(void)
{
	struct used_snap u;
	bool kick = false;

	/* this thread took both to fork */
	pthread_mutex_unlock(&pend_lock);
	pthread_mutex_unlock(&clean_lock);
	nr_pend = 0;
	pend_total = 0;
	for (int i = 0; i < nr_cache_list; i++) {
		struct cache_cpu *cc = caches[cache_list[i]];
		cc->lock = 0;
		cc->stopped = 0;
		for (unsigned int c = 0; c < NR_CLASSES; c++) {
			uint64_t *st = stack_of(cc, c);
			for (unsigned int j = 0; j < COUNT(*st); j++) {
				struct pageset *ps = (void *)st[2 + 2 * j];
				char *obj = (char *)st[1 + 2 * j];
				unsigned char *v = state_of(
					ps, (size_t)(obj - ps_page(ps)) >> (c + 2));
				if (!*v) /* else a second copy of a double free */
					*v = STATE_CACHED;
			}
		}
	}
	pthread_mutex_init(&drain_lock, NULL);
	used_take(&u);
	for (unsigned int c = 0; c < NR_CLASSES; c++)
		for (int l = 0; l < NR_LISTS; l++)
			for (struct pageset *ps = classes[c].head[l], *next; ps;
			     ps = next) {
				next = ps->next; /* shared_put may relist */
				for (unsigned int i = 0; i < ps->nr_objs; i++) {
					unsigned char *v = state_of(ps, i);
					void *pair[2] = {
						ps_page(ps) + ((size_t)i << (c + 2)),
						ps
					};
					if (*v == STATE_CACHED) {
						*v = 0;
					} else if ((*v == 0 || *v == STATE_FREEING ||
						    *v == STATE_PENDING) &&
						   !((ps->free_map[i / 64] >>
						      (i % 64)) & 1)) {
						zero_backed(ps, pair[0],
							    class_size(c), &u);
						*v = 0;
						shared_return(c, pair, 1);
					}
				}
			}
	for (unsigned int c = 0; c < NR_CLASSES; c++)
		retire_empty(c, SPARE_PAGESETS, &kick);
	nr_dup_found = 0;
}

static void cache_atfork_prepare(void)
{
	pthread_mutex_lock(&clean_lock);
	pthread_mutex_lock(&pend_lock);
}

static void cache_atfork_parent(void)
{
	pthread_mutex_unlock(&pend_lock);
	pthread_mutex_unlock(&clean_lock);
}

static void cache_init_once(void)
{
	int mode = PCPU_CACHE_ON;
	const char *env = getenv("PCPU_CACHE");

	page_shift = (unsigned int)__builtin_ctzl(_pcpu_g.page_size);
	if (env && *env) {
		if (!strcmp(env, "0"))
			mode = PCPU_CACHE_SHARED;
		else if (!strcmp(env, "none"))
			mode = PCPU_CACHE_NONE;
		else if (strcmp(env, "1"))
			_pcpu_notice("PCPU_CACHE='%s' is not 1, 0 or none; "
				     "using 1", env);
	}
	env = getenv("PCPU_CACHE_MAX");
	if (env && *env) {
		char *end;
		unsigned long v = strtoul(env, &end, 10);
		if (*end || v < 4 || v > PCPU_CACHE_MAX_SIZE || (v & (v - 1)))
			_pcpu_notice("PCPU_CACHE_MAX='%s' is not a power of two "
				     "in 4..%d; using %d", env,
				     PCPU_CACHE_MAX_SIZE, PCPU_CACHE_MAX_SIZE);
		else
			__atomic_store_n(&cache_max, (size_t)v, __ATOMIC_RELAXED);
	}
	env = getenv("PCPU_CACHE_IDLE_MS");
	if (env && atol(env) > 0)
		idle_ns = atol(env) * 1000000LL;
	pthread_atfork(cache_atfork_prepare, cache_atfork_parent,
		       cache_atfork_child);
	__atomic_store_n(&cache_mode, mode, __ATOMIC_RELEASE);
}

static int cache_init(void)
{
	_pcpu_ensure_init();
	pthread_once(&cache_once, cache_init_once);
	return __atomic_load_n(&cache_mode, __ATOMIC_ACQUIRE);
}

void _pcpu_cache_set_mode(int mode, size_t max_size)
{
	cache_init();
	if (max_size < 4 || max_size > PCPU_CACHE_MAX_SIZE)
		max_size = PCPU_CACHE_MAX_SIZE;
	__atomic_store_n(&cache_max, max_size, __ATOMIC_RELAXED);
	__atomic_store_n(&cache_mode, mode, __ATOMIC_RELEASE);
}

int _pcpu_cache_mode(void)
{
	return cache_init();
}

/* Index @idx's cache, created on first use; NULL when memory is short. */
static struct cache_cpu *cache_get(int idx)
{
	struct cache_cpu *cc = __atomic_load_n(&caches[idx], __ATOMIC_ACQUIRE);
	if (PCPU_LIKELY(cc))
		return cc;
	void *mem;
	if (posix_memalign(&mem, 64, sizeof(*cc)))
		return NULL;
	memset(mem, 0, sizeof(*cc));
	pthread_mutex_lock(&_pcpu_alloc_lock);
	cc = caches[idx];
	if (!cc) {
		cc = mem;
		mem = NULL;
		cache_list[nr_cache_list] = idx;
		__atomic_store_n(&nr_cache_list, nr_cache_list + 1,
				 __ATOMIC_RELEASE);
		__atomic_store_n(&caches[idx], cc, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&_pcpu_alloc_lock);
	free(mem);
	return cc;
}

/*
 * op_cache - the cache the calling thread uses now.  *@rs: change it with
 * rseq sections: on the rseq path, the thread's index is READY
 * (pcpu__ok set).  Else under its spinlock: on the rseq path the cache
 * kept at index nr_ids for threads whose index is not ready (an object
 * cache only, no per-CPU data: no section ever writes it), on the atomic
 * path the cache of the CPU the thread runs on (sched_getcpu: caches
 * spread contention over real CPUs; an allocation writes no copy, so it
 * brings no index into use).
 */
static struct cache_cpu *op_cache(int *idx, bool *rs)
{
	int nr = _pcpu_g.nr_ids, i;
	if (__atomic_load_n(&_pcpu_g.path, __ATOMIC_ACQUIRE) == PCPU_PATH_RSEQ) {
		i = pcpu_this_cpu();
		*rs = __atomic_load_n(&pcpu__ok[i], __ATOMIC_ACQUIRE);
		if (!*rs)
			i = nr; /* only ever locked: no section writes it */
	} else {
		i = sched_getcpu();
		i = i < 0 ? nr : i % nr;
		*rs = false;
	}
	*idx = i;
	return cache_get(i);
}

/* Locked path: pop/push with one store of st as the commit.  Context:
 * @cc's spinlock held. */
static bool locked_pop(struct cache_cpu *cc, unsigned int cls, void **pair)
{
	uint64_t *st = stack_of(cc, cls);
	uint64_t w = *st;
	unsigned int n = COUNT(w);
	if (!n)
		return false;
	pair[0] = (void *)st[1 + 2 * (n - 1)];
	pair[1] = (void *)st[2 + 2 * (n - 1)];
	__atomic_store_n(st, w + 0xffff, __ATOMIC_RELEASE);
	return true;
}

static bool locked_push(struct cache_cpu *cc, int idx, unsigned int cls,
			void *obj, void *ps)
{
	uint64_t *st = stack_of(cc, cls);
	uint64_t w = *st;
	unsigned int n = COUNT(w);
	if (n >= class_cap[cls])
		return false;
	st[1 + 2 * n] = (uint64_t)obj;
	st[2 + 2 * n] = (uint64_t)ps;
	__atomic_store_n(st, w + 1, __ATOMIC_RELEASE);
	if (!n)
		mask_set(idx);
	return true;
}

/* rseq path: push on whatever CPU the thread runs now.  0 pushed, -1 not
 * (full, stopped, or the CPU cannot use the fast path). */
static int rseq_push_any(unsigned int cls, void *obj, void *ps)
{
	int idx;
	while ((idx = pcpu__fast_index()) >= 0) {
		struct cache_cpu *cc = __atomic_load_n(&caches[idx],
						       __ATOMIC_ACQUIRE);
		if (!cc)
			return -1;
		int r = stack_push(cc, cls, obj, ps, idx);
		if (r == 3)
			mask_set(idx);
		if (r == 0 || r == 3)
			return 0;
		if (r == 2)
			return -1;
	}
	return -1;
}

/*
 * refill - a miss: take half a cache from the shared layer, hand out one,
 * push the others, give back what does not fit; one alloc lock hold.
 * Returns the object, or NULL with errno ENOMEM.
 */
static void *refill(struct cache_cpu *cc, int idx, bool rs, unsigned int cls,
		    uint32_t words)
{
	void *pairs[2 * (MAX_CAP / 2)];
	bool kick = false;
	size_t want = class_cap[cls] / 2, n, j = 0;

	pthread_mutex_lock(&_pcpu_alloc_lock);
	for (;;) {
		n = shared_take(cls, want, pairs, idx, &kick);
		if (!n) {
			unlock_kick(kick);
			return NULL; /* errno ENOMEM */
		}
		while (j < n && !hand_out(pairs + 2 * j, cls, words))
			note_dup(pairs[2 * j++]);
		if (j < n)
			break;
		j = 0; /* all were second copies, dropped: again */
	}
	void *obj = pairs[2 * j++];
	direct_allocs++;
	nr_misses++;
	/* the highest first, so that pops hand out in address order */
	size_t m = n;
	if (rs) {
		while (m > j && rseq_push_any(cls, pairs[2 * (m - 1)],
					      pairs[2 * m - 1]) == 0)
			m--;
	} else {
		spin_lock(&cc->lock);
		while (!stopped(cc) && m > j &&
		       locked_push(cc, idx, cls, pairs[2 * (m - 1)],
				   pairs[2 * m - 1]))
			m--;
		spin_unlock(&cc->lock);
	}
	if (m > j)
		shared_put(cls, pairs + 2 * j, m - j, &kick);
	unlock_kick(kick);
	_pcpu_balance_start();
	return obj;
}

/*
 * flush - an overflow: move half the cache back to the pagesets, then
 * push @obj (or give it back too); one alloc lock hold.
 */
static void flush(struct cache_cpu *cc, int idx, bool rs, unsigned int cls,
		  void *obj, struct pageset *ps)
{
	void *pairs[2 * (MAX_CAP / 2 + 1)];
	size_t n = 0, half = class_cap[cls] / 2;
	bool kick = false;

	pthread_mutex_lock(&_pcpu_alloc_lock);
	if (rs) {
		int k;
		while (n < half && (k = pcpu__fast_index()) >= 0) {
			struct cache_cpu *c2 = __atomic_load_n(&caches[k],
							       __ATOMIC_ACQUIRE);
			if (!c2)
				break;
			int r = stack_pop(c2, cls, pairs + 2 * n, k);
			if (r == 2)
				break;
			if (r == 0) {
				__atomic_fetch_add(&c2->flush_pops, 1,
						   __ATOMIC_RELAXED);
				n++;
			}
		}
		if (rseq_push_any(cls, obj, ps)) {
			pairs[2 * n] = obj;
			pairs[2 * n + 1] = ps;
			n++;
		}
	} else {
		spin_lock(&cc->lock);
		while (!stopped(cc) && n < half &&
		       locked_pop(cc, cls, pairs + 2 * n))
			n++;
		__atomic_fetch_add(&cc->flush_pops, n, __ATOMIC_RELAXED);
		if (stopped(cc) || !locked_push(cc, idx, cls, obj, ps)) {
			pairs[2 * n] = obj;
			pairs[2 * n + 1] = ps;
			n++;
		}
		spin_unlock(&cc->lock);
	}
	nr_flushes++;
	shared_put(cls, pairs, n, &kick);
	unlock_kick(kick);
}

/* The slow path of an allocation of class @cls. */
static __attribute__((noinline)) void *get_slow(unsigned int cls,
						 uint32_t words)
{
	void *pair[2];

	if (__atomic_load_n(&cache_mode, __ATOMIC_ACQUIRE) != PCPU_CACHE_ON)
		return shared_get_one(cls, words);
	for (;;) {
		int idx;
		bool rs;
		struct cache_cpu *cc = op_cache(&idx, &rs);
		if (!cc)
			return shared_get_one(cls, words);
		bool got;
		if (rs) {
			int r = stack_pop(cc, cls, pair, idx);
			if (r == 1)
				continue; /* preempted or moved: again */
			got = r == 0;
		} else {
			spin_lock(&cc->lock);
			got = !stopped(cc) && locked_pop(cc, cls, pair);
			spin_unlock(&cc->lock);
		}
		if (got) {
			if (hand_out(pair, cls, words))
				return pair[0];
			_pcpu_report("double free", pair[0]);
			continue; /* a second copy: dropped */
		}
		if (stopped(cc))
			return shared_get_one(cls, words); /* being drained */
		return refill(cc, idx, rs, cls, words);
	}
}

/* The slow path of a free of @obj (zeroed, state 0) of class @cls. */
static __attribute__((noinline)) void put_slow(unsigned int cls, void *obj,
						 struct pageset *ps)
{
	if (__atomic_load_n(&cache_mode, __ATOMIC_ACQUIRE) != PCPU_CACHE_ON) {
		shared_put_one(cls, obj, ps);
		return;
	}
	for (;;) {
		int idx;
		bool rs;
		struct cache_cpu *cc = op_cache(&idx, &rs);
		if (!cc) {
			shared_put_one(cls, obj, ps);
			return;
		}
		if (rs) {
			int r = stack_push(cc, cls, obj, ps, idx);
			if (r == 3)
				mask_set(idx);
			if (r == 0 || r == 3)
				return;
			if (r == 1)
				continue;
		} else {
			spin_lock(&cc->lock);
			bool done = !stopped(cc) &&
				    locked_push(cc, idx, cls, obj, ps);
			spin_unlock(&cc->lock);
			if (done)
				return;
		}
		if (stopped(cc))
			shared_put_one(cls, obj, ps); /* being drained */
		else
			flush(cc, idx, rs, cls, obj, ps);
		return;
	}
}

/* ---- the hooks ---- */

static __attribute__((noinline, cold)) bool report(const char *what,
						   const void *p)
{
	_pcpu_report(what, p);
	return true;
}

bool _pcpu_cache_alloc(size_t size, size_t align, void **out)
{
	int mode = __atomic_load_n(&cache_mode, __ATOMIC_ACQUIRE);
	if (PCPU_UNLIKELY(mode < 0))
		mode = cache_init();
	if (size - 1 >= __atomic_load_n(&cache_max, __ATOMIC_RELAXED) ||
	    mode == PCPU_CACHE_NONE)
		return false;
	unsigned int cls = class_of(size);
	if (align > class_size(cls) || (align & (align - 1)))
		return false; /* the area allocator serves or refuses it */
	uint32_t words = (uint32_t)((size + 3) / 4);
	uint64_t bit = (uint64_t)1 << (words - 1);
	if (PCPU_UNLIKELY(!(__atomic_load_n(&sizes_seen, __ATOMIC_RELAXED) & bit)))
		__atomic_fetch_or(&sizes_seen, bit, __ATOMIC_RELAXED);

	if (PCPU_LIKELY(mode == PCPU_CACHE_ON)) {
		void *pair[2];
		int idx;
		while ((idx = pcpu__fast_index()) >= 0) {
			struct cache_cpu *cc = __atomic_load_n(&caches[idx],
							       __ATOMIC_ACQUIRE);
			if (PCPU_UNLIKELY(!cc))
				break;
			int r = stack_pop(cc, cls, pair, idx);
			if (PCPU_LIKELY(r == 0)) {
				if (PCPU_LIKELY(hand_out(pair, cls, words))) {
					*out = pair[0];
					return true;
				}
				report("double free", pair[0]);
				continue; /* a second copy: dropped */
			}
			if (r == 2)
				break;
		}
	}
	*out = get_slow(cls, words);
	return true;
}

bool _pcpu_cache_free(void *p)
{
	struct pageset *ps = ps_find(p);
	if (!ps)
		return false;
	unsigned int cls = __atomic_load_n(&ps->cls, __ATOMIC_RELAXED);
	size_t off = (size_t)((char *)p - ps_page(ps)), size = class_size(cls);
	if (PCPU_UNLIKELY(off & (size - 1)))
		return report("invalid free", p);
	unsigned char *state = state_of(ps, off >> (cls + 2));
	unsigned char v = __atomic_load_n(state, __ATOMIC_ACQUIRE);
	if (PCPU_UNLIKELY(v == 0 || v >= STATE_PENDING))
		return report("double free", p);
	/* no atomic RMW: two frees racing here can both pass; hand_out
	 * catches the second copy (see the top) */
	__atomic_store_n(state, STATE_FREEING, __ATOMIC_RELAXED);
	/* indexes coming into use first: one that is published meanwhile
	 * is in the snapshot taken after */
	_pcpu_initval_object_freed(ps->chunk, p, size);
	struct used_snap u;
	used_take(&u);
	if (PCPU_UNLIKELY(!ps_backed(ps, &u))) {
		__atomic_store_n(state, STATE_PENDING, __ATOMIC_RELAXED);
		pend(p, ps);
		return true;
	}
	zero_all(p, size, &u);
	_pcpu_initval_object_zeroed();
	__atomic_store_n(state, 0, __ATOMIC_RELEASE);

	if (PCPU_LIKELY(__atomic_load_n(&cache_mode, __ATOMIC_RELAXED) ==
			PCPU_CACHE_ON)) {
		int idx;
		while ((idx = pcpu__fast_index()) >= 0) {
			struct cache_cpu *cc = __atomic_load_n(&caches[idx],
							       __ATOMIC_ACQUIRE);
			if (PCPU_UNLIKELY(!cc))
				break;
			int r = stack_push(cc, cls, p, ps, idx);
			if (PCPU_LIKELY(r == 0))
				return true;
			if (r == 3) {
				mask_set(idx);
				return true;
			}
			if (r == 2)
				break;
		}
	}
	put_slow(cls, p, ps);
	return true;
}

bool _pcpu_cache_alloc_size(const void *p, size_t *size)
{
	struct pageset *ps = ps_find(p);
	if (!ps)
		return false;
	unsigned int cls = __atomic_load_n(&ps->cls, __ATOMIC_RELAXED);
	size_t off = (size_t)((const char *)p - ps_page(ps));
	unsigned char v = 0;
	if (!(off & (class_size(cls) - 1)))
		v = __atomic_load_n(state_of(ps, off >> (cls + 2)),
				    __ATOMIC_ACQUIRE);
	*size = v >= STATE_PENDING ? 0 : (size_t)v * 4;
	if (!*size)
		errno = EINVAL;
	return true;
}

/* ---- drains ---- */

/*
 * take_cache - move every object of @cc to the pagesets.
 * Context: drain_lock and alloc lock held; @cc stopped and fenced, or its
 * spinlock held.  Returns the objects moved.
 */
static size_t take_cache(int idx, struct cache_cpu *cc, bool *kick)
{
	size_t total = 0;
	for (unsigned int c = 0; c < NR_CLASSES; c++) {
		uint64_t *st = stack_of(cc, c);
		uint64_t w = __atomic_load_n(st, __ATOMIC_ACQUIRE);
		unsigned int n = COUNT(w);
		if (!n)
			continue;
		TSAN_ACQUIRE(st);
		shared_put(c, (void *const *)(st + 1), n, kick);
		__atomic_store_n(st, w & ~(uint64_t)0xffff, __ATOMIC_RELEASE);
		total += n;
	}
	uint64_t bit = (uint64_t)1 << (idx % 64);
	__atomic_fetch_and(&nonempty.bits[idx / 64], ~bit, __ATOMIC_SEQ_CST);
	return total;
}

/* Drains @cc under its spinlock (atomic path, the locked cache). */
static size_t drain_locked(int idx, struct cache_cpu *cc)
{
	bool kick = false;
	pthread_mutex_lock(&_pcpu_alloc_lock);
	spin_lock(&cc->lock);
	size_t n = take_cache(idx, cc, &kick);
	spin_unlock(&cc->lock);
	unlock_kick(kick);
	return n;
}

/* Drains @cc, stopped and fenced, and restarts it. */
static size_t drain_stopped(int idx, struct cache_cpu *cc)
{
	bool kick = false;
	pthread_mutex_lock(&_pcpu_alloc_lock);
	size_t n = take_cache(idx, cc, &kick);
	__atomic_store_n(&cc->stopped, 0, __ATOMIC_RELEASE);
	unlock_kick(kick);
	return n;
}

/* Stops @cc for an rseq drain; false when it can be drained under its
 * lock instead (the locked cache, or the process left the rseq path). */
static bool stop_cache(int idx, struct cache_cpu *cc)
{
	spin_lock(&cc->lock);
	bool rseq = idx < _pcpu_g.nr_ids &&
		    __atomic_load_n(&_pcpu_g.path, __ATOMIC_ACQUIRE) ==
			    PCPU_PATH_RSEQ;
	if (rseq)
		__atomic_store_n(&cc->stopped, 1, __ATOMIC_SEQ_CST);
	spin_unlock(&cc->lock);
	return rseq;
}

/*
 * drain_targets - drain the caches of the @n indexes in drain_target[].
 * Context: drain_lock held.  Returns the objects drained.
 */
static size_t drain_targets(int n)
{
	size_t objs = 0;
	uint64_t fenced = 0, fails = 0, fences = 0;
	bool all = n >= FENCE_ALL_MIN || _pcpu_g.index_mode == PCPU_INDEX_CID;
	int nstopped = 0;

	for (int i = 0; i < n; i++) {
		int k = drain_target[i];
		struct cache_cpu *cc = caches[k];
		if (!stop_cache(k, cc)) {
			objs += drain_locked(k, cc);
			fenced++;
			continue;
		}
		if (all) {
			drain_target[nstopped++] = k; /* fenced below */
			continue;
		}
		fences++;
		if (_pcpu_os_rseq_fence(k)) {
			__atomic_store_n(&cc->stopped, 0, __ATOMIC_RELEASE);
			fails++;
			continue;
		}
		objs += drain_stopped(k, cc);
		fenced++;
	}
	if (nstopped) {
		fences++;
		bool ok = _pcpu_os_rseq_fence(-1) == 0;
		for (int i = 0; i < nstopped; i++) {
			int k = drain_target[i];
			struct cache_cpu *cc = caches[k];
			if (!ok) {
				__atomic_store_n(&cc->stopped, 0,
						 __ATOMIC_RELEASE);
				fails++;
				continue;
			}
			objs += drain_stopped(k, cc);
			fenced++;
		}
	}
	__atomic_add_fetch(&st_drains, 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&st_fenced, fenced, __ATOMIC_RELAXED);
	__atomic_add_fetch(&st_fence_fails, fails, __ATOMIC_RELAXED);
	__atomic_add_fetch(&st_fences, fences, __ATOMIC_RELAXED);
	__atomic_add_fetch(&st_skipped,
			   (uint64_t)(_pcpu_g.nr_ids + 1) - fenced - fails,
			   __ATOMIC_RELAXED);
	__atomic_add_fetch(&st_drained, objs, __ATOMIC_RELAXED);
	return objs;
}

/* Gives back the empty pagesets of every class, spares included. */
static void retire_all_empty(void)
{
	bool kick = false;
	pthread_mutex_lock(&_pcpu_alloc_lock);
	for (unsigned int c = 0; c < NR_CLASSES; c++)
		retire_empty(c, 0, &kick);
	unlock_kick(kick);
}

/*
 * collect - the indexes of the nonempty mask whose caches hold objects
 * (and, with @idle, that nobody used for idle_ns) into drain_target[];
 * clears the bits of caches found empty.  Context: drain_lock held.
 */
static int collect(bool idle)
{
	int n = 0, nr = _pcpu_g.nr_ids;
	long long now = idle ? now_ns() : 0;
	for (int w = 0; w <= nr / 64; w++) {
		uint64_t x = __atomic_load_n(&nonempty.bits[w], __ATOMIC_ACQUIRE);
		for (; x; x &= x - 1) {
			int k = w * 64 + __builtin_ctzll(x);
			if (k > nr)
				break;
			struct cache_cpu *cc = __atomic_load_n(&caches[k],
							       __ATOMIC_ACQUIRE);
			if (!cc)
				continue;
			if (cache_empty(cc)) {
				mask_clear(k, cc);
				continue;
			}
			if (idle) {
				uint64_t sig = 0;
				for (unsigned int c = 0; c < NR_CLASSES; c++)
					sig += __atomic_load_n(stack_of(cc, c),
							       __ATOMIC_RELAXED);
				if (sig != cc->idle_sig || !cc->idle_since) {
					cc->idle_sig = sig;
					cc->idle_since = now;
					continue;
				}
				if (now - cc->idle_since < idle_ns)
					continue;
				cc->idle_since = 0;
			}
			drain_target[n++] = k;
		}
	}
	return n;
}

size_t pcpu_drain(unsigned int flags)
{
	_pcpu_ensure_init();
	_pcpu_chunk_clean_deferred(); /* areas' deferred frees too */
	if (__atomic_load_n(&cache_mode, __ATOMIC_ACQUIRE) < 0)
		return 0; /* no object was ever cached */
	pend_clean();
	pthread_mutex_lock(&drain_lock);
	size_t n = drain_targets(collect(false));
	pthread_mutex_unlock(&drain_lock);
	if (flags & PCPU_DRAIN_PAGES)
		retire_all_empty();
	return n;
}

void _pcpu_cache_tick(bool pressure)
{
	_pcpu_chunk_clean_deferred(); /* areas' deferred frees too */
	if (__atomic_load_n(&cache_mode, __ATOMIC_ACQUIRE) < 0)
		return;
	if (pressure) {
		pcpu_drain(PCPU_DRAIN_PAGES);
		return;
	}
	if (__atomic_load_n(&nr_pend, __ATOMIC_RELAXED))
		pend_clean();
	pthread_mutex_lock(&drain_lock);
	int n = collect(true);
	if (n)
		drain_targets(n);
	pthread_mutex_unlock(&drain_lock);
}

/* ---- statistics and validation ---- */

void _pcpu_cache_stats(struct pcpu_stats *st)
{
	uint64_t live = 0, bytes = 0, pops = 0, flush_pops = 0, cached = 0;
	uint64_t cached_bytes = 0;

	if (__atomic_load_n(&cache_mode, __ATOMIC_ACQUIRE) < 0)
		return;
	pthread_mutex_lock(&_pcpu_alloc_lock);
	for (unsigned int c = 0; c < NR_CLASSES; c++)
		for (int l = 0; l < NR_LISTS; l++)
			for (struct pageset *ps = classes[c].head[l]; ps;
			     ps = ps->next)
				for (unsigned int i = 0; i < ps->nr_objs; i++) {
					unsigned char v = __atomic_load_n(
						state_of(ps, i), __ATOMIC_ACQUIRE);
					if (v && v != STATE_PENDING) {
						live++;
						bytes += v == STATE_FREEING
								 ? class_size(c)
								 : (uint64_t)v * 4;
					}
				}
	for (int i = 0; i < nr_cache_list; i++) {
		struct cache_cpu *cc = caches[cache_list[i]];
		flush_pops += __atomic_load_n(&cc->flush_pops, __ATOMIC_RELAXED);
		for (unsigned int c = 0; c < NR_CLASSES; c++) {
			uint64_t w = __atomic_load_n(stack_of(cc, c),
						     __ATOMIC_RELAXED);
			pops += w >> 16;
			cached += COUNT(w);
			cached_bytes += COUNT(w) * class_size(c);
		}
	}
	uint64_t allocs = pops - flush_pops + direct_allocs;
	st->nr_alloc += allocs;
	st->nr_dealloc += allocs - live;
	st->nr_cur_alloc += live;
	st->live_bytes += bytes;
	if (st->nr_cur_alloc > max_live)
		max_live = st->nr_cur_alloc;
	if (max_live > st->nr_max_alloc)
		st->nr_max_alloc = max_live;
	uint64_t seen = __atomic_load_n(&sizes_seen, __ATOMIC_RELAXED);
	if (seen) {
		uint64_t lo = (uint64_t)(__builtin_ctzll(seen) + 1) * 4;
		uint64_t hi = (uint64_t)(64 - __builtin_clzll(seen)) * 4;
		if (!st->min_alloc_size || lo < st->min_alloc_size)
			st->min_alloc_size = lo;
		if (hi > st->max_alloc_size)
			st->max_alloc_size = hi;
	}
	st->cache_hits = pops - flush_pops;
	st->cache_misses = nr_misses;
	st->cache_flushes = nr_flushes;
	st->cache_pagesets = nr_pagesets;
	st->metadata_bytes +=
		nr_pagesets * (sizeof(struct pageset) +
			       _pcpu_g.page_size / 4 + /* state bytes */
			       _pcpu_g.page_size / 32) + /* free map */
		(uint64_t)nr_cache_list * sizeof(struct cache_cpu);
	pthread_mutex_unlock(&_pcpu_alloc_lock);
	st->cache_objs_cached = cached;
	st->cache_bytes_cached = cached_bytes;
	st->cache_drains = __atomic_load_n(&st_drains, __ATOMIC_RELAXED);
	st->cache_cpus_fenced = __atomic_load_n(&st_fenced, __ATOMIC_RELAXED);
	st->cache_cpus_skipped = __atomic_load_n(&st_skipped, __ATOMIC_RELAXED);
	st->cache_fence_fails = __atomic_load_n(&st_fence_fails,
						__ATOMIC_RELAXED);
	st->cache_fences = __atomic_load_n(&st_fences, __ATOMIC_RELAXED);
	st->cache_objs_drained = __atomic_load_n(&st_drained, __ATOMIC_RELAXED);
	st->zero_pending = __atomic_load_n(&nr_pend, __ATOMIC_RELAXED);
	st->zero_pended = __atomic_load_n(&st_pended, __ATOMIC_RELAXED);
	st->zero_cleans = __atomic_load_n(&st_pend_cleans, __ATOMIC_RELAXED);
}

static int bad(const char *what, const void *where)
{
	fprintf(stderr, "libpcpu: validate: object caches: %s (%p)\n", what,
		where);
	return -EUCLEAN;
}

/* Checks one pageset's own bookkeeping and its place in the chunk. */
static int check_pageset(const struct pageset *ps, unsigned int cls, int list)
{
	if (!__atomic_load_n(&ps->live, __ATOMIC_ACQUIRE) || ps->cls != cls ||
	    ps->list != list)
		return bad("pageset not live or in the wrong list", ps_page(ps));
	if (ps_lookup((uintptr_t)ps_page(ps)) != ps)
		return bad("pageset not found by its page", ps_page(ps));
	if (ps->nr_objs != _pcpu_g.page_size >> (cls + 2))
		return bad("pageset object count", ps_page(ps));
	uint32_t nfree = 0;
	for (unsigned int w = 0; w < (ps->nr_objs + 63u) / 64; w++)
		nfree += (uint32_t)__builtin_popcountll(ps->free_map[w]);
	if (nfree != ps->nr_free)
		return bad("pageset free count differs from its bitmap",
			   ps_page(ps));
	int want = !ps->nr_free ? LIST_FULL
		   : ps->nr_free == ps->nr_objs ? LIST_EMPTY : LIST_PARTIAL;
	if (want != list)
		return bad("pageset in a list its free count contradicts",
			   ps_page(ps));
	struct pcpu_chunk *c = _pcpu_chunk_lookup(ps_page(ps));
	uint32_t off = c ? (uint32_t)((ps_page(ps) - c->base) / 4) : 0;
	if (!c || !_pcpu_areamap_is_start(&c->map, off) ||
	    _pcpu_areamap_size(&c->map, off) != _pcpu_g.page_size / 4)
		return bad("pageset page is not a page-sized area", ps_page(ps));
	for (unsigned int i = 0; i < ps->nr_objs; i++) {
		bool in_free = (ps->free_map[i / 64] >> (i % 64)) & 1;
		unsigned char v = __atomic_load_n(state_of(ps, i),
						  __ATOMIC_ACQUIRE);
		if (in_free && v)
			return bad("object in the free set is handed out",
				   ps_page(ps) + ((size_t)i << (cls + 2)));
		if (v > 64 && v != STATE_FREEING && v != STATE_PENDING)
			return bad("object state", ps_page(ps));
	}
	return 0;
}

/* Every object that is not handed out (nor pended) reads zero on every
 * index in use (reading only copies whose page holds data). */
static int check_zero(struct pageset *ps, unsigned int cls,
		      const struct used_snap *u)
{
	size_t size = class_size(cls);
	for (int w = 0; w < u->nw; w++)
		for (uint64_t x = u->w[w]; x; x &= x - 1) {
			int idx = w * 64 + __builtin_ctzll(x);
			if (!_pcpu_backed_page(ps->chunk, idx, ps->pg))
				continue;
			for (unsigned int i = 0; i < ps->nr_objs; i++) {
				if (__atomic_load_n(state_of(ps, i),
						    __ATOMIC_ACQUIRE))
					continue;
				const char *p = ps_page(ps) + i * size;
				const uint32_t *q =
					(const uint32_t *)(p + (size_t)idx *
								       _pcpu_g.unit_size);
				for (size_t j = 0; j < size / 4; j++)
					if (__atomic_load_n(&q[j],
							    __ATOMIC_RELAXED)) {
						fprintf(stderr,
							"libpcpu: validate: object "
							"%p is not handed out but "
							"reads %#x on index %d\n",
							(const void *)p, q[j], idx);
						return -EUCLEAN;
					}
			}
		}
	return 0;
}

static int cmp_ptr(const void *a, const void *b)
{
	uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
	return x < y ? -1 : x > y;
}

/*
 * The cached objects: valid pairs, not handed out, not in a free set, in
 * one cache slot only.  Context: alloc lock held, no small allocation or
 * free in flight.
 */
/* One cached pair: names its object's live pageset, aligned, neither in
 * the free set nor handed out. */
static const char *check_pair(const char *obj, const struct pageset *ps,
			      unsigned int c)
{
	if (ps_find(obj) != ps || ps->cls != c)
		return "cached object not in its pageset";
	size_t off = (size_t)(obj - ps_page(ps)), k = off >> (c + 2);
	if (off & (class_size(c) - 1))
		return "cached object misaligned";
	if ((ps->free_map[k / 64] >> (k % 64)) & 1)
		return "cached object also in the free set";
	if (__atomic_load_n(state_of(ps, k), __ATOMIC_ACQUIRE))
		return "cached object handed out";
	return NULL;
}

static int check_caches(uint64_t *cached)
{
	uint64_t total = 0;
	size_t cap = (size_t)nr_cache_list * (STACK_WORDS / 2), nall = 0;
	uintptr_t *all = cap ? malloc(cap * sizeof(*all)) : NULL;
	const char *why = NULL;
	const void *where = NULL;

	for (int i = 0; i < nr_cache_list && !why; i++) {
		int idx = cache_list[i];
		struct cache_cpu *cc = caches[idx];
		bool any = false;
		for (unsigned int c = 0; c < NR_CLASSES && !why; c++) {
			uint64_t *st = stack_of(cc, c);
			unsigned int n =
				COUNT(__atomic_load_n(st, __ATOMIC_ACQUIRE));
			if (n > class_cap[c]) {
				why = "cache count above its capacity";
				where = cc;
			}
			for (unsigned int j = 0; j < n && !why; j++) {
				const char *obj = (const char *)st[1 + 2 * j];
				why = check_pair(obj, (void *)st[2 + 2 * j], c);
				where = obj;
				if (all && nall < cap)
					all[nall++] = (uintptr_t)obj;
				any = true;
			}
			total += n;
		}
		if (!why && any && !_pcpu_cpuset_atomic_test(&nonempty, idx)) {
			why = "cache holds objects, mask bit clear";
			where = cc;
		}
	}
	if (!why && all) { /* short of memory: no duplicate check */
		qsort(all, nall, sizeof(*all), cmp_ptr);
		for (size_t i = 1; i < nall && !why; i++)
			if (all[i] == all[i - 1]) {
				why = "object cached twice";
				where = (void *)all[i];
			}
	}
	free(all);
	*cached = total;
	return why ? bad(why, where) : 0;
}

int _pcpu_cache_validate_locked(void)
{
	if (__atomic_load_n(&cache_mode, __ATOMIC_ACQUIRE) < 0)
		return 0;
	struct used_snap used;
	uint64_t nps = 0, not_out = 0, free_objs = 0, pended = 0;
	used_take(&used);
	for (unsigned int c = 0; c < NR_CLASSES; c++) {
		for (int l = 0; l < NR_LISTS; l++) {
			uint32_t n = 0;
			for (struct pageset *ps = classes[c].head[l]; ps;
			     ps = ps->next) {
				int r = check_pageset(ps, c, l);
				if (!r)
					r = check_zero(ps, c, &used);
				if (r)
					return r;
				for (unsigned int i = 0; i < ps->nr_objs; i++) {
					unsigned char v = *state_of(ps, i);
					not_out += !v;
					pended += v == STATE_PENDING;
				}
				free_objs += ps->nr_free;
				n++;
			}
			if (n != classes[c].nr[l])
				return bad("class list count", &classes[c]);
		}
		nps += classes[c].nr[LIST_PARTIAL] + classes[c].nr[LIST_FULL] +
		       classes[c].nr[LIST_EMPTY];
	}
	if (nps != nr_pagesets)
		return bad("pageset count", NULL);
#if PCPU_DEBUG < 3
	/* Exact when nothing is in flight (PCPU_DEBUG=3 validates after
	 * every operation while others run, so it skips this). */
	uint64_t cached = 0;
	int r = check_caches(&cached);
	if (r)
		return r;
	/* (pend_lock comes before the allocator lock: not taken; the
	 * books, pend_total, change under this lock or with a pend, which
	 * is a free in flight) */
	uint64_t np = __atomic_load_n(&pend_total, __ATOMIC_RELAXED);
	if (pended != np) {
		fprintf(stderr,
			"libpcpu: validate: object caches: %llu objects pended, "
			"%llu on the books\n",
			(unsigned long long)pended, (unsigned long long)np);
		return -EUCLEAN;
	}
	if (not_out != free_objs + cached) {
		fprintf(stderr,
			"libpcpu: validate: object caches: %llu objects not "
			"handed out, %llu in free sets + %llu cached\n",
			(unsigned long long)not_out,
			(unsigned long long)free_objs,
			(unsigned long long)cached);
		return -EUCLEAN;
	}
#endif
	return 0;
}
