//! A model vCPU's kick: the signal that ends a `KVM_RUN` (it stays pending
//! for the next one, as the KVM backend's `immediate_exit` does) and
//! interrupts a pre-fault.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use privmem_core::Kick;

/// The [`Kick`] handle of a [`ModelVcpu`](crate::ModelVcpu): the model's
/// signal to a vCPU thread.
#[derive(Debug, Default)]
pub struct ModelKick {
    pub(crate) flag: AtomicBool,
    /// Kicks so far: a signal sent while another is still pending is
    /// still a new signal to a call that started after the first one.
    count: AtomicU64,
}

impl Kick for ModelKick {
    fn kick(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.flag.store(true, Ordering::Release);
    }
}

impl ModelKick {
    /// How many kicks there have been.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }
}
