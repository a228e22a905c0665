//! `bench`.

use crate::common::*;

#[test]
fn bench_write_read_readwrite() {
    let e = Env::new();
    e.ok(&["create", "img", "--size", "4M", "--order", "20"]);
    let out = e.ok(&[
        "bench",
        "img",
        "--io-type",
        "write",
        "--io-size",
        "16K",
        "--io-threads",
        "4",
        "--io-total",
        "2M",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("bench"), "{out}");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["SEC", "OPS", "OPS/SEC", "BYTES/SEC"]
    );
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("elapsed:") && last.contains("ops: 128"),
        "{out}"
    );
    // Sequential writes of random (non-zero) data: 2 MiB stored, flushed.
    let j = e.json(&["du", "img"]);
    assert_eq!(j["images"][0]["used"], 2 * MIB as u64);
    let data = e.read_all("img");
    assert!(data[..2 * MIB]
        .chunks(512)
        .all(|s| s.iter().any(|b| *b != 0)));

    let j = e.json(&[
        "bench",
        "img",
        "--io-type",
        "readwrite",
        "--io-pattern",
        "rand",
        "--rw-mix-read",
        "70",
        "--io-total",
        "1M",
        "--io-threads",
        "2",
    ]);
    for f in [
        "elapsed_s",
        "ops",
        "ops_per_sec",
        "bytes_per_sec",
        "io_size",
        "io_threads",
        "io_type",
        "io_pattern",
    ] {
        assert!(j.get(f).is_some(), "bench json lacks {f}: {j}");
    }
    assert_eq!(j["ops"], 256);
    assert_eq!(j["io_size"], 4096);
    assert_eq!(j["io_threads"], 2);
    assert_eq!(j["io_type"], "readwrite");
    assert_eq!(j["io_pattern"], "rand");

    e.ok(&["snap", "create", "img@s"]);
    let j = e.json(&["bench", "img@s", "--io-type", "read", "--io-total", "512K"]);
    assert_eq!(j["ops"], 128);
    assert_eq!(j["io_threads"], 16);
}
