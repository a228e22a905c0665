//! Reports computed from metadata alone (no data is read): `info`, `du`,
//! `diff`, allocated extents. Field names are the `--format json` contract.

use crate::error::{Error, Result};
use crate::features::Features;
use crate::image::{snap_view, Image, ImageState};
use crate::object::{
    ObjectMeta, Source, View, BLOCK, BLOCK_SHIFT, OBJECT_EXISTS, OBJECT_NONEXISTENT,
};
use crate::objmap::{ObjectMap, HEAD};
use crate::record::{ImageRecord, SnapRecord};
use crate::spec::ImageSpec;
use crate::Store;
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::Arc;

/// `vdisk info` (and one row of `ls -l`).
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    pub pool: String,
    pub name: String,
    /// Hex id, also the prefix of the image's data objects.
    pub id: String,
    pub block_name_prefix: String,
    pub size: u64,
    pub objects: u64,
    pub order: u8,
    pub object_size: u64,
    pub snapshot_count: usize,
    pub format: u8,
    pub features: Vec<String>,
    pub features_bits: u64,
    pub op_features: Vec<String>,
    pub flags: Vec<String>,
    pub create_timestamp: String,
    pub snap_limit: Option<u64>,
    pub parent: Option<ParentInfo>,
    /// Set when the spec named a snapshot.
    pub snapshot: Option<SnapInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ParentInfo {
    pub pool: String,
    pub image: String,
    pub snapshot: String,
    pub overlap: u64,
}

/// One snapshot (`snap ls`).
#[derive(Debug, Clone, Serialize)]
pub struct SnapInfo {
    pub id: u64,
    pub name: String,
    pub size: u64,
    pub protected: bool,
    pub timestamp: String,
}

