/*
 * chunk.h - the chunk structure and the allocator's shared state, owned by
 * chunk.c; reclaim.c moves chunks between states and stats.c reads them,
 * both with the allocator lock held.
 */
#ifndef PCPU_CHUNK_H
#define PCPU_CHUNK_H

#include <pthread.h>

#include "internal.h"

/* Slots by largest free run: slot s holds active chunks whose contig_hint
 * (in words) has fls == s; a 1 MiB unit has 2^18 words, so slots 0..19,
 * the last one for fully free chunks. */
#define PCPU_NR_SLOTS 24

enum pcpu_chunk_state {
	PCPU_CHUNK_ACTIVE,    /* in the slot its contig hint says */
	PCPU_CHUNK_ISOLATED,  /* in no list: being depopulated or released */
	PCPU_CHUNK_SIDELINED, /* depopulated, holds areas: tried after the
				 partly used active chunks, before free ones */
};

struct pcpu_chunk {
	char *base;              /* CPU 0's unit; CPU c's at base + c*unit */
	size_t len;              /* the whole reservation */
	struct pcpu_areamap map; /* layout shared by every unit */
	struct pcpu_chunk *next, *prev; /* its list */
	int list;                /* slot, PCPU_NR_SLOTS for sidelined, -1 */
	enum pcpu_chunk_state state;
	bool to_depopulate;      /* marked for the balance worker */
	uint32_t nr_alloc;       /* live areas */
	/* The last request shape that found no fit here: a request at least
	 * as large and at least as aligned cannot fit either until the next
	 * free in this chunk (holes too small or misaligned, e.g. 4-byte
	 * areas at 8-byte alignment leave 4-byte holes). 0: none. */
	uint32_t nofit_bits, nofit_align;
	/* Pages of the unit layout: touched = may be backed on some used
	 * index (the kernel's "populated"); used = holds an area.  used
	 * implies touched; touched && !used is an empty populated page. */
	uint64_t *page_touched;
	uint64_t *page_used;
	uint32_t nr_pop_pages, nr_empty_pop_pages;
	/* Pages known to hold data, per index (backed.c): bit pg of word
	 * backed[idx * backed_words + pg / 64]. */
	uint64_t *backed;
	uint32_t backed_words;
};

/* Words of a unit's page bitmap at most (a 1 MiB unit of 4 KiB pages). */
#define PCPU_BACKED_MAX_WORDS 4

struct pcpu_chunk_list {
	struct pcpu_chunk *head, *tail;
};

struct pcpu_alloc_counters {
	uint64_t nr_alloc, nr_dealloc, nr_cur_alloc, nr_max_alloc;
	uint64_t nr_chunks, nr_max_chunks;
	uint64_t min_alloc_size, max_alloc_size;
	uint64_t live_bytes;
	uint64_t pop_pages, empty_pop_pages; /* sums over chunks */
	uint64_t nr_to_depopulate;           /* chunks marked */
	/* reclaim events */
	uint64_t depopulated_pages, chunks_isolated, chunks_sidelined;
	uint64_t chunks_reintegrated, chunks_freed, trims, pressure_events;
	uint64_t balance_passes, nonblock_fails, chunks_grown;
	uint64_t backed_queries; /* atomic: pagemap reads of backed.c */
	uint64_t deferred_frees, deferred_cleans; /* atomic (chunk.c) */
};

extern pthread_mutex_t _pcpu_alloc_lock;
extern struct pcpu_chunk **_pcpu_chunks; /* sorted by base */
extern size_t _pcpu_nr_chunks;
extern struct pcpu_alloc_counters _pcpu_counters;

int _pcpu_chunk_slot(const struct pcpu_chunk *c);
struct pcpu_chunk *_pcpu_chunk_lookup(const void *p);
/* The chunk whose first unit holds @p, without a lock (NULL: none).  The
 * chunk stays valid while a live area in it is used: only fully free
 * chunks are released. */
struct pcpu_chunk *_pcpu_chunk_find(const void *p);
/* The position in _pcpu_chunks of the first chunk whose base is above
 * @base (NULL: 0); _pcpu_nr_chunks when there is none.  Chunks installed
 * while a walker dropped the lock shift positions, not the order.
 * Context: alloc_lock held. */
