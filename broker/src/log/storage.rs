//! The disk, behind a small trait, so that every byte the log writes can be run
//! through a fault-injecting backend in tests (torn writes, failed or lying
//! fsyncs, full disks, crashes that lose unsynced data).
//!
//! [`FileStorage`] is the real thing. [`FaultyStorage`] wraps it and models a
//! machine crash as "every file falls back to its last synced length", which is
//! the worst the page cache may legally do to us.
//!
//! Indexes are memory-mapped ([`StorageFile::map`]); only the log's record data
//! and its metadata files pass through the fault model.

use std::collections::HashMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{Mmap, MmapMut, MmapOptions};
use parking_lot::Mutex;

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read and write; create if missing.
    Create,
    /// Read and write an existing file.
    ReadWrite,
    /// Read an existing file.
    ReadOnly,
}

/// An open file.
pub trait StorageFile: Send + Sync + Debug {
    /// Writes all of `buf` at `pos`.
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    /// Writes all of `bufs`, one after the other, from `pos`: one write of
    /// pieces that live apart (a stamped header and a shared batch body)
    /// without first copying them together. The default writes them in turn.
    fn write_all_vectored_at(&self, bufs: &[&[u8]], mut pos: u64) -> io::Result<()> {
        for buf in bufs {
            self.write_at(buf, pos)?;
            pos += buf.len() as u64;
        }
        Ok(())
    }
    /// Reads up to `buf.len()` bytes at `pos`; returns how many were read
    /// (fewer only at end of file).
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    /// Reads exactly `len` bytes at `pos` into a new buffer. The default zeroes
    /// the buffer first; files that can read into uninitialised memory skip
    /// that (a measurable cost on the fetch path).
    fn read_exact_vec(&self, len: usize, pos: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        read_exact_at(self, &mut buf, pos)?;
        Ok(buf)
    }
    /// Exactly `len` bytes at `pos`, as shared bytes. The default reads them
    /// into a new buffer. A local file instead returns a read-only view of
    /// the page cache: no buffer to allocate and fault in, no copy. A view is
    /// only sound for bytes that are never cut from the file while it lives,
    /// so the log asks for one only below the high watermark (committed bytes
    /// are never truncated; whole files are only unlinked, which a view
    /// survives).
    fn read_view(&self, len: usize, pos: u64) -> io::Result<Bytes> {
        self.read_exact_vec(len, pos).map(Bytes::from)
    }
    /// Makes everything written so far durable (fdatasync).
    fn sync(&self) -> io::Result<()>;
    /// Sets the file's length, cutting or zero-extending it.
    fn set_len(&self, len: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// A read-only map of the whole file. The file must not be empty.
    fn map(&self) -> io::Result<Mmap>;
    /// A writable shared map of the whole file. The file must not be empty.
    fn map_mut(&self) -> io::Result<MmapMut>;
}

/// Directory and file operations the log needs.
pub trait Storage: Send + Sync + Debug {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes a directory's entries (creates, renames, removes) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the entries of `dir` (files and directories), unsorted.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Length of the file at `path`, without opening it.
    fn file_len(&self, path: &Path) -> io::Result<u64>;
}

/// Reads `buf.len()` bytes at `pos`, or fails with `UnexpectedEof`.
pub fn read_exact_at<F: StorageFile + ?Sized>(
    file: &F,
    buf: &mut [u8],
    pos: u64,
) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], pos + done as u64)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "short read: wanted {} bytes at {pos}, file ended after {done}",
                    buf.len()
                ),
            ));
        }
        done += n;
    }
    Ok(())
}

/// Atomically replaces `dir/name` with `bytes`: write a temp file, fsync it,
/// rename it over the old one, fsync the directory. A crash leaves either the
/// old or the new content, never a mix.
pub fn replace_file(storage: &dyn Storage, dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let file = storage.open(&tmp, OpenMode::Create)?;
    file.set_len(0)?;
    file.write_at(bytes, 0)?;
    file.sync()?;
    drop(file);
    storage.rename(&tmp, &path)?;
    storage.sync_dir(dir)
}

