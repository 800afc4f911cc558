//! privmem's KVM backend.
//!
//! It implements the `privmem_core` hypervisor traits on `/dev/kvm`:
//! [`KvmHypervisor`] → [`KvmVm`] → [`KvmVcpu`], guest_memfd mappings
//! ([`KvmMapping`]) and shared backings ([`KvmShared`]).
//!
//! # Opening KVM: explicit options, no hidden process-wide state
//!
//! [`KvmHypervisor::open`] takes [`KvmOptions`] and reads no environment
//! variable and no file: host quirks, the hypercall transport, the opt-in
//! `userspace_addr` emulation and the kick signal are the caller's. The
//! defaults are upstream KVM, nothing emulated, and no signal handler
//! ([`KickSignal::None`]); [`KvmOptions::probe`] looks at the host (PVM)
//! for a caller that wants it, and [`KickSignal::Install`] /
//! [`KickSignal::Caller`] choose the kick signal (VMMs such as Firecracker
//! and Cloud Hypervisor kick with `SIGRTMIN` themselves). Every emulation
//! that acted on a VM is reported by [`privmem_core::Vm::emulations`].
//!
//! ```no_run
//! use privmem_kvm::{sigrtmin, KickSignal, KvmHypervisor, KvmOptions};
//! let options = KvmOptions::probe().with_kick(KickSignal::Install(sigrtmin() + 2));
//! let kvm = KvmHypervisor::open(options)?;
//! # Ok::<(), privmem_core::BackendError>(())
//! ```
//!
//! # Modules
//! - [`options`]: the options [`KvmHypervisor::open`] takes.
//! - [`kick`]: the kick signal and [`KvmKick`].
//! - [`caps`]: host probes, each saying what it reads.
//! - [`mem`]: guest_memfd mappings and shared backings on `privmem_mem`
//!   (rust-vmm `vm-memory` regions), with SIGBUS-free host access through
//!   the kernel (`process_vm_readv/writev`).
//! - [`vm`]: memslots own their backings until deleted; the `gmem_hva`
//!   emulation.
//! - [`runtime_area`]: the backend's own memslot per vCPU (code, page
//!   tables, stack).
//! - [`memops`]: `KVM_PRE_FAULT_MEMORY`, and `mmap`/`mbind`/`get_mempolicy`/
//!   `madvise` on guest_memfd mappings.
//! - [`vcpu`]: `KVM_RUN` (exit_reason reset before every run, decoding by
//!   `privmem_core::abi`), protocol ports, port-I/O hypercall emulation.
//! - [`guest`]: x86 encoder, op compiler, runtime-area layout.
//! - [`vmm`]: privmem in a VMM of its own: the engine's contract over a
//!   `kvm_ioctls::VmFd` ([`vmm::VmFdBackend`]), `KVM_RUN` with the errno of a
//!   memory fault kept ([`vmm::run`]), `KVM_PRE_FAULT_MEMORY` ([`vmm::VcpuPreFault`]).
//!
//! KVM calls go through kvm-ioctls with kvm-bindings' structs; the few raw
//! ioctls (`KVM_CHECK_EXTENSION`, `KVM_RUN`, `KVM_GET_STATS_FD`) live in a
//! private module, each with the reason kvm-ioctls does not serve.
//!
//! # Guest memory layout
//!
//! Workload memory belongs to the workload. Each vCPU gets a *runtime area*,
//! a memslot of its own (id `32000 + vcpu index`) placed at the first 2 MiB
//! boundary above every existing memslot and every op range, of this and
//! (when there is room) of every earlier program of the VM, and clear of
//! pages made private, so privmem's own accesses never touch a GPA the
//! workload used (they would change the kernel's SPTE state there):
//!
//! ```text
//!  GPA 0 ─────────────── workload memslots ───────────────┐
//!                                                          │ highest slot end
//!  ┌──────────────── runtime area (vCPU n) ───────────────┐ ◄ 2 MiB aligned
//!  │ +0x0000 PML4                                          │
//!  │ +0x1000 GDT  (null, code64 = 0x08, data = 0x10)       │
//!  │ +0x2000 stack (2 pages, RSP = +0x4000)                │
//!  │ +0x4000 PDPTs (one per 512 GiB region used)           │
//!  │         PDs   (one per 1 GiB region used; 2 MiB PS)   │
//!  │         code  (compiled ops; ends in hlt loop + stubs)│
//!  └─────────────────── rounded to 2 MiB ─────────────────┘
//! ```
//!
//! The page tables identity-map, with 2 MiB pages, every 1 GiB region an op
//! range or the area touches. On a 6.18 default VM the area's only backing
//! is an `MMAP|INIT_SHARED` guest_memfd; elsewhere (SW_PROTECTED VMs, 6.12)
//! it is anonymous shared memory in a plain slot.
//!
//! # Guest→host protocol
//! `out imm8, al` to ports `0xd0..=0xd5` (see [`guest::ports`]), values in
//! registers; a `sync` with a 32-bit tag is a 4-byte `out imm8, eax` whose
//! data is the tag, so it needs no `KVM_GET_REGS`. `KVM_HC_MAP_GPA_RANGE` uses `vmmcall`/`vmcall` with hardware
//! virtualization, or port `0xd5` on PVM where the backend emulates KVM's
//! synchronous checks (-1000 when the exit is not enabled, -22 for bad args).
//!
//! # PVM host notes (measured on 6.18.44-fc, `kvm_pvm`)
//! - A `MMAP|INIT_SHARED` guest_memfd slot with `userspace_addr = 0` is not
//!   reachable by the guest: every access becomes `KVM_EXIT_MMIO`. With the
//!   HVA of a shared mmap of the same gmem range the guest sees the gmem
//!   pages, so a caller that opts in ([`privmem_core::Quirks::gmem_hva`],
//!   set by [`KvmOptions::probe`] on PVM hosts) gets such a mapping
//!   substituted for its `userspace_addr = 0`, reported as the `gmem_hva`
//!   emulation. That mapping holds a file reference, so closing the
//!   caller's gmem fd does not release a bound file here (upstream: later
//!   guest faults get EFAULT).
//! - Guest code runs in PVM's "non-PVM mode", i.e. every instruction goes
//!   through KVM's emulator (`insn_emulation` counts one per instruction,
//!   ~0.7-1 µs each); the state never converted to PVM mode in our tests,
//!   even with CR0.AM, EFER.SCE and FSGSBASE set. Guest programs therefore
//!   use string instructions (`rep stosq`, `repe scasq`): ~100 ms per MiB
//!   written or checked. See [`KvmVcpu::stats`].
//! - `vmcall`/`vmmcall` never exit, so `map` uses the port-I/O transport.
#![deny(missing_docs)]

pub mod caps;
pub mod guest;
pub mod hypervisor;
pub mod kick;
pub mod mem;
pub mod memops;
pub mod options;
mod poison;
pub mod runtime_area;
mod state;
mod stats;
mod sys;
pub mod vcpu;
pub mod vm;
pub mod vmm;

pub use hypervisor::KvmHypervisor;
pub use kick::{sigrtmin, KickSignal, KvmKick};
pub use mem::{KvmMapping, KvmShared};
pub use options::KvmOptions;
pub use vcpu::KvmVcpu;
pub use vm::KvmVm;
