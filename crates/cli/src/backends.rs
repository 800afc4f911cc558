//! Backend selection: `--backend auto` picks KVM when the host can run the
//! workload there, otherwise the model, and says why.

use std::sync::Arc;

use privmem_core::{Cap, Hypervisor, VmType};
use privmem_kvm::KvmHypervisor;
use privmem_model::{KernelProfile, ModelHypervisor};
use privmem_runner::workload::Workload;

use crate::BackendArg;

/// A chosen backend.
pub enum Chosen {
    /// Real KVM.
    Kvm(Arc<KvmHypervisor>),
    /// The model.
    Model(Arc<ModelHypervisor>),
}

/// Why the KVM backend can't run `w` here, or `None` if it can.
pub fn kvm_blocker(kvm: &KvmHypervisor, ty: VmType, needs_poison: bool) -> Option<String> {
    let types = kvm.check_extension(Cap::VmTypes).unwrap_or(0);
    let types = if types == 0 { 1 } else { types };
    if ty == VmType::Coco {
        return Some(format!(
            "privmem runs coco VMs on KVM only as SNP/TDX (VM types 4/5); host KVM_CAP_VM_TYPES={types:#x}"
        ));
    }
    if types & (1 << ty.kvm_type()) == 0 {
        return Some(format!(
            "host KVM has no VM type {} (KVM_CAP_VM_TYPES={types:#x})",
            ty.name()
        ));
    }
    if needs_poison {
        return Some("the workload poisons pages, which only the model can inject safely".into());
    }
    None
}

/// Opens /dev/kvm, with the reason it failed.
pub fn open_kvm() -> Result<Arc<KvmHypervisor>, String> {
    KvmHypervisor::open()
        .map(Arc::new)
        .map_err(|e| format!("/dev/kvm unavailable: {e}"))
}

/// The model profile matching the running kernel (or the one requested).
pub fn model_profile(requested: &str) -> Result<KernelProfile, String> {
    match requested {
        "6.12" => Ok(KernelProfile::V6_12),
        "6.18" => Ok(KernelProfile::V6_18),
        "auto" => {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            Ok(if release.starts_with("6.12") {
                KernelProfile::V6_12
            } else {
                KernelProfile::V6_18
            })
        }
        other => Err(format!(
            "unknown --profile `{other}` (expected 6.12, 6.18 or auto)"
        )),
    }
}

/// Picks the backend for a workload. `Err` is an exit-2 message.
pub fn choose(
    arg: BackendArg,
    w: &Workload,
    profile: KernelProfile,
) -> Result<(Chosen, String), String> {
    let needs_poison = !w.poison.is_empty();
    let model = || Chosen::Model(Arc::new(ModelHypervisor::new(profile)));
    match arg {
        BackendArg::Model => Ok((model(), "requested with --backend model".into())),
        BackendArg::Kvm => {
            let kvm = open_kvm()?;
            match kvm_blocker(&kvm, w.vm_type, needs_poison) {
                Some(why) => Err(format!("the kvm backend can't run this workload: {why}")),
                None => Ok((Chosen::Kvm(kvm), "requested with --backend kvm".into())),
            }
        }
        BackendArg::Auto => match open_kvm() {
            Err(why) => Ok((model(), why)),
            Ok(kvm) => match kvm_blocker(&kvm, w.vm_type, needs_poison) {
                Some(why) => Ok((model(), why)),
                None => Ok((
                    Chosen::Kvm(kvm),
                    format!("host KVM supports VM type {}", w.vm_type.name()),
                )),
            },
        },
    }
}
