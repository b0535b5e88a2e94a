/*
 * hotplug.c - CPUs that come and go: what libpcpu sees of them (online,
 * allowed, down), the callbacks in the manner of the kernel's cpuhp
 * states, and the hotplug context that acts on changes.  The states of
 * indexes themselves (in use, ready, released) are index.c's; this file
 * says when a CPU index may be ready and asks for bring-ups and
 * releases.
 *
 * Per CPU id k (atomic bit sets, read without a lock):
 *
 *   online    sysfs "online" (or the simulated machine)        hp_online
 *   allowed   the cgroup cpuset (simulation: online)            hp_allowed
 *   down      libpcpu saw k leave online/allowed; not made
 *             ready again until it comes back                   hp_down
 *   cb        every registered online callback ran for k and
 *             no dead callback since                            hp_cb
 *   failed    the last online callbacks of k failed; retried    hp_failed
 *   wanted    k came into use without being ready: the hotplug
 *             context runs its callbacks and makes it ready     hp_wanted
 *
 * An index in use may be READY (index.c: rseq sections commit on it)
 * only when _pcpu_hotplug_may_ready says so: not down, not held atomic
 * after a demotion for a thread without rseq, and, with callbacks
 * registered (CPU index mode), its online callbacks ran.  Operations
 * never wait for callbacks and never run them: an operation on a CPU
 * whose callbacks have not run yet writes the CPU's own copies with
 * atomic instructions, and the hotplug context (pcpu_cpus_refresh,
 * pcpu_sim_cpu_*, registration, the balance worker's tick) runs the
 * callbacks and then makes the CPU ready.
 *
 * Teardown of a CPU that left (hotplug context): mark it down, demote
 * its index (no section can commit on it afterwards), run the dead
 * callbacks in reverse registration order, fold the counters' slots of
 * the index, then ask index.c to release it, which happens only when
 * every live area's copy there equals its initial value; otherwise the
 * index stays in use (its values keep counting) and the release is
 * retried after frees.  Nothing a CPU held is ever lost.
 *
 * Detection: the uevent socket and a periodic re-read of sysfs online and
 * the cgroup cpuset.  The process's CPU set is not a thread's affinity:
 * a program that pins its main thread still runs its other threads
 * elsewhere.
 *
 * Lock order: hp_lock (the hotplug context; callbacks run with only it
 * held), then index.c's and the allocator's.  Operations never take it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/netlink.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define HP_MAX_CALLBACKS 64
#define HP_RESCAN_NS (10 * 1000000000LL) /* a lingering index's rescan */
#define HP_DEMOTED_NS 1000000000LL        /* atomic after a demotion */

static bool hp_inited;
static bool hp_sim;
static bool hp_cpu_mode; /* indexes are CPUs: callbacks and CPU events */

static pthread_mutex_t hp_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread bool tls_hp_held; /* this thread is the hotplug context */

static struct pcpu_cpuset hp_online, hp_allowed, hp_up, hp_down;
static struct pcpu_cpuset hp_cb, hp_failed, hp_wanted, hp_demoted;
static long long demoted_until[PCPU_MAX_CPUS]; /* atomic */
static int hp_pending; /* work for the tick */

/* Callbacks: hp_lock; nr_cbs is read without it. */
struct hp_callback {
	char name[32];
	int (*online)(int cpu, void *arg);
	void (*dead)(int cpu, void *arg);
	void *arg;
	bool active;
};
static struct hp_callback cbs[HP_MAX_CALLBACKS];
static int nr_cbs;

/* Detection: hp_lock. */
static struct pcpu_topology *hp_topo; /* refreshed copy (real topology) */
static int nl_fd = -1; /* written under hp_lock, read by the tick */
static bool nl_tried;
static long long next_read_ns; /* atomic: next periodic re-read */
static unsigned long scanned_gen; /* free count at the last scan */
static long long next_rescan_ns;

#define now_ns _pcpu_now_ns

/* ---- bit helpers ---- */

