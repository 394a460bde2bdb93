//! Declarative generators (django-spark's spark_generators): a source
//! written in the config. Every record that meets all of a generator's
//! conditions yields `event(group, record[id], record)`.
//!
//! Comparisons, by the type of the condition's value:
//! - a number (integer or float) compares with a number column numerically;
//! - a string compares with a text column, byte by byte;
//! - a date (`2026-03-01`, quoted or not) compares with a column read as a
//!   date (`YYYY-MM-DD`, a datetime's date part);
//! - a datetime (`"2026-03-01 14:00"`, `"2026-03-01T14:00:00Z"`) compares
//!   with a column read as a moment (a date alone is its midnight; a
//!   datetime without an offset is UTC, as Django stores it);
//! - a relative value, `today`, `today+3d`, `today-1w` (a date) or `now`,
//!   `now-2h`, `now+30m` (a moment), is resolved against `--as-of` when a
//!   run starts, then compares as above;
//! - a boolean compares with a boolean or a 0/1 column.
//!
//! - text holding a plain decimal number (what a PostgreSQL `numeric` column
//!   reads as) compares with a number as a number.
//!
//! A record lacking the variable, a NULL, a value of another type, or text
//! that is not a date never matches (and never fails). Where the column's
//! declared type is known, a value of the wrong type is a config error at
//! load time instead (see `database::check_sources`).

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use jiff::civil::Date;
use jiff::{Timestamp, ToSpan};
use serde_json::Value;

use crate::event::{Context, Event, event};
use crate::records::{Record, RecordError, parse_date};
use crate::registry::SourceCtx;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Gt,
    Lt,
    Ge,
    Le,
    Eq,
    Ne,
}

impl Op {
    /// The operators a config may use.
    pub const ALL: &'static str = "> < >= <= = !=";

    pub fn parse(text: &str) -> Option<Op> {
        Some(match text {
            ">" => Op::Gt,
            "<" => Op::Lt,
            ">=" => Op::Ge,
            "<=" => Op::Le,
            "=" | "==" => Op::Eq,
            "!=" => Op::Ne,
            _ => return None,
        })
    }

    fn holds(self, ord: Ordering) -> bool {
        match self {
            Op::Gt => ord == Ordering::Greater,
            Op::Lt => ord == Ordering::Less,
            Op::Ge => ord != Ordering::Less,
            Op::Le => ord != Ordering::Greater,
            Op::Eq => ord == Ordering::Equal,
            Op::Ne => ord != Ordering::Equal,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Gt => ">",
            Op::Lt => "<",
            Op::Ge => ">=",
            Op::Le => "<=",
            Op::Eq => "=",
            Op::Ne => "!=",
        })
    }
}

/// The value a condition compares with.
#[derive(Debug, Clone, PartialEq)]
pub enum CondValue {
    Int(i64),
    Float(f64),
    Text(String),
    Date(Date),
    DateTime(Timestamp),
    Relative(Relative),
    Bool(bool),
}

/// What a relative value counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The run's date (`--as-of`, default the local date).
    Today,
    /// The run's moment (`--as-of`, default the clock).
    Now,
}

/// `today`, `today+3d`, `now-2h`: a date or a moment counted from the run's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relative {
    pub origin: Origin,
    /// The offset, in `unit`s (negative: before).
    pub amount: i64,
    /// `w`, `d` (both origins), `h`, `m`, `s` (`now` only).
    pub unit: char,
}

/// The relative values a condition may use, for messages.
pub const RELATIVE_FORMS: &str =
    "today, today+3d, today-1w (a date), now, now-2h, now+30m, now-90s (a moment)";

impl Relative {
    /// Parses `today[±N(d|w)]` or `now[±N(w|d|h|m|s)]` (spaces allowed
    /// around the sign). `None`: not a relative value at all; `Some(Err)`:
    /// one that is written wrong.
    pub fn parse(text: &str) -> Option<Result<Relative, String>> {
        let t = text.trim();
        let (origin, rest) = if let Some(rest) = t.strip_prefix("today") {
            (Origin::Today, rest)
        } else if let Some(rest) = t.strip_prefix("now") {
            (Origin::Now, rest)
        } else {
            return None;
        };
        let rest = rest.trim_start();
        if rest.is_empty() {
            return Some(Ok(Relative {
                origin,
                amount: 0,
                unit: 'd',
            }));
        }
        let negative = match rest.as_bytes()[0] {
            b'+' => false,
            b'-' => true,
            // `nowhere`, `today's`: text, not a relative value.
            _ => return None,
        };
        let rest = rest[1..].trim();
        let bad = || format!("{text:?} is not a relative value (write {RELATIVE_FORMS})");
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let amount: i64 = match rest[..digits].parse() {
            Ok(n) if n <= 100_000 => n,
            _ => return Some(Err(bad())),
        };
        let unit = match (origin, rest[digits..].trim()) {
            (_, "d") => 'd',
            (_, "w") => 'w',
            (Origin::Now, "h") => 'h',
            (Origin::Now, "m") => 'm',
            (Origin::Now, "s") => 's',
            _ => return Some(Err(bad())),
        };
        Some(Ok(Relative {
            origin,
            amount: if negative { -amount } else { amount },
            unit,
        }))
    }

