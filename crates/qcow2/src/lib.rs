//! vdisk: qcow2 image format: reading (v2/v3, backing chains, compression, extended L2) and writing, with validation of hostile files.
//!
//! Reading: [`open`] a file (format detected, backing chain followed) and
//! get an [`ImageRead`]: `read_at` and `block_status` take `&self`, so one
//! reader serves any number of worker threads. Writing: [`Qcow2Writer`]
//! (qcow2 v3, optionally compressed, optionally with a backing file name)
//! and [`RawWriter`], both [`ImageWrite`]: cluster-aligned chunks from any
//! thread, in any order, then `finish`.
//!
//! Parsing is sans-IO where it can be: [`header`], [`entry`] and
//! [`snapshot`] are pure functions over byte slices; the reader does the
//! I/O through [`Storage`] (a file, or memory for tests and fuzzing).
//!
//! ```no_run
//! use std::path::Path;
//! use vdisk_qcow2::{open, ImageRead, OpenOptions, Status};
//!
//! let img = open(Path::new("disk.qcow2"), &OpenOptions::default())?;
//! for e in img.block_status(0, img.size())? {
//!     if e.status == Status::Data {
//!         let mut buf = vec![0u8; e.length.min(1 << 20) as usize];
//!         img.read_at(&mut buf, e.offset)?;
//!     }
//! }
//! # Ok::<(), vdisk_qcow2::Error>(())
//! ```

mod cache;
mod chain;
pub mod compress;
pub mod entry;
mod error;
pub mod header;
mod image;
mod raw;
mod reader;
pub mod snapshot;
mod storage;
mod writer;

pub use chain::{detect_file, open, resolve_backing, OpenOptions};
pub use error::{Error, Result};
pub use header::CompressionType;
pub use image::{
    detect, is_zero, Detected, Extent, Format, ImageRead, ImageWrite, Status, DETECT_LEN,
};
pub use raw::{RawReader, RawWriter};
pub use reader::{Qcow2Info, Qcow2Reader, DEFAULT_L2_CACHE_BYTES};
pub use snapshot::SnapshotInfo;
pub use storage::{FileStorage, MemStorage, Storage};
pub use writer::{Qcow2Writer, WriteSummary, WriterOptions};
