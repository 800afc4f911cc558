//! The differential test: the same proptest operation sequences on the
//! model (profile matching the running kernel) and on real KVM must give
//! identical results. Without /dev/kvm it skips visibly (a failure under
//! `REQUIRE_KVM=1`). A model-vs-model run checks the harness itself is
//! deterministic.

mod common;

use std::cell::RefCell;

use privmem_conformance::differential::{
    default_floor, run, run_with_progress, DiffConfig, DiffProgress,
};
use privmem_conformance::host_model;
use privmem_core::VmType;
use privmem_model::{KernelProfile, ModelHypervisor};

/// The model profile matching the running kernel.
fn profile() -> KernelProfile {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if release.starts_with("6.12") {
        KernelProfile::V6_12
    } else {
        KernelProfile::V7_3
    }
}

fn config() -> DiffConfig {
    let mut cfg = DiffConfig::default();
    if let Some(n) = std::env::var("PRIVMEM_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.cases = n;
    }
    if let Some(n) = std::env::var("PRIVMEM_DIFF_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.max_steps = n;
    }
    if let Some(s) = std::env::var("PRIVMEM_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.seed = s;
    }
    cfg
}

#[test]
fn model_against_itself_is_deterministic() {
    let a = ModelHypervisor::new(profile());
    let b = ModelHypervisor::new(profile());
    // Enough sequences that every kind of result below shows up (a model
    // run takes milliseconds).
    let mut cfg = config();
    cfg.cases = cfg.cases.max(256);
    let report = run(&a, &b, &cfg).expect("differential ran");
    assert!(report.agreed(), "{}", report.difference.unwrap_or_default());
    assert!(report.vm_types.contains(&VmType::SwProtected));
    for what in [
        "SetAttributes: ok",
        "Run: Fault",
        "Run: Hlt",
        "SetRegion: ok",
        "CreateGmem: ok",
    ] {
        assert!(
            report.results.contains_key(what),
            "no `{what}` in {:#?}",
            report.results
        );
    }
}

#[test]
fn pvm_quirked_model_against_itself_is_deterministic() {
    let quirked = || ModelHypervisor::new(profile()).with_quirks(privmem_core::Quirks::PVM);
    let report = run(&quirked(), &quirked(), &config()).expect("differential ran");
    assert!(report.agreed(), "{}", report.difference.unwrap_or_default());
}

#[test]
fn model_and_kvm_agree() {
    let Some(kvm) = common::kvm_or_skip("model_and_kvm_agree") else {
        return;
    };
    // The model as this host should look: its MMU width and its quirks
    // (PVM here; none on the rig's upstream 6.12).
    let model = host_model(profile(), privmem_core::Hypervisor::quirks(&kvm));
    let report = run(&model, &kvm, &config()).expect("differential ran");
    eprintln!(
        "differential: {} sequences, {} steps per backend, VM types {:?}, seed {:#x}, \
         model max_gpa_bits {}, quirks {:?}",
        report.sequences,
        report.steps,
        report.vm_types,
        report.seed,
        model.max_gpa_bits(),
        privmem_core::Hypervisor::quirks(&model)
    );
    eprintln!("{}", report.coverage.table());
    assert!(report.agreed(), "{}", report.difference.unwrap_or_default());
    let floor = default_floor(&report.vm_types, model.guest_memfd());
    if let Err(why) = report.coverage.check_floor(floor) {
        panic!("{why}\n{}", report.coverage.table());
    }
}

/// The rig's kernel as the model sees it (6.12, SMM, sw-protected VMs):
/// against itself, at least 70% of the steps compare a result that varies
/// (what the rig's real run must meet too).
#[test]
fn rig_like_model_compares_at_least_70_percent() {
    let rig = || ModelHypervisor::new(KernelProfile::V6_12).with_smm(true);
    let report = run(&rig(), &rig(), &config()).expect("differential ran");
    eprintln!("{}", report.coverage.table());
    assert!(report.agreed(), "{}", report.difference.unwrap_or_default());
    assert_eq!(default_floor(&report.vm_types, true), 0.70);
    if let Err(why) = report.coverage.check_floor(0.70) {
        panic!("{why}\n{}", report.coverage.table());
    }
}

