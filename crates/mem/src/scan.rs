//! The raw loops behind [`crate::HostMap::fill`] and
//! [`crate::HostMap::find_not`]: streaming stores and a word-wise compare.
//! Each takes a pointer its caller got from a bounds-checked volatile slice.

/// Bytes compared per word-wise block in [`scan`].
pub(crate) const BLOCK: usize = 256;

/// Stores `len` copies of `byte` at `p` with non-temporal (streaming)
/// stores, then `sfence`: no read-for-ownership of each line, no cache
/// pollution. `memset` in pieces of 1 MiB (the model's I/O size) runs
/// ~20 % slower than one `memset` of hundreds of MiB, which the CPU streams
/// itself; this matches the latter. The `sfence` orders the weakly ordered
/// stores before any later store (a lock release), so other threads see the
/// bytes as after a `memset`.
///
/// # Safety
/// `p` must be valid for writes of `len` bytes, and no Rust reference may
/// point into them.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn stream_fill(p: *mut u8, len: usize, byte: u8) {
    use std::arch::x86_64::{__m128i, _mm_set1_epi8, _mm_sfence, _mm_stream_si128};
    const LINE: usize = 64;
    let head = p.align_offset(LINE).min(len);
    let body = (len - head) / LINE * LINE;
    // SAFETY: `head <= len` bytes at `p`, inside the caller's range.
    unsafe { std::ptr::write_bytes(p, byte, head) };
    // SAFETY: SSE2 is part of the x86-64 baseline; no memory is touched.
    let v = unsafe { _mm_set1_epi8(byte as i8) };
    for line in (head..head + body).step_by(LINE) {
        for part in 0..LINE / 16 {
            // SAFETY: `line + 16 * part + 16 <= head + body <= len`, and
            // `p + line` is 64-byte aligned, so each 16-byte store is
            // aligned and inside the caller's range.
            unsafe { _mm_stream_si128(p.add(line + 16 * part).cast::<__m128i>(), v) };
        }
    }
    // SAFETY: SSE is part of the x86-64 baseline; a fence touches no memory.
    unsafe { _mm_sfence() };
    // SAFETY: the tail `[head + body, len)` is inside the caller's range.
    unsafe { std::ptr::write_bytes(p.add(head + body), byte, len - head - body) };
}

/// `memset` where streaming stores are not available.
///
/// # Safety
/// `p` must be valid for writes of `len` bytes, and no Rust reference may
/// point into them.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn stream_fill(p: *mut u8, len: usize, byte: u8) {
    // SAFETY: the caller's contract.
    unsafe { std::ptr::write_bytes(p, byte, len) };
}

/// The index and value of the first of the `len` bytes at `p` that is not
/// `expect`: [`BLOCK`]-byte blocks are OR-reduced word-wise without early
/// exit, and only a differing block is scanned byte by byte (and skipped if
/// its bytes changed back meanwhile).
///
/// # Safety
/// `p` must be valid for reads of `len` bytes.
pub(crate) unsafe fn scan(p: *const u8, len: usize, expect: u8) -> Option<(usize, u8)> {
    let pattern = u64::from_ne_bytes([expect; 8]);
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(BLOCK);
        // SAFETY: `done + n <= len`, so the `n` bytes at `p + done` lie
        // inside the caller's range.
        let bad = unsafe { scan_block(p.add(done), n, pattern) };
        if let Some((i, seen)) = bad {
            return Some((done + i, seen));
        }
        done += n;
    }
    None
}

/// The first byte of the `n <= BLOCK` bytes at `p` that is not the byte
/// `pattern` repeats: a full block is OR-reduced word-wise first and only
/// scanned byte by byte if it differs.
///
/// # Safety
/// `p` must be valid for reads of `n` bytes.
unsafe fn scan_block(p: *const u8, n: usize, pattern: u64) -> Option<(usize, u8)> {
    // SAFETY: a full block is `BLOCK` valid bytes (caller's contract).
    if n == BLOCK && unsafe { block_diff(p, pattern) } == 0 {
        return None;
    }
    // SAFETY: `n` valid bytes (caller's contract).
    unsafe { first_byte_not(p, n, pattern as u8) }
}

/// OR of `word ^ pattern` over the 32 (unaligned) words of a 256-byte block.
///
/// # Safety
/// `p` must be valid for reads of [`BLOCK`] bytes.
unsafe fn block_diff(p: *const u8, pattern: u64) -> u64 {
    let mut diff = 0u64;
    for w in 0..BLOCK / 8 {
        // SAFETY: `8 * w + 8 <= BLOCK`, inside the caller's valid range; an
        // unaligned read forms no reference. A word another thread is
        // storing to reads as some mix of old and new bytes.
        diff |= unsafe { p.add(8 * w).cast::<u64>().read_unaligned() } ^ pattern;
    }
    diff
}

/// Index and value of the first of `n` bytes at `p` that is not `expect`.
///
/// # Safety
/// `p` must be valid for reads of `n` bytes.
unsafe fn first_byte_not(p: *const u8, n: usize, expect: u8) -> Option<(usize, u8)> {
    (0..n).find_map(|i| {
        // SAFETY: `i < n`, inside the caller's valid range. Each byte is read
        // once, so the value reported is the value compared.
        let b = unsafe { p.add(i).read() };
        (b != expect).then_some((i, b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_the_first_bad_byte_of_any_block() {
        let mut buf = vec![3u8; 3 * BLOCK + 17];
        // SAFETY: `buf` is valid for its whole length.
        assert_eq!(unsafe { scan(buf.as_ptr(), buf.len(), 3) }, None);
        for at in [0, 1, BLOCK - 1, BLOCK, 2 * BLOCK + 5, 3 * BLOCK + 16] {
            buf[at] = 4;
            // SAFETY: as above.
            assert_eq!(unsafe { scan(buf.as_ptr(), buf.len(), 3) }, Some((at, 4)));
            buf[at] = 3;
        }
    }

    #[test]
    fn stream_fill_writes_exactly_its_range() {
        let mut buf = vec![1u8; 1000];
        for (off, len) in [(0, 1000), (3, 500), (64, 64), (13, 0), (999, 1)] {
            buf.fill(1);
            // SAFETY: `off + len <= 1000`, inside `buf`; no reference into it
            // is live during the call.
            unsafe { stream_fill(buf.as_mut_ptr().add(off), len, 2) };
            assert!(buf[..off].iter().all(|&b| b == 1));
            assert!(buf[off..off + len].iter().all(|&b| b == 2));
            assert!(buf[off + len..].iter().all(|&b| b == 1));
        }
    }
}
