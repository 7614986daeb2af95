//! Returning freed memory to the OS.

use std::sync::OnceLock;

static TRIMMER: OnceLock<fn()> = OnceLock::new();

/// For a binary with its own global allocator (`dualsight` uses mimalloc):
/// how [`trim`] hands that allocator's free memory back.
pub fn set_trimmer(f: fn()) {
    // A second registration would be a programming error; the first stands.
    let _ = TRIMMER.set(f);
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
