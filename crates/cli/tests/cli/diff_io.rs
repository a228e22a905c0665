//! `export-diff`, `import-diff`, `merge-diff`, `export`/`import
//! --export-format 2`: Ceph-written diffs applied, round trips byte for
//! byte (zeroed and discarded ranges, resizes, snapshots), merges, the
//! checksum sidecar, and bad input refused with the pool unchanged.

use crate::common::*;
use crate::serve::{wait_exit, wait_listening};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use vdisk_rbd_diff::sum::{hex, Summer};

/// The files Ceph 16.2.15's `rbd export-diff` wrote (see their README).
fn sample(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../rbd-diff/tests/data")
        .join(name);
    path_str(&p)
}

/// sha256 of the whole image at `rbd/sample@s2`, as `rbd export` gave it.
const SAMPLE_S2_SHA256: &str = "1ed9a22ede50b2e1e1a68e15705c80854e3daa18ab9a2e4db0d6d6f712296f7c";

fn sha256(b: &[u8]) -> String {
    let mut s = Summer::new();
    s.update(b);
    hex(&s.finish().sha256)
}

fn snaps(e: &Env, spec: &str) -> Vec<(String, u64, bool)> {
    let v = e.json(&["snap", "ls", spec]);
    v.as_array()
        .expect("list")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().expect("name").to_string(),
                s["size"].as_u64().expect("size"),
                s["protected"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

#[test]
fn ceph_written_diffs_apply_to_an_empty_image() {
    let e = Env::new();
    e.ok(&["create", "restored", "--size", "1M", "--order", "20"]);
    e.ok(&["import-diff", &sample("sample-full-s1.rbddiff"), "restored"]);
    e.ok(&["import-diff", &sample("sample-s1-s2.rbddiff"), "restored"]);
    let img = e.read_all("restored");
    assert_eq!(img.len(), 12 << 20);
    assert_eq!(sha256(&img), SAMPLE_S2_SHA256);
    assert_eq!(sha256(&e.read_all("restored@s2")), SAMPLE_S2_SHA256);
    let s1 = e.read_all("restored@s1");
    assert_eq!(s1.len(), 8 << 20);
    assert_eq!(&s1[..4096], &[b'A'; 4096][..]);
    assert_eq!(&s1[3 << 20..(3 << 20) + 65536], &[b'D'; 65536][..]);
    assert_eq!(
        snaps(&e, "restored"),
        vec![
            ("s1".into(), 8 << 20, false),
            ("s2".into(), 12 << 20, false)
        ]
    );
    // Applying a diff again: its to-snapshot exists.
    let err = e.refused(
        &["import-diff", &sample("sample-s1-s2.rbddiff"), "restored"],
        EXISTS,
        "restored@s2 already exists",
    );
    assert!(err.contains("vdisk snap rm"), "{err}");

    // Merged by vdisk, the two give the same image.
    let merged = path_str(&e.file("merged.rbddiff"));
    e.ok(&[
        "merge-diff",
        &sample("sample-full-s1.rbddiff"),
        &sample("sample-s1-s2.rbddiff"),
        &merged,
    ]);
    assert!(e.file("merged.rbddiff.vdisk-sum").exists());
    e.ok(&["create", "m", "--size", "1M"]);
    e.ok(&["import-diff", &merged, "m"]);
    assert_eq!(sha256(&e.read_all("m")), SAMPLE_S2_SHA256);
    assert_eq!(snaps(&e, "m"), vec![("s2".into(), 12 << 20, false)]);
}

/// A source with data, zeroed and discarded ranges, growth and shrinking
/// over snapshots s1..s3 and the head.
fn source(e: &Env) {
    e.ok(&["create", "src", "--size", "8M", "--order", "20"]);
    e.write("src", 0, &random_data(300 << 10, 1));
    e.write("src", (3 << 20) + 512, &random_data(70_000, 2));
    e.write("src", 7 << 20, &random_data(1 << 20, 3));
    e.ok(&["snap", "create", "src@s1"]);
    e.write("src", 100 << 10, &random_data(8192, 4));
    e.zero("src", 200 << 10, 64 << 10); // zeroes over old data
    e.zero("src", 7 << 20, 1 << 20); // a whole object discarded
    e.ok(&["resize", "src", "--size", "12M"]);
    e.write("src", (11 << 20) + 4096, &random_data(5000, 5));
    e.ok(&["snap", "create", "src@s2"]);
    e.write("src", 0, &random_data(4096, 6));
    e.ok(&["resize", "src", "--size", "6M", "--allow-shrink"]);
    e.ok(&["snap", "create", "src@s3"]);
    e.write("src", 5 << 20, &random_data(10_000, 7));
    e.zero("src", 0, 4096);
}

#[test]
fn export_diff_then_import_diff_reproduces_every_snapshot() {
    let e = Env::new();
    source(&e);
    let f = |n: &str| path_str(&e.file(n));
    e.ok(&["export-diff", "src@s1", &f("s1.diff")]);
    e.ok(&[
        "export-diff",
        "src@s2",
        "--from-snap",
        "s1",
        &f("s1-s2.diff"),
    ]);
    e.ok(&[
        "export-diff",
        "src@s3",
        "--from-snap",
        "s2",
        &f("s2-s3.diff"),
    ]);
    e.ok(&[
        "export-diff",
        "src",
        "--from-snap",
        "s3",
        &f("s3-head.diff"),
    ]);
    for n in ["s1.diff", "s1-s2.diff", "s2-s3.diff", "s3-head.diff"] {
        assert!(e.file(&format!("{n}.vdisk-sum")).exists(), "{n}");
    }
    // The diffs are rbd's format: banner, from/to records, size.
    let d = std::fs::read(e.file("s1-s2.diff")).unwrap();
    assert!(d.starts_with(b"rbd diff v1\nf\x02\0\0\0s1t\x02\0\0\0s2s"));
    assert_eq!(d.last(), Some(&b'e'));

    e.ok(&["create", "dst", "--size", "1M", "--order", "22"]);
    e.ok(&["import-diff", &f("s1.diff"), "dst"]);
    assert_eq!(e.read_all("dst@s1"), e.read_all("src@s1"));
    e.ok(&["import-diff", &f("s1-s2.diff"), "dst"]);
    assert_eq!(e.read_all("dst@s2"), e.read_all("src@s2"));
    e.ok(&["import-diff", &f("s2-s3.diff"), "dst"]);
    assert_eq!(e.read_all("dst@s3"), e.read_all("src@s3"));
    e.ok(&["import-diff", &f("s3-head.diff"), "dst"]);
    assert_eq!(e.read_all("dst"), e.read_all("src"));
    // No to-snapshot in a diff to the head: none created.
    assert_eq!(
        snaps(&e, "dst"),
        vec![
            ("s1".into(), 8 << 20, false),
            ("s2".into(), 12 << 20, false),
            ("s3".into(), 6 << 20, false)
        ]
    );

    // --whole-object writes whole objects; the result is the same.
    e.ok(&[
        "export-diff",
        "src@s2",
        "--from-snap",
        "s1",
        "--whole-object",
        &f("w.diff"),
    ]);
    assert!(std::fs::metadata(e.file("w.diff")).unwrap().len() > d.len() as u64);
    e.ok(&["create", "dst2", "--size", "1M"]);
    e.ok(&["import-diff", &f("s1.diff"), "dst2"]);
    e.ok(&["import-diff", &f("w.diff"), "dst2"]);
    assert_eq!(e.read_all("dst2@s2"), e.read_all("src@s2"));

    // Through standard output and input.
    let out = e.run(&["export-diff", "src@s2", "--from-snap", "s1", "-"]);
    assert_success(&["export-diff", "-"], &out);
    assert_eq!(out.stdout, d, "the same bytes to a file and to stdout");
    e.ok(&["create", "dst3", "--size", "1M"]);
    e.ok(&["import-diff", &f("s1.diff"), "dst3"]);
    let r = e.run_stdin(&["import-diff", "-", "dst3"], &out.stdout);
    assert_success(&["import-diff", "-"], &r);
    assert_eq!(e.read_all("dst3@s2"), e.read_all("src@s2"));
}

#[test]
fn merge_diff_equals_applying_both() {
    let e = Env::new();
    source(&e);
    let f = |n: &str| path_str(&e.file(n));
    e.ok(&["export-diff", "src@s1", &f("s1.diff")]);
    e.ok(&[
        "export-diff",
        "src@s2",
        "--from-snap",
        "s1",
        &f("s1-s2.diff"),
    ]);
    e.ok(&[
        "export-diff",
        "src@s3",
        "--from-snap",
        "s2",
        &f("s2-s3.diff"),
    ]);
    e.ok(&[
        "merge-diff",
        &f("s1-s2.diff"),
        &f("s2-s3.diff"),
        &f("s1-s3.diff"),
    ]);
    e.ok(&[
        "merge-diff",
        &f("s1.diff"),
        &f("s1-s3.diff"),
        &f("0-s3.diff"),
    ]);
    let sc = std::fs::read_to_string(e.file("s1-s3.diff.vdisk-sum")).unwrap();
    assert!(sc.contains("\"name\": \"src\""), "{sc}");
    e.ok(&["create", "a", "--size", "1M"]);
    e.ok(&["import-diff", &f("s1.diff"), "a"]);
    e.ok(&["import-diff", &f("s1-s3.diff"), "a"]);
    assert_eq!(e.read_all("a@s3"), e.read_all("src@s3"));
    e.ok(&["create", "b", "--size", "1M"]);
    e.ok(&["import-diff", &f("0-s3.diff"), "b"]);
    assert_eq!(e.read_all("b"), e.read_all("src@s3"));
    assert_eq!(snaps(&e, "b"), vec![("s3".into(), 6 << 20, false)]);
    // Merged on standard output, from standard input.
    let a = std::fs::read(e.file("s1-s2.diff")).unwrap();
    let out = e.run_stdin(&["merge-diff", "-", &f("s2-s3.diff"), "-"], &a);
    assert_success(&["merge-diff", "-"], &out);
    assert_eq!(out.stdout, std::fs::read(e.file("s1-s3.diff")).unwrap());

    // Out of order: refused, nothing written.
    let err = e.fail(
        &[
            "merge-diff",
            &f("s2-s3.diff"),
            &f("s1-s2.diff"),
            &f("x.diff"),
        ],
        USAGE,
    );
    assert!(err.contains("only consecutive diffs merge"), "{err}");
    assert!(!e.file("x.diff").exists());
    // The second diff cannot be standard input.
    e.fail(&["merge-diff", &f("s1.diff"), "-", &f("x.diff")], USAGE);
    // The output exists.
    e.fail(
        &[
            "merge-diff",
            &f("s1-s2.diff"),
            &f("s2-s3.diff"),
            &f("s1-s3.diff"),
        ],
        EXISTS,
    );
    // Diffs of two different images (their sidecars say so).
    e.ok(&["create", "other", "--size", "8M"]);
    e.ok(&["snap", "create", "other@s2"]);
    e.ok(&["snap", "create", "other@s3"]);
    e.ok(&["export-diff", "other@s3", "--from-snap", "s2", &f("o.diff")]);
    let err = e.fail(
        &["merge-diff", &f("s1-s2.diff"), &f("o.diff"), &f("y.diff")],
        REFUSED,
    );
    assert!(err.contains("different images"), "{err}");
    assert!(!e.file("y.diff").exists());
}

#[test]
fn export_format_2_round_trip_with_snapshots() {
    let e = Env::new();
    source(&e);
    e.ok(&["snap", "protect", "src@s2"]);
    let file = path_str(&e.file("src.img2"));
    e.ok(&["export", "src", &file, "--export-format", "2"]);
    assert!(e.file("src.img2.vdisk-sum").exists());
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.starts_with(b"rbd image v2\nO\x08\0\0\0\0\0\0\0\x14\0\0\0\0\0\0\0T"));
    e.ok(&["import", &file, "copy", "--export-format", "2"]);
    for s in ["@s1", "@s2", "@s3", ""] {
        assert_eq!(
            e.read_all(&format!("copy{s}")),
            e.read_all(&format!("src{s}")),
            "copy{s}"
        );
    }
    assert_eq!(snaps(&e, "copy"), snaps(&e, "src"));
    let (a, b) = (e.json(&["info", "src"]), e.json(&["info", "copy"]));
    assert_eq!(a["order"], b["order"]);
    assert_eq!(a["features"], b["features"]);
    assert_eq!(a["size"], b["size"]);
    // From standard input, and an image without snapshots.
    let r = e.run_stdin(&["import", "-", "copy2", "--export-format", "2"], &bytes);
    assert_success(&["import", "-", "--export-format", "2"], &r);
    assert_eq!(e.read_all("copy2@s3"), e.read_all("src@s3"));
    e.ok(&["create", "plain", "--size", "2M"]);
    e.write("plain", 4096, &random_data(9000, 9));
    let p = path_str(&e.file("plain.img2"));
    e.ok(&["export", "plain", &p, "--export-format", "2", "--no-sum"]);
    assert!(!e.file("plain.img2.vdisk-sum").exists());
    e.ok(&["import", &p, "plain2", "--export-format", "2"]);
    assert_eq!(e.read_all("plain2"), e.read_all("plain"));
    // A snapshot spec is refused for format 2.
    e.fail(
        &[
            "export",
            "src@s1",
            &path_str(&e.file("z")),
            "--export-format",
            "2",
        ],
        USAGE,
    );
    // The wrong kind of file.
    let err = e.refused(
        &[
            "import",
            &sample("sample-s1-s2.rbddiff"),
            "nope",
            "--export-format",
            "2",
        ],
        USAGE,
        "not an RBD image export",
    );
    assert!(err.contains("vdisk import-diff"), "{err}");
    let err = e.refused(&["import-diff", &file, "plain"], USAGE, "image export");
    assert!(err.contains("--export-format 2"), "{err}");
    // Damaged: the partial image is removed.
    std::fs::write(e.file("cut.img2"), &bytes[..bytes.len() - 10]).unwrap();
    let err = e.refused(
        &[
            "import",
            &path_str(&e.file("cut.img2")),
            "cut",
            "--export-format",
            "2",
        ],
        CORRUPT,
        "truncated",
    );
    assert!(err.contains("was removed"), "{err}");
    let r = e.run_stdin(
        &["import", "-", "cut", "--export-format", "2"],
        &bytes[..bytes.len() / 2],
    );
    check_failure(&["import", "-"], &r, CORRUPT);
    e.fail(&["info", "cut"], NOT_FOUND);
}

#[test]
fn bad_diffs_change_nothing() {
    let e = Env::new();
    source(&e);
    let f = |n: &str| path_str(&e.file(n));
    e.ok(&["export-diff", "src@s1", &f("s1.diff")]);
    e.ok(&[
        "export-diff",
        "src@s2",
        "--from-snap",
        "s1",
        &f("s1-s2.diff"),
    ]);
    e.ok(&["create", "dst", "--size", "1M"]);
    e.ok(&["import-diff", &f("s1.diff"), "dst"]);
    let good = std::fs::read(e.file("s1-s2.diff")).unwrap();
    let before = e.read_all("dst");

    // Truncated (with and without its sidecar), anywhere.
    for cut in [5, 40, good.len() / 2, good.len() - 1] {
        std::fs::write(e.file("cut.diff"), &good[..cut]).unwrap();
        let err = e.refused(
            &["import-diff", &f("cut.diff"), "dst"],
            CORRUPT,
            "truncated",
        );
        assert!(err.contains("nothing was changed"), "{err}");
        std::fs::copy(e.file("s1-s2.diff.vdisk-sum"), e.file("cut.diff.vdisk-sum")).unwrap();
        e.refused(&["import-diff", &f("cut.diff"), "dst"], CORRUPT, "");
        std::fs::remove_file(e.file("cut.diff.vdisk-sum")).unwrap();
    }
    // A damaged data byte: only the sidecar can tell, and it does.
    let mut bad = good.clone();
    let at = bad.len() - 100;
    bad[at] ^= 0x55;
    std::fs::write(e.file("bad.diff"), &bad).unwrap();
    std::fs::copy(e.file("s1-s2.diff.vdisk-sum"), e.file("bad.diff.vdisk-sum")).unwrap();
    let err = e.refused(
        &["import-diff", &f("bad.diff"), "dst"],
        CORRUPT,
        "damaged (crc32c",
    );
    assert!(err.contains("bytes 0.."), "{err}");
    // Damaged structure: an unknown tag.
    let mut bad = good.clone();
    let w = bad.iter().position(|b| *b == b'w').unwrap();
    bad[w] = b'X';
    std::fs::write(e.file("tag.diff"), &bad).unwrap();
    e.refused(
        &["import-diff", &f("tag.diff"), "dst"],
        CORRUPT,
        "unknown record tag 'X'",
    );
    // Not a diff at all.
    std::fs::write(e.file("junk"), b"QFI\xfb not a diff").unwrap();
    let err = e.refused(
        &["import-diff", &f("junk"), "dst"],
        USAGE,
        "not an RBD diff",
    );
    assert!(err.contains("vdisk: hint:"), "{err}");
    e.refused(
        &["import-diff", &f("empty-missing"), "dst"],
        NOT_FOUND,
        "empty-missing",
    );
    std::fs::write(e.file("empty"), b"").unwrap();
    e.refused(&["import-diff", &f("empty"), "dst"], USAGE, "empty");
    // A checksum file that is not one.
    std::fs::write(
        e.file("s1-s2.diff.vdisk-sum.bak"),
        std::fs::read(e.file("s1-s2.diff.vdisk-sum")).unwrap(),
    )
    .unwrap();
    std::fs::write(e.file("s1-s2.diff.vdisk-sum"), b"{\"format\": 3").unwrap();
    e.refused(
        &["import-diff", &f("s1-s2.diff"), "dst"],
        CORRUPT,
        "checksum file",
    );
    std::fs::write(
        e.file("s1-s2.diff.vdisk-sum"),
        b"{\"format\": \"vdisk-diff-sum\", \"version\": 99}",
    )
    .unwrap();
    e.refused(
        &["import-diff", &f("s1-s2.diff"), "dst"],
        UNSUPPORTED,
        "version 99",
    );
    std::fs::rename(
        e.file("s1-s2.diff.vdisk-sum.bak"),
        e.file("s1-s2.diff.vdisk-sum"),
    )
    .unwrap();

    // The from-snapshot is missing; the image is a snapshot; no image.
    e.ok(&["create", "fresh", "--size", "1M"]);
    e.refused(
        &["import-diff", &f("s1-s2.diff"), "fresh"],
        NOT_FOUND,
        "does not have",
    );
    e.refused(
        &["import-diff", &f("s1-s2.diff"), "dst@s1"],
        USAGE,
        "snapshot",
    );
    e.refused(
        &["import-diff", &f("s1-s2.diff"), "nosuch"],
        NOT_FOUND,
        "nosuch",
    );
    // The head moved on since the from-snapshot.
    e.write("dst", 0, b"changed");
    let err = e.refused(
        &["import-diff", &f("s1-s2.diff"), "dst"],
        REFUSED,
        "changed since",
    );
    assert!(err.contains("snap rollback"), "{err}");
    e.ok(&["snap", "rollback", "dst@s1"]);
    assert_eq!(e.read_all("dst"), before);

    // The wrong image: same snapshot name, other contents.
    e.ok(&["create", "wrong", "--size", "8M", "--order", "20"]);
    e.write("wrong", 0, &random_data(1 << 20, 77));
    e.ok(&["snap", "create", "wrong@s1"]);
    let err = e.refused(
        &["import-diff", &f("s1-s2.diff"), "wrong"],
        REFUSED,
        "does not hold",
    );
    assert!(err.contains("rbd/src"), "{err}");
    // ... and of another size.
    e.ok(&["create", "wrong2", "--size", "4M"]);
    e.ok(&["snap", "create", "wrong2@s1"]);
    e.refused(
        &["import-diff", &f("s1-s2.diff"), "wrong2"],
        REFUSED,
        "another image",
    );
    // Without the sidecar, vdisk cannot tell (nor can rbd): it applies.
    std::fs::copy(e.file("s1-s2.diff"), e.file("nosum.diff")).unwrap();
    e.ok(&["import-diff", &f("nosum.diff"), "wrong"]);

    // Still good after all that.
    e.ok(&["import-diff", &f("s1-s2.diff"), "dst"]);
    assert_eq!(e.read_all("dst"), e.read_all("src@s2"));
}

#[test]
fn a_damaged_stream_on_stdin_is_rolled_back() {
    let e = Env::new();
    source(&e);
    let f = |n: &str| path_str(&e.file(n));
    e.ok(&["export-diff", "src@s1", &f("s1.diff")]);
    e.ok(&[
        "export-diff",
        "src@s2",
        "--from-snap",
        "s1",
        &f("s1-s2.diff"),
    ]);
    e.ok(&["create", "dst", "--size", "1M"]);
    e.ok(&["import-diff", &f("s1.diff"), "dst"]);
    let before = e.read_all("dst");
    let good = std::fs::read(e.file("s1-s2.diff")).unwrap();
    // Cut in the middle of the data: writes (and the resize) happened.
    let out = e.run_stdin(&["import-diff", "-", "dst"], &good[..good.len() - 3000]);
    let err = check_failure(&["import-diff", "-"], &out, CORRUPT);
    assert!(err.contains("rolled back to rbd/dst@s1"), "{err}");
    assert_eq!(e.read_all("dst"), before);
    assert_eq!(snaps(&e, "dst"), vec![("s1".into(), 8 << 20, false)]);
    // A full diff (no from-snapshot) on stdin: a guard snapshot undoes it.
    e.ok(&["create", "dst2", "--size", "8M"]);
    e.write("dst2", 0, &random_data(4096, 42));
    let before = e.read_all("dst2");
    let full = std::fs::read(e.file("s1.diff")).unwrap();
    let out = e.run_stdin(&["import-diff", "-", "dst2"], &full[..full.len() / 2]);
    let err = check_failure(&["import-diff", "-"], &out, CORRUPT);
    assert!(err.contains("rolled back"), "{err}");
    assert_eq!(e.read_all("dst2"), before);
    assert!(snaps(&e, "dst2").is_empty(), "guard snapshot left behind");
}

#[test]
fn export_diff_refusals() {
    let e = Env::new();
    source(&e);
    let f = |n: &str| path_str(&e.file(n));
    e.ok(&["export-diff", "src@s1", &f("s1.diff")]);
    e.refused(
        &["export-diff", "src@s1", &f("s1.diff")],
        EXISTS,
        "already exists",
    );
    e.ok(&[
        "export-diff",
        "src@s1",
        &f("s1.diff"),
        "--force",
        "--no-sum",
    ]);
    assert!(
        !e.file("s1.diff.vdisk-sum").exists(),
        "a stale sidecar was left"
    );
    e.refused(
        &["export-diff", "src@nope", &f("a.diff")],
        NOT_FOUND,
        "nope",
    );
    e.refused(
        &["export-diff", "src@s1", "--from-snap", "nope", &f("a.diff")],
        NOT_FOUND,
        "nope",
    );
    e.refused(
        &["export-diff", "src@s1", "--from-snap", "s2", &f("a.diff")],
        USAGE,
        "not older",
    );
    e.refused(
        &["export-diff", "nosuch", &f("a.diff")],
        NOT_FOUND,
        "nosuch",
    );
    assert!(!e.file("a.diff").exists());
    e.refused(
        &["export-diff", "src", &path_str(&e.store_dir())],
        USAGE,
        "directory",
    );
    e.refused(
        &["export", "src", &f("b"), "--no-sum"],
        USAGE,
        "--export-format",
    );
}

/// `vdisk serve` on the test's directory, stopped (SIGTERM) when dropped.
struct Daemon(std::process::Child);

impl Daemon {
    fn start(e: &Env) -> Daemon {
        let mut c = e.spawn(&["serve", "--listen", "127.0.0.1:0"]);
        wait_listening(&mut c);
        Daemon(c)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let status = wait_exit(&mut self.0, Duration::from_secs(60));
        assert!(
            status.success() || std::thread::panicking(),
            "serve: {status:?}"
        );
    }
}

#[test]
fn through_the_daemon() {
    let e = Env::new();
    source(&e);
    let f = |n: &str| path_str(&e.file(n));
    e.ok(&["create", "dst", "--size", "1M"]);
    let d = Daemon::start(&e);
    e.ok(&["export-diff", "src@s1", &f("s1.diff")]);
    e.ok(&[
        "export-diff",
        "src@s2",
        "--from-snap",
        "s1",
        &f("s1-s2.diff"),
    ]);
    e.ok(&["import-diff", &f("s1.diff"), "dst"]);
    e.ok(&["import-diff", &f("s1-s2.diff"), "dst"]);
    e.ok(&["merge-diff", &f("s1.diff"), &f("s1-s2.diff"), &f("m.diff")]);
    e.ok(&["export", "src", &f("src.img2"), "--export-format", "2"]);
    e.ok(&["import", &f("src.img2"), "copy", "--export-format", "2"]);
    // Standard input and output stay with the client: refused.
    e.refused(&["import-diff", "-", "dst"], REFUSED, "standard input");
    let out = e.run(&["export-diff", "src@s1", "-"]);
    check_failure(&["export-diff", "-"], &out, REFUSED);
    // The same refusals as without a daemon.
    let err = e.fail(&["import-diff", &f("s1-s2.diff"), "dst"], EXISTS);
    drop(d);
    assert_eq!(
        err,
        e.fail(&["import-diff", &f("s1-s2.diff"), "dst"], EXISTS)
    );
    assert_eq!(e.read_all("dst@s2"), e.read_all("src@s2"));
    assert_eq!(e.read_all("copy"), e.read_all("src"));
    assert_eq!(e.read_all("copy@s3"), e.read_all("src@s3"));
    e.ok(&["create", "m", "--size", "1M"]);
    e.ok(&["import-diff", &f("m.diff"), "m"]);
    assert_eq!(e.read_all("m"), e.read_all("src@s2"));
}
