//! `--metrics-file`: the run's figures in the Prometheus text exposition
//! format, for node_exporter's textfile collector (the convention for batch
//! jobs). The file is written whole to a temporary name and renamed, so the
//! collector never reads half of it (and a link planted at a temporary name
//! is never written through). `spark_last_success_timestamp_seconds`
//! is carried over from the previous file when a run fails, so that an
//! alert can ask how long ago spark last succeeded.

use std::fmt::Write as _;
use std::path::Path;

use crate::pipeline::RunReport;

/// How a run ended, for the metrics.
#[derive(Debug, Clone)]
pub struct RunOutcome<'a> {
    /// Unix seconds.
    pub started: f64,
    pub ended: f64,
    pub exit_status: u8,
    /// The run's figures (none when it stopped with an error).
    pub report: Option<&'a RunReport>,
}

/// A label value, escaped as the text format wants.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Writer {
    out: String,
}

impl Writer {
    fn metric(&mut self, name: &str, help: &str, kind: &str, samples: &[(String, f64)]) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(self.out, "{name}{labels} {value}");
        }
    }
}

fn one(value: f64) -> Vec<(String, f64)> {
    vec![(String::new(), value)]
}

/// The last success time recorded in an earlier metrics file, if any.
fn previous_success(path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        line.strip_prefix("spark_last_success_timestamp_seconds ")
            .and_then(|v| v.trim().parse().ok())
    })
}

/// The metrics text for a run.
pub fn render(outcome: &RunOutcome<'_>, last_success: Option<f64>) -> String {
    let mut w = Writer { out: String::new() };
    let success = outcome.exit_status == 0;
    w.metric(
        "spark_last_run_start_timestamp_seconds",
        "When the last process-sources run started (Unix time).",
        "gauge",
        &one(outcome.started),
    );
    w.metric(
        "spark_last_run_end_timestamp_seconds",
        "When the last process-sources run ended (Unix time).",
        "gauge",
        &one(outcome.ended),
    );
    w.metric(
        "spark_last_run_success",
        "1 if the last run ended with exit status 0, else 0.",
        "gauge",
        &one(if success { 1.0 } else { 0.0 }),
    );
    w.metric(
        "spark_last_run_exit_status",
        "The last run's exit status (0 ok, 1 failed deliveries, 2 unusable input, 3 locked out).",
        "gauge",
        &one(f64::from(outcome.exit_status)),
    );
    let last = if success {
        Some(outcome.ended)
    } else {
        last_success
    };
    if let Some(last) = last {
        w.metric(
            "spark_last_success_timestamp_seconds",
            "When a run last ended with exit status 0 (Unix time).",
            "gauge",
            &one(last),
        );
    }
    w.metric(
        "spark_last_run_duration_seconds",
        "How long the last run took.",
        "gauge",
        &one(outcome.ended - outcome.started),
    );
    if let Some(r) = outcome.report {
        let per_source = |f: &dyn Fn(&crate::pipeline::SourceStats) -> u64| -> Vec<(String, f64)> {
            r.sources
                .iter()
                .map(|s| (format!("{{source=\"{}\"}}", label(&s.name)), f(s) as f64))
                .collect()
        };
        let per_handler =
            |f: &dyn Fn(&crate::delivery::HandlerStats) -> u64| -> Vec<(String, f64)> {
                r.handlers
                    .iter()
                    .map(|h| (format!("{{handler=\"{}\"}}", label(&h.name)), f(h) as f64))
                    .collect()
            };
        w.metric(
            "spark_records_read",
            "Records the last run read, per source.",
            "gauge",
            &per_source(&|s| s.records),
        );
        w.metric(
            "spark_events_new",
            "New events the last run recorded, per source.",
            "gauge",
            &per_source(&|s| s.new),
        );
        w.metric(
            "spark_records_skipped",
            "Records the last run could not read, per source.",
            "gauge",
            &per_source(&|s| s.bad_records),
        );
        w.metric(
            "spark_deliveries_done",
            "Events the last run delivered, per handler.",
            "gauge",
            &per_handler(&|h| h.delivered),
        );
        w.metric(
            "spark_deliveries_failed",
            "Failed delivery attempts in the last run, per handler.",
            "gauge",
            &per_handler(&|h| h.failed),
        );
        w.metric(
            "spark_deliveries_dead",
            "Deliveries the last run gave up (dead), per handler.",
            "gauge",
            &per_handler(&|h| h.dead),
        );
        w.metric(
            "spark_deliveries_outstanding",
            "Deliveries not finished after the last run, per handler and state.",
            "gauge",
            &r.outstanding
                .iter()
                .map(|(h, state, n)| {
                    (
                        format!("{{handler=\"{}\",state=\"{}\"}}", label(h), label(state)),
                        *n as f64,
                    )
                })
                .collect::<Vec<_>>(),
        );
        w.metric(
            "spark_dead_events",
            "Events in dead deliveries after the last run (given up; see `spark deliveries --state dead`), per handler.",
            "gauge",
            &r.outstanding
                .iter()
                .filter(|(_, state, _)| state == "dead")
                .map(|(h, _, n)| (format!("{{handler=\"{}\"}}", label(h)), *n as f64))
                .collect::<Vec<_>>(),
        );
        w.metric(
            "spark_orphaned_events",
            "Events owed to handlers no longer in the config (see `spark deliveries --orphaned`), per handler.",
            "gauge",
            &r.orphaned
                .iter()
                .map(|o| (format!("{{handler=\"{}\"}}", label(&o.handler)), o.events as f64))
                .collect::<Vec<_>>(),
        );
    }
    w.out
}

/// The metrics file holds counts and names, no event data: readable by
/// the collector, which usually runs as another user.
const MODE: u32 = 0o644;

/// Writes the metrics file atomically (see `files::write_atomically`: an
/// unpredictable temporary name, created exclusively, then renamed), with
/// secrets masked.
pub fn write(path: &Path, outcome: &RunOutcome<'_>) -> std::io::Result<()> {
    let text = crate::redact::redact_owned(render(outcome, previous_success(path)));
    crate::files::write_atomically(path, text.as_bytes(), MODE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_runs_keep_the_last_success() {
        let failed = RunOutcome {
            started: 100.0,
            ended: 101.5,
            exit_status: 2,
            report: None,
        };
        let text = render(&failed, Some(42.0));
        assert!(text.contains("spark_last_run_success 0\n"));
        assert!(text.contains("spark_last_success_timestamp_seconds 42\n"));
        assert!(text.contains("spark_last_run_duration_seconds 1.5\n"));
        let ok = RunOutcome {
            exit_status: 0,
            ..failed
        };
        assert!(render(&ok, Some(42.0)).contains("spark_last_success_timestamp_seconds 101.5\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