impl SnapInfo {
    pub fn from_record(s: &SnapRecord) -> Self {
        SnapInfo {
            id: s.id,
            name: s.name.clone(),
            size: s.size,
            protected: s.protected,
            timestamp: fmt_time(s.create_time),
        }
    }
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn fmt_time(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil-from-days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl Store {
    /// `info` for an image or snapshot.
    pub fn info(&self, spec: &ImageSpec) -> Result<ImageInfo> {
        let img = self.open(spec)?;
        let rec = img.st.record();
        self.info_from(&spec.pool, &rec, img.snap.as_ref())
    }

    pub(crate) fn info_from(
        &self,
        pool: &str,
        rec: &ImageRecord,
        snap: Option<&SnapRecord>,
    ) -> Result<ImageInfo> {
        let size = snap.map_or(rec.size, |s| s.size);
        let obj = 1u64 << rec.order;
        let mut flags = Vec::new();
        if rec.flags & crate::record::FLAG_OBJECT_MAP_INVALID != 0 {
            flags.push("object map invalid".to_string());
        }
        if rec.flags & crate::record::FLAG_FAST_DIFF_INVALID != 0 {
            flags.push("fast diff invalid".to_string());
        }
        let overlap = match snap {
            Some(s) => s.parent_overlap,
            None => rec.parent_overlap,
        };
        let parent = match (rec.parent, overlap) {
            (Some(l), Some(ov)) => {
                let pst = self.shared.image_state_by_id(l.pool, l.image)?;
                let prec = pst.record();
                Some(ParentInfo {
                    pool: pst.pool.name.clone(),
                    image: prec.name.clone(),
                    snapshot: prec
                        .snaps
                        .iter()
                        .find(|s| s.id == l.snap)
                        .map(|s| s.name.clone())
                        .unwrap_or_else(|| format!("<id {}>", l.snap)),
                    overlap: ov,
                })
            }
            _ => None,
        };
        Ok(ImageInfo {
            pool: pool.to_string(),
            name: rec.name.clone(),
            id: format!("{:x}", rec.id),
            block_name_prefix: crate::image::object_prefix(rec.id),
            size,
            objects: size.div_ceil(obj),
            order: rec.order,
            object_size: obj,
            snapshot_count: rec.snaps.len(),
            format: 2,
            features: Features(rec.features).names(),
            features_bits: rec.features,
            op_features: if rec.parent.is_some() {
                vec!["clone-child".into()]
            } else {
                vec![]
            },
            flags,
            create_timestamp: fmt_time(rec.create_time),
            snap_limit: rec.snap_limit,
            parent,
            snapshot: snap.map(SnapInfo::from_record),
        })
    }

    /// `info` of every image of a pool (`ls -l`).
    pub fn list_info(&self, pool: &str) -> Result<Vec<ImageInfo>> {
        self.list(pool)?
            .iter()
            .map(|r| self.info_from(pool, r, None))
            .collect()
    }

    /// `du`: provisioned and used bytes per snapshot and for the head. A
    /// snapshot's `used` is the data first seen in it (written since the
    /// previous snapshot); the sum is what the image stores.
    pub fn du(&self, spec: &ImageSpec) -> Result<Vec<DuEntry>> {
        let img = self.open(&spec.image_only())?;
        let st = &img.st;
        st.flush()?;
        let rec = st.record();
        let readers = crate::image::readers(&rec);
        let mut used = vec![0u64; readers.len()];
        st.for_each_object(|_, m| {
            for (gen, blocks) in m.data_blocks() {
                if let Some(i) = readers.iter().position(|(_, v)| v.sees(gen)) {
                    used[i] += blocks as u64 * BLOCK;
                }
            }
            Ok(())
        })?;
        let mut out = Vec::new();
        for (i, (id, _)) in readers.iter().enumerate() {
            let (name, prov) = if *id == HEAD {
                (spec.image.clone(), rec.size)
            } else {
                let s = rec
                    .snaps
                    .iter()
                    .find(|s| s.id == *id)
                    .ok_or_else(|| Error::Corrupt {
                        what: spec.to_string(),
                        detail: "snapshot vanished".into(),
                    })?;
                (format!("{}@{}", spec.image, s.name), s.size)
            };
            if let Some(sn) = &spec.snap {
                if name != format!("{}@{sn}", spec.image) {
                    continue;
                }
            }
            out.push(DuEntry {
                name,
                provisioned: prov,
                used: used[i],
            });
        }
        if spec.snap.is_some() && out.is_empty() {
            return Err(Error::SnapNotFound(spec.to_string()));
        }
        Ok(out)
    }

    /// Changed extents of `spec` (head or snapshot) since `from_snap` (or
    /// since nothing: every data extent), from metadata only. With fast-diff,
    /// objects the object maps prove unchanged are not even loaded.
    pub fn diff(&self, spec: &ImageSpec, from_snap: Option<&str>) -> Result<Vec<DiffExtent>> {
        let img = self.open(spec)?;
        let st = &img.st;
        st.flush()?;
        let rec = st.record();
        let (to_view, to_id, size) = match &img.snap {
            Some(s) => (snap_view(s), s.id, s.size),
            None => (crate::image::head_view(&rec), HEAD, rec.size),
        };
        let Some(from) = from_snap else {
            return Ok(data_extents(&img)?
                .into_iter()
                .map(|(offset, length)| DiffExtent {
                    offset,
                    length,
                    exists: true,
                })
                .collect());
        };
        let fs =
            rec.snaps.iter().find(|s| s.name == from).ok_or_else(|| {
                Error::SnapNotFound(spec.image_only().with_snap(from).to_string())
            })?;
        if to_id != HEAD && fs.id >= to_id {
            return Err(Error::InvalidArgument(format!(
                "--from-snap {from} is not older than {spec}; swap them"
            )));
        }
        let from_view = snap_view(fs);
        let mut candidates = self.diff_candidates(st, &rec, fs.id, to_id)?;
        let p = st.params();
        let mut out: Vec<DiffExtent> = Vec::new();
        let objs = size.div_ceil(p.obj_size);
        // Where the two readers' parent overlaps differ (a clone shrunk in
        // between), content changed between "parent" and "zero" with no
        // record of this image saying so.
        let (a, b) = (from_view.overlap.unwrap_or(0), to_view.overlap.unwrap_or(0));
        if a != b {
            let (lo, hi) = (a.min(b), a.max(b).min(size));
            candidates.extend((lo / p.obj_size)..hi.div_ceil(p.obj_size));
        }
        for objno in candidates.into_iter().filter(|o| *o < objs) {
            let cell_meta = st_object(st, objno)?;
            for b in 0..cell_meta.blocks() {
                let off = objno * p.obj_size + ((b as u64) << BLOCK_SHIFT);
                if off >= size {
                    break;
                }
                let cf = content(&cell_meta, &from_view, b, off);
                let ct = content(&cell_meta, &to_view, b, off);
                if cf != ct {
                    let exists = ct != Content::Zero;
                    let len = BLOCK.min(size - off);
                    match out.last_mut() {
                        Some(l) if l.offset + l.length == off && l.exists == exists => {
                            l.length += len
                        }
                        _ => out.push(DiffExtent {
                            offset: off,
                            length: len,
                            exists,
                        }),
                    }
                }
            }
        }
        Ok(out)
    }

    /// Objects that may differ between snapshot `from_id` and `to_id`
    /// (`HEAD` for the head): all objects with records, narrowed by the
    /// object maps when fast-diff is on.
    fn diff_candidates(
        &self,
        st: &Arc<ImageState>,
        rec: &ImageRecord,
        from_id: u64,
        to_id: u64,
    ) -> Result<BTreeSet<u64>> {
        let all = st.object_numbers()?;
        let fast = Features(rec.features).contains(Features::FAST_DIFF)
            && rec.flags & crate::record::FLAG_FAST_DIFF_INVALID == 0;
        if !fast {
            return Ok(all);
        }
        // Readers after `from` up to and including `to`, in order; an object
        // changed if any of them marks it dirty, or it vanished.
        let chain: Vec<u64> = crate::image::readers(rec)
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| *id > from_id && *id <= to_id)
            .collect();
        let mut maps = vec![ObjectMap::load(st.meta.as_ref(), st.pool.id, st.id, from_id)?.0];
        for id in &chain {
            maps.push(if *id == HEAD {
                st.head_map()
            } else {
                ObjectMap::load(st.meta.as_ref(), st.pool.id, st.id, *id)?.0
            });
        }
        let mut out = BTreeSet::new();
        for objno in all {
            let changed = maps.windows(2).any(|w| {
                let (a, b) = (w[0].get(objno), w[1].get(objno));
                b == OBJECT_EXISTS || (b == OBJECT_NONEXISTENT && a != OBJECT_NONEXISTENT)
            });
            if changed {
                out.insert(objno);
            }
        }
        Ok(out)
    }
}

fn st_object(st: &ImageState, objno: u64) -> Result<ObjectMeta> {
    let mut found = None;
    // for_each_object would visit all; load just this one through the cache.
    st.for_one_object(objno, |m| found = Some(m.clone()))?;
    found.ok_or_else(|| Error::Corrupt {
        what: format!("object {objno}"),
        detail: "vanished while reading".into(),
    })
}

/// Where one block of a reader comes from, for comparing two readers
/// (`diff` here, the changed-extents API in `changed.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Content {
    Zero,
    Data(u64),
    Parent,
}

