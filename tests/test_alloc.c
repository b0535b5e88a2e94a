/*
 * test_alloc.c - pcpu_alloc/pcpu_free: argument errors, zeroing, invalid
 * and double free, a reference model on random sequences, concurrency, a
 * simulated 1024-CPU machine, out of memory, statistics.
 *
 * Parts that need a fresh library state run in a child: the program
 * re-executes itself (/proc/self/exe) with one argument naming the part
 * ("sim1024": another topology; "stats": counters that start at zero;
 * "exitstats": PCPU_STATS at exit), and the parent checks the exit
 * status and what the child printed.  Parts that need the parent's state
 * fork without exec (the default error handler aborts; each step of the
 * out-of-memory sweep starts from the same state).
 *
 * PCPU_TEST_SCALE=valgrind shrinks the loops 50x; with PCPU_DEBUG >= 2 the
 * library validates itself after every alloc/free, so loops shrink too.
 * PCPU_TEST_SEED=n changes the seed of the random parts.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "cpus.h"
#include "internal.h"

static long scale = 1; /* valgrind: 50 */
static bool heavy; /* the library validates after every alloc/free */
static uint64_t seed = 0x9e3779b97f4a7c15ULL;
static size_t page, umax;
static char self_exe[4096];

/* ---- helpers ---- */

/* Loop counts: @n, shrunk for valgrind; @n_heavy when the library
 * validates itself after every operation (PCPU_DEBUG >= 2: what the
 * operation touched; >= 3: everything, milliseconds per operation). */
static long iters(long n, long n_heavy)
{
	long r = heavy ? n_heavy / (PCPU_DEBUG >= 3 ? 20 : 1) : n / scale;
	return r < 1 ? 1 : r;
}

static uint64_t rng(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545f4914f6cdd1dULL;
}

static uint64_t rng_below(uint64_t *s, uint64_t n)
{
	return rng(s) % n;
}

static size_t round4(size_t n)
{
	return (n + 3) & ~(size_t)3;
}

static void setup(void)
{
	const char *s = getenv("PCPU_TEST_SCALE");
	if (s && !strcmp(s, "valgrind"))
		scale = 50;
	else if (PCPU_TEST_TSAN)
		scale = 4;
#if PCPU_DEBUG >= 2
	heavy = true;
#endif
	s = getenv("PCPU_TEST_SEED");
	if (s && *s)
		seed = strtoull(s, NULL, 0) | 1;
	page = (size_t)sysconf(_SC_PAGESIZE);
	real_cpus_init();
	umax = pcpu_alloc_max();
	REQUIRE(umax >= page && umax % page == 0);
}

static void get_stats(struct pcpu_stats *s)
{
	REQUIRE(pcpu_stats_get(s) == 0);
}

/*
 * What a call that fails or is refused must not change: the allocation
 * counters are equal, and no chunk or metadata was added.  (The balance
 * worker may release a fully free chunk meanwhile, so chunk counts may
 * only shrink.)
 */
static bool counters_same(const struct pcpu_stats *a, const struct pcpu_stats *b)
{
	bool ok = a->nr_alloc == b->nr_alloc && a->nr_dealloc == b->nr_dealloc &&
		  a->nr_cur_alloc == b->nr_cur_alloc &&
		  a->nr_max_alloc == b->nr_max_alloc &&
		  a->live_bytes == b->live_bytes &&
		  b->nr_chunks <= a->nr_chunks &&
		  b->nr_max_chunks == a->nr_max_chunks &&
		  b->reserved_bytes <= a->reserved_bytes &&
		  b->metadata_bytes <= a->metadata_bytes;
	if (!ok)
		fprintf(stderr, "counters moved: alloc %" PRIu64 "->%" PRIu64
				", dealloc %" PRIu64 "->%" PRIu64 ", live %" PRIu64
				"->%" PRIu64 ", chunks %" PRIu64 "->%" PRIu64
				", reserved %" PRIu64 "->%" PRIu64 ", metadata %"
				PRIu64 "->%" PRIu64 "\n",
			a->nr_alloc, b->nr_alloc, a->nr_dealloc, b->nr_dealloc,
			a->live_bytes, b->live_bytes, a->nr_chunks, b->nr_chunks,
			a->reserved_bytes, b->reserved_bytes, a->metadata_bytes,
			b->metadata_bytes);
	return ok;
}

/* The used indexes (pcpu_for_each_cpu); returns how many. */
static int used_list(int *out, int max)
{
	int n = 0, cpu;
	pcpu_for_each_cpu(cpu)
	{
		if (n < max)
			out[n] = cpu;
		n++;
	}
	return n;
}

static bool mem_zero(const void *p, size_t n)
{
	const unsigned char *b = p;
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		uint64_t w;
		memcpy(&w, b + i, 8);
		if (w)
			return false;
	}
	for (; i < n; i++)
		if (b[i])
			return false;
	return true;
}

/* Every copy (pcpu_for_each_cpu) of [p, p + size) reads zero. */
static bool copies_zero(const void *p, size_t size)
{
	int cpu;
	pcpu_for_each_cpu(cpu)
	{
		if (!mem_zero(pcpu_ptr((const char *)p, cpu), size)) {
			fprintf(stderr, "area %p (%zu bytes): copy of cpu %d "
					"is not zero\n", p, size, cpu);
			return false;
		}
	}
	return true;
}

struct touch_job {
	long *ctr;
	int cpu;
};

static void *toucher(void *arg)
{
	struct touch_job *j = arg;
	pin_self(j->cpu);
	pcpu_add(j->ctr, 1L);
	return NULL;
}

/* Runs an operation on every real CPU so that each is used, from threads
 * (pinning the main thread would take the other CPUs out of the
 * process's affinity, which libpcpu follows). */
static void touch_real_cpus(void)
{
	long *t = pcpu_alloc(sizeof(long), 0);
	REQUIRE(t);
	for (int i = 0; i < nr_real_cpus; i++) {
		struct touch_job j = { t, real_cpus[i] };
		pthread_t th;
		REQUIRE(pthread_create(&th, NULL, toucher, &j) == 0);
		pthread_join(th, NULL);
	}
	CHECK_EQ(pcpu_sum(t), nr_real_cpus);
	pcpu_free(t);
}

/* ---- child processes ---- */

/*
 * A forked child that allocates would start its own balance worker
 * thread; ThreadSanitizer kills a child that creates threads after a fork
 * of a multithreaded process (the parent has the worker), so under TSan
 * forked children run without one.
 */
static void child_no_worker(void)
{
#if PCPU_TEST_TSAN
	setenv("PCPU_BALANCE", "0", 1);
#endif
}

/*
 * In a forked child under valgrind: glibc's cached thread stacks (threads
 * of earlier parts) show up as "possibly lost" DTV blocks at the child's
 * exit, which --leak-check=full counts as errors.  @none: no leak check
 * at all (a child that aborts on purpose); else definite leaks only (an
 * out-of-memory path that leaks still fails the child).
 */
static void child_leak_check(bool none)
{
#ifdef PCPU_TEST_VALGRIND_H
	if (RUNNING_ON_VALGRIND) {
		if (none) {
			VALGRIND_CLO_CHANGE("--leak-check=no");
		} else {
			VALGRIND_CLO_CHANGE("--errors-for-leak-kinds=definite");
			VALGRIND_CLO_CHANGE("--show-possibly-lost=no");
		}
	}
#else
	(void)none;
#endif
}

struct child {
	int status;
	bool timed_out;
	char *out; /* its stderr, NUL-terminated */
	size_t len;
};

/*
 * run_child - with @mode, re-execute this program with argument @mode and
 * the environment additions @env (NAME=VALUE, NULL-terminated; "NAME"
 * alone unsets); without, fork and return fn(arg) as the exit code.
 * Captures the child's stderr and kills it after @timeout_s seconds.
 */
static void run_child(const char *mode, const char *const *env,
		      int (*fn)(void *), void *arg, int timeout_s,
		      struct child *c)
{
	int fds[2];
	memset(c, 0, sizeof(*c));
	REQUIRE(pipe(fds) == 0);
	fflush(NULL);
	pid_t pid = fork();
	REQUIRE(pid >= 0);
	if (pid == 0) {
		close(fds[0]);
		dup2(fds[1], 2);
		close(fds[1]);
		if (mode) {
			exec_self_with_env(self_exe, mode, env);
			fprintf(stderr, "execv %s: %s\n", self_exe,
				strerror(errno));
			_exit(127);
		}
		child_no_worker();
		int rc = fn(arg);
		fflush(NULL);
		_exit(rc);
	}
	close(fds[1]);
	size_t cap = 4096;
	c->out = malloc(cap);
	REQUIRE(c->out);
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		struct pollfd pfd = { .fd = fds[0], .events = POLLIN };
		clock_gettime(CLOCK_MONOTONIC, &t);
		long left = timeout_s * 1000L - ((t.tv_sec - t0.tv_sec) * 1000L +
						 (t.tv_nsec - t0.tv_nsec) / 1000000);
		if (left <= 0) {
			c->timed_out = true;
			kill(pid, SIGKILL);
			break;
		}
		int r = poll(&pfd, 1, (int)(left < 1000 ? left : 1000));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			continue;
		if (c->len + 1024 > cap) {
			cap *= 2;
			c->out = realloc(c->out, cap);
			REQUIRE(c->out);
		}
		ssize_t n = read(fds[0], c->out + c->len, cap - c->len - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		c->len += (size_t)n;
	}
	c->out[c->len] = 0;
	close(fds[0]);
	while (waitpid(pid, &c->status, 0) < 0 && errno == EINTR)
		;
}

static bool child_ok(const struct child *c)
{
	return !c->timed_out && WIFEXITED(c->status) &&
	       WEXITSTATUS(c->status) == 0;
}

