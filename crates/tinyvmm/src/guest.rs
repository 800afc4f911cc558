//! The guests: 16-bit real-mode code at [`CODE`](crate::CODE), built with a
//! small encoder ([`RealMode`]) whose encodings are pinned by the example's
//! hand-assembled bytes (see the tests). Real mode reaches the first MiB;
//! [`first_touch`] writes above it through `ds` with a 4 GiB limit
//! ("unreal mode", [`TinyVcpu::start_flat`](crate::TinyVcpu::start_flat))
//! and 32-bit addresses.
//!
//! Every program converts with `vmmcall` (`KVM_HC_MAP_GPA_RANGE`: `eax` =
//! 12, `ebx` = GPA, `ecx` = pages, `edx` = attributes) and reports through
//! port I/O ([`ports`]).

use privmem_core::exit::MAP_GPA_RANGE_ENCRYPTED;
use privmem_core::PAGE_SIZE;

/// The guest's ports.
pub mod ports {
    /// `out` of a hypercall's return value (`al`).
    pub const RET: u16 = 0xf0;
    /// `out` of a byte the guest read (`al`).
    pub const READ: u16 = 0xf1;
    /// "Unplug": the example's VMM closes the guest_memfd.
    pub const UNPLUG: u16 = 0xf2;
    /// A phase mark (`al` = the phase), for host-side timing.
    pub const MARK: u16 = 0xf3;
}

/// `KVM_HC_MAP_GPA_RANGE`.
const HC_MAP_GPA_RANGE: u32 = 12;

/// A short-jump target of [`RealMode`].
#[derive(Clone, Copy, Debug)]
pub struct Label(usize);

/// A guest program failed to encode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestError {
    /// A label was jumped to but never bound.
    #[error("label {0} used but never bound")]
    Unbound(usize),
    /// A short jump reaches farther than -128..=127 bytes.
    #[error("short jump to label {0} out of range ({1} bytes)")]
    Range(usize, i64),
    /// A range is empty, or not whole requests of whole pages.
    #[error(
        "{len:#x} bytes is not a nonzero multiple of {req:#x}-byte requests of whole 4 KiB pages"
    )]
    Uneven {
        /// The range's length.
        len: u64,
        /// The request size.
        req: u64,
    },
    /// A conversion request does not fit the guest's 32-bit registers.
    #[error("{what} {value:#x} does not fit in 32 bits")]
    Wide {
        /// The operand.
        what: &'static str,
        /// Its value.
        value: u64,
    },
}

/// A 16-bit real-mode instruction buffer (32-bit operands through the
/// `0x66` prefix), with rel8 jump fixups.
#[derive(Debug, Default)]
pub struct RealMode {
    code: Vec<u8>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
}

/// A 32-bit register, by its encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Reg {
    /// eax
    Eax = 0,
    /// ecx
    Ecx = 1,
    /// edx
    Edx = 2,
    /// ebx
    Ebx = 3,
    /// esi
    Esi = 6,
}

impl RealMode {
    /// An empty buffer.
    pub fn new() -> RealMode {
        RealMode::default()
    }

    /// A new, unbound label.
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Binds `l` here.
    pub fn bind(&mut self, l: Label) {
        self.labels[l.0] = Some(self.code.len());
    }

    /// `mov r32, imm32`.
    pub fn mov(&mut self, r: Reg, imm: u32) {
        self.code.extend([0x66, 0xb8 + r as u8]);
        self.code.extend(imm.to_le_bytes());
    }

    /// `add ebx, imm32`.
    pub fn add_ebx(&mut self, imm: u32) {
        self.code.extend([0x66, 0x81, 0xc3]);
        self.code.extend(imm.to_le_bytes());
    }

    /// `mov dword [ebx], eax` (`ds`-relative, 32-bit address: reaches
    /// past 64 KiB only under [`TinyVcpu::start_flat`](crate::TinyVcpu::start_flat)).
    pub fn store_eax_at_ebx(&mut self) {
        self.code.extend([0x67, 0x66, 0x89, 0x03]);
    }

    /// `dec esi`.
    pub fn dec_esi(&mut self) {
        self.code.extend([0x66, 0x4e]);
    }

    /// `test eax, eax`.
    pub fn test_eax(&mut self) {
        self.code.extend([0x66, 0x85, 0xc0]);
    }

