//! Helpers shared by the benchmarks: workloads built in code, RSS, units.

use std::time::Instant;

use privmem_core::{Gpa, GpaRange, GuestOp, VmType};
use privmem_runner::workload::{Policy, SlotSpec, Workload};

/// 1 MiB.
pub const MIB: u64 = 1 << 20;
/// 1 GiB.
pub const GIB: u64 = 1 << 30;
/// 1 TiB.
pub const TIB: u64 = 1 << 40;

/// A guest_memfd-backed slot at `[gpa, gpa+size)`.
pub fn slot(gpa: u64, size: u64) -> SlotSpec {
    SlotSpec {
        range: GpaRange::new(Gpa(gpa), size).expect("bench slots are valid"),
        guest_memfd: true,
        close_guest_memfd: false,
    }
}

/// A workload with `slots`, default policy (convert, discard) and `vcpus`.
pub fn workload(
    vm_type: VmType,
    initial_private: bool,
    slots: Vec<SlotSpec>,
    vcpus: Vec<Vec<GuestOp>>,
) -> Workload {
    Workload {
        vm_type,
        initial_private,
        policy: Policy::default(),
        slots,
        poison: Vec::new(),
        vcpus,
    }
}

/// Seconds taken by `f`, with its result.
pub fn timed<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let t = Instant::now();
    let v = f();
    (t.elapsed().as_secs_f64(), v)
}

/// This process's resident set (`VmRSS`) in KiB.
pub fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

/// This process's anonymous and shared-memory resident pages
/// (`RssAnon` + `RssShmem`) in KiB: its own memory, without the binary's
/// file-backed pages.
pub fn own_rss_kib() -> u64 {
    status_kib("RssAnon:") + status_kib("RssShmem:")
}

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A human size: "4KiB", "2MiB", "64GiB", "1TiB".
pub fn size_name(bytes: u64) -> String {
    if bytes >= TIB && bytes.is_multiple_of(TIB) {
        format!("{}TiB", bytes / TIB)
    } else if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{}GiB", bytes / GIB)
    } else if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{}MiB", bytes / MIB)
    } else {
        format!("{}KiB", bytes / 1024)
    }
}

/// A small deterministic PRNG (xorshift64*), so every structure and every
/// round sees the same operation sequence.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded (0 is remapped).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, n)` (n > 0; slight modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_name_picks_largest_exact_unit() {
        assert_eq!(size_name(4096), "4KiB");
        assert_eq!(size_name(2 * MIB), "2MiB");
        assert_eq!(size_name(64 * GIB), "64GiB");
        assert_eq!(size_name(TIB), "1TiB");
    }

    #[test]
    fn rng_is_deterministic() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert_eq!(a.next(), b.next());
        assert!(a.below(10) < 10);
    }
}