/* Shows what a child printed, indented, for the log. */
static void child_echo(const char *name, const struct child *c)
{
	const char *s = c->out;
	while (*s) {
		const char *nl = strchr(s, '\n');
		int n = nl ? (int)(nl - s) : (int)strlen(s);
		fprintf(stderr, "  [%s] %.*s\n", name, n, s);
		s += n + (nl ? 1 : 0);
	}
	if (c->timed_out)
		fprintf(stderr, "  [%s] killed after its time limit\n", name);
	else if (WIFSIGNALED(c->status))
		fprintf(stderr, "  [%s] killed by signal %d\n", name,
			WTERMSIG(c->status));
}

/* ---- a minimal JSON syntax checker ---- */

static const char *js_value(const char *s, int depth);

static const char *js_ws(const char *s)
{
	while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
		s++;
	return s;
}

static const char *js_string(const char *s)
{
	if (*s++ != '"')
		return NULL;
	while (*s && *s != '"') {
		if ((unsigned char)*s < 0x20)
			return NULL;
		if (*s == '\\' && !*++s)
			return NULL;
		s++;
	}
	return *s == '"' ? s + 1 : NULL;
}

static const char *js_number(const char *s)
{
	if (*s == '-')
		s++;
	if (!isdigit((unsigned char)*s))
		return NULL;
	if (*s == '0' && isdigit((unsigned char)s[1]))
		return NULL;
	while (isdigit((unsigned char)*s))
		s++;
	if (*s == '.') {
		s++;
		if (!isdigit((unsigned char)*s))
			return NULL;
		while (isdigit((unsigned char)*s))
			s++;
	}
	if (*s == 'e' || *s == 'E') {
		s++;
		if (*s == '+' || *s == '-')
			s++;
		if (!isdigit((unsigned char)*s))
			return NULL;
		while (isdigit((unsigned char)*s))
			s++;
	}
	return s;
}

static const char *js_container(const char *s, int depth, char open,
				char close)
{
	if (*s++ != open || depth > 32)
		return NULL;
	s = js_ws(s);
	if (*s == close)
		return s + 1;
	for (;;) {
		if (open == '{') {
			s = js_string(s);
			if (!s)
				return NULL;
			s = js_ws(s);
			if (*s++ != ':')
				return NULL;
		}
		s = js_value(js_ws(s), depth + 1);
		if (!s)
			return NULL;
		s = js_ws(s);
		if (*s == close)
			return s + 1;
		if (*s++ != ',')
			return NULL;
		s = js_ws(s);
	}
}

static const char *js_value(const char *s, int depth)
{
	switch (*s) {
	case '{':
		return js_container(s, depth, '{', '}');
	case '[':
		return js_container(s, depth, '[', ']');
	case '"':
		return js_string(s);
	case 't':
		return strncmp(s, "true", 4) ? NULL : s + 4;
	case 'f':
		return strncmp(s, "false", 5) ? NULL : s + 5;
	case 'n':
		return strncmp(s, "null", 4) ? NULL : s + 4;
	default:
		return js_number(s);
	}
}

/* True iff [s, s+len) is one JSON object (blanks around allowed). */
static bool json_object_ok(const char *s, size_t len)
{
	char *copy = strndup(s, len);
	REQUIRE(copy);
	const char *p = js_ws(copy);
	bool ok = *p == '{';
	if (ok) {
		p = js_value(p, 0);
		ok = p && *js_ws(p) == 0;
	}
	free(copy);
	return ok;
}

/* The number after the first "key": in @s, or -1. */
static long long json_get(const char *s, const char *key)
{
	char pat[64];
	snprintf(pat, sizeof(pat), "\"%s\":", key);
	const char *p = strstr(s, pat);
	if (!p)
		return -1;
	return strtoll(p + strlen(pat), NULL, 10);
}

/* Braces and brackets balance (outside strings) and never go negative. */
static bool json_balanced(const char *s)
{
	int brace = 0, bracket = 0;
	bool str = false;
	for (; *s; s++) {
		if (str) {
			if (*s == '\\' && s[1])
				s++;
			else if (*s == '"')
				str = false;
			continue;
		}
		if (*s == '"')
			str = true;
		brace += (*s == '{') - (*s == '}');
		bracket += (*s == '[') - (*s == ']');
		if (brace < 0 || bracket < 0)
			return false;
	}
	return brace == 0 && bracket == 0 && !str;
}

static const char *const stat_keys[] = {
	"nr_cpu_ids", "nr_used_cpus", "backed_bytes", "reserved_bytes",
	"metadata_bytes", "unit_size", "nr_alloc", "nr_dealloc",
	"nr_cur_alloc", "nr_max_alloc", "nr_chunks", "nr_max_chunks",
	"min_alloc_size", "max_alloc_size", "empty_pop_pages", "live_bytes",
	"free_bytes", "sum_frag", "max_frag",
};
#define NR_STAT_KEYS (sizeof(stat_keys) / sizeof(stat_keys[0]))

/* ==================================================================== */
/* 1. Argument errors                                                    */

static int err_calls;
static const char *err_what[64];
static const void *err_ptr[64];

static void record_error(const char *what, const void *ptr, void *arg)
{
	(void)arg;
	if (err_calls < 64) {
		err_what[err_calls] = what;
		err_ptr[err_calls] = ptr;
	}
	err_calls++;
}

static void expect_einval(size_t size, size_t align)
{
	errno = 0;
	void *p = pcpu_alloc(size, align);
	if (p || errno != EINVAL)
		fprintf(stderr, "pcpu_alloc(%zu, %zu) = %p errno %d\n", size,
			align, p, errno);
	CHECK(p == NULL);
	CHECK_EQ(errno, EINVAL);
	if (p)
		pcpu_free(p);
}

static void expect_not_area(const void *p)
{
	errno = 0;
	size_t n = pcpu_alloc_size(p);
	if (n || errno != EINVAL)
		fprintf(stderr, "pcpu_alloc_size(%p) = %zu errno %d\n", p, n,
			errno);
	CHECK_EQ(n, 0);
	CHECK_EQ(errno, EINVAL);
}

static void test_args(void)
{
	struct pcpu_stats s0, s1;
	get_stats(&s0);

	expect_einval(0, 0);
	expect_einval(0, 8);
	expect_einval(umax + 1, 0);
	expect_einval(umax + 1, 4);
	expect_einval(SIZE_MAX, 0);
	expect_einval(SIZE_MAX - 2, 0); /* (size + 3) / 4 must not wrap */
	expect_einval(8, 3);
	expect_einval(8, 6);
	expect_einval(8, 12);
	expect_einval(8, 2 * page);
	expect_einval(8, 4 * page);
	expect_einval(8, SIZE_MAX);
	expect_einval(8, (size_t)1 << 63);
	get_stats(&s1);
	CHECK(counters_same(&s0, &s1));

	/* every power-of-two alignment up to a page, behind a 4-byte
	 * spoiler so that the next free word is misaligned */
	static const size_t sizes[] = { 1, 3, 4, 5, 12, 100, 4097 };
	void *keep[2 * 7 * 14];
	int nk = 0;
	for (size_t a = 1; a <= page; a <<= 1) {
		for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
			if (heavy && PCPU_DEBUG >= 3 && i % 3) /* 1, 5, 4097 */
				continue;
			void *sp = pcpu_alloc(4, 4);
			REQUIRE(sp);
			keep[nk++] = sp;
			void *p = pcpu_alloc(sizes[i], a);
			REQUIRE(p);
			keep[nk++] = p;
			if ((uintptr_t)p % a)
				fprintf(stderr, "pcpu_alloc(%zu, %zu) = %p\n",
					sizes[i], a, p);
			CHECK((uintptr_t)p % a == 0);
			CHECK_EQ(pcpu_alloc_size(p), round4(sizes[i]));
			CHECK(copies_zero(p, round4(sizes[i])));
		}
	}
	/* align 0: the natural alignment for the size, up to 8 */
	static const struct { size_t size, align; } nat[] = {
		{ 1, 1 }, { 2, 2 }, { 3, 4 }, { 4, 4 }, { 5, 8 }, { 7, 8 },
		{ 8, 8 }, { 9, 8 }, { 24, 8 }, { 1000, 8 },
	};
	void *natp[20];
	for (size_t i = 0; i < sizeof(nat) / sizeof(nat[0]); i++) {
		void *sp = pcpu_alloc(4, 4);
		void *p = pcpu_alloc(nat[i].size, 0);
		REQUIRE(sp && p);
		natp[2 * i] = sp;
		natp[2 * i + 1] = p;
		CHECK((uintptr_t)p % nat[i].align == 0);
		CHECK_EQ(pcpu_alloc_size(p), round4(nat[i].size));
	}
	for (size_t i = 0; i < 2 * sizeof(nat) / sizeof(nat[0]); i++)
		pcpu_free(natp[i]);
	for (int i = 0; i < nk; i++)
		pcpu_free(keep[i]);

	/* the largest size, with the largest alignment */
	char *big = pcpu_alloc(umax, page);
	REQUIRE(big);
	CHECK((uintptr_t)big % page == 0);
	CHECK_EQ(pcpu_alloc_size(big), umax);
	pcpu_free(big);
	big = pcpu_alloc(umax - 1, 0);
	REQUIRE(big);
	CHECK_EQ(pcpu_alloc_size(big), umax);

	/* pcpu_alloc_size of what is not a live area */
	int on_stack = 0;
	void *heap = malloc(64);
	REQUIRE(heap);
	char *p = pcpu_alloc(64, 8);
	REQUIRE(p);
	CHECK_EQ(pcpu_alloc_size(p), 64);
	expect_not_area(NULL);
	expect_not_area(&on_stack);
	expect_not_area(heap);
	expect_not_area(p + 4);
	expect_not_area(p + 1);
	expect_not_area(p + 63);
	expect_not_area(big + 8);
	if (pcpu_nr_cpu_ids() > 1) {
		expect_not_area(pcpu_ptr(p, pcpu_nr_cpu_ids() - 1));
		expect_not_area(pcpu_ptr(p, 1));
	}
	pcpu_free(p);
	expect_not_area(p); /* freed */
	pcpu_free(big);
	expect_not_area(big);
	free(heap);

	/* pcpu_free(NULL) is a no-op: no report, no counter moves */
	err_calls = 0;
	pcpu_set_error_handler(record_error, NULL);
	get_stats(&s0);
	pcpu_free(NULL);
	get_stats(&s1);
	CHECK_EQ(err_calls, 0);
	CHECK(counters_same(&s0, &s1));
	pcpu_set_error_handler(NULL, NULL);
	CHECK_EQ(pcpu_validate(), 0);
}

