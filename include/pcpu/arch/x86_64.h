/*
 * arch/x86_64.h - rseq critical sections for x86_64.
 *
 * Each section: publish its descriptor in rseq->rseq_cs, then (inside the
 * section) compare the index the caller computed its address from with the
 * current cpu_id/mm_cid, check pcpu__ok[idx], and commit with one
 * non-locked instruction.  Preemption, migration or a signal between the
 * start and the commit sends the thread to the abort label, preceded by
 * the RSEQ_SIG signature glibc registered (0x53053053).  The index is
 * compared inside the section rather than trusting cpu_id_start: the
 * kernel does not promise to rewrite that field on preemption.
 */
#ifndef PCPU_ARCH_X86_64_H
#define PCPU_ARCH_X86_64_H

#define PCPU__HAVE_RSEQ 1

/* The int at thread-pointer offset @io (cpu_id or mm_cid). */
static inline int pcpu__arch_load_index(long io)
{
	int idx;
	__asm__ __volatile__("movl %%fs:(%1), %0" : "=r"(idx) : "r"(io));
	return idx;
}

#define PCPU__X86_CS(insn)                                                     \
	".pushsection __rseq_cs, \"aw\"\n\t"                                   \
	".balign 32\n\t"                                                       \
	"333:\n\t"                                                             \
	".long 0x0, 0x0\n\t"                                                   \
	".quad 1f, (2f - 1f), 4f\n\t"                                          \
	".popsection\n\t"                                                      \
	".pushsection __rseq_cs_ptr_array, \"aw\"\n\t"                         \
	".quad 333b\n\t"                                                       \
	".popsection\n\t"                                                      \
	"leaq 333b(%%rip), %%rax\n\t"                                          \
	"movq %%rax, %%fs:(%[cs])\n\t"                                         \
	"1:\n\t"                                                               \
	"cmpl %[idx], %%fs:(%[io])\n\t"                                        \
	"jnz 4f\n\t"                                                           \
	"cmpb $0, (%[ok])\n\t"                                                 \
	"jz 4f\n\t" insn "\n\t"                                                \
	"2:\n\t"                                                               \
	".pushsection __rseq_failure, \"ax\"\n\t"                              \
	".byte 0x0f, 0xb9, 0x3d\n\t"                                           \
	".long 0x53053053\n\t"                                                 \
	"4:\n\t"                                                               \
	"jmp %l[abort]\n\t"                                                    \
	".popsection\n\t"

/* Returns 0 after the commit, 1 after an abort (nothing written). */
#define PCPU__X86_OP(name, T, insn, vcons)                                     \
	static inline int pcpu__arch_##name(T *q, T v, int idx, long io)       \
	{                                                                      \
		__asm__ goto(PCPU__X86_CS(insn)                                \
			     :                                                 \
			     : [cs] "r"(pcpu__fast.cs_tpoff),                  \
			       [io] "r"(io), [idx] "r"(idx),                   \
			       [ok] "r"(&pcpu__ok[idx]), [v] vcons(v),         \
			       [q] "r"(q)                                      \
			     : "memory", "cc", "rax"                           \
			     : abort);                                         \
		return 0;                                                      \
	abort:                                                                 \
		return 1;                                                      \
	}

