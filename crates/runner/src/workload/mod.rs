//! The workload file (the CLI's TOML contract): parsing and validation.
//!
//! serde derive with `deny_unknown_fields` reads the file as written
//! ([`raw`]), every value spanned; [`build`] then checks what serde cannot
//! (required keys, alignment, ranges, limits, the vCPU count). Every error
//! names the file, the key path, the line and the value as written; nothing
//! here allocates in proportion to a size the file states.

mod build;
mod ops;
mod raw;
mod source;
#[cfg(test)]
mod tests;

use std::num::NonZeroU32;
use std::path::Path;

use privmem_core::decide::{DiscardPolicy, FaultPolicy, ImplicitPolicy};
use privmem_core::engine::EngineConfig;
use privmem_core::types::{Gpa, GpaRange, VmType};
use privmem_core::{GpaLimit, GuestOp};

use raw::RawWorkload;
use source::Source;

/// Guest memory must end at or below this limit (x86's 52-bit MAXPHYADDR).
pub const GPA_LIMIT: GpaLimit = GpaLimit::X86_MAXPHYADDR;
/// [`GPA_LIMIT`] in bytes.
pub const MAX_GPA: u64 = GPA_LIMIT.end().raw();
/// At most this many vCPUs.
pub const MAX_VCPUS: u32 = 64;

/// A workload error: the file, the line, and for a bad value the key path,
/// the value as written and why.
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
    #[error("{file}:{line}: invalid toml: {why}")]
    Toml {
        /// File name.
        file: String,
        /// 1-based line of the error.
        line: usize,
        /// Parser message.
        why: String,
    },
    /// A key has a bad value, is unknown, or is missing.
    #[error("{file}:{line}: key `{key}` = {value}: {why}")]
    Key {
        /// File name.
        file: String,
        /// Key path, e.g. `vcpu[0].ops[2].gpa`.
        key: String,
        /// 1-based line of the value (of its table when it is missing).
        line: usize,
        /// The value as written (`(missing)` for a missing key).
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
    let src = Source { file, text };
    let de = toml::Deserializer::parse(text).map_err(|e| src.syntax(&e))?;
    let raw: RawWorkload = serde_path_to_error::deserialize(de).map_err(|e| src.serde(&e))?;
    build::workload(&src, raw)
}

/// Parses `"4096"`, `"0x1000"`, `"4KiB"`, `"2MiB"`, `"1GiB"`, `"1TiB"` (also `K`/`M`/`G`/`T`, `KB`...).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err("must not be negative".into());
    }
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(&hex.replace('_', ""), 16)
            .map_err(|e| format!("bad hex number: {e}"));
    }
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let n: u64 = digits
        .replace('_', "")
        .parse()
        .map_err(|e| format!("bad number: {e}"))?;
    let shift = match suffix.trim() {
        "" | "B" => 0,
        "K" | "KiB" | "KB" | "k" => 10,
        "M" | "MiB" | "MB" => 20,
        "G" | "GiB" | "GB" => 30,
        "T" | "TiB" | "TB" => 40,
        other => return Err(format!("unknown size suffix `{other}`")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| "size overflows 64 bits".to_string())
}
