//! `--profile`: which kernel the model behaves as. An upstream profile
//! (`7.3`, `6.12`) is Linux at that version with everything privmem uses
//! (sw-protected VMs, guest_memfd, attributes, TDP); `host` is this host's
//! KVM: the running kernel's profile cut down to the host's capabilities and
//! quirks ([`host_model`]), what the KVM backend is compared with.

use privmem_conformance::host_model;
use privmem_model::{KernelProfile, ModelHypervisor};

/// What `--profile` means when it is not given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileDefault {
    /// The newest upstream profile verified against a real kernel (the
    /// suite and `--findings`: the model shows every case it can run).
    NewestVerified,
    /// This host's KVM (the differential: the model must give what this
    /// host's KVM gives).
    Host,
}

/// The model a conformance run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelProfile {
    /// Upstream Linux at this version, no host quirks.
    Upstream(KernelProfile),
    /// This host's KVM: the running kernel's profile with the host's MMU
    /// width, SMM, guest_memfd, memory attributes, TDP and quirks.
    Host(KernelProfile),
}

/// The newest profile checked against a real kernel in the rig. Every
/// profile the model keeps was (`6.18`, never checked, was retired), so
/// this is the newest one.
pub fn newest_verified() -> KernelProfile {
    KernelProfile::ALL[KernelProfile::ALL.len() - 1]
}

impl ModelProfile {
    /// The profile `--profile arg` asks for (`7.3`, `6.12`, `host`, or
    /// `auto`, an alias of `host`), or `default` without the option.
    ///
    /// # Errors
    /// An unknown or retired profile name, with the accepted ones.
    pub fn parse(arg: Option<&str>, default: ProfileDefault) -> Result<ModelProfile, String> {
        let running = || crate::backends::model_profile("auto");
        match (arg, default) {
            (None, ProfileDefault::NewestVerified) => Ok(ModelProfile::Upstream(newest_verified())),
            (None, ProfileDefault::Host) | (Some("host" | "auto"), _) => {
                running().map(ModelProfile::Host)
            }
            (Some(name), _) => match crate::backends::model_profile(name) {
                Ok(p) => Ok(ModelProfile::Upstream(p)),
                Err(e) if e.starts_with("unknown") => Err(format!(
                    "unknown --profile `{name}` (expected 7.3 or 6.12 for upstream Linux, or \
                     host for this host's KVM)"
                )),
                Err(e) => Err(e),
            },
        }
    }

    /// The kernel version the model behaves as.
    pub fn kernel(self) -> KernelProfile {
        match self {
            ModelProfile::Upstream(p) | ModelProfile::Host(p) => p,
        }
    }

    /// `7.3`, `6.12` or `host` (the JSON `profile`).
    pub fn name(self) -> &'static str {
        match self {
            ModelProfile::Upstream(p) => p.name(),
            ModelProfile::Host(_) => "host",
        }
    }

    /// For the summary: "profile 7.3, upstream Linux" or "profile host:
    /// 7.3 as this host's KVM".
    pub fn describe(self) -> String {
        match self {
            ModelProfile::Upstream(p) => format!("profile {}, upstream Linux", p.name()),
            ModelProfile::Host(p) => format!("profile host: {} as this host's KVM", p.name()),
        }
    }

    /// The model this profile describes; `host` takes the quirks of the
    /// CLI's KVM options (PVM, `PRIVMEM_GMEM_HVA`).
    pub fn build(self) -> ModelHypervisor {
        match self {
            ModelProfile::Upstream(p) => ModelHypervisor::new(p),
            ModelProfile::Host(p) => host_model(p, crate::backends::kvm_options().quirks),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_the_newest_verified_upstream_profile_for_the_suite() {
        assert_eq!(newest_verified(), KernelProfile::V7_3);
        assert_eq!(
            ModelProfile::parse(None, ProfileDefault::NewestVerified),
            Ok(ModelProfile::Upstream(KernelProfile::V7_3))
        );
    }

    #[test]
    fn default_is_the_host_for_the_differential_and_auto_is_host() {
        let host = ModelProfile::parse(None, ProfileDefault::Host).unwrap();
        assert!(matches!(host, ModelProfile::Host(_)), "{host:?}");
        for arg in ["host", "auto"] {
            let p = ModelProfile::parse(Some(arg), ProfileDefault::NewestVerified).unwrap();
            assert_eq!(p, host, "{arg}");
            assert_eq!(p.name(), "host");
        }
    }

    #[test]
    fn explicit_versions_are_upstream_and_unknown_names_are_refused() {
        for (arg, want) in [("6.12", KernelProfile::V6_12), ("7.3", KernelProfile::V7_3)] {
            let p = ModelProfile::parse(Some(arg), ProfileDefault::Host).unwrap();
            assert_eq!(p, ModelProfile::Upstream(want));
            assert_eq!(p.name(), arg);
        }
        let e = ModelProfile::parse(Some("7.4"), ProfileDefault::Host).unwrap_err();
        assert!(e.contains("`7.4`") && e.contains("host"), "{e}");
        let e = ModelProfile::parse(Some("6.18"), ProfileDefault::Host).unwrap_err();
        assert!(e.contains("retired"), "{e}");
    }
}
