//! Records: rows of a table or a query as JSON values, one per column, in
//! column order; where they come from (`RecordSet`); and what their columns
//! compare like (`Affinity`). Each backend decodes its own values into
//! records (`backend::*::records`).
//!
//! A value that cannot be read faithfully (text that is not valid UTF-8)
//! makes the record defective (`Record::defect`): replacing the bad bytes
//! could make two different values one (two ids, one key), so such a
//! record is skipped and named, never read approximately.
//!
//! Not here: what a record means (sources) or which records were seen (store).

use std::borrow::Cow;
use std::sync::Arc;

use jiff::civil::Date;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

/// One row: column names (shared by all rows of a query) and their values.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    columns: Arc<[String]>,
    values: Vec<Value>,
    /// About how many bytes its values take (to bound batches by size).
    bytes: usize,
    /// Why the record cannot be used as it is, if it cannot.
    defect: Option<RecordError>,
}

/// A value of a record could not be read the way a source needs it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{problem}", if column.is_empty() { String::new() } else { format!("column `{column}`: ") })]
pub struct RecordError {
    /// The column at fault (empty when no one column is).
    pub column: String,
    pub problem: String,
}

impl RecordError {
    pub fn new(column: &str, problem: impl Into<String>) -> Self {
        RecordError {
            column: column.to_owned(),
            problem: problem.into(),
        }
    }
}

impl Record {
    /// Builds a record from column names and values (they must be as many).
    /// A backend reusing one record per row uses `reset` and `push` instead.
    pub fn new(columns: Arc<[String]>, values: Vec<Value>) -> Record {
        debug_assert_eq!(columns.len(), values.len());
        let bytes = values.iter().map(value_bytes).sum();
        Record {
            columns,
            values,
            bytes,
            defect: None,
        }
    }

    /// Builds a record from a JSON object (for tests and previews).
    pub fn from_map(map: Map<String, Value>) -> Record {
        let (columns, values): (Vec<String>, Vec<Value>) = map.into_iter().unzip();
        Record::new(columns.into(), values)
    }

    /// About how many bytes the record's values take.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Why the record cannot be used as it is (a value that could not be
    /// read faithfully), if it cannot.
    pub fn defect(&self) -> Option<&RecordError> {
        self.defect.as_ref()
    }

    /// Marks the record defective (the first defect is kept).
    pub fn set_defect(&mut self, defect: RecordError) {
        self.defect.get_or_insert(defect);
    }

    /// An empty record with these columns, to fill row by row.
    pub fn with_columns(columns: Arc<[String]>) -> Record {
        let values = Vec::with_capacity(columns.len());
        Record {
            columns,
            values,
            bytes: 0,
            defect: None,
        }
    }

    /// Empties the values for the next row (the columns stay).
    pub fn reset(&mut self) {
        self.values.clear();
        self.bytes = 0;
        self.defect = None;
    }

    /// Appends the next column's value; `Err` carries a value that could not
    /// be read faithfully (kept, for messages, and the record defective).
    #[inline]
    pub fn push(&mut self, value: Result<Value, Value>) {
        let value = match value {
            Ok(value) => value,
            Err(lossy) => {
                let column = self
                    .columns
                    .get(self.values.len())
                    .cloned()
                    .unwrap_or_default();
                self.set_defect(RecordError::new(
                    &column,
                    "its text is not valid UTF-8, so it cannot be read faithfully",
                ));
                lossy
            }
        };
        self.bytes += value_bytes(&value);
        self.values.push(value);
    }

    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The value of `column`, or `None` if the record has no such column.
    pub fn get(&self, column: &str) -> Option<&Value> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.values.get(i)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.columns
            .iter()
            .map(String::as_str)
            .zip(self.values.iter())
    }

    /// The record as a JSON object (a copy), e.g. to put it in a context.
    pub fn to_map(&self) -> Map<String, Value> {
        self.iter()
            .map(|(c, v)| (c.to_owned(), v.clone()))
            .collect()
    }

    fn require(&self, column: &str) -> Result<&Value, RecordError> {
        self.get(column)
            .ok_or_else(|| RecordError::new(column, "missing from the record"))
    }

    /// An integer column.
    pub fn i64(&self, column: &str) -> Result<i64, RecordError> {
        let v = self.require(column)?;
        v.as_i64()
            .ok_or_else(|| RecordError::new(column, format!("expected an integer, found {v}")))
    }

    /// A text column.
    pub fn str(&self, column: &str) -> Result<&str, RecordError> {
        let v = self.require(column)?;
        v.as_str()
            .ok_or_else(|| RecordError::new(column, format!("expected text, found {v}")))
    }

    /// A boolean stored the SQLite way (0/1) or as JSON true/false.
    pub fn bool(&self, column: &str) -> Result<bool, RecordError> {
        match self.require(column)? {
            Value::Bool(b) => Ok(*b),
            Value::Number(n) if n.as_i64() == Some(0) => Ok(false),
            Value::Number(n) if n.as_i64() == Some(1) => Ok(true),
            v => Err(RecordError::new(
                column,
                format!("expected a boolean (0 or 1), found {v}"),
            )),
        }
    }

    /// A date stored as text, `YYYY-MM-DD` (a datetime's date part is taken).
    pub fn date(&self, column: &str) -> Result<Date, RecordError> {
        let text = self.str(column)?;
        parse_date(text).ok_or_else(|| {
            RecordError::new(
                column,
                format!("expected a date (YYYY-MM-DD), found {text:?}"),
            )
        })
    }

    /// The column as key text: an integer or a string verbatim, as django-spark
    /// formats a primary key into `"{group}_{id}"`.
    pub fn key_text(&self, column: &str) -> Result<Cow<'_, str>, RecordError> {
        match self.require(column)? {
            Value::String(s) => Ok(Cow::Borrowed(s)),
            Value::Number(n) => Ok(Cow::Owned(n.to_string())),
            v => Err(RecordError::new(
                column,
                format!("expected an id (integer or text), found {v}"),
            )),
        }
    }
}

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.values.len()))?;
        for (c, v) in self.iter() {
            map.serialize_entry(c, v)?;
        }
        map.end()
    }
}

