//! Progress bars for long work, on standard error, only when it is a
//! terminal and `--no-progress` was not given.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vdisk_engine::Progress;

/// A [`Progress`] shown as an indicatif bar (or nothing when disabled).
/// Each `start` begins a new bar: one command may run several phases
/// (e.g. `snap purge` reclaims once per snapshot).
#[derive(Debug)]
pub struct Bar {
    enabled: bool,
    current: Mutex<Option<ProgressBar>>,
}

impl Bar {
    /// A bar that shows when stderr is a terminal, unless `no_progress`.
    pub fn new(no_progress: bool) -> Self {
        Bar {
            enabled: !no_progress && std::io::stderr().is_terminal(),
            current: Mutex::new(None),
        }
    }

    fn bar(&self) -> Option<ProgressBar> {
        self.current.lock().ok().and_then(|g| g.clone())
    }
}

/// Work measured in bytes (the rest counts objects).
fn is_bytes(what: &str) -> bool {
    matches!(what, "import" | "export" | "copy" | "compare")
}

fn style(what: &str, total: u64) -> ProgressStyle {
    let template = match (is_bytes(what), total) {
        (true, 0) => "{spinner} {msg:>8}  {bytes} {binary_bytes_per_sec} {elapsed}",
        (true, _) => {
            "{msg:>8} [{bar:30}] {percent:>3}%  {bytes}/{total_bytes}  {binary_bytes_per_sec}  ETA {eta}"
        }
        (false, 0) => "{spinner} {msg:>8}  {pos} {elapsed}",
        (false, _) => "{msg:>8} [{bar:30}] {percent:>3}%  {pos}/{len} objects  ETA {eta}",
    };
    ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl Progress for Bar {
    fn start(&self, what: &str, total: u64) {
        if !self.enabled {
            return;
        }
        let bar = ProgressBar::new(total);
        bar.set_style(style(what, total));
        bar.set_message(what.to_string());
        if total == 0 {
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        if let Ok(mut g) = self.current.lock() {
            if let Some(old) = g.replace(bar) {
                old.finish_and_clear();
            }
        }
    }

    fn inc(&self, n: u64) {
        if let Some(b) = self.bar() {
            b.inc(n);
        }
    }

    fn finish(&self) {
        if let Ok(mut g) = self.current.lock() {
            if let Some(b) = g.take() {
                b.finish_and_clear();
            }
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // A failed command never calls `finish`: do not leave a bar behind.
        self.finish();
    }
}

/// The progress of one command: a bar on this terminal, or (in the
/// daemon) the progress of the job running the command.
pub enum Prog {
    Bar(Bar),
    Shared(Arc<dyn Progress + Send + Sync>),
}

impl std::fmt::Debug for Prog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Prog::Bar(b) => b.fmt(f),
            Prog::Shared(_) => f.write_str("Prog::Shared"),
        }
    }
}

impl Progress for Prog {
    fn start(&self, what: &str, total: u64) {
        match self {
            Prog::Bar(b) => b.start(what, total),
            Prog::Shared(p) => p.start(what, total),
        }
    }

    fn inc(&self, n: u64) {
        match self {
            Prog::Bar(b) => b.inc(n),
            Prog::Shared(p) => p.inc(n),
        }
    }

    fn finish(&self) {
        match self {
            Prog::Bar(b) => b.finish(),
            Prog::Shared(p) => p.finish(),
        }
    }
}
