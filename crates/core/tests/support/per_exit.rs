//! Hostile input to the per-exit calls, shared by the fuzz target
//! `fuzz/fuzz_targets/per_exit.rs` and its proptest twin
//! `crates/core/tests/per_exit_props.rs`: arbitrary bytes become a sequence
//! of raw hypercall and memory-fault exits, each answered by a model engine
//! and checked.

use std::sync::Arc;

use privmem_core::engine::{
    EngineConfig, HypercallExit, MemoryFaultExit, PrefaultPolicy, StopReason, VcpuAction,
};
use privmem_core::{Gpa, GpaRange, VmType};
use privmem_model::embed;
use privmem_model::{KernelProfile, ModelHypervisor};

const MIB: u64 = 1 << 20;

/// Reads bytes as a little-endian number source; zeros once empty.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, i| acc | u64::from(self.u8()) << (8 * i))
    }
    /// Mostly small page-aligned addresses (inside or near memory), some raw.
    fn gpa(&mut self) -> u64 {
        match self.u8() % 4 {
            0 => self.u64(),
            _ => u64::from(self.u8() % 48) * 0x1000 * 16 + u64::from(self.u8() % 16) * 0x1000,
        }
    }
}

/// Runs the exits `data` encodes; `Err` names the first broken rule.
pub fn check(data: &[u8]) -> Result<(), String> {
    let hv = Arc::new(ModelHypervisor::new(KernelProfile::V7_3));
    let config = EngineConfig {
        prefault: PrefaultPolicy::Every,
        ..EngineConfig::default()
    };
    let e = embed::engine(&hv, VmType::SwProtected, config).map_err(|e| e.to_string())?;
    // Two slots with a gap: [0, 1 MiB) and [2 MiB, 3 MiB).
    for (id, start) in [(0u16, 0u64), (1, 2 * MIB)] {
        let r = GpaRange::new(Gpa(start), MIB).map_err(|e| e.to_string())?;
        let desc = embed::slot(e.vm(), id, r).map_err(|e| e.to_string())?;
        e.add_slot(desc).map_err(|e| e.to_string())?;
    }
    let mut g = e.repeat_guard();
    let mut b = Bytes(data);
    for step in 0..64 {
        if b.0.is_empty() {
            break;
        }
        if b.u8() % 2 == 0 {
            let nr = if b.u8() % 4 == 0 { b.u64() } else { 12 };
            let attrs = if b.u8() % 4 == 0 {
                b.u64()
            } else {
                u64::from(b.u8() & 0x11)
            };
            let args = [
                b.gpa(),
                u64::from(b.u8() % 40),
                attrs,
                b.u64(),
                b.u64(),
                b.u64(),
            ];
            let ret = e.handle_hypercall(&mut g, HypercallExit { nr, args }, None);
            match (nr, ret) {
                (12, 0 | -22) => {}
                (12, r) => return Err(format!("step {step}: MAP_GPA_RANGE answered {r}")),
                (_, -1000) => {}
                (n, r) => return Err(format!("step {step}: hypercall {n} answered {r}")),
            }
            if ret == 0 && args[1] > 0 {
                let private = attrs & 0x10 != 0;
                let r = GpaRange::new(Gpa(args[0]), args[1] * 0x1000).map_err(|e| e.to_string())?;
                let in_memory = e.slots().iter().any(|s| s.range.overlaps(r));
                let wrong = e
                    .attr_map()
                    .runs(r)
                    .iter()
                    .any(|run| run.private != private);
                if in_memory && wrong {
                    return Err(format!("step {step}: {r} answered 0 but is not {private}"));
                }
            }
        } else {
            let errno = match b.u8() % 4 {
                0 => 14,
                1 => 133,
                2 => i32::from(b.u8()),
                _ => b.u64() as i32,
            };
            let flags = if b.u8() % 4 == 0 {
                b.u64()
            } else {
                u64::from(b.u8() & 8)
            };
            let size = if b.u8() % 4 == 0 { b.u64() } else { 0x1000 };
            let exit = MemoryFaultExit {
                flags,
                gpa: b.gpa(),
                size,
            };
            let action = e.handle_memory_fault(&mut g, exit, errno);
            let bad_flags = flags & !8 != 0;
            let ok = match (&action, errno) {
                (VcpuAction::Stop(StopReason::NotAMemoryFault { errno: n }), _) => {
                    *n == errno && errno != 14 && errno != 133
                }
                (VcpuAction::Stop(StopReason::BadExit(_)), 14 | 133) => bad_flags,
                (VcpuAction::Poisoned { gpa, .. }, 133) => !bad_flags && gpa.raw() == exit.gpa,
                (_, 133) => false,
                (VcpuAction::Resume, 14) => {
                    // Resolved: the faulting page now has the access's attribute.
                    e.attr_map().is_private(Gpa(exit.gpa).page_base()) == (flags & 8 != 0)
                }
                (VcpuAction::Stop(_), 14) => !bad_flags,
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "step {step}: {exit:?} errno {errno} answered {action:?}"
                ));
            }
        }
        if e.vm().attributes() != e.attr_map() {
            return Err(format!(
                "step {step}: the map and the kernel's attributes differ"
            ));
        }
    }
    Ok(())
}