/* Bits of word @w that are CPU ids below nr_ids. */
static inline uint64_t word_ids(int w)
{
	int nr = _pcpu_g.nr_ids;
	return w < nr / 64 ? ~(uint64_t)0
			   : ((uint64_t)1 << (nr % 64)) - 1;
}

static void set_pending(void)
{
	__atomic_store_n(&hp_pending, 1, __ATOMIC_SEQ_CST);
}

static bool has_callbacks(void)
{
	return hp_cpu_mode && __atomic_load_n(&nr_cbs, __ATOMIC_ACQUIRE) > 0;
}

/* ---- what index.c asks (lock-free: called under its leaf lock) ---- */

bool _pcpu_hotplug_may_ready(int k)
{
	if (!hp_inited)
		return true;
	if (hp_cpu_mode && _pcpu_cpuset_atomic_test(&hp_down, k))
		return false;
	if (_pcpu_cpuset_atomic_test(&hp_demoted, k) &&
	    now_ns() < __atomic_load_n(&demoted_until[k], __ATOMIC_RELAXED))
		return false;
	return !has_callbacks() || _pcpu_cpuset_atomic_test(&hp_cb, k);
}

void _pcpu_hotplug_note_use(int k)
{
	if (_pcpu_cpuset_atomic_test(&hp_wanted, k))
		return;
	_pcpu_cpuset_atomic_set(&hp_wanted, k);
	set_pending();
	_pcpu_balance_kick(false);
}

void _pcpu_hotplug_note_demoted(int k)
{
	__atomic_store_n(&demoted_until[k], now_ns() + HP_DEMOTED_NS,
			 __ATOMIC_RELAXED);
	_pcpu_cpuset_atomic_set(&hp_demoted, k);
	_pcpu_cpuset_atomic_set(&hp_wanted, k);
	set_pending();
}

/* ---- callbacks (hp_lock held) ---- */

/* Online callbacks in order; on a failure the dead callbacks of those
 * before it, in reverse.  Returns 0 or the (negative) error. */
static int run_online(int cpu)
{
	int i, r = 0;
	for (i = 0; i < HP_MAX_CALLBACKS; i++) {
		if (!cbs[i].active || !cbs[i].online)
			continue;
		r = cbs[i].online(cpu, cbs[i].arg);
		if (r)
			break;
	}
	if (!r)
		return 0;
	while (--i >= 0)
		if (cbs[i].active && cbs[i].dead)
			cbs[i].dead(cpu, cbs[i].arg);
	return r < 0 ? r : -ECANCELED;
}

static void run_dead(int cpu)
{
	for (int i = HP_MAX_CALLBACKS - 1; i >= 0; i--)
		if (cbs[i].active && cbs[i].dead)
			cbs[i].dead(cpu, cbs[i].arg);
}

/* ---- bring-up and teardown (hp_lock held) ---- */

/*
 * cpu_up_locked - make index @k ready: in use (filled), its online
 * callbacks run (CPU index mode), then READY.
 * Returns: 0, -ENODEV (down), -ENOMEM, or an online callback's error
 * (then @k is failed and stays in use, written with atomics).
 */
static int cpu_up_locked(int k)
{
	if (hp_cpu_mode && _pcpu_cpuset_atomic_test(&hp_down, k))
		return -ENODEV;
	int r = _pcpu_index_use_ctx(k);
	if (!r && has_callbacks() && !_pcpu_cpuset_atomic_test(&hp_cb, k)) {
		r = run_online(k);
		if (!r)
			_pcpu_cpuset_atomic_set(&hp_cb, k);
	}
	if (r) {
		_pcpu_cpuset_atomic_set(&hp_failed, k);
		set_pending();
		return r;
	}
	_pcpu_cpuset_atomic_clear(&hp_failed, k);
	_pcpu_cpuset_atomic_clear(&hp_wanted, k);
	_pcpu_index_promote(k);
	return 0;
}

/*
 * cpu_down_locked - CPU @k left: stop sections on it, run the dead
 * callbacks, fold the counters' slots, release its memory if nothing is
 * left in it.  Returns 0, or -EAGAIN when sections could not be fenced
 * (the teardown stays pending).
 */
