//! Images vdisk writes: `qemu-img check` finds no errors and no leaks,
//! `qemu-img compare` finds them equal to their source, and our reader
//! reads them back.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use vdisk_qcow2::{
    is_zero, CompressionType, Format, ImageWrite, Qcow2Writer, RawWriter, Status, WriterOptions,
};

/// Writes `data` into a new qcow2 at `out` in `chunk`-byte pieces, skipping
/// all-zero clusters (what a convert does), from `threads` threads taking
/// chunks round-robin (so the order of arrival is mixed).
fn write_image(
    out: &Path,
    data: &[u8],
    opts: &WriterOptions,
    chunk: usize,
    threads: usize,
) -> vdisk_qcow2::WriteSummary {
    let w = Arc::new(Qcow2Writer::create(out, data.len() as u64, opts).unwrap());
    let cs = w.cluster_size() as usize;
    assert_eq!(chunk % cs, 0);
    std::thread::scope(|s| {
        for t in 0..threads {
            let w = w.clone();
            s.spawn(move || {
                let mut i = t;
                while i * chunk < data.len() {
                    let start = i * chunk;
                    let end = (start + chunk).min(data.len());
                    // Split at zero clusters: write runs of non-zero clusters.
                    let mut c = start;
                    while c < end {
                        let mut e = c;
                        while e < end && !is_zero(&data[e..(e + cs).min(end)]) {
                            e = (e + cs).min(end);
                        }
                        if e > c {
                            w.write_at(&data[c..e], c as u64).unwrap();
                        }
                        c = if e == c { (c + cs).min(end) } else { e };
                    }
                    i += threads;
                }
            });
        }
    });
    w.finish().unwrap()
}

fn check_written(out: &Path, raw: &Path, data: &[u8]) {
    assert_qemu_check_clean(out);
    run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "qcow2", p(raw), p(out)],
    );
    let r = open_image(out);
    assert_same_padded(&read_all(&*r, 1 << 20), data, &out.display().to_string());
    assert_map_matches(out, &*r);
}

#[test]
fn plain_images_every_cluster_size_and_refcount_width() {
    if !have_qemu() {
        return;
    }
    let d = tmpdir();
    // Not a multiple of any cluster size: the last cluster is partial.
    let data = mixed_data((5 << 20) + 4096 + 512, 3);
    let raw = d.path().join("src.raw");
    std::fs::write(&raw, &data).unwrap();
    for (cs, rb) in [
        (512, 16),
        (4096, 1),
        (65536, 2),
        (65536, 4),
        (65536, 8),
        (65536, 32),
        (65536, 64),
        (2 << 20, 16),
    ] {
        let out = d.path().join(format!("w-{cs}-{rb}.qcow2"));
        let opts = WriterOptions {
            cluster_size: cs,
            refcount_bits: rb,
            ..WriterOptions::default()
        };
        let chunk = (cs as usize).max(1 << 20);
        let s = write_image(&out, &data, &opts, chunk, 3);
        assert!(s.data_clusters > 0 && s.compressed_clusters == 0);
        check_written(&out, &raw, &data);
    }
}

#[test]
fn compressed_images_zlib_and_zstd() {
    if !have_qemu() {
        return;
    }
    let d = tmpdir();
    let data = mixed_data((6 << 20) + 1000, 5);
    let raw = d.path().join("src.raw");
    std::fs::write(&raw, &data).unwrap();
    for ty in [CompressionType::Zlib, CompressionType::Zstd] {
        for (cs, rb) in [
            (512, 16),
            (4096, 16),
            (65536, 16),
            (65536, 1),
            (65536, 2),
            (2 << 20, 64),
        ] {
            let out = d.path().join(format!("c-{}-{cs}-{rb}.qcow2", ty.name()));
            let opts = WriterOptions {
                cluster_size: cs,
                refcount_bits: rb,
                compression: Some(ty),
                ..WriterOptions::default()
            };
            let chunk = (cs as usize).max(256 << 10);
            let s = write_image(&out, &data, &opts, chunk, 4);
            assert!(
                s.compressed_clusters > 0,
                "{ty:?} {cs}: nothing compressed: {s:?}"
            );
            if (4096..=65536).contains(&cs) {
                assert!(
                    s.data_clusters > 0,
                    "{ty:?} {cs}: random data must stay uncompressed: {s:?}"
                );
            }
            check_written(&out, &raw, &data);
            let info = run("qemu-img", &["info", p(&out)]);
            assert!(
                info.contains(&format!("compression type: {}", ty.name())),
                "{info}"
            );
        }
    }
}