/* ==================================================================== */
/* 2. Zeroing                                                            */

struct zero_job {
	void *p;
	size_t size;
	int cpu;
};

static void *zero_writer(void *arg)
{
	struct zero_job *j = arg;
	pin_self(j->cpu);
	if (j->size >= 8)
		pcpu_write((long *)j->p, 0x5a5a5a5a5a5aL);
	else
		pcpu_write((uint32_t *)j->p, 0x5a5a5a5au);
	pcpu_add((uint32_t *)((char *)j->p + round4(j->size) - 4), 7u);
	pcpu_add((uint32_t *)((char *)j->p + round4(j->size) - 4), 1u);
	return NULL;
}

/* Writes non-zero into every used copy of p: pcpu_ptr on every used
 * index, then pcpu_write/pcpu_add from a thread on each real CPU. */
static void dirty_everywhere(void *p, size_t size)
{
	int cpu;
	pcpu_for_each_cpu(cpu) memset(pcpu_ptr((char *)p, cpu), 0xa5, size);
	pthread_t t[CPU_SETSIZE];
	struct zero_job jobs[CPU_SETSIZE];
	int nt = nr_real_cpus < 64 ? nr_real_cpus : 64;
	for (int i = 0; i < nt; i++) {
		jobs[i] = (struct zero_job){ p, size, real_cpus[i] };
		REQUIRE(pthread_create(&t[i], NULL, zero_writer, &jobs[i]) == 0);
	}
	for (int i = 0; i < nt; i++)
		pthread_join(t[i], NULL);
	bool some = false;
	pcpu_for_each_cpu(cpu) some |= !mem_zero(pcpu_ptr((char *)p, cpu), size);
	CHECK(some);
}

static void test_zeroing(void)
{
	static const size_t sizes[] = { 4, 8, 12, 60, 256, 4000, 4096,
					8196, 65536 };
	const int nsizes = (int)(sizeof(sizes) / sizeof(sizes[0]));
	long rounds = iters(64, 16);
	if (rounds < 2)
		rounds = 2;
	int bad = 0;

	touch_real_cpus();
	/* the same size again and again: mostly the same words come back
	 * (not asserted: two empty chunks may take turns, and the balance
	 * worker may unmap one) */
	long reused = 0, total = 0;
	for (int s = 0; s < nsizes; s++) {
		void *prev = NULL;
		for (long r = 0; r < rounds; r++) {
			void *p = pcpu_alloc(sizes[s], 0);
			REQUIRE(p);
			reused += p == prev;
			total++;
			if (!copies_zero(p, round4(sizes[s])))
				bad++;
			dirty_everywhere(p, round4(sizes[s]));
			pcpu_free(p);
			prev = p;
		}
	}
	fprintf(stderr, "zeroing: %ld of %ld allocations took the address "
			"just freed\n", reused, total);
	/* sizes in turn, page aligned or not: areas straddle old ones */
	for (long r = 0; r < 3 * rounds; r++) {
		size_t size = sizes[r % nsizes] + (size_t)(r % 3);
		void *p = pcpu_alloc(size, r % 2 ? page : 0);
		REQUIRE(p);
		if (!copies_zero(p, round4(size)))
			bad++;
		dirty_everywhere(p, round4(size));
		pcpu_free(p);
	}
	/* a live neighbour keeps its data while its neighbour is zeroed */
	char *a = pcpu_alloc(64, 8), *b = pcpu_alloc(64, 8);
	REQUIRE(a && b);
	int cpu;
	pcpu_for_each_cpu(cpu) memset(pcpu_ptr(a, cpu), 0x11, 64);
	dirty_everywhere(b, 64);
	pcpu_free(b);
	pcpu_for_each_cpu(cpu)
	{
		const unsigned char *q = pcpu_ptr((unsigned char *)a, cpu);
		for (int i = 0; i < 64; i++)
			if (q[i] != 0x11)
				bad++;
	}
	b = pcpu_alloc(64, 8);
	REQUIRE(b);
	if (!copies_zero(b, 64))
		bad++;
	pcpu_free(a);
	pcpu_free(b);
	CHECK_EQ(bad, 0);
	CHECK_EQ(pcpu_validate(), 0);
}

/* ==================================================================== */
/* 3. Invalid and double free                                            */

static void fill(void *p, size_t size, unsigned char v)
{
	int cpu;
	pcpu_for_each_cpu(cpu) memset(pcpu_ptr((char *)p, cpu), v, size);
}

static bool filled(const void *p, size_t size, unsigned char v)
{
	int cpu;
	pcpu_for_each_cpu(cpu)
	{
		const unsigned char *q = pcpu_ptr((const unsigned char *)p, cpu);
		for (size_t i = 0; i < size; i++)
			if (q[i] != v)
				return false;
	}
	return true;
}

static char *abort_target;

static int double_free_child(void *arg)
{
	(void)arg;
	child_leak_check(true);
	pcpu_set_error_handler(NULL, NULL); /* the default: print, abort */
	pcpu_free(abort_target);
	pcpu_free(abort_target);
	fprintf(stderr, "still alive after a double free\n");
	return 3;
}

/*
 * A free whose pages some index in use is not known to hold data on is
 * deferred (chunk.c): the area is freed at once for the caller (its
 * size is gone, a second free is reported) and zeroed and reused after
 * the batch.  Written here on one index only, by pointer: the other
 * indexes' pages hold nothing, so the free waits for the kernel's word.
 */
static void test_deferred(void)
{
	struct pcpu_stats s0, s1;
	int nr = pcpu_nr_cpu_ids();
	pcpu_trim(); /* fresh pages: nothing known about them */
	get_stats(&s0);
	char *p[8];
	for (int i = 0; i < 8; i++) {
		REQUIRE(p[i] = pcpu_alloc(1024, 0)); /* above the classes */
		memset(pcpu_ptr(p[i], 0), 0x5a, 1024);
	}
	pcpu_set_error_handler(record_error, NULL);
	for (int i = 0; i < 8; i++) {
		pcpu_free(p[i]);
		errno = 0;
		CHECK_EQ(pcpu_alloc_size(p[i]), 0);
		CHECK_EQ(errno, EINVAL);
		err_calls = 0;
		pcpu_free(p[i]); /* freed, waiting to be zeroed: reported */
		CHECK_EQ(err_calls, 1);
		CHECK(err_calls >= 1 && !strcmp(err_what[0], "double free"));
	}
	pcpu_set_error_handler(NULL, NULL);
	get_stats(&s1); /* does the deferred frees */
	CHECK(s1.zero_pended > s0.zero_pended); /* some did wait */
	CHECK_EQ(s1.nr_cur_alloc, s0.nr_cur_alloc);
	CHECK_EQ(pcpu_validate(), 0);
	/* the space comes back zero on every index */
	int bad = 0;
	for (int i = 0; i < 8; i++) {
		char *q = pcpu_alloc(1024, 0);
		REQUIRE(q);
		for (int cpu = 0; cpu < nr; cpu++)
			for (int k = 0; k < 1024; k++)
				bad += pcpu_ptr(q, cpu)[k] != 0;
		p[i] = q;
	}
	CHECK_EQ(bad, 0);
	for (int i = 0; i < 8; i++)
		pcpu_free(p[i]);
	CHECK_EQ(pcpu_validate(), 0);
}

static void test_misuse(void)
{
	struct pcpu_stats s0, s1;
	char *a = pcpu_alloc(64, 8), *b = pcpu_alloc(128, 0);
	char *c = pcpu_alloc(32, 0), *d = pcpu_alloc(16, 0);
	REQUIRE(a && b && c && d);
	fill(a, 64, 0xaa);
	fill(b, 128, 0xbb);
	fill(c, 32, 0xcc);
	fill(d, 16, 0xdd);
	pcpu_free(c); /* d follows c */
	get_stats(&s0);

	int on_stack = 0;
	void *heap = malloc(32);
	REQUIRE(heap);
	struct {
		void *p;
		const char *what;
	} bad[] = {
		{ a + 16, "invalid free" },        /* interior */
		{ a + 1, "invalid free" },         /* unaligned */
		{ b + 124, "invalid free" },       /* last word */
		{ &on_stack, "invalid free" },     /* stack */
		{ heap, "invalid free" },          /* malloc */
		{ (char *)a + (size_t)(pcpu_nr_cpu_ids() > 1) * umax,
		  "invalid free" }, /* another index's copy */
		{ c, "double free" },              /* freed, before a live one */
	};
	pcpu_set_error_handler(record_error, NULL);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err_calls = 0;
		pcpu_free(bad[i].p);
		CHECK_EQ(err_calls, 1);
		if (err_calls >= 1) {
			if (strcmp(err_what[0], bad[i].what))
				fprintf(stderr, "free(%p) case %zu: '%s', "
						"expected '%s'\n", bad[i].p, i,
					err_what[0], bad[i].what);
			CHECK(!strcmp(err_what[0], bad[i].what));
			CHECK(err_ptr[0] == bad[i].p);
		}
		CHECK_EQ(pcpu_validate(), 0);
		get_stats(&s1);
		CHECK(counters_same(&s0, &s1));
		CHECK(filled(a, 64, 0xaa));
		CHECK(filled(b, 128, 0xbb));
		CHECK(filled(d, 16, 0xdd));
	}
	/* double free of the last area of the chunk, freed twice more */
	pcpu_free(d);
	get_stats(&s0);
	for (int k = 0; k < 2; k++) {
		err_calls = 0;
		pcpu_free(d);
		CHECK_EQ(err_calls, 1);
		CHECK(err_calls >= 1 && !strcmp(err_what[0], "double free"));
		CHECK(err_calls >= 1 && err_ptr[0] == d);
		get_stats(&s1);
		CHECK(counters_same(&s0, &s1));
	}
	CHECK(filled(a, 64, 0xaa));
	CHECK(filled(b, 128, 0xbb));
	CHECK_EQ(pcpu_validate(), 0);
	/* the handler is not called for valid frees */
	err_calls = 0;
	pcpu_free(a);
	pcpu_free(b);
	CHECK_EQ(err_calls, 0);
	pcpu_set_error_handler(NULL, NULL);
	free(heap);

	/* the default handler prints one line naming the pointer, aborts */
	abort_target = pcpu_alloc(24, 0);
	REQUIRE(abort_target);
	struct child ch;
	run_child(NULL, NULL, double_free_child, NULL, 60, &ch);
	CHECK(!ch.timed_out);
	CHECK(WIFSIGNALED(ch.status) && WTERMSIG(ch.status) == SIGABRT);
	char want[64];
	snprintf(want, sizeof(want), "%p", (void *)abort_target);
	int lines = 0, naming = 0;
	for (char *s = ch.out; *s;) {
		char *nl = strchr(s, '\n');
		size_t n = nl ? (size_t)(nl - s) : strlen(s);
		/* valgrind's own lines start with ==pid== */
		if (strncmp(s, "==", 2)) {
			lines++;
			char *line = strndup(s, n);
			REQUIRE(line);
			naming += strstr(line, want) && strstr(line, "double free");
			free(line);
		}
		s += n + (nl ? 1 : 0);
	}
	CHECK_EQ(lines, 1);
	CHECK_EQ(naming, 1);
	if (lines != 1 || naming != 1)
		child_echo("double free", &ch);
	free(ch.out);
	pcpu_free(abort_target); /* still live here */
	CHECK_EQ(pcpu_validate(), 0);
}

