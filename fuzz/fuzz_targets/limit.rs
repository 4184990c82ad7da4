//! The largest single allocation a fuzz target may make, as libFuzzer's `-malloc_limit_mb`
//! enforces it under AddressSanitizer (its malloc hooks come from the sanitizer's runtime,
//! so without one the flag does nothing). The targets are built without a sanitizer: they
//! fuzz safe Rust, and run about eight times as many inputs a second. An allocation over
//! the limit aborts, which libFuzzer reports as a crash and keeps the input that made it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;

/// 512 MiB: no input of at most 4 KiB has a reason to ask for more in one allocation.
const LIMIT: usize = 512 << 20;

struct Limited;

#[global_allocator]
static ALLOCATOR: Limited = Limited;

/// Aborts if `size` is over the limit, saying so without allocating.
fn check(size: usize) {
    if size > LIMIT {
        let _ = std::io::stderr()
            .write_all(b"fuzz: one allocation over 512 MiB (an unbounded allocation)\n");
        std::process::abort();
    }
}

// SAFETY: every call is passed on to the system allocator unchanged, after the size check,
// so the allocator's contract is the system allocator's.
unsafe impl GlobalAlloc for Limited {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: the caller's guarantees for `layout` are passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: `ptr` and `layout` come from this allocator, which is the system's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` and `layout` come from this allocator, which is the system's.
        unsafe { System.dealloc(ptr, layout) }
    }
}
