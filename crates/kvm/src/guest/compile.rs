//! Compiles [`GuestOp`]s to x86-64 code (long mode, identity-mapped).
//!
//! Guest→host protocol: every report is an `out` to one of privmem's
//! [`ports`]; the values travel in registers, which the backend reads with
//! `KVM_GET_REGS` on the I/O exit, except a `sync` whose tag fits in 32 bits:
//! that one is a 4-byte `out imm8, eax` and the tag is the port data itself,
//! so the exit costs no `KVM_GET_REGS` (a sync is a progress report; its
//! round trip is what `privmem bench exit` measures).
//!
//! | port | report | registers |
//! |---|---|---|
//! | `0xd0` | `Sync { tag }` | 4-byte out: EAX = tag (tag < 2^32); 1-byte out: RBX = tag |
//! | `0xd1` | `CheckPassed` | – |
//! | `0xd2` | `CheckFailed { gpa, seen, expected }` | RDI = gpa, DL = seen, AL = expected |
//! | `0xd3` | `RetMismatch { gpa, ret, expected }` | RBX = gpa, RAX = ret, RCX = expected |
//! | `0xd5` | hypercall request (port-I/O transport) | RAX = nr, RBX/RCX/RDX/RSI = a0..a3 |
//!
//! After `CheckFailed` and `RetMismatch` the guest halts forever.

use privmem_core::exit::KVM_HC_MAP_GPA_RANGE;
use privmem_core::GuestOp;

use super::asm::{Asm, AsmError, Label, Reg};

/// privmem's protocol ports.
pub mod ports {
    /// `Sync { tag }`.
    pub const SYNC: u16 = 0xd0;
    /// `CheckPassed`.
    pub const CHECK_PASSED: u16 = 0xd1;
    /// `CheckFailed`.
    pub const CHECK_FAILED: u16 = 0xd2;
    /// `RetMismatch`.
    pub const RET_MISMATCH: u16 = 0xd3;
    /// Hypercall request over port I/O (PVM).
    pub const HYPERCALL: u16 = 0xd5;
    /// Every protocol port.
    pub const ALL: [u16; 5] = [SYNC, CHECK_PASSED, CHECK_FAILED, RET_MISMATCH, HYPERCALL];
}

/// How the guest issues `KVM_HC_MAP_GPA_RANGE`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Transport {
    /// `vmcall` (Intel VMX).
    Vmcall,
    /// `vmmcall` (AMD SVM).
    Vmmcall,
    /// `out` to [`ports::HYPERCALL`]; the backend emulates KVM (PVM hosts).
    PortIo,
}

impl Transport {
    /// The name `Vm::hypercall_transport` reports.
    pub const fn name(self) -> &'static str {
        match self {
            Transport::Vmcall => "vmcall",
            Transport::Vmmcall => "vmmcall",
            Transport::PortIo => "port-io",
        }
    }

    /// The transport [`Transport::name`] calls `name`, if any.
    pub fn from_name(name: &str) -> Option<Transport> {
        [Transport::Vmcall, Transport::Vmmcall, Transport::PortIo]
            .into_iter()
            .find(|t| t.name() == name)
    }
}

fn port8(p: u16) -> u8 {
    // Protocol ports are all < 0x100 so `out imm8, al` can reach them.
    u8::try_from(p).unwrap_or(u8::MAX)
}

/// Shared failure stubs, emitted once at the end of the program.
struct Stubs {
    check_failed: Label,
    ret_mismatch: Label,
}

/// Compiles `ops`. The program ends in an endless `hlt` loop.
pub fn compile(ops: &[GuestOp], transport: Transport) -> Result<Vec<u8>, AsmError> {
    let mut a = Asm::new();
    let stubs = Stubs {
        check_failed: a.label(),
        ret_mismatch: a.label(),
    };
    for op in ops {
        match *op {
            GuestOp::Write { gpa, len, byte, .. } => write(&mut a, gpa.raw(), len, byte),
            GuestOp::Read {
                gpa, len, expect, ..
            } => read(&mut a, &stubs, gpa.raw(), len, expect),
            GuestOp::Map {
                gpa,
                pages,
                attrs,
                expect_ret,
            } => map(&mut a, &stubs, transport, [gpa, pages, attrs], expect_ret),
            GuestOp::Sync { tag } => sync(&mut a, tag),
            GuestOp::Halt => a.hlt(),
            GuestOp::Spin => {
                let here = a.label();
                a.bind(here);
                a.jmp(here);
            }
        }
    }
    halt_forever(&mut a);
    a.bind(stubs.check_failed);
    a.out_al(port8(ports::CHECK_FAILED));
    halt_forever(&mut a);
    a.bind(stubs.ret_mismatch);
    a.out_al(port8(ports::RET_MISMATCH));
    halt_forever(&mut a);
    a.finish()
}

