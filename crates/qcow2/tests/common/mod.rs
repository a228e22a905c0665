//! Helpers shared by the integration tests: running qemu tools, making
//! deterministic data, comparing our view of an image with qemu's.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use vdisk_qcow2::{open, Extent, ImageRead, OpenOptions, Status};

/// True if the qemu tools are installed; tests that need them print why
/// they skip otherwise (scripts/test.sh installs them).
pub fn have_qemu() -> bool {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new("qemu-io")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping: qemu-img/qemu-io not installed");
    }
    ok
}

/// Runs a command, panicking with its output if it fails; returns stdout.
pub fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and returns (exit code, stdout+stderr).
pub fn run_status(prog: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `qemu-io -f FMT -c CMD... IMG`.
pub fn qemu_io(img: &Path, fmt: &str, cmds: &[&str]) {
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(p(img));
    run("qemu-io", &args);
}

/// What qemu reads: `qemu-img convert -O raw` of the image.
pub fn qemu_raw(img: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!(
        "{}.expected.raw",
        img.file_name().unwrap().to_str().unwrap()
    ));
    run("qemu-img", &["convert", "-O", "raw", p(img), p(&out)]);
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    bytes
}

/// Deterministic bytes: a mix of random, repetitive and zero blocks, so
/// that compression finds some clusters compressible and some not.
pub fn mixed_data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = vec![0u8; len];
    let mut at = 0;
    while at < len {
        let n = (4096 + (next() % 70000) as usize).min(len - at);
        match next() % 4 {
            0 => out[at..at + n].iter_mut().for_each(|b| *b = next() as u8),
            1 => {
                let v = next() as u8;
                out[at..at + n]
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, b)| *b = v.wrapping_add((i / 100) as u8))
            }
            2 => {} // zeros
            _ => out[at..at + n]
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = b"vdisk qcow2 "[i % 12]),
        }
        at += n;
    }
    out
}

pub fn open_image(path: &Path) -> Arc<dyn ImageRead> {
    open(path, &OpenOptions::default())
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

/// Reads the whole image through our reader, in pieces of `chunk` bytes
/// (odd sizes exercise partial clusters).
pub fn read_all(img: &dyn ImageRead, chunk: usize) -> Vec<u8> {
    let size = img.size() as usize;
    let mut out = vec![0u8; size];
    let mut at = 0;
    while at < size {
        let n = chunk.min(size - at);
        img.read_at(&mut out[at..at + n], at as u64).unwrap();
        at += n;
    }
    out
}

/// Per 512-byte sector: (status, depth, compressed), from qemu-img map.
pub fn qemu_map(img: &Path) -> Vec<(Status, u32, bool)> {
    let json = run("qemu-img", &["map", "--output=json", p(img)]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut out = Vec::new();
    for e in v.as_array().unwrap() {
        let len = e["length"].as_u64().unwrap();
        let status = if e["data"].as_bool().unwrap() {
            Status::Data
        } else if e["present"].as_bool().unwrap() {
            Status::Zero
        } else {
            Status::Unallocated
        };
        let depth = e["depth"].as_u64().unwrap() as u32;
        let compressed = e["compressed"].as_bool().unwrap_or(false);
        for _ in 0..len.div_ceil(512) {
            out.push((status, depth, compressed));
        }
    }
    out
}

/// Per 512-byte sector, from our block status.
pub fn our_map(extents: &[Extent]) -> Vec<(Status, u32, bool)> {
    let mut out = Vec::new();
    let mut expect = 0;
    for e in extents {
        assert_eq!(e.offset, expect, "extents must be contiguous: {extents:?}");
        expect = e.end();
        for _ in 0..e.length.div_ceil(512) {
            out.push((e.status, e.depth, e.compressed));
        }
    }
    out
}

/// Asserts our block status agrees with qemu's map. Unallocated sectors
/// are compared by status only (qemu reports the depth it searched to).
pub fn assert_map_matches(img: &Path, ours: &dyn ImageRead) {
    let q = qemu_map(img);
    let o = our_map(&ours.block_status(0, ours.size()).unwrap());
    assert_eq!(q.len(), o.len(), "{}: map lengths differ", img.display());
    for (i, (a, b)) in q.iter().zip(&o).enumerate() {
        let same = if a.0 == Status::Unallocated {
            b.0 == Status::Unallocated
        } else {
            a == b
        };
        assert!(
            same,
            "{}: sector {i} (offset {:#x}): qemu {a:?}, vdisk {b:?}",
            img.display(),
            i * 512
        );
    }
}

/// Opens with our reader and checks content (against qemu-img convert) and
/// block status (against qemu-img map).
pub fn check_read(img: &Path, dir: &Path) -> Arc<dyn ImageRead> {
    let ours = open_image(img);
    let expected = qemu_raw(img, dir);
    assert_eq!(ours.size() as usize, expected.len());
    for chunk in [1 << 20, 12345] {
        let got = read_all(&*ours, chunk);
        if let Some(i) = got.iter().zip(&expected).position(|(a, b)| a != b) {
            panic!(
                "{}: first difference at byte {i:#x} (chunk {chunk})",
                img.display()
            );
        }
    }
    assert_map_matches(img, &*ours);
    ours
}

/// `qemu-img check` reports no errors and no leaks.
pub fn assert_qemu_check_clean(img: &Path) {
    let (code, out) = run_status("qemu-img", &["check", "--output=json", p(img)]);
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let field = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    assert!(
        code == 0 && field("check-errors") == 0 && field("corruptions") == 0 && field("leaks") == 0,
        "{}: qemu-img check: exit {code}: {out}",
        img.display()
    );
}

pub fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

pub fn is_data(e: &Extent) -> bool {
    e.status == Status::Data
}

/// Asserts `got` equals `expected` padded with zeros to `got`'s length
/// (images are whole sectors), naming the first difference.
pub fn assert_same_padded(got: &[u8], expected: &[u8], what: &str) {
    assert_eq!(
        got.len(),
        expected.len().next_multiple_of(512),
        "{what}: size"
    );
    if let Some(i) = got[..expected.len()]
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
    {
        panic!("{what}: first difference at byte {i:#x}");
    }
    assert!(
        got[expected.len()..].iter().all(|&b| b == 0),
        "{what}: padding not zero"
    );
}
