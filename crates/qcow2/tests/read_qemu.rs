//! Images made by qemu-img/qemu-io with every option the issue lists,
//! read by vdisk and compared byte for byte with `qemu-img convert -O raw`,
//! and block status compared with `qemu-img map`.

mod common;

use std::path::Path;

use common::*;
use vdisk_qcow2::{open, Format, OpenOptions, Qcow2Reader, Status};

const SIZE: &str = "6M";

/// Writes a pattern that exercises full, partial and unaligned clusters,
/// zero clusters (qemu's `write -z`), discards, and data at the end.
fn scribble(img: &Path) {
    qemu_io(
        img,
        "qcow2",
        &[
            "write -P 0x11 0 70k",
            "write -P 0x22 130k 3k",
            "write -P 0x33 511k 2k",
            "write -z 1M 256k",
            "write -P 0x44 1200k 64k",
            "write -z 1216k 8k",
            "discard 2M 64k",
            "write -P 0x55 3000k 1000k",
            "write -P 0x66 6143k 1k",
        ],
    );
}

fn create(img: &Path, opts: &str) {
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-o", opts, p(img), SIZE],
    );
}

#[test]
fn v2_and_v3_every_cluster_size() {
    if !have_qemu() {
        return;
    }
    let d = tmpdir();
    for compat in ["0.10", "1.1"] {
        for cs in ["512", "1k", "4k", "64k", "256k", "2M"] {
            let img = d.path().join(format!("c{compat}-{cs}.qcow2"));
            create(&img, &format!("compat={compat},cluster_size={cs}"));
            scribble(&img);
            let r = check_read(&img, d.path());
            assert_eq!(r.format(), Format::Qcow2);
        }
    }
}

#[test]
fn every_refcount_width() {
    if !have_qemu() {
        return;
    }
    let d = tmpdir();
    for bits in [1, 2, 4, 8, 16, 32, 64] {
        let img = d.path().join(format!("rc{bits}.qcow2"));
        create(&img, &format!("refcount_bits={bits},cluster_size=4k"));
        scribble(&img);
        check_read(&img, d.path());
    }
}

#[test]
fn extended_l2_entries() {
    if !have_qemu() {
        return;
    }
    let d = tmpdir();
    for cs in ["16k", "64k", "2M"] {
        let img = d.path().join(format!("el2-{cs}.qcow2"));
        create(&img, &format!("extended_l2=on,cluster_size={cs}"));
        scribble(&img);
        let r = check_read(&img, d.path());
        let q = Qcow2Reader::open(
            Box::new(vdisk_qcow2::FileStorage::open(&img).unwrap()),
            1 << 20,
        )
        .unwrap();
        assert!(q.info().extended_l2);
        assert_eq!(r.granularity(), q.info().cluster_size / 32);
    }
}

#[test]
fn extended_l2_over_backing_file() {
    if !have_qemu() {
        return;
    }
    let d = tmpdir();
    let base = d.path().join("base.qcow2");
    create(&base, "cluster_size=64k");
    qemu_io(&base, "qcow2", &["write -P 0xbb 0 6M"]);
    let top = d.path().join("top.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            p(&top),
        ],
    );
    // Subclusters of 2 KiB: partly allocated clusters read the rest from the base.
    qemu_io(
        &top,
        "qcow2",
        &[
            "write -P 0x01 0 2k",
            "write -P 0x02 6k 3k",
            "write -z 100k 4k",
            "write -P 3 1M 64k",
        ],
    );
    check_read(&top, d.path());
}

#[test]
fn compressed_zlib_and_zstd() {
    if !have_qemu() {
        return;
    }
    let d = tmpdir();
    let raw = d.path().join("src.raw");
    std::fs::write(&raw, mixed_data(5 << 20, 7)).unwrap();
    for ty in ["zlib", "zstd"] {
        for cs in ["512", "4k", "64k", "2M"] {
            let img = d.path().join(format!("{ty}-{cs}.qcow2"));
            let o = format!("compression_type={ty},cluster_size={cs}");
            run(
                "qemu-img",
                &[
                    "convert",
                    "-c",
                    "-f",
                    "raw",
                    "-O",
                    "qcow2",
                    "-o",
                    &o,
                    p(&raw),
                    p(&img),
                ],
            );
            let r = check_read(&img, d.path());
            let st = r.block_status(0, r.size()).unwrap();
            assert!(
                st.iter().any(|e| e.compressed),
                "{ty} {cs}: no compressed cluster"
            );
            assert_eq!(read_all(&*r, 1 << 20), std::fs::read(&raw).unwrap());
        }
    }
    // A compressed image that is then partly overwritten (mixed clusters),
    // and extended L2 with compressed clusters.
    let img = d.path().join("mixed.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "compression_type=zstd,extended_l2=on",
            p(&raw),
            p(&img),
        ],
    );
    qemu_io(&img, "qcow2", &["write -P 0x77 100k 5k", "write -z 1M 64k"]);
    check_read(&img, d.path());
}

