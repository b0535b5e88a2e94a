/*
 * arch/generic.h - no rseq critical sections on this target (or
 * PCPU_NO_RSEQ): every operation takes the atomic slow path.
 */
#ifndef PCPU_ARCH_GENERIC_H
#define PCPU_ARCH_GENERIC_H

#define PCPU__HAVE_RSEQ 0

static inline int pcpu__arch_load_index(long io)
{
	(void)io;
	return -1;
}

#define PCPU__GENERIC_OP(name, T)                                              \
	static inline int pcpu__arch_##name(T *q, T v, int idx, long io)       \
	{                                                                      \
		(void)q, (void)v, (void)idx, (void)io;                         \
		return 1;                                                      \
	}
#define PCPU__GENERIC_RET_OP(name, T)                                          \
	static inline int pcpu__arch_##name(T *q, T v, T *out, int idx,        \
					    long io)                           \
	{                                                                      \
		(void)q, (void)v, (void)out, (void)idx, (void)io;              \
		return 1;                                                      \
	}
#define PCPU__GENERIC_WIDTH(W)                                                 \
	PCPU__GENERIC_OP(add##W, uint##W##_t)                                  \
	PCPU__GENERIC_OP(write##W, uint##W##_t)                                \
	PCPU__GENERIC_OP(and##W, uint##W##_t)                                  \
	PCPU__GENERIC_OP(or##W, uint##W##_t)                                   \
	PCPU__GENERIC_RET_OP(add_return##W, uint##W##_t)                       \
	PCPU__GENERIC_RET_OP(xchg##W, uint##W##_t)                             \
	static inline int pcpu__arch_cmpxchg##W(uint##W##_t *q,                \
						uint##W##_t old,               \
						uint##W##_t nv,                \
						uint##W##_t *found, int idx,   \
						long io)                       \
	{                                                                      \
		(void)q, (void)old, (void)nv, (void)found, (void)idx,          \
			(void)io;                                              \
		return 1;                                                      \
	}
/* No sections: every operation "aborts", so callers take their slow path. */
PCPU__GENERIC_WIDTH(8)
PCPU__GENERIC_WIDTH(16)
PCPU__GENERIC_WIDTH(32)
PCPU__GENERIC_WIDTH(64)


static inline int pcpu__arch_add_bounded64(int64_t *q, int64_t v, int idx,
					   long io, int64_t lim)
{
	(void)q, (void)v, (void)idx, (void)io, (void)lim;
	return 1;
}

static inline int pcpu__arch_xchg0_64(int64_t *q, int64_t *out, int idx,
				      long io)
{
	(void)q, (void)out, (void)idx, (void)io;
	return 1;
}

/* No sections: "abort", so callers take their slow path. */
static inline int pcpu__arch_add_if64(uint64_t *q, uint64_t v, int idx,
				      long io, const unsigned char *flag)
{
	(void)q, (void)v, (void)idx, (void)io, (void)flag;
	return 1;
}

/* Object-cache stacks: "none", so callers take their locked path. */
static inline int pcpu__arch_stack_pop(uint64_t *st, void **out,
				       const unsigned char *stop, int idx,
				       long io)
{
	(void)st, (void)out, (void)stop, (void)idx, (void)io;
	return 2;
}

static inline int pcpu__arch_stack_push(uint64_t *st, void *obj, void *ps,
					uint64_t cap, const unsigned char *stop,
					int idx, long io)
{
	(void)st, (void)obj, (void)ps, (void)cap, (void)stop, (void)idx,
		(void)io;
	return 2;
}

#endif
