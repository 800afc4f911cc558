//! Unit tests of the page store: the `pread`/`pwrite` and mapped paths, and
//! discard through mapped pages.

use super::*;

#[test]
fn memfd_of_2_pow_62_bytes_creates_without_allocating() {
    let m = Memfd::create("t", 1 << 62).unwrap();
    assert_eq!(m.allocated_pages().unwrap(), 0);
    // Above the mapping cap: pread/pwrite only, and still works.
    m.fill_at(1 << 61, 2 * MAP_MIN_IO, &[3; 10]).unwrap();
    let mut scratch = Vec::new();
    let r = m.find_mismatch((1 << 61) - 1, 2 * MAP_MIN_IO + 2, 3, &mut scratch);
    assert_eq!(r.unwrap(), Some((0, 0)));
    assert!(!m.is_mapped());
}

#[test]
fn memfd_is_mapped_once_a_bulk_access_finds_data() {
    let m = Memfd::create("t", 64 * PAGE_SIZE).unwrap();
    let mut buf = vec![0u8; MAP_MIN_IO as usize];
    // Fresh writes and reads of holes never map the file.
    m.fill_at(0, 8 * PAGE_SIZE, &[1; 64]).unwrap();
    m.read_at(8 * PAGE_SIZE, &mut buf).unwrap();
    assert!(!m.is_mapped());
    // Small accesses never map it either.
    m.read_at(0, &mut buf[..(MAP_MIN_IO - 1) as usize]).unwrap();
    assert!(!m.is_mapped());
    m.read_at(PAGE_SIZE, &mut buf).unwrap();
    assert!(m.is_mapped());
    assert_eq!(first_not(&buf, 1), None);
}

/// A mapped memfd of `pages` pages, all holes.
fn mapped(pages: u64) -> Memfd {
    let m = Memfd::create("t", pages * PAGE_SIZE).unwrap();
    m.pwrite_at(0, &[1]).unwrap();
    m.read_at(0, &mut vec![0u8; MAP_MIN_IO as usize]).unwrap();
    m.punch(0, PAGE_SIZE).unwrap();
    assert!(m.is_mapped());
    m
}

