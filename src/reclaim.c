/*
 * reclaim.c - giving memory back: depopulation, releasing free chunks,
 * reserving room for non-blocking allocations.
 *
 * A page of a chunk's unit layout is *populated* (page_touched) once it
 * held an area: from then on any used index may have backed it.  It is
 * *empty populated* when it holds no area any more.  As in the kernel
 * since Linux 5.14 (Roman Gushchin's partial depopulation), a free that
 * leaves more than a quarter of a chunk's populated pages empty marks the
 * chunk for depopulation, unless it is the only chunk; the balance worker
 * then:
 *
 *   1. isolates the chunk (takes it out of every list, so no allocation
 *      lands in it; frees still may, they only add empty pages),
 *   2. drops the lock and releases each contiguous run of its empty
 *      populated pages with one madvise(MADV_DONTNEED) per run per used
 *      index (a run the OS refused stays populated: a harmless skip),
 *   3. reintegrates it: sidelined if it still holds areas (tried after the
 *      partly used active chunks and before fully free ones, which packs
 *      new areas into fewer chunks: Dennis Zhou's question in seed 001),
 *      active otherwise.
 *
 * Watermarks, in pages of the unit layout: a balance pass stops
 * depopulating once at most PCPU_EMPTY_POP_PAGES_HIGH (4) empty populated
 * pages remain, a warm reserve for the next allocations; pcpu_trim keeps
 * none.  Fully free chunks beyond one spare are unmapped.  Growing, the
 * other direction, is only ever needed for pcpu_alloc_nonblock, which
 * never maps memory: after one of them found no room, the worker reserves
 * a chunk.  (Backing needs no preparation here: pages are backed by the
 * kernel on first write.)
 *
 * Locking: reclaim_lock serialises passes (the worker, pcpu_balance,
 * pcpu_trim) and is taken before _pcpu_alloc_lock; OS calls happen with
 * only reclaim_lock held.  Nothing here allocates memory: a pass may run
 * when memory is short.
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "chunk.h"

#define PCPU_EMPTY_POP_PAGES_HIGH 4

static pthread_mutex_t reclaim_lock = PTHREAD_MUTEX_INITIALIZER;

bool _pcpu_reclaim_note_free(struct pcpu_chunk *c)
{
	if (c->state == PCPU_CHUNK_ISOLATED || _pcpu_nr_chunks < 2)
		return false;
	if (!c->nr_alloc)
		return true; /* maybe a free chunk beyond the spare */
	if (!c->to_depopulate && c->nr_empty_pop_pages * 4 > c->nr_pop_pages &&
	    _pcpu_counters.empty_pop_pages > PCPU_EMPTY_POP_PAGES_HIGH) {
		c->to_depopulate = true;
		_pcpu_counters.nr_to_depopulate++;
		return true;
	}
	return false;
}

struct page_run {
	uint32_t start, len;
	bool ok;
};

/* Runs of empty populated pages of @c into @runs (at most @max); returns
 * the count.  Context: alloc_lock held. */
static size_t empty_runs(const struct pcpu_chunk *c, struct page_run *runs,
			 size_t max)
{
	size_t n = 0;
	uint32_t pages = c->map.nr_blocks;
	for (uint32_t pg = 0; pg < pages && n < max;) {
		uint64_t t = c->page_touched[pg / 64] >> (pg % 64) & 1;
		uint64_t u = c->page_used[pg / 64] >> (pg % 64) & 1;
		if (!t || u) {
			pg++;
			continue;
		}
		uint32_t start = pg;
		while (pg < pages && (c->page_touched[pg / 64] >> (pg % 64) & 1) &&
		       !(c->page_used[pg / 64] >> (pg % 64) & 1))
			pg++;
		runs[n++] = (struct page_run){ start, pg - start, true };
	}
	return n;
}

/* Picks the next chunk to depopulate whose base is above @after (chunks[]
 * is sorted by base; chunks installed while the lock was dropped shift the
 * positions, not the order).  Context: both locks held. */
static struct pcpu_chunk *next_candidate(const char *after, bool all)
{
	for (size_t i = _pcpu_chunk_after(after); i < _pcpu_nr_chunks; i++) {
		struct pcpu_chunk *c = _pcpu_chunks[i];
		if (c->state == PCPU_CHUNK_ISOLATED || !c->nr_empty_pop_pages)
			continue;
		/* also a chunk that crossed the quarter when the global
		   count was low, so that its free did not mark it */
		if (all || c->to_depopulate ||
		    (c->nr_empty_pop_pages * 4 > c->nr_pop_pages &&
		     _pcpu_nr_chunks >= 2))
			return c;
	}
	return NULL;
}

/*
 * depopulate - release the empty populated pages of marked chunks (@all:
 * of every chunk, keeping none).
 * Context: reclaim_lock held, alloc_lock not held; calls the OS.
 * Returns: pages of the unit layout released.
 */
