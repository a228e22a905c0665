//! The qcow2 header, its extensions and the backing file name: parsing and
//! encoding as pure functions over byte slices (no I/O).
//!
//! Layout (big-endian; qemu `docs/interop/qcow2.txt`):
//!
//! ```text
//!   0 magic "QFI\xfb"          4 version (2|3)         8 backing_file_offset (u64)
//!  16 backing_file_size (u32) 20 cluster_bits (u32)   24 size (u64)
//!  32 crypt_method (u32)      36 l1_size (u32)        40 l1_table_offset (u64)
//!  48 refcount_table_offset   56 refcount_table_clusters (u32)
//!  60 nb_snapshots (u32)      64 snapshots_offset (u64)            -- v2 ends at 72
//!  72 incompatible_features   80 compatible_features  88 autoclear_features
//!  96 refcount_order (u32)   100 header_length (u32) 104 compression_type (u8, if header_length > 104)
//!  header_length: extensions {type u32, len u32, data, pad to 8}, ended by type 0
//!  then (usually) the backing file name, inside the first cluster
//! ```

use crate::error::{Error, Result};

/// `QFI\xfb`.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Length of a version 2 header.
pub const V2_HEADER_LEN: usize = 72;
/// Minimum length of a version 3 header.
pub const V3_HEADER_LEN: usize = 104;
/// The header length vdisk writes (104 + compression_type + padding), as qemu does.
pub const WRITE_HEADER_LEN: usize = 112;

/// Smallest cluster size (512 B).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster size (2 MiB; qemu's limit).
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Largest active or snapshot L1 table: 32 MiB (qemu's limit).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table: 8 MiB (qemu's limit).
pub const MAX_REFCOUNT_TABLE_BYTES: u64 = 8 << 20;
/// Most internal snapshots (qemu's limit).
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Largest snapshot table in bytes (qemu's limit).
pub const MAX_SNAPSHOT_TABLE_BYTES: u64 = 64 << 20;
/// Longest backing file name.
pub const MAX_BACKING_NAME: u32 = 1023;
/// Largest virtual size accepted (2^61, what a 32 MiB L1 with 2 MiB clusters maps).
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 61;

/// Incompatible feature bits.
pub mod incompat {
    /// Refcounts may be inconsistent (lazy refcounts, unclean shutdown).
    pub const DIRTY: u64 = 1 << 0;
    /// The image was found corrupt by qemu.
    pub const CORRUPT: u64 = 1 << 1;
    /// Guest data lives in an external file.
    pub const EXTERNAL_DATA: u64 = 1 << 2;
    /// `compression_type` is set (non-zlib).
    pub const COMPRESSION_TYPE: u64 = 1 << 3;
    /// 128-bit L2 entries with 32 subclusters per cluster.
    pub const EXTENDED_L2: u64 = 1 << 4;
    /// Every bit this crate understands.
    pub const KNOWN: u64 = DIRTY | CORRUPT | EXTERNAL_DATA | COMPRESSION_TYPE | EXTENDED_L2;
}

/// Compatible feature bit 0: lazy refcounts.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1;

/// Header extension types.
pub mod ext {
    /// End of the extension area.
    pub const END: u32 = 0;
    /// Backing file format name.
    pub const BACKING_FORMAT: u32 = 0xe279_2aca;
    /// Feature name table.
    pub const FEATURE_NAMES: u32 = 0x6803_f857;
    /// Persistent bitmaps.
    pub const BITMAPS: u32 = 0x2385_2875;
    /// Full disk encryption header pointer.
    pub const ENCRYPTION: u32 = 0x0537_be77;
    /// External data file name.
    pub const DATA_FILE: u32 = 0x4441_5441;
}

/// How compressed clusters are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CompressionType {
    /// Raw deflate (RFC 1951), 4 KiB window when written. Type 0.
    Zlib,
    /// Zstandard frames. Type 1.
    Zstd,
}