#[test]
fn backing_files_and_zero_clusters() {
    if !have_qemu() {
        return;
    }
    let d = tmpdir();
    let base = d.path().join("base.raw");
    let base_data = mixed_data(4 << 20, 9);
    std::fs::write(&base, &base_data).unwrap();
    for (fmt, name) in [(Format::Raw, "base.raw"), (Format::Qcow2, "base.qcow2")] {
        if fmt == Format::Qcow2 {
            run(
                "qemu-img",
                &["convert", "-O", "qcow2", p(&base), p(&d.path().join(name))],
            );
        }
        let out = d.path().join(format!("over-{}.qcow2", fmt.name()));
        let opts = WriterOptions {
            backing_file: Some(name.into()),
            backing_format: Some(fmt),
            ..WriterOptions::default()
        };
        // Larger than the backing file.
        let size = 5u64 << 20;
        let w = Qcow2Writer::create(&out, size, &opts).unwrap();
        let mut expected = base_data.clone();
        expected.resize(size as usize, 0);
        let patch = vec![0x5a; 128 << 10];
        w.write_at(&patch, 1 << 20).unwrap();
        expected[1 << 20..(1 << 20) + patch.len()].copy_from_slice(&patch);
        w.write_zeroes(2 << 20, 192 << 10).unwrap();
        expected[2 << 20..(2 << 20) + (192 << 10)].fill(0);
        w.write_at(&patch[..64 << 10], size - (64 << 10)).unwrap();
        expected[(size - (64 << 10)) as usize..].copy_from_slice(&patch[..64 << 10]);
        let s = w.finish().unwrap();
        assert_eq!(s.zero_clusters, 3);
        assert_qemu_check_clean(&out);
        let info = run("qemu-img", &["info", p(&out)]);
        assert!(
            info.contains(&format!("backing file format: {}", fmt.name())),
            "{info}"
        );
        let exp = d.path().join("expected.raw");
        std::fs::write(&exp, &expected).unwrap();
        run("qemu-img", &["compare", "-F", "raw", p(&out), p(&exp)]);
        let r = open_image(&out);
        assert_same_padded(&read_all(&*r, 777_777), &expected, "overlay");
        assert_map_matches(&out, &*r);
        let top = r.block_status_top(0, size).unwrap();
        assert_eq!(
            top.iter()
                .filter(|e| e.status == Status::Zero)
                .map(|e| e.length)
                .sum::<u64>(),
            192 << 10
        );
    }
}

#[test]
fn empty_and_tiny_images() {
    if !have_qemu() {
        return;
    }
    let d = tmpdir();
    for size in [0u64, 512, 1000, 65536, 65537] {
        let out = d.path().join(format!("t{size}.qcow2"));
        let w = Qcow2Writer::create(&out, size, &WriterOptions::default()).unwrap();
        if size > 0 {
            w.write_at(&vec![7u8; size as usize], 0).unwrap();
        }
        w.finish().unwrap();
        assert_qemu_check_clean(&out);
        let r = open_image(&out);
        assert_eq!(r.size(), size.next_multiple_of(512));
        assert_same_padded(&read_all(&*r, 4096), &vec![7u8; size as usize], "tiny");
    }
}

