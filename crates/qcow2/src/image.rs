//! What every format offers: the read side ([`ImageRead`]: random access
//! from many threads, block status) and the write side ([`ImageWrite`]),
//! plus format detection.

use std::fmt;
use std::sync::Arc;

use crate::error::Result;
use crate::header::MAGIC;

/// An image format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// The bytes are the disk.
    Raw,
    /// qcow2 (versions 2 and 3).
    Qcow2,
}

impl Format {
    /// The name qemu uses (`-f`, `-F`, the backing format extension).
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }

    /// Parses a qemu format name.
    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "raw" => Some(Format::Raw),
            "qcow2" => Some(Format::Qcow2),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`detect`] found at the start of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    /// A format this crate reads.
    Format(Format),
    /// A known image format this crate does not read (its name); reading it
    /// as raw would copy its container, not the disk inside.
    Other(&'static str),
}

/// Bytes [`detect`] looks at (fewer are fine for short files).
pub const DETECT_LEN: usize = 512;

/// Guesses the format from the first bytes of a file (up to
/// [`DETECT_LEN`]). Anything without a known signature is raw.
pub fn detect(first_bytes: &[u8]) -> Detected {
    let b = first_bytes;
    let at = |off: usize, sig: &[u8]| b.len() >= off + sig.len() && &b[off..off + sig.len()] == sig;
    if at(0, &MAGIC) {
        if at(4, &[0, 0, 0, 1]) {
            return Detected::Other("qcow (version 1)");
        }
        return Detected::Format(Format::Qcow2);
    }
    if at(0, b"QFI") {
        return Detected::Other("qcow");
    }
    const OTHERS: &[(usize, &[u8], &str)] = &[
        (0, b"KDMV", "vmdk"),
        (0, b"# Disk DescriptorFile", "vmdk (descriptor)"),
        (0, b"vhdxfile", "vhdx"),
        (0, b"conectix", "vpc (vhd)"),
        (0, b"QED\0", "qed"),
        (0, b"LUKS\xba\xbe", "luks"),
        (0x40, &[0x7f, 0x10, 0xda, 0xbe], "vdi"),
        (0, b"cxd\0", "parallels"),
        (0, b"WithoutFreeSpace", "parallels"),
        (0, b"WithouFreSpacExt", "parallels"),
        (0, b"\x78\x79\x7A\x71\x57\x4E\x4C\x42", "bochs"),
        (0, b"Bochs Virtual HD Image", "bochs"),
        (0, b"\x00\x00\x00\x00\x43\x4C\x4F\x4F", "cloop"),
    ];
    for &(off, sig, name) in OTHERS {
        if at(off, sig) {
            return Detected::Other(name);
        }
    }
    Detected::Format(Format::Raw)
}

/// How a guest range reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Stored data (which may still happen to be zeros).
    Data,
    /// Reads as zeros by metadata (zero flag, or a hole in a raw file); over
    /// a backing file this hides the backing data.
    Zero,
    /// Nothing defines it: in [`ImageRead::block_status`] no layer of the
    /// chain holds it (reads zeros); in [`ImageRead::block_status_top`] this
    /// layer does not, so it reads from the backing file.
    Unallocated,
}

/// A run of guest bytes with one [`Status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Guest offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// How it reads.
    pub status: Status,
    /// Which layer of the backing chain defines it (0: this image).
    pub depth: u32,
    /// Data stored compressed.
    pub compressed: bool,
    /// For uncompressed data: where the run starts in the file of layer
    /// `depth` (runs are split where the host offsets are not contiguous).
    pub host_offset: Option<u64>,
}

impl Extent {
    /// Guest offset just past the extent.
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }

    /// Whether `next` continues this extent (adjacent, same kind, and for
    /// data, contiguous in the file).
    pub(crate) fn joins(&self, next: &Extent) -> bool {
        self.end() == next.offset
            && self.status == next.status
            && self.depth == next.depth
            && self.compressed == next.compressed
            && match (self.host_offset, next.host_offset) {
                (None, None) => true,
                (Some(a), Some(b)) => a + self.length == b,
                _ => false,
            }
    }
}