    /// The date or moment this stands for on `today` / at `now`.
    pub fn resolve(&self, at: &SourceCtx) -> CondValue {
        let n = self.amount;
        let span = match self.unit {
            'w' => (n * 7).days(),
            'd' => n.days(),
            'h' => n.hours(),
            'm' => n.minutes(),
            _ => n.seconds(),
        };
        match self.origin {
            Origin::Today => at
                .today
                .checked_add(span)
                .map_or(CondValue::Date(at.today), CondValue::Date),
            Origin::Now => {
                // Days and weeks from a moment: 24-hour days (UTC).
                let span = match self.unit {
                    'w' => (n * 7 * 24).hours(),
                    'd' => (n * 24).hours(),
                    _ => span,
                };
                at.now
                    .checked_add(span)
                    .map_or(CondValue::DateTime(at.now), CondValue::DateTime)
            }
        }
    }
}

impl fmt::Display for Relative {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = match self.origin {
            Origin::Today => "today",
            Origin::Now => "now",
        };
        match self.amount {
            0 => f.write_str(origin),
            n if n > 0 => write!(f, "{origin}+{n}{}", self.unit),
            n => write!(f, "{origin}{n}{}", self.unit),
        }
    }
}

impl CondValue {
    /// What kind of value this is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            CondValue::Int(_) => "an integer",
            CondValue::Float(_) => "a number",
            CondValue::Text(_) => "a string",
            CondValue::Date(_) => "a date",
            CondValue::DateTime(_) => "a datetime",
            CondValue::Relative(r) => match r.origin {
                Origin::Today => "a date",
                Origin::Now => "a datetime",
            },
            CondValue::Bool(_) => "a boolean",
        }
    }

    /// Whether it compares as a date or a moment.
    pub fn is_temporal(&self) -> bool {
        matches!(
            self,
            CondValue::Date(_) | CondValue::DateTime(_) | CondValue::Relative(_)
        )
    }

    /// A string from the config: a relative value, a date, a datetime, or
    /// text.
    pub fn from_text(text: &str) -> Result<CondValue, String> {
        if let Some(relative) = Relative::parse(text) {
            return relative.map(CondValue::Relative);
        }
        if text.len() == 10
            && let Some(date) = parse_date(text)
        {
            return Ok(CondValue::Date(date));
        }
        if text.len() > 10
            && parse_date(text).is_some()
            && let Some(moment) = parse_moment(text)
        {
            return Ok(CondValue::DateTime(moment));
        }
        Ok(CondValue::Text(text.to_owned()))
    }
}

/// A moment written as ISO 8601 text: `2026-03-01`, `2026-03-01 14:00`,
/// `2026-03-01T14:00:00.5Z`, `2026-03-01T16:00:00+02:00`. A date alone is
/// its midnight; a datetime without an offset is UTC (what Django stores
/// with `USE_TZ = True`).
pub fn parse_moment(text: &str) -> Option<Timestamp> {
    let (at, offset) = crate::records::parse_datetime(text)?;
    let utc = at
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .ok()?
        .timestamp();
    utc.checked_sub(jiff::SignedDuration::from_secs(i64::from(
        offset.unwrap_or(0),
    )))
    .ok()
}

impl fmt::Display for CondValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CondValue::Int(i) => write!(f, "{i}"),
            CondValue::Float(x) => write!(f, "{x}"),
            CondValue::Text(s) => write!(f, "{s:?}"),
            CondValue::Date(d) => write!(f, "{d}"),
            CondValue::DateTime(t) => write!(f, "{t}"),
            CondValue::Relative(r) => write!(f, "{r}"),
            CondValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// `variable op value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub variable: String,
    pub op: Op,
    pub value: CondValue,
    /// Where the config says it (`spark.toml:14:1`), for messages; empty
    /// when unknown.
    pub at: String,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.variable, self.op, self.value)
    }
}

