//! Soak: two vCPU threads convert (explicit `MAP_GPA_RANGE` exits and
//! implicit memory-fault exits, through the per-exit calls) while a third
//! adds and removes hotplug slots under them. Every answer is checked as it
//! comes, and at the end the engine's map and the kernel's attributes must
//! equal a dense per-page oracle built from the answers.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::{model, range};
use privmem_core::engine::{EngineConfig, HypercallExit, MemoryFaultExit, VcpuAction};
use privmem_core::{Gpa, SlotId, VmType};
use privmem_model::embed::{self, ModelEngine};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 0x1000;
/// Pages the oracle covers: [0, 8 MiB).
const PAGES: usize = (8 * MIB / PAGE) as usize;
/// Hotplug slots: id, start, length.
const HOT: [(u16, u64, u64); 2] = [(2, 4 * MIB, MIB), (3, 6 * MIB, MIB / 2)];

/// xorshift, seeded per thread.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Hotplug cycles the vCPUs keep converting for.
const MIN_CYCLES: u64 = 20;

/// True once the soak has raced enough, however the threads were scheduled
/// on a loaded machine: slots changed [`MIN_CYCLES`] times, and conversions
/// in the hot slots both succeeded and were refused.
fn raced_enough(cycles: &AtomicU64, stats: &[AtomicU64; 3]) -> bool {
    let [refused, ok, implicit] = stats.each_ref().map(|s| s.load(Ordering::Relaxed));
    cycles.load(Ordering::Relaxed) >= MIN_CYCLES && refused > 0 && ok > 1000 && implicit > 100
}

/// vCPU `v` owns its own slot `v` ([v MiB, v+1 MiB)) and, in the hotplug
/// slots, the pages with `page % 2 == v`. It runs at least `ops`
/// conversions, and on until [`raced_enough`] (at most 100 times `ops`).
fn vcpu(
    e: &ModelEngine,
    v: u64,
    ops: u32,
    cycles: &AtomicU64,
    stats: &[AtomicU64; 3],
) -> Vec<Option<bool>> {
    let mut oracle = vec![None; PAGES];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (v + 1));
    let mut guard = e.repeat_guard();
    for i in 0..ops * 100 {
        if i >= ops && raced_enough(cycles, stats) {
            break;
        }
        let r = rng.next();
        let private = r & 1 == 0;
        // A run of 1-8 pages in the own slot, or one own page in a hot slot.
        let (first, pages) = if r & 6 != 0 {
            (v * MIB / PAGE + (r >> 8) % 248, 1 + (r >> 20) % 8)
        } else {
            let (_, start, len) = HOT[((r >> 3) & 1) as usize];
            let n = len / PAGE / 2;
            (start / PAGE + 2 * ((r >> 8) % n) + v, 1)
        };
        let ok = if r & 8 == 0 {
            let attrs = if private { 0x10 } else { 0 };
            let args = [first * PAGE, pages, attrs, 0, 0, 0];
            let ret = e.handle_hypercall(&mut guard, HypercallExit { nr: 12, args }, None);
            assert!(ret == 0 || ret == -22, "vcpu {v}: ret {ret}");
            ret == 0
        } else {
            // An implicit conversion of the first page.
            let exit = MemoryFaultExit {
                flags: if private { 8 } else { 0 },
                gpa: first * PAGE,
                size: PAGE,
            };
            guard.reset();
            match e.handle_memory_fault(&mut guard, exit, 14) {
                VcpuAction::Resume => {
                    oracle[first as usize] = Some(private);
                    stats[2].fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                VcpuAction::Stop(why) => {
                    assert!(
                        why.to_string().contains("cannot be resolved"),
                        "vcpu {v}: {why}"
                    );
                    false
                }
                other => panic!("vcpu {v}: {other:?}"),
            }
        };
        stats[usize::from(ok)].fetch_add(1, Ordering::Relaxed);
        if ok {
            for p in first..first + pages {
                oracle[p as usize] = Some(private);
            }
        }
        // Own slots never go away: converting there always succeeds.
        assert!(
            ok || first >= 4 * MIB / PAGE,
            "vcpu {v}: own-slot conversion failed"
        );
    }
    oracle
}

#[test]
fn two_vcpus_convert_while_slots_come_and_go() {
    let (_hv, e) = model(VmType::SwProtected, EngineConfig::default());
    for id in 0..2u16 {
        let desc = embed::slot(e.vm(), id, range(u64::from(id) * MIB, MIB)).unwrap();
        e.add_slot(desc).unwrap();
    }
    let e = Arc::new(e);
    let done = Arc::new(AtomicBool::new(false));
    let stats: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let hot_cycles = Arc::new(AtomicU64::new(0));
    let plugger = {
        let (e, done, hot_cycles) = (e.clone(), done.clone(), hot_cycles.clone());
        std::thread::spawn(move || {
            let mut cycles = 0u64;
            while !done.load(Ordering::SeqCst) {
                for (id, start, len) in HOT {
                    let desc = embed::slot(e.vm(), id, range(start, len)).unwrap();
                    e.add_slot(desc).unwrap();
                }
                std::thread::yield_now();
                for (id, _, _) in HOT {
                    e.remove_slot(SlotId(id)).unwrap();
                }
                cycles += 1;
                hot_cycles.store(cycles, Ordering::Relaxed);
            }
            cycles
        })
    };
    let workers: Vec<_> = (0..2u64)
        .map(|v| {
            let (e, stats, hot_cycles) = (e.clone(), stats.clone(), hot_cycles.clone());
            std::thread::spawn(move || vcpu(&e, v, 4000, &hot_cycles, &stats))
        })
        .collect();
    let oracles: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    done.store(true, Ordering::SeqCst);
    let cycles = plugger.join().unwrap();
    // The soak must actually have raced: slots changed many times, and
    // conversions in the hot slots both succeeded and were refused.
    let (refused, ok, implicit) = (
        stats[0].load(Ordering::Relaxed),
        stats[1].load(Ordering::Relaxed),
        stats[2].load(Ordering::Relaxed),
    );
    eprintln!("{cycles} hotplug cycles, {ok} explicit ok, {refused} refused, {implicit} implicit");
    assert!(cycles > 10, "only {cycles} hotplug cycles");
    assert!(
        refused > 0 && ok > 1000 && implicit > 100,
        "refused {refused}, ok {ok}, implicit {implicit}"
    );
    // Merge the two oracles (disjoint pages) and compare page by page.
    let map = e.attr_map();
    let kernel = e.vm().attributes();
    for (page, (a, b)) in oracles[0].iter().zip(&oracles[1]).enumerate() {
        let want = a.or(*b).unwrap_or(false);
        let gpa = Gpa(page as u64 * PAGE);
        assert_eq!(map.is_private(gpa), want, "map at {gpa}");
        assert_eq!(kernel.is_private(gpa), want, "kernel at {gpa}");
    }
    assert!(e.pending_discards().is_empty());
}
