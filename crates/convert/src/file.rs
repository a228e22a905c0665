//! Raw and qcow2 files and block devices.

use crate::{push_extent, Dest, Error, Extent, Kind, Result, Source};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vdisk_qcow2::{Format, ImageRead, Status};

/// A raw or qcow2 file or a block device, read through vdisk-qcow2 (format
/// detected unless given; a qcow2 backing chain is followed).
#[derive(Debug)]
pub struct FileSource {
    image: Arc<dyn ImageRead>,
    path: PathBuf,
}

impl FileSource {
    /// Opens `path`; `format` overrides detection.
    pub fn open(path: &Path, format: Option<Format>) -> Result<Self> {
        let meta =
            std::fs::metadata(path).map_err(Error::io(format!("opening {}", path.display())))?;
        if meta.is_dir() {
            return Err(Error::Invalid(format!("{} is a directory", path.display())));
        }
        let opts = vdisk_qcow2::OpenOptions {
            format,
            ..Default::default()
        };
        let image = vdisk_qcow2::open(path, &opts).map_err(|e| in_file(path, e))?;
        Ok(FileSource {
            image,
            path: path.to_path_buf(),
        })
    }

    /// The detected (or given) format.
    pub fn format(&self) -> Format {
        self.image.format()
    }

    /// The underlying reader.
    pub fn image(&self) -> &Arc<dyn ImageRead> {
        &self.image
    }
}

impl Source for FileSource {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn size(&self) -> u64 {
        self.image.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.image
            .read_at(buf, offset)
            .map_err(|e| in_file(&self.path, e))
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        let status = self
            .image
            .block_status(offset, len)
            .map_err(|e| in_file(&self.path, e))?;
        for e in status {
            let kind = match e.status {
                Status::Data => Kind::Data,
                Status::Zero => Kind::Zero,
                Status::Unallocated => Kind::Hole,
            };
            push_extent(
                &mut out,
                Extent {
                    offset: e.offset,
                    length: e.length,
                    kind,
                },
            );
        }
        if out.is_empty() {
            out.push(Extent {
                offset,
                length: len,
                kind: Kind::Data,
            });
        }
        Ok(out)
    }
}

/// Names the file in an error that does not already.
fn in_file(path: &Path, e: vdisk_qcow2::Error) -> Error {
    let shown = path.display().to_string();
    if e.to_string().contains(&shown) {
        Error::Image(e)
    } else {
        Error::File {
            path: shown,
            source: e,
        }
    }
}

/// A raw file or a block device to write.
#[derive(Debug)]
pub struct FileDest {
    file: File,
    path: PathBuf,
    size: u64,
    block: bool,
    created: bool,
    durable: bool,
}

/// `BLKZEROOUT` = `_IO(0x12, 127)`: zero a byte range of a block device
/// (`[u64; 2]` = start, length, both 512-aligned).
const BLKZEROOUT: libc::c_ulong = 0x127f;

impl FileDest {
    /// Creates a new raw file of `size` bytes (refused if it exists, unless
    /// `replace`, which truncates it first): it reads zeros, since vdisk
    /// made it in this run.
    pub fn create(path: &Path, size: u64, replace: bool) -> Result<Self> {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if replace {
            o.create(true).truncate(true);
        } else {
            o.create_new(true);
        }
        let file = o
            .open(path)
            .map_err(Error::io(format!("creating {}", path.display())))?;
        file.set_len(size)
            .map_err(Error::io(format!("sizing {}", path.display())))?;
        Ok(FileDest {
            file,
            path: path.to_path_buf(),
            size,
            block: false,
            created: true,
            durable: true,
        })
    }

    /// Opens an existing file or block device to overwrite. Its contents
    /// are not assumed to be zero (incident 1) unless `target_is_zero`.
    pub fn existing(path: &Path, target_is_zero: bool) -> Result<Self> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(Error::io(format!("opening {}", path.display())))?;
        let meta = file
            .metadata()
            .map_err(Error::io(format!("examining {}", path.display())))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            return Err(Error::Invalid(format!("{} is a directory", path.display())));
        }
        let block = ft.is_block_device();
        let size = if block {
            file.seek(SeekFrom::End(0))
                .map_err(Error::io(format!("sizing {}", path.display())))?
        } else if ft.is_file() {
            meta.len()
        } else {
            return Err(Error::Invalid(format!(
                "{} is neither a regular file nor a block device",
                path.display()
            )));
        };
        Ok(FileDest {
            file,
            path: path.to_path_buf(),
            size,
            block,
            created: target_is_zero,
            durable: true,
        })
    }

    /// Whether [`Dest::finish`] syncs (default). Without it the data is
    /// left to the page cache, as `qemu-img convert` leaves it: faster, but
    /// a crash may lose it.
    pub fn set_durable(&mut self, durable: bool) {
        self.durable = durable;
    }

    /// Whether this is a block device.
    pub fn is_block_device(&self) -> bool {
        self.block
    }

    fn zero_range_file(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let fd = self.file.as_raw_fd();
        let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: fallocate only reads its integer arguments; `fd` is an
        // open descriptor owned by `self.file` for the whole call.
        let r = unsafe { libc::fallocate(fd, libc::FALLOC_FL_ZERO_RANGE, off, l) };
        if r == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(err);
        }
        // SAFETY: as above.
        let r = unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                l,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    fn zero_range_block(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let range: [u64; 2] = [offset, len];
        // SAFETY: BLKZEROOUT reads a `[u64; 2]` through the pointer, which
        // points at `range`, alive and properly aligned for the call; `fd`
        // is owned by `self.file`.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                BLKZEROOUT as _,
                range.as_ptr() as *const libc::c_void,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

impl Dest for FileDest {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn alignment(&self) -> u64 {
        if self.block {
            512
        } else {
            1
        }
    }

    fn created_zero(&self) -> bool {
        self.created
    }

    fn zero_op(&self) -> Option<&'static str> {
        Some(if self.block {
            "BLKZEROOUT"
        } else {
            "fallocate(ZERO_RANGE)"
        })
    }

    fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(data, offset)
            .map_err(Error::io(format!(
                "writing {} at offset {offset}",
                self.path.display()
            )))?;
        if self.durable {
            // The copy writes each range once and syncs at the end: start
            // this range's writeback now, so the final sync has little
            // left to wait for (the disk works while the copy goes on).
            vdisk_storage::start_file_writeback(&self.file, offset, data.len() as u64);
        }
        Ok(())
    }

    fn zero_fast(&self, offset: u64, len: u64) -> Result<()> {
        let r = if self.block {
            self.zero_range_block(offset, len)
        } else {
            self.zero_range_file(offset, len)
        };
        r.map_err(Error::io(format!(
            "zeroing {} at offset {offset}",
            self.path.display()
        )))
    }

    fn can_read_back(&self) -> bool {
        true
    }

    fn read_back(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(Error::io(format!(
                "reading back {} at offset {offset}",
                self.path.display()
            )))
    }

    fn finish(&self) -> Result<()> {
        if !self.durable {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(Error::io(format!("syncing {}", self.path.display())))
    }

    fn reopen(&self) -> Result<Box<dyn Source>> {
        Ok(Box::new(FileSource::open(&self.path, Some(Format::Raw))?))
    }
}
