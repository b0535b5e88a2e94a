/*
 * pcpu-bench - benchmark programs of libpcpu (never part of the tests).
 *
 *   pcpu-bench <ops|alloc|mem|...|all> [--json] [--quick]
 *
 * Each subcommand prints its tables with the targets they are measured
 * against; docs/PERFORMANCE.md records the results.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

bool bench_json, bench_quick;
const char *bench_argv0;

static const struct {
	const char *name;
	int (*fn)(int, char **);
	const char *what;
} benches[] = {
	{ "ops", bench_ops, "this-CPU operations vs the floor and the usual alternatives" },
	{ "alloc", bench_alloc, "allocator scenarios of the kernel's bitmap allocator series" },
	{ "mem", bench_mem, "memory with 1024 possible CPUs, against the kernel model" },
	{ "reclaim", bench_reclaim, "giving memory back: 1M areas, 99% freed, trim" },
	{ "counter", bench_counter, "per-CPU counters: accuracy on 250 simulated CPUs, cost" },
	{ "hotplug", bench_hotplug, "the RFC's 1024-possible/16-online table; a CPU coming online" },
	{ "cache", bench_cache, "per-CPU object caches: alloc+free pairs, seed 002's processes, targeted drains" },
};
#define NR_BENCHES (sizeof(benches) / sizeof(benches[0]))

double bench_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static const char *t_bench, *t_title;
static int t_ncols, t_cell, t_rows;
static char t_cells[64][48];
static int t_width[64];
static const char *const *t_cols;
static char t_notes[16][200];
static int t_nnotes;
static char t_rowbuf[256][64][48];

void bench_table(const char *bench, const char *title, int ncols,
		 const char *const cols[])
{
	t_bench = bench;
	t_title = title;
	t_ncols = ncols;
	t_cols = cols;
	t_cell = t_rows = t_nnotes = 0;
	for (int i = 0; i < ncols; i++)
		t_width[i] = (int)strlen(cols[i]);
}

void bench_cell_str(const char *s)
{
	if (t_cell < 64) {
		snprintf(t_cells[t_cell], sizeof(t_cells[0]), "%s", s);
		t_cell++;
	}
}

void bench_cell_num(const char *fmt, double v)
{
	char buf[48];
	snprintf(buf, sizeof(buf), fmt, v);
	bench_cell_str(buf);
}

void bench_row_end(void)
{
	if (t_rows < 256) {
		for (int i = 0; i < t_ncols; i++) {
			const char *s = i < t_cell ? t_cells[i] : "";
			snprintf(t_rowbuf[t_rows][i], 48, "%s", s);
			if ((int)strlen(s) > t_width[i])
				t_width[i] = (int)strlen(s);
		}
		t_rows++;
	}
	t_cell = 0;
}

void bench_note(const char *fmt, ...)
{
	va_list ap;
	if (t_nnotes >= 16)
		return;
	va_start(ap, fmt);
	vsnprintf(t_notes[t_nnotes++], sizeof(t_notes[0]), fmt, ap);
	va_end(ap);
}

static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			putchar('\\');
		putchar(*s);
	}
	putchar('"');
}

/* A cell is a JSON number when strtod consumes all of it. */
static void json_cell(const char *s)
{
	char *end;
	strtod(s, &end);
	if (*s && !*end)
		fputs(s, stdout);
	else
		json_str(s);
}

void bench_table_end(void)
{
	if (bench_json) {
		printf("{\"bench\":");
		json_str(t_bench);
		printf(",\"table\":");
		json_str(t_title);
		printf(",\"columns\":[");
		for (int i = 0; i < t_ncols; i++) {
			printf(i ? "," : "");
			json_str(t_cols[i]);
		}
		printf("],\"rows\":[");
		for (int r = 0; r < t_rows; r++) {
			printf(r ? ",[" : "[");
			for (int i = 0; i < t_ncols; i++) {
				printf(i ? "," : "");
				json_cell(t_rowbuf[r][i]);
			}
			printf("]");
		}
		printf("],\"notes\":[");
		for (int i = 0; i < t_nnotes; i++) {
			printf(i ? "," : "");
			json_str(t_notes[i]);
		}
		printf("]}\n");
	} else {
		printf("\n%s: %s\n", t_bench, t_title);
		for (int i = 0; i < t_ncols; i++)
			printf("| %-*s ", t_width[i], t_cols[i]);
		printf("|\n");
		for (int i = 0; i < t_ncols; i++) {
			printf("|");
			for (int k = 0; k < t_width[i] + 2; k++)
				putchar('-');
		}
		printf("|\n");
		for (int r = 0; r < t_rows; r++) {
			for (int i = 0; i < t_ncols; i++)
				printf(i ? "| %*s " : "| %-*s ", t_width[i],
				       t_rowbuf[r][i]);
			printf("|\n");
		}
		for (int i = 0; i < t_nnotes; i++)
			printf("  %s\n", t_notes[i]);
	}
	fflush(stdout);
}

static int reexec(const char *const env[], const char *const args[],
		  char *out, size_t len)
{
	int fd[2] = { -1, -1 };
	fflush(stdout);
	if (out && pipe(fd))
		return -1;
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		if (out) {
			dup2(fd[1], 1);
			close(fd[0]);
			close(fd[1]);
		}
		const char *argv[32];
		int n = 0;
		argv[n++] = bench_argv0;
		for (int i = 0; args[i] && n < 28; i++)
			argv[n++] = args[i];
		if (bench_json && !out)
			argv[n++] = "--json";
		if (bench_quick)
			argv[n++] = "--quick";
		argv[n] = NULL;
		for (int i = 0; env[i]; i++)
			putenv((char *)env[i]);
		execv("/proc/self/exe", (char *const *)argv);
		_exit(127);
	}
	if (out) {
		size_t got = 0;
		ssize_t r;
		close(fd[1]);
		while ((r = read(fd[0], out + got, len - 1 - got)) > 0)
			got += (size_t)r;
		out[got] = 0;
		close(fd[0]);
	}
	int st;
	if (waitpid(pid, &st, 0) < 0)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int bench_reexec(const char *const env[], const char *const args[])
{
	return reexec(env, args, NULL, 0);
}

int bench_reexec_capture(const char *const env[], const char *const args[],
			 char *out, size_t len)
{
	return reexec(env, args, out, len);
}

long bench_vmrss(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kb = -1;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb < 0 ? -1 : kb * 1024;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: pcpu-bench <name|all> [--json] [--quick]\n");
	for (size_t i = 0; i < NR_BENCHES; i++)
		fprintf(f, "  %-8s %s\n", benches[i].name, benches[i].what);
}

int main(int argc, char **argv)
{
	const char *name = NULL;
	char *rest[32];
	int nrest = 0;

	bench_argv0 = argv[0];
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			bench_json = true;
		else if (!strcmp(argv[i], "--quick"))
			bench_quick = true;
		else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			usage(stdout);
			return 0;
		} else if (!name)
			name = argv[i];
		else if (nrest < 31)
			rest[nrest++] = argv[i];
	}
	rest[nrest] = NULL;
	if (!name) {
		usage(stderr);
		return 2;
	}
	int ret = 0;
	for (size_t i = 0; i < NR_BENCHES; i++) {
		if (!strcmp(name, "all") || !strcmp(name, benches[i].name)) {
			int r = benches[i].fn(nrest, rest);
			if (r)
				ret = r;
			if (strcmp(name, "all"))
				return ret;
		}
	}
	if (strcmp(name, "all")) {
		fprintf(stderr, "pcpu-bench: no benchmark '%s'\n", name);
		usage(stderr);
		return 2;
	}
	return ret;
}
