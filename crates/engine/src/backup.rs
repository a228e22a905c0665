//! `meta backup` / `meta restore`: a pool's metadata as one JSON document.
//!
//! The document is decoded structurally on restore (serde): unknown fields
//! are ignored, whatever they contain; a newer `version` is refused. The
//! output is deterministic (key order, no timestamp), so two backups of an
//! unchanged pool are byte-identical — the CLI tests use that to prove that
//! a refused command changed nothing.

use crate::error::{Error, Result};
use crate::object::ObjectMeta;
use crate::objmap::CHUNK_OBJECTS;
use crate::record::{self, keys, ImageRecord, Kind, ObjectRecord, PoolRecord, VersionRecord};
use crate::schedule::{ScheduleRecord, MAX_EVERY, MIN_EVERY};
use crate::Store;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use vdisk_storage::MetaOp;

pub const FORMAT: &str = "vdisk-meta-backup";
pub const VERSION: u32 = 1;

/// A pool's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaBackup {
    pub format: String,
    pub version: u32,
    pub pool: PoolRecord,
    pub images: Vec<ImageRecord>,
    pub objects: Vec<ObjectEntry>,
    pub object_maps: Vec<MapEntry>,
    /// The pool's snapshot schedules, with what they took (retention
    /// removes only those). Absent in backups made before schedules were
    /// included: restoring one of those leaves the schedules alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedules: Option<Vec<ScheduleRecord>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    pub image: u64,
    pub objno: u64,
    #[serde(default)]
    pub copied_up: bool,
    #[serde(default)]
    pub versions: Vec<VersionEntry>,
}

/// Bitmaps in hex (little-endian bytes, as stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionEntry {
    pub gen: u64,
    pub present: String,
    pub zero: String,
}