static size_t depopulate(bool all)
{
	struct page_run runs[128]; /* a 1 MiB unit has at most 128 runs */
	struct pcpu_cpuset used;
	size_t released = 0;
	const char *after = NULL;
	const size_t page = _pcpu_g.page_size, unit = _pcpu_g.unit_size;

	for (;;) {
		pthread_mutex_lock(&_pcpu_alloc_lock);
		if (!all &&
		    _pcpu_counters.empty_pop_pages <= PCPU_EMPTY_POP_PAGES_HIGH) {
			pthread_mutex_unlock(&_pcpu_alloc_lock);
			break;
		}
		struct pcpu_chunk *c = next_candidate(after, all);
		if (!c) {
			pthread_mutex_unlock(&_pcpu_alloc_lock);
			break;
		}
		after = c->base;
		_pcpu_chunk_isolate(c);
		size_t nr = empty_runs(c, runs, sizeof(runs) / sizeof(runs[0]));
		_pcpu_used_snapshot(&used);
		pthread_mutex_unlock(&_pcpu_alloc_lock);

		/* Isolated: no area can appear in these pages meanwhile.
		 * Indexes not in use hold nothing (index.c releases an index
		 * only with its memory). */
		_pcpu_cpuset_for_each(idx, &used) {
			if (idx >= _pcpu_g.nr_ids)
				break;
			char *u = c->base + (size_t)idx * unit;
			for (size_t i = 0; i < nr; i++) {
				if (!runs[i].ok)
					continue;
				if (_pcpu_os_discard(u + runs[i].start * page,
						     runs[i].len * page))
					runs[i].ok = false;
				else
					_pcpu_backed_forget(
						c, idx, runs[i].start,
						runs[i].start + runs[i].len - 1);
			}
		}

		pthread_mutex_lock(&_pcpu_alloc_lock);
		for (size_t i = 0; i < nr; i++) {
			if (!runs[i].ok)
				continue;
			for (uint32_t pg = runs[i].start;
			     pg < runs[i].start + runs[i].len; pg++)
				c->page_touched[pg / 64] &= ~((uint64_t)1 << (pg % 64));
			c->nr_pop_pages -= runs[i].len;
			c->nr_empty_pop_pages -= runs[i].len;
			_pcpu_counters.pop_pages -= runs[i].len;
			_pcpu_counters.empty_pop_pages -= runs[i].len;
			_pcpu_counters.depopulated_pages += runs[i].len;
			released += runs[i].len;
		}
		if (c->to_depopulate) {
			c->to_depopulate = false;
			_pcpu_counters.nr_to_depopulate--;
		}
		_pcpu_chunk_reintegrate(c);
		pthread_mutex_unlock(&_pcpu_alloc_lock);
	}
	return released;
}

/*
 * free_spare_chunks - unmap fully free chunks beyond one spare.
 * Context: reclaim_lock held, alloc_lock not held; calls the OS.
 * Returns: chunks released.
 */
/* Chunks the OS refused to unmap and that could not go back into
 * chunks[] either (its array could not grow): retried on every pass.
 * Context: reclaim_lock. */
static struct pcpu_chunk *orphans[64];
static size_t nr_orphans;

static size_t retry_orphans(void)
{
	size_t done = 0;
	for (size_t i = 0; i < nr_orphans;) {
		struct pcpu_chunk *c = orphans[i];
		int r = _pcpu_chunk_destroy(c);
		if (r) {
			pthread_mutex_lock(&_pcpu_alloc_lock);
			r = _pcpu_chunk_install(c);
			pthread_mutex_unlock(&_pcpu_alloc_lock);
		} else {
			done++;
		}
		if (r) {
			i++;
			continue;
		}
		orphans[i] = orphans[--nr_orphans];
	}
	if (done) {
		pthread_mutex_lock(&_pcpu_alloc_lock);
		_pcpu_counters.chunks_freed += done;
		pthread_mutex_unlock(&_pcpu_alloc_lock);
	}
	return done;
}

static size_t free_spare_chunks(void)
{
	struct pcpu_chunk *batch[32];
	size_t freed = retry_orphans();

	for (;;) {
		size_t n = 0;
		bool spare = false;
		pthread_mutex_lock(&_pcpu_alloc_lock);
		for (size_t i = 0; i < _pcpu_nr_chunks && n < 32; i++) {
			struct pcpu_chunk *c = _pcpu_chunks[i];
			if (c->nr_alloc || c->state == PCPU_CHUNK_ISOLATED)
				continue;
			if (!spare) {
				spare = true; /* keep the first one */
				continue;
			}
			batch[n++] = c;
		}
		for (size_t i = 0; i < n; i++)
			_pcpu_chunk_uninstall(batch[i]);
		pthread_mutex_unlock(&_pcpu_alloc_lock);
		if (!n)
			break;

		size_t done = 0;
		for (size_t i = 0; i < n; i++) {
			if (_pcpu_chunk_destroy(batch[i]) == 0) {
				batch[i] = NULL;
				done++;
			}
		}
		pthread_mutex_lock(&_pcpu_alloc_lock);
		for (size_t i = 0; i < n; i++)
			if (batch[i] && /* the OS refused: keep it */
			    _pcpu_chunk_install(batch[i])) {
				if (nr_orphans < 64) /* else mapped, unused */
					orphans[nr_orphans++] = batch[i];
			}
		_pcpu_counters.chunks_freed += done;
		pthread_mutex_unlock(&_pcpu_alloc_lock);
		freed += done;
		if (done < n)
			break; /* do not spin on a refusing OS */
	}
	return freed;
}

