/*
 * fuzz_cpulist.c - libFuzzer target for the cpulist parser and formatter.
 *
 * The input is copied into a malloc'd buffer of exactly its size, so
 * AddressSanitizer catches any read past s[len-1].  Whatever parses must
 * survive format -> parse unchanged, and parse must leave its output alone
 * on failure; any violation aborts.
 *
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Isrc \
 *        src/topology.c tests/fuzz/fuzz_cpulist.c -o fuzz_cpulist
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char text[65536]; /* the longest cpulist is ~20 KB */

/* Checks that @set formats and parses back to itself. */
static void check_round_trip(const struct pcpu_cpuset *set)
{
	struct pcpu_cpuset back;
	int n = _pcpu_cpulist_format(set, text, sizeof(text));

	if (n < 0 || (size_t)n >= sizeof(text) || strlen(text) != (size_t)n)
		abort();
	if (_pcpu_cpulist_parse(text, (size_t)n, &back) != 0 ||
	    memcmp(set, &back, sizeof(back)) != 0)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pcpu_cpuset set, before;
	char *s = malloc(size ? size : 1);
	int ret;

	if (!s)
		return 0;
	memcpy(s, data, size);
	memset(&set, 0xa5, sizeof(set));
	before = set;
	ret = _pcpu_cpulist_parse(s, size, &set);
	if (ret == 0)
		check_round_trip(&set);
	else if ((ret != -EINVAL && ret != -ERANGE) ||
		 memcmp(&set, &before, sizeof(set)) != 0)
		abort();
	free(s);
	return 0;
}
