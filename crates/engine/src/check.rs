//! `vdisk check`: verifies every pool's metadata and its agreement with the
//! data objects. Errors are damage (something could read wrong); warnings
//! are waste (orphan data objects left by a crash between a metadata commit
//! and a data removal) or safe over-reports. `repair` removes orphans and
//! rebuilds object maps; it never touches referenced data.

use crate::error::Result;
use crate::features::Features;
use crate::image::readers;
use crate::object::{ObjectMeta, OBJECT_EXISTS, OBJECT_EXISTS_CLEAN, OBJECT_NONEXISTENT};
use crate::objmap::ObjectMap;
use crate::record::{self, keys, ImageRecord, Kind, ObjectRecord, PoolRecord};
use crate::spec::ImageSpec;
use crate::Store;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What `check` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub pools: usize,
    pub images: usize,
    pub objects: usize,
    pub data_objects: usize,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub repaired: Vec<String>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }
}

impl Store {
    /// Checks every pool; with `repair`, releases the data queued for
    /// trimming, removes orphan data objects and rebuilds object maps that
    /// under-report.
    pub fn check(&self, repair: bool) -> Result<CheckReport> {
        self.flush_all()?;
        let mut rep = CheckReport::default();
        for t in self.trim_targets()? {
            if repair {
                let done =
                    self.trim_image(&t, &mut crate::trim::FullSpeed, &crate::NoProgress, &|| {
                        false
                    })?;
                rep.repaired.push(format!(
                    "{}: released the data queued for trimming ({done} operation(s))",
                    t.spec
                ));
            } else {
                rep.warnings.push(format!(
                    "{}: {} data operation(s) queued for trimming, space not released yet \
                     (`vdisk serve` releases it in the background; `vdisk check --repair` now)",
                    t.spec, t.ops
                ));
            }
        }
        for spec in self.settle_unsynced()? {
            rep.errors.push(format!(
                "{spec}: copied with --no-sync, and the machine restarted before its data was \
                 synced; part of it may be lost (remove it, `vdisk rm {spec}`, and copy it again)"
            ));
        }
        let meta = self.meta_store();
        let mut pools = Vec::new();
        for (k, v) in meta.scan(keys::POOLS, b"")? {
            match record::decode::<PoolRecord>(Kind::Pool, &String::from_utf8_lossy(&k), &v) {
                Ok(p) => pools.push(p),
                Err(e) => rep.errors.push(e.to_string()),
            }
        }
        rep.pools = pools.len();
        for p in &pools {
            self.check_pool(p, repair, &mut rep)?;
        }
        Ok(rep)
    }

    fn check_pool(&self, p: &PoolRecord, repair: bool, rep: &mut CheckReport) -> Result<()> {
        let meta = self.meta_store();
        let mut recs: BTreeMap<u64, ImageRecord> = BTreeMap::new();
        for (k, v) in meta.scan(keys::IMAGES, &keys::k1(p.id))? {
            let id = keys::u64_at(&k, 8).unwrap_or(0);
            match record::decode::<ImageRecord>(Kind::Image, &format!("{}/id {id:x}", p.name), &v) {
                Ok(r) if r.id == id => {
                    recs.insert(id, r);
                }
                Ok(r) => rep.errors.push(format!(
                    "{}: image record under id {id:x} says id {:x}",
                    p.name, r.id
                )),
                Err(e) => rep.errors.push(e.to_string()),
            }
        }
        let mut named = BTreeSet::new();
        for (k, v) in meta.scan(keys::NAMES, &keys::k1(p.id))? {
            let name = String::from_utf8_lossy(&k[8..]).to_string();
            let id = v
                .as_slice()
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or(u64::MAX);
            match recs.get(&id) {
                Some(r) if r.name == name => {
                    named.insert(id);
                }
                Some(r) => rep.errors.push(format!(
                    "{}/{name}: name points at image {:?}",
                    p.name, r.name
                )),
                None => rep.errors.push(format!(
                    "{}/{name}: name points at missing image id {id:x}",
                    p.name
                )),
            }
        }
        for (id, r) in &recs {
            if !named.contains(id) {
                rep.errors.push(format!(
                    "{}/{}: image record has no name entry",
                    p.name, r.name
                ));
            }
        }
        rep.images += recs.len();
        let data = self.pool_data(p)?;
        let files = data.list("")?;
        rep.data_objects += files.len();
        let mut files_by_image: BTreeMap<u64, BTreeSet<(u64, u64)>> = BTreeMap::new();
        for f in &files {
            match parse_object_name(f) {
                Some((img, objno, gen)) => {
                    files_by_image.entry(img).or_default().insert((objno, gen));
                }
                None => rep.warnings.push(format!(
                    "{}: unexpected file {f:?} in the data directory",
                    p.name
                )),
            }
        }
        for (img, set) in &files_by_image {
            if !recs.contains_key(img) {
                rep.warnings.push(format!(
                    "{}: {} orphan data object(s) of removed image id {img:x}",
                    p.name,
                    set.len()
                ));
                if repair {
                    for (o, g) in set {
                        data.remove(&crate::object_name(*img, *o, *g))?;
                    }
                    data.prune(&crate::image::object_prefix(*img))?;
                    rep.repaired
                        .push(format!("{}: removed data of image id {img:x}", p.name));
                }
            }
        }
        for r in recs.values() {
            let spec = format!("{}/{}", p.name, r.name);
            let files = files_by_image.remove(&r.id).unwrap_or_default();
            if let Err(e) = self.check_image(p, r, &spec, &files, repair, rep) {
                rep.errors.push(format!("{spec}: {e}"));
            }
        }
        if repair {
            data.sync()?;
        }
        Ok(())
    }

