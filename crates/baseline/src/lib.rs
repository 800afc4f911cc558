//! Baselines for `privmem bench`: the bare kernel work privmem is measured
//! against, kept out of the library crates because it needs `unsafe` (a raw
//! `KVM_RUN`, a host address handed to KVM, a global allocator).
//!
//! - [`raw_run_until_hlt`]: a bare loop of `KVM_RUN` on a privmem vCPU,
//!   counting exits (the `exit` baseline);
//! - [`BareMemfd`] / [`BareMap`]: a sparse, size-sealed memfd with
//!   `fallocate(PUNCH_HOLE)` and `pwrite`, and one mapping of it for `memset`
//!   and compare (the `fault`, `convert` and `access` baselines);
//! - [`bare_gmem_vm`], [`bare_memfd_vm`]: a default VM with one slot and
//!   nothing else (the `scale` baseline); [`bare_sw_protected_vm`]: a
//!   sw-protected VM with one guest_memfd + memfd slot (`kvm/setup`);
//! - [`CountingAlloc`]: a per-thread byte count of live heap memory (the
//!   `attrmap` memory figure); [`process_cpu_time`].
#![deny(missing_docs)]

mod alloc;
mod error;
mod memfd;
mod run;
mod vm;

pub use alloc::{thread_heap_bytes, CountingAlloc};
pub use error::BaselineError;
pub use memfd::{BareMap, BareMemfd};
pub use run::raw_run_until_hlt;
pub use vm::{bare_gmem_vm, bare_memfd_vm, bare_sw_protected_vm, BareVm, DevKvm};

/// CPU time consumed so far by the whole process, every thread (live or
/// exited) included: `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`.
pub fn process_cpu_time() -> std::time::Duration {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    std::time::Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_cpu_time_advances_with_work() {
        let t0 = process_cpu_time();
        let mut x = 0u64;
        while process_cpu_time() - t0 < std::time::Duration::from_millis(5) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(x > 0);
    }
}
