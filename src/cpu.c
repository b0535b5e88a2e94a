/*
 * cpu.c - initialisation, index modes, the paths, and the slow paths of
 * the this-CPU operations.
 *
 * An index is what selects a copy: the CPU number (PCPU_INDEX=cpu), the
 * rseq concurrency id mm_cid (PCPU_INDEX=cid), or in simulation the CPU a
 * thread says it acts as.  Every index is 0..nr_ids-1: an operation
 * always writes the calling CPU's own copy.
 *
 * Two paths, chosen per process:
 *
 *   rseq    copies of a READY index (index.c) are only ever changed by
 *           rseq critical sections that commit with one plain store
 *           (ops.h); other indexes' copies with atomics.
 *   atomic  every copy is changed with atomic read-modify-write: no rseq
 *           (valgrind, GLIBC_TUNABLES=glibc.pthread.rseq=0, old kernels)
 *           and simulation.
 *
 * Mixing the two on one copy would lose updates (a plain add racing an
 * atomic one on another CPU), so a copy is written by one kind at a time:
 * index.c moves an index between them with fences and gates.  Switching
 * the process from rseq to atomic (pcpu_sim_set_cpu) clears pcpu__ok[]
 * and then fences every CPU with membarrier: every section in flight has
 * then committed or aborted, and a section that starts later sees
 * pcpu__ok[idx] == 0 inside itself and aborts.
 *
 * A thread without an rseq registration in an rseq process (raw clone,
 * unregistered) reads cpu_id -1: its operations take its CPU from
 * sched_getcpu() and write with atomics, after index.c turned that
 * index's sections off (a demotion; the hotplug tick turns them on
 * again a second later).
 *
 * Locks: init_lock, then the others in the order index.c's top gives;
 * tid_lock (thread ids) is a leaf.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <unistd.h>

#include "chunk.h"

#ifndef AT_RSEQ_FEATURE_SIZE
#define AT_RSEQ_FEATURE_SIZE 27
#endif

/* glibc >= 2.35 exports these; weak so that older glibc still links. */
extern const ptrdiff_t __rseq_offset __attribute__((weak));
extern const unsigned int __rseq_size __attribute__((weak));

_Static_assert(PCPU__OK_SIZE == 2 * PCPU_MAX_CPUS,
	       "pcpu__ok[] in ops.h: an upper half that stays 0");

struct pcpu__fast pcpu__fast;
unsigned char pcpu__ok[PCPU__OK_SIZE];
struct pcpu_global _pcpu_g;

#define PCPU_UNIT_SIZE ((size_t)1 << 20)

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t tid_lock = PTHREAD_MUTEX_INITIALIZER;
/* Requests made before initialisation. */
static int req_index_mode = -1;
static int req_sim_possible;
static char req_sim_online[256];
static bool req_sim_online_set;

static __thread int tls_sim_cpu = -1;

static char *thread_pointer(void)
{
#if defined(__x86_64__)
	char *tp;
	__asm__("movq %%fs:0, %0" : "=r"(tp));
	return tp;
#elif defined(__aarch64__)
	char *tp;
	__asm__("mrs %0, tpidr_el0" : "=r"(tp));
	return tp;
#else
	return NULL;
#endif
}

/* The calling thread's struct rseq, or NULL when it is not registered. */
static volatile int32_t *rseq_area(void)
{
	if (!&__rseq_size || !&__rseq_offset || __rseq_size == 0 ||
	    !thread_pointer())
		return NULL;
	volatile int32_t *rs =
		(volatile int32_t *)(thread_pointer() + __rseq_offset);
	if (rs[PCPU_RSEQ_CPU_ID_OFFSET / 4] < 0)
		return NULL;
	return rs;
}

static unsigned int rseq_feature_size(void)
{
	unsigned int size = &__rseq_size ? __rseq_size : 0;
	/* glibc 2.35-2.39 report 32 (or 20) whatever the kernel fills in;
	 * the kernel tells the truth in the auxiliary vector (6.3+). */
	if (size == 20 || size == 32) {
		unsigned long feat = getauxval(AT_RSEQ_FEATURE_SIZE);
		if (feat == 0)
			feat = 20;
		size = feat < 32 ? (unsigned int)feat : 32;
	}
	return size;
}

