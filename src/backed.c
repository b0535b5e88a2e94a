/*
 * backed.c - which pages of which units hold data, known without reading
 * them.
 *
 * The library reads other indexes' copies to sum them and to zero a
 * freed area.  A page of a unit that nobody wrote reads zero, but reading
 * it may cost a page: a kernel without a shared zero page
 * (pvm_no_zero_page) backs a page on a read fault just as on a write.  So
 * the library never reads a copy whose page it does not know to hold
 * data; such a copy reads zero by definition (never written, or
 * discarded), and skipping it is exact.
 *
 * Knowledge, per chunk, one bit per (index, page of the unit layout):
 * set when the kernel said the page holds data (present or swapped out,
 * /proc/self/pagemap, os.c) or when the library wrote it (initial values,
 * MADV_POPULATE_WRITE); cleared when the library discards the page
 * (depopulation, the release of an index).  A set bit is the truth until
 * the library itself discards the page: the kernel never drops a page
 * that holds data, it only swaps it out.  A clear bit says nothing: the
 * page may have been written since (this-CPU operations and pointers
 * write without the library seeing it), so a reader that needs the page
 * asks the kernel again (_pcpu_backed_learn: one pagemap read for the
 * whole unit, about 2 us on the reference machine).
 *
 * _pcpu_backed_gen counts the events after which a cached "every index
 * in use holds data on this page" answer may be wrong: the set of
 * indexes in use grew (index.c bumps it before it sets a used bit).
 * Clearing bits needs no bump: a page of a live area loses its bits only
 * on an index that left use, and then the answer holds for fewer
 * indexes.  cache.c keeps such an answer per pageset.
 *
 * Concurrency: bits are set and cleared with atomic RMW, read with
 * relaxed loads.  A bit is cleared only for pages that hold no live area
 * (depopulation, under the allocator lock while the chunk is isolated) or
 * for an index leaving use (after it left the in-use set), so a reader of
 * a live area's copy on an index in use never loses a bit it relies on.
 */
#define _GNU_SOURCE
#include <errno.h>

#include "chunk.h"

unsigned long _pcpu_backed_gen = 1;

void _pcpu_backed_gen_bump(void)
{
	__atomic_add_fetch(&_pcpu_backed_gen, 1, __ATOMIC_SEQ_CST);
}

static inline uint64_t *word_of(const struct pcpu_chunk *c, int idx,
				uint32_t pg)
{
	return &c->backed[(size_t)idx * c->backed_words + pg / 64];
}

/* A mask of bits [b0, b1] of one word (b0 <= b1 < 64). */
static inline uint64_t bits_mask(uint32_t b0, uint32_t b1)
{
	uint64_t hi = b1 == 63 ? ~(uint64_t)0 : ((uint64_t)1 << (b1 + 1)) - 1;
	return hi & ~(((uint64_t)1 << b0) - 1);
}

enum range_op { RANGE_ALL, RANGE_MARK, RANGE_FORGET };

/* Applies @op to the bits of pages [pg0, pg1] of unit @idx; for RANGE_ALL
 * returns whether they are all set. */
static bool range(const struct pcpu_chunk *c, int idx, uint32_t pg0,
		  uint32_t pg1, enum range_op op)
{
	for (uint32_t w = pg0 / 64; w <= pg1 / 64; w++) {
		uint32_t b0 = w == pg0 / 64 ? pg0 % 64 : 0;
		uint32_t b1 = w == pg1 / 64 ? pg1 % 64 : 63;
		uint64_t m = bits_mask(b0, b1);
		uint64_t *x = word_of(c, idx, w * 64);
		uint64_t have = __atomic_load_n(x, __ATOMIC_RELAXED) & m;
		if (op == RANGE_ALL && have != m)
			return false;
		if (op == RANGE_MARK && have != m)
			__atomic_fetch_or(x, m, __ATOMIC_RELAXED);
		if (op == RANGE_FORGET && have)
			__atomic_fetch_and(x, ~m, __ATOMIC_RELAXED);
	}
	return true;
}

bool _pcpu_backed_all(const struct pcpu_chunk *c, int idx, uint32_t pg0,
		      uint32_t pg1)
{
	return range(c, idx, pg0, pg1, RANGE_ALL);
}

void _pcpu_backed_mark(struct pcpu_chunk *c, int idx, uint32_t pg0,
		       uint32_t pg1)
{
	range(c, idx, pg0, pg1, RANGE_MARK);
}

void _pcpu_backed_forget(struct pcpu_chunk *c, int idx, uint32_t pg0,
			 uint32_t pg1)
{
	range(c, idx, pg0, pg1, RANGE_FORGET);
}

int _pcpu_backed_learn(struct pcpu_chunk *c, int idx)
{
	uint64_t got[PCPU_BACKED_MAX_WORDS];
	uint32_t pages = c->map.nr_blocks;
	int r = _pcpu_os_backed_map(c->base + (size_t)idx * _pcpu_g.unit_size,
				    pages, got);
	for (uint32_t w = 0; w < c->backed_words; w++) {
		uint64_t *x = word_of(c, idx, w * 64);
		if (got[w] & ~__atomic_load_n(x, __ATOMIC_RELAXED))
			__atomic_fetch_or(x, got[w], __ATOMIC_RELAXED);
	}
	__atomic_add_fetch(&_pcpu_counters.backed_queries, 1, __ATOMIC_RELAXED);
	return r;
}

bool _pcpu_backed_page(struct pcpu_chunk *c, int idx, uint32_t pg)
{
	if (_pcpu_backed_test(c, idx, pg))
		return true;
	_pcpu_backed_learn(c, idx);
	return _pcpu_backed_test(c, idx, pg);
}

bool _pcpu_copy_backed(const void *p, int idx)
{
	struct pcpu_chunk *c = _pcpu_chunk_find(p);
	if (!c)
		return false;
	uint32_t pg = (uint32_t)(((const char *)p - c->base) / _pcpu_g.page_size);
	return _pcpu_backed_page(c, idx, pg);
}
