/*
 * topology.c - which CPUs exist, which run, which this process may use,
 * and the NUMA node of each.
 *
 * Everything comes from the kernel's text files, read with open/read into
 * one bounded heap buffer (64 KiB holds any cpulist of PCPU_MAX_CPUS ids),
 * and parsed by a strict cpulist parser that never trusts the text:
 *
 *   possible  <root>/sys/devices/system/cpu/possible
 *             -> .../present -> .../online       (older or odd kernels)
 *             -> sched_getaffinity()             (real fs only: no sysfs)
 *             -> 0..sysconf(_SC_NPROCESSORS_CONF)-1 -> {0}
 *   online    <root>/sys/devices/system/cpu/online, else possible
 *   allowed   online & sched_getaffinity() (real fs only)
 *                    & cgroup cpuset: v2 "0::<path>" in /proc/self/cgroup
 *                      -> /sys/fs/cgroup<path>/cpuset.cpus.effective,
 *                      else v1 /proc/self/cpuset
 *                      -> /sys/fs/cgroup/cpuset<path>/cpuset.effective_cpus
 *                         (or cpuset.cpus);
 *             each cgroup path is walked up to its root until a file is
 *             found (a v2 cgroup without the cpuset controller inherits
 *             its parent's CPUs).  Empty result -> online.
 *   node      <root>/sys/devices/system/node/node<N>/cpulist, else 0
 *
 * Every mask is clipped to possible, so ids stay below nr_cpu_ids.  A
 * missing, unreadable, oversized or malformed file only moves us down the
 * fallback chain: the library must start on stripped containers, chroots
 * and seccomp sandboxes, so reading the topology never fails and never
 * prints.  @root prefixes every path so that tests can run against fake
 * trees; the affinity syscall describes the real machine and is only
 * consulted when @root is the real filesystem.
 *
 * Simulation (PCPU_SIM_POSSIBLE/PCPU_SIM_ONLINE) builds the topology from
 * two strings instead, validating both before touching the result.
 *
 * Context: no locks, no global state; callers serialise use of one
 * struct pcpu_topology.  errno is preserved.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define TOPO_BUF_SIZE (64 * 1024)
#define TOPO_PATH_MAX PATH_MAX
/* The kernel's MAX_NUMNODES is at most 1 << NODES_SHIFT = 1024. */
#define TOPO_MAX_NODES 1024

/* Bits in a struct pcpu_cpuset, one more word than PCPU_MAX_CPUS needs. */
#define CPUSET_BITS (PCPU_CPUSET_WORDS * 64)

#define SYS_CPU "/sys/devices/system/cpu/"
#define SYS_NODE "/sys/devices/system/node"

/* Scratch space for one read or refresh (too big for a thread's stack). */
struct topo_io {
	const char *root; /* "" for the real filesystem */
	bool real;
	char path[TOPO_PATH_MAX];
	char cg[TOPO_PATH_MAX];
	char buf[TOPO_BUF_SIZE];
};

/* ---- cpuset helpers ---- */

/* Sets CPUs a..b inclusive; a <= b < PCPU_MAX_CPUS. */
static void cpuset_set_range(struct pcpu_cpuset *s, unsigned a, unsigned b)
{
	for (unsigned w = a / 64; w <= b / 64; w++) {
		unsigned lo = a > w * 64 ? a % 64 : 0;
		unsigned hi = b < w * 64 + 63 ? b % 64 : 63;

		s->bits[w] |= (~(uint64_t)0 << lo) & (~(uint64_t)0 >> (63 - hi));
	}
}

static void cpuset_and(struct pcpu_cpuset *d, const struct pcpu_cpuset *s)
{
	for (int i = 0; i < PCPU_CPUSET_WORDS; i++)
		d->bits[i] &= s->bits[i];
}

static bool cpuset_empty(const struct pcpu_cpuset *s)
{
	return _pcpu_cpuset_next(s, 0) < 0;
}

