//! The crate's error type. Every problem found in an image names the
//! structure, its offset and what is wrong with it, so that a user can tell
//! a truncated download from a hostile file from an unsupported feature.

use std::io;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong. Variants are grouped by what the caller can do about
/// it: `Io` (retry, check the device), `NotQcow2`/`Unsupported` (use another
/// tool or format), the corruption variants (the file is damaged or
/// hostile; nothing was trusted from it), the backing-chain variants, and
/// `InvalidRequest` (a bug in the caller).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing the underlying file failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the offset.
        context: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The file does not start with the qcow2 magic `QFI\xfb`.
    #[error("not a qcow2 image (the file does not start with the magic QFI\\xfb)")]
    NotQcow2,

    /// A valid image that uses something this build does not implement
    /// (encryption, external data files, an unknown incompatible feature, a
    /// compression type other than zlib and zstd, qcow version 1).
    #[error("unsupported qcow2 image: {0}")]
    Unsupported(String),

    /// A structure the image points to lies (partly) beyond the end of the
    /// file: a truncated file, or an offset that is wrong.
    #[error(
        "corrupt qcow2 image: {what} at offset {offset:#x} (length {len:#x}) lies outside the \
         file (size {file_size:#x}); the file is truncated or the offset is wrong"
    )]
    OutsideFile {
        /// The structure (e.g. "L2 table for guest offset 0x40000000").
        what: String,
        /// Where the image says it starts.
        offset: u64,
        /// How long it is.
        len: u64,
        /// The length of the file.
        file_size: u64,
    },

    /// Two structures of the image claim the same bytes of the file.
    #[error("corrupt qcow2 image: {first} and {second} overlap in the file")]
    Overlap {
        /// One of them, with its offset.
        first: String,
        /// The other, with its offset.
        second: String,
    },

    /// A size or count in the image is beyond what this implementation (and
    /// qemu) accepts; refused before anything is allocated for it.
    #[error("qcow2 image claims {what} = {value}, above the limit of {limit}")]
    Limit {
        /// The field.
        what: String,
        /// What the file says.
        value: u64,
        /// The largest value accepted.
        limit: u64,
    },

    /// Any other inconsistency: misaligned offsets, invalid entries,
    /// compressed data that does not decompress to a cluster.
    #[error("corrupt qcow2 image: {0}")]
    Corrupt(String),

    /// Following backing files leads back to an image already in the chain.
    #[error("the backing chain loops: {}", chain.join(" -> "))]
    BackingLoop {
        /// The images from the top, ending with the repeated one.
        chain: Vec<String>,
    },

    /// The backing chain is longer than the limit (which guards against
    /// loops the path check cannot see, e.g. through bind mounts).
    #[error("the backing chain is deeper than {limit} images")]
    ChainTooDeep {
        /// The limit.
        limit: u32,
    },

    /// Opening a backing file failed.
    #[error("backing file {name:?} of {image}: {source}")]
    Backing {
        /// The image that names the backing file.
        image: String,
        /// The backing file name as stored in the image.
        name: String,
        /// Why it could not be opened.
        #[source]
        source: Box<Error>,
    },

    /// The caller asked for something the API does not allow (a read past
    /// the end, an unaligned write, a cluster written twice).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True for the variants that mean the image itself is damaged or
    /// hostile (as opposed to unsupported, I/O or caller errors).
    pub fn is_corrupt(&self) -> bool {
        match self {
            Error::OutsideFile { .. }
            | Error::Overlap { .. }
            | Error::Limit { .. }
            | Error::Corrupt(_)
            | Error::BackingLoop { .. }
            | Error::ChainTooDeep { .. } => true,
            Error::Backing { source, .. } => source.is_corrupt(),
            _ => false,
        }
    }
}
