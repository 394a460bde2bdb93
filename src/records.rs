//! Streaming rows from a table or a query as records: one JSON value per
//! column, in column order, read one row at a time.
//!
//! Decoding: INTEGER and REAL become JSON numbers (a non-finite REAL becomes
//! null), TEXT a string, NULL null, and a BLOB a base64 string (standard
//! alphabet, padded). TEXT that is not valid UTF-8 makes the record
//! defective (`Record::defect`): replacing the bad bytes could make two
//! different values one (two ids, one key), so such a record is skipped
//! and named, never read approximately.
//!
//! Not here: what a record means (sources) or which records were seen (store).

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine as _;
use jiff::civil::Date;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, Statement};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Number, Value};

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
    /// The SQL that reads these records.
    pub fn sql(&self) -> String {
        match self {
            RecordSet::Table {
                table,
                filter: None,
            } => format!("SELECT * FROM {}", quote_ident(table)),
            RecordSet::Table {
                table,
                filter: Some(cond),
            } => format!("SELECT * FROM {} WHERE ({cond})", quote_ident(table)),
            RecordSet::Query(q) => q.clone(),
        }
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

/// Quotes an SQL identifier (`"name"`, inner quotes doubled).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Reads the rows of a prepared statement one at a time, reusing one record.
pub struct RecordReader<'stmt> {
    rows: rusqlite::Rows<'stmt>,
    record: Record,
}

impl<'stmt> RecordReader<'stmt> {
    pub fn new(statement: &'stmt mut Statement<'_>) -> Result<Self, rusqlite::Error> {
        let columns: Arc<[String]> = statement
            .column_names()
            .map(str::to_owned)
            .collect::<Vec<_>>()
            .into();
        let values = Vec::with_capacity(columns.len());
        let rows = statement.query([])?;
        Ok(RecordReader {
            rows,
            record: Record {
                columns,
                values,
                bytes: 0,
                defect: None,
            },
        })
    }

    /// The next record, or `None` at the end. A record with a value that
    /// could not be read faithfully carries its `defect`.
    pub fn next_record(&mut self) -> Result<Option<&Record>, rusqlite::Error> {
        let Some(row) = self.rows.next()? else {
            return Ok(None);
        };
        let record = &mut self.record;
        record.values.clear();
        record.bytes = 0;
        record.defect = None;
        for i in 0..record.columns.len() {
            let value = match decode(row.get_ref(i)?) {
                Ok(value) => value,
                Err(lossy) => {
                    let column = record.columns[i].clone();
                    record.set_defect(RecordError::new(
                        &column,
                        "its text is not valid UTF-8, so it cannot be read faithfully",
                    ));
                    lossy
                }
            };
            record.bytes += value_bytes(&value);
            record.values.push(value);
        }
        Ok(Some(&self.record))
    }
}

/// About how many bytes a value takes in memory.
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

/// One SQLite value as JSON; `Err` carries TEXT that is not valid UTF-8,
/// decoded lossily (for messages only).
pub fn decode(value: ValueRef<'_>) -> Result<Value, Value> {
    Ok(match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Number(i.into()),
        ValueRef::Real(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(text) => Value::String(text.to_owned()),
            Err(_) => return Err(Value::String(String::from_utf8_lossy(t).into_owned())),
        },
        ValueRef::Blob(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
    })
}

/// The columns a statement yields: name and declared type (if the column
/// comes straight from a table).
pub fn columns(
    conn: &Connection,
    sql: &str,
) -> Result<Vec<(String, Option<String>)>, rusqlite::Error> {
    let stmt = conn.prepare(sql)?;
    Ok(stmt
        .columns()
        .map(|c| (c.name().to_owned(), c.decl_type().map(str::to_owned)))
        .collect())
}

/// SQLite's type affinity of a declared column type (its rules, in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

impl Affinity {
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
    fn values_decode_to_json() {
        let conn = Connection::open_in_memory().unwrap();
        let mut stmt = conn
            .prepare("SELECT 1 AS i, 2.5 AS r, 'é' AS t, NULL AS n, x'00ff' AS b")
            .unwrap();
        let mut reader = RecordReader::new(&mut stmt).unwrap();
        let rec = reader.next_record().unwrap().unwrap();
        assert_eq!(
            serde_json::to_value(rec).unwrap(),
            json!({"i": 1, "r": 2.5, "t": "é", "n": null, "b": "AP8="})
        );
        assert!(rec.defect().is_none());
        assert!(reader.next_record().unwrap().is_none());
    }

    #[test]
    fn invalid_utf8_makes_the_record_defective() {
        let conn = Connection::open_in_memory().unwrap();
        let mut stmt = conn
            .prepare("SELECT 7 AS id, CAST(X'61FF' AS TEXT) AS name")
            .unwrap();
        let mut reader = RecordReader::new(&mut stmt).unwrap();
        let rec = reader.next_record().unwrap().unwrap();
        assert_eq!(rec.defect().unwrap().column, "name");
        assert_eq!(rec.get("id"), Some(&json!(7)));
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