PCPU__X86_OP(add8, uint8_t, "addb %[v], (%[q])", "ir")
PCPU__X86_OP(add16, uint16_t, "addw %[v], (%[q])", "ir")
PCPU__X86_OP(add32, uint32_t, "addl %[v], (%[q])", "ir")
PCPU__X86_OP(add64, uint64_t, "addq %[v], (%[q])", "er")
PCPU__X86_OP(write8, uint8_t, "movb %[v], (%[q])", "ir")
PCPU__X86_OP(write16, uint16_t, "movw %[v], (%[q])", "ir")
PCPU__X86_OP(write32, uint32_t, "movl %[v], (%[q])", "ir")
PCPU__X86_OP(write64, uint64_t, "movq %[v], (%[q])", "er")
PCPU__X86_OP(and8, uint8_t, "andb %[v], (%[q])", "ir")
PCPU__X86_OP(and16, uint16_t, "andw %[v], (%[q])", "ir")
PCPU__X86_OP(and32, uint32_t, "andl %[v], (%[q])", "ir")
PCPU__X86_OP(and64, uint64_t, "andq %[v], (%[q])", "er")
PCPU__X86_OP(or8, uint8_t, "orb %[v], (%[q])", "ir")
PCPU__X86_OP(or16, uint16_t, "orw %[v], (%[q])", "ir")
PCPU__X86_OP(or32, uint32_t, "orl %[v], (%[q])", "ir")
PCPU__X86_OP(or64, uint64_t, "orq %[v], (%[q])", "er")

/*
 * Sections that hand a value out: the asm output %[r], read or computed
 * inside the section and valid on the fall-through path only (asm goto
 * with outputs: gcc 11, clang 11), which is where the section ends after
 * its commit (or, for cmpxchg, after it found a different value and
 * jumped to its end, label 2, without writing).  Returns 0 and sets *@out
 * then, 1 after an abort (nothing written).  Explicitly volatile: gcc 12
 * deletes an asm goto with outputs when they are unused (a caller that
 * ignores what pcpu_xchg returned), store and all.
 */
#define PCPU__X86_RET_OP(name, T, insn, vcons)                                 \
	static inline int pcpu__arch_##name(T *q, T v, T *out, int idx,        \
					    long io)                           \
	{                                                                      \
		T r;                                                           \
		__asm__ __volatile__ goto(                                     \
			PCPU__X86_CS(insn)                                     \
			: [r] "=&r"(r)                                         \
			: [cs] "r"(pcpu__fast.cs_tpoff), [io] "r"(io),         \
			  [idx] "r"(idx), [ok] "r"(&pcpu__ok[idx]),            \
			  [v] vcons(v), [q] "r"(q)                             \
			: "memory", "cc", "rax"                                \
			: abort);                                              \
		*out = r;                                                      \
		return 0;                                                      \
	abort:                                                                 \
		return 1;                                                      \
	}

/* *out = *q + v; *q = *out.  The store commits. */
#define PCPU__X86_ADD_RETURN(W, T, s, vcons)                                   \
	PCPU__X86_RET_OP(add_return##W, T,                                     \
			 "mov" s " (%[q]), %[r]\n\t"                           \
			 "add" s " %[v], %[r]\n\t"                             \
			 "mov" s " %[r], (%[q])",                              \
			 vcons)
/* *out = *q; *q = v.  A load and a store, not xchg (implicitly locked). */
#define PCPU__X86_XCHG(W, T, s, vcons)                                         \
	PCPU__X86_RET_OP(xchg##W, T,                                           \
			 "mov" s " (%[q]), %[r]\n\t"                           \
			 "mov" s " %[v], (%[q])",                              \
			 vcons)
/* *found = *q; if it equals old, *q = nv: a load, a compare and a store
 * that commits only on equality (no cmpxchg instruction: when the value
 * differs the section leaves through its end without writing at all). */
#define PCPU__X86_CMPXCHG(W, T, s, vcons)                                      \
	static inline int pcpu__arch_cmpxchg##W(T *q, T old, T nv, T *found,   \
						int idx, long io)              \
	{                                                                      \
		T r;                                                           \
		__asm__ __volatile__ goto(                                     \
			PCPU__X86_CS("mov" s " (%[q]), %[r]\n\t"               \
				     "cmp" s " %[old], %[r]\n\t"               \
				     "jne 2f\n\t"                              \
				     "mov" s " %[nv], (%[q])")                 \
			: [r] "=&r"(r)                                         \
			: [cs] "r"(pcpu__fast.cs_tpoff), [io] "r"(io),         \
			  [idx] "r"(idx), [ok] "r"(&pcpu__ok[idx]),            \
			  [old] vcons(old), [nv] vcons(nv), [q] "r"(q)         \
			: "memory", "cc", "rax"                                \
			: abort);                                              \
		*found = r;                                                    \
		return 0;                                                      \
	abort:                                                                 \
		return 1;                                                      \
	}

