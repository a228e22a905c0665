//! The vdisk image engine: pools of thin-provisioned disk images with
//! snapshots, clones, object maps and fast diff, on the storage traits of
//! `vdisk-storage`.
//!
//! ```text
//!            Store  (pools, image records, one metadata op at a time)
//!              │ open(spec)
//!              ▼
//!            Image ── handle on the head (rw) or a snapshot (ro)
//!              │
//!          ImageState (one per open image: I/O gate, object cache, flush)
//!              │ per object: ObjectMeta (generations × present/zero bitmaps)
//!              ▼
//!     ObjectStore (data)        MetaStore (records, object maps)
//! ```
//!
//! See ARCHITECTURE.md at the repository root for the on-disk layout, the
//! invariants and the write ordering that makes a crash safe.
#![forbid(unsafe_code)]

pub mod backup;
mod bitmap;
pub mod changed;
pub mod check;
pub mod config;
pub mod error;
pub mod features;
mod image;
pub mod lend;
pub mod object;
pub mod objmap;
pub mod record;
pub mod report;
pub mod schedule;
pub mod spec;
mod status;
mod store;
pub mod transfer;
mod trim;
pub mod unsynced;

pub use bitmap::Bitmap;
pub use config::Config;
pub use error::{Error, ErrorKind, Result};
pub use features::Features;
pub use image::{is_zero, object_name, Image};
pub use spec::{human_size, parse_bytes, parse_size, ImageSpec};
pub use store::{
    now, CreateOptions, DataBackend, LocalDataBackend, PoolInfo, SingleDataBackend, Store,
    DRAIN_TIMEOUT,
};
pub use trim::{AdaptivePacer, FullSpeed, Pacer, TrimTarget};

/// Progress of long work (import, export, copy, flatten, rollback...).
/// Implementations must be cheap: `inc` is called from worker threads.
pub trait Progress: Sync {
    /// Work named `what` of `total` units begins.
    fn start(&self, what: &str, total: u64);
    /// `n` more units are done.
    fn inc(&self, n: u64);
    /// The work is over.
    fn finish(&self);
}

/// Progress that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: u64) {}
    fn inc(&self, _: u64) {}
    fn finish(&self) {}
}
