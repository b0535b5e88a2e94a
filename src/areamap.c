/*
 * areamap.c - the bitmap area allocator of one chunk (mm/percpu.c style).
 *
 * A unit is cut into 4-byte words.  alloc_map holds one bit per word
 * (1 = allocated); bound_map holds nr_bits + 1 bits and marks, as the
 * kernel does, the first word of every allocation and the word one past
 * its end.  Allocation sets both marks and clears the bound bits strictly
 * inside; free clears the alloc bits of [off, next bound bit after off)
 * and leaves the bound bits alone, so free space may hold stale ones:
 *
 *   word     0   1   2   3   4   5   6   7   8   9  10
 *   area     A   A   A   B   -   -   -   C   C   C   -
 *   alloc    1   1   1   1   0   0   0   1   1   1   0
 *   bound    1   0   0   1   1   0   1   1   0   0   1   <- 6: stale
 *
 * Hence: off starts a live allocation iff its alloc and bound bits are
 * both set (a stale bound bit sits on a free word, an end mark on a
 * following allocation's start), and the size of that allocation is the
 * next set bound bit after off minus off.  This is what catches invalid
 * and double frees.
 *
 * The map is cut into blocks of block_bits words (one page), each with a
 * pcpu_block_md that is always exact:
 *
 *   |<------------------- block (block_bits) ------------------->|
 *   |free..free|used..|free....free|used|..........|used|free..free|
 *   |left_free |      |<-contig_hint->  (largest run)   |right_free|
 *    ^first_free       ^contig_hint_start
 *
 * contig_hint_start is the start of one run of contig_hint free words
 * (any of them on ties).  A fully allocated block has first_free ==
 * block_bits and every other field 0.
 *
 * Map-level fields: free_bits is exact; first_free is exact too (the
 * lowest free word, nr_bits when full), which gives the "no free word
 * below first_free" the searches rely on; contig_hint is an upper bound
 * on the largest free run, never above free_bits, and exact after a
 * failed search.  It only shrinks lazily: an allocation leaves it alone
 * (except the clamp to free_bits), a free raises it to the length of the
 * merged free run around the freed area, a failed search sets it.
 *
 * Search (first fit, lowest offset): walk the blocks from the one holding
 * first_free, carrying the free run that reaches the current block from
 * the left (a block's right_free, extended by fully free blocks, closed by
 * the next block's left_free).  A block's interior runs are scanned, 64
 * bits at a time, only if its contig_hint could hold the request; blocks
 * that cannot contribute cost O(1).  A search that fails has looked at
 * every block from first_free on and so knows the exact largest run.
 *
 * After an allocation only the touched blocks are updated: blocks it
 * covers become full in O(1), the (at most two) partial ones are updated
 * incrementally and rescanned only when the allocation broke their
 * contig_hint while the block holds other free runs.  first_free moves
 * past an allocation made at first_free using the block hints.  A free
 * updates its blocks incrementally (runs only merge, so the block hints
 * stay exact without a rescan) and raises contig_hint to the merged run,
 * whose ends are found from the neighbouring blocks' left/right_free.
 *
 * Two summary bitmaps, one bit per block, sit right after the md array in
 * the same allocation: empty_map (block fully free) and avail_map (block
 * has a free word).  With them a search, the first_free advance and a
 * free's merge cross any number of fully free or fully allocated blocks
 * 64 per step: a 1-word allocation or free next to first_free is O(1)
 * whatever the fill pattern (in order, reverse, alternating).
 *
 * Supported geometry: block_bits is 16, 32 or any multiple of 64 (so a
 * block never straddles a bitmap word except as a whole); nr_bits a
 * positive multiple of block_bits, at most AREAMAP_MAX_BITS.  align_bits
 * may be any power of two (alignment is of the offset from the map's
 * start), including ones above block_bits.
 *
 * Context: pure data structure; the caller serialises access.  No OS calls
 * beyond calloc/free for the map's own metadata.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* The summary bitmaps follow the md array in one allocation. */
_Static_assert(sizeof(struct pcpu_block_md) % sizeof(uint64_t) == 0,
	       "pcpu_block_md must keep the summary bitmaps aligned");

/* 2^30 words = a 4 GiB unit: keeps every bit index + 64 inside uint32_t. */
#define AREAMAP_MAX_BITS (UINT32_C(1) << 30)

#define WORD_ONES (~(uint64_t)0)

/* ---- bitmap helpers: bit i lives in map[i / 64] at position i % 64 ---- */

/* Bits [0, n) of a word, 1 <= n <= 64. */
static inline uint64_t word_mask_low(uint32_t n)
{
	return n >= 64 ? WORD_ONES : ((uint64_t)1 << n) - 1;
}

