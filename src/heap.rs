//! Returning freed memory to the OS.

use std::sync::OnceLock;

// Links mimalloc's C library, whose `mi_collect` the trimmer below calls,
// into every binary of this crate, whichever allocator it picks.
extern crate mimalloc as _;

static TRIMMER: OnceLock<fn()> = OnceLock::new();

/// For a binary with its own global allocator (`dualsight` uses mimalloc):
/// how [`trim`] hands that allocator's free memory back.
pub fn set_trimmer(f: fn()) {
    // A second registration would be a programming error; the first stands.
    let _ = TRIMMER.set(f);
}

/// mimalloc's `mi_collect`, the trimmer of a binary whose global allocator is
/// mimalloc (`dualsight`, `dualsight-bench`): glibc's `malloc_trim` does
/// nothing for memory that mimalloc holds.
pub fn mimalloc_collect() {
    unsafe extern "C" {
        fn mi_collect(force: bool);
    }
    // SAFETY: part of mimalloc's C API, linked in by the mimalloc crate; it
    // only frees what is already free.
    unsafe { mi_collect(true) }
}

/// Hands freed heap memory back to the OS after a one-off burst of frees
/// (a loaded graph replacing the flat table, the bench's builds): the
/// registered allocator's trimmer, else glibc's `malloc_trim`. Best effort.
pub fn trim() {
    if let Some(f) = TRIMMER.get() {
        f();
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: glibc's malloc_trim takes a byte count and only releases
        // free pages; it is thread-safe.
        unsafe {
            malloc_trim(0);
        }
    }
}
