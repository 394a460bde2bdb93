//! Incremental sources: a source with a `cursor` (a column whose value
//! grows whenever a row is inserted or changed) reads only the records at
//! or above its high-water mark, less `cursor_lookback` for dates and
//! datetimes, in the cursor's order; the mark advances with each batch
//! recorded, in the same transaction.
//!
//! A run reads all the records instead (a full scan) when there is no mark
//! yet, when `rescan` has passed since the last full scan, when the as-of
//! date is not the last full scan's (rules that change with the date alone
//! fire), when asked (`--full`), and when the source's definition changed
//! (the mark is tied to its fingerprint: a new `where` never skips rows
//! that now match). A full scan's mark is written only once it read every
//! record; an incremental one's with every batch.
//!
//! The bound is inclusive (`>=`): the rows at the mark are read again (a
//! few keys looked up), so that rows sharing a value, and a batch cut in
//! the middle of a record's events, are never skipped.
//!
//! Not here: reading (the drivers render the bound in their SQL), keeping
//! the marks (the store), turning records into events (the pipeline).

use std::time::Duration;

use jiff::civil::{Date, DateTime};

use crate::config::SourceConfig;
use crate::records::{Bound, Since};
use crate::registry::SourceCtx;
use crate::store::{CursorState, NewMark};

/// How a source with a cursor reads its records this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub column: String,
    /// Full scan (`None`), or from this bound.
    pub since: Option<Since>,
    /// What is kept with the marks: the fingerprint, and when and as of
    /// what date the last full scan was (this one's, once it ends).
    pub base: CursorState,
}

impl Plan {
    pub fn is_full(&self) -> bool {
        self.since.is_none()
    }

    /// What the store keeps once the records up to `mark` are recorded.
    pub fn state(&self, mark: Option<String>) -> NewMark {
        NewMark {
            state: CursorState {
                mark,
                ..self.base.clone()
            },
            full: self.is_full(),
        }
    }
}

/// How `source` reads this run (`None`: it has no cursor and reads all).
pub fn plan(
    source: &SourceConfig,
    kept: Option<&CursorState>,
    ctx: &SourceCtx,
    now_ms: i64,
    full: bool,
) -> Option<Plan> {
    let cursor = source.cursor.as_ref()?;
    let fingerprint = source.fingerprint();
    let as_of = ctx.today.to_string();
    let rescan_ms = i64::try_from(cursor.rescan.as_millis()).unwrap_or(i64::MAX);
    let incremental = kept.filter(|k| {
        !full
            && k.fingerprint == fingerprint
            && k.full_as_of == as_of
            && now_ms.saturating_sub(k.full_at) < rescan_ms
    });
    Some(match incremental {
        Some(kept) => Plan {
            column: cursor.column.clone(),
            since: Some(Since {
                column: cursor.column.clone(),
                bound: kept.mark.as_deref().and_then(|m| bound(m, cursor.lookback)),
            }),
            base: kept.clone(),
        },
        None => Plan {
            column: cursor.column.clone(),
            since: None,
            base: CursorState {
                source: source.name.clone(),
                fingerprint,
                mark: None,
                full_at: now_ms,
                full_as_of: as_of,
            },
        },
    })
}

/// The lowest value to read from, given a mark: an integer as it is, a
/// date or datetime less `lookback`, written as the mark was.
pub fn bound(mark: &str, lookback: Duration) -> Option<Bound> {
    if let Ok(n) = mark.parse::<i64>() {
        return Some(Bound::Integer(n));
    }
    let moment = Moment::parse(mark)?;
    Bound::moment(&moment.less(lookback)?.render())
}

/// The highest cursor value among the records read, as the store keeps it.
#[derive(Debug)]
pub struct Tracker {
    max: Option<Value>,
    /// Dates later than this do not move the mark (see `Tracker::new`).
    latest: jiff::Timestamp,
}

/// How far in the future a date may lie and still move a mark.
const FUTURE: jiff::SignedDuration = jiff::SignedDuration::from_hours(24);

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Integer(i64),
    /// A date or datetime: when it is (for comparing), and its text.
    Moment(jiff::Timestamp, String),
}

