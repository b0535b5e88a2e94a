/*
 * error.c - reporting misuse and internal failures.
 *
 * Misuse the library can detect (invalid or double free, a bad CPU index)
 * goes to the user's error handler; the default prints one line naming the
 * pointer and aborts.  These checks stay on in release builds: reporting a
 * bad free costs nothing next to the corruption it prevents.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

static pcpu_error_handler_t error_fn;
static void *error_arg;

void pcpu_set_error_handler(pcpu_error_handler_t fn, void *arg)
{
	__atomic_store_n(&error_arg, arg, __ATOMIC_RELAXED);
	__atomic_store_n(&error_fn, fn, __ATOMIC_RELEASE);
}

void _pcpu_report(const char *what, const void *ptr)
{
	pcpu_error_handler_t fn = __atomic_load_n(&error_fn, __ATOMIC_ACQUIRE);
	if (fn) {
		fn(what, ptr, __atomic_load_n(&error_arg, __ATOMIC_RELAXED));
		return;
	}
	fprintf(stderr, "libpcpu: %s of %p\n", what, ptr);
	abort();
}

void _pcpu_fatal(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("libpcpu: fatal: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	abort();
}

void _pcpu_notice(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("libpcpu: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

void _pcpu_assert_fail(const char *expr, const char *file, int line,
		       const char *func)
{
	_pcpu_fatal("assertion '%s' failed in %s at %s:%d", expr, func, file,
		    line);
}

void _pcpu_report_cpu(const char *call, const void *p, int cpu)
{
	static __thread char what[96];
	snprintf(what, sizeof(what), "%s with cpu %d, out of range [0, %d)",
		 call, cpu, _pcpu_g.nr_ids);
	_pcpu_report(what, p);
}