#[test]
fn mapped_reads_of_holes_do_not_allocate() {
    let m = mapped(64);
    let mut buf = vec![1u8; (64 * PAGE_SIZE) as usize];
    m.read_at(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    let mut scratch = Vec::new();
    assert_eq!(
        m.find_mismatch(0, 64 * PAGE_SIZE, 0, &mut scratch),
        Ok(None)
    );
    assert_eq!(m.allocated_pages().unwrap(), 0);
}

#[test]
fn mapped_accesses_mix_resident_pages_and_holes() {
    let m = mapped(16);
    let len = 16 * PAGE_SIZE;
    // Pages 4..8 resident, the rest holes; then fill across both kinds.
    m.fill_at(4 * PAGE_SIZE, 4 * PAGE_SIZE, &[9; 64]).unwrap();
    assert_eq!(m.allocated_pages().unwrap(), 4);
    let mut scratch = Vec::new();
    assert_eq!(
        m.find_mismatch(0, len, 0, &mut scratch),
        Ok(Some((4 * PAGE_SIZE, 9)))
    );
    m.fill_at(100, len - 200, &[5; 64]).unwrap();
    assert_eq!(m.allocated_pages().unwrap(), 16);
    let mut buf = vec![0u8; len as usize];
    m.pread_at(0, &mut buf).unwrap();
    assert_eq!(first_not(&buf[100..(len - 100) as usize], 5), None);
    assert_eq!((buf[99], buf[(len - 100) as usize]), (0, 0));
    // A write through the mapping is what pread sees, and vice versa.
    let data: Vec<u8> = (0..MAP_MIN_IO).map(|i| i as u8).collect();
    m.write_at(PAGE_SIZE + 1, &data).unwrap();
    m.pwrite_at(3 * PAGE_SIZE, &[0xee]).unwrap();
    let mut back = vec![0u8; data.len()];
    m.read_at(PAGE_SIZE + 1, &mut back).unwrap();
    assert_eq!(
        back[..2 * PAGE_SIZE as usize - 1],
        data[..2 * PAGE_SIZE as usize - 1]
    );
    assert_eq!(back[2 * PAGE_SIZE as usize - 1], 0xee);
}

#[test]
fn mapped_find_mismatch_after_punch_sees_zeros() {
    let m = mapped(8);
    let len = 8 * PAGE_SIZE;
    m.fill_at(0, len, &[7; 64]).unwrap();
    let mut scratch = Vec::new();
    assert_eq!(m.find_mismatch(0, len, 7, &mut scratch), Ok(None));
    m.punch(3 * PAGE_SIZE, PAGE_SIZE).unwrap();
    assert_eq!(
        m.find_mismatch(0, len, 7, &mut scratch),
        Ok(Some((3 * PAGE_SIZE, 0)))
    );
    let mut buf = vec![1u8; len as usize];
    m.read_at(0, &mut buf).unwrap();
    assert_eq!(first_not(&buf[3 * 4096..4 * 4096], 0), None);
    assert_eq!(m.allocated_pages().unwrap(), 7);
}

/// The security properties of discard (crates/runner/tests/security.rs)
/// at 2 MiB accesses, so pages sit in the mappings when punched.
#[test]
fn discard_never_exposes_data_through_the_mappings() {
    use privmem_runner::runtime::{Machine, RunOptions};
    use privmem_runner::{handle::RunState, workload};
    let ops = [
        "write 0x11",
        "read 0x11",
        "write 0x12",
        "read 0x12",
        "private",
        "write 0x22",
        "read 0x22",
        "write 0x23",
        "read 0x23",
        "shared",
        "read 0x00",
        "write 0x44",
        "read 0x44",
        "private",
        "read 0x00",
    ];
    let ops: Vec<String> = ops
        .iter()
        .map(|op| match op.split_once(' ') {
            Some(("write", b)) => {
                format!(r#"{{ op = "write", gpa = "0x200000", len = 2097152, byte = {b} }}"#)
            }
            Some((_, b)) => {
                format!(r#"{{ op = "read", gpa = "0x200000", len = 2097152, expect = {b} }}"#)
            }
            None => format!(
                r#"{{ op = "map", gpa = "0x200000", pages = 512, to = "{op}", expect_ret = 0 }}"#
            ),
        })
        .collect();
    let text = format!(
        "[vm]\ntype = \"sw-protected\"\nmemory = \"8MiB\"\n[policy]\ndiscard = true\n\
         [[vcpu]]\nops = [{}, {{ op = \"halt\" }}]\n",
        ops.join(", ")
    );
    let w = workload::parse("t.toml", &text).unwrap();
    let hv = std::sync::Arc::new(crate::ModelHypervisor::new(crate::KernelProfile::V7_3));
    let m = Machine::new(hv, &w).unwrap();
    let engine = m.engine.clone();
    let states = m.run(RunOptions::default());
    assert_eq!(states[0].state, RunState::Halted, "{:?}", states[0].error);
    assert_eq!(states[0].checks.passed, 7);
    let slot = &engine.slots()[0];
    let shared = &slot.shared.as_ref().unwrap().mem;
    let gmem = crate::gmem::file_of(&slot.gmem.as_ref().unwrap().file).unwrap();
    assert!(shared.memfd().is_mapped() && gmem.mem.is_mapped());
    // The host's view of the discarded shared pages: zeros, no page.
    let mut buf = vec![0xeeu8; 2 << 20];
    shared.read(2 << 20, &mut buf).unwrap();
    assert_eq!(first_not(&buf, 0), None);
    assert_eq!(shared.allocated_pages(), 0);
    // Nor does either mapping hold a stale page (these loads allocate).
    for mem in [shared.memfd(), &gmem.mem] {
        let map = mem.map.get().unwrap().as_ref().unwrap();
        assert_eq!(map.find_not(2 << 20, 2 << 20, 0), Ok(None));
    }
}

#[test]
fn memfd_size_is_sealed() {
    let m = Memfd::create("t", 2 * PAGE_SIZE).unwrap();
    assert!(rustix::fs::ftruncate(&m.fd, PAGE_SIZE).is_err());
    assert!(rustix::fs::ftruncate(&m.fd, 4 * PAGE_SIZE).is_err());
    assert_eq!(m.size(), 2 * PAGE_SIZE);
}

#[test]
fn memfd_punch_frees_and_zeroes() {
    let m = Memfd::create("t", 4 * PAGE_SIZE).unwrap();
    m.fill_at(0, 4 * PAGE_SIZE, &[0xaa; 100]).unwrap();
    assert_eq!(m.allocated_pages().unwrap(), 4);
    m.punch(PAGE_SIZE, PAGE_SIZE).unwrap();
    assert_eq!(m.allocated_pages().unwrap(), 3);
    let mut buf = vec![0u8; 4096];
    m.read_at(PAGE_SIZE, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
}

#[test]
fn find_mismatch_reports_first_bad_byte() {
    let m = Memfd::create("t", 2 * PAGE_SIZE).unwrap();
    m.fill_at(0, 2 * PAGE_SIZE, &[7; 3]).unwrap();
    m.write_at(5000, &[9]).unwrap();
    let mut scratch = Vec::new();
    let r = m.find_mismatch(0, 2 * PAGE_SIZE, 7, &mut scratch).unwrap();
    assert_eq!(r, Some((5000, 9)));
}

#[test]
fn first_not_finds_every_position_across_blocks() {
    for at in [0usize, 7, 63, 64, 255, 256, 257, 511, 600, 700] {
        let mut v = vec![3u8; 701];
        v[at] = 4;
        assert_eq!(first_not(&v, 3), Some(at));
    }
    assert_eq!(first_not(&[3u8; 701], 3), None);
}

#[test]
fn aligned_buffers_start_on_64_bytes() {
    for len in [1usize, 100, 4096, 1 << 17] {
        let mut v = Vec::new();
        let b = aligned(&mut v, len);
        assert_eq!(b.len(), len);
        assert_eq!(b.as_ptr() as usize % IO_ALIGN, 0);
    }
    let mut f = FillBuf::default();
    assert!(f.get(7).iter().all(|&b| b == 7));
    assert_eq!(f.get(7).as_ptr() as usize % IO_ALIGN, 0);
    assert!(f.get(9).iter().all(|&b| b == 9));
}

#[test]
fn find_mismatch_tracks_a_changing_expected_byte() {
    let m = Memfd::create("t", 2 * PAGE_SIZE).unwrap();
    let mut scratch = Vec::new();
    // Zeros match 0; after filling with 5 they match 5 and not 0.
    assert_eq!(m.find_mismatch(0, 8192, 0, &mut scratch).unwrap(), None);
    m.fill_at(0, 2 * PAGE_SIZE, &[5; 7]).unwrap();
    assert_eq!(m.find_mismatch(0, 8192, 5, &mut scratch).unwrap(), None);
    assert_eq!(
        m.find_mismatch(0, 8192, 0, &mut scratch).unwrap(),
        Some((0, 5))
    );
    m.write_at(8191, &[6]).unwrap();
    assert_eq!(
        m.find_mismatch(0, 8192, 5, &mut scratch).unwrap(),
        Some((8191, 6))
    );
}

#[test]
fn first_not_handles_tail() {
    let mut v = vec![1u8; 19];
    v[17] = 2;
    assert_eq!(first_not(&v, 1), Some(17));
    assert_eq!(first_not(&v[..17], 1), None);
}

#[test]
fn shared_write_past_end_faults_after_landing_prefix() {
    let s = ModelShared::new(PAGE_SIZE, SharedKind::Memfd).unwrap();
    let r = s.fill(4000, 200, 0x5a);
    assert_eq!(r, Err(HostFault::segv(4096)));
    let mut b = [0u8; 96];
    s.read(4000, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0x5a));
}

#[test]
fn shared_discard_unaligned_is_invalid() {
    let s = ModelShared::new(PAGE_SIZE, SharedKind::Anonymous).unwrap();
    assert!(matches!(
        s.discard(1, 4096),
        Err(BackendError::Invalid { .. })
    ));
}

#[test]
fn shared_discard_frees_pages() {
    let s = ModelShared::new(2 * PAGE_SIZE, SharedKind::Anonymous).unwrap();
    s.fill(0, 2 * PAGE_SIZE, 1).unwrap();
    s.discard(0, PAGE_SIZE).unwrap();
    assert_eq!(s.allocated_pages(), 1);
    assert_eq!(s.discarded_pages(), 1);
}

#[test]
fn never_written_file_reads_zeros_until_the_first_write() {
    let m = Memfd::create("t", 4 * PAGE_SIZE).unwrap();
    assert!(m.never_written());
    let mut scratch = Vec::new();
    assert_eq!(m.find_mismatch(0, PAGE_SIZE, 0, &mut scratch), Ok(None));
    assert_eq!(
        m.find_mismatch(0, PAGE_SIZE, 3, &mut scratch),
        Ok(Some((0, 0)))
    );
    let mut buf = vec![7u8; 100];
    m.read_at(10, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    // Every write path ends the fast path, and the data is then seen.
    for (i, write) in [
        |m: &Memfd| m.write_at(PAGE_SIZE + 5, &[9]),
        |m: &Memfd| m.fill_at(PAGE_SIZE + 5, 1, &[9; 8]),
        |m: &Memfd| m.pwrite_at(PAGE_SIZE + 5, &[9]),
        |m: &Memfd| m.pwritev_fill(PAGE_SIZE + 5, 1, &[9; 8]),
    ]
    .into_iter()
    .enumerate()
    {
        let m = Memfd::create("t", 4 * PAGE_SIZE).unwrap();
        write(&m).unwrap();
        assert!(!m.never_written(), "write path {i}");
        assert_eq!(
            m.find_mismatch(PAGE_SIZE, 8, 0, &mut scratch),
            Ok(Some((5, 9))),
            "write path {i}"
        );
        let mut b = [0u8; 1];
        m.read_at(PAGE_SIZE + 5, &mut b).unwrap();
        assert_eq!(b, [9], "write path {i}");
        // A punch makes zeros again, through the syscall path.
        m.punch(PAGE_SIZE, PAGE_SIZE).unwrap();
        m.read_at(PAGE_SIZE + 5, &mut b).unwrap();
        assert_eq!(b, [0], "write path {i}");
    }
}
