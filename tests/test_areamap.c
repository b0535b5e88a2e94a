/*
 * test_areamap.c - the chunk area allocator (src/areamap.c) against a
 * brute-force reference model, plus the kernel allocator's fill/drain
 * scenarios with timings.
 *
 * The model is a byte per word (1 = allocated) and the size of the live
 * allocation starting at each word; its first fit walks the words from 0,
 * jumping over allocations by their size and over free runs with memchr,
 * and tries the lowest aligned offset of every free run.
 *
 * Build: gcc -std=gnu11 -O1 -g -Wall -Wextra -Werror -DPCPU_DEBUG=1
 *        -fsanitize=address,undefined -Iinclude -Isrc src/areamap.c
 *        tests/test_areamap.c -o /tmp/ta && /tmp/ta
 */
#include <errno.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "check.h"

/*
 * The debug assertion handler normally lives in src/error.c.  This test is
 * linked with areamap.c alone, so it provides one that can also catch an
 * expected assertion.  A build that links the whole library defines
 * PCPU_TEST_LIB_ASSERT_FAIL and skips the assertion tests.
 */
#ifndef PCPU_TEST_LIB_ASSERT_FAIL
static jmp_buf assert_jmp;
static volatile int assert_expected;
static volatile int assert_hits;

void _pcpu_assert_fail(const char *e, const char *f, int l, const char *fn)
{
	if (assert_expected) {
		assert_expected = 0;
		assert_hits++;
		longjmp(assert_jmp, 1);
	}
	fprintf(stderr, "%s:%d: %s: assertion failed: %s\n", f, l, fn, e);
	abort();
}
#endif

/* ---- random numbers (xorshift64*) ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
	uint64_t x = rng_state;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	rng_state = x;
	return x * 0x2545f4914f6cdd1dULL;
}

static uint32_t rnd_below(uint32_t n)
{
	return (uint32_t)(rnd() % n);
}

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* ---- the reference model ---- */

struct model {
	uint32_t n;
	uint8_t *used;     /* 1 = allocated */
	uint32_t *size_at; /* size of the live allocation starting here */
	uint32_t *live;    /* live starts, unordered */
	uint32_t nr_live;
	uint32_t free_bits;
};

static void model_init(struct model *md, uint32_t n)
{
	md->n = n;
	md->used = calloc(n, 1);
	md->size_at = calloc(n, sizeof(uint32_t));
	md->live = calloc(n, sizeof(uint32_t));
	md->nr_live = 0;
	md->free_bits = n;
	REQUIRE(md->used && md->size_at && md->live);
}

static void model_destroy(struct model *md)
{
	free(md->used);
	free(md->size_at);
	free(md->live);
}

/* End of the free run starting at the free word @i. */
static uint32_t model_run_end(const struct model *md, uint32_t i)
{
	const uint8_t *p = memchr(md->used + i, 1, md->n - i);

	return p ? (uint32_t)(p - md->used) : md->n;
}

static long model_first_fit(const struct model *md, uint32_t bits,
			    uint32_t align)
{
	uint32_t i = 0;

	while (i < md->n) {
		if (md->used[i]) {
			/* walking from 0 we only ever land on starts */
			REQUIRE(md->size_at[i]);
			i += md->size_at[i];
			continue;
		}
		uint32_t re = model_run_end(md, i);
		uint64_t a = ((uint64_t)i + align - 1) & ~((uint64_t)align - 1);

		if (a + bits <= re)
			return (long)a;
		i = re;
	}
	return -1;
}

static uint32_t model_max_run(const struct model *md)
{
	uint32_t i = 0, best = 0;

	while (i < md->n) {
		if (md->used[i]) {
			i += md->size_at[i];
			continue;
		}
		uint32_t re = model_run_end(md, i);

		if (re - i > best)
			best = re - i;
		i = re;
	}
	return best;
}

static uint32_t model_first_free(const struct model *md)
{
	const uint8_t *p = memchr(md->used, 0, md->n);

	return p ? (uint32_t)(p - md->used) : md->n;
}

