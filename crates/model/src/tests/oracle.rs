//! Property test: the model against a dense per-page oracle (rangemap style).
//!
//! A sw-protected VM with one guest_memfd slot (file without MMAP) and a
//! shared backing. Random sequences of attribute changes, guest writes, gmem
//! punches and shared discards; after each step every page must read back
//! what the oracle says: private pages from gmem, shared pages from the
//! shared backing, attributes never moving data.

use proptest::prelude::*;

use privmem_core::backend::{
    GuestOp, Hypervisor, SharedKind, SharedMemory, Vcpu, Vm, FALLOC_FL_KEEP_SIZE as KEEP,
    FALLOC_FL_PUNCH_HOLE as PUNCH,
};
use privmem_core::{Exit, GmemFlags, GuestReport, VmType};

use super::*;

const N: u64 = 16;

#[derive(Clone, Debug)]
enum Op {
    Attr { start: u64, len: u64, private: bool },
    Write { start: u64, len: u64, byte: u8 },
    Punch { start: u64, len: u64 },
    Discard { start: u64, len: u64 },
}

fn span() -> impl Strategy<Value = (u64, u64)> {
    (0..N).prop_flat_map(|s| (Just(s), 1..=N - s))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (span(), any::<bool>()).prop_map(|((start, len), private)| Op::Attr {
            start,
            len,
            private
        }),
        (span(), 1..=255u8).prop_map(|((start, len), byte)| Op::Write { start, len, byte }),
        span().prop_map(|(start, len)| Op::Punch { start, len }),
        span().prop_map(|(start, len)| Op::Discard { start, len }),
    ]
}

#[derive(Default)]
struct Oracle {
    private: [bool; N as usize],
    gmem: [u8; N as usize],
    shared: [u8; N as usize],
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn model_matches_dense_oracle(ops in proptest::collection::vec(op(), 1..24)) {
        let (hv, vm) = setup_vm(VmType::SwProtected);
        let g = gmem(&vm, N * PG, GmemFlags(0));
        let mem = vm.create_shared(N * PG, SharedKind::Anonymous).unwrap();
        add_gmem_slot_with_shared(&vm, 1, 0, &mem, &g, 0).unwrap();
        let mut o = Oracle::default();
        let mut idx = 0u32;
        for op in ops {
            match op {
                Op::Attr { start, len, private } => {
                    vm.set_memory_attributes(start * PG, len * PG, if private { 8 } else { 0 }, 0).unwrap();
                    o.private[start as usize..(start + len) as usize].fill(private);
                }
                Op::Write { start, len, byte } => {
                    let mut v = vcpu(&vm, idx, &[w(start * PG, len * PG, byte, privmem_core::backend::Access::Shared)]);
                    idx += 1;
                    prop_assert_eq!(v.run().unwrap(), Exit::Hlt);
                    for p in start..start + len {
                        let p = p as usize;
                        if o.private[p] { o.gmem[p] = byte } else { o.shared[p] = byte }
                    }
                }
                Op::Punch { start, len } => {
                    hv.gmem_fallocate(&g, KEEP | PUNCH, (start * PG) as i64, (len * PG) as i64).unwrap();
                    o.gmem[start as usize..(start + len) as usize].fill(0);
                }
                Op::Discard { start, len } => {
                    mem.discard(start * PG, len * PG).unwrap();
                    o.shared[start as usize..(start + len) as usize].fill(0);
                }
            }
            let reads: Vec<GuestOp> = (0..N)
                .map(|p| {
                    let e = if o.private[p as usize] { o.gmem[p as usize] } else { o.shared[p as usize] };
                    r(p * PG, PG, e, privmem_core::backend::Access::Shared)
                })
                .collect();
            let mut v = vcpu(&vm, idx, &reads);
            idx += 1;
            for _ in 0..N {
                prop_assert_eq!(v.run().unwrap(), Exit::Report(GuestReport::CheckPassed));
            }
            for p in 0..N {
                prop_assert_eq!(vm.is_private(privmem_core::Gpa(p * PG)), o.private[p as usize]);
            }
        }
    }
}
