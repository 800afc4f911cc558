//! [`TinyVmm`] (the VM, its memory, privmem's engine over it) and
//! [`TinyVcpu`] (its one vCPU and the exit loop).

use std::fs::File;
use std::sync::Arc;

use kvm_bindings::{kvm_enable_cap, KVM_CAP_EXIT_HYPERCALL};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use privmem_core::engine::{Engine, EngineConfig, HypercallExit};
use privmem_core::exit::EXIT_HYPERCALL_MAP_GPA_RANGE;
use privmem_core::slot::{GmemBinding, SharedBinding, SlotDesc};
use privmem_core::{GmemFlags, Gpa, GpaRange, SlotId, VmType, PAGE_SIZE};
use privmem_kvm::vmm::{self, GmemFile, KvmExit, SharedRegion, VcpuPreFault, VmFdBackend};
use privmem_mem::{Memfd, Seal};
use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestRegionMmap, MemoryRegionAddress};

use crate::error::VmmError;
use crate::handler::{Conversions, MinimalHandler, PrivmemHandler, Verdict};
use crate::{CODE, SW_PROTECTED_VM};

/// How to build a [`TinyVmm`].
#[derive(Clone, Copy, Debug)]
pub struct VmmConfig {
    /// Guest memory in bytes (one slot at GPA 0, a multiple of 4 KiB).
    pub mem: u64,
    /// privmem's engine.
    pub engine: EngineConfig,
}

/// A VMM that owns everything a VMM owns: its `VmFd` (a
/// `KVM_X86_SW_PROTECTED_VM` with `KVM_HC_MAP_GPA_RANGE` forwarded), its
/// guest memory (a memfd mapped through vm-memory), its guest_memfd, and
/// privmem's engine over them (`VmFdBackend`), which made the one memslot
/// from one slot description.
#[derive(Debug)]
pub struct TinyVmm {
    vm: Arc<VmFd>,
    mmap: Arc<MmapRegion>,
    engine: Arc<Engine<VmFdBackend>>,
    /// A duplicate of the shared memfd, for [`MinimalHandler`]. (Not of
    /// the guest_memfd: only the engine holds that, so closing it through
    /// the engine releases the file, as the example shows.)
    shared: File,
}

impl TinyVmm {
    /// Creates the VM, its memory and its memslot.
    ///
    /// # Errors
    /// The variant naming the step that failed.
    pub fn new(kvm: &Kvm, config: VmmConfig) -> Result<TinyVmm, VmmError> {
        let vm = Arc::new(
            kvm.create_vm_with_type(SW_PROTECTED_VM)
                .map_err(VmmError::CreateVm)?,
        );
        let mut cap = kvm_enable_cap {
            cap: KVM_CAP_EXIT_HYPERCALL,
            ..Default::default()
        };
        cap.args[0] = EXIT_HYPERCALL_MAP_GPA_RANGE;
        vm.enable_cap(&cap).map_err(VmmError::EnableCap)?;
        let len = usize::try_from(config.mem).map_err(|_| VmmError::Size(config.mem))?;
        if config.mem == 0 || !config.mem.is_multiple_of(PAGE_SIZE) {
            return Err(VmmError::Size(config.mem));
        }
        // The VMM's memory: a memfd (so either side can punch it), mapped
        // shared through vm-memory; a guest_memfd for the private side.
        let memfd = Memfd::create("tinyvmm-ram", config.mem, Seal::None)?;
        let shared = memfd.file()?;
        let (prot, flags) = (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED);
        let fo = FileOffset::new(memfd.file()?, 0);
        let mmap = Arc::new(MmapRegion::build(Some(fo), len, prot, flags)?);
        let gmem = GmemFile::create(&vm, config.mem, GmemFlags(0))?;
        let engine = Engine::new(
            VmFdBackend::new(vm.clone(), VmType::SwProtected),
            config.engine,
        );
        engine.add_slot(SlotDesc {
            id: SlotId(0),
            range: GpaRange::new(Gpa(0), config.mem)?,
            gmem: Some(GmemBinding {
                file: gmem,
                offset: 0,
            }),
            shared: Some(SharedBinding {
                mem: SharedRegion::new(mmap.clone()),
                offset: 0,
            }),
        })?;
        Ok(TinyVmm {
            vm,
            mmap,
            engine: Arc::new(engine),
            shared,
        })
    }

    /// The VM.
    pub fn vm(&self) -> &Arc<VmFd> {
        &self.vm
    }

    /// privmem's engine.
    pub fn engine(&self) -> &Arc<Engine<VmFdBackend>> {
        &self.engine
    }

    /// The guest memory as a vm-memory region at GPA 0.
    ///
    /// # Errors
    /// `Region` if vm-memory refuses the region (never for this mapping).
    pub fn ram(&self) -> Result<GuestRegionMmap, VmmError> {
        GuestRegionMmap::with_arc(self.mmap.clone(), GuestAddress(0)).ok_or(VmmError::Region)
    }

    /// vCPU 0, registers not yet set ([`TinyVcpu::start`]).
    ///
    /// # Errors
    /// `CreateVcpu`.
    pub fn create_vcpu(&self) -> Result<TinyVcpu, VmmError> {
        let fd = self.vm.create_vcpu(0).map_err(VmmError::CreateVcpu)?;
        Ok(TinyVcpu { fd })
    }