static void model_alloc(struct model *md, uint32_t off, uint32_t bits)
{
	memset(md->used + off, 1, bits);
	md->size_at[off] = bits;
	md->live[md->nr_live++] = off;
	md->free_bits -= bits;
}

static void model_free(struct model *md, uint32_t idx)
{
	uint32_t off = md->live[idx];

	memset(md->used + off, 0, md->size_at[off]);
	md->free_bits += md->size_at[off];
	md->size_at[off] = 0;
	md->live[idx] = md->live[--md->nr_live];
}

static bool model_is_start(const struct model *md, uint32_t off)
{
	return off < md->n && md->size_at[off] != 0;
}

/* ---- comparing map and model ---- */

/* Full comparison; returns false (after CHECK failures) on a mismatch. */
static bool compare_full(const struct pcpu_areamap *m, const struct model *md)
{
	uint32_t max_run = model_max_run(md);
	long before = check__failed;

	CHECK_EQ(_pcpu_areamap_validate(m), 0);
	CHECK_EQ(m->free_bits, md->free_bits);
	CHECK_EQ(m->first_free, model_first_free(md));
	CHECK_EQ(_pcpu_areamap_max_contig(m), max_run);
	CHECK(m->contig_hint >= max_run);
	for (uint32_t b = 0; b < m->nr_blocks; b++) {
		bool empty = !memchr(md->used + b * m->block_bits, 1,
				     m->block_bits);

		CHECK_EQ(_pcpu_areamap_block_empty(m, b), empty);
	}
	return check__failed == before;
}

/* Power-of-two alignment: mostly small, up to block_bits, rarely above. */
static uint32_t pick_align(uint32_t bb)
{
	uint32_t max_log = 0, r = rnd_below(100);

	while ((2u << max_log) <= bb)
		max_log++;
	if (r < 40)
		return 1;
	if (r < 97)
		return 1u << rnd_below(max_log + 1);
	return 1u << (max_log + 1 + rnd_below(2));
}

/*
 * Sizes: mostly small, some a block or a few, rarely up to the map.  With
 * @small, nearly all are tiny, to fragment a big map into thousands of
 * areas; then the rare larger ones have to find (or fail to find) a hole.
 */
static uint32_t pick_size(uint32_t n, uint32_t bb, bool small)
{
	uint32_t r = rnd_below(1000), max;

	if (small && r < 950)
		return 1 + rnd_below(r < 700 ? 4 : 24);

	if (r < 450)
		max = 8;
	else if (r < 650)
		max = 64;
	else if (r < 820)
		max = bb;
	else if (r < 950)
		max = 4 * bb;
	else if (r < 985)
		max = n / 4 ? n / 4 : 1;
	else if (r < 997)
		max = n;
	else
		return n;
	if (max > n)
		max = n;
	return 1 + rnd_below(max);
}

/*
 * run_random - @ops random operations on an @n / @bb map beside the model;
 * a full comparison every @every ops.
 */