/* ==================================================================== */
/* 4. A reference model on random sequences                              */

struct shadow {
	char *p;
	size_t req, size, align;
	uint32_t tag;
};

static uint32_t pat(uint32_t tag, int cpu, size_t word)
{
	uint32_t x = tag * 0x9e3779b1u ^ (uint32_t)cpu * 0x85ebca77u ^
		     (uint32_t)word * 0xc2b2ae3du;
	x ^= x >> 15;
	x *= 0x2c1b3c6du;
	x ^= x >> 12;
	return x | 1;
}

/* Words the model writes: all of a small area, every 61st of a big one,
 * and always the last. */
static size_t pat_step(size_t words)
{
	return words <= 1024 ? 1 : 61;
}

static void pat_write(const struct shadow *a, const int *cpus, int n)
{
	size_t words = a->size / 4, step = pat_step(words);
	for (int i = 0; i < n; i++) {
		uint32_t *q = pcpu_ptr((uint32_t *)a->p, cpus[i]);
		for (size_t w = 0; w < words; w += step)
			q[w] = pat(a->tag, cpus[i], w);
		q[words - 1] = pat(a->tag, cpus[i], words - 1);
	}
}

static bool pat_ok(const struct shadow *a, const int *cpus, int n)
{
	size_t words = a->size / 4, step = pat_step(words);
	for (int i = 0; i < n; i++) {
		const uint32_t *q = pcpu_ptr((const uint32_t *)a->p, cpus[i]);
		for (size_t w = 0; w < words; w += step)
			if (q[w] != pat(a->tag, cpus[i], w))
				goto bad;
		if (q[words - 1] != pat(a->tag, cpus[i], words - 1))
			goto bad;
		continue;
bad:
		fprintf(stderr, "model: area %p (%zu bytes, tag %u) lost its "
				"data on cpu %d\n", (void *)a->p, a->size,
			a->tag, cpus[i]);
		return false;
	}
	return true;
}

#define MODEL_MAX 400
#define MODEL_MAX_BIG 3

static size_t model_size(uint64_t *rs)
{
	uint64_t r = rng_below(rs, 100);
	if (r < 55)
		return 1 + rng_below(rs, 256);
	if (r < 82)
		return 256 + rng_below(rs, 4096 - 256 + 1);
	if (r < 97 || PCPU_DEBUG >= 3) /* full validation: big areas are slow */
		return 4096 + rng_below(rs, 65536 - 4096 + 1);
	return 65536 + rng_below(rs, umax - 65536 + 1);
}

static size_t model_align(uint64_t *rs)
{
	if (rng_below(rs, 100) < 30)
		return 0;
	int lg = 0;
	while (((size_t)1 << (lg + 1)) <= page)
		lg++;
	return (size_t)1 << rng_below(rs, (uint64_t)lg + 1);
}

static size_t natural_align(size_t size)
{
	size_t a = 1;
	while (a < size && a < 8)
		a <<= 1;
	return a;
}

static void test_model(void)
{
	struct shadow *live = calloc(MODEL_MAX, sizeof(*live));
	int cpus[PCPU_MAX_CPUS + 1];
	uint64_t rs = seed ^ 0x1234;
	struct pcpu_stats base, s;
	int nlive = 0, nbig = 0, errors = 0;
	uint64_t live_bytes = 0;
	uint32_t tag = 0;
	long ops = iters(25000, 8000), every = ops / 8 > 0 ? ops / 8 : 1;
	long nalloc = 0, nfree = 0;

	REQUIRE(live);
	touch_real_cpus();
	int ncpu = used_list(cpus, PCPU_MAX_CPUS + 1);
	if (nr_real_cpus > 1)
		CHECK(ncpu >= 2);
	get_stats(&base);
	fprintf(stderr, "model: seed %#" PRIx64 ", %ld ops, %d used cpus\n",
		seed, ops, ncpu);

	for (long op = 0; op < ops; op++) {
		/* first half grows, second half shrinks */
		int pfree = op < ops / 2 ? 40 : 60;
		bool do_free = nlive == MODEL_MAX ||
			       (nlive > 0 && (long)rng_below(&rs, 100) < pfree);
		if (op >= ops - 1)
			do_free = false;
		if (do_free) {
			int i = (int)rng_below(&rs, (uint64_t)nlive);
			if (!pat_ok(&live[i], cpus, ncpu))
				errors++;
			if (pcpu_alloc_size(live[i].p) != live[i].size)
				errors++;
			pcpu_free(live[i].p);
			live_bytes -= live[i].size;
			nbig -= live[i].size > 65536;
			live[i] = live[--nlive];
			nfree++;
		} else {
			size_t req = model_size(&rs), align = model_align(&rs);
			if (req > 65536 && nbig >= MODEL_MAX_BIG)
				req = 1 + req % 4096;
			errno = 0;
			char *p = pcpu_alloc(req, align);
			if (!p) {
				fprintf(stderr, "model: pcpu_alloc(%zu, %zu) "
						"failed: errno %d\n", req,
					align, errno);
				errors++;
				continue;
			}
			struct shadow a = { p, req, round4(req), align, ++tag };
			size_t want_align = align ? align : natural_align(req);
			if ((uintptr_t)p % want_align) {
				fprintf(stderr, "model: %p not aligned to %zu\n",
					(void *)p, want_align);
				errors++;
			}
			if (pcpu_alloc_size(p) != a.size) {
				fprintf(stderr, "model: pcpu_alloc_size(%p) = "
						"%zu, want %zu\n", (void *)p,
					pcpu_alloc_size(p), a.size);
				errors++;
			}
			for (int i = 0; i < nlive; i++) {
				if (p < live[i].p + live[i].size &&
				    live[i].p < p + a.size) {
					fprintf(stderr, "model: [%p,+%zu) "
							"overlaps [%p,+%zu)\n",
						(void *)p, a.size,
						(void *)live[i].p,
						live[i].size);
					errors++;
				}
			}
			if (!copies_zero(p, a.size))
				errors++;
			pat_write(&a, cpus, ncpu);
			live[nlive++] = a;
			live_bytes += a.size;
			nbig += a.size > 65536;
			nalloc++;
		}
		if ((op + 1) % every == 0 || op == ops - 1) {
			for (int i = 0; i < nlive; i++)
				if (!pat_ok(&live[i], cpus, ncpu))
					errors++;
			get_stats(&s);
			CHECK_EQ(s.nr_cur_alloc, base.nr_cur_alloc + nlive);
			CHECK_EQ(s.live_bytes, base.live_bytes + live_bytes);
			CHECK_EQ(s.nr_alloc, base.nr_alloc + nalloc);
			CHECK_EQ(s.nr_dealloc, base.nr_dealloc + nfree);
			CHECK(s.nr_max_alloc >= s.nr_cur_alloc);
			CHECK_EQ(pcpu_validate(), 0);
		}
	}
	CHECK_EQ(errors, 0);
	while (nlive > 0) {
		if (!pat_ok(&live[nlive - 1], cpus, ncpu))
			errors++;
		pcpu_free(live[--nlive].p);
	}
	CHECK_EQ(errors, 0);
	get_stats(&s);
	CHECK_EQ(s.nr_cur_alloc, base.nr_cur_alloc);
	CHECK_EQ(s.live_bytes, base.live_bytes);
	CHECK_EQ(pcpu_validate(), 0);
	free(live);
}

/* ==================================================================== */
/* 5. Concurrency                                                        */

#define T5_THREADS 4
#define T5_LIVE 24

struct owned {
	const char *lo, *hi;
	int owner;
};

static pthread_mutex_t own_lock = PTHREAD_MUTEX_INITIALIZER;
static struct owned owns[T5_THREADS * T5_LIVE];
static int nr_owns;
static long t5_allocs[T5_THREADS], t5_frees[T5_THREADS];
static long t5_bad[T5_THREADS];

