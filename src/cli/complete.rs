//! Completions that know the config: handler and source names, read from
//! the config file the command line names (`--config`), else
//! `$SPARK_CONFIG`, else `./spark.toml`. Used by the dynamic completion
//! scripts (`source <(COMPLETE=bash spark)`); a config that cannot be read
//! completes nothing.

use std::ffi::OsStr;
use std::path::PathBuf;

use clap_complete::engine::CompletionCandidate;

/// The config file of the command line being completed.
fn config_file() -> PathBuf {
    let args: Vec<String> = std::env::args().collect();
    let mut found = None;
    for (i, arg) in args.iter().enumerate() {
        if arg == "--config" {
            found = args.get(i + 1).cloned();
        } else if let Some(path) = arg.strip_prefix("--config=") {
            found = Some(path.to_owned());
        }
    }
    found
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("SPARK_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("spark.toml"))
}

/// The `name`s of the config's `[[table]]` entries that start with `current`.
fn names(table: &str, current: &OsStr) -> Vec<CompletionCandidate> {
    let Ok(text) = std::fs::read_to_string(config_file()) else {
        return Vec::new();
    };
    let Ok(config) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let prefix = current.to_string_lossy();
    config
        .get(table)
        .and_then(|t| t.as_array())
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e.get("name").and_then(|n| n.as_str()))
                .filter(|n| n.starts_with(prefix.as_ref()))
                .map(CompletionCandidate::new)
                .collect()
        })
        .unwrap_or_default()
}

/// Handler names.
pub fn handlers(current: &OsStr) -> Vec<CompletionCandidate> {
    names("handlers", current)
}

/// Source names.
pub fn sources(current: &OsStr) -> Vec<CompletionCandidate> {
    names("sources", current)
}