impl CompressionType {
    /// The value of the header's `compression_type` byte.
    pub fn code(self) -> u8 {
        match self {
            CompressionType::Zlib => 0,
            CompressionType::Zstd => 1,
        }
    }

    /// The name qemu uses (`-o compression_type=`).
    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Zlib => "zlib",
            CompressionType::Zstd => "zstd",
        }
    }
}

/// The parameters that decide how tables are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// log2 of the cluster size, 9..=21.
    pub cluster_bits: u32,
    /// 128-bit L2 entries with subclusters.
    pub extended_l2: bool,
    /// log2 of the refcount width in bits, 0..=6.
    pub refcount_order: u32,
}

impl Geometry {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Bytes per L2 entry (8, or 16 with extended L2).
    pub fn l2_entry_bytes(&self) -> u64 {
        if self.extended_l2 {
            16
        } else {
            8
        }
    }

    /// Entries per L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_bytes()
    }

    /// Guest bytes one L2 table maps.
    pub fn l2_span(&self) -> u64 {
        self.l2_entries() << self.cluster_bits
    }

    /// Subcluster size (the cluster size without extended L2).
    pub fn subcluster_size(&self) -> u64 {
        if self.extended_l2 {
            self.cluster_size() / 32
        } else {
            self.cluster_size()
        }
    }

    /// Refcount width in bits.
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    /// Entries per refcount block.
    pub fn refcount_block_entries(&self) -> u64 {
        (self.cluster_size() * 8) >> self.refcount_order
    }

    /// L1 entries needed to map `size` guest bytes.
    pub fn l1_entries_for(&self, size: u64) -> u64 {
        size.div_ceil(self.l2_span())
    }

    /// Bit position where the sector count of a compressed descriptor
    /// starts (`x = 62 - (cluster_bits - 8)`).
    pub fn compressed_offset_bits(&self) -> u32 {
        62 - (self.cluster_bits - 8)
    }
}

/// One entry of the feature name table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureName {
    /// 0 incompatible, 1 compatible, 2 autoclear.
    pub kind: u8,
    /// Bit number.
    pub bit: u8,
    /// Name, as stored.
    pub name: String,
}

/// A parsed header with its extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Table layout parameters.
    pub geometry: Geometry,
    /// Virtual size in bytes.
    pub size: u64,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// Offset of the active L1 table.
    pub l1_table_offset: u64,
    /// Offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters of the refcount table.
    pub refcount_table_clusters: u32,
    /// Internal snapshots.
    pub nb_snapshots: u32,
    /// Offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits (all of them known; see [`incompat`]).
    pub incompatible_features: u64,
    /// Compatible feature bits.
    pub compatible_features: u64,
    /// Autoclear feature bits.
    pub autoclear_features: u64,
    /// Header length (72 for v2).
    pub header_length: u32,
    /// How compressed clusters are compressed.
    pub compression: CompressionType,
    /// Backing file name, as stored (relative names are relative to the
    /// image's directory).
    pub backing_file: Option<String>,
    /// Backing format from the header extension.
    pub backing_format: Option<String>,
    /// Feature names the image declares.
    pub feature_names: Vec<FeatureName>,
    /// Where the backing file name is stored (0 if none).
    pub backing_file_offset: u64,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn corrupt(msg: impl Into<String>) -> Error {
    Error::Corrupt(msg.into())
}

impl Header {
    /// How many bytes from the start of the file [`Header::parse`] wants:
    /// the whole first cluster plus room for a backing file name that
    /// starts near its end. Needs the first 24 bytes. The caller reads
    /// `min(this, file length)` bytes.
    pub fn wanted_len(prefix: &[u8]) -> Result<usize> {
        if prefix.len() < 4 || prefix[..4] != MAGIC {
            return Err(Error::NotQcow2);
        }
        if prefix.len() < 24 {
            return Err(corrupt(format!(
                "the header is truncated: the file has only {} bytes",
                prefix.len()
            )));
        }
        let bits = check_cluster_bits(be32(prefix, 20))?;
        Ok((1usize << bits) + MAX_BACKING_NAME as usize + 1)
    }