/* Lock order at fork: init_lock, reclaim_lock, the allocator lock, the
 * record lock, then the leaves (index.c's ix_lock, tid_lock). */
static void atfork_prepare(void)
{
	pthread_mutex_lock(&init_lock);
	_pcpu_chunk_atfork_prepare();
	_pcpu_initval_atfork_prepare();
	_pcpu_index_atfork_prepare();
	pthread_mutex_lock(&tid_lock);
}

static void atfork_parent(void)
{
	pthread_mutex_unlock(&tid_lock);
	_pcpu_index_atfork_parent();
	_pcpu_initval_atfork_parent();
	_pcpu_chunk_atfork_parent();
	pthread_mutex_unlock(&init_lock);
}

static void atfork_child(void)
{
	pthread_mutex_unlock(&tid_lock);
	_pcpu_index_atfork_child();
	_pcpu_initval_atfork_child();
	_pcpu_chunk_atfork_child();
	_pcpu_hotplug_atfork_child();
	pthread_mutex_unlock(&init_lock);
	_pcpu_os_atfork_child();
}

static void init_topology(void)
{
	const char *poss = getenv("PCPU_SIM_POSSIBLE");
	const char *onl = getenv("PCPU_SIM_ONLINE");
	char buf[16], err[160];

	if (req_sim_possible > 0) {
		snprintf(buf, sizeof(buf), "%d", req_sim_possible);
		poss = buf;
		onl = req_sim_online_set ? req_sim_online : NULL;
	}
	if (poss && *poss) {
		if (_pcpu_topology_sim(&_pcpu_g.topo, poss, onl, err,
				       sizeof(err)) == 0) {
			_pcpu_g.sim = true;
			return;
		}
		_pcpu_notice("%s; using the real topology", err);
	}
	_pcpu_topology_read(&_pcpu_g.topo, NULL);
}

static void init_index_mode(void)
{
	const char *env = getenv("PCPU_INDEX");
	int want = req_index_mode;

	if (want < 0 && env && *env) {
		if (!strcmp(env, "cpu"))
			want = PCPU_INDEX_CPU;
		else if (!strcmp(env, "cid"))
			want = PCPU_INDEX_CID;
		else
			_pcpu_notice("PCPU_INDEX='%s' is not cpu or cid; using cpu",
				     env);
	}
	_pcpu_g.index_mode = PCPU_INDEX_CPU;
	if (want != PCPU_INDEX_CID)
		return;
	if (_pcpu_g.rseq && _pcpu_g.rseq_feature_size >= 28 && !_pcpu_g.sim)
		_pcpu_g.index_mode = PCPU_INDEX_CID;
	else
		_pcpu_notice("cid index mode needs rseq mm_cid (Linux 6.3+)%s; "
			     "using cpu",
			     _pcpu_g.sim ? " and no simulation" : "");
}

