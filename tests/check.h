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

static inline int check_done(void)
{
	long f = atomic_load(&check__failed), p = atomic_load(&check__passed);
	fprintf(stderr, "%ld checks passed, %ld failed\n", p, f);
	return f ? 1 : 0;
}

#endif
