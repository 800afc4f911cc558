//! privmem's own CPU work per conversion with no kernel under it: the
//! engine over a backend whose calls do nothing ([`NullHandler`]), fed the
//! same `MAP_GPA_RANGE` requests as a `kvm/convert` guest makes, twice:
//! - alone, in a loop with nothing in between ([`us_per_request`]);
//! - in the exit loop, answering the guest's real exits ([`NullHandler`] as
//!   the handler of a run).
//!
//! Both are `context` figures. Set beside the handler overhead measured in
//! the exit loop, they split it into the engine's work itself and the cost
//! of running that work right after an exit (under TCG, the nested VM's
//! exit flushes the emulated TLB, so every page the handler touches costs a
//! page walk).

use privmem_core::contract::{Backing, ConversionBackend, VmSupport};
use privmem_core::decide::DiscardPolicy;
use privmem_core::engine::{Engine, EngineConfig, HypercallExit};
use privmem_core::exit::{KVM_HC_MAP_GPA_RANGE, MAP_GPA_RANGE_ENCRYPTED};
use privmem_core::slot::{GmemBinding, SharedBinding, SlotDesc};
use privmem_core::{Attrs, BackendError, Gpa, GpaRange, SlotId, VmType, PAGE_SIZE};
use privmem_tinyvmm::PrivmemHandler;
use std::sync::Arc;

use super::super::util::timed;

/// A backing of a size and nothing else.
#[derive(Debug)]
pub struct Size(u64);

impl Backing for Size {
    fn size(&self) -> u64 {
        self.0
    }
}

/// A sw-protected VM whose every call succeeds and does nothing.
#[derive(Debug)]
pub struct Null;

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

/// The engine over [`Null`] with one slot `[0, end)` (guest_memfd and
/// shared backing, all shared), discard on: every call it makes succeeds
/// and does nothing, so what it costs is its own work.
fn null_engine(end: u64) -> anyhow::Result<Engine<Null>> {
    let config = EngineConfig {
        discard: DiscardPolicy::Discard,
        ..EngineConfig::default()
    };
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
    Ok(e)
}

/// µs per request of the engine alone converting `[base, base+len)` to
/// private and back in `req`-byte requests (median of `passes` passes,
/// after one warm-up).
pub fn us_per_request(base: u64, len: u64, req: u64, passes: usize) -> anyhow::Result<f64> {
    let end = base + len;
    let e = null_engine(end)?;
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

/// An exit-loop handler whose engine's kernel calls do nothing: privmem's
/// per-exit calls ([`PrivmemHandler`]: `Engine::handle_hypercall` /
/// `handle_memory_fault`, repeat guard, no pre-fault) over [`Null`]. The
/// kernel's attributes and memory never change, so it only suits guests
/// that never touch what they convert (the `kvm/convert` guest) or whose
/// reads go unchecked (`embed`'s run with it).
pub type NullHandler = PrivmemHandler<Null>;

/// A [`NullHandler`] for guest memory `[0, end)`, all shared.
///
/// # Errors
/// `end` is 0 or not page-aligned.
pub fn null_handler(end: u64) -> anyhow::Result<NullHandler> {
    Ok(PrivmemHandler::new(Arc::new(null_engine(end)?), None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use privmem_core::engine::MemoryFaultExit;
    use privmem_tinyvmm::{Conversions, Verdict};

    #[test]
    fn the_engine_alone_converts_every_request() {
        let us = us_per_request(2 << 20, 1 << 20, 4096, 1).unwrap();
        assert!(us > 0.0 && us.is_finite());
    }

    fn map(gpa: u64, pages: u64, private: bool) -> HypercallExit {
        HypercallExit {
            nr: KVM_HC_MAP_GPA_RANGE,
            args: [
                gpa,
                pages,
                if private { MAP_GPA_RANGE_ENCRYPTED } else { 0 },
                0,
                0,
                0,
            ],
        }
    }

    #[test]
    fn the_null_handler_answers_as_the_engine_does() {
        // The handler null_handler builds, over an engine this test keeps.
        let engine = Arc::new(null_engine(4 << 20).unwrap());
        let mut h = NullHandler::new(engine.clone(), None);
        assert_eq!(h.hypercall(map(1 << 20, 2, true)), 0);
        assert!(engine.attr_map().is_private(Gpa(1 << 20)));
        // Past the slot: refused, as the real engine refuses it.
        assert_ne!(h.hypercall(map(4 << 20, 1, true)), 0);
        let fault = MemoryFaultExit {
            flags: 0,
            gpa: 1 << 20,
            size: PAGE_SIZE,
        };
        assert_eq!(
            h.memory_fault(fault, privmem_core::abi::EFAULT),
            Verdict::Resume
        );
        assert!(!engine.attr_map().is_private(Gpa(1 << 20)));
        assert!(matches!(h.memory_fault(fault, 5), Verdict::Stop(_)));
    }
}
