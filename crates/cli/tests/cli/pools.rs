//! `pool create|ls|rm`.

use crate::common::*;

#[test]
fn pool_create_list_remove() {
    let e = Env::new();
    // The default pool exists from the start.
    assert_eq!(e.ok(&["pool", "ls"]), "rbd\n");
    e.ok(&["pool", "create", "p1"]);
    assert_eq!(e.ok(&["pool", "ls"]), "p1\nrbd\n");
    let long = e.ok(&["pool", "ls", "-l"]);
    assert!(long.starts_with("NAME"), "{long}");
    assert!(long.contains("p1"), "{long}");

    let j = e.json(&["pool", "ls"]);
    let pools = j.as_array().expect("array");
    assert_eq!(pools.len(), 2);
    for p in pools {
        for f in ["name", "id", "path", "images"] {
            assert!(p.get(f).is_some(), "pool ls json lacks {f}: {p}");
        }
    }

    e.ok(&["create", "p1/img", "--size", "1M"]);
    let j = e.json(&["pool", "ls"]);
    let p1 = j
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "p1")
        .unwrap()
        .clone();
    assert_eq!(p1["images"], 1);

    // Not empty: refused, nothing changes.
    let before = e.backup_of("p1");
    let err = e.fail(&["pool", "rm", "p1"], REFUSED);
    assert!(err.contains("not empty"), "{err}");
    assert!(err.contains("vdisk: hint:"), "{err}");
    assert_eq!(before, e.backup_of("p1"));

    let dir = std::path::PathBuf::from(p1["path"].as_str().expect("path"));
    assert!(dir.is_dir(), "{}", dir.display());
    e.ok(&["rm", "p1/img"]);
    e.ok(&["pool", "rm", "p1"]);
    assert_eq!(e.ok(&["pool", "ls"]), "rbd\n");
    // Its directory goes with it, and the name can be used again.
    assert!(!dir.exists(), "{} is left behind", dir.display());
    e.ok(&["pool", "create", "p1"]);
    e.ok(&["create", "p1/img", "--size", "1M"]);
    e.ok(&["info", "p1/img"]);
}

#[test]
fn pool_with_data_path() {
    let e = Env::new();
    let data = e.file("elsewhere");
    let data_s = path_str(&data);
    e.ok(&["pool", "create", "fast", "--path", &data_s]);
    let j = e.json(&["pool", "ls"]);
    let fast = j
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "fast")
        .unwrap()
        .clone();
    assert_eq!(fast["path"], data_s.as_str());
    let f = e.put_file("src.raw", &random_data(MIB, 1));
    e.ok(&["import", &f, "fast/img"]);
    assert_eq!(e.read_all("fast/img"), random_data(MIB, 1));
    let mut files = 0;
    for entry in walk(&data) {
        if entry.is_file() {
            files += 1;
        }
    }
    assert!(files > 0, "no data objects under the pool's --path");
    e.ok(&["rm", "fast/img"]);
    e.ok(&["pool", "rm", "fast"]);
    assert!(
        data.is_dir(),
        "a --path directory is the operator's to remove"
    );
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn pool_errors() {
    let e = Env::new();
    e.ok(&["pool", "create", "p1"]);
    let err = e.refused(&["pool", "create", "p1"], EXISTS, "already exists");
    assert!(err.contains("p1"));
    e.refused(&["pool", "rm", "nope"], NOT_FOUND, "does not exist");
    e.refused(&["ls", "nope"], NOT_FOUND, "pool \"nope\" does not exist");
    e.refused(&["create", "nope/img", "--size", "1M"], NOT_FOUND, "nope");
    e.refused(&["pool", "create", "a@b"], USAGE, "'@'");
    e.refused(&["pool", "create", ".."], USAGE, "..");
    e.refused(&["pool", "create", ""], USAGE, "empty");
    e.refused(&["pool", "create", &"p".repeat(300)], USAGE, "limit is 255");
    assert_eq!(e.ok(&["pool", "ls"]), "p1\nrbd\n");
}

#[test]
fn data_directory_in_use() {
    let e = Env::new();
    e.ok(&["ls"]);
    let lock = vdisk_storage::DirLock::acquire(&e.store_dir(), "test holder")
        .expect("lock io")
        .expect("lock free");
    let err = e.fail(&["ls"], BUSY);
    assert!(err.contains("test holder"), "{err}");
    assert!(err.contains("in use"), "{err}");
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    drop(lock);
    // Children forked while the lock was open have exec'd (and so closed
    // their inherited copy) once no spawn is in progress.
    drop(no_forks());
    e.ok(&["ls"]);
}

#[test]
fn data_directory_from_environment() {
    let e = Env::new();
    let vdisk = env!("CARGO_BIN_EXE_vdisk");
    let run = |envs: &[(&str, &std::path::Path)], remove: &[&str]| {
        let mut c = std::process::Command::new(vdisk);
        c.args(["pool", "create", "envpool"]);
        for k in remove {
            c.env_remove(k);
        }
        for (k, v) in envs {
            c.env(k, v);
        }
        output(&mut c)
    };
    let dir = e.file("from-env");
    let out = run(&[("VDISK_DIR", &dir)], &[]);
    assert_success(&["pool", "create"], &out);
    assert!(dir.join("meta.redb").exists());
    // Without --dir or VDISK_DIR, a non-root user's data lives under
    // $XDG_DATA_HOME (root's in /var/lib/vdisk, not touched by tests).
    let root =
        std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    if root.unwrap_or(true) {
        return;
    }
    let xdg = e.file("xdg");
    let out = run(&[("XDG_DATA_HOME", &xdg)], &["VDISK_DIR"]);
    assert_success(&["pool", "create"], &out);
    assert!(xdg.join("vdisk").join("meta.redb").exists());
}