static void run_random(uint32_t n, uint32_t bb, uint32_t ops, uint32_t every,
		       bool small, uint64_t seed)
{
	struct pcpu_areamap m;
	struct model md;
	uint32_t nr_alloc = 0, nr_fail = 0, nr_free = 0, p_alloc = 55;
	uint32_t max_live = 0;
	bool diverged = false;
	double t0 = now_ns();

	/* one thread: ThreadSanitizer has nothing to find here, and the
	 * sequences are long enough for the other builds */
	if (PCPU_TEST_TSAN)
		ops /= 8;
	rng_state = seed;
	REQUIRE(_pcpu_areamap_init(&m, n, bb) == 0);
	model_init(&md, n);
	REQUIRE(compare_full(&m, &md));

	for (uint32_t op = 0; op < ops; op++) {
		if (op % 512 == 0) {
			uint32_t ph = rnd_below(4);

			/* fill, drain or churn for a while */
			p_alloc = ph == 0 ? 85 : ph == 1 ? 20 : 55;
			if (small && ph != 1)
				p_alloc = 70;
		}
		if (!md.nr_live || rnd_below(100) < p_alloc) {
			uint32_t bits = pick_size(n, bb, small);
			uint32_t align = pick_align(bb);
			uint32_t old_hint = m.contig_hint;
			long want = model_first_fit(&md, bits, align);
			long got = _pcpu_areamap_alloc(&m, bits, align);

			if (got != want) {
				fprintf(stderr,
					"geometry %u/%u op %u: alloc(%u, %u) "
					"= %ld, model %ld\n",
					n, bb, op, bits, align, got, want);
				CHECK_EQ(got, want);
				diverged = true;
				break;
			}
			if (got < 0) {
				uint32_t exact = model_max_run(&md);

				nr_fail++;
				if (align == 1)
					CHECK(bits > exact);
				if (bits <= old_hint)
					CHECK_EQ(m.contig_hint, exact);
				else
					CHECK(m.contig_hint >= exact);
			} else {
				uint32_t off = (uint32_t)got;

				nr_alloc++;
				model_alloc(&md, off, bits);
				if (md.nr_live > max_live)
					max_live = md.nr_live;
				CHECK(_pcpu_areamap_is_start(&m, off));
				CHECK_EQ(_pcpu_areamap_size(&m, off), bits);
				if (bits > 1) {
					CHECK(!_pcpu_areamap_is_start(&m,
								      off + 1));
					CHECK(!_pcpu_areamap_is_start(
						&m, off + bits - 1));
					CHECK(!_pcpu_areamap_is_start(
						&m, off + rnd_below(bits - 1) +
							    1));
				}
				CHECK_EQ(_pcpu_areamap_is_start(&m, off + bits),
					 model_is_start(&md, off + bits));
			}
		} else {
			uint32_t idx = rnd_below(md.nr_live);
			uint32_t off = md.live[idx];
			uint32_t size = md.size_at[off];

			nr_free++;
			CHECK(_pcpu_areamap_is_start(&m, off));
			CHECK_EQ(_pcpu_areamap_size(&m, off), size);
			CHECK_EQ(_pcpu_areamap_free(&m, off), size);
			model_free(&md, idx);
			/* a second free of off would be a double free */
			CHECK(!_pcpu_areamap_is_start(&m, off));
			if (size > 1)
				CHECK(!_pcpu_areamap_is_start(&m,
							      off + size - 1));
			CHECK_EQ(_pcpu_areamap_is_start(&m, off + size),
				 model_is_start(&md, off + size));
			CHECK(m.contig_hint >= size);
		}

		/* Random probes, including past the end. */
		for (int k = 0; k < 4; k++) {
			uint32_t off = rnd_below(n + 2);

			CHECK_EQ(_pcpu_areamap_is_start(&m, off),
				 model_is_start(&md, off));
		}
		CHECK_EQ(m.free_bits, md.free_bits);
		if (op % every == every - 1 && !compare_full(&m, &md)) {
			fprintf(stderr, "geometry %u/%u: mismatch at op %u\n",
				n, bb, op);
			diverged = true;
			break;
		}
	}
	if (diverged) {
		/* the map no longer holds the model's areas: stop here */
		_pcpu_areamap_destroy(&m);
		model_destroy(&md);
		return;
	}
	CHECK(compare_full(&m, &md));

	/* Drain: everything must come back as one free run. */
	while (md.nr_live) {
		uint32_t off = md.live[md.nr_live - 1];

		CHECK_EQ(_pcpu_areamap_free(&m, off), md.size_at[off]);
		model_free(&md, md.nr_live - 1);
	}
	CHECK(compare_full(&m, &md));
	CHECK_EQ(m.contig_hint, n);
	CHECK_EQ(_pcpu_areamap_alloc(&m, n, 1), 0);
	CHECK_EQ(_pcpu_areamap_free(&m, 0), n);

	printf("random %7u/%-5u%s: %u ops (%u allocs, %u failed, %u frees, "
	       "%u live max) %.0f ms\n",
	       n, bb, small ? " small" : "", ops, nr_alloc, nr_fail, nr_free,
	       max_live, (now_ns() - t0) / 1e6);
	_pcpu_areamap_destroy(&m);
	model_destroy(&md);
}

