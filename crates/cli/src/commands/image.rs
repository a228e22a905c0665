//! Image commands: `create`, `ls`, `info`, `rm`, `rename`, `resize`,
//! `feature enable|disable`.

use super::{any_spec, describe_clients, image_size, image_spec, parse_features, Ctx};
use crate::args::{CreateArgs, FeatureCmd, LsArgs, RenameArgs, ResizeArgs};
use crate::error::{CliError, Result};
use crate::output::{Align, Table};
use vdisk_engine::report::{ImageInfo, SnapInfo};
use vdisk_engine::spec::{validate_name, DEFAULT_POOL};
use vdisk_engine::{human_size, CreateOptions, Features, ImageSpec};

pub fn create(ctx: &Ctx, a: CreateArgs) -> Result<()> {
    let spec = image_spec(&a.spec)?;
    let size = image_size(&a.size)?;
    let features = parse_features(&a.features)?;
    let img = ctx.store.create(
        &spec,
        &CreateOptions {
            size,
            order: a.order,
            features,
        },
    )?;
    img.flush()?;
    Ok(())
}

pub fn ls(ctx: &Ctx, a: LsArgs) -> Result<()> {
    let pool = a.pool.unwrap_or_else(|| DEFAULT_POOL.to_string());
    validate_name(&pool)?;
    if !a.long {
        let names: Vec<String> = ctx.store.list(&pool)?.into_iter().map(|r| r.name).collect();
        if ctx.out.is_json() {
            return ctx.out.json(&names);
        }
        let mut s = String::new();
        for n in names {
            s.push_str(&n);
            s.push('\n');
        }
        return ctx.out.text(&s);
    }
    let records = ctx.store.list(&pool)?;
    let heads = ctx.store.list_info(&pool)?;
    let mut rows: Vec<ImageInfo> = Vec::new();
    for (rec, head) in records.iter().zip(heads) {
        let spec = ImageSpec {
            pool: pool.clone(),
            image: rec.name.clone(),
            snap: None,
        };
        let snaps: Vec<ImageInfo> = rec
            .snaps
            .iter()
            .map(|s| {
                // An image this build cannot open (unknown features) still
                // gets its rows, built from the record alone.
                ctx.store
                    .info(&spec.with_snap(&s.name))
                    .unwrap_or_else(|_| snap_row(&head, s))
            })
            .collect();
        rows.push(head);
        rows.extend(snaps);
    }
    if ctx.out.is_json() {
        return ctx.out.json(&rows);
    }
    let mut t = Table::new(&[
        ("NAME", Align::Left),
        ("SIZE", Align::Right),
        ("PARENT", Align::Left),
        ("FMT", Align::Right),
        ("PROT", Align::Left),
        ("LOCK", Align::Left),
    ]);
    for r in rows {
        let (name, prot) = match &r.snapshot {
            Some(s) => (
                format!("{}@{}", r.name, s.name),
                if s.protected { "yes" } else { "" },
            ),
            None => (r.name.clone(), ""),
        };
        let parent = r
            .parent
            .as_ref()
            .map(|p| format!("{}/{}@{}", p.pool, p.image, p.snapshot))
            .unwrap_or_default();
        t.row(vec![
            name,
            human_size(r.size),
            parent,
            r.format.to_string(),
            prot.into(),
            String::new(),
        ]);
    }
    ctx.out.text(&t.render())
}

/// A snapshot's `ls -l` row derived from its image's row.
fn snap_row(head: &ImageInfo, s: &vdisk_engine::record::SnapRecord) -> ImageInfo {
    let mut r = head.clone();
    r.size = s.size;
    r.objects = s.size.div_ceil(r.object_size.max(1));
    r.parent = match (&head.parent, s.parent_overlap) {
        (Some(p), Some(ov)) => {
            let mut p = p.clone();
            p.overlap = ov;
            Some(p)
        }
        _ => None,
    };
    r.snapshot = Some(SnapInfo::from_record(s));
    r
}

pub fn info(ctx: &Ctx, spec: &str) -> Result<()> {
    let spec = any_spec(spec)?;
    let i = ctx.store.info(&spec)?;
    if ctx.out.is_json() {
        return ctx.out.json(&i);
    }
    ctx.out.text(&plain_info(&i))
}

