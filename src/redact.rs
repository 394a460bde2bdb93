//! One redactor for secrets. Every value that came from the environment
//! (`${VAR}` in the config, the `*_env` keys, `PGPASSWORD` and friends),
//! every password in a URL's userinfo and every value in a URL's query
//! string is registered here when the config is read; `redact` replaces
//! each with `***`. The boundaries apply it: what the CLI prints, every log
//! line, a delivery's recorded error, the metrics file.
//!
//! Values shorter than `MIN_LEN` characters are not registered: masking
//! them would mask ordinary text everywhere (a secret that short is no
//! secret).
//!
//! Not here: keeping secrets out of child processes (`handlers::command`).

use std::borrow::Cow;
use std::sync::RwLock;

/// The replacement for a secret.
pub const MASK: &str = "***";

/// Shorter values are not masked.
pub const MIN_LEN: usize = 4;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Registers a value to mask from now on, in every spelling it may show
/// in: as it is, percent-decoded (a password written `s%40cr3t` in a URL is
/// `s@cr3t`), and percent-encoded with upper- and lower-case digits (a
/// password from the environment printed inside a URL).
pub fn register(value: &str) {
    let value = value.trim();
    if value.chars().count() < MIN_LEN {
        return;
    }
    let mut spellings = vec![value.to_owned()];
    if let Some(decoded) = percent_decoded(value) {
        spellings.push(decoded);
    }
    spellings.push(percent_encoded(value, false));
    spellings.push(percent_encoded(value, true));
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    for spelling in spellings {
        if spelling.chars().count() >= MIN_LEN && !secrets.contains(&spelling) {
            secrets.push(spelling);
        }
    }
    // Longest first, so that a secret containing another is masked whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// `text` with `%XX` escapes decoded, when it has any and they make UTF-8.
fn percent_decoded(text: &str) -> Option<String> {
    if !text.contains('%') {
        return None;
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().filter(|d| d != text)
}

/// `text` with every byte but URL's unreserved ones as `%XX` (hex digits
/// in lower case when `lower`).
fn percent_encoded(text: &str, lower: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else if lower {
            out.push_str(&format!("%{b:02x}"));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Registers the credentials a URL (a webhook's) carries: the password of
/// its userinfo (the whole userinfo when it has no `:`: a token), and the
/// query values that look like credentials (see `url_secrets`).
pub fn register_url(url: &str) {
    for secret in url_secrets(url) {
        register(secret);
    }
}

/// Query values long enough to be a credential whatever their name.
const LONG_QUERY_VALUE: usize = 16;

/// The credentials in a URL (see `register_url`): the userinfo's password,
/// and each query value whose name looks secret (`token`, `key`, `sig`,
/// `secret`, `password`, `auth`, `code`, ...) or that is long (16
/// characters or more). Short plain values (`format=json`) are not: masking
/// them would mask ordinary words everywhere.
pub fn url_secrets(url: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    if let Some((userinfo, _host)) = authority.rsplit_once('@') {
        found.push(
            userinfo
                .split_once(':')
                .map_or(userinfo, |(_, password)| password),
        );
    }
    if let Some((_, query)) = rest.split_once('?') {
        let query = query.split('#').next().unwrap_or_default();
        for pair in query.split('&') {
            if let Some((name, value)) = pair.split_once('=') {
                let lower = name.to_ascii_lowercase();
                let secret_name = looks_secret(name)
                    || ["sig", "code", "pass", "hash"]
                        .iter()
                        .any(|w| lower.contains(w));
                if secret_name || value.chars().count() >= LONG_QUERY_VALUE {
                    found.push(value);
                }
            }
        }
    }
    found.retain(|s| !s.is_empty());
    found
}

/// `text` with every registered secret replaced by `***`.
pub fn redact(text: &str) -> Cow<'_, str> {
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    if !secrets.iter().any(|s| text.contains(s.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_owned();
    for secret in secrets.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), MASK);
        }
    }
    Cow::Owned(out)
}

/// `redact` for an owned string.
pub fn redact_owned(text: String) -> String {
    match redact(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(masked) => masked,
    }
}

/// The most bytes of an error spark keeps or shows (in the store, the
/// history, logs and output): a value of megabytes in an error (a URL, a
/// date that is not one) must not become megabytes per attempt.
pub const MAX_ERROR_BYTES: usize = 4096;

/// An error as spark keeps and shows it: secrets masked first (so that a
/// cut never leaves part of a secret), then cut to `MAX_ERROR_BYTES` with
/// a marker saying how much was left out.
pub fn error_text(text: String) -> String {
    cut(redact_owned(text), MAX_ERROR_BYTES)
}

/// `text` cut to at most about `max` bytes (on a character boundary), with
/// a marker saying how many bytes were left out.
pub fn cut(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut at = max;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let left_out = text.len() - at;
    text.truncate(at);
    text.push_str(&format!("… [cut: {left_out} more bytes]"));
    text
}

/// Whether a variable's name suggests its value is a secret.
pub fn looks_secret(var: &str) -> bool {
    let v = var.to_ascii_uppercase();
    [
        "SECRET",
        "TOKEN",
        "PASSWORD",
        "PASSWD",
        "KEY",
        "AUTH",
        "CREDENTIAL",
    ]
    .iter()
    .any(|w| v.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_are_found() {
        assert_eq!(
            url_secrets(
                "https://user:pa55word@host:1/p?token=abcd&x=1&format=json&id=0123456789abcdef0#frag"
            ),
            ["pa55word", "abcd", "0123456789abcdef0"]
        );
        assert_eq!(url_secrets("postgresql://tokenonly@db/app"), ["tokenonly"]);
        assert!(url_secrets("https://example.org/a@b").is_empty());
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary_with_a_marker() {
        assert_eq!(cut("short".into(), 10), "short");
        assert_eq!(cut("ééé".into(), 3), "é… [cut: 4 more bytes]");
        let long = error_text("x".repeat(1 << 20));
        assert!(long.len() < MAX_ERROR_BYTES + 40, "{}", long.len());
        assert!(
            long.ends_with("[cut: 1044480 more bytes]"),
            "{}",
            &long[4000..]
        );
    }

    #[test]
    fn a_secret_is_masked_in_every_spelling() {
        register("s%40cr3t-spelling");
        assert_eq!(
            redact("a s@cr3t-spelling b s%40cr3t-spelling"),
            "a *** b ***"
        );
        register("P@ss w0rd-Spelling");
        assert_eq!(
            redact("x P%40ss%20w0rd-Spelling y P%40ss%20w0rd-Spelling"),
            "x *** y ***"
        );
    }

    #[test]
    fn registered_values_are_masked_longest_first() {
        register("redact-test-secret");
        register("redact-test-secret-longer");
        register("abc");
        assert_eq!(
            redact("x redact-test-secret-longer y redact-test-secret abc"),
            "x *** y *** abc"
        );
        assert!(matches!(redact("nothing here"), Cow::Borrowed(_)));
    }
}
