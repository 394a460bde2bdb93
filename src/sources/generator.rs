//! Declarative generators (django-spark's spark_generators): a source
//! written in the config. Every record that meets all of a generator's
//! conditions yields `event(group, record[id], record)`.
//!
//! Comparisons, by the type of the condition's value:
//! - a number (integer or float) compares with a number column numerically;
//! - a string compares with a text column, byte by byte;
//! - a TOML date (`2026-03-01`, unquoted) compares with a text column read as
//!   a date (`YYYY-MM-DD`, a datetime's date part);
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
use serde_json::Value;

use crate::event::{Context, Event, event};
use crate::records::{Record, RecordError, parse_date};

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
    Bool(bool),
}

impl CondValue {
    /// What kind of value this is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            CondValue::Int(_) => "an integer",
            CondValue::Float(_) => "a number",
            CondValue::Text(_) => "a string",
            CondValue::Date(_) => "a date",
            CondValue::Bool(_) => "a boolean",
        }
    }
}

impl fmt::Display for CondValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CondValue::Int(i) => write!(f, "{i}"),
            CondValue::Float(x) => write!(f, "{x}"),
            CondValue::Text(s) => write!(f, "{s:?}"),
            CondValue::Date(d) => write!(f, "{d}"),
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