/// `Sync { tag }`: the tag as 4-byte port data when it fits (no register
/// read on the host), else in RBX with a 1-byte `out`.
fn sync(a: &mut Asm, tag: u64) {
    if u32::try_from(tag).is_ok() {
        a.mov_imm(Reg::Rax, tag);
        a.out_eax(port8(ports::SYNC));
    } else {
        a.mov_imm(Reg::Rbx, tag);
        a.out_al(port8(ports::SYNC));
    }
}

fn halt_forever(a: &mut Asm) {
    let l = a.label();
    a.bind(l);
    a.hlt();
    a.jmp(l);
}

/// Fills `[gpa, gpa+len)`: `rep stosq` for whole qwords, `rep stosb` for
/// the tail. String instructions keep the instruction count low, which
/// matters where KVM emulates the guest instruction by instruction (PVM's
/// non-PVM mode, measured at ~0.7 µs per iteration).
fn write(a: &mut Asm, gpa: u64, len: u64, byte: u8) {
    if len == 0 {
        return;
    }
    a.mov_imm(Reg::Rdi, gpa);
    a.mov_imm(Reg::Rax, u64::from(byte) * 0x0101_0101_0101_0101);
    if len / 8 > 0 {
        a.mov_imm(Reg::Rcx, len / 8);
        a.rep_stosq();
    }
    if !len.is_multiple_of(8) {
        a.mov_imm(Reg::Rcx, len % 8);
        a.rep_stosb();
    }
}

/// Checks `[gpa, gpa+len)` == `expect`.
///
/// Whole qwords go through `repe scasq`; a mismatch backs RDI up to the
/// offending qword and byte-scans it (RSI keeps the remaining qword count,
/// so a qword that changed back under us -- another vCPU -- resumes the
/// scan). The tail is a byte loop. The first bad byte jumps to the
/// `CheckFailed` stub with RDI pointing at it, DL = the byte seen and AL =
/// the byte expected.
fn read(a: &mut Asm, stubs: &Stubs, gpa: u64, len: u64, expect: u8) {
    let nq = len / 8;
    let tail = len % 8;
    a.mov_imm(Reg::Rdi, gpa);
    a.mov_imm(Reg::Rax, u64::from(expect) * 0x0101_0101_0101_0101);
    if nq > 0 {
        let (scan, qbytes, qdone) = (a.label(), a.label(), a.label());
        a.mov_imm(Reg::Rcx, nq);
        a.bind(scan);
        a.repe_scasq();
        a.je(qdone);
        a.sub_rdi_imm8(8);
        a.mov_rsi_rcx();
        a.mov_imm(Reg::Rcx, 8);
        a.bind(qbytes);
        byte_check(a, stubs, qbytes);
        a.mov_rcx_rsi();
        a.test_rcx_rcx();
        a.jne(scan);
        a.bind(qdone);
    }
    if tail > 0 {
        let tb = a.label();
        a.mov_imm(Reg::Rcx, tail);
        a.bind(tb);
        byte_check(a, stubs, tb);
    }
    a.out_al(port8(ports::CHECK_PASSED));
}

/// One iteration of a byte loop whose head is `top`; RCX counts bytes.
fn byte_check(a: &mut Asm, stubs: &Stubs, top: Label) {
    a.movzx_edx_mem_rdi();
    a.cmp_dl_al();
    a.jne(stubs.check_failed);
    a.inc_rdi();
    a.dec(Reg::Rcx);
    a.jne(top);
}

