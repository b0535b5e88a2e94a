/* A program built against an installed libpcpu (make check-install). */
#include <pcpu/pcpu.h>
#include <stdio.h>

int main(void)
{
	long *c = pcpu_alloc(sizeof(long), 0);
	if (!c)
		return 1;
	for (int i = 0; i < 1000; i++)
		pcpu_inc(c);
	long sum = pcpu_sum(c);
	pcpu_free(c);
	printf("installed libpcpu: sum %ld\n", sum);
	return sum == 1000 ? 0 : 1;
}
