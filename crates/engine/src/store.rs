//! The store: a data directory's pools and images, and every operation on
//! them. Metadata-changing operations run one at a time (`op_lock`); the data
//! path of open images never takes it.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::features::Features;
use crate::image::{Image, ImageState};
use crate::objmap::{ObjectMap, HEAD};
use crate::record::{self, keys, ImageRecord, Kind, ParentLink, PoolRecord, SnapRecord};
use crate::spec::{validate_name, ImageSpec, DEFAULT_POOL};
use crate::{NoProgress, Progress};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use vdisk_storage::{DirLock, LocalObjectStore, MetaOp, MetaStore, ObjectStore, RedbMetaStore};

/// Opens the data store of a pool.
pub trait DataBackend: Send + Sync + std::fmt::Debug {
    fn open_pool(&self, pool: &PoolRecord) -> Result<Arc<dyn ObjectStore>>;

    /// Drops what [`DataBackend::open_pool`] made for a pool whose record
    /// was just removed (it names no image). Best effort: what cannot be
    /// dropped (a directory that still holds files) stays, and a pool
    /// created later under the same name opens it again. The default does
    /// nothing.
    fn drop_pool(&self, pool: &PoolRecord) {
        let _ = pool;
    }
}

/// Pools as directories: `pool.path`, or `root/pools/<name>`.
#[derive(Debug)]
pub struct LocalDataBackend {
    pub root: PathBuf,
}

impl LocalDataBackend {
    pub fn pool_dir(&self, pool: &PoolRecord) -> PathBuf {
        match &pool.path {
            Some(p) => PathBuf::from(p),
            None => self.root.join("pools").join(&pool.name),
        }
    }
}

impl DataBackend for LocalDataBackend {
    fn open_pool(&self, pool: &PoolRecord) -> Result<Arc<dyn ObjectStore>> {
        Ok(Arc::new(LocalObjectStore::open(&self.pool_dir(pool))?))
    }

    /// Removes the pool's directory under `root/pools` if it is empty. A
    /// `--path` directory is the operator's and is left alone (it may be
    /// a mount point or have been made for the pool by hand).
    fn drop_pool(&self, pool: &PoolRecord) {
        if pool.path.is_some() {
            return;
        }
        // Should this fail, the empty directory is all that stays.
        let _ = LocalObjectStore::remove_empty_root(&self.pool_dir(pool));
    }
}

/// One object store for every pool (tests: in-memory or faulty stores).
#[derive(Debug)]
pub struct SingleDataBackend(pub Arc<dyn ObjectStore>);

impl DataBackend for SingleDataBackend {
    fn open_pool(&self, _pool: &PoolRecord) -> Result<Arc<dyn ObjectStore>> {
        Ok(self.0.clone())
    }
}

pub(crate) struct Shared {
    pub meta: Arc<dyn MetaStore>,
    data: Box<dyn DataBackend>,
    pools: Mutex<HashMap<u64, Arc<dyn ObjectStore>>>,
    images: Mutex<HashMap<(u64, u64), Arc<ImageState>>>,
    pub config: Config,
    pub dir: Option<PathBuf>,
    /// Foreground I/O latency (for pacing background work).
    pub io: Arc<crate::trim::IoStats>,
    /// The trimming queue's signal and mode (`trim.rs`).
    pub trim: crate::trim::TrimSignal,
    _lock: Option<DirLock>,
}

impl Shared {
    pub(crate) fn pool_by_id(&self, id: u64) -> Result<PoolRecord> {
        for (_, v) in self.meta.scan(keys::POOLS, b"")? {
            let p: PoolRecord = record::decode(Kind::Pool, "pool", &v)?;
            if p.id == id {
                return Ok(p);
            }
        }
        Err(Error::Corrupt {
            what: "pool table".into(),
            detail: format!("no pool has id {id}"),
        })
    }

    pub(crate) fn pool_data(&self, pool: &PoolRecord) -> Result<Arc<dyn ObjectStore>> {
        let mut pools = self.pools.lock();
        if let Some(d) = pools.get(&pool.id) {
            return Ok(d.clone());
        }
        let d = self.data.open_pool(pool)?;
        pools.insert(pool.id, d.clone());
        Ok(d)
    }

    /// The shared state of an image, opening it if needed.
    pub(crate) fn image_state_by_id(
        self: &Arc<Self>,
        pool_id: u64,
        image_id: u64,
    ) -> Result<Arc<ImageState>> {
        if let Some(s) = self.images.lock().get(&(pool_id, image_id)) {
            return Ok(s.clone());
        }
        let pool = self.pool_by_id(pool_id)?;
        let bytes = self
            .meta
            .get(keys::IMAGES, &keys::k2(pool_id, image_id))?
            .ok_or_else(|| Error::Corrupt {
                what: format!("pool {}", pool.name),
                detail: format!("image id {image_id:x} is referenced but has no record"),
            })?;
        let what = format!("{}/id {image_id:x}", pool.name);
        let rec: ImageRecord = record::decode(Kind::Image, &what, &bytes)?;
        check_openable(&pool, &rec)?;
        let data = self.pool_data(&pool)?;
        let st = Arc::new(ImageState::open(
            Arc::downgrade(self),
            self.meta.clone(),
            data,
            pool,
            rec,
        )?);
        let mut images = self.images.lock();
        Ok(images.entry((pool_id, image_id)).or_insert(st).clone())
    }
}

