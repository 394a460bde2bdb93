//! PostgreSQL values as JSON, the way Django's `DjangoJSONEncoder` writes
//! them (so that contexts read the same as django-spark's): integers and
//! floats as numbers (a non-finite float as null), `numeric` exactly, as a
//! string; booleans; text; `date` as `YYYY-MM-DD`; `timestamp` as
//! `YYYY-MM-DDTHH:MM:SS[.mmm]` and `timestamptz` the same in UTC with `Z`
//! (milliseconds, as Django keeps); `time` as `HH:MM:SS[.mmm]`; `interval`
//! as Django's ISO 8601 duration; `uuid` as text; `json`/`jsonb` as nested
//! JSON; `bytea` as base64; `inet`, `cidr`, `macaddr` as text; arrays as
//! JSON arrays; NULL as null. Enums, domains and `citext` read as their
//! underlying text. Anything else is *unmappable*: the config check names
//! the column and its type (exit 2) before a run reads a row.
//!
//! Values arrive in PostgreSQL's binary format, read here directly.
//!
//! Not here: running queries (`backend::postgres`).

use std::fmt::Write as _;

use base64::Engine as _;
use postgres::types::{FromSql, Kind, Type};
use serde_json::Value;

use crate::records::Affinity;

/// A value's bytes in the binary format, whatever its type.
pub struct Raw<'a>(pub Option<&'a [u8]>);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// What a column of this type compares like, or `Unmappable`.
pub fn affinity(ty: &Type) -> Affinity {
    match ty.kind() {
        Kind::Enum(_) => return Affinity::Text,
        Kind::Domain(inner) => return affinity(inner),
        Kind::Array(inner) => {
            return if affinity(inner) == Affinity::Unmappable {
                Affinity::Unmappable
            } else {
                Affinity::Any
            };
        }
        Kind::Simple => {}
        _ => return Affinity::Unmappable,
    }
    match *ty {
        Type::INT2 | Type::INT4 | Type::INT8 | Type::OID => Affinity::Integer,
        Type::FLOAT4 | Type::FLOAT8 => Affinity::Real,
        Type::NUMERIC => Affinity::Numeric,
        Type::BOOL => Affinity::Boolean,
        Type::TEXT
        | Type::VARCHAR
        | Type::BPCHAR
        | Type::NAME
        | Type::CHAR
        | Type::UUID
        | Type::XML
        | Type::INET
        | Type::CIDR
        | Type::MACADDR => Affinity::Text,
        Type::BYTEA => Affinity::Blob,
        Type::DATE
        | Type::TIMESTAMP
        | Type::TIMESTAMPTZ
        | Type::TIME
        | Type::TIMETZ
        | Type::INTERVAL => Affinity::Temporal,
        Type::JSON | Type::JSONB => Affinity::Any,
        _ if ty.name() == "citext" => Affinity::Text,
        _ => Affinity::Unmappable,
    }
}

/// Why a value could not be read.
pub type DecodeError = String;

