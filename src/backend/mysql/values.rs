//! MySQL and MariaDB values as JSON, the way Django reads them and its
//! `DjangoJSONEncoder` writes them (so that contexts read the same as
//! django-spark's): integers as numbers (BIGINT UNSIGNED beyond i64 exact),
//! floats as numbers (non-finite: null), DECIMAL exactly, as a string;
//! TINYINT(1) (Django's BooleanField) as a boolean; text, ENUM and SET as
//! strings (utf8mb4 intact); DATE as `YYYY-MM-DD`; DATETIME and TIMESTAMP
//! as UTC moments `YYYY-MM-DDTHH:MM:SS[.mmm]Z` (Django stores UTC with
//! `USE_TZ`, and spark's sessions read TIMESTAMP in UTC); TIME as
//! `HH:MM:SS[.mmm]`; JSON (MySQL's JSON type, and MariaDB's, a LONGTEXT
//! with a `json_valid` check) as nested JSON; BIT as a number. Binary
//! columns (BLOB, BINARY, VARBINARY, GEOMETRY) are *unmappable*: the config
//! check names the column (exit 2) before a run reads a row.
//!
//! Values arrive in the binary protocol (a prepared statement), read here.
//!
//! Not here: running queries (`backend::mysql`).

use std::fmt::Write as _;

use mysql::Value as My;
use mysql::consts::{ColumnFlags, ColumnType};
use serde_json::Value;

use crate::records::Affinity;

/// The character set number of binary strings.
const BINARY: u16 = 63;

/// What a column is, as far as reading it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Integer,
    Unsigned,
    Boolean,
    Float,
    Decimal,
    Text,
    Json,
    Date,
    Moment,
    Time,
    Bit,
    Year,
    /// Bytes spark does not turn into JSON.
    Binary,
}

/// What the column of this metadata holds (`json`: a column MariaDB marks
/// as JSON with a check, found by name).
pub fn kind(column: &mysql::Column, json: bool) -> Kind {
    let flags = column.flags();
    let binary = column.character_set() == BINARY;
    match column.column_type() {
        ColumnType::MYSQL_TYPE_TINY if column.column_length() == 1 => Kind::Boolean,
        ColumnType::MYSQL_TYPE_TINY
        | ColumnType::MYSQL_TYPE_SHORT
        | ColumnType::MYSQL_TYPE_LONG
        | ColumnType::MYSQL_TYPE_INT24
        | ColumnType::MYSQL_TYPE_LONGLONG => {
            if flags.contains(ColumnFlags::UNSIGNED_FLAG) {
                Kind::Unsigned
            } else {
                Kind::Integer
            }
        }
        ColumnType::MYSQL_TYPE_YEAR => Kind::Year,
        ColumnType::MYSQL_TYPE_FLOAT | ColumnType::MYSQL_TYPE_DOUBLE => Kind::Float,
        ColumnType::MYSQL_TYPE_DECIMAL | ColumnType::MYSQL_TYPE_NEWDECIMAL => Kind::Decimal,
        ColumnType::MYSQL_TYPE_DATE | ColumnType::MYSQL_TYPE_NEWDATE => Kind::Date,
        ColumnType::MYSQL_TYPE_DATETIME
        | ColumnType::MYSQL_TYPE_DATETIME2
        | ColumnType::MYSQL_TYPE_TIMESTAMP
        | ColumnType::MYSQL_TYPE_TIMESTAMP2 => Kind::Moment,
        ColumnType::MYSQL_TYPE_TIME | ColumnType::MYSQL_TYPE_TIME2 => Kind::Time,
        ColumnType::MYSQL_TYPE_BIT => Kind::Bit,
        ColumnType::MYSQL_TYPE_JSON => Kind::Json,
        ColumnType::MYSQL_TYPE_ENUM | ColumnType::MYSQL_TYPE_SET => Kind::Text,
        ColumnType::MYSQL_TYPE_VARCHAR
        | ColumnType::MYSQL_TYPE_VAR_STRING
        | ColumnType::MYSQL_TYPE_STRING
        | ColumnType::MYSQL_TYPE_TINY_BLOB
        | ColumnType::MYSQL_TYPE_MEDIUM_BLOB
        | ColumnType::MYSQL_TYPE_LONG_BLOB
        | ColumnType::MYSQL_TYPE_BLOB => {
            if binary {
                Kind::Binary
            } else if json {
                Kind::Json
            } else {
                Kind::Text
            }
        }
        ColumnType::MYSQL_TYPE_NULL => Kind::Text,
        _ => Kind::Binary,
    }
}

