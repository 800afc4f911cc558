//! The model vCPU: executes [`GuestOp`]s directly through the memory model.
//!
//! Semantics (hardware-like):
//! - `write`/`read` go page by page through [`crate::fault::resolve`]; runs of
//!   pages that resolve alike are moved with one `pwrite`/`pread` (≤ 1 MiB).
//! - A memory-fault exit leaves the vCPU at the faulting page: the next `run`
//!   **retries** it (after the runtime converted, deleted a slot, ...).
//! - An access that reaches no memory (no slot, NULL `userspace_addr`, a
//!   write to a READONLY slot) exits with `KVM_EXIT_MMIO` at the granularity
//!   of privmem's compiled guest code on KVM: writes 1 byte per exit
//!   (`rep stosb`); reads 8 bytes per exit (qword compares from the op's
//!   start; a mismatching qword is rescanned 1 byte per exit), the tail 1
//!   byte per exit. The next `run` completes that access as emulated MMIO:
//!   writes are dropped, reads return `run->mmio.data` as userspace left it —
//!   privmem's runtime never fills it, so (as on KVM) it holds the last MMIO
//!   write's byte, zeros initially.
//! - `map` issues `KVM_HC_MAP_GPA_RANGE` with the kernel's checks (docs/semantics/hypercall.md):
//!   -1000 when the exit is not enabled, -22 for an unaligned GPA, zero
//!   pages or a wrapping range, otherwise an exit; the next `run` puts
//!   `kvm_run.hypercall.ret` in RAX: 0 if userspace did not complete the
//!   exit on profiles that preset it, else what userspace last wrote
//!   ([`crate::KernelProfile::presets_hypercall_ret`]; 6.12 does not). A differing `expect_ret` reports
//!   `RetMismatch` and stops the vCPU.
//! - `read` reports `CheckPassed`, or `CheckFailed` at the first bad byte and
//!   stops. A stopped or halted vCPU returns `Hlt` forever. Running past the
//!   last op is a halt; an access whose range wraps the address space is a
//!   `Shutdown` (triple fault) and stops the vCPU.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use privmem_core::backend::{Access, GuestOp, Kick, RunError, Vcpu};
use privmem_core::error::Result;
use privmem_core::exit::{hc_ret, EXIT_HYPERCALL_MAP_GPA_RANGE, KVM_HC_MAP_GPA_RANGE};
use privmem_core::PreFaultRange;
use privmem_core::{BackendError, Errno, Exit, Gpa, GuestReport, Hypercall, MmioExit, PAGE_SIZE};

use crate::backing::{FillBuf, Memfd, MAX_IO};
use crate::fault::{resolve, Resolved};
use crate::inject::InjectOp;
use crate::kick::ModelKick;
use crate::state::VmInner;
use crate::userspace::Userspace;

const OP_RUN: &str = "KVM_RUN";

/// What the vCPU owes the guest on the next entry.
#[derive(Clone, Copy, Debug)]
enum Pending {
    None,
    /// A `KVM_EXIT_HYPERCALL` awaiting completion: the next entry puts
    /// `kvm_run.hypercall.ret` in RAX (`complete_hypercall_exit`).
    Hypercall {
        gpa: u64,
        expect: Option<i64>,
    },
    /// A `KVM_EXIT_MMIO` for `len` bytes at the current position.
    Mmio {
        len: u64,
    },
}

/// Control flow inside one entry.
enum Flow {
    Continue,
    Exit(Exit),
    /// Budget exhausted or kicked.
    Yield,
}

/// A model vCPU. Deterministic: the same program over the same VM state
/// produces the same exits.
#[derive(Debug)]
pub struct ModelVcpu {
    vm: Arc<VmInner>,
    /// Keeps the VM's userspace-held guest_memfd mappings alive (as a KVM
    /// backend vCPU keeps its VM's slot table).
    _user: Arc<Userspace>,
    index: u32,
    program: Vec<GuestOp>,
    pc: usize,
    /// Bytes of the current read/write op already done.
    progress: u64,
    pending: Pending,
    done: bool,
    rax: i64,
    /// `kvm_run.hypercall.ret`: written by userspace (`complete_hypercall`)
    /// and, where the profile presets it, by the kernel.
    run_ret: i64,
    kick: Arc<ModelKick>,
    step_limit: Option<u64>,
    fill: FillBuf,
    scratch: Vec<u8>,
    pages: Arc<AtomicU64>,
    /// `run->mmio.data`: what an emulated MMIO read returns (userspace never
    /// fills it; KVM leaves the last MMIO write's bytes there).
    mmio_data: [u8; 8],
    /// Bytes left in a byte-by-byte rescan of a mismatching MMIO qword.
    scan_left: u64,
    /// A program was loaded (the KVM backend then has a runtime-area
    /// memslot, deleted when the vCPU goes).
    loaded: bool,
    /// The MMU root this vCPU has loaded: the VM's `mmu_valid_gen` when it
    /// was loaded, `None` before the first `KVM_RUN` or pre-fault.
    root: Option<u64>,
}

