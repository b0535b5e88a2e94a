/*
 * arch/aarch64.h - rseq critical sections for aarch64.
 *
 * Same shape as x86_64.h: publish the descriptor, compare the index inside
 * the section, check pcpu__ok[idx], commit with one store.  The abort
 * handler is preceded by glibc's aarch64 RSEQ_SIG (0xd428bc00).
 */
#ifndef PCPU_ARCH_AARCH64_H
#define PCPU_ARCH_AARCH64_H

#define PCPU__HAVE_RSEQ 1

static inline char *pcpu__arch_tp(void)
{
	char *tp;
	__asm__("mrs %0, tpidr_el0" : "=r"(tp));
	return tp;
}

/* The int at thread-pointer offset @io (cpu_id or mm_cid). */
static inline int pcpu__arch_load_index(long io)
{
	return *(volatile int *)(pcpu__arch_tp() + io);
}

/*
 * The abort handler (the signature, then a branch out) sits inline after
 * the section, skipped by one branch: conditional branches reach only
 * +-1 MiB, and a handler in a __rseq_failure section at the end of a large
 * program's text would be out of their range (R_AARCH64_CONDBR19).
 */
#define PCPU__A64_CS(body)                                                     \
	".pushsection __rseq_cs, \"aw\"\n\t"                                   \
	".balign 32\n\t"                                                       \
	"333:\n\t"                                                             \
	".long 0x0, 0x0\n\t"                                                   \
	".quad 1f, (2f - 1f), 4f\n\t"                                          \
	".popsection\n\t"                                                      \
	".pushsection __rseq_cs_ptr_array, \"aw\"\n\t"                         \
	".quad 333b\n\t"                                                       \
	".popsection\n\t"                                                      \
	"adrp x9, 333b\n\t"                                                    \
	"add x9, x9, :lo12:333b\n\t"                                           \
	"str x9, [%[cs]]\n\t"                                                  \
	"1:\n\t"                                                               \
	"ldr w9, [%[io]]\n\t"                                                  \
	"cmp w9, %w[idx]\n\t"                                                  \
	"b.ne 4f\n\t"                                                          \
	"ldrb w9, [%[ok]]\n\t"                                                 \
	"cbz w9, 4f\n\t" body "2:\n\t"                                         \
	"b 5f\n\t"                                                             \
	".inst 0xd428bc00\n\t"                                                 \
	"4:\n\t"                                                               \
	"b %l[abort]\n\t"                                                      \
	"5:\n\t"

/* Returns 0 after the commit, 1 after an abort (nothing written). */
#define PCPU__A64_OP(name, T, body)                                            \
	static inline int pcpu__arch_##name(T *q, T v, int idx, long io)       \
	{                                                                      \
		char *tp = pcpu__arch_tp();                                    \
		__asm__ goto(PCPU__A64_CS(body)                                \
			     :                                                 \
			     : [cs] "r"(tp + pcpu__fast.cs_tpoff),             \
			       [io] "r"(tp + io),                              \
			       [idx] "r"(idx), [ok] "r"(&pcpu__ok[idx]),       \
			       [v] "r"(v), [q] "r"(q)                          \
			     : "memory", "cc", "x9", "x10"                     \
			     : abort);                                         \
		return 0;                                                      \
	abort:                                                                 \
		return 1;                                                      \
	}

/* Load (l), store (s) and register prefix (x: %w or %x) of each width. */
#define PCPU__A64_RMW(name, T, l, s, x, insn)                                  \
	PCPU__A64_OP(name, T,                                                  \
		     "ldr" l " " x "10, [%[q]]\n\t"                            \
		     insn " " x "10, " x "10, %" x "[v]\n\t"                   \
		     "str" s " " x "10, [%[q]]\n\t")