/// The type's name as the database writes it, for messages.
pub fn declared(column: &mysql::Column, kind: Kind) -> String {
    let base = match column.column_type() {
        ColumnType::MYSQL_TYPE_TINY => "tinyint",
        ColumnType::MYSQL_TYPE_SHORT => "smallint",
        ColumnType::MYSQL_TYPE_LONG => "int",
        ColumnType::MYSQL_TYPE_INT24 => "mediumint",
        ColumnType::MYSQL_TYPE_LONGLONG => "bigint",
        ColumnType::MYSQL_TYPE_YEAR => "year",
        ColumnType::MYSQL_TYPE_FLOAT => "float",
        ColumnType::MYSQL_TYPE_DOUBLE => "double",
        ColumnType::MYSQL_TYPE_DECIMAL | ColumnType::MYSQL_TYPE_NEWDECIMAL => "decimal",
        ColumnType::MYSQL_TYPE_DATE | ColumnType::MYSQL_TYPE_NEWDATE => "date",
        ColumnType::MYSQL_TYPE_DATETIME | ColumnType::MYSQL_TYPE_DATETIME2 => "datetime",
        ColumnType::MYSQL_TYPE_TIMESTAMP | ColumnType::MYSQL_TYPE_TIMESTAMP2 => "timestamp",
        ColumnType::MYSQL_TYPE_TIME | ColumnType::MYSQL_TYPE_TIME2 => "time",
        ColumnType::MYSQL_TYPE_BIT => "bit",
        ColumnType::MYSQL_TYPE_JSON => "json",
        ColumnType::MYSQL_TYPE_ENUM => "enum",
        ColumnType::MYSQL_TYPE_SET => "set",
        ColumnType::MYSQL_TYPE_GEOMETRY => "geometry",
        ColumnType::MYSQL_TYPE_VARCHAR | ColumnType::MYSQL_TYPE_VAR_STRING => {
            if kind == Kind::Binary {
                "varbinary"
            } else {
                "varchar"
            }
        }
        ColumnType::MYSQL_TYPE_STRING => {
            if kind == Kind::Binary {
                "binary"
            } else {
                "char"
            }
        }
        _ if kind == Kind::Binary => "blob",
        _ if kind == Kind::Json => "json",
        _ => "text",
    };
    match kind {
        Kind::Boolean => "tinyint(1)".to_owned(),
        Kind::Unsigned => format!("{base} unsigned"),
        _ => base.to_owned(),
    }
}

/// What a column of this kind compares like (`Unmappable`: refused).
pub fn affinity(kind: Kind) -> Affinity {
    match kind {
        Kind::Integer | Kind::Unsigned | Kind::Bit | Kind::Year => Affinity::Integer,
        Kind::Boolean => Affinity::Boolean,
        Kind::Float => Affinity::Real,
        Kind::Decimal => Affinity::Numeric,
        Kind::Text => Affinity::Text,
        Kind::Json => Affinity::Any,
        Kind::Date | Kind::Moment | Kind::Time => Affinity::Temporal,
        Kind::Binary => Affinity::Unmappable,
    }
}

