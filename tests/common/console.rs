//! A builder over `spark serve` for console tests: starts the real binary
//! in a case's folder on a free port, reads the URL it prints, and speaks
//! HTTP to it (ureq, statuses as they are); stops it with SIGTERM.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};

use super::{Backend, Case};

/// The console's password in tests.
pub const PASSWORD: &str = "correct-horse-battery-staple";

/// A running `spark serve`.
#[must_use]
pub struct Console {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub base: String,
    agent: ureq::Agent,
    /// (user, password) sent, if any.
    pub auth: Option<(String, String)>,
}

/// An answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    #[track_caller]
    pub fn status(self, code: u16) -> Answer {
        assert_eq!(self.status, code, "status; body:\n{}", self.body);
        self
    }
}

/// Starts `spark serve ARGS` in `case`'s folder with `env` set (the
/// console's password in `SPARK_CONSOLE_PASSWORD` unless `env` says
/// otherwise). Panics with its stderr if it does not start.
pub fn start(case: &Case, args: &[&str], env: &[(&str, &str)]) -> Console {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("spark"));
    cmd.current_dir(case.path(""))
        .env_remove("SPARK_CONFIG")
        .env_remove("RUST_LOG")
        .env("SPARK_CONSOLE_PASSWORD", PASSWORD)
        .args(["--config", "spark.toml", "serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn spark serve");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read serve's first line");
    if line.is_empty() {
        let mut err = String::new();
        let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
        let status = child.wait().expect("wait");
        panic!("spark serve did not start ({status}): {err}");
    }
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .trim_end_matches('/')
        .to_owned();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    Console {
        child: Some(child),
        base: url,
        agent,
        auth: Some(("spark".into(), PASSWORD.into())),
    }
}

/// A config line block for the console: `[serve]` with the test password.
pub const SERVE_SECTION: &str = "\n[serve]\npassword_env = \"SPARK_CONSOLE_PASSWORD\"\n";

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn answer(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut response = result.expect("HTTP request");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .unwrap_or_default();
    Answer {
        status,
        headers,
        body,
    }
}

impl Console {
    /// The same console asked with other credentials (`None`: none).
    pub fn with_user(mut self, auth: Option<(&str, &str)>) -> Console {
        self.auth = auth.map(|(u, p)| (u.to_owned(), p.to_owned()));
        self
    }

    /// GET `path` with extra `headers`.
    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        if let Some((u, p)) = &self.auth {
            request = request.header("Authorization", basic(u, p));
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        answer(request.call())
    }

    pub fn get(&self, path: &str) -> Answer {
        self.get_with(path, &[])
    }

    /// GET `path` as JSON (status 200 expected).
    #[track_caller]
    pub fn json(&self, path: &str) -> serde_json::Value {
        self.get_with(path, &[("Accept", "application/json")])
            .status(200)
            .json()
    }

    /// The form token, from the overview's JSON.
    pub fn token(&self) -> String {
        self.json("/")["csrf_token"]
            .as_str()
            .expect("a csrf_token (not read-only)")
            .to_owned()
    }

    /// POST a form to `path` with extra `headers`.
    pub fn post_with(&self, path: &str, form: &[(&str, &str)], headers: &[(&str, &str)]) -> Answer {
        let mut request = self.agent.post(format!("{}{path}", self.base));
        if let Some((u, p)) = &self.auth {
            request = request.header("Authorization", basic(u, p));
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        answer(request.send_form(form.iter().copied()))
    }

    /// POST a form with the right token, as the console's own page would.
    pub fn post(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        let token = self.token();
        let mut form = form.to_vec();
        form.push(("csrf", &token));
        self.post_with(
            path,
            &form,
            &[
                ("Origin", &self.base),
                ("Sec-Fetch-Site", "same-origin"),
                ("Accept", "application/json"),
            ],
        )
    }

    /// Sends SIGTERM and returns the exit code and stderr.
    pub fn stop(mut self) -> (Option<i32>, String) {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().expect("wait");
        let mut err = String::new();
        let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
        (status.code(), err)
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Items whose names are the event ids: hostile ones among them.
pub const ITEMS: &str = "
CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT NOT NULL, note TEXT NOT NULL);
INSERT INTO item VALUES
 (1, 'ok', 'fine'),
 (2, '<script>alert(1)</script>', '\"><img src=x onerror=alert(2)>'),
 (3, 'a/b c', 'slash and space'),
 (4, 'x/../y', 'dots'),
 (5, '%2F', 'percent'),
 (6, 'é ü 日本', 'non-ASCII'),
 (7, 'q?x=1#f', 'query and fragment');
";

/// Every item is an event `item_<name>`; `flaky` fails (dead at once)
/// until the file `ok` exists, saying so on stderr with markup in it.
pub fn config(extra: &str) -> String {
    format!(
        r#"
[database]
path = "app.sqlite3"

[delivery]
max_attempts = 1
{SERVE_SECTION}
[[sources]]
name = "items"
table = "item"
group = "item"
id = "name"

[[handlers]]
name = "flaky"
group = "^item"
kind = "command"
command = ["sh", "-c", "test -f ok || {{ echo 'boom <b onmouseover=alert(3)>x</b>' >&2; exit 1; }}"]
{extra}"#
    )
}

/// A case whose every item's delivery to `flaky` is dead.
pub fn dead_case(backend: Backend) -> Case {
    let case = Case::on(backend).db(ITEMS).config(&config(""));
    case.run(&["process-sources"]).status(1);
    case
}
