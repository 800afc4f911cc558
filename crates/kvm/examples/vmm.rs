//! A tiny VMM that adopts privmem for its private memory.
//!
//! It owns everything a VMM owns: its `VmFd` (a `KVM_X86_SW_PROTECTED_VM`),
//! its guest memory (a vm-memory mapping), its guest_memfd, its vCPU and
//! its exit loop. privmem comes in only through the public API: the
//! engine's contract over the `VmFd` (`VmFdBackend`), one slot description,
//! a conversion listener, and the two per-exit calls. The guest is a few
//! hand-assembled real-mode instructions that convert with real `vmmcall`
//! exits (`KVM_HC_MAP_GPA_RANGE`), discard on.
//!
//! Hosts without the sw-protected VM type or guest_memfd (a PVM host, most
//! distribution kernels) are told apart and skipped with exit status 0.
//! `rig/run --example vmm` runs it on real KVM inside the rig.

use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use kvm_bindings::{kvm_enable_cap, KVM_CAP_EXIT_HYPERCALL, KVM_CAP_GUEST_MEMFD, KVM_CAP_VM_TYPES};
use kvm_ioctls::{Kvm, VcpuExit, VmFd};
use privmem_core::decide::DiscardPolicy;
use privmem_core::engine::{Engine, EngineConfig, HypercallExit, PrefaultPolicy, VcpuAction};
use privmem_core::listener::{Conversion, ConversionListener};
use privmem_core::slot::{GmemBinding, SharedBinding, SlotDesc};
use privmem_core::{GmemFlags, Gpa, GpaRange, SlotId, VmType};
use privmem_kvm::vmm::{self, GmemFile, KvmExit, SharedRegion, VcpuPreFault, VmFdBackend};
use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, GuestAddress, GuestRegionMmap, MemoryRegionAddress};

const MEM: u64 = 2 << 20;
const CODE: u64 = 0x1000;
const SW_PROTECTED_VM: u64 = 1;
/// Guest ports: a hypercall's return value, a byte read at 0x8000, "unplug".
const PORT_RET: u16 = 0xf0;
const PORT_READ: u16 = 0xf1;
const PORT_UNPLUG: u16 = 0xf2;

type Error = Box<dyn std::error::Error>;

/// The guest, 16-bit real mode at `CODE`, data pages at 0x8000 and 0x9000.
#[rustfmt::skip]
const GUEST: &[u8] = &[
    0xc6, 0x06, 0x00, 0x80, 0x5a,       // mov byte [0x8000], 0x5a  (shared data)
    0x66, 0xb8, 0x0c, 0, 0, 0,          // mov eax, 12              (KVM_HC_MAP_GPA_RANGE)
    0x66, 0xbb, 0x00, 0x80, 0, 0,       // mov ebx, 0x8000
    0x66, 0xb9, 0x01, 0, 0, 0,          // mov ecx, 1               (pages)
    0x66, 0xba, 0x10, 0, 0, 0,          // mov edx, 0x10            (ENCRYPTED: to private)
    0x0f, 0x01, 0xd9,                   // vmmcall
    0xe6, 0xf0,                         // out 0xf0, al             (ret)
    0xa0, 0x00, 0x80, 0xe6, 0xf1,       // mov al, [0x8000]; out 0xf1, al  (private view)
    0xc6, 0x06, 0x00, 0x80, 0x77,       // mov byte [0x8000], 0x77  (private data)
    0x66, 0xb8, 0x0c, 0, 0, 0,          // mov eax, 12
    0x66, 0xba, 0x00, 0, 0, 0,          // mov edx, 0               (to shared)
    0x0f, 0x01, 0xd9, 0xe6, 0xf0,       // vmmcall; out 0xf0, al
    0xa0, 0x00, 0x80, 0xe6, 0xf1,       // mov al, [0x8000]; out 0xf1, al  (shared view)
    0x66, 0xb8, 0x0c, 0, 0, 0,          // mov eax, 12
    0x66, 0xbb, 0x00, 0x90, 0, 0,       // mov ebx, 0x9000
    0x66, 0xba, 0x10, 0, 0, 0,          // mov edx, 0x10            (to private)
    0x0f, 0x01, 0xd9, 0xe6, 0xf0,       // vmmcall; out 0xf0, al
    0xe6, 0xf2,                         // out 0xf2, al             (the VMM unplugs guest_memfd)
    0xa0, 0x00, 0x90,                   // mov al, [0x9000]         (private, no backing left)
    0xf4,                               // hlt (never reached)
];

