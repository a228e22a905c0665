//! A bounded cache of decoded L2 tables, sharded so that parallel readers
//! rarely meet on a lock; no lock is held during I/O (a miss reads the
//! table unlocked, then inserts it; two threads missing together both read,
//! which is harmless).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

const SHARDS: usize = 16;

/// Decoded table entries (native-endian `u64`s; extended L2 tables
/// interleave entry and bitmap).
pub(crate) type Table = Arc<[u64]>;

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<u64, (Table, u64)>,
    tick: u64,
}

#[derive(Debug)]
pub(crate) struct TableCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

impl TableCache {
    /// A cache holding about `budget_bytes` of tables of `table_bytes` each
    /// (at least two tables per shard, at most 1024).
    pub(crate) fn new(budget_bytes: usize, table_bytes: usize) -> Self {
        let per_shard = (budget_bytes / table_bytes.max(1) / SHARDS).clamp(2, 1024);
        TableCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard,
        }
    }

    fn shard(&self, key: u64) -> &Mutex<Shard> {
        // Keys are cluster-aligned host offsets; mix the bits above 9.
        let h = (key >> 9).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 59;
        &self.shards[h as usize % SHARDS]
    }

    pub(crate) fn get(&self, key: u64) -> Option<Table> {
        let mut s = self.shard(key).lock();
        s.tick += 1;
        let tick = s.tick;
        s.map.get_mut(&key).map(|(t, used)| {
            *used = tick;
            t.clone()
        })
    }

    pub(crate) fn insert(&self, key: u64, table: Table) {
        let mut s = self.shard(key).lock();
        s.tick += 1;
        let tick = s.tick;
        if s.map.len() >= self.per_shard && !s.map.contains_key(&key) {
            if let Some(oldest) = s
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
            {
                s.map.remove(&oldest);
            }
        }
        s.map.insert(key, (table, tick));
    }
}
