//! privmem's own CPU work per conversion with no kernel under it: the
//! engine over a backend whose calls do nothing, fed the same
//! `MAP_GPA_RANGE` requests as a `kvm/convert` guest makes. A `context`
//! figure: set beside the handler overhead measured in the exit loop, it
//! shows how much of that overhead is the engine's work itself and how much
//! the cost of running it right after an exit (under TCG, the nested VM's
//! exit flushes the emulated TLB, so every page the handler touches costs a
//! page walk).

use privmem_core::contract::{Backing, ConversionBackend, VmSupport};
use privmem_core::decide::DiscardPolicy;
use privmem_core::engine::{Engine, EngineConfig, HypercallExit};
use privmem_core::exit::{KVM_HC_MAP_GPA_RANGE, MAP_GPA_RANGE_ENCRYPTED};
use privmem_core::slot::{GmemBinding, SharedBinding, SlotDesc};
use privmem_core::{Attrs, BackendError, Gpa, GpaRange, SlotId, VmType, PAGE_SIZE};

use super::super::util::timed;

/// A backing of a size and nothing else.
struct Size(u64);

impl Backing for Size {
    fn size(&self) -> u64 {
        self.0
    }
}

/// A sw-protected VM whose every call succeeds and does nothing.
struct Null;

impl ConversionBackend for Null {
    type Gmem = Size;
    type Shared = Size;
    fn support(&self) -> VmSupport {
        VmSupport {
            vm_type: VmType::SwProtected,
            pre_fault_memory: false,
        }
    }
    fn set_attributes(&self, _: GpaRange, _: Attrs) -> Result<(), BackendError> {
        Ok(())
    }
    fn punch_gmem(&self, _: &Size, _: u64, _: u64) -> Result<(), BackendError> {
        Ok(())
    }
    fn discard_shared(&self, _: &Size, _: u64, _: u64) -> Result<(), BackendError> {
        Ok(())
    }
    fn set_memslot(&self, _: &SlotDesc<Size, Size>) -> Result<(), BackendError> {
        Ok(())
    }
    fn delete_memslot(&self, _: SlotId) -> Result<(), BackendError> {
        Ok(())
    }
}

/// µs per request of the engine alone converting `[base, base+len)` to
/// private and back in `req`-byte requests (median of `passes` passes,
/// after one warm-up).
pub fn us_per_request(base: u64, len: u64, req: u64, passes: usize) -> anyhow::Result<f64> {
    let config = EngineConfig {
        discard: DiscardPolicy::Discard,
        ..EngineConfig::default()
    };
    let end = base + len;
    let e = Engine::new(Null, config);
    e.add_slot(SlotDesc {
        id: SlotId(0),
        range: GpaRange::new(Gpa(0), end)?,
        gmem: Some(GmemBinding {
            file: Size(end),
            offset: 0,
        }),
        shared: Some(SharedBinding {
            mem: Size(end),
            offset: 0,
        }),
    })?;
    let mut guard = e.repeat_guard();
    let mut pass = || -> anyhow::Result<f64> {
        let (t, r) = timed(|| {
            for attrs in [MAP_GPA_RANGE_ENCRYPTED, 0] {
                for gpa in (base..end).step_by(req as usize) {
                    let exit = HypercallExit {
                        nr: KVM_HC_MAP_GPA_RANGE,
                        args: [gpa, req / PAGE_SIZE, attrs, 0, 0, 0],
                    };
                    if e.handle_hypercall(&mut guard, exit, None) != 0 {
                        anyhow::bail!("the engine refused {gpa:#x}");
                    }
                }
            }
            Ok(())
        });
        r?;
        Ok(t * 1e6 / (2 * len / req) as f64)
    };
    pass()?;
    let v = (0..passes)
        .map(|_| pass())
        .collect::<anyhow::Result<Vec<f64>>>()?;
    Ok(super::super::median(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_alone_converts_every_request() {
        let us = us_per_request(2 << 20, 1 << 20, 4096, 1).unwrap();
        assert!(us > 0.0 && us.is_finite());
    }
}
