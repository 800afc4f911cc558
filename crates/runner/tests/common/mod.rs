//! Shared setup for the runtime tests on the model backend.
#![allow(dead_code)]

use std::sync::Arc;

use privmem_model::{KernelProfile, ModelHypervisor};
use privmem_runner::runtime::Machine;
use privmem_runner::workload;

/// A 7.3 model hypervisor and a machine built from workload `text`.
pub fn machine(text: &str) -> (Arc<ModelHypervisor>, Machine<ModelHypervisor>) {
    let w = workload::parse("test.toml", text).expect("valid workload");
    let hv = Arc::new(ModelHypervisor::new(KernelProfile::V7_3));
    let m = Machine::new(hv.clone(), &w).expect("setup");
    (hv, m)
}