/// Incident 2: refuse, by name, an image that needs what this build lacks.
fn check_openable(pool: &PoolRecord, rec: &ImageRecord) -> Result<()> {
    let unsupported = Features(rec.features).minus(Features::SUPPORTED);
    if !unsupported.is_empty() {
        return Err(Error::ImageNeedsFeatures {
            image: format!("{}/{}", pool.name, rec.name),
            features: unsupported.names().join(","),
        });
    }
    if !(12..=25).contains(&rec.order) {
        return Err(Error::Corrupt {
            what: format!("image record of {}/{}", pool.name, rec.name),
            detail: format!("order {} is outside 12..=25", rec.order),
        });
    }
    Ok(())
}

/// Options for creating an image.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub size: u64,
    /// Object size as a power of two (12..=25); `None`: the configured default.
    pub order: Option<u8>,
    /// `None`: the configured default features.
    pub features: Option<Features>,
}

/// A pool and where its data lives.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolInfo {
    pub name: String,
    pub id: u64,
    pub path: String,
    pub images: usize,
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How long a snapshot waits for in-flight writes to drain.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A data directory (or any metadata + data backend pair), open for use.
#[derive(Clone)]
pub struct Store {
    pub(crate) shared: Arc<Shared>,
    op_lock: Arc<Mutex<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({:?})", self.shared.dir)
    }
}