#define PCPU__A64_VOID_WIDTH(W, T, l, x)                                       \
	PCPU__A64_RMW(add##W, T, l, l, x, "add")                               \
	PCPU__A64_RMW(and##W, T, l, l, x, "and")                               \
	PCPU__A64_RMW(or##W, T, l, l, x, "orr")                                \
	PCPU__A64_OP(write##W, T, "str" l " %" x "[v], [%[q]]\n\t")
PCPU__A64_VOID_WIDTH(8, uint8_t, "b", "w")
PCPU__A64_VOID_WIDTH(16, uint16_t, "h", "w")
PCPU__A64_VOID_WIDTH(32, uint32_t, "", "w")
PCPU__A64_VOID_WIDTH(64, uint64_t, "", "x")

/*
 * Sections that hand a value out: the asm output %[r], valid on the
 * fall-through path only (asm goto with outputs: gcc 11, clang 11), which
 * is where the section ends after its commit (or, for cmpxchg, after it
 * found a different value and branched to its end, label 2, without
 * writing).  Returns 0 and sets *@out then, 1 after an abort.  Volatile:
 * see x86_64.h (gcc deletes an unused asm goto with outputs).  Values of
 * 8 and 16 bits travel in 32-bit registers C, zero-extended by the
 * compiler (inputs) or by ldrb/ldrh (outputs), so that cmp compares them
 * whole.
 */
#define PCPU__A64_RET_OP(name, T, C, body)                                     \
	static inline int pcpu__arch_##name(T *q, T v, T *out, int idx,        \
					    long io)                           \
	{                                                                      \
		char *tp = pcpu__arch_tp();                                    \
		C r;                                                           \
		__asm__ __volatile__ goto(                                     \
			PCPU__A64_CS(body)                                     \
			: [r] "=&r"(r)                                         \
			: [cs] "r"(tp + pcpu__fast.cs_tpoff),                  \
			  [io] "r"(tp + io), [idx] "r"(idx),                   \
			  [ok] "r"(&pcpu__ok[idx]),                            \
			  [v] "r"((C)v), [q] "r"(q)                            \
			: "memory", "cc", "x9", "x10"                          \
			: abort);                                              \
		*out = (T)r;                                                   \
		return 0;                                                      \
	abort:                                                                 \
		return 1;                                                      \
	}

#define PCPU__A64_RET_WIDTH(W, T, C, l, x)                                     \
	/* *out = *q + v; *q = *out: the store commits. */                     \
	PCPU__A64_RET_OP(add_return##W, T, C,                                  \
			 "ldr" l " %" x "[r], [%[q]]\n\t"                      \
			 "add %" x "[r], %" x "[r], %" x "[v]\n\t"             \
			 "str" l " %" x "[r], [%[q]]\n\t")                     \
	/* *out = *q; *q = v (no swp: that is an atomic). */                   \
	PCPU__A64_RET_OP(xchg##W, T, C,                                        \
			 "ldr" l " %" x "[r], [%[q]]\n\t"                      \
			 "str" l " %" x "[v], [%[q]]\n\t")                     \
	/* *found = *q; if it equals old, *q = nv (the store commits). */      \
	static inline int pcpu__arch_cmpxchg##W(T *q, T old, T nv, T *found,   \
						int idx, long io)              \
	{                                                                      \
		char *tp = pcpu__arch_tp();                                    \
		C r;                                                           \
		__asm__ __volatile__ goto(                                     \
			PCPU__A64_CS("ldr" l " %" x "[r], [%[q]]\n\t"          \
				     "cmp %" x "[r], %" x "[old]\n\t"          \
				     "b.ne 2f\n\t"                             \
				     "str" l " %" x "[nv], [%[q]]\n\t")        \
			: [r] "=&r"(r)                                         \
			: [cs] "r"(tp + pcpu__fast.cs_tpoff),                  \
			  [io] "r"(tp + io), [idx] "r"(idx),                   \
			  [ok] "r"(&pcpu__ok[idx]),                            \
			  [old] "r"((C)old), [nv] "r"((C)nv), [q] "r"(q)       \
			: "memory", "cc", "x9", "x10"                          \
			: abort);                                              \
		*found = (T)r;                                                 \
		return 0;                                                      \
	abort:                                                                 \
		return 1;                                                      \
	}
PCPU__A64_RET_WIDTH(8, uint8_t, uint32_t, "b", "w")
PCPU__A64_RET_WIDTH(16, uint16_t, uint32_t, "h", "w")
PCPU__A64_RET_WIDTH(32, uint32_t, uint32_t, "", "w")
PCPU__A64_RET_WIDTH(64, uint64_t, uint64_t, "", "x")


/* See x86_64.h: 0 commit, 1 abort, 2 result outside (-lim, lim). */
static inline int pcpu__arch_add_bounded64(int64_t *q, int64_t v, int idx,
					   long io, int64_t lim)
{
	char *tp = pcpu__arch_tp();
	uint64_t bias = (uint64_t)lim - 1, span = 2 * (uint64_t)lim - 1;
	__asm__ goto(PCPU__A64_CS("ldr x10, [%[q]]\n\t"
				  "add x10, x10, %x[v]\n\t"
				  "add x11, x10, %x[bias]\n\t"
				  "cmp x11, %x[span]\n\t"
				  "b.hs %l[out]\n\t"
				  "str x10, [%[q]]\n\t")
		     :
		     : [cs] "r"(tp + pcpu__fast.cs_tpoff), [io] "r"(tp + io),
		       [idx] "r"(idx), [ok] "r"(&pcpu__ok[idx]), [v] "r"(v),
		       [q] "r"(q), [bias] "r"(bias), [span] "r"(span)
		     : "memory", "cc", "x9", "x10", "x11"
		     : abort, out);
	return 0;
abort:
	return 1;
out:
	return 2;
}

/* See x86_64.h: *out = *q; *q = 0 as one commit; 0 commit, 1 abort. */
static inline int pcpu__arch_xchg0_64(int64_t *q, int64_t *out, int idx,
				      long io)
{
	char *tp = pcpu__arch_tp();
	__asm__ goto(PCPU__A64_CS("ldr x10, [%[q]]\n\t"
				  "str x10, [%[out]]\n\t"
				  "str xzr, [%[q]]\n\t")
		     :
		     : [cs] "r"(tp + pcpu__fast.cs_tpoff), [io] "r"(tp + io),
		       [idx] "r"(idx), [ok] "r"(&pcpu__ok[idx]), [q] "r"(q),
		       [out] "r"(out)
		     : "memory", "cc", "x9", "x10"
		     : abort);
	return 0;
abort:
	return 1;
}

/*
 * See x86_64.h: *q += v only while *flag != 0; 0 commit, 1 abort, 2 flag
 * clear.  The flag is loaded with acquire (ldarb) so that the count is
 * read after it: a switch to per-CPU mode zeroes the counts, then sets
 * the flag with a release store.
 */
static inline int pcpu__arch_add_if64(uint64_t *q, uint64_t v, int idx,
				      long io, const unsigned char *flag)
{
	char *tp = pcpu__arch_tp();
	__asm__ goto(PCPU__A64_CS("ldarb w10, [%[flag]]\n\t"
				  "cbz w10, %l[off]\n\t"
				  "ldr x10, [%[q]]\n\t"
				  "add x10, x10, %x[v]\n\t"
				  "str x10, [%[q]]\n\t")
		     :
		     : [cs] "r"(tp + pcpu__fast.cs_tpoff), [io] "r"(tp + io),
		       [idx] "r"(idx), [ok] "r"(&pcpu__ok[idx]), [v] "r"(v),
		       [q] "r"(q), [flag] "r"(flag)
		     : "memory", "cc", "x9", "x10"
		     : abort, off);
	return 0;
abort:
	return 1;
off:
	return 2;
}

/*
 * Per-CPU stacks of the object caches: see x86_64.h.  *stop is read with
 * acquire (ldarb): a drain empties the stack, then clears *stop with a
 * release store, so a section that sees it clear sees the empty stack.
 */
static inline int pcpu__arch_stack_pop(uint64_t *st, void **out,
				       const unsigned char *stop, int idx,
				       long io)
{
	char *tp = pcpu__arch_tp();
	__asm__ goto(PCPU__A64_CS("ldarb w10, [%[stop]]\n\t"
				  "cbnz w10, %l[none]\n\t"
				  "ldr x10, [%[st]]\n\t"
				  "and x11, x10, #0xffff\n\t"
				  "cbz x11, %l[none]\n\t"
				  "add x11, %[st], x11, lsl #4\n\t"
				  "ldur x12, [x11, #-8]\n\t"
				  "str x12, [%[out]]\n\t"
				  "ldr x12, [x11]\n\t"
				  "str x12, [%[out], #8]\n\t"
				  "add x10, x10, #0x10, lsl #12\n\t"
				  "sub x10, x10, #1\n\t"
				  "str x10, [%[st]]\n\t")
		     :
		     : [cs] "r"(tp + pcpu__fast.cs_tpoff), [io] "r"(tp + io),
		       [idx] "r"(idx), [ok] "r"(&pcpu__ok[idx]),
		       [stop] "r"(stop), [st] "r"(st), [out] "r"(out)
		     : "memory", "cc", "x9", "x10", "x11", "x12"
		     : abort, none);
	return 0;
abort:
	return 1;
none:
	return 2;
}

static inline int pcpu__arch_stack_push(uint64_t *st, void *obj, void *ps,
					uint64_t cap, const unsigned char *stop,
					int idx, long io)
{
	char *tp = pcpu__arch_tp();
	__asm__ goto(PCPU__A64_CS("ldarb w10, [%[stop]]\n\t"
				  "cbnz w10, %l[none]\n\t"
				  "ldr x10, [%[st]]\n\t"
				  "and x11, x10, #0xffff\n\t"
				  "cmp x11, %x[cap]\n\t"
				  "b.hs %l[none]\n\t"
				  "add x12, %[st], x11, lsl #4\n\t"
				  "str %x[obj], [x12, #8]\n\t"
				  "str %x[ps], [x12, #16]\n\t"
				  "add x10, x10, #1\n\t"
				  "str x10, [%[st]]\n\t")
		     "cbz x11, %l[first]\n\t"
		     :
		     : [cs] "r"(tp + pcpu__fast.cs_tpoff), [io] "r"(tp + io),
		       [idx] "r"(idx), [ok] "r"(&pcpu__ok[idx]),
		       [stop] "r"(stop), [st] "r"(st), [cap] "r"(cap),
		       [obj] "r"(obj), [ps] "r"(ps)
		     : "memory", "cc", "x9", "x10", "x11", "x12"
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