impl Drop for ModelVcpu {
    fn drop(&mut self) {
        if self.loaded {
            self.vm.mmio.memslots_changed();
        }
    }
}

impl ModelVcpu {
    pub(crate) fn new(vm: Arc<VmInner>, user: Arc<Userspace>, index: u32) -> ModelVcpu {
        ModelVcpu {
            vm,
            _user: user,
            index,
            program: Vec::new(),
            pc: 0,
            progress: 0,
            pending: Pending::None,
            done: false,
            rax: 0,
            run_ret: 0,
            kick: Arc::default(),
            step_limit: None,
            fill: FillBuf::default(),
            scratch: Vec::new(),
            pages: Arc::default(),
            mmio_data: [0; 8],
            scan_left: 0,
            loaded: false,
            root: None,
        }
    }

    /// Limits each `run` to `limit` page accesses (each `map`/`sync`/`halt`
    /// counts as one); when the budget runs out before an exit, `run` returns
    /// [`RunError::Interrupted`] with the vCPU resumable. `None` = unlimited.
    pub fn set_step_limit(&mut self, limit: Option<u64>) {
        self.step_limit = limit.map(|l| l.max(1));
    }

    /// Executes at most one page access (or one non-memory op).
    /// `Ok(None)`: progress was made without an exit.
    ///
    /// # Errors
    /// `Interrupted` if kicked; `Backend` if the backing store failed.
    pub fn step(&mut self) -> Result<Option<Exit>, RunError> {
        if self.kick.flag.swap(false, Ordering::AcqRel) {
            return Err(RunError::Interrupted);
        }
        self.exec(1)
    }

    /// Index of the op the vCPU executes next.
    pub fn pc(&self) -> usize {
        self.pc
    }

    /// True once the vCPU halted or stopped (every `run` returns `Hlt`).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The guest's RAX after its last `map` (what the hypercall returned).
    pub fn rax(&self) -> i64 {
        self.rax
    }

    /// Total pages accessed by this vCPU (a shared counter, readable from
    /// other threads through [`ModelVcpu::page_counter`]).
    pub fn pages_accessed(&self) -> u64 {
        self.pages.load(Ordering::Relaxed)
    }

    /// A handle on the page-access counter.
    pub fn page_counter(&self) -> Arc<AtomicU64> {
        self.pages.clone()
    }

    fn exec(&mut self, mut budget: u64) -> Result<Option<Exit>, RunError> {
        match self.complete_pending() {
            Flow::Continue => {}
            Flow::Exit(e) => return Ok(Some(e)),
            Flow::Yield => return Ok(None),
        }
        loop {
            if self.done {
                return Ok(Some(Exit::Hlt));
            }
            let Some(op) = self.program.get(self.pc).copied() else {
                self.done = true;
                return Ok(Some(Exit::Hlt));
            };
            if budget == 0 {
                return Ok(None);
            }
            let flow = match op {
                GuestOp::Write {
                    gpa,
                    len,
                    byte,
                    access,
                } => self.access(gpa.raw(), len, Some(byte), access, &mut budget)?,
                GuestOp::Read {
                    gpa,
                    len,
                    expect,
                    access,
                } => self
                    .access(gpa.raw(), len, None, access, &mut budget)?
                    .or_read_done(self, expect),
                GuestOp::Map {
                    gpa,
                    pages,
                    attrs,
                    expect_ret,
                } => {
                    budget -= 1;
                    self.map(gpa, pages, attrs, expect_ret)
                }
                GuestOp::Sync { tag } => {
                    self.pc += 1;
                    Flow::Exit(Exit::Report(GuestReport::Sync { tag }))
                }
                GuestOp::Halt => {
                    self.done = true;
                    Flow::Exit(Exit::Hlt)
                }
                GuestOp::Spin => self.spin(),
            };
            match flow {
                Flow::Continue => {}
                Flow::Exit(e) => return Ok(Some(e)),
                Flow::Yield => return Ok(None),
            }
        }
    }

    /// A guest looping forever: the vCPU thread stays in `run` until kicked,
    /// as a real vCPU stays in `KVM_RUN` (sleeping briefly, not burning a core).
    fn spin(&self) -> Flow {
        while !self.kick.flag.load(Ordering::Acquire) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Flow::Yield
    }