/// One value as JSON; `Err(Ok(lossy))` for text that is not valid UTF-8
/// (the record becomes defective), `Err(Err(message))` for bytes that are
/// not what the type promises.
pub fn decode(ty: &Type, raw: Option<&[u8]>) -> Result<Value, Result<Value, DecodeError>> {
    let Some(raw) = raw else {
        return Ok(Value::Null);
    };
    match ty.kind() {
        Kind::Enum(_) => return text(raw),
        Kind::Domain(inner) => return decode(inner, Some(raw)),
        Kind::Array(inner) => return array(inner, raw).map_err(Err),
        _ => {}
    }
    let bad = |what: &str| {
        Err(Err(format!(
            "a {} value of {} bytes: {what}",
            ty.name(),
            raw.len()
        )))
    };
    Ok(match *ty {
        Type::BOOL => match raw {
            [b] => Value::Bool(*b != 0),
            _ => return bad("not one byte"),
        },
        Type::INT2 => match <[u8; 2]>::try_from(raw) {
            Ok(b) => Value::from(i16::from_be_bytes(b)),
            Err(_) => return bad("not 2 bytes"),
        },
        Type::INT4 => match <[u8; 4]>::try_from(raw) {
            Ok(b) => Value::from(i32::from_be_bytes(b)),
            Err(_) => return bad("not 4 bytes"),
        },
        Type::OID => match <[u8; 4]>::try_from(raw) {
            Ok(b) => Value::from(u32::from_be_bytes(b)),
            Err(_) => return bad("not 4 bytes"),
        },
        Type::INT8 => match <[u8; 8]>::try_from(raw) {
            Ok(b) => Value::from(i64::from_be_bytes(b)),
            Err(_) => return bad("not 8 bytes"),
        },
        Type::FLOAT4 => match <[u8; 4]>::try_from(raw) {
            Ok(b) => float(f64::from(f32::from_be_bytes(b))),
            Err(_) => return bad("not 4 bytes"),
        },
        Type::FLOAT8 => match <[u8; 8]>::try_from(raw) {
            Ok(b) => float(f64::from_be_bytes(b)),
            Err(_) => return bad("not 8 bytes"),
        },
        Type::NUMERIC => match numeric(raw) {
            Some(text) => Value::String(text),
            None => return bad("not a numeric"),
        },
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::XML | Type::JSON => {
            if *ty == Type::JSON {
                return json(raw);
            }
            return text(raw);
        }
        Type::CHAR => Value::String(char::from(raw.first().copied().unwrap_or(0)).to_string()),
        Type::JSONB => match raw.split_first() {
            Some((1, rest)) => return json(rest),
            _ => return bad("not jsonb version 1"),
        },
        Type::BYTEA => Value::String(base64::engine::general_purpose::STANDARD.encode(raw)),
        Type::UUID => match <[u8; 16]>::try_from(raw) {
            Ok(b) => Value::String(uuid(&b)),
            Err(_) => return bad("not 16 bytes"),
        },
        Type::DATE => match <[u8; 4]>::try_from(raw) {
            Ok(b) => Value::String(date(i32::from_be_bytes(b))),
            Err(_) => return bad("not 4 bytes"),
        },
        Type::TIMESTAMP | Type::TIMESTAMPTZ => match <[u8; 8]>::try_from(raw) {
            Ok(b) => Value::String(timestamp(i64::from_be_bytes(b), *ty == Type::TIMESTAMPTZ)),
            Err(_) => return bad("not 8 bytes"),
        },
        Type::TIME => match <[u8; 8]>::try_from(raw) {
            Ok(b) => Value::String(time_of_day(i64::from_be_bytes(b))),
            Err(_) => return bad("not 8 bytes"),
        },
        Type::TIMETZ => match <[u8; 12]>::try_from(raw) {
            Ok(b) => {
                let us = i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                // Seconds west of UTC, as PostgreSQL keeps it.
                let west = i32::from_be_bytes([b[8], b[9], b[10], b[11]]);
                let east = -west;
                let sign = if east < 0 { '-' } else { '+' };
                let east = east.unsigned_abs();
                Value::String(format!(
                    "{}{sign}{:02}:{:02}",
                    time_of_day(us),
                    east / 3600,
                    east % 3600 / 60
                ))
            }
            Err(_) => return bad("not 12 bytes"),
        },
        Type::INTERVAL => match <[u8; 16]>::try_from(raw) {
            Ok(b) => {
                let us = i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                let days = i32::from_be_bytes([b[8], b[9], b[10], b[11]]);
                let months = i32::from_be_bytes([b[12], b[13], b[14], b[15]]);
                Value::String(interval(us, days, months))
            }
            Err(_) => return bad("not 16 bytes"),
        },
        Type::INET | Type::CIDR => match inet(raw) {
            Some(text) => Value::String(text),
            None => return bad("not an address"),
        },
        Type::MACADDR => match <[u8; 6]>::try_from(raw) {
            Ok(b) => Value::String(
                b.iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
            Err(_) => return bad("not 6 bytes"),
        },
        _ if ty.name() == "citext" => return text(raw),
        _ => {
            return Err(Err(format!(
                "spark cannot read values of type {}",
                ty.name()
            )));
        }
    })
}

fn float(x: f64) -> Value {
    crate::records::float_value(x)
}

/// Text: not UTF-8 is a defect of the record (with the text made valid).
fn text(raw: &[u8]) -> Result<Value, Result<Value, DecodeError>> {
    crate::records::text_value(raw).map_err(Ok)
}

fn json(raw: &[u8]) -> Result<Value, Result<Value, DecodeError>> {
    crate::records::json_column(raw).map_err(Err)
}

/// A binary-format array as a JSON array (nested for several dimensions).
fn array(element: &Type, raw: &[u8]) -> Result<Value, DecodeError> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], DecodeError> {
        let bytes = raw
            .get(at..at + n)
            .ok_or_else(|| "an array cut short".to_owned())?;
        at += n;
        Ok(bytes)
    };
    let i32_at = |b: &[u8]| i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let ndim = i32_at(take(4)?);
    let _has_null = take(4)?;
    let _oid = take(4)?;
    let mut dims = Vec::new();
    for _ in 0..ndim.max(0) {
        let len = i32_at(take(4)?);
        let _lower = take(4)?;
        dims.push(usize::try_from(len).map_err(|_| "a negative array length".to_owned())?);
    }
    let total: usize = if dims.is_empty() {
        0
    } else {
        dims.iter().product()
    };
    let mut items = Vec::with_capacity(total.min(1 << 16));
    for _ in 0..total {
        let len = i32_at(take(4)?);
        let value = if len < 0 {
            Value::Null
        } else {
            let bytes = take(len as usize)?;
            match decode(element, Some(bytes)) {
                Ok(v) | Err(Ok(v)) => v,
                Err(Err(e)) => return Err(e),
            }
        };
        items.push(value);
    }
    // Nest from the innermost dimension outwards.
    let mut values = items;
    for &d in dims.iter().skip(1).rev() {
        values = values
            .chunks(d.max(1))
            .map(|c| Value::Array(c.to_vec()))
            .collect();
    }
    Ok(Value::Array(values))
}