    /// `jnz l` (rel8).
    pub fn jnz(&mut self, l: Label) {
        self.code.extend([0x75, 0]);
        self.fixups.push((self.code.len() - 1, l));
    }

    /// `mov byte [addr], imm8` (`ds`-relative).
    pub fn store_byte(&mut self, addr: u16, imm: u8) {
        self.code.extend([0xc6, 0x06]);
        self.code.extend(addr.to_le_bytes());
        self.code.push(imm);
    }

    /// `mov al, [addr]` (`ds`-relative).
    pub fn load_al(&mut self, addr: u16) {
        self.code.push(0xa0);
        self.code.extend(addr.to_le_bytes());
    }

    /// `out port, al`.
    pub fn out_al(&mut self, port: u16) {
        // Only 8-bit immediate ports are used: every port of `ports` is one.
        self.code.extend([0xe6, port as u8]);
    }

    /// `mov al, imm8`.
    pub fn mov_al(&mut self, imm: u8) {
        self.code.extend([0xb0, imm]);
    }

    /// `vmmcall`.
    pub fn vmmcall(&mut self) {
        self.code.extend([0x0f, 0x01, 0xd9]);
    }

    /// `hlt`.
    pub fn hlt(&mut self) {
        self.code.push(0xf4);
    }

    /// The code, with every jump resolved.
    ///
    /// # Errors
    /// `Unbound` or `Range` for a jump that cannot be encoded.
    pub fn finish(mut self) -> Result<Vec<u8>, GuestError> {
        for &(at, l) in &self.fixups {
            let target = self.labels[l.0].ok_or(GuestError::Unbound(l.0))?;
            let disp = target as i64 - (at as i64 + 1);
            let d = i8::try_from(disp).map_err(|_| GuestError::Range(l.0, disp))?;
            self.code[at] = d as u8;
        }
        Ok(self.code)
    }
}

fn wide(what: &'static str, value: u64) -> Result<u32, GuestError> {
    u32::try_from(value).map_err(|_| GuestError::Wide { what, value })
}

/// The example's guest: the shared page at 0x8000 written, converted to
/// private and read (a fresh page: 0), written, converted back to shared and
/// read (0 again: both conversions discarded); 0x9000 converted to private;
/// then "unplug" (the VMM closes the guest_memfd) and a read of 0x9000,
/// which no conversion can resolve. Each return value goes to
/// [`ports::RET`], each read byte to [`ports::READ`].
pub fn example() -> Result<Vec<u8>, GuestError> {
    let mut a = RealMode::new();
    a.store_byte(0x8000, 0x5a);
    a.mov(Reg::Eax, HC_MAP_GPA_RANGE);
    a.mov(Reg::Ebx, 0x8000);
    a.mov(Reg::Ecx, 1);
    a.mov(Reg::Edx, MAP_GPA_RANGE_ENCRYPTED as u32);
    a.vmmcall();
    a.out_al(ports::RET);
    a.load_al(0x8000);
    a.out_al(ports::READ);
    a.store_byte(0x8000, 0x77);
    a.mov(Reg::Eax, HC_MAP_GPA_RANGE);
    a.mov(Reg::Edx, 0);
    a.vmmcall();
    a.out_al(ports::RET);
    a.load_al(0x8000);
    a.out_al(ports::READ);
    a.mov(Reg::Eax, HC_MAP_GPA_RANGE);
    a.mov(Reg::Ebx, 0x9000);
    a.mov(Reg::Edx, MAP_GPA_RANGE_ENCRYPTED as u32);
    a.vmmcall();
    a.out_al(ports::RET);
    a.out_al(ports::UNPLUG);
    a.load_al(0x9000);
    a.hlt();
    a.finish()
}

/// `MAP_GPA_RANGE(ebx, pages, attrs)`; on a nonzero return, jumps to
/// `fail`.
fn map_at_ebx(a: &mut RealMode, pages: u32, attrs: u32, fail: Label) {
    a.mov(Reg::Eax, HC_MAP_GPA_RANGE);
    a.mov(Reg::Ecx, pages);
    a.mov(Reg::Edx, attrs);
    a.vmmcall();
    a.test_eax();
    a.jnz(fail);
}

/// The failure tail: `out RET, al; hlt`.
fn fail_tail(a: &mut RealMode, fail: Label) {
    a.bind(fail);
    a.out_al(ports::RET);
    a.hlt();
}

