//! [`KvmVcpu`]: `KVM_RUN` with exact exit decoding, the guest-protocol
//! ports, the port-I/O hypercall emulation, and [`KvmKick`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use kvm_bindings::kvm_regs;
use kvm_ioctls::VcpuFd;
use privmem_core::abi::{
    self, RunResult, KVM_EXIT_IO, OFF_EXIT_REASON, OFF_HYPERCALL_RET, RUN_HEADER_LEN,
};
use privmem_core::exit::{hc_ret, EXIT_HYPERCALL_MAP_GPA_RANGE, KVM_HC_MAP_GPA_RANGE};
use privmem_core::{
    BackendError, Exit, Gpa, GuestOp, GuestReport, Hypercall, IoExit, Kick, RunError, Vcpu,
    PAGE_SIZE,
};

use crate::guest::{compile, ports};
use crate::kick::{immediate_exit, KvmKick};
use crate::mem::Mmap;
use crate::runtime_area::{self, RuntimeArea};
use crate::state::{Emulation, VmState};
use crate::sys::{fd_of, kvm_err as os};
/// Offset of `kvm_run.mmio.data`.
const OFF_MMIO_DATA: usize = 40;
/// `EINTR`.
const EINTR: i32 = 4;
/// `EAGAIN`.
const EAGAIN: i32 = 11;

/// A hypercall exit waiting for `complete_hypercall` / the next `run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// Nothing pending.
    None,
    /// A real `KVM_EXIT_HYPERCALL`: `ret` lives in `kvm_run` (offset 88).
    Kernel,
    /// A port-I/O hypercall: RAX gets this value before the next `KVM_RUN`.
    PortIo(i64),
}

impl std::os::fd::AsFd for KvmVcpu {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        crate::sys::fd_of(&self.fd)
    }
}

/// A KVM vCPU running privmem guest programs.
#[derive(Debug)]
pub struct KvmVcpu {
    vm: Arc<VmState>,
    fd: VcpuFd,
    index: u32,
    run: Arc<Mmap>,
    kick: Arc<KvmKick>,
    area: Option<RuntimeArea>,
    pending: Pending,
    buf: Vec<u8>,
}

impl KvmVcpu {
    pub(crate) fn new(vm: Arc<VmState>, index: u32) -> Result<KvmVcpu, BackendError> {
        let fd = vm
            .fd
            .create_vcpu(u64::from(index))
            .map_err(|e| os("KVM_CREATE_VCPU", &e))?;
        let run_size = vm.fd.run_size() as u64;
        let run = Arc::new(Mmap::new(
            run_size,
            libc::MAP_SHARED,
            Some(fd_of(&fd)),
            "mmap(kvm_run)",
        )?);
        if let Some(cpuid) = &vm.config.cpuid {
            fd.set_cpuid2(cpuid).map_err(|e| os("KVM_SET_CPUID2", &e))?;
        }
        let kick = Arc::new(KvmKick::new(Arc::clone(&run), vm.config.kick_signal));
        Ok(KvmVcpu {
            vm,
            fd,
            index,
            run,
            kick,
            area: None,
            pending: Pending::None,
            buf: Vec::new(),
        })
    }

    /// GPA and size of this vCPU's runtime area, once a program is loaded.
    pub fn runtime_area(&self) -> Option<(u64, u64)> {
        self.area.as_ref().map(|a| (a.layout.base, a.layout.size))
    }

    fn get_regs(&self) -> Result<kvm_regs, BackendError> {
        self.fd.get_regs().map_err(|e| os("KVM_GET_REGS", &e))
    }

    fn set_rax(&self, rax: u64) -> Result<(), BackendError> {
        let mut regs = self.get_regs()?;
        regs.rax = rax;
        self.fd.set_regs(&regs).map_err(|e| os("KVM_SET_REGS", &e))
    }