impl Condition {
    /// Whether a record's value (`None`: the record lacks the variable)
    /// meets the condition.
    pub fn matches(&self, value: Option<&Value>) -> bool {
        let Some(value) = value else { return false };
        let ord = match (&self.value, value) {
            (CondValue::Int(want), Value::Number(n)) => match n.as_i64() {
                Some(have) => Some(have.cmp(want)),
                None => n
                    .as_f64()
                    .and_then(|have| have.partial_cmp(&(*want as f64))),
            },
            (CondValue::Float(want), Value::Number(n)) => {
                n.as_f64().and_then(|have| have.partial_cmp(want))
            }
            // An exact decimal kept as text (PostgreSQL's numeric, as
            // Django's JSON encoder writes it) compares as a number.
            (CondValue::Int(want), Value::String(have)) => decimal(have).and_then(|have| {
                if let Ok(i) = have.parse::<i64>() {
                    Some(i.cmp(want))
                } else {
                    have.parse::<f64>().ok()?.partial_cmp(&(*want as f64))
                }
            }),
            (CondValue::Float(want), Value::String(have)) => {
                decimal(have).and_then(|have| have.parse::<f64>().ok()?.partial_cmp(want))
            }
            (CondValue::Text(want), Value::String(have)) => Some(have.as_str().cmp(want.as_str())),
            (CondValue::Date(want), Value::String(have)) => parse_date(have).map(|d| d.cmp(want)),
            (CondValue::DateTime(want), Value::String(have)) => {
                parse_moment(have).map(|t| t.cmp(want))
            }
            (CondValue::Bool(want), Value::Bool(have)) => Some(have.cmp(want)),
            (CondValue::Bool(want), Value::Number(n)) => match n.as_i64() {
                Some(0) => Some(false.cmp(want)),
                Some(1) => Some(true.cmp(want)),
                _ => None,
            },
            _ => None,
        };
        ord.is_some_and(|ord| self.op.holds(ord))
    }

    /// This condition with a relative value resolved for a run at `at`.
    pub fn resolved(&self, at: &SourceCtx) -> Condition {
        match &self.value {
            CondValue::Relative(r) => Condition {
                value: r.resolve(at),
                ..self.clone()
            },
            _ => self.clone(),
        }
    }
}

/// `text` when it is a plain decimal number (`-12.50`, `7`): what a
/// numeric column reads as.
fn decimal(text: &str) -> Option<&str> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, "0"));
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (plain(int) && plain(frac)).then_some(text)
}

/// A generator: records meeting every condition yield one event each.
#[derive(Debug, Clone, PartialEq)]
pub struct Generator {
    pub group: String,
    /// The column whose value makes the key: `"{group}_{id}"`.
    pub id: String,
    pub conditions: Vec<Condition>,
}

impl Generator {
    /// The event `record` yields, if it meets every condition. `context`
    /// caches the record as a context, shared by the generators of a record.
    pub fn evaluate(
        &self,
        record: &Record,
        context: &mut Option<Context>,
    ) -> Result<Option<Event>, RecordError> {
        if !self
            .conditions
            .iter()
            .all(|c| c.matches(record.get(&c.variable)))
        {
            return Ok(None);
        }
        let id = record.key_text(&self.id)?;
        let context = context
            .get_or_insert_with(|| Arc::new(record.to_map()))
            .clone();
        Ok(Some(event(self.group.clone(), id, context)))
    }

    /// This generator for a run at `at`: relative values resolved.
    pub fn resolved(&self, at: &SourceCtx) -> Generator {
        Generator {
            conditions: self.conditions.iter().map(|c| c.resolved(at)).collect(),
            ..self.clone()
        }
    }

    /// The conditions in readable form: `key_length > 5 and status = "open"`.
    pub fn describe_conditions(&self) -> String {
        if self.conditions.is_empty() {
            return "always".to_owned();
        }
        self.conditions
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" and ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cond(variable: &str, op: &str, value: CondValue) -> Condition {
        Condition {
            variable: variable.into(),
            op: Op::parse(op).unwrap(),
            value,
            at: String::new(),
        }
    }

    #[test]
    fn operators() {
        let c = |op| cond("n", op, CondValue::Int(5));
        let six = json!(6);
        assert!(c(">").matches(Some(&six)));
        assert!(c(">=").matches(Some(&six)));
        assert!(!c("<").matches(Some(&six)));
        assert!(!c("<=").matches(Some(&six)));
        assert!(!c("=").matches(Some(&six)));
        assert!(c("!=").matches(Some(&six)));
        assert!(c("=").matches(Some(&json!(5))));
        assert!(c("<=").matches(Some(&json!(5))));
        assert!(c(">").matches(Some(&json!(5.5))));
        assert_eq!(Op::parse("=>"), None);
    }

    #[test]
    fn decimal_text_compares_as_a_number() {
        // What a PostgreSQL numeric(8,2) column reads as.
        assert!(cond("n", ">", CondValue::Int(100)).matches(Some(&json!("150.00"))));
        assert!(!cond("n", ">", CondValue::Int(100)).matches(Some(&json!("99.99"))));
        assert!(cond("n", "=", CondValue::Int(100)).matches(Some(&json!("100"))));
        assert!(cond("n", "<", CondValue::Float(0.5)).matches(Some(&json!("-7.25"))));
        assert!(cond("n", ">", CondValue::Int(9)).matches(Some(&json!("10"))));
    }

