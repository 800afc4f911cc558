// SPDX-License-Identifier: GPL-2.0
/*
 * f4_attr_shared_reserve: KVM_SET_MEMORY_ATTRIBUTES(attributes = 0, i.e.
 * shared) over 2^40 bytes, where one page is private.
 *
 * kvm_vm_set_mem_attributes returns early only when the whole range already
 * has the attributes; otherwise 6.12 xa_reserve()s every gfn of the range
 * before storing (2^28 gfns: about 2.4 GB of xarray nodes), unkillably (the
 * loop checks no signal).  It ended in the OOM killer in the rig.  7.3 skips
 * the reservation when clearing ("Storing NULL never allocates"), but still
 * walks every gfn to store NULL.
 *
 * To measure this without OOMing the machine, the ioctl runs in a child in
 * its own memory cgroup (memory.max = LIMIT_MIB; xa nodes are charged with
 * GFP_KERNEL_ACCOUNT), and the parent samples Slab in /proc/meminfo for at
 * most WATCH seconds.
 */
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include "findings.h"

#define RANGE (1ULL << 40)
#define PRIVATE_GPA 0x100000ULL
#define LIMIT_MIB 96
#define WATCH 5.0
#define CG "/sys/fs/cgroup"
#define CGDIR CG "/privmem-f4"

static long meminfo_kib(const char *key)
{
	char line[256];
	long v = -1;
	size_t n = strlen(key);
	FILE *f = fopen("/proc/meminfo", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, n) && line[n] == ':') {
			v = strtol(line + n + 1, NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

static int write_file(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY), ok;

	if (fd < 0)
		return -1;
	ok = write(fd, s, strlen(s)) == (ssize_t)strlen(s);
	close(fd);
	return ok ? 0 : -1;
}

static long read_long(const char *path, const char *key)
{
	char line[256];
	long v = -1;
	FILE *f = fopen(path, "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (!key) {
			v = strtol(line, NULL, 10);
			break;
		}
		if (!strncmp(line, key, strlen(key)) && line[strlen(key)] == ' ') {
			v = strtol(line + strlen(key) + 1, NULL, 10);
			break;
		}
	}
	fclose(f);
	return v;
}

/* A memory cgroup limited to LIMIT_MIB for the child. */
static void cgroup_setup(void)
{
	char buf[32];
	struct stat st;

	if (stat(CG "/cgroup.controllers", &st) &&
	    mount("cgroup2", CG, "cgroup2", 0, NULL))
		die("mount cgroup2 on " CG);
	if (write_file(CG "/cgroup.subtree_control", "+memory"))
		die("enable the memory controller (CONFIG_MEMCG)");
	rmdir(CGDIR);
	if (mkdir(CGDIR, 0755) && errno != EEXIST)
		die("mkdir " CGDIR);
	snprintf(buf, sizeof(buf), "%d", LIMIT_MIB << 20);
	if (write_file(CGDIR "/memory.max", buf))
		die("write memory.max");
}

struct report { int ret, err; double secs; };

static void child(int out)
{
	struct report r = { 0 };
	int kvm, vm, e;
	double t0;

	if (write_file(CGDIR "/cgroup.procs", "0"))
		die("join " CGDIR);
	kvm = kvm_open();
	vm = vm_create(kvm, KVM_X86_SW_PROTECTED_VM);
	e = set_attrs(vm, PRIVATE_GPA, 0x1000, KVM_MEMORY_ATTRIBUTE_PRIVATE);
	if (e) {
		errno = e;
		die("make one page private");
	}
	t0 = now();
	r.ret = set_attrs(vm, 0, RANGE, 0);
	r.err = r.ret;
	r.secs = now() - t0;
	if (write(out, &r, sizeof(r)) != sizeof(r))
		_exit(3);
	_exit(0);
}

int main(void)
{
	long slab0, slab, peak_slab = 0, oom;
	struct report r = { -1, 0, 0 };
	int p[2], status = 0, got = 0, exited = 0;
	double t0, t;
	pid_t pid;

	finding = "f4_attr_shared_reserve";
	setvbuf(stdout, NULL, _IOLBF, 0);
	say("%s: kernel %s, sw-protected VM, gfn %#llx private, then\n"
	    "  KVM_SET_MEMORY_ATTRIBUTES(gpa 0, size 2^40, attributes 0) in a child limited to %d MiB\n"
	    "  of kernel memory (memory cgroup); Slab sampled for %.0f s\n",
	    finding, release(), PRIVATE_GPA >> 12, LIMIT_MIB, WATCH);
	cgroup_setup();
	if (pipe(p))
		die("pipe");
	slab0 = meminfo_kib("Slab");
	t0 = now();
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		close(p[0]);
		child(p[1]);
	}
	close(p[1]);
	fcntl(p[0], F_SETFL, O_NONBLOCK);
	while ((t = now() - t0) < WATCH) {
		usleep(250000);
		slab = meminfo_kib("Slab") - slab0;
		if (slab > peak_slab)
			peak_slab = slab;
		if (!got && read(p[0], &r, sizeof(r)) == sizeof(r))
			got = 1;
		if (waitpid(pid, &status, WNOHANG) == pid) {
			exited = 1;
			break;
		}
	}
	t = now() - t0;
	if (!got && read(p[0], &r, sizeof(r)) == sizeof(r))
		got = 1;
	oom = read_long(CGDIR "/memory.events", "oom_kill");
	say("  after %.1f s: Slab grew by up to %ld KiB; the cgroup's peak charge %ld KiB, oom_kill %ld\n",
	    t, peak_slab, read_long(CGDIR "/memory.peak", NULL) / 1024, oom);
	if (got)
		say("  the ioctl returned %s after %.2f s\n", errname(r.err), r.secs);
	else if (exited)
		say("  the child ended (%s %d) before the ioctl returned\n",
		    WIFSIGNALED(status) ? "signal" : "exit",
		    WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
	else
		say("  the ioctl is still running after %.0f s; the child is killed (the kernel loop\n"
		    "  checks no signal: it dies when the loop ends)\n", WATCH);
	if (!exited)
		kill(pid, SIGKILL);
	say("contract: setting a range to the attributes most of it already has costs memory for\n"
	    "  the pages that change, not for every gfn of the range; clearing never needs memory\n");
	if (peak_slab > 16 * 1024 || (got && r.err == ENOMEM) || oom > 0)
		say("FINDING %s: PRESENT on %s: the shared set reserved memory for every gfn: Slab +%ld KiB in "
		    "%.1f s (%s), bounded only by the %d MiB cgroup limit; unbounded it needs ~%llu MiB\n",
		    finding, release(), peak_slab, t,
		    got ? errname(r.err) : exited ? "child killed" : "still running",
		    LIMIT_MIB, (RANGE >> 12) / 64 * 576 >> 20);
	else
		say("FINDING %s: ABSENT on %s: no reservation (Slab +%ld KiB in %.1f s); the ioctl %s\n",
		    finding, release(), peak_slab, t,
		    got ? (r.err ? errname(r.err) : "returned 0") : "was still walking the range");
	return 0;
}
