//! `spark serve`: the operator's web console. A thin layer: the server
//! here (threads, shutdown), the HTTP edge (`http`: auth, CSRF, forms),
//! routes that parse a request and call `crate::ops` or a `Reader`
//! (`routes`), and pages rendered with maud, which escapes every value
//! (`pages`). Every page answers `Accept: application/json` with the same
//! data. No SQL here.
//!
//! Not here: what an action does (`crate::ops`, `crate::pipeline::retry`,
//! the same code as the CLI's).

mod http;
mod pages;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::registry::Registry;

pub use http::event_url;

/// How `serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// No actions: forms are not shown and every POST is 403.
    pub read_only: bool,
    /// No password asked (loopback addresses only).
    pub no_auth: bool,
}

/// Requests served at once.
const THREADS: usize = 4;

/// How long an action waits for SQLite's run lock before answering 409.
const ACTION_WAIT: Duration = Duration::from_secs(5);

/// The console's state, shared by the threads serving requests.
struct Console<'a> {
    config: &'a Config,
    registry: &'a Registry,
    gate: http::Gate,
    read_only: bool,
}

/// The password `serve` asks for: from `[serve] password_env`. Exit 2
/// when there is none, unless `--no-auth` on a loopback address.
fn password(config: &Config, options: &ServeOptions) -> Result<Option<String>> {
    if options.no_auth {
        if !options.listen.ip().is_loopback() {
            return Err(Error::Usage(format!(
                "serve --no-auth: {} is not a loopback address; a console open to the network needs a password ([serve] password_env)",
                options.listen
            )));
        }
        return Ok(None);
    }
    let Some(var) = &config.serve.password_env else {
        return Err(Error::Usage(format!(
            "serve: no password: set [serve] password_env in {} to the environment variable holding it \
             (or pass --no-auth to serve on a loopback address without one)",
            config.path.display()
        )));
    };
    match std::env::var(var) {
        Ok(p) if !p.is_empty() => Ok(Some(p)),
        _ => Err(Error::Usage(format!(
            "serve: [serve] password_env names {var}, which is not set (or empty)"
        ))),
    }
}

/// Serves the console until SIGINT or SIGTERM; `ready` gets the URL once
/// it listens.
pub fn serve(
    config: &Config,
    registry: &Registry,
    options: &ServeOptions,
    ready: impl FnOnce(&str),
) -> Result<()> {
    let password = password(config, options)?;
    let gate = http::Gate::new(&config.serve.user, password.as_deref()).map_err(|e| {
        Error::Usage(format!(
            "serve: cannot read /dev/urandom for a token key: {e}"
        ))
    })?;
    let server = tiny_http::Server::http(options.listen)
        .map_err(|e| Error::Usage(format!("serve: cannot listen on {}: {e}", options.listen)))?;
    let addr = server.server_addr().to_ip().unwrap_or(options.listen);
    ready(&format!("http://{addr}/"));
    let console = Console {
        config,
        registry,
        gate,
        read_only: options.read_only,
    };
    let server = Arc::new(server);
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            let server = Arc::clone(&server);
            let console = &console;
            scope.spawn(move || {
                while crate::signals::requested().is_none() {
                    match server.recv_timeout(Duration::from_millis(200)) {
                        Ok(Some(request)) => console.answer(request),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!("console: receiving a request: {e}");
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            });
        }
    });
    Ok(())
}

impl Console<'_> {
    /// Answers one request, logging it at info level.
    fn answer(&self, mut request: tiny_http::Request) {
        let started = Instant::now();
        let method = request.method().to_string();
        let url = request.url().to_owned();
        let reply = routes::route(self, &mut request);
        let status = reply.status;
        let response =
            tiny_http::Response::from_data(reply.body.into_bytes()).with_status_code(status);
        let mut response = response;
        for h in http::common_headers(reply.content_type) {
            response.add_header(h);
        }
        for h in reply.headers {
            response.add_header(h);
        }
        if let Err(e) = request.respond(response) {
            tracing::debug!("console: answering {method}: {e}");
        }
        tracing::info!(
            method = method.as_str(),
            path = crate::escape::escape(url.split('?').next().unwrap_or("")).as_ref(),
            status,
            ms = started.elapsed().as_millis() as u64,
            "console request"
        );
    }
}

/// An answer: status, type, body and extra headers.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
    headers: Vec<tiny_http::Header>,
}
