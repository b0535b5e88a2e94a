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

static inline int pcpu__arch_load_index(void)
{
	int idx;
	__asm__ __volatile__("movl %%fs:(%1), %0"
			     : "=r"(idx)
			     : "r"(pcpu__fast.idx_tpoff));
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

#define PCPU__X86_OP(name, T, insn, vcons)                                     \
	static inline int pcpu__arch_##name(T *q, T v, int idx)                \
	{                                                                      \
		__asm__ goto(PCPU__X86_CS(insn)                                \
			     :                                                 \
			     : [cs] "r"(pcpu__fast.cs_tpoff),                  \
			       [io] "r"(pcpu__fast.idx_tpoff), [idx] "r"(idx), \
			       [ok] "r"(&pcpu__ok[idx]), [v] vcons(v),         \
			       [q] "r"(q)                                      \
			     : "memory", "cc", "rax"                           \
			     : abort);                                         \
		return 0;                                                      \
	abort:                                                                 \
		return 1;                                                      \
	}

PCPU__X86_OP(add32, uint32_t, "addl %[v], (%[q])", "ir")
PCPU__X86_OP(add64, uint64_t, "addq %[v], (%[q])", "er")
PCPU__X86_OP(write32, uint32_t, "movl %[v], (%[q])", "ir")
PCPU__X86_OP(write64, uint64_t, "movq %[v], (%[q])", "er")

#endif