/// `rbd info`'s layout.
fn plain_info(i: &ImageInfo) -> String {
    let mut s = format!("rbd image '{}':\n", i.name);
    let mut l = |line: String| {
        s.push('\t');
        s.push_str(&line);
        s.push('\n');
    };
    l(format!(
        "size {} in {} objects",
        human_size(i.size),
        i.objects
    ));
    l(format!(
        "order {} ({} objects)",
        i.order,
        human_size(i.object_size)
    ));
    l(format!("snapshot_count: {}", i.snapshot_count));
    if let Some(n) = i.snap_limit {
        l(format!("snapshot_limit: {n}"));
    }
    l(format!("id: {}", i.id));
    l(format!("block_name_prefix: {}", i.block_name_prefix));
    l(format!("format: {}", i.format));
    l(format!("features: {}", i.features.join(", ")));
    l(format!("op_features: {}", i.op_features.join(", ")));
    l(format!("flags: {}", i.flags.join(", ")));
    l(format!("create_timestamp: {}", i.create_timestamp));
    if let Some(p) = &i.parent {
        l(format!("parent: {}/{}@{}", p.pool, p.image, p.snapshot));
        l(format!("overlap: {}", human_size(p.overlap)));
    }
    if let Some(sn) = &i.snapshot {
        l(format!("snapshot: {} (id {})", sn.name, sn.id));
        l(format!("snapshot_timestamp: {}", sn.timestamp));
        l(format!(
            "protected: {}",
            if sn.protected { "True" } else { "False" }
        ));
    }
    s
}

pub fn rm(ctx: &Ctx, spec: &str) -> Result<()> {
    let spec = image_spec(spec)?;
    // Served images are not removed under their clients. (An image the
    // registry cannot name is left to `remove`, which says why.)
    if let Ok(clients) = ctx.clients_of(&spec) {
        if !clients.is_empty() {
            return Err(CliError::refused(format!(
                "image {spec} is in use by {}",
                describe_clients(&clients)
            ))
            .with_hint("disconnect them (shut the VM down, stop the tool) first"));
        }
    }
    Ok(ctx.store.remove(&spec)?)
}

pub fn rename(ctx: &Ctx, a: RenameArgs) -> Result<()> {
    let src = image_spec(&a.src)?;
    let dst = image_spec(&a.dst)?;
    // As in rbd, a destination without a pool stays in the source's pool.
    let dst_pool = if a.dst.contains('/') {
        dst.pool.clone()
    } else {
        src.pool.clone()
    };
    if dst_pool != src.pool {
        return Err(CliError::invalid(format!(
            "cannot rename {src} into another pool ({dst_pool})"
        ))
        .with_hint(format!(
            "rename within the pool, or copy and remove: `vdisk cp {src} {dst_pool}/{}` then `vdisk rm {src}`",
            dst.image
        )));
    }
    Ok(ctx.store.rename(&src, &dst.image)?)
}

pub fn resize(ctx: &Ctx, a: ResizeArgs) -> Result<()> {
    let spec = image_spec(&a.spec)?;
    let size = image_size(&a.size)?;
    // --fix-gpt is planned (or refused) before anything changes.
    let gpt = if a.fix_gpt {
        Some(super::gpt::plan_fix(ctx, &spec, size, a.allow_shrink)?)
    } else {
        None
    };
    ctx.store.resize(&spec, size, a.allow_shrink)?;
    if let Some(plan) = &gpt {
        super::gpt::apply_fix(ctx, &spec, &a.size, plan)?;
    }
    // New connections see the new size at once; NBD cannot tell a
    // connected client that its disk changed size.
    let clients: Vec<_> = ctx
        .clients_of(&spec)?
        .into_iter()
        .filter(|c| c.mode == "rw")
        .collect();
    if !clients.is_empty() {
        ctx.warn(format!(
            "{spec} was resized; its {} keep the old size until they reconnect",
            describe_clients(&clients)
        ));
    }
    Ok(())
}

pub fn feature(ctx: &Ctx, cmd: FeatureCmd) -> Result<()> {
    let (a, enable) = match cmd {
        FeatureCmd::Enable(a) => (a, true),
        FeatureCmd::Disable(a) => (a, false),
    };
    let spec = image_spec(&a.spec)?;
    // Disabling accepts bits this build does not know (incident 2: the
    // refusal to open such an image names this very command).
    let features = if enable {
        parse_features(&a.features)?.unwrap_or(Features(0))
    } else {
        let mut f = Features(0);
        for item in &a.features {
            f = f.union(Features::parse_lenient(item)?);
        }
        f
    };
    if features.is_empty() {
        return Err(CliError::invalid("no feature named"));
    }
    Ok(ctx.store.feature_set(&spec, features, enable)?)
}