/* Claims [p, p + size) for @owner; false if anyone holds a part of it. */
static bool own_claim(const char *p, size_t size, int owner)
{
	bool ok = true;
	pthread_mutex_lock(&own_lock);
	for (int i = 0; i < nr_owns; i++) {
		if (p < owns[i].hi && owns[i].lo < p + size) {
			fprintf(stderr, "threads: [%p,+%zu) of thread %d "
					"overlaps [%p,%p) of thread %d\n",
				(const void *)p, size, owner,
				(const void *)owns[i].lo,
				(const void *)owns[i].hi, owns[i].owner);
			ok = false;
		}
	}
	if (ok && nr_owns < T5_THREADS * T5_LIVE)
		owns[nr_owns++] = (struct owned){ p, p + size, owner };
	pthread_mutex_unlock(&own_lock);
	return ok;
}

static void own_release(const char *p, int owner)
{
	pthread_mutex_lock(&own_lock);
	for (int i = 0; i < nr_owns; i++) {
		if (owns[i].lo == p && owns[i].owner == owner) {
			owns[i] = owns[--nr_owns];
			break;
		}
	}
	pthread_mutex_unlock(&own_lock);
}

struct t5area {
	char *p;
	size_t size;
	long k;       /* increments of the counter at offset 0 */
	uint32_t tag; /* what pcpu_write stored in the last word */
	bool claimed;
};

static bool t5_verify(const struct t5area *a, int id)
{
	bool ok = pcpu_sum((long *)a->p) == a->k;
	int cpu;
	pcpu_for_each_cpu(cpu)
	{
		uint32_t t = *pcpu_ptr((uint32_t *)(a->p + a->size - 4), cpu);
		ok &= t == 0 || t == a->tag;
	}
	if (!ok) {
		fprintf(stderr, "threads: thread %d area %p (%zu bytes): sum "
				"%ld, want %ld\n", id, (void *)a->p, a->size,
			pcpu_sum((long *)a->p), a->k);
		pcpu_for_each_cpu(cpu)
			fprintf(stderr, "  cpu %d: counter %#lx tail %#x\n", cpu,
				*pcpu_ptr((long *)a->p, cpu),
				*pcpu_ptr((uint32_t *)(a->p + a->size - 4), cpu));
	}
	return ok;
}

static size_t t5_size(uint64_t *rs)
{
	uint64_t r = rng_below(rs, 100);
	if (r < 85) /* the counter (8 bytes) and the tail word apart */
		return 12 + rng_below(rs, 2048);
	if (r < 99 || PCPU_DEBUG >= 3)
		return 2048 + rng_below(rs, 32768);
	return 131072 + rng_below(rs, 393216);
}

static void *t5_worker(void *arg)
{
	int id = (int)(intptr_t)arg;
	uint64_t rs = seed ^ ((uint64_t)id + 1) * 0x9e3779b97f4a7c15ULL;
	struct t5area a[T5_LIVE];
	int n = 0;
	long loops = iters(100000, 10000);

	for (long i = 0; i < loops; i++) {
		if (i % 32 == 0 && nr_real_cpus > 1)
			pin_self(real_cpus[rng_below(&rs, (uint64_t)nr_real_cpus)]);
		uint64_t r = rng_below(&rs, 100);
		if (n < T5_LIVE && (n == 0 || r < 25)) {
			size_t size = t5_size(&rs);
			char *p = pcpu_alloc(size, 8);
			if (!p) {
				fprintf(stderr, "threads: pcpu_alloc(%zu): %s\n",
					size, strerror(errno));
				t5_bad[id]++;
				continue;
			}
			t5_allocs[id]++;
			struct t5area *x = &a[n++];
			*x = (struct t5area){ p, round4(size), 0,
					      (uint32_t)rng(&rs) | 1, false };
			x->claimed = own_claim(p, x->size, id);
			if (!x->claimed)
				t5_bad[id]++;
			if (pcpu_alloc_size(p) != x->size ||
			    pcpu_sum((long *)p) != 0 || !copies_zero(p, 8) ||
			    !copies_zero(p + x->size - 4, 4))
				t5_bad[id]++;
		} else if (r < 45) {
			int j = (int)rng_below(&rs, (uint64_t)n);
			if (!t5_verify(&a[j], id))
				t5_bad[id]++;
			if (a[j].claimed)
				own_release(a[j].p, id);
			pcpu_free(a[j].p);
			t5_frees[id]++;
			a[j] = a[--n];
		} else {
			struct t5area *x = &a[rng_below(&rs, (uint64_t)n)];
			pcpu_add((long *)x->p, 1L);
			x->k++;
			pcpu_write((uint32_t *)(x->p + x->size - 4), x->tag);
			if (r % 8 == 0)
				pcpu_inc((long *)x->p), x->k++;
		}
	}
	while (n > 0) {
		n--;
		if (!t5_verify(&a[n], id))
			t5_bad[id]++;
		if (a[n].claimed)
			own_release(a[n].p, id);
		pcpu_free(a[n].p);
		t5_frees[id]++;
	}
	unpin_self();
	return NULL;
}

static void test_threads(void)
{
	struct pcpu_stats base, s;
	pthread_t t[T5_THREADS];
	get_stats(&base);
	for (intptr_t i = 0; i < T5_THREADS; i++)
		REQUIRE(pthread_create(&t[i], NULL, t5_worker, (void *)i) == 0);
	long allocs = 0, frees = 0, bad = 0;
	for (int i = 0; i < T5_THREADS; i++) {
		pthread_join(t[i], NULL);
		allocs += t5_allocs[i];
		frees += t5_frees[i];
		bad += t5_bad[i];
	}
	CHECK_EQ(bad, 0);
	CHECK_EQ(allocs, frees);
	CHECK_EQ(nr_owns, 0);
	get_stats(&s);
	CHECK_EQ(s.nr_alloc - base.nr_alloc, allocs);
	CHECK_EQ(s.nr_dealloc - base.nr_dealloc, frees);
	CHECK_EQ(s.nr_cur_alloc, base.nr_cur_alloc);
	CHECK_EQ(s.live_bytes, base.live_bytes);
	CHECK(s.nr_max_alloc >= base.nr_cur_alloc);
	CHECK_EQ(pcpu_validate(), 0);
	fprintf(stderr, "threads: %d threads, %ld allocations\n", T5_THREADS,
		allocs);
}

/* ==================================================================== */
/* 6. A simulated 1024-CPU machine (child "sim1024")                     */

struct sim_job {
	int cpu;
	int order;  /* the first operations run one thread after another */
	long *warm;
	char **areas;
	size_t n, areasz;
	int reps;
	bool add;   /* pcpu_add cpu + 1, else pcpu_write value(cpu, i) */
	int index;  /* out: the index its operations used */
};

static pthread_mutex_t warm_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t warm_cond = PTHREAD_COND_INITIALIZER;
static int warm_turn;

static long sim_value(int cpu, size_t i)
{
	return (long)cpu * 1000003L + (long)i;
}

static void *sim_writer(void *arg)
{
	struct sim_job *j = arg;
	CHECK_EQ(pcpu_sim_set_cpu(j->cpu), 0);
	/*
	 * The first operation brings the CPU's index into use; one thread
	 * at a time, so that the used indexes come in a known order.  An
	 * offline CPU's operations use its own copies too.
	 */
	pthread_mutex_lock(&warm_lock);
	while (warm_turn != j->order)
		pthread_cond_wait(&warm_cond, &warm_lock);
	pcpu_add(j->warm, 1L);
	j->index = pcpu_this_cpu();
	warm_turn++;
	pthread_cond_broadcast(&warm_cond);
	pthread_mutex_unlock(&warm_lock);
	CHECK_EQ(j->index, j->cpu);

	for (int r = 0; r < j->reps; r++)
		for (size_t i = 0; i < j->n; i++)
			for (size_t off = 0; off < j->areasz; off += 512) {
				long *q = (long *)(j->areas[i] + off);
				if (j->add)
					pcpu_add(q, (long)j->cpu + 1);
				else
					pcpu_write(q, sim_value(j->cpu, i));
			}
	CHECK_EQ(pcpu_this_cpu(), j->index);
	CHECK_EQ(pcpu_sim_set_cpu(-1), 0);
	return NULL;
}

/* Threads acting as @cpus write the areas; @index gets the index each
 * one's operations used. */
static void sim_run(const int *cpus, int ncpus, char **areas, size_t n,
		    size_t areasz, int reps, bool add, int *index)
{
	pthread_t t[16];
	struct sim_job j[16];
	REQUIRE(ncpus <= 16);
	long *warm = pcpu_alloc(sizeof(long), 0);
	REQUIRE(warm);
	warm_turn = 0;
	for (int i = 0; i < ncpus; i++) {
		j[i] = (struct sim_job){ cpus[i], i, warm, areas, n, areasz,
					 reps, add, -1 };
		REQUIRE(pthread_create(&t[i], NULL, sim_writer, &j[i]) == 0);
	}
	for (int i = 0; i < ncpus; i++) {
		pthread_join(t[i], NULL);
		if (index)
			index[i] = j[i].index;
	}
	CHECK_EQ(pcpu_sum(warm), ncpus);
	pcpu_free(warm);
}

static int cmp_uptr(const void *a, const void *b)
{
	uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
	return x < y ? -1 : x > y;
}

/* Sorted distinct page numbers (of CPU 0's layout) of the areas. */
static size_t area_pages(char **areas, size_t n, size_t areasz,
			 uintptr_t **out)
{
	size_t per = (areasz + page - 1) / page + 1, k = 0;
	uintptr_t *pg = malloc(n * per * sizeof(*pg));
	REQUIRE(pg);
	for (size_t i = 0; i < n; i++)
		for (uintptr_t q = (uintptr_t)areas[i] / page;
		     q <= ((uintptr_t)areas[i] + areasz - 1) / page; q++)
			pg[k++] = q;
	qsort(pg, k, sizeof(*pg), cmp_uptr);
	size_t d = 0;
	for (size_t i = 0; i < k; i++)
		if (!d || pg[d - 1] != pg[i])
			pg[d++] = pg[i];
	*out = pg;
	return d;
}

static size_t pages_union(const uintptr_t *a, size_t na, const uintptr_t *b,
			  size_t nb)
{
	size_t i = 0, j = 0, n = 0;
	while (i < na || j < nb) {
		if (j == nb || (i < na && a[i] < b[j]))
			i++;
		else if (i == na || b[j] < a[i])
			j++;
		else
			i++, j++;
		n++;
	}
	return n;
}

