//! Backend selection: `--backend auto` picks KVM when the host can run the
//! workload there, otherwise the model, and says why.

use std::sync::Arc;

use privmem_core::{Cap, Hypervisor, VmType};
use privmem_kvm::guest::Transport;
use privmem_kvm::{sigrtmin, KickSignal, KvmHypervisor, KvmOptions};
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
        return kvm
            .poison_blocker(ty)
            .map(|why| format!("the workload poisons pages: {why}"));
    }
    None
}

/// Environment variable that turns the KVM backend's `gmem_hva` emulation
/// on ("1") or off ("0"); unset: on on PVM hosts ([`KvmOptions::probe`]).
pub const GMEM_HVA_ENV: &str = "PRIVMEM_GMEM_HVA";
/// Environment variable that forces the hypercall transport ("vmcall",
/// "vmmcall" or "port-io"), e.g. to exercise the port-I/O path on a
/// hardware-virt host.
pub const TRANSPORT_ENV: &str = "PRIVMEM_HYPERCALL_TRANSPORT";

/// The KVM options of the CLI: the host's ([`KvmOptions::probe`]), the
/// overrides of [`GMEM_HVA_ENV`] and [`TRANSPORT_ENV`], and a `SIGRTMIN`
/// kick (the CLI owns its process's signals; `--timeout` needs kicks that
/// interrupt a guest inside `KVM_RUN`).
pub fn kvm_options() -> KvmOptions {
    let mut options = KvmOptions::probe().with_kick(KickSignal::Install(sigrtmin()));
    match std::env::var(GMEM_HVA_ENV).as_deref() {
        Ok("1") => options.quirks.gmem_hva = true,
        Ok("0") => options.quirks.gmem_hva = false,
        _ => {}
    }
    if let Some(t) = std::env::var(TRANSPORT_ENV)
        .ok()
        .as_deref()
        .and_then(Transport::from_name)
    {
        options.transport = Some(t);
    }
    options
}

/// Opens /dev/kvm with [`kvm_options`].
///
/// # Errors
/// The backend's error when /dev/kvm cannot be opened.
pub fn open_kvm_raw() -> Result<KvmHypervisor, privmem_core::BackendError> {
    KvmHypervisor::open(kvm_options())
}

/// Opens /dev/kvm with [`kvm_options`], with the reason it failed.
pub fn open_kvm() -> Result<Arc<KvmHypervisor>, String> {
    open_kvm_raw()
        .map(Arc::new)
        .map_err(|e| format!("/dev/kvm unavailable: {e}"))
}

/// The model profile matching the running kernel (or the one requested):
/// "6.12", "7.3", or "auto" (6.12 on a 6.12 kernel, else 7.3).
pub fn model_profile(requested: &str) -> Result<KernelProfile, String> {
    if let Some(p) = KernelProfile::from_name(requested) {
        return Ok(p);
    }
    match requested {
        "auto" => {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            Ok(if release.starts_with("6.12") {
                KernelProfile::V6_12
            } else {
                KernelProfile::V7_3
            })
        }
        "6.18" => Err(
            "--profile 6.18 was retired: it was never checked against a kernel with private \
             memory; use 7.3 (identical but for 6.18's EINVAL on overlapping guest_memfd file \
             ranges)"
                .into(),
        ),
        other => Err(format!(
            "unknown --profile `{other}` (expected 6.12, 7.3 or auto)"
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