void _pcpu_init_slow(void)
{
	pthread_mutex_lock(&init_lock);
	if (_pcpu_g.initialised) {
		pthread_mutex_unlock(&init_lock);
		return;
	}
	_pcpu_g.page_size = (size_t)sysconf(_SC_PAGESIZE);
	_pcpu_g.unit_size = PCPU_UNIT_SIZE;
	init_topology();
	_pcpu_g.nr_ids = _pcpu_g.topo.nr_cpu_ids;
	_pcpu_g.rseq = PCPU__HAVE_RSEQ && rseq_area() != NULL;
	_pcpu_g.rseq_feature_size = _pcpu_g.rseq ? rseq_feature_size() : 0;
	init_index_mode();
	_pcpu_g.path = _pcpu_g.rseq && !_pcpu_g.sim ? PCPU_PATH_RSEQ
						    : PCPU_PATH_ATOMIC;

	const char *fault = getenv("PCPU_FAULT");
	if (fault && *fault && _pcpu_os_fault_env(fault))
		_pcpu_notice("PCPU_FAULT='%s' is malformed; ignored", fault);

	pcpu__fast.shift = (unsigned int)__builtin_ctzl(_pcpu_g.unit_size);
	pcpu__fast.nr_ids = (unsigned int)_pcpu_g.nr_ids;
	if (_pcpu_g.path == PCPU_PATH_RSEQ) {
		pcpu__fast.idx_tpoff =
			__rseq_offset + (_pcpu_g.index_mode == PCPU_INDEX_CID
						 ? PCPU_RSEQ_MM_CID_OFFSET
						 : PCPU_RSEQ_CPU_ID_OFFSET);
		pcpu__fast.cs_tpoff = __rseq_offset + PCPU_RSEQ_CS_OFFSET;
		pcpu__fast.cpu_tpoff = __rseq_offset + PCPU_RSEQ_CPU_ID_OFFSET;
		__atomic_store_n(&pcpu__fast.nr, (unsigned int)_pcpu_g.nr_ids,
				 __ATOMIC_RELEASE);
		if (_pcpu_g.rseq_feature_size >= 28) {
			pcpu__fast.cid_tpoff =
				__rseq_offset + PCPU_RSEQ_MM_CID_OFFSET;
			__atomic_store_n(&pcpu__fast.cid_nr,
					 (unsigned int)_pcpu_g.nr_ids,
					 __ATOMIC_RELEASE);
		}
	}
	_pcpu_initval_init();
	_pcpu_hotplug_init();
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
	const char *st = getenv("PCPU_STATS");
	if (st && *st && strcmp(st, "0"))
		atexit(_pcpu_stats_at_exit);
	__atomic_store_n(&_pcpu_g.initialised, true, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&init_lock);
}

int pcpu_init(void)
{
	_pcpu_ensure_init();
	return 0;
}

int pcpu_set_index_mode(enum pcpu_index_mode mode)
{
	if (mode != PCPU_INDEX_CPU && mode != PCPU_INDEX_CID)
		return -EINVAL;
	pthread_mutex_lock(&init_lock);
	int ret = _pcpu_g.initialised ? -EBUSY : 0;
	if (!ret)
		req_index_mode = mode;
	pthread_mutex_unlock(&init_lock);
	return ret;
}

enum pcpu_index_mode pcpu_index_mode(void)
{
	_pcpu_ensure_init();
	return _pcpu_g.index_mode;
}

enum pcpu_path pcpu_path(void)
{
	_pcpu_ensure_init();
	return __atomic_load_n(&_pcpu_g.path, __ATOMIC_ACQUIRE);
}

int pcpu_nr_cpu_ids(void)
{
	_pcpu_ensure_init();
	return _pcpu_g.nr_ids;
}

int pcpu_sim_configure(int possible, const char *online)
{
	if (possible < 1 || possible > PCPU_MAX_CPUS ||
	    (online && strlen(online) >= sizeof(req_sim_online)))
		return -EINVAL;
	struct pcpu_topology *probe = malloc(sizeof(*probe));
	char num[16], err[160];
	if (!probe)
		return -ENOMEM;
	snprintf(num, sizeof(num), "%d", possible);
	int ret = _pcpu_topology_sim(probe, num, online, err, sizeof(err));
	free(probe);
	if (ret)
		return ret;
	pthread_mutex_lock(&init_lock);
	ret = _pcpu_g.initialised ? -EBUSY : 0;
	if (!ret) {
		req_sim_possible = possible;
		req_sim_online_set = online != NULL;
		if (online)
			strcpy(req_sim_online, online);
	}
	pthread_mutex_unlock(&init_lock);
	return ret;
}

int pcpu_sim_set_cpu(int cpu)
{
	_pcpu_ensure_init();
	if (cpu < -1 || cpu >= _pcpu_g.nr_ids)
		return -EINVAL;
	if (cpu >= 0)
		_pcpu_index_leave_rseq();
	tls_sim_cpu = cpu;
	return 0;
}

