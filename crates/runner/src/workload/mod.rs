//! The workload file (the CLI's TOML contract): parsing and validation.
//!
//! Every error names the key path and the offending value; nothing here
//! allocates in proportion to a size the file states.

mod ops;
mod parse;
#[cfg(test)]
mod tests;

use std::num::NonZeroU32;
use std::path::Path;

use privmem_core::decide::{DiscardPolicy, FaultPolicy, ImplicitPolicy};
use privmem_core::engine::EngineConfig;
use privmem_core::types::{Gpa, GpaRange, VmType};
use privmem_core::{GpaLimit, GuestOp};

use ops::parse_vcpus;
pub use parse::parse_size;
use parse::{parse_initial, parse_poison, parse_policy, parse_slots, parse_vm_type, Ctx};
use toml::Value;

/// Guest memory must end at or below this limit (x86's 52-bit MAXPHYADDR).
pub const GPA_LIMIT: GpaLimit = GpaLimit::X86_MAXPHYADDR;
/// [`GPA_LIMIT`] in bytes.
pub const MAX_GPA: u64 = GPA_LIMIT.end().raw();
/// At most this many vCPUs.
pub const MAX_VCPUS: u32 = 64;

/// A workload error: the key path, the value and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    /// The file could not be read.
    #[error("{file}: cannot read: {why}")]
    Read {
        /// File name.
        file: String,
        /// OS error text.
        why: String,
    },
    /// The file is not valid TOML.
    #[error("{file}: invalid toml: {why}")]
    Toml {
        /// File name.
        file: String,
        /// Parser message.
        why: String,
    },
    /// A key has a bad value.
    #[error("{file}: key `{key}` = {value}: {why}")]
    Key {
        /// File name.
        file: String,
        /// Key path, e.g. `vcpu[0].ops[2].gpa`.
        key: String,
        /// The value as written.
        value: String,
        /// Why it is rejected.
        why: String,
    },
}

/// What to do on an implicit conversion request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Implicit {
    /// Convert the faulting page and re-enter.
    Convert,
    /// Stop the vCPU with `fault_denied`.
    Deny,
}

/// `[policy]`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Policy {
    /// Implicit conversion policy.
    pub implicit: Implicit,
    /// Discard the backing no longer in use on conversion.
    pub discard: bool,
    /// The same fault this many times in a row stops the vCPU.
    pub max_repeats: u32,
}

impl Policy {
    /// privmem-core's fault policy for this workload policy (a
    /// `max_repeats` of 0, which the parser refuses, stops on the first fault).
    pub fn fault_policy(&self) -> FaultPolicy {
        FaultPolicy {
            implicit: match self.implicit {
                Implicit::Convert => ImplicitPolicy::Convert,
                Implicit::Deny => ImplicitPolicy::Deny,
            },
            max_repeats: NonZeroU32::new(self.max_repeats).unwrap_or(NonZeroU32::MIN),
        }
    }

    /// privmem-core's engine configuration for this workload policy.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            discard: if self.discard {
                DiscardPolicy::Discard
            } else {
                DiscardPolicy::Keep
            },
            gpa_limit: GPA_LIMIT,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            implicit: Implicit::Convert,
            discard: true,
            max_repeats: 3,
        }
    }
}

/// One memslot of guest RAM.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SlotSpec {
    /// Its GPA range.
    pub range: GpaRange,
    /// Backed by guest_memfd (else shared host memory only).
    pub guest_memfd: bool,
    /// Close privmem's guest_memfd handle right after binding the slot, so
    /// the binding dies (`kvm_gmem_release`): a VMM bug or a hostile teardown.
    pub close_guest_memfd: bool,
}

/// A parsed, validated workload.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Workload {
    /// VM type.
    pub vm_type: VmType,
    /// Initial attribute of guest_memfd-backed memory.
    pub initial_private: bool,
    /// Policies.
    pub policy: Policy,
    /// Slots, sorted by GPA, disjoint.
    pub slots: Vec<SlotSpec>,
    /// Poisoned pages.
    pub poison: Vec<Gpa>,
    /// Per-vCPU programs.
    pub vcpus: Vec<Vec<GuestOp>>,
}

/// Reads and parses a workload file.
pub fn load(path: &Path) -> Result<Workload, WorkloadError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| WorkloadError::Read {
        file: file.clone(),
        why: e.to_string(),
    })?;
    parse(&file, &text)
}

/// Parses workload text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Workload, WorkloadError> {
    let root: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| WorkloadError::Toml {
            file: file.to_string(),
            why: e.message().to_string(),
        })?;
    let cx = Ctx { file };
    cx.check_keys("", &root, &["vm", "policy", "slot", "poison", "vcpu"])?;
    let vm_val = root
        .get("vm")
        .ok_or_else(|| cx.err("vm", &Value::String(String::new()), "missing [vm] table"))?;
    let vm = cx.table("vm", vm_val)?;
    cx.check_keys("vm", vm, &["type", "memory", "vcpus", "initial"])?;
    let vm_type = parse_vm_type(&cx, vm)?;
    let initial_private = parse_initial(&cx, vm, vm_type)?;
    let policy = parse_policy(&cx, root.get("policy"))?;
    let slots = parse_slots(&cx, vm, root.get("slot"))?;
    let poison = parse_poison(&cx, root.get("poison"), &slots)?;
    let vcpus = parse_vcpus(&cx, vm, root.get("vcpu"), &slots)?;
    Ok(Workload {
        vm_type,
        initial_private,
        policy,
        slots,
        poison,
        vcpus,
    })
}
