use std::time::Instant;
use privmem_core::contract::{Backing, ConversionBackend, VmSupport};
use privmem_core::decide::DiscardPolicy;
use privmem_core::engine::{Engine, EngineConfig, HypercallExit};
use privmem_core::slot::{GmemBinding, SharedBinding, SlotDesc};
use privmem_core::{Attrs, BackendError, Gpa, GpaRange, SlotId, VmType};
struct Mem(u64);
impl Backing for Mem { fn size(&self) -> u64 { self.0 } }
struct Null;
impl ConversionBackend for Null {
    type Gmem = Mem; type Shared = Mem;
    fn support(&self) -> VmSupport { VmSupport { vm_type: VmType::SwProtected, pre_fault_memory: false } }
    fn set_attributes(&self, _: GpaRange, _: Attrs) -> Result<(), BackendError> { Ok(()) }
    fn punch_gmem(&self, _: &Mem, _: u64, _: u64) -> Result<(), BackendError> { Ok(()) }
    fn discard_shared(&self, _: &Mem, _: u64, _: u64) -> Result<(), BackendError> { Ok(()) }
    fn set_memslot(&self, _: &SlotDesc<Mem, Mem>) -> Result<(), BackendError> { Ok(()) }
    fn delete_memslot(&self, _: SlotId) -> Result<(), BackendError> { Ok(()) }
}
fn main() {
    let size = 66u64 << 20;
    let e = Engine::new(Null, EngineConfig { discard: DiscardPolicy::Discard, ..Default::default() });
    e.add_slot(SlotDesc { id: SlotId(0), range: GpaRange::new(Gpa(0), size).unwrap(),
        gmem: Some(GmemBinding { file: Mem(size), offset: 0 }), shared: Some(SharedBinding { mem: Mem(size), offset: 0 }) }).unwrap();
    let mut g = e.repeat_guard();
    for _ in 0..20 {
        let t = Instant::now();
        let mut n = 0;
        for attrs in [0x10u64, 0] {
            for gpa in ((2u64 << 20)..size).step_by(4096) {
                let r = e.handle_hypercall(&mut g, HypercallExit { nr: 12, args: [gpa, 1, attrs, 0, 0, 0] }, None);
                assert_eq!(r, 0);
                n += 1;
            }
        }
        println!("{:.0} ns/conversion", t.elapsed().as_nanos() as f64 / n as f64);
    }
}