    fn check_image(
        &self,
        p: &PoolRecord,
        r: &ImageRecord,
        spec: &str,
        files: &BTreeSet<(u64, u64)>,
        repair: bool,
        rep: &mut CheckReport,
    ) -> Result<()> {
        let unsupported = Features(r.features).minus(Features::SUPPORTED);
        if !unsupported.is_empty() {
            rep.errors.push(format!(
                "{spec}: needs feature(s) {unsupported} that this build does not support"
            ));
            return Ok(());
        }
        let mut last = 0;
        let mut names = BTreeSet::new();
        for s in &r.snaps {
            if s.id <= last || s.id >= r.seq {
                rep.errors.push(format!(
                    "{spec}@{}: snapshot id {} is out of order (sequence {})",
                    s.name, s.id, r.seq
                ));
            }
            last = s.id;
            if !names.insert(&s.name) {
                rep.errors
                    .push(format!("{spec}: two snapshots are named {:?}", s.name));
            }
        }
        if let Some(l) = r.parent {
            match self
                .meta_store()
                .get(keys::IMAGES, &keys::k2(l.pool, l.image))?
            {
                None => rep.errors.push(format!(
                    "{spec}: parent image id {:x} does not exist",
                    l.image
                )),
                Some(v) => {
                    let pr: ImageRecord = record::decode(Kind::Image, "parent", &v)?;
                    match pr.snaps.iter().find(|s| s.id == l.snap) {
                        None => rep.errors.push(format!(
                            "{spec}: parent snapshot id {} of {} does not exist",
                            l.snap, pr.name
                        )),
                        Some(s) if !s.protected => rep.warnings.push(format!(
                            "{spec}: parent snapshot {}@{} is not protected",
                            pr.name, s.name
                        )),
                        _ => {}
                    }
                }
            }
        }
        let blocks = 1usize << (r.order - 12);
        let max_size = r
            .snaps
            .iter()
            .map(|s| s.size)
            .chain([r.size])
            .max()
            .unwrap_or(0);
        let max_obj = max_size.div_ceil(1 << r.order);
        let mut metas: BTreeMap<u64, ObjectMeta> = BTreeMap::new();
        for (k, v) in self
            .meta_store()
            .scan(keys::OBJECTS, &keys::k2(p.id, r.id))?
        {
            let objno = keys::u64_at(&k, 16).unwrap_or(u64::MAX);
            let rec: ObjectRecord = match record::decode(Kind::Object, spec, &v) {
                Ok(x) => x,
                Err(e) => {
                    rep.errors.push(format!("{spec} object {objno}: {e}"));
                    continue;
                }
            };
            match ObjectMeta::from_record(&rec, blocks, r.seq) {
                Ok(m) => {
                    if objno >= max_obj {
                        rep.warnings.push(format!(
                            "{spec}: object {objno} lies beyond every reader's size"
                        ));
                    }
                    metas.insert(objno, m);
                }
                Err(e) => rep.errors.push(format!("{spec} object {objno}: {e}")),
            }
        }
        rep.objects += metas.len();
        let mut referenced = BTreeSet::new();
        for (objno, m) in &metas {
            for v in &m.versions {
                referenced.insert((*objno, v.gen));
                if v.present.and_not(&v.zero).any() && !files.contains(&(*objno, v.gen)) {
                    rep.errors.push(format!("{spec}: object {objno} generation {} has data blocks but its data object is missing", v.gen));
                }
            }
        }
        // Generations queued for trimming are on their way out.
        let queued = self.trim_queued_removes(p)?;
        let orphans: Vec<_> = files
            .difference(&referenced)
            .filter(|(o, g)| !queued.contains(&(r.id, *o, *g)))
            .copied()
            .collect();
        if !orphans.is_empty() {
            rep.warnings.push(format!(
                "{spec}: {} orphan data object(s) (left by an interrupted operation)",
                orphans.len()
            ));
            if repair {
                let data = self.pool_data(p)?;
                for (o, g) in &orphans {
                    data.remove(&crate::object_name(r.id, *o, *g))?;
                }
                rep.repaired.push(format!(
                    "{spec}: removed {} orphan data object(s)",
                    orphans.len()
                ));
            }
        }
        if Features(r.features).contains(Features::OBJECT_MAP) {
            let mut under = 0usize;
            let mut over = 0usize;
            let rd = readers(r);
            let mut prev = None;
            for (id, view) in &rd {
                let (map, bad) = ObjectMap::load(self.meta_store().as_ref(), p.id, r.id, *id)?;
                if bad > 0 {
                    rep.errors
                        .push(format!("{spec}: {bad} malformed object map chunk(s)"));
                }
                let mut seen = BTreeSet::new();
                for (objno, m) in &metas {
                    seen.insert(*objno);
                    let want = m.map_state(view, prev);
                    let have = map.get(*objno);
                    if want != OBJECT_NONEXISTENT && have == OBJECT_NONEXISTENT
                        || want == OBJECT_EXISTS && have == OBJECT_EXISTS_CLEAN
                    {
                        under += 1;
                    } else if want != have {
                        over += 1;
                    }
                }
                over += map.iter().filter(|(o, _)| !seen.contains(o)).count();
                prev = Some(view);
            }
            // A map flagged invalid (an operation that recomputes it was
            // interrupted) is trusted by nothing until it is rebuilt: stale,
            // not damage.
            let flagged = r.flags & record::FLAG_OBJECT_MAP_INVALID != 0;
            if flagged {
                rep.warnings.push(format!(
                    "{spec}: object map is flagged invalid (an interrupted operation); `vdisk object-map rebuild {spec}` or `vdisk check --repair` rebuilds it"
                ));
            }
            if under > 0 && flagged {
                rep.warnings.push(format!(
                    "{spec}: object map (flagged invalid) under-reports {under} object(s)"
                ));
            } else if under > 0 {
                rep.errors.push(format!(
                    "{spec}: object map under-reports {under} object(s)"
                ));
            }
            if over > 0 {
                rep.warnings.push(format!(
                    "{spec}: object map over-reports {over} object(s) (safe)"
                ));
            }
            if repair && (under > 0 || over > 0 || flagged) {
                let s = ImageSpec::parse_image(spec)?;
                self.object_map_rebuild(&s)?;
                rep.repaired.push(format!("{spec}: rebuilt object maps"));
            }
        }
        Ok(())
    }
}

/// Parses `IIIIIIII/OOOOOOOOOOOO.G` into (image id, object number, generation).
pub fn parse_object_name(name: &str) -> Option<(u64, u64, u64)> {
    let (img, rest) = name.split_once('/')?;
    let (obj, gen) = rest.split_once('.')?;
    if !(8..=16).contains(&img.len()) || obj.len() != 12 {
        return None;
    }
    Some((
        u64::from_str_radix(img, 16).ok()?,
        u64::from_str_radix(obj, 16).ok()?,
        u64::from_str_radix(gen, 16).ok()?,
    ))
}
