//! Bulk copies into a pool that skip the final data sync (`import
//! --no-sync`, `convert SRC POOL/IMAGE --no-sync`), as `qemu-img convert`
//! skips it for its output file — without its risk of silent loss.
//!
//! Skipping the sync means the metadata commit finds data that may still be
//! only in the kernel's page cache. The page cache outlives the process, not
//! the machine: the data is safe unless the kernel stops (power loss, panic,
//! reboot) before its writeback. So:
//!
//! 1. Before anything refers to unsynced data, the image is *marked*: the
//!    `unsynced` table gets pool id ‖ image id → the boot id
//!    (`/proc/sys/kernel/random/boot_id`, new at every boot).
//! 2. The copy commits its metadata without syncing the data
//!    ([`Image::flush_unsynced`]).
//! 3. The next time the store is opened (any command, the daemon, or the
//!    daemon right after the import), [`Store::settle_unsynced`] looks at
//!    every mark: same boot → the data is in the page cache or on the disk;
//!    fsync the image's objects and remove the mark. Another boot → the
//!    machine restarted before the sync; the data may be partly lost, so
//!    the image is refused ([`Error::UnsyncedLost`]) until it is removed.
//!
//! `rm` removes the mark with the image.

use crate::image::Image;
use crate::record::{self, keys, ImageRecord, Kind};
use crate::spec::ImageSpec;
use crate::store::Store;
use crate::{Error, Result};
use vdisk_storage::MetaOp;

/// Environment variable replacing the kernel's boot id (tests simulate a
/// restart with it).
pub const BOOT_ID_ENV: &str = "VDISK_BOOT_ID";

/// This boot's identity: `VDISK_BOOT_ID` if set, else the kernel's.
/// Read once per process: it cannot change while the process runs.
pub fn boot_id() -> Result<String> {
    static BOOT_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(id) = BOOT_ID.get() {
        return Ok(id.clone());
    }
    let id = match std::env::var_os(BOOT_ID_ENV) {
        Some(v) => v.to_string_lossy().trim().to_owned(),
        None => {
            let path = "/proc/sys/kernel/random/boot_id";
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_owned())
                .map_err(|e| Error::Io {
                    what: format!("reading {path} (needed to skip the sync safely)"),
                    source: e,
                })?
        }
    };
    Ok(BOOT_ID.get_or_init(|| id).clone())
}

impl Store {
    /// Marks `spec`'s image as holding data not yet known durable. Call it
    /// before writing; then finish with [`Image::flush_unsynced`].
    pub fn mark_unsynced(&self, spec: &ImageSpec) -> Result<()> {
        let st = self.state(&spec.image_only())?;
        let boot = boot_id()?;
        self.meta_store().commit(vec![MetaOp::Put {
            table: keys::UNSYNCED,
            key: keys::k2(st.pool.id, st.id),
            value: boot.into_bytes(),
        }])?;
        st.unsynced.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Settles every mark (see the module): syncs and unmarks the images
    /// marked in this boot, returns those marked in another boot (their
    /// data may be lost; they stay refused until removed). A sync that
    /// fails leaves its mark for the next try.
    pub fn settle_unsynced(&self) -> Result<Vec<String>> {
        let marks = self.meta_store().scan(keys::UNSYNCED, b"")?;
        if marks.is_empty() {
            return Ok(Vec::new());
        }
        let boot = boot_id()?;
        let mut lost = Vec::new();
        for (key, value) in marks {
            let ids = (key.len() == 16)
                .then(|| keys::u64_at(&key, 0).zip(keys::u64_at(&key, 8)))
                .flatten();
            let Some((pool_id, image_id)) = ids else {
                // Not a key we write: drop it rather than fail every open.
                self.meta_store().commit(vec![MetaOp::Delete {
                    table: keys::UNSYNCED,
                    key,
                }])?;
                continue;
            };
            if value != boot.as_bytes() {
                lost.push(self.describe_image(pool_id, image_id));
                continue;
            }
            let pool = self.shared.pool_by_id(pool_id)?;
            let data = self.shared.pool_data(&pool)?;
            let names = data.list(&crate::image::object_prefix(image_id))?;
            data.sync_objects(&names)?;
            self.meta_store().commit(vec![MetaOp::Delete {
                table: keys::UNSYNCED,
                key,
            }])?;
        }
        Ok(lost)
    }

    /// `POOL/IMAGE` of an image id (or the ids, when its records are gone).
    fn describe_image(&self, pool_id: u64, image_id: u64) -> String {
        let name = || -> Option<String> {
            let pool = self.shared.pool_by_id(pool_id).ok()?;
            let bytes = self
                .meta_store()
                .get(keys::IMAGES, &keys::k2(pool_id, image_id))
                .ok()??;
            let rec: ImageRecord = record::decode(Kind::Image, "image", &bytes).ok()?;
            Some(format!("{}/{}", pool.name, rec.name))
        };
        name().unwrap_or_else(|| format!("image id {image_id} of pool id {pool_id}"))
    }

    /// Refuses an image marked in another boot.
    pub(crate) fn check_not_lost(&self, pool_id: u64, image_id: u64) -> Result<()> {
        let Some(mark) = self
            .meta_store()
            .get(keys::UNSYNCED, &keys::k2(pool_id, image_id))?
        else {
            return Ok(());
        };
        if mark == boot_id()?.as_bytes() {
            return Ok(());
        }
        Err(Error::UnsyncedLost(self.describe_image(pool_id, image_id)))
    }
}

impl Image {
    /// Commits the metadata of everything written without syncing the data
    /// first: only for an image marked with [`Store::mark_unsynced`] in this
    /// boot (refused otherwise).
    pub fn flush_unsynced(&self) -> Result<()> {
        let marked = self
            .st
            .meta
            .get(keys::UNSYNCED, &keys::k2(self.st.pool.id, self.st.id))?;
        if marked.as_deref() != Some(boot_id()?.as_bytes()) {
            return Err(Error::InvalidArgument(format!(
                "{} is not marked as unsynced in this boot; flush it normally",
                self.spec
            )));
        }
        let start = std::time::Instant::now();
        let r = self.st.flush_opts(Vec::new(), false);
        self.st.io.record(start);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, CreateOptions, SingleDataBackend};
    use std::sync::Arc;
    use vdisk_storage::{MemMetaStore, MemObjectStore, MetaStore, ObjectStore};

