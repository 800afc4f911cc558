//! Hardware-poison injection: `madvise(MADV_HWPOISON)` on one page of a
//! [`Mapping`], issued from a short-lived child process.
//!
//! # Why a child process
//!
//! `madvise(MADV_HWPOISON)` (`mm/madvise.c: madvise_inject_error()`) runs
//! `memory_failure(pfn, MF_ACTION_REQUIRED | ...)`, which sends the *calling
//! thread* a forced `SIGBUS` (`BUS_MCEERR_AR`, `force_sig_mceerr()`) when
//! the page cannot be recovered; a guest_memfd page never is (its handler
//! keeps the folio and answers `MF_DELAYED`, and `madvise` returns -1
//! `EBUSY`). A forced signal ignores the signal mask: with no handler, it
//! kills the process. Installing a handler is process-wide state, which a
//! library must not change behind its caller's back, even for a moment
//! (another thread may take a real `SIGBUS` meanwhile).
//!
//! So [`Mapping::inject_hwpoison`] forks. The child inherits the mapping
//! (a `MAP_SHARED` mapping is the same memory in both processes), installs
//! its own `SIGBUS` handler, unblocks `SIGBUS`, calls `madvise`, writes what
//! happened to a pipe and exits with `_exit`. Between `fork` and `_exit`
//! the child makes only async-signal-safe system calls (no allocation, no
//! locks), as a child of a multi-threaded process must. This process's
//! signal handlers, masks and threads are never touched.
//!
//! The child's own handler matters: measured in the 7.3 rig, without it
//! the child inherits whatever this process has installed (in a Rust
//! program, std's stack-overflow `SIGBUS` handler, which resets the
//! disposition to `SIG_DFL` and returns), so an in-process `madvise` would
//! silently change this process's `SIGBUS` disposition for good, or kill
//! it in a program with no handler. The kernel signals only when the
//! poisoned folio was dirty (`hwpoison_user_mappings`: `forcekill`); with
//! a handler the child reports `EBUSY` and `BUS_MCEERR_AR` at the page.
//!
//! The poison is on the physical page, so it is seen through every mapping
//! of it. `memory_failure()` signals only the injecting task (the child)
//! with `BUS_MCEERR_AR`; other processes mapping the page get
//! `BUS_MCEERR_AO` only if they opted into early kill
//! (`prctl(PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY)` or
//! `vm.memory_failure_early_kill = 1`), exactly as for a real memory error.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use crate::error::MapError;
use crate::mapping::{Mapping, PAGE_SIZE};

/// The `SIGBUS` the injecting child received, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sigbus {
    /// `si_code` (`BUS_MCEERR_AR` = 4 for an injection that poisoned a page
    /// it could not recover).
    pub code: i32,
    /// `si_addr`, as an offset into the mapping (`None` if it points
    /// outside it).
    pub offset: Option<u64>,
}

/// What `madvise(MADV_HWPOISON)` did, as the injecting child saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injection {
    /// `madvise`'s result: `Ok` for 0, else the errno (`EBUSY` when the
    /// kernel poisoned the page but could not recover it, `EPERM` without
    /// `CAP_SYS_ADMIN`, `EINVAL` without `CONFIG_MEMORY_FAILURE`, `EFAULT`
    /// when the page cannot be faulted in from the host).
    pub madvise: Result<(), i32>,
    /// The `SIGBUS` the kernel sent the child during the call, if any.
    pub sigbus: Option<Sigbus>,
}

/// `si_code` of the child's `SIGBUS` (0: none yet).
static CHILD_SIGBUS_CODE: AtomicI32 = AtomicI32::new(0);
/// `si_addr` of the child's `SIGBUS`.
static CHILD_SIGBUS_ADDR: AtomicU64 = AtomicU64::new(0);

/// The child's `SIGBUS` handler: records `si_code` and `si_addr` and
/// returns. Returning is sound: the signal was raised at the return of the
/// `madvise` system call, not by a faulting instruction, so execution
/// resumes after the call. Only atomics: async-signal-safe.
extern "C" fn on_child_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    if info.is_null() {
        CHILD_SIGBUS_CODE.store(-1, Ordering::SeqCst);
        return;
    }
    // SAFETY: with SA_SIGINFO the kernel passes a valid `siginfo_t`, live
    // for the handler's duration; `si_addr` is valid for SIGBUS.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as u64) };
    CHILD_SIGBUS_ADDR.store(addr, Ordering::SeqCst);
    CHILD_SIGBUS_CODE.store(code, Ordering::SeqCst);
}