static int cpu_down_locked(int k)
{
	_pcpu_cpuset_atomic_set(&hp_down, k);
	_pcpu_cpuset_atomic_clear(&hp_wanted, k);
	_pcpu_cpuset_atomic_clear(&hp_failed, k);
	if (!(_pcpu_index_state(k) & PCPU_INDEX_IN_USE))
		return 0;
	if (_pcpu_index_demote(k)) {
		set_pending();
		return -EAGAIN;
	}
	if (_pcpu_cpuset_atomic_test(&hp_cb, k)) {
		run_dead(k);
		_pcpu_cpuset_atomic_clear(&hp_cb, k);
	}
	_pcpu_counter_fold_index(k, PCPU_COUNTER_FOLD_CPU |
					    PCPU_COUNTER_FOLD_CID);
	_pcpu_index_set_lingering(true);
	_pcpu_index_release(k); /* values left: kept, retried after frees */
	set_pending();
	return 0;
}

/*
 * process_pending_locked - bring up wanted CPUs (and failed ones with
 * @retry), finish teardowns, discard dirty units, make demoted indexes
 * ready again when their time is up, and with @scan try again to release
 * indexes of CPUs that left.
 */
static void process_pending_locked(bool retry, bool scan)
{
	int nw = _pcpu_nr_words();
	bool left = false, ling = false;
	long long now = now_ns();

	__atomic_store_n(&hp_pending, 0, __ATOMIC_SEQ_CST);
	/* frees during this pass count; its end says whether later must */
	_pcpu_index_set_lingering(true);
	for (int w = 0; w < nw; w++) {
		uint64_t ids = word_ids(w);
		uint64_t down = hp_cpu_mode ? _pcpu_cpuset_atomic_word(&hp_down, w) : 0;
		uint64_t x = (_pcpu_cpuset_atomic_word(&hp_wanted, w) |
			      (retry ? _pcpu_cpuset_atomic_word(&hp_failed, w) : 0)) &
			     ~down & ids;
		for (; x; x &= x - 1) {
			int k = w * 64 + __builtin_ctzll(x);
			if (_pcpu_cpuset_atomic_test(&hp_demoted, k)) {
				if (now < __atomic_load_n(&demoted_until[k],
							  __ATOMIC_RELAXED)) {
					left = true;
					continue;
				}
				_pcpu_cpuset_atomic_clear(&hp_demoted, k);
			}
			cpu_up_locked(k);
		}
		for (x = down & ids; x; x &= x - 1) {
			int k = w * 64 + __builtin_ctzll(x);
			int st = _pcpu_index_state(k);
			if (st & PCPU_INDEX_READY)
				cpu_down_locked(k);
			else if ((st & PCPU_INDEX_IN_USE) && scan &&
				 !(st & PCPU_INDEX_PINNED))
				_pcpu_index_release(k);
			if (_pcpu_index_dirty(k))
				_pcpu_index_clean_dirty(k);
		}
	}
	for (int w = 0; w < nw; w++) {
		uint64_t ids = word_ids(w);
		uint64_t down = hp_cpu_mode ? _pcpu_cpuset_atomic_word(&hp_down, w) : 0;
		left |= ((_pcpu_cpuset_atomic_word(&hp_wanted, w) | _pcpu_cpuset_atomic_word(&hp_failed, w)) &
			 ~down & ids) != 0;
		for (uint64_t x = down & ids; x; x &= x - 1) {
			int st = _pcpu_index_state(w * 64 + __builtin_ctzll(x));
			if (st & PCPU_INDEX_READY)
				left = true;
			if ((st & PCPU_INDEX_IN_USE) && !(st & PCPU_INDEX_PINNED))
				ling = true;
		}
	}
	_pcpu_index_set_lingering(ling);
	if (left)
		set_pending();
}

static void hp_lock_ctx(void)
{
	pthread_mutex_lock(&hp_lock);
	tls_hp_held = true;
}

static void hp_unlock_ctx(void)
{
	tls_hp_held = false;
	pthread_mutex_unlock(&hp_lock);
}

