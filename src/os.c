/*
 * os.c - the narrow layer between libpcpu and the kernel.
 *
 * Every mmap, munmap, madvise, mincore and membarrier call of the library
 * goes through here, so that tests can make any one of them fail
 * (PCPU_FAULT=mmap:N,... or _pcpu_os_fault_set) and walk a failure over
 * every call site of a workload.  Each function preserves errno for its
 * caller and reports failure as -errno (or NULL + ENOMEM for reserve).
 * Nothing here takes a lock or allocates memory.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/membarrier.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ
#define MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ (1 << 7)
#define MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ (1 << 8)
#endif
#ifndef MEMBARRIER_CMD_FLAG_CPU
#define MEMBARRIER_CMD_FLAG_CPU (1 << 0)
#endif

static long os_calls[PCPU_OS_NR_OPS];
static long os_fail_at[PCPU_OS_NR_OPS]; /* call number that fails; 0 none */

/* Counts the call; true if fault injection says this one fails. */
static bool os_inject(enum pcpu_os_op op)
{
	long n = __atomic_add_fetch(&os_calls[op], 1, __ATOMIC_RELAXED);
	long at = __atomic_load_n(&os_fail_at[op], __ATOMIC_RELAXED);
	if (at && n == at) {
		__atomic_store_n(&os_fail_at[op], 0, __ATOMIC_RELAXED);
		return true;
	}
	return false;
}

void _pcpu_os_fault_set(enum pcpu_os_op op, long nth)
{
	long base = __atomic_load_n(&os_calls[op], __ATOMIC_RELAXED);
	__atomic_store_n(&os_fail_at[op], nth > 0 ? base + nth : 0,
			 __ATOMIC_RELAXED);
}

long _pcpu_os_calls(enum pcpu_os_op op)
{
	return __atomic_load_n(&os_calls[op], __ATOMIC_RELAXED);
}

int _pcpu_os_fault_env(const char *spec)
{
	static const char *const names[PCPU_OS_NR_OPS] = {
		"mmap", "madvise", "munmap", "membarrier"
	};
	const char *s = spec;

	while (*s) {
		int op = -1;
		for (int i = 0; i < PCPU_OS_NR_OPS; i++) {
			size_t n = strlen(names[i]);
			if (!strncmp(s, names[i], n) && s[n] == ':') {
				op = i;
				s += n + 1;
				break;
			}
		}
		if (op < 0 || *s < '1' || *s > '9')
			return -EINVAL;
		char *end;
		errno = 0;
		long nth = strtol(s, &end, 10);
		if (errno || (*end && *end != ','))
			return -EINVAL;
		_pcpu_os_fault_set(op, nth);
		s = *end ? end + 1 : end;
	}
	return 0;
}

void *_pcpu_os_reserve(size_t len)
{
	if (os_inject(PCPU_OS_MMAP)) {
		errno = ENOMEM;
		return NULL;
	}
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED) {
		errno = ENOMEM;
		return NULL;
	}
	/* A transparent huge page would back neighbouring CPUs' units too. */
	int saved = errno;
	madvise(p, len, MADV_NOHUGEPAGE);
	errno = saved;
	return p;
}

int _pcpu_os_release(void *p, size_t len)
{
	int saved = errno, ret = 0;
	if (os_inject(PCPU_OS_MUNMAP))
		ret = -ENOMEM;
	else if (munmap(p, len))
		ret = -errno;
	errno = saved;
	return ret;
}

static int os_madvise(void *p, size_t len, int advice)
{
	int saved = errno, ret = 0;
	if (os_inject(PCPU_OS_MADVISE))
		ret = -ENOMEM;
	else if (madvise(p, len, advice))
		ret = -errno;
	errno = saved;
	return ret;
}

int _pcpu_os_discard(void *p, size_t len)
{
	return os_madvise(p, len, MADV_DONTNEED);
}

int _pcpu_os_populate(void *p, size_t len)
{
	int ret = os_madvise(p, len, MADV_POPULATE_WRITE);
	if (ret == -EINVAL) {
		/* Kernel older than 5.14: touch the pages ourselves. */
		for (size_t i = 0; i < len; i += _pcpu_g.page_size)
			__atomic_fetch_add((char *)p + i, 0, __ATOMIC_RELAXED);
		ret = 0;
	}
	return ret == 0 ? 0 : -ENOMEM;
}

long _pcpu_os_resident_pages(const void *p, size_t len)
{
	unsigned char vec[256];
	size_t page = _pcpu_g.page_size, pages = (len + page - 1) / page;
	long n = 0;
	int saved = errno;

	for (size_t done = 0; done < pages;) {
		size_t k = pages - done < sizeof(vec) ? pages - done : sizeof(vec);
		if (mincore((char *)p + done * page, k * page, vec)) {
			long ret = -errno;
			errno = saved;
			return ret;
		}
		for (size_t i = 0; i < k; i++)
			n += vec[i] & 1;
		done += k;
	}
	errno = saved;
	return n;
}

/* 0 = not tried, 1 = registered, -1 = refused (no rseq membarrier). */
static int membarrier_state;
static bool membarrier_no_cpu_flag;

static long sys_membarrier(int cmd, unsigned int flags, int cpu)
{
	return syscall(__NR_membarrier, cmd, flags, cpu);
}

int _pcpu_os_rseq_fence(int cpu)
{
	int saved = errno, ret = 0;
	int st = __atomic_load_n(&membarrier_state, __ATOMIC_ACQUIRE);

	if (st == 0) {
		st = sys_membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ,
				    0, 0) ? -1 : 1;
		__atomic_store_n(&membarrier_state, st, __ATOMIC_RELEASE);
	}
	if (st < 0) {
		ret = -ENOSYS;
	} else if (os_inject(PCPU_OS_MEMBARRIER)) {
		ret = -ENOMEM;
	} else {
		if (cpu >= 0 && !membarrier_no_cpu_flag) {
			if (!sys_membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ,
					    MEMBARRIER_CMD_FLAG_CPU, cpu))
				goto out;
			if (errno != EINVAL)
				goto fail;
			/* Kernel without FLAG_CPU: fence everyone. */
			membarrier_no_cpu_flag = true;
		}
		if (!sys_membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0))
			goto out;
fail:
		ret = -errno;
	}
out:
	errno = saved;
	return ret;
}

void _pcpu_os_atfork_child(void)
{
	/* Register again in the child: harmless where the kernel kept the
	 * parent's registration, needed where it did not. */
	membarrier_state = 0;
}
