//! `spark serve`: parses its options, prints the URL, runs the console
//! (`crate::console`) until SIGINT or SIGTERM.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;

use super::Cli;
use crate::config::Config;
use crate::console::{self, ServeOptions};
use crate::error::Error;
use crate::registry::Registry;

pub fn serve(
    cli: &Cli,
    config: &Config,
    registry: &Registry,
    listen: Option<&str>,
    read_only: bool,
    no_auth: bool,
) -> anyhow::Result<ExitCode> {
    let listen = match listen {
        None => config.serve.listen,
        Some(text) => crate::config::parse_listen(text).ok_or_else(|| {
            Error::Usage(format!(
                "--listen {text:?}: not an address and port such as \"{}\"",
                crate::config::DEFAULT_LISTEN
            ))
        })?,
    };
    crate::signals::install().context("installing signal handlers")?;
    let options = ServeOptions {
        listen,
        read_only,
        no_auth,
    };
    console::serve(config, registry, &options, |url| {
        let mut out = std::io::stdout();
        if cli.json {
            let line = serde_json::json!({
                "url": url,
                "user": config.serve.user,
                "read_only": read_only,
            });
            let _ = writeln!(out, "{line}");
        } else if !cli.quiet {
            let _ = writeln!(
                out,
                "spark console on {url} (user {}{})",
                config.serve.user,
                if read_only { ", read-only" } else { "" }
            );
        }
        let _ = out.flush();
    })?;
    Ok(ExitCode::SUCCESS)
}
