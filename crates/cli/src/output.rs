//! Printing: plain tables for people, JSON for programs. Everything goes
//! through [`Out`] (and warnings through [`Sink`]), which report a closed
//! standard output as an error instead of panicking the way `println!`
//! does, and which capture the output instead when the daemon runs the
//! command for a client (the client prints it).

use crate::args::Format;
use crate::error::{CliError, Result};
use serde::Serialize;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Where text goes.
#[derive(Debug, Clone)]
pub enum Sink {
    /// The process's standard output.
    Stdout,
    /// The process's standard error.
    Stderr,
    /// A buffer (the daemon runs the command for a client).
    Buffer(Arc<Mutex<Vec<u8>>>),
}

impl Sink {
    /// A new, empty buffer.
    pub fn buffer() -> Self {
        Sink::Buffer(Arc::new(Mutex::new(Vec::new())))
    }

    /// Writes `bytes` whole.
    pub fn write(&self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout => {
                let mut o = std::io::stdout().lock();
                o.write_all(bytes).and_then(|_| o.flush())
            }
            Sink::Stderr => {
                let mut o = std::io::stderr().lock();
                o.write_all(bytes).and_then(|_| o.flush())
            }
            Sink::Buffer(b) => {
                b.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    /// What a buffer holds, as text (empty for the standard streams).
    pub fn take_string(&self) -> String {
        match self {
            Sink::Buffer(b) => {
                let bytes = std::mem::take(&mut *b.lock().unwrap_or_else(|e| e.into_inner()));
                String::from_utf8(bytes)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
            }
            _ => String::new(),
        }
    }
}

/// Where results go (standard output, or a buffer), and in which format.
#[derive(Debug, Clone)]
pub struct Out {
    pub format: Format,
    pub sink: Sink,
}

impl Out {
    pub fn new(format: Format, sink: Sink) -> Self {
        Out { format, sink }
    }

    pub fn is_json(&self) -> bool {
        self.format == Format::Json
    }

    /// Writes `text` as is.
    pub fn text(&self, text: &str) -> Result<()> {
        self.sink.write(text.as_bytes()).map_err(|e| CliError {
            broken_pipe: e.kind() == std::io::ErrorKind::BrokenPipe,
            ..CliError::io("writing standard output", e)
        })
    }

    /// Writes one line.
    pub fn line(&self, line: impl AsRef<str>) -> Result<()> {
        let mut s = String::from(line.as_ref());
        s.push('\n');
        self.text(&s)
    }

    /// Writes `value` as pretty JSON and a newline.
    pub fn json<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let mut s = to_json(value)?;
        s.push('\n');
        self.text(&s)
    }
}

/// `value` as pretty-printed JSON.
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value)
        .map_err(|e| CliError::new(vdisk_engine::ErrorKind::Io, format!("encoding JSON: {e}")))
}

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A text table like rbd's: a header row, columns padded to their widest
/// cell, two spaces apart, no trailing blanks.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    aligns: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Table {
            headers: columns.iter().map(|c| c.0).collect(),
            aligns: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for cells in std::iter::once(&header).chain(self.rows.iter()) {
            let mut line = String::new();
            for (i, (width, align)) in widths.iter().zip(&self.aligns).enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = width.saturating_sub(c.chars().count());
                if i > 0 {
                    line.push_str("  ");
                }
                match align {
                    Align::Left => {
                        line.push_str(c);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(c);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns() {
        let mut t = Table::new(&[("NAME", Align::Left), ("SIZE", Align::Right)]);
        t.row(vec!["a".into(), "1 GiB".into()]);
        t.row(vec!["longer".into(), "".into()]);
        assert_eq!(t.render(), "NAME     SIZE\na       1 GiB\nlonger\n");
    }
}