    fn write_run_u64(&self, off: usize, v: u64) {
        // SAFETY: `off` + 8 is inside the kvm_run mapping (offsets < 288 of
        // at least one page); only this thread writes there, and never while
        // KVM_RUN is executing (we are not inside the ioctl).
        unsafe { std::ptr::write_volatile(self.run.as_ptr().add(off).cast::<u64>(), v) }
    }

    /// One raw `KVM_RUN`: resets `exit_reason`, records the thread for
    /// kicks, runs, and snapshots the bytes the decoder needs.
    fn kvm_run(&mut self) -> RunResult {
        // SAFETY: offset 8 is `exit_reason` (u32, 4-aligned) inside the
        // mapping; resetting it means a failed run can never be decoded
        // from a stale exit_reason 39.
        unsafe {
            std::ptr::write_volatile(self.run.as_ptr().add(OFF_EXIT_REASON).cast::<u32>(), 0)
        };
        self.kick.set_running(true);
        let r = crate::sys::run(fd_of(&self.fd));
        self.kick.set_running(false);
        self.snapshot();
        match r {
            Ok(()) => RunResult::Ok,
            Err(errno) => RunResult::Err(errno),
        }
    }

    /// Copies `kvm_run` bytes 8..288 (header after `immediate_exit`, plus the
    /// exit union) and, for `out` exits, the data bytes at `data_offset`.
    ///
    /// The data bytes are stored right after the header and the snapshot's
    /// `data_offset` is rewritten to point there, so the snapshot stays 292
    /// bytes at most instead of growing to `data_offset + size` (usually one
    /// page past `kvm_run`) and being zero-filled on every I/O exit.
    fn snapshot(&mut self) {
        let len = self.run.len() as usize;
        // Bytes 0..8 stay zero; 8..288 are overwritten below.
        self.buf.truncate(RUN_HEADER_LEN);
        self.buf.resize(RUN_HEADER_LEN, 0);
        // SAFETY: bytes 8..288 are inside the mapping and only written by the
        // kernel during KVM_RUN on this thread, which has returned.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.run.as_ptr().add(8),
                self.buf.as_mut_ptr().add(8),
                RUN_HEADER_LEN - 8,
            );
        }
        if abi::exit_reason(&self.buf) != Ok(KVM_EXIT_IO) || self.buf[32] != 1 {
            return;
        }
        let size = usize::from(self.buf[33]).min(4);
        let off = u64::from_ne_bytes(self.buf[40..48].try_into().unwrap_or([0xff; 8]));
        let Ok(off) = usize::try_from(off) else {
            return;
        };
        if off < RUN_HEADER_LEN || off.checked_add(size).is_none_or(|e| e > len) {
            return;
        }
        self.buf.resize(RUN_HEADER_LEN + size, 0);
        // SAFETY: `[off, off+size)` was bounds-checked against the mapping
        // length above; the kernel wrote it before KVM_RUN returned. The
        // destination is the `size` bytes just added after the header.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.run.as_ptr().add(off),
                self.buf.as_mut_ptr().add(RUN_HEADER_LEN),
                size,
            );
        }
        // `io.data_offset` (union offset 8) now names the copy.
        self.buf[40..48].copy_from_slice(&(RUN_HEADER_LEN as u64).to_ne_bytes());
    }

    /// Applies a completed port-I/O hypercall's return value to RAX.
    fn apply_pending(&mut self) -> Result<(), BackendError> {
        if let Pending::PortIo(ret) = self.pending {
            self.set_rax(ret as u64)?;
        }
        self.pending = Pending::None;
        Ok(())
    }

    /// Handles an `out` to one of privmem's ports: `Some(exit)` to return,
    /// `None` when the guest was resumed without an exit (emulated
    /// synchronous hypercall error).
    fn protocol(&mut self, io: IoExit) -> Result<Option<Exit>, BackendError> {
        if io.port == ports::SYNC && io.size == 4 {
            // A 32-bit tag travels as the port data: no register read.
            let tag = u64::from(io.data);
            return Ok(Some(Exit::Report(GuestReport::Sync { tag })));
        }
        let r = self.get_regs()?;
        let report = match io.port {
            ports::SYNC => GuestReport::Sync { tag: r.rbx },
            ports::CHECK_PASSED => GuestReport::CheckPassed,
            ports::CHECK_FAILED => GuestReport::CheckFailed {
                gpa: Gpa(r.rdi),
                seen: r.rdx as u8,
                expected: r.rax as u8,
            },
            ports::RET_MISMATCH => GuestReport::RetMismatch {
                gpa: Gpa(r.rbx),
                ret: r.rax as i64,
                expected: r.rcx as i64,
            },
            _ => return self.emulate_hypercall(&r),
        };
        Ok(Some(Exit::Report(report)))
    }

    /// Emulates KVM's `____kvm_emulate_hypercall` for the port-I/O transport
    /// (docs/semantics/hypercall.md, "KVM's checks" and "The exit"):
    /// synchronous errors go straight into RAX with no exit; a valid
    /// `MAP_GPA_RANGE` with the exit enabled becomes `Exit::Hypercall` with
    /// `ret` preset to 0. Recorded as the `hypercall` emulation.
    fn emulate_hypercall(&mut self, r: &kvm_regs) -> Result<Option<Exit>, BackendError> {
        self.vm.note_emulation(Emulation::PortIoHypercall);
        let (nr, gpa, npages) = (r.rax, r.rbx, r.rcx);
        let enabled =
            self.vm.exit_hypercall_mask.load(Ordering::SeqCst) & EXIT_HYPERCALL_MAP_GPA_RANGE != 0;
        let sync_ret = if nr != KVM_HC_MAP_GPA_RANGE || !enabled {
            Some(hc_ret::ENOSYS)
        } else if !gpa.is_multiple_of(PAGE_SIZE)
            || npages == 0
            || (gpa >> 12).checked_add(npages).is_none()
        {
            Some(hc_ret::EINVAL)
        } else {
            None
        };
        if let Some(ret) = sync_ret {
            // KVM also leaves the result in kvm_run.hypercall.ret.
            self.write_run_u64(OFF_HYPERCALL_RET, ret as u64);
            self.set_rax(ret as u64)?;
            return Ok(None);
        }
        self.pending = Pending::PortIo(hc_ret::OK);
        let args = [gpa, npages, r.rdx, 0, 0, 0];
        Ok(Some(Exit::Hypercall(Hypercall::decode(nr, args))))
    }
}

