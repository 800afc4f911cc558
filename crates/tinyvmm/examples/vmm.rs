//! A tiny VMM that adopts privmem for its private memory.
//!
//! It owns everything a VMM owns ([`TinyVmm`]): its `VmFd` (a
//! `KVM_X86_SW_PROTECTED_VM`), its guest memory (a memfd through
//! vm-memory), its guest_memfd, its vCPU and its exit loop. privmem comes
//! in only through the public API: the engine's contract over the `VmFd`
//! (`VmFdBackend`), one slot description, a conversion listener, and the
//! two per-exit calls (`PrivmemHandler`). The guest
//! (`privmem_tinyvmm::guest::example`) is a few real-mode instructions that
//! convert with real `vmmcall` exits (`KVM_HC_MAP_GPA_RANGE`), discard on.
//! The VMM itself is the library `privmem-tinyvmm`, which `privmem bench
//! embed` measures against the same VMM with a hand-written handler.
//!
//! Hosts without the sw-protected VM type or guest_memfd (a PVM host, most
//! distribution kernels) are told apart and skipped with exit status 0.
//! `rig/run --example vmm` runs it on real KVM inside the rig.

use std::process::ExitCode;
use std::sync::Arc;

use kvm_ioctls::Kvm;
use privmem_core::decide::DiscardPolicy;
use privmem_core::engine::{EngineConfig, HypercallExit, MemoryFaultExit, PrefaultPolicy};
use privmem_core::listener::{Conversion, ConversionListener};
use privmem_core::{Gpa, GpaRange, SlotId};
use privmem_tinyvmm::guest::{self, ports};
use privmem_tinyvmm::{Conversions, Ended, Flow, TinyVmm, Verdict, VmmConfig};
use vm_memory::{Bytes, GuestRegionMmap, MemoryRegionAddress};

const MEM: u64 = 2 << 20;

type Error = Box<dyn std::error::Error>;

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

/// privmem's handler, printing each hypercall and the host's view of the
/// shared page before it.
struct Loud<C> {
    inner: C,
    ram: GuestRegionMmap,
}

impl<C: Conversions> Conversions for Loud<C> {
    fn hypercall(&mut self, exit: HypercallExit) -> i64 {
        let before: u8 = self
            .ram
            .read_obj(MemoryRegionAddress(0x8000))
            .unwrap_or(0xff);
        println!("vmm: host view of the shared page before: {before:#04x}");
        let ret = self.inner.hypercall(exit);
        let a = exit.args;
        println!(
            "vmm: MAP_GPA_RANGE({:#x}, {}, {:#x}) = {ret}",
            a[0], a[1], a[2]
        );
        ret
    }
    fn memory_fault(&mut self, exit: MemoryFaultExit, errno: i32) -> Verdict {
        self.inner.memory_fault(exit, errno)
    }
    fn other_exit(&mut self) {
        self.inner.other_exit();
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

fn run() -> Result<Option<String>, Error> {
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => return Ok(Some(format!("no /dev/kvm ({e})"))),
    };
    if let Some(why) = privmem_tinyvmm::missing(&kvm) {
        return Ok(Some(format!(
            "this host has {why}; run it in the rig: rig/run --example vmm"
        )));
    }
    let config = EngineConfig {
        discard: DiscardPolicy::Discard,
        prefault: PrefaultPolicy::ToPrivate,
        ..EngineConfig::default()
    };
    let vmm = TinyVmm::new(
        &kvm,
        VmmConfig {
            mem: MEM,
            engine: config,
        },
    )?;
    let engine = vmm.engine().clone();
    engine.add_listener(Arc::new(Dma));
    println!(
        "vmm: sw-protected VM, 2 MiB slot (guest_memfd + shared memfd), KVM_CAP_PRE_FAULT_MEMORY={}",
        engine.support().pre_fault_memory
    );
    let mut vcpu = vmm.create_vcpu()?;
    vcpu.start(&vmm, &guest::example()?)?;
    let ram = vmm.ram()?;
    let mut conv = Loud {
        inner: vmm.privmem_handler(&vcpu)?,
        ram: vmm.ram()?,
    };
    let mut reads = Vec::new();
    let ended = vcpu.run(&mut conv, |port, d| {
        match port {
            ports::RET if d[0] != 0 => return Err(format!("hypercall failed: {}", d[0] as i8)),
            ports::READ => {
                println!("vmm: guest read {:#04x} at 0x8000", d[0]);
                let host: u8 = ram
                    .read_obj(MemoryRegionAddress(0x8000))
                    .map_err(|e| e.to_string())?;
                println!("vmm: host view of the shared page: {host:#04x}");
                if host != 0 {
                    return Err("the shared page was not discarded".into());
                }
                reads.push(d[0]);
            }
            ports::UNPLUG => {
                engine.close_gmem(SlotId(0)).map_err(|e| e.to_string())?;
                println!("vmm: guest_memfd closed: the private page at 0x9000 has no backing now");
            }
            _ => {}
        }
        Ok(Flow::Continue)
    })?;
    match ended {
        Ended::Stopped(why) => println!("vmm: vCPU stopped as expected: {why}"),
        Ended::Halted => return Err("the guest halted: the unresolvable fault never came".into()),
        Ended::Device => return Err("the device model stopped the guest".into()),
    }
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
    let stats = engine.stats();
    let (calls, errors) = (stats.prefault_calls, stats.prefault_errors);
    println!("vmm: OK (KVM_PRE_FAULT_MEMORY calls: {calls}, errors ignored: {errors})");
    Ok(None)
}