/* ---- detection ---- */

/* Applies new online/allowed masks: CPUs that left are torn down, CPUs
 * that came back may be brought up again.  Context: hp_lock. */
static void apply_locked(const struct pcpu_cpuset *online,
			 const struct pcpu_cpuset *allowed)
{
	for (int w = 0; w < _pcpu_nr_words(); w++) {
		uint64_t now = online->bits[w] & allowed->bits[w] & word_ids(w);
		uint64_t before = _pcpu_cpuset_atomic_word(&hp_up, w);
		__atomic_store_n(&hp_online.bits[w], online->bits[w],
				 __ATOMIC_SEQ_CST);
		__atomic_store_n(&hp_allowed.bits[w], allowed->bits[w],
				 __ATOMIC_SEQ_CST);
		__atomic_store_n(&hp_up.bits[w], now, __ATOMIC_SEQ_CST);
		if (!hp_cpu_mode)
			continue;
		for (uint64_t x = before & ~now; x; x &= x - 1)
			cpu_down_locked(w * 64 + __builtin_ctzll(x));
		for (uint64_t x = now & ~before; x; x &= x - 1) {
			int k = w * 64 + __builtin_ctzll(x);
			_pcpu_cpuset_atomic_clear(&hp_down, k);
			if (_pcpu_index_state(k) & PCPU_INDEX_IN_USE)
				_pcpu_cpuset_atomic_set(&hp_wanted, k); /* ready it again */
			set_pending();
		}
	}
}

/* Re-reads online CPUs and the cgroup cpuset (real topology).  Context:
 * hp_lock. */
static void refresh_locked(void)
{
	if (hp_sim || !hp_topo)
		return;
	/* "/" as the root: topology.c then reads the files but not the
	 * calling thread's affinity, which is not the process's */
	_pcpu_topology_refresh(hp_topo, "/");
	apply_locked(&hp_topo->online, &hp_topo->allowed);
	__atomic_store_n(&next_read_ns, now_ns() + (nl_fd >= 0 ? 5 : 1) *
						    1000000000LL,
			 __ATOMIC_RELAXED);
}

int _pcpu_hotplug_uevent_parse(const char *msg, size_t len, int *cpu)
{
	static const char *const actions[] = { "online", "offline", "add",
					       "remove" };
	static const char devdir[] = "/devices/system/cpu/cpu";
	const char *end = msg + len, *action = NULL, *devpath = NULL;
	const char *subsys = NULL;
	size_t alen = 0, dlen = 0, slen = 0;

	const char *nul = memchr(msg, '\0', len);
	if (!nul)
		return -EINVAL;
	const char *at = memchr(msg, '@', (size_t)(nul - msg));
	if (!at || at == msg)
		return -EINVAL;
	action = msg;
	alen = (size_t)(at - msg);
	devpath = at + 1;
	dlen = (size_t)(nul - devpath);
	for (const char *s = nul + 1; s < end;) {
		const char *e = memchr(s, '\0', (size_t)(end - s));
		size_t n = e ? (size_t)(e - s) : (size_t)(end - s);
		if (n > 7 && !memcmp(s, "ACTION=", 7)) {
			action = s + 7;
			alen = n - 7;
		} else if (n > 8 && !memcmp(s, "DEVPATH=", 8)) {
			devpath = s + 8;
			dlen = n - 8;
		} else if (n >= 10 && !memcmp(s, "SUBSYSTEM=", 10)) {
			subsys = s + 10;
			slen = n - 10;
		}
		s += n + 1;
	}
	if (!subsys || slen != 3 || memcmp(subsys, "cpu", 3))
		return 0;
	if (dlen <= sizeof(devdir) - 1 ||
	    memcmp(devpath, devdir, sizeof(devdir) - 1))
		return 0;
	const char *d = devpath + sizeof(devdir) - 1, *de = devpath + dlen;
	long id = 0;
	if (*d == '0' && de - d > 1)
		return 0;
	for (; d < de; d++) {
		if (*d < '0' || *d > '9')
			return 0;
		id = id * 10 + (*d - '0');
		if (id >= PCPU_MAX_CPUS)
			return 0;
	}
	for (size_t i = 0; i < sizeof(actions) / sizeof(actions[0]); i++)
		if (alen == strlen(actions[i]) &&
		    !memcmp(action, actions[i], alen)) {
			*cpu = (int)id;
			return (int)i + 1;
		}
	return 0;
}