    /// Parses the header from the first bytes of the file (at least the
    /// first cluster, or the whole file if it is shorter). Validates every
    /// field that can be checked without knowing the file length (the
    /// reader checks the tables against the file when it opens it).
    pub fn parse(buf: &[u8]) -> Result<Header> {
        Self::wanted_len(buf)?;
        let version = be32(buf, 4);
        match version {
            2 | 3 => {}
            1 => {
                return Err(Error::Unsupported(
                    "qcow version 1 (use qemu-img to convert it)".into(),
                ))
            }
            v => return Err(Error::Unsupported(format!("qcow2 version {v}"))),
        }
        let min_len = if version == 2 {
            V2_HEADER_LEN
        } else {
            V3_HEADER_LEN
        };
        if buf.len() < min_len {
            return Err(corrupt(format!(
                "the version {version} header needs {min_len} bytes, the file has {}",
                buf.len()
            )));
        }
        let cluster_bits = be32(buf, 20);
        let cluster_size = 1u64 << cluster_bits;
        let backing_file_offset = be64(buf, 8);
        let backing_file_size = be32(buf, 16);
        let size = be64(buf, 24);
        let crypt_method = be32(buf, 32);
        let l1_size = be32(buf, 36);
        let l1_table_offset = be64(buf, 40);
        let refcount_table_offset = be64(buf, 48);
        let refcount_table_clusters = be32(buf, 56);
        let nb_snapshots = be32(buf, 60);
        let snapshots_offset = be64(buf, 64);

        let (incompatible, compatible, autoclear, refcount_order, header_length) = if version == 2 {
            (0, 0, 0, 4, V2_HEADER_LEN as u32)
        } else {
            (
                be64(buf, 72),
                be64(buf, 80),
                be64(buf, 88),
                be32(buf, 96),
                be32(buf, 100),
            )
        };
        if version == 3 {
            if (header_length as usize) < V3_HEADER_LEN || header_length % 8 != 0 {
                return Err(corrupt(format!(
                    "header_length {header_length} is not a multiple of 8 of at least {V3_HEADER_LEN}"
                )));
            }
            if u64::from(header_length) > cluster_size {
                return Err(corrupt(format!(
                    "header_length {header_length} is larger than the cluster ({cluster_size} bytes)"
                )));
            }
            if buf.len() < header_length as usize {
                return Err(corrupt(format!(
                    "the header is {header_length} bytes long, the file has only {}",
                    buf.len()
                )));
            }
        }
        if refcount_order > 6 {
            return Err(Error::Limit {
                what: "refcount_order".into(),
                value: refcount_order.into(),
                limit: 6,
            });
        }

        // Extensions first: the feature name table names unknown features.
        let ext_end = (cluster_size as usize).min(buf.len());
        let mut backing_format = None;
        let mut feature_names = Vec::new();
        let mut data_file = None;
        let mut at = header_length as usize;
        while at + 8 <= ext_end {
            let ty = be32(buf, at);
            let len = be32(buf, at + 4) as usize;
            if ty == ext::END {
                break;
            }
            let data_start = at + 8;
            let Some(data_end) = data_start.checked_add(len).filter(|&e| e <= ext_end) else {
                return Err(corrupt(format!(
                    "header extension {ty:#010x} at offset {at:#x} claims {len} bytes, past the end of the first cluster"
                )));
            };
            let data = &buf[data_start..data_end];
            match ty {
                ext::BACKING_FORMAT => {
                    if len > 63 {
                        return Err(Error::Limit {
                            what: "backing format name length".into(),
                            value: len as u64,
                            limit: 63,
                        });
                    }
                    backing_format = Some(
                        String::from_utf8(data.to_vec())
                            .map_err(|_| corrupt("the backing format name is not UTF-8"))?,
                    );
                }
                ext::FEATURE_NAMES => {
                    for e in data.chunks_exact(48) {
                        let raw = &e[2..48];
                        let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
                        feature_names.push(FeatureName {
                            kind: e[0],
                            bit: e[1],
                            name: String::from_utf8_lossy(&raw[..end]).into_owned(),
                        });
                    }
                }
                ext::DATA_FILE => data_file = Some(String::from_utf8_lossy(data).into_owned()),
                _ => {} // bitmaps, encryption pointer, unknown: safely ignored
            }
            at = data_end.next_multiple_of(8);
        }

        // Features.
        let unknown = incompatible & !incompat::KNOWN;
        if unknown != 0 {
            let names: Vec<String> = (0..64)
                .filter(|b| unknown & (1u64 << b) != 0)
                .map(|b| {
                    feature_names
                        .iter()
                        .find(|f| f.kind == 0 && u32::from(f.bit) == b)
                        .map(|f| format!("{} (bit {b})", f.name))
                        .unwrap_or_else(|| format!("bit {b}"))
                })
                .collect();
            return Err(Error::Unsupported(format!(
                "unknown incompatible feature(s): {}",
                names.join(", ")
            )));
        }
        if crypt_method != 0 {
            let m = match crypt_method {
                1 => "AES",
                2 => "LUKS",
                _ => "unknown",
            };
            return Err(Error::Unsupported(format!(
                "encrypted image (crypt_method {crypt_method}, {m}); decrypt it with qemu-img convert first"
            )));
        }
        if incompatible & incompat::EXTERNAL_DATA != 0 {
            return Err(Error::Unsupported(format!(
                "external data file{}",
                data_file.map(|d| format!(" {d:?}")).unwrap_or_default()
            )));
        }
        let type_byte = if header_length as usize > V3_HEADER_LEN {
            buf[104]
        } else {
            0
        };
        let compression =
            if incompatible & incompat::COMPRESSION_TYPE != 0 {
                match type_byte {
                    0 => return Err(corrupt(
                        "the compression type feature bit is set but compression_type is 0 (zlib)",
                    )),
                    1 => CompressionType::Zstd,
                    t => return Err(Error::Unsupported(format!("compression type {t}"))),
                }
            } else if type_byte != 0 {
                return Err(corrupt(format!(
                    "compression_type is {type_byte} but the compression type feature bit is clear"
                )));
            } else {
                CompressionType::Zlib
            };
        let extended_l2 = incompatible & incompat::EXTENDED_L2 != 0;
        if extended_l2 && cluster_bits < 14 {
            return Err(corrupt(format!(
                "extended L2 entries need clusters of at least 16 KiB, the image has {cluster_size} bytes"
            )));
        }
        let geometry = Geometry {
            cluster_bits,
            extended_l2,
            refcount_order,
        };

        // Sizes and counts, before anything is allocated for them.
        if size > MAX_VIRTUAL_SIZE {
            return Err(Error::Limit {
                what: "virtual size".into(),
                value: size,
                limit: MAX_VIRTUAL_SIZE,
            });
        }
        if u64::from(l1_size) * 8 > MAX_L1_BYTES {
            return Err(Error::Limit {
                what: "l1_size (entries of the active L1 table)".into(),
                value: l1_size.into(),
                limit: MAX_L1_BYTES / 8,
            });
        }
        let needed = geometry.l1_entries_for(size);
        if u64::from(l1_size) < needed {
            return Err(corrupt(format!(
                "the L1 table has {l1_size} entries, the virtual size {size} needs {needed}"
            )));
        }
        let rt_bytes = u64::from(refcount_table_clusters) << cluster_bits;
        if rt_bytes > MAX_REFCOUNT_TABLE_BYTES {
            return Err(Error::Limit {
                what: "refcount table size in bytes".into(),
                value: rt_bytes,
                limit: MAX_REFCOUNT_TABLE_BYTES,
            });
        }
        if nb_snapshots > MAX_SNAPSHOTS {
            return Err(Error::Limit {
                what: "nb_snapshots".into(),
                value: nb_snapshots.into(),
                limit: MAX_SNAPSHOTS.into(),
            });
        }
        let aligned = |what: &str, off: u64| {
            if !off.is_multiple_of(cluster_size) {
                Err(corrupt(format!(
                    "{what} {off:#x} is not aligned to the cluster size ({cluster_size})"
                )))
            } else {
                Ok(())
            }
        };
        aligned("l1_table_offset", l1_table_offset)?;
        aligned("refcount_table_offset", refcount_table_offset)?;
        if nb_snapshots > 0 {
            aligned("snapshots_offset", snapshots_offset)?;
        }

        // Backing file name.
        let backing_file = if backing_file_offset != 0 && backing_file_size != 0 {
            if backing_file_size > MAX_BACKING_NAME {
                return Err(Error::Limit {
                    what: "backing_file_size".into(),
                    value: backing_file_size.into(),
                    limit: MAX_BACKING_NAME.into(),
                });
            }
            if backing_file_offset > cluster_size {
                return Err(corrupt(format!(
                    "backing_file_offset {backing_file_offset:#x} is outside the first cluster"
                )));
            }
            let start = backing_file_offset as usize;
            let end = start + backing_file_size as usize;
            if end > buf.len() {
                return Err(Error::OutsideFile {
                    what: "backing file name".into(),
                    offset: backing_file_offset,
                    len: backing_file_size.into(),
                    file_size: buf.len() as u64,
                });
            }
            Some(
                String::from_utf8(buf[start..end].to_vec())
                    .map_err(|_| corrupt("the backing file name is not UTF-8"))?,
            )
        } else {
            None
        };

        Ok(Header {
            version,
            geometry,
            size,
            l1_size,
            l1_table_offset,
            refcount_table_offset,
            refcount_table_clusters,
            nb_snapshots,
            snapshots_offset,
            incompatible_features: incompatible,
            compatible_features: compatible,
            autoclear_features: autoclear,
            header_length,
            compression,
            backing_file,
            backing_format,
            feature_names,
            backing_file_offset,
        })
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.geometry.cluster_size()
    }