/// The decimal text of a binary `numeric` (exact, with its scale), or
/// `NaN`, `Infinity`, `-Infinity`.
pub fn numeric(raw: &[u8]) -> Option<String> {
    let u16_at =
        |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*raw.get(i)?, *raw.get(i + 1)?])) };
    let ndigits = usize::from(u16_at(0)?);
    let weight = u16_at(2)? as i16;
    let sign = u16_at(4)?;
    let dscale = usize::from(u16_at(6)?);
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => {}
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|k| u16_at(8 + 2 * k))
        .collect::<Option<_>>()?;
    let mut int_part = String::new();
    // Base-10000 digits before the point: weight + 1 of them.
    for k in 0..=i32::from(weight) {
        let d = usize::try_from(k)
            .ok()
            .and_then(|k| digits.get(k))
            .copied()
            .unwrap_or(0);
        if int_part.is_empty() {
            if d != 0 {
                let _ = write!(int_part, "{d}");
            }
        } else {
            let _ = write!(int_part, "{d:04}");
        }
    }
    if int_part.is_empty() {
        int_part.push('0');
    }
    let mut frac = String::new();
    if dscale > 0 {
        let mut k = i32::from(weight) + 1;
        while frac.len() < dscale {
            let d = if k < 0 {
                0
            } else {
                usize::try_from(k)
                    .ok()
                    .and_then(|k| digits.get(k))
                    .copied()
                    .unwrap_or(0)
            };
            let _ = write!(frac, "{d:04}");
            k += 1;
        }
        frac.truncate(dscale);
    }
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    out.push_str(&int_part);
    if !frac.is_empty() {
        out.push('.');
        out.push_str(&frac);
    }
    Some(out)
}

fn uuid(b: &[u8; 16]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Days since 2000-01-01 as `YYYY-MM-DD` (`infinity`, `-infinity`).
fn date(days: i32) -> String {
    match days {
        i32::MAX => return "infinity".into(),
        i32::MIN => return "-infinity".into(),
        _ => {}
    }
    let epoch = jiff::civil::date(2000, 1, 1);
    match epoch.checked_add(jiff::Span::new().days(i64::from(days))) {
        Ok(d) => d.to_string(),
        Err(_) => format!("{days} days from 2000-01-01"),
    }
}

/// Microseconds since 2000-01-01 00:00 as ISO 8601 with milliseconds when
/// there are any, as `DjangoJSONEncoder` writes (`Z` for UTC).
fn timestamp(us: i64, utc: bool) -> String {
    match us {
        i64::MAX => return "infinity".into(),
        i64::MIN => return "-infinity".into(),
        _ => {}
    }
    let days = us.div_euclid(86_400_000_000);
    let of_day = us.rem_euclid(86_400_000_000);
    let day = date(i32::try_from(days).unwrap_or(i32::MAX));
    let mut out = format!("{day}T{}", time_of_day(of_day));
    if utc {
        out.push('Z');
    }
    out
}

/// Microseconds since midnight as `HH:MM:SS[.mmm]`.
fn time_of_day(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let mut out = format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    );
    if micros != 0 {
        let _ = write!(out, ".{:03}", micros / 1000);
    }
    out
}