/// Memory ranges (`[start, end)`) the ops touch.
fn op_ranges(ops: &[GuestOp]) -> Result<Vec<(u64, u64)>, BackendError> {
    let mut v = Vec::new();
    for op in ops {
        let (gpa, len) = match *op {
            GuestOp::Write { gpa, len, .. } | GuestOp::Read { gpa, len, .. } => (gpa, len),
            _ => continue,
        };
        if len == 0 {
            continue;
        }
        let end = gpa.checked_add(len).ok_or_else(|| {
            BackendError::invalid(
                "load_program",
                format!("op range at {gpa} with length {len:#x} wraps"),
            )
        })?;
        v.push((gpa.raw(), end.raw()));
    }
    Ok(v)
}

impl Vcpu for KvmVcpu {
    fn index(&self) -> u32 {
        self.index
    }

    fn load_program(&mut self, ops: &[GuestOp]) -> Result<(), BackendError> {
        let code = compile(ops, self.vm.config.transport)
            .map_err(|e| BackendError::invalid("load_program", e.to_string()))?;
        let ranges = op_ranges(ops)?;
        let old = self.area.take();
        let area = runtime_area::install(&self.vm, self.index, old, &ranges, &code)?;
        let mut sregs = self.fd.get_sregs().map_err(|e| os("KVM_GET_SREGS", &e))?;
        area.layout.setup_sregs(&mut sregs);
        let regs = area.layout.regs();
        self.area = Some(area);
        self.fd
            .set_sregs(&sregs)
            .map_err(|e| os("KVM_SET_SREGS", &e))?;
        self.fd
            .set_regs(&regs)
            .map_err(|e| os("KVM_SET_REGS", &e))?;
        self.pending = Pending::None;
        Ok(())
    }