    /// privmem's per-exit calls for `vcpu`.
    ///
    /// # Errors
    /// `Backend` if the vCPU fd cannot be duplicated for pre-faults.
    pub fn privmem_handler(&self, vcpu: &TinyVcpu) -> Result<PrivmemHandler, VmmError> {
        let prefault = VcpuPreFault::new(&vcpu.fd)?;
        Ok(PrivmemHandler::new(self.engine.clone(), Some(prefault)))
    }

    /// The hand-written minimal handler over the same VM and files (it
    /// holds a duplicate of the guest_memfd while it lives).
    ///
    /// # Errors
    /// `Dup` if a file cannot be duplicated, `GmemClosed` if the
    /// guest_memfd was closed.
    pub fn minimal_handler(&self) -> Result<MinimalHandler, VmmError> {
        let slots = self.engine.slots();
        let binding = slots.first().and_then(|s| s.gmem.as_ref());
        let gmem = binding.ok_or(VmmError::GmemClosed)?;
        let gmem = gmem.file.file().try_clone().map_err(VmmError::Dup)?;
        let shared = self.shared.try_clone().map_err(VmmError::Dup)?;
        Ok(MinimalHandler::new(self.vm.clone(), gmem, shared))
    }
}

/// How a run of the exit loop ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The guest halted.
    Halted,
    /// The device model asked to stop.
    Device,
    /// The conversion handler stopped the vCPU, and why.
    Stopped(String),
}

/// What the device model says after a port write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Re-enter the guest.
    Continue,
    /// End the run ([`Ended::Device`]).
    Stop,
}

/// The VMM's vCPU.
#[derive(Debug)]
pub struct TinyVcpu {
    fd: VcpuFd,
}

impl TinyVcpu {
    /// Writes `code` at [`CODE`] and points the vCPU at it, in real mode with
    /// `cs` = `ds` = 0 (`ds` limit 64 KiB, as at reset) and the general
    /// registers zeroed.
    ///
    /// # Errors
    /// `Memory` if the code does not fit, `Regs` if KVM refuses the state.
    pub fn start(&mut self, vmm: &TinyVmm, code: &[u8]) -> Result<(), VmmError> {
        self.start_with_ds_limit(vmm, code, 0xffff)
    }

    /// [`start`](Self::start) with `ds` reaching 4 GiB ("unreal mode": a
    /// 4 GiB limit in `ds`'s descriptor cache, which real mode keeps), so
    /// code with 32-bit addresses (`0x67`) reaches all of guest memory, as
    /// [`guest::first_touch`](crate::guest::first_touch) does.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_flat(&mut self, vmm: &TinyVmm, code: &[u8]) -> Result<(), VmmError> {
        self.start_with_ds_limit(vmm, code, 0xffff_ffff)
    }

    /// Loads `code`, sets real mode with `cs` = `ds` = 0 and `ds`'s limit,
    /// zeroes the general registers and points `rip` at the code.
    fn start_with_ds_limit(
        &mut self,
        vmm: &TinyVmm,
        code: &[u8],
        ds_limit: u32,
    ) -> Result<(), VmmError> {
        vmm.ram()?.write_slice(code, MemoryRegionAddress(CODE))?;
        let mut sregs = self.fd.get_sregs().map_err(VmmError::Regs)?;
        (sregs.cs.base, sregs.cs.selector) = (0, 0);
        (sregs.ds.base, sregs.ds.selector, sregs.ds.limit) = (0, 0, ds_limit);
        sregs.ds.g = u8::from(ds_limit > 0xf_ffff);
        self.fd.set_sregs(&sregs).map_err(VmmError::Regs)?;
        let regs = kvm_bindings::kvm_regs {
            rip: CODE,
            rflags: 2,
            ..Default::default()
        };
        self.fd.set_regs(&regs).map_err(VmmError::Regs)
    }

    /// The exit loop: runs the guest until it halts, the device model stops
    /// it or `conv` does. Hypercall and memory-fault exits go to `conv`,
    /// port writes to `device(port, data)`; `EINTR`/`EAGAIN` re-enter.
    ///
    /// # Errors
    /// `Run` if `KVM_RUN` fails otherwise, `Device` with the device model's
    /// error, `UnexpectedExit` for any other exit.
    pub fn run<C: Conversions, D: FnMut(u16, &[u8]) -> Result<Flow, String>>(
        &mut self,
        conv: &mut C,
        mut device: D,
    ) -> Result<Ended, VmmError> {
        loop {
            let exit = match vmm::run(&mut self.fd) {
                Ok(KvmExit::MemoryFault { exit, errno }) => match conv.memory_fault(exit, errno) {
                    Verdict::Resume => continue,
                    Verdict::Stop(why) => return Ok(Ended::Stopped(why)),
                    Verdict::Poisoned(why) => return Err(VmmError::Poisoned(why)),
                },
                Ok(KvmExit::Other(exit)) => exit,
                Err(e) if matches!(e.errno(), libc::EINTR | libc::EAGAIN) => continue,
                Err(e) => return Err(VmmError::Run(e)),
            };
            conv.other_exit();
            match exit {
                VcpuExit::Hypercall(hc) => {
                    let (nr, args) = (hc.nr, hc.args);
                    *hc.ret = conv.hypercall(HypercallExit { nr, args }) as u64;
                }
                VcpuExit::IoOut(port, data) => match device(port, data) {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Stop) => return Ok(Ended::Device),
                    Err(e) => return Err(VmmError::Device(e)),
                },
                VcpuExit::Hlt => return Ok(Ended::Halted),
                other => return Err(VmmError::UnexpectedExit(format!("{other:?}"))),
            }
        }
    }
}