/* ---- deterministic cases ---- */

static void test_init(void)
{
	static const uint32_t good[][2] = {
		{ 16, 16 },     { 32, 32 },     { 64, 64 },    { 128, 128 },
		{ 256, 256 },   { 512, 512 },   { 1024, 1024 }, { 2048, 2048 },
		{ 4096, 4096 }, { 192, 192 },   { 960, 192 },  { 48, 16 },
		{ 96, 32 },     { 8192, 4096 }, { 262144, 1024 },
	};
	static const uint32_t bad[][2] = {
		{ 0, 16 },   { 100, 16 },     { 256, 8 },   { 256, 48 },
		{ 256, 0 },  { 288, 96 },     { 64, 128 },  { 256, 1 },
		{ 16, 0 },   { (1u << 30) + 64, 64 },
	};
	struct pcpu_areamap m;

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		CHECK_EQ(_pcpu_areamap_init(&m, good[i][0], good[i][1]), 0);
		CHECK_EQ(m.nr_blocks, good[i][0] / good[i][1]);
		CHECK_EQ(m.free_bits, good[i][0]);
		CHECK_EQ(m.contig_hint, good[i][0]);
		CHECK_EQ(m.first_free, 0);
		CHECK_EQ(_pcpu_areamap_max_contig(&m), good[i][0]);
		CHECK_EQ(_pcpu_areamap_validate(&m), 0);
		CHECK(!_pcpu_areamap_is_start(&m, 0));
		for (uint32_t b = 0; b < m.nr_blocks; b++)
			CHECK(_pcpu_areamap_block_empty(&m, b));
		_pcpu_areamap_destroy(&m);
		CHECK(m.alloc_map == NULL && m.md == NULL);
		_pcpu_areamap_destroy(&m); /* twice is fine */
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		CHECK_EQ(_pcpu_areamap_init(&m, bad[i][0], bad[i][1]),
			 -EINVAL);
		CHECK(m.alloc_map == NULL && m.bound_map == NULL &&
		      m.md == NULL);
		_pcpu_areamap_destroy(&m);
	}
	memset(&m, 0, sizeof(m));
	_pcpu_areamap_destroy(&m); /* zeroed struct */
}

