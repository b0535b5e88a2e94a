/*
 * test_model.c - the model-based differential test of issue 12.
 *
 * A seeded random sequence of operations runs against the library and
 * against a plain reference model (for each live area its size, its
 * initial bytes and one byte array per index), and every read and every
 * sum is compared with the model at once.  The contract the model encodes:
 *
 *  - pcpu_ptr(p, i) is index i's copy for every i below pcpu_nr_cpu_ids();
 *    a fresh pcpu_alloc reads zero on every index, a pcpu_alloc_init area
 *    its init bytes on every index (also indexes that never ran anything);
 *  - what is written through pcpu_ptr on any index is seen by pcpu_sum
 *    (the sum over what pcpu_for_each_cpu yields), by pcpu_for_each_cpu
 *    (every index whose copy differs from its initial value is yielded,
 *    and only indexes below pcpu_nr_cpu_ids() are) and by this-CPU
 *    operations of that CPU;
 *  - pcpu_this_cpu() is a valid index; a thread acting as CPU c (simulated,
 *    or pinned to real CPU c) has its operations land in copy c;
 *  - sums are exact: pcpu_sum == the model's sum over the yielded indexes;
 *  - pcpu_sub(p, v) converts v to *p's type before negating;
 *  - simulated CPUs going offline and online, pcpu_trim, pcpu_drain and
 *    pcpu_balance change no value; after fork() the child sees exactly the
 *    parent's values and can go on with its own copies;
 *  - the library's own reads back nothing: backed bytes (pcpu_stats_get;
 *    and VmRSS outside sanitizers and valgrind) are no higher after a
 *    pcpu_sum, pcpu_free, pcpu_validate, pcpu_trim, pcpu_drain or a
 *    counter's sum, read, compare, set, sync or destroy than before it
 *    (checked at one such call in 16, chosen by the operation's own bits
 *    so that a replay checks the same calls, and at every one in one run
 *    of 16); the model's own reads of the copies go through pagemap and
 *    take a page that holds no data as zeros, so they back nothing either;
 *  - pcpu_counter (counter.h): init with 0, EAGER, PERCPU, ATOMIC,
 *    EXACT_READS and their allowed mixes (a forbidden mix is -EINVAL),
 *    init_many groups, add, sub, inc, dec, add_batch, add_local, set,
 *    set_batch, sync, go_percpu, acting as simulated (or pinned) CPUs; the
 *    exact value is the model's, wrapped modulo 2^64 ("Range"): sum and
 *    sum_positive are exact, read is within pcpu_counter_error_bound (0
 *    for a counter without slots, at most (B - 1) x pcpu_nr_cpu_ids()),
 *    compare and compare_batch agree with the exact value, limited_add
 *    adds exactly when value + v <= limit in exact arithmetic (v <= 0:
 *    always), with values, limits and right-hand sides near INT64_MAX and
 *    INT64_MIN; destroy (and destroy again) of a counter, and destroy or
 *    destroy_many of a zero-filled counter never initialised, is silent;
 *  - hotplug callbacks (1024 simulated CPUs): an online callback that
 *    fails on some CPUs that are not ready; their threads still read back
 *    their own writes, and pcpu_this_cpu() still names them;
 *  - the library reports nothing (pcpu_set_error_handler): the model
 *    makes no invalid call, so any report is a failure.
 *
 * What a sequential model cannot cover, left to the dedicated tests
 * (issue 12): item 7, a counter sum racing folds (tests/test_counter.c);
 * item 9, a pinned main thread (tests/test_hotplug.c, real CPUs); item
 * 10, threads starting at once (tests/test_contract.c, "together").  The
 * others: item 1 (reads that back memory) by the backed checks above,
 * items 2 and 3 (pcpu_ptr on indexes that never ran) by every read, sum,
 * cover check and fresh area, item 4 (a CPU that is not ready, or whose
 * callbacks failed, reads back its own writes) by this-CPU operations on
 * offline and failing simulated CPUs, item 5 by this-sub-narrow, items 6
 * and 8 by the counter operations.
 *
 * Running it:
 *   test_model                      the quick suite: every mode, one seed
 *   test_model --mode M --seed S --steps N [--keep LIST] [--print]
 *                                   one configuration (--keep: replay only
 *                                   those operation numbers, e.g. 3,7,10-12
 *                                   or @file; --print: every operation)
 *   test_model --long               many seeds, many steps, for a few
 *                                   minutes (make check-model-long)
 * Modes: sim64 (PCPU_SIM_POSSIBLE=64, the balance worker busy), sim1024
 * (1024 simulated CPUs, 0-15 online), nocache (256 simulated CPUs, 0-31
 * online, PCPU_CACHE=none), real (the machine's CPUs, the thread pinned
 * with sched_setaffinity for each this-CPU operation), cid (the same with
 * PCPU_INDEX=cid; skipped without kernel mm_cid).
 *
 * Every configuration runs in a fresh process: the program re-executes
 * itself (--child) with the mode's environment.  On a failure the driver
 * prints the seed and shrinks the sequence: it re-runs subsets of the
 * operations (each in a fresh process, the library being a process-wide
 * singleton), by delta debugging (ddmin) within a time budget, keeping only subsets that fail the same way, and
 * prints the shortest one found, one line per operation, and the command
 * that replays it.
 *
 * Environment: PCPU_MODEL_SEED (the first seed), PCPU_MODEL_STEPS (a
 * run's operations), PCPU_MODEL_SEEDS (how many seeds: default 1, with
 * --long until the time is up), PCPU_MODEL_SECS (at most that long:
 * default unlimited, with --long 240 s),
 * PCPU_MODEL_SHRINK_SECS (the shrinking budget per failure),
 * PCPU_MODEL_MODES (a comma list: run only these modes),
 * PCPU_MODEL_BACKED_ALL=1 (check backed bytes at every library read, not
 * one in 16), PCPU_MODEL_VERBOSE=1 (how many checks each run made).
 * Development only: PCPU_MODEL_SKIP, a comma list of operation names not
 * to generate (alloc_init, this-sub-narrow, fork, ... as printed) and of
 * restrictions: backed (no backed checks), ptr-any (pcpu_ptr writes and
 * reads only on indexes that ran this-CPU operations while online),
 * offline-ops (this-CPU operations only on online CPUs), fresh (no check
 * of new areas).
 * PCPU_TEST_SCALE=valgrind runs one mode in this process (valgrind does
 * not follow the exec) with few steps.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "cpus.h"
#include "pcpu/counter.h"
#include "pcpu/pcpu.h"

#ifndef PCPU_DEBUG
#define PCPU_DEBUG 0
#endif

/* ==================================================================== */
/* The random number generator (splitmix64): one for the whole program.  */

struct rng {
	uint64_t s;
};

static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t rng_next(struct rng *r)
{
	r->s += 0x9e3779b97f4a7c15ULL;
	return mix64(r->s);
}

static uint64_t rng_below(struct rng *r, uint64_t n)
{
	return n ? rng_next(r) % n : 0;
}

static bool rng_pct(struct rng *r, unsigned pct)
{
	return rng_below(r, 100) < pct;
}

static struct rng rng_make(uint64_t seed, uint64_t stream)
{
	struct rng r = { mix64(seed ^ mix64(stream + 0x632be59bd9b4e019ULL)) };
	return r;
}

/* @n bytes derived from @seed: random (kind 0), all non-zero (kind 1),
 * or mostly zero with some non-zero (kind 2). */
static void seed_bytes(uint64_t seed, uint8_t *out, size_t n, int kind)
{
	struct rng r = rng_make(seed, 0xb17e5);
	for (size_t i = 0; i < n; i++) {
		uint8_t b = (uint8_t)rng_next(&r);
		if (kind == 1 && !b)
			b = 0x5a;
		if (kind == 2 && rng_below(&r, 4))
			b = 0;
		out[i] = b;
	}
	if (kind == 2 && n) {
		bool any = false;
		for (size_t i = 0; i < n; i++)
			any |= out[i] != 0;
		if (!any)
			out[rng_below(&r, n)] = 0xa5;
	}
}

/* ==================================================================== */
/* Modes                                                                 */

struct mode {
	const char *name;
	int sim;             /* simulated CPU count, 0: the real topology */
	bool cid;            /* PCPU_INDEX=cid */
	bool worker;         /* the balance worker runs (not under TSan) */
	const char *env[10]; /* NAME=VALUE sets, NAME alone unsets */
};

static const struct mode modes[] = {
	{ "sim64", 64, false, true,
	  { "PCPU_SIM_POSSIBLE=64", "PCPU_SIM_ONLINE", "PCPU_INDEX=cpu",
	    "PCPU_CACHE", "PCPU_BALANCE_INTERVAL_MS=20", NULL } },
	{ "sim1024", 1024, false, false,
	  { "PCPU_SIM_POSSIBLE=1024", "PCPU_SIM_ONLINE=0-15",
	    "PCPU_INDEX=cpu", "PCPU_CACHE", NULL } },
	{ "nocache", 256, false, true,
	  { "PCPU_SIM_POSSIBLE=256", "PCPU_SIM_ONLINE=0-31",
	    "PCPU_INDEX=cpu", "PCPU_CACHE=none",
	    "PCPU_BALANCE_INTERVAL_MS=50", NULL } },
	{ "real", 0, false, false,
	  { "PCPU_SIM_POSSIBLE", "PCPU_SIM_ONLINE", "PCPU_INDEX=cpu",
	    "PCPU_CACHE", NULL } },
	{ "cid", 0, true, false,
	  { "PCPU_SIM_POSSIBLE", "PCPU_SIM_ONLINE", "PCPU_INDEX=cid",
	    "PCPU_CACHE", NULL } },
};
#define NR_MODES (sizeof(modes) / sizeof(modes[0]))

/* Unset in every mode: they would change what the library does. */
static const char *const common_env[] = {
	"PCPU_FAULT", "PCPU_STATS", "PCPU_CACHE_MAX", "PCPU_CACHE_IDLE_MS",
	"PCPU_TEST_INDEX", NULL
};

static const struct mode *mode_find(const char *name)
{
	for (size_t i = 0; i < NR_MODES; i++)
		if (!strcmp(modes[i].name, name))
			return &modes[i];
	return NULL;
}

static void env_apply(const char *e)
{
	const char *eq = strchr(e, '=');
	if (eq) {
		char name[64];
		snprintf(name, sizeof(name), "%.*s", (int)(eq - e), e);
		setenv(name, eq + 1, 1);
	} else {
		unsetenv(e);
	}
}

/* The mode's environment, in this process (before the library starts);
 * @no_worker: without the balance worker whatever the mode says. */
static void mode_env(const struct mode *m, bool no_worker)
{
	for (const char *const *e = common_env; *e; e++)
		env_apply(*e);
	for (const char *const *e = m->env; *e; e++)
		env_apply(*e);
	/* ThreadSanitizer does not support fork from a multithreaded
	 * process: no balance worker there */
	if (!m->worker || no_worker || PCPU_TEST_TSAN)
		env_apply("PCPU_BALANCE=0");
	else
		env_apply("PCPU_BALANCE");
}

/* ==================================================================== */
/* Operations                                                            */

enum opkind {
	OP_ALLOC,
	OP_ALLOC_INIT,
	OP_FREE,
	OP_PTR_WRITE,
	OP_PTR_READ,
	OP_ADD,
	OP_SUB,
	OP_SUBN,
	OP_INC,
	OP_DEC,
	OP_WRITE,
	OP_READ,
	OP_THIS_CPU,
	OP_SUM,
	OP_COVER,
	OP_CHECK,
	OP_CHECK_ALL,
	OP_OFFLINE,
	OP_ONLINE,
	OP_TRIM,
	OP_DRAIN,
	OP_BALANCE,
	OP_FORK,
	OP_VALIDATE,
	OP_CTR_INIT,
	OP_CTR_ADD,
	OP_CTR_SET,
	OP_CTR_BATCH,
	OP_CTR_SYNC,
	OP_CTR_READ,
	OP_CTR_CMP,
	OP_CTR_LIMIT,
	OP_CTR_PERCPU,
	OP_CTR_DESTROY,
	OP_CALLBACK,
	NR_OPKINDS
};

#define K_AREA 1u  /* needs a live area */
#define K_SIM 2u   /* simulation only */
#define K_THIS 4u  /* a this-CPU operation on an area */
#define K_CTR 8u   /* needs a live, initialised counter */
#define K_CTR0 16u /* needs a counter, initialised or zero-filled */

static const struct {
	const char *name;
	int weight; /* per 1000 */
	unsigned flags;
} kinfo[NR_OPKINDS] = {
	[OP_ALLOC] = { "alloc", 80, 0 },
	[OP_ALLOC_INIT] = { "alloc_init", 40, 0 },
	[OP_FREE] = { "free", 60, K_AREA },
	[OP_PTR_WRITE] = { "ptr-write", 130, K_AREA },
	[OP_PTR_READ] = { "ptr-read", 100, K_AREA },
	[OP_ADD] = { "this-add", 60, K_AREA | K_THIS },
	[OP_SUB] = { "this-sub", 30, K_AREA | K_THIS },
	[OP_SUBN] = { "this-sub-narrow", 20, K_AREA | K_THIS },
	[OP_INC] = { "this-inc", 20, K_AREA | K_THIS },
	[OP_DEC] = { "this-dec", 20, K_AREA | K_THIS },
	[OP_WRITE] = { "this-write", 50, K_AREA | K_THIS },
	[OP_READ] = { "this-read", 80, K_AREA | K_THIS },
	[OP_THIS_CPU] = { "this-cpu", 20, 0 },
	[OP_SUM] = { "sum", 70, K_AREA },
	[OP_COVER] = { "cover", 20, 0 },
	[OP_CHECK] = { "check", 30, K_AREA },
	[OP_CHECK_ALL] = { "check-all", 0, 0 },
	[OP_OFFLINE] = { "cpu-offline", 20, K_SIM },
	[OP_ONLINE] = { "cpu-online", 20, K_SIM },
	[OP_TRIM] = { "trim", 10, 0 },
	[OP_DRAIN] = { "drain", 10, 0 },
	[OP_BALANCE] = { "balance", 10, 0 },
	[OP_FORK] = { "fork", 5, 0 },
	[OP_VALIDATE] = { "validate", 10, 0 },
	[OP_CTR_INIT] = { "ctr-init", 25, 0 },
	[OP_CTR_ADD] = { "ctr-add", 60, K_CTR },
	[OP_CTR_SET] = { "ctr-set", 10, K_CTR },
	[OP_CTR_BATCH] = { "ctr-set-batch", 8, K_CTR },
	[OP_CTR_SYNC] = { "ctr-sync", 10, K_CTR },
	[OP_CTR_READ] = { "ctr-read", 30, K_CTR },
	[OP_CTR_CMP] = { "ctr-compare", 30, K_CTR },
	[OP_CTR_LIMIT] = { "ctr-limited-add", 30, K_CTR },
	[OP_CTR_PERCPU] = { "ctr-go-percpu", 5, K_CTR },
	[OP_CTR_DESTROY] = { "ctr-destroy", 15, K_CTR0 },
	[OP_CALLBACK] = { "callback", 4, K_SIM },
};

enum vtype { T_INT, T_UINT, T_LONG, T_ULONG, T_BYTES };
static const char *const tname[] = { "int", "unsigned", "long", "ulong",
				     "bytes" };
static unsigned twidth(int t)
{
	return t == T_LONG || t == T_ULONG ? 8 : 4;
}

struct op {
	uint8_t kind;
	uint8_t type; /* enum vtype */
	uint8_t sub;  /* alloc_init: init kind; ptr-write: bytes kind;
			 drain: flags */
	int32_t cpu;
	uint32_t id;  /* area: its creation number */
	uint32_t size, align;
	uint32_t off, len;
	uint64_t val; /* operand, or the seed of bytes / of a choice */
	uint64_t val2; /* counters: a compare's right-hand side, a limit */
};