pub(crate) fn content(m: &ObjectMeta, v: &View, b: usize, off: u64) -> Content {
    match m.resolve(v, b) {
        Source::Data(g) => Content::Data(g),
        Source::Zero(_) => Content::Zero,
        Source::Below => match v.overlap {
            Some(ov) if !m.copied_up && off < ov => Content::Parent,
            _ => Content::Zero,
        },
    }
}

/// One row of `du`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DuEntry {
    pub name: String,
    pub provisioned: u64,
    pub used: u64,
}

/// One row of `diff`: `exists` false means the range now reads as zero.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DiffExtent {
    pub offset: u64,
    pub length: u64,
    pub exists: bool,
}

/// Data extents of what `image` reads (its own data and, within the
/// overlap, its parent's), merged and sorted.
pub fn data_extents(image: &Image) -> Result<Vec<(u64, u64)>> {
    let st = &image.st;
    st.flush()?;
    let (view, size) = match &image.snap {
        Some(s) => (snap_view(s), s.size),
        None => {
            let p = st.params();
            (p.head.clone(), p.size)
        }
    };
    extents_of(st, &view, size)
}

fn extents_of(st: &Arc<ImageState>, view: &View, size: u64) -> Result<Vec<(u64, u64)>> {
    let p = st.params();
    let mut own: Vec<(u64, u64)> = Vec::new();
    let mut shadowed: BTreeSet<u64> = BTreeSet::new();
    st.for_each_object(|objno, m| {
        if m.copied_up {
            shadowed.insert(objno);
        }
        for b in 0..m.blocks() {
            if let Source::Data(_) = m.resolve(view, b) {
                let off = objno * p.obj_size + ((b as u64) << BLOCK_SHIFT);
                push_extent(&mut own, off, BLOCK);
            }
        }
        Ok(())
    })?;
    let mut all = own;
    if let (Some(ov), Some((pst, pview, psize))) = (view.overlap, st.parent_parts()?) {
        for (off, len) in extents_of(&pst, &pview, psize.min(ov))? {
            let end = (off + len).min(ov);
            let mut pos = off;
            while pos < end {
                let objno = pos / p.obj_size;
                let e = ((objno + 1) * p.obj_size).min(end);
                if !shadowed.contains(&objno) {
                    all.push((pos, e - pos));
                }
                pos = e;
            }
        }
    }
    all.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (off, len) in all {
        let end = (off + len).min(size);
        if end <= off {
            continue;
        }
        match merged.last_mut() {
            Some(l) if off <= l.0 + l.1 => l.1 = l.1.max(end - l.0),
            _ => merged.push((off, end - off)),
        }
    }
    Ok(merged)
}

fn push_extent(v: &mut Vec<(u64, u64)>, off: u64, len: u64) {
    match v.last_mut() {
        Some(l) if l.0 + l.1 == off => l.1 += len,
        _ => v.push((off, len)),
    }
}