static inline bool bit_test(const uint64_t *map, uint32_t i)
{
	return (map[i / 64] >> (i % 64)) & 1;
}

static inline void bit_set(uint64_t *map, uint32_t i)
{
	map[i / 64] |= (uint64_t)1 << (i % 64);
}

/*
 * bits_find - first bit in [from, end) that is set in (map ^ invert).
 * Returns: its index, or end if there is none.
 */
static inline uint32_t bits_find(const uint64_t *map, uint32_t from,
				 uint32_t end, uint64_t invert)
{
	uint32_t w, last;
	uint64_t x;

	if (from >= end)
		return end;
	w = from / 64;
	last = (end - 1) / 64;
	x = (map[w] ^ invert) & (WORD_ONES << (from % 64));
	for (;;) {
		if (x) {
			uint32_t i = w * 64 + (uint32_t)__builtin_ctzll(x);

			return i < end ? i : end;
		}
		if (w == last)
			return end;
		x = map[++w] ^ invert;
	}
}

static inline uint32_t bits_next_set(const uint64_t *map, uint32_t from,
				     uint32_t end)
{
	return bits_find(map, from, end, 0);
}

static inline uint32_t bits_next_zero(const uint64_t *map, uint32_t from,
				      uint32_t end)
{
	return bits_find(map, from, end, WORD_ONES);
}

/*
 * bits_run_back - start of the run of bits equal to @val that ends at
 * @from, scanning backwards a word at a time.
 * Returns: the smallest s in [lo, from] such that bits [s, from) all equal
 * @val.
 */
static uint32_t bits_run_back(const uint64_t *map, uint32_t lo,
			      uint32_t from, bool val)
{
	const uint64_t invert = val ? WORD_ONES : 0;
	uint32_t w, first;
	uint64_t x;

	if (from <= lo)
		return lo;
	w = (from - 1) / 64;
	first = lo / 64;
	x = (map[w] ^ invert) & word_mask_low((from - 1) % 64 + 1);
	for (;;) {
		if (x) {
			uint32_t i = w * 64 + 63 - (uint32_t)__builtin_clzll(x);

			return i >= lo ? i + 1 : lo;
		}
		if (w == first)
			return lo;
		x = map[--w] ^ invert;
	}
}

static inline void bit_assign(uint64_t *map, uint32_t i, bool val)
{
	if (val)
		map[i / 64] |= (uint64_t)1 << (i % 64);
	else
		map[i / 64] &= ~((uint64_t)1 << (i % 64));
}

/* Sets (@set) or clears bits [s, e). */
static void bits_assign_range(uint64_t *map, uint32_t s, uint32_t e, bool set)
{
	uint32_t ws, we;
	uint64_t ms, me;

	if (s >= e)
		return;
	ws = s / 64;
	we = (e - 1) / 64;
	ms = WORD_ONES << (s % 64);
	me = word_mask_low((e - 1) % 64 + 1);
	if (ws == we)
		ms &= me;
	if (set)
		map[ws] |= ms;
	else
		map[ws] &= ~ms;
	if (ws == we)
		return;
	for (uint32_t w = ws + 1; w < we; w++)
		map[w] = set ? WORD_ONES : 0;
	if (set)
		map[we] |= me;
	else
		map[we] &= ~me;
}

/* ---- block metadata ---- */

static inline uint32_t u32_max(uint32_t a, uint32_t b)
{
	return a > b ? a : b;
}

static inline uint32_t u32_min(uint32_t a, uint32_t b)
{
	return a < b ? a : b;
}

static void md_set_full(struct pcpu_block_md *md, uint32_t bb)
{
	md->contig_hint = 0;
	md->contig_hint_start = 0;
	md->left_free = 0;
	md->right_free = 0;
	md->first_free = bb;
	md->nr_free = 0;
	md->other_hint = 0;
}

static void md_set_empty(struct pcpu_block_md *md, uint32_t bb)
{
	md->contig_hint = bb;
	md->contig_hint_start = 0;
	md->left_free = bb;
	md->right_free = bb;
	md->first_free = 0;
	md->nr_free = bb;
	md->other_hint = 0;
}

/*
 * Block of word @bit.  block_bits is a power of two in practice (a page),
 * so shift rather than pay for a division; other multiples of 64 divide.
 */
static inline uint32_t areamap_block_of(const struct pcpu_areamap *m,
					uint32_t bit)
{
	const uint32_t bb = m->block_bits;

	if (PCPU_LIKELY(!(bb & (bb - 1))))
		return bit >> __builtin_ctz(bb);
	return bit / bb;
}