/* ptr-write bytes: random, zeros, the area's initial bytes */
enum { WB_RANDOM, WB_ZERO, WB_INITIAL };

static size_t round4(size_t n)
{
	return (n + 3) & ~(size_t)3;
}

static uint64_t wmask(unsigned w)
{
	return w == 8 ? ~0ULL : 0xffffffffULL;
}

/* The operand of this-sub-narrow: unsigned short for 4-byte types,
 * unsigned int for 8-byte types. */
static uint64_t narrow(const struct op *o)
{
	return twidth(o->type) == 8 ? (uint64_t)(uint32_t)o->val
				    : (uint64_t)(uint16_t)o->val;
}

/* A value of type @t for printing. */
static void fmt_val(char *b, size_t n, int t, uint64_t v)
{
	switch (t) {
	case T_INT:
		snprintf(b, n, "%d", (int)(uint32_t)v);
		break;
	case T_UINT:
		snprintf(b, n, "%u", (unsigned)v);
		break;
	case T_LONG:
		snprintf(b, n, "%ld", (long)v);
		break;
	default:
		snprintf(b, n, "%lu", (unsigned long)v);
	}
}

static void fmt_bytes(char *b, size_t n, const uint8_t *p, size_t len)
{
	size_t k = 0, show = len > 16 ? 16 : len;
	b[0] = 0;
	for (size_t i = 0; i < show && k + 4 < n; i++)
		k += (size_t)snprintf(b + k, n - k, "%s%02x", i ? " " : "",
				      p[i]);
	if (show < len && k + 8 < n)
		snprintf(b + k, n - k, " ... (%zu bytes)", len);
}

/* Counter operations: their variants, flags and operands. */
enum { CI_INIT, CI_MANY, CI_ZERO, CI_BAD };
enum { CA_ADD, CA_SUB, CA_INC, CA_DEC, CA_BATCH, CA_LOCAL, NR_CA };
static const char *const ca_name[NR_CA] = { "add", "sub", "inc", "dec",
					    "add_batch", "add_local" };
enum { CR_SUM, CR_SUMPOS, CR_READ, CR_READPOS, CR_BOUNDED, CR_BOUND, NR_CR };
static const char *const cr_name[NR_CR] = { "sum", "sum_positive", "read",
					    "read_positive", "read_bounded",
					    "error_bound" };
/* compare and limited_add: the right-hand side or the limit is the
 * model's value plus val2 (wrapped), or val2 itself */
enum { CV_REL, CV_ABS };

static void fmt_cflags(char *b, size_t n, unsigned f)
{
	snprintf(b, n, "%s%s%s%s%s", f ? "" : "0",
		 f & PCPU_COUNTER_PERCPU ? "|PERCPU" : "",
		 f & PCPU_COUNTER_EXACT_READS ? "|EXACT_READS" : "",
		 f & PCPU_COUNTER_EAGER ? "|EAGER" : "",
		 f & PCPU_COUNTER_ATOMIC ? "|ATOMIC" : "");
	if (b[0] == '|')
		memmove(b, b + 1, strlen(b));
}

static void fmt_cval(char *b, size_t n, int mode, uint64_t v)
{
	if (mode == CV_REL)
		snprintf(b, n, "value%+" PRId64, (int64_t)v);
	else if (v == (uint64_t)INT64_MAX)
		snprintf(b, n, "INT64_MAX");
	else if (v == (uint64_t)INT64_MIN)
		snprintf(b, n, "INT64_MIN");
	else
		snprintf(b, n, "%" PRId64, (int64_t)v);
}

static void op_format(char *b, size_t n, const struct op *o)
{
	char v[64];
	const char *name = kinfo[o->kind].name;
	switch (o->kind) {
	case OP_ALLOC:
		snprintf(b, n, "%s a%u size %u align %u", name, o->id, o->size,
			 o->align);
		break;
	case OP_ALLOC_INIT: {
		uint8_t init[16];
		size_t k = o->size < 16 ? o->size : 16;
		uint8_t *all = malloc(o->size);
		if (all) {
			seed_bytes(o->val, all, o->size, o->sub);
			memcpy(init, all, k);
			free(all);
		} else {
			memset(init, 0, k);
		}
		fmt_bytes(v, sizeof(v), init, k);
		snprintf(b, n, "%s a%u size %u align %u init %s%s", name, o->id,
			 o->size, o->align, v, o->size > 16 ? " ..." : "");
		break;
	}
	case OP_FREE:
	case OP_CHECK:
		snprintf(b, n, "%s a%u", name, o->id);
		break;
	case OP_PTR_WRITE:
		if (o->sub == WB_ZERO)
			snprintf(v, sizeof(v), "zeros");
		else if (o->sub == WB_INITIAL)
			snprintf(v, sizeof(v), "its initial bytes");
		else if (o->type != T_BYTES) {
			uint8_t bb[8];
			uint64_t x = 0;
			seed_bytes(o->val, bb, 8, 0);
			memcpy(&x, bb, twidth(o->type));
			fmt_val(v, sizeof(v), o->type, x);
		} else {
			uint8_t bb[16];
			seed_bytes(o->val, bb, o->len < 16 ? o->len : 16, 0);
			fmt_bytes(v, sizeof(v), bb, o->len < 16 ? o->len : 16);
			if (o->len > 16)
				strcat(v, " ...");
		}
		if (o->type != T_BYTES)
			snprintf(b, n, "%s a%u cpu %d %s@%u = %s", name, o->id,
				 o->cpu, tname[o->type], o->off, v);
		else
			snprintf(b, n, "%s a%u cpu %d off %u len %u = %s", name,
				 o->id, o->cpu, o->off, o->len, v);
		break;
	case OP_PTR_READ:
		if (o->type != T_BYTES)
			snprintf(b, n, "%s a%u cpu %d %s@%u", name, o->id,
				 o->cpu, tname[o->type], o->off);
		else
			snprintf(b, n, "%s a%u cpu %d off %u len %u", name,
				 o->id, o->cpu, o->off, o->len);
		break;
	case OP_ADD:
	case OP_SUB:
	case OP_WRITE:
		fmt_val(v, sizeof(v), o->type, o->val);
		snprintf(b, n, "%s a%u cpu %d %s@%u %s %s", name, o->id, o->cpu,
			 tname[o->type], o->off,
			 o->kind == OP_ADD ? "+=" : o->kind == OP_SUB ? "-=" : "=",
			 v);
		break;
	case OP_SUBN:
		snprintf(b, n, "%s a%u cpu %d %s@%u -= %" PRIu64 "%s (%s operand)",
			 name, o->id, o->cpu, tname[o->type], o->off, narrow(o),
			 twidth(o->type) == 8 ? "u" : "",
			 twidth(o->type) == 8 ? "unsigned int" : "unsigned short");
		break;
	case OP_INC:
	case OP_DEC:
	case OP_READ:
		snprintf(b, n, "%s a%u cpu %d %s@%u", name, o->id, o->cpu,
			 tname[o->type], o->off);
		break;
	case OP_SUM:
		snprintf(b, n, "%s a%u %s@%u", name, o->id, tname[o->type],
			 o->off);
		break;
	case OP_THIS_CPU:
	case OP_OFFLINE:
	case OP_ONLINE:
		snprintf(b, n, "%s %d", name, o->cpu);
		break;
	case OP_DRAIN:
		snprintf(b, n, "%s%s", name, o->sub ? " PCPU_DRAIN_PAGES" : " 0");
		break;
	case OP_CTR_INIT:
		fmt_cflags(v, sizeof(v), o->align);
		if (o->sub == CI_ZERO)
			snprintf(b, n, "%s c%u zero-filled, never initialised "
				       "(%u counter%s)",
				 name, o->id, o->len, o->len > 1 ? "s" : "");
		else if (o->sub == CI_MANY)
			snprintf(b, n, "%s c%u init_many n %u initial %" PRId64
				       " flags %s",
				 name, o->id, o->len, (int64_t)o->val, v);
		else
			snprintf(b, n, "%s c%u initial %" PRId64 " flags %s%s",
				 name, o->id, (int64_t)o->val, v,
				 o->sub == CI_BAD ? " (not allowed)" : "");
		break;
	case OP_CTR_ADD:
		if (o->sub == CA_INC || o->sub == CA_DEC)
			snprintf(b, n, "%s c%u.%u cpu %d %s", name, o->id, o->off,
				 o->cpu, ca_name[o->sub]);
		else if (o->sub == CA_BATCH)
			snprintf(b, n, "%s c%u.%u cpu %d add_batch %" PRId64
				       " batch %d",
				 name, o->id, o->off, o->cpu, (int64_t)o->val,
				 (int32_t)o->size);
		else
			snprintf(b, n, "%s c%u.%u cpu %d %s %" PRId64, name, o->id,
				 o->off, o->cpu, ca_name[o->sub], (int64_t)o->val);
		break;
	case OP_CTR_SET:
		fmt_cval(v, sizeof(v), CV_ABS, o->val);
		snprintf(b, n, "%s c%u.%u %s", name, o->id, o->off, v);
		break;
	case OP_CTR_BATCH:
		snprintf(b, n, "%s c%u.%u %" PRId64, name, o->id, o->off,
			 (int64_t)o->val);
		break;
	case OP_CTR_SYNC:
		snprintf(b, n, "%s c%u.%u cpu %d", name, o->id, o->off, o->cpu);
		break;
	case OP_CTR_READ:
		snprintf(b, n, "%s c%u.%u %s", name, o->id, o->off,
			 cr_name[o->sub]);
		break;
	case OP_CTR_CMP:
		fmt_cval(v, sizeof(v), (int)o->align, o->val2);
		if (o->sub)
			snprintf(b, n, "%s c%u.%u compare_batch rhs %s batch %d",
				 name, o->id, o->off, v, (int32_t)o->size);
		else
			snprintf(b, n, "%s c%u.%u compare rhs %s", name, o->id,
				 o->off, v);
		break;
	case OP_CTR_LIMIT:
		fmt_cval(v, sizeof(v), (int)o->align, o->val2);
		snprintf(b, n, "%s c%u.%u cpu %d limit %s v %" PRId64, name,
			 o->id, o->off, o->cpu, v, (int64_t)o->val);
		break;
	case OP_CTR_PERCPU:
		snprintf(b, n, "%s c%u.%u", name, o->id, o->off);
		break;
	case OP_CTR_DESTROY:
		snprintf(b, n, "%s c%u%s", name, o->id,
			 o->sub ? ", then destroy again" : "");
		break;
	case OP_CALLBACK:
		snprintf(b, n, "%s %s", name,
			 o->sub ? "unregister"
				: "register (online fails on some CPUs that are "
				  "not ready)");
		break;
	default:
		snprintf(b, n, "%s", name);
	}
}

/* ==================================================================== */
/* A set of indexes with O(1) add, remove, test and random pick.         */

struct iset {
	int *pos; /* position + 1 in list, 0: absent */
	int *list;
	int n;
};

static void iset_init(struct iset *s, int cap)
{
	s->pos = calloc((size_t)cap, sizeof(int));
	s->list = calloc((size_t)cap, sizeof(int));
	REQUIRE(s->pos && s->list);
	s->n = 0;
}

static void iset_free(struct iset *s)
{
	free(s->pos);
	free(s->list);
	s->pos = s->list = NULL;
	s->n = 0;
}

static void iset_copy(struct iset *d, const struct iset *s, int cap)
{
	iset_init(d, cap);
	memcpy(d->pos, s->pos, (size_t)cap * sizeof(int));
	memcpy(d->list, s->list, (size_t)cap * sizeof(int));
	d->n = s->n;
}

static bool iset_has(const struct iset *s, int i)
{
	return s->pos[i] != 0;
}

static void iset_add(struct iset *s, int i)
{
	if (!s->pos[i]) {
		s->list[s->n++] = i;
		s->pos[i] = s->n;
	}
}

static void iset_del(struct iset *s, int i)
{
	int p = s->pos[i];
	if (p) {
		int last = s->list[--s->n];
		s->list[p - 1] = last;
		s->pos[last] = p;
		s->pos[i] = 0;
	}
}

/* ==================================================================== */
/* The generator: a sequence that depends only on the seed (and, in a   */
/* fork child, on the state at the fork), never on the library.         */

#define MAX_LIVE 48
#define MAX_BIG 4
#define CHILD_OPS 8

static uint64_t skip_kinds; /* bit per enum opkind (PCPU_MODEL_SKIP) */
static bool skip_ptr_any, skip_offline_ops, skip_fresh;

struct garea {
	uint32_t id, size, len, align;
	bool init, a8; /* alloc_init; 8-byte aligned */
};

#define MAX_CTRS 8
#define CTR_MAX_N 6

struct gctr {
	uint32_t id;
	uint32_t n;  /* counters in it (init_many: 2..CTR_MAX_N) */
	bool zero;   /* zero-filled, never initialised: only destroyed */
	unsigned flags;
};

struct loc {
	uint32_t id;
	int cpu;
	uint32_t off, len;
	uint8_t type;
};

struct gen {
	struct rng r;
	int nr;              /* index count */
	bool sim, child;
	struct iset online;  /* simulated CPUs the generator believes online */
	struct iset ran;     /* ran this-CPU operations while online */
	struct garea live[MAX_LIVE];
	int nlive, nbig;
	uint32_t next_id;
	int rcpu[4], nrcpu;  /* recently used CPUs */
	struct loc rloc[8];
	int nrloc;
	struct gctr ctr[MAX_CTRS];
	int nctr, nctr_live; /* all; initialised ones */
	bool worker;         /* the mode runs the balance worker */
	bool cb;             /* a hotplug callback is registered */
};

static bool g_online(const struct gen *g, int cpu)
{
	return !g->sim || iset_has(&g->online, cpu);
}

static void g_note_cpu(struct gen *g, int cpu)
{
	g->rcpu[g->nrcpu++ % 4] = cpu;
}

static void g_note_loc(struct gen *g, const struct op *o)
{
	struct loc l = { o->id, o->cpu, o->off, o->len, o->type };
	g->rloc[g->nrloc++ % 8] = l;
}

static struct garea *g_area(struct gen *g, uint32_t id)
{
	for (int i = 0; i < g->nlive; i++)
		if (g->live[i].id == id)
			return &g->live[i];
	return NULL;
}

/* A recent location on a live area, or NULL. */
static struct loc *g_recent_loc(struct gen *g)
{
	int n = g->nrloc < 8 ? g->nrloc : 8;
	if (!n)
		return NULL;
	struct loc *l = &g->rloc[rng_below(&g->r, (uint64_t)n)];
	return g_area(g, l->id) ? l : NULL;
}

static int g_random_online(struct gen *g)
{
	if (!g->sim)
		return real_cpus[rng_below(&g->r, (uint64_t)nr_real_cpus)];
	return g->online.list[rng_below(&g->r, (uint64_t)g->online.n)];
}

/* The CPU a this-CPU operation acts as. */
static int g_this_cpu(struct gen *g)
{
	int n = g->nrcpu < 4 ? g->nrcpu : 4;
	uint64_t r = rng_below(&g->r, 100);
	if (!g->sim) { /* a real CPU the thread may be pinned to */
		if (r < 40 && n) {
			int c = g->rcpu[rng_below(&g->r, (uint64_t)n)];
			for (int i = 0; i < nr_real_cpus; i++)
				if (real_cpus[i] == c)
					return c;
		}
		return g_random_online(g);
	}
	if (r < 40 && n) {
		int c = g->rcpu[rng_below(&g->r, (uint64_t)n)];
		if (!skip_offline_ops || g_online(g, c))
			return c;
	}
	if (r < 75 || skip_offline_ops)
		return g_random_online(g);
	return (int)rng_below(&g->r, (uint64_t)g->nr);
}