/* Lowest clear bit >= from (from < CPUSET_BITS), or CPUSET_BITS. */
static int cpuset_next_clear(const struct pcpu_cpuset *s, int from)
{
	for (int w = from / 64; w < PCPU_CPUSET_WORDS; w++) {
		uint64_t x = ~s->bits[w];

		if (w == from / 64)
			x &= ~(uint64_t)0 << (from % 64);
		if (x)
			return w * 64 + __builtin_ctzll(x);
	}
	return CPUSET_BITS;
}

/* Highest set CPU, or -1. */
static int cpuset_last(const struct pcpu_cpuset *s)
{
	for (int w = PCPU_CPUSET_WORDS - 1; w >= 0; w--)
		if (s->bits[w])
			return w * 64 + 63 - __builtin_clzll(s->bits[w]);
	return -1;
}

/* ---- cpulist text ---- */

static bool is_blank(char c)
{
	return c == ' ' || c == '\t';
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* Narrows [*b, *e) of s to drop blanks around and one final newline. */
static void cpulist_trim(const char *s, size_t *b, size_t *e)
{
	while (*b < *e && is_blank(s[*b]))
		(*b)++;
	while (*e > *b && is_blank(s[*e - 1]))
		(*e)--;
	if (*e > *b && s[*e - 1] == '\n') {
		(*e)--;
		while (*e > *b && is_blank(s[*e - 1]))
			(*e)--;
	}
}

/*
 * cpulist_num - read the decimal at s[*i..e).  Any number of digits is
 * accepted; the value saturates just above UINT32_MAX, so it cannot wrap.
 * Returns: 0 with *i past the digits, or -EINVAL when there is no digit.
 */
static int cpulist_num(const char *s, size_t e, size_t *i, uint64_t *val)
{
	uint64_t v = 0;
	size_t p = *i;

	if (p >= e || !is_digit(s[p]))
		return -EINVAL;
	for (; p < e && is_digit(s[p]); p++)
		if (v <= UINT32_MAX)
			v = v * 10 + (uint64_t)(s[p] - '0');
	*i = p;
	*val = v;
	return 0;
}

/*
 * cpulist_elem - read "a" or "a-b" at s[*i..e) into [*a, *b].
 * Returns: 0, or -EINVAL for a missing number, a value that does not fit
 * 32 bits (the kernel's -EOVERFLOW) or a > b.
 */
static int cpulist_elem(const char *s, size_t e, size_t *i, uint64_t *a,
			uint64_t *b)
{
	if (cpulist_num(s, e, i, a))
		return -EINVAL;
	*b = *a;
	if (*i < e && s[*i] == '-') {
		(*i)++;
		if (cpulist_num(s, e, i, b))
			return -EINVAL;
	}
	if (*a > UINT32_MAX || *b > UINT32_MAX || *a > *b)
		return -EINVAL;
	return 0;
}

/*
 * _pcpu_cpulist_parse - see internal.h.  The whole text is checked before
 * deciding, so malformed text is -EINVAL even when an earlier id was out of
 * range; -ERANGE means well-formed text naming an id >= PCPU_MAX_CPUS.
 */
int _pcpu_cpulist_parse(const char *s, size_t len, struct pcpu_cpuset *out)
{
	struct pcpu_cpuset set;
	size_t i = 0, e = len;
	bool too_big = false;

	if (!s && len)
		return -EINVAL;
	if (!s)
		s = "";
	cpulist_trim(s, &i, &e);
	_pcpu_cpuset_zero(&set);
	while (i < e) {
		uint64_t a, b;

		if (cpulist_elem(s, e, &i, &a, &b))
			return -EINVAL;
		if (b >= PCPU_MAX_CPUS)
			too_big = true;
		else
			cpuset_set_range(&set, (unsigned)a, (unsigned)b);
		if (i == e)
			break;
		if (s[i] != ',' || ++i == e)
			return -EINVAL;
	}
	if (too_big)
		return -ERANGE;
	*out = set;
	return 0;
}

/* Appends src[0..n) at offset *pos of buf (keeping a NUL); *pos counts
 * every byte, stored or not. */
static void fmt_append(char *buf, size_t len, size_t *pos, const char *src,
		       size_t n)
{
	for (size_t j = 0; j < n; j++, (*pos)++)
		if (*pos + 1 < len)
			buf[*pos] = src[j];
	if (len)
		buf[*pos < len ? *pos : len - 1] = '\0';
}

/* _pcpu_cpulist_format - see internal.h.  Runs of two or more CPUs are
 * written "a-b"; the empty set is "".  Every bit is printed, including
 * bit PCPU_MAX_CPUS (cache.c's locked cache), which parse would then
 * refuse. */
int _pcpu_cpulist_format(const struct pcpu_cpuset *set, char *buf, size_t len)
{
	size_t pos = 0;
	char tmp[32];

	if (len)
		buf[0] = '\0';
	for (int a = _pcpu_cpuset_next(set, 0); a >= 0;) {
		int b = cpuset_next_clear(set, a) - 1;
		int n;

		if (a == b)
			n = snprintf(tmp, sizeof(tmp), "%s%d", pos ? "," : "", a);
		else
			n = snprintf(tmp, sizeof(tmp), "%s%d-%d",
				     pos ? "," : "", a, b);
		fmt_append(buf, len, &pos, tmp, (size_t)n);
		a = b + 1 < CPUSET_BITS ? _pcpu_cpuset_next(set, b + 1) : -1;
	}
	return (int)pos;
}

/* ---- files ---- */

/* Builds io->path = root + the formatted rest; returns 0 or -ENAMETOOLONG. */
__attribute__((format(printf, 2, 3)))
static int topo_path(struct topo_io *io, const char *fmt, ...)
{
	size_t r = strlen(io->root);
	va_list ap;
	int n;

	if (r >= sizeof(io->path))
		return -ENAMETOOLONG;
	memcpy(io->path, io->root, r);
	va_start(ap, fmt);
	n = vsnprintf(io->path + r, sizeof(io->path) - r, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(io->path) - r)
		return -ENAMETOOLONG;
	return 0;
}

/* Reads up to cap bytes from fd into buf, retrying on EINTR and short
 * reads.  Returns the byte count, or -errno. */
static ssize_t read_all(int fd, char *buf, size_t cap)
{
	size_t n = 0;

	while (n < cap) {
		ssize_t r = read(fd, buf + n, cap - n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			break;
		n += (size_t)r;
	}
	return (ssize_t)n;
}

/*
 * topo_read_file - read the whole file io->path into io->buf.
 * Returns: its length, or -errno (-EFBIG when it is larger than the buffer).
 */
static ssize_t topo_read_file(struct topo_io *io)
{
	char extra;
	ssize_t n;
	int fd;

	do
		fd = open(io->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	while (fd < 0 && errno == EINTR);
	if (fd < 0)
		return -errno;
	n = read_all(fd, io->buf, sizeof(io->buf));
	if (n == (ssize_t)sizeof(io->buf) && read_all(fd, &extra, 1) != 0)
		n = -EFBIG;
	close(fd);
	return n;
}

/* Reads and parses the cpulist file io->path; returns 0 or -errno. */
static int topo_read_cpulist(struct topo_io *io, struct pcpu_cpuset *out)
{
	ssize_t n = topo_read_file(io);

	if (n < 0)
		return (int)n;
	return _pcpu_cpulist_parse(io->buf, (size_t)n, out);
}

/* The process's affinity mask; returns 0 or -errno (e.g. EINVAL when the
 * kernel has more than PCPU_MAX_CPUS ids). */
static int topo_affinity(struct pcpu_cpuset *out)
{
	size_t size = CPU_ALLOC_SIZE(PCPU_MAX_CPUS);
	cpu_set_t *mask = CPU_ALLOC(PCPU_MAX_CPUS);
	int ret = 0;

	if (!mask)
		return -ENOMEM;
	if (sched_getaffinity(0, size, mask) == 0) {
		_pcpu_cpuset_zero(out);
		for (int c = 0; c < PCPU_MAX_CPUS; c++)
			if (CPU_ISSET_S(c, size, mask))
				_pcpu_cpuset_set(out, c);
	} else {
		ret = -errno;
	}
	CPU_FREE(mask);
	return ret;
}

/* ---- possible, online ---- */

/* Fills *possible (never empty) following the fallback chain above; with
 * no @io (no memory), starts at the affinity step. */
static void topo_read_possible(struct topo_io *io, bool real,
			       struct pcpu_cpuset *possible)
{
	static const char *const files[] = { "possible", "present", "online" };
	long n;

	for (size_t i = 0; io && i < sizeof(files) / sizeof(files[0]); i++)
		if (!topo_path(io, SYS_CPU "%s", files[i]) &&
		    !topo_read_cpulist(io, possible) && !cpuset_empty(possible))
			return;
	if (real && !topo_affinity(possible) && !cpuset_empty(possible))
		return;
	_pcpu_cpuset_zero(possible);
	n = sysconf(_SC_NPROCESSORS_CONF);
	if (n > PCPU_MAX_CPUS)
		n = PCPU_MAX_CPUS;
	cpuset_set_range(possible, 0, n >= 1 ? (unsigned)n - 1 : 0);
}

/* Sets t->online from the online file clipped to possible, else possible. */
static void topo_read_online(struct topo_io *io, struct pcpu_topology *t)
{
	struct pcpu_cpuset on;

	if (!topo_path(io, SYS_CPU "online") && !topo_read_cpulist(io, &on)) {
		cpuset_and(&on, &t->possible);
		if (!cpuset_empty(&on)) {
			t->online = on;
			return;
		}
	}
	t->online = t->possible;
}

/* ---- cgroup cpuset ---- */

/*
 * cg_set_path - copy the cgroup path s[0..n) into io->cg without trailing
 * slashes ("/" becomes "").  Refuses relative paths and ".." components,
 * which /proc shows for cgroups outside our cgroup namespace.
 * Returns: 0 or -EINVAL.
 */
static int cg_set_path(struct topo_io *io, const char *s, size_t n)
{
	while (n > 0 && (s[n - 1] == '/' || s[n - 1] == '\n'))
		n--;
	if (n >= sizeof(io->cg) || (n > 0 && s[0] != '/') ||
	    memchr(s, '\0', n))
		return -EINVAL;
	memcpy(io->cg, s, n);
	io->cg[n] = '\0';
	for (const char *p = io->cg; (p = strstr(p, "/..")); p += 3)
		if (p[3] == '/' || p[3] == '\0')
			return -EINVAL;
	return 0;
}

/* io->cg = the cgroup v2 path ("0::<path>" line of /proc/self/cgroup);
 * returns 0 or -errno. */
static int cg_v2_path(struct topo_io *io)
{
	ssize_t n;
	size_t i = 0;

	if (topo_path(io, "/proc/self/cgroup") || (n = topo_read_file(io)) < 0)
		return -ENOENT;
	while (i < (size_t)n) {
		const char *line = io->buf + i;
		const char *nl = memchr(line, '\n', (size_t)n - i);
		size_t l = nl ? (size_t)(nl - line) : (size_t)n - i;

		if (l >= 3 && !memcmp(line, "0::", 3))
			return cg_set_path(io, line + 3, l - 3);
		i += l + 1;
	}
	return -ENOENT;
}

/* io->cg = the cgroup v1 cpuset path (/proc/self/cpuset); 0 or -errno. */
static int cg_v1_path(struct topo_io *io)
{
	ssize_t n;

	if (topo_path(io, "/proc/self/cpuset") || (n = topo_read_file(io)) < 0)
		return -ENOENT;
	return cg_set_path(io, io->buf, (size_t)n);
}

/*
 * cg_walk - read the first of @files found in <root><base><cg>, going up
 * one cgroup level at a time until the hierarchy's root has been tried.
 * Returns: 0 with *out, or -ENOENT.
 */
static int cg_walk(struct topo_io *io, const char *base,
		   const char *const *files, struct pcpu_cpuset *out)
{
	for (;;) {
		char *slash;

		for (size_t i = 0; files[i]; i++)
			if (!topo_path(io, "%s%s/%s", base, io->cg, files[i]) &&
			    !topo_read_cpulist(io, out))
				return 0;
		slash = strrchr(io->cg, '/');
		if (!slash)
			return -ENOENT;
		*slash = '\0';
	}
}

/* The CPUs of our cgroup cpuset (v2, else v1); returns 0 or -ENOENT. */
static int topo_cgroup_cpus(struct topo_io *io, struct pcpu_cpuset *out)
{
	static const char *const v2[] = { "cpuset.cpus.effective", NULL };
	static const char *const v1[] = { "cpuset.effective_cpus",
					  "cpuset.cpus", NULL };

	if (!cg_v2_path(io) && !cg_walk(io, "/sys/fs/cgroup", v2, out))
		return 0;
	if (!cg_v1_path(io) && !cg_walk(io, "/sys/fs/cgroup/cpuset", v1, out))
		return 0;
	return -ENOENT;
}

/* Sets t->allowed = online & affinity & cpuset, or online if that is empty. */
static void topo_read_allowed(struct topo_io *io, struct pcpu_topology *t)
{
	struct pcpu_cpuset al = t->online, mask;

	if (io->real && !topo_affinity(&mask))
		cpuset_and(&al, &mask);
	if (!topo_cgroup_cpus(io, &mask))
		cpuset_and(&al, &mask);
	t->allowed = cpuset_empty(&al) ? t->online : al;
}

/* ---- NUMA nodes ---- */

/* The N of a directory entry "node<N>" (no leading zero), or -1. */
static int node_id(const char *name)
{
	int id = 0;

	if (strncmp(name, "node", 4) || !is_digit(name[4]) ||
	    (name[4] == '0' && name[5]))
		return -1;
	for (name += 4; *name; name++) {
		if (!is_digit(*name))
			return -1;
		id = id * 10 + (*name - '0');
		if (id >= TOPO_MAX_NODES)
			return -1;
	}
	return id;
}

/* Gives node @id's possible CPUs to it; a CPU listed twice keeps the lower
 * node.  @seen marks CPUs already given a node. */
static void node_assign(struct topo_io *io, struct pcpu_topology *t, int id,
			struct pcpu_cpuset *seen)
{
	struct pcpu_cpuset cpus;

	if (topo_path(io, SYS_NODE "/node%d/cpulist", id) ||
	    topo_read_cpulist(io, &cpus))
		return;
	cpuset_and(&cpus, &t->possible);
	_pcpu_cpuset_for_each(c, &cpus) {
		if (!_pcpu_cpuset_test(seen, c) || id < t->node[c])
			t->node[c] = (uint16_t)id;
		_pcpu_cpuset_set(seen, c);
	}
}

/* Fills t->node[] and t->nr_nodes (highest node of a possible CPU + 1). */
static void topo_read_nodes(struct topo_io *io, struct pcpu_topology *t)
{
	struct pcpu_cpuset seen;
	struct dirent *de;
	DIR *d = NULL;

	memset(t->node, 0, sizeof(t->node));
	t->nr_nodes = 1;
	_pcpu_cpuset_zero(&seen);
	if (!topo_path(io, SYS_NODE))
		d = opendir(io->path);
	if (!d)
		return;
	while ((de = readdir(d))) {
		int id = node_id(de->d_name);

		if (id >= 0)
			node_assign(io, t, id, &seen);
	}
	closedir(d);
	_pcpu_cpuset_for_each(c, &t->possible)
		if (t->node[c] >= t->nr_nodes)
			t->nr_nodes = t->node[c] + 1;
}

/* ---- entry points ---- */

static struct topo_io *topo_io_new(const char *root)
{
	struct topo_io *io = malloc(sizeof(*io));

	if (io) {
		io->root = root ? root : "";
		io->real = io->root[0] == '\0';
	}
	return io;
}

/*
 * _pcpu_topology_read - see internal.h.
 * Context: any thread; reads files, calls sched_getaffinity/sysconf.
 * If even the scratch buffer cannot be allocated, the topology is the
 * affinity/sysconf fallback with everything online and on node 0.
 */
void _pcpu_topology_read(struct pcpu_topology *t, const char *root)
{
	struct topo_io *io = topo_io_new(root);
	int saved = errno;

	memset(t, 0, sizeof(*t));
	topo_read_possible(io, !root || !root[0], &t->possible);
	t->nr_cpu_ids = cpuset_last(&t->possible) + 1;
	if (io) {
		topo_read_online(io, t);
		topo_read_allowed(io, t);
		topo_read_nodes(io, t);
	} else {
		t->online = t->allowed = t->possible;
		t->nr_nodes = 1;
	}
	free(io);
	errno = saved;
}

/*
 * _pcpu_topology_refresh - see internal.h.  A simulated topology is left
 * alone (its masks are not the machine's), and so is t when the scratch
 * buffer cannot be allocated.
 */
void _pcpu_topology_refresh(struct pcpu_topology *t, const char *root)
{
	struct topo_io *io;
	int saved = errno;

	if (t->simulated)
		return;
	io = topo_io_new(root);
	if (io) {
		topo_read_online(io, t);
		topo_read_allowed(io, t);
		free(io);
	}
	errno = saved;
}

/* ---- simulation ---- */

/* Strict decimal 1..PCPU_MAX_CPUS (digits only); returns it or -1. */
static int sim_parse_possible(const char *s)
{
	long v = 0;

	if (!s || !*s)
		return -1;
	for (; *s; s++) {
		if (!is_digit(*s))
			return -1;
		v = v * 10 + (*s - '0');
		if (v > PCPU_MAX_CPUS)
			return -1;
	}
	return v >= 1 ? (int)v : -1;
}

/*
 * sim_fail - write "<var>: '<value>' <why>" into err (value shortened and
 * made printable, so the reason stays one line).
 * Returns: -EINVAL.
 */
__attribute__((format(printf, 5, 6)))
static int sim_fail(char *err, size_t errlen, const char *var,
		    const char *value, const char *why, ...)
{
	char shown[48], reason[96];
	size_t n = 0;
	va_list ap;

	for (; value && value[n] && n < 40; n++)
		shown[n] = isprint((unsigned char)value[n]) ? value[n] : '?';
	if (value && value[n])
		memcpy(shown + n, "...", 3), n += 3;
	shown[n] = '\0';
	va_start(ap, why);
	vsnprintf(reason, sizeof(reason), why, ap);
	va_end(ap);
	if (err && errlen)
		snprintf(err, errlen, "%s: '%s' %s", var, shown, reason);
	return -EINVAL;
}

/* Parses @s (NULL or "" = all) into a non-empty subset of 0..n-1; returns
 * 0 or -EINVAL with the reason in err. */
static int sim_parse_online(const char *s, int n, struct pcpu_cpuset *on,
			    char *err, size_t errlen)
{
	static const char var[] = "PCPU_SIM_ONLINE";
	int ret;

	_pcpu_cpuset_zero(on);
	if (!s || !*s) {
		cpuset_set_range(on, 0, (unsigned)n - 1);
		return 0;
	}
	ret = _pcpu_cpulist_parse(s, strlen(s), on);
	if (ret == -EINVAL)
		return sim_fail(err, errlen, var, s, "is not a cpulist");
	if (ret || cpuset_last(on) >= n)
		return sim_fail(err, errlen, var, s,
				"names CPUs outside 0-%d", n - 1);
	if (cpuset_empty(on))
		return sim_fail(err, errlen, var, s, "has no CPU");
	return 0;
}

/* _pcpu_topology_sim - see internal.h.  t is only written on success. */
int _pcpu_topology_sim(struct pcpu_topology *t, const char *possible_str,
		       const char *online_str, char *err, size_t errlen)
{
	struct pcpu_cpuset on;
	int n = sim_parse_possible(possible_str);

	if (err && errlen)
		err[0] = '\0';
	if (n < 0)
		return sim_fail(err, errlen, "PCPU_SIM_POSSIBLE", possible_str,
				"is not a number from 1 to %d", PCPU_MAX_CPUS);
	if (sim_parse_online(online_str, n, &on, err, errlen))
		return -EINVAL;
	memset(t, 0, sizeof(*t));
	t->nr_cpu_ids = n;
	t->nr_nodes = (n + 63) / 64;
	t->simulated = true;
	cpuset_set_range(&t->possible, 0, (unsigned)n - 1);
	t->online = on;
	t->allowed = on;
	for (int c = 0; c < n; c++)
		t->node[c] = (uint16_t)(c / 64);
	return 0;
}