/*
 * Block summaries: two bitmaps of one bit per block, kept in the same
 * allocation as the md array, right after it (private to this file):
 * empty_map (nr_free == block_bits) and avail_map (nr_free > 0).  Runs of
 * fully free or fully allocated blocks are then crossed 64 blocks a step.
 */
static inline uint32_t areamap_summary_words(uint32_t nr_blocks)
{
	return (nr_blocks + 63) / 64;
}

static inline uint64_t *areamap_empty_map(const struct pcpu_areamap *m)
{
	return (uint64_t *)(void *)(m->md + m->nr_blocks);
}

static inline uint64_t *areamap_avail_map(const struct pcpu_areamap *m)
{
	return areamap_empty_map(m) + areamap_summary_words(m->nr_blocks);
}

/* Brings block @b's summary bits in line with its nr_free. */
static inline void areamap_block_sync(struct pcpu_areamap *m, uint32_t b)
{
	uint32_t nr_free = m->md[b].nr_free;

	bit_assign(areamap_empty_map(m), b, nr_free == m->block_bits);
	bit_assign(areamap_avail_map(m), b, nr_free != 0);
}

/*
 * areamap_block_rescan_contig - recompute block @b's contig_hint after an
 * allocation broke its largest run, whose length was @old.  No run can now
 * be longer than @old, so the scan stops at the first run of that length
 * (other_hint is then @old, still an upper bound); a full scan makes
 * other_hint the exact second largest run.
 * Cost: the block's bitmap words from first_free on, plus a step per run.
 */
static void areamap_block_rescan_contig(struct pcpu_areamap *m, uint32_t b,
					uint32_t old)
{
	const uint32_t bb = m->block_bits, bs = b * bb, be = bs + bb;
	struct pcpu_block_md *md = &m->md[b];
	uint32_t pos = bs + md->first_free, best = 0, best_start = 0;
	uint32_t second = 0;

	while (pos < be) {
		uint32_t rs = pos;
		uint32_t re = bits_next_set(m->alloc_map, rs, be);

		if (re - rs > best) {
			second = best;
			best = re - rs;
			best_start = rs - bs;
			if (best >= old) {
				second = old;
				break;
			}
		} else if (re - rs > second) {
			second = re - rs;
		}
		pos = bits_next_zero(m->alloc_map, re, be);
	}
	md->contig_hint = best;
	md->contig_hint_start = best_start;
	md->other_hint = second;
}

/*
 * areamap_block_alloc - account for words [s, e) (block-relative) of block
 * @b having just been allocated (alloc_map already updated).  O(1) unless
 * [s, e) broke the block's largest free run while other runs exist, which
 * takes a rescan.
 */
static void areamap_block_alloc(struct pcpu_areamap *m, uint32_t b,
				uint32_t s, uint32_t e)
{
	const uint32_t bb = m->block_bits;
	struct pcpu_block_md *md = &m->md[b];
	uint32_t old_nr_free = md->nr_free;
	uint32_t chs = md->contig_hint_start, che = chs + md->contig_hint;

	md->nr_free -= e - s;
	if (!md->nr_free) {
		md_set_full(md, bb);
		areamap_block_sync(m, b);
		return;
	}
	/* [s, e) was free, so it lies inside whichever run it touches. */
	if (s < md->left_free)
		md->left_free = s;
	if (e > bb - md->right_free)
		md->right_free = bb - e;
	if (s == md->first_free) {
		uint32_t bs = b * bb;

		md->first_free = bits_next_zero(m->alloc_map, bs + e,
						bs + bb) - bs;
	}
	if (s < che && chs < e) {
		/* What is left of the broken run: [chs, s) and [e, che). */
		uint32_t lo = s - chs, hi = che - e;
		uint32_t big = lo >= hi ? lo : hi, small = lo >= hi ? hi : lo;

		if (old_nr_free == che - chs)
			md->other_hint = 0; /* it was the only free run */
		if (big >= md->other_hint) {
			/* No other run can be longer: the hint stays exact. */
			md->contig_hint = big;
			if (lo < hi)
				md->contig_hint_start = e;
			if (small > md->other_hint)
				md->other_hint = small;
		} else {
			areamap_block_rescan_contig(m, b, che - chs);
		}
	}
	areamap_block_sync(m, b);
}

/*
 * areamap_block_free - account for words [fs, fe) of block @b having just
 * been freed; [rs, re) is the block's part of the merged free run that now
 * contains them (all block-relative).  Runs only merge, so the hints stay
 * exact without a rescan.
 */