/* The index a pcpu_ptr access uses: any index; -1 if none may be. */
static int g_ptr_cpu(struct gen *g)
{
	if (skip_ptr_any)
		return g->ran.n ? g->ran.list[rng_below(&g->r,
							(uint64_t)g->ran.n)]
				: -1;
	int n = g->nrcpu < 4 ? g->nrcpu : 4;
	uint64_t r = rng_below(&g->r, 100);
	if (r < 40 && n)
		return g->rcpu[rng_below(&g->r, (uint64_t)n)];
	if (r < 65)
		return g_random_online(g);
	return (int)rng_below(&g->r, (uint64_t)g->nr);
}

static struct garea *g_random_area(struct gen *g)
{
	return &g->live[rng_below(&g->r, (uint64_t)g->nlive)];
}

/* A typed location in @a: type, offset aligned to its width. */
static void g_typed(struct gen *g, const struct garea *a, struct op *o)
{
	int t = (int)rng_below(&g->r, 4);
	if (twidth(t) == 8 && (!a->a8 || a->len < 8))
		t -= 2; /* long -> int, ulong -> unsigned */
	unsigned w = twidth(t);
	uint32_t slots = a->len / w;
	o->type = (uint8_t)t;
	o->off = rng_pct(&g->r, 50) ? 0
				    : (uint32_t)rng_below(&g->r, slots) * w;
	o->len = w;
}

/* A byte range in @a. */
static void g_bytes(struct gen *g, const struct garea *a, struct op *o)
{
	o->type = T_BYTES;
	if (rng_pct(&g->r, 15)) {
		o->off = 0;
		o->len = a->len;
		return;
	}
	o->off = (uint32_t)rng_below(&g->r, a->len);
	uint32_t max = a->len - o->off;
	o->len = 1 + (uint32_t)rng_below(&g->r, max < 32 ? max : 32);
}

static bool g_feasible(struct gen *g, int k)
{
	if (skip_kinds & (1ull << k))
		return false;
	if ((kinfo[k].flags & K_AREA) && !g->nlive)
		return false;
	if ((kinfo[k].flags & K_SIM) && !g->sim)
		return false;
	switch (k) {
	case OP_ALLOC:
	case OP_ALLOC_INIT:
		return g->nlive < MAX_LIVE;
	case OP_PTR_WRITE:
	case OP_PTR_READ:
		return !skip_ptr_any || g->ran.n;
	case OP_OFFLINE:
		return g->online.n > 1;
	case OP_ONLINE:
		return g->online.n < g->nr;
	case OP_FORK:
		return !g->child;
	case OP_CTR_INIT:
		return !g->child && g->nctr < MAX_CTRS;
	case OP_CALLBACK:
		/* the balance worker's tick would bring failed CPUs up (fills
		 * back pages) while a backed check runs */
		return !g->child && !g->worker;
	}
	if ((kinfo[k].flags & K_CTR) && !g->nctr_live)
		return false;
	if ((kinfo[k].flags & K_CTR0) && !g->nctr)
		return false;
	return true;
}

/* A live initialised counter: its id into o->id, a member into o->off. */
static struct gctr *g_ctr(struct gen *g, struct op *o)
{
	int k = (int)rng_below(&g->r, (uint64_t)g->nctr_live);
	for (int i = 0; i < g->nctr; i++) {
		if (g->ctr[i].zero)
			continue;
		if (k-- == 0) {
			o->id = g->ctr[i].id;
			o->off = (uint32_t)rng_below(&g->r, g->ctr[i].n);
			return &g->ctr[i];
		}
	}
	REQUIRE(0);
	return NULL;
}

/* A value near the ends of int64_t, or small, or anything. */
static uint64_t g_extreme(struct gen *g)
{
	uint64_t k = rng_below(&g->r, 64), r = rng_below(&g->r, 100);
	if (r < 40)
		return (uint64_t)INT64_MAX - k;
	if (r < 80)
		return (uint64_t)INT64_MIN + k;
	if (r < 90)
		return rng_pct(&g->r, 50) ? k : 0 - k;
	return rng_next(&g->r);
}

/* An amount to add: mostly small, sometimes around the batch, sometimes
 * near the ends of int64_t (to wrap). */
static uint64_t g_amount(struct gen *g)
{
	uint64_t r = rng_below(&g->r, 100);
	if (r < 60)
		return (uint64_t)((int64_t)rng_below(&g->r, 101) - 50);
	if (r < 80)
		return (uint64_t)((int64_t)rng_below(&g->r, 401) - 200);
	if (r < 88)
		return (uint64_t)((int64_t)rng_below(&g->r, 2000001) - 1000000);
	return g_extreme(g);
}

/* A batch for add_batch or compare_batch: small, the default, large,
 * or below 1 (counts as 1). */
static int32_t g_batch(struct gen *g)
{
	static const int32_t b[] = { -1, 0, 1, 2, 5, 32, 64, 1000, 100000 };
	return b[rng_below(&g->r, sizeof(b) / sizeof(b[0]))];
}

static void g_ctr_op(struct gen *g, int k, struct op *o)
{
	struct gctr *c;
	switch (k) {
	case OP_CTR_INIT: {
		static const unsigned fl[] = {
			0, 0, PCPU_COUNTER_EAGER, PCPU_COUNTER_PERCPU,
			PCPU_COUNTER_ATOMIC,
			PCPU_COUNTER_EAGER | PCPU_COUNTER_PERCPU,
			PCPU_COUNTER_EXACT_READS,
			PCPU_COUNTER_EXACT_READS | PCPU_COUNTER_EAGER,
			PCPU_COUNTER_EXACT_READS | PCPU_COUNTER_PERCPU |
				PCPU_COUNTER_EAGER,
			PCPU_COUNTER_ATOMIC | PCPU_COUNTER_EXACT_READS,
		};
		uint64_t r = rng_below(&g->r, 100);
		o->id = g->next_id++;
		o->align = fl[rng_below(&g->r, sizeof(fl) / sizeof(fl[0]))];
		o->len = 1;
		o->val = rng_pct(&g->r, 30) ? g_extreme(g)
					    : (uint64_t)((int64_t)rng_below(
							     &g->r, 201) - 100);
		if (r < 15) {
			o->sub = CI_ZERO;
			o->len = 1 + (uint32_t)rng_below(&g->r, 3);
		} else if (r < 20) {
			o->sub = CI_BAD;
			o->align = rng_pct(&g->r, 50)
					   ? PCPU_COUNTER_ATOMIC | PCPU_COUNTER_EAGER
					   : PCPU_COUNTER_ATOMIC | PCPU_COUNTER_PERCPU;
			return; /* nothing to remember */
		} else if (r < 40) {
			o->sub = CI_MANY;
			o->len = 2 + (uint32_t)rng_below(&g->r, CTR_MAX_N - 1);
		} else {
			o->sub = CI_INIT;
		}
		struct gctr *n = &g->ctr[g->nctr++];
		n->id = o->id;
		n->n = o->len;
		n->zero = o->sub == CI_ZERO;
		n->flags = o->align;
		g->nctr_live += !n->zero;
		return;
	}
	case OP_CTR_DESTROY: {
		int i = (int)rng_below(&g->r, (uint64_t)g->nctr);
		o->id = g->ctr[i].id;
		o->sub = rng_pct(&g->r, 20);
		g->nctr_live -= !g->ctr[i].zero;
		g->ctr[i] = g->ctr[--g->nctr];
		return;
	}
	}
	c = g_ctr(g, o);
	switch (k) {
	case OP_CTR_ADD:
		o->sub = (uint8_t)rng_below(&g->r, NR_CA);
		o->val = g_amount(g);
		o->size = (uint32_t)g_batch(g);
		o->cpu = g_this_cpu(g);
		break;
	case OP_CTR_SET:
		o->val = rng_pct(&g->r, 50) ? g_extreme(g) : g_amount(g);
		break;
	case OP_CTR_BATCH: {
		static const int64_t b[] = { -1, 0, 1, 2, 8, 32, 100, 5000,
					     INT32_MAX, (int64_t)INT32_MAX + 1 };
		o->val = (uint64_t)b[rng_below(&g->r, sizeof(b) / sizeof(b[0]))];
		break;
	}
	case OP_CTR_SYNC:
		o->cpu = g_this_cpu(g);
		break;
	case OP_CTR_READ:
		o->sub = (uint8_t)rng_below(&g->r, NR_CR);
		break;
	case OP_CTR_CMP:
	case OP_CTR_LIMIT:
		if (k == OP_CTR_CMP) {
			o->sub = rng_pct(&g->r, 30);
			o->size = (uint32_t)g_batch(g);
		} else {
			o->cpu = g_this_cpu(g);
			uint64_t r = rng_below(&g->r, 100);
			o->val = r < 70 ? 1 + rng_below(&g->r, 40)
			       : r < 80 ? (uint64_t)-(int64_t)rng_below(&g->r, 40)
					: g_extreme(g);
		}
		if (rng_pct(&g->r, 75)) {
			o->align = CV_REL;
			int64_t span = rng_pct(&g->r, 70) ? 64 : 100000;
			o->val2 = (uint64_t)((int64_t)rng_below(
						     &g->r, (uint64_t)(2 * span + 1)) -
					     span);
		} else {
			o->align = CV_ABS;
			o->val2 = g_extreme(g);
		}
		break;
	case OP_CTR_PERCPU:
		break;
	}
	(void)c;
}

static void gen_one(struct gen *g, struct op *o)
{
	int total = 0, k;
	memset(o, 0, sizeof(*o));
	for (k = 0; k < NR_OPKINDS; k++)
		if (g_feasible(g, k))
			total += kinfo[k].weight;
	if (!total) {
		o->kind = OP_COVER;
		return;
	}
	int pick = (int)rng_below(&g->r, (uint64_t)total);
	for (k = 0; k < NR_OPKINDS; k++) {
		if (!g_feasible(g, k))
			continue;
		if (pick < kinfo[k].weight)
			break;
		pick -= kinfo[k].weight;
	}
	o->kind = (uint8_t)k;
	o->val = rng_next(&g->r);
	if (k >= OP_CTR_INIT && k <= OP_CTR_DESTROY) {
		g_ctr_op(g, k, o);
		return;
	}

	struct garea *a = NULL;
	struct loc *l = NULL;
	switch (k) {
	case OP_ALLOC:
	case OP_ALLOC_INIT: {
		uint64_t r = rng_below(&g->r, 100);
		uint32_t size;
		if (r < 15)
			size = 1 + (uint32_t)rng_below(&g->r, 16);
		else if (r < 92 || g->nbig >= MAX_BIG)
			size = 4 + (uint32_t)rng_below(&g->r, 509);
		else
			size = 513 + (uint32_t)rng_below(&g->r, 4 * 4096 - 512);
		r = rng_below(&g->r, 100);
		uint32_t align = r < 50 ? 0
			       : r < 90 ? 4u << rng_below(&g->r, 5)
					: 128u << rng_below(&g->r, 6);
		o->id = g->next_id++;
		o->size = size;
		o->align = align;
		if (k == OP_ALLOC_INIT)
			o->sub = rng_pct(&g->r, 85) ? 1 : 2;
		struct garea *n = &g->live[g->nlive++];
		n->id = o->id;
		n->size = size;
		n->len = (uint32_t)round4(size);
		n->align = align;
		n->init = k == OP_ALLOC_INIT;
		n->a8 = align >= 8 || (align == 0 && size > 4);
		g->nbig += size > 4096;
		break;
	}
	case OP_FREE: {
		int i = (int)rng_below(&g->r, (uint64_t)g->nlive);
		o->id = g->live[i].id;
		g->nbig -= g->live[i].size > 4096;
		g->live[i] = g->live[--g->nlive];
		break;
	}
	case OP_PTR_WRITE:
	case OP_PTR_READ:
		if (k == OP_PTR_READ && rng_pct(&g->r, 50) &&
		    (l = g_recent_loc(g)) &&
		    (!skip_ptr_any || iset_has(&g->ran, l->cpu))) {
			o->id = l->id;
			o->cpu = l->cpu;
			o->off = l->off;
			o->len = l->len;
			o->type = l->type;
			break;
		}
		if (rng_pct(&g->r, 30) && (l = g_recent_loc(g)))
			a = g_area(g, l->id);
		else
			a = g_random_area(g);
		o->id = a->id;
		o->cpu = g_ptr_cpu(g);
		if (rng_pct(&g->r, 60))
			g_typed(g, a, o);
		else
			g_bytes(g, a, o);
		if (k == OP_PTR_WRITE) {
			uint64_t r = rng_below(&g->r, 100);
			o->sub = r < 70 ? WB_RANDOM : r < 90 ? WB_ZERO
							     : WB_INITIAL;
			g_note_loc(g, o);
		}
		g_note_cpu(g, o->cpu);
		break;
	case OP_ADD:
	case OP_SUB:
	case OP_SUBN:
	case OP_INC:
	case OP_DEC:
	case OP_WRITE:
	case OP_READ:
		if (rng_pct(&g->r, k == OP_READ ? 70 : 40) &&
		    (l = g_recent_loc(g)) && l->type != T_BYTES &&
		    (!g->sim || !skip_offline_ops || g_online(g, l->cpu))) {
			bool real_ok = g->sim;
			for (int i = 0; !real_ok && i < nr_real_cpus; i++)
				real_ok = real_cpus[i] == l->cpu;
			if (real_ok) {
				o->id = l->id;
				o->cpu = l->cpu;
				o->off = l->off;
				o->len = l->len;
				o->type = l->type;
				a = g_area(g, l->id);
			}
		}
		if (!a) {
			a = g_random_area(g);
			o->id = a->id;
			o->cpu = g_this_cpu(g);
			g_typed(g, a, o);
		}
		if (k == OP_ADD || k == OP_SUB || k == OP_WRITE) {
			if (rng_pct(&g->r, 60))
				o->val = (uint64_t)((int64_t)rng_below(&g->r, 101) - 50);
			/* -(T)v must not overflow a signed T */
			if (k == OP_SUB && o->type == T_INT &&
			    (uint32_t)o->val == 0x80000000u)
				o->val++;
			if (k == OP_SUB && o->type == T_LONG &&
			    o->val == 0x8000000000000000ULL)
				o->val++;
		}
		if (k == OP_SUBN && rng_pct(&g->r, 70))
			o->val = 1;
		if (k != OP_READ)
			g_note_loc(g, o);
		g_note_cpu(g, o->cpu);
		if (g_online(g, o->cpu))
			iset_add(&g->ran, o->cpu);
		break;
	case OP_THIS_CPU:
		o->cpu = g_this_cpu(g);
		break;
	case OP_SUM:
		if (rng_pct(&g->r, 50) && (l = g_recent_loc(g)) &&
		    l->type != T_BYTES) {
			o->id = l->id;
			o->off = l->off;
			o->type = l->type;
			o->len = l->len;
			break;
		}
		a = g_random_area(g);
		o->id = a->id;
		g_typed(g, a, o);
		break;
	case OP_CHECK:
		o->id = g_random_area(g)->id;
		break;
	case OP_OFFLINE:
		o->cpu = g_random_online(g);
		iset_del(&g->online, o->cpu);
		iset_del(&g->ran, o->cpu);
		break;
	case OP_ONLINE:
		do
			o->cpu = (int)rng_below(&g->r, (uint64_t)g->nr);
		while (iset_has(&g->online, o->cpu));
		iset_add(&g->online, o->cpu);
		break;
	case OP_DRAIN:
		o->sub = (uint8_t)rng_below(&g->r, 2);
		break;
	case OP_CALLBACK:
		o->sub = g->cb;
		g->cb = !g->cb;
		break;
	}
}

/* ==================================================================== */
/* The reference model and the executor                                  */