/// Parses `YYYY-MM-DD`, optionally followed by a time (`T` or space).
/// How deep a JSON value read from the database may nest (objects and
/// arrays within each other). A deeper one makes its record defective: a
/// context holds the record a level or two down, and what is recorded must
/// read back as itself under serde_json's limit of 128 levels.
pub const MAX_NESTING: usize = 64;

/// A JSON column's value (PostgreSQL's `json`/`jsonb`, MySQL's `JSON`),
/// read faithfully or not at all: one that does not parse into spark's
/// JSON (a number beyond f64 such as `1e400`, nesting beyond serde_json's
/// 128 levels) or nests deeper than `MAX_NESTING` is an error naming why
/// (its record is one bad record).
pub fn json_column(raw: &[u8]) -> Result<Value, String> {
    let too_deep = || format!("json nested deeper than {MAX_NESTING} levels");
    let value: Value = serde_json::from_slice(raw).map_err(|e| {
        if e.to_string().starts_with("recursion limit") {
            too_deep()
        } else {
            format!("json that spark cannot read: {e}")
        }
    })?;
    if nests_deeper_than(&value, MAX_NESTING) {
        return Err(too_deep());
    }
    Ok(value)
}

/// A float as JSON (`null` for NaN and the infinities, which JSON lacks).
pub fn float_value(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// Text from the database as a string: `Err` with the text made valid
/// (U+FFFD for each bad byte) when it is not UTF-8.
pub fn text_value(raw: &[u8]) -> Result<Value, Value> {
    match std::str::from_utf8(raw) {
        Ok(t) => Ok(Value::String(t.to_owned())),
        Err(_) => Err(Value::String(String::from_utf8_lossy(raw).into_owned())),
    }
}

/// Whether `value` nests deeper than `max` levels (walked without
/// recursion, so that no depth can exhaust the stack).
pub fn nests_deeper_than(value: &Value, max: usize) -> bool {
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if depth + 1 > max {
            return true;
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    false
}

pub fn parse_date(text: &str) -> Option<Date> {
    let b = text.as_bytes();
    if b.len() < 10 || (b.len() > 10 && b[10] != b' ' && b[10] != b'T') {
        return None;
    }
    if b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i32> {
        b[range].iter().try_fold(0i32, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + i32::from(d - b'0'))
        })
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    Date::new(y as i16, m as i8, d as i8).ok()
}

/// ISO 8601 text as a civil date and time, with its offset (seconds east of
/// UTC) when it gives one: `2026-03-10` (midnight), `2026-03-10 14:30`,
/// `2026-03-10T14:30:00.25`, with `Z`, `±HH`, `±HHMM` or `±HH:MM` after it.
/// The one reading of datetimes for conditions and the `date` filter.
pub fn parse_datetime(text: &str) -> Option<(jiff::civil::DateTime, Option<i32>)> {
    let text = text.trim();
    let date = parse_date(text)?;
    if text.len() == 10 {
        return Some((date.to_datetime(jiff::civil::Time::midnight()), None));
    }
    let (body, offset) = split_offset(text)?;
    let mut body = body.to_owned();
    body.replace_range(10..11, "T");
    Some((body.parse().ok()?, offset))
}

/// The text before a trailing `Z`, `±HH:MM`, `±HHMM` or `±HH` (after the
/// date and its separator), and that offset in seconds.
fn split_offset(text: &str) -> Option<(&str, Option<i32>)> {
    if let Some(body) = text.strip_suffix(['Z', 'z']) {
        return Some((body, Some(0)));
    }
    let time = &text[11..];
    let Some(sign_at) = time.rfind(['+', '-']) else {
        return Some((text, None));
    };
    let (body, offset) = text.split_at(11 + sign_at);
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let digits: String = offset[1..].chars().filter(|c| *c != ':').collect();
    if !(digits.len() == 2 || digits.len() == 4) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i32 = digits[..2].parse().ok()?;
    let minutes: i32 = if digits.len() == 4 {
        digits[2..].parse().ok()?
    } else {
        0
    };
    Some((body, Some(sign * (hours * 3600 + minutes * 60))))
}

/// Records read incrementally: those whose `column` is at or above
/// `bound` (all of them without one), in that column's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    pub column: String,
    pub bound: Option<Bound>,
}

