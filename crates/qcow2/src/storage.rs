//! Where image bytes come from: a file (positioned reads, shareable between
//! threads) or memory (tests, the fuzz target). The length is fixed when the
//! storage is opened; everything the image claims is checked against it.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};

/// Read-only random access to the bytes of one image file.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Length in bytes, as of opening.
    fn len(&self) -> u64;

    /// True if the storage holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read
    /// (fewer only at the end of the storage).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Where this data lives, for messages.
    fn describe(&self) -> String;

    /// The underlying file, if there is one (lets raw images ask the file
    /// system for holes).
    fn as_file(&self) -> Option<&File> {
        None
    }
}

/// Reads `buf.len()` bytes at `offset`; bytes beyond the end of the storage
/// read as zeros (what qemu does for a data cluster cut by the end of the
/// file). Returns how many bytes came from the storage.
pub(crate) fn read_fill(s: &dyn Storage, buf: &mut [u8], offset: u64) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset + done as u64;
        match s.read_at(&mut buf[done..], at) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(Error::io(
                    format!(
                        "reading {} bytes at {at:#x} of {}",
                        buf.len() - done,
                        s.describe()
                    ),
                    e,
                ))
            }
        }
    }
    buf[done..].fill(0);
    Ok(done)
}

/// Reads exactly `buf.len()` bytes that the caller has checked lie inside
/// the storage; a short read means the file shrank under us.
pub(crate) fn read_exact(s: &dyn Storage, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
    let n = read_fill(s, buf, offset)?;
    if n < buf.len() {
        return Err(Error::OutsideFile {
            what: what.to_string(),
            offset,
            len: buf.len() as u64,
            file_size: s.len(),
        });
    }
    Ok(())
}

/// A file opened read-only, read with `pread` (no shared cursor, so any
/// number of threads may read at once).
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    len: u64,
    name: String,
}

impl FileStorage {
    /// Opens `path` read-only.
    pub fn open(path: &Path) -> Result<Self> {
        let file =
            File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        Self::from_file(file, path.display().to_string())
    }

    /// Wraps an open file; `name` is used in messages.
    pub fn from_file(file: File, name: String) -> Result<Self> {
        let len = file_len(&file).map_err(|e| Error::io(format!("sizing {name}"), e))?;
        Ok(FileStorage { file, len, name })
    }
}

/// The length of a regular file or a block device.
pub(crate) fn file_len(file: &File) -> io::Result<u64> {
    use std::os::unix::fs::FileTypeExt;
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        use std::io::{Seek, SeekFrom};
        let mut f = file;
        let end = f.seek(SeekFrom::End(0))?;
        f.seek(SeekFrom::Start(0))?;
        Ok(end)
    } else {
        Ok(meta.len())
    }
}

impl Storage for FileStorage {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    fn describe(&self) -> String {
        self.name.clone()
    }

    fn as_file(&self) -> Option<&File> {
        Some(&self.file)
    }
}

/// An image held in memory.
#[derive(Clone)]
pub struct MemStorage {
    bytes: std::sync::Arc<[u8]>,
    name: String,
}

impl MemStorage {
    /// Wraps `bytes`; `name` is used in messages.
    pub fn new(bytes: impl Into<std::sync::Arc<[u8]>>, name: impl Into<String>) -> Self {
        MemStorage {
            bytes: bytes.into(),
            name: name.into(),
        }
    }
}

impl fmt::Debug for MemStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemStorage")
            .field("name", &self.name)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl Storage for MemStorage {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let len = self.bytes.len() as u64;
        if offset >= len {
            return Ok(0);
        }
        let start = offset as usize;
        let n = buf.len().min(self.bytes.len() - start);
        buf[..n].copy_from_slice(&self.bytes[start..start + n]);
        Ok(n)
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// Starts writeback of a file being written every [`Writeback::EVERY`]
/// bytes (`sync_file_range(SYNC_FILE_RANGE_WRITE)`: initiate, do not
/// wait), so that the disk works while the copy goes on and the final
/// `fsync` finds little left to do.
#[derive(Debug, Default)]
pub(crate) struct Writeback {
    pending: std::sync::atomic::AtomicU64,
}

impl Writeback {
    const EVERY: u64 = 64 << 20;

    pub(crate) fn wrote(&self, file: &File, n: u64) {
        use std::os::unix::io::AsRawFd;
        use std::sync::atomic::Ordering;
        let before = self.pending.fetch_add(n, Ordering::Relaxed);
        if before + n < Self::EVERY || before >= Self::EVERY {
            return; // not yet, or another thread is kicking it now
        }
        // SAFETY: sync_file_range on a valid descriptor only schedules I/O
        // of the file's own dirty pages; it touches no memory of ours.
        // Errors are ignored: the final fsync reports any real failure.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
        self.pending.store(0, Ordering::Relaxed);
    }
}
