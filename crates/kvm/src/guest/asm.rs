//! A tiny x86-64 encoder for the handful of instructions privmem's guest
//! programs need. Every encoding is pinned by a unit test against bytes
//! produced by GNU `as` (see the tests).

/// A general-purpose 64-bit register (the number is its encoding).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Reg {
    /// rax
    Rax = 0,
    /// rcx
    Rcx = 1,
    /// rdx
    Rdx = 2,
    /// rbx
    Rbx = 3,
    /// rsi
    Rsi = 6,
    /// rdi
    Rdi = 7,
}

/// A jump target, bound later with [`Asm::bind`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Label(usize);

/// Encoding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsmError {
    /// A label was used but never bound.
    #[error("label {0} used but never bound")]
    Unbound(usize),
    /// A jump displacement does not fit in 32 bits.
    #[error("jump displacement out of range")]
    Range,
}

/// An instruction buffer with rel32 label fixups.
#[derive(Debug, Default)]
pub struct Asm {
    code: Vec<u8>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
}

impl Asm {
    /// An empty buffer.
    pub fn new() -> Asm {
        Asm::default()
    }

    /// Current length in bytes.
    pub fn len(&self) -> usize {
        self.code.len()
    }

    /// True if nothing was emitted.
    pub fn is_empty(&self) -> bool {
        self.code.is_empty()
    }

    /// A fresh, unbound label.
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Binds `l` to the current position.
    pub fn bind(&mut self, l: Label) {
        self.labels[l.0] = Some(self.code.len());
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.code.extend_from_slice(bytes);
    }

    /// `mov reg, imm`: `mov r32, imm32` (zero-extends) when it fits, else
    /// `movabs r64, imm64`.
    pub fn mov_imm(&mut self, r: Reg, imm: u64) {
        let op = 0xb8 + r as u8;
        match u32::try_from(imm) {
            Ok(v) => {
                self.emit(&[op]);
                self.emit(&v.to_le_bytes());
            }
            Err(_) => {
                self.emit(&[0x48, op]);
                self.emit(&imm.to_le_bytes());
            }
        }
    }

    /// `rep stosb` (fill `[rdi, rdi+rcx)` with `al`).
    pub fn rep_stosb(&mut self) {
        self.emit(&[0xf3, 0xaa]);
    }

    /// `rep stosq` (store `rax` `rcx` times at `rdi`).
    pub fn rep_stosq(&mut self) {
        self.emit(&[0xf3, 0x48, 0xab]);
    }

    /// `repe scasq` (compare `rax` with qwords at `rdi` while equal and
    /// `rcx != 0`; on a mismatch ZF=0 and `rdi` is past the bad qword).
    pub fn repe_scasq(&mut self) {
        self.emit(&[0xf3, 0x48, 0xaf]);
    }

    /// `sub rdi, imm8`.
    pub fn sub_rdi_imm8(&mut self, imm: i8) {
        self.emit(&[0x48, 0x83, 0xef, imm.to_le_bytes()[0]]);
    }

    /// `mov rsi, rcx`.
    pub fn mov_rsi_rcx(&mut self) {
        self.emit(&[0x48, 0x89, 0xce]);
    }

    /// `mov rcx, rsi`.
    pub fn mov_rcx_rsi(&mut self) {
        self.emit(&[0x48, 0x89, 0xf1]);
    }

    /// `test rcx, rcx`.
    pub fn test_rcx_rcx(&mut self) {
        self.emit(&[0x48, 0x85, 0xc9]);
    }

    /// `je rel32`.
    pub fn je(&mut self, l: Label) {
        self.emit(&[0x0f, 0x84]);
        self.rel32(l);
    }

    /// `cmp qword [rdi], rax`.
    pub fn cmp_mem_rdi_rax(&mut self) {
        self.emit(&[0x48, 0x39, 0x07]);
    }

    /// `movzx edx, byte [rdi]`.
    pub fn movzx_edx_mem_rdi(&mut self) {
        self.emit(&[0x0f, 0xb6, 0x17]);
    }

    /// `cmp dl, al`.
    pub fn cmp_dl_al(&mut self) {
        self.emit(&[0x38, 0xc2]);
    }

    /// `cmp rax, rcx`.
    pub fn cmp_rax_rcx(&mut self) {
        self.emit(&[0x48, 0x39, 0xc8]);
    }

    /// `add rdi, imm8`.
    pub fn add_rdi_imm8(&mut self, imm: i8) {
        self.emit(&[0x48, 0x83, 0xc7, imm.to_le_bytes()[0]]);
    }

    /// `inc rdi`.
    pub fn inc_rdi(&mut self) {
        self.emit(&[0x48, 0xff, 0xc7]);
    }

    /// `dec reg` (rcx or rsi).
    pub fn dec(&mut self, r: Reg) {
        self.emit(&[0x48, 0xff, 0xc8 + r as u8]);
    }

    fn rel32(&mut self, l: Label) {
        self.fixups.push((self.code.len(), l));
        self.emit(&[0; 4]);
    }

    /// `jne rel32`.
    pub fn jne(&mut self, l: Label) {
        self.emit(&[0x0f, 0x85]);
        self.rel32(l);
    }

    /// `jmp rel32`.
    pub fn jmp(&mut self, l: Label) {
        self.emit(&[0xe9]);
        self.rel32(l);
    }

