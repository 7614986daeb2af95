//! Returning freed memory to the OS.

/// Returns freed heap memory to the OS (glibc's `malloc_trim`). glibc keeps
/// freed small chunks in its arenas; after a one-off burst of them (loading a
/// million-point graph, the bench's builds) that memory stays resident
/// unless trimmed. A no-op off glibc.
pub fn trim() {
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