/* backed must be at least the ideal and at most 1.25x it plus 4 pages. */
static bool backed_near(uint64_t backed, uint64_t ideal, const char *when)
{
	bool ok = backed >= ideal && backed <= ideal + ideal / 4 + 4 * page;
	fprintf(stderr, "sim: %s: backed %" PRIu64 " KiB, ideal %" PRIu64
			" KiB%s\n", when, backed / 1024, ideal / 1024,
		ok ? "" : "  <-- out of [1x, 1.25x + 4 pages]");
	return ok;
}

static int child_sim(void)
{
	struct pcpu_stats s;
	int cpus[PCPU_MAX_CPUS + 1];

	CHECK_EQ(pcpu_nr_cpu_ids(), 1024);
	CHECK(pcpu_path() == PCPU_PATH_ATOMIC);
	get_stats(&s);
	CHECK_EQ(s.nr_cpu_ids, 1024);
	CHECK_EQ(s.nr_used_cpus, 0);
	CHECK_EQ(s.backed_bytes, 0);

	/*
	 * A: 1 MiB worth of areas written on CPUs 3 and 900 only.  900 is
	 * offline (PCPU_SIM_ONLINE=0-15): its operations use its own copies
	 * all the same; x900 is the index they used (900).
	 */
	size_t areasz = heavy ? (PCPU_DEBUG >= 3 ? 16384 : 512) : 8;
	size_t n = umax / areasz;
	char **areas = malloc(n * sizeof(*areas));
	REQUIRE(areas);
	for (size_t i = 0; i < n; i++) {
		areas[i] = pcpu_alloc(areasz, 0);
		REQUIRE(areas[i]);
	}
	get_stats(&s);
	CHECK_EQ(s.backed_bytes, 0); /* nothing written yet */
	CHECK_EQ(s.reserved_bytes, s.nr_chunks * 1024 * umax);
	const int cpus_a[2] = { 3, 900 };
	int idx_a[2];
	sim_run(cpus_a, 2, areas, n, areasz, 1, false, idx_a);
	int x900 = idx_a[1];
	fprintf(stderr, "sim: cpu 900 (offline) used index %d\n", x900);
	int nu = used_list(cpus, PCPU_MAX_CPUS + 1);
	CHECK_EQ(nu, 2);
	CHECK(nu == 2 && cpus[0] == 3 && cpus[1] == x900);
	long bad = 0;
	for (size_t i = 0; i < n; i++)
		bad += pcpu_sum((long *)areas[i]) !=
		       sim_value(3, i) + sim_value(900, i);
	CHECK_EQ(bad, 0);
	uintptr_t *pa;
	size_t npa = area_pages(areas, n, areasz, &pa);
	get_stats(&s);
	CHECK_EQ(s.nr_used_cpus, 2);
	CHECK(backed_near(s.backed_bytes, 2 * npa * page,
			  "1 MiB of areas written on cpus 3 and 900"));
	uint64_t backed_a = s.backed_bytes;
	for (size_t i = 0; i < n; i++)
		pcpu_free(areas[i]);
	get_stats(&s);
	CHECK_EQ(s.nr_used_cpus, 2);
	CHECK_EQ(s.nr_cur_alloc, 0);
	CHECK(backed_near(s.backed_bytes, backed_a, "after freeing them"));
	CHECK_EQ(pcpu_validate(), 0);

	/* B: threads acting as CPUs 0..15 add to counters */
	size_t nb = heavy ? (PCPU_DEBUG >= 3 ? 64 : 1024) : 4096;
	int reps = heavy ? 2 : 4;
	char **ctr = malloc(nb * sizeof(*ctr));
	REQUIRE(ctr);
	for (size_t i = 0; i < nb; i++) {
		ctr[i] = pcpu_alloc(sizeof(long), 0);
		REQUIRE(ctr[i]);
		CHECK(i % 512 || copies_zero(ctr[i], 8));
	}
	int cpus_b[16];
	for (int i = 0; i < 16; i++)
		cpus_b[i] = i;
	sim_run(cpus_b, 16, ctr, nb, 8, reps, true, NULL);
	bad = 0;
	for (size_t i = 0; i < nb; i++)
		bad += pcpu_sum((long *)ctr[i]) != (long)reps * 136;
	CHECK_EQ(bad, 0);
	/* used: 0..15 and x900 */
	nu = used_list(cpus, PCPU_MAX_CPUS + 1);
	CHECK_EQ(nu, 17);
	bool set_ok = nu == 17 && cpus[16] == x900;
	for (int i = 0; i < 16 && i < nu; i++)
		set_ok &= cpus[i] == i;
	CHECK(set_ok);
	uintptr_t *pb;
	size_t npb = area_pages(ctr, nb, 8, &pb);
	/* CPU 3: A's and B's pages; x900: A's; the 15 others: B's */
	uint64_t ideal = (pages_union(pa, npa, pb, npb) + npa + 15 * npb) * page;
	get_stats(&s);
	CHECK_EQ(s.nr_used_cpus, 17);
	CHECK(backed_near(s.backed_bytes, ideal,
			  "counters written on cpus 0-15"));
	for (size_t i = 0; i < nb; i++)
		pcpu_free(ctr[i]);
	get_stats(&s);
	CHECK_EQ(s.nr_used_cpus, 17); /* free zeroes only used CPUs */
#if PCPU_DEBUG >= 2
	fprintf(stderr, "sim: PCPU_DEBUG >= 2: the validator reads every "
			"used copy, backed bytes not checked after frees\n");
#else
	CHECK(backed_near(s.backed_bytes, ideal, "after freeing them"));
#endif

	/*
	 * C: an area that CPUs 0..15 never wrote, written as CPU 900 (on
	 * x900, whose pages A backed): summing and freeing it must not make
	 * the copies of CPUs 0..15 count as backed (they are only read, and
	 * read as zero).
	 */
	get_stats(&s);
	uint64_t before = s.backed_bytes;
	(void)before;
	size_t csz = umax / 2;
	char *c = pcpu_alloc(csz, page);
	REQUIRE(c);
	const int cpus_c[1] = { 900 };
	sim_run(cpus_c, 1, &c, 1, csz, 1, false, NULL);
	CHECK_EQ(pcpu_sum((long *)c), sim_value(900, 0));
	pcpu_free(c);
	get_stats(&s);
	CHECK_EQ(s.nr_used_cpus, 17);
#if PCPU_DEBUG < 2
	CHECK(backed_near(s.backed_bytes, before,
			  "an area written only as cpu 900, summed and freed"));
#endif
	CHECK_EQ(pcpu_validate(), 0);
	free(pa);
	free(pb);
	free(areas);
	free(ctr);
	return 0;
}

static void test_sim(void)
{
	/* no balance worker: it would release empty pages while backed
	 * bytes are measured */
	static const char *const env[] = { "PCPU_SIM_POSSIBLE=1024",
					   "PCPU_SIM_ONLINE=0-15", "PCPU_INDEX",
					   "PCPU_FAULT", "PCPU_STATS",
					   "PCPU_BALANCE=0", NULL };
	struct child c;
	run_child("sim1024", env, NULL, NULL, 240, &c);
	child_echo("sim1024", &c);
	CHECK(child_ok(&c));
	free(c.out);
}

/* ==================================================================== */
/* 7. Out of memory                                                      */

struct oom_result {
	long mmaps;  /* mmap calls the workload made */
	int fails;   /* allocations that failed (and were retried) */
};

static struct oom_result *oom_shared; /* MAP_SHARED: children write it */
static long oom_fail_at;

/* A fixed workload that needs new chunks (see test_oom); with
 * oom_fail_at, the oom_fail_at-th mmap fails. */
static int oom_workload(void *arg)
{
	(void)arg;
	child_leak_check(false);
	/* exact mmap counts: no balance worker in this child (it would
	 * unmap spare chunks or reserve one between the allocations) */
	setenv("PCPU_BALANCE", "0", 1);
	const size_t sizes[] = { umax, 64, umax, 4096, umax / 2,
				 umax / 2 + 4, 8, umax, 100, umax * 3 / 4,
				 umax / 4 + 4, umax, 12, umax };
	/* heavy or valgrind: the first five (validation time grows with
	 * the chunks) */
	const int N = heavy || scale > 1
			      ? 5
			      : (int)(sizeof(sizes) / sizeof(sizes[0]));
	void *p[sizeof(sizes) / sizeof(sizes[0])];
	struct pcpu_stats base, s0, s1;
	long before = atomic_load(&check__failed);
	int fails = 0;

	get_stats(&base);
	long c0 = _pcpu_os_calls(PCPU_OS_MMAP);
	if (oom_fail_at)
		_pcpu_os_fault_set(PCPU_OS_MMAP, oom_fail_at);
	for (int i = 0; i < N; i++) {
		get_stats(&s0);
		errno = 0;
		p[i] = pcpu_alloc(sizes[i], 0);
		if (!p[i]) {
			fails++;
			CHECK_EQ(errno, ENOMEM);
			get_stats(&s1);
			CHECK(counters_same(&s0, &s1));
			CHECK_EQ(pcpu_validate(), 0);
			p[i] = pcpu_alloc(sizes[i], 0);
			CHECK(p[i] != NULL);
			if (!p[i])
				return 1;
		}
		pcpu_add((long *)p[i], (long)i + 1);
	}
	for (int i = 0; i < N; i++) {
		CHECK_EQ(pcpu_sum((long *)p[i]), i + 1);
		CHECK_EQ(pcpu_alloc_size(p[i]), round4(sizes[i]));
		pcpu_free(p[i]);
	}
	_pcpu_os_fault_set(PCPU_OS_MMAP, 0);
	get_stats(&s1);
	CHECK_EQ(s1.nr_cur_alloc, base.nr_cur_alloc);
	CHECK_EQ(s1.live_bytes, base.live_bytes);
	CHECK_EQ(s1.nr_alloc, base.nr_alloc + N); /* failures do not count */
	CHECK_EQ(s1.nr_dealloc, base.nr_dealloc + N);
	if (!fails) /* else validated right after the failure */
		CHECK_EQ(pcpu_validate(), 0);
#ifdef PCPU_TEST_LSAN
	/* the child leaves with _exit: look for leaks now */
	CHECK_EQ(__lsan_do_recoverable_leak_check(), 0);
#endif
	oom_shared->mmaps = _pcpu_os_calls(PCPU_OS_MMAP) - c0;
	oom_shared->fails = fails;
	return atomic_load(&check__failed) != before;
}