    fn run(&mut self) -> Result<Exit, RunError> {
        loop {
            self.apply_pending()?;
            let result = self.kvm_run();
            match result {
                RunResult::Err(EINTR) => {
                    immediate_exit(&self.run).store(0, Ordering::SeqCst);
                    return Err(RunError::Interrupted);
                }
                RunResult::Err(EAGAIN) => return Err(RunError::Again),
                _ => {}
            }
            let exit = abi::decode_exit(result, &self.buf)?;
            match exit {
                Exit::Io(io) if io.write && ports::ALL.contains(&io.port) => {
                    if let Some(exit) = self.protocol(io)? {
                        return Ok(exit);
                    }
                }
                Exit::Hypercall(_) => {
                    self.pending = Pending::Kernel;
                    return Ok(exit);
                }
                Exit::Mmio(m) if !m.write => {
                    // No device answers: if the caller re-enters, the read
                    // completes with all-ones (an open bus) instead of
                    // whatever an earlier MMIO exit left in mmio.data.
                    self.write_run_u64(OFF_MMIO_DATA, u64::MAX);
                    return Ok(exit);
                }
                other => return Ok(other),
            }
        }
    }

    fn complete_hypercall(&mut self, ret: i64) -> Result<(), BackendError> {
        match self.pending {
            Pending::Kernel => {
                self.write_run_u64(OFF_HYPERCALL_RET, ret as u64);
                Ok(())
            }
            Pending::PortIo(_) => {
                self.pending = Pending::PortIo(ret);
                Ok(())
            }
            Pending::None => Err(BackendError::invalid(
                "complete_hypercall",
                "no hypercall exit is pending",
            )),
        }
    }

    fn kicker(&self) -> Arc<dyn Kick> {
        Arc::clone(&self.kick) as Arc<dyn Kick>
    }

    fn pre_fault_memory(
        &mut self,
        range: &mut privmem_core::PreFaultRange,
    ) -> Result<(), BackendError> {
        // As in `run`: a kick signals this thread, so a pre-fault that the
        // kernel keeps retrying (6.12, a memslot being deleted) ends EINTR.
        self.kick.set_running(true);
        let r = crate::memops::pre_fault_memory(fd_of(&self.fd), range);
        self.kick.set_running(false);
        r
    }
}

impl Drop for KvmVcpu {
    fn drop(&mut self) {
        if let Some(area) = self.area.take() {
            runtime_area::remove(&self.vm, area);
        }
    }
}

impl KvmVcpu {
    /// This vCPU's KVM statistics (`KVM_GET_STATS_FD`), e.g. `exits`,
    /// `pf_fixed`, `insn_emulation`, `io_exits`.
    ///
    /// # Errors
    /// `Os` if the kernel has no binary stats for vCPUs.
    pub fn stats(&self) -> Result<Vec<(String, u64)>, BackendError> {
        crate::stats::read_stats(fd_of(&self.fd))
    }

    /// Registers, system registers and MSR_STAR, for diagnostics.
    pub fn debug_state(&self) -> String {
        let mut msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
            index: crate::guest::layout::MSR_STAR,
            ..Default::default()
        }])
        .ok();
        let star = msrs
            .as_mut()
            .map(|m| (self.fd.get_msrs(m), m.as_slice()[0].data));
        format!(
            "{:x?}\n{:x?}\nstar {:x?}",
            self.fd.get_regs(),
            self.fd.get_sregs(),
            star
        )
    }
}