enum fkind {
	F_NONE,
	F_FRESH,     /* a new pcpu_alloc area does not read zero */
	F_INIT,      /* a new pcpu_alloc_init area does not read its init */
	F_READ,      /* a copy read through pcpu_ptr differs from the model */
	F_THIS_READ, /* pcpu_read as CPU c differs from copy c */
	F_THIS_CPU,  /* pcpu_this_cpu() is not the CPU acted as / in range */
	F_SUM,       /* pcpu_sum differs from the model's sum */
	F_COVER,     /* pcpu_for_each_cpu misses a changed copy */
	F_VALIDATE,  /* pcpu_validate() failed */
	F_BACKED,    /* a library read or free added backed memory */
	F_COUNTER,   /* a pcpu_counter result differs from the model */
	F_REPORT,    /* the library reported an invalid use */
	F_API,       /* a call failed or returned something invalid */
	F_FORK,      /* a fork child died without saying why */
	F_CRASH,     /* the process died (signal, timeout) */
	F_ERROR,     /* the process exited without a result */
	NR_FKINDS
};
static const char *const fname[NR_FKINDS] = {
	"none", "fresh", "init", "ptr-read", "this-read", "this-cpu", "sum",
	"cover", "validate", "backed", "counter", "report", "api", "fork",
	"crash", "error"
};

static int fkind_parse(const char *s)
{
	for (int i = 0; i < NR_FKINDS; i++)
		if (!strcmp(s, fname[i]))
			return i;
	return F_ERROR;
}

struct marea {
	uint32_t id, size, len, align;
	char *p;
	uint8_t *init;  /* len bytes (the tail past size is zero); NULL: zero */
	uint8_t **copy; /* nr entries; NULL: the initial bytes */
};

struct mctr {
	uint32_t id, n;
	unsigned flags;
	bool zero;                 /* zero-filled, never initialised */
	struct pcpu_counter *c;    /* n of them */
	uint64_t v[CTR_MAX_N];     /* exact values, wrapped modulo 2^64 */
	int64_t maxb[CTR_MAX_N];   /* the largest batch used (B) */
};

static struct {
	const struct mode *mode;
	uint64_t seed;
	int nr;
	bool sim, cid, print;
	struct marea **areas; /* by id */
	uint32_t nids;
	uint32_t *live;       /* live ids */
	int nlive;
	struct iset touched;  /* indexes the model wrote */
	struct iset online;   /* simulated CPUs online */
	struct iset ran;      /* ran this-CPU operations while online */
	int pinned;           /* real modes: the CPU the thread is pinned to */
	uint8_t *zero;        /* zero bytes, as long as the largest area */
	int *idx, *yield;     /* scratch: nr + 8 entries */
	unsigned *stamp, stamp_now;
	long opnum;           /* the operation running */
	int sub;              /* in a fork child: its operation, from 1 */
	bool in_fork_child;
	struct op cur;
	int fkind;
	long fat;
	long cid_moves;
	bool child_said;      /* a fork child printed its failure */
	long print_from;      /* --print: from this operation on */
	struct mctr **ctrs;   /* by id */
	uint8_t *scratch;     /* ZERO_LEN bytes */
	bool bk_every;        /* check backed bytes at every library read */
	bool bk_rss;          /* ... and VmRSS (not under sanitizers) */
	long bk_checks, bk_skipped;
	unsigned char *bk_used; /* nr bytes: indexes in use at bk_begin */
	int cb_handle;        /* the registered callback, -1: none */
	bool *cb_fail;        /* CPUs whose online callback fails */
	char report[256];     /* the first report of the library */
} X;

#define ZERO_LEN (64 * 1024)

static void op_label(char *b, size_t n)
{
	if (X.sub)
		snprintf(b, n, "#%ld.%d", X.opnum, X.sub);
	else
		snprintf(b, n, "#%ld", X.opnum);
}

static void print_op(const struct op *o)
{
	char l[32], t[256];
	op_label(l, sizeof(l));
	op_format(t, sizeof(t), o);
	fprintf(stderr, "%s %s\n", l, t);
}