impl Tracker {
    /// A tracker for a read starting `now`. A date more than a day after
    /// it moves no mark: one row dated 9999 (a wrong clock, a hostile
    /// value) would otherwise hide every later change until the next full
    /// scan; left below the mark's reach, it is only read again each run.
    pub fn new(now: jiff::Timestamp) -> Tracker {
        Tracker {
            max: None,
            latest: now.checked_add(FUTURE).unwrap_or(now),
        }
    }

    /// Takes a record's cursor value into account; true when it is a new
    /// highest. A value that is neither an integer nor a date or datetime
    /// (NULL, text) counts for nothing.
    pub fn see(&mut self, value: Option<&serde_json::Value>) -> bool {
        let value = match value {
            Some(serde_json::Value::Number(n)) => match n.as_i64() {
                Some(n) => Value::Integer(n),
                None => return false,
            },
            Some(serde_json::Value::String(s)) => match Moment::parse(s) {
                Some(m) if m.instant() <= self.latest => Value::Moment(m.instant(), s.clone()),
                _ => return false,
            },
            _ => return false,
        };
        let higher = match (&self.max, &value) {
            (None, _) => true,
            (Some(Value::Integer(a)), Value::Integer(b)) => b > a,
            (Some(Value::Moment(a, _)), Value::Moment(b, _)) => b > a,
            // Of another kind than the first: counted for nothing.
            _ => false,
        };
        if higher {
            self.max = Some(value);
        }
        higher
    }

    /// The mark: the highest value seen, as the store keeps it.
    pub fn mark(&self) -> Option<String> {
        self.max.as_ref().map(|v| match v {
            Value::Integer(n) => n.to_string(),
            Value::Moment(_, text) => text.clone(),
        })
    }
}

/// A date or datetime as a database wrote it, kept so that one earlier can
/// be written the same way (SQLite compares such text as text).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Moment {
    at: DateTime,
    /// A date alone (`2026-03-10`).
    date_only: bool,
    /// What separates date and time: ` ` or `T`.
    separator: char,
    /// Digits after the seconds' point (0: none written).
    fraction: usize,
    /// What follows (`Z`, `+00:00`, `+02`, or nothing).
    suffix: String,
}

impl Moment {
    fn parse(text: &str) -> Option<Moment> {
        let date: Date = text.get(..10)?.parse().ok()?;
        if text.len() == 10 {
            return Some(Moment {
                at: date.to_datetime(jiff::civil::Time::midnight()),
                date_only: true,
                separator: ' ',
                fraction: 0,
                suffix: String::new(),
            });
        }
        let separator = text[10..].chars().next()?;
        if separator != ' ' && separator != 'T' {
            return None;
        }
        let rest = text.get(11..)?;
        let hms = rest.get(..8)?;
        let time: jiff::civil::Time = hms.parse().ok()?;
        let mut after = &rest[8..];
        let mut fraction = 0;
        let mut nanos = 0i32;
        if let Some(digits) = after.strip_prefix('.') {
            let n = digits.chars().take_while(char::is_ascii_digit).count();
            if n == 0 || n > 9 {
                return None;
            }
            let padded = format!("{:0<9}", &digits[..n]);
            nanos = padded.parse().ok()?;
            fraction = n;
            after = &digits[n..];
        }
        let suffix_ok = after.is_empty()
            || after == "Z"
            || (after.len() <= 6
                && (after.starts_with('+') || after.starts_with('-'))
                && after[1..].chars().all(|c| c.is_ascii_digit() || c == ':'));
        if !suffix_ok {
            return None;
        }
        Some(Moment {
            at: date
                .to_datetime(time)
                .with()
                .subsec_nanosecond(nanos)
                .build()
                .ok()?,
            date_only: false,
            separator,
            fraction,
            suffix: after.to_owned(),
        })
    }

