/*
 * bench.h - the small kit every pcpu-bench subcommand uses.
 *
 * A subcommand prints tables: in text, aligned columns with a title; with
 * --json, one JSON object per table per line ({"bench":..,"table":..,
 * "columns":[..],"rows":[[..],..],"notes":[..]}), so a subcommand that
 * re-executes itself in a simulated topology can let the child print its
 * own tables.  Numbers are compared within one run, as ratios.
 */
#ifndef PCPU_BENCH_H
#define PCPU_BENCH_H

#include <stdbool.h>
#include <stddef.h>

extern bool bench_json;  /* --json */
extern bool bench_quick; /* --quick: smaller sizes (smoke runs) */
extern const char *bench_argv0;

double bench_now(void);

/* Tables: begin, then cells row by row, then end. */
void bench_table(const char *bench, const char *title, int ncols,
		 const char *const cols[]);
void bench_cell_str(const char *s);
void bench_cell_num(const char *fmt, double v);
void bench_row_end(void);
void bench_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void bench_table_end(void);

/*
 * Runs this program again as "pcpu-bench <args...>" with the environment
 * extended by @env ("NAME=value" strings, NULL-terminated) and the same
 * --json/--quick flags; returns the child's exit status (0 = success).
 */
int bench_reexec(const char *const env[], const char *const args[]);
/* The same, capturing the child's standard output into @out (NUL
 * terminated, truncated to @len - 1 bytes); --json is not passed on. */
int bench_reexec_capture(const char *const env[], const char *const args[],
			 char *out, size_t len);

/* Keep a value alive (defeats dead-code elimination). */
#define bench_keep(x) __asm__ __volatile__("" : : "g"(x) : "memory")

/* Resident set of this process in bytes (VmRSS), for cross-checks. */
long bench_vmrss(void);

/* harness.c: @fn runs bench_iters operations; bench_measure starts it on
 * @nthreads (1 or 2) threads pinned to bench_cpus (bench_pick_cpus), best
 * of 3 runs, and returns ns per operation per thread; @before/@after (may
 * be NULL) run around each run, @after with the thread count. */
extern long bench_iters;
extern int bench_cpus[2];
void bench_pick_cpus(void);
double bench_measure(void (*fn)(void), int nthreads,
		     void (*before)(void *), void (*after)(void *, int),
		     void *arg);
void bench_op_atomic(void);  /* one shared atomic counter */
void bench_op_striped(void); /* LongAdder-style striped CAS */

/* Subcommands. */
int bench_ops(int argc, char **argv);
int bench_alloc(int argc, char **argv);
int bench_mem(int argc, char **argv);
int bench_counter(int argc, char **argv);
int bench_reclaim(int argc, char **argv);
int bench_hotplug(int argc, char **argv);
int bench_cache(int argc, char **argv);

#endif