/// The record the child writes to the pipe: madvise's return value, its
/// errno, the SIGBUS `si_code` (0: none) and `si_addr`.
const RECORD: usize = 4 * 8;

/// The child's whole life after `fork`: async-signal-safe system calls
/// only, then `_exit`. Never returns.
fn child_inject(addr: usize, out: libc::c_int) -> ! {
    // SAFETY: every call below is a raw, async-signal-safe system call on
    // memory owned by this (single-threaded) child: a zeroed `sigaction`
    // and `sigset_t` on its stack, the inherited mapping's page at `addr`,
    // and a stack buffer written to the pipe. `_exit` skips atexit handlers
    // and stdio, which a forked child of a multi-threaded process must.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_child_sigbus as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGBUS);
        // A forced SIGBUS that is blocked, or has no handler, kills the
        // child: install the handler and unblock the signal first.
        if libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()) != 0
            || libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) != 0
        {
            libc::_exit(2);
        }
        let ret = libc::madvise(
            addr as *mut libc::c_void,
            PAGE_SIZE as usize,
            libc::MADV_HWPOISON,
        );
        let errno = if ret < 0 {
            *libc::__errno_location()
        } else {
            0
        };
        let rec: [u64; 4] = [
            ret as i64 as u64,
            errno as u64,
            CHILD_SIGBUS_CODE.load(Ordering::SeqCst) as i64 as u64,
            CHILD_SIGBUS_ADDR.load(Ordering::SeqCst),
        ];
        let n = libc::write(out, rec.as_ptr().cast(), RECORD);
        libc::_exit(if n == RECORD as isize { 0 } else { 3 });
    }
}

/// Waits for `pid`, retrying on `EINTR`; its wait status.
fn wait_child(pid: libc::pid_t) -> Result<libc::c_int, MapError> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child, writing only `status`.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(status);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(MapError::os("waitpid", &e));
        }
    }
}

/// A pipe's (read, write) ends, close-on-exec.
fn pipe() -> Result<(OwnedFd, OwnedFd), MapError> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(MapError::last_os("pipe2"));
    }
    // SAFETY: pipe2 succeeded: both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Decodes the child's record, relative to the mapping at `base`.
fn decode(rec: [u8; RECORD], base: u64, len: u64) -> Injection {
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&rec[i * 8..i * 8 + 8]);
        u64::from_ne_bytes(w)
    };
    let (ret, errno, code, addr) = (
        word(0) as i64,
        word(1) as i32,
        word(2) as i64 as i32,
        word(3),
    );
    let madvise = if ret == 0 { Ok(()) } else { Err(errno) };
    let sigbus = (code != 0).then(|| Sigbus {
        code,
        offset: addr.checked_sub(base).filter(|o| *o < len),
    });
    Injection { madvise, sigbus }
}

