//! `spark man`: the manual. Printed, it is one page, spark(1), that lists
//! every command with its options, and has EXIT STATUS, ENVIRONMENT, FILES
//! and EXAMPLES; with `--dir`, that page plus one per command
//! (spark-process-sources(1), ...), which the first one refers to.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, italic, roman};

use super::Cli;

const EXIT_STATUS: &[(&str, &str)] = &[
    (
        "0",
        "Success: everything due was delivered (or there was nothing to do).",
    ),
    (
        "1",
        "The run finished, but something needs attention: a delivery failed (kept and retried, or dead after max_attempts), deliveries were left waiting, an at-most-once delivery was interrupted by an earlier crash, deliveries are owed to a handler no longer in the config, or a record could not be read.",
    ),
    (
        "2",
        "Unusable input, nothing written: a bad config, a missing table or column, a bad argument, an unreachable database.",
    ),
    (
        "3",
        "Another run holds the run lock on this database; this run did nothing (silent under -q).",
    ),
    (
        "130, 143",
        "Stopped by SIGINT or SIGTERM after recording the calls in flight (watch exits 0).",
    ),
];

const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "SPARK_CONFIG",
        "The config file when --config is not given (default: ./spark.toml).",
    ),
    ("RUST_LOG", "Log filter, overriding -v (e.g. spark=debug)."),
    (
        "PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE, PGSSLROOTCERT, PGAPPNAME",
        "libpq's variables, for what [database] url leaves out.",
    ),
    (
        "COMPLETE",
        "COMPLETE=bash spark (or zsh, fish, elvish, powershell) prints a completion script that completes handler and source names from the config.",
    ),
    (
        "${VAR}",
        "Any variable a config value names as ${VAR}, and those the *_env keys name; their values are never printed.",
    ),
];

const FILES: &[(&str, &str)] = &[
    ("spark.toml", "The config (see the README for every key)."),
    (
        "DATABASE-spark.lock",
        "Beside an SQLite database: the run lock one run (or one watch) holds.",
    ),
    (
        "--metrics-file PATH",
        "The run's figures in Prometheus text format, written whole (a temporary file renamed).",
    ),
];

const EXAMPLES: &[(&str, &str)] = &[
    (
        "spark --config spark.example.toml process-sources",
        "The main job on the bundled demo data.",
    ),
    (
        "*/5 * * * * spark /usr/local/bin/spark -q process-sources --metrics-file /var/lib/node_exporter/textfile_collector/spark.prom",
        "A cron line (for /etc/cron.d/): quiet unless something needs attention.",
    ),
    (
        "spark watch --interval 30s",
        "As a service (systemd Type=simple): handles a row within a moment of its commit.",
    ),
    (
        "spark deliveries --state dead; spark show KEY; spark retry --dead",
        "What failed for good, one event's whole story, and another try.",
    ),
    (
        "spark replay --handler slack --since 2026-03-01 --dry-run",
        "What a handler added later would get of the events already seen.",
    ),
];

fn section(roff: &mut Roff, title: &str, items: &[(&str, &str)]) {
    roff.control("SH", [title]);
    for (term, text) in items {
        roff.control("TP", []);
        roff.text([bold(*term)]);
        roff.text([roman(*text)]);
    }
}

/// The page for spark itself: `refer` says whether the per-command pages
/// are installed beside it.
fn main_page(refer: bool) -> Vec<u8> {
    let command = Cli::command();
    let man = Man::new(command.clone());
    let mut out = Vec::new();
    let _ = man.render_title(&mut out);
    let _ = man.render_name_section(&mut out);
    let _ = man.render_synopsis_section(&mut out);
    let _ = man.render_description_section(&mut out);
    let _ = man.render_options_section(&mut out);
    let mut roff = Roff::default();
    roff.control("SH", ["COMMANDS"]);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name();
        roff.control("TP", []);
        if refer {
            roff.text([
                bold(format!("spark {name}")),
                roman(" (see "),
                bold(format!("spark-{name}")),
                roman("(1))"),
            ]);
        } else {
            roff.text([bold(format!("spark {name}"))]);
        }
        roff.text([roman(
            sub.get_long_about()
                .or(sub.get_about())
                .map(ToString::to_string)
                .unwrap_or_default(),
        )]);
        if !refer {
            for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                let flag = match (arg.get_long(), arg.get_value_names()) {
                    (Some(long), Some(values)) => format!("--{long} {}", values.join(" ")),
                    (Some(long), None) => format!("--{long}"),
                    (None, Some(values)) => values.join(" "),
                    (None, None) => arg.get_id().to_string(),
                };
                roff.control("RS", []);
                roff.text([
                    italic(flag),
                    roman(": "),
                    roman(arg.get_help().map(ToString::to_string).unwrap_or_default()),
                ]);
                roff.control("RE", []);
            }
        }
    }
    section(&mut roff, "EXIT STATUS", EXIT_STATUS);
    section(&mut roff, "ENVIRONMENT", ENVIRONMENT);
    section(&mut roff, "FILES", FILES);
    section(&mut roff, "EXAMPLES", EXAMPLES);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "The README (a config reference, the guarantees, cron and systemd examples) and SECURITY.md, in the source repository.",
    )]);
    let _ = roff.to_writer(&mut out);
    let _ = man.render_version_section(&mut out);
    out
}

/// `spark man`: the page on stdout, or every page into `dir`.
pub fn man(dir: Option<&Path>) -> std::io::Result<()> {
    let Some(dir) = dir else {
        return std::io::stdout().write_all(&main_page(false));
    };
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("spark.1"), main_page(true))?;
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let page = Man::new(sub.clone());
        let mut out = Vec::new();
        page.render(&mut out)?;
        std::fs::write(dir.join(page.get_filename()), out)?;
    }
    Ok(())
}