/// A kernel without guest_memfd gives mostly n/a and ENOTTY: the rig's
/// floor fails there, with the shares that made it fail; its own floor
/// holds.
#[test]
fn a_run_that_is_mostly_na_and_enotty_fails_the_rig_floor() {
    let bare = || ModelHypervisor::new(profile()).with_guest_memfd(false);
    let report = run(&bare(), &bare(), &config()).expect("differential ran");
    eprintln!("{}", report.coverage.table());
    let why = report.coverage.check_floor(0.70).unwrap_err();
    assert!(why.contains("CreateGmem always ENOTTY"), "{why}");
    let floor = default_floor(&report.vm_types, false);
    assert!(floor < 0.70);
    if let Err(why) = report.coverage.check_floor(floor) {
        panic!("{why}\n{}", report.coverage.table());
    }
}

/// Progress is told after every sequence: 1 to `cases` when the backends
/// agree; once they differ, every later call (the shrinking runs) says so.
#[test]
fn progress_counts_every_sequence_and_marks_shrinking() {
    let cfg = DiffConfig {
        cases: 16,
        ..config()
    };
    let seen: RefCell<Vec<DiffProgress>> = RefCell::new(Vec::new());
    let m = || ModelHypervisor::new(profile());
    let report = run_with_progress(&m(), &m(), &cfg, &|p| seen.borrow_mut().push(p))
        .expect("differential ran");
    assert!(report.agreed(), "{}", report.difference.unwrap_or_default());
    let agreed = seen.take();
    assert_eq!(agreed.len(), 16);
    for (i, p) in agreed.iter().enumerate() {
        let want = DiffProgress {
            sequences: i as u64 + 1,
            total: 16,
            shrinking: false,
        };
        assert_eq!(*p, want);
    }
    // Without guest_memfd, `CreateGmem` is ENOTTY: the backends differ.
    let bare = m().with_guest_memfd(false);
    let cfg = DiffConfig { cases: 64, ..cfg };
    let report = run_with_progress(&m(), &bare, &cfg, &|p| seen.borrow_mut().push(p))
        .expect("differential ran");
    assert!(!report.agreed());
    let differed = seen.take();
    let first = differed
        .iter()
        .position(|p| p.shrinking)
        .expect("a difference was found");
    assert!(
        differed[first..].iter().all(|p| p.shrinking),
        "{differed:?}"
    );
    assert_eq!(differed.last().unwrap().sequences, report.sequences);
    assert!(differed.iter().all(|p| p.total == 64));
}

mod pinned {
    //! Hand-written sequences for the host-dependent rules (the MMU width,
    //! the PVM quirks), which random sequences reach only now and then:
    //! the host-derived model must agree with KVM on each, step by step.

    use privmem_conformance::differential::ops::{
        GmemSel, GuestSpec, Op, RegionOp, Sequence, Target, UserSel, VmSel,
    };
    use privmem_core::backend::MEM_GUEST_MEMFD;
    use privmem_core::VmType;

    const PG: u64 = 4096;
    const M2: u64 = 2 << 20;

    fn gmem(flags: u64) -> Op {
        Op::CreateGmem {
            vm: VmSel::Main,
            size: M2,
            flags,
        }
    }

    fn slot(slot: u32, flags: u32, gpa: u64, size: u64, user: UserSel) -> Op {
        Op::SetRegion(RegionOp {
            v1: false,
            slot,
            flags,
            gpa,
            size,
            user,
            gmem: GmemSel::File(0),
            gmem_offset: 0,
        })
    }

    fn write(len: u64, byte: u8) -> GuestSpec {
        GuestSpec::Write {
            at: Target::Slot(0, 0),
            len,
            byte,
            private: false,
        }
    }

    fn read(len: u64, expect: u8) -> GuestSpec {
        GuestSpec::Read {
            at: Target::Slot(0, 0),
            len,
            expect,
            private: false,
        }
    }

    fn run(ops: &[GuestSpec]) -> Op {
        Op::Run { ops: ops.to_vec() }
    }

    fn host_read(len: u64) -> Op {
        Op::HostRead {
            map: 0,
            offset: 0,
            len,
        }
    }

    fn seq(ops: Vec<Op>) -> Sequence {
        Sequence {
            vm_type: VmType::Default,
            ops,
        }
    }