    /// When it is (a value without an offset counts as UTC: comparing
    /// values of one column, that is enough).
    fn instant(&self) -> jiff::Timestamp {
        let offset = match self.suffix.as_str() {
            "" | "Z" => jiff::tz::Offset::UTC,
            s => {
                let sign = if s.starts_with('-') { -1 } else { 1 };
                let digits: String = s[1..].chars().filter(char::is_ascii_digit).collect();
                let hours: i32 = digits.get(..2).and_then(|h| h.parse().ok()).unwrap_or(0);
                let minutes: i32 = digits.get(2..4).and_then(|m| m.parse().ok()).unwrap_or(0);
                jiff::tz::Offset::from_seconds(sign * (hours * 3600 + minutes * 60))
                    .unwrap_or(jiff::tz::Offset::UTC)
            }
        };
        offset
            .to_timestamp(self.at)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }

    /// `lookback` earlier (a date: the day that moment falls on).
    fn less(&self, lookback: Duration) -> Option<Moment> {
        let span = jiff::SignedDuration::try_from(lookback).ok()?;
        let at = self.at.checked_sub(span).ok()?;
        Some(Moment { at, ..self.clone() })
    }

    fn render(&self) -> String {
        let date = self.at.date().to_string();
        if self.date_only {
            return date;
        }
        let t = self.at.time();
        let mut out = format!(
            "{date}{}{:02}:{:02}:{:02}",
            self.separator,
            t.hour(),
            t.minute(),
            t.second()
        );
        if self.fraction > 0 {
            let nanos = format!("{:09}", t.subsec_nanosecond());
            out.push('.');
            out.push_str(&nanos[..self.fraction]);
        }
        out.push_str(&self.suffix);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_written_as_the_marks_were() {
        let m = Duration::from_secs(60);
        assert_eq!(bound("41", m), Some(Bound::Integer(41)));
        assert_eq!(
            bound("2026-03-10 12:00:30", m),
            Some(Bound::Moment("2026-03-10 11:59:30".into()))
        );
        assert_eq!(
            bound("2026-03-10T00:00:10.123Z", m),
            Some(Bound::Moment("2026-03-09T23:59:10.123Z".into()))
        );
        assert_eq!(
            bound("2026-03-10 10:00:00.000001+02:00", m),
            Some(Bound::Moment("2026-03-10 09:59:00.000001+02:00".into()))
        );
        assert_eq!(
            bound("2026-03-10", m),
            Some(Bound::Moment("2026-03-09".into()))
        );
        // Nothing else reaches SQL.
        assert_eq!(bound("2026-03-10'; DROP TABLE x; --", m), None);
        assert_eq!(bound("soon", m), None);
    }

    #[test]
    fn the_mark_is_the_highest_value_by_time_not_by_text() {
        let mut t = Tracker::new(jiff::Timestamp::now());
        assert!(t.see(Some(&serde_json::json!("2026-03-10 10:00:00"))));
        assert!(t.see(Some(&serde_json::json!("2026-03-10T11:00:00"))));
        assert!(!t.see(Some(&serde_json::json!("2026-03-10 10:30:00"))));
        assert!(!t.see(Some(&serde_json::json!(null))));
        assert!(!t.see(Some(&serde_json::json!(5))));
        assert_eq!(t.mark().as_deref(), Some("2026-03-10T11:00:00"));
        let mut n = Tracker::new(jiff::Timestamp::now());
        for v in [3, 9, 4] {
            n.see(Some(&serde_json::json!(v)));
        }
        assert_eq!(n.mark().as_deref(), Some("9"));
    }

    #[test]
    fn a_date_far_in_the_future_moves_no_mark() {
        let now: jiff::Timestamp = "2026-03-10T12:00:00Z"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        let mut t = Tracker::new(now);
        assert!(t.see(Some(&serde_json::json!("2026-03-10 12:00:00"))));
        assert!(!t.see(Some(&serde_json::json!("9999-12-31 23:59:59"))));
        assert!(t.see(Some(&serde_json::json!("2026-03-11 11:00:00"))));
        assert_eq!(t.mark().as_deref(), Some("2026-03-11 11:00:00"));
    }
}