static void test_oom(void)
{
	struct pcpu_stats s0, s1;
	void *held[256];
	int nh = 0;

	/* a small area first, so that its chunk keeps room for another */
	void *small = pcpu_alloc(16, 0);
	REQUIRE(small);
	/* take every chunk that can still hold a whole unit */
	for (;;) {
		long c0 = _pcpu_os_calls(PCPU_OS_MMAP);
		void *p = pcpu_alloc(umax, 0);
		REQUIRE(p);
		held[nh++] = p;
		if (_pcpu_os_calls(PCPU_OS_MMAP) > c0)
			break;
		REQUIRE(nh < 255);
	}

	/* an allocation served from an existing chunk does not call mmap */
	long c0 = _pcpu_os_calls(PCPU_OS_MMAP);
	_pcpu_os_fault_set(PCPU_OS_MMAP, 1);
	void *small2 = pcpu_alloc(16, 0);
	CHECK(small2 != NULL);
	CHECK_EQ(_pcpu_os_calls(PCPU_OS_MMAP), c0);
	_pcpu_os_fault_set(PCPU_OS_MMAP, 0);

	/* the next whole unit needs a new chunk: make its mmap fail */
	get_stats(&s0);
	_pcpu_os_fault_set(PCPU_OS_MMAP, 1);
	errno = 0;
	void *p = pcpu_alloc(umax, 0);
	CHECK(p == NULL);
	CHECK_EQ(errno, ENOMEM);
	CHECK_EQ(_pcpu_os_calls(PCPU_OS_MMAP), c0 + 1);
	get_stats(&s1);
	CHECK(counters_same(&s0, &s1));
	CHECK_EQ(s1.nr_max_chunks, s0.nr_max_chunks);
	CHECK_EQ(pcpu_validate(), 0);
	/* the fault is spent: the next allocation succeeds */
	p = pcpu_alloc(umax, 0);
	CHECK(p != NULL);
	CHECK_EQ(_pcpu_os_calls(PCPU_OS_MMAP), c0 + 2);
	get_stats(&s1);
	CHECK_EQ(s1.nr_chunks, s0.nr_chunks + 1);
	if (p)
		held[nh++] = p; /* no chunk stays empty for the sweep */
	pcpu_free(small2);

	/* the sweep: make each mmap of a workload fail in turn, each from
	 * the same state (a fork) */
	oom_shared = mmap(NULL, sizeof(*oom_shared), PROT_READ | PROT_WRITE,
			  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	REQUIRE(oom_shared != MAP_FAILED);
	struct child c;
	oom_fail_at = 0;
	oom_shared->mmaps = -1;
	run_child(NULL, NULL, oom_workload, NULL, 120, &c);
	if (!child_ok(&c))
		child_echo("oom dry run", &c);
	CHECK(child_ok(&c));
	free(c.out);
	long m = oom_shared->mmaps;
	CHECK(m >= (heavy || scale > 1 ? 2 : 5)); /* whole units: new chunks */
	CHECK_EQ(oom_shared->fails, 0);
	for (long n = 1; n <= m + 1; n++) {
		oom_fail_at = n;
		oom_shared->mmaps = -1;
		oom_shared->fails = -1;
		run_child(NULL, NULL, oom_workload, NULL, 120, &c);
		if (!child_ok(&c)) {
			char name[32];
			snprintf(name, sizeof(name), "oom at mmap %ld", n);
			child_echo(name, &c);
		}
		CHECK(child_ok(&c));
		/* n <= m: one allocation fails, its retry makes one more
		 * call; n == m + 1: the fault is never reached */
		CHECK_EQ(oom_shared->fails, n <= m ? 1 : 0);
		CHECK_EQ(oom_shared->mmaps, n <= m ? m + 1 : m);
		free(c.out);
	}
	fprintf(stderr, "oom: swept %ld mmap calls\n", m);
	munmap(oom_shared, sizeof(*oom_shared));
	for (int i = 0; i < nh; i++)
		pcpu_free(held[i]);
	pcpu_free(small);
	CHECK_EQ(pcpu_validate(), 0);
}

/*
 * The oom sweep counts mmap calls exactly, and every forked workload must
 * start from the same chunks: it runs in a process of its own without a
 * balance worker (which would unmap spare chunks between the forks).
 */
static void test_oom_child(void)
{
	static const char *const env[] = { "PCPU_BALANCE=0", NULL };
	struct child c;
	run_child("oom", env, NULL, NULL, 600, &c);
	child_echo("oom", &c);
	CHECK(child_ok(&c));
	free(c.out);
}

/* ==================================================================== */
/* 8. Statistics (child "stats", fresh counters)                         */

static char *print_to_string(int flags, int *ret)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	REQUIRE(f);
	*ret = pcpu_stats_print(f, flags);
	fclose(f);
	REQUIRE(buf);
	return buf;
}

/* The number after "  name" in the text output, or -1. */
static long long text_get(const char *s, const char *name)
{
	char pat[64];
	snprintf(pat, sizeof(pat), "\n  %s ", name);
	const char *p = strstr(s, pat);
	return p ? strtoll(p + strlen(pat), NULL, 10) : -1;
}

