//! What the suite expects where kernels differ, per kernel, read from each
//! kernel's source (and measured in the rig where it runs): the suite's own
//! record, independent of the model, so a model profile that gets a rule
//! wrong fails the cases that check it.
//!
//! A backend names its kernel with [`privmem_core::Hypervisor::kernel_release`]
//! (`uname -r` on KVM; the profile's name on the model), and the suite
//! expects the behaviour of the nearest kernel it knows: 6.12 means
//! Debian's 6.12.118, the rig's kernel; 6.18 this host's; 7.3 Debian's
//! 7.3.4 backport.

use privmem_core::Errno;

/// A kernel whose differences the suite knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Linux 6.12 (Debian's 6.12.118) and anything older.
    V6_12,
    /// Linux 6.18, and kernels between 6.12 and 7.3.
    V6_18,
    /// Linux 7.3 and newer.
    V7_3,
}

impl Kernel {
    /// The kernel a release string (`6.12.118-amd64`, `6.18.44-fc-v657`,
    /// `7.3`) behaves as; an unparsable one as 6.18, the model's default.
    pub fn from_release(release: &str) -> Kernel {
        let mut parts = release
            .trim()
            .split(|c: char| !c.is_ascii_digit())
            .map(|p| p.parse::<u32>().ok());
        match (parts.next().flatten(), parts.next().flatten()) {
            (Some(major), Some(minor)) if (major, minor) <= (6, 12) => Kernel::V6_12,
            (Some(major), Some(minor)) if (major, minor) >= (7, 3) => Kernel::V7_3,
            _ => Kernel::V6_18,
        }
    }

    /// `6.12`, `6.18` or `7.3`.
    pub const fn name(self) -> &'static str {
        match self {
            Kernel::V6_12 => "6.12",
            Kernel::V6_18 => "6.18",
            Kernel::V7_3 => "7.3",
        }
    }

    /// The errno of a guest_memfd memslot whose file range another memslot
    /// already binds (B4): `EEXIST` where the binding is recorded in the
    /// memslot commit phase (6.12.118, 7.3), `EINVAL` where
    /// `kvm_gmem_bind()` records it (6.18, and 6.12.117 before).
    pub const fn gmem_overlap_errno(self) -> Errno {
        match self {
            Kernel::V6_12 | Kernel::V7_3 => Errno::EEXIST,
            Kernel::V6_18 => Errno::EINVAL,
        }
    }

    /// True if `KVM_HC_MAP_GPA_RANGE` presets `kvm_run.hypercall.ret` to 0
    /// before exiting (F30): a guest whose exit userspace does not complete
    /// gets 0. 6.12 never writes `ret`, so the guest gets what userspace
    /// last wrote there.
    pub const fn presets_hypercall_ret(self) -> bool {
        match self {
            Kernel::V6_12 => false,
            Kernel::V6_18 | Kernel::V7_3 => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_map_to_the_nearest_known_kernel() {
        assert_eq!(Kernel::from_release("6.12.118-amd64"), Kernel::V6_12);
        assert_eq!(Kernel::from_release("6.12"), Kernel::V6_12);
        assert_eq!(Kernel::from_release("6.1.0-28-amd64"), Kernel::V6_12);
        assert_eq!(Kernel::from_release("6.18.44-fc-v657"), Kernel::V6_18);
        assert_eq!(Kernel::from_release("6.18"), Kernel::V6_18);
        assert_eq!(Kernel::from_release("6.13.2"), Kernel::V6_18);
        assert_eq!(Kernel::from_release("7.3"), Kernel::V7_3);
        assert_eq!(Kernel::from_release("7.3.4+bpo-amd64"), Kernel::V7_3);
        assert_eq!(Kernel::from_release("8.0"), Kernel::V7_3);
        assert_eq!(Kernel::from_release("unknown"), Kernel::V6_18);
    }

    #[test]
    fn each_kernel_has_one_overlap_errno() {
        assert_eq!(Kernel::V6_12.gmem_overlap_errno(), Errno::EEXIST);
        assert_eq!(Kernel::V6_18.gmem_overlap_errno(), Errno::EINVAL);
        assert_eq!(Kernel::V7_3.gmem_overlap_errno(), Errno::EEXIST);
    }
}
