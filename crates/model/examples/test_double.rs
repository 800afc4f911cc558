//! The model as a test double: a VMM's own conversion logic, unit-tested
//! with no KVM at all.
//!
//! The VMM code under test is `Vmm`: it answers `KVM_EXIT_HYPERCALL` exits
//! through privmem's per-exit call and keeps an IOMMU table (the pages a
//! passthrough device may DMA into) in step with the guest's conversions, as
//! a conversion listener. It is generic over privmem's engine contract, so
//! production code runs it on `privmem_kvm::vmm::VmFdBackend` and these
//! checks run it on the model, with kernel failures injected.
//!
//! `cargo run -p privmem-model --example test_double` (exit status 0 when
//! every check holds).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use privmem_core::contract::ConversionBackend;
use privmem_core::engine::{ConvertTo, Engine, EngineConfig, HypercallExit};
use privmem_core::listener::{Conversion, ConversionListener, Refusal};
use privmem_core::{Errno, Gpa, GpaRange, VmType};
use privmem_model::{embed, InjectOp, KernelProfile, ModelHypervisor};

/// The VMM's IOMMU table: shared pages a device may DMA into.
#[derive(Default)]
struct Iommu {
    mapped: Mutex<BTreeSet<u64>>,
    /// Pages whose mapping fails (a full IOMMU, say).
    broken: Mutex<BTreeSet<u64>>,
}

fn pages(ranges: &[GpaRange]) -> impl Iterator<Item = u64> + '_ {
    ranges
        .iter()
        .flat_map(|r| (r.start().gfn()..r.end().gfn()).map(|g| g << 12))
}

impl ConversionListener for Iommu {
    fn name(&self) -> &str {
        "iommu"
    }
    fn prepare_shared(&self, c: &Conversion<'_>) -> Result<(), Refusal> {
        let broken = self.broken.lock().unwrap();
        if let Some(p) = pages(c.changed).find(|p| broken.contains(p)) {
            return Err(Refusal::new(format!("cannot map {p:#x} for DMA")));
        }
        self.mapped.lock().unwrap().extend(pages(c.changed));
        Ok(())
    }
    fn cancel_shared(&self, c: &Conversion<'_>) {
        let mut mapped = self.mapped.lock().unwrap();
        for p in pages(c.changed) {
            mapped.remove(&p);
        }
    }
    fn committed(&self, c: &Conversion<'_>) {
        if c.to == ConvertTo::Private {
            let mut mapped = self.mapped.lock().unwrap();
            for p in pages(c.changed) {
                mapped.remove(&p);
            }
        }
    }
}

/// The VMM code under test.
struct Vmm<B: ConversionBackend> {
    engine: Engine<B>,
    iommu: Arc<Iommu>,
}

impl<B: ConversionBackend> Vmm<B> {
    fn new(engine: Engine<B>, shared_at_boot: GpaRange) -> Vmm<B> {
        let iommu = Arc::new(Iommu::default());
        iommu
            .mapped
            .lock()
            .unwrap()
            .extend(pages(&[shared_at_boot]));
        engine.add_listener(iommu.clone());
        Vmm { engine, iommu }
    }
    /// The guest's `MAP_GPA_RANGE(gpa, pages, attrs)`: the value for RAX.
    fn map_gpa_range(&self, gpa: u64, n: u64, private: bool) -> i64 {
        let mut guard = self.engine.repeat_guard();
        let args = [gpa, n, if private { 0x10 } else { 0 }, 0, 0, 0];
        self.engine
            .handle_hypercall(&mut guard, HypercallExit { nr: 12, args }, None)
    }
    /// The VMM's invariant: the device may DMA exactly into shared pages.
    fn check(&self, memory: GpaRange) -> Result<(), String> {
        let map = self.engine.attr_map();
        let mapped = self.iommu.mapped.lock().unwrap();
        for p in pages(&[memory]) {
            if mapped.contains(&p) == map.is_private(Gpa(p)) {
                return Err(format!(
                    "page {p:#x}: private={} but DMA-mapped={}",
                    map.is_private(Gpa(p)),
                    mapped.contains(&p)
                ));
            }
        }
        Ok(())
    }
}

fn main() -> Result<(), String> {
    // 6.12: clearing attributes can fail there (7.3 reserves only when
    // setting), so the injected "the kernel fails" below reaches a VMM.
    let hv = Arc::new(ModelHypervisor::new(KernelProfile::V6_12));
    let engine = embed::engine(&hv, VmType::SwProtected, EngineConfig::default())
        .map_err(|e| e.to_string())?;
    let memory = GpaRange::new(Gpa(0), 1 << 20).map_err(|e| e.to_string())?;
    let desc = embed::slot(engine.vm(), 0, memory).map_err(|e| e.to_string())?;
    engine.add_slot(desc).map_err(|e| e.to_string())?;
    let vmm = Vmm::new(engine, memory);
    let mut checks = 0;
    let mut expect = |what: &str, got: i64, want: i64| -> Result<(), String> {
        checks += 1;
        vmm.check(memory)?;
        println!("ok: {what}: RAX {got}");
        (got == want)
            .then_some(())
            .ok_or(format!("{what}: RAX {got}, expected {want}"))
    };
    expect("4 pages to private", vmm.map_gpa_range(0x10000, 4, true), 0)?;
    expect(
        "2 of them back to shared",
        vmm.map_gpa_range(0x11000, 2, false),
        0,
    )?;
    vmm.iommu.broken.lock().unwrap().insert(0x10000);
    expect(
        "to shared, IOMMU full",
        vmm.map_gpa_range(0x10000, 2, false),
        -22,
    )?;
    vmm.iommu.broken.lock().unwrap().clear();
    hv.inject_failure(InjectOp::SetMemoryAttributes, 1, Errno::ENOMEM);
    expect(
        "to shared, the kernel fails",
        vmm.map_gpa_range(0x10000, 1, false),
        -22,
    )?;
    hv.inject_failure(InjectOp::Fallocate, 1, Errno::EIO);
    expect(
        "to shared, the punch fails",
        vmm.map_gpa_range(0x10000, 1, false),
        -22,
    )?;
    hv.inject_failure(InjectOp::DiscardShared, 1, Errno::EIO);
    expect(
        "to private, the discard fails (deferred)",
        vmm.map_gpa_range(0x20000, 1, true),
        0,
    )?;
    expect(
        "to shared, all good",
        vmm.map_gpa_range(0x10000, 1, false),
        0,
    )?;
    expect("beyond memory", vmm.map_gpa_range(2 << 20, 1, true), -22)?;
    if vmm.engine.vm().attributes() != vmm.engine.attr_map() {
        return Err("the engine's map and the model kernel's attributes differ".into());
    }
    println!("test_double: {checks} checks passed");
    Ok(())
}