static int count_str(const char *s, const char *needle)
{
	int n = 0;
	for (const char *p = s; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

static void check_output(void)
{
	struct pcpu_stats st;
	int ret;
	get_stats(&st);

	char *txt = print_to_string(0, &ret);
	CHECK_EQ(ret, 0);
	char head[96];
	snprintf(head, sizeof(head), "libpcpu stats: nr_cpu_ids %d, used cpus %d\n",
		 st.nr_cpu_ids, st.nr_used_cpus);
	CHECK(!strncmp(txt, head, strlen(head)));
	for (size_t i = 2; i < NR_STAT_KEYS; i++)
		CHECK(text_get(txt, stat_keys[i]) >= 0);
	CHECK_EQ(text_get(txt, "nr_alloc"), st.nr_alloc);
	CHECK_EQ(text_get(txt, "nr_cur_alloc"), st.nr_cur_alloc);
	CHECK_EQ(text_get(txt, "live_bytes"), st.live_bytes);
	CHECK_EQ(text_get(txt, "nr_chunks"), st.nr_chunks);
	CHECK(strstr(txt, "  chunk ") == NULL);
	free(txt);

	txt = print_to_string(PCPU_STATS_CHUNKS, &ret);
	CHECK_EQ(ret, 0);
	CHECK_EQ(count_str(txt, "\n  chunk 0x"), st.nr_chunks);
	CHECK_EQ(count_str(txt, " contig_bytes="), st.nr_chunks);
	free(txt);

	char *js = print_to_string(PCPU_STATS_JSON, &ret);
	CHECK_EQ(ret, 0);
	CHECK(json_object_ok(js, strlen(js)));
	CHECK(json_balanced(js));
	CHECK(strstr(js, "\"chunks\"") == NULL);
	free(js);

	js = print_to_string(PCPU_STATS_JSON | PCPU_STATS_CHUNKS, &ret);
	CHECK_EQ(ret, 0);
	if (!json_object_ok(js, strlen(js)))
		fprintf(stderr, "not one JSON object: %s\n", js);
	CHECK(json_object_ok(js, strlen(js)));
	CHECK(json_balanced(js));
	CHECK(js[0] == '{' && js[strlen(js) - 1] == '\n' &&
	      js[strlen(js) - 2] == '}');
	for (size_t i = 0; i < NR_STAT_KEYS; i++) {
		if (json_get(js, stat_keys[i]) < 0)
			fprintf(stderr, "JSON lacks \"%s\"\n", stat_keys[i]);
		CHECK(json_get(js, stat_keys[i]) >= 0);
	}
	CHECK_EQ(json_get(js, "nr_cpu_ids"), st.nr_cpu_ids);
	CHECK_EQ(json_get(js, "nr_alloc"), st.nr_alloc);
	CHECK_EQ(json_get(js, "nr_dealloc"), st.nr_dealloc);
	CHECK_EQ(json_get(js, "nr_cur_alloc"), st.nr_cur_alloc);
	CHECK_EQ(json_get(js, "min_alloc_size"), st.min_alloc_size);
	CHECK_EQ(json_get(js, "max_alloc_size"), st.max_alloc_size);
	CHECK_EQ(json_get(js, "live_bytes"), st.live_bytes);
	const char *arr = strstr(js, "\"chunks\":[");
	CHECK(arr != NULL);
	if (arr)
		CHECK_EQ(count_str(arr, "{\"base\":"), st.nr_chunks);
	free(js);

	/* a write error is reported */
	FILE *ro = fopen("/dev/null", "r");
	REQUIRE(ro);
	CHECK(pcpu_stats_print(ro, 0) < 0);
	fclose(ro);
}

static int child_stats(void)
{
	struct pcpu_stats s;
	struct pcpu_chunk_stats cs[4];
	size_t reserved = (size_t)pcpu_nr_cpu_ids() * umax;

	get_stats(&s);
	CHECK_EQ(s.nr_alloc, 0);
	CHECK_EQ(s.nr_dealloc, 0);
	CHECK_EQ(s.nr_cur_alloc, 0);
	CHECK_EQ(s.nr_max_alloc, 0);
	CHECK_EQ(s.nr_chunks, 0);
	CHECK_EQ(s.nr_max_chunks, 0);
	CHECK_EQ(s.min_alloc_size, 0);
	CHECK_EQ(s.max_alloc_size, 0);
	CHECK_EQ(s.live_bytes, 0);
	CHECK_EQ(s.free_bytes, 0);
	CHECK_EQ(s.reserved_bytes, 0);
	CHECK_EQ(s.backed_bytes, 0);
	CHECK_EQ(s.unit_size, umax);
	CHECK_EQ(s.nr_cpu_ids, pcpu_nr_cpu_ids());
	CHECK_EQ(pcpu_stats_chunks(NULL, 0), 0);

	/* three areas, first fit from the start of a new chunk */
	char *a = pcpu_alloc(6, 0), *b = pcpu_alloc(8, 0), *c = pcpu_alloc(8, 0);
	REQUIRE(a && b && c);
	CHECK(b == a + 8 && c == a + 16);
	get_stats(&s);
	CHECK_EQ(s.nr_alloc, 3);
	CHECK_EQ(s.nr_dealloc, 0);
	CHECK_EQ(s.nr_cur_alloc, 3);
	CHECK_EQ(s.nr_max_alloc, 3);
	CHECK_EQ(s.min_alloc_size, 8);
	CHECK_EQ(s.max_alloc_size, 8);
	CHECK_EQ(s.nr_chunks, 1);
	CHECK_EQ(s.nr_max_chunks, 1);
	CHECK_EQ(s.live_bytes, 24);
	CHECK_EQ(s.free_bytes, umax - 24);
	CHECK_EQ(s.reserved_bytes, reserved);
	CHECK_EQ(s.sum_frag, 0);
	CHECK_EQ(s.empty_pop_pages, 0);
	CHECK_EQ(s.backed_bytes, 0);

	/* a hole */
	pcpu_free(b);
	get_stats(&s);
	CHECK_EQ(s.nr_alloc, 3);
	CHECK_EQ(s.nr_dealloc, 1);
	CHECK_EQ(s.nr_cur_alloc, 2);
	CHECK_EQ(s.nr_max_alloc, 3);
	CHECK_EQ(s.live_bytes, 16);
	CHECK_EQ(s.free_bytes, umax - 16);
	CHECK_EQ(s.sum_frag, 8);
	CHECK_EQ(s.max_frag, 8);
	CHECK_EQ(pcpu_stats_chunks(cs, 4), 1);
	CHECK(cs[0].base == a);
	CHECK_EQ(cs[0].nr_alloc, 2);
	CHECK_EQ(cs[0].free_bytes, umax - 16);
	CHECK_EQ(cs[0].contig_bytes, umax - 24);
	CHECK_EQ(cs[0].sum_frag, 8);
	CHECK_EQ(cs[0].max_frag, 8);

	/* a page-aligned page, a 2-byte area into the hole, a whole unit */
	char *d = pcpu_alloc(4096, 4096), *e = pcpu_alloc(2, 0);
	REQUIRE(d && e);
	CHECK(e == b);
	get_stats(&s);
	CHECK_EQ(s.nr_alloc, 5);
	CHECK_EQ(s.nr_cur_alloc, 4);
	CHECK_EQ(s.nr_max_alloc, 4);
	CHECK_EQ(s.min_alloc_size, 4);
	CHECK_EQ(s.max_alloc_size, 4096);
	CHECK_EQ(s.live_bytes, 8 + 8 + 4096 + 4);
	char *f = pcpu_alloc(umax, 0);
	REQUIRE(f);
	get_stats(&s);
	CHECK_EQ(s.nr_chunks, 2);
	CHECK_EQ(s.nr_max_chunks, 2);
	CHECK_EQ(s.reserved_bytes, 2 * reserved);
	CHECK_EQ(s.max_alloc_size, umax);
	CHECK_EQ(s.nr_cur_alloc, 5);
	CHECK_EQ(s.nr_max_alloc, 5);
	CHECK_EQ(s.live_bytes, 8 + 8 + 4096 + 4 + umax);
	CHECK_EQ(s.free_bytes, 2 * umax - s.live_bytes);
	CHECK_EQ(pcpu_stats_chunks(NULL, 0), 2);
	check_output();

	pcpu_free(f);
	pcpu_free(d);
	get_stats(&s);
	CHECK_EQ(s.nr_alloc, 6);
	CHECK_EQ(s.nr_dealloc, 3);
	CHECK_EQ(s.nr_cur_alloc, 3);
	CHECK_EQ(s.nr_max_alloc, 5);
	CHECK_EQ(s.min_alloc_size, 4);
	CHECK_EQ(s.max_alloc_size, umax);
	CHECK_EQ(s.live_bytes, 8 + 8 + 4);
	CHECK_EQ(s.nr_max_chunks, 2);
	CHECK(s.nr_chunks >= 1 && s.nr_chunks <= 2);
	size_t nc = pcpu_stats_chunks(cs, 4);
	CHECK_EQ(nc, s.nr_chunks);
	uint64_t nalloc = 0, fr = 0;
	for (size_t i = 0; i < nc && i < 4; i++) {
		nalloc += cs[i].nr_alloc;
		fr += cs[i].free_bytes;
		if (cs[i].base == a) /* page 1 held d: touched, now empty */
			CHECK_EQ(cs[i].empty_pop_pages, 1);
	}
	CHECK_EQ(nalloc, 3);
	CHECK_EQ(fr, s.free_bytes);
	check_output();
	CHECK_EQ(pcpu_validate(), 0);
	/* a, c, e stay live: PCPU_STATS=json prints nr_cur_alloc 3 at exit */
	return 0;
}

static int child_exitstats(void)
{
	void *p = pcpu_alloc(40, 0), *q = pcpu_alloc(8, 0);
	REQUIRE(p && q);
	pcpu_free(q);
	return 0;
}

/* The last line of @s that starts with @prefix, or NULL. */
static char *last_line(const char *s, const char *prefix, size_t *len)
{
	const char *found = NULL;
	for (const char *p = s; *p;) {
		const char *nl = strchr(p, '\n');
		if (!strncmp(p, prefix, strlen(prefix))) {
			found = p;
			*len = nl ? (size_t)(nl - p) : strlen(p);
		}
		if (!nl)
			break;
		p = nl + 1;
	}
	return (char *)found;
}

static void test_stats(void)
{
	/* no balance worker: exact page and chunk counts */
	static const char *const env_json[] = { "PCPU_STATS=json",
						"PCPU_SIM_POSSIBLE",
						"PCPU_FAULT", "PCPU_BALANCE=0",
						"PCPU_CACHE=none", NULL };
	static const char *const env_text[] = { "PCPU_STATS=1", NULL };
	static const char *const env_off[] = { "PCPU_STATS=0", NULL };
	struct child c;

	run_child("stats", env_json, NULL, NULL, 120, &c);
	child_echo("stats", &c);
	CHECK(child_ok(&c));
	size_t len = 0;
	char *js = last_line(c.out, "{", &len);
	CHECK(js != NULL);
	if (js) {
		char *line = strndup(js, len);
		REQUIRE(line);
		CHECK(json_object_ok(line, len));
		CHECK(json_balanced(line));
		for (size_t i = 0; i < NR_STAT_KEYS; i++)
			CHECK(json_get(line, stat_keys[i]) >= 0);
		CHECK_EQ(json_get(line, "nr_alloc"), 6);
		CHECK_EQ(json_get(line, "nr_dealloc"), 3);
		CHECK_EQ(json_get(line, "nr_cur_alloc"), 3);
		CHECK_EQ(json_get(line, "live_bytes"), 20);
		free(line);
	}
	free(c.out);

	run_child("exitstats", env_text, NULL, NULL, 60, &c);
	CHECK(child_ok(&c));
	CHECK(strstr(c.out, "libpcpu stats: nr_cpu_ids") != NULL);
	CHECK_EQ(text_get(c.out, "nr_cur_alloc"), 1);
	CHECK_EQ(text_get(c.out, "nr_alloc"), 2);
	if (!child_ok(&c) || !strstr(c.out, "libpcpu stats:"))
		child_echo("exitstats", &c);
	free(c.out);

	run_child("exitstats", env_off, NULL, NULL, 60, &c);
	CHECK(child_ok(&c));
	CHECK(strstr(c.out, "libpcpu stats") == NULL);
	free(c.out);
}

/* ==================================================================== */

/* After each part: how many chunks the process has. */
static void print_chunks(FILE *f)
{
	struct pcpu_stats st;
	get_stats(&st);
	fprintf(f, " (%" PRIu64 " chunks)", st.nr_chunks);
}

int main(int argc, char **argv)
{
	ssize_t n = readlink("/proc/self/exe", self_exe, sizeof(self_exe) - 1);
	if (n > 0)
		self_exe[n] = 0;
	else
		snprintf(self_exe, sizeof(self_exe), "%s", argv[0]);
	setup();

	if (argc > 1) {
		if (!strcmp(argv[1], "sim1024"))
			child_sim();
		else if (!strcmp(argv[1], "stats"))
			child_stats();
		else if (!strcmp(argv[1], "oom"))
			test_oom();
		else if (!strcmp(argv[1], "exitstats"))
			return child_exitstats();
		else
			REQUIRE(!"unknown child mode");
		return check_done();
	}

	fprintf(stderr, "test_alloc: %d cpu ids, %d real cpus, unit %zu, "
			"path %s%s\n", pcpu_nr_cpu_ids(), nr_real_cpus, umax,
		pcpu_path() == PCPU_PATH_RSEQ ? "rseq" : "atomic",
		heavy ? ", debug validation (short loops)" : "");
	static const struct check_part parts[] = {
		{ "args", test_args },       { "zeroing", test_zeroing },
		{ "misuse", test_misuse },   { "deferred", test_deferred },
		{ "model", test_model },
		{ "threads", test_threads }, { "sim1024", test_sim },
		{ "oom", test_oom_child },   { "stats", test_stats },
	};
	check_run_parts(parts, sizeof(parts) / sizeof(parts[0]), print_chunks);
	CHECK_EQ(pcpu_validate(), 0);
	return check_done();
}
