//! privmem's mappings of guest memory, on rust-vmm's [`vm_memory`]. Every
//! `mmap` of guest memory in privmem lives here: the model's page store,
//! the KVM backend's shared memory, guest_memfd and `kvm_run` mappings,
//! and the benchmark baselines' memory. This and the baselines' crate are
//! where privmem's memory-related `unsafe` code lives, one `// SAFETY:`
//! line per block.
//!
//! - [`Mapping`]: an owned [`vm_memory::MmapRegion`] of anonymous shared
//!   memory or of a file range. Host code reaches it through the kernel
//!   ([`Mapping::read_checked`], [`Mapping::write_checked`],
//!   [`Mapping::fill_checked`]: `process_vm_readv`/`writev`, so a page the
//!   kernel refuses is a [`Fault`], never SIGBUS). Its address goes to KVM
//!   only through `unsafe` ([`Mapping::host_addr`]).
//! - [`HostMap`]: a whole sealed memfd mapped shared, reached through
//!   bounds-checked vm-memory [`VolatileSlice`]s: copies, streaming fills,
//!   a word-wise compare, `mincore` residency, all within a process-wide
//!   address-space budget.
//! - [`Memfd`]: the anonymous files behind them.
//! - [`Mapping::inject_hwpoison`]: `madvise(MADV_HWPOISON)` on a page, from
//!   a forked child, so its `SIGBUS` never reaches this process
//!   ([`hwpoison`]).
//!
//! Nothing here hands out a Rust reference (`&[u8]`, `&mut [u8]`) into
//! mapped memory: other threads, a guest or the kernel may change it at any
//! time.
#![deny(missing_docs)]

mod error;
pub mod hostmap;
pub mod hwpoison;
mod kernel_copy;
pub mod mapping;
pub mod memfd;
mod scan;

pub use error::{Fault, MapError};
pub use hostmap::{HostMap, MAP_BUDGET, MAX_MAP_LEN};
pub use hwpoison::{Injection, Sigbus};
pub use mapping::{Exec, Mapping, Residency, Share, PAGE_SIZE};
pub use memfd::{Memfd, Seal};
pub use vm_memory;
pub use vm_memory::{Bytes, VolatileMemory, VolatileSlice};
