//! SQLite rows as records: INTEGER and REAL become JSON numbers (a
//! non-finite REAL becomes null), TEXT a string, NULL null, and a BLOB a
//! base64 string (standard alphabet, padded). TEXT that is not valid UTF-8
//! makes the record defective (see `crate::records`).
//!
//! Not here: what a record means (sources).

use std::sync::Arc;

use base64::Engine as _;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, Statement};
use serde_json::{Number, Value};

use crate::records::{Affinity, Record};
use crate::store::Column;

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
        let rows = statement.query([])?;
        Ok(RecordReader {
            rows,
            record: Record::with_columns(columns),
        })
    }

    /// The next record, or `None` at the end. A record with a value that
    /// could not be read faithfully carries its `defect`.
    pub fn next_record(&mut self) -> Result<Option<&Record>, rusqlite::Error> {
        let Some(row) = self.rows.next()? else {
            return Ok(None);
        };
        let record = &mut self.record;
        record.reset();
        for i in 0..record.columns().len() {
            record.push(decode(row.get_ref(i)?));
        }
        Ok(Some(&self.record))
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
/// comes straight from a table), with SQLite's affinity.
pub fn columns(conn: &Connection, sql: &str) -> Result<Vec<Column>, rusqlite::Error> {
    let stmt = conn.prepare(sql)?;
    Ok(stmt
        .columns()
        .map(|c| {
            let declared = c.decl_type().map(str::to_owned);
            Column {
                name: c.name().to_owned(),
                affinity: declared.as_deref().map_or(Affinity::Any, Affinity::of),
                declared,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