static void test_basic(void)
{
	struct pcpu_areamap m;

	/* 256 words in blocks of 16. */
	REQUIRE(_pcpu_areamap_init(&m, 256, 16) == 0);
	CHECK_EQ(_pcpu_areamap_alloc(&m, 3, 1), 0);   /* A [0, 3) */
	CHECK_EQ(_pcpu_areamap_alloc(&m, 1, 1), 3);   /* B [3, 4) */
	CHECK_EQ(_pcpu_areamap_alloc(&m, 40, 16), 16); /* C [16, 56) */
	CHECK_EQ(_pcpu_areamap_alloc(&m, 8, 8), 8);   /* D [8, 16) */
	CHECK_EQ(_pcpu_areamap_alloc(&m, 5, 64), 64); /* E [64, 69) */
	CHECK_EQ(_pcpu_areamap_alloc(&m, 2, 2), 4);   /* F [4, 6) */
	CHECK_EQ(_pcpu_areamap_size(&m, 16), 40);
	CHECK_EQ(_pcpu_areamap_validate(&m), 0);
	CHECK_EQ(m.first_free, 6);

	/* Free A: the end mark at 3 stays, as B's start. */
	CHECK_EQ(_pcpu_areamap_free(&m, 0), 3);
	CHECK(!_pcpu_areamap_is_start(&m, 0));
	CHECK(_pcpu_areamap_is_start(&m, 3));
	CHECK_EQ(m.first_free, 0);
	CHECK_EQ(_pcpu_areamap_alloc(&m, 2, 1), 0); /* [0, 2) */
	CHECK(!_pcpu_areamap_is_start(&m, 2));
	CHECK_EQ(_pcpu_areamap_alloc(&m, 1, 1), 2); /* [2, 3) */
	CHECK_EQ(_pcpu_areamap_size(&m, 2), 1);
	CHECK_EQ(_pcpu_areamap_size(&m, 0), 2);
	CHECK_EQ(_pcpu_areamap_validate(&m), 0);

	/* Free C then the stale marks inside it are harmless. */
	CHECK_EQ(_pcpu_areamap_free(&m, 16), 40);
	CHECK(!_pcpu_areamap_is_start(&m, 56));
	CHECK_EQ(_pcpu_areamap_alloc(&m, 48, 1), 16); /* [16, 64) */
	CHECK_EQ(_pcpu_areamap_size(&m, 16), 48);
	CHECK_EQ(_pcpu_areamap_validate(&m), 0);

	/* Free runs [6, 8) and [69, 256).  contig_hint is only clamped to
	 * free_bits (189), so 256 fails without a scan; 188 scans and makes
	 * the hint exact. */
	CHECK_EQ(m.contig_hint, 189);
	CHECK_EQ(_pcpu_areamap_alloc(&m, 256, 1), -1);
	CHECK_EQ(m.contig_hint, 189);
	CHECK_EQ(_pcpu_areamap_alloc(&m, 188, 1), -1);
	CHECK_EQ(m.contig_hint, 256 - 69);
	CHECK_EQ(_pcpu_areamap_alloc(&m, 188, 1), -1); /* no scan */
	CHECK_EQ(_pcpu_areamap_alloc(&m, 187, 2), -1); /* 69 is odd */
	CHECK_EQ(_pcpu_areamap_alloc(&m, 187, 1), 69);
	CHECK_EQ(_pcpu_areamap_free(&m, 69), 187);
	_pcpu_areamap_destroy(&m);

	REQUIRE(_pcpu_areamap_init(&m, 256, 16) == 0);
	CHECK_EQ(_pcpu_areamap_alloc(&m, 256, 1), 0);
	CHECK_EQ(m.contig_hint, 0);
	CHECK_EQ(m.first_free, 256);
	CHECK_EQ(_pcpu_areamap_alloc(&m, 1, 1), -1);
	CHECK_EQ(_pcpu_areamap_validate(&m), 0);
	CHECK_EQ(_pcpu_areamap_free(&m, 0), 256);
	CHECK_EQ(m.contig_hint, 256);
	CHECK_EQ(_pcpu_areamap_validate(&m), 0);

	/* Alignment above the block size and across blocks. */
	CHECK_EQ(_pcpu_areamap_alloc(&m, 1, 1), 0);
	CHECK_EQ(_pcpu_areamap_alloc(&m, 17, 128), 128);
	CHECK_EQ(_pcpu_areamap_alloc(&m, 100, 4), 4);
	CHECK_EQ(_pcpu_areamap_alloc(&m, 30, 32), 160);
	CHECK_EQ(_pcpu_areamap_alloc(&m, 24, 1), 104);
	CHECK_EQ(_pcpu_areamap_alloc(&m, 1, 1), 1);
	CHECK_EQ(_pcpu_areamap_validate(&m), 0);
	/* free runs now: [2,4) [145,160) [190,256) */
	CHECK_EQ(_pcpu_areamap_alloc(&m, 67, 1), -1);
	CHECK_EQ(m.contig_hint, 66);
	CHECK_EQ(_pcpu_areamap_max_contig(&m), 66);
	CHECK_EQ(_pcpu_areamap_free(&m, 160), 30); /* [145, 256) */
	CHECK_EQ(m.contig_hint, 111);
	CHECK_EQ(_pcpu_areamap_alloc(&m, 111, 1), 145);
	CHECK_EQ(_pcpu_areamap_validate(&m), 0);
	_pcpu_areamap_destroy(&m);
}

