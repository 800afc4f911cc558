//! `privmem_kvm::vmm` on this host's real KVM: the engine's contract over a
//! VMM's own `VmFd`. Every host can run a default VM with plain memslots,
//! which is what these tests need; conversions on a sw-protected VM run in
//! the rig (`rig/run --example vmm`, `crates/tinyvmm/examples/vmm.rs`).

mod common;

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use kvm_ioctls::{Kvm, VmFd};
use privmem_core::contract::ConversionBackend;
use privmem_core::engine::{ConvertError, ConvertTo, Engine, EngineConfig, Origin};
use privmem_core::slot::{SharedBinding, SlotDesc, SlotError};
use privmem_core::{Gpa, GpaRange, SlotId, VmType};
use privmem_kvm::vmm::{SharedRegion, VmFdBackend};
use vm_memory::mmap::MmapRegion;
use vm_memory::FileOffset;

const MIB: u64 = 1 << 20;

fn vm_or_skip(test: &str) -> Option<Arc<VmFd>> {
    match Kvm::new().and_then(|k| k.create_vm()) {
        Ok(vm) => Some(Arc::new(vm)),
        Err(e) => {
            if std::env::var("REQUIRE_KVM").as_deref() == Ok("1") {
                panic!("{test}: /dev/kvm unavailable ({e}) and REQUIRE_KVM=1");
            }
            common::skip(&format!("{test}: /dev/kvm unavailable ({e})"));
            None
        }
    }
}

fn anon(len: u64, flags: i32) -> SharedRegion {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let m = MmapRegion::build(None, len as usize, prot, flags | libc::MAP_ANONYMOUS).unwrap();
    SharedRegion::new(Arc::new(m))
}

fn plain(
    id: u16,
    gpa: u64,
    len: u64,
    mem: SharedRegion,
) -> SlotDesc<privmem_kvm::vmm::GmemFile, SharedRegion> {
    SlotDesc {
        id: SlotId(id),
        range: GpaRange::new(Gpa(gpa), len).unwrap(),
        gmem: None,
        shared: Some(SharedBinding { mem, offset: 0 }),
    }
}

/// Reads byte `off` of a mapping (through vm-memory's checked access).
fn byte(r: &SharedRegion, off: u64) -> u8 {
    use vm_memory::{Bytes, GuestAddress, GuestRegionMmap, MemoryRegionAddress};
    let g = GuestRegionMmap::with_arc(r.mmap().clone(), GuestAddress(0)).unwrap();
    g.read_obj(MemoryRegionAddress(off)).unwrap()
}

fn fill(r: &SharedRegion, off: u64, len: usize, b: u8) {
    use vm_memory::{Bytes, GuestAddress, GuestRegionMmap, MemoryRegionAddress};
    let g = GuestRegionMmap::with_arc(r.mmap().clone(), GuestAddress(0)).unwrap();
    g.write_slice(&vec![b; len], MemoryRegionAddress(off))
        .unwrap();
}