/* The calling thread's index, always 0..nr_ids-1; *@unreg: a thread
 * without rseq registration on the rseq path (atomics only). */
static inline __attribute__((always_inline)) int raw_index(bool *unreg)
{
	*unreg = false;
	if (tls_sim_cpu >= 0)
		return tls_sim_cpu;
	volatile int32_t *rs = _pcpu_g.rseq ? rseq_area() : NULL;
	int idx;
	if (rs && _pcpu_g.index_mode == PCPU_INDEX_CID)
		idx = rs[PCPU_RSEQ_MM_CID_OFFSET / 4];
	else if (rs)
		idx = rs[PCPU_RSEQ_CPU_ID_OFFSET / 4];
	else
		idx = sched_getcpu();
	if (!rs && _pcpu_g.rseq &&
	    __atomic_load_n(&_pcpu_g.path, __ATOMIC_ACQUIRE) == PCPU_PATH_RSEQ)
		*unreg = true;
	if (idx < 0)
		idx = 0; /* no CPU number at all: any index, with atomics */
	if (PCPU_UNLIKELY(idx >= _pcpu_g.nr_ids))
		idx %= _pcpu_g.nr_ids; /* a real CPU acting in the model */
	return idx; /* (no division on the way: it cost the fallback 2 ns) */
}

/*
 * Thread indexes: a compact id per live thread (the lowest free one),
 * released when the thread exits.  They stand in for mm_cid where the
 * kernel has none or in simulation, so that what is indexed by
 * concurrency (counters) needs as many slots as live threads.  Beyond
 * nr_ids live threads, ids are shared: their slots are written with
 * atomics only, so sharing loses nothing.
 */
static pthread_key_t thread_index_key;
static pthread_once_t thread_index_once = PTHREAD_ONCE_INIT;
static struct pcpu_cpuset thread_index_taken;
static unsigned int thread_index_next; /* for ids beyond nr_ids */
static __thread int tls_thread_index = -1;

static void thread_index_release(void *arg)
{
	int idx = (int)(intptr_t)arg - 1;
	pthread_mutex_lock(&tid_lock);
	_pcpu_cpuset_clear(&thread_index_taken, idx);
	pthread_mutex_unlock(&tid_lock);
}

static void thread_index_init(void)
{
	pthread_key_create(&thread_index_key, thread_index_release);
}

static int thread_index(void)
{
	if (PCPU_LIKELY(tls_thread_index >= 0))
		return tls_thread_index;
	pthread_once(&thread_index_once, thread_index_init);
	pthread_mutex_lock(&tid_lock);
	int idx = 0;
	while (idx < _pcpu_g.nr_ids &&
	       _pcpu_cpuset_test(&thread_index_taken, idx))
		idx++;
	bool own = idx < _pcpu_g.nr_ids;
	if (own)
		_pcpu_cpuset_set(&thread_index_taken, idx);
	else
		idx = (int)(thread_index_next++ % (unsigned int)_pcpu_g.nr_ids);
	pthread_mutex_unlock(&tid_lock);
	if (own)
		pthread_setspecific(thread_index_key, (void *)(intptr_t)(idx + 1));
	_pcpu_index_use(idx, true); /* written by atomics: kept for good */
	tls_thread_index = idx;
	return idx;
}

/*
 * _pcpu_cid_enter - the index a write to a slot indexed by concurrency
 * (counters) uses now.  By mm_cid on the rseq path: as any operation
 * (index.c decides between a section, *@rseq, and an atomic write inside
 * the gate, ended by _pcpu_slow_exit(idx, *@ticket)).  By thread id: an
 * atomic write on the thread's id, whose index is kept in use for good
 * (*@ticket -1).
 */
