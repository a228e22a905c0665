//! Parsing of what users type: image specs (`[POOL/]IMAGE[@SNAP]`), names and
//! sizes. No I/O; every function is a plain `&str → Result<value>`.

use crate::error::{Error, Result};
use std::fmt;

/// The pool used when a spec names none (as in rbd).
pub const DEFAULT_POOL: &str = "rbd";

/// Longest pool, image or snapshot name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// A parsed `[POOL/]IMAGE[@SNAP]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageSpec {
    pub pool: String,
    pub image: String,
    pub snap: Option<String>,
}

impl ImageSpec {
    /// Parses `[POOL/]IMAGE[@SNAP]`, validating every name.
    pub fn parse(spec: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidSpec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        if spec.is_empty() {
            return Err(bad("it is empty"));
        }
        let (rest, snap) = match spec.split_once('@') {
            Some((r, s)) => (r, Some(s)),
            None => (spec, None),
        };
        let (pool, image) = match rest.split_once('/') {
            Some((p, i)) => (p, i),
            None => (DEFAULT_POOL, rest),
        };
        if image.contains('/') {
            return Err(bad("it has more than one '/'"));
        }
        if let Some(s) = snap {
            if s.contains('@') {
                return Err(bad("it has more than one '@'"));
            }
        }
        validate_name(pool)?;
        validate_name(image)?;
        if let Some(s) = snap {
            validate_name(s)?;
        }
        Ok(ImageSpec {
            pool: pool.to_string(),
            image: image.to_string(),
            snap: snap.map(str::to_string),
        })
    }

    /// Parses a spec that must not name a snapshot.
    pub fn parse_image(spec: &str) -> Result<Self> {
        let s = Self::parse(spec)?;
        if s.snap.is_some() {
            return Err(Error::InvalidSpec {
                spec: spec.into(),
                reason: "a snapshot is not allowed here; name the image".into(),
            });
        }
        Ok(s)
    }

    /// Parses a spec that must name a snapshot.
    pub fn parse_snap(spec: &str) -> Result<Self> {
        let s = Self::parse(spec)?;
        if s.snap.is_none() {
            return Err(Error::InvalidSpec {
                spec: spec.into(),
                reason: "a snapshot name is required (IMAGE@SNAP)".into(),
            });
        }
        Ok(s)
    }

    /// The same spec without its snapshot.
    pub fn image_only(&self) -> ImageSpec {
        ImageSpec {
            snap: None,
            ..self.clone()
        }
    }

    /// The same image at snapshot `snap`.
    pub fn with_snap(&self, snap: &str) -> ImageSpec {
        ImageSpec {
            snap: Some(snap.to_string()),
            ..self.clone()
        }
    }
}

impl fmt::Display for ImageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.pool, self.image)?;
        if let Some(s) = &self.snap {
            write!(f, "@{s}")?;
        }
        Ok(())
    }
}

