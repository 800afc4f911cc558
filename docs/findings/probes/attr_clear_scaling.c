// SPDX-License-Identifier: GPL-2.0
/*
 * attr_clear_scaling: the time and peak Slab growth of
 * KVM_SET_MEMORY_ATTRIBUTES(0, 2^k, attributes 0) on a sw-protected VM with
 * one private page, for k = LO, LO+2, ..., HI (default 24..34), one new VM
 * each.  The table in docs/findings/attr-shared-reserve.md.  Careful on
 * 6.12: about 9 bytes of kernel memory per gfn (2^36 bytes: ~150 MiB).
 *
 * Build against the rig kernel's uapi headers and rig/findings/findings.h,
 * and run it in the rig:
 *   gcc -static -O2 -I/var/cache/privmem-rig/<kernel>/include -Irig/findings \
 *       -o /tmp/probe/attr_clear_scaling docs/findings/probes/attr_clear_scaling.c -lpthread
 *   rig/run --kernel 6.12 --file /tmp/probe -- /tmp/probe/attr_clear_scaling 24 36
 */
#include "findings.h"
#include <pthread.h>
#include <stdatomic.h>

static long meminfo_kib(const char *key)
{
	char line[256]; long v = -1; size_t n = strlen(key);
	FILE *f = fopen("/proc/meminfo", "r");
	if (!f) return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, n) && line[n] == ':') { v = strtol(line + n + 1, NULL, 10); break; }
	fclose(f);
	return v;
}
static atomic_int running; static long peak, base;
static void *sampler(void *a)
{
	(void)a;
	while (atomic_load(&running)) {
		long s = meminfo_kib("Slab") - base;
		if (s > peak) peak = s;
		usleep(2000);
	}
	return NULL;
}
int main(int argc, char **argv)
{
	int kvm = kvm_open(), k, lo = argc > 1 ? atoi(argv[1]) : 24, hi = argc > 2 ? atoi(argv[2]) : 34;
	finding = "attr_clear_scaling";
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (k = lo; k <= hi; k += 2) {
		int vm = vm_create(kvm, KVM_X86_SW_PROTECTED_VM), e;
		pthread_t t; double t0, dt;
		e = set_attrs(vm, 0x100000, 0x1000, KVM_MEMORY_ATTRIBUTE_PRIVATE);
		if (e) { errno = e; die("private"); }
		base = meminfo_kib("Slab"); peak = 0; atomic_store(&running, 1);
		pthread_create(&t, NULL, sampler, NULL);
		t0 = now();
		e = set_attrs(vm, 0, 1ULL << k, 0);
		dt = now() - t0;
		usleep(20000);
		atomic_store(&running, 0); pthread_join(t, NULL);
		usleep(500000);
		say("%s: clear 2^%d bytes (%llu gfns) -> %s in %.3f s, Slab peak +%ld KiB, +%ld KiB 0.5 s later\n",
		    release(), k, (1ULL << k) >> 12, errname(e), dt, peak, meminfo_kib("Slab") - base);
		close(vm);
	}
	return 0;
}