/* Invalid frees trip the debug assertion before changing anything. */
static void test_asserts(void)
{
#if PCPU_DEBUG && !defined(PCPU_TEST_LIB_ASSERT_FAIL)
	struct pcpu_areamap m;
	uint32_t probes[] = { 1, 4, 5, 8, 9, 255, 256 };

	REQUIRE(_pcpu_areamap_init(&m, 256, 16) == 0);
	CHECK_EQ(_pcpu_areamap_alloc(&m, 4, 1), 0);
	CHECK_EQ(_pcpu_areamap_alloc(&m, 4, 1), 4);
	CHECK_EQ(_pcpu_areamap_free(&m, 4), 4);
	for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++) {
		int hits = assert_hits;

		assert_expected = 1;
		if (!setjmp(assert_jmp))
			_pcpu_areamap_free(&m, probes[i]);
		assert_expected = 0;
		CHECK_EQ(assert_hits, hits + 1);
		CHECK_EQ(_pcpu_areamap_validate(&m), 0);
		CHECK_EQ(m.free_bits, 252);
	}
	_pcpu_areamap_destroy(&m);
#endif
}

/* ---- the kernel allocator's scenarios, timed ---- */

static void report(const char *what, double ns, uint32_t ops)
{
	printf("  %-34s %8.1f ns/op\n", what, ns / ops);
}

static void check_empty(struct pcpu_areamap *m)
{
	uint32_t n = m->nr_bits;
	bool all_empty = true;

	CHECK_EQ(m->free_bits, n);
	CHECK_EQ(m->first_free, 0);
	CHECK_EQ(m->contig_hint, n);
	CHECK_EQ(_pcpu_areamap_max_contig(m), n);
	for (uint32_t b = 0; b < m->nr_blocks; b++)
		all_empty &= _pcpu_areamap_block_empty(m, b);
	CHECK(all_empty);
	CHECK_EQ(_pcpu_areamap_validate(m), 0);
}

static void fill_ones(struct pcpu_areamap *m, const char *what)
{
	uint32_t n = m->nr_bits, bad = 0;
	double t0 = now_ns();

	for (uint32_t i = 0; i < n; i++)
		bad += _pcpu_areamap_alloc(m, 1, 1) != (long)i;
	if (what)
		report(what, now_ns() - t0, n);
	CHECK_EQ(bad, 0);
	CHECK_EQ(_pcpu_areamap_alloc(m, 1, 1), -1);
	CHECK_EQ(m->contig_hint, 0);
	CHECK_EQ(m->free_bits, 0);
	CHECK_EQ(m->first_free, n);
}

static void test_kernel_scenarios(void)
{
	const uint32_t n = 262144, bb = 1024;
	struct pcpu_areamap m;
	uint32_t bad;
	double t0;

	printf("kernel scenarios, %u words in blocks of %u:\n", n, bb);
	REQUIRE(_pcpu_areamap_init(&m, n, bb) == 0);

	fill_ones(&m, "alloc 1 word, sequential");
	CHECK_EQ(_pcpu_areamap_validate(&m), 0);
	bad = 0;
	t0 = now_ns();
	for (uint32_t i = 0; i < n; i++)
		bad += _pcpu_areamap_free(&m, i) != 1;
	report("free in order", now_ns() - t0, n);
	CHECK_EQ(bad, 0);
	check_empty(&m);

	fill_ones(&m, NULL);
	bad = 0;
	t0 = now_ns();
	for (uint32_t i = n; i-- > 0;)
		bad += _pcpu_areamap_free(&m, i) != 1;
	report("free in reverse order", now_ns() - t0, n);
	CHECK_EQ(bad, 0);
	check_empty(&m);

	fill_ones(&m, NULL);
	bad = 0;
	t0 = now_ns();
	for (uint32_t i = 0; i < n; i += 2)
		bad += _pcpu_areamap_free(&m, i) != 1;
	report("free evens", now_ns() - t0, n / 2);
	CHECK_EQ(m.free_bits, n / 2);
	CHECK_EQ(_pcpu_areamap_max_contig(&m), 1);
	CHECK_EQ(_pcpu_areamap_validate(&m), 0);
	t0 = now_ns();
	for (uint32_t i = 1; i < n; i += 2)
		bad += _pcpu_areamap_free(&m, i) != 1;
	report("then free odds", now_ns() - t0, n / 2);
	CHECK_EQ(bad, 0);
	check_empty(&m);

	/* Refill the holes of a half-freed map: first fit walks forward. */
	fill_ones(&m, NULL);
	for (uint32_t i = 0; i < n; i += 2)
		_pcpu_areamap_free(&m, i);
	bad = 0;
	t0 = now_ns();
	for (uint32_t i = 0; i < n; i += 2)
		bad += _pcpu_areamap_alloc(&m, 1, 1) != (long)i;
	report("alloc 1 word into 1-word holes", now_ns() - t0, n / 2);
	CHECK_EQ(bad, 0);
	CHECK_EQ(m.free_bits, 0);
	/* Scattered 1-word holes: a 2-word request fails. */
	for (uint32_t i = 1; i < n; i += 4)
		_pcpu_areamap_free(&m, i);
	CHECK_EQ(_pcpu_areamap_alloc(&m, 2, 1), -1);
	CHECK_EQ(m.contig_hint, 1);
	CHECK_EQ(_pcpu_areamap_validate(&m), 0);
	_pcpu_areamap_destroy(&m);
}

