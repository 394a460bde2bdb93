//! The delivery history: one entry per call of a handler (delivered,
//! failed, dead), per operator action on a delivery (discarded,
//! reassigned, replayed, retried) and per at-most-once call a crash interrupted,
//! kept for `[delivery] keep_history` (default 30 days) and pruned by
//! `prune` and `watch`.
//!
//! The history is the operator's record, not the delivery log: an entry is
//! written after the outcome it reports (SQLite: with the next commit, or
//! when the run ends; PostgreSQL: in a commit of its own that need not wait
//! for the disk), so a process killed mid-run can lose the entries of its
//! last calls, never a delivery. File handlers (`jsonl`) have no per-key
//! entries: the file is their record.

use serde::Serialize;

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    pub key: String,
    pub handler: String,
    /// UTC, Django's datetime format.
    pub at: String,
    /// `delivered`, `failed`, `dead`, `discarded`, `reassigned`, `replayed`,
    /// `retried`.
    pub outcome: String,
    /// Which attempt (0 for an operator's action).
    pub attempt: u32,
    /// How long the call took.
    pub ms: Option<i64>,
    /// The error of a failed call, or the operator's reason.
    pub error: Option<String>,
    /// Who did it, for an operator's action (the user name).
    pub by: Option<String>,
}

impl HistoryEntry {
    /// An entry for an operator's action on `key`'s delivery to `handler`.
    pub fn action(key: &str, handler: &str, outcome: &str, reason: Option<&str>) -> HistoryEntry {
        HistoryEntry::action_by(key, handler, outcome, reason, &operator())
    }

    /// `action`, by `who` (a console's user, say).
    pub fn action_by(
        key: &str,
        handler: &str,
        outcome: &str,
        reason: Option<&str>,
        who: &str,
    ) -> HistoryEntry {
        HistoryEntry {
            key: key.to_owned(),
            handler: handler.to_owned(),
            at: crate::clock::now_text(),
            outcome: outcome.to_owned(),
            attempt: 0,
            ms: None,
            error: reason.map(str::to_owned),
            by: Some(who.to_owned()),
        }
    }
}

/// Who runs this command: `$SUDO_USER`, else `$USER`, else `$LOGNAME`, else
/// the numeric user id.
pub fn operator() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| {
            // SAFETY: getuid has no preconditions and cannot fail.
            format!("uid {}", unsafe { libc::getuid() })
        })
}

/// Which history entries to list.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Any of these outcomes (all when empty).
    pub outcomes: Vec<String>,
    pub handler: Option<String>,
    pub keys: Vec<String>,
    /// At most this many, newest first.
    pub limit: Option<usize>,
}