/*
 * grow - reserve a chunk so that pcpu_alloc_nonblock finds room, unless a
 * fully free one is there already.
 * Context: reclaim_lock held, alloc_lock not held; calls the OS.
 */
static void grow(void)
{
	pthread_mutex_lock(&_pcpu_alloc_lock);
	bool have_free = false;
	for (size_t i = 0; i < _pcpu_nr_chunks && !have_free; i++)
		have_free = !_pcpu_chunks[i]->nr_alloc &&
			    _pcpu_chunks[i]->state != PCPU_CHUNK_ISOLATED;
	pthread_mutex_unlock(&_pcpu_alloc_lock);
	if (have_free)
		return;
	struct pcpu_chunk *c = _pcpu_chunk_create();
	if (!c)
		return; /* try again on the next pass */
	pthread_mutex_lock(&_pcpu_alloc_lock);
	int ret = _pcpu_chunk_install(c);
	if (!ret)
		_pcpu_counters.chunks_grown++;
	pthread_mutex_unlock(&_pcpu_alloc_lock);
	if (ret)
		_pcpu_chunk_destroy(c);
}

/*
 * _pcpu_chunks_discard_index - drop index @idx's unit in every chunk (the
 * hotplug release of a CPU).  The chunk bases are read in batches under
 * the allocator lock and the OS is called without it: reclaim_lock keeps
 * them mapped (chunks are unmapped only under it); chunks installed
 * meanwhile are new mappings, zero already.  The first lock hold also
 * waits out any pcpu_free that saw @idx used and is zeroing its copy.
 * Returns 0 or the first error.
 */
int _pcpu_chunks_discard_index(int idx)
{
	struct pcpu_chunk *batch[64];
	char *after = NULL;
	int ret = 0;
	const size_t unit = _pcpu_g.unit_size;

	pthread_mutex_lock(&reclaim_lock);
	for (;;) {
		size_t n = 0;
		pthread_mutex_lock(&_pcpu_alloc_lock);
		for (size_t i = _pcpu_chunk_after(after);
		     i < _pcpu_nr_chunks && n < 64; i++)
			batch[n++] = _pcpu_chunks[i];
		pthread_mutex_unlock(&_pcpu_alloc_lock);
		for (size_t i = 0; i < n; i++) {
			struct pcpu_chunk *c = batch[i];
			int r = _pcpu_os_discard(c->base + (size_t)idx * unit,
						 unit);
			if (r && !ret)
				ret = r;
			if (!r)
				_pcpu_backed_forget(c, idx, 0,
						    c->map.nr_blocks - 1);
		}
		if (n < 64)
			break;
		after = batch[n - 1]->base;
	}
	pthread_mutex_unlock(&reclaim_lock);
	return ret;
}

void _pcpu_reclaim_lock(void)
{
	pthread_mutex_lock(&reclaim_lock);
}

void _pcpu_reclaim_unlock(void)
{
	pthread_mutex_unlock(&reclaim_lock);
}

size_t _pcpu_reclaim_pass(bool trim, bool want_grow)
{
	/* deferred frees first: the room they hold is free room (grow) and
	 * their pages may be empty ones (depopulate) */
	_pcpu_chunk_clean_deferred();
	pthread_mutex_lock(&reclaim_lock);
	if (want_grow)
		grow();
	size_t pages = depopulate(trim);
	size_t chunks = free_spare_chunks();
	pthread_mutex_lock(&_pcpu_alloc_lock);
	_pcpu_counters.balance_passes++;
	if (trim)
		_pcpu_counters.trims++;
	pthread_mutex_unlock(&_pcpu_alloc_lock);
	pthread_mutex_unlock(&reclaim_lock);
	return pages + chunks;
}

void _pcpu_reclaim_atfork_prepare(void)
{
	pthread_mutex_lock(&reclaim_lock);
}

void _pcpu_reclaim_atfork_parent(void)
{
	pthread_mutex_unlock(&reclaim_lock);
}

void _pcpu_reclaim_atfork_child(void)
{
	pthread_mutex_unlock(&reclaim_lock);
}
