//! Helpers shared by the engine's integration tests (each test file is its
//! own crate and includes this module with `mod common;`).
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use vdisk_engine::{Config, Features, SingleDataBackend, Store};
use vdisk_storage::{MemMetaStore, MemObjectStore, MetaStore, ObjectStore};

/// `VDISK_TEST_LONG=1` turns on the long mode: more cases, more ops, more
/// trials.
pub fn long_mode() -> bool {
    std::env::var("VDISK_TEST_LONG").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `short` normally, `long` with `VDISK_TEST_LONG=1`.
pub fn scaled(short: usize, long: usize) -> usize {
    if long_mode() {
        long
    } else {
        short
    }
}

/// A config with small objects (`2^order` bytes), the default features and
/// an object cache of 2.
pub fn config(order: u8) -> Config {
    Config {
        default_features: Features::DEFAULT,
        default_order: order,
        // Tiny: every flush evicts what it may, so every test also checks
        // that evicted objects come back right from the metadata store.
        object_cache: 2,
    }
}

/// Opens a store on an in-memory metadata store and any object store.
pub fn open_store(meta: &MemMetaStore, data: Arc<dyn ObjectStore>, order: u8) -> Store {
    Store::open_with(
        Arc::new(meta.clone()) as Arc<dyn MetaStore>,
        Box::new(SingleDataBackend(data)),
        config(order),
    )
    .expect("open store")
}

/// Opens a store on fresh in-memory stores; returns them for reopening.
pub fn mem_store(order: u8) -> (Store, MemMetaStore, MemObjectStore) {
    let meta = MemMetaStore::new();
    let data = MemObjectStore::new();
    let store = open_store(&meta, Arc::new(data.clone()), order);
    (store, meta, data)
}

/// SplitMix64: a tiny deterministic generator for test data.
#[derive(Debug, Clone)]
pub struct Mix(pub u64);

impl Mix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Random bytes of length `len` from `seed` (never all zero for len ≥ 8 in
/// practice).
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Mix(seed).fill(&mut v);
    v
}

/// The first offset where `got` and `want` differ, for short failure
/// messages on big buffers.
pub fn first_diff(got: &[u8], want: &[u8]) -> Option<usize> {
    if got == want {
        return None; // memcmp: fast even in debug builds
    }
    if got.len() != want.len() {
        return Some(got.len().min(want.len()));
    }
    got.iter().zip(want).position(|(a, b)| a != b)
}

/// Panics with the first differing offset when `got != want`.
#[track_caller]
pub fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    if let Some(i) = first_diff(got, want) {
        let end = (i + 16).min(got.len()).min(want.len());
        panic!(
            "{what}: differs at offset {i} (block {}); lengths {} vs {}; got {:02x?} want {:02x?}",
            i / 4096,
            got.len(),
            want.len(),
            &got[i.min(got.len())..end.max(i.min(got.len()))],
            &want[i.min(want.len())..end.max(i.min(want.len()))],
        );
    }
}

/// An object store wrapper counting operations and bytes written.
#[derive(Debug)]
pub struct Counting {
    pub inner: Arc<dyn ObjectStore>,
    pub ops: AtomicU64,
    pub written: AtomicU64,
    pub writes: AtomicU64,
}

impl Counting {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Counting {
            inner,
            ops: AtomicU64::new(0),
            written: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::SeqCst)
    }
}

impl ObjectStore for Counting {
    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> vdisk_storage::Result<()> {
        self.ops.fetch_add(1, Ordering::SeqCst);
        self.inner.read_at(name, offset, buf)
    }
    fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> vdisk_storage::Result<()> {
        self.ops.fetch_add(1, Ordering::SeqCst);
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.written.fetch_add(data.len() as u64, Ordering::SeqCst);
        self.inner.write_at(name, offset, data)
    }
    fn punch(&self, name: &str, offset: u64, len: u64) -> vdisk_storage::Result<()> {
        self.ops.fetch_add(1, Ordering::SeqCst);
        self.inner.punch(name, offset, len)
    }
    fn remove(&self, name: &str) -> vdisk_storage::Result<()> {
        self.ops.fetch_add(1, Ordering::SeqCst);
        self.inner.remove(name)
    }
    fn sync(&self) -> vdisk_storage::Result<()> {
        self.ops.fetch_add(1, Ordering::SeqCst);
        self.inner.sync()
    }
    fn list(&self, prefix: &str) -> vdisk_storage::Result<Vec<String>> {
        self.ops.fetch_add(1, Ordering::SeqCst);
        self.inner.list(prefix)
    }
    fn allocated(&self, name: &str) -> vdisk_storage::Result<u64> {
        self.inner.allocated(name)
    }
}

/// Bytes the store holds for every object (4 KiB pages for the in-memory
/// store).
pub fn allocated_total(data: &dyn ObjectStore) -> u64 {
    data.list("")
        .unwrap()
        .iter()
        .map(|n| data.allocated(n).unwrap())
        .sum()
}
