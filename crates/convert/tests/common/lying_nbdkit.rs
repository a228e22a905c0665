//! The lying NBD destination of incident 1, shared by the convert crate's
//! tests and the CLI's (`#[path]`-included by both): arguments for
//! `nbdkit eval` serving `file`, writing through but answering WRITE_ZEROES,
//! TRIM, fast zero and FLUSH with success without touching the file.

use std::path::Path;

/// Everything after `nbdkit -f --exit-with-parent -U SOCKET`.
pub fn eval_args(file: &Path, size: u64) -> Vec<String> {
    let f = file.display();
    let mut args = vec![
        "eval".to_string(),
        format!("get_size=echo {size}"),
        format!("pread=dd if={f} skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none"),
        format!("pwrite=dd of={f} seek=$4 conv=notrunc oflag=seek_bytes status=none"),
    ];
    args.extend(
        [
            "can_write=exit 0",
            "can_zero=exit 0",
            "zero=exit 0",
            "can_fast_zero=exit 0",
            "can_trim=exit 0",
            "trim=exit 0",
            "can_flush=exit 0",
            "flush=exit 0",
        ]
        .map(String::from),
    );
    args
}
