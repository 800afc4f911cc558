/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Shared helpers of the rig/findings reproducers: plain KVM ioctls, no
 * selftest library.  Built static by rig/run against the rig kernel's uapi
 * headers (make headers_install), one binary per finding.
 *
 * Conventions: each reproducer prints the steps it takes, what the kernel
 * did and what the private-memory contract implies, then one line
 *   FINDING <name>: <PRESENT|ABSENT|...> on <release>: <summary>
 * and exits 0 when it observed the kernel's behaviour, whichever it was.
 * A setup failure (no /dev/kvm, a missing capability) exits 2 naming it.
 */
#ifndef RIG_FINDINGS_H
#define RIG_FINDINGS_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>
#include <linux/kvm.h>

static const char *finding = "finding";

static __attribute__((unused)) void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static __attribute__((unused)) void say(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	fflush(stdout);
}

static __attribute__((unused)) void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static __attribute__((unused)) void die(const char *fmt, ...)
{
	va_list ap;
	int e = errno;

	printf("%s: SETUP ERROR: ", finding);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	if (e)
		printf(" (errno %d %s)", e, strerror(e));
	printf("\n");
	fflush(stdout);
	exit(2);
}

static __attribute__((unused)) const char *release(void)
{
	static struct utsname u;

	if (!u.release[0] && uname(&u))
		return "?";
	return u.release;
}

static __attribute__((unused)) double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static __attribute__((unused)) const char *errname(int e)
{
	switch (e) {
	case 0: return "0";
	case EINVAL: return "EINVAL";
	case EEXIST: return "EEXIST";
	case EFAULT: return "EFAULT";
	case EINTR: return "EINTR";
	case EAGAIN: return "EAGAIN";
	case ENOENT: return "ENOENT";
	case ENOMEM: return "ENOMEM";
	case EBUSY: return "EBUSY";
	case EIO: return "EIO";
	case EPERM: return "EPERM";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	case ENOTTY: return "ENOTTY";
	default: return strerror(e);
	}
}

static __attribute__((unused)) int kvm_open(void)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);

	if (fd < 0)
		die("open /dev/kvm");
	return fd;
}

static __attribute__((unused)) int check_cap(int fd, long cap)
{
	int r = ioctl(fd, KVM_CHECK_EXTENSION, cap);

	return r < 0 ? 0 : r;
}

static __attribute__((unused)) int vm_create(int kvm, unsigned long type)
{
	int vm;

	if (type && !(check_cap(kvm, KVM_CAP_VM_TYPES) & (1 << type)))
		die("VM type %lu not in KVM_CAP_VM_TYPES (%#x)", type, check_cap(kvm, KVM_CAP_VM_TYPES));
	vm = ioctl(kvm, KVM_CREATE_VM, type);
	if (vm < 0)
		die("KVM_CREATE_VM type %lu", type);
	return vm;
}

/* KVM_SET_USER_MEMORY_REGION2; returns 0 or the errno. */
static __attribute__((unused)) int set_slot(int vm, uint32_t slot, uint32_t flags, uint64_t gpa, uint64_t size,
		    void *hva, int gmem_fd, uint64_t gmem_offset)
{
	struct kvm_userspace_memory_region2 r = {
		.slot = slot,
		.flags = flags,
		.guest_phys_addr = gpa,
		.memory_size = size,
		.userspace_addr = (uint64_t)(uintptr_t)hva,
		.guest_memfd = gmem_fd < 0 ? 0 : (uint32_t)gmem_fd,
		.guest_memfd_offset = gmem_offset,
	};

	return ioctl(vm, KVM_SET_USER_MEMORY_REGION2, &r) ? errno : 0;
}

/* KVM_SET_MEMORY_ATTRIBUTES; returns 0 or the errno. */
static __attribute__((unused)) int set_attrs(int vm, uint64_t gpa, uint64_t size, uint64_t attributes)
{
	struct kvm_memory_attributes a = {
		.address = gpa, .size = size, .attributes = attributes,
	};

	return ioctl(vm, KVM_SET_MEMORY_ATTRIBUTES, &a) ? errno : 0;
}

static __attribute__((unused)) void *anon(size_t size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (p == MAP_FAILED)
		die("mmap %zu bytes", size);
	return p;
}

struct vcpu {
	int fd;
	struct kvm_run *run;
};

/* A vCPU with the host's supported CPUID (as the selftests' vm_create does). */
static __attribute__((unused)) void vcpu_create(int kvm, int vm, struct vcpu *v)
{
	int n = 256, sz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	struct kvm_cpuid2 *cpuid;

	v->fd = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (v->fd < 0)
		die("KVM_CREATE_VCPU");
	if (sz <= 0)
		die("KVM_GET_VCPU_MMAP_SIZE");
	v->run = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
	if (v->run == MAP_FAILED)
		die("mmap kvm_run");
	cpuid = calloc(1, sizeof(*cpuid) + n * sizeof(cpuid->entries[0]));
	if (!cpuid)
		die("calloc");
	cpuid->nent = n;
	if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid))
		die("KVM_GET_SUPPORTED_CPUID");
	if (ioctl(v->fd, KVM_SET_CPUID2, cpuid))
		die("KVM_SET_CPUID2");
	free(cpuid);
}

/*
 * Real mode at cs:ip = 0:rip, with ds = ds_seg (base ds_seg << 4): the
 * reproducers' guest code addresses its target through ds.
 */
static __attribute__((unused)) void vcpu_real_mode(struct vcpu *v, uint64_t rip, uint16_t ds_seg)
{
	struct kvm_sregs s;
	struct kvm_regs r;

	if (ioctl(v->fd, KVM_GET_SREGS, &s))
		die("KVM_GET_SREGS");
	s.cs.base = 0;
	s.cs.selector = 0;
	s.ds.selector = ds_seg;
	s.ds.base = (uint64_t)ds_seg << 4;
	if (ioctl(v->fd, KVM_SET_SREGS, &s))
		die("KVM_SET_SREGS");
	memset(&r, 0, sizeof(r));
	r.rip = rip;
	r.rflags = 2;
	if (ioctl(v->fd, KVM_SET_REGS, &r))
		die("KVM_SET_REGS");
}

#endif
