/*
 * os.c - the narrow layer between libpcpu and the kernel.
 *
 * Every mmap, munmap, madvise, mincore, pagemap read and membarrier call of
 * the library goes through here, so that tests can make any one of them fail
 * (PCPU_FAULT=mmap:N,... or _pcpu_os_fault_set) and walk a failure over
 * every call site of a workload.  Each function preserves errno for its
 * caller and reports failure as -errno (or NULL + ENOMEM for reserve).
 * Nothing here takes a lock or allocates memory.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
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
		"mmap", "madvise", "munmap", "membarrier", "pagemap"
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

void *_pcpu_os_reserve(size_t len, size_t align)
{
	if (os_inject(PCPU_OS_MMAP)) {
		errno = ENOMEM;
		return NULL;
	}
	int saved = errno;
	char *p = mmap(NULL, len + align, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED) {
		errno = ENOMEM;
		return NULL;
	}
	/* keep the aligned part: the chunk table finds a chunk by its
	 * first unit's address divided by the unit size */
	char *a = (char *)(((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1));
	if (a > p)
		munmap(p, (size_t)(a - p));
	if (p + align > a)
		munmap(a + len, (size_t)(p + align - a));
	/* A transparent huge page would back neighbouring CPUs' units too. */
	madvise(a, len, MADV_NOHUGEPAGE);
	errno = saved;
	return a;
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

/*
 * Backed pages are counted from /proc/self/pagemap, because mincore()
 * also reports pages that were only read: those map the kernel's shared
 * zero page and cost no memory.  With page frame numbers visible
 * (CAP_SYS_ADMIN), a page counts when present and not the zero page;
 * without them, when present and mapped by this process only (bit 56),
 * which also leaves out pages still shared copy-on-write with a fork
 * parent or child.  Without pagemap, mincore() it is.
 */
#define PM_PRESENT ((uint64_t)1 << 63)
#define PM_EXCLUSIVE ((uint64_t)1 << 56)
#define PM_PFN_MASK (((uint64_t)1 << 55) - 1)

static int pagemap_fd = -2;      /* -2 not opened yet, -1 unavailable */
static int pagemap_pfns;         /* PFNs visible */
static uint64_t zero_pfn;
static pthread_mutex_t pagemap_lock = PTHREAD_MUTEX_INITIALIZER;

static bool pagemap_entry(int fd, const void *addr, uint64_t *e)
{
	off_t off = (off_t)((uintptr_t)addr / _pcpu_g.page_size * 8);
	return pread(fd, e, 8, off) == 8;
}

/* Opens pagemap and learns the zero page's frame.  Context: pagemap_lock. */
static void pagemap_open(void)
{
	pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (pagemap_fd < 0) {
		pagemap_fd = -1;
		return;
	}
	volatile char *probe = mmap(NULL, _pcpu_g.page_size, PROT_READ,
				    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t e = 0;
	if (probe != MAP_FAILED) {
		(void)probe[0]; /* maps the zero page */
		if (pagemap_entry(pagemap_fd, (const void *)probe, &e) &&
		    (e & PM_PRESENT) && (e & PM_PFN_MASK)) {
			pagemap_pfns = 1;
			zero_pfn = e & PM_PFN_MASK;
		}
		munmap((void *)probe, _pcpu_g.page_size);
	}
}

static long resident_mincore(const void *p, size_t pages)
{
	unsigned char vec[256];
	size_t page = _pcpu_g.page_size;
	long n = 0;
	for (size_t done = 0; done < pages;) {
		size_t k = pages - done < sizeof(vec) ? pages - done : sizeof(vec);
		if (mincore((char *)p + done * page, k * page, vec))
			return -errno;
		for (size_t i = 0; i < k; i++)
			n += vec[i] & 1;
		done += k;
	}
	return n;
}

long _pcpu_os_resident_pages(const void *p, size_t len)
{
	size_t page = _pcpu_g.page_size, pages = (len + page - 1) / page;
	int saved = errno;
	long n = 0;

	pthread_mutex_lock(&pagemap_lock);
	if (pagemap_fd == -2)
		pagemap_open();
	int fd = pagemap_fd;
	pthread_mutex_unlock(&pagemap_lock);
	if (fd < 0) {
		n = resident_mincore(p, pages);
		errno = saved;
		return n;
	}
	uint64_t ent[512];
	off_t off = (off_t)((uintptr_t)p / page * 8);
	for (size_t done = 0; done < pages;) {
		size_t k = pages - done < 512 ? pages - done : 512;
		ssize_t r = pread(fd, ent, k * 8, off + (off_t)(done * 8));
		if (r != (ssize_t)(k * 8)) {
			n = resident_mincore(p, pages);
			break;
		}
		for (size_t i = 0; i < k; i++) {
			uint64_t e = ent[i];
			if (!(e & PM_PRESENT))
				continue;
			n += pagemap_pfns ? (e & PM_PFN_MASK) != zero_pfn
					  : (e & PM_EXCLUSIVE) != 0;
		}
		done += k;
	}
	errno = saved;
	return n;
}

/*
 * Which pages of [p, p + pages * page size) hold data: present, or
 * swapped out (PM_SWAP), as /proc/self/pagemap says; a page nobody wrote
 * or that was discarded holds none and reads zero.  mincore() cannot
 * tell a swapped-out page from a missing one, so it serves only where
 * pagemap cannot be read, and then, when the system has swap, every page
 * counts as holding data (a read of it may back it; nothing is lost).
 * Returns 0, or -errno with every page counted as holding data.  Reading the
 * pages themselves is what this avoids: without a shared zero page
 * (pvm_no_zero_page, some configurations) a read backs a page.
 */
#define PM_SWAP ((uint64_t)1 << 62)

int _pcpu_os_backed_map(const void *p, size_t pages, uint64_t *out)
{
	size_t page = _pcpu_g.page_size;
	int saved = errno, ret = 0;

	for (size_t i = 0; i < (pages + 63) / 64; i++)
		out[i] = 0;
	pthread_mutex_lock(&pagemap_lock);
	if (pagemap_fd == -2)
		pagemap_open();
	int fd = pagemap_fd;
	pthread_mutex_unlock(&pagemap_lock);
	if (os_inject(PCPU_OS_PAGEMAP)) {
		ret = -EIO;
		goto out;
	}
	uint64_t ent[256];
	off_t off = (off_t)((uintptr_t)p / page * 8);
	for (size_t done = 0; fd >= 0 && done < pages;) {
		size_t k = pages - done < 256 ? pages - done : 256;
		ssize_t r = pread(fd, ent, k * 8, off + (off_t)(done * 8));
		if (r != (ssize_t)(k * 8)) {
			fd = -1;
			break;
		}
		for (size_t i = 0; i < k; i++)
			if (ent[i] & (PM_PRESENT | PM_SWAP))
				out[(done + i) / 64] |= (uint64_t)1 << ((done + i) % 64);
		done += k;
	}
	if (fd < 0) {
		/* without swap, a page mincore does not see holds nothing */
		struct sysinfo si;
		bool swap = sysinfo(&si) || si.totalswap;
		unsigned char vec[256];
		for (size_t done = 0; done < pages;) {
			size_t k = pages - done < 256 ? pages - done : 256;
			if (mincore((char *)p + done * page, k * page, vec)) {
				ret = -errno;
				break;
			}
			for (size_t i = 0; i < k; i++)
				if ((vec[i] & 1) || swap)
					out[(done + i) / 64] |=
						(uint64_t)1 << ((done + i) % 64);
			done += k;
		}
	}
out:
	if (ret)
		for (size_t i = 0; i < pages; i++)
			out[i / 64] |= (uint64_t)1 << (i % 64);
	errno = saved;
	return ret;
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
	/* /proc/self/pagemap opened by the parent reads the parent. */
	if (pagemap_fd >= 0)
		close(pagemap_fd);
	pagemap_fd = -2;
	pthread_mutex_init(&pagemap_lock, NULL);
	/* Register again in the child: harmless where the kernel kept the
	 * parent's registration, needed where it did not. */
	membarrier_state = 0;
}
