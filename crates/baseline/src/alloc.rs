//! [`CountingAlloc`]: the heap bytes a data structure really costs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

/// A global allocator that forwards to [`System`] and keeps, per thread, the
/// bytes it holds, as glibc malloc chunks (request + 8-byte header, rounded
/// to 16, at least 32): what a data structure really costs on the heap.
/// Install it with `#[global_allocator]`; read it with [`thread_heap_bytes`].
#[derive(Debug, Default)]
pub struct CountingAlloc;

/// The glibc chunk size of a `size`-byte request.
fn chunk(size: usize) -> i64 {
    let c = (size.saturating_add(8 + 15) & !15).max(32);
    i64::try_from(c).unwrap_or(i64::MAX)
}

fn account(delta: i64) {
    // A thread being torn down has no counter left; its bytes go uncounted.
    let _ = LIVE.try_with(|l| l.set(l.get().wrapping_add(delta)));
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees hold; the bookkeeping touches only a
// const-initialised thread-local `Cell` (no allocation, no destructor).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(chunk(layout.size()));
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds the contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            account(chunk(layout.size()));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(-chunk(layout.size()));
        // SAFETY: forwarded unchanged; `ptr` came from this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(chunk(new_size) - chunk(layout.size()));
        }
        p
    }
}

/// Heap bytes allocated minus freed by the calling thread so far (through
/// [`CountingAlloc`], when it is the global allocator; 0 otherwise).
pub fn thread_heap_bytes() -> i64 {
    LIVE.try_with(Cell::get).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_rounds_like_glibc() {
        assert_eq!(chunk(0), 32);
        assert_eq!(chunk(24), 32);
        assert_eq!(chunk(25), 48);
        assert_eq!(chunk(192), 208);
    }

    #[test]
    fn counts_what_it_allocates_and_frees() {
        let a = CountingAlloc;
        let before = thread_heap_bytes();
        let layout = Layout::from_size_align(100, 8).unwrap();
        // SAFETY: a non-zero-sized layout; the block is freed with it below.
        let p = unsafe { a.alloc(layout) };
        assert!(!p.is_null());
        assert_eq!(thread_heap_bytes() - before, 112);
        // SAFETY: `p` came from `a.alloc(layout)`.
        let p = unsafe { a.realloc(p, layout, 200) };
        assert!(!p.is_null());
        assert_eq!(thread_heap_bytes() - before, 208);
        let grown = Layout::from_size_align(200, 8).unwrap();
        // SAFETY: `p` came from `realloc` to 200 bytes, i.e. `grown`.
        unsafe { a.dealloc(p, grown) };
        assert_eq!(thread_heap_bytes(), before);
    }
}
