//! Django's `date` filter: format codes as in Django's `dateformat`, for
//! ISO text (what spark's records hold: `2026-03-10`, `2026-03-10 14:30:00`,
//! `2026-03-10T14:30:00Z`, `2026-03-10T16:30:00+02:00`).
//!
//! Supported codes: `a A b c d D e E f F g G h H i I j l L m M n N o O P r s
//! S t T u U w W y Y z Z`, and `\` to write the next character as it is;
//! any other character is written as it is. Names are English. A datetime
//! is shown in its own offset (UTC for `timestamptz` values); Django would
//! convert to its `TIME_ZONE`. A date alone formats its time codes as
//! midnight (Django renders nothing). A value that is not a date renders
//! empty, as in Django.

use std::fmt::Write as _;

use jiff::civil::{Date, DateTime, Time, Weekday};

use crate::records::parse_datetime;

/// Django's `DATE_FORMAT`, used when no format is given.
pub const DEFAULT_FORMAT: &str = "N j, Y";

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Associated Press style, as Django's `N`.
const MONTHS_AP: [&str; 12] = [
    "Jan.", "Feb.", "March", "April", "May", "June", "July", "Aug.", "Sept.", "Oct.", "Nov.",
    "Dec.",
];

/// A date or datetime read from text, with its offset when it had one.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Moment {
    at: DateTime,
    /// Seconds east of UTC.
    offset: Option<i32>,
}

fn parse(text: &str) -> Option<Moment> {
    parse_datetime(text).map(|(at, offset)| Moment { at, offset })
}

/// The `date` filter: `{{ value|date("d.m.Y") }}`.
pub fn date_filter(value: minijinja::Value, format: Option<String>) -> String {
    match value.as_str() {
        Some(text) => format_date(text, format.as_deref().unwrap_or(DEFAULT_FORMAT)),
        None => String::new(),
    }
}

/// `text` (ISO date or datetime) in Django's `format`; empty when it is not
/// a date.
pub fn format_date(text: &str, format: &str) -> String {
    match parse(text) {
        Some(moment) => render(&moment, format),
        None => String::new(),
    }
}

fn offset_text(seconds: i32, colon: bool) -> String {
    let sign = if seconds < 0 { '-' } else { '+' };
    let s = seconds.unsigned_abs();
    if colon {
        format!("{sign}{:02}:{:02}", s / 3600, s % 3600 / 60)
    } else {
        format!("{sign}{:02}{:02}", s / 3600, s % 3600 / 60)
    }
}

fn twelve(hour: i8) -> i8 {
    match hour % 12 {
        0 => 12,
        h => h,
    }
}

/// Django's `f`: `1`, `1:30`.
fn short_time(t: Time) -> String {
    if t.minute() == 0 {
        twelve(t.hour()).to_string()
    } else {
        format!("{}:{:02}", twelve(t.hour()), t.minute())
    }
}

fn am_pm(t: Time) -> &'static str {
    if t.hour() < 12 { "a.m." } else { "p.m." }
}

fn weekday_name(d: Date) -> &'static str {
    match d.weekday() {
        Weekday::Monday => "Monday",
        Weekday::Tuesday => "Tuesday",
        Weekday::Wednesday => "Wednesday",
        Weekday::Thursday => "Thursday",
        Weekday::Friday => "Friday",
        Weekday::Saturday => "Saturday",
        Weekday::Sunday => "Sunday",
    }
}

fn month_name(d: Date) -> &'static str {
    MONTHS[(d.month() - 1) as usize]
}

fn ordinal(day: i8) -> &'static str {
    match (day % 10, day) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    }
}

fn unix_seconds(m: &Moment) -> i64 {
    let utc =
        m.at.to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .map(|z| z.timestamp().as_second())
            .unwrap_or(0);
    utc - i64::from(m.offset.unwrap_or(0))
}