static void areamap_block_free(struct pcpu_areamap *m, uint32_t b,
			       uint32_t fs, uint32_t fe, uint32_t rs,
			       uint32_t re)
{
	const uint32_t bb = m->block_bits;
	struct pcpu_block_md *md = &m->md[b];

	md->nr_free += fe - fs;
	if (fs < md->first_free)
		md->first_free = fs;
	if (rs == 0)
		md->left_free = re;
	if (re == bb)
		md->right_free = bb - rs;
	if (re - rs > md->contig_hint) {
		/* The old largest run is now another run, unless the merge
		 * swallowed it: other_hint stays an upper bound either way. */
		if (md->contig_hint > md->other_hint)
			md->other_hint = md->contig_hint;
		md->contig_hint = re - rs;
		md->contig_hint_start = rs;
	} else if (re - rs > md->other_hint) {
		md->other_hint = re - rs;
	}
	areamap_block_sync(m, b);
}

/* ---- lifecycle ---- */

/**
 * _pcpu_areamap_init - set up an all-free map of @nr_bits words.
 * @block_bits: words per block: 16, 32 or a multiple of 64; @nr_bits must
 * be a positive multiple of it, at most 2^30.
 * Context: any; calls calloc.
 * Returns: 0, -EINVAL for an unsupported geometry, or -ENOMEM with nothing
 * allocated.  @m is zeroed on failure (so _pcpu_areamap_destroy is safe).
 */
int _pcpu_areamap_init(struct pcpu_areamap *m, uint32_t nr_bits,
		       uint32_t block_bits)
{
	uint32_t nr_blocks;

	memset(m, 0, sizeof(*m));
	if (block_bits != 16 && block_bits != 32 &&
	    (block_bits == 0 || block_bits % 64))
		return -EINVAL;
	if (nr_bits == 0 || nr_bits > AREAMAP_MAX_BITS ||
	    nr_bits % block_bits)
		return -EINVAL;
	nr_blocks = nr_bits / block_bits;

	m->alloc_map = calloc((nr_bits + 63) / 64, sizeof(uint64_t));
	m->bound_map = calloc((nr_bits + 1 + 63) / 64, sizeof(uint64_t));
	/* the md array, then the two summary bitmaps */
	m->md = calloc(1, nr_blocks * sizeof(*m->md) +
			      2 * areamap_summary_words(nr_blocks) *
				      sizeof(uint64_t));
	if (!m->alloc_map || !m->bound_map || !m->md) {
		_pcpu_areamap_destroy(m);
		return -ENOMEM;
	}
	m->nr_bits = nr_bits;
	m->block_bits = block_bits;
	m->nr_blocks = nr_blocks;
	m->free_bits = nr_bits;
	m->contig_hint = nr_bits;
	m->first_free = 0;
	for (uint32_t b = 0; b < nr_blocks; b++) {
		md_set_empty(&m->md[b], block_bits);
		areamap_block_sync(m, b);
	}
	return 0;
}

/**
 * _pcpu_areamap_destroy - free the map's metadata and zero @m.
 * Safe on a zeroed or already destroyed map.
 */
void _pcpu_areamap_destroy(struct pcpu_areamap *m)
{
	free(m->alloc_map);
	free(m->bound_map);
	free(m->md);
	memset(m, 0, sizeof(*m));
}

/* ---- allocation ---- */

/* Lowest offset >= @rs aligned by @amask (align - 1), if @bits fit there
 * before @re. */
static inline bool areamap_fits(uint32_t rs, uint32_t re, uint32_t bits,
				uint64_t amask, uint32_t *out)
{
	uint64_t a = ((uint64_t)rs + amask) & ~amask;

	if (a + bits > re)
		return false;
	*out = (uint32_t)a;
	return true;
}

/*
 * areamap_find_fit - first fit of @bits words aligned by @amask.
 * Returns: the offset, or -1 after setting m->contig_hint to the exact
 * largest free run.
 */
