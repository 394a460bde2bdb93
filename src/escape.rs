//! Text from the database, made safe to print on a terminal: control
//! characters (C0, DEL, C1) and the bidirectional overrides that can make a
//! line read differently than it is are written as escapes (`\x1b`, `\n`,
//! `\r`, `\t`, `\u{202e}`), so that a key or a context can never move the
//! cursor, retitle the window, ring the bell or forge a line of output.
//! JSON output needs none of this (serde_json escapes them itself).
//!
//! Not here: secrets (`redact`).

use std::borrow::Cow;
use std::fmt::Write as _;

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with control characters escaped.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) && (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// JSON text (serde_json's, which escapes only what JSON requires) with
/// the rest of what `escape` escapes written as JSON escapes (`\u007f`,
/// `\u009b`, `\u202e`): still the same JSON, now safe on a terminal. Such
/// characters can only stand inside JSON strings, where the escape means
/// the same character.
pub fn escape_json_extra(json: &str) -> Cow<'_, str> {
    if !json.chars().any(needs_escape) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if needs_escape(c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `text` escaped line by line: its line breaks are kept, every other
/// control character escaped (for messages of several lines).
pub fn escape_lines(text: &str) -> String {
    text.split('\n')
        .map(|line| escape(line.strip_suffix('\r').unwrap_or(line)).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` cut to at most `max` characters for display, the last one an
/// ellipsis when cut. Mask secrets before (a cut through a secret would
/// show its start) and escape before (so that no escape is cut in half).
pub fn shorten(text: String, max: usize) -> String {
    if text.chars().count() <= max {
        return text;
    }
    let mut short: String = text.chars().take(max.saturating_sub(1)).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        assert_eq!(
            escape("x\u{1b}[31mred\u{7}\r\ny\0\t\u{9b}\u{202e}é"),
            "x\\x1b[31mred\\x07\\r\\ny\\x00\\t\\x9b\\u{202e}é"
        );
        assert!(matches!(escape("plain text ü"), Cow::Borrowed(_)));
        assert_eq!(escape_lines("a\u{1b}\r\nb\n"), "a\\x1b\nb\n");
    }

    #[test]
    fn json_stays_json_with_the_rest_escaped() {
        let json =
            serde_json::to_string(&serde_json::json!({"k": "a\u{202e}b\u{9b}\u{7f}\n"})).unwrap();
        let safe = escape_json_extra(&json);
        assert_eq!(safe, r#"{"k":"a\u202eb\u009b\u007f\n"}"#);
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back["k"], "a\u{202e}b\u{9b}\u{7f}\n");
    }
}
