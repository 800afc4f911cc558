//! The plain-words summary under `privmem caps`: which VM types run on
//! real KVM here and why the others run on the model, whether guest_memfd
//! exists and what privmem does without it, and how to get real private
//! memory. A pure function of the probed facts, so tests feed it any host.

use privmem_core::VmType;

/// The kernel the rig boots by default, and the other one it offers.
const RIG_DEFAULT_KERNEL: &str = "7.3";
const RIG_OTHER_KERNEL: &str = "6.12";

/// What the summary is made from: the probe's results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    /// Why `/dev/kvm` cannot be used, if it cannot (then nothing else is known).
    pub kvm_unavailable: Option<String>,
    /// Each VM type privmem knows, with why it cannot run on this KVM
    /// (`None`: it runs on real KVM).
    pub vm_types: Vec<(VmType, Option<String>)>,
    /// `KVM_CAP_GUEST_MEMFD` at system scope (0: no guest_memfd).
    pub guest_memfd: u64,
    /// `KVM_CAP_GUEST_MEMFD_FLAGS` at system scope.
    pub gmem_flags: u64,
    /// The host KVM is PVM (software virtualization).
    pub pvm: bool,
}

/// `GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED`.
const MMAP_INIT_SHARED: u64 = 0b11;

fn join_names(types: &[VmType]) -> String {
    let names: Vec<&str> = types.iter().map(|t| t.name()).collect();
    match names.as_slice() {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

fn vm_type_lines(f: &HostFacts, out: &mut Vec<String>) {
    if let Some(why) = &f.kvm_unavailable {
        out.push(format!(
            "Every VM type runs on the model here: {why}. The model is privmem's \
             deterministic model of the kernel's private-memory rules (Linux 6.12/6.18), \
             so workloads run and give the kernel's answers without /dev/kvm."
        ));
        return;
    }
    let on_kvm: Vec<VmType> = f
        .vm_types
        .iter()
        .filter(|(_, why)| why.is_none())
        .map(|(t, _)| *t)
        .collect();
    let host = if f.pvm {
        "real KVM (/dev/kvm, PVM: software virtualization)"
    } else {
        "real KVM (/dev/kvm)"
    };
    let model: Vec<&(VmType, Option<String>)> =
        f.vm_types.iter().filter(|(_, why)| why.is_some()).collect();
    let model_types: Vec<VmType> = model.iter().map(|(t, _)| *t).collect();
    let verb = |n: usize| if n == 1 { "runs" } else { "run" };
    let on_model = format!(
        "{} {} on the model, privmem's deterministic model of the kernel's private-memory \
         rules, because:",
        join_names(&model_types),
        verb(model_types.len())
    );
    let on_host = format!("{} {} on {host}", join_names(&on_kvm), verb(on_kvm.len()));
    out.push(match (on_kvm.is_empty(), model.is_empty()) {
        (true, _) => format!("No VM type runs on {host} here; all run on the model:"),
        (false, true) => format!("{on_host}."),
        (false, false) => format!("{on_host}; {on_model}"),
    });
    for (t, why) in model {
        out.push(format!(
            "  - {}: {}",
            t.name(),
            why.as_deref().unwrap_or("")
        ));
    }
}

fn guest_memfd_line(f: &HostFacts, private_on_kvm: bool) -> String {
    if f.kvm_unavailable.is_some() {
        return "guest_memfd: unknown without /dev/kvm; the model has it.".into();
    }
    if f.guest_memfd == 0 {
        return "guest_memfd: none on this host (KVM_CAP_GUEST_MEMFD = 0). privmem backs default \
                VMs with a plain memfd at userspace_addr instead, and private memory (guest_memfd \
                pages, private attributes, private memory faults) exists only on the model here."
            .into();
    }
    let shared = if f.gmem_flags & MMAP_INIT_SHARED == MMAP_INIT_SHARED {
        "privmem makes an MMAP|INIT_SHARED guest_memfd a default VM's only memory"
    } else {
        "without MMAP|INIT_SHARED a guest_memfd cannot serve shared accesses, so privmem backs \
         default VMs with a plain memfd"
    };
    let private = if private_on_kvm {
        "private memory runs on real KVM here"
    } else {
        "private pages need a VM type with private memory (sw-protected, SNP, TDX), which this \
         KVM does not offer, so they exist only on the model here"
    };
    format!(
        "guest_memfd: yes (KVM_CAP_GUEST_MEMFD = {}, flags {:#x}); {shared}; {private}.",
        f.guest_memfd, f.gmem_flags
    )
}

fn rig_lines(private_on_kvm: bool, out: &mut Vec<String>) {
    let lead = if private_on_kvm {
        "The rig runs privmem on other kernels with real private memory:"
    } else {
        "Real private memory: run privmem inside the rig, a throw-away VM emulated with TCG \
         whose kernel has guest_memfd and KVM_SW_PROTECTED_VM:"
    };
    out.push(lead.into());
    out.push(format!(
        "    rig/run -- privmem demo                   (kernel {RIG_DEFAULT_KERNEL}, the default)"
    ));
    out.push(format!(
        "    rig/run --kernel {RIG_OTHER_KERNEL} -- privmem demo"
    ));
    out.push(
        "  (any privmem command works after the --; the first run builds the kernel, see \
         rig/README.md)"
            .into(),
    );
}

/// The summary, one line per element (indented lines continue a list).
pub fn summary(f: &HostFacts) -> Vec<String> {
    let private_on_kvm = f.kvm_unavailable.is_none()
        && f.guest_memfd != 0
        && f.vm_types
            .iter()
            .any(|(t, why)| t.has_private_mem() && why.is_none());
    let mut out = Vec::new();
    vm_type_lines(f, &mut out);
    out.push(guest_memfd_line(f, private_on_kvm));
    rig_lines(private_on_kvm, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_SW: &str = "host KVM has no VM type sw-protected (KVM_CAP_VM_TYPES=0x1)";
    const NO_COCO: &str = "privmem runs coco VMs on KVM only as SNP/TDX (VM types 4/5)";

    /// This host: PVM, default VMs only, no guest_memfd.
    fn pvm_without_gmem() -> HostFacts {
        HostFacts {
            kvm_unavailable: None,
            vm_types: vec![
                (VmType::Default, None),
                (VmType::SwProtected, Some(NO_SW.into())),
                (VmType::Coco, Some(NO_COCO.into())),
            ],
            guest_memfd: 0,
            gmem_flags: 0,
            pvm: true,
        }
    }

    fn text(f: &HostFacts) -> String {
        summary(f).join("\n")
    }

    #[test]
    fn a_host_without_guest_memfd_says_so_and_points_at_the_rig() {
        let s = text(&pvm_without_gmem());
        assert!(
            s.starts_with("default runs on real KVM (/dev/kvm, PVM"),
            "{s}"
        );
        assert!(s.contains("sw-protected and coco run on the model"), "{s}");
        assert!(s.contains(&format!("  - sw-protected: {NO_SW}")), "{s}");
        assert!(s.contains(&format!("  - coco: {NO_COCO}")), "{s}");
        assert!(
            s.contains("guest_memfd: none on this host (KVM_CAP_GUEST_MEMFD = 0)"),
            "{s}"
        );
        assert!(s.contains("plain memfd at userspace_addr"), "{s}");
        assert!(
            s.contains("Real private memory: run privmem inside the rig"),
            "{s}"
        );
        assert!(s.contains("rig/run -- privmem demo"), "{s}");
        assert!(s.contains("(kernel 7.3, the default)"), "{s}");
        assert!(s.contains("rig/run --kernel 6.12 -- privmem demo"), "{s}");
        assert!(!s.contains("runs on real KVM here"), "{s}");
    }

    #[test]
    fn guest_memfd_with_mmap_backs_default_vms_but_private_memory_stays_on_the_model() {
        let f = HostFacts {
            guest_memfd: 1,
            gmem_flags: 3,
            ..pvm_without_gmem()
        };
        let s = text(&f);
        assert!(
            s.contains("guest_memfd: yes (KVM_CAP_GUEST_MEMFD = 1, flags 0x3)"),
            "{s}"
        );
        assert!(
            s.contains("MMAP|INIT_SHARED guest_memfd a default VM's only memory"),
            "{s}"
        );
        assert!(s.contains("exist only on the model here"), "{s}");
        assert!(!s.contains("none on this host"), "{s}");
        // Without the flags, default VMs fall back to a memfd.
        let s = text(&HostFacts { gmem_flags: 0, ..f });
        assert!(s.contains("backs default VMs with a plain memfd"), "{s}");
    }

    #[test]
    fn a_host_with_sw_protected_vms_runs_private_memory_on_kvm() {
        let f = HostFacts {
            kvm_unavailable: None,
            vm_types: vec![
                (VmType::Default, None),
                (VmType::SwProtected, None),
                (VmType::Coco, Some(NO_COCO.into())),
            ],
            guest_memfd: 1,
            gmem_flags: 0,
            pvm: false,
        };
        let s = text(&f);
        assert!(
            s.starts_with("default and sw-protected run on real KVM (/dev/kvm);"),
            "{s}"
        );
        assert!(s.contains("coco runs on the model"), "{s}");
        assert!(!s.contains("  - sw-protected"), "{s}");
        assert!(s.contains("private memory runs on real KVM here"), "{s}");
        assert!(s.contains("The rig runs privmem on other kernels"), "{s}");
        assert!(
            !s.contains("Real private memory: run privmem inside the rig"),
            "{s}"
        );
    }

    #[test]
    fn without_dev_kvm_everything_runs_on_the_model() {
        let f = HostFacts {
            kvm_unavailable: Some("/dev/kvm unavailable: No such file or directory".into()),
            vm_types: vec![],
            guest_memfd: 0,
            gmem_flags: 0,
            pvm: false,
        };
        let s = text(&f);
        assert!(
            s.starts_with("Every VM type runs on the model here: /dev/kvm unavailable"),
            "{s}"
        );
        assert!(s.contains("guest_memfd: unknown without /dev/kvm"), "{s}");
        assert!(
            s.contains("Real private memory: run privmem inside the rig"),
            "{s}"
        );
    }

    #[test]
    fn no_type_on_kvm_lists_every_reason() {
        let f = HostFacts {
            vm_types: vec![
                (VmType::Default, Some("x".into())),
                (VmType::Coco, Some("y".into())),
            ],
            ..pvm_without_gmem()
        };
        let s = text(&f);
        assert!(s.starts_with("No VM type runs on real KVM"), "{s}");
        assert!(s.contains("  - default: x\n  - coco: y"), "{s}");
    }
}
