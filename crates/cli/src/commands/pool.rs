//! `pool create|ls|rm`.

use super::Ctx;
use crate::args::PoolCmd;
use crate::error::Result;
use crate::output::{Align, Table};

pub fn run(ctx: &Ctx, cmd: PoolCmd) -> Result<()> {
    match cmd {
        PoolCmd::Create { name, path } => {
            if let Some(p) = &path {
                ctx.path(&p.to_string_lossy())?;
            }
            ctx.store.pool_create(&name, path.as_deref())?;
            Ok(())
        }
        PoolCmd::Ls { long } => {
            let pools = ctx.store.pool_list()?;
            if ctx.out.is_json() {
                return ctx.out.json(&pools);
            }
            if !long {
                let mut s = String::new();
                for p in &pools {
                    s.push_str(&p.name);
                    s.push('\n');
                }
                return ctx.out.text(&s);
            }
            let mut t = Table::new(&[
                ("NAME", Align::Left),
                ("ID", Align::Right),
                ("IMAGES", Align::Right),
                ("PATH", Align::Left),
            ]);
            for p in pools {
                t.row(vec![p.name, p.id.to_string(), p.images.to_string(), p.path]);
            }
            ctx.out.text(&t.render())
        }
        PoolCmd::Rm { name } => Ok(ctx.store.pool_remove(&name)?),
    }
}
