// SPDX-License-Identifier: GPL-2.0
/*
 * f1_mmio_stale_spte: on a KVM_X86_SW_PROTECTED_VM, a gfn without a memslot
 * that the guest accessed once (an emulated MMIO access, which installs an
 * MMIO SPTE) and that is then made private with KVM_SET_MEMORY_ATTRIBUTES
 * does not fault as private afterwards:
 *   - while the MMIO SPTE is current, the access is emulated MMIO;
 *   - once any memslot changed (the SPTE's generation is stale), it faults
 *     as a *shared* access: KVM_EXIT_MEMORY_FAULT with flags 0;
 * whereas a private gfn without a memslot that was never accessed gives
 * KVM_EXIT_MEMORY_FAULT with KVM_MEMORY_EXIT_FLAG_PRIVATE.
 *
 * Cause (6.12 and 7.3 arch/x86/kvm/mmu/mmu.c, kvm_mmu_page_fault): a
 * reserved-bit (MMIO SPTE) fault never gets PFERR_PRIVATE_ACCESS ("emulated
 * MMIO is shared-only"), and the attribute change zaps SPTEs only inside
 * memslots (kvm_handle_gfn_range), so the slotless gfn's MMIO SPTE survives.
 */
#include "findings.h"

#define CODE_GPA 0x1000ULL
#define SLOT_SIZE 0x10000ULL     /* slot 0: GPA 0..64 KiB, the guest code */
#define TARGET 0x80000ULL        /* no memslot: the gfn under test */
#define OTHER_GPA 0x200000ULL    /* slot 1: an unrelated slot, to change memslots */

enum outcome { MMIO, FAULT_PRIVATE, FAULT_SHARED, OTHER };
static const char *const outcome_name[] = {
	[MMIO] = "KVM_EXIT_MMIO (emulated as MMIO)",
	[FAULT_PRIVATE] = "KVM_EXIT_MEMORY_FAULT flags=PRIVATE",
	[FAULT_SHARED] = "KVM_EXIT_MEMORY_FAULT flags=0 (shared)",
	[OTHER] = "something else",
};

struct vm {
	int kvm, fd;
	struct vcpu v;
	uint8_t *mem;
};

static void vm_setup(struct vm *m)
{
	/* mov al, [0] (ds:0 = TARGET); out 0x10, al; hlt */
	static const uint8_t code[] = { 0xa0, 0x00, 0x00, 0xe6, 0x10, 0xf4 };
	int e;

	m->fd = vm_create(m->kvm, KVM_X86_SW_PROTECTED_VM);
	if (!(check_cap(m->fd, KVM_CAP_MEMORY_ATTRIBUTES) & KVM_MEMORY_ATTRIBUTE_PRIVATE))
		die("KVM_CAP_MEMORY_ATTRIBUTES lacks PRIVATE");
	m->mem = anon(SLOT_SIZE);
	memcpy(m->mem + CODE_GPA, code, sizeof(code));
	e = set_slot(m->fd, 0, 0, 0, SLOT_SIZE, m->mem, -1, 0);
	if (e) {
		errno = e;
		die("memslot 0");
	}
	vcpu_create(m->kvm, m->fd, &m->v);
}

/* One guest read of TARGET; prints and returns what KVM_RUN reported. */
static enum outcome probe(struct vm *m, const char *step)
{
	struct kvm_run *run = m->v.run;
	enum outcome o = OTHER;
	int i, mmio = 0;

	vcpu_real_mode(&m->v, CODE_GPA, TARGET >> 4);
	for (i = 0; i < 8; i++) {
		if (ioctl(m->v.fd, KVM_RUN, 0) < 0) {
			if (errno == EFAULT && run->exit_reason == KVM_EXIT_MEMORY_FAULT) {
				o = (run->memory_fault.flags & KVM_MEMORY_EXIT_FLAG_PRIVATE) ?
					FAULT_PRIVATE : FAULT_SHARED;
				say("  %-44s -> %s (gpa %#llx size %#llx flags %#llx)\n", step, outcome_name[o],
				    (unsigned long long)run->memory_fault.gpa,
				    (unsigned long long)run->memory_fault.size,
				    (unsigned long long)run->memory_fault.flags);
				return o;
			}
			say("  %-44s -> KVM_RUN errno %s, exit_reason %u\n", step, errname(errno), run->exit_reason);
			return OTHER;
		}
		switch (run->exit_reason) {
		case KVM_EXIT_MMIO:
			if (!mmio)
				say("  %-44s -> %s (gpa %#llx len %u)\n", step, outcome_name[MMIO],
				    (unsigned long long)run->mmio.phys_addr, run->mmio.len);
			mmio = 1;
			memset(run->mmio.data, 0, sizeof(run->mmio.data));
			o = MMIO;
			continue;   /* complete the read, then the guest does its OUT */
		case KVM_EXIT_IO:
			continue;
		case KVM_EXIT_HLT:
			if (!mmio)
				say("  %-44s -> the read completed without an exit\n", step);
			return o;
		default:
			say("  %-44s -> exit_reason %u\n", step, run->exit_reason);
			return OTHER;
		}
	}
	say("  %-44s -> no HLT after 8 exits\n", step);
	return OTHER;
}