static long areamap_find_fit(struct pcpu_areamap *m, uint32_t bits,
			     uint64_t amask, uint32_t start)
{
	const uint32_t bb = m->block_bits, nr_blocks = m->nr_blocks;
	const uint64_t *alloc = m->alloc_map;
	uint32_t max_run = 0, run_start = 0, off;
	bool open = false; /* a free run reaches this block from the left */

	for (uint32_t b = areamap_block_of(m, start); b < nr_blocks; b++) {
		const struct pcpu_block_md *md = &m->md[b];
		uint32_t bs = b * bb, be = bs + bb, nb;

		if (md->nr_free == bb) {
			/* extend the run over every fully free block */
			nb = bits_next_zero(areamap_empty_map(m), b + 1,
					    nr_blocks);
			if (!open) {
				open = true;
				run_start = bs;
			}
			if (areamap_fits(u32_max(run_start, start), nb * bb,
					 bits, amask, &off))
				return off;
			b = nb - 1;
			continue;
		}
		if (!md->nr_free) {
			/* the open run was tried when it reached bs */
			if (open)
				max_run = u32_max(max_run, bs - run_start);
			open = false;
			nb = bits_next_set(areamap_avail_map(m), b + 1,
					   nr_blocks);
			b = nb - 1;
			continue;
		}

		/* Close the run ending in this block's left_free. */
		if (open || md->left_free) {
			uint32_t rs = open ? run_start : bs;
			uint32_t re = bs + md->left_free;

			if (re > start &&
			    areamap_fits(u32_max(rs, start), re, bits, amask,
					 &off))
				return off;
			max_run = u32_max(max_run, re - rs);
			open = false;
		}
		max_run = u32_max(max_run, md->contig_hint);

		/* Interior runs, strictly between left_free and right_free. */
		if (md->contig_hint >= bits) {
			uint32_t pos = bs + u32_max(md->left_free,
						    md->first_free);
			pos = u32_max(pos, start);
			uint32_t end = be - md->right_free;

			while (pos < end) {
				uint32_t rs = bits_next_zero(alloc, pos, end);
				uint32_t re;

				if (rs >= end)
					break;
				re = bits_next_set(alloc, rs, end);
				if (re - rs >= bits &&
				    areamap_fits(rs, re, bits, amask, &off))
					return off;
				pos = re;
			}
		}

		if (md->right_free) {
			open = true;
			run_start = be - md->right_free;
			if (areamap_fits(u32_max(run_start, start), be, bits,
					 amask, &off))
				return off;
		}
	}
	if (open)
		max_run = u32_max(max_run, m->nr_bits - run_start);
	m->contig_hint = max_run;
	return -1;
}

/*
 * areamap_next_free - first free word at or after @pos, given that every
 * word below @pos is allocated and the block md are up to date.
 */
static uint32_t areamap_next_free(const struct pcpu_areamap *m, uint32_t pos)
{
	const uint32_t bb = m->block_bits;
	uint32_t b;

	/* Words of pos's block below pos are allocated, so that block's
	 * first_free, if it has one, is the answer. */
	b = bits_next_set(areamap_avail_map(m), areamap_block_of(m, pos),
			  m->nr_blocks);
	if (b == m->nr_blocks)
		return m->nr_bits;
	return b * bb + m->md[b].first_free;
}

/**
 * _pcpu_areamap_alloc - allocate @bits words aligned to @align_bits.
 * @bits: 1..nr_bits.  @align_bits: a power of two (of any size).
 * Context: caller serialises access to @m.
 * Returns: the lowest offset where a free run holds the aligned area, or
 * -1 when none does.  A -1 after a search leaves contig_hint exact; when
 * @bits > contig_hint it returns -1 at once without searching.
 */
long _pcpu_areamap_alloc(struct pcpu_areamap *m, uint32_t bits,
			 uint32_t align_bits)
{
	const uint32_t bb = m->block_bits;
	uint32_t off, end, b, lb;
	long ret;

	PCPU_ASSERT(bits > 0);
	PCPU_ASSERT(align_bits && !(align_bits & (align_bits - 1)));
	if (PCPU_UNLIKELY(!bits || !align_bits ||
			  (align_bits & (align_bits - 1))))
		return -1;
	if (bits > m->contig_hint)
		return -1;

	/* Skip what the fit cache proves cannot fit (see internal.h). */
	uint32_t start = m->first_free;
	bool cached = m->fit_bits && bits >= m->fit_bits &&
		      align_bits >= m->fit_align && m->fit_pos > start;
	if (cached)
		start = m->fit_pos;
	ret = areamap_find_fit(m, bits, (uint64_t)align_bits - 1, start);
	if (ret < 0 && cached) {
		/* A partial scan cannot make contig_hint exact: rescan the
		 * prefix (only on failure, which callers then remember). */
		ret = areamap_find_fit(m, bits, (uint64_t)align_bits - 1,
				       m->first_free);
		PCPU_ASSERT(ret < 0);
	}
	if (ret < 0) {
		m->fit_bits = bits;
		m->fit_align = align_bits;
		m->fit_pos = m->nr_bits;
		return -1;
	}
	off = (uint32_t)ret;
	end = off + bits;
	m->fit_bits = bits;
	m->fit_align = align_bits;
	m->fit_pos = end;

	bits_assign_range(m->alloc_map, off, end, true);
	bit_set(m->bound_map, off);
	bits_assign_range(m->bound_map, off + 1, end, false);
	bit_set(m->bound_map, end);

	lb = areamap_block_of(m, end - 1);
	for (b = areamap_block_of(m, off); b <= lb; b++) {
		uint32_t bs = b * bb;

		areamap_block_alloc(m, b, u32_max(off, bs) - bs,
				    u32_min(end, bs + bb) - bs);
	}

	m->free_bits -= bits;
	if (m->contig_hint > m->free_bits)
		m->contig_hint = m->free_bits;
	if (off == m->first_free)
		m->first_free = areamap_next_free(m, end);
	return ret;
}