    /// Finishes what the last exit left pending.
    fn complete_pending(&mut self) -> Flow {
        match std::mem::replace(&mut self.pending, Pending::None) {
            Pending::None => Flow::Continue,
            Pending::Hypercall { gpa, expect } => self.finish_map(gpa, self.run_ret, expect),
            Pending::Mmio { len } => {
                let Some(GuestOp::Read { gpa, expect, .. }) = self.program.get(self.pc).copied()
                else {
                    self.progress += len;
                    return Flow::Continue;
                };
                let data = &self.mmio_data[..len as usize];
                if len > 1 && self.scan_left == 0 {
                    // The qword compare; on a mismatch the guest rescans
                    // the qword byte by byte (one 1-byte exit each).
                    if data.iter().all(|&b| b == expect) {
                        self.progress += len;
                    } else {
                        self.scan_left = len;
                    }
                    return Flow::Continue;
                }
                let seen = data[0];
                if seen != expect {
                    let at = Gpa(gpa.raw() + self.progress);
                    return self.check_failed(at, seen, expect);
                }
                self.scan_left = self.scan_left.saturating_sub(1);
                self.progress += 1;
                Flow::Continue
            }
        }
    }

    fn check_failed(&mut self, gpa: Gpa, seen: u8, expected: u8) -> Flow {
        self.done = true;
        Flow::Exit(Exit::Report(GuestReport::CheckFailed {
            gpa,
            seen,
            expected,
        }))
    }

    /// `KVM_HC_MAP_GPA_RANGE` as `____kvm_emulate_hypercall` handles it.
    fn map(&mut self, gpa: u64, pages: u64, attrs: u64, expect: Option<i64>) -> Flow {
        let enabled = self.vm.hc_mask.load(Ordering::Acquire) & EXIT_HYPERCALL_MAP_GPA_RANGE != 0;
        let ret = if !enabled {
            hc_ret::ENOSYS
        } else if !gpa.is_multiple_of(PAGE_SIZE)
            || pages == 0
            || (gpa / PAGE_SIZE).checked_add(pages).is_none()
        {
            hc_ret::EINVAL
        } else {
            if self.vm.profile.presets_hypercall_ret() {
                self.run_ret = hc_ret::OK;
            }
            self.pending = Pending::Hypercall { gpa, expect };
            let args = [gpa, pages, attrs, 0, 0, 0];
            return Flow::Exit(Exit::Hypercall(Hypercall::decode(
                KVM_HC_MAP_GPA_RANGE,
                args,
            )));
        };
        if self.vm.profile.presets_hypercall_ret() {
            self.run_ret = ret;
        }
        self.finish_map(gpa, ret, expect)
    }

    fn finish_map(&mut self, gpa: u64, ret: i64, expect: Option<i64>) -> Flow {
        self.rax = ret;
        if let Some(expected) = expect.filter(|&e| e != ret) {
            self.done = true;
            return Flow::Exit(Exit::Report(GuestReport::RetMismatch {
                gpa: Gpa(gpa),
                ret,
                expected,
            }));
        }
        self.pc += 1;
        Flow::Continue
    }

    /// Runs the current write (`fill = Some`) or read op from `progress`.
    /// Returns `Continue` when the op's bytes are all done (the caller
    /// finishes the op).
    fn access(
        &mut self,
        gpa: u64,
        len: u64,
        fill: Option<u8>,
        access: Access,
        budget: &mut u64,
    ) -> Result<Flow, RunError> {
        if gpa.checked_add(len).is_none() {
            self.done = true;
            return Ok(Flow::Exit(Exit::Shutdown));
        }
        let expect = match self.program[self.pc] {
            GuestOp::Read { expect, .. } => expect,
            _ => 0,
        };
        while self.progress < len {
            if *budget == 0 || self.kick.flag.load(Ordering::Acquire) {
                return Ok(Flow::Yield);
            }
            let cur = gpa + self.progress;
            let budget_bytes = budget.saturating_mul(PAGE_SIZE) - cur % PAGE_SIZE;
            let want = (len - self.progress).min(MAX_IO).min(budget_bytes);
            let write = fill.is_some();
            let (mem, offset, n): (&Memfd, u64, u64);
            let resolved = resolve(&self.vm, cur, want, access, write);
            match &resolved {
                Resolved::Fault(f) => return Ok(Flow::Exit(Exit::MemoryFault(*f))),
                Resolved::BadHva => {
                    return Err(RunError::Decode(
                        privmem_core::exit::DecodeError::RunFailed {
                            errno: Errno::EFAULT.0,
                        },
                    ))
                }
                Resolved::Mmio { len: n } => {
                    let unit = if self.scan_left > 0 {
                        1
                    } else {
                        mmio_unit(write, self.progress, len).min(*n)
                    };
                    if let Some(byte) = fill {
                        // KVM copies the stored bytes into run->mmio.data.
                        self.mmio_data[0] = byte;
                    }
                    self.pending = Pending::Mmio { len: unit };
                    *budget -= 1;
                    self.count(cur, unit);
                    return Ok(Flow::Exit(Exit::Mmio(MmioExit {
                        gpa: Gpa(cur),
                        len: unit as u8,
                        write,
                    })));
                }
                Resolved::Gmem {
                    file,
                    offset: o,
                    len: l,
                } => (mem, offset, n) = (&file.mem, *o, *l),
                Resolved::Shared {
                    mem: m,
                    offset: o,
                    len: l,
                } => (mem, offset, n) = (m.memfd(), *o, *l),
            }
            let os = |e: Errno| RunError::Backend(BackendError::os(OP_RUN, e));
            match fill {
                Some(byte) => mem.fill_at(offset, n, self.fill.get(byte)).map_err(os)?,
                None => {
                    let bad = mem
                        .find_mismatch(offset, n, expect, &mut self.scratch)
                        .map_err(os)?;
                    if let Some((i, seen)) = bad {
                        return Ok(self.check_failed(Gpa(cur + i), seen, expect));
                    }
                }
            }
            let pages = self.count(cur, n);
            *budget = budget.saturating_sub(pages);
            self.progress += n;
            self.scan_left = 0;
        }
        if fill.is_some() {
            self.pc += 1;
            self.progress = 0;
        }
        Ok(Flow::Continue)
    }

