//! `clone`, `children`, `flatten`.

use super::{any_spec, image_spec, parse_features, snap_spec, Ctx};
use crate::args::CloneArgs;
use crate::error::{CliError, Result};
use serde::Serialize;
use vdisk_engine::ErrorKind;

pub fn clone(ctx: &Ctx, a: CloneArgs) -> Result<()> {
    let parent = snap_spec(&a.parent)?;
    let child = image_spec(&a.child)?;
    let features = parse_features(&a.features)?;
    let img = ctx.store.clone_image(&parent, &child, features, a.order)?;
    img.flush()?;
    Ok(())
}

/// One clone in `children --format json`.
#[derive(Debug, Serialize)]
struct Child {
    pool: String,
    image: String,
}

pub fn children(ctx: &Ctx, spec: &str) -> Result<()> {
    let spec = any_spec(spec)?;
    let kids: Vec<Child> = ctx
        .store
        .children(&spec)?
        .into_iter()
        .map(|c| Child {
            pool: c.pool,
            image: c.image,
        })
        .collect();
    if ctx.out.is_json() {
        return ctx.out.json(&kids);
    }
    let mut s = String::new();
    for k in kids {
        s.push_str(&format!("{}/{}\n", k.pool, k.image));
    }
    ctx.out.text(&s)
}

pub fn flatten(ctx: &Ctx, spec: &str) -> Result<()> {
    let spec = image_spec(spec)?;
    ctx.store.flatten(&spec, &ctx.progress())?;
    // Done is verified, not assumed: the head no longer reads its parent.
    let rec = ctx.store.record(&spec)?;
    if rec.parent_overlap.is_some() {
        return Err(CliError::new(
            ErrorKind::Io,
            format!("flatten of {spec} finished but the image still reads from its parent"),
        )
        .with_hint("run `vdisk flatten` again; `vdisk check` verifies the metadata"));
    }
    Ok(())
}