/* Records the first failure of the run and prints it. */
static void failf(int kind, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void failf(int kind, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (X.fkind)
		return;
	X.fkind = kind;
	X.fat = X.opnum;
	if (!X.print && !X.child_said)
		print_op(&X.cur);
	fprintf(stderr, "    FAIL (%s)%s: %s\n", fname[kind],
		X.in_fork_child ? " in the fork child" : "", msg);
}

static struct marea *area_get(uint32_t id)
{
	return id < X.nids ? X.areas[id] : NULL;
}

static const uint8_t *initial(const struct marea *a)
{
	return a->init ? a->init : X.zero;
}

static const uint8_t *model_get(const struct marea *a, int i)
{
	return a->copy[i] ? a->copy[i] : initial(a);
}

static uint8_t *model_mut(struct marea *a, int i)
{
	if (!a->copy[i]) {
		a->copy[i] = malloc(a->len);
		REQUIRE(a->copy[i]);
		memcpy(a->copy[i], initial(a), a->len);
	}
	iset_add(&X.touched, i);
	return a->copy[i];
}

static bool model_changed(const struct marea *a, int i)
{
	return a->copy[i] && memcmp(a->copy[i], initial(a), a->len);
}

static uint64_t load_w(const uint8_t *p, unsigned w)
{
	uint64_t v = 0;
	memcpy(&v, p, w);
	return v;
}

static void store_w(uint8_t *p, unsigned w, uint64_t v)
{
	memcpy(p, &v, w);
}

static uint8_t *lib_copy(const struct marea *a, int i)
{
	return (uint8_t *)pcpu_ptr(a->p, i);
}

/* ---- the model's reads back nothing either ---- */

static int pm_fd = -1;
static pid_t pm_pid;
static size_t pm_page;

/* Whether the page of @p holds data (present or swapped out), as
 * /proc/self/pagemap says; true when it cannot be asked. */
static long pm_reads;
static bool page_has_data(const void *p)
{
	if (pm_pid != getpid()) { /* a fork child asks about its own pages */
		if (pm_fd >= 0)
			close(pm_fd);
		pm_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
		pm_pid = getpid();
		pm_page = (size_t)sysconf(_SC_PAGESIZE);
	}
	uint64_t e;
	pm_reads++;
	if (pm_fd < 0 ||
	    pread(pm_fd, &e, 8, (off_t)((uintptr_t)p / pm_page * 8)) != 8)
		return true;
	return (e >> 62) & 3;
}

/*
 * lib_read - @len bytes of a copy at @src into @dst, without reading a
 * page that holds no data (a private anonymous page nobody wrote reads
 * zero; reading it would back it on a kernel without a shared zero page,
 * and then a library read that wrongly reads such pages would add
 * nothing the backed checks could see).
 */
static void lib_read(uint8_t *dst, const uint8_t *src, size_t len)
{
	/* a fork child makes few checks of its own: plain reads are cheaper
	 * (a pagemap read costs a few microseconds, a copy nothing) */
	if (X.in_fork_child) {
		memcpy(dst, src, len);
		return;
	}
	if (!pm_page)
		(void)page_has_data(src);
	while (len) {
		size_t in = pm_page - (uintptr_t)src % pm_page;
		if (in > len)
			in = len;
		if (page_has_data(src))
			memcpy(dst, src, in);
		else
			memset(dst, 0, in);
		dst += in;
		src += in;
		len -= in;
	}
}


/* ---- backed checks around the library's own reads and frees ---- */

static bool skip_backed; /* PCPU_MODEL_SKIP=backed */

struct bk {
	bool on;
	uint64_t b;
	long rss;
};

static uint64_t backed_now(void)
{
	struct pcpu_stats st;
	pcpu_stats_get(&st);
	return st.backed_bytes;
}

/* Stamps the indexes in use now with @stamp in X.bk_used. */
static void bk_mark_used(unsigned char stamp)
{
	int c;
	pcpu_for_each_cpu(c)
		if (c >= 0 && c < X.nr)
			X.bk_used[c] = stamp;
}

/* Starts a check of the library call that @o makes next: one call in
 * 16, chosen by the operation's own bits (a replay checks the same
 * calls), or every call in the runs that check them all. */
static void bk_begin(struct bk *k, const struct op *o)
{
	uint64_t h = mix64(o->val ^ o->val2 ^ ((uint64_t)o->id << 40) ^
			   ((uint64_t)o->kind << 32) ^ o->sub ^ 0xbacced);
	/* not in a fork child: its pages are shared with the parent copy on
	 * write, and a free's legitimate zeroing of a copy that holds data
	 * makes a private copy (counted where pagemap shows no page frame
	 * numbers and the library counts exclusive pages: valgrind, or not
	 * root) */
	k->on = !skip_backed && !X.in_fork_child &&
		(X.bk_every || (h & 15) == 0);
	if (!k->on)
		return;
	X.bk_checks++;
	memset(X.bk_used, 0, (size_t)X.nr);
	bk_mark_used(1);
	k->rss = X.bk_rss ? check_rss_kib() : -1;
	k->b = backed_now();
}

/* Fails when the call since bk_begin added backed memory. */
static void bk_end(const struct bk *k, const char *what)
{
	if (!k->on || X.fkind)
		return;
	uint64_t b = backed_now();
	/* a call that acts as a CPU (a counter's sync) may bring that
	 * CPU's index into use: the fill of its initial values writes, as
	 * any first operation there would; such a call is not judged */
	int c;
	pcpu_for_each_cpu(c)
		if (c >= 0 && c < X.nr && !X.bk_used[c]) {
			X.bk_skipped++;
			return;
		}
	if (b > k->b) {
		failf(F_BACKED,
		      "%s: backed bytes %" PRIu64 " -> %" PRIu64 " KiB (+%" PRIu64
		      " KiB): the library's own reads or frees backed pages",
		      what, k->b / 1024, b / 1024, (b - k->b) / 1024);
		return;
	}
	if (k->rss >= 0) {
		long r = check_rss_kib();
		if (r > k->rss + 512) /* malloc and stack noise only */
			failf(F_BACKED,
			      "%s: VmRSS %ld -> %ld KiB (+%ld KiB): the "
			      "library's own reads or frees backed memory",
			      what, k->rss, r, r - k->rss);
	}
}

/* The indexes pcpu_for_each_cpu yields, into X.yield (at most nr + 8). */
static int yields(void)
{
	int n = 0, c;
	pcpu_for_each_cpu(c) {
		if (n < X.nr + 8)
			X.yield[n++] = c;
		else
			break;
	}
	return n;
}

static void fmt_list(char *b, size_t len, const int *v, int n)
{
	size_t k = 0;
	b[0] = 0;
	for (int i = 0; i < n && k + 24 < len; i++) {
		int j = i;
		while (j + 1 < n && v[j + 1] == v[j] + 1)
			j++;
		if (j > i)
			k += (size_t)snprintf(b + k, len - k, "%s%d-%d",
					      k ? "," : "", v[i], v[j]);
		else
			k += (size_t)snprintf(b + k, len - k, "%s%d",
					      k ? "," : "", v[i]);
		i = j;
	}
	if (!n)
		snprintf(b, len, "none");
}

/* The indexes worth reading whole: all of them up to 256 CPUs; beyond,
 * every index the model wrote, every index the library yields, and a few
 * drawn from @seed. */
static int interesting(uint64_t seed)
{
	int n = 0;
	if (X.nr <= 256) {
		for (int i = 0; i < X.nr; i++)
			X.idx[n++] = i;
		return n;
	}
	if (!++X.stamp_now) {
		memset(X.stamp, 0, (size_t)X.nr * sizeof(unsigned));
		X.stamp_now = 1;
	}
#define ADD_IDX(i)                                                             \
	do {                                                                   \
		int ii_ = (i);                                                 \
		if (ii_ >= 0 && ii_ < X.nr && X.stamp[ii_] != X.stamp_now) {   \
			X.stamp[ii_] = X.stamp_now;                            \
			X.idx[n++] = ii_;                                      \
		}                                                              \
	} while (0)
	ADD_IDX(0);
	for (int i = 0; i < X.touched.n; i++)
		ADD_IDX(X.touched.list[i]);
	int ny = yields();
	for (int i = 0; i < ny; i++)
		ADD_IDX(X.yield[i]);
	struct rng r = rng_make(seed, 0x1d);
	for (int i = 0; i < 4; i++)
		ADD_IDX((int)rng_below(&r, (uint64_t)X.nr));
#undef ADD_IDX
	return n;
}

/* Compares copy @i of @a with @want; false after reporting. */
static bool compare_copy(const struct marea *a, int i, const uint8_t *want,
			 int kind, const char *what)
{
	const uint8_t *got = X.scratch;
	lib_read(X.scratch, lib_copy(a, i), a->len);
	if (!memcmp(got, want, a->len))
		return true;
	size_t off = 0;
	while (got[off] == want[off])
		off++;
	size_t from = off & ~(size_t)3, n = a->len - from < 8 ? a->len - from : 8;
	char g[64], w[64];
	fmt_bytes(g, sizeof(g), got + from, n);
	fmt_bytes(w, sizeof(w), want + from, n);
	failf(kind, "a%u %s: cpu %d off %zu: lib %s, model %s", a->id, what, i,
	      from, g, w);
	return false;
}

static bool check_area(const struct marea *a, uint64_t seed, int kind,
		       const char *what, bool fresh)
{
	int n = interesting(seed);
	for (int k = 0; k < n; k++) {
		int i = X.idx[k];
		if (!compare_copy(a, i, fresh ? initial(a) : model_get(a, i),
				  kind, what))
			return false;
	}
	return true;
}

static void do_cover(void)
{
	int ny = yields();
	if (!++X.stamp_now) {
		memset(X.stamp, 0, (size_t)X.nr * sizeof(unsigned));
		X.stamp_now = 1;
	}
	char ys[256];
	fmt_list(ys, sizeof(ys), X.yield, ny);
	for (int k = 0; k < ny; k++) {
		if (X.yield[k] < 0 || X.yield[k] >= X.nr) {
			failf(F_COVER,
			      "pcpu_for_each_cpu yields %d, not an index below "
			      "pcpu_nr_cpu_ids() %d (yields %s)",
			      X.yield[k], X.nr, ys);
			return;
		}
		X.stamp[X.yield[k]] = X.stamp_now;
	}
	for (int j = 0; j < X.nlive; j++) {
		struct marea *a = area_get(X.live[j]);
		for (int i = 0; i < X.nr; i++) {
			if (X.stamp[i] == X.stamp_now || !model_changed(a, i))
				continue;
			failf(F_COVER,
			      "a%u copy %d differs from its initial value but "
			      "pcpu_for_each_cpu does not yield %d (yields %s)",
			      a->id, i, i, ys);
			return;
		}
	}
}

static void area_free_model(struct marea *a)
{
	for (int i = 0; i < X.nr; i++)
		free(a->copy[i]);
	free(a->copy);
	free(a->init);
	free(a);
}

static void live_remove(uint32_t id)
{
	for (int j = 0; j < X.nlive; j++)
		if (X.live[j] == id) {
			X.live[j] = X.live[--X.nlive];
			return;
		}
}

static void do_alloc(const struct op *o)
{
	errno = 0;
	char *p;
	uint8_t *init = NULL;
	if (o->kind == OP_ALLOC_INIT) {
		init = calloc(1, round4(o->size));
		REQUIRE(init);
		seed_bytes(o->val, init, o->size, o->sub);
		p = pcpu_alloc_init(o->size, o->align, init);
	} else {
		p = pcpu_alloc(o->size, o->align);
	}
	if (!p) {
		failf(F_API, "returned NULL (errno %d)", errno);
		free(init);
		return;
	}
	size_t want = o->align;
	if (!want)
		for (want = 1; want < o->size && want < 8; want <<= 1)
			;
	if ((uintptr_t)p % want) {
		failf(F_API, "%p is not aligned to %zu", (void *)p, want);
		pcpu_free(p);
		free(init);
		return;
	}
	struct marea *a = calloc(1, sizeof(*a));
	REQUIRE(a);
	a->id = o->id;
	a->size = o->size;
	a->len = (uint32_t)round4(o->size);
	a->align = o->align;
	a->p = p;
	a->init = init;
	a->copy = calloc((size_t)X.nr, sizeof(uint8_t *));
	REQUIRE(a->copy);
	REQUIRE(o->id < X.nids && !X.areas[o->id]);
	X.areas[o->id] = a;
	X.live[X.nlive++] = o->id;
	size_t usable = pcpu_alloc_size(p);
	if (usable != a->len) {
		failf(F_API, "pcpu_alloc_size(a%u) = %zu, not %u", a->id, usable,
		      a->len);
		return;
	}
	if (!skip_fresh)
		check_area(a, o->val, init ? F_INIT : F_FRESH,
			   init ? "new pcpu_alloc_init area" : "new area", true);
}

static void do_free(const struct op *o)
{
	struct marea *a = area_get(o->id);
	struct bk k;
	bk_begin(&k, o);
	pcpu_free(a->p);
	bk_end(&k, "pcpu_free");
	X.areas[o->id] = NULL;
	live_remove(o->id);
	area_free_model(a);
}

static void do_ptr(const struct op *o)
{
	struct marea *a = area_get(o->id);
	uint8_t *lib = lib_copy(a, o->cpu) + o->off;
	if (o->kind == OP_PTR_WRITE) {
		uint8_t *m = model_mut(a, o->cpu) + o->off;
		if (o->sub == WB_ZERO)
			memset(m, 0, o->len);
		else if (o->sub == WB_INITIAL)
			memcpy(m, initial(a) + o->off, o->len);
		else
			seed_bytes(o->val, m, o->len, 0);
		memcpy(lib, m, o->len);
		return;
	}
	const uint8_t *m = model_get(a, o->cpu) + o->off;
	lib_read(X.scratch, lib, o->len);
	lib = X.scratch;
	if (!memcmp(lib, m, o->len))
		return;
	char g[96], w[96];
	if (o->type != T_BYTES) {
		fmt_val(g, sizeof(g), o->type, load_w(lib, o->len));
		fmt_val(w, sizeof(w), o->type, load_w(m, o->len));
	} else {
		size_t d = 0;
		while (lib[d] == m[d])
			d++;
		size_t n = o->len - d < 8 ? o->len - d : 8;
		char gg[64], ww[64];
		fmt_bytes(gg, sizeof(gg), lib + d, n);
		fmt_bytes(ww, sizeof(ww), m + d, n);
		snprintf(g, sizeof(g), "%s at off %zu", gg, o->off + d);
		snprintf(w, sizeof(w), "%s", ww);
	}
	failf(F_READ, "lib %s, model %s", g, w);
}

/* Makes the calling thread act as CPU @cpu; returns the index its
 * operations must use, or -1 after reporting. */
static int act_as(int cpu)
{
	if (X.sim) {
		int r = pcpu_sim_set_cpu(cpu);
		if (r) {
			failf(F_API, "pcpu_sim_set_cpu(%d) = %d", cpu, r);
			return -1;
		}
		return cpu;
	}
	if (X.pinned != cpu) {
		pin_self(cpu);
		X.pinned = cpu;
	}
	if (!X.cid)
		return cpu;
	int idx = pcpu_this_cpu();
	if (idx < 0 || idx >= X.nr) {
		failf(F_THIS_CPU,
		      "pcpu_this_cpu() = %d pinned to CPU %d (cid mode): not "
		      "an index below %d",
		      idx, cpu, X.nr);
		return -1;
	}
	return idx;
}

#define LIB_OP(T, NT)                                                          \
	do {                                                                   \
		T *q = (T *)(void *)(a->p + o->off);                           \
		switch (o->kind) {                                             \
		case OP_ADD:                                                   \
			pcpu_add(q, (T)o->val);                                \
			break;                                                 \
		case OP_SUB:                                                   \
			pcpu_sub(q, (T)o->val);                                \
			break;                                                 \
		case OP_SUBN:                                                  \
			pcpu_sub(q, (NT)o->val);                               \
			break;                                                 \
		case OP_INC:                                                   \
			pcpu_inc(q);                                           \
			break;                                                 \
		case OP_DEC:                                                   \
			pcpu_dec(q);                                           \
			break;                                                 \
		case OP_WRITE:                                                 \
			pcpu_write(q, (T)o->val);                              \
			break;                                                 \
		default:                                                       \
			got = (uint64_t)pcpu_read(q);                          \
		}                                                              \
	} while (0)

static void do_this(const struct op *o)
{
	struct marea *a = area_get(o->id);
	int idx = act_as(o->cpu);
	if (idx < 0)
		return;
	unsigned w = twidth(o->type);
	uint64_t got = 0;
	switch (o->type) {
	case T_INT:
		LIB_OP(int, unsigned short);
		break;
	case T_UINT:
		LIB_OP(unsigned int, unsigned short);
		break;
	case T_LONG:
		LIB_OP(long, unsigned int);
		break;
	default:
		LIB_OP(unsigned long, unsigned int);
	}
	if (X.cid) {
		int after = pcpu_this_cpu();
		if (after != idx) {
			/* the concurrency id changed while pinned: which copy
			 * the operation used is unknown; take the library's
			 * two candidates (rare: one thread, pinned) */
			X.cid_moves++;
			if (after >= 0 && after < X.nr) {
				lib_read(model_mut(a, idx) + o->off,
					 lib_copy(a, idx) + o->off, w);
				lib_read(model_mut(a, after) + o->off,
					 lib_copy(a, after) + o->off, w);
			}
			return;
		}
	}
	if (o->kind == OP_READ) {
		uint64_t want = load_w(model_get(a, idx) + o->off, w);
		got &= wmask(w);
		if (got != want) {
			char g[32], m[32];
			fmt_val(g, sizeof(g), o->type, got);
			fmt_val(m, sizeof(m), o->type, want);
			failf(F_THIS_READ, "pcpu_read as CPU %d = %s, copy %d in "
					   "the model = %s",
			      o->cpu, g, idx, m);
		}
		return;
	}
	uint8_t *m = model_mut(a, idx) + o->off;
	uint64_t v = load_w(m, w);
	switch (o->kind) {
	case OP_ADD:
		v += o->val;
		break;
	case OP_SUB:
		v -= o->val;
		break;
	case OP_SUBN:
		v -= narrow(o);
		break;
	case OP_INC:
		v++;
		break;
	case OP_DEC:
		v--;
		break;
	case OP_WRITE:
		v = o->val;
		break;
	}
	store_w(m, w, v & wmask(w));
	if (!X.sim || iset_has(&X.online, o->cpu))
		iset_add(&X.ran, idx);
}

static void do_this_cpu(const struct op *o)
{
	if (X.sim) {
		int r = pcpu_sim_set_cpu(o->cpu);
		if (r) {
			failf(F_API, "pcpu_sim_set_cpu(%d) = %d", o->cpu, r);
			return;
		}
	} else if (X.pinned != o->cpu) {
		pin_self(o->cpu);
		X.pinned = o->cpu;
	}
	int got = pcpu_this_cpu();
	if (got < 0 || got >= X.nr)
		failf(F_THIS_CPU, "pcpu_this_cpu() = %d acting as CPU %d: not an "
				  "index below pcpu_nr_cpu_ids() %d",
		      got, o->cpu, X.nr);
	else if (!X.cid && got != o->cpu)
		failf(F_THIS_CPU, "pcpu_this_cpu() = %d acting as CPU %d", got,
		      o->cpu);
}

static void do_sum(const struct op *o)
{
	struct marea *a = area_get(o->id);
	unsigned w = twidth(o->type);
	const void *q = a->p + o->off;
	uint64_t got = 0;
	int ny = 0;
	struct bk bk;
	bk_begin(&bk, o);
	/* the yielded set, stable around the sum (the balance worker may
	 * release a unit meanwhile) */
	for (int tries = 0; tries < 8; tries++) {
		ny = yields();
		switch (o->type) {
		case T_INT:
			got = (uint64_t)pcpu_sum((const int *)q);
			break;
		case T_UINT:
			got = (uint64_t)pcpu_sum((const unsigned int *)q);
			break;
		case T_LONG:
			got = (uint64_t)pcpu_sum((const long *)q);
			break;
		default:
			got = (uint64_t)pcpu_sum((const unsigned long *)q);
		}
		int ny2 = 0, c;
		bool same = true;
		pcpu_for_each_cpu(c) {
			if (ny2 >= ny || X.yield[ny2] != c) {
				same = false;
				break;
			}
			ny2++;
		}
		if (same && ny2 == ny)
			break;
	}
	bk_end(&bk, "pcpu_sum");
	if (X.fkind)
		return;
	uint64_t want = 0;
	char g[32], m[32], ys[256];
	fmt_list(ys, sizeof(ys), X.yield, ny);
	got &= wmask(w);
	fmt_val(g, sizeof(g), o->type, got);
	/* every index not yielded holds its initial value (here) */
	if (!++X.stamp_now) {
		memset(X.stamp, 0, (size_t)X.nr * sizeof(unsigned));
		X.stamp_now = 1;
	}
	for (int k = 0; k < ny; k++)
		if (X.yield[k] >= 0 && X.yield[k] < X.nr) {
			X.stamp[X.yield[k]] = X.stamp_now;
			want += load_w(model_get(a, X.yield[k]) + o->off, w);
		}
	uint64_t init = load_w(initial(a) + o->off, w);
	for (int i = 0; i < X.nr; i++) {
		if (X.stamp[i] == X.stamp_now || !a->copy[i])
			continue;
		uint64_t v = load_w(a->copy[i] + o->off, w);
		if (v == init)
			continue;
		char cv[32], iv[32];
		fmt_val(cv, sizeof(cv), o->type, v);
		fmt_val(iv, sizeof(iv), o->type, init);
		failf(F_SUM, "pcpu_sum = %s misses copy %d = %s (initial %s): "
			     "index %d is not yielded (yields %s)",
		      g, i, cv, iv, i, ys);
		return;
	}
	want &= wmask(w);
	if (got != want) {
		char extra[96] = "";
		for (int k = 0; k < ny; k++)
			if (X.yield[k] < 0 || X.yield[k] >= X.nr) {
				snprintf(extra, sizeof(extra),
					 "; %d is no index below "
					 "pcpu_nr_cpu_ids() %d",
					 X.yield[k], X.nr);
				break;
			}
		fmt_val(m, sizeof(m), o->type, want);
		failf(F_SUM, "lib %s, model %s (the model's sum over the yielded "
			     "indexes %s%s)",
		      g, m, ys, extra);
	}
}

static void do_hotplug(const struct op *o)
{
	int r;
	if (o->kind == OP_OFFLINE) {
		r = pcpu_sim_cpu_offline(o->cpu);
		if (r == 0)
			iset_del(&X.online, o->cpu);
		else if (r != -EAGAIN)
			failf(F_API, "pcpu_sim_cpu_offline(%d) = %d", o->cpu, r);
		iset_del(&X.ran, o->cpu);
	} else {
		r = pcpu_sim_cpu_online(o->cpu);
		if (r != 0 && r != -ENOMEM &&
		    !(r == -EIO && X.cb_handle >= 0 && X.cb_fail[o->cpu]))
			failf(F_API, "pcpu_sim_cpu_online(%d) = %d", o->cpu, r);
		iset_add(&X.online, o->cpu); /* online even if not ready */
	}
	if (X.print && r)
		fprintf(stderr, "    (returned %d)\n", r);
}

static void check_all(uint64_t seed, const char *what)
{
	do_cover();
	for (int j = 0; j < X.nlive && !X.fkind; j++)
		check_area(area_get(X.live[j]), seed + (uint64_t)j, F_READ, what,
			   false);
}

/* ---- counters ---- */

static struct mctr *ctr_get(uint32_t id)
{
	return id < X.nids ? X.ctrs[id] : NULL;
}

static void fmt_i64(char *b, size_t n, uint64_t v)
{
	snprintf(b, n, "%" PRId64, (int64_t)v);
}

/* |a - b| modulo 2^64, as the distance on the circle of int64_t. */
static uint64_t wrap_dist(uint64_t a, uint64_t b)
{
	uint64_t d = a - b;
	return (int64_t)d < 0 ? 0 - d : d;
}

static void do_ctr_init(const struct op *o)
{
	char f[64];
	fmt_cflags(f, sizeof(f), o->align);
	if (o->sub == CI_BAD) {
		struct pcpu_counter c;
		memset(&c, 0, sizeof(c));
		int r = pcpu_counter_init(&c, (int64_t)o->val, o->align);
		if (r != -EINVAL) {
			failf(F_COUNTER, "pcpu_counter_init(flags %s) = %d, not "
					 "-EINVAL",
			      f, r);
			if (!r)
				pcpu_counter_destroy(&c);
		}
		return;
	}
	struct mctr *m = calloc(1, sizeof(*m));
	REQUIRE(m);
	m->id = o->id;
	m->n = o->len;
	m->flags = o->align;
	m->zero = o->sub == CI_ZERO;
	size_t bytes = (m->n * sizeof(struct pcpu_counter) + 63) & ~(size_t)63;
	m->c = aligned_alloc(64, bytes);
	REQUIRE(m->c);
	memset(m->c, 0, bytes);
	if (!m->zero) {
		int r = o->sub == CI_MANY
				? pcpu_counter_init_many(m->c, (int64_t)o->val,
							 m->n, m->flags)
				: pcpu_counter_init(m->c, (int64_t)o->val,
						    m->flags);
		if (r) {
			failf(F_API, "pcpu_counter_init%s(flags %s) = %d",
			      o->sub == CI_MANY ? "_many" : "", f, r);
			free(m->c);
			free(m);
			return;
		}
		for (uint32_t i = 0; i < m->n; i++) {
			m->v[i] = o->val;
			m->maxb[i] = PCPU_COUNTER_BATCH;
			bool want = m->flags & PCPU_COUNTER_EAGER;
			if (pcpu_counter_is_percpu(&m->c[i]) != want) {
				failf(F_COUNTER, "c%u.%u with flags %s: "
						 "pcpu_counter_is_percpu %d",
				      m->id, i, f, !want);
				break;
			}
		}
	}
	REQUIRE(o->id < X.nids && !X.ctrs[o->id]);
	X.ctrs[o->id] = m;
}

/* Checks the counter's value against the model after an update that
 * should leave it exact (a sync, a set). */
static void ctr_expect_sum(struct mctr *m, uint32_t i, const char *after)
{
	uint64_t got = (uint64_t)pcpu_counter_sum(&m->c[i]);
	if (got != m->v[i]) {
		char g[32], w[32];
		fmt_i64(g, sizeof(g), got);
		fmt_i64(w, sizeof(w), m->v[i]);
		failf(F_COUNTER, "c%u.%u after %s: pcpu_counter_sum = %s, model %s",
		      m->id, i, after, g, w);
	}
}

static void do_ctr_update(const struct op *o)
{
	struct mctr *m = ctr_get(o->id);
	uint32_t i = o->off;
	struct pcpu_counter *c = &m->c[i];
	int64_t v = (int64_t)o->val;
	struct bk k;
	int r;
	switch (o->kind) {
	case OP_CTR_ADD:
		if (act_as(o->cpu) < 0)
			return;
		switch (o->sub) {
		case CA_ADD:
			pcpu_counter_add(c, v);
			m->v[i] += o->val;
			break;
		case CA_SUB:
			pcpu_counter_sub(c, v);
			m->v[i] -= o->val;
			break;
		case CA_INC:
			pcpu_counter_inc(c);
			m->v[i]++;
			break;
		case CA_DEC:
			pcpu_counter_dec(c);
			m->v[i]--;
			break;
		case CA_BATCH: {
			int32_t b = (int32_t)o->size;
			pcpu_counter_add_batch(c, v, b);
			m->v[i] += o->val;
			if (b > m->maxb[i])
				m->maxb[i] = b;
			break;
		}
		case CA_LOCAL:
			pcpu_counter_add_local(c, v);
			m->v[i] += o->val;
			if (PCPU_COUNTER_LOCAL_BATCH > m->maxb[i])
				m->maxb[i] = PCPU_COUNTER_LOCAL_BATCH;
			break;
		}
		return;
	case OP_CTR_SET:
		bk_begin(&k, o);
		pcpu_counter_set(c, v);
		bk_end(&k, "pcpu_counter_set");
		m->v[i] = o->val;
		if (!X.fkind)
			ctr_expect_sum(m, i, "pcpu_counter_set");
		return;
	case OP_CTR_BATCH: {
		bool ok = v >= 1 && v <= PCPU_COUNTER_MAX_BATCH;
		r = pcpu_counter_set_batch(c, v);
		if (r != (ok ? 0 : -EINVAL)) {
			failf(F_COUNTER, "pcpu_counter_set_batch(c%u.%u, %" PRId64
					 ") = %d, not %d",
			      m->id, i, v, r, ok ? 0 : -EINVAL);
			return;
		}
		if (ok && v > m->maxb[i])
			m->maxb[i] = v;
		return;
	}
	case OP_CTR_SYNC:
		if (act_as(o->cpu) < 0)
			return;
		bk_begin(&k, o);
		pcpu_counter_sync(c);
		bk_end(&k, "pcpu_counter_sync");
		if (!X.fkind)
			ctr_expect_sum(m, i, "pcpu_counter_sync");
		return;
	case OP_CTR_PERCPU: {
		bool atomic = m->flags & PCPU_COUNTER_ATOMIC;
		r = pcpu_counter_go_percpu(c);
		if (r != (atomic ? -EINVAL : 0))
			failf(F_COUNTER, "pcpu_counter_go_percpu(c%u.%u) = %d, "
					 "not %d",
			      m->id, i, r, atomic ? -EINVAL : 0);
		else if (pcpu_counter_is_percpu(c) == atomic)
			failf(F_COUNTER, "c%u.%u after go_percpu: "
					 "pcpu_counter_is_percpu %d",
			      m->id, i, atomic);
		return;
	}
	}
}

/* Checks a read @got with its bound @b against the exact value. */
static void ctr_check_read(struct mctr *m, uint32_t i, const char *what,
			   uint64_t got, int64_t b)
{
	struct pcpu_counter *c = &m->c[i];
	char g[32], w[32];
	fmt_i64(g, sizeof(g), got);
	fmt_i64(w, sizeof(w), m->v[i]);
	bool exact = (m->flags & PCPU_COUNTER_EXACT_READS) ||
		     !pcpu_counter_is_percpu(c);
	/* (B - 1) x the indexes that can hold residue, at most every index */
	__int128 most = exact ? 0 : (__int128)(m->maxb[i] - 1) * X.nr;
	if (b < 0 || (__int128)b > most) {
		failf(F_COUNTER, "c%u.%u %s: error bound %" PRId64 ", not in 0..%"
				 PRId64 " ((B - 1) x pcpu_nr_cpu_ids(), B = %" PRId64
				 "%s)",
		      m->id, i, what, b, (int64_t)most, m->maxb[i],
		      exact ? "; 0: no slots or EXACT_READS" : "");
		return;
	}
	if (wrap_dist(got, m->v[i]) > (uint64_t)b)
		failf(F_COUNTER, "c%u.%u %s = %s, model %s: off by more than the "
				 "error bound %" PRId64,
		      m->id, i, what, g, w, b);
}

static void do_ctr_read(const struct op *o)
{
	struct mctr *m = ctr_get(o->id);
	uint32_t i = o->off;
	struct pcpu_counter *c = &m->c[i];
	struct bk k;
	uint64_t got = 0, want = m->v[i];
	int64_t b = 0, x = 0;
	bk_begin(&k, o);
	switch (o->sub) {
	case CR_SUM:
		got = (uint64_t)pcpu_counter_sum(c);
		break;
	case CR_SUMPOS:
		got = (uint64_t)pcpu_counter_sum_positive(c);
		want = (int64_t)want > 0 ? want : 0;
		break;
	case CR_READ:
		got = (uint64_t)pcpu_counter_read(c);
		b = pcpu_counter_error_bound(c);
		break;
	case CR_READPOS:
		x = pcpu_counter_read(c);
		got = (uint64_t)pcpu_counter_read_positive(c);
		b = pcpu_counter_error_bound(c);
		break;
	case CR_BOUNDED:
		got = (uint64_t)pcpu_counter_read_bounded(c, &b);
		break;
	case CR_BOUND:
		b = pcpu_counter_error_bound(c);
		got = (uint64_t)pcpu_counter_read(c);
		break;
	}
	bk_end(&k, cr_name[o->sub]);
	if (X.fkind)
		return;
	char g[32], w[32], what[64];
	snprintf(what, sizeof(what), "pcpu_counter_%s", cr_name[o->sub]);
	if (o->sub == CR_SUM || o->sub == CR_SUMPOS) {
		if (got != want) {
			fmt_i64(g, sizeof(g), got);
			fmt_i64(w, sizeof(w), want);
			failf(F_COUNTER, "c%u.%u %s = %s, model %s", m->id, i, what,
			      g, w);
		}
		return;
	}
	if (o->sub == CR_READPOS) {
		int64_t rp = (int64_t)got;
		if (rp != (x > 0 ? x : 0)) {
			failf(F_COUNTER, "c%u.%u read_positive = %" PRId64
					 " but read = %" PRId64,
			      m->id, i, rp, x);
			return;
		}
		got = (uint64_t)x;
	}
	ctr_check_read(m, i, what, got, b);
}

/* compare, compare_batch, limited_add: decided by exact arithmetic on
 * the wrapped value (counter.h, "Range"). */
static void do_ctr_decide(const struct op *o)
{
	struct mctr *m = ctr_get(o->id);
	uint32_t i = o->off;
	struct pcpu_counter *c = &m->c[i];
	int64_t val = (int64_t)m->v[i];
	int64_t x = o->align == CV_REL ? (int64_t)(m->v[i] + o->val2)
				       : (int64_t)o->val2;
	char w[32];
	fmt_i64(w, sizeof(w), m->v[i]);
	if (o->kind == OP_CTR_CMP) {
		struct bk k;
		int got, want = val > x ? 1 : val < x ? -1 : 0;
		bk_begin(&k, o);
		if (o->sub)
			got = pcpu_counter_compare_batch(c, x, (int32_t)o->size);
		else
			got = pcpu_counter_compare(c, x);
		bk_end(&k, "pcpu_counter_compare");
		if (!X.fkind && got != want)
			failf(F_COUNTER, "c%u.%u compare%s(rhs %" PRId64 ") = %d, "
					 "model %d (value %s)",
			      m->id, i, o->sub ? "_batch" : "", x, got, want, w);
		return;
	}
	if (act_as(o->cpu) < 0)
		return;
	int64_t v = (int64_t)o->val;
	bool want = v <= 0 || (__int128)val + v <= x;
	bool got = pcpu_counter_limited_add(c, x, v);
	if (got != want) {
		failf(F_COUNTER, "c%u.%u limited_add(limit %" PRId64 ", v %" PRId64
				 ") = %s, model %s (value %s)",
		      m->id, i, x, v, got ? "true" : "false",
		      want ? "true" : "false", w);
		return;
	}
	if (want)
		m->v[i] += (uint64_t)v;
}

static void ctr_free_model(struct mctr *m)
{
	free(m->c);
	free(m);
}

static void do_ctr_destroy(const struct op *o)
{
	struct mctr *m = ctr_get(o->id);
	struct bk k;
	bk_begin(&k, o);
	for (int t = 0; t <= o->sub; t++) {
		if (m->n == 1)
			pcpu_counter_destroy(m->c);
		else
			pcpu_counter_destroy_many(m->c, m->n);
	}
	bk_end(&k, "pcpu_counter_destroy");
	if (m->zero && !X.fkind) {
		const unsigned char *b = (const unsigned char *)m->c;
		for (size_t j = 0; j < m->n * sizeof(struct pcpu_counter); j++)
			if (b[j]) {
				failf(F_COUNTER, "c%u: destroying the zero-filled, "
						 "never initialised counter wrote "
						 "byte %zu",
				      m->id, j);
				break;
			}
	}
	X.ctrs[o->id] = NULL;
	ctr_free_model(m);
}

/* ---- hotplug callbacks ---- */

static int cb_online(int cpu, void *arg)
{
	(void)arg;
	return X.cb_fail && X.cb_fail[cpu] ? -EIO : 0;
}

static void do_callback(const struct op *o)
{
	if (o->sub) {
		int r = pcpu_hotplug_unregister(X.cb_handle);
		if (r)
			failf(F_API, "pcpu_hotplug_unregister = %d", r);
		X.cb_handle = -1;
		return;
	}
	/* fails on a third of the CPUs that are not ready now: the
	 * registration itself runs the callback on the ready ones */
	int nfail = 0;
	for (int c = 0; c < X.nr; c++) {
		int st = pcpu_cpu_state(c);
		X.cb_fail[c] = st >= 0 && !(st & PCPU_CPU_READY) &&
			       mix64(o->val + (uint64_t)c) % 3 == 0;
		nfail += X.cb_fail[c];
	}
	int h = pcpu_hotplug_register("model", cb_online, NULL, NULL);
	if (h < 0) {
		failf(F_API, "pcpu_hotplug_register = %d", h);
		return;
	}
	X.cb_handle = h;
	if (X.print)
		fprintf(stderr, "    (fails on %d CPUs)\n", nfail);
}

static void exec_op(const struct op *o);
static bool runnable(const struct op *o);

/* The fork child: sees the parent's values, then goes on operating on
 * its own copies with a few operations drawn from @seed. */
static void fork_child(const struct op *fo)
{
	X.in_fork_child = true;
	X.sub = 0;
	check_all(fo->val, "after fork");
	struct gen g;
	memset(&g, 0, sizeof(g));
	g.r = rng_make(fo->val, 0xf0f0);
	g.nr = X.nr;
	g.sim = X.sim;
	g.child = true;
	iset_copy(&g.online, &X.online, X.nr);
	iset_copy(&g.ran, &X.ran, X.nr);
	for (int j = 0; j < X.nlive && g.nlive < MAX_LIVE; j++) {
		struct marea *a = area_get(X.live[j]);
		struct garea *ga = &g.live[g.nlive++];
		ga->id = a->id;
		ga->size = a->size;
		ga->len = a->len;
		ga->align = a->align;
		ga->init = a->init != NULL;
		ga->a8 = a->align >= 8 || (a->align == 0 && a->size > 4);
		g.nbig += a->size > 4096;
	}
	g.next_id = X.nids - CHILD_OPS - 1;
	for (int k = 1; k <= CHILD_OPS && !X.fkind; k++) {
		struct op o;
		gen_one(&g, &o);
		X.sub = k;
		if (runnable(&o))
			exec_op(&o);
	}
	X.sub = CHILD_OPS + 1;
	if (!X.fkind) {
		struct op ca = { .kind = OP_CHECK_ALL, .val = fo->val };
		exec_op(&ca);
	}
	iset_free(&g.online);
	iset_free(&g.ran);
	fflush(NULL);
	_exit(X.fkind ? 10 + X.fkind : 0);
}

static void do_fork(const struct op *o)
{
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		failf(F_API, "fork: %s", strerror(errno));
		return;
	}
	if (pid == 0)
		fork_child(o);
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
		return;
	int kind = F_FORK;
	if (WIFEXITED(st) && WEXITSTATUS(st) > 10 &&
	    WEXITSTATUS(st) < 10 + NR_FKINDS) {
		kind = WEXITSTATUS(st) - 10;
		X.child_said = true; /* it printed the operation */
	}
	if (WIFSIGNALED(st))
		failf(F_CRASH, "the fork child died of signal %d",
		      WTERMSIG(st));
	else
		failf(kind, "the fork child failed (exit status %d, %s)",
		      WEXITSTATUS(st), fname[kind]);
}