/// One value as JSON; `Err(Ok(lossy))` for text that is not valid UTF-8
/// (the record becomes defective), `Err(Err(message))` for a value that is
/// not what the column promises.
pub fn decode(kind: Kind, value: &My) -> Result<Value, Result<Value, String>> {
    if let My::NULL = value {
        return Ok(Value::Null);
    }
    let bad = |what: &str| Err(Err(format!("{what} in a column of kind {kind:?}")));
    Ok(match (kind, value) {
        (Kind::Boolean, My::Int(n)) => Value::Bool(*n != 0),
        (Kind::Boolean, My::UInt(n)) => Value::Bool(*n != 0),
        (Kind::Integer | Kind::Year | Kind::Unsigned, My::Int(n)) => Value::from(*n),
        (Kind::Integer | Kind::Year | Kind::Unsigned, My::UInt(n)) => Value::from(*n),
        (Kind::Float, My::Float(x)) => float(f64::from(*x)),
        (Kind::Float, My::Double(x)) => float(*x),
        (Kind::Decimal, My::Bytes(b)) => return text(b),
        (Kind::Text, My::Bytes(b)) => return text(b),
        (Kind::Json, My::Bytes(b)) => return json(b),
        (Kind::Bit, My::Bytes(b)) if b.len() <= 8 => {
            Value::from(b.iter().fold(0u64, |n, byte| n << 8 | u64::from(*byte)))
        }
        (Kind::Date, My::Date(y, m, d, ..)) => Value::String(format!("{y:04}-{m:02}-{d:02}")),
        (Kind::Moment, My::Date(y, m, d, h, i, s, us)) => Value::String(format!(
            "{y:04}-{m:02}-{d:02}T{}Z",
            time_of_day(u32::from(*h), *i, *s, *us)
        )),
        (Kind::Time, My::Time(negative, days, h, i, s, us)) => {
            let hours = days * 24 + u32::from(*h);
            let t = time_of_day(hours, *i, *s, *us);
            Value::String(if *negative { format!("-{t}") } else { t })
        }
        // A text-protocol value of any kind: its text.
        (_, My::Bytes(b)) if kind != Kind::Binary => return text(b),
        (_, other) => return bad(&format!("{other:?}")),
    })
}

fn float(x: f64) -> Value {
    crate::records::float_value(x)
}

/// Text: not UTF-8 is a defect of the record (with the text made valid).
fn text(raw: &[u8]) -> Result<Value, Result<Value, String>> {
    crate::records::text_value(raw).map_err(Ok)
}

fn json(raw: &[u8]) -> Result<Value, Result<Value, String>> {
    crate::records::json_column(raw).map_err(Err)
}

/// `HH:MM:SS[.mmm]`, milliseconds when there are any (as Django writes).
fn time_of_day(h: u32, i: u8, s: u8, us: u32) -> String {
    let mut out = format!("{h:02}:{i:02}:{s:02}");
    if us != 0 {
        let _ = write!(out, ".{:03}", us / 1000);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_django_writes_them() {
        let ok = |k, v| decode(k, &v).unwrap();
        assert_eq!(ok(Kind::Boolean, My::Int(1)), Value::Bool(true));
        assert_eq!(
            ok(Kind::Unsigned, My::UInt(u64::MAX)).to_string(),
            "18446744073709551615"
        );
        assert_eq!(
            ok(
                Kind::Decimal,
                My::Bytes(b"12345678901234567890.10".to_vec())
            ),
            Value::String("12345678901234567890.10".into())
        );
        assert_eq!(
            ok(Kind::Moment, My::Date(2026, 3, 1, 10, 5, 7, 123_456)),
            Value::String("2026-03-01T10:05:07.123Z".into())
        );
        assert_eq!(
            ok(Kind::Date, My::Date(2026, 3, 1, 0, 0, 0, 0)),
            Value::String("2026-03-01".into())
        );
        assert_eq!(
            ok(Kind::Time, My::Time(true, 1, 2, 3, 4, 0)),
            Value::String("-26:03:04".into())
        );
        assert_eq!(
            ok(Kind::Json, My::Bytes(br#"{"a": [1, "\u00e9"]}"#.to_vec()))["a"][1],
            "é"
        );
        assert_eq!(ok(Kind::Text, My::Bytes("🚀".as_bytes().to_vec())), "🚀");
        assert_eq!(ok(Kind::Float, My::Double(f64::NAN)), Value::Null);
        assert!(matches!(
            decode(Kind::Json, &My::Bytes(b"1e400".to_vec())),
            Err(Err(_))
        ));
        assert!(matches!(
            decode(Kind::Text, &My::Bytes(vec![0xff])),
            Err(Ok(_))
        ));
    }
}
