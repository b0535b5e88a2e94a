/*
 * stats.c - statistics in the manner of the kernel's /proc/meminfo
 * "Percpu" line and debugfs percpu_stats.
 *
 * backed_bytes is measured, not estimated: /proc/self/pagemap over the
 * unit of every index in use of every chunk, so its cost is proportional
 * to the indexes in use, never to possible CPUs.
 * Fragmentation per chunk: contig_bytes is the largest free run, sum_frag
 * the free bytes outside it, max_frag the largest free run after it.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "chunk.h"

static bool bit(const uint64_t *map, uint32_t b)
{
	return (map[b / 64] >> (b % 64)) & 1;
}

/* Largest and second largest free run of a map, in words. */
static void free_runs(const struct pcpu_areamap *m, uint32_t *first,
		      uint32_t *second)
{
	uint32_t a = 0, b = 0, run = 0;
	for (uint32_t w = 0; w <= m->nr_bits; w++) {
		if (w < m->nr_bits && !bit(m->alloc_map, w)) {
			/* skip whole free 64-bit words */
			if (w % 64 == 0 && w + 64 <= m->nr_bits &&
			    m->alloc_map[w / 64] == 0) {
				run += 64;
				w += 63;
				continue;
			}
			run++;
			continue;
		}
		if (run > a) {
			b = a;
			a = run;
		} else if (run > b) {
			b = run;
		}
		run = 0;
	}
	*first = a;
	*second = b;
}

static void chunk_stats(const struct pcpu_chunk *c,
			const struct pcpu_cpuset *used,
			struct pcpu_chunk_stats *cs)
{
	const struct pcpu_areamap *m = &c->map;
	uint32_t big, second;
	size_t page = _pcpu_g.page_size;

	memset(cs, 0, sizeof(*cs));
	cs->base = c->base;
	cs->nr_alloc = c->nr_alloc;
	cs->free_bytes = (uint64_t)m->free_bits * 4;
	free_runs(m, &big, &second);
	cs->contig_bytes = (uint64_t)big * 4;
	cs->sum_frag = cs->free_bytes - cs->contig_bytes;
	cs->max_frag = (uint64_t)second * 4;
	cs->empty_pop_pages = c->nr_empty_pop_pages;
	_pcpu_cpuset_for_each(idx, used) {
		if (idx >= _pcpu_g.nr_ids)
			break;
		long n = _pcpu_os_resident_pages(
			c->base + (size_t)idx * _pcpu_g.unit_size,
			_pcpu_g.unit_size);
		if (n > 0)
			cs->backed_bytes += (uint64_t)n * page;
	}
}

int pcpu_stats_get(struct pcpu_stats *st)
{
	struct pcpu_cpuset used;
	struct pcpu_chunk_stats cs;

	_pcpu_ensure_init();
	memset(st, 0, sizeof(*st));
	_pcpu_chunk_clean_deferred(); /* deferred frees count as done */
	_pcpu_used_snapshot(&used);
	pthread_mutex_lock(&_pcpu_alloc_lock);
	for (size_t i = 0; i < _pcpu_nr_chunks; i++) {
		const struct pcpu_chunk *c = _pcpu_chunks[i];
		chunk_stats(c, &used, &cs);
		st->backed_bytes += cs.backed_bytes;
		st->reserved_bytes += c->len;
		st->metadata_bytes +=
			sizeof(*c) + (uint64_t)(c->map.nr_bits / 8) * 2 + 8 +
			(uint64_t)c->map.nr_blocks * sizeof(struct pcpu_block_md) +
			(c->map.nr_blocks + 63) / 64 * 8;
		st->free_bytes += cs.free_bytes;
		st->sum_frag += cs.sum_frag;
		if (cs.max_frag > st->max_frag)
			st->max_frag = cs.max_frag;
	}
	st->metadata_bytes += _pcpu_nr_chunks * sizeof(void *);
	st->nr_alloc = _pcpu_counters.nr_alloc;
	st->nr_dealloc = _pcpu_counters.nr_dealloc;
	st->nr_cur_alloc = _pcpu_counters.nr_cur_alloc;
	st->nr_max_alloc = _pcpu_counters.nr_max_alloc;
	st->nr_chunks = _pcpu_counters.nr_chunks;
	st->nr_max_chunks = _pcpu_counters.nr_max_chunks;
	st->min_alloc_size = _pcpu_counters.min_alloc_size;
	st->max_alloc_size = _pcpu_counters.max_alloc_size;
	st->live_bytes = _pcpu_counters.live_bytes;
	st->empty_pop_pages = _pcpu_counters.empty_pop_pages;
	st->pop_pages = _pcpu_counters.pop_pages;
	st->depopulated_pages = _pcpu_counters.depopulated_pages;
	st->chunks_isolated = _pcpu_counters.chunks_isolated;
	st->chunks_sidelined = _pcpu_counters.chunks_sidelined;
	st->chunks_reintegrated = _pcpu_counters.chunks_reintegrated;
	st->chunks_freed = _pcpu_counters.chunks_freed;
	st->chunks_grown = _pcpu_counters.chunks_grown;
	st->trims = _pcpu_counters.trims;
	st->pressure_events = _pcpu_counters.pressure_events;
	st->balance_passes = _pcpu_counters.balance_passes;
	st->nonblock_fails = __atomic_load_n(&_pcpu_counters.nonblock_fails,
					     __ATOMIC_RELAXED);
	st->backed_queries = __atomic_load_n(&_pcpu_counters.backed_queries,
					     __ATOMIC_RELAXED);
	pthread_mutex_unlock(&_pcpu_alloc_lock);
	st->unit_size = _pcpu_g.unit_size;
	st->nr_cpu_ids = _pcpu_g.nr_ids;
	st->nr_used_cpus = _pcpu_cpuset_count(&used);
	_pcpu_cache_stats(st); /* the objects of the size classes */
	/* ... and the areas whose free was deferred (chunk.c) */
	st->zero_pended += __atomic_load_n(&_pcpu_counters.deferred_frees,
					   __ATOMIC_RELAXED);
	st->zero_cleans += __atomic_load_n(&_pcpu_counters.deferred_cleans,
					   __ATOMIC_RELAXED);
	return 0;
}

