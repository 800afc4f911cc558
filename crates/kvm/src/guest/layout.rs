//! The runtime area: privmem's own guest memory (page tables, GDT, stack,
//! code) in a memslot of its own above all workload memory.
//!
//! ```text
//!  area base (2 MiB aligned, above every other memslot and op range)
//!  +0x0000  PML4                      1 page
//!  +0x1000  GDT: null, code64 (0x08), data (0x10)
//!  +0x2000  stack                     2 pages, RSP = base+0x4000
//!  +0x4000  PDPTs                     one page per 512 GiB region used
//!  ...      PDs                       one page per 1 GiB region used,
//!                                     512 x 2 MiB identity entries (PS=1)
//!  ...      code                      compiled ops, page aligned
//!  ...      (zero) up to a 2 MiB boundary
//! ```
//!
//! Only the 1 GiB regions that an op range or the area itself touches are
//! mapped (with 2 MiB pages; 1 GiB pages triple-fault under PVM), so a
//! sparse 64 GiB or 1 TiB slot costs one 4 KiB PD per GiB actually used.

use std::collections::BTreeSet;

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

/// 1 GiB.
pub const GIB: u64 = 1 << 30;
/// 2 MiB.
pub const HUGE: u64 = 2 << 20;
const PAGE: u64 = 4096;
/// Offset of the PML4.
pub const PML4_OFF: u64 = 0;
/// Offset of the GDT.
pub const GDT_OFF: u64 = 0x1000;
/// Offset of the initial RSP (stack grows down from here).
pub const STACK_TOP_OFF: u64 = 0x4000;
/// Offset of the first PDPT.
pub const PDPT_OFF: u64 = 0x4000;
/// Most PD pages one area may hold (16 TiB of mapped GPA space).
pub const MAX_PDS: usize = 16 * 1024;
/// Identity-mapped addresses must stay below this (canonical lower half).
pub const MAX_GPA: u64 = 1 << 47;

/// Page-table entry bits: present, writable, accessed.
const PTE_TABLE: u64 = 0x1 | 0x2 | 0x20;
/// 2 MiB leaf: present, writable, accessed, dirty, page size.
const PTE_HUGE: u64 = 0x1 | 0x2 | 0x20 | 0x40 | 0x80;

/// GDT entries: null, unused, 64-bit code (0x10), data (0x18) -- the
/// selectors Linux uses for `__KERNEL_CS`/`__KERNEL_DS`.
const GDT: [u64; 4] = [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
/// Code segment selector.
pub const CS_SEL: u16 = 0x10;
/// Data segment selector.
const DS_SEL: u16 = 0x18;
/// `MSR_STAR` (read back by diagnostics).
pub const MSR_STAR: u32 = 0xc000_0081;

/// Why an area cannot be laid out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// An address is beyond what 4-level identity paging can map.
    #[error("gpa {0:#x} is beyond the identity-mappable range")]
    TooHigh(u64),
    /// Too many 1 GiB regions would need page tables.
    #[error("{0} GiB regions to map exceed the limit of {MAX_PDS}")]
    TooManyTables(usize),
}

/// A planned runtime area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// GPA of the area.
    pub base: u64,
    /// Size in bytes (a multiple of 2 MiB).
    pub size: u64,
    /// Offset of the first PD page.
    pub pd_off: u64,
    /// Offset of the code.
    pub code_off: u64,
    /// Mapped 1 GiB regions (GPA / 1 GiB), sorted.
    pub gibs: Vec<u64>,
    /// 512 GiB regions with a PDPT, sorted.
    pub pdpts: Vec<u64>,
}

fn gib_span(set: &mut BTreeSet<u64>, start: u64, end: u64) {
    if end > start {
        set.extend(start / GIB..=(end - 1) / GIB);
    }
}

impl Layout {
    /// Plans an area at `base` (2 MiB aligned) for `code_len` bytes of code
    /// whose ops touch `ranges` (`[start, end)` pairs).
    pub fn plan(base: u64, ranges: &[(u64, u64)], code_len: u64) -> Result<Layout, LayoutError> {
        let mut gibs = BTreeSet::new();
        for &(s, e) in ranges {
            if e > MAX_GPA {
                return Err(LayoutError::TooHigh(e));
            }
            gib_span(&mut gibs, s, e);
        }
        loop {
            let pdpts: BTreeSet<u64> = gibs.iter().map(|g| g / 512).collect();
            if gibs.len() > MAX_PDS {
                return Err(LayoutError::TooManyTables(gibs.len()));
            }
            let pd_off = PDPT_OFF + pdpts.len() as u64 * PAGE;
            let code_off = pd_off + gibs.len() as u64 * PAGE;
            let size = (code_off + code_len).div_ceil(HUGE) * HUGE;
            let end = base.checked_add(size).ok_or(LayoutError::TooHigh(base))?;
            if end > MAX_GPA {
                return Err(LayoutError::TooHigh(end));
            }
            let before = gibs.len();
            gib_span(&mut gibs, base, end);
            if gibs.len() == before {
                return Ok(Layout {
                    base,
                    size,
                    pd_off,
                    code_off,
                    gibs: gibs.into_iter().collect(),
                    pdpts: pdpts.into_iter().collect(),
                });
            }
        }
    }

