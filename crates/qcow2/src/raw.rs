//! The raw "format": the file is the disk. Reading reports file-system
//! holes (`SEEK_HOLE`) as zero ranges; writing creates a sparse file or
//! writes over an existing file or device.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::{Error, Result};
use crate::image::{push_extent, Extent, Format, ImageRead, ImageWrite, Status};
use crate::storage::{file_len, read_fill, Storage, Writeback};

/// A raw image opened for reading. `Send + Sync`.
#[derive(Debug)]
pub struct RawReader {
    storage: Box<dyn Storage>,
    size: u64,
}

impl RawReader {
    /// Wraps storage; the virtual size is its length.
    pub fn new(storage: Box<dyn Storage>) -> Self {
        let size = storage.len();
        RawReader { storage, size }
    }

    fn extent(offset: u64, length: u64, status: Status) -> Extent {
        Extent {
            offset,
            length,
            status,
            depth: 0,
            compressed: false,
            host_offset: (status == Status::Data).then_some(offset),
        }
    }
}

/// `lseek(fd, pos, whence)`; `None` on any error (no data after `pos`,
/// or holes not supported).
fn seek(file: &File, pos: u64, whence: libc::c_int) -> Option<u64> {
    let pos = libc::off_t::try_from(pos).ok()?;
    // SAFETY: lseek on a valid open descriptor has no memory effects; the
    // file position it moves is not used by this crate (reads are pread).
    let r = unsafe { libc::lseek(file.as_raw_fd(), pos, whence) };
    u64::try_from(r).ok()
}

impl ImageRead for RawReader {
    fn format(&self) -> Format {
        Format::Raw
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn granularity(&self) -> u64 {
        512
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.size)
        {
            return Err(Error::InvalidRequest(format!(
                "range {offset:#x}+{:#x} is beyond the size {:#x} of {}",
                buf.len(),
                self.size,
                self.storage.describe()
            )));
        }
        read_fill(&*self.storage, buf, offset)?;
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "range {offset:#x}+{len:#x} is beyond the size {:#x}",
                    self.size
                ))
            })?;
        let mut out = Vec::new();
        let Some(file) = self.storage.as_file() else {
            push_extent(&mut out, Self::extent(offset, len, Status::Data));
            return Ok(out);
        };
        let mut pos = offset;
        while pos < end {
            let Some(data) = seek(file, pos, libc::SEEK_DATA) else {
                // ENXIO: only a hole up to the end. Other errors (no
                // support): report data, the safe answer.
                let hole_to_end =
                    std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO);
                let status = if hole_to_end {
                    Status::Zero
                } else {
                    Status::Data
                };
                push_extent(&mut out, Self::extent(pos, end - pos, status));
                break;
            };
            if data > pos {
                push_extent(
                    &mut out,
                    Self::extent(pos, data.min(end) - pos, Status::Zero),
                );
            }
            if data >= end {
                break;
            }
            let hole = seek(file, data, libc::SEEK_HOLE)
                .unwrap_or(end)
                .min(end)
                .max(data + 1);
            push_extent(&mut out, Self::extent(data, hole - data, Status::Data));
            pos = hole;
        }
        Ok(out)
    }

    fn block_status_top(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.block_status(offset, len)
    }

    fn describe(&self) -> String {
        self.storage.describe()
    }
}

/// Writes a raw image.
///
/// [`RawWriter::create`] makes a new sparse file: nothing needs writing
/// for zeros, since the writer made the file and its holes read as zeros.
/// [`RawWriter::existing`] writes over a file or device whose contents are
/// unknown: `write_zeroes` then writes zero bytes — it never trusts a
/// device's "zero this range" (incident 1).
#[derive(Debug)]
pub struct RawWriter {
    file: File,
    size: u64,
    fresh: bool,
    durable: bool,
    writeback: Writeback,
    name: String,
}

impl RawWriter {
    /// Creates (or truncates) a regular file of `size` bytes.
    pub fn create(path: &Path, size: u64) -> Result<Self> {
        let name = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io(format!("creating {name}"), e))?;
        file.set_len(size)
            .map_err(|e| Error::io(format!("sizing {name} to {size} bytes"), e))?;
        Ok(RawWriter {
            file,
            size,
            fresh: true,
            durable: true,
            writeback: Writeback::default(),
            name,
        })
    }

    /// Writes over an open file or block device of at least `size` bytes.
    pub fn existing(file: File, size: u64, name: String) -> Result<Self> {
        let len = file_len(&file).map_err(|e| Error::io(format!("sizing {name}"), e))?;
        if len < size {
            return Err(Error::InvalidRequest(format!(
                "{name} has {len} bytes, the image needs {size}"
            )));
        }
        Ok(RawWriter {
            file,
            size,
            fresh: false,
            durable: true,
            writeback: Writeback::default(),
            name,
        })
    }

    /// Whether `finish` syncs the file (default: yes). `qemu-img convert`
    /// does not sync raw targets; a caller matching it may turn this off.
    pub fn set_durable(&mut self, durable: bool) {
        self.durable = durable;
    }

    fn check(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(Error::InvalidRequest(format!(
                "write {offset:#x}+{len:#x} is beyond the size {:#x} of {}",
                self.size, self.name
            )));
        }
        Ok(())
    }
}

impl ImageWrite for RawWriter {
    fn size(&self) -> u64 {
        self.size
    }

    fn alignment(&self) -> u64 {
        1
    }

    fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        self.check(offset, data.len() as u64)?;
        self.file.write_all_at(data, offset).map_err(|e| {
            Error::io(
                format!(
                    "writing {} bytes at {offset:#x} of {}",
                    data.len(),
                    self.name
                ),
                e,
            )
        })?;
        if self.durable {
            self.writeback.wrote(&self.file, data.len() as u64);
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.check(offset, len)?;
        if self.fresh {
            return Ok(());
        }
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut pos = offset;
        while pos < offset + len {
            let n = (offset + len - pos).min(zeros.len() as u64) as usize;
            self.write_at(&zeros[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }

    fn finish(&self) -> Result<()> {
        if !self.durable {
            return Ok(());
        }
        self.file
            .sync_all()
            .map_err(|e| Error::io(format!("syncing {}", self.name), e))
    }
}