impl Store {
    /// Opens (creating if needed) the data directory `dir`: takes its lock
    /// (one process at a time), reads `vdisk.toml`, opens `meta.redb`, and
    /// creates the default pool `rbd` on first use.
    pub fn open_dir(dir: &Path, holder: &str) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io {
            what: format!("creating data directory {}", dir.display()),
            source: e,
        })?;
        let lock = match DirLock::acquire(dir, holder)? {
            Ok(l) => l,
            Err(h) => {
                return Err(Error::Locked {
                    dir: dir.display().to_string(),
                    holder: h.to_string(),
                })
            }
        };
        let config = Config::load(&dir.join("vdisk.toml"))?;
        let meta = Arc::new(RedbMetaStore::open(&dir.join("meta.redb"))?);
        let data = Box::new(LocalDataBackend {
            root: dir.to_path_buf(),
        });
        Self::build(meta, data, config, Some(dir.to_path_buf()), Some(lock))
    }

    /// Opens a store on explicit backends (tests, simulation).
    pub fn open_with(
        meta: Arc<dyn MetaStore>,
        data: Box<dyn DataBackend>,
        config: Config,
    ) -> Result<Store> {
        Self::build(meta, data, config, None, None)
    }

    fn build(
        meta: Arc<dyn MetaStore>,
        data: Box<dyn DataBackend>,
        config: Config,
        dir: Option<PathBuf>,
        lock: Option<DirLock>,
    ) -> Result<Store> {
        let s = Store {
            shared: Arc::new(Shared {
                meta,
                data,
                pools: Mutex::new(HashMap::new()),
                images: Mutex::new(HashMap::new()),
                config,
                dir,
                io: Arc::default(),
                trim: Default::default(),
                _lock: lock,
            }),
            op_lock: Arc::new(Mutex::new(())),
        };
        if s.shared.meta.scan(keys::POOLS, b"")?.is_empty() {
            s.pool_create(DEFAULT_POOL, None)?;
        }
        // Copies left unsynced in this boot are synced now; a failure
        // (an I/O error) keeps their marks for the next open, and images
        // marked in another boot are refused when opened: neither stops the
        // store from opening.
        let _ = s.settle_unsynced();
        Ok(s)
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    pub fn dir(&self) -> Option<&Path> {
        self.shared.dir.as_deref()
    }

    fn meta(&self) -> &dyn MetaStore {
        self.shared.meta.as_ref()
    }

    fn next_id(&self, counter: &str, ops: &mut Vec<MetaOp>) -> Result<u64> {
        let cur = self
            .meta()
            .get(keys::COUNTERS, counter.as_bytes())?
            .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        let next = cur + 1;
        ops.push(MetaOp::Put {
            table: keys::COUNTERS,
            key: counter.as_bytes().to_vec(),
            value: next.to_be_bytes().to_vec(),
        });
        Ok(next)
    }

    // ---------------------------------------------------------------- pools

    pub fn pool(&self, name: &str) -> Result<PoolRecord> {
        validate_name(name)?;
        let v = self
            .meta()
            .get(keys::POOLS, name.as_bytes())?
            .ok_or_else(|| Error::PoolNotFound(name.into()))?;
        record::decode(Kind::Pool, &format!("pool {name}"), &v)
    }

    /// Creates a pool; `path` places its data elsewhere than the data
    /// directory.
    pub fn pool_create(&self, name: &str, path: Option<&Path>) -> Result<PoolRecord> {
        let _op = self.op_lock.lock();
        validate_name(name)?;
        if self.meta().get(keys::POOLS, name.as_bytes())?.is_some() {
            return Err(Error::PoolExists(name.into()));
        }
        let path = match path {
            Some(p) => {
                let abs = std::path::absolute(p).map_err(|e| Error::Io {
                    what: format!("resolving {}", p.display()),
                    source: e,
                })?;
                Some(abs.display().to_string())
            }
            None => None,
        };
        let mut ops = Vec::new();
        let rec = PoolRecord {
            id: self.next_id("pool", &mut ops)?,
            name: name.into(),
            path,
            create_time: now(),
        };
        // Fail before committing if the data location is unusable.
        self.shared.pool_data(&rec)?;
        ops.push(MetaOp::Put {
            table: keys::POOLS,
            key: name.as_bytes().to_vec(),
            value: record::encode(Kind::Pool, &rec),
        });
        self.meta().commit(ops)?;
        Ok(rec)
    }

    pub fn pool_list(&self) -> Result<Vec<PoolInfo>> {
        let mut out = Vec::new();
        for (_, v) in self.meta().scan(keys::POOLS, b"")? {
            let p: PoolRecord = record::decode(Kind::Pool, "pool", &v)?;
            let images = self.meta().scan(keys::NAMES, &keys::k1(p.id))?.len();
            let path = match (&p.path, &self.shared.dir) {
                (Some(p), _) => p.clone(),
                (None, Some(d)) => d.join("pools").join(&p.name).display().to_string(),
                (None, None) => String::new(),
            };
            out.push(PoolInfo {
                name: p.name,
                id: p.id,
                path,
                images,
            });
        }
        Ok(out)
    }

    /// Removes an empty pool.
    pub fn pool_remove(&self, name: &str) -> Result<()> {
        let _op = self.op_lock.lock();
        let p = self.pool(name)?;
        let count = self.meta().scan(keys::NAMES, &keys::k1(p.id))?.len();
        if count > 0 {
            return Err(Error::PoolNotEmpty {
                pool: name.into(),
                count,
            });
        }
        self.meta().commit(vec![MetaOp::Delete {
            table: keys::POOLS,
            key: name.as_bytes().to_vec(),
        }])?;
        self.shared.pools.lock().remove(&p.id);
        self.shared.data.drop_pool(&p);
        Ok(())
    }

    // --------------------------------------------------------------- images

    fn image_id(&self, pool: &PoolRecord, spec: &ImageSpec) -> Result<u64> {
        let v = self
            .meta()
            .get(keys::NAMES, &keys::name_key(pool.id, &spec.image))?
            .ok_or_else(|| Error::ImageNotFound(spec.image_only().to_string()))?;
        let b: [u8; 8] = v.as_slice().try_into().map_err(|_| Error::Corrupt {
            what: format!("name entry of {}", spec.image_only()),
            detail: "not 8 bytes".into(),
        })?;
        Ok(u64::from_be_bytes(b))
    }

    pub(crate) fn state(&self, spec: &ImageSpec) -> Result<Arc<ImageState>> {
        let pool = self.pool(&spec.pool)?;
        let id = self.image_id(&pool, spec)?;
        self.check_not_lost(pool.id, id)?;
        self.shared.image_state_by_id(pool.id, id)
    }

    fn snap_of(st: &ImageState, spec: &ImageSpec) -> Result<Option<SnapRecord>> {
        match &spec.snap {
            None => Ok(None),
            Some(name) => st
                .record()
                .snaps
                .into_iter()
                .find(|s| &s.name == name)
                .map(Some)
                .ok_or_else(|| Error::SnapNotFound(spec.to_string())),
        }
    }

    /// Opens `spec`: the head (read-write) or a snapshot (read-only).
    pub fn open(&self, spec: &ImageSpec) -> Result<Image> {
        let st = self.state(spec)?;
        let snap = Self::snap_of(&st, spec)?;
        Ok(Image {
            st,
            snap,
            spec: spec.clone(),
            pin: None,
        })
    }

    /// The record of `spec`'s image.
    pub fn record(&self, spec: &ImageSpec) -> Result<ImageRecord> {
        Ok(self.state(spec)?.record())
    }

    /// Creates an image.
    pub fn create(&self, spec: &ImageSpec, opts: &CreateOptions) -> Result<Image> {
        let _op = self.op_lock.lock();
        self.create_locked(spec, opts, None)
    }

    fn create_locked(
        &self,
        spec: &ImageSpec,
        opts: &CreateOptions,
        parent: Option<(ParentLink, u64)>,
    ) -> Result<Image> {
        if spec.snap.is_some() {
            return Err(Error::InvalidSpec {
                spec: spec.to_string(),
                reason: "cannot create a snapshot this way; use `vdisk snap create`".into(),
            });
        }
        let pool = self.pool(&spec.pool)?;
        crate::spec::validate_image_size(&opts.size.to_string(), opts.size)?;
        let order = opts.order.unwrap_or(self.shared.config.default_order);
        if !(12..=25).contains(&order) {
            return Err(Error::InvalidArgument(format!(
                "order {order} is outside 12..=25 (4 KiB to 32 MiB objects)"
            )));
        }
        let features = opts.features.unwrap_or(self.shared.config.default_features);
        features.check_creatable()?;
        if parent.is_some() && !features.contains(Features::LAYERING) {
            return Err(Error::FeatureDependency {
                feature: "clone".into(),
                needs: "layering on the clone".into(),
            });
        }
        if self
            .meta()
            .get(keys::NAMES, &keys::name_key(pool.id, &spec.image))?
            .is_some()
        {
            return Err(Error::ImageExists(spec.to_string()));
        }
        let mut ops = Vec::new();
        let id = self.next_id("image", &mut ops)?;
        let rec = ImageRecord {
            id,
            name: spec.image.clone(),
            size: opts.size,
            order,
            features: features.0,
            flags: 0,
            create_time: now(),
            seq: 1,
            hidden: vec![],
            snaps: vec![],
            parent: parent.map(|(l, _)| l),
            parent_overlap: parent.map(|(_, ov)| ov.min(opts.size)),
            snap_limit: None,
        };
        ops.push(MetaOp::Put {
            table: keys::IMAGES,
            key: keys::k2(pool.id, id),
            value: record::encode(Kind::Image, &rec),
        });
        ops.push(MetaOp::Put {
            table: keys::NAMES,
            key: keys::name_key(pool.id, &spec.image),
            value: id.to_be_bytes().to_vec(),
        });
        self.meta().commit(ops)?;
        self.open(spec)
    }

    /// Every image record of a pool, by name.
    pub fn list(&self, pool: &str) -> Result<Vec<ImageRecord>> {
        let p = self.pool(pool)?;
        let mut out = Vec::new();
        for (k, v) in self.meta().scan(keys::NAMES, &keys::k1(p.id))? {
            let name = String::from_utf8_lossy(&k[8..]).to_string();
            let id = v
                .as_slice()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| Error::Corrupt {
                    what: format!("name entry {pool}/{name}"),
                    detail: "not 8 bytes".into(),
                })?;
            let bytes = self
                .meta()
                .get(keys::IMAGES, &keys::k2(p.id, id))?
                .ok_or_else(|| Error::Corrupt {
                    what: format!("{pool}/{name}"),
                    detail: "the name has no image record".into(),
                })?;
            out.push(record::decode(
                Kind::Image,
                &format!("{pool}/{name}"),
                &bytes,
            )?);
        }
        Ok(out)
    }

    /// Every image (in every pool) that reads through to `parent`.
    pub fn children(&self, parent: &ImageSpec) -> Result<Vec<ImageSpec>> {
        let st = self.state(parent)?;
        let snap = Self::snap_of(&st, parent)?;
        let mut out = Vec::new();
        for p in self.pool_list()? {
            for rec in self.list(&p.name)? {
                if let Some(l) = rec.parent {
                    let matches = l.pool == st.pool.id
                        && l.image == st.id
                        && snap.as_ref().is_none_or(|s| s.id == l.snap);
                    if matches {
                        out.push(ImageSpec {
                            pool: p.name.clone(),
                            image: rec.name.clone(),
                            snap: None,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Removes an image without snapshots.
    pub fn remove(&self, spec: &ImageSpec) -> Result<()> {
        let _op = self.op_lock.lock();
        let spec = spec.image_only();
        // Read the record without opening the image: an image this build
        // cannot open (unknown features) can still be removed.
        let (pool, id, rec) = self.raw_record(&spec)?;
        if !rec.snaps.is_empty() {
            return Err(Error::HasSnapshots {
                spec: spec.to_string(),
                count: rec.snaps.len(),
            });
        }
        if let Some(st) = self.shared.images.lock().get(&(pool.id, id)) {
            if Arc::strong_count(st) > 1 {
                return Err(Error::InvalidArgument(format!(
                    "image {spec} is open elsewhere in this process; close it first"
                )));
            }
        }
        let mut ops = vec![
            MetaOp::Delete {
                table: keys::IMAGES,
                key: keys::k2(pool.id, id),
            },
            MetaOp::Delete {
                table: keys::NAMES,
                key: keys::name_key(pool.id, &spec.image),
            },
        ];
        // Its schedules go with it; so does data queued for trimming (all
        // its data objects are removed below).
        for table in [
            keys::OBJECTS,
            keys::OBJMAP,
            keys::SCHEDULES,
            keys::TRIM,
            keys::UNSYNCED,
        ] {
            for (key, _) in self.meta().scan(table, &keys::k2(pool.id, id))? {
                ops.push(MetaOp::Delete { table, key });
            }
        }
        self.meta().commit(ops)?;
        self.shared.images.lock().remove(&(pool.id, id));
        // Data goes after the metadata: a crash in between leaves orphan
        // objects that `check --repair` removes, never a record without data.
        let data = self.shared.pool_data(&pool)?;
        let prefix = crate::image::object_prefix(id);
        for name in data.list(&prefix)? {
            data.remove(&name)?;
        }
        data.prune(&prefix)?;
        data.sync()?;
        Ok(())
    }

    /// An image's pool, id and record, read without opening the image.
    fn raw_record(&self, spec: &ImageSpec) -> Result<(PoolRecord, u64, ImageRecord)> {
        let pool = self.pool(&spec.pool)?;
        let id = self.image_id(&pool, spec)?;
        let bytes = self
            .meta()
            .get(keys::IMAGES, &keys::k2(pool.id, id))?
            .ok_or_else(|| Error::Corrupt {
                what: spec.image_only().to_string(),
                detail: "the name has no image record".into(),
            })?;
        let rec = record::decode(Kind::Image, &spec.image_only().to_string(), &bytes)?;
        Ok((pool, id, rec))
    }

    /// Renames an image within its pool.
    pub fn rename(&self, spec: &ImageSpec, new_name: &str) -> Result<()> {
        let _op = self.op_lock.lock();
        validate_name(new_name)?;
        let spec = spec.image_only();
        let st = self.state(&spec)?;
        let new_spec = ImageSpec {
            image: new_name.into(),
            ..spec.clone()
        };
        if self
            .meta()
            .get(keys::NAMES, &keys::name_key(st.pool.id, new_name))?
            .is_some()
        {
            return Err(Error::ImageExists(new_spec.to_string()));
        }
        let _g = st.barrier(DRAIN_TIMEOUT)?;
        let mut rec = st.record();
        rec.name = new_name.into();
        st.commit_record(
            rec,
            vec![
                MetaOp::Delete {
                    table: keys::NAMES,
                    key: keys::name_key(st.pool.id, &spec.image),
                },
                MetaOp::Put {
                    table: keys::NAMES,
                    key: keys::name_key(st.pool.id, new_name),
                    value: st.id.to_be_bytes().to_vec(),
                },
            ],
        )
    }

    /// Changes the size. Shrinking discards the tail and needs `allow_shrink`.
    pub fn resize(&self, spec: &ImageSpec, new_size: u64, allow_shrink: bool) -> Result<()> {
        let _op = self.op_lock.lock();
        let spec = spec.image_only();
        crate::spec::validate_image_size(&new_size.to_string(), new_size)?;
        let st = self.state(&spec)?;
        let _g = st.barrier(DRAIN_TIMEOUT)?;
        let old = st.params().size;
        if new_size < old {
            if !allow_shrink {
                return Err(Error::ShrinkRefused {
                    spec: spec.to_string(),
                    from: old,
                    to: new_size,
                });
            }
            // A clone first stops reading its parent beyond the new size, as
            // rbd shrinks the overlap: without a snapshot that still reads
            // further, the tail then needs no copy-up and no zero markers.
            let mut rec = st.record();
            if rec.parent_overlap.is_some_and(|ov| ov > new_size) {
                rec.parent_overlap = Some(new_size);
                st.commit_record(rec, vec![])?;
            }
            // Discard the tail (through the normal data path, so snapshots
            // are honoured), then commit the smaller size; both under the
            // barrier, else a write landing in between survived the shrink
            // and reappeared on the next grow.
            st.zero_under_barrier(new_size, old - new_size)?;
        }
        let mut rec = st.record();
        rec.size = new_size;
        if let Some(ov) = rec.parent_overlap {
            rec.parent_overlap = Some(ov.min(new_size));
        }
        st.commit_record(rec, vec![])
    }

    /// Copies `src` (head or snapshot) into a new image `dst` (data only, no
    /// snapshots, no parent: the copy is independent).
    pub fn copy(&self, src: &ImageSpec, dst: &ImageSpec, progress: &dyn Progress) -> Result<Image> {
        let from = self.open(src)?;
        let rec = from.st.record();
        let to = self.create(
            dst,
            &CreateOptions {
                size: from.size(),
                order: Some(rec.order),
                features: Some(Features(rec.features)),
            },
        )?;
        crate::transfer::copy_image(&from, &to, progress)?;
        to.flush()?;
        Ok(to)
    }

    // ------------------------------------------------------------ snapshots

    fn snap_name(spec: &ImageSpec) -> Result<&str> {
        spec.snap.as_deref().ok_or_else(|| Error::InvalidSpec {
            spec: spec.to_string(),
            reason: "a snapshot name is required (IMAGE@SNAP)".into(),
        })
    }

    /// Takes a snapshot: every write completed before this call is in it,
    /// none that starts after. O(1) in the image size: no data is copied.
    pub fn snap_create(&self, spec: &ImageSpec) -> Result<SnapRecord> {
        let _op = self.op_lock.lock();
        let name = Self::snap_name(spec)?;
        let st = self.state(spec)?;
        st.snap_create(name, DRAIN_TIMEOUT, now())
    }

    pub fn snap_list(&self, spec: &ImageSpec) -> Result<Vec<SnapRecord>> {
        Ok(self.state(spec)?.record().snaps)
    }

    /// Removes a snapshot and releases what nothing else needs.
    pub fn snap_remove(&self, spec: &ImageSpec, progress: &dyn Progress) -> Result<()> {
        let _op = self.op_lock.lock();
        self.snap_remove_locked(spec, progress)
    }

    fn snap_remove_locked(&self, spec: &ImageSpec, progress: &dyn Progress) -> Result<()> {
        let st = self.state(spec)?;
        let snap =
            Self::snap_of(&st, spec)?.ok_or_else(|| Error::SnapNotFound(spec.to_string()))?;
        if snap.protected {
            return Err(Error::SnapProtected(spec.to_string()));
        }
        let children = self.children(spec)?;
        if !children.is_empty() {
            return Err(Error::HasChildren {
                spec: spec.to_string(),
                children: children.iter().map(|c| c.to_string()).collect(),
            });
        }
        let _g = st.barrier(DRAIN_TIMEOUT)?;
        // Commit pending object-map updates of the snapshots (copy-ups)
        // before the snapshot's map is deleted, so none is left behind.
        st.flush()?;
        // Decided under the readers' lock, held until the snapshot is gone
        // from the record: a reader cannot pin it in between.
        let readers = st.snap_readers.lock();
        if let Some(&n) = readers.get(&snap.id) {
            return Err(Error::SnapInUse {
                spec: spec.to_string(),
                readers: n,
            });
        }
        let mut rec = st.record();
        rec.snaps.retain(|s| s.id != snap.id);
        invalidate_maps(&mut rec);
        let extra = ObjectMap::delete_ops(st.meta.as_ref(), st.pool.id, st.id, snap.id)?;
        st.commit_record(rec, extra)?;
        drop(readers);
        st.reclaim_and_remap(vec![], progress)?;
        drop(_g);
        self.trim_after(st.pool.id, st.id, progress)
    }

    /// Removes every unprotected snapshot; protected ones are reported.
    pub fn snap_purge(&self, spec: &ImageSpec, progress: &dyn Progress) -> Result<usize> {
        let _op = self.op_lock.lock();
        let spec = spec.image_only();
        let snaps = self.state(&spec)?.record().snaps;
        let mut removed = 0;
        for s in &snaps {
            if !s.protected {
                self.snap_remove_locked(&spec.with_snap(&s.name), progress)?;
                removed += 1;
            }
        }
        if removed < snaps.len() {
            let p = snaps
                .iter()
                .find(|s| s.protected)
                .map(|s| s.name.clone())
                .unwrap_or_default();
            return Err(Error::SnapProtected(spec.with_snap(&p).to_string()));
        }
        Ok(removed)
    }

    pub fn snap_rename(&self, spec: &ImageSpec, new_name: &str) -> Result<()> {
        let _op = self.op_lock.lock();
        validate_name(new_name)?;
        let st = self.state(spec)?;
        let snap =
            Self::snap_of(&st, spec)?.ok_or_else(|| Error::SnapNotFound(spec.to_string()))?;
        let mut rec = st.record();
        if rec.snaps.iter().any(|s| s.name == new_name) {
            return Err(Error::SnapExists(spec.with_snap(new_name).to_string()));
        }
        for s in &mut rec.snaps {
            if s.id == snap.id {
                s.name = new_name.into();
            }
        }
        let _g = st.barrier(DRAIN_TIMEOUT)?;
        st.commit_record(rec, vec![])
    }

    fn set_protected(&self, spec: &ImageSpec, protect: bool) -> Result<()> {
        let _op = self.op_lock.lock();
        let st = self.state(spec)?;
        let snap =
            Self::snap_of(&st, spec)?.ok_or_else(|| Error::SnapNotFound(spec.to_string()))?;
        if snap.protected == protect {
            return Err(if protect {
                Error::SnapProtected(spec.to_string())
            } else {
                Error::SnapNotProtected(spec.to_string())
            });
        }
        if !protect {
            let children = self.children(spec)?;
            if !children.is_empty() {
                return Err(Error::HasChildren {
                    spec: spec.to_string(),
                    children: children.iter().map(|c| c.to_string()).collect(),
                });
            }
        }
        let mut rec = st.record();
        for s in &mut rec.snaps {
            if s.id == snap.id {
                s.protected = protect;
            }
        }
        let _g = st.barrier(DRAIN_TIMEOUT)?;
        st.commit_record(rec, vec![])
    }

    pub fn snap_protect(&self, spec: &ImageSpec) -> Result<()> {
        self.set_protected(spec, true)
    }

    pub fn snap_unprotect(&self, spec: &ImageSpec) -> Result<()> {
        self.set_protected(spec, false)
    }

    /// Makes the head equal to the snapshot again. Metadata only: the
    /// generations written since are hidden from the head and released.
    pub fn snap_rollback(&self, spec: &ImageSpec, progress: &dyn Progress) -> Result<()> {
        let _op = self.op_lock.lock();
        let st = self.state(spec)?;
        let snap =
            Self::snap_of(&st, spec)?.ok_or_else(|| Error::SnapNotFound(spec.to_string()))?;
        let _g = st.barrier(DRAIN_TIMEOUT)?;
        st.flush()?;
        let mut rec = st.record();
        // The head must see exactly what the snapshot sees: its hidden
        // ranges, not the head's (an earlier rollback to an older snapshot
        // hid generations this snapshot sees), plus everything since it.
        rec.hidden = snap.hidden.clone();
        if snap.id < rec.seq {
            rec.hidden.push((snap.id + 1, rec.seq));
        }
        rec.hidden = merge_ranges(std::mem::take(&mut rec.hidden));
        rec.seq += 1;
        rec.size = snap.size;
        rec.parent_overlap = snap.parent_overlap;
        invalidate_maps(&mut rec);
        st.commit_record(rec, vec![])?;
        st.reclaim_and_remap(vec![], progress)?;
        drop(_g);
        self.trim_after(st.pool.id, st.id, progress)
    }

    /// Limits how many snapshots an image may have (`None`: no limit).
    pub fn snap_limit(&self, spec: &ImageSpec, limit: Option<u64>) -> Result<()> {
        let _op = self.op_lock.lock();
        let spec = spec.image_only();
        let st = self.state(&spec)?;
        let mut rec = st.record();
        if let Some(l) = limit {
            if (rec.snaps.len() as u64) > l {
                return Err(Error::LimitBelowCount {
                    spec: spec.to_string(),
                    count: rec.snaps.len(),
                    limit: l,
                });
            }
        }
        rec.snap_limit = limit;
        let _g = st.barrier(DRAIN_TIMEOUT)?;
        st.commit_record(rec, vec![])
    }

    // --------------------------------------------------------------- clones

    /// Clones a protected snapshot into a new image that reads through to it.
    pub fn clone_image(
        &self,
        parent: &ImageSpec,
        child: &ImageSpec,
        features: Option<Features>,
        order: Option<u8>,
    ) -> Result<Image> {
        let _op = self.op_lock.lock();
        let pst = self.state(parent)?;
        let snap = Self::snap_of(&pst, parent)?.ok_or_else(|| Error::InvalidSpec {
            spec: parent.to_string(),
            reason: "clone needs a snapshot of the parent (POOL/IMAGE@SNAP)".into(),
        })?;
        if !snap.protected {
            return Err(Error::SnapNotProtected(parent.to_string()));
        }
        let prec = pst.record();
        if prec.features & Features::LAYERING.0 == 0 {
            return Err(Error::FeatureDependency {
                feature: "clone".into(),
                needs: format!("layering on the parent {}", parent.image_only()),
            });
        }
        let link = ParentLink {
            pool: pst.pool.id,
            image: pst.id,
            snap: snap.id,
        };
        self.create_locked(
            child,
            &CreateOptions {
                size: snap.size,
                order: Some(order.unwrap_or(prec.order)),
                features,
            },
            Some((link, snap.size)),
        )
    }

    /// Copies up everything the image still reads from its parent and
    /// detaches it. With deep-flatten, its snapshots are detached too.
    pub fn flatten(&self, spec: &ImageSpec, progress: &dyn Progress) -> Result<()> {
        let spec = spec.image_only();
        let st = self.state(&spec)?;
        if st.record().parent.is_none() {
            return Err(Error::InvalidArgument(format!(
                "image {spec} is not a clone; nothing to flatten"
            )));
        }
        st.copy_up_all(progress)?;
        let _op = self.op_lock.lock();
        let _g = st.barrier(DRAIN_TIMEOUT)?;
        let mut rec = st.record();
        rec.parent_overlap = None;
        if rec.features & Features::DEEP_FLATTEN.0 != 0 {
            for s in &mut rec.snaps {
                s.parent_overlap = None;
            }
        }
        if rec.snaps.iter().all(|s| s.parent_overlap.is_none()) {
            rec.parent = None;
        }
        st.commit_record(rec, vec![])
    }

    // ------------------------------------------------------------- features

    /// Enables or disables features, checking dependencies on the result.
    pub fn feature_set(&self, spec: &ImageSpec, features: Features, enable: bool) -> Result<()> {
        let _op = self.op_lock.lock();
        let spec = spec.image_only();
        for (name, bit) in crate::features::KNOWN {
            let f = Features(bit);
            if !features.contains(f) {
                continue;
            }
            let dynamic = Features::DYNAMIC.contains(f) || (!enable && f == Features::DEEP_FLATTEN);
            if !dynamic {
                return Err(Error::FeatureNotDynamic {
                    feature: name.into(),
                    action: if enable { "enabled" } else { "disabled" },
                });
            }
        }
        if !enable {
            let (pool, id, rec) = self.raw_record(&spec)?;
            if !Features(rec.features).minus(Features::SUPPORTED).is_empty() {
                return self.feature_disable_unopenable(&pool, id, rec, features);
            }
        }
        let st = self.state(&spec)?;
        let mut rec = st.record();
        let old = Features(rec.features);
        let new = if enable {
            old.union(features)
        } else {
            old.minus(features)
        };
        new.check_dependencies().map_err(|e| match e {
            Error::FeatureDependency { feature, needs } if !enable => Error::FeatureDependency {
                feature: feature.clone(),
                needs: format!("{needs}; disable {feature} too (`vdisk feature disable {spec} {feature} {needs}`)"),
            },
            other => other,
        })?;
        if enable {
            new.check_creatable()?;
        }
        if new == old {
            return Ok(());
        }
        let _g = st.barrier(DRAIN_TIMEOUT)?;
        st.flush()?;
        rec.features = new.0;
        let map_on = new.contains(Features::OBJECT_MAP);
        let mut extra = Vec::new();
        if !map_on && old.contains(Features::OBJECT_MAP) {
            // No maps left to be invalid.
            rec.flags &= !(record::FLAG_OBJECT_MAP_INVALID | record::FLAG_FAST_DIFF_INVALID);
            for (id, _) in crate::image::readers(&rec) {
                extra.extend(ObjectMap::delete_ops(
                    st.meta.as_ref(),
                    st.pool.id,
                    st.id,
                    id,
                )?);
            }
        }
        if map_on && !old.contains(Features::OBJECT_MAP) {
            // No map exists yet: flagged until the remap below stores them.
            invalidate_maps(&mut rec);
        }
        st.commit_record(rec, extra)?;
        if map_on && !old.contains(Features::OBJECT_MAP) {
            st.reclaim_and_remap(vec![], &NoProgress)?;
        }
        st.reload_map()
    }

    /// Incident 2: an image that needs features this build lacks cannot be
    /// opened, but the features can be dropped from its record (the command
    /// the refusal names). Metadata only; object maps go with object-map.
    fn feature_disable_unopenable(
        &self,
        pool: &PoolRecord,
        id: u64,
        mut rec: ImageRecord,
        features: Features,
    ) -> Result<()> {
        let old = Features(rec.features);
        let new = old.minus(features);
        new.check_dependencies()?;
        rec.features = new.0;
        let mut ops = Vec::new();
        if old.contains(Features::OBJECT_MAP) && !new.contains(Features::OBJECT_MAP) {
            rec.flags &= !(record::FLAG_OBJECT_MAP_INVALID | record::FLAG_FAST_DIFF_INVALID);
            for (key, _) in self.meta().scan(keys::OBJMAP, &keys::k2(pool.id, id))? {
                ops.push(MetaOp::Delete {
                    table: keys::OBJMAP,
                    key,
                });
            }
        }
        ops.push(MetaOp::Put {
            table: keys::IMAGES,
            key: keys::k2(pool.id, id),
            value: record::encode(Kind::Image, &rec),
        });
        self.meta().commit(ops)?;
        self.shared.images.lock().remove(&(pool.id, id));
        Ok(())
    }

    /// Recomputes every object map of the image from its object records.
    pub fn object_map_rebuild(&self, spec: &ImageSpec) -> Result<()> {
        let _op = self.op_lock.lock();
        let st = self.state(&spec.image_only())?;
        if !st.params().object_map {
            return Err(Error::InvalidArgument(format!(
                "{} does not have the object-map feature; enable it with `vdisk feature enable {} object-map`",
                spec.image_only(),
                spec.image_only()
            )));
        }
        let _g = st.barrier(DRAIN_TIMEOUT)?;
        // The invalid flags are cleared by the commit that stores the
        // rebuilt maps (clearing them first, as before, left stale maps
        // trusted if the rebuild was interrupted).
        st.reclaim_and_remap(vec![], &NoProgress)
    }

    /// Flushes every open image, except a `--no-sync` copy with nothing
    /// new to commit (its sync is the next open's, see `crate::unsynced`).
    pub fn flush_all(&self) -> Result<()> {
        let states: Vec<_> = self.shared.images.lock().values().cloned().collect();
        for s in states {
            if s.unsynced.load(std::sync::atomic::Ordering::SeqCst) && s.nothing_to_commit() {
                // A --no-sync copy, finished: syncing it is the next
                // open's job (see `unsynced`).
                continue;
            }
            s.flush()?;
        }
        Ok(())
    }

    pub(crate) fn meta_store(&self) -> Arc<dyn MetaStore> {
        self.shared.meta.clone()
    }

    pub(crate) fn op_lock(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.op_lock.lock()
    }

    /// Forgets every open image (after metadata was replaced wholesale).
    pub(crate) fn forget_images(&self) {
        self.shared.images.lock().clear();
    }

    pub(crate) fn pool_data(&self, pool: &PoolRecord) -> Result<Arc<dyn ObjectStore>> {
        self.shared.pool_data(pool)
    }

    /// The head object map as stored (for reports and checks).
    pub fn head_object_map(&self, spec: &ImageSpec) -> Result<Option<ObjectMap>> {
        let st = self.state(spec)?;
        if !st.params().object_map {
            return Ok(None);
        }
        st.flush()?;
        Ok(Some(
            ObjectMap::load(st.meta.as_ref(), st.pool.id, st.id, HEAD)?.0,
        ))
    }
}

/// Flags the object maps of `rec` invalid (when it has them): for record
/// changes that change what the maps must say (the readers), committed
/// before the maps are recomputed. `ImageState::reclaim_and_remap` clears the
/// flags in the commit that stores the new maps; until then reads and
/// fast-diff do not trust the maps and `check` says they need a rebuild.
fn invalidate_maps(rec: &mut ImageRecord) {
    if rec.features & Features::OBJECT_MAP.0 != 0 {
        rec.flags |= record::FLAG_OBJECT_MAP_INVALID | record::FLAG_FAST_DIFF_INVALID;
    }
}

fn merge_ranges(mut r: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    r.sort();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (a, b) in r {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn ranges_merge() {
        assert_eq!(
            super::merge_ranges(vec![(5, 6), (1, 2), (3, 3), (9, 9)]),
            vec![(1, 3), (5, 6), (9, 9)]
        );
    }
}