#[test]
fn backing_chains_raw_and_qcow2() {
    if !have_qemu() {
        return;
    }
    let d = tmpdir();
    let base = d.path().join("base.raw");
    std::fs::write(&base, mixed_data(4 << 20, 11)).unwrap();
    let mid = d.path().join("mid.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4k",
            "-b",
            "base.raw",
            "-F",
            "raw",
            p(&mid),
            "5M",
        ],
    );
    qemu_io(
        &mid,
        "qcow2",
        &[
            "write -P 0xa1 64k 64k",
            "write -z 200k 12k",
            "write -P 0xa2 4092k 8k",
        ],
    );
    let top = d.path().join("top.qcow2");
    // The top is larger than its backing file: the tail reads zeros.
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            p(&top),
            "6M",
        ],
    );
    qemu_io(
        &top,
        "qcow2",
        &[
            "write -P 0xb1 0 4k",
            "write -z 70k 4k",
            "write -P 0xb2 5000k 100k",
        ],
    );
    let r = check_read(&top, d.path());
    let depths: Vec<u32> = r
        .block_status(0, r.size())
        .unwrap()
        .iter()
        .map(|e| e.depth)
        .collect();
    assert!(
        depths.contains(&0) && depths.contains(&1) && depths.contains(&2),
        "{depths:?}"
    );
    // The layer-only view: unallocated where the top has nothing.
    let top_only = r.block_status_top(0, r.size()).unwrap();
    assert!(top_only.iter().all(|e| e.depth == 0));
    assert_eq!(top_only[0].status, Status::Data);
    assert!(top_only.iter().any(|e| e.status == Status::Unallocated));

    // Without following backing files, unallocated ranges read zeros.
    let lone = open(
        &top,
        &OpenOptions {
            follow_backing: false,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    assert!(lone.backing().is_none());
    let mut b = vec![1u8; 4096];
    lone.read_at(&mut b, 1 << 20).unwrap();
    assert!(b.iter().all(|&x| x == 0));

    // A backing file without a format extension is detected (old images).
    let old = d.path().join("old.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            p(&old),
            "5M",
        ],
    );
    check_read(&old, d.path());
}

#[test]
fn internal_snapshots_listed() {
    if !have_qemu() {
        return;
    }
    let d = tmpdir();
    let img = d.path().join("snaps.qcow2");
    create(&img, "cluster_size=64k");
    qemu_io(&img, "qcow2", &["write -P 1 0 1M"]);
    run("qemu-img", &["snapshot", "-c", "first", p(&img)]);
    qemu_io(&img, "qcow2", &["write -P 2 512k 1M"]);
    run("qemu-img", &["snapshot", "-c", "second snapshot", p(&img)]);
    qemu_io(&img, "qcow2", &["write -P 3 0 64k", "write -z 2M 64k"]);
    run("qemu-img", &["snapshot", "-c", "third", p(&img)]);
    run("qemu-img", &["snapshot", "-d", "first", p(&img)]);
    check_read(&img, d.path());
    let q = Qcow2Reader::open(
        Box::new(vdisk_qcow2::FileStorage::open(&img).unwrap()),
        1 << 20,
    )
    .unwrap();
    let names: Vec<&str> = q.snapshots().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["second snapshot", "third"]);
    let listed = run("qemu-img", &["snapshot", "-l", p(&img)]);
    for s in q.snapshots() {
        assert!(listed.contains(&s.name), "{listed}");
        assert_eq!(s.disk_size, Some(6 << 20));
        assert!(s.date_sec > 1_600_000_000);
    }
}

#[test]
fn preallocated_and_lazy_refcount_images() {
    if !have_qemu() {
        return;
    }
    let d = tmpdir();
    for opts in [
        "preallocation=metadata",
        "preallocation=falloc",
        "preallocation=full",
        "lazy_refcounts=on",
    ] {
        let img = d.path().join(format!("{}.qcow2", opts.replace('=', "-")));
        create(&img, opts);
        scribble(&img);
        check_read(&img, d.path());
    }
}

#[test]
fn raw_files_and_detection() {
    if !have_qemu() {
        return;
    }
    let d = tmpdir();
    let raw = d.path().join("sparse.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(8 << 20).unwrap();
    drop(f);
    qemu_io(&raw, "raw", &["write -P 9 1M 64k", "write -P 8 7M 4k"]);
    let r = check_read(&raw, d.path());
    assert_eq!(r.format(), Format::Raw);
    let st = r.block_status(0, r.size()).unwrap();
    assert_eq!(
        st.iter()
            .filter(|e| e.status == Status::Data)
            .map(|e| e.length)
            .sum::<u64>(),
        (64 << 10) + 4096
    );

    // Other formats are refused, not read as raw.
    let vmdk = d.path().join("x.vmdk");
    run("qemu-img", &["create", "-q", "-f", "vmdk", p(&vmdk), "1M"]);
    let e = open(&vmdk, &OpenOptions::default()).unwrap_err();
    assert!(e.to_string().contains("vmdk"), "{e}");
}