/// Appends `e` to `out`, merging it into the last extent when it continues it.
pub(crate) fn push_extent(out: &mut Vec<Extent>, e: Extent) {
    if e.length == 0 {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.joins(&e) {
            last.length += e.length;
            return;
        }
    }
    out.push(e);
}

/// Random read access to an image (and its backing chain).
///
/// Every method takes `&self`: share one reader (`Arc`) between worker
/// threads; reads are positioned (`pread`) and metadata caches are
/// internally locked for short, I/O-free sections.
pub trait ImageRead: Send + Sync + fmt::Debug {
    /// The format of this layer.
    fn format(&self) -> Format;

    /// Virtual size in bytes.
    fn size(&self) -> u64;

    /// The unit block status distinguishes (cluster or subcluster size;
    /// 512 for raw). Chunks aligned to it never split a mapping.
    fn granularity(&self) -> u64;

    /// Reads `buf.len()` bytes at guest `offset`, which must lie within the
    /// virtual size. Unallocated ranges read from the backing chain, or as
    /// zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// How `[offset, offset + len)` reads, resolved through the backing
    /// chain: extents cover the range exactly, in order, merged where
    /// adjacent and alike. `Unallocated` means no layer holds it.
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>>;

    /// Like [`ImageRead::block_status`] but for this layer only:
    /// `Unallocated` means the range reads from the backing file. What a
    /// convert that keeps the backing file needs.
    fn block_status_top(&self, offset: u64, len: u64) -> Result<Vec<Extent>>;

    /// The backing image, if one is attached.
    fn backing(&self) -> Option<&Arc<dyn ImageRead>> {
        None
    }

    /// The file this layer was opened from, for messages.
    fn describe(&self) -> String;
}

/// Sequential-or-parallel writing of a new image.
///
/// Writes take guest-offset chunks aligned to [`ImageWrite::alignment`]
/// (the last chunk may end anywhere in the last cluster), from any number of
/// threads, in any order; each guest range is written at most once.
/// [`ImageWrite::finish`] completes the image and makes it durable; an
/// image not finished is not valid (a qcow2 has no header until then).
pub trait ImageWrite: Send + Sync + fmt::Debug {
    /// Virtual size in bytes.
    fn size(&self) -> u64;

    /// Required alignment of write offsets and lengths (the cluster size
    /// for qcow2, 1 for raw).
    fn alignment(&self) -> u64;

    /// Writes `data` at guest `offset`.
    fn write_at(&self, data: &[u8], offset: u64) -> Result<()>;

    /// Makes `[offset, offset + len)` read as zeros. Needed only over a
    /// backing file or a destination that is not known to be zero; a new
    /// image reads zeros where nothing was written.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()>;

    /// Writes what is left (metadata) and syncs. Waits for writes in
    /// flight; later writes are refused. `&self`, so a writer shared by
    /// workers (`Arc<dyn ImageWrite>`) can be finished in place.
    fn finish(&self) -> Result<()>;
}

/// True if every byte of `buf` is zero. Looks at the first 16 bytes
/// first (data that is not zero rarely starts with zeros), then at 256-byte
/// blocks with an OR fold the compiler vectorizes, stopping at the first
/// non-zero block: random data costs a few bytes, not a pass over it.
pub fn is_zero(buf: &[u8]) -> bool {
    let head = buf.len().min(16);
    if buf[..head].iter().any(|&b| b != 0) {
        return false;
    }
    buf[head..]
        .chunks(256)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_formats() {
        assert_eq!(
            detect(b"QFI\xfb\0\0\0\x03"),
            Detected::Format(Format::Qcow2)
        );
        assert_eq!(
            detect(b"QFI\xfb\0\0\0\x01"),
            Detected::Other("qcow (version 1)")
        );
        assert_eq!(detect(b"KDMV...."), Detected::Other("vmdk"));
        assert_eq!(detect(b""), Detected::Format(Format::Raw));
        assert_eq!(detect(&[0u8; 512]), Detected::Format(Format::Raw));
    }

    #[test]
    fn zero_check() {
        let mut b = vec![0u8; 100_003];
        assert!(is_zero(&b));
        for at in [0, 15, 16, 4095, 4096, 100_002] {
            b[at] = 1;
            assert!(!is_zero(&b), "{at}");
            b[at] = 0;
        }
    }
}
