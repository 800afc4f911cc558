//! privmem's harness on top of `privmem-core`: what the `privmem` CLI, the
//! conformance suite and the benchmarks run, and what a VMM does not need.
//!
//! - [`workload`]: the TOML workload format, parsed and validated, and its
//!   policy mapped onto privmem-core's ([`workload::Policy::fault_policy`],
//!   [`workload::Policy::engine_config`]);
//! - [`runtime`]: [`runtime::Machine`] builds a VM, its memory and its vCPUs
//!   from a workload, loads each vCPU's `GuestOp` program and runs every
//!   vCPU on its own thread (with a timeout watchdog);
//! - [`handle`]: the per-vCPU exit handler and state (exit counters,
//!   checks, syncs, why a vCPU stopped), built on `privmem_core::decide`;
//! - [`report`]: the `privmem run --json` report.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod handle;
pub mod report;
pub mod runtime;
pub mod workload;