    #[test]
    fn missing_null_and_mismatched_values_never_match() {
        let c = cond("n", "!=", CondValue::Int(5));
        assert!(!c.matches(None));
        assert!(!c.matches(Some(&Value::Null)));
        assert!(!c.matches(Some(&json!("six"))));
        assert!(!c.matches(Some(&json!("6e3"))));
        let t = cond("s", "!=", CondValue::Text("x".into()));
        assert!(!t.matches(Some(&json!(1))));
        assert!(t.matches(Some(&json!("y"))));
    }

    #[test]
    fn dates_and_booleans() {
        let d = cond("day", "<", CondValue::Date(Date::constant(2026, 3, 1)));
        assert!(d.matches(Some(&json!("2026-02-28"))));
        assert!(d.matches(Some(&json!("2026-02-28 23:59:00"))));
        assert!(!d.matches(Some(&json!("2026-03-01"))));
        assert!(!d.matches(Some(&json!("soon"))));
        let b = cond("flag", "=", CondValue::Bool(true));
        assert!(b.matches(Some(&json!(1))));
        assert!(b.matches(Some(&json!(true))));
        assert!(!b.matches(Some(&json!(0))));
        assert!(!b.matches(Some(&json!(2))));
    }

    #[test]
    fn relative_values_parse_and_resolve() {
        let at = SourceCtx {
            today: Date::constant(2026, 3, 10),
            now: "2026-03-10T12:00:00Z".parse().unwrap(),
        };
        let resolve = |text: &str| Relative::parse(text).unwrap().unwrap().resolve(&at);
        assert_eq!(
            resolve("today"),
            CondValue::Date(Date::constant(2026, 3, 10))
        );
        assert_eq!(
            resolve("today+3d"),
            CondValue::Date(Date::constant(2026, 3, 13))
        );
        assert_eq!(
            resolve("today - 1w"),
            CondValue::Date(Date::constant(2026, 3, 3))
        );
        assert_eq!(
            resolve("now-2h"),
            CondValue::DateTime("2026-03-10T10:00:00Z".parse().unwrap())
        );
        assert_eq!(
            resolve("now+1d"),
            CondValue::DateTime("2026-03-11T12:00:00Z".parse().unwrap())
        );
        assert_eq!(Relative::parse("nowhere"), None);
        assert_eq!(Relative::parse("today's"), None);
        for bad in [
            "today+3",
            "today+3h",
            "now+x",
            "today+-1d",
            "now-99999999999s",
        ] {
            assert!(matches!(Relative::parse(bad), Some(Err(_))), "{bad}");
        }
        assert_eq!(
            Relative::parse("today + 3d").unwrap().unwrap().to_string(),
            "today+3d"
        );
    }

    #[test]
    fn moments_parse_with_or_without_offsets() {
        let t = |s: &str| parse_moment(s).map(|t| t.to_string());
        assert_eq!(t("2026-03-10"), Some("2026-03-10T00:00:00Z".into()));
        assert_eq!(t("2026-03-10 14:00"), Some("2026-03-10T14:00:00Z".into()));
        assert_eq!(
            t("2026-03-10 14:00:00.5"),
            Some("2026-03-10T14:00:00.5Z".into())
        );
        assert_eq!(
            t("2026-03-10T16:00:00+02:00"),
            Some("2026-03-10T14:00:00Z".into())
        );
        assert_eq!(
            t("2026-03-10T14:00:00Z"),
            Some("2026-03-10T14:00:00Z".into())
        );
        assert_eq!(t("2026-03-10x"), None);
        assert_eq!(t("soon"), None);
    }

    #[test]
    fn generator_yields_group_id_and_the_record() {
        let g = Generator {
            group: "stuff_bla".into(),
            id: "id".into(),
            conditions: vec![cond("key_length", ">", CondValue::Int(5))],
        };
        let Value::Object(map) = json!({"id": 7, "key_length": 9}) else {
            unreachable!()
        };
        let record = Record::from_map(map);
        let mut ctx = None;
        let e = g.evaluate(&record, &mut ctx).unwrap().unwrap();
        assert_eq!(e.key, "stuff_bla_7");
        assert_eq!(e.context["key_length"], 9);
        assert_eq!(g.describe_conditions(), "key_length > 5");
        let Value::Object(map) = json!({"id": 8, "key_length": 5}) else {
            unreachable!()
        };
        assert!(
            g.evaluate(&Record::from_map(map), &mut None)
                .unwrap()
                .is_none()
        );
    }
}
