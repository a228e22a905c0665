//! Integration tests of the `vdisk` binary: every verb's happy path, and bad
//! input that must fail with a clear error, the documented exit code, and
//! an unchanged pool (`meta backup` before and after is byte-identical).
//! Each test runs in its own temporary data directory.

#[path = "cli/common.rs"]
mod common;

#[path = "cli/bad_input.rs"]
mod bad_input;
#[path = "cli/bench.rs"]
mod bench;
#[path = "cli/clones.rs"]
mod clones;
#[path = "cli/daemon.rs"]
mod daemon;
#[path = "cli/diff_io.rs"]
mod diff_io;
#[path = "cli/gpt.rs"]
mod gpt;
#[path = "cli/images.rs"]
mod images;
#[path = "cli/meta.rs"]
mod meta;
#[path = "cli/pools.rs"]
mod pools;
#[path = "cli/reports.rs"]
mod reports;
#[path = "cli/schedules.rs"]
mod schedules;
#[path = "cli/serve.rs"]
mod serve;
#[path = "cli/snaps.rs"]
mod snaps;
#[path = "cli/transfer.rs"]
mod transfer;
