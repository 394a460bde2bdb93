//! `jsonl`: appends one JSON object per event to a file, exactly once per key
//! even across crashes (see `FileSink` and the delivery engine).
//!
//! The file and its folder are created on the first delivery. Each delivery
//! is written with one `write` and made durable with `fdatasync` before the
//! delivery is recorded as done.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;

use super::{Dispatch, FileSink};
use crate::crashpoint;

pub struct JsonlSink {
    path: PathBuf,
    file: Option<File>,
    buffer: String,
}

impl JsonlSink {
    pub fn new(path: PathBuf) -> JsonlSink {
        JsonlSink {
            path,
            file: None,
            buffer: String::new(),
        }
    }

    fn file(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let parent = self.path.parent().filter(|p| !p.as_os_str().is_empty());
            if let Some(dir) = parent {
                std::fs::create_dir_all(dir)
                    .map_err(|e| self.io_context("creating the folder of", e))?;
            }
            let existed = self.path.exists();
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| self.io_context("opening", e))?;
            if !existed {
                // Make the new file's name durable too.
                if let Some(dir) = parent {
                    let _ = File::open(dir).and_then(|d| d.sync_all());
                }
            }
            self.file = Some(file);
        }
        match self.file.as_mut() {
            Some(f) => Ok(f),
            None => Err(io::Error::other("file not open")),
        }
    }

    fn io_context(&self, action: &str, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("{action} {}: {e}", self.path.display()))
    }
}

impl FileSink for JsonlSink {
    fn file_len(&mut self) -> io::Result<u64> {
        Ok(self.file()?.metadata()?.len())
    }

    fn truncate_to(&mut self, len: u64) -> io::Result<()> {
        let file = self.file()?;
        if file.metadata()?.len() > len {
            file.set_len(len)?;
            file.sync_data()?;
        }
        Ok(())
    }

    fn append_all(&mut self, events: &[Dispatch<'_>]) -> io::Result<()> {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        for d in events {
            d.write_json(&mut buffer);
            buffer.push('\n');
        }
        let result = (|| {
            let file = self.file()?;
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
        self.buffer = buffer;
        result.map_err(|e| self.io_context("writing to", e))
    }
}