/*
 * A chain of maps used the way chunk.c uses them: skip a map whose
 * contig_hint is too small.  1M one-word allocations must stay O(1).
 */
static void test_chain(void)
{
	enum { NR_MAPS = 4 };
	const uint32_t n = 262144, total = NR_MAPS * n;
	struct pcpu_areamap maps[NR_MAPS];
	uint32_t bad = 0;
	double t0;

	for (int k = 0; k < NR_MAPS; k++)
		REQUIRE(_pcpu_areamap_init(&maps[k], n, 1024) == 0);
	t0 = now_ns();
	for (uint32_t i = 0; i < total; i++) {
		long off = -1;
		int k;

		for (k = 0; k < NR_MAPS; k++) {
			if (maps[k].contig_hint < 1)
				continue;
			off = _pcpu_areamap_alloc(&maps[k], 1, 1);
			if (off >= 0)
				break;
		}
		bad += k != (int)(i / n) || off != (long)(i % n);
	}
	report("chain of 4 maps, 1M x alloc 1 word", now_ns() - t0, total);
	CHECK_EQ(bad, 0);
	t0 = now_ns();
	for (uint32_t i = 0; i < total; i++)
		bad += _pcpu_areamap_free(&maps[i % NR_MAPS], i / NR_MAPS) != 1;
	report("chain, free interleaved", now_ns() - t0, total);
	CHECK_EQ(bad, 0);
	for (int k = 0; k < NR_MAPS; k++) {
		check_empty(&maps[k]);
		_pcpu_areamap_destroy(&maps[k]);
	}
}

int main(void)
{
	double t0 = now_ns();

	test_init();
	test_basic();
	test_asserts();

	/* Single-block maps. */
	run_random(16, 16, 20000, 16, false, 1);
	run_random(64, 64, 20000, 32, false, 2);
	run_random(1024, 1024, 20000, 64, false, 3);
	run_random(4096, 4096, 20000, 100, false, 4);
	/* Sub-word, word and multi-word blocks. */
	run_random(256, 16, 100000, 64, false, 5);
	run_random(96, 32, 30000, 32, false, 6);
	run_random(1024, 32, 60000, 100, false, 7);
	run_random(4096, 64, 100000, 200, false, 8);
	run_random(960, 192, 40000, 100, false, 9);
	run_random(16384, 128, 50000, 500, false, 10);
	run_random(262144, 1024, 30000, 2000, false, 11);
	/* Thousands of small areas fragmenting the map. */
	run_random(1024, 16, 60000, 100, true, 12);
	run_random(16384, 64, 60000, 1000, true, 13);
	run_random(65536, 1024, 60000, 5000, true, 14);

	test_kernel_scenarios();
	test_chain();

	printf("total %.0f ms\n", (now_ns() - t0) / 1e6);
	return check_done();
}
