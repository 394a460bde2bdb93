//! Wall-clock time as the store writes it: Unix milliseconds for scheduling,
//! and UTC text in Django's datetime format for people and for `created_at`.

use jiff::Timestamp;

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// `ms` as UTC text, `YYYY-MM-DD HH:MM:SS.ffffff` (what Django stores in a
/// `datetime` column).
pub fn utc_text(ms: i64) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S%.6f").to_string(),
        Err(_) => String::from("?"),
    }
}

/// Now as UTC text.
pub fn now_text() -> String {
    utc_text(now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn django_datetime_format() {
        assert_eq!(utc_text(0), "1970-01-01 00:00:00.000000");
        assert_eq!(utc_text(1_700_000_000_123), "2023-11-14 22:13:20.123000");
    }
}