    /// Every pinned sequence.
    pub fn all() -> Vec<(&'static str, Sequence)> {
        let gmem_only = MEM_GUEST_MEMFD;
        vec![
            (
                "memslots at the MMU's highest gfn",
                seq(vec![
                    slot(0, 0, (1 << 52) - PG, PG, UserSel::Backing(0)),
                    slot(1, 0, 1 << 52, PG, UserSel::Backing(0)),
                    slot(2, 0, (1 << 52) - 2 * PG, 2 * PG, UserSel::Backing(0)),
                    slot(3, 0, (1 << 40) - PG, PG, UserSel::Backing(0)),
                    slot(4, 0, 1 << 40, PG, UserSel::Backing(0)),
                    slot(5, 0, (1 << 48) - PG, PG, UserSel::Backing(0)),
                    slot(6, 0, 1 << 48, PG, UserSel::Backing(0)),
                    slot(5, 0, 1 << 52, PG, UserSel::Backing(0)),
                    gmem(0),
                    slot(7, gmem_only, 1 << 52, PG, UserSel::Backing(0)),
                ]),
            ),
            (
                "gmem-only slot with a shared backing",
                seq(vec![
                    gmem(3),
                    slot(1, gmem_only, 0, M2, UserSel::Backing(0)),
                    run(&[write(PG, 0x5a), read(PG, 0x5a)]),
                    Op::SharedRead { offset: 0, len: PG },
                    Op::Mmap {
                        gmem: 0,
                        len: 4 * PG,
                        shared: true,
                    },
                    host_read(PG),
                    Op::Unmap { map: 0 },
                    Op::CloseGmem { gmem: 0 },
                    run(&[read(PG, 0x5a), write(8, 0x11)]),
                    Op::SharedRead { offset: 0, len: 16 },
                ]),
            ),
            (
                "gmem-only slot, NULL userspace_addr, MMAP|INIT_SHARED",
                seq(vec![
                    gmem(3),
                    slot(1, gmem_only, 1 << 32, M2, UserSel::Raw(0)),
                    Op::Mmap {
                        gmem: 0,
                        len: 4 * PG,
                        shared: true,
                    },
                    Op::HostWrite {
                        map: 0,
                        offset: 0,
                        len: PG,
                        byte: 0xa5,
                    },
                    run(&[read(PG, 0xa5), write(PG, 0x11)]),
                    host_read(PG),
                    Op::Unmap { map: 0 },
                    Op::CloseGmem { gmem: 0 },
                    run(&[read(PG, 0x11), write(PG, 0x22), read(PG, 0x22)]),
                    slot(1, 0, 0, 0, UserSel::Raw(0)),
                    run(&[write(8, 0x33)]),
                ]),
            ),
            (
                "gmem-only slot, NULL userspace_addr, MMAP only",
                seq(vec![
                    gmem(1),
                    slot(1, gmem_only, 0, M2, UserSel::Raw(0)),
                    run(&[write(8, 0x11)]),
                    run(&[read(8, 0)]),
                    Op::CloseGmem { gmem: 0 },
                    run(&[write(8, 0x11)]),
                ]),
            ),
            (
                "gmem slot without MMAP, shared backing, closed",
                seq(vec![
                    gmem(0),
                    slot(1, gmem_only, M2, M2, UserSel::Backing(M2)),
                    run(&[write(PG, 0x44)]),
                    Op::CloseGmem { gmem: 0 },
                    run(&[read(PG, 0x44)]),
                    Op::SharedRead {
                        offset: M2,
                        len: PG,
                    },
                ]),
            ),
        ]
    }
}

#[test]
fn pinned_sequences_agree() {
    use privmem_conformance::differential::check;
    let model = ModelHypervisor::new(profile());
    for (what, seq) in pinned::all() {
        check(&model, &model, &seq).unwrap_or_else(|d| panic!("{what}: model vs model: {d}"));
    }
    let Some(kvm) = common::kvm_or_skip("pinned_sequences_agree") else {
        return;
    };
    let model = host_model(profile(), privmem_core::Hypervisor::quirks(&kvm));
    for (what, seq) in pinned::all() {
        check(&model, &kvm, &seq).unwrap_or_else(|d| panic!("{what}: {d}"));
    }
}