static void make_private(struct vm *m)
{
	int e = set_attrs(m->fd, TARGET, 0x1000, KVM_MEMORY_ATTRIBUTE_PRIVATE);

	say("  %-44s -> %s\n", "KVM_SET_MEMORY_ATTRIBUTES(gfn, PRIVATE)", errname(e));
	if (e) {
		errno = e;
		die("KVM_SET_MEMORY_ATTRIBUTES");
	}
}

int main(void)
{
	struct vm a = { 0 }, b = { 0 };
	enum outcome control, first, live, stale, followed;
	char caching[16] = "?";
	FILE *f;
	void *other;
	int e;

	finding = "f1_mmio_stale_spte";
	setvbuf(stdout, NULL, _IOLBF, 0);
	a.kvm = b.kvm = kvm_open();
	f = fopen("/sys/module/kvm/parameters/mmio_caching", "r");
	if (f) {
		if (!fgets(caching, sizeof(caching), f))
			strcpy(caching, "?");
		caching[strcspn(caching, "\n")] = 0;
		fclose(f);
	}
	say("%s: kernel %s, sw-protected VM (type 1), gfn %#llx has no memslot; kvm.mmio_caching=%s\n",
	    finding, release(), TARGET >> 12, caching);

	say("control: a private slotless gfn the guest never accessed\n");
	vm_setup(&a);
	make_private(&a);
	control = probe(&a, "guest reads the gfn");

	say("finding: the same gfn, accessed once while shared\n");
	vm_setup(&b);
	first = probe(&b, "guest reads the gfn (shared, no slot)");
	make_private(&b);
	live = probe(&b, "guest reads the gfn (now private)");
	other = anon(SLOT_SIZE);
	e = set_slot(b.fd, 1, 0, OTHER_GPA, SLOT_SIZE, other, -1, 0);
	say("  %-44s -> %s\n", "add an unrelated memslot (generation bump)", errname(e));
	stale = probe(&b, "guest reads the gfn (private, slots changed)");
	followed = OTHER;
	if (stale == FAULT_SHARED) {
		/* A VMM converts as the exit asks: to shared. */
		e = set_attrs(b.fd, TARGET, 0x1000, 0);
		say("  %-44s -> %s\n", "VMM follows the exit: attributes := shared", errname(e));
		followed = probe(&b, "guest reads the gfn again");
	}

	say("contract: a private gfn without a memslot exits KVM_EXIT_MEMORY_FAULT with\n"
	    "  KVM_MEMORY_EXIT_FLAG_PRIVATE (D1/D2), whatever the gfn's history\n");
	say("kernel:   never accessed: %s; accessed once: %s while the MMIO SPTE is current,\n"
	    "          %s once a memslot changed\n",
	    outcome_name[control], outcome_name[live], outcome_name[stale]);
	if (first != MMIO || control != FAULT_PRIVATE) {
		say("FINDING %s: INCONCLUSIVE on %s: the first shared access gave %s, the control %s\n",
		    finding, release(), outcome_name[first], outcome_name[control]);
		return 1;
	}
	if (live == FAULT_PRIVATE && stale == FAULT_PRIVATE) {
		say("FINDING %s: ABSENT on %s: the earlier MMIO access does not change the private fault\n",
		    finding, release());
		return 0;
	}
	say("FINDING %s: PRESENT on %s: a private slotless gfn with an earlier MMIO access faults as "
	    "[%s] (SPTE current) and [%s] (memslots changed)%s, not as private\n",
	    finding, release(), outcome_name[live], outcome_name[stale],
	    followed == MMIO ? "; a VMM that follows the shared exit then serves the private access as MMIO" : "");
	return 0;
}