static void exec_op(const struct op *o)
{
	struct bk k;
	X.cur = *o;
	if (X.print && X.opnum >= X.print_from)
		print_op(o);
	switch (o->kind) {
	case OP_ALLOC:
	case OP_ALLOC_INIT:
		do_alloc(o);
		break;
	case OP_FREE:
		do_free(o);
		break;
	case OP_PTR_WRITE:
	case OP_PTR_READ:
		do_ptr(o);
		break;
	case OP_ADD:
	case OP_SUB:
	case OP_SUBN:
	case OP_INC:
	case OP_DEC:
	case OP_WRITE:
	case OP_READ:
		do_this(o);
		break;
	case OP_THIS_CPU:
		do_this_cpu(o);
		break;
	case OP_SUM:
		do_sum(o);
		break;
	case OP_COVER:
		do_cover();
		break;
	case OP_CHECK:
		check_area(area_get(o->id), o->val, F_READ, "check", false);
		break;
	case OP_CHECK_ALL:
		check_all(o->val, "check");
		break;
	case OP_OFFLINE:
	case OP_ONLINE:
		do_hotplug(o);
		break;
	case OP_TRIM:
		bk_begin(&k, o);
		pcpu_trim();
		bk_end(&k, "pcpu_trim");
		break;
	case OP_DRAIN:
		bk_begin(&k, o);
		pcpu_drain(o->sub ? PCPU_DRAIN_PAGES : 0);
		bk_end(&k, "pcpu_drain");
		break;
	case OP_BALANCE:
		if (!X.sim) /* the library reads the main thread's affinity */
			unpin_self();
		pcpu_balance();
		if (!X.sim)
			pin_self(X.pinned);
		break;
	case OP_FORK:
		do_fork(o);
		break;
	case OP_VALIDATE: {
		bk_begin(&k, o);
		int r = pcpu_validate();
		if (r)
			failf(F_VALIDATE, "pcpu_validate() = %d", r);
		bk_end(&k, "pcpu_validate");
		break;
	}
	case OP_CTR_INIT:
		do_ctr_init(o);
		break;
	case OP_CTR_ADD:
	case OP_CTR_SET:
	case OP_CTR_BATCH:
	case OP_CTR_SYNC:
	case OP_CTR_PERCPU:
		do_ctr_update(o);
		break;
	case OP_CTR_READ:
		do_ctr_read(o);
		break;
	case OP_CTR_CMP:
	case OP_CTR_LIMIT:
		do_ctr_decide(o);
		break;
	case OP_CTR_DESTROY:
		do_ctr_destroy(o);
		break;
	case OP_CALLBACK:
		do_callback(o);
		break;
	}
	if (X.report[0] && !X.fkind)
		failf(F_REPORT, "the library reported: %s", X.report);
}

/* Whether @o can run in the replayed subset (its area may not exist). */
static bool runnable(const struct op *o)
{
	if ((kinfo[o->kind].flags & K_AREA) && !area_get(o->id))
		return false;
	if ((kinfo[o->kind].flags & K_CTR0) && !ctr_get(o->id))
		return false;
	if ((kinfo[o->kind].flags & K_CTR) &&
	    (!ctr_get(o->id) || ctr_get(o->id)->zero))
		return false;
	if (o->kind == OP_CALLBACK)
		return (X.cb_handle >= 0) == (o->sub == 1);
	/* development: pcpu_ptr only on indexes that ran (in cid mode the
	 * generator cannot know them) */
	if (skip_ptr_any &&
	    (o->kind == OP_PTR_WRITE || o->kind == OP_PTR_READ))
		return iset_has(&X.ran, o->cpu);
	if (o->kind == OP_OFFLINE) /* keep one online CPU */
		return !(X.online.n == 1 && iset_has(&X.online, o->cpu));
	return true;
}

