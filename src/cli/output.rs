//! Printing helpers shared by the commands. Everything the CLI prints goes
//! through here, so that two rules hold everywhere: secrets are masked
//! (`crate::redact`), and text from the database cannot drive the terminal
//! (`crate::escape`: table cells and single values are escaped whole; lines
//! keep their line breaks, every other control character is escaped).
//! Writing to stdout returns its error, so that a closed pipe (`spark events
//! | head`) ends the command quietly instead of as a crash.

use std::io::{self, Write};

use crate::escape::{escape, escape_lines};
use crate::redact::redact;

/// Writes `text` and a line break to stdout.
pub fn out_line(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(escape_lines(&redact(text)).as_bytes())?;
    out.write_all(b"\n")
}

/// Writes a line to stdout: `outln!("{x} ...")?`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::out_line(&format!($($arg)*))
    };
}
pub(crate) use outln;

/// Writes `text` and a line break to stderr (errors there are ignored: there
/// is nowhere left to report them).
pub fn err_line(text: &str) {
    let mut err = io::stderr().lock();
    let _ = err.write_all(escape_lines(&redact(text)).as_bytes());
    let _ = err.write_all(b"\n");
}

/// Writes a line to stderr: `errln!("warning: {w}")`.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::output::err_line(&format!($($arg)*))
    };
}
pub(crate) use errln;

/// One value from the database (a key, a group, an error), made a safe
/// part of a line: control characters escaped, line breaks included.
pub fn field(text: &str) -> String {
    escape(text).into_owned()
}

/// Prints `value` as pretty JSON on stdout (JSON escapes control
/// characters itself; secrets are masked).
pub fn stdout_json(value: &serde_json::Value) -> io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
    let mut out = io::stdout().lock();
    out.write_all(redact(&text).as_bytes())?;
    out.write_all(b"\n")
}

/// Prints rows as columns aligned on the widest cell; the last column is
/// not padded. Every cell is escaped.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| field(&redact(c))).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = io::stdout().lock();
    let mut line = |cells: &[&str]| -> io::Result<()> {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(header)?;
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells)?;
    }
    Ok(())
}

/// `text` cut to `max` characters, with an ellipsis when cut, on one line
/// (control characters escaped first, so that none is cut in half).
pub fn clip(text: &str, max: usize) -> String {
    // Masked before it is cut: a cut through a secret would show its start.
    crate::escape::shorten(field(&redact(text)), max)
}

/// Whether an error is stdout having been closed by its reader.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// A `Write` for log lines on stderr: each line (tracing writes one event
/// per call) with secrets masked and control characters escaped: in text
/// lines as `escape` does (values from the database arrive quoted, as
/// `&str` fields), in JSON lines the JSON way (`\u202e`), so that every JSON
/// line stays JSON.
pub struct LogWriter {
    pub json: bool,
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let line = text.strip_suffix('\n').unwrap_or(&text);
        let mut safe = if self.json {
            crate::escape::escape_json_extra(&redact(line)).into_owned()
        } else {
            escape(&redact(line)).into_owned()
        };
        safe.push('\n');
        io::stderr().lock().write_all(safe.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cut_never_shows_the_start_of_a_secret() {
        crate::redact::register("clip-secret-0123456789");
        let text = format!("{}clip-secret-0123456789 and more", "x".repeat(70));
        let clipped = super::clip(&text, 80);
        assert!(!clipped.contains("clip-sec"), "{clipped}");
        assert!(clipped.contains("***"), "{clipped}");
    }
}