/// One chunk of an object map; `snap` is the snapshot id or
/// 18446744073709551615 for the head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapEntry {
    pub image: u64,
    pub snap: u64,
    pub chunk: u64,
    pub states: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str, what: &str) -> Result<Vec<u8>> {
    let bad = || Error::InvalidArgument(format!("metadata backup: {what} is not valid hex"));
    if !s.len().is_multiple_of(2) || s.len() > 2 * record::MAX_BODY {
        return Err(bad());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

impl Store {
    /// The metadata of pool `pool` (open images are flushed first).
    pub fn meta_backup(&self, pool: &str) -> Result<MetaBackup> {
        self.flush_all()?;
        let _op = self.op_lock();
        let p = self.pool(pool)?;
        let meta = self.meta_store();
        let mut images = Vec::new();
        for (_, v) in meta.scan(keys::IMAGES, &keys::k1(p.id))? {
            images.push(record::decode::<ImageRecord>(Kind::Image, pool, &v)?);
        }
        images.sort_by(|a, b| a.name.cmp(&b.name));
        let mut objects = Vec::new();
        for (k, v) in meta.scan(keys::OBJECTS, &keys::k1(p.id))? {
            let (Some(image), Some(objno)) = (keys::u64_at(&k, 8), keys::u64_at(&k, 16)) else {
                continue;
            };
            let r: ObjectRecord = record::decode(Kind::Object, pool, &v)?;
            objects.push(ObjectEntry {
                image,
                objno,
                copied_up: r.copied_up,
                versions: r
                    .versions
                    .iter()
                    .map(|v| VersionEntry {
                        gen: v.gen,
                        present: hex(&v.present),
                        zero: hex(&v.zero),
                    })
                    .collect(),
            });
        }
        let mut object_maps = Vec::new();
        for (k, v) in meta.scan(keys::OBJMAP, &keys::k1(p.id))? {
            let (Some(image), Some(snap), Some(chunk)) = (
                keys::u64_at(&k, 8),
                keys::u64_at(&k, 16),
                keys::u64_at(&k, 24),
            ) else {
                continue;
            };
            object_maps.push(MapEntry {
                image,
                snap,
                chunk,
                states: hex(&v),
            });
        }
        let mut schedules = Vec::new();
        for (_, v) in meta.scan(keys::SCHEDULES, &keys::k1(p.id))? {
            schedules.push(record::decode::<ScheduleRecord>(
                Kind::Schedule,
                "schedule",
                &v,
            )?);
        }
        Ok(MetaBackup {
            format: FORMAT.into(),
            version: VERSION,
            pool: p,
            images,
            objects,
            object_maps,
            schedules: Some(schedules),
        })
    }

    /// Replaces pool `pool`'s metadata with `b`, after validating all of it
    /// (nothing changes when anything is wrong). Data objects are untouched;
    /// the pool's queue of data to trim is dropped (it belonged to the
    /// metadata replaced), so nothing the restored metadata references is
    /// released by a trimmer afterwards.
    pub fn meta_restore(&self, pool: &str, b: &MetaBackup) -> Result<()> {
        let bad = |m: String| Error::InvalidArgument(format!("metadata backup: {m}"));
        if b.format != FORMAT {
            return Err(bad(format!("format is {:?}, not {FORMAT:?}", b.format)));
        }
        if b.version > VERSION {
            return Err(Error::UnsupportedVersion {
                what: "metadata backup".into(),
                version: b.version.min(u16::MAX as u32) as u16,
                supported: VERSION as u16,
            });
        }
        if b.pool.name != pool {
            return Err(bad(format!(
                "it is of pool {:?}, not {pool:?}; name that pool to restore it",
                b.pool.name
            )));
        }
        self.flush_all()?;
        let _op = self.op_lock();
        let p = self.pool(pool)?;
        let meta = self.meta_store();
        // Validate everything before touching anything.
        let mut names = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for r in &b.images {
            crate::spec::validate_name(&r.name)?;
            if !names.insert(r.name.clone()) || !ids.insert(r.id) {
                return Err(bad(format!(
                    "image {:?} (id {:x}) appears twice",
                    r.name, r.id
                )));
            }
            if !(12..=25).contains(&r.order) {
                return Err(bad(format!("image {:?} has order {}", r.name, r.order)));
            }
        }
        // The queue of data to trim was computed against the metadata being
        // replaced: a snapshot removed after the backup was taken is back
        // in the restored metadata, and its queued data must not be
        // released under it. The queue goes (what it would have released is
        // left; `vdisk check --repair` removes what no record references),
        // with the trimmer stopped, so none of it is released meanwhile.
        let _trim = self.hold_trimmer();
        let mut ops = Vec::new();
        for table in [
            keys::IMAGES,
            keys::NAMES,
            keys::OBJECTS,
            keys::OBJMAP,
            keys::TRIM,
        ] {
            for (key, _) in meta.scan(table, &keys::k1(p.id))? {
                ops.push(MetaOp::Delete { table, key });
            }
        }
        for r in &b.images {
            ops.push(MetaOp::Put {
                table: keys::IMAGES,
                key: keys::k2(p.id, r.id),
                value: record::encode(Kind::Image, r),
            });
            ops.push(MetaOp::Put {
                table: keys::NAMES,
                key: keys::name_key(p.id, &r.name),
                value: r.id.to_be_bytes().to_vec(),
            });
        }
        for o in &b.objects {
            let img = b.images.iter().find(|r| r.id == o.image).ok_or_else(|| {
                bad(format!(
                    "object {} belongs to unknown image id {:x}",
                    o.objno, o.image
                ))
            })?;
            let rec = ObjectRecord {
                copied_up: o.copied_up,
                versions: o
                    .versions
                    .iter()
                    .map(|v| {
                        Ok(VersionRecord {
                            gen: v.gen,
                            present: unhex(&v.present, "a bitmap")?,
                            zero: unhex(&v.zero, "a bitmap")?,
                        })
                    })
                    .collect::<Result<_>>()?,
            };
            let blocks = 1usize << (img.order - 12);
            ObjectMeta::from_record(&rec, blocks, img.seq)
                .map_err(|e| bad(format!("object {} of {:?}: {e}", o.objno, img.name)))?;
            ops.push(MetaOp::Put {
                table: keys::OBJECTS,
                key: keys::k3(p.id, o.image, o.objno),
                value: record::encode(Kind::Object, &rec),
            });
        }
        for m in &b.object_maps {
            let states = unhex(&m.states, "an object map")?;
            if states.len() as u64 != CHUNK_OBJECTS / 4 || !ids.contains(&m.image) {
                return Err(bad(format!(
                    "object map chunk {} of image id {:x} is malformed",
                    m.chunk, m.image
                )));
            }
            ops.push(MetaOp::Put {
                table: keys::OBJMAP,
                key: keys::k4(p.id, m.image, m.snap, m.chunk),
                value: states,
            });
        }
        if let Some(schedules) = &b.schedules {
            for (key, _) in meta.scan(keys::SCHEDULES, &keys::k1(p.id))? {
                ops.push(MetaOp::Delete {
                    table: keys::SCHEDULES,
                    key,
                });
            }
            let mut seen = BTreeSet::new();
            for r in schedules {
                let what = format!(
                    "the schedule of image id {:x} every {} s",
                    r.image_id, r.every
                );
                if !ids.contains(&r.image_id) {
                    return Err(bad(format!("{what} names no image of the backup")));
                }
                if !(MIN_EVERY..=MAX_EVERY).contains(&r.every) || r.keep == Some(0) {
                    return Err(bad(format!(
                        "{what} has an impossible interval or keep count"
                    )));
                }
                if !seen.insert((r.image_id, r.every)) {
                    return Err(bad(format!("{what} appears twice")));
                }
                let mut r = r.clone();
                r.pool_id = p.id;
                r.pool = p.name.clone();
                ops.push(MetaOp::Put {
                    table: keys::SCHEDULES,
                    key: keys::k3(p.id, r.image_id, r.every),
                    value: record::encode(Kind::Schedule, &r),
                });
            }
        }
        // Never hand out a restored image's id again.
        let max_id = ids.iter().max().copied().unwrap_or(0);
        let cur = meta
            .get(keys::COUNTERS, b"image")?
            .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        if max_id > cur {
            ops.push(MetaOp::Put {
                table: keys::COUNTERS,
                key: b"image".to_vec(),
                value: max_id.to_be_bytes().to_vec(),
            });
        }
        meta.commit(ops)?;
        self.forget_images();
        Ok(())
    }
}