/* ==================================================================== */
/* One configuration, in this process                                    */

struct run_args {
	const struct mode *mode;
	uint64_t seed;
	long steps;
	const char *keep;   /* list or @file, NULL: all */
	const char *result; /* file for the driver, NULL: none */
	bool print;
	long print_from;
};

/* Parses "3,7,10-12" (or @file holding that) into @keep[0..n). */
static void keep_parse(const char *spec, bool *keep, long n)
{
	char *text = NULL;
	if (spec[0] == '@') {
		FILE *f = fopen(spec + 1, "r");
		REQUIRE(f);
		size_t cap = 0;
		REQUIRE(getdelim(&text, &cap, 0, f) >= 0 || feof(f));
		fclose(f);
		if (!text)
			text = strdup("");
	} else {
		text = strdup(spec);
	}
	REQUIRE(text);
	for (char *s = text; *s;) {
		char *end;
		long a = strtol(s, &end, 10), b = a;
		if (end == s) {
			s++;
			continue;
		}
		if (*end == '-')
			b = strtol(end + 1, &end, 10);
		for (long i = a; i <= b; i++)
			if (i >= 0 && i < n)
				keep[i] = true;
		s = end;
	}
	free(text);
}

static void parse_skip(void)
{
	const char *s = getenv("PCPU_MODEL_SKIP");
	if (!s || !*s)
		return;
	char *dup = strdup(s), *save = NULL;
	REQUIRE(dup);
	for (char *t = strtok_r(dup, ",", &save); t;
	     t = strtok_r(NULL, ",", &save)) {
		bool found = true;
		if (!strcmp(t, "ptr-any"))
			skip_ptr_any = true;
		else if (!strcmp(t, "offline-ops"))
			skip_offline_ops = true;
		else if (!strcmp(t, "fresh"))
			skip_fresh = true;
		else if (!strcmp(t, "backed"))
			skip_backed = true;
		else {
			found = false;
			for (int k = 0; k < NR_OPKINDS; k++)
				if (!strcmp(t, kinfo[k].name)) {
					skip_kinds |= 1ull << k;
					found = true;
				}
		}
		if (!found) {
			fprintf(stderr, "PCPU_MODEL_SKIP: unknown name '%s'\n",
				t);
			exit(2);
		}
	}
	free(dup);
}

static bool on_valgrind(void);
static long env_long(const char *name, long def);

static void on_report(const char *what, const void *ptr, void *arg)
{
	(void)arg;
	if (!X.report[0])
		snprintf(X.report, sizeof(X.report), "%s (%p)", what, ptr);
}

/* Runs @ra in this process; returns 0 (pass), 1 (failed) or 2 (skipped).
 * The library must be untouched and the mode's environment set. */
static int run_here(const struct run_args *ra)
{
	const struct mode *m = ra->mode;
	real_cpus_init();
	/* sim: one real CPU, so the object caches (chosen by the real CPU on
	 * the atomic path) behave the same in every replay */
	if (m->sim)
		pin_self(real_cpus[0]);
	REQUIRE(pcpu_init() == 0);
	check_test_path();
	if (m->cid && pcpu_index_mode() != PCPU_INDEX_CID) {
		fprintf(stderr, "    cid: no kernel mm_cid (or no rseq): "
				"skipped\n");
		return 2;
	}
	memset(&X, 0, sizeof(X));
	X.mode = m;
	X.seed = ra->seed;
	X.nr = pcpu_nr_cpu_ids();
	X.sim = m->sim != 0;
	X.cid = m->cid;
	X.print = ra->print;
	X.print_from = ra->print_from;
	REQUIRE(!m->sim || X.nr == m->sim);
	REQUIRE(X.nr > 0 && X.nr <= PCPU_MAX_CPUS);
	if (!X.sim) {
		for (int i = 0; i < nr_real_cpus; i++)
			REQUIRE(real_cpus[i] < X.nr);
		X.pinned = real_cpus[0];
		pin_self(X.pinned);
	}

	long n = ra->steps < 2 ? 2 : ra->steps;
	struct op *ops = calloc((size_t)n, sizeof(*ops));
	bool *keep = calloc((size_t)n, sizeof(bool));
	long *executed = calloc((size_t)n, sizeof(long));
	REQUIRE(ops && keep && executed);
	X.nids = (uint32_t)n + CHILD_OPS + 2;
	X.areas = calloc(X.nids, sizeof(*X.areas));
	X.live = calloc(X.nids, sizeof(*X.live));
	X.zero = calloc(1, ZERO_LEN);
	X.idx = calloc((size_t)X.nr + 8, sizeof(int));
	X.yield = calloc((size_t)X.nr + 8, sizeof(int));
	X.stamp = calloc((size_t)X.nr + 8, sizeof(unsigned));
	REQUIRE(X.areas && X.live && X.zero && X.idx && X.yield && X.stamp);
	X.ctrs = calloc(X.nids, sizeof(*X.ctrs));
	X.scratch = calloc(1, ZERO_LEN);
	X.cb_fail = calloc((size_t)X.nr, sizeof(bool));
	X.bk_used = calloc((size_t)X.nr, 1);
	REQUIRE(X.ctrs && X.scratch && X.cb_fail && X.bk_used);
	X.cb_handle = -1;
	/* one run in 16 checks backed bytes at every library read */
	X.bk_every = (mix64(ra->seed ^ 0xbacced) & 15) == 0 ||
		     env_long("PCPU_MODEL_BACKED_ALL", 0);
#if !defined(PCPU_TEST_LSAN)
	X.bk_rss = !PCPU_TEST_TSAN && !on_valgrind();
#endif
	pcpu_set_error_handler(on_report, NULL);
	iset_init(&X.touched, X.nr);
	iset_init(&X.online, X.nr);
	iset_init(&X.ran, X.nr);
	for (int c = 0; c < X.nr; c++) {
		int st = pcpu_cpu_state(c);
		if (!X.sim || (st >= 0 && (st & PCPU_CPU_ONLINE)))
			iset_add(&X.online, c);
	}

	/* the whole sequence first: it depends on the seed alone */
	struct gen g;
	memset(&g, 0, sizeof(g));
	g.r = rng_make(ra->seed, 1);
	g.nr = X.nr;
	g.sim = X.sim;
	g.worker = m->worker;
	iset_copy(&g.online, &X.online, X.nr);
	iset_init(&g.ran, X.nr);
	for (long i = 0; i < n - 1; i++)
		gen_one(&g, &ops[i]);
	ops[n - 1].kind = OP_CHECK_ALL;
	ops[n - 1].val = rng_next(&g.r);
	iset_free(&g.online);
	iset_free(&g.ran);

	if (ra->keep)
		keep_parse(ra->keep, keep, n);
	else
		memset(keep, 1, (size_t)n * sizeof(bool));

	long nexec = 0;
	for (long i = 0; i < n && !X.fkind; i++) {
		if (!keep[i] || !runnable(&ops[i]))
			continue;
		executed[nexec++] = i;
		X.opnum = i;
		X.sub = 0;
		exec_op(&ops[i]);
	}
	if (X.print || getenv("PCPU_MODEL_VERBOSE"))
		fprintf(stderr,
			"    %ld backed checks (%ld not judged: an index came "
			"into use), %ld pagemap reads%s\n",
			X.bk_checks, X.bk_skipped, pm_reads,
			X.bk_every ? " (this run checks every library read)"
				   : "");
	if (X.cid_moves)
		fprintf(stderr, "    cid: the concurrency id changed during %ld "
				"operations (their copies were taken from the "
				"library)\n",
			X.cid_moves);

	if (ra->result) {
		FILE *f = fopen(ra->result, "w");
		REQUIRE(f);
		if (X.fkind)
			fprintf(f, "FAIL %s %ld\n", fname[X.fkind], X.fat);
		else
			fprintf(f, "PASS\n");
		fprintf(f, "EXEC");
		for (long i = 0; i < nexec; i++)
			fprintf(f, " %ld", executed[i]);
		fprintf(f, "\nALLOCS");
		for (long i = 0; i < nexec; i++)
			if (ops[executed[i]].kind == OP_ALLOC ||
			    ops[executed[i]].kind == OP_ALLOC_INIT)
				fprintf(f, " %ld", executed[i]);
		fprintf(f, "\n");
		REQUIRE(fclose(f) == 0);
	}

	/* leave nothing behind (valgrind runs this in its own process) */
	for (int j = X.nlive - 1; j >= 0; j--) {
		struct marea *a = area_get(X.live[j]);
		pcpu_free(a->p);
		area_free_model(a);
	}
	for (uint32_t id = 0; id < X.nids; id++) {
		struct mctr *mc = X.ctrs[id];
		if (!mc)
			continue;
		if (mc->n == 1)
			pcpu_counter_destroy(mc->c);
		else
			pcpu_counter_destroy_many(mc->c, mc->n);
		ctr_free_model(mc);
	}
	if (X.cb_handle >= 0)
		pcpu_hotplug_unregister(X.cb_handle);
	pcpu_set_error_handler(NULL, NULL);
	free(X.ctrs);
	free(X.scratch);
	free(X.cb_fail);
	free(X.bk_used);
	iset_free(&X.touched);
	iset_free(&X.online);
	iset_free(&X.ran);
	free(X.areas);
	free(X.live);
	free(X.zero);
	free(X.idx);
	free(X.yield);
	free(X.stamp);
	free(ops);
	free(keep);
	free(executed);
	return X.fkind ? 1 : 0;
}

/* ==================================================================== */
/* The driver: configurations in fresh processes, shrinking              */

static char tmpdir[256];
static int scale_valgrind;

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

struct result {
	int kind; /* F_NONE: passed; -1: skipped */
	long at;
	long *exec, nexec;
	long *allocs, nallocs;
};

static void result_free(struct result *r)
{
	free(r->exec);
	free(r->allocs);
	memset(r, 0, sizeof(*r));
}

static long *parse_longs(const char *s, long *n)
{
	long cap = 64, k = 0;
	long *v = malloc((size_t)cap * sizeof(long));
	REQUIRE(v);
	while (*s) {
		char *end;
		long x = strtol(s, &end, 10);
		if (end == s) {
			s++;
			continue;
		}
		if (k == cap) {
			cap *= 2;
			v = realloc(v, (size_t)cap * sizeof(long));
			REQUIRE(v);
		}
		v[k++] = x;
		s = end;
	}
	*n = k;
	return v;
}

static void write_keep(const char *path, const long *v, long n)
{
	FILE *f = fopen(path, "w");
	REQUIRE(f);
	for (long i = 0; i < n; i++)
		fprintf(f, "%ld\n", v[i]);
	REQUIRE(fclose(f) == 0);
}

#define RUN_QUIET 1
#define RUN_PRINT 2
#define PRINT_MAX 60 /* a longer sequence prints its last operations */

static long run_print_from; /* --print-from for RUN_PRINT runs */

/*
 * run_config - one configuration in a fresh process: this program again
 * (--child) with the mode's environment; @keep (@nkeep numbers) replays a
 * subset.  RUN_QUIET: its output is dropped.  Fills @res.
 */
static void run_config(const struct mode *m, uint64_t seed, long steps,
		       const long *keep, long nkeep, int flags,
		       struct result *res)
{
	char result_path[300], keep_path[300], keep_arg[310], seed_s[32],
		steps_s[32], timeout_s[16], from_s[32];
	snprintf(result_path, sizeof(result_path), "%s/result", tmpdir);
	snprintf(keep_path, sizeof(keep_path), "%s/keep", tmpdir);
	unlink(result_path);
	if (keep) {
		write_keep(keep_path, keep, nkeep);
		snprintf(keep_arg, sizeof(keep_arg), "@%s", keep_path);
	}
	snprintf(seed_s, sizeof(seed_s), "%#" PRIx64, seed);
	snprintf(steps_s, sizeof(steps_s), "%ld", steps);
	snprintf(timeout_s, sizeof(timeout_s), "%d",
		 PCPU_TEST_TSAN || PCPU_DEBUG >= 2 ? 600 : 240);
	const char *self = check_self_exe();
	const char *argv[20];
	int a = 0;
	argv[a++] = self;
	argv[a++] = "--child";
	argv[a++] = "--mode";
	argv[a++] = m->name;
	argv[a++] = "--seed";
	argv[a++] = seed_s;
	argv[a++] = "--steps";
	argv[a++] = steps_s;
	argv[a++] = "--result";
	argv[a++] = result_path;
	argv[a++] = "--timeout";
	argv[a++] = timeout_s;
	if (keep) {
		argv[a++] = "--keep";
		argv[a++] = keep_arg;
	}
	if (flags & RUN_PRINT) {
		argv[a++] = "--print";
		snprintf(from_s, sizeof(from_s), "%ld", run_print_from);
		argv[a++] = "--print-from";
		argv[a++] = from_s;
	}
	argv[a] = NULL;

	memset(res, 0, sizeof(*res));
	fflush(NULL);
	pid_t pid = fork();
	REQUIRE(pid >= 0);
	if (pid == 0) {
		if (flags & RUN_QUIET) {
			int fd = open("/dev/null", O_WRONLY);
			if (fd >= 0) {
				dup2(fd, 1);
				dup2(fd, 2);
				close(fd);
			}
		}
		mode_env(m, false);
		execv(self, (char *const *)argv);
		fprintf(stderr, "execv %s: %s\n", self, strerror(errno));
		_exit(127);
	}
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	FILE *f = fopen(result_path, "r");
	char *line = NULL;
	size_t cap = 0;
	bool have = false;
	if (f && getline(&line, &cap, f) > 0) {
		char k[32];
		if (!strncmp(line, "PASS", 4)) {
			res->kind = F_NONE;
			have = true;
		} else if (sscanf(line, "FAIL %31s %ld", k, &res->at) == 2) {
			res->kind = fkind_parse(k);
			have = true;
		}
		while (have && getline(&line, &cap, f) > 0) {
			if (!strncmp(line, "EXEC", 4))
				res->exec = parse_longs(line + 4, &res->nexec);
			else if (!strncmp(line, "ALLOCS", 6))
				res->allocs = parse_longs(line + 6,
							  &res->nallocs);
		}
	}
	free(line);
	if (f)
		fclose(f);
	if (WIFEXITED(st) && WEXITSTATUS(st) == 2 && !have) {
		res->kind = -1; /* skipped */
		return;
	}
	if (WIFSIGNALED(st)) {
		res->kind = F_CRASH;
		if (!(flags & RUN_QUIET))
			fprintf(stderr, "    the run died of signal %d (%s)\n",
				WTERMSIG(st), strsignal(WTERMSIG(st)));
	} else if (!have) {
		res->kind = F_ERROR;
		if (!(flags & RUN_QUIET))
			fprintf(stderr, "    the run exited with status %d and "
					"no result\n",
				WEXITSTATUS(st));
	} else if (res->kind == F_NONE && WEXITSTATUS(st) != 0) {
		res->kind = F_ERROR;
	}
	if (!res->exec) {
		res->exec = malloc(sizeof(long));
		REQUIRE(res->exec);
		res->nexec = 0;
	}
	if (!res->allocs) {
		res->allocs = malloc(sizeof(long));
		REQUIRE(res->allocs);
		res->nallocs = 0;
	}
}

static void print_keep(FILE *f, const long *v, long n)
{
	for (long i = 0; i < n; i++) {
		long j = i;
		while (j + 1 < n && v[j + 1] == v[j] + 1)
			j++;
		if (j > i + 1)
			fprintf(f, "%s%ld-%ld", i ? "," : "", v[i], v[j]);
		else
			fprintf(f, "%s%ld", i ? "," : "", v[i]);
		if (j == i + 1)
			fprintf(f, ",%ld", v[j]);
		i = j;
	}
}

