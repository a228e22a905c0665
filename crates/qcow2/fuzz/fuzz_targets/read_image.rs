//! Fuzzes the qcow2 reader with one input, read from memory.
//!
//! An input that starts with the qcow2 magic is the image itself. Any other
//! input is a list of edits to a valid template image (plain or zstd
//! compressed, picked by the first byte): 10-byte records of a 16-bit
//! offset (scaled to the template), a kind byte, and a value, so that the
//! fuzzer reaches deep into the tables instead of failing at the magic.
//! The image is opened (with itself as backing file when it names one),
//! mapped, and read in part. Nothing may panic; errors are fine.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vdisk_qcow2::{
    CompressionType, ImageRead, MemStorage, Qcow2Reader, Qcow2Writer, WriterOptions,
};

/// Small valid images made by vdisk's writer: 4 KiB clusters, 4 MiB
/// virtual size (two L1 entries), data, a zero cluster and a tail cluster,
/// a backing file name; plain and zstd-compressed.
fn templates() -> &'static [Vec<u8>; 2] {
    static T: OnceLock<[Vec<u8>; 2]> = OnceLock::new();
    T.get_or_init(|| {
        let make = |compression: Option<CompressionType>| {
            let path = std::env::temp_dir().join(format!(
                "vdisk-qcow2-fuzz-{}-{}.qcow2",
                std::process::id(),
                compression.is_some()
            ));
            let opts = WriterOptions {
                cluster_size: 4096,
                compression,
                backing_file: Some("base.qcow2".into()),
                ..WriterOptions::default()
            };
            let w = Qcow2Writer::create(&path, 4 << 20, &opts).expect("template");
            let data: Vec<u8> = (0..8 * 4096).map(|i| (i / 7) as u8).collect();
            w.write_at(&data, 0).expect("template");
            w.write_at(&data[..4096], (4 << 20) - 4096)
                .expect("template");
            w.write_zeroes(64 * 4096, 4096).expect("template");
            w.finish().expect("template");
            let bytes = std::fs::read(&path).expect("template");
            let _ = std::fs::remove_file(&path);
            bytes
        };
        [make(None), make(Some(CompressionType::Zstd))]
    })
}

fn image_from(data: &[u8]) -> Vec<u8> {
    if data.starts_with(b"QFI\xfb") {
        return data.to_vec();
    }
    let Some((&pick, edits)) = data.split_first() else {
        return Vec::new();
    };
    let mut img = templates()[usize::from(pick & 1)].clone();
    for e in edits.chunks_exact(10) {
        let len = img.len();
        if len == 0 {
            break;
        }
        let at = usize::from(u16::from_be_bytes([e[0], e[1]])) * len / 65536;
        let v = &e[2..10];
        match e[2] % 4 {
            // One byte.
            0 => img[at] = v[1],
            // A big-endian u64 at an 8-aligned offset (table entries).
            1 => {
                let at = at & !7;
                if at + 8 <= len {
                    img[at..at + 8].copy_from_slice(&[v[1], v[2], v[3], v[4], v[5], v[6], v[7], 0]);
                }
            }
            // A header field (first 128 bytes), byte-exact.
            2 => img[at % len.min(128)] = v[1],
            // Truncate.
            _ => img.truncate(at),
        }
    }
    img
}

fn exercise(r: &dyn ImageRead, data: &[u8]) {
    let size = r.size();
    let _ = r.block_status(0, size);
    let _ = r.block_status_top(0, size);
    let mut buf = vec![0u8; 64 << 10];
    let mut at = 0;
    while at < size.min(256 << 10) {
        let n = (size - at).min(buf.len() as u64) as usize;
        let _ = r.read_at(&mut buf[..n], at);
        at += n as u64;
    }
    // A few unaligned reads where the input says.
    for c in data.chunks_exact(8).take(8) {
        if size == 0 {
            break;
        }
        let off = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) % size;
        let n = ((size - off) as usize).min(5000);
        let _ = r.read_at(&mut buf[..n], off);
    }
}

fuzz_target!(|data: &[u8]| {
    let img = image_from(data);
    let Ok(mut r) = Qcow2Reader::open(Box::new(MemStorage::new(img.clone(), "fuzz")), 1 << 20)
    else {
        return;
    };
    if r.backing_file().is_some() {
        if let Ok(b) = Qcow2Reader::open(Box::new(MemStorage::new(img, "fuzz-backing")), 1 << 20) {
            r.set_backing(Arc::new(b));
        }
    }
    let _ = r.snapshots();
    exercise(&r, data);
});
