//! Pool images (vdisk-engine). The engine records zeros in metadata and
//! never relies on a punched range reading zero, so its zeroing needs no
//! proof.

use crate::{push_extent, Dest, Extent, Kind, Result, Source};
use vdisk_engine::Image;

/// An image or snapshot of a pool, read.
#[derive(Debug, Clone)]
pub struct PoolSource {
    image: Image,
}

impl PoolSource {
    /// Wraps an open image or snapshot.
    pub fn new(image: Image) -> Self {
        PoolSource { image }
    }
}

impl Source for PoolSource {
    fn describe(&self) -> String {
        self.image.spec().to_string()
    }
    fn size(&self) -> u64 {
        self.image.size()
    }
    fn preferred_chunk(&self) -> u64 {
        self.image.object_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        Ok(self.image.read_at(offset, buf)?)
    }
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        let mut at = offset;
        for (l, hole, zero) in self.image.block_status(offset, len)? {
            let kind = match (hole, zero) {
                (true, _) => Kind::Hole,
                (false, true) => Kind::Zero,
                (false, false) => Kind::Data,
            };
            push_extent(
                &mut out,
                Extent {
                    offset: at,
                    length: l,
                    kind,
                },
            );
            at += l;
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

/// A pool image being written. `created` says whether vdisk created it in
/// this run (it then reads zeros everywhere).
#[derive(Debug, Clone)]
pub struct PoolDest {
    image: Image,
    created: bool,
    durable: bool,
}

impl PoolDest {
    /// Wraps an image head.
    pub fn new(image: Image, created: bool) -> Self {
        PoolDest {
            image,
            created,
            durable: true,
        }
    }

    /// Finishes without syncing the data (`Image::flush_unsynced`): only
    /// for an image marked with `Store::mark_unsynced`.
    pub fn unsynced(mut self) -> Self {
        self.durable = false;
        self
    }
}

impl Dest for PoolDest {
    fn describe(&self) -> String {
        self.image.spec().to_string()
    }
    fn size(&self) -> u64 {
        self.image.size()
    }
    fn preferred_chunk(&self) -> u64 {
        self.image.object_size()
    }
    fn detects_zeros(&self) -> bool {
        true
    }
    fn created_zero(&self) -> bool {
        self.created
    }
    fn zero_trusted(&self) -> bool {
        true
    }
    fn zero_op(&self) -> Option<&'static str> {
        Some("write-zeroes (metadata)")
    }
    fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        // A copy writes each range once and flushes at the end: the engine
        // starts the writeback now (unless the image is marked unsynced).
        Ok(self.image.write_streaming(offset, data)?)
    }
    fn zero_fast(&self, offset: u64, len: u64) -> Result<()> {
        Ok(self.image.write_zeroes(offset, len)?)
    }
    fn can_read_back(&self) -> bool {
        true
    }
    fn read_back(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        Ok(self.image.read_at(offset, buf)?)
    }
    fn finish(&self) -> Result<()> {
        if self.durable {
            Ok(self.image.flush()?)
        } else {
            Ok(self.image.flush_unsynced()?)
        }
    }
    fn reopen(&self) -> Result<Box<dyn Source>> {
        Ok(Box::new(PoolSource::new(self.image.clone())))
    }
}
