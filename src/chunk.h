/*
 * chunk.h - the chunk structure, shared by chunk.c (which owns it) and
 * stats.c (which reads it under the allocator lock).
 */
#ifndef PCPU_CHUNK_H
#define PCPU_CHUNK_H

#include <pthread.h>

#include "internal.h"

/* Slots by largest free run: slot s holds chunks whose contig_hint (in
 * words) has fls == s; a 1 MiB unit has 2^18 words, so slots 0..19. */
#define PCPU_NR_SLOTS 24

struct pcpu_chunk {
	char *base;              /* CPU 0's unit; CPU c's at base + c*stride */
	size_t len;              /* the whole reservation */
	struct pcpu_areamap map; /* layout shared by every unit */
	struct pcpu_chunk *next, *prev; /* slot list */
	int slot;
	uint32_t nr_alloc;       /* live areas */
	/* The last request shape that found no fit here: a request at least
	 * as large and at least as aligned cannot fit either until the next
	 * free in this chunk (holes too small or misaligned, e.g. 4-byte
	 * areas at 8-byte alignment leave 4-byte holes). 0: none. */
	uint32_t nofit_bits, nofit_align;
	uint64_t *page_touched;  /* pages of the unit layout that held an
				    area: they may be backed on used CPUs */
};

struct pcpu_alloc_counters {
	uint64_t nr_alloc, nr_dealloc, nr_cur_alloc, nr_max_alloc;
	uint64_t nr_chunks, nr_max_chunks;
	uint64_t min_alloc_size, max_alloc_size;
	uint64_t live_bytes;
};

extern pthread_mutex_t _pcpu_alloc_lock;
extern struct pcpu_chunk **_pcpu_chunks; /* sorted by base */
extern size_t _pcpu_nr_chunks;
extern struct pcpu_alloc_counters _pcpu_counters;

int _pcpu_chunk_slot(const struct pcpu_chunk *c);
struct pcpu_chunk *_pcpu_chunk_lookup(const void *p);
/* Context: alloc_lock held. */
int _pcpu_validate_locked(void);

#endif