#define PCPU__X86_RET_WIDTH(W, T, s, vcons)                                    \
	PCPU__X86_ADD_RETURN(W, T, s, vcons)                                   \
	PCPU__X86_XCHG(W, T, s, vcons)                                         \
	PCPU__X86_CMPXCHG(W, T, s, vcons)
PCPU__X86_RET_WIDTH(8, uint8_t, "b", "ir")
PCPU__X86_RET_WIDTH(16, uint16_t, "w", "ir")
PCPU__X86_RET_WIDTH(32, uint32_t, "l", "ir")
PCPU__X86_RET_WIDTH(64, uint64_t, "q", "er")


/*
 * *q += v only if the result r stays in (-lim, lim), i.e. when
 * (uint64_t)(r + lim - 1) < 2 * lim - 1.  Returns 0 after the commit,
 * 1 after an abort, 2 when the result would leave the range (nothing
 * written).  Counters fold their per-CPU delta on 2.
 */
static inline int pcpu__arch_add_bounded64(int64_t *q, int64_t v, int idx,
					   long io, int64_t lim)
{
	uint64_t bias = (uint64_t)lim - 1, span = 2 * (uint64_t)lim - 1;
	__asm__ goto(PCPU__X86_CS("movq (%[q]), %%rax\n\t"
				  "addq %[v], %%rax\n\t"
				  "movq %%rax, %%rdx\n\t"
				  "addq %[bias], %%rdx\n\t"
				  "cmpq %[span], %%rdx\n\t"
				  "jae %l[out]\n\t"
				  "movq %%rax, (%[q])")
		     :
		     : [cs] "r"(pcpu__fast.cs_tpoff), [io] "r"(io),
		       [idx] "r"(idx), [ok] "r"(&pcpu__ok[idx]), [v] "r"(v),
		       [q] "r"(q), [bias] "r"(bias), [span] "r"(span)
		     : "memory", "cc", "rax", "rdx"
		     : abort, out);
	return 0;
abort:
	return 1;
out:
	return 2;
}

/* *out = *q; *q = 0, as one commit.  Returns 0 after the commit, 1 after
 * an abort. */
static inline int pcpu__arch_xchg0_64(int64_t *q, int64_t *out, int idx,
				      long io)
{
	__asm__ goto(PCPU__X86_CS("movq (%[q]), %%rax\n\t"
				  "movq %%rax, (%[out])\n\t"
				  "movq $0, (%[q])")
		     :
		     : [cs] "r"(pcpu__fast.cs_tpoff), [io] "r"(io),
		       [idx] "r"(idx), [ok] "r"(&pcpu__ok[idx]), [q] "r"(q),
		       [out] "r"(out)
		     : "memory", "cc", "rax"
		     : abort);
	return 0;
abort:
	return 1;
}

/*
 * *q += v only while *flag != 0, the flag read inside the section (a
 * per-CPU reference's mode byte, ref.h).  Returns 0 after the commit,
 * 1 after an abort, 2 when *flag == 0 (nothing written).
 */
static inline int pcpu__arch_add_if64(uint64_t *q, uint64_t v, int idx,
				      long io, const unsigned char *flag)
{
	__asm__ goto(PCPU__X86_CS("cmpb $0, (%[flag])\n\t"
				  "jz %l[off]\n\t"
				  "addq %[v], (%[q])")
		     :
		     : [cs] "r"(pcpu__fast.cs_tpoff), [io] "r"(io),
		       [idx] "r"(idx), [ok] "r"(&pcpu__ok[idx]), [v] "er"(v),
		       [q] "r"(q), [flag] "r"(flag)
		     : "memory", "cc", "rax"
		     : abort, off);
	return 0;
abort:
	return 1;
off:
	return 2;
}