#[test]
fn api_misuse_is_refused() {
    let d = tmpdir();
    let out = d.path().join("m.qcow2");
    let w = Qcow2Writer::create(&out, 1 << 20, &WriterOptions::default()).unwrap();
    let c = vec![1u8; 65536];
    assert!(w.write_at(&c, 512).is_err(), "unaligned offset");
    assert!(w.write_at(&c[..1000], 0).is_err(), "unaligned length");
    assert!(w.write_at(&c, 1 << 20).is_err(), "past the end");
    w.write_at(&c, 0).unwrap();
    assert!(w.write_at(&c, 0).is_err(), "written twice");
    assert!(w.write_zeroes(0, 65536).is_err(), "zeroed after data");
    // Misuse is refused without poisoning the writer.
    w.write_at(&c, 65536).unwrap();
    w.finish().unwrap();
    assert!(w.write_at(&c, 131072).is_err(), "write after finish");
    assert!(w.finish().is_err(), "finished twice");
    let r = open_image(&out);
    assert_eq!(read_all(&*r, 1 << 20)[..131072], vec![1u8; 131072][..]);
    for bad in [
        WriterOptions {
            cluster_size: 1000,
            ..WriterOptions::default()
        },
        WriterOptions {
            cluster_size: 4 << 20,
            ..WriterOptions::default()
        },
        WriterOptions {
            refcount_bits: 3,
            ..WriterOptions::default()
        },
        WriterOptions {
            backing_file: Some("x".repeat(2000)),
            ..WriterOptions::default()
        },
        WriterOptions {
            cluster_size: 512,
            backing_file: Some("x".repeat(500)),
            ..WriterOptions::default()
        },
    ] {
        assert!(Qcow2Writer::create(&out, 1 << 20, &bad).is_err(), "{bad:?}");
    }
    // A virtual size qemu could not map with small clusters.
    let opts = WriterOptions {
        cluster_size: 512,
        ..WriterOptions::default()
    };
    assert!(Qcow2Writer::create(&out, 1 << 40, &opts).is_err());
}

#[test]
fn shared_writer_finished_in_place_without_sync() {
    if !have_qemu() {
        return;
    }
    let d = tmpdir();
    let out = d.path().join("s.qcow2");
    let opts = WriterOptions {
        durable: false,
        ..WriterOptions::default()
    };
    let w: Arc<dyn ImageWrite> = Arc::new(Qcow2Writer::create(&out, 8 << 20, &opts).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let w = w.clone();
            std::thread::spawn(move || {
                for i in (t..128).step_by(4) {
                    w.write_at(&[i as u8 + 1; 65536], i * 65536).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    w.finish().unwrap();
    assert_qemu_check_clean(&out);
    let got = read_all(&*open_image(&out), 1 << 20);
    for i in 0..128usize {
        assert!(got[i * 65536..(i + 1) * 65536]
            .iter()
            .all(|&b| b == i as u8 + 1));
    }
}

#[test]
fn unfinished_image_is_not_a_qcow2() {
    let d = tmpdir();
    let out = d.path().join("u.qcow2");
    let w = Qcow2Writer::create(&out, 1 << 20, &WriterOptions::default()).unwrap();
    w.write_at(&[1u8; 65536], 0).unwrap();
    drop(w);
    let e = vdisk_qcow2::open(
        &out,
        &vdisk_qcow2::OpenOptions {
            format: Some(Format::Qcow2),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, vdisk_qcow2::Error::NotQcow2), "{e}");
}

#[test]
fn raw_writer_fresh_and_existing() {
    let d = tmpdir();
    let out = d.path().join("r.raw");
    let w = RawWriter::create(&out, 1 << 20).unwrap();
    w.write_at(&[3u8; 1000], 5).unwrap();
    w.write_zeroes(4096, 4096).unwrap();
    w.finish().unwrap();
    let b = std::fs::read(&out).unwrap();
    assert_eq!(b.len(), 1 << 20);
    assert!(b[5..1005].iter().all(|&x| x == 3));

    // Over existing garbage, zeroing writes zeros (never trusts the target).
    std::fs::write(&out, vec![0xee; 1 << 20]).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&out)
        .unwrap();
    let w = RawWriter::existing(f, 1 << 20, "r.raw".into()).unwrap();
    w.write_zeroes(0, 1 << 20).unwrap();
    w.finish().unwrap();
    assert!(std::fs::read(&out).unwrap().iter().all(|&x| x == 0));
}