    fn setup() -> (Store, MemObjectStore) {
        let data = MemObjectStore::new();
        let store = Store::open_with(
            Arc::new(MemMetaStore::new()) as Arc<dyn MetaStore>,
            Box::new(SingleDataBackend(Arc::new(data.clone()))),
            Config::default(),
        )
        .expect("open store");
        (store, data)
    }

    fn create(store: &Store, spec: &str, size: u64) -> (ImageSpec, Image) {
        let spec = ImageSpec::parse(spec).unwrap();
        let opts = CreateOptions {
            size,
            order: None,
            features: None,
        };
        let img = store.create(&spec, &opts).unwrap();
        (spec, img)
    }

    fn read(s: &dyn ObjectStore, name: &str) -> Vec<u8> {
        let mut b = vec![0; 4];
        s.read_at(name, 0, &mut b).unwrap();
        b
    }

    #[test]
    fn unsynced_flush_commits_without_sync_and_settle_syncs() {
        let (store, data) = setup();
        let (spec, img) = create(&store, "rbd/a", 8 << 20);
        img.write_streaming(0, &[7; 4096]).unwrap();
        // Not marked: refused, nothing committed.
        assert!(matches!(
            img.flush_unsynced(),
            Err(Error::InvalidArgument(_))
        ));
        store.mark_unsynced(&spec).unwrap();
        img.flush_unsynced().unwrap();
        let name = crate::image::object_name(img.st.id, 0, img.st.record().seq);
        // Committed and readable, but the data was not synced...
        assert_eq!(read(&data, &name), vec![7; 4]);
        assert_eq!(read(&data.durable_snapshot(), &name), vec![0; 4]);
        // The end-of-command flush leaves it to the next open...
        store.flush_all().unwrap();
        assert_eq!(read(&data.durable_snapshot(), &name), vec![0; 4]);
        // ...until the store settles it (same boot): then it is, and the
        // mark is gone.
        assert!(store.settle_unsynced().unwrap().is_empty());
        assert_eq!(read(&data.durable_snapshot(), &name), vec![7; 4]);
        assert!(store
            .meta_store()
            .scan(keys::UNSYNCED, b"")
            .unwrap()
            .is_empty());
        assert!(img.flush_unsynced().is_err());
    }

    #[test]
    fn a_mark_from_another_boot_refuses_the_image_until_removed() {
        let (store, _data) = setup();
        let (spec, img) = create(&store, "rbd/a", 1 << 20);
        let key = keys::k2(img.st.pool.id, img.st.id);
        drop(img);
        store
            .meta_store()
            .commit(vec![MetaOp::Put {
                table: keys::UNSYNCED,
                key,
                value: b"another-boot".to_vec(),
            }])
            .unwrap();
        assert_eq!(store.settle_unsynced().unwrap(), vec!["rbd/a".to_string()]);
        let err = store.open(&spec).unwrap_err();
        assert!(
            matches!(err, Error::UnsyncedLost(ref s) if s == "rbd/a"),
            "{err}"
        );
        assert_eq!(err.kind(), crate::ErrorKind::Corrupt);
        store.forget_images();
        store.remove(&spec).unwrap();
        assert!(store
            .meta_store()
            .scan(keys::UNSYNCED, b"")
            .unwrap()
            .is_empty());
        assert!(store.settle_unsynced().unwrap().is_empty());
    }
}