/// Checks a pool, image or snapshot name.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason: &str| Error::InvalidName {
        name: name.chars().take(80).collect(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad(&format!(
            "it is {} bytes long; the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    if name.contains('/') {
        return Err(bad("it contains '/'"));
    }
    if name.contains('@') {
        return Err(bad("it contains '@'"));
    }
    if name.contains("..") {
        return Err(bad("it contains '..'"));
    }
    if name.starts_with('.') {
        return Err(bad("it starts with '.'"));
    }
    if name.starts_with('-') {
        return Err(bad("it starts with '-' (it would read as an option)"));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(bad("it contains a control character"));
    }
    Ok(())
}

/// Largest image size: 2^60 bytes (1 EiB). Large enough for any disk, small
/// enough that every object number fits comfortably in the metadata keys.
pub const MAX_IMAGE_SIZE: u64 = 1 << 60;

/// Parses a size as rbd does: a number with an optional suffix `B`, `K`, `M`,
/// `G`, `T`, `P` (powers of 1024; `KiB`/`MB` forms accepted). A bare number
/// means MiB, as in `rbd create --size`. Fractions are allowed with a suffix
/// larger than `B` ("1.5G") when the result is a whole number of bytes.
pub fn parse_size(input: &str) -> Result<u64> {
    parse_size_with_default(input, 1 << 20)
}

/// Like [`parse_size`], with a bare number meaning bytes (`--io-size 4096`).
pub fn parse_bytes(input: &str) -> Result<u64> {
    parse_size_with_default(input, 1)
}

fn parse_size_with_default(input: &str, bare_unit: u64) -> Result<u64> {
    let bad = |reason: &str| Error::InvalidSize {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(bad("it is empty"));
    }
    if s.starts_with('-') {
        return Err(bad("sizes cannot be negative"));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() {
        return Err(bad("it does not start with a number"));
    }
    let unit: u64 = match suffix.trim().to_ascii_uppercase().as_str() {
        "" => bare_unit,
        "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        "P" | "PB" | "PIB" => 1 << 50,
        "E" | "EB" | "EIB" => 1 << 60,
        other => {
            return Err(bad(&format!(
                "unknown unit {other:?}; use B, K, M, G, T or P"
            )))
        }
    };
    let bytes = if let Some((whole, frac)) = num.split_once('.') {
        if frac.contains('.') || whole.is_empty() && frac.is_empty() {
            return Err(bad("it is not a number"));
        }
        // Exact decimal arithmetic: whole*unit + frac*unit/10^digits.
        let w: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad("the number is too large"))?
        };
        if frac.len() > 18 {
            return Err(bad("too many decimal places"));
        }
        let f: u128 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| bad("it is not a number"))?
        };
        let scale = 10u128.pow(frac.len() as u32);
        let frac_bytes = f * unit as u128;
        if !frac_bytes.is_multiple_of(scale) {
            return Err(bad("it is not a whole number of bytes"));
        }
        w.checked_mul(unit as u128)
            .and_then(|v| v.checked_add(frac_bytes / scale))
            .ok_or_else(|| bad("the number is too large"))?
    } else {
        let n: u128 = num.parse().map_err(|_| bad("the number is too large"))?;
        n.checked_mul(unit as u128)
            .ok_or_else(|| bad("the number is too large"))?
    };
    if bytes > u64::MAX as u128 {
        return Err(bad("it is larger than 2^64 bytes"));
    }
    Ok(bytes as u64)
}

/// Validates an image size: positive, a multiple of 512, at most
/// [`MAX_IMAGE_SIZE`].
pub fn validate_image_size(input: &str, bytes: u64) -> Result<u64> {
    let bad = |reason: String| Error::InvalidSize {
        input: input.to_string(),
        reason,
    };
    if bytes == 0 {
        return Err(bad("an image size must be greater than 0".into()));
    }
    if !bytes.is_multiple_of(512) {
        return Err(bad(format!(
            "{bytes} bytes is not a multiple of 512 (the sector size)"
        )));
    }
    if bytes > MAX_IMAGE_SIZE {
        return Err(bad(format!(
            "{bytes} bytes is larger than the limit of {MAX_IMAGE_SIZE} (1 EiB)"
        )));
    }
    Ok(bytes)
}

/// Formats bytes for people: "1 GiB", "4 MiB", "1.5 KiB", "512 B".
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else if bytes.is_multiple_of(1u64 << (10 * u)) {
        // Exact only: "4 MiB" must never stand for 4 MiB + 4 KiB.
        format!("{} {}", bytes >> (10 * u), UNITS[u])
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let s = ImageSpec::parse("img").unwrap();
        assert_eq!(
            (s.pool.as_str(), s.image.as_str(), s.snap),
            ("rbd", "img", None)
        );
        let s = ImageSpec::parse("p/img@s1").unwrap();
        assert_eq!(s.to_string(), "p/img@s1");
        for bad in [
            "", "/img", "p/", "a/b/c", "img@", "img@a@b", "p/..", "p/.x", "-x", "a\u{1}b",
        ] {
            assert!(ImageSpec::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(ImageSpec::parse(&"x".repeat(300)).is_err());
        assert!(ImageSpec::parse(&"x".repeat(255)).is_ok());
        assert!(ImageSpec::parse_image("a@b").is_err());
        assert!(ImageSpec::parse_snap("a").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10").unwrap(), 10 << 20);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096B").unwrap(), 4096);
        assert_eq!(parse_size("1t").unwrap(), 1 << 40);
        assert_eq!(parse_size("2MiB").unwrap(), 2 << 20);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("4K").unwrap(), 4096);
        for bad in [
            "",
            "-1",
            "10X",
            "G",
            "1.2.3G",
            "99999999999999999999999",
            "16E",
            "0.3B",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(validate_image_size("0", 0).is_err());
        assert!(validate_image_size("1000B", 1000).is_err());
        assert!(validate_image_size("2E", 2 << 60).is_err());
    }

    #[test]
    fn human() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size(1536), "1.50 KiB");
        assert_eq!(human_size((4 << 20) + 4096), "4.00 MiB");
        assert_eq!(human_size(5 << 20), "5 MiB");
    }
}