/*
 * Per-CPU stacks of the object caches (src/cache.c).  *st packs the
 * count (bits 0-15) and the number of pops ever made (bits 16-63), so
 * that one store commits both; the stack's (object, pageset) pairs follow
 * st in memory, pair i at st[1 + 2i], st[2 + 2i].  *stop != 0 (a drain
 * is emptying this CPU's cache) is read inside the section.
 */

/* Pop the top pair into out[0], out[1]; *st = count - 1, pops + 1.
 * Returns 0 after the commit, 1 after an abort, 2 when the stack is empty
 * or stopped (nothing written). */
static inline int pcpu__arch_stack_pop(uint64_t *st, void **out,
				       const unsigned char *stop, int idx,
				       long io)
{
	__asm__ goto(PCPU__X86_CS("cmpb $0, (%[stop])\n\t"
				  "jnz %l[none]\n\t"
				  "movq (%[st]), %%rax\n\t"
				  "movzwl %%ax, %%edx\n\t"
				  "testl %%edx, %%edx\n\t"
				  "jz %l[none]\n\t"
				  "shlq $4, %%rdx\n\t"
				  "movq -8(%[st], %%rdx), %%rcx\n\t"
				  "movq %%rcx, (%[out])\n\t"
				  "movq (%[st], %%rdx), %%rcx\n\t"
				  "movq %%rcx, 8(%[out])\n\t"
				  "addq $0xffff, %%rax\n\t"
				  "movq %%rax, (%[st])")
		     :
		     : [cs] "r"(pcpu__fast.cs_tpoff), [io] "r"(io),
		       [idx] "r"(idx), [ok] "r"(&pcpu__ok[idx]),
		       [stop] "r"(stop), [st] "r"(st), [out] "r"(out)
		     : "memory", "cc", "rax", "rcx", "rdx"
		     : abort, none);
	return 0;
abort:
	return 1;
none:
	return 2;
}

/* Push the pair (obj, ps) when count < cap; *st = count + 1.  Returns 0
 * after the commit, 3 after the commit when the stack was empty before
 * (the caller marks the CPU's cache non-empty), 1 after an abort, 2 when
 * the stack is full or stopped (nothing written). */
static inline int pcpu__arch_stack_push(uint64_t *st, void *obj, void *ps,
					uint64_t cap, const unsigned char *stop,
					int idx, long io)
{
	__asm__ goto(PCPU__X86_CS("cmpb $0, (%[stop])\n\t"
				  "jnz %l[none]\n\t"
				  "movq (%[st]), %%rax\n\t"
				  "movzwl %%ax, %%edx\n\t"
				  "cmpq %[cap], %%rdx\n\t"
				  "jae %l[none]\n\t"
				  "shlq $4, %%rdx\n\t"
				  "movq %[obj], 8(%[st], %%rdx)\n\t"
				  "movq %[ps], 16(%[st], %%rdx)\n\t"
				  "addq $1, %%rax\n\t"
				  "movq %%rax, (%[st])")
		     "testq %%rdx, %%rdx\n\t"
		     "jz %l[first]\n\t"
		     :
		     : [cs] "r"(pcpu__fast.cs_tpoff), [io] "r"(io),
		       [idx] "r"(idx), [ok] "r"(&pcpu__ok[idx]),
		       [stop] "r"(stop), [st] "r"(st), [cap] "r"(cap),
		       [obj] "r"(obj), [ps] "r"(ps)
		     : "memory", "cc", "rax", "rdx"
		     : abort, none, first);
	return 0;
abort:
	return 1;
none:
	return 2;
first:
	return 3;
}

#endif
