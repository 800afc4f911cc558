// SPDX-License-Identifier: GPL-2.0
/*
 * f3_prefault_slot_delete: KVM_PRE_FAULT_MEMORY on a memslot that another
 * thread deletes while the pre-fault runs.
 *
 * The deletion first installs an invalid copy of the slot and waits for
 * SRCU readers; the pre-fault is one (kvm_vcpu_pre_fault_memory holds
 * kvm->srcu).  A fault on an invalid slot is RET_PF_RETRY.
 *   6.12: kvm_tdp_map_page retries RET_PF_RETRY until a signal is pending,
 *         so the pre-fault spins and the deletion waits with it, until the
 *         pre-fault thread gets a signal (then EINTR, or 0 with a partial
 *         range when some pages were done).
 *   7.3:  kvm_mmu_faultin_pfn returns -EAGAIN for a pre-fault on an invalid
 *         slot: the ioctl returns EAGAIN (or 0 with the range partly done)
 *         and the deletion completes.
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include "findings.h"

#define GPA (256ULL << 20)
#define SIZE (256ULL << 20)     /* 65536 4 KiB pages: long enough to hit */
#define SIGNAL_AFTER 3.0        /* s the pre-fault may block before we signal it */
#define GIVE_UP 20.0

static int vm;
static struct vcpu v;
static atomic_int in_ioctl, done;
static struct kvm_pre_fault_memory range;
static int pf_ret, pf_errno;
static double pf_end;

static void on_usr1(int sig) { (void)sig; }

static void *prefault(void *arg)
{
	(void)arg;
	range.gpa = GPA;
	range.size = SIZE;
	range.flags = 0;
	atomic_store(&in_ioctl, 1);
	pf_ret = ioctl(v.fd, KVM_PRE_FAULT_MEMORY, &range);
	pf_errno = pf_ret ? errno : 0;
	pf_end = now();
	atomic_store(&done, 1);
	return NULL;
}

struct result {
	int ret, err, signals;
	uint64_t left;
	double del_start, del_time, pf_after_del;
};

/* One attempt: returns 1 when the deletion started while the pre-fault ran. */
static int attempt(struct result *res, pthread_t *t)
{
	void *mem = anon(SIZE);
	int e;

	madvise(mem, SIZE, MADV_NOHUGEPAGE);   /* 4 KiB faults: a longer window */
	e = set_slot(vm, 0, 0, GPA, SIZE, mem, -1, 0);
	if (e) {
		errno = e;
		die("memslot 0");
	}
	atomic_store(&in_ioctl, 0);
	atomic_store(&done, 0);
	if (pthread_create(t, NULL, prefault, NULL))
		die("pthread_create");
	while (!atomic_load(&in_ioctl))
		usleep(100);
	usleep(20000);
	if (atomic_load(&done)) {
		pthread_join(*t, NULL);
		set_slot(vm, 0, 0, GPA, 0, NULL, -1, 0);
		munmap(mem, SIZE);
		return 0;
	}
	res->signals = 0;
	return 1;
}

struct deleter { double start, end; int err; };
static struct deleter del;

static void *deleter(void *arg)
{
	(void)arg;
	del.start = now();
	del.err = set_slot(vm, 0, 0, GPA, 0, NULL, -1, 0);
	del.end = now();
	return NULL;
}

int main(void)
{
	struct sigaction sa = { .sa_handler = on_usr1 };   /* no SA_RESTART */
	struct result res = { 0 };
	pthread_t t, d;
	int kvm, tries;
	double t0;

	finding = "f3_prefault_slot_delete";
	setvbuf(stdout, NULL, _IOLBF, 0);
	sigaction(SIGUSR1, &sa, NULL);
	kvm = kvm_open();
	say("%s: kernel %s, default VM, KVM_PRE_FAULT_MEMORY over a 256 MiB slot while another\n"
	    "  thread deletes that slot\n", finding, release());
	if (!check_cap(kvm, KVM_CAP_PRE_FAULT_MEMORY))
		die("KVM_CAP_PRE_FAULT_MEMORY is 0");
	vm = vm_create(kvm, 0);
	vcpu_create(kvm, vm, &v);

	for (tries = 1; tries <= 5; tries++) {
		if (!attempt(&res, &t))
			continue;
		if (pthread_create(&d, NULL, deleter, NULL))
			die("pthread_create");
		t0 = now();
		while (!atomic_load(&done) && now() - t0 < GIVE_UP) {
			usleep(10000);
			if (now() - t0 >= SIGNAL_AFTER * (res.signals + 1)) {
				pthread_kill(t, SIGUSR1);
				res.signals++;
			}
		}
		if (!atomic_load(&done)) {
			say("FINDING %s: HANG on %s: the pre-fault did not return within %.0f s, signals included\n",
			    finding, release(), GIVE_UP);
			return 1;
		}
		pthread_join(t, NULL);
		pthread_join(d, NULL);
		if (pf_ret == 0 && range.size == 0 && !res.signals)
			continue;   /* it finished before the deletion reached it */
		res.ret = pf_ret;
		res.err = pf_errno;
		res.left = range.size;
		res.pf_after_del = pf_end - del.start;
		res.del_time = del.end - del.start;
		break;
	}
	if (tries > 5) {
		say("FINDING %s: INCONCLUSIVE on %s: the pre-fault finished before the deletion 5 times\n",
		    finding, release());
		return 1;
	}
	say("  attempt %d: deletion started while the pre-fault ran\n", tries);
	say("  KVM_PRE_FAULT_MEMORY -> ret %d errno %s, %llu of %llu bytes left, returned %.3f s after\n"
	    "    the deletion started; signals sent to it: %d\n",
	    res.ret, errname(res.err), (unsigned long long)res.left, (unsigned long long)SIZE,
	    res.pf_after_del, res.signals);
	say("  KVM_SET_USER_MEMORY_REGION2 (delete) -> %s after %.3f s\n", errname(del.err), res.del_time);
	say("contract: the pre-fault returns when it cannot make progress (EAGAIN, or 0 with the range\n"
	    "  partly done); EINTR is for a signal the caller sent, not a way out of a livelock\n");
	if (res.signals > 0)
		say("FINDING %s: RETRY-UNTIL-SIGNAL on %s: the pre-fault spun until signalled (%d signal(s), "
		    "%.1f s; then %s), and the slot deletion waited for it\n",
		    finding, release(), res.signals, res.pf_after_del, res.ret ? errname(res.err) : "0 with a partial range");
	else
		say("FINDING %s: RETURNS on %s: the pre-fault returned %s (%llu bytes left) %.3f s after the "
		    "deletion started, no signal needed; the deletion took %.3f s\n",
		    finding, release(), res.ret ? errname(res.err) : "0", (unsigned long long)res.left,
		    res.pf_after_del, res.del_time);
	return 0;
}