/* Opens the kernel uevent socket once (silently nothing where the
 * process may not).  Context: hp_lock. */
static void nl_open(void)
{
	if (nl_tried)
		return;
	nl_tried = true;
	int saved = errno;
	int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
			NETLINK_KOBJECT_UEVENT);
	if (fd >= 0) {
		struct sockaddr_nl sa;
		memset(&sa, 0, sizeof(sa));
		sa.nl_family = AF_NETLINK;
		sa.nl_groups = 1; /* the kernel's own messages */
		if (bind(fd, (struct sockaddr *)&sa, sizeof(sa))) {
			close(fd);
			fd = -1;
		}
	}
	__atomic_store_n(&nl_fd, fd, __ATOMIC_RELAXED);
	errno = saved;
}

/* Reads what the socket holds; true when a CPU event (or an overflow)
 * means the masks must be re-read.  Context: hp_lock. */
static bool nl_drain(void)
{
	char buf[8192];
	bool any = false;
	int saved = errno;

	for (int n = 0; n < 256; n++) {
		struct sockaddr_nl sa;
		struct iovec iov = { buf, sizeof(buf) };
		struct msghdr mh;
		int cpu;
		memset(&mh, 0, sizeof(mh));
		memset(&sa, 0, sizeof(sa));
		mh.msg_name = &sa;
		mh.msg_namelen = sizeof(sa);
		mh.msg_iov = &iov;
		mh.msg_iovlen = 1;
		ssize_t r = recvmsg(nl_fd, &mh, MSG_DONTWAIT);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ENOBUFS) { /* lost some: re-read */
				any = true;
				continue;
			}
			break;
		}
		if (mh.msg_namelen < sizeof(sa) || sa.nl_pid != 0)
			continue; /* not from the kernel */
		if ((mh.msg_flags & MSG_TRUNC) ||
		    _pcpu_hotplug_uevent_parse(buf, (size_t)r, &cpu) > 0)
			any = true;
	}
	errno = saved;
	return any;
}

/* ---- public API ---- */

int pcpu_cpu_state(int cpu)
{
	_pcpu_ensure_init();
	if (cpu < 0 || cpu >= _pcpu_g.nr_ids)
		return -EINVAL;
	int s = PCPU_CPU_POSSIBLE, ix = _pcpu_index_state(cpu);
	if (_pcpu_cpuset_atomic_test(&hp_online, cpu))
		s |= PCPU_CPU_ONLINE;
	if (_pcpu_cpuset_atomic_test(&hp_allowed, cpu))
		s |= PCPU_CPU_ALLOWED;
	if (ix & PCPU_INDEX_READY)
		s |= PCPU_CPU_READY;
	if (ix & PCPU_INDEX_IN_USE)
		s |= PCPU_CPU_BACKED;
	if (_pcpu_cpuset_atomic_test(&hp_failed, cpu))
		s |= PCPU_CPU_FAILED;
	return s;
}

int pcpu_cpu_next_online(int cpu)
{
	_pcpu_ensure_init();
	if (cpu < -1 || cpu >= _pcpu_g.nr_ids - 1)
		return -1;
	for (int w = (cpu + 1) / 64; w < _pcpu_nr_words(); w++) {
		uint64_t x = _pcpu_cpuset_atomic_word(&hp_online, w) & word_ids(w);
		if (w == (cpu + 1) / 64)
			x &= ~(uint64_t)0 << ((cpu + 1) % 64);
		if (x)
			return w * 64 + __builtin_ctzll(x);
	}
	return -1;
}

