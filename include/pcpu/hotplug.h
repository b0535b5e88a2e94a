/*
 * hotplug.h - CPUs that come and go: CPU states, initial values that follow
 * CPUs, callbacks in the manner of the kernel's cpuhp states, simulated
 * hotplug.  Included by pcpu.h; do not include directly.
 *
 * A CPU's copies come into use the first time anything reaches them (an
 * operation of a thread running there, pcpu_ptr, pcpu_sim_cpu_online):
 * its pcpu_alloc_init values are copied in first.  It is *ready* when
 * every online callback also ran: then its operations commit with rseq
 * sections; before that (callbacks not run yet, or failing) they change
 * the CPU's own copies with atomic instructions.  Operations never fail,
 * never wait for a callback and never lose a value.  When a CPU goes
 * offline or leaves the process's cgroup cpuset, libpcpu stops the
 * sections on it, runs the dead callbacks (which may fold what the CPU
 * held), and releases its memory if nothing is left in it and no pointer
 * to its copies was ever handed out (pcpu_ptr keeps an index in use for
 * good).  docs/DESIGN.md ("Hotplug") has the details.
 */
#ifndef PCPU_HOTPLUG_H
#define PCPU_HOTPLUG_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bits of pcpu_cpu_state(). */
#define PCPU_CPU_POSSIBLE 0x01 /* an id below pcpu_nr_cpu_ids() */
#define PCPU_CPU_ONLINE 0x02   /* online (sysfs, or the simulated machine) */
#define PCPU_CPU_ALLOWED 0x04  /* in the process's cpuset and affinity */
#define PCPU_CPU_READY 0x08    /* its operations commit with rseq sections
				  (its callbacks ran) */
#define PCPU_CPU_BACKED 0x10   /* in use: its copies count (pcpu_sum,
				  stats); they may hold values and memory */
#define PCPU_CPU_FAILED 0x20   /* its last bring-up failed (no memory, an
				  online callback); retried on the next
				  refresh or tick */

/*
 * pcpu_cpu_state - the PCPU_CPU_* bits of @cpu as libpcpu last saw them,
 * or -EINVAL for an id outside 0..pcpu_nr_cpu_ids()-1.
 */
int pcpu_cpu_state(int cpu);

/*
 * pcpu_cpus_refresh - re-read which CPUs are online
 * (/sys/devices/system/cpu/online) and allowed (the cgroup cpuset: not a
 * thread's affinity, which programs change for their own reasons),
 * release the CPUs that left, and run the callbacks of CPUs that came
 * into use or failed before.  Runs
 * callbacks in the calling thread.  libpcpu also does this by itself about
 * once a second (and at once on a kernel CPU uevent when the process may
 * listen to them).  Returns 0, or -EDEADLK from inside a callback.
 */
int pcpu_cpus_refresh(void);

/*
 * pcpu_alloc_init - like pcpu_alloc, but every CPU's copy starts equal to
 * the @size bytes at @init (NULL: zero), including the copies of CPUs that
 * come into use later (through operations or pcpu_ptr).  The bytes are kept out of
 * band until pcpu_free.  NULL with errno as pcpu_alloc (ENOMEM also when
 * the copies of ready CPUs could not be backed).
 */
void *pcpu_alloc_init(size_t size, size_t align, const void *init);

/*
 * pcpu_hotplug_register - call @online(cpu, @arg) when a CPU comes into
 * use, before its operations commit with rseq sections, and @dead(cpu,
 * @arg) after the sections on a CPU that left were stopped and before its
 * memory may be released (fold what it held there, and zero it so that
 * the memory can go).  Either may be NULL.  Operations never wait for
 * callbacks: an operation that runs on a CPU before its @online ran
 * changes the CPU's own copies with atomics, so @online must not
 * overwrite copies an operation may have written (pcpu_alloc_init gives
 * initial values).  @online runs at once for every CPU already ready (in
 * increasing order; a failure there undoes those calls with @dead and
 * fails the registration).  A failing @online (return non-zero) undoes
 * the online callbacks that ran for that CPU (their @dead, in reverse
 * order) and leaves the CPU not ready (failed): its operations go on with
 * atomics until a later retry succeeds.  Callbacks run in the thread that
 * refreshes (pcpu_cpus_refresh, pcpu_sim_cpu_*, the library's background
 * tick) with only the hotplug mutex held: they may allocate, free and use
 * per-CPU operations, but not register, unregister, refresh or simulate
 * hotplug (-EDEADLK).  In the cid index mode indexes are not CPUs and
 * callbacks are never called.
 * Returns a handle >= 0, -EINVAL (no name, no callback), -ENOSPC (64
 * registered), -EDEADLK, or the error of a failing @online.
 */
int pcpu_hotplug_register(const char *name, int (*online)(int cpu, void *arg),
			  void (*dead)(int cpu, void *arg), void *arg);

/* pcpu_hotplug_unregister - calls @dead for every ready CPU (in
 * decreasing order), then forgets the callbacks.  0, -EINVAL, -EDEADLK. */
int pcpu_hotplug_unregister(int handle);

/*
 * Simulation only (PCPU_SIM_POSSIBLE): take simulated CPU @cpu online or
 * offline.  pcpu_sim_cpu_online brings the CPU up at once (as if the
 * process ran there) and returns 0 when it is ready, or the bring-up's
 * error (-ENOMEM, an online callback's) with the CPU online but not
 * ready; it is retried later.  pcpu_sim_cpu_offline releases it as
 * described at the top; 0, or -EBUSY for the last online CPU, or -EAGAIN
 * when running sections could not be fenced (retried later).  Both:
 * -EINVAL for an id out of range, -ENOENT without simulation, -EDEADLK
 * from a callback.  A thread acting as an offline CPU (pcpu_sim_set_cpu)
 * uses that CPU's own copies, with atomics (in use again, not ready).
 */
int pcpu_sim_cpu_online(int cpu);
int pcpu_sim_cpu_offline(int cpu);

#ifdef __cplusplus
}
#endif

#endif
