//! Fault-injecting wrappers for reliability tests.
//!
//! They delegate to any store and, as configured, slow every operation down,
//! fail from some point on, fail syncs, or pretend to zero. Losing unsynced
//! data is not simulated here: that is [`crate::MemObjectStore::crash`].

use crate::{validate_name, Filled, MetaOp, MetaStore, ObjectStore, Result, StorageError};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

/// Which faults to inject. `Default` injects none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultConfig {
    /// The first N operations counted from when this config took effect
    /// (construction or [`FaultyObjectStore::set`]) succeed; every later one
    /// fails with [`StorageError::Injected`] without reaching the inner store.
    /// `Some(0)` fails everything.
    pub fail_after_ops: Option<u64>,
    /// Sleep this long before every operation (a slow backend).
    pub delay: Option<Duration>,
    /// `punch` returns `Ok` without doing anything (a device that claims to
    /// discard or zero but does not). Ignored by [`FaultyMetaStore`].
    pub lie_about_zeroing: bool,
    /// `sync` (for [`FaultyMetaStore`]: `commit`) fails with
    /// [`StorageError::Injected`] without reaching the inner store.
    pub fail_sync: bool,
}

/// Config and operation counter shared by both wrappers.
#[derive(Debug, Default)]
struct Faults {
    state: Mutex<FaultState>,
}

#[derive(Debug, Default)]
struct FaultState {
    cfg: FaultConfig,
    /// Operations since construction.
    ops: u64,
    /// Value of `ops` when `cfg` took effect.
    ops_at_set: u64,
}

impl Faults {
    fn new(cfg: FaultConfig) -> Self {
        Faults {
            state: Mutex::new(FaultState {
                cfg,
                ops: 0,
                ops_at_set: 0,
            }),
        }
    }

    fn set(&self, cfg: FaultConfig) {
        let mut state = self.state.lock();
        state.ops_at_set = state.ops;
        state.cfg = cfg;
    }

    fn config(&self) -> FaultConfig {
        self.state.lock().cfg.clone()
    }

    fn ops(&self) -> u64 {
        self.state.lock().ops
    }

    /// Counts one operation, sleeps if configured (without holding the lock),
    /// and says whether it must fail. Returns the config it decided with.
    fn begin(&self, op: &str, what: &str) -> Result<FaultConfig> {
        let (cfg, fail) = {
            let mut state = self.state.lock();
            state.ops += 1;
            let since_set = state.ops - state.ops_at_set;
            let fail = state.cfg.fail_after_ops.is_some_and(|n| since_set > n);
            (state.cfg.clone(), fail.then_some(state.ops))
        };
        if let Some(delay) = cfg.delay {
            std::thread::sleep(delay);
        }
        if let Some(op_number) = fail {
            return Err(StorageError::Injected(format!(
                "{op} {what}: operation {op_number} fails (fail_after_ops = {:?})",
                cfg.fail_after_ops
            )));
        }
        Ok(cfg)
    }
}

/// An [`ObjectStore`] that injects the faults of its [`FaultConfig`], which
/// can be changed at run time (arm a fault after setup).
#[derive(Debug)]
pub struct FaultyObjectStore {
    inner: Arc<dyn ObjectStore>,
    faults: Faults,
}

impl FaultyObjectStore {
    /// Wraps `inner` with the faults of `cfg`.
    pub fn new(inner: Arc<dyn ObjectStore>, cfg: FaultConfig) -> Self {
        FaultyObjectStore {
            inner,
            faults: Faults::new(cfg),
        }
    }

    /// Replaces the config; `fail_after_ops` counts from now.
    pub fn set(&self, cfg: FaultConfig) {
        self.faults.set(cfg);
    }

    /// The current config.
    pub fn config(&self) -> FaultConfig {
        self.faults.config()
    }

    /// Operations attempted since construction (failed ones included).
    pub fn ops(&self) -> u64 {
        self.faults.ops()
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }
}

impl ObjectStore for FaultyObjectStore {
    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.faults.begin("read", name)?;
        self.inner.read_at(name, offset, buf)
    }

    fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> Result<()> {
        self.faults.begin("write", name)?;
        self.inner.write_at(name, offset, data)
    }

    fn fill_in_place(
        &self,
        name: &str,
        offset: u64,
        len: usize,
        granule: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> Result<Option<Filled>> {
        self.faults.begin("write", name)?;
        self.inner.fill_in_place(name, offset, len, granule, fill)
    }

    fn punch(&self, name: &str, offset: u64, len: u64) -> Result<()> {
        if self.faults.begin("punch", name)?.lie_about_zeroing {
            // The lie is about the zeroing only: bad names are still refused.
            return validate_name(name);
        }
        self.inner.punch(name, offset, len)
    }

    fn remove(&self, name: &str) -> Result<()> {
        self.faults.begin("remove", name)?;
        self.inner.remove(name)
    }

    fn sync(&self) -> Result<()> {
        if self.faults.begin("sync", "object store")?.fail_sync {
            return Err(StorageError::Injected(
                "sync object store: fail_sync".into(),
            ));
        }
        self.inner.sync()
    }

    fn sync_objects(&self, names: &[String]) -> Result<()> {
        if self.faults.begin("sync", "objects")?.fail_sync {
            return Err(StorageError::Injected("sync objects: fail_sync".into()));
        }
        self.inner.sync_objects(names)
    }

    fn start_writeback(&self, name: &str, offset: u64, len: u64) {
        // A hint, not an operation: not counted, never failed.
        self.inner.start_writeback(name, offset, len);
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.faults.begin("list", prefix)?;
        self.inner.list(prefix)
    }

    fn prune(&self, prefix: &str) -> Result<()> {
        self.faults.begin("prune", prefix)?;
        self.inner.prune(prefix)
    }

    fn allocated(&self, name: &str) -> Result<u64> {
        self.faults.begin("allocated", name)?;
        self.inner.allocated(name)
    }
}

/// A [`MetaStore`] that injects the faults of its [`FaultConfig`] (delay,
/// `fail_after_ops`, and `fail_sync` for commits), changeable at run time.
/// A failed commit applies nothing.
#[derive(Debug)]
pub struct FaultyMetaStore {
    inner: Arc<dyn MetaStore>,
    faults: Faults,
}

impl FaultyMetaStore {
    /// Wraps `inner` with the faults of `cfg`.
    pub fn new(inner: Arc<dyn MetaStore>, cfg: FaultConfig) -> Self {
        FaultyMetaStore {
            inner,
            faults: Faults::new(cfg),
        }
    }

    /// Replaces the config; `fail_after_ops` counts from now.
    pub fn set(&self, cfg: FaultConfig) {
        self.faults.set(cfg);
    }

    /// The current config.
    pub fn config(&self) -> FaultConfig {
        self.faults.config()
    }

    /// Operations attempted since construction (failed ones included).
    pub fn ops(&self) -> u64 {
        self.faults.ops()
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn MetaStore> {
        &self.inner
    }
}

impl MetaStore for FaultyMetaStore {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.faults.begin("get from", table)?;
        self.inner.get(table, key)
    }

    fn scan(&self, table: &'static str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.faults.begin("scan", table)?;
        self.inner.scan(table, prefix)
    }

    fn commit(&self, ops: Vec<MetaOp>) -> Result<()> {
        if self.faults.begin("commit", "metadata")?.fail_sync {
            return Err(StorageError::Injected("commit metadata: fail_sync".into()));
        }
        self.inner.commit(ops)
    }
}