fn render(m: &Moment, format: &str) -> String {
    let (d, t) = (m.at.date(), m.at.time());
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        let _ = match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
                Ok(())
            }
            'a' => write!(out, "{}", am_pm(t)),
            'A' => write!(out, "{}", if t.hour() < 12 { "AM" } else { "PM" }),
            'b' => write!(out, "{}", month_name(d)[..3].to_lowercase()),
            'c' => {
                let _ = write!(out, "{}", m.at.strftime("%Y-%m-%dT%H:%M:%S"));
                if t.subsec_nanosecond() != 0 {
                    let _ = write!(out, ".{:06}", t.subsec_nanosecond() / 1000);
                }
                match m.offset {
                    Some(o) => write!(out, "{}", offset_text(o, true)),
                    None => Ok(()),
                }
            }
            'd' => write!(out, "{:02}", d.day()),
            'D' => write!(out, "{}", &weekday_name(d)[..3]),
            'e' | 'T' => match m.offset {
                Some(0) => write!(out, "UTC"),
                Some(o) => write!(out, "UTC{}", offset_text(o, true)),
                None => Ok(()),
            },
            'E' | 'F' => write!(out, "{}", month_name(d)),
            'f' => write!(out, "{}", short_time(t)),
            'g' => write!(out, "{}", twelve(t.hour())),
            'G' => write!(out, "{}", t.hour()),
            'h' => write!(out, "{:02}", twelve(t.hour())),
            'H' => write!(out, "{:02}", t.hour()),
            'i' => write!(out, "{:02}", t.minute()),
            'I' => write!(out, "0"),
            'j' => write!(out, "{}", d.day()),
            'l' => write!(out, "{}", weekday_name(d)),
            'L' => write!(out, "{}", if d.in_leap_year() { "True" } else { "False" }),
            'm' => write!(out, "{:02}", d.month()),
            'M' => write!(out, "{}", &month_name(d)[..3]),
            'n' => write!(out, "{}", d.month()),
            'N' => write!(out, "{}", MONTHS_AP[(d.month() - 1) as usize]),
            'o' => write!(out, "{}", d.iso_week_date().year()),
            'O' => write!(out, "{}", offset_text(m.offset.unwrap_or(0), false)),
            'P' => match (t.hour(), t.minute()) {
                (0, 0) => write!(out, "midnight"),
                (12, 0) => write!(out, "noon"),
                _ => write!(out, "{} {}", short_time(t), am_pm(t)),
            },
            'r' => write!(
                out,
                "{}, {} {} {} {:02}:{:02}:{:02} {}",
                &weekday_name(d)[..3],
                format_args!("{:02}", d.day()),
                &month_name(d)[..3],
                d.year(),
                t.hour(),
                t.minute(),
                t.second(),
                offset_text(m.offset.unwrap_or(0), false)
            ),
            's' => write!(out, "{:02}", t.second()),
            'S' => write!(out, "{}", ordinal(d.day())),
            't' => write!(out, "{}", d.days_in_month()),
            'u' => write!(out, "{:06}", t.subsec_nanosecond() / 1000),
            'U' => write!(out, "{}", unix_seconds(m)),
            'w' => write!(out, "{}", d.weekday().to_sunday_zero_offset()),
            'W' => write!(out, "{}", d.iso_week_date().week()),
            'y' => write!(out, "{:02}", d.year().rem_euclid(100)),
            'Y' => write!(out, "{}", d.year()),
            'z' => write!(out, "{}", d.day_of_year()),
            'Z' => write!(out, "{}", m.offset.unwrap_or(0)),
            other => {
                out.push(other);
                Ok(())
            }
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn djangos_common_codes() {
        // Expected values printed by Django 3.2's dateformat.format.
        assert_eq!(format_date("2026-03-10", "d.m.Y"), "10.03.2026");
        assert_eq!(format_date("2026-03-10", DEFAULT_FORMAT), "March 10, 2026");
        assert_eq!(
            format_date("2026-03-10 14:30:00", "N j, Y, P"),
            "March 10, 2026, 2:30 p.m."
        );
        assert_eq!(
            format_date("2026-09-01 12:00:00", "N j, Y, P"),
            "Sept. 1, 2026, noon"
        );
        assert_eq!(format_date("2026-01-02 00:00:00", "P"), "midnight");
        assert_eq!(
            format_date("2026-01-02 09:05:07", "f A g G h H i s"),
            "9:05 AM 9 9 09 09 05 07"
        );
        assert_eq!(
            format_date("2026-03-10", "D l M b F n j S"),
            "Tue Tuesday Mar mar March 3 10 th"
        );
        assert_eq!(format_date("2026-03-01", "jS"), "1st");
        assert_eq!(format_date("2026-03-22", "jS"), "22nd");
        assert_eq!(format_date("2026-03-13", "jS"), "13th");
        assert_eq!(
            format_date("2024-02-10", "L t z w W y"),
            "True 29 41 6 6 24"
        );
        assert_eq!(
            format_date("2026-03-10T16:30:00+02:00", "c O e r"),
            "2026-03-10T16:30:00+02:00 +0200 UTC+02:00 Tue, 10 Mar 2026 16:30:00 +0200"
        );
        assert_eq!(format_date("2026-03-10T14:30:00Z", "U e"), "1773153000 UTC");
        assert_eq!(
            format_date("2026-03-10 14:30:00.25", "u c"),
            "250000 2026-03-10T14:30:00.250000"
        );
        assert_eq!(format_date("2026-03-10", "\\Y\\e\\a\\r: Y"), "Year: 2026");
        assert_eq!(format_date("2021-01-03", "o-W"), "2020-53");
    }

    #[test]
    fn what_is_not_a_date_renders_empty() {
        assert_eq!(format_date("soon", "Y"), "");
        assert_eq!(format_date("2026-02-30", "Y"), "");
        assert_eq!(format_date("2026-03-10 25:00", "Y"), "");
        assert_eq!(format_date("2026-03-10T10:00:00+2", "Y"), "");
    }
}
