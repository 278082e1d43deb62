//! Where the bytes of a log read come from: a copy, or a view of the page
//! cache.
//!
//! A consumer catching up reads megabytes per fetch. Copying them out of the
//! page cache into a fresh buffer (allocate, fault in and zero the pages,
//! `pread`, free) was the largest cost of the broker's side of a catch-up; a
//! read-only map of the same pages costs a few system calls. A map is only
//! safe over bytes that are never cut from the file while it lives (touching
//! a page past a truncated end kills the process with SIGBUS), which holds for
//! committed batches: the log cuts only uncommitted ones, and retention and
//! snapshot installs unlink whole files, which a map survives.

/// How a read hands out its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadMode {
    /// A buffer of their own: for batches that may still be cut.
    Copy,
    /// A view of the file's pages where that is cheaper (reads of at least
    /// `VIEW_MIN_BYTES`): only for committed batches.
    View,
}

/// Smallest read served as a view. Below it, mapping and unmapping costs more
/// than copying (a tailing consumer reads a few KiB at a time).
pub(crate) const VIEW_MIN_BYTES: usize = 256 * 1024;