/* ---- queries and free ---- */

/**
 * _pcpu_areamap_is_start - is @off the start of a live allocation?
 * Any @off is accepted (false beyond the map).
 */
bool _pcpu_areamap_is_start(const struct pcpu_areamap *m, uint32_t off)
{
	if (off >= m->nr_bits)
		return false;
	return bit_test(m->alloc_map, off) && bit_test(m->bound_map, off);
}

/**
 * _pcpu_areamap_size - size in words of the live allocation at @off.
 * Precondition: _pcpu_areamap_is_start(m, off).
 */
uint32_t _pcpu_areamap_size(const struct pcpu_areamap *m, uint32_t off)
{
	PCPU_ASSERT(_pcpu_areamap_is_start(m, off));
	return bits_next_set(m->bound_map, off + 1, m->nr_bits + 1) - off;
}

/**
 * _pcpu_areamap_free - free the allocation starting at @off.
 * Precondition: _pcpu_areamap_is_start(m, off) (asserted in debug builds;
 * callers check it first to report invalid and double frees).
 * Context: caller serialises access to @m.
 * Returns: the size of the freed allocation in words.
 */
uint32_t _pcpu_areamap_free(struct pcpu_areamap *m, uint32_t off)
{
	const uint32_t bb = m->block_bits;
	const struct pcpu_block_md *md;
	uint32_t end, bits, b0, lb, bs0, bsl, ms, me, b;

	PCPU_ASSERT(_pcpu_areamap_is_start(m, off));
	end = bits_next_set(m->bound_map, off + 1, m->nr_bits + 1);
	bits = end - off;
	b0 = areamap_block_of(m, off);
	lb = areamap_block_of(m, end - 1);
	bs0 = b0 * bb;
	bsl = lb * bb;

	/*
	 * The merged free run [ms, me) around [off, end), found with the md
	 * as they were before this free (the runs next to the area are the
	 * same either way): inside the end blocks from their hints or a
	 * short bitmap scan, then across fully free neighbours.
	 */
	md = &m->md[b0];
	if (md->left_free == off - bs0)
		ms = bs0;
	else if (md->contig_hint &&
		 md->contig_hint_start + md->contig_hint == off - bs0)
		ms = bs0 + md->contig_hint_start;
	else
		ms = bits_run_back(m->alloc_map, bs0, off, false);
	if (ms == bs0 && b0) {
		b = bits_run_back(areamap_empty_map(m), 0, b0, true);
		ms = b * bb;
		if (b)
			ms -= m->md[b - 1].right_free;
	}

	md = &m->md[lb];
	if (end - bsl == bb - md->right_free)
		me = bsl + bb;
	else
		me = bits_next_set(m->alloc_map, end, bsl + bb);
	if (me == bsl + bb) {
		b = bits_next_zero(areamap_empty_map(m), lb + 1, m->nr_blocks);
		me = b * bb;
		if (b < m->nr_blocks)
			me += m->md[b].left_free;
	}

	bits_assign_range(m->alloc_map, off, end, false);
	for (b = b0; b <= lb; b++) {
		uint32_t bs = b * bb, be = bs + bb;

		areamap_block_free(m, b, u32_max(off, bs) - bs,
				   u32_min(end, be) - bs, u32_max(ms, bs) - bs,
				   u32_min(me, be) - bs);
	}

	m->free_bits += bits;
	if (off < m->first_free)
		m->first_free = off;
	if (ms < m->fit_pos)
		m->fit_pos = ms;
	if (me - ms > m->contig_hint)
		m->contig_hint = me - ms;
	return bits;
}

/** _pcpu_areamap_block_empty - true iff block @b holds no allocated word. */
bool _pcpu_areamap_block_empty(const struct pcpu_areamap *m, uint32_t b)
{
	PCPU_ASSERT(b < m->nr_blocks);
	return m->md[b].nr_free == m->block_bits;
}

/**
 * _pcpu_areamap_max_contig - the exact largest free run, in words.
 * Cost: O(blocks from first_free on), using the block hints only.
 */