/// A device model's view: prints every committed conversion.
struct Dma;
impl ConversionListener for Dma {
    fn name(&self) -> &str {
        "example-dma"
    }
    fn committed(&self, c: &Conversion<'_>) {
        let (r, to, n) = (c.range, c.to.name(), c.pages());
        println!("listener: {r} -> {to} ({n} pages, {:?})", c.origin);
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(Some(skip)) => {
            println!("vmm: SKIP: {skip}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmm: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What this host lacks for the example, if anything.
fn missing(kvm: &Kvm) -> Option<String> {
    let types = kvm.check_extension_raw(KVM_CAP_VM_TYPES.into());
    if types < 0 || types as u64 & (1 << SW_PROTECTED_VM) == 0 {
        return Some(format!(
            "this host has no KVM_X86_SW_PROTECTED_VM (KVM_CAP_VM_TYPES={types:#x}); \
             run it in the rig: rig/run --example vmm"
        ));
    }
    if kvm.check_extension_raw(KVM_CAP_GUEST_MEMFD.into()) <= 0 {
        return Some("this host has no guest_memfd (KVM_CAP_GUEST_MEMFD=0)".into());
    }
    None
}

fn run() -> Result<Option<String>, Error> {
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => return Ok(Some(format!("no /dev/kvm ({e})"))),
    };
    if let Some(why) = missing(&kvm) {
        return Ok(Some(why));
    }
    let vm = Arc::new(kvm.create_vm_with_type(SW_PROTECTED_VM)?);
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_EXIT_HYPERCALL,
        ..Default::default()
    };
    cap.args[0] = 1 << 12; // forward KVM_HC_MAP_GPA_RANGE
    vm.enable_cap(&cap)?;

    // The VMM's memory: shared anonymous memory through vm-memory, and a
    // guest_memfd for the private side. One description makes the memslot.
    let (prot, flags) = (
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED | libc::MAP_ANONYMOUS,
    );
    let mmap = Arc::new(MmapRegion::build(None, MEM as usize, prot, flags)?);
    let ram = GuestRegionMmap::with_arc(mmap.clone(), GuestAddress(0)).ok_or("region")?;
    ram.write_slice(GUEST, MemoryRegionAddress(CODE))?;
    let config = EngineConfig {
        discard: DiscardPolicy::Discard,
        prefault: PrefaultPolicy::ToPrivate,
        ..EngineConfig::default()
    };
    let engine = Engine::new(VmFdBackend::new(vm.clone(), VmType::SwProtected), config);
    engine.add_slot(SlotDesc {
        id: SlotId(0),
        range: GpaRange::new(Gpa(0), MEM)?,
        gmem: Some(GmemBinding {
            file: GmemFile::create(&vm, MEM, GmemFlags(0))?,
            offset: 0,
        }),
        shared: Some(SharedBinding {
            mem: SharedRegion::new(mmap),
            offset: 0,
        }),
    })?;
    engine.add_listener(Arc::new(Dma));
    println!(
        "vmm: sw-protected VM, 2 MiB slot (guest_memfd + shared), KVM_CAP_PRE_FAULT_MEMORY={}",
        engine.support().pre_fault_memory
    );
    let reads = exit_loop(&vm, &engine, &ram)?;
    // The guest's private view of 0x8000 was a fresh page, and after the
    // round trip its shared view reads zeros: neither 0x5a nor 0x77 left.
    if reads != [0, 0] {
        return Err(format!("guest read {reads:#04x?}, expected zeros").into());
    }
    println!("vmm: attribute map at the end:");
    for run in engine.attr_map().runs(GpaRange::new(Gpa(0), MEM)?) {
        println!(
            "  {} {}",
            run.range,
            if run.private { "private" } else { "shared" }
        );
    }
    let stats = &engine.stats;
    let (calls, errors) = (
        stats.prefault_calls.load(Relaxed),
        stats.prefault_errors.load(Relaxed),
    );
    println!("vmm: OK (KVM_PRE_FAULT_MEMORY calls: {calls}, errors ignored: {errors})");
    Ok(None)
}

/// The vCPU's exit loop; returns the bytes the guest reported reading.
fn exit_loop(
    vm: &VmFd,
    engine: &Engine<VmFdBackend>,
    ram: &GuestRegionMmap,
) -> Result<Vec<u8>, Error> {
    let mut vcpu = vm.create_vcpu(0)?;
    let mut sregs = vcpu.get_sregs()?;
    (sregs.cs.base, sregs.cs.selector) = (0, 0);
    vcpu.set_sregs(&sregs)?;
    let mut regs = vcpu.get_regs()?;
    (regs.rip, regs.rflags) = (CODE, 2);
    vcpu.set_regs(&regs)?;
    let mut prefault = VcpuPreFault::new(&vcpu)?;
    let mut guard = engine.repeat_guard();
    let mut reads = Vec::new();
    loop {
        let exit = match vmm::run(&mut vcpu)? {
            KvmExit::MemoryFault { exit, errno } => {
                match engine.handle_memory_fault(&mut guard, exit, errno) {
                    VcpuAction::Resume => continue,
                    VcpuAction::Stop(why) => {
                        println!("vmm: vCPU stopped as expected: {why}");
                        return Ok(reads);
                    }
                    VcpuAction::Poisoned { gpa, .. } => {
                        return Err(format!("poisoned page at {gpa}").into())
                    }
                }
            }
            KvmExit::Other(exit) => exit,
        };
        guard.reset();
        match exit {
            VcpuExit::Hypercall(hc) => {
                let (nr, args) = (hc.nr, hc.args);
                let before: u8 = ram.read_obj(MemoryRegionAddress(0x8000))?;
                println!("vmm: host view of the shared page before: {before:#04x}");
                let ret = engine.handle_hypercall(
                    &mut guard,
                    HypercallExit { nr, args },
                    Some(&mut prefault),
                );
                println!(
                    "vmm: MAP_GPA_RANGE({:#x}, {}, {:#x}) = {ret}",
                    args[0], args[1], args[2]
                );
                *hc.ret = ret as u64;
            }
            VcpuExit::IoOut(PORT_RET, d) if d[0] != 0 => {
                return Err(format!("hypercall failed: {}", d[0] as i8).into())
            }
            VcpuExit::IoOut(PORT_READ, d) => {
                println!("vmm: guest read {:#04x} at 0x8000", d[0]);
                let host: u8 = ram.read_obj(MemoryRegionAddress(0x8000))?;
                println!("vmm: host view of the shared page: {host:#04x}");
                if host != 0 {
                    return Err("the shared page was not discarded".into());
                }
                reads.push(d[0]);
            }
            VcpuExit::IoOut(PORT_UNPLUG, _) => {
                engine.close_gmem(SlotId(0))?;
                println!("vmm: guest_memfd closed: the private page at 0x9000 has no backing now");
            }
            VcpuExit::IoOut(..) => {}
            VcpuExit::Hlt => {
                return Err("the guest halted: the unresolvable fault never came".into())
            }
            other => return Err(format!("unexpected exit {other:?}").into()),
        }
    }
}
