/*
 * check.h - the tiny assertion kit every test program uses.
 *
 * A test is a standalone program tests/test_<name>.c whose main() returns
 * check_done().  CHECK() records a failure with file:line and the text of the
 * expression and keeps going, so one run reports every broken assertion;
 * REQUIRE() stops the test at once when going on would only crash.
 */
#ifndef PCPU_TESTS_CHECK_H
#define PCPU_TESTS_CHECK_H

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static atomic_long check__failed;
static atomic_long check__passed;

#define CHECK(expr)                                                            \
	do {                                                                   \
		if (expr) {                                                    \
			atomic_fetch_add(&check__passed, 1);                   \
		} else {                                                       \
			atomic_fetch_add(&check__failed, 1);                   \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, \
				__LINE__, #expr);                              \
		}                                                              \
	} while (0)

#define CHECK_EQ(a, b)                                                         \
	do {                                                                   \
		long long check__a = (long long)(a);                           \
		long long check__b = (long long)(b);                           \
		if (check__a == check__b) {                                    \
			atomic_fetch_add(&check__passed, 1);                   \
		} else {                                                       \
			atomic_fetch_add(&check__failed, 1);                   \
			fprintf(stderr,                                        \
				"%s:%d: CHECK_EQ failed: %s == %s (%lld vs %lld)\n", \
				__FILE__, __LINE__, #a, #b, check__a, check__b); \
		}                                                              \
	} while (0)

#define REQUIRE(expr)                                                          \
	do {                                                                   \
		if (!(expr)) {                                                 \
			fprintf(stderr, "%s:%d: REQUIRE failed: %s\n",         \
				__FILE__, __LINE__, #expr);                    \
			exit(1);                                               \
		}                                                              \
		atomic_fetch_add(&check__passed, 1);                           \
	} while (0)

/* This program's path, for re-executing itself: readlink, which valgrind
 * answers with the client's path (exec of "/proc/self/exe" itself would
 * start valgrind's own binary). */
#include <limits.h>
#include <unistd.h>
static inline const char *check_self_exe(void)
{
	static char path[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
	if (n <= 0)
		return "/proc/self/exe";
	path[n] = 0;
	return path;
}

/* What the test runs under: PCPU_TEST_TSAN (0/1), PCPU_TEST_LSAN and
 * PCPU_TEST_VALGRIND_H (defined when available). */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#define PCPU_TEST_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#include <sanitizer/lsan_interface.h>
#define PCPU_TEST_LSAN 1
#endif
#endif

#if defined(__SANITIZE_THREAD__)
#define PCPU_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PCPU_TEST_TSAN 1
#endif
#endif
#ifndef PCPU_TEST_TSAN
#define PCPU_TEST_TSAN 0
#endif

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define PCPU_TEST_VALGRIND_H 1
#endif
#endif

/* The named parts of a test, run in order, each timed on stderr
 * ("-- name: 0.12 s", then what @after prints, if given). */
#include <time.h>
struct check_part {
	const char *name;
	void (*fn)(void);
};

static inline void check_run_parts(const struct check_part *parts, size_t n,
				   void (*after)(FILE *f))
{
	for (size_t i = 0; i < n; i++) {
		struct timespec t0, t1;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		parts[i].fn();
		clock_gettime(CLOCK_MONOTONIC, &t1);
		fprintf(stderr, "-- %s: %.2f s", parts[i].name,
			(double)(t1.tv_sec - t0.tv_sec) +
				(double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
		if (after)
			after(stderr);
		fputc('\n', stderr);
	}
}

/* xorshift64*: the tests' seeded random numbers. */
/* VmRSS of this process, in KiB (-1 if unknown). */
#include <string.h>
static inline long check_rss_kib(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kib = -1;
	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, "VmRSS:", 6))
			kib = strtol(line + 6, NULL, 10);
	if (f)
		fclose(f);
	return kib;
}

static inline uint64_t check_rng(uint64_t *state)
{
	uint64_t x = *state;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return x * 0x2545f4914f6cdd1dULL;
}

static inline int check_done(void)
{
	long f = atomic_load(&check__failed), p = atomic_load(&check__passed);
	fprintf(stderr, "%ld checks passed, %ld failed\n", p, f);
	return f ? 1 : 0;
}

#endif