int pcpu_cpus_refresh(void)
{
	_pcpu_ensure_init();
	if (tls_hp_held)
		return -EDEADLK;
	hp_lock_ctx();
	if (!hp_sim) {
		nl_open();
		if (nl_fd >= 0)
			nl_drain();
		refresh_locked();
	}
	scanned_gen = _pcpu_index_free_gen();
	process_pending_locked(true, true);
	hp_unlock_ctx();
	return 0;
}

void _pcpu_hotplug_tick(void)
{
	if (!__atomic_load_n(&hp_inited, __ATOMIC_ACQUIRE))
		return;
	bool pending = __atomic_load_n(&hp_pending, __ATOMIC_ACQUIRE);
	long long now = 0;
	bool reread = false;
	if (!hp_sim) {
		now = now_ns();
		reread = now >= __atomic_load_n(&next_read_ns, __ATOMIC_RELAXED);
	}
	if (!pending && !reread &&
	    (hp_sim || __atomic_load_n(&nl_fd, __ATOMIC_RELAXED) < 0))
		return;
	if (pthread_mutex_trylock(&hp_lock))
		return;
	tls_hp_held = true;
	if (!hp_sim) {
		nl_open();
		if (nl_fd >= 0 && nl_drain())
			reread = true;
		if (reread)
			refresh_locked();
	}
	unsigned long gen = _pcpu_index_free_gen();
	bool scan = gen != scanned_gen;
	long long t = now ? now : now_ns();
	if (t >= next_rescan_ns) {
		/* frees racing a scan may have gone uncounted */
		scan = true;
		next_rescan_ns = t + HP_RESCAN_NS;
	}
	if (scan)
		scanned_gen = gen;
	if (pending || scan)
		process_pending_locked(true, scan);
	hp_unlock_ctx();
}

/* The checks of pcpu_sim_cpu_online/offline; on 0 the hotplug context
 * is entered (hp_lock held). */
static int sim_enter(int cpu)
{
	_pcpu_ensure_init();
	if (!hp_sim)
		return -ENOENT;
	if (cpu < 0 || cpu >= _pcpu_g.nr_ids)
		return -EINVAL;
	if (tls_hp_held)
		return -EDEADLK;
	hp_lock_ctx();
	return 0;
}

int pcpu_sim_cpu_online(int cpu)
{
	int e = sim_enter(cpu);
	if (e)
		return e;
	_pcpu_cpuset_atomic_set(&hp_online, cpu);
	_pcpu_cpuset_atomic_set(&hp_allowed, cpu);
	_pcpu_cpuset_atomic_set(&hp_up, cpu);
	_pcpu_cpuset_atomic_clear(&hp_down, cpu);
	int r = cpu_up_locked(cpu);
	process_pending_locked(false, false);
	hp_unlock_ctx();
	return r;
}

int pcpu_sim_cpu_offline(int cpu)
{
	int e = sim_enter(cpu);
	if (e)
		return e;
	int r = 0, online = 0;
	for (int w = 0; w < _pcpu_nr_words(); w++)
		online += __builtin_popcountll(_pcpu_cpuset_atomic_word(&hp_online, w));
	if (_pcpu_cpuset_atomic_test(&hp_online, cpu) && online == 1) {
		r = -EBUSY;
	} else {
		_pcpu_cpuset_atomic_clear(&hp_online, cpu);
		_pcpu_cpuset_atomic_clear(&hp_allowed, cpu);
		_pcpu_cpuset_atomic_clear(&hp_up, cpu);
		r = cpu_down_locked(cpu);
	}
	hp_unlock_ctx();
	return r;
}