    /// `out imm8, al`.
    pub fn out_al(&mut self, port: u8) {
        self.emit(&[0xe6, port]);
    }

    /// `out imm8, eax` (a 4-byte write of EAX to the port).
    pub fn out_eax(&mut self, port: u8) {
        self.emit(&[0xe7, port]);
    }

    /// `hlt`.
    pub fn hlt(&mut self) {
        self.emit(&[0xf4]);
    }

    /// `vmcall` (Intel).
    pub fn vmcall(&mut self) {
        self.emit(&[0x0f, 0x01, 0xc1]);
    }

    /// `vmmcall` (AMD).
    pub fn vmmcall(&mut self) {
        self.emit(&[0x0f, 0x01, 0xd9]);
    }

    /// Resolves label fixups and returns the code.
    pub fn finish(mut self) -> Result<Vec<u8>, AsmError> {
        for &(at, l) in &self.fixups {
            let target = self.labels[l.0].ok_or(AsmError::Unbound(l.0))?;
            let next = at + 4;
            let disp = i64::try_from(target).map_err(|_| AsmError::Range)?
                - i64::try_from(next).map_err(|_| AsmError::Range)?;
            let disp = i32::try_from(disp).map_err(|_| AsmError::Range)?;
            self.code[at..next].copy_from_slice(&disp.to_le_bytes());
        }
        Ok(self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected bytes were produced with GNU as 2.40 (`as --64`, Intel syntax)
    // and objdump -d.

    fn one(f: impl FnOnce(&mut Asm)) -> Vec<u8> {
        let mut a = Asm::new();
        f(&mut a);
        a.finish().unwrap()
    }

    #[test]
    fn mov_imm_small_uses_imm32() {
        // mov ebx, 0x12345678
        assert_eq!(
            one(|a| a.mov_imm(Reg::Rbx, 0x1234_5678)),
            [0xbb, 0x78, 0x56, 0x34, 0x12]
        );
    }

    #[test]
    fn mov_imm_large_uses_movabs() {
        // movabs rdi, 0x1000000000
        assert_eq!(
            one(|a| a.mov_imm(Reg::Rdi, 0x10_0000_0000)),
            [0x48, 0xbf, 0, 0, 0, 0, 0x10, 0, 0, 0]
        );
    }

    #[test]
    fn fixed_encodings_match_gas() {
        assert_eq!(one(Asm::rep_stosb), [0xf3, 0xaa]);
        assert_eq!(one(Asm::rep_stosq), [0xf3, 0x48, 0xab]);
        assert_eq!(one(Asm::repe_scasq), [0xf3, 0x48, 0xaf]);
        assert_eq!(one(|a| a.sub_rdi_imm8(8)), [0x48, 0x83, 0xef, 0x08]);
        assert_eq!(one(Asm::mov_rsi_rcx), [0x48, 0x89, 0xce]);
        assert_eq!(one(Asm::mov_rcx_rsi), [0x48, 0x89, 0xf1]);
        assert_eq!(one(Asm::test_rcx_rcx), [0x48, 0x85, 0xc9]);
        assert_eq!(one(Asm::cmp_mem_rdi_rax), [0x48, 0x39, 0x07]);
        assert_eq!(one(Asm::movzx_edx_mem_rdi), [0x0f, 0xb6, 0x17]);
        assert_eq!(one(Asm::cmp_dl_al), [0x38, 0xc2]);
        assert_eq!(one(Asm::cmp_rax_rcx), [0x48, 0x39, 0xc8]);
        assert_eq!(one(|a| a.add_rdi_imm8(8)), [0x48, 0x83, 0xc7, 0x08]);
        assert_eq!(one(Asm::inc_rdi), [0x48, 0xff, 0xc7]);
        assert_eq!(one(|a| a.dec(Reg::Rcx)), [0x48, 0xff, 0xc9]);
        assert_eq!(one(|a| a.dec(Reg::Rsi)), [0x48, 0xff, 0xce]);
        assert_eq!(one(|a| a.out_al(0xd0)), [0xe6, 0xd0]);
        assert_eq!(one(|a| a.out_eax(0xd0)), [0xe7, 0xd0]);
        assert_eq!(one(Asm::hlt), [0xf4]);
        assert_eq!(one(Asm::vmcall), [0x0f, 0x01, 0xc1]);
        assert_eq!(one(Asm::vmmcall), [0x0f, 0x01, 0xd9]);
    }

    #[test]
    fn backward_jne_displacement() {
        let mut a = Asm::new();
        let top = a.label();
        a.bind(top);
        a.hlt();
        a.jne(top);
        // jne back over itself (6 bytes) and the hlt (1 byte): -7.
        assert_eq!(
            a.finish().unwrap(),
            [0xf4, 0x0f, 0x85, 0xf9, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn forward_jmp_displacement() {
        let mut a = Asm::new();
        let end = a.label();
        a.jmp(end);
        a.hlt();
        a.bind(end);
        assert_eq!(a.finish().unwrap(), [0xe9, 0x01, 0, 0, 0, 0xf4]);
    }

    #[test]
    fn unbound_label_is_error() {
        let mut a = Asm::new();
        let l = a.label();
        a.jmp(l);
        assert_eq!(a.finish(), Err(AsmError::Unbound(0)));
    }
}