/// The example's conversions as a loop that ends where it began: `rounds`
/// times, the shared page at 0x8000 written, converted to private, read
/// (reported on [`ports::READ`]: 0, a fresh page), written, converted back
/// to shared and read (reported: 0, the shared page was discarded). Every
/// round is 2 hypercall and 2 port-I/O exits; a failed conversion reports
/// its return value on [`ports::RET`] and halts.
pub fn round_trips(rounds: u32) -> Result<Vec<u8>, GuestError> {
    let mut a = RealMode::new();
    let (top, fail) = (a.label(), a.label());
    a.mov(Reg::Esi, rounds);
    a.bind(top);
    a.store_byte(0x8000, 0x5a);
    a.mov(Reg::Ebx, 0x8000);
    map_at_ebx(&mut a, 1, MAP_GPA_RANGE_ENCRYPTED as u32, fail);
    a.load_al(0x8000);
    a.out_al(ports::READ);
    a.store_byte(0x8000, 0x77);
    map_at_ebx(&mut a, 1, 0, fail);
    a.load_al(0x8000);
    a.out_al(ports::READ);
    a.dec_esi();
    a.jnz(top);
    a.hlt();
    fail_tail(&mut a, fail);
    a.finish()
}

/// A range in requests, as the guest's registers hold it.
#[derive(Clone, Copy, Debug)]
struct Requests {
    base: u32,
    count: u32,
    pages: u32,
    step: u32,
}

impl Requests {
    /// `[base, base+len)` in `req`-byte requests; every value must fit in
    /// 32 bits.
    fn new(base: u64, len: u64, req: u64) -> Result<Requests, GuestError> {
        let r = Requests {
            count: wide("request count", len / req.max(1))?,
            pages: wide("pages per request", req / PAGE_SIZE)?,
            base: wide("base", base)?,
            step: wide("request size", req)?,
        };
        wide("end", base + len)?;
        Ok(r)
    }
}

/// `r.count` `MAP_GPA_RANGE(attrs)` requests from `r.base` up; a nonzero
/// return jumps to `fail`.
fn map_loop(a: &mut RealMode, r: Requests, attrs: u32, fail: Label) {
    let top = a.label();
    a.mov(Reg::Esi, r.count);
    a.mov(Reg::Ebx, r.base);
    a.bind(top);
    map_at_ebx(a, r.pages, attrs, fail);
    a.add_ebx(r.step);
    a.dec_esi();
    a.jnz(top);
}

/// `out MARK, m`.
fn mark(a: &mut RealMode, m: u8) {
    a.mov_al(m);
    a.out_al(ports::MARK);
}

/// Converts `[base, base+len)` in `req`-byte requests to private, marks
/// phase 1 on [`ports::MARK`], then converts it back to shared in the same
/// requests and halts: `2 * len / req` hypercall exits and one port exit.
/// A failed conversion reports its return value on [`ports::RET`] and halts.
pub fn convert(base: u64, len: u64, req: u64) -> Result<Vec<u8>, GuestError> {
    let mut a = RealMode::new();
    let fail = a.label();
    let r = Requests::new(base, len, req)?;
    map_loop(&mut a, r, MAP_GPA_RANGE_ENCRYPTED as u32, fail);
    mark(&mut a, 1);
    map_loop(&mut a, r, 0, fail);
    a.hlt();
    fail_tail(&mut a, fail);
    a.finish()
}

/// The phases [`first_touch`] marks on [`ports::MARK`], in order.
pub mod phase {
    /// The guest is running; nothing converted yet.
    pub const START: u8 = 1;
    /// The range is private (every `MAP_GPA_RANGE` returned 0).
    pub const CONVERTED: u8 = 2;
    /// Every page of the range was written once.
    pub const TOUCHED: u8 = 3;
}