int pcpu_hotplug_register(const char *name, int (*online)(int cpu, void *arg),
			  void (*dead)(int cpu, void *arg), void *arg)
{
	if (!name || (!online && !dead))
		return -EINVAL;
	_pcpu_ensure_init();
	if (tls_hp_held)
		return -EDEADLK;
	hp_lock_ctx();
	int h = 0;
	while (h < HP_MAX_CALLBACKS && cbs[h].active)
		h++;
	if (h == HP_MAX_CALLBACKS) {
		hp_unlock_ctx();
		return -ENOSPC;
	}
	struct hp_callback *cb = &cbs[h];
	snprintf(cb->name, sizeof(cb->name), "%s", name);
	cb->online = online;
	cb->dead = dead;
	cb->arg = arg;
	int nr = _pcpu_g.nr_ids, k, r = 0;
	/* the CPUs it joins: ready ones (their other callbacks ran, or
	 * there were none) */
	bool first = !has_callbacks();
	if (hp_cpu_mode) {
		for (k = 0; k < nr; k++) {
			bool ready = _pcpu_index_state(k) & PCPU_INDEX_READY;
			if (!ready || (!first && !_pcpu_cpuset_atomic_test(&hp_cb, k)))
				continue;
			if (online && (r = online(k, arg)))
				break;
		}
		if (r) {
			while (--k >= 0)
				if (dead && (_pcpu_index_state(k) & PCPU_INDEX_READY) &&
				    (first || _pcpu_cpuset_atomic_test(&hp_cb, k)))
					dead(k, arg);
			hp_unlock_ctx();
			return r < 0 ? r : -ECANCELED;
		}
		for (k = 0; first && k < nr; k++)
			if (_pcpu_index_state(k) & PCPU_INDEX_READY)
				_pcpu_cpuset_atomic_set(&hp_cb, k);
	}
	cb->active = true;
	__atomic_add_fetch(&nr_cbs, 1, __ATOMIC_RELEASE);
	process_pending_locked(false, false);
	hp_unlock_ctx();
	return h;
}

int pcpu_hotplug_unregister(int handle)
{
	_pcpu_ensure_init();
	if (handle < 0 || handle >= HP_MAX_CALLBACKS)
		return -EINVAL;
	if (tls_hp_held)
		return -EDEADLK;
	hp_lock_ctx();
	struct hp_callback *cb = &cbs[handle];
	if (!cb->active) {
		hp_unlock_ctx();
		return -EINVAL;
	}
	if (hp_cpu_mode && cb->dead)
		for (int k = _pcpu_g.nr_ids - 1; k >= 0; k--)
			if (_pcpu_cpuset_atomic_test(&hp_cb, k))
				cb->dead(k, cb->arg);
	cb->active = false;
	__atomic_sub_fetch(&nr_cbs, 1, __ATOMIC_RELEASE);
	process_pending_locked(false, false);
	hp_unlock_ctx();
	return 0;
}

/* ---- init and fork ---- */

void _pcpu_hotplug_init(void)
{
	hp_sim = _pcpu_g.sim;
	hp_cpu_mode = _pcpu_g.index_mode == PCPU_INDEX_CPU;
	hp_online = _pcpu_g.topo.online;
	hp_allowed = _pcpu_g.topo.allowed;
	if (!hp_sim) {
		hp_topo = malloc(sizeof(*hp_topo));
		if (hp_topo) {
			*hp_topo = _pcpu_g.topo;
			/* the process's CPUs: online and the cpuset, not the
			 * initialising thread's affinity */
			_pcpu_topology_refresh(hp_topo, "/");
			hp_allowed = hp_topo->allowed;
		}
		__atomic_store_n(&next_read_ns, now_ns() + 1000000000LL,
				 __ATOMIC_RELAXED);
	}
	for (int w = 0; w < PCPU_CPUSET_WORDS; w++)
		hp_up.bits[w] = hp_online.bits[w] & hp_allowed.bits[w];
	__atomic_store_n(&hp_inited, true, __ATOMIC_RELEASE);
}

/*
 * Fork, in the child: the hotplug mutex is free unless this thread holds
 * it (fork from a callback); the uevent socket is the parent's.  The
 * hotplug mutex is not taken at fork: it is held while callbacks run,
 * and they may fork.
 */
void _pcpu_hotplug_atfork_child(void)
{
	hp_pending = 1;
	if (!tls_hp_held)
		pthread_mutex_init(&hp_lock, NULL);
	if (nl_fd >= 0)
		close(nl_fd);
	nl_fd = -1;
	nl_tried = false;
}