/// What one `pread` or `pwritev` call returned: `None` when a signal
/// interrupted it (call again), the bytes it moved, or its error; `at_zero`
/// when it moved none (the end of the file, or a write that took nothing).
fn progress(n: isize, at_zero: impl FnOnce() -> io::Error) -> io::Result<Option<usize>> {
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        };
    }
    if n == 0 {
        return Err(at_zero());
    }
    Ok(Some(n as usize))
}

/// Files on the local file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileStorage;

#[derive(Debug)]
struct LocalFile {
    file: File,
}

impl StorageFile for LocalFile {
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.file.write_all_at(buf, pos)
    }

    fn write_all_vectored_at(&self, bufs: &[&[u8]], mut pos: u64) -> io::Result<()> {
        let mut slices: Vec<io::IoSlice<'_>> = bufs.iter().map(|b| io::IoSlice::new(b)).collect();
        let mut slices = &mut slices[..];
        io::IoSlice::advance_slices(&mut slices, 0);
        while !slices.is_empty() {
            // At most IOV_MAX pieces per call; callers pass a handful.
            let count = slices.len().min(libc::UIO_MAXIOV as usize);
            // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix, and
            // every slice borrows memory that outlives the call.
            let n = unsafe {
                libc::pwritev(
                    self.file.as_raw_fd(),
                    slices.as_ptr().cast(),
                    count as libc::c_int,
                    pos as libc::off_t,
                )
            };
            let at_zero =
                || io::Error::new(io::ErrorKind::WriteZero, "failed to write whole buffers");
            let Some(n) = progress(n, at_zero)? else {
                continue;
            };
            pos += n as u64;
            io::IoSlice::advance_slices(&mut slices, n);
        }
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        loop {
            match self.file.read_at(buf, pos) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    fn read_exact_vec(&self, len: usize, pos: u64) -> io::Result<Vec<u8>> {
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        let mut done = 0;
        while done < len {
            // The spare capacity starts at `buf.len()`, which is `done`.
            let spare = buf.spare_capacity_mut();
            // SAFETY: pread writes at most `spare.len()` bytes into the spare
            // capacity; only the bytes it reports written become part of the
            // vector (`set_len` below), so nothing uninitialised is ever read.
            let n = unsafe {
                libc::pread(
                    self.file.as_raw_fd(),
                    spare.as_mut_ptr().cast(),
                    spare.len(),
                    (pos + done as u64) as libc::off_t,
                )
            };
            let at_zero = || {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("short read: wanted {len} bytes at {pos}, file ended after {done}"),
                )
            };
            let Some(n) = progress(n, at_zero)? else {
                continue;
            };
            done += n;
            // SAFETY: the first `done` bytes were written by pread.
            unsafe { buf.set_len(done) };
        }
        Ok(buf)
    }

    fn read_view(&self, len: usize, pos: u64) -> io::Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let file_len = self.file.metadata()?.len();
        if pos.checked_add(len as u64).is_none_or(|end| end > file_len) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short read: wanted {len} bytes at {pos}, file holds {file_len}"),
            ));
        }
        // SAFETY: the caller guarantees `pos..pos + len` (checked above to lie
        // within the file) is never cut while the view lives (see the trait).
        // memmap2 aligns the offset down to a page itself. `populate` maps the
        // resident pages in one call instead of faulting them in one by one
        // as they are copied out.
        let map = unsafe {
            MmapOptions::new()
                .offset(pos)
                .len(len)
                .populate()
                .map(&self.file)?
        };
        Ok(Bytes::from_owner(map))
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn map(&self) -> io::Result<Mmap> {
        // SAFETY: index files are only ever cut by the log that maps them, and
        // only to lengths covering every entry a reader may still look at.
        unsafe { Mmap::map(&self.file) }
    }

    fn map_mut(&self) -> io::Result<MmapMut> {
        // SAFETY: as for `map`; the single writer of an index holds its lock.
        unsafe { MmapMut::map_mut(&self.file) }
    }
}