impl Mapping {
    /// Hardware-poisons the page at `offset` (page-aligned) with
    /// `madvise(MADV_HWPOISON)`, from a forked child process (see the
    /// module documentation): this process gets no signal for it and its
    /// signal state is never changed. Needs `CAP_SYS_ADMIN` and a kernel
    /// with `CONFIG_MEMORY_FAILURE`; the page must be one the host can fault
    /// in.
    ///
    /// The poison is permanent for the physical page. Afterwards a CPU
    /// access to the page (through [`Mapping::slice`], or a raw pointer)
    /// raises `SIGBUS`; the `_checked` accessors report it as a
    /// [`crate::Fault`].
    ///
    /// Returns what the kernel answered the child; deciding whether the page
    /// is now poisoned is the caller's (e.g. `EBUSY` with a `BUS_MCEERR_AR`
    /// means "poisoned, not recovered" for a guest_memfd page).
    ///
    /// # Errors
    /// `OutOfRange` if the page is not inside the mapping or `offset` is not
    /// page-aligned; `Os` if `pipe2`, `fork`, `waitpid` or reading the
    /// child's record fails; `Helper` if the child did not exit cleanly.
    pub fn inject_hwpoison(&self, offset: u64) -> Result<Injection, MapError> {
        if !offset.is_multiple_of(PAGE_SIZE) {
            return Err(MapError::OutOfRange {
                op: "madvise(MADV_HWPOISON)",
                offset,
                len: PAGE_SIZE,
                size: self.len(),
            });
        }
        let page = self.checked_slice("madvise(MADV_HWPOISON)", offset, PAGE_SIZE)?;
        let addr = page.ptr_guard_mut().as_ptr() as usize;
        let (rd, wr) = pipe()?;
        // SAFETY: the child runs only `child_inject` (async-signal-safe
        // system calls, then `_exit`), so forking a multi-threaded process
        // is sound; the parent continues normally.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(MapError::last_os("fork"));
        }
        if pid == 0 {
            child_inject(addr, wr.as_raw_fd());
        }
        drop(wr);
        let status = wait_child(pid)?;
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            let how = if libc::WIFSIGNALED(status) {
                format!("was killed by signal {}", libc::WTERMSIG(status))
            } else {
                format!("exited with status {}", libc::WEXITSTATUS(status))
            };
            return Err(MapError::Helper {
                op: "madvise(MADV_HWPOISON)",
                how,
            });
        }
        let mut rec = [0u8; RECORD];
        File::from(rd)
            .read_exact(&mut rec)
            .map_err(|e| MapError::os("read(MADV_HWPOISON child)", &e))?;
        // SAFETY: the address only locates the signal's page in the mapping.
        let base = unsafe { self.host_addr() };
        Ok(decode(rec, base, self.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(words: [u64; 4]) -> [u8; RECORD] {
        let mut r = [0u8; RECORD];
        for (i, w) in words.iter().enumerate() {
            r[i * 8..i * 8 + 8].copy_from_slice(&w.to_ne_bytes());
        }
        r
    }

    #[test]
    fn decode_reads_errno_and_signal() {
        let base = 0x7000_0000;
        let got = decode(rec([-1i64 as u64, 16, 4, base + 0x1000]), base, 0x2000);
        assert_eq!(
            got,
            Injection {
                madvise: Err(libc::EBUSY),
                sigbus: Some(Sigbus {
                    code: 4,
                    offset: Some(0x1000)
                }),
            }
        );
        let clean = decode(rec([0, 0, 0, 0]), base, 0x2000);
        assert_eq!(
            clean,
            Injection {
                madvise: Ok(()),
                sigbus: None
            }
        );
        let outside = decode(rec([0, 0, 4, base + 0x2000]), base, 0x2000);
        assert_eq!(outside.sigbus.map(|s| s.offset), Some(None));
    }

    #[test]
    fn unaligned_or_outside_pages_are_refused_before_forking() {
        let m = Mapping::anonymous(2 * PAGE_SIZE).unwrap();
        assert!(matches!(
            m.inject_hwpoison(1),
            Err(MapError::OutOfRange { offset: 1, .. })
        ));
        assert!(matches!(
            m.inject_hwpoison(2 * PAGE_SIZE),
            Err(MapError::OutOfRange { .. })
        ));
    }

    /// Runs the child for real on anonymous memory, but without
    /// `CAP_SYS_ADMIN` answers are `EPERM` (no poison), and with it the
    /// host may have no `CONFIG_MEMORY_FAILURE` (`EINVAL`). Only those two
    /// outcomes are safe to provoke in a unit test: a poisoned page of a
    /// test process would be lost for good, so the test drops the
    /// capability first (a no-op when not root).
    #[test]
    fn child_reports_the_kernels_refusal_and_this_process_gets_no_signal() {
        // Run in a thread that drops CAP_SYS_ADMIN from its own effective
        // set only (capabilities are per thread on Linux).
        let got = std::thread::spawn(|| {
            drop_cap_sys_admin();
            let m = Mapping::anonymous(PAGE_SIZE).unwrap();
            m.write_checked(0, &[1]).unwrap();
            m.inject_hwpoison(0)
        })
        .join()
        .unwrap()
        .unwrap();
        assert!(
            matches!(got.madvise, Err(e) if e == libc::EPERM || e == libc::EINVAL),
            "{got:?}"
        );
        assert_eq!(got.sigbus, None);
    }

    /// Clears CAP_SYS_ADMIN (21) from the calling thread's effective set.
    fn drop_cap_sys_admin() {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let mut h = Header {
            version: 0x2008_0522,
            pid: 0,
        };
        let mut d = [Data::default(); 2];
        // SAFETY: capget fills the header and two data words we own.
        let r = unsafe { libc::syscall(libc::SYS_capget, &mut h as *mut Header, d.as_mut_ptr()) };
        assert_eq!(r, 0);
        d[0].effective &= !(1 << 21);
        // SAFETY: capset reads the header and data we own; it only lowers
        // this thread's effective set.
        let r = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()) };
        assert_eq!(r, 0);
    }
}