/// The first touch of freshly converted private pages, for
/// [`TinyVcpu::start_flat`](crate::TinyVcpu::start_flat): marks
/// [`phase::START`], converts `[base, base+len)` to private in `req`-byte
/// requests, marks [`phase::CONVERTED`], writes one dword (`eax`, 0) at the
/// start of every 4 KiB page of the range in address order, marks
/// [`phase::TOUCHED`], converts the range back to shared in the same
/// requests (so the next run starts where this one did) and halts. A failed
/// conversion reports its return value on [`ports::RET`] and halts.
///
/// # Errors
/// `Uneven` unless `len` is a nonzero multiple of `req` and `req` of
/// 4 KiB; `Wide` for a range that does not fit in 32 bits.
pub fn first_touch(base: u64, len: u64, req: u64) -> Result<Vec<u8>, GuestError> {
    if len == 0 || req == 0 || !len.is_multiple_of(req) || !req.is_multiple_of(PAGE_SIZE) {
        return Err(GuestError::Uneven { len, req });
    }
    let r = Requests::new(base, len, req)?;
    let mut a = RealMode::new();
    let fail = a.label();
    mark(&mut a, phase::START);
    map_loop(&mut a, r, MAP_GPA_RANGE_ENCRYPTED as u32, fail);
    mark(&mut a, phase::CONVERTED);
    let top = a.label();
    a.mov(Reg::Esi, wide("pages", len / PAGE_SIZE)?);
    a.mov(Reg::Ebx, r.base);
    a.bind(top);
    a.store_eax_at_ebx();
    a.add_ebx(PAGE_SIZE as u32);
    a.dec_esi();
    a.jnz(top);
    mark(&mut a, phase::TOUCHED);
    map_loop(&mut a, r, 0, fail);
    a.hlt();
    fail_tail(&mut a, fail);
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example's guest as it was hand-assembled (and run in the rig)
    /// before the encoder existed.
    #[rustfmt::skip]
    const HAND_ASSEMBLED: &[u8] = &[
        0xc6, 0x06, 0x00, 0x80, 0x5a,
        0x66, 0xb8, 0x0c, 0, 0, 0,
        0x66, 0xbb, 0x00, 0x80, 0, 0,
        0x66, 0xb9, 0x01, 0, 0, 0,
        0x66, 0xba, 0x10, 0, 0, 0,
        0x0f, 0x01, 0xd9,
        0xe6, 0xf0,
        0xa0, 0x00, 0x80, 0xe6, 0xf1,
        0xc6, 0x06, 0x00, 0x80, 0x77,
        0x66, 0xb8, 0x0c, 0, 0, 0,
        0x66, 0xba, 0x00, 0, 0, 0,
        0x0f, 0x01, 0xd9, 0xe6, 0xf0,
        0xa0, 0x00, 0x80, 0xe6, 0xf1,
        0x66, 0xb8, 0x0c, 0, 0, 0,
        0x66, 0xbb, 0x00, 0x90, 0, 0,
        0x66, 0xba, 0x10, 0, 0, 0,
        0x0f, 0x01, 0xd9, 0xe6, 0xf0,
        0xe6, 0xf2,
        0xa0, 0x00, 0x90,
        0xf4,
    ];

    #[test]
    fn the_example_guest_is_the_hand_assembled_one() {
        assert_eq!(example().unwrap(), HAND_ASSEMBLED);
    }

    #[test]
    fn remaining_encodings_match_gnu_as() {
        // as --32 with .code16: add ebx,0x200000; dec esi; test eax,eax;
        // mov al,1; mov esi,5
        let mut a = RealMode::new();
        a.add_ebx(0x20_0000);
        a.dec_esi();
        a.test_eax();
        a.mov_al(1);
        a.mov(Reg::Esi, 5);
        let want = [
            0x66, 0x81, 0xc3, 0, 0, 0x20, 0, 0x66, 0x4e, 0x66, 0x85, 0xc0, 0xb0, 1, 0x66, 0xbe, 5,
            0, 0, 0,
        ];
        assert_eq!(a.finish().unwrap(), want);
    }

    #[test]
    fn jumps_resolve_backwards_and_forwards() {
        let mut a = RealMode::new();
        let (top, end) = (a.label(), a.label());
        a.bind(top);
        a.jnz(end);
        a.jnz(top);
        a.bind(end);
        assert_eq!(a.finish().unwrap(), [0x75, 2, 0x75, 0xfc]);
    }

    #[test]
    fn bad_jumps_are_errors() {
        let mut a = RealMode::new();
        let l = a.label();
        a.jnz(l);
        assert_eq!(a.finish(), Err(GuestError::Unbound(0)));
        let mut a = RealMode::new();
        let l = a.label();
        a.jnz(l);
        for _ in 0..200 {
            a.hlt();
        }
        a.bind(l);
        assert!(matches!(a.finish(), Err(GuestError::Range(0, 200))));
    }

    /// `first_touch(0x20_0000, 0x4000, 0x2000)` as GNU as assembles it
    /// (`as --32 -msyntax=intel -mnaked-reg`, `.code16`).
    #[rustfmt::skip]
    const FIRST_TOUCH_GNU_AS: &[u8] = &[
        0xb0, 0x01, 0xe6, 0xf3,                     // mov al,1; out 0xf3,al
        0x66, 0xbe, 2, 0, 0, 0,                     // mov esi,2
        0x66, 0xbb, 0, 0, 0x20, 0,                  // mov ebx,0x200000
        0x66, 0xb8, 0x0c, 0, 0, 0,                  // t1: mov eax,12
        0x66, 0xb9, 2, 0, 0, 0,                     // mov ecx,2
        0x66, 0xba, 0x10, 0, 0, 0,                  // mov edx,0x10
        0x0f, 0x01, 0xd9,                           // vmmcall
        0x66, 0x85, 0xc0, 0x75, 0x60,               // test eax,eax; jnz fail
        0x66, 0x81, 0xc3, 0, 0x20, 0, 0,            // add ebx,0x2000
        0x66, 0x4e, 0x75, 0xdb,                     // dec esi; jnz t1
        0xb0, 0x02, 0xe6, 0xf3,                     // mov al,2; out 0xf3,al
        0x66, 0xbe, 4, 0, 0, 0,                     // mov esi,4
        0x66, 0xbb, 0, 0, 0x20, 0,                  // mov ebx,0x200000
        0x67, 0x66, 0x89, 0x03,                     // t2: mov [ebx],eax
        0x66, 0x81, 0xc3, 0, 0x10, 0, 0,            // add ebx,0x1000
        0x66, 0x4e, 0x75, 0xf1,                     // dec esi; jnz t2
        0xb0, 0x03, 0xe6, 0xf3,                     // mov al,3; out 0xf3,al
        0x66, 0xbe, 2, 0, 0, 0,                     // mov esi,2
        0x66, 0xbb, 0, 0, 0x20, 0,                  // mov ebx,0x200000
        0x66, 0xb8, 0x0c, 0, 0, 0,                  // t3: mov eax,12
        0x66, 0xb9, 2, 0, 0, 0,                     // mov ecx,2
        0x66, 0xba, 0, 0, 0, 0,                     // mov edx,0
        0x0f, 0x01, 0xd9,                           // vmmcall
        0x66, 0x85, 0xc0, 0x75, 0x0c,               // test eax,eax; jnz fail
        0x66, 0x81, 0xc3, 0, 0x20, 0, 0,            // add ebx,0x2000
        0x66, 0x4e, 0x75, 0xdb,                     // dec esi; jnz t3
        0xf4,                                       // hlt
        0xe6, 0xf0, 0xf4,                           // fail: out 0xf0,al; hlt
    ];

    #[test]
    fn first_touch_is_what_gnu_as_assembles() {
        assert_eq!(
            first_touch(0x20_0000, 0x4000, 0x2000).unwrap(),
            FIRST_TOUCH_GNU_AS
        );
        // The phases it marks are the ones the host waits for, in order.
        assert_eq!(
            (phase::START, phase::CONVERTED, phase::TOUCHED),
            (
                FIRST_TOUCH_GNU_AS[1],
                FIRST_TOUCH_GNU_AS[0x36],
                FIRST_TOUCH_GNU_AS[0x55]
            )
        );
    }

    #[test]
    fn first_touch_refuses_uneven_or_wide_ranges() {
        for (len, req) in [(0, 4096), (0x3000, 0x2000), (0x3000, 0x1800), (4096, 0)] {
            assert_eq!(
                first_touch(0x20_0000, len, req),
                Err(GuestError::Uneven { len, req })
            );
        }
        assert!(matches!(
            first_touch(0xffff_f000, 0x2000, 0x1000),
            Err(GuestError::Wide { what: "end", .. })
        ));
        assert!(first_touch(2 << 20, 64 << 20, 2 << 20).is_ok());
    }

    #[test]
    fn convert_refuses_requests_wider_than_its_registers() {
        assert!(matches!(
            convert(1 << 32, 1 << 21, 1 << 21),
            Err(GuestError::Wide { what: "base", .. })
        ));
        assert!(convert(2 << 20, 64 << 20, 4096).is_ok());
    }
}