static void print_repro(const struct mode *m, uint64_t seed, long steps,
			const long *keep, long nkeep)
{
	const char *skip = getenv("PCPU_MODEL_SKIP");
	char path[512] = "";
	if (keep && nkeep > PRINT_MAX) { /* too long for a command line */
		const char *t = getenv("TMPDIR");
		snprintf(path, sizeof(path), "%s/test_model-%s-%#" PRIx64 ".keep",
			 t && *t ? t : "/tmp", m->name, seed);
		write_keep(path, keep, nkeep);
	}
	fprintf(stderr, "    replay: %s%s%stest_model --mode %s --seed %#" PRIx64
			" --steps %ld",
		skip && *skip ? "PCPU_MODEL_SKIP=" : "",
		skip && *skip ? skip : "", skip && *skip ? " " : "", m->name,
		seed, steps);
	if (keep) {
		fprintf(stderr, " --keep ");
		if (path[0])
			fprintf(stderr, "@%s", path);
		else
			print_keep(stderr, keep, nkeep);
		fprintf(stderr, " --print");
	}
	fprintf(stderr, "\n");
}

/* Current candidate: the kept list and what its last failing run said. */
struct shrink {
	const struct mode *m;
	uint64_t seed;
	long steps;
	int kind;
	long *kept, nkept;
	long *allocs, nallocs;
	long attempts;
	double deadline;
};

/* Runs the candidate @cand; if it fails the same way, it (as executed, up
 * to the failure) becomes the kept list. */
static bool try_cand(struct shrink *s, const long *cand, long ncand)
{
	struct result r;
	s->attempts++;
	run_config(s->m, s->seed, s->steps, cand, ncand, RUN_QUIET, &r);
	bool same = r.kind == s->kind;
	if (same) {
		free(s->kept);
		free(s->allocs);
		s->kept = r.exec;
		s->nkept = r.nexec;
		s->allocs = r.allocs;
		s->nallocs = r.nallocs;
		r.exec = r.allocs = NULL;
	}
	result_free(&r);
	return same;
}

static bool time_left(const struct shrink *s)
{
	return now_s() < s->deadline;
}

/* The kept list without @v[from..to) (sorted lists of op numbers). */
static long without(const struct shrink *s, long from, long to, long *out)
{
	long n = 0;
	for (long i = 0; i < s->nkept; i++)
		if (i < from || i >= to)
			out[n++] = s->kept[i];
	return n;
}

/*
 * shrink - the shortest failing sequence it can find within @budget
 * seconds, by ddmin: remove chunks of halving size, and after a success
 * go on at the same granularity; it ends 1-minimal when it has the time.
 * A removed allocation takes its area's operations with it (the replay
 * skips them, and the executed list of a success drops them).  Prints
 * the result.
 */
static void shrink(const struct mode *m, uint64_t seed, long steps,
		   const struct result *first, double budget)
{
	struct shrink s = { .m = m, .seed = seed, .steps = steps,
			    .kind = first->kind };
	double t0 = now_s();
	s.deadline = t0 + budget;
	/* the run up to the failure, replayed from a list */
	s.nkept = first->nexec;
	s.kept = malloc((size_t)(s.nkept + 1) * sizeof(long));
	s.nallocs = first->nallocs;
	s.allocs = malloc((size_t)(s.nallocs + 1) * sizeof(long));
	REQUIRE(s.kept && s.allocs);
	memcpy(s.kept, first->exec, (size_t)s.nkept * sizeof(long));
	memcpy(s.allocs, first->allocs, (size_t)s.nallocs * sizeof(long));
	long n0 = s.nkept;
	fprintf(stderr, "    shrinking %ld operations (budget %.0f s) ...\n",
		n0, budget);
	long *cand = malloc((size_t)(n0 + 1) * sizeof(long));
	REQUIRE(cand);
	long nc = 0;
	/* a failure that depends on timing (the balance worker) may need
	 * a few tries */
	int tries = 0;
	while (tries < 3 && !try_cand(&s, s.kept, s.nkept))
		tries++;
	if (tries == 3) {
		fprintf(stderr, "    the failure did not come back in %d fresh "
				"processes (it depends on timing): not shrunk\n",
			tries);
		free(cand);
		free(s.kept);
		free(s.allocs);
		return;
	}
	/* ddmin */
	long parts = 2;
	while (s.nkept >= 2 && time_left(&s)) {
		long chunk = (s.nkept + parts - 1) / parts;
		bool removed = false;
		for (long from = 0; from < s.nkept && time_left(&s);
		     from += chunk) {
			nc = without(&s, from, from + chunk, cand);
			if (nc == s.nkept)
				continue;
			if (try_cand(&s, cand, nc)) {
				removed = true;
				parts = parts > 2 ? parts - 1 : 2;
				break;
			}
		}
		if (!removed) {
			if (chunk <= 1)
				break;
			parts = parts * 2 < s.nkept ? parts * 2 : s.nkept;
		}
	}
	fprintf(stderr,
		"    shortest failing sequence found: %ld of %ld operations "
		"(%ld runs, %.1f s%s):\n",
		s.nkept, n0, s.attempts, now_s() - t0,
		time_left(&s) ? "" : ", budget used up");
	struct result r;
	run_print_from = 0;
	if (s.nkept > PRINT_MAX) {
		run_print_from = s.kept[s.nkept - PRINT_MAX];
		fprintf(stderr, "    (the first %ld operations are not shown: "
				"replay to see them)\n",
			s.nkept - PRINT_MAX);
	}
	run_config(m, seed, steps, s.kept, s.nkept, RUN_PRINT, &r);
	if (r.kind != s.kind)
		fprintf(stderr, "    (this replay gave '%s', not '%s': the "
				"failure is not deterministic)\n",
			r.kind >= 0 ? fname[r.kind] : "skipped", fname[s.kind]);
	result_free(&r);
	print_repro(m, seed, steps, s.kept, s.nkept);
	free(cand);
	free(s.kept);
	free(s.allocs);
}

static long env_long(const char *name, long def)
{
	const char *s = getenv(name);
	return s && *s ? strtol(s, NULL, 0) : def;
}

static uint64_t first_seed(void)
{
	const char *s = getenv("PCPU_MODEL_SEED");
	if (s && *s)
		return strtoull(s, NULL, 0);
	struct timespec t;
	clock_gettime(CLOCK_REALTIME, &t);
	return mix64((uint64_t)t.tv_nsec ^ ((uint64_t)t.tv_sec << 20) ^
		     (uint64_t)getpid());
}

static bool mode_selected(const struct mode *m)
{
	const char *s = getenv("PCPU_MODEL_MODES");
	if (!s || !*s)
		return true;
	size_t n = strlen(m->name);
	for (const char *p = s; (p = strstr(p, m->name)); p += n)
		if ((p == s || p[-1] == ',') && (p[n] == 0 || p[n] == ','))
			return true;
	return false;
}

/* One configuration; on failure the seed, the failure and the shortest
 * sequence.  Returns 0 passed or skipped, 1 failed. */
static int drive_one(const struct mode *m, uint64_t seed, long steps,
		     double shrink_budget)
{
	double t0 = now_s();
	struct result r;
	run_config(m, seed, steps, NULL, 0, 0, &r);
	double dt = now_s() - t0;
	if (r.kind < 0) {
		fprintf(stderr, "-- %s: skipped (%.2f s)\n", m->name, dt);
		result_free(&r);
		return 0;
	}
	if (r.kind == F_NONE) {
		fprintf(stderr, "-- %s seed %#" PRIx64 ", %ld operations: all "
				"matched (%.2f s)\n",
			m->name, seed, steps, dt);
		result_free(&r);
		return 0;
	}
	fprintf(stderr, "-- %s seed %#" PRIx64 ", %ld operations: FAILED at "
			"operation #%ld (%s) after %.2f s\n",
		m->name, seed, steps, r.at, fname[r.kind], dt);
	print_repro(m, seed, steps, NULL, 0);
	if (shrink_budget > 0 && r.nexec > 0)
		shrink(m, seed, steps, &r, shrink_budget);
	result_free(&r);
	return 1;
}

static long quick_steps(void)
{
	long steps = 4000;
	if (PCPU_TEST_TSAN)
		steps = 500;
#if defined(PCPU_TEST_LSAN) || PCPU_DEBUG >= 2
	steps = 2000;
#endif
	if (scale_valgrind)
		steps = 1000;
	return env_long("PCPU_MODEL_STEPS", steps);
}

static bool on_valgrind(void)
{
#ifdef PCPU_TEST_VALGRIND_H
	return RUNNING_ON_VALGRIND;
#else
	return false;
#endif
}

/*
 * suite - every mode with one seed after another (each mode its own
 * seed, derived from the first), until PCPU_MODEL_SEEDS seeds ran or
 * PCPU_MODEL_SECS passed; a mode that failed is not run again.  The quick
 * suite (the default): one seed, a few thousand operations a mode, 10 s
 * of shrinking a failure; --long: 20000 operations a run for 240 s, a
 * minute of shrinking.
 */
static int suite(bool lng)
{
	uint64_t seed = first_seed();
	long steps = lng ? env_long("PCPU_MODEL_STEPS", 20000) : quick_steps();
	long seeds = env_long("PCPU_MODEL_SEEDS", lng ? 0 : 1);
	double secs = (double)env_long("PCPU_MODEL_SECS", lng ? 240 : 0);
	double budget = (double)env_long("PCPU_MODEL_SHRINK_SECS", lng ? 60 : 10);
	bool failed[NR_MODES] = { false };
	double end = now_s() + secs;
	long runs = 0;
	fprintf(stderr, "test_model%s: seed %#" PRIx64 " (PCPU_MODEL_SEED), %ld "
			"operations a run (PCPU_MODEL_STEPS)",
		lng ? " --long" : "", seed, steps);
	if (seeds)
		fprintf(stderr, ", %ld seed(s) (PCPU_MODEL_SEEDS)", seeds);
	if (secs > 0)
		fprintf(stderr, ", for %.0f s (PCPU_MODEL_SECS)", secs);
	fprintf(stderr, "\n");
	if (on_valgrind()) {
		/* valgrind does not follow exec: one mode in this process:
		 * 64 CPUs (memcheck takes seconds to map and unmap the 1 GiB
		 * chunks of 1024), without the balance worker (a fork child
		 * would report the stack of the thread it does not have as
		 * possibly lost) */
		const struct mode *m = mode_find("sim64");
		double t0 = now_s();
		mode_env(m, true);
		struct run_args ra = { .mode = m, .seed = seed, .steps = steps };
		int r = run_here(&ra);
		CHECK(r != 1);
		fprintf(stderr, "-- %s seed %#" PRIx64 ", %ld operations, under "
				"valgrind in this process: %s (%.2f s)\n",
			m->name, seed, steps, r ? "FAILED" : "all matched",
			now_s() - t0);
		if (r == 1) {
			print_repro(m, seed, steps, NULL, 0);
			/* shrinking runs natively (exec), in fresh processes */
			struct result res;
			run_config(m, seed, steps, NULL, 0, RUN_QUIET, &res);
			if (res.kind > 0)
				shrink(m, seed, steps, &res, budget);
			result_free(&res);
		}
		return check_done();
	}
	for (long k = 0; (!seeds || k < seeds) && (secs <= 0 || now_s() < end);
	     k++) {
		bool any = false;
		for (size_t i = 0; i < NR_MODES; i++) {
			if (secs > 0 && now_s() >= end)
				break;
			if (failed[i] || !mode_selected(&modes[i]))
				continue;
			any = true;
			uint64_t s = mix64(seed + (uint64_t)k * 64 + i);
			failed[i] = drive_one(&modes[i], s, steps, budget) != 0;
			runs++;
		}
		if (!any)
			break;
	}
	int nf = 0;
	for (size_t i = 0; i < NR_MODES; i++) {
		CHECK(!failed[i]);
		nf += failed[i];
	}
	fprintf(stderr, "test_model: %ld run(s), %d mode(s) failed\n", runs,
		nf);
	return check_done();
}

static void usage(void)
{
	fprintf(stderr,
		"usage: test_model                 the quick suite\n"
		"       test_model --long          many seeds and steps\n"
		"       test_model --mode M --seed S [--steps N] [--keep LIST] "
		"[--print]\n"
		"modes:");
	for (size_t i = 0; i < NR_MODES; i++)
		fprintf(stderr, " %s", modes[i].name);
	fprintf(stderr, "\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct run_args ra = { .steps = 0 };
	bool child = false, lng = false, have_seed = false;
	int timeout = 0;
	const char *mode = NULL;
	const char *s = getenv("PCPU_TEST_SCALE");
	scale_valgrind = (s && !strcmp(s, "valgrind")) || on_valgrind();
	parse_skip();

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--child"))
			child = true;
		else if (!strcmp(a, "--long"))
			lng = true;
		else if (!strcmp(a, "--print"))
			ra.print = true;
		else if (!strcmp(a, "--print-from") && v)
			ra.print_from = strtol(argv[++i], NULL, 0);
		else if (!strcmp(a, "--mode") && v)
			mode = argv[++i];
		else if (!strcmp(a, "--seed") && v) {
			ra.seed = strtoull(argv[++i], NULL, 0);
			have_seed = true;
		} else if (!strcmp(a, "--steps") && v)
			ra.steps = strtol(argv[++i], NULL, 0);
		else if (!strcmp(a, "--keep") && v)
			ra.keep = argv[++i];
		else if (!strcmp(a, "--result") && v)
			ra.result = argv[++i];
		else if (!strcmp(a, "--timeout") && v)
			timeout = atoi(argv[++i]);
		else
			usage();
	}
	if (mode && !(ra.mode = mode_find(mode)))
		usage();

	if (child) { /* one configuration, environment already set */
		if (!ra.mode || !ra.steps)
			usage();
		if (timeout > 0)
			alarm((unsigned)timeout);
		return run_here(&ra);
	}

	snprintf(tmpdir, sizeof(tmpdir), "%s/test_model.XXXXXX",
		 getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR")
						       : "/tmp");
	REQUIRE(mkdtemp(tmpdir));
	int rc;
	if (lng) {
		rc = suite(true);
	} else if (ra.mode || have_seed) {
		if (!ra.mode)
			usage();
		if (!have_seed)
			ra.seed = first_seed();
		if (!ra.steps)
			ra.steps = quick_steps();
		double budget = (double)env_long("PCPU_MODEL_SHRINK_SECS", 60);
		if (ra.keep || ra.print) { /* replay as asked, no shrinking */
			long *kv = NULL, nk = 0;
			if (ra.keep) {
				bool *kb = calloc((size_t)ra.steps, sizeof(bool));
				REQUIRE(kb);
				keep_parse(ra.keep, kb, ra.steps);
				kv = malloc((size_t)ra.steps * sizeof(long));
				REQUIRE(kv);
				for (long i = 0; i < ra.steps; i++)
					if (kb[i])
						kv[nk++] = i;
				free(kb);
			}
			struct result r;
			run_config(ra.mode, ra.seed, ra.steps, kv, nk, RUN_PRINT,
				   &r);
			fprintf(stderr, "-- %s seed %#" PRIx64 ": %s\n",
				ra.mode->name, ra.seed,
				r.kind < 0 ? "skipped"
				: r.kind == F_NONE ? "all matched"
						   : fname[r.kind]);
			rc = r.kind > 0;
			result_free(&r);
			free(kv);
		} else {
			rc = drive_one(ra.mode, ra.seed, ra.steps, budget);
		}
	} else {
		rc = suite(false);
	}
	char path[300];
	snprintf(path, sizeof(path), "%s/result", tmpdir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/keep", tmpdir);
	unlink(path);
	rmdir(tmpdir);
	return rc;
}