/// The lowest cursor value an incremental read takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    Integer(i64),
    /// A date or a datetime, written as the database showed its values
    /// (only digits, `-`, `:`, `.`, ` `, `T`, `Z` and `+`: see `Bound::moment`).
    Moment(String),
}

impl Bound {
    /// A date or datetime bound, if `text` holds nothing but what dates and
    /// datetimes are written with (it goes into SQL as a quoted literal).
    pub fn moment(text: &str) -> Option<Bound> {
        let fine = !text.is_empty()
            && text.len() <= 40
            && text
                .chars()
                .all(|c| c.is_ascii_digit() || "-:. TZ+".contains(c));
        fine.then(|| Bound::Moment(text.to_owned()))
    }

    /// The bound as a literal of standard SQL (SQLite, PostgreSQL).
    pub fn literal(&self) -> String {
        match self {
            Bound::Integer(n) => n.to_string(),
            Bound::Moment(text) => format!("'{text}'"),
        }
    }
}

/// Where a source's records come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RecordSet {
    /// Every row of a table, optionally filtered by a SQL condition.
    Table {
        table: String,
        filter: Option<String>,
    },
    /// The rows of a SELECT statement.
    Query(String),
}

impl RecordSet {
    /// The SQL that reads these records, a table's name quoted by `quote`
    /// (each driver's dialect: see `Reader::scan`).
    pub fn sql_quoted(&self, quote: fn(&str) -> String) -> String {
        match self {
            RecordSet::Table {
                table,
                filter: None,
            } => format!("SELECT * FROM {}", quote(table)),
            RecordSet::Table {
                table,
                filter: Some(cond),
            } => format!("SELECT * FROM {} WHERE ({cond})", quote(table)),
            RecordSet::Query(q) => q.clone(),
        }
    }

    /// The SQL that reads the records at or above `since`'s bound, in its
    /// column's order: a table's condition in its WHERE (an index on the
    /// column serves it), a query wrapped so that the database can push
    /// the condition down into it. `literal` writes the bound in the
    /// database's words.
    pub fn sql_since(
        &self,
        quote: fn(&str) -> String,
        since: &Since,
        literal: &dyn Fn(&Bound) -> String,
    ) -> String {
        let column = quote(&since.column);
        let bound = since
            .bound
            .as_ref()
            .map(|b| format!("{column} >= {}", literal(b)));
        match (self, bound) {
            (RecordSet::Table { table, filter }, bound) => {
                let conditions: Vec<String> = filter
                    .iter()
                    .map(|f| format!("({f})"))
                    .chain(bound)
                    .collect();
                let mut sql = format!("SELECT * FROM {}", quote(table));
                if !conditions.is_empty() {
                    sql.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
                }
                sql.push_str(&format!(" ORDER BY {column}"));
                sql
            }
            (RecordSet::Query(q), bound) => {
                let mut sql = format!("SELECT * FROM ({q}) AS spark_q");
                if let Some(b) = bound {
                    sql.push_str(&format!(" WHERE spark_q.{b}"));
                }
                sql.push_str(&format!(" ORDER BY spark_q.{column}"));
                sql
            }
        }
    }

    /// `sql_quoted` in standard SQL's quotes, to show (`list-sources`).
    pub fn sql(&self) -> String {
        self.sql_quoted(quote_ident)
    }