int _pcpu_cid_enter(bool *rseq, int *ticket)
{
	_pcpu_ensure_init();
	if (__atomic_load_n(&pcpu__fast.cid_nr, __ATOMIC_ACQUIRE)) {
		volatile int32_t *rs = rseq_area();
		int idx = rs ? rs[PCPU_RSEQ_MM_CID_OFFSET / 4] : -1;
		bool unreg = !rs;
		if (idx < 0 || idx >= _pcpu_g.nr_ids) {
			idx = sched_getcpu();
			idx = idx < 0 ? 0 : idx % _pcpu_g.nr_ids;
			unreg = true;
		}
		return _pcpu_index_enter(idx, unreg, rseq, ticket);
	}
	*rseq = false;
	*ticket = -1;
	return thread_index();
}

bool _pcpu_cid_rseq_path(void)
{
	return __atomic_load_n(&pcpu__fast.cid_nr, __ATOMIC_ACQUIRE) != 0;
}

int pcpu_this_cpu(void)
{
	_pcpu_ensure_init();
	bool unreg;
	return raw_index(&unreg);
}

/*
 * _pcpu_slow_enter - the index a slow-path write of the calling thread
 * uses now.  *@rseq: commit with an rseq section (which re-checks
 * pcpu__ok[idx] and the thread's index; retry on an abort); else an
 * atomic write, then _pcpu_slow_exit(idx, *@ticket).
 */
int _pcpu_slow_enter(bool *rseq, int *ticket)
{
	_pcpu_ensure_init();
	bool unreg;
	int raw = raw_index(&unreg);
	return _pcpu_index_enter(raw, unreg, rseq, ticket);
}

/* pcpu_get_cpu_ptr: the thread's mask before its outermost get, and
 * whether it was pinned. */
static __thread cpu_set_t tls_get_mask;
static __thread bool tls_get_pinned;
static __thread int tls_get_depth;

void *pcpu__get_cpu_ptr(const void *p)
{
	_pcpu_ensure_init();
	if (tls_get_depth++ == 0 && tls_sim_cpu < 0) {
		int cpu = sched_getcpu();
		tls_get_pinned = false;
		if (cpu >= 0 &&
		    !sched_getaffinity(0, sizeof(tls_get_mask), &tls_get_mask)) {
			cpu_set_t one;
			CPU_ZERO(&one);
			CPU_SET(cpu, &one);
			tls_get_pinned = !sched_setaffinity(0, sizeof(one), &one);
		}
	}
	bool unreg;
	int idx = raw_index(&unreg);
	_pcpu_index_use(idx, true);
	return pcpu__copy(p, idx);
}

void pcpu__put_cpu_ptr(const void *p)
{
	if (tls_get_depth <= 0) {
		_pcpu_report("pcpu_put_cpu_ptr without pcpu_get_cpu_ptr", p);
		return;
	}
	if (--tls_get_depth == 0 && tls_get_pinned) {
		sched_setaffinity(0, sizeof(tls_get_mask), &tls_get_mask);
		tls_get_pinned = false;
	}
}

void *pcpu__ptr_slow(const void *p, int cpu)
{
	_pcpu_ensure_init();
	if (cpu < 0 || cpu >= _pcpu_g.nr_ids) {
		_pcpu_report_cpu("pcpu_ptr", p, cpu);
		errno = EINVAL;
		return NULL;
	}
	_pcpu_index_use(cpu, true);
	return pcpu__copy(p, cpu);
}

int pcpu_cpu_next(int cpu)
{
	_pcpu_ensure_init();
	if (cpu < -1 || cpu >= _pcpu_g.nr_ids - 1)
		return -1;
	for (int w = (cpu + 1) / 64; w <= (_pcpu_g.nr_ids - 1) / 64; w++) {
		uint64_t x = __atomic_load_n(&_pcpu_g.used.bits[w],
					     __ATOMIC_ACQUIRE);
		if (w == (cpu + 1) / 64)
			x &= ~(uint64_t)0 << ((cpu + 1) % 64);
		if (x)
			return w * 64 + __builtin_ctzll(x);
	}
	return -1;
}

void _pcpu_used_snapshot(struct pcpu_cpuset *out)
{
	for (int w = 0; w < PCPU_CPUSET_WORDS; w++)
		out->bits[w] = __atomic_load_n(&_pcpu_g.used.bits[w],
					       __ATOMIC_ACQUIRE);
}
