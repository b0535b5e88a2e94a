/*
 * bad_types.c - what the this-CPU operations must refuse at compile time,
 * each with a message naming the operation (CTest compiles this file once
 * per case, -DBAD_<case>, and looks for the message; with no case it must
 * compile).
 */
#include <stdbool.h>

#include "pcpu/pcpu.h"

struct pair {
	int a, b;
};

void bad_types(void);
void bad_types(void)
{
	long *l = pcpu_alloc(sizeof(long), 0);
	(void)l;
#ifdef BAD_struct /* "pcpu_add: *p must be an integer type ..." */
	struct pair *s = pcpu_alloc(sizeof(*s), 0);
	pcpu_add(s, 1);
#endif
#ifdef BAD_double
	double *d = pcpu_alloc(sizeof(*d), 0);
	(void)pcpu_add_return(d, 1.0);
#endif
#ifdef BAD_int128
	__int128 *w = pcpu_alloc(sizeof(*w), 0);
	(void)pcpu_xchg(w, 0);
#endif
#ifdef BAD_array3
	char(*a)[3] = pcpu_alloc(3, 0);
	(void)pcpu_read(a);
#endif
#ifdef BAD_void
	void *v = l;
	(void)pcpu_read(v);
#endif
#ifdef BAD_bool_add
	bool *b = pcpu_alloc(sizeof(*b), 0);
	pcpu_add(b, 1);
#endif
#ifdef BAD_ptr_add
	struct pair **pp = pcpu_alloc(sizeof(*pp), 0);
	(void)pcpu_add_return(pp, 1);
#endif
#ifdef BAD_ptr_or
	struct pair **po = pcpu_alloc(sizeof(*po), 0);
	pcpu_or(po, 1);
#endif
#ifdef BAD_const_write
	const long *c = l;
	pcpu_write(c, 1L);
#endif
#ifdef BAD_const_cmpxchg
	const int *ci = pcpu_alloc(sizeof(int), 0);
	(void)pcpu_cmpxchg(ci, 0, 1);
#endif
}
