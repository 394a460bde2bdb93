//! `challenge_events`, the example source of django-spark's README: events
//! about a fundraising challenge and its donations.
//!
//! For an active challenge, with `today` the as-of date: always
//! `challenge_created`; `challenge_inactivity_2d` when it started more than
//! two days ago and has fewer than two donations; `challenge_ends_2d` when it
//! ends in two days or less; `challenge_ended` when it has ended. An inactive
//! challenge yields nothing. The context is `{"challenge": <the record>}`.

use std::sync::Arc;

use jiff::civil::Date;
use serde_json::{Map, Value};

use crate::event::{Context, Event, event};
use crate::records::{Record, RecordError};
use crate::registry::SourceCtx;

/// The columns `challenge_events` reads.
pub const READS: [&str; 5] = [
    "id",
    "is_active",
    "start_date",
    "end_date",
    "donation_count",
];

/// The groups `challenge_events` emits.
pub const EMITS: [&str; 4] = [
    "challenge_created",
    "challenge_inactivity_2d",
    "challenge_ends_2d",
    "challenge_ended",
];

/// Whole days from `earlier` to `later` (negative if `later` is earlier),
/// like Python's `(later - earlier).days` for dates.
fn days(later: Date, earlier: Date) -> i64 {
    later.duration_since(earlier).as_secs() / 86_400
}

/// The example source; see the module documentation.
pub fn challenge_events(record: &Record, ctx: &SourceCtx) -> Result<Vec<Event>, RecordError> {
    if !record.bool("is_active")? {
        return Ok(Vec::new());
    }
    let id = record.key_text("id")?;
    let start = record.date("start_date")?;
    let end = record.date("end_date")?;
    let donations = record.i64("donation_count")?;
    let today = ctx.today;

    let mut map = Map::with_capacity(1);
    map.insert("challenge".to_owned(), Value::Object(record.to_map()));
    let context: Context = Arc::new(map);

    let mut events = Vec::with_capacity(4);
    events.push(event("challenge_created", &id, context.clone()));
    if days(today, start) > 2 && donations < 2 {
        events.push(event("challenge_inactivity_2d", &id, context.clone()));
    }
    if days(end, today) <= 2 {
        events.push(event("challenge_ends_2d", &id, context.clone()));
    }
    if end < today {
        events.push(event("challenge_ended", &id, context));
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TODAY: Date = Date::constant(2026, 3, 10);

    fn groups(v: Value) -> Vec<String> {
        let Value::Object(map) = v else {
            unreachable!("tests pass objects")
        };
        let ctx = SourceCtx::on(TODAY);
        challenge_events(&Record::from_map(map), &ctx)
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect()
    }

    fn challenge(active: i64, start: &str, end: &str, donations: i64) -> Value {
        json!({"id": 9, "is_active": active, "start_date": start, "end_date": end,
               "donation_count": donations})
    }

    #[test]
    fn inactive_yields_nothing() {
        assert!(groups(challenge(0, "2026-01-01", "2026-01-02", 0)).is_empty());
    }

    #[test]
    fn fresh_challenge_is_only_created() {
        assert_eq!(
            groups(challenge(1, "2026-03-08", "2026-03-13", 0)),
            ["challenge_created_9"]
        );
    }

    #[test]
    fn inactivity_needs_more_than_two_days_and_fewer_than_two_donations() {
        assert_eq!(
            groups(challenge(1, "2026-03-07", "2026-04-01", 1)),
            ["challenge_created_9", "challenge_inactivity_2d_9"]
        );
        assert_eq!(
            groups(challenge(1, "2026-03-07", "2026-04-01", 2)),
            ["challenge_created_9"]
        );
    }

    #[test]
    fn ends_within_two_days_and_ended() {
        assert_eq!(
            groups(challenge(1, "2026-03-09", "2026-03-12", 5)),
            ["challenge_created_9", "challenge_ends_2d_9"]
        );
        assert_eq!(
            groups(challenge(1, "2026-03-09", "2026-03-09", 5)),
            [
                "challenge_created_9",
                "challenge_ends_2d_9",
                "challenge_ended_9"
            ]
        );
        // Ending today is not "ended" yet.
        assert_eq!(
            groups(challenge(1, "2026-03-09", "2026-03-10", 5)),
            ["challenge_created_9", "challenge_ends_2d_9"]
        );
    }

    #[test]
    fn context_is_the_record() {
        let Value::Object(map) = challenge(1, "2026-03-09", "2026-03-20", 5) else {
            unreachable!()
        };
        let ctx = SourceCtx::on(TODAY);
        let events = challenge_events(&Record::from_map(map), &ctx).unwrap();
        assert_eq!(events[0].context["challenge"]["id"], 9);
    }

    #[test]
    fn bad_date_names_the_column() {
        let Value::Object(map) = challenge(1, "soon", "2026-03-20", 5) else {
            unreachable!()
        };
        let ctx = SourceCtx::on(TODAY);
        let err = challenge_events(&Record::from_map(map), &ctx).unwrap_err();
        assert_eq!(err.column, "start_date");
    }
}
