/*
 * test_topology.c - tests for topology.c: the cpulist parser and
 * formatter, topology reading against fake sysfs/proc trees built under
 * mkdtemp(), the real machine, and simulation.
 *
 * Every parser case runs on a copy placed at the very end of a readable
 * page followed by a PROT_NONE page, so reading s[len] would fault.
 * Depends only on topology.c and libc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "check.h"

/* ---- helpers ---- */

static char *guard_page; /* one RW page followed by a PROT_NONE page */
static long page_size;

static void guard_setup(void)
{
	page_size = sysconf(_SC_PAGESIZE);
	guard_page = mmap(NULL, 2 * page_size, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	REQUIRE(guard_page != MAP_FAILED);
	REQUIRE(mprotect(guard_page + page_size, page_size, PROT_NONE) == 0);
}

/* Parses s[0..len) from a copy ending exactly at the guard page. */
static int parse_guarded(const char *s, size_t len, struct pcpu_cpuset *out)
{
	char *p;

	REQUIRE(len <= (size_t)page_size);
	p = guard_page + page_size - len;
	memcpy(p, s, len);
	return _pcpu_cpulist_parse(p, len, out);
}

static void set_from_list(struct pcpu_cpuset *s, const char *list)
{
	REQUIRE(_pcpu_cpulist_parse(list, strlen(list), s) == 0);
}

static bool set_eq(const struct pcpu_cpuset *a, const struct pcpu_cpuset *b)
{
	return memcmp(a, b, sizeof(*a)) == 0;
}

static bool set_subset(const struct pcpu_cpuset *a, const struct pcpu_cpuset *b)
{
	for (int i = 0; i < PCPU_CPUSET_WORDS; i++)
		if (a->bits[i] & ~b->bits[i])
			return false;
	return true;
}

/* True iff s formats exactly as want. */
static bool set_is(const struct pcpu_cpuset *s, const char *want)
{
	static char buf[65536];

	_pcpu_cpulist_format(s, buf, sizeof(buf));
	if (strcmp(buf, want))
		fprintf(stderr, "  set is '%s', want '%s'\n", buf, want);
	return strcmp(buf, want) == 0;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

/* ---- parser ---- */

struct accept_case {
	const char *in;
	const char *want; /* formatted result */
};

static const struct accept_case accept_cases[] = {
	{ "0-3,8,10-11\n", "0-3,8,10-11" },
	{ "", "" },
	{ "\n", "" },
	{ "  \t ", "" },
	{ " \n ", "" },
	{ "0", "0" },
	{ "0\n", "0" },
	{ "  0-3 \n", "0-3" },
	{ "\t1-2\t", "1-2" },
	{ " 5 \n\t", "5" },
	{ "3-3", "3" },
	{ "1,0", "0-1" },
	{ "0-5,3-7", "0-7" },
	{ "8,9,10", "8-10" },
	{ "007", "7" },
	{ "0000000000000000000000000000000000000000001", "1" },
	{ "8191", "8191" },
	{ "0-8191", "0-8191" },
	{ "63-64", "63-64" },
	{ "62-129", "62-129" },
	{ "0,2,4-6,100-200,8000-8191\n", "0,2,4-6,100-200,8000-8191" },
};

struct reject_case {
	const char *in;
	int err;
};

static const struct reject_case reject_cases[] = {
	{ "x", -EINVAL },
	{ "garbage\n", -EINVAL },
	{ "1,,2", -EINVAL },
	{ "1,", -EINVAL },
	{ "1,\n", -EINVAL },
	{ ",1", -EINVAL },
	{ ",", -EINVAL },
	{ "3-1", -EINVAL },
	{ "8191-0", -EINVAL },
	{ "+1", -EINVAL },
	{ "-1", -EINVAL },
	{ "1-+2", -EINVAL },
	{ "1--2", -EINVAL },
	{ "1-", -EINVAL },
	{ "-", -EINVAL },
	{ "1-2-3", -EINVAL },
	{ "0-8:2", -EINVAL },
	{ "1 2", -EINVAL },
	{ "1, 2", -EINVAL },
	{ "1 ,2", -EINVAL },
	{ "1 - 2", -EINVAL },
	{ "\n\n", -EINVAL },
	{ "0\n\n", -EINVAL },
	{ "\n0", -EINVAL },
	{ "0\r\n", -EINVAL },
	{ "0x1", -EINVAL },
	{ "1.0", -EINVAL },
	{ "0-3,x", -EINVAL },
	{ "4294967296", -EINVAL },           /* does not fit 32 bits */
	{ "99999999999999999999999999", -EINVAL },
	{ "0-18446744073709551616", -EINVAL },
	{ "9000,x", -EINVAL },               /* syntax beats range */
	{ "9001-9000", -EINVAL },
	{ "8192", -ERANGE },
	{ "0-8192", -ERANGE },
	{ "1,9000", -ERANGE },
	{ "4294967295", -ERANGE },
	{ "10000000", -ERANGE },
};

static void test_parse_tables(void)
{
	struct pcpu_cpuset s, before;

	for (size_t i = 0; i < sizeof(accept_cases) / sizeof(accept_cases[0]);
	     i++) {
		const struct accept_case *c = &accept_cases[i];

		memset(&s, 0xa5, sizeof(s));
		CHECK_EQ(parse_guarded(c->in, strlen(c->in), &s), 0);
		if (!set_is(&s, c->want))
			fprintf(stderr, "  accept case '%s'\n", c->in);
		CHECK(set_is(&s, c->want));
	}
	for (size_t i = 0; i < sizeof(reject_cases) / sizeof(reject_cases[0]);
	     i++) {
		const struct reject_case *c = &reject_cases[i];
		int ret;

		memset(&s, 0xa5, sizeof(s));
		before = s;
		ret = parse_guarded(c->in, strlen(c->in), &s);
		if (ret != c->err)
			fprintf(stderr, "  reject case '%s' gave %d\n", c->in, ret);
		CHECK_EQ(ret, c->err);
		CHECK(set_eq(&s, &before)); /* *out untouched */
	}
}

static void test_parse_edges(void)
{
	struct pcpu_cpuset s, before;
	char big[4096];

	/* NULL with len 0 is the empty list; NULL with a length is not. */
	memset(&s, 0xa5, sizeof(s));
	CHECK_EQ(_pcpu_cpulist_parse(NULL, 0, &s), 0);
	CHECK(set_is(&s, ""));
	CHECK_EQ(_pcpu_cpulist_parse(NULL, 5, &s), -EINVAL);

	/* Embedded NUL is garbage, and len, not NUL, ends the text. */
	CHECK_EQ(parse_guarded("1\0", 2, &s), -EINVAL);
	CHECK_EQ(parse_guarded("1-3,9", 3, &s), 0);
	CHECK(set_is(&s, "1-3"));
	CHECK_EQ(parse_guarded("12", 1, &s), 0);
	CHECK(set_is(&s, "1"));

	/* A page-long digit string ending at the guard page. */
	memset(big, '9', sizeof(big));
	CHECK_EQ(parse_guarded(big, sizeof(big), &s), -EINVAL);
	memset(big, '0', sizeof(big));
	big[sizeof(big) - 1] = '7';
	CHECK_EQ(parse_guarded(big, sizeof(big), &s), 0);
	CHECK(set_is(&s, "7"));
	big[sizeof(big) - 2] = '-';
	CHECK_EQ(parse_guarded(big, sizeof(big), &s), 0); /* "000...0-7" */
	CHECK(set_is(&s, "0-7"));
	memset(big, '1', sizeof(big));
	big[sizeof(big) - 1] = ',';
	memset(&s, 0x5a, sizeof(s));
	before = s;
	CHECK_EQ(parse_guarded(big, sizeof(big), &s), -EINVAL);
	CHECK(set_eq(&s, &before));

	/* Every prefix of a valid list, each ending at the guard page. */
	{
		const char *l = "0-3,8,10-11\n";

		for (size_t n = 0; n <= strlen(l); n++) {
			int r = parse_guarded(l, n, &s);

			CHECK(r == 0 || r == -EINVAL);
		}
	}
}

/* ---- formatter ---- */

static void random_set(struct pcpu_cpuset *s)
{
	int mode = (int)(rng() % 4);

	_pcpu_cpuset_zero(s);
	if (mode == 0) { /* sparse */
		for (int i = (int)(rng() % 20); i > 0; i--)
			_pcpu_cpuset_set(s, (int)(rng() % PCPU_MAX_CPUS));
	} else if (mode == 1) { /* dense bits */
		for (int w = 0; w < PCPU_MAX_CPUS / 64; w++)
			s->bits[w] = rng() & rng();
	} else if (mode == 2) { /* ranges */
		for (int i = (int)(rng() % 10); i > 0; i--) {
			int a = (int)(rng() % PCPU_MAX_CPUS);
			int b = a + (int)(rng() % 300);

			for (int c = a; c <= b && c < PCPU_MAX_CPUS; c++)
				_pcpu_cpuset_set(s, c);
		}
	} else { /* alternating, the longest text */
		for (int c = (int)(rng() % 2); c < PCPU_MAX_CPUS; c += 2)
			_pcpu_cpuset_set(s, c);
	}
}

static void test_format(void)
{
	static char buf[65536], small[64];
	struct pcpu_cpuset s, back;
	size_t cut, keep;
	int n;

	_pcpu_cpuset_zero(&s);
	CHECK_EQ(_pcpu_cpulist_format(&s, buf, sizeof(buf)), 0);
	CHECK(strcmp(buf, "") == 0);
	set_from_list(&s, "0-8191");
	CHECK_EQ(_pcpu_cpulist_format(&s, buf, sizeof(buf)), 6);
	CHECK(strcmp(buf, "0-8191") == 0);
	set_from_list(&s, "1,3-4,8191");
	CHECK_EQ(_pcpu_cpulist_format(&s, NULL, 0), 10);
	CHECK_EQ(_pcpu_cpulist_format(&s, small, 1), 10);
	CHECK(strcmp(small, "") == 0);
	CHECK_EQ(_pcpu_cpulist_format(&s, small, 5), 10);
	CHECK(strcmp(small, "1,3-") == 0);
	CHECK_EQ(_pcpu_cpulist_format(&s, small, 11), 10);
	CHECK(strcmp(small, "1,3-4,8191") == 0);
	/* the shared-slot bit past PCPU_MAX_CPUS is printed too */
	_pcpu_cpuset_set(&s, PCPU_MAX_CPUS);
	_pcpu_cpulist_format(&s, small, sizeof(small));
	CHECK(strcmp(small, "1,3-4,8191-8192") == 0);
	for (int w = 0; w < PCPU_CPUSET_WORDS; w++)
		s.bits[w] = ~(uint64_t)0;
	_pcpu_cpulist_format(&s, small, sizeof(small));
	CHECK(strncmp(small, "0-", 2) == 0);
	CHECK_EQ(atoi(small + 2), PCPU_CPUSET_WORDS * 64 - 1);

	for (int i = 0; i < 2000; i++) {
		random_set(&s);
		n = _pcpu_cpulist_format(&s, buf, sizeof(buf));
		REQUIRE(n >= 0 && (size_t)n < sizeof(buf));
		CHECK_EQ(strlen(buf), n);
		memset(&back, 0xa5, sizeof(back));
		CHECK_EQ(_pcpu_cpulist_parse(buf, (size_t)n, &back), 0);
		CHECK(set_eq(&s, &back));
		/* truncation keeps a NUL-terminated prefix */
		cut = 1 + (size_t)(rng() % sizeof(small));
		keep = cut - 1 < (size_t)n ? cut - 1 : (size_t)n;
		CHECK_EQ(_pcpu_cpulist_format(&s, small, cut), n);
		CHECK_EQ(strlen(small), keep);
		CHECK(strncmp(small, buf, keep) == 0);
	}
}

/* ---- fake trees ---- */

static char tree[64];

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *f)
{
	(void)sb;
	(void)flag;
	(void)f;
	return remove(p);
}

static void tree_new(void)
{
	strcpy(tree, "/tmp/pcpu-topo-XXXXXX");
	REQUIRE(mkdtemp(tree) != NULL);
}

static void tree_free(void)
{
	nftw(tree, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* Writes <tree>/rel with content (len bytes), creating directories. */
static void put_n(const char *rel, const char *content, size_t len)
{
	char path[4096];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", tree, rel);
	for (char *p = path + strlen(tree) + 1; (p = strchr(p, '/')); p++) {
		*p = '\0';
		mkdir(path, 0755);
		*p = '/';
	}
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	REQUIRE(fd >= 0);
	REQUIRE(write(fd, content, len) == (ssize_t)len);
	close(fd);
}

static void put(const char *rel, const char *content)
{
	put_n(rel, content, strlen(content));
}

static void mkdir_rel(const char *rel)
{
	char path[4096];

	snprintf(path, sizeof(path), "%s/%s", tree, rel);
	mkdir(path, 0755);
}

#define CPU "sys/devices/system/cpu/"
#define NODE "sys/devices/system/node/"

/* possible when every possible/present/online file is unusable. */
static void sysconf_set(struct pcpu_cpuset *s)
{
	long n = sysconf(_SC_NPROCESSORS_CONF);

	_pcpu_cpuset_zero(s);
	if (n > PCPU_MAX_CPUS)
		n = PCPU_MAX_CPUS;
	if (n < 1)
		n = 1;
	for (int c = 0; c < n; c++)
		_pcpu_cpuset_set(s, c);
}

static void check_consistent(const struct pcpu_topology *t)
{
	int last = -1;

	_pcpu_cpuset_for_each(c, &t->possible)
		last = c;
	CHECK(last >= 0);
	CHECK_EQ(t->nr_cpu_ids, last + 1);
	CHECK(t->nr_nodes >= 1);
	CHECK(set_subset(&t->online, &t->possible));
	CHECK(set_subset(&t->allowed, &t->online));
	CHECK(_pcpu_cpuset_count(&t->online) > 0);
	CHECK(_pcpu_cpuset_count(&t->allowed) > 0);
	_pcpu_cpuset_for_each(c, &t->possible)
		CHECK(t->node[c] < t->nr_nodes);
}

static struct pcpu_topology t; /* ~19 KiB: keep it off the stack */

static void test_tree_normal(void)
{
	tree_new();
	put(CPU "possible", "0-7\n");
	put(CPU "present", "0-7\n");
	put(CPU "online", "0-5\n");
	put(NODE "node0/cpulist", "0-3\n");
	put(NODE "node1/cpulist", "4-7\n");
	put(NODE "possible", "0-1\n");
	put(NODE "has_cpu", "0-1\n");
	memset(&t, 0xa5, sizeof(t));
	_pcpu_topology_read(&t, tree);
	check_consistent(&t);
	CHECK_EQ(t.nr_cpu_ids, 8);
	CHECK(!t.simulated);
	CHECK(set_is(&t.possible, "0-7"));
	CHECK(set_is(&t.online, "0-5"));
	CHECK(set_is(&t.allowed, "0-5")); /* no affinity for fake roots */
	CHECK_EQ(t.nr_nodes, 2);
	CHECK_EQ(t.node[3], 0);
	CHECK_EQ(t.node[4], 1);
	CHECK_EQ(t.node[7], 1);
	CHECK_EQ(t.node[8], 0);

	/* refresh: online changes, possible and nodes are kept */
	put(CPU "online", "0-2,6-15\n");
	put(NODE "node1/cpulist", "0-7\n");
	put(CPU "possible", "0-1\n");
	_pcpu_topology_refresh(&t, tree);
	check_consistent(&t);
	CHECK_EQ(t.nr_cpu_ids, 8);
	CHECK(set_is(&t.possible, "0-7"));
	CHECK(set_is(&t.online, "0-2,6-7")); /* clipped to possible */
	CHECK(set_is(&t.allowed, "0-2,6-7"));
	CHECK_EQ(t.node[4], 1);
	CHECK_EQ(t.node[0], 0);
	unlink(strcat(strcpy((char[4096]){ 0 }, tree), "/" CPU "online"));
	_pcpu_topology_refresh(&t, tree);
	CHECK(set_is(&t.online, "0-7"));
	tree_free();
}

static void test_tree_possible_fallbacks(void)
{
	struct pcpu_cpuset want;

	tree_new();
	put(CPU "present", "0-3\n");
	put(CPU "online", "0-2\n");
	_pcpu_topology_read(&t, tree);
	check_consistent(&t);
	CHECK(set_is(&t.possible, "0-3"));
	CHECK(set_is(&t.online, "0-2"));
	CHECK_EQ(t.nr_cpu_ids, 4);

	put(CPU "possible", "0-x\n"); /* malformed: next in chain */
	_pcpu_topology_read(&t, tree);
	CHECK(set_is(&t.possible, "0-3"));
	put(CPU "possible", "0-8192\n"); /* out of range */
	_pcpu_topology_read(&t, tree);
	CHECK(set_is(&t.possible, "0-3"));
	put(CPU "possible", "\n"); /* empty */
	_pcpu_topology_read(&t, tree);
	CHECK(set_is(&t.possible, "0-3"));

	put(CPU "present", ""); /* empty: on to online */
	_pcpu_topology_read(&t, tree);
	CHECK(set_is(&t.possible, "0-2"));
	CHECK(set_is(&t.online, "0-2"));
	CHECK_EQ(t.nr_cpu_ids, 3);

	put(CPU "online", "junk"); /* nothing usable: sysconf */
	_pcpu_topology_read(&t, tree);
	check_consistent(&t);
	sysconf_set(&want);
	CHECK(set_eq(&t.possible, &want));
	CHECK(set_eq(&t.online, &want));

	/* a directory where a file should be */
	tree_free();
	tree_new();
	mkdir_rel("sys");
	mkdir_rel("sys/devices");
	mkdir_rel("sys/devices/system");
	mkdir_rel(CPU);
	mkdir_rel(CPU "possible");
	put(CPU "present", "0-1,4\n");
	_pcpu_topology_read(&t, tree);
	CHECK(set_is(&t.possible, "0-1,4"));
	CHECK(set_is(&t.online, "0-1,4"));
	CHECK_EQ(t.nr_cpu_ids, 5);
	tree_free();
}

static void test_tree_hidden(void)
{
	struct pcpu_cpuset want;

	sysconf_set(&want);
	tree_new();
	memset(&t, 0xa5, sizeof(t));
	_pcpu_topology_read(&t, tree);
	check_consistent(&t);
	CHECK(set_eq(&t.possible, &want));
	CHECK(set_eq(&t.online, &want));
	CHECK(set_eq(&t.allowed, &want));
	CHECK_EQ(t.nr_nodes, 1);
	CHECK_EQ(t.node[0], 0);
	tree_free();

	/* a root that does not exist at all */
	_pcpu_topology_read(&t, "/nonexistent/pcpu/root");
	check_consistent(&t);
	CHECK(set_eq(&t.possible, &want));
}

static void test_tree_malformed(void)
{
	static char huge[80 * 1024];

	tree_new();
	put(CPU "possible", "0-3\n");
	put(CPU "online", "garbage\n");
	put(NODE "node0/cpulist", "0-1\n");
	put(NODE "node1/cpulist", "2-3,x\n");  /* ignored */
	put(NODE "nodeX/cpulist", "2-3\n");    /* not a node dir */
	put(NODE "node01/cpulist", "2-3\n");   /* not a kernel name */
	put(NODE "node99999/cpulist", "2\n");  /* beyond any MAX_NUMNODES */
	put("proc/self/cgroup", "garbage without a v2 line");
	_pcpu_topology_read(&t, tree);
	check_consistent(&t);
	CHECK(set_is(&t.online, "0-3"));
	CHECK(set_is(&t.allowed, "0-3"));
	CHECK_EQ(t.nr_nodes, 1);
	CHECK_EQ(t.node[2], 0);

	/* online disjoint from possible: online falls back to possible */
	put(CPU "online", "100-200\n");
	_pcpu_topology_read(&t, tree);
	CHECK(set_is(&t.online, "0-3"));

	/* a file larger than the read buffer is refused as a whole */
	memset(huge, ' ', sizeof(huge));
	memcpy(huge, "0-1", 3);
	put_n(CPU "online", huge, sizeof(huge));
	_pcpu_topology_read(&t, tree);
	CHECK(set_is(&t.online, "0-3"));
	/* ... while one of exactly 64 KiB - 1 blanks is read */
	put_n(CPU "online", huge, 64 * 1024 - 1);
	_pcpu_topology_read(&t, tree);
	CHECK(set_is(&t.online, "0-1"));

	/* empty cgroup lines, odd paths */
	put("proc/self/cgroup", "\n\n0::\n");
	_pcpu_topology_read(&t, tree);
	CHECK(set_is(&t.allowed, "0-1"));
	put("proc/self/cgroup", "0::relative/path\n");
	put("sys/fs/cgroup/cpuset.cpus.effective", "1\n");
	put("sys/fs/cgroup/relative/path/cpuset.cpus.effective", "0\n");
	_pcpu_topology_read(&t, tree);
	CHECK(set_is(&t.allowed, "0-1")); /* refused: not absolute */
	put("proc/self/cgroup", "0::/../../escape\n");
	_pcpu_topology_read(&t, tree);
	CHECK(set_is(&t.allowed, "0-1")); /* refused: outside our ns */
	put("proc/self/cgroup", "0::/\n");
	_pcpu_topology_read(&t, tree);
	CHECK(set_is(&t.allowed, "1")); /* the root cgroup */
	tree_free();
}

static void test_tree_cgroup_v2(void)
{
	tree_new();
	put(CPU "possible", "0-15\n");
	put(CPU "online", "0-11\n");
	put("proc/self/cgroup", "12:cpuset:/v1path\n1:name=systemd:/x\n"
				"0::/user.slice/app.scope\n");
	put("sys/fs/cgroup/cpuset.cpus.effective", "0-15\n");
	put("sys/fs/cgroup/user.slice/app.scope/cpuset.cpus.effective",
	    "2-3,10-13\n");
	_pcpu_topology_read(&t, tree);
	check_consistent(&t);
	CHECK(set_is(&t.online, "0-11"));
	CHECK(set_is(&t.allowed, "2-3,10-11"));

	/* no file in the leaf (no cpuset controller there): the parent's */
	put("sys/fs/cgroup/user.slice/cpuset.cpus.effective", "4-5\n");
	put("proc/self/cgroup", "0::/user.slice/other.scope/\n");
	_pcpu_topology_read(&t, tree);
	CHECK(set_is(&t.allowed, "4-5"));

	/* an inconsistent cpuset (nothing online): allowed = online */
	put("sys/fs/cgroup/user.slice/app.scope/cpuset.cpus.effective",
	    "14-15\n");
	put("proc/self/cgroup", "0::/user.slice/app.scope");
	_pcpu_topology_read(&t, tree);
	CHECK(set_is(&t.allowed, "0-11"));

	/* refresh follows the cpuset */
	put("sys/fs/cgroup/user.slice/app.scope/cpuset.cpus.effective", "7\n");
	_pcpu_topology_refresh(&t, tree);
	CHECK(set_is(&t.allowed, "7"));
	tree_free();
}

static void test_tree_cgroup_v1(void)
{
	tree_new();
	put(CPU "possible", "0-7\n");
	put("proc/self/cgroup", "3:cpuset:/grp\n0::/\n"); /* hybrid */
	put("proc/self/cpuset", "/grp\n");
	put("sys/fs/cgroup/cpuset/cpuset.effective_cpus", "0-7\n");
	put("sys/fs/cgroup/cpuset/grp/cpuset.effective_cpus", "1,3\n");
	put("sys/fs/cgroup/cpuset/grp/cpuset.cpus", "1-3\n");
	_pcpu_topology_read(&t, tree);
	check_consistent(&t);
	CHECK(set_is(&t.online, "0-7"));
	CHECK(set_is(&t.allowed, "1,3"));

	/* only cpuset.cpus (old kernels) */
	put("sys/fs/cgroup/cpuset/grp/cpuset.effective_cpus", "bad\n");
	_pcpu_topology_read(&t, tree);
	CHECK(set_is(&t.allowed, "1-3"));

	/* v2 wins when its file exists */
	put("sys/fs/cgroup/cpuset.cpus.effective", "6-7\n");
	_pcpu_topology_read(&t, tree);
	CHECK(set_is(&t.allowed, "6-7"));
	tree_free();
}

static void test_tree_nodes(void)
{
	tree_new();
	put(CPU "possible", "0-7\n");
	put(NODE "node0/cpulist", "0-1\n");
	put(NODE "node2/cpulist", "2-3,6\n");
	put(NODE "node3/cpulist", "\n");      /* memory-only node */
	put(NODE "node5/cpulist", "40-41\n"); /* CPUs not possible */
	put(NODE "node1/cpulist", "3-5\n");   /* 3 also in node 2: lower wins */
	_pcpu_topology_read(&t, tree);
	check_consistent(&t);
	CHECK_EQ(t.node[0], 0);
	CHECK_EQ(t.node[1], 0);
	CHECK_EQ(t.node[2], 2);
	CHECK_EQ(t.node[3], 1);
	CHECK_EQ(t.node[4], 1);
	CHECK_EQ(t.node[6], 2);
	CHECK_EQ(t.node[7], 0); /* in no node */
	CHECK_EQ(t.node[40], 0);
	CHECK_EQ(t.nr_nodes, 3);
	tree_free();
}

/* ---- the real machine ---- */

static void test_real(void)
{
	cpu_set_t *mask = CPU_ALLOC(PCPU_MAX_CPUS);
	size_t size = CPU_ALLOC_SIZE(PCPU_MAX_CPUS);
	int cpu;

	memset(&t, 0xa5, sizeof(t));
	errno = 1234;
	_pcpu_topology_read(&t, NULL);
	CHECK_EQ(errno, 1234);
	check_consistent(&t);
	CHECK(!t.simulated);
	REQUIRE(mask);
	if (sched_getaffinity(0, size, mask) == 0)
		_pcpu_cpuset_for_each(c, &t.allowed)
			CHECK(CPU_ISSET_S(c, size, mask));
	CPU_FREE(mask);
	cpu = sched_getcpu();
	if (cpu >= 0 && cpu < PCPU_MAX_CPUS)
		CHECK(_pcpu_cpuset_test(&t.allowed, cpu));
	if (access("/sys/devices/system/cpu/possible", R_OK) == 0) {
		struct pcpu_cpuset want;
		char buf[65536];
		int fd = open("/sys/devices/system/cpu/possible", O_RDONLY);
		ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf)) : -1;

		if (fd >= 0)
			close(fd);
		if (n > 0 && _pcpu_cpulist_parse(buf, (size_t)n, &want) == 0)
			CHECK(set_eq(&t.possible, &want));
	}
	{
		static struct pcpu_topology t2;

		_pcpu_topology_read(&t2, "");
		CHECK(set_eq(&t2.possible, &t.possible));
		CHECK(set_eq(&t2.allowed, &t.allowed));
		t2 = t;
		_pcpu_topology_refresh(&t2, NULL);
		check_consistent(&t2);
		CHECK(set_eq(&t2.possible, &t.possible));
		CHECK(memcmp(t2.node, t.node, sizeof(t.node)) == 0);
	}
	fprintf(stderr, "real machine: nr_cpu_ids %d, %d online, %d allowed, "
		"%d nodes\n", t.nr_cpu_ids, _pcpu_cpuset_count(&t.online),
		_pcpu_cpuset_count(&t.allowed), t.nr_nodes);
}

/* ---- simulation ---- */

static void test_sim_good(void)
{
	char err[128];

	memset(&t, 0xa5, sizeof(t));
	strcpy(err, "junk");
	CHECK_EQ(_pcpu_topology_sim(&t, "4", NULL, err, sizeof(err)), 0);
	CHECK(err[0] == '\0');
	CHECK(t.simulated);
	CHECK_EQ(t.nr_cpu_ids, 4);
	CHECK_EQ(t.nr_nodes, 1);
	CHECK(set_is(&t.possible, "0-3"));
	CHECK(set_is(&t.online, "0-3"));
	CHECK(set_is(&t.allowed, "0-3"));
	CHECK_EQ(t.node[3], 0);
	CHECK_EQ(t.node[4], 0);
	check_consistent(&t);

	CHECK_EQ(_pcpu_topology_sim(&t, "130", "0-9,100\n", err, sizeof(err)), 0);
	CHECK_EQ(t.nr_cpu_ids, 130);
	CHECK_EQ(t.nr_nodes, 3);
	CHECK(set_is(&t.possible, "0-129"));
	CHECK(set_is(&t.online, "0-9,100"));
	CHECK(set_is(&t.allowed, "0-9,100"));
	CHECK_EQ(t.node[63], 0);
	CHECK_EQ(t.node[64], 1);
	CHECK_EQ(t.node[129], 2);
	check_consistent(&t);

	CHECK_EQ(_pcpu_topology_sim(&t, "8192", "", NULL, 0), 0);
	CHECK_EQ(t.nr_cpu_ids, 8192);
	CHECK_EQ(t.nr_nodes, 128);
	CHECK(set_is(&t.online, "0-8191"));
	CHECK_EQ(t.node[8191], 127);

	CHECK_EQ(_pcpu_topology_sim(&t, "1", "0", err, sizeof(err)), 0);
	CHECK_EQ(t.nr_cpu_ids, 1);
	CHECK_EQ(t.nr_nodes, 1);
	CHECK_EQ(_pcpu_topology_sim(&t, "0008", "7", err, sizeof(err)), 0);
	CHECK_EQ(t.nr_cpu_ids, 8);
	CHECK(set_is(&t.allowed, "7"));

	/* refresh leaves a simulation alone */
	_pcpu_topology_refresh(&t, NULL);
	CHECK(set_is(&t.online, "7"));
	CHECK(t.simulated);
}

struct sim_bad {
	const char *possible, *online, *reason;
};

static const struct sim_bad sim_bad_cases[] = {
	{ "0", NULL, "PCPU_SIM_POSSIBLE: '0' is not a number from 1 to 8192" },
	{ "8193", NULL,
	  "PCPU_SIM_POSSIBLE: '8193' is not a number from 1 to 8192" },
	{ "12x", NULL,
	  "PCPU_SIM_POSSIBLE: '12x' is not a number from 1 to 8192" },
	{ "", NULL, "PCPU_SIM_POSSIBLE: '' is not a number from 1 to 8192" },
	{ NULL, NULL, "PCPU_SIM_POSSIBLE: '' is not a number from 1 to 8192" },
	{ "-1", NULL, "PCPU_SIM_POSSIBLE: '-1' is not a number from 1 to 8192" },
	{ "+4", NULL, "PCPU_SIM_POSSIBLE: '+4' is not a number from 1 to 8192" },
	{ " 4", NULL, "PCPU_SIM_POSSIBLE: ' 4' is not a number from 1 to 8192" },
	{ "4\n", NULL,
	  "PCPU_SIM_POSSIBLE: '4?' is not a number from 1 to 8192" },
	{ "0x10", NULL,
	  "PCPU_SIM_POSSIBLE: '0x10' is not a number from 1 to 8192" },
	{ "18446744073709551620", NULL,
	  "PCPU_SIM_POSSIBLE: '18446744073709551620' is not a number from 1 "
	  "to 8192" },
	{ "16", "0-16", "PCPU_SIM_ONLINE: '0-16' names CPUs outside 0-15" },
	{ "16", "8192", "PCPU_SIM_ONLINE: '8192' names CPUs outside 0-15" },
	{ "1", "1", "PCPU_SIM_ONLINE: '1' names CPUs outside 0-0" },
	{ "16", "0-3x", "PCPU_SIM_ONLINE: '0-3x' is not a cpulist" },
	{ "16", "3-1", "PCPU_SIM_ONLINE: '3-1' is not a cpulist" },
	{ "16", "1,,2", "PCPU_SIM_ONLINE: '1,,2' is not a cpulist" },
	{ "16", "\n", "PCPU_SIM_ONLINE: '?' has no CPU" },
	{ "16", " ", "PCPU_SIM_ONLINE: ' ' has no CPU" },
	{ "16",
	  "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20",
	  "PCPU_SIM_ONLINE: '0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16...' "
	  "names CPUs outside 0-15" },
};

static void test_sim_bad(void)
{
	static struct pcpu_topology before;
	char err[160];

	for (size_t i = 0; i < sizeof(sim_bad_cases) / sizeof(sim_bad_cases[0]);
	     i++) {
		const struct sim_bad *c = &sim_bad_cases[i];

		memset(&t, 0x5a, sizeof(t));
		before = t;
		memset(err, 0, sizeof(err));
		CHECK_EQ(_pcpu_topology_sim(&t, c->possible, c->online, err,
					    sizeof(err)),
			 -EINVAL);
		CHECK(memcmp(&t, &before, sizeof(t)) == 0);
		CHECK(strchr(err, '\n') == NULL);
		if (strcmp(err, c->reason))
			fprintf(stderr, "  err '%s', want '%s'\n", err, c->reason);
		CHECK(strcmp(err, c->reason) == 0);
		/* no buffer, or a tiny one, is fine */
		CHECK_EQ(_pcpu_topology_sim(&t, c->possible, c->online, NULL, 0),
			 -EINVAL);
		CHECK_EQ(_pcpu_topology_sim(&t, c->possible, c->online, err, 8),
			 -EINVAL);
		CHECK_EQ(strlen(err), 7);
		CHECK(memcmp(&t, &before, sizeof(t)) == 0);
	}
}

int main(void)
{
	guard_setup();
	test_parse_tables();
	test_parse_edges();
	test_format();
	test_tree_normal();
	test_tree_possible_fallbacks();
	test_tree_hidden();
	test_tree_malformed();
	test_tree_cgroup_v2();
	test_tree_cgroup_v1();
	test_tree_nodes();
	test_real();
	test_sim_good();
	test_sim_bad();
	return check_done();
}
