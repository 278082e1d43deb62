//! Tuning of the C allocator the `strata` binary runs on (glibc's malloc).
//!
//! Requests and responses on the data path are up to a few MiB each (a
//! 1 MiB batch in a produce request, a fetch response). glibc serves
//! allocations that large with a fresh `mmap` and gives them back with
//! `munmap` on free, and trims freed memory at the top of its heaps, so every
//! request's buffer was new memory that the kernel zero-filled page by page
//! on first touch. Page faults were over a quarter of the broker's CPU in a
//! produce profile (`exc_page_fault` under tonic's decode buffer and the
//! socket reads). Keeping such buffers in the heap for reuse cut the
//! broker's page faults by 85% and its CPU per produced byte by about 15%
//! (docs/benchmarks.md).
//!
//! What stays cached is bounded by the memory the process used at its peak,
//! which the broker's byte budgets bound already. Applications embedding the
//! broker keep their own allocator settings: this runs in `main` only.

/// Allocations up to this size come from the heap and are reused, not
/// mapped fresh (glibc's ceiling for the setting on 64-bit).
const MMAP_THRESHOLD_BYTES: i32 = 32 * 1024 * 1024;

/// Free memory at the top of a heap is returned to the kernel only beyond
/// this much.
const TRIM_THRESHOLD_BYTES: i32 = 64 * 1024 * 1024;

/// Applies the settings above; a no-op on other C libraries. Call before
/// any thread starts.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc parameters; it is called before any
    // other thread exists, and a refused setting leaves the default.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
    }
}
