//! A new qcow2 file, written by vdisk-qcow2's writer.

use crate::{Dest, Error, FileSource, Result, Source};
use std::path::{Path, PathBuf};
use vdisk_qcow2::{Format, ImageWrite, Qcow2Writer, WriterOptions};

/// A qcow2 file vdisk creates: it reads zeros where nothing is written, so
/// zero ranges are simply left out. Writes must be cluster-aligned and
/// each range is written once; it cannot be read before it is finished.
#[derive(Debug)]
pub struct Qcow2Dest {
    writer: Qcow2Writer,
    path: PathBuf,
}

impl Qcow2Dest {
    /// Creates `path` (refused if it exists, unless `replace`).
    pub fn create(path: &Path, size: u64, opts: &WriterOptions, replace: bool) -> Result<Self> {
        if !replace && std::fs::symlink_metadata(path).is_ok() {
            return Err(Error::Io {
                what: format!("creating {}", path.display()),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        let writer = Qcow2Writer::create(path, size, opts)?;
        Ok(Qcow2Dest {
            writer,
            path: path.to_path_buf(),
        })
    }
}

impl Dest for Qcow2Dest {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
    fn size(&self) -> u64 {
        ImageWrite::size(&self.writer)
    }
    fn alignment(&self) -> u64 {
        self.writer.cluster_size()
    }
    fn created_zero(&self) -> bool {
        true
    }
    fn zero_trusted(&self) -> bool {
        // Zero clusters are metadata.
        true
    }
    fn zero_op(&self) -> Option<&'static str> {
        Some("zero clusters")
    }
    fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        Ok(self.writer.write_at(data, offset)?)
    }
    fn zero_fast(&self, offset: u64, len: u64) -> Result<()> {
        Ok(self.writer.write_zeroes(offset, len)?)
    }
    fn can_read_back(&self) -> bool {
        false
    }
    fn read_back(&self, _buf: &mut [u8], _offset: u64) -> Result<()> {
        Err(Error::Unsupported(
            "a qcow2 being written cannot be read back before it is finished".into(),
        ))
    }
    fn finish(&self) -> Result<()> {
        self.writer.finish()?;
        Ok(())
    }
    fn reopen(&self) -> Result<Box<dyn Source>> {
        Ok(Box::new(FileSource::open(&self.path, Some(Format::Qcow2))?))
    }
}