    /// GPA of the code entry point.
    pub fn entry(&self) -> u64 {
        self.base + self.code_off
    }

    /// The area's contents up to the end of `code` (the rest is zero).
    pub fn image(&self, code: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; (self.code_off as usize) + code.len()];
        let mut put = |off: u64, v: u64| {
            let o = off as usize;
            img[o..o + 8].copy_from_slice(&v.to_le_bytes());
        };
        for (i, p) in self.pdpts.iter().enumerate() {
            let pdpt = PDPT_OFF + i as u64 * PAGE;
            put(PML4_OFF + (p % 512) * 8, (self.base + pdpt) | PTE_TABLE);
        }
        for (j, g) in self.gibs.iter().enumerate() {
            let i = self.pdpts.binary_search(&(g / 512)).unwrap_or(0);
            let pdpt = PDPT_OFF + i as u64 * PAGE;
            let pd = self.pd_off + j as u64 * PAGE;
            put(pdpt + (g % 512) * 8, (self.base + pd) | PTE_TABLE);
            for k in 0..512 {
                put(pd + k * 8, (g * GIB + k * HUGE) | PTE_HUGE);
            }
        }
        for (i, d) in GDT.iter().enumerate() {
            put(GDT_OFF + i as u64 * 8, *d);
        }
        img[self.code_off as usize..].copy_from_slice(code);
        img
    }

    /// Puts `s` (from `KVM_GET_SREGS`) into 64-bit long mode on this area.
    pub fn setup_sregs(&self, s: &mut kvm_sregs) {
        let code = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: CS_SEL,
            type_: 0xb,
            present: 1,
            dpl: 0,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            ..Default::default()
        };
        let data = kvm_segment {
            selector: DS_SEL,
            type_: 0x3,
            db: 1,
            l: 0,
            ..code
        };
        s.cs = code;
        s.ds = data;
        s.es = data;
        s.fs = data;
        s.gs = data;
        s.ss = data;
        s.gdt.base = self.base + GDT_OFF;
        s.gdt.limit = (GDT.len() * 8 - 1) as u16;
        // An empty IDT: any exception escalates to a triple fault
        // (KVM_EXIT_SHUTDOWN) instead of vectoring through workload memory.
        s.idt.base = 0;
        s.idt.limit = 0;
        s.cr3 = self.base + PML4_OFF;
        s.cr4 = 1 << 5; // PAE
        s.cr0 = 1 | (1 << 1) | (1 << 4) | (1 << 5) | (1 << 16) | (1 << 31); // PE MP ET NE WP PG
        s.efer = (1 << 8) | (1 << 10); // LME LMA
    }

    /// Initial registers: RIP at the code, RSP at the stack top.
    pub fn regs(&self) -> kvm_regs {
        kvm_regs {
            rip: self.entry(),
            rsp: self.base + STACK_TOP_OFF,
            rflags: 0x2,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(img: &[u8], off: u64) -> u64 {
        let o = off as usize;
        u64::from_le_bytes(img[o..o + 8].try_into().unwrap())
    }

    #[test]
    fn plan_small_program_is_one_huge_page() {
        let l = Layout::plan(64 << 20, &[(0, 1 << 20)], 100).unwrap();
        assert_eq!(l.size, HUGE);
        assert_eq!(l.gibs, vec![0]);
        assert_eq!(l.pdpts, vec![0]);
    }

    #[test]
    fn plan_sparse_high_range_maps_only_touched_gibs() {
        // A page near the top of a 64 GiB slot, area right above it.
        let top = 64 * GIB;
        let l = Layout::plan(top, &[(top - 4096, top)], 100).unwrap();
        assert_eq!(l.gibs, vec![63, 64]);
    }

    #[test]
    fn plan_range_beyond_canonical_is_error() {
        assert!(matches!(
            Layout::plan(0, &[(0, MAX_GPA + 1)], 1),
            Err(LayoutError::TooHigh(_))
        ));
    }

    #[test]
    fn image_maps_identity_2m_pages() {
        let base = 2 * GIB;
        let l = Layout::plan(base, &[(0x20_0000, 0x40_0000)], 4).unwrap();
        let img = l.image(&[0xf4; 4]);
        let pdpt = entry(&img, PML4_OFF) & !0xfff;
        assert_eq!(pdpt, base + PDPT_OFF);
        let pd0 = entry(&img, PDPT_OFF) & !0xfff;
        assert_eq!(pd0, base + l.pd_off);
        // PD for GiB 0, entry 1 = 2 MiB page at 0x200000 with PS.
        assert_eq!(entry(&img, l.pd_off + 8), 0x20_0000 | PTE_HUGE);
        // GiB 2 (the area) has its own PD.
        assert_eq!(l.gibs, vec![0, 2]);
        let pd2 = entry(&img, PDPT_OFF + 2 * 8) & !0xfff;
        assert_eq!(pd2, base + l.pd_off + PAGE);
        assert_eq!(&img[l.code_off as usize..], &[0xf4; 4]);
    }
}
