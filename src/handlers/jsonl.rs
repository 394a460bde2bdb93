//! `jsonl`: appends one JSON object per event to a file, exactly once per key
//! even across crashes (see `FileSink` and the delivery engine).
//!
//! The file and its folder are created on the first delivery, readable by
//! their owner only unless the handler sets `mode`; a symbolic link at the
//! file's path is refused (spark never writes through a link it did not
//! create). Deliveries are staged (rendered in memory), then written with
//! one `write` and made durable with one `fdatasync` (several deliveries of
//! a run at once: group commit) before they are recorded as done. Cutting the file
//! back after a crash happens only if it is still the same file (device and
//! inode) the delivery wrote to. One process writes a file at a time: the
//! sink holds an exclusive lock (`flock`) on it while the process lives, so
//! that several workers on one host never interleave (and never cut back
//! each other's lines).

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use super::kind::{self, Checks};
use super::{CutError, Dispatch, FileSink, HandlerKind, Kind};
use crate::crashpoint;
use crate::files::{self, FileId};
use crate::store::FileMark;

/// A `jsonl` handler's options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// The file (relative to the config's folder).
    pub path: Option<Spanned<String>>,
    /// The mode of the file it creates ("0600").
    pub mode: Option<Spanned<String>>,
}

pub const KIND: Kind = Kind {
    name: "jsonl",
    per_event: false,
    fields: kind::fields_of::<Options>,
    config,
};

/// The options as the config writes them (`spark config`).
pub fn view(
    v: &mut serde_json::Value,
    path: &std::path::Path,
    mode: u32,
    absolute: kind::Absolute<'_>,
) {
    v["path"] = serde_json::json!(absolute(path));
    v["mode"] = serde_json::json!(format!("{mode:04o}"));
}

fn config(c: &mut dyn Checks, table: Spanned<DeValue<'_>>) -> Option<HandlerKind> {
    let raw: Options = kind::options(c, table)?;
    let mode = kind::mode(c, raw.mode.as_ref());
    let Some(path) = raw.path else {
        c.missing("path", "jsonl");
        return None;
    };
    if path.get_ref().trim().is_empty() {
        c.empty("path", path.span());
    }
    Some(HandlerKind::Jsonl {
        path: c.resolve(path.get_ref()),
        mode,
    })
}

pub struct JsonlSink {
    path: PathBuf,
    mode: u32,
    file: Option<(File, FileId)>,
    buffer: String,
}

impl JsonlSink {
    pub fn new(path: PathBuf, mode: u32) -> JsonlSink {
        JsonlSink {
            path,
            mode,
            file: None,
            buffer: String::new(),
        }
    }

    fn file(&mut self) -> io::Result<(&mut File, FileId)> {
        if self.file.is_none() {
            let file = files::open_append(&self.path, self.mode)
                .map_err(|e| self.io_context("opening", e))?;
            // One writer per file: its length is what makes the sink
            // exactly-once. Held for as long as this process lives.
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!(
                            "{} is being written by another spark process on this host; its deliveries wait for that process (or the next run)",
                            self.path.display()
                        ),
                    ));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(self.io_context("locking", e));
                }
            }
            let id = FileId::of(&file)?;
            self.file = Some((file, id));
        }
        match self.file.as_mut() {
            Some((f, id)) => Ok((f, *id)),
            None => Err(io::Error::other("file not open")),
        }
    }

    fn io_context(&self, action: &str, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("{action} {}: {e}", self.path.display()))
    }
}

impl FileSink for JsonlSink {
    fn position(&mut self) -> io::Result<FileMark> {
        let staged = self.buffer.len() as u64;
        let (file, id) = self.file()?;
        Ok(FileMark {
            offset: file.metadata()?.len() + staged,
            file: Some(id),
        })
    }

    fn truncate_to(&mut self, mark: &FileMark) -> Result<(), CutError> {
        let path = self.path.clone();
        let (file, id) = self.file()?;
        if let Some(wrote) = mark.file
            && wrote != id
        {
            return Err(CutError::OtherFile(format!(
                "{} is not the file this delivery wrote to (device:inode {wrote} then, {id} now: \
                 it was replaced, rotated or relinked since); nothing was cut. What the delivery \
                 wrote before is in the earlier file; its events go to the current file on the next attempt",
                path.display()
            )));
        }
        if file.metadata()?.len() > mark.offset {
            file.set_len(mark.offset)?;
            file.sync_data()?;
        }
        Ok(())
    }

    fn stage(&mut self, events: &[Dispatch<'_>]) -> io::Result<()> {
        self.file()?;
        for d in events {
            d.write_json(&mut self.buffer);
            self.buffer.push('\n');
        }
        Ok(())
    }

    fn staged(&self) -> usize {
        self.buffer.len()
    }

    fn write_staged(&mut self) -> io::Result<()> {
        let mut buffer = std::mem::take(&mut self.buffer);
        let result = (|| {
            let (file, _) = self.file()?;
            if crashpoint::is_next("jsonl-partial") {
                file.write_all(&buffer.as_bytes()[..buffer.len() / 2])?;
            }
            crashpoint::hit("jsonl-partial");
            file.write_all(buffer.as_bytes())?;
            crashpoint::hit("jsonl-written");
            file.sync_data()?;
            crashpoint::hit("jsonl-synced");
            Ok(())
        })();
        // Keep the buffer's memory for the next delivery, unless a big one
        // made it large.
        buffer.clear();
        if buffer.capacity() <= 8 << 20 {
            self.buffer = buffer;
        }
        result.map_err(|e| self.io_context("writing to", e))
    }
}