size_t pcpu_stats_chunks(struct pcpu_chunk_stats *out, size_t n)
{
	struct pcpu_cpuset used;

	_pcpu_ensure_init();
	_pcpu_chunk_clean_deferred(); /* deferred frees count as done */
	_pcpu_used_snapshot(&used);
	pthread_mutex_lock(&_pcpu_alloc_lock);
	size_t total = _pcpu_nr_chunks;
	for (size_t i = 0; i < total && i < n; i++)
		chunk_stats(_pcpu_chunks[i], &used, &out[i]);
	pthread_mutex_unlock(&_pcpu_alloc_lock);
	return total;
}

#define FIELDS(X)                                                              \
	X(backed_bytes) X(reserved_bytes) X(metadata_bytes) X(unit_size)       \
	X(nr_alloc) X(nr_dealloc) X(nr_cur_alloc) X(nr_max_alloc)              \
	X(nr_chunks) X(nr_max_chunks) X(min_alloc_size) X(max_alloc_size)     \
	X(empty_pop_pages) X(live_bytes) X(free_bytes) X(sum_frag) X(max_frag) \
	X(pop_pages) X(depopulated_pages) X(chunks_isolated)                  \
	X(chunks_sidelined) X(chunks_reintegrated) X(chunks_freed)            \
	X(chunks_grown) X(trims) X(pressure_events) X(balance_passes)         \
	X(nonblock_fails) X(cache_hits) X(cache_misses) X(cache_flushes)      \
	X(cache_objs_cached) X(cache_bytes_cached) X(cache_pagesets)          \
	X(cache_drains) X(cache_cpus_fenced) X(cache_cpus_skipped)            \
	X(cache_fence_fails) X(cache_fences) X(cache_objs_drained)            \
	X(backed_queries) X(zero_pending) X(zero_pended) X(zero_cleans)

#define CHUNK_FIELDS(X)                                                        \
	X(nr_alloc) X(free_bytes) X(contig_bytes) X(sum_frag) X(max_frag)     \
	X(backed_bytes) X(empty_pop_pages)

static int print_chunks(FILE *f, bool json)
{
	size_t n = pcpu_stats_chunks(NULL, 0);
	struct pcpu_chunk_stats *cs = calloc(n ? n : 1, sizeof(*cs));
	if (!cs)
		return -ENOMEM;
	n = pcpu_stats_chunks(cs, n);
	for (size_t i = 0; i < n; i++) {
		if (json) {
			fprintf(f, "%s{\"base\":\"%p\"", i ? "," : "",
				cs[i].base);
#define X(name) fprintf(f, ",\"" #name "\":%" PRIu64, cs[i].name);
			CHUNK_FIELDS(X)
#undef X
			fputc('}', f);
		} else {
			fprintf(f, "  chunk %p:", cs[i].base);
#define X(name) fprintf(f, " " #name "=%" PRIu64, cs[i].name);
			CHUNK_FIELDS(X)
#undef X
			fputc('\n', f);
		}
	}
	free(cs);
	return 0;
}

int pcpu_stats_print(FILE *f, int flags)
{
	struct pcpu_stats st;
	bool json = flags & PCPU_STATS_JSON;

	pcpu_stats_get(&st);
	if (json) {
		fprintf(f, "{\"nr_cpu_ids\":%d,\"nr_used_cpus\":%d",
			st.nr_cpu_ids, st.nr_used_cpus);
#define X(name) fprintf(f, ",\"" #name "\":%" PRIu64, st.name);
		FIELDS(X)
#undef X
		if (flags & PCPU_STATS_CHUNKS) {
			fputs(",\"chunks\":[", f);
			print_chunks(f, true);
			fputc(']', f);
		}
		fputs("}\n", f);
	} else {
		fprintf(f, "libpcpu stats: nr_cpu_ids %d, used cpus %d\n",
			st.nr_cpu_ids, st.nr_used_cpus);
#define X(name) fprintf(f, "  %-16s %" PRIu64 "\n", #name, st.name);
		FIELDS(X)
#undef X
		if (flags & PCPU_STATS_CHUNKS)
			print_chunks(f, false);
	}
	return ferror(f) ? -EIO : 0;
}

void _pcpu_stats_at_exit(void)
{
	const char *env = getenv("PCPU_STATS");
	bool json = env && !strcmp(env, "json");
	pcpu_stats_print(stderr, json ? PCPU_STATS_JSON : 0);
}