    /// A short human description: `table challenge where is_active = 1`.
    pub fn describe(&self) -> String {
        match self {
            RecordSet::Table {
                table,
                filter: None,
            } => format!("table {table}"),
            RecordSet::Table {
                table,
                filter: Some(cond),
            } => format!("table {table} where {cond}"),
            RecordSet::Query(q) => {
                format!(
                    "query {}",
                    q.split_whitespace().collect::<Vec<_>>().join(" ")
                )
            }
        }
    }
}

/// About how many bytes a value takes in memory.
#[inline]
fn value_bytes(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len() + 24,
        Value::Array(items) => items.iter().map(value_bytes).sum::<usize>() + 24,
        Value::Object(map) => {
            map.iter()
                .map(|(k, v)| k.len() + value_bytes(v))
                .sum::<usize>()
                + 48
        }
        _ => 16,
    }
}

/// Quotes an SQL identifier (`"name"`, inner quotes doubled).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// What a column's values compare like, from its declared type: SQLite's
/// type affinity (its rules, in order), plus the kinds PostgreSQL's types
/// add (booleans, dates and times, and types whose values can be anything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
    /// PostgreSQL `boolean`: JSON true/false.
    Boolean,
    /// PostgreSQL `date`, `timestamp`, `timestamptz`, `time`: ISO text.
    Temporal,
    /// JSON, arrays: anything.
    Any,
    /// A type spark cannot turn into JSON (a PostgreSQL composite, range,
    /// ...): an error naming the column when the config is checked.
    Unmappable,
}

impl Affinity {
    /// SQLite's affinity for a declared type, with the types Django
    /// declares for dates and times (`date`, `datetime`, `time`; also
    /// `timestamp`) told apart from other numeric ones: SQLite stores them
    /// as ISO text, and a condition compares them as dates.
    pub fn of(declared: &str) -> Affinity {
        let t = declared.to_ascii_uppercase();
        if t.contains("INT") {
            Affinity::Integer
        } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
            Affinity::Text
        } else if t.contains("BLOB") || t.is_empty() {
            Affinity::Blob
        } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
            Affinity::Real
        } else if t.contains("DATE") || t.contains("TIME") {
            Affinity::Temporal
        } else {
            Affinity::Numeric
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(v: Value) -> Record {
        let Value::Object(map) = v else {
            unreachable!("tests pass objects")
        };
        Record::from_map(map)
    }

    #[test]
    fn nesting_is_measured_in_levels_of_objects_and_arrays() {
        assert!(!nests_deeper_than(&json!(1), 0));
        assert!(nests_deeper_than(&json!([]), 0));
        assert!(!nests_deeper_than(&json!({"a": [1, {"b": 2}]}), 3));
        assert!(nests_deeper_than(&json!({"a": [1, {"b": {}}]}), 3));
        let mut deep = json!(0);
        for _ in 0..100_000 {
            deep = Value::Array(vec![deep]);
        }
        assert!(nests_deeper_than(&deep, MAX_NESTING));
        // Dropping it recursively would overflow the stack.
        std::mem::forget(deep);
    }

    #[test]
    fn dates_parse_with_or_without_time() {
        assert_eq!(parse_date("2024-02-29"), Some(Date::constant(2024, 2, 29)));
        assert_eq!(
            parse_date("2024-02-29 10:00:00"),
            Some(Date::constant(2024, 2, 29))
        );
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(parse_date("2024-2-29"), None);
        assert_eq!(parse_date("2024-02-29x"), None);
        assert_eq!(parse_date(""), None);
    }

    #[test]
    fn accessors_name_the_column_on_error() {
        let r = record(json!({"id": 3, "name": "x", "flag": 1, "day": "nope"}));
        assert_eq!(r.i64("id"), Ok(3));
        assert_eq!(r.bool("flag"), Ok(true));
        assert_eq!(r.key_text("name").as_deref(), Ok("x"));
        assert_eq!(r.key_text("id").as_deref(), Ok("3"));
        let e = r.date("day").unwrap_err();
        assert_eq!(e.column, "day");
        assert!(e.to_string().contains("\"nope\""), "{e}");
        assert_eq!(r.i64("missing").unwrap_err().column, "missing");
        assert!(r.i64("name").is_err());
    }

    #[test]
    fn table_sql_quotes_the_name() {
        let set = RecordSet::Table {
            table: "we\"ird".into(),
            filter: Some("a = 1".into()),
        };
        assert_eq!(set.sql(), "SELECT * FROM \"we\"\"ird\" WHERE (a = 1)");
    }
}