    /// Counts the pages `[gpa, gpa+n)` touches.
    fn count(&self, gpa: u64, n: u64) -> u64 {
        let pages = (gpa + n - 1) / PAGE_SIZE - gpa / PAGE_SIZE + 1;
        self.pages.fetch_add(pages, Ordering::Relaxed);
        pages
    }
}

impl Flow {
    /// For a read op: once its bytes are done, report `CheckPassed`.
    fn or_read_done(self, vcpu: &mut ModelVcpu, _expect: u8) -> Flow {
        match self {
            Flow::Continue => {
                vcpu.pc += 1;
                vcpu.progress = 0;
                Flow::Exit(Exit::Report(GuestReport::CheckPassed))
            }
            other => other,
        }
    }
}

/// Bytes one emulated MMIO access covers, as privmem's compiled guest code
/// issues them on KVM: `write` is `rep stosb` (1 byte per exit); `read`
/// compares qwords from the op's start (8 bytes, or up to the next qword
/// boundary), then the tail byte by byte.
fn mmio_unit(write: bool, progress: u64, len: u64) -> u64 {
    if write {
        return 1;
    }
    let qword_part = len - len % 8;
    if progress < qword_part {
        8 - progress % 8
    } else {
        1
    }
}

fn run_error(e: Errno) -> RunError {
    match e {
        Errno::EINTR => RunError::Interrupted,
        Errno::EAGAIN => RunError::Again,
        e => RunError::Backend(BackendError::os(OP_RUN, e)),
    }
}

impl Vcpu for ModelVcpu {
    fn index(&self) -> u32 {
        self.index
    }

    fn load_program(&mut self, ops: &[GuestOp]) -> Result<()> {
        // privmem's KVM backend installs this vCPU's runtime-area memslot
        // here: a memslot change (see `mmio`).
        self.vm.mmio.memslots_changed();
        self.loaded = true;
        self.program = ops.to_vec();
        self.pc = 0;
        self.progress = 0;
        self.pending = Pending::None;
        self.done = false;
        self.scan_left = 0;
        Ok(())
    }

    fn run(&mut self) -> Result<Exit, RunError> {
        if self.vm.is_dead() {
            return Err(run_error(Errno::EIO));
        }
        if self.kick.flag.swap(false, Ordering::AcqRel) {
            return Err(RunError::Interrupted);
        }
        if let Some(e) = self.vm.inject.check(InjectOp::Run) {
            return Err(run_error(e));
        }
        // vcpu_enter_guest: KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, then
        // kvm_mmu_reload.
        self.root = Some(self.vm.mmu_valid_gen());
        match self.exec(self.step_limit.unwrap_or(u64::MAX))? {
            Some(exit) => Ok(exit),
            None => {
                self.kick.flag.store(false, Ordering::Release);
                Err(RunError::Interrupted)
            }
        }
    }

    fn complete_hypercall(&mut self, ret: i64) -> Result<()> {
        // As the KVM backend: completing with nothing pending is a caller bug.
        match &mut self.pending {
            Pending::Hypercall { .. } => {
                self.run_ret = ret;
                Ok(())
            }
            _ => Err(BackendError::Invalid {
                op: "complete_hypercall",
                why: "no hypercall exit is pending".into(),
            }),
        }
    }

    fn kicker(&self) -> Arc<dyn Kick> {
        self.kick.clone()
    }

    fn pre_fault_memory(&mut self, range: &mut PreFaultRange) -> Result<()> {
        crate::prefault::pre_fault(&self.vm, &self.kick, &mut self.root, range)
    }
}