    /// Encodes a version 3 header cluster as vdisk writes it: the 112-byte
    /// header, a backing format extension if there is a backing file, the
    /// end marker, then the backing file name; the rest of the cluster is
    /// zero. Fails if the name does not fit in the first cluster.
    pub fn encode_v3(&self) -> Result<Vec<u8>> {
        let cs = self.cluster_size() as usize;
        let mut b = vec![0u8; cs];
        let mut exts = Vec::new();
        if let Some(fmt) = &self.backing_format {
            exts.extend_from_slice(&ext::BACKING_FORMAT.to_be_bytes());
            exts.extend_from_slice(&(fmt.len() as u32).to_be_bytes());
            exts.extend_from_slice(fmt.as_bytes());
            exts.resize(exts.len().next_multiple_of(8), 0);
        }
        exts.extend_from_slice(&[0u8; 8]); // END
        let name = self.backing_file.as_deref().unwrap_or("");
        if name.len() > MAX_BACKING_NAME as usize {
            return Err(Error::InvalidRequest(format!(
                "backing file name is {} bytes, at most {MAX_BACKING_NAME} allowed",
                name.len()
            )));
        }
        let name_at = WRITE_HEADER_LEN + exts.len();
        if name_at + name.len() > cs {
            return Err(Error::InvalidRequest(format!(
                "the header and a {}-byte backing file name do not fit in a {cs}-byte cluster; use larger clusters",
                name.len()
            )));
        }
        b[0..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        if !name.is_empty() {
            b[8..16].copy_from_slice(&(name_at as u64).to_be_bytes());
            b[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        }
        b[20..24].copy_from_slice(&self.geometry.cluster_bits.to_be_bytes());
        b[24..32].copy_from_slice(&self.size.to_be_bytes());
        b[36..40].copy_from_slice(&self.l1_size.to_be_bytes());
        b[40..48].copy_from_slice(&self.l1_table_offset.to_be_bytes());
        b[48..56].copy_from_slice(&self.refcount_table_offset.to_be_bytes());
        b[56..60].copy_from_slice(&self.refcount_table_clusters.to_be_bytes());
        b[60..64].copy_from_slice(&self.nb_snapshots.to_be_bytes());
        b[64..72].copy_from_slice(&self.snapshots_offset.to_be_bytes());
        b[72..80].copy_from_slice(&self.incompatible_features.to_be_bytes());
        b[80..88].copy_from_slice(&self.compatible_features.to_be_bytes());
        b[88..96].copy_from_slice(&self.autoclear_features.to_be_bytes());
        b[96..100].copy_from_slice(&self.geometry.refcount_order.to_be_bytes());
        b[100..104].copy_from_slice(&(WRITE_HEADER_LEN as u32).to_be_bytes());
        b[104] = self.compression.code();
        b[WRITE_HEADER_LEN..name_at].copy_from_slice(&exts);
        b[name_at..name_at + name.len()].copy_from_slice(name.as_bytes());
        Ok(b)
    }
}

fn check_cluster_bits(bits: u32) -> Result<u32> {
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&bits) {
        return Err(corrupt(format!(
            "cluster_bits is {bits}; clusters must be 512 B to 2 MiB (9..=21)"
        )));
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            version: 3,
            geometry: Geometry {
                cluster_bits: 16,
                extended_l2: false,
                refcount_order: 4,
            },
            size: 1 << 30,
            l1_size: 2,
            l1_table_offset: 0x30000,
            refcount_table_offset: 0x10000,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            header_length: WRITE_HEADER_LEN as u32,
            compression: CompressionType::Zlib,
            backing_file: Some("base.raw".into()),
            backing_format: Some("raw".into()),
            feature_names: vec![],
            backing_file_offset: 0,
        }
    }

