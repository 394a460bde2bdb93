//! `command`: runs a program (argv, no shell) once per event, with the event
//! JSON on stdin. Exit status 0 is success; any other status, a signal or the
//! timeout is a failure whose error carries the end of the program's stderr.
//!
//! The program runs in the config file's folder, in a process group of its
//! own (a timeout kills the whole group, and a Ctrl-C at the terminal reaches
//! spark, which finishes the call, rather than the program). It also gets the
//! event in the environment: `SPARK_EVENT_KEY` (use it as an idempotency
//! key), `SPARK_EVENT_GROUP`, `SPARK_HANDLER` and `SPARK_ATTEMPT`.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use wait_timeout::ChildExt;

use super::{DeliverEach, Dispatch};

/// How much of stderr a failure keeps (its end).
const STDERR_KEEP: usize = 2048;

pub struct CommandHandler {
    name: String,
    argv: Vec<String>,
    timeout: Duration,
    workdir: PathBuf,
}

impl CommandHandler {
    pub fn new(name: &str, argv: Vec<String>, timeout: Duration, workdir: PathBuf) -> Self {
        CommandHandler {
            name: name.to_owned(),
            argv,
            timeout,
            workdir,
        }
    }

    fn spawn(&self, dispatch: &Dispatch<'_>, attempt: u32) -> Result<Child, String> {
        let (program, args) = self
            .argv
            .split_first()
            .ok_or_else(|| "empty command".to_owned())?;
        Command::new(program)
            .args(args)
            .current_dir(&self.workdir)
            .env("SPARK_EVENT_KEY", &dispatch.event.key)
            .env("SPARK_EVENT_GROUP", &dispatch.event.group)
            .env("SPARK_HANDLER", &self.name)
            .env("SPARK_ATTEMPT", attempt.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run {program}: {e}"))
    }
}

/// Reads a pipe to its end in a thread, keeping its last `keep` bytes.
fn drain<R: Read + Send + 'static>(mut pipe: R, keep: usize) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut tail = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 2 * keep {
                tail.drain(..tail.len() - keep);
            }
        }
        if tail.len() > keep {
            tail.drain(..tail.len() - keep);
        }
        let _ = tx.send(tail);
    });
    rx
}

fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals the process group the
        // child leads (it was started with process_group(0)); no memory is touched.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl DeliverEach for CommandHandler {
    fn deliver(&mut self, dispatch: &Dispatch<'_>, attempt: u32) -> Result<(), String> {
        let mut child = self.spawn(dispatch, attempt)?;
        let stderr = child.stderr.take().map(|p| drain(p, STDERR_KEEP));
        // Write stdin from a thread: a program that does not read it must not
        // block spark once the pipe is full.
        let input = dispatch.to_json().into_bytes();
        let writer = child.stdin.take().map(|mut stdin| {
            thread::spawn(move || {
                let _ = stdin.write_all(&input);
                let _ = stdin.write_all(b"\n");
            })
        });
        let status = match child.wait_timeout(self.timeout) {
            Ok(Some(status)) => Ok(status),
            Ok(None) => {
                kill_group(&mut child);
                Err(format!(
                    "timed out after {}",
                    humantime::format_duration(self.timeout)
                ))
            }
            Err(e) => {
                kill_group(&mut child);
                Err(format!("waiting for the program failed: {e}"))
            }
        };
        if let Some(writer) = writer {
            let _ = writer.join();
        }
        // A grandchild may hold stderr open: do not wait for it forever.
        let err_tail = stderr
            .and_then(|rx| rx.recv_timeout(Duration::from_secs(1)).ok())
            .unwrap_or_default();
        let err_text = String::from_utf8_lossy(&err_tail).trim().to_owned();
        let with_stderr = |msg: String| {
            if err_text.is_empty() {
                msg
            } else {
                format!("{msg}; stderr: {err_text}")
            }
        };
        let status = status.map_err(with_stderr)?;
        if status.success() {
            return Ok(());
        }
        let how = match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => "failed".to_owned(),
        };
        Err(with_stderr(how))
    }
}
