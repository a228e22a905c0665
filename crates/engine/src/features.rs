//! Image features, with RBD's names and bit values, and their dependencies.
//!
//! | bit | name | here |
//! |---|---|---|
//! | 1 | layering | supported (clones) |
//! | 2 | striping | known, not supported (non-default striping) |
//! | 4 | exclusive-lock | supported (one writer per image) |
//! | 8 | object-map | supported, needs exclusive-lock |
//! | 16 | fast-diff | supported, needs object-map |
//! | 32 | deep-flatten | supported |
//! | 64 | journaling | known, not supported; needs exclusive-lock |
//! | 128 | data-pool | known, not supported |
//! | 256 | operations | known, not supported |
//! | 512 | migrating | known, not supported |
//! | 1024 | non-primary | known, not supported |
//! | 2048 | dirty-cache | known, not supported |

use crate::error::{Error, Result};
use std::fmt;

/// A set of feature bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Features(pub u64);

/// RBD's feature names and bits, in bit order.
pub const KNOWN: [(&str, u64); 12] = [
    ("layering", 1),
    ("striping", 2),
    ("exclusive-lock", 4),
    ("object-map", 8),
    ("fast-diff", 16),
    ("deep-flatten", 32),
    ("journaling", 64),
    ("data-pool", 128),
    ("operations", 256),
    ("migrating", 512),
    ("non-primary", 1024),
    ("dirty-cache", 2048),
];

impl Features {
    pub const LAYERING: Features = Features(1);
    pub const STRIPING: Features = Features(2);
    pub const EXCLUSIVE_LOCK: Features = Features(4);
    pub const OBJECT_MAP: Features = Features(8);
    pub const FAST_DIFF: Features = Features(16);
    pub const DEEP_FLATTEN: Features = Features(32);
    pub const JOURNALING: Features = Features(64);
    /// What this build implements.
    pub const SUPPORTED: Features = Features(1 | 4 | 8 | 16 | 32);
    /// RBD's default: layering, exclusive-lock, object-map, fast-diff, deep-flatten (61).
    pub const DEFAULT: Features = Features(61);
    /// Features that `feature enable|disable` may change on an existing image.
    pub const DYNAMIC: Features = Features(4 | 8 | 16 | 64);
    const ALL_KNOWN: u64 = 4095;

    pub fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn union(self, other: Features) -> Features {
        Features(self.0 | other.0)
    }
    pub fn minus(self, other: Features) -> Features {
        Features(self.0 & !other.0)
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Parses a comma-separated list of names or a number (`61`, `0x3d`).
    pub fn parse(s: &str) -> Result<Features> {
        let t = s.trim();
        let num = if let Some(hex) = t.strip_prefix("0x") {
            u64::from_str_radix(hex, 16).ok()
        } else {
            t.parse::<u64>().ok()
        };
        if let Some(n) = num {
            if n & !Self::ALL_KNOWN != 0 {
                return Err(Error::InvalidArgument(format!(
                    "feature number {n} has unknown bits 0x{:x}; known features: {}",
                    n & !Self::ALL_KNOWN,
                    KNOWN
                        .iter()
                        .map(|(n, b)| format!("{n}={b}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            return Ok(Features(n));
        }
        let mut f = Features(0);
        for name in t.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            f = f.union(Self::by_name(name)?);
        }
        Ok(f)
    }

    /// Like [`Features::parse`], but numbers (`0x1000`, `4096`) may carry
    /// bits this build does not know: for `feature disable`, which must be
    /// able to drop what a newer vdisk set (incident 2).
    pub fn parse_lenient(s: &str) -> Result<Features> {
        let mut f = Features(0);
        for tok in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let num = match tok.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => tok.parse::<u64>().ok(),
            };
            f = f.union(match num {
                Some(n) => Features(n),
                None => Self::by_name(tok)?,
            });
        }
        Ok(f)
    }

    /// The feature with RBD name `name` (also accepts `_` for `-`).
    pub fn by_name(name: &str) -> Result<Features> {
        let n = name.trim().to_ascii_lowercase().replace('_', "-");
        KNOWN
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, b)| Features(*b))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown feature {name:?}; known features: {}",
                    KNOWN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                ))
            })
    }

    /// Names of the set bits; unknown bits as `0x…`.
    pub fn names(self) -> Vec<String> {
        let mut out: Vec<String> = KNOWN
            .iter()
            .filter(|(_, b)| self.0 & b != 0)
            .map(|(n, _)| n.to_string())
            .collect();
        let unknown = self.0 & !Self::ALL_KNOWN;
        if unknown != 0 {
            out.push(format!("0x{unknown:x}"));
        }
        out
    }

    /// Checks that every dependency inside the set is met.
    pub fn check_dependencies(self) -> Result<()> {
        let deps = [
            (Self::OBJECT_MAP, Self::EXCLUSIVE_LOCK),
            (Self::FAST_DIFF, Self::OBJECT_MAP),
            (Self::JOURNALING, Self::EXCLUSIVE_LOCK),
        ];
        for (f, needs) in deps {
            if self.contains(f) && !self.contains(needs) {
                return Err(Error::FeatureDependency {
                    feature: f.to_string(),
                    needs: needs.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Checks dependencies, then that this build supports every feature.
    pub fn check_creatable(self) -> Result<()> {
        self.check_dependencies()?;
        let unsupported = self.minus(Self::SUPPORTED);
        if !unsupported.is_empty() {
            return Err(Error::FeatureUnsupported {
                feature: unsupported.to_string(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.names().join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_names() {
        assert_eq!(Features::parse("61").unwrap(), Features::DEFAULT);
        assert_eq!(
            Features::parse("layering,exclusive-lock,object-map,fast-diff,deep-flatten").unwrap(),
            Features::DEFAULT
        );
        assert_eq!(Features::parse("0x3d").unwrap(), Features::DEFAULT);
        assert_eq!(
            Features(61).to_string(),
            "layering, exclusive-lock, object-map, fast-diff, deep-flatten"
        );
        assert!(Features::parse("bogus").is_err());
        assert!(Features::parse("65536").is_err());
        assert_eq!(
            Features::parse_lenient("0x1000,layering").unwrap(),
            Features(4097)
        );
        assert_eq!(Features(1 << 20).names(), vec!["0x100000".to_string()]);
    }

    #[test]
    fn dependencies() {
        assert!(Features::parse("object-map")
            .unwrap()
            .check_dependencies()
            .is_err());
        assert!(Features::parse("fast-diff,exclusive-lock")
            .unwrap()
            .check_dependencies()
            .is_err());
        assert!(Features::parse("journaling")
            .unwrap()
            .check_dependencies()
            .is_err());
        assert!(Features(61).check_creatable().is_ok());
        let e = Features::parse("exclusive-lock,journaling")
            .unwrap()
            .check_creatable()
            .unwrap_err();
        assert!(e.to_string().contains("journaling"), "{e}");
        assert!(Features::parse("striping")
            .unwrap()
            .check_creatable()
            .is_err());
    }
}
