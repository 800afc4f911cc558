// SPDX-License-Identifier: GPL-2.0
/*
 * f2_gmem_bind_overlap: a second memslot bound to a guest_memfd file range
 * that another memslot already holds is refused, with which errno?
 *
 * Debian 6.12.117 (and kernels before the bind was split into prepare and
 * commit) refused it with EINVAL from kvm_gmem_bind; 6.12.118 and 7.3 check
 * the overlap in the memslot commit phase (kvm_gmem_commit_memory_region /
 * the bind's commit step) and return EEXIST.  A VMM or model that matches the
 * errno sees the change.  The refused slot must not exist afterwards.
 */
#include "findings.h"

#define MIB (1ULL << 20)

int main(void)
{
	struct kvm_create_guest_memfd g = { .size = 8 * MIB };
	int kvm, vm, gmem, e_full, e_part, e_after, e_ok;
	uint8_t *shared;

	finding = "f2_gmem_bind_overlap";
	setvbuf(stdout, NULL, _IOLBF, 0);
	kvm = kvm_open();
	say("%s: kernel %s, sw-protected VM (type 1), one 8 MiB guest_memfd\n", finding, release());
	vm = vm_create(kvm, KVM_X86_SW_PROTECTED_VM);
	gmem = ioctl(vm, KVM_CREATE_GUEST_MEMFD, &g);
	if (gmem < 0)
		die("KVM_CREATE_GUEST_MEMFD");
	shared = anon(8 * MIB);

	e_ok = set_slot(vm, 0, KVM_MEM_GUEST_MEMFD, 256 * MIB, 2 * MIB, shared, gmem, 2 * MIB);
	say("  slot 0: gpa 256 MiB, 2 MiB, file offset 2 MiB            -> %s\n", errname(e_ok));
	if (e_ok) {
		errno = e_ok;
		die("binding slot 0");
	}
	e_full = set_slot(vm, 1, KVM_MEM_GUEST_MEMFD, 512 * MIB, 2 * MIB, shared + 2 * MIB, gmem, 2 * MIB);
	say("  slot 1: gpa 512 MiB, 2 MiB, file offset 2 MiB (same range) -> %s\n", errname(e_full));
	e_part = set_slot(vm, 1, KVM_MEM_GUEST_MEMFD, 512 * MIB, 2 * MIB, shared + 2 * MIB, gmem, 3 * MIB);
	say("  slot 1: gpa 512 MiB, 2 MiB, file offset 3 MiB (half over) -> %s\n", errname(e_part));
	e_after = set_slot(vm, 1, KVM_MEM_GUEST_MEMFD, 512 * MIB, 2 * MIB, shared + 2 * MIB, gmem, 4 * MIB);
	say("  slot 1: gpa 512 MiB, 2 MiB, file offset 4 MiB (disjoint)  -> %s\n", errname(e_after));

	say("contract: a guest_memfd range backs at most one memslot; the overlapping binding is\n"
	    "  refused and the slot is not created (slot 1 could be created afterwards: %s)\n",
	    e_after ? "NO" : "yes");
	if (!e_full || !e_part) {
		say("FINDING %s: PRESENT on %s: an overlapping binding was ACCEPTED (same range %s, half over %s)\n",
		    finding, release(), errname(e_full), errname(e_part));
		return 0;
	}
	say("FINDING %s: %s on %s: an overlapping binding is %s (same range) / %s (half over)%s\n",
	    finding, e_full == EEXIST ? "EEXIST" : e_full == EINVAL ? "EINVAL" : "OTHER", release(),
	    errname(e_full), errname(e_part),
	    e_full == EEXIST ? "; 6.12.117 gave EINVAL" : "");
	return e_after ? 1 : 0;
}