/// An interval as Django's `duration_iso_string` writes a timedelta
/// (a month counts 30 days, as psycopg2 reads it).
fn interval(us: i64, days: i32, months: i32) -> String {
    let total = i128::from(us) + (i128::from(months) * 30 + i128::from(days)) * 86_400_000_000;
    let sign = if total < 0 { "-" } else { "" };
    let total = total.unsigned_abs();
    let days = total / 86_400_000_000;
    let rest = total % 86_400_000_000;
    let micros = rest % 1_000_000;
    let secs = rest / 1_000_000;
    let ms = if micros != 0 {
        format!(".{micros:06}")
    } else {
        String::new()
    };
    format!(
        "{sign}P{days}DT{:02}H{:02}M{:02}{ms}S",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// `inet`/`cidr` as text: `10.0.0.1`, `10.0.0.0/8`, `::1`.
fn inet(raw: &[u8]) -> Option<String> {
    let (&family, rest) = raw.split_first()?;
    let (&bits, rest) = rest.split_first()?;
    let (&is_cidr, rest) = rest.split_first()?;
    let (&n, addr) = rest.split_first()?;
    let addr = addr.get(..usize::from(n))?;
    let (text, full) = match family {
        2 => (
            std::net::Ipv4Addr::from(<[u8; 4]>::try_from(addr).ok()?).to_string(),
            32,
        ),
        3 => (
            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(addr).ok()?).to_string(),
            128,
        ),
        _ => return None,
    };
    Some(if is_cidr != 0 || bits != full {
        format!("{text}/{bits}")
    } else {
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_bytes(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(ndigits.to_be_bytes());
        b.extend(weight.to_be_bytes());
        b.extend(sign.to_be_bytes());
        b.extend(dscale.to_be_bytes());
        for d in digits {
            b.extend(d.to_be_bytes());
        }
        b
    }

    #[test]
    fn numerics_are_exact() {
        // 12345.6789 = [1, 2345, 6789], weight 1, scale 4
        assert_eq!(
            numeric(&numeric_bytes(3, 1, 0, 4, &[1, 2345, 6789])).unwrap(),
            "12345.6789"
        );
        // -0.05 = [500] at weight -1, scale 2
        assert_eq!(
            numeric(&numeric_bytes(1, -1, 0x4000, 2, &[500])).unwrap(),
            "-0.05"
        );
        // 10.50 (scale 2): [10, 5000]
        assert_eq!(
            numeric(&numeric_bytes(2, 0, 0, 2, &[10, 5000])).unwrap(),
            "10.50"
        );
        // 0 with scale 0
        assert_eq!(numeric(&numeric_bytes(0, 0, 0, 0, &[])).unwrap(), "0");
        // 20000 = [2] weight 1
        assert_eq!(numeric(&numeric_bytes(1, 1, 0, 0, &[2])).unwrap(), "20000");
        assert_eq!(
            numeric(&numeric_bytes(0, 0, 0xC000, 0, &[])).unwrap(),
            "NaN"
        );
    }

    #[test]
    fn times_read_as_django_writes_them() {
        assert_eq!(date(0), "2000-01-01");
        assert_eq!(date(9565), "2026-03-10");
        assert_eq!(date(-1), "1999-12-31");
        let us = 9565 * 86_400_000_000 + ((12 * 3600 + 34 * 60 + 56) * 1_000_000) + 789_123;
        assert_eq!(timestamp(us, true), "2026-03-10T12:34:56.789Z");
        assert_eq!(timestamp(us - 789_123, false), "2026-03-10T12:34:56");
        assert_eq!(interval(3_723_000_005, 1, 0), "P1DT01H02M03.000005S");
        assert_eq!(interval(0, 0, 1), "P30DT00H00M00S");
        assert_eq!(interval(-1_000_000, 0, 0), "-P0DT00H00M01S");
    }

    #[test]
    fn addresses_and_ids() {
        assert_eq!(inet(&[2, 32, 0, 4, 10, 0, 0, 1]).unwrap(), "10.0.0.1");
        assert_eq!(inet(&[2, 8, 1, 4, 10, 0, 0, 0]).unwrap(), "10.0.0.0/8");
        assert_eq!(
            uuid(&[
                0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
                0x0a, 0x11
            ]),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
    }
}
