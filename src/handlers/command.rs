//! `command`: runs a program (argv, no shell) once per event, with the event
//! JSON on stdin. Exit status 0 is success; any other status, a signal or the
//! timeout is a failure whose error carries the end of the program's stderr.
//!
//! The timeout is a deadline for the whole call: writing the event to the
//! program's stdin, waiting for it, reading its stderr. The program runs in
//! the config file's folder, in a process group of its own: at the deadline
//! the whole group is killed (a background child holding stdin open cannot
//! hold spark), and a Ctrl-C at the terminal reaches spark, which finishes
//! the call, rather than the program.
//!
//! Environment: spark's own, less the secrets spark read for the config
//! (`*_env` variables, `${VAR}`s whose names look secret), plus the
//! handler's `env` table, plus the event: `SPARK_EVENT_KEY` (use it as an
//! idempotency key), `SPARK_EVENT_GROUP`, `SPARK_HANDLER`, `SPARK_ATTEMPT`.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use wait_timeout::ChildExt;

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use super::kind::{self, Checks};
use super::{DeliverEach, Dispatch, HandlerKind, Kind, Outcome};

/// A `command` handler's options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// The program and its arguments (no shell).
    pub command: Option<Spanned<Vec<String>>>,
    pub timeout: Option<Spanned<String>>,
    /// Variables added to the program's environment.
    pub env: Option<Spanned<BTreeMap<String, String>>>,
}

pub const KIND: Kind = Kind {
    name: "command",
    per_event: true,
    fields: kind::fields_of::<Options>,
    config,
};

/// The options as the config writes them (`spark config`).
pub fn view(
    v: &mut serde_json::Value,
    argv: &[String],
    timeout: Duration,
    env: &[(String, String)],
    absolute: kind::Absolute<'_>,
) {
    let mut argv = argv.to_vec();
    if argv.first().is_some_and(|p| p.contains('/')) {
        argv[0] = absolute(std::path::Path::new(&argv[0]));
    }
    v["command"] = serde_json::json!(argv);
    v["timeout"] = serde_json::json!(kind::duration_text(timeout));
    if !env.is_empty() {
        v["env"] = serde_json::json!(env.iter().cloned().collect::<BTreeMap<_, _>>());
    }
}

fn config(c: &mut dyn Checks, table: Spanned<DeValue<'_>>) -> Option<HandlerKind> {
    let raw: Options = kind::options(c, table)?;
    let timeout = kind::timeout(c, raw.timeout.as_ref());
    let env: Vec<(String, String)> = match raw.env {
        None => Vec::new(),
        Some(env) => {
            let span = env.span();
            let env = env.into_inner();
            if let Some(bad) = env.keys().find(|k| k.is_empty() || k.contains(['=', '\0'])) {
                c.bad_value(
                    "env",
                    span,
                    format!("{bad:?} is not an environment variable name"),
                );
            }
            env.into_iter().collect()
        }
    };
    let Some(argv) = raw.command else {
        c.missing("command", "command");
        return None;
    };
    if argv.get_ref().first().is_none_or(|p| p.is_empty()) {
        c.empty("command", argv.span());
        return None;
    }
    let mut argv = argv.into_inner();
    // A program named by a relative path is relative to the config.
    if argv[0].contains('/') && std::path::Path::new(&argv[0]).is_relative() {
        argv[0] = c.resolve(&argv[0]).to_string_lossy().into_owned();
    }
    Some(HandlerKind::Command {
        argv,
        timeout,
        workdir: c.dir(),
        env,
    })
}

/// How much of stderr a failure keeps (its end).
const STDERR_KEEP: usize = 2048;

pub struct CommandHandler {
    name: String,
    argv: Vec<String>,
    timeout: Duration,
    workdir: PathBuf,
    env: Vec<(String, String)>,
    withheld: Vec<String>,
}

impl CommandHandler {
    pub fn new(
        name: &str,
        argv: Vec<String>,
        timeout: Duration,
        workdir: PathBuf,
        env: Vec<(String, String)>,
        withheld: Vec<String>,
    ) -> Self {
        CommandHandler {
            name: name.to_owned(),
            argv,
            timeout,
            workdir,
            env,
            withheld,
        }
    }

    fn spawn(&self, dispatch: &Dispatch<'_>, attempt: u32) -> Result<Child, String> {
        let (program, args) = self
            .argv
            .split_first()
            .ok_or_else(|| "empty command".to_owned())?;
        let mut command = Command::new(program);
        for var in &self.withheld {
            command.env_remove(var);
        }
        command
            .args(args)
            .current_dir(&self.workdir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
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

/// How writing the event to the program's stdin ended.
enum Written {
    /// All of it, or the program closed its stdin (it wants no more).
    Done,
    /// The deadline came first.
    TimedOut,
}

/// Writes `input` to `stdin` without blocking past `deadline`, then closes it.
fn write_until(stdin: ChildStdin, input: &[u8], deadline: Instant) -> io::Result<Written> {
    let fd = stdin.as_raw_fd();
    // SAFETY: fcntl on a pipe descriptor this process owns (`stdin` keeps it
    // open for the whole function); no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let mut pipe = &stdin;
    let mut rest = input;
    while !rest.is_empty() {
        match pipe.write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(Written::Done),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(Written::TimedOut);
                }
                let mut poll = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
                // SAFETY: one valid pollfd on the stack, count 1.
                unsafe {
                    libc::poll(&mut poll, 1, ms);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Written::Done)
}

impl DeliverEach for CommandHandler {
    fn deliver(&self, dispatch: &Dispatch<'_>, attempt: u32) -> Outcome {
        self.call(dispatch, attempt).map_err(Into::into)
    }
}

impl CommandHandler {
    fn call(&self, dispatch: &Dispatch<'_>, attempt: u32) -> Result<(), String> {
        let deadline = Instant::now() + self.timeout;
        let mut child = self.spawn(dispatch, attempt)?;
        let stderr = child.stderr.take().map(|p| drain(p, STDERR_KEEP));
        let mut input = dispatch.to_json().into_bytes();
        input.push(b'\n');
        let written = match child.stdin.take() {
            Some(stdin) => write_until(stdin, &input, deadline),
            None => Ok(Written::Done),
        };
        let timed_out = || {
            format!(
                "timed out after {}",
                humantime::format_duration(self.timeout)
            )
        };
        let status = match written {
            Ok(Written::TimedOut) => {
                kill_group(&mut child);
                Err(format!(
                    "{} (the program did not read its input)",
                    timed_out()
                ))
            }
            Err(e) => {
                kill_group(&mut child);
                Err(format!("writing the event to the program failed: {e}"))
            }
            Ok(Written::Done) => {
                match child.wait_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(Some(status)) => Ok(status),
                    Ok(None) => {
                        kill_group(&mut child);
                        Err(timed_out())
                    }
                    Err(e) => {
                        kill_group(&mut child);
                        Err(format!("waiting for the program failed: {e}"))
                    }
                }
            }
        };
        // A background child may hold stderr open: wait for it no longer
        // than the deadline (and a second at most).
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        let err_tail = stderr
            .and_then(|rx| rx.recv_timeout(wait).ok())
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
