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

/// The moment `age` before now as UTC text (a cutoff for prune). Durations
/// are at most `config::MAX_DURATION`, so the moment is always one a
/// clock and a database represent; an age beyond even that is cut to the
/// earliest moment there is, which selects nothing.
pub fn ago_text(age: std::time::Duration) -> String {
    let ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
    let min = Timestamp::MIN.as_millisecond();
    utc_text(now_ms().saturating_sub(ms).max(min))
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

    #[test]
    fn a_cutoff_too_far_back_selects_nothing_instead_of_everything() {
        let cutoff = ago_text(std::time::Duration::from_secs(99_999_999_999 * 86_400));
        assert!(cutoff.starts_with('-'), "{cutoff}");
        assert!(cutoff.as_str() < "0001-01-01", "{cutoff}");
    }
}