impl Storage for FileStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = OpenOptions::new();
        match mode {
            OpenMode::Create => options.read(true).write(true).create(true),
            OpenMode::ReadWrite => options.read(true).write(true),
            OpenMode::ReadOnly => options.read(true),
        };
        // No access-time updates: with `relatime`, nearly every read of a
        // segment just appended to would change its inode (a journal write).
        // Only a file's owner (or a privileged process) may ask; anyone else
        // gets EPERM, and opens the file as it is.
        let file = match options.clone().custom_flags(libc::O_NOATIME).open(path) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => options.open(path)?,
            opened => opened?,
        };
        Ok(Arc::new(LocalFile { file }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }
}

/// Faults a [`FaultyStorage`] injects; change them at any time through
/// [`FaultyStorage::set`].
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Every `sync` fails with EIO (and syncs nothing).
    pub fail_sync: bool,
    /// Every `sync` reports success but syncs nothing: a lying disk. Only
    /// visible after [`FaultyStorage::crash`].
    pub lie_on_sync: bool,
    /// Bytes that may still be written before writes fail with ENOSPC.
    pub space_left_bytes: Option<u64>,
    /// The next write stores only this many bytes, then fails with EIO.
    pub tear_next_write_after: Option<usize>,
    /// Writes to and truncations of files whose name ends with this fail
    /// with EIO (a bad spot under one kind of file), so a test can stop a
    /// multi-file update between its steps.
    pub fail_files_ending: Option<String>,
}

#[derive(Debug, Default)]
struct FaultState {
    faults: Faults,
    /// Per file, the length its contents were last made durable at.
    synced_len: HashMap<PathBuf, u64>,
    syncs: u64,
    /// Bytes read through `read_at`, per file extension.
    bytes_read: HashMap<String, u64>,
}

/// A [`FileStorage`] that injects [`Faults`] and can simulate a crash.
#[derive(Debug, Clone, Default)]
pub struct FaultyStorage {
    state: Arc<Mutex<FaultState>>,
}