#[test]
fn memslots_come_from_the_description_and_go_with_the_backend() {
    let Some(vm) = vm_or_skip("memslots_come_from_the_description_and_go_with_the_backend") else {
        return;
    };
    let e = Engine::new(
        VmFdBackend::new(vm.clone(), VmType::Default),
        EngineConfig::default(),
    );
    e.add_slot(plain(1, 0, MIB, anon(MIB, libc::MAP_SHARED)))
        .unwrap();
    // A second memslot over the same GPAs: the kernel refuses (EEXIST), so
    // the first one is really there.
    let err = e
        .add_slot(plain(2, 0, MIB, anon(MIB, libc::MAP_SHARED)))
        .unwrap_err();
    assert!(matches!(err, SlotError::Conflict { .. }), "{err}");
    let direct = VmFdBackend::new(vm.clone(), VmType::Default);
    let err = direct
        .set_memslot(&plain(2, 0, MIB, anon(MIB, libc::MAP_SHARED)))
        .unwrap_err();
    assert_eq!(err.errno().map(|e| e.0), Some(libc::EEXIST), "{err}");
    // A slot larger than its mapping never reaches the kernel, even when
    // the backend is called directly.
    let err = direct
        .set_memslot(&plain(3, 8 * MIB, 2 * MIB, anon(MIB, libc::MAP_SHARED)))
        .unwrap_err();
    assert!(err.to_string().contains("smaller than the slot"), "{err}");
    // Removed, the range is free again; dropping the engine deletes the rest.
    e.remove_slot(SlotId(1)).unwrap();
    direct
        .set_memslot(&plain(2, 0, MIB, anon(MIB, libc::MAP_SHARED)))
        .unwrap();
    drop(direct);
    e.add_slot(plain(1, 0, MIB, anon(MIB, libc::MAP_SHARED)))
        .unwrap();
    drop(e);
    let again = VmFdBackend::new(vm, VmType::Default);
    again
        .set_memslot(&plain(5, 0, MIB, anon(MIB, libc::MAP_SHARED)))
        .unwrap();
}

#[test]
fn a_default_vm_refuses_conversions() {
    let Some(vm) = vm_or_skip("a_default_vm_refuses_conversions") else {
        return;
    };
    let e = Engine::new(
        VmFdBackend::new(vm, VmType::Default),
        EngineConfig::default(),
    );
    e.add_slot(plain(0, 0, MIB, anon(MIB, libc::MAP_SHARED)))
        .unwrap();
    let err = e
        .convert(Gpa(0), 0x1000, ConvertTo::Private, Origin::Explicit)
        .unwrap_err();
    assert!(
        matches!(&err, ConvertError::Refused { why, .. } if why.contains("no private memory")),
        "{err}"
    );
}

#[test]
fn shared_regions_discard_by_their_kind() {
    let Some(vm) = vm_or_skip("shared_regions_discard_by_their_kind") else {
        return;
    };
    let b = VmFdBackend::new(vm, VmType::Default);
    // Shared and private anonymous memory, and a MAP_SHARED file mapping.
    let mut file = File::from(tempfile());
    file.set_len(2 * MIB).unwrap();
    file.seek(SeekFrom::Start(0x3000)).unwrap();
    file.write_all(&[0x42; 0x1000]).unwrap();
    let fo = FileOffset::new(file.try_clone().unwrap(), MIB);
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let filemap = MmapRegion::build(Some(fo), MIB as usize, prot, libc::MAP_SHARED).unwrap();
    let regions = [
        anon(MIB, libc::MAP_SHARED),
        anon(MIB, libc::MAP_PRIVATE),
        SharedRegion::new(Arc::new(filemap)),
    ];
    for r in &regions {
        fill(r, 0x1000, 0x3000, 0x5a);
        b.discard_shared(r, 0x2000, 0x1000).unwrap();
        assert_eq!(
            (byte(r, 0x1000), byte(r, 0x2000), byte(r, 0x3fff)),
            (0x5a, 0, 0x5a)
        );
        assert!(
            b.discard_shared(r, MIB - 0x1000, 0x2000).is_err(),
            "past the end"
        );
    }
    // The file was punched at file offset 1 MiB + 0x2000, not elsewhere.
    let mut buf = [0u8; 1];
    use std::os::unix::fs::FileExt;
    file.read_exact_at(&mut buf, 0x3000).unwrap();
    assert_eq!(buf[0], 0x42);
    // A private file mapping cannot be discarded without showing the file.
    let fo = FileOffset::new(file, 0);
    let private = MmapRegion::build(Some(fo), MIB as usize, prot, libc::MAP_PRIVATE).unwrap();
    assert!(b
        .discard_shared(&SharedRegion::new(Arc::new(private)), 0, 0x1000)
        .is_err());
}

/// An unlinked temporary file.
fn tempfile() -> OwnedFd {
    let dir = std::env::temp_dir();
    let path = dir.join(format!("privmem-vmm-test-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f.into()
}
