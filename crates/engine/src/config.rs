//! The data directory's configuration file, `vdisk.toml`: the one place that
//! decides what new images get (incident 2: cluster-wide defaults decided
//! which features images carried).
//!
//! ```toml
//! [image]
//! features = "layering,exclusive-lock,object-map,fast-diff,deep-flatten"  # or 61
//! order = 22          # 4 MiB objects
//! ```

use crate::error::{Error, Result};
use crate::features::Features;
use serde::Deserialize;
use std::path::Path;

/// Settings read from `vdisk.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub default_features: Features,
    pub default_order: u8,
    /// How many objects' metadata an open image keeps in memory once
    /// flushed (not read from `vdisk.toml`; tests make it tiny to exercise
    /// eviction). Dirty objects and objects in use are never evicted, so
    /// the cache can exceed it between flushes.
    pub object_cache: usize,
}

/// [`Config::object_cache`]'s default: 65 536 objects (256 GiB of an image
/// at 4 MiB objects), a few tens of MiB of bitmaps.
pub const OBJECT_CACHE: usize = 1 << 16;

impl Default for Config {
    fn default() -> Self {
        Config {
            default_features: Features::DEFAULT,
            default_order: 22,
            object_cache: OBJECT_CACHE,
        }
    }
}

#[derive(Deserialize, Default)]
struct File {
    #[serde(default)]
    image: ImageSection,
}

#[derive(Deserialize, Default)]
struct ImageSection {
    features: Option<toml::Value>,
    order: Option<i64>,
}

impl Config {
    /// Parses the text of a `vdisk.toml`. Unknown keys are ignored.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let bad = |detail: String| Error::InvalidArgument(format!("{origin}: {detail}"));
        let f: File = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut c = Config::default();
        if let Some(v) = f.image.features {
            let s = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Array(a) => a
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| bad("[image] features must list names".into()))
                    })
                    .collect::<Result<Vec<_>>>()?
                    .join(","),
                _ => {
                    return Err(bad(
                        "[image] features must be a string, a number or a list of names".into(),
                    ))
                }
            };
            let feat = Features::parse(&s).map_err(|e| bad(format!("[image] features: {e}")))?;
            feat.check_creatable()
                .map_err(|e| bad(format!("[image] features: {e}")))?;
            c.default_features = feat;
        }
        if let Some(o) = f.image.order {
            if !(12..=25).contains(&o) {
                return Err(bad(format!("[image] order {o} is outside 12..=25")));
            }
            c.default_order = o as u8;
        }
        Ok(c)
    }

    /// Reads `path`, or the defaults when it does not exist.
    pub fn load(path: &Path) -> Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(t) => Config::parse(&t, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(Error::Io {
                what: format!("reading {}", path.display()),
                source: e,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!(Config::parse("", "t").unwrap(), Config::default());
        let c = Config::parse(
            "[image]\nfeatures = \"layering\"\norder = 20\n[future]\nx=1",
            "t",
        )
        .unwrap();
        assert_eq!(c.default_features, Features::LAYERING);
        assert_eq!(c.default_order, 20);
        assert_eq!(
            Config::parse("[image]\nfeatures = 1", "t")
                .unwrap()
                .default_features,
            Features(1)
        );
        assert!(Config::parse("[image]\nfeatures = \"object-map\"", "t").is_err());
        assert!(Config::parse("[image]\norder = 30", "t").is_err());
        assert!(Config::parse("[image", "t").is_err());
    }
}