uint32_t _pcpu_areamap_max_contig(const struct pcpu_areamap *m)
{
	const uint32_t bb = m->block_bits;
	uint32_t best = 0, run = 0;

	for (uint32_t b = areamap_block_of(m, m->first_free);
	     b < m->nr_blocks; b++) {
		const struct pcpu_block_md *md = &m->md[b];

		if (md->nr_free == bb) {
			run += bb;
			continue;
		}
		best = u32_max(best, run + md->left_free);
		best = u32_max(best, md->contig_hint);
		run = md->right_free;
	}
	return u32_max(best, run);
}

/* ---- validation ---- */

#define AREAMAP_BAD(m, ...)                                                    \
	do {                                                                   \
		fprintf(stderr, "pcpu areamap %p: ", (const void *)(m));       \
		fprintf(stderr, __VA_ARGS__);                                  \
		fputc('\n', stderr);                                           \
		return -1;                                                     \
	} while (0)

/* Recomputes block @b bit by bit and compares it with its md and summary
 * bits. */
static int areamap_validate_block(const struct pcpu_areamap *m, uint32_t b)
{
	const uint32_t bb = m->block_bits, bs = b * bb;
	const struct pcpu_block_md *md = &m->md[b];
	uint32_t nr_free = 0, first = bb, left = 0, right = 0, best = 0;
	uint32_t run = 0;

	for (uint32_t i = 0; i < bb; i++) {
		if (bit_test(m->alloc_map, bs + i)) {
			run = 0;
			continue;
		}
		nr_free++;
		run++;
		if (first == bb)
			first = i;
		if (run == i + 1)
			left = run;
		best = u32_max(best, run);
	}
	right = run;

	if (md->nr_free != nr_free)
		AREAMAP_BAD(m, "block %u: nr_free %u, counted %u", b,
			    md->nr_free, nr_free);
	if (md->first_free != first)
		AREAMAP_BAD(m, "block %u: first_free %u, found %u", b,
			    md->first_free, first);
	if (md->left_free != left)
		AREAMAP_BAD(m, "block %u: left_free %u, found %u", b,
			    md->left_free, left);
	if (md->right_free != right)
		AREAMAP_BAD(m, "block %u: right_free %u, found %u", b,
			    md->right_free, right);
	if (md->contig_hint != best)
		AREAMAP_BAD(m, "block %u: contig_hint %u, largest run %u", b,
			    md->contig_hint, best);
	if (best) {
		if (md->contig_hint_start > bb - best)
			AREAMAP_BAD(m, "block %u: contig_hint_start %u out of "
				       "range", b, md->contig_hint_start);
		for (uint32_t i = 0; i < best; i++)
			if (bit_test(m->alloc_map,
				     bs + md->contig_hint_start + i))
				AREAMAP_BAD(m, "block %u: contig_hint_start "
					       "%u is not a run of %u", b,
					    md->contig_hint_start, best);
	}
	/* other_hint bounds every run but the one at contig_hint_start */
	run = 0;
	for (uint32_t i = 0; i <= bb; i++) {
		if (i < bb && !bit_test(m->alloc_map, bs + i)) {
			run++;
			continue;
		}
		if (run && i - run != md->contig_hint_start &&
		    run > md->other_hint)
			AREAMAP_BAD(m, "block %u: run of %u at %u above "
				       "other_hint %u", b, run, i - run,
				    md->other_hint);
		run = 0;
	}
	if (bit_test(areamap_empty_map(m), b) != (nr_free == bb) ||
	    bit_test(areamap_avail_map(m), b) != (nr_free != 0))
		AREAMAP_BAD(m, "block %u: summary bits out of date", b);
	return 0;
}

/**
 * _pcpu_areamap_validate - check every invariant of the map.
 * Recomputes each block md and free_bits from alloc_map, checks first_free
 * (no free word below), contig_hint (>= the largest run, <= free_bits) and
 * the bound marks of every allocation.  Cost: O(nr_bits) bit by bit.
 * Returns: 0, or -1 after printing the first violation to stderr.
 */
/*
 * _pcpu_areamap_validate_blocks - the checks an operation on blocks
 * [b0, b1] can break, in O(blocks + words of those blocks): those blocks'
 * hints and summary bits, free_bits, first_free, and contig_hint against
 * the largest run the block hints give.  The debug allocator runs it after
 * every operation; _pcpu_areamap_validate checks everything.
 */