    #[test]
    fn encode_parse_roundtrip() {
        let h = sample();
        let b = h.encode_v3().unwrap();
        let p = Header::parse(&b).unwrap();
        assert_eq!(p.backing_file.as_deref(), Some("base.raw"));
        assert_eq!(p.backing_format.as_deref(), Some("raw"));
        assert_eq!(p.size, h.size);
        assert_eq!(p.geometry, h.geometry);
        assert_eq!(p.l1_table_offset, h.l1_table_offset);
    }

    #[test]
    fn rejects_absurd_fields() {
        let b = sample().encode_v3().unwrap();
        let mut x = b.clone();
        x[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(Header::parse(&x), Err(Error::Limit { .. })));
        let mut x = b.clone();
        x[20..24].copy_from_slice(&40u32.to_be_bytes());
        assert!(matches!(Header::parse(&x), Err(Error::Corrupt(_))));
        let mut x = b.clone();
        x[56..60].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(Header::parse(&x), Err(Error::Limit { .. })));
        let mut x = b.clone();
        x[72..80].copy_from_slice(&(1u64 << 40).to_be_bytes());
        let e = Header::parse(&x).unwrap_err().to_string();
        assert!(e.contains("bit 40"), "{e}");
        let mut x = b;
        x[0] = b'X';
        assert!(matches!(Header::parse(&x), Err(Error::NotQcow2)));
    }

    #[test]
    fn truncated_prefixes_never_panic() {
        let b = sample().encode_v3().unwrap();
        for n in 0..200 {
            let _ = Header::parse(&b[..n]);
        }
    }
}