impl FaultyStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the active faults.
    pub fn set(&self, faults: Faults) {
        self.state.lock().faults = faults;
    }

    /// Successful `sync` calls so far.
    pub fn syncs(&self) -> u64 {
        self.state.lock().syncs
    }

    /// Bytes read so far from files whose name ends in `.{extension}`.
    pub fn bytes_read(&self, extension: &str) -> u64 {
        self.state
            .lock()
            .bytes_read
            .get(extension)
            .copied()
            .unwrap_or(0)
    }

    /// Simulates power loss: every file written through this storage falls back
    /// to the length it had at its last real sync. Call only after the log that
    /// used this storage has been dropped.
    pub fn crash(&self) -> io::Result<()> {
        let state = self.state.lock();
        for (path, len) in &state.synced_len {
            match OpenOptions::new().write(true).open(path) {
                Ok(f) => {
                    if f.metadata()?.len() > *len {
                        f.set_len(*len)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct FaultyFile {
    path: PathBuf,
    inner: Arc<dyn StorageFile>,
    state: Arc<Mutex<FaultState>>,
}

impl FaultyFile {
    fn check_writable(&self, state: &FaultState) -> io::Result<()> {
        let failing = state.faults.fail_files_ending.as_deref();
        let name = self.path.file_name().and_then(|n| n.to_str());
        match (failing, name) {
            (Some(suffix), Some(name)) if name.ends_with(suffix) => Err(io::Error::other(format!(
                "injected write failure (EIO) on {}",
                self.path.display()
            ))),
            _ => Ok(()),
        }
    }

    fn count_read(&self, bytes: usize) {
        let ext = self
            .path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_owned();
        *self.state.lock().bytes_read.entry(ext).or_default() += bytes as u64;
    }
}

impl StorageFile for FaultyFile {
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        let mut state = self.state.lock();
        self.check_writable(&state)?;
        if let Some(left) = state.faults.space_left_bytes {
            if (buf.len() as u64) > left {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            state.faults.space_left_bytes = Some(left - buf.len() as u64);
        }
        if let Some(keep) = state.faults.tear_next_write_after.take() {
            self.inner.write_at(&buf[..keep.min(buf.len())], pos)?;
            return Err(io::Error::other("injected torn write"));
        }
        drop(state);
        self.inner.write_at(buf, pos)
    }

    fn write_all_vectored_at(&self, bufs: &[&[u8]], pos: u64) -> io::Result<()> {
        // One write, as the local file does, so faults see it whole.
        self.write_at(&bufs.concat(), pos)
    }

    fn read_exact_vec(&self, len: usize, pos: u64) -> io::Result<Vec<u8>> {
        let buf = self.inner.read_exact_vec(len, pos)?;
        self.count_read(len);
        Ok(buf)
    }

    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let n = self.inner.read_at(buf, pos)?;
        self.count_read(n);
        Ok(n)
    }

    fn sync(&self) -> io::Result<()> {
        let mut state = self.state.lock();
        if state.faults.fail_sync {
            return Err(io::Error::other("injected fsync failure (EIO)"));
        }
        if state.faults.lie_on_sync {
            return Ok(());
        }
        self.inner.sync()?;
        let len = self.inner.len()?;
        state.synced_len.insert(self.path.clone(), len);
        state.syncs += 1;
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_writable(&self.state.lock())?;
        self.inner.set_len(len)?;
        // Cutting a file is a metadata change we treat as immediately durable;
        // the model only loses appended data.
        let mut state = self.state.lock();
        if let Some(synced) = state.synced_len.get_mut(&self.path) {
            *synced = (*synced).min(len);
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn map(&self) -> io::Result<Mmap> {
        self.inner.map()
    }

    fn map_mut(&self) -> io::Result<MmapMut> {
        self.inner.map_mut()
    }
}

impl Storage for FaultyStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let inner = FileStorage.open(path, mode)?;
        let mut state = self.state.lock();
        if !state.synced_len.contains_key(path) {
            // Whatever a file holds when we first see it counts as durable.
            state.synced_len.insert(path.to_path_buf(), inner.len()?);
        }
        drop(state);
        Ok(Arc::new(FaultyFile {
            path: path.to_path_buf(),
            inner,
            state: self.state.clone(),
        }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.state.lock().synced_len.remove(path);
        FileStorage.remove(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        FileStorage.rename(from, to)?;
        let mut state = self.state.lock();
        if let Some(len) = state.synced_len.remove(from) {
            state.synced_len.insert(to.to_path_buf(), len);
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let faults = self.state.lock().faults.clone();
        if faults.fail_sync {
            return Err(io::Error::other("injected fsync failure (EIO)"));
        }
        if faults.lie_on_sync {
            return Ok(());
        }
        FileStorage.sync_dir(dir)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        FileStorage.create_dir_all(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        FileStorage.list_dir(dir)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        FileStorage.exists(path)
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        FileStorage.file_len(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_read_is_an_eof_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short");
        std::fs::write(&path, [7u8; 100]).unwrap();
        let file = FileStorage.open(&path, OpenMode::ReadOnly).unwrap();
        assert_eq!(file.read_exact_vec(100, 0).unwrap(), vec![7u8; 100]);
        // The first pread returns 100 of 150 bytes, the second none.
        let err = file.read_exact_vec(150, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_view_equals_a_copy_at_any_offset_and_never_reaches_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = FileStorage.open(&path, OpenMode::ReadOnly).unwrap();
        for (pos, len) in [
            (0, 20_000),
            (1, 4095),
            (4095, 2),
            (4096, 8192),
            (12_345, 7_655),
        ] {
            let view = file.read_view(len, pos as u64).unwrap();
            assert_eq!(&view[..], &data[pos..pos + len], "{len} bytes at {pos}");
        }
        assert!(file.read_view(0, 20_000).unwrap().is_empty());
        let err = file.read_view(2, 19_999).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