int _pcpu_areamap_validate_blocks(const struct pcpu_areamap *m, uint32_t b0,
				  uint32_t b1)
{
	const uint32_t bb = m->block_bits;
	uint32_t free_bits = 0;

	for (uint32_t b = b0; b <= b1 && b < m->nr_blocks; b++)
		if (areamap_validate_block(m, b))
			return -1;
	for (uint32_t b = 0; b < m->nr_blocks; b++) {
		free_bits += m->md[b].nr_free;
		if (b * bb + bb <= m->first_free && m->md[b].nr_free)
			AREAMAP_BAD(m, "block %u below first_free %u has free "
				       "words", b, m->first_free);
	}
	if (m->free_bits != free_bits)
		AREAMAP_BAD(m, "free_bits %u, counted %u", m->free_bits,
			    free_bits);
	uint32_t best = _pcpu_areamap_max_contig(m);
	if (m->contig_hint < best || m->contig_hint > m->free_bits)
		AREAMAP_BAD(m, "contig_hint %u: largest run %u, free %u",
			    m->contig_hint, best, m->free_bits);
	return 0;
}

int _pcpu_areamap_validate(const struct pcpu_areamap *m)
{
	const uint32_t n = m->nr_bits, bb = m->block_bits;
	uint32_t free_bits = 0, best = 0, run = 0, pos;

	if (!n || !m->alloc_map || !m->bound_map || !m->md)
		AREAMAP_BAD(m, "not initialised");
	if ((bb != 16 && bb != 32 && bb % 64) || n % bb ||
	    m->nr_blocks != n / bb)
		AREAMAP_BAD(m, "bad geometry: nr_bits %u block_bits %u "
			       "nr_blocks %u", n, bb, m->nr_blocks);
	/* Padding bits past the ends must stay clear. */
	if (n % 64 && m->alloc_map[n / 64] >> (n % 64))
		AREAMAP_BAD(m, "alloc_map bits set past nr_bits");
	if ((n + 1) % 64 && m->bound_map[(n + 1) / 64] >> ((n + 1) % 64))
		AREAMAP_BAD(m, "bound_map bits set past nr_bits + 1");

	for (uint32_t b = 0; b < m->nr_blocks; b++) {
		if (areamap_validate_block(m, b))
			return -1;
		free_bits += m->md[b].nr_free;
	}
	if (m->free_bits != free_bits)
		AREAMAP_BAD(m, "free_bits %u, counted %u", m->free_bits,
			    free_bits);

	if (m->first_free > n)
		AREAMAP_BAD(m, "first_free %u > nr_bits %u", m->first_free, n);
	pos = bits_next_zero(m->alloc_map, 0, n);
	if (pos < m->first_free)
		AREAMAP_BAD(m, "free word %u below first_free %u", pos,
			    m->first_free);

	for (uint32_t i = 0; i < n; i++) {
		run = bit_test(m->alloc_map, i) ? 0 : run + 1;
		best = u32_max(best, run);
	}
	if (m->contig_hint < best)
		AREAMAP_BAD(m, "contig_hint %u < largest free run %u",
			    m->contig_hint, best);
	if (m->contig_hint > m->free_bits)
		AREAMAP_BAD(m, "contig_hint %u > free_bits %u", m->contig_hint,
			    m->free_bits);

	/*
	 * Each run of allocated words [p, r) must be cut by bound marks into
	 * allocations: a mark at p, marks only where an allocation ends and
	 * the next starts, and a mark at r ending the last one.
	 */
	pos = bits_next_set(m->alloc_map, 0, n);
	while (pos < n) {
		uint32_t r = bits_next_zero(m->alloc_map, pos, n);
		uint32_t q = pos;

		if (!bit_test(m->bound_map, pos))
			AREAMAP_BAD(m, "allocated run at %u has no start mark",
				    pos);
		while (q < r) {
			uint32_t next = bits_next_set(m->bound_map, q + 1,
						      n + 1);

			if (next > r)
				AREAMAP_BAD(m, "allocation at %u: no end mark "
					       "at %u (next mark %u)", q, r,
					    next);
			q = next;
		}
		pos = bits_next_set(m->alloc_map, r, n);
	}

	/* The fit cache: no (fit_bits, fit_align) fit starts below fit_pos. */
	if (m->fit_bits) {
		uint64_t amask = (uint64_t)m->fit_align - 1;
		uint32_t lim = u32_min(m->fit_pos, n);

		pos = bits_next_zero(m->alloc_map, 0, lim);
		while (pos < lim) {
			uint32_t r = bits_next_set(m->alloc_map, pos, n);
			uint32_t a;

			if (areamap_fits(pos, r, m->fit_bits, amask, &a) &&
			    a < lim)
				AREAMAP_BAD(m, "fit cache: %u words at %u fit at "
					       "%u below fit_pos %u",
					    m->fit_bits, m->fit_align, a,
					    m->fit_pos);
			pos = bits_next_zero(m->alloc_map, r, lim);
		}
	}
	return 0;
}
