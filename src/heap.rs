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

/// How long mimalloc keeps freed pages before handing them back to the OS
/// (its `purge_delay`, default 10 ms). A forward pass frees and allocates
/// tens of MB per layer; at 10 ms those pages went back between layers and
/// the kernel zeroed them again on the next touch (~7,700 page faults per
/// ViT-B/16 batch-8 forward, 23% of its time in `clear_page`). At 10 s they
/// are reused, and an idle process still returns them 10 s later.
const MIMALLOC_PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// Sets [`MIMALLOC_PURGE_DELAY_MS`] in a binary whose global allocator is
/// mimalloc; call first thing in `main`. An operator's own
/// `MIMALLOC_PURGE_DELAY` (which mimalloc has already read) wins, which is
/// also how the two are compared (BENCHMARKS.md).
pub fn mimalloc_keep_freed_pages() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    unsafe extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    // `mi_option_purge_delay` in mimalloc.h's `mi_option_t` (the same in v2
    // and v3); libmimalloc-sys does not name it.
    const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
    // SAFETY: part of mimalloc's C API, linked in by the mimalloc crate;
    // options may be set at any time.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, MIMALLOC_PURGE_DELAY_MS) }
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
