/*
 * far_text.c - links (make check-aarch64) a program with 4 MiB of text
 * after its rseq critical sections: every branch of a section must reach
 * its target however large the program (aarch64 conditional branches
 * reach only +-1 MiB).
 */
#include "pcpu/pcpu.h"

__asm__(".text\n.globl pcpu_far_pad\npcpu_far_pad:\n.skip 4194304\n");

int main(void)
{
	long *c = pcpu_alloc(sizeof(long), 0);
	if (!c)
		return 1;
	pcpu_add(c, 1L);
	return pcpu_sum(c) == 1 ? 0 : 1;
}
