//! A global allocator that aborts on any single allocation above [`CAP_BYTES`]. The targets run the
//! decoders with small limits, so a larger request means some size was trusted before it was
//! checked; without AddressSanitizer's `malloc_limit_mb` (nightly only) this is how libFuzzer sees
//! it (as an abort), and the regression test replays the corpus under the same allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;

/// Above every legitimate buffer under the targets' limits (1 Mi elements, 1 Mi pixels, 8 MiB
/// inflated), far below what an unchecked declaration asks for.
pub const CAP_BYTES: usize = 64 << 20;

pub struct Capped;

fn check(size: usize) {
    if size > CAP_BYTES {
        // No formatting machinery: it could allocate. Digits into a stack buffer.
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut n = size;
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(b"fuzz allocation cap: an allocation of ");
        let _ = err.write_all(&digits[i..]);
        let _ = err.write_all(b" bytes exceeds CAP_BYTES\n");
        std::process::abort();
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the size check
// only decides whether to abort first.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}
