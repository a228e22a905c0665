//! vdisk: RBD diff v1 and export-format 2 streams, encoded and decoded without I/O.
//!
//! Ceph's `rbd` writes three stream formats for incremental and full
//! backups; this crate reads and writes all of them byte for byte as
//! `rbd` does (`src/tools/rbd/action/{Export,Import,MergeDiff}.cc` and
//! `doc/dev/rbd-diff.rst` in ceph/ceph; the layouts are drawn in
//! ARCHITECTURE.md):
//!
//! - **diff v1** (`rbd export-diff`, `import-diff`, `merge-diff`): the
//!   banner `rbd diff v1\n`, then one-byte tags: `f` from-snapshot, `t`
//!   to-snapshot, `s` image size, then `w` data and `z` zero extents, `e`
//!   at the end. Integers are little-endian.
//! - **diff v2**: the same records, each tag followed by the length of
//!   what follows (u64), so readers can skip tags they do not know; adds
//!   `p` (the to-snapshot is protected). Only found inside export-format 2.
//! - **image v2** (`rbd export --export-format 2`): `rbd image v2\n`,
//!   tagged properties (`O` order, `T` features, `U`/`C` striping, `M`
//!   image-meta pairs) ending with `E`, then `rbd image diffs v2\n`, a u64
//!   count, and that many v2 diffs: one per snapshot (oldest first), then
//!   the head.
//!
//! The [`Decoder`] is fed bytes as they arrive and returns
//! [`Event`]s; a data record's payload comes out as slices of the input
//! (never buffered, never allocated by a length the stream claims), and
//! everything else it buffers is bounded ([`MAX_NAME_LEN`],
//! [`MAX_META_LEN`]). Errors are typed ([`DecodeError`]) and say where.
//! [`DiffEncoder`] and [`encode_image_header`] write the same formats.
//! [`DiffReader`] and [`merge_diffs`] adapt those to `std::io` streams, and
//! [`sum`] computes and checks the `FILE.vdisk-sum` sidecar (checksums and
//! the identity of the diff's image and snapshots).

#![forbid(unsafe_code)]

mod decode;
mod encode;
mod error;
mod merge;
mod read;
pub mod sum;

pub use decode::{Decoder, Event, StreamKind};
pub use encode::{encode_image_header, DiffEncoder, DiffHeader, ImageHeader};
pub use error::{DecodeError, EncodeError, ErrorClass};
pub use merge::{merge_diffs, MergeError, MergeSummary, Which};
pub use read::{DiffReader, ReadError};

/// First bytes of a diff v1 stream (`rbd export-diff`).
pub const DIFF_V1_BANNER: &[u8] = b"rbd diff v1\n";
/// First bytes of each diff inside an export-format 2 stream.
pub const DIFF_V2_BANNER: &[u8] = b"rbd diff v2\n";
/// First bytes of an export-format 2 stream (`rbd export --export-format 2`).
pub const IMAGE_V2_BANNER: &[u8] = b"rbd image v2\n";
/// Between the image properties and the diffs of an export-format 2 stream
/// (written by `rbd`, absent from `doc/dev/rbd-diff.rst`).
pub const IMAGE_DIFFS_V2_BANNER: &[u8] = b"rbd image diffs v2\n";

/// Record tags of a diff (v1 and v2).
pub mod tag {
    /// From-snapshot name (le32 length, bytes).
    pub const FROM_SNAP: u8 = b'f';
    /// To-snapshot name (le32 length, bytes).
    pub const TO_SNAP: u8 = b't';
    /// Image size at the end of the diff (le64).
    pub const SIZE: u8 = b's';
    /// Whether the to-snapshot is protected (u8; `rbd` writes it in v2 only).
    pub const PROTECTED: u8 = b'p';
    /// Data: le64 offset, le64 length, then the bytes.
    pub const WRITE: u8 = b'w';
    /// Zeroes: le64 offset, le64 length.
    pub const ZERO: u8 = b'z';
    /// End of the diff (no length, even in v2).
    pub const END: u8 = b'e';

    /// Image properties of export-format 2 (each: tag, le64 length, value).
    pub const IMAGE_ORDER: u8 = b'O';
    pub const IMAGE_FEATURES: u8 = b'T';
    pub const IMAGE_STRIPE_UNIT: u8 = b'U';
    pub const IMAGE_STRIPE_COUNT: u8 = b'C';
    /// An image-meta pair: le32 key length, key, le32 value length, value.
    pub const IMAGE_META: u8 = b'M';
    /// End of the image properties (no length).
    pub const IMAGE_END: u8 = b'E';
}

/// Longest snapshot name accepted, as `rbd import-diff` (its
/// `read_string(fd, 4096, ...)`).
pub const MAX_NAME_LEN: u32 = 4096;

/// Largest image-meta record (key and value) accepted; `rbd` has no limit
/// but values are small settings in practice.
pub const MAX_META_LEN: u64 = 1 << 20;