size_t _pcpu_chunk_after(const char *base);
/* Context: alloc_lock held, unless said otherwise. */
int _pcpu_validate_locked(void);
struct pcpu_chunk *_pcpu_chunk_create(void); /* lock not held */
int _pcpu_chunk_destroy(struct pcpu_chunk *c); /* lock not held */
int _pcpu_chunk_install(struct pcpu_chunk *c);
void _pcpu_chunk_uninstall(struct pcpu_chunk *c);
void _pcpu_chunk_isolate(struct pcpu_chunk *c);
void _pcpu_chunk_reintegrate(struct pcpu_chunk *c);
void _pcpu_chunk_pages_sync(struct pcpu_chunk *c, uint32_t pg0, uint32_t pg1);
/* Zeroes [p, p + bytes) of @c (an address of its first unit) on every
 * index in use, reading only pages that hold data (backed.c) and writing
 * only words that are not zero.  The caller owns the bytes (being freed):
 * nothing else writes them.  May ask the kernel (no lock needed). */
/* Does the deferred frees of areas (chunk.c; takes the alloc lock). */
void _pcpu_chunk_clean_deferred(void);
/* Head of a list: a slot, or PCPU_NR_SLOTS for the sidelined chunks. */
struct pcpu_chunk *_pcpu_chunk_first(int list);

/* backed.c: which pages of which units hold data (see its top) */
extern unsigned long _pcpu_backed_gen; /* atomic */
void _pcpu_backed_gen_bump(void);
static inline bool _pcpu_backed_test(const struct pcpu_chunk *c, int idx,
				     uint32_t pg)
{
	return (__atomic_load_n(&c->backed[(size_t)idx * c->backed_words +
					   pg / 64],
				__ATOMIC_RELAXED) >>
		(pg % 64)) & 1;
}
/* Pages [pg0, pg1] of unit @idx are all known to hold data. */
bool _pcpu_backed_all(const struct pcpu_chunk *c, int idx, uint32_t pg0,
		      uint32_t pg1);
/* The library wrote (populated) / discarded pages [pg0, pg1] of @idx. */
void _pcpu_backed_mark(struct pcpu_chunk *c, int idx, uint32_t pg0,
		       uint32_t pg1);
void _pcpu_backed_forget(struct pcpu_chunk *c, int idx, uint32_t pg0,
			 uint32_t pg1);
/* Asks the kernel which pages of unit @idx hold data now and records
 * them (one pagemap read).  0 or -errno (then every page counts). */
int _pcpu_backed_learn(struct pcpu_chunk *c, int idx);
/* Page @pg of unit @idx holds data: known, or the kernel says so now. */
bool _pcpu_backed_page(struct pcpu_chunk *c, int idx, uint32_t pg);

/* initval.c's hooks in the free paths.  _pcpu_initval_area_freed: chunk.c,
 * allocator lock held, before the area is zeroed on the indexes in use;
 * _pcpu_initval_object_freed: cache.c, no lock held, before that too;
 * _pcpu_initval_object_zeroed: cache.c, after.  They forget an initial
 * value and zero the copies of indexes coming into use. */
void _pcpu_initval_area_freed(struct pcpu_chunk *c, void *p, size_t bytes);
void _pcpu_initval_object_freed(struct pcpu_chunk *c, void *p, size_t bytes);
void _pcpu_initval_object_zeroed(void);

/* reclaim.c */
/* After a free in @c: marks it for depopulation when it qualifies;
 * returns true when the balance worker should run. */
bool _pcpu_reclaim_note_free(struct pcpu_chunk *c);
/* One pass (reclaim_lock and alloc_lock not held): reserve a chunk if
 * @want_grow, depopulate (every empty page if @trim, else marked chunks
 * down to the HIGH watermark), unmap free chunks beyond one spare.
 * Returns pages plus chunks released. */
size_t _pcpu_reclaim_pass(bool trim, bool want_grow);
void _pcpu_reclaim_atfork_prepare(void);
void _pcpu_reclaim_atfork_parent(void);
void _pcpu_reclaim_atfork_child(void);

#endif