/// `KVM_HC_MAP_GPA_RANGE(a0, a1, a2)`; with `expect_ret`, a differing RAX
/// jumps to the `RetMismatch` stub (RBX = a0, RCX = expected).
fn map(a: &mut Asm, stubs: &Stubs, t: Transport, args: [u64; 3], expect_ret: Option<i64>) {
    a.mov_imm(Reg::Rax, KVM_HC_MAP_GPA_RANGE);
    a.mov_imm(Reg::Rbx, args[0]);
    a.mov_imm(Reg::Rcx, args[1]);
    a.mov_imm(Reg::Rdx, args[2]);
    a.mov_imm(Reg::Rsi, 0);
    match t {
        Transport::Vmcall => a.vmcall(),
        Transport::Vmmcall => a.vmmcall(),
        Transport::PortIo => a.out_al(port8(ports::HYPERCALL)),
    }
    a.mov_imm(Reg::Rbx, args[0]);
    if let Some(expected) = expect_ret {
        a.mov_imm(Reg::Rcx, expected as u64);
        a.cmp_rax_rcx();
        a.jne(stubs.ret_mismatch);
    }
}

#[cfg(test)]
mod tests {
    use privmem_core::{Access, Gpa};

    use super::*;

    #[test]
    fn compile_empty_program_is_halt_loop_and_stubs() {
        let code = compile(&[], Transport::PortIo).unwrap();
        // hlt; jmp -6  (halt forever)
        assert_eq!(&code[..6], &[0xf4, 0xe9, 0xfa, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn compile_write_emits_rep_stosq() {
        let ops = [GuestOp::Write {
            gpa: Gpa(0x1000),
            len: 16,
            byte: 0xab,
            access: Access::Shared,
        }];
        let code = compile(&ops, Transport::PortIo).unwrap();
        // mov edi, 0x1000; movabs rax, 0xabab..; mov ecx, 2; rep stosq
        let mut want = vec![0xbf, 0, 0x10, 0, 0, 0x48, 0xb8];
        want.extend_from_slice(&[0xab; 8]);
        want.extend_from_slice(&[0xb9, 2, 0, 0, 0, 0xf3, 0x48, 0xab]);
        assert_eq!(&code[..want.len()], &want[..]);
    }

    #[test]
    fn compile_sync_small_tag_is_port_data() {
        let code = compile(&[GuestOp::Sync { tag: 7 }], Transport::PortIo).unwrap();
        // mov eax, 7; out 0xd0, eax
        assert_eq!(&code[..7], &[0xb8, 7, 0, 0, 0, 0xe7, 0xd0]);
    }

    #[test]
    fn compile_sync_large_tag_uses_rbx() {
        let code = compile(&[GuestOp::Sync { tag: 1 << 40 }], Transport::PortIo).unwrap();
        // movabs rbx, 1 << 40; out 0xd0, al
        let mut want = vec![0x48, 0xbb];
        want.extend_from_slice(&(1u64 << 40).to_le_bytes());
        want.extend_from_slice(&[0xe6, 0xd0]);
        assert_eq!(&code[..want.len()], &want[..]);
    }

    #[test]
    fn compile_zero_length_write_emits_nothing() {
        let ops = [GuestOp::Write {
            gpa: Gpa(0x1000),
            len: 0,
            byte: 1,
            access: Access::Shared,
        }];
        assert_eq!(
            compile(&ops, Transport::PortIo).unwrap(),
            compile(&[], Transport::PortIo).unwrap()
        );
    }

    #[test]
    fn compile_map_vmmcall_contains_vmmcall() {
        let ops = [GuestOp::Map {
            gpa: 0,
            pages: 1,
            attrs: 0x10,
            expect_ret: Some(0),
        }];
        let code = compile(&ops, Transport::Vmmcall).unwrap();
        assert!(code.windows(3).any(|w| w == [0x0f, 0x01, 0xd9]));
    }

    #[test]
    fn compile_map_port_io_uses_hypercall_port() {
        let ops = [GuestOp::Map {
            gpa: 0,
            pages: 1,
            attrs: 0,
            expect_ret: None,
        }];
        let code = compile(&ops, Transport::PortIo).unwrap();
        assert!(code.windows(2).any(|w| w == [0xe6, 0xd5]));
    }
}
