//! The HTTP edge of the console: who is asking (Basic auth, compared in
//! constant time), whether a POST comes from the console's own pages
//! (`Origin`/`Sec-Fetch-Site` and a per-form token), reading forms and
//! query strings, and the headers every answer carries.
//!
//! Not here: what a route does (`super::routes`) or how it looks
//! (`super::pages`).

use std::io::Read;

use base64::Engine as _;
use hmac::{KeyInit, Mac};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The Content-Security-Policy of every answer: no script at all, styles
/// from the console's own stylesheet, forms posting only to the console.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A form body larger than this is refused (413).
pub const MAX_BODY: u64 = 1 << 20;

/// Who may use the console, and the secret its tokens are made with.
pub struct Gate {
    /// A key made at start: tokens and credential tags are HMACs with it.
    key: [u8; 32],
    /// The tag of `user:password`, or `None` without auth (`--no-auth`).
    expected: Option<Vec<u8>>,
    user: String,
}

impl Gate {
    /// A gate for `user` with `password` (`None`: open, `--no-auth`).
    pub fn new(user: &str, password: Option<&str>) -> std::io::Result<Gate> {
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
        let mut gate = Gate {
            key,
            expected: None,
            user: user.to_owned(),
        };
        gate.expected = password.map(|p| gate.tag(format!("{user}:{p}").as_bytes()));
        Ok(gate)
    }

    fn mac(&self) -> HmacSha256 {
        // An HMAC takes a key of any length.
        match <HmacSha256 as KeyInit>::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        }
    }

    fn tag(&self, data: &[u8]) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    /// The user a request is allowed as, from its `Authorization` header;
    /// `None` if it is missing or wrong.
    pub fn user(&self, authorization: Option<&str>) -> Option<String> {
        let Some(expected) = &self.expected else {
            return Some(self.user.clone());
        };
        let (scheme, encoded) = authorization?.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let encoded = encoded.trim();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        // Compared as tags of the whole `user:password`, in constant time.
        let mut mac = self.mac();
        mac.update(&decoded);
        mac.verify_slice(expected).ok()?;
        Some(self.user.clone())
    }

    /// Whether no password is asked (`--no-auth`).
    pub fn is_open(&self) -> bool {
        self.expected.is_none()
    }

    /// The token every form of the console carries for `user`.
    pub fn csrf_token(&self, user: &str) -> String {
        hex::encode(self.tag(format!("csrf:{user}").as_bytes()))
    }

    /// Whether `token` is `user`'s (in constant time).
    pub fn csrf_ok(&self, user: &str, token: &str) -> bool {
        let Ok(bytes) = hex::decode(token) else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(format!("csrf:{user}").as_bytes());
        mac.verify_slice(&bytes).is_ok()
    }
}

/// Why a POST is refused before it is read: it comes from another site.
pub fn cross_site(request: &tiny_http::Request) -> Option<String> {
    if let Some(site) = header(request, "Sec-Fetch-Site")
        && site != "same-origin"
        && site != "none"
    {
        return Some(format!("a form from another site (Sec-Fetch-Site: {site})"));
    }
    if let Some(origin) = header(request, "Origin") {
        let host = header(request, "Host").unwrap_or_default();
        let ours = [format!("http://{host}"), format!("https://{host}")];
        if !ours.iter().any(|o| o.eq_ignore_ascii_case(&origin)) {
            return Some(format!("a form from another origin ({origin})"));
        }
    }
    None
}

/// Whether a `Host` header names this machine (`localhost`, a loopback
/// address, any port). A console without a password answers only these,
/// so that a page of another site cannot reach it by a DNS name made to
/// point here (DNS rebinding).
pub fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A header's value (the first), if the request has it.
pub fn header(request: &tiny_http::Request, name: &str) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str().to_owned())
}

/// Whether the client asked for JSON.
pub fn wants_json(request: &tiny_http::Request) -> bool {
    header(request, "Accept").is_some_and(|a| a.contains("application/json"))
}

/// Name-value pairs of a query string or form body, decoded.
pub fn pairs(text: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(text.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first value of `name` among `pairs`, if not empty.
pub fn first<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

/// Every non-empty value of `name` among `pairs`.
pub fn all<'a>(pairs: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    pairs
        .iter()
        .filter(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Characters kept as they are in a path segment: letters, digits, `-`
/// and `_` (a `.` is encoded too, so that no key makes a `..` segment).
const SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_');

/// An event's page: `/events/{key}`, the key one encoded segment; the keys
/// `.` and `..` (which URLs resolve away even encoded) by query.
pub fn event_url(key: &str) -> String {
    if key == "." || key == ".." || key.is_empty() {
        return format!("/events/?key={}", encode(key));
    }
    format!(
        "/events/{}",
        percent_encoding::utf8_percent_encode(key, SEGMENT)
    )
}

/// `text` encoded for a query string's value.
pub fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A path segment decoded (`None` if it does not decode to UTF-8).
pub fn decode_segment(segment: &str) -> Option<String> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// The headers every answer carries.
pub fn common_headers(content_type: &str) -> Vec<tiny_http::Header> {
    [
        ("Content-Type", content_type),
        ("Content-Security-Policy", CSP),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "same-origin"),
        ("Cache-Control", "no-store"),
    ]
    .iter()
    .filter_map(|(k, v)| tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).ok())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_checked_whole() {
        let gate = Gate::new("spark", Some("s3cret")).unwrap();
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert_eq!(
            gate.user(Some(&basic("spark:s3cret"))).as_deref(),
            Some("spark")
        );
        for wrong in ["spark:s3cre", "spark:s3cret ", "sparkx:s3cret", "", ":"] {
            assert_eq!(gate.user(Some(&basic(wrong))), None, "{wrong}");
        }
        assert_eq!(gate.user(None), None);
        let lower = basic("spark:s3cret").replace("Basic", "basic");
        assert_eq!(gate.user(Some(&lower)).as_deref(), Some("spark"));
        assert_eq!(gate.user(Some("Bearer x")), None);
        let token = gate.csrf_token("spark");
        assert!(gate.csrf_ok("spark", &token));
        assert!(!gate.csrf_ok("other", &token));
        assert!(!gate.csrf_ok("spark", "00"));
    }

    #[test]
    fn loopback_hosts() {
        for ok in [
            "localhost",
            "localhost:8025",
            "127.0.0.1:1",
            "[::1]:8025",
            "127.9.9.9",
        ] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8025",
            "10.0.0.1:80",
            "localhost.evil.example",
            "",
        ] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn every_key_gets_one_segment() {
        assert_eq!(event_url("a/b c"), "/events/a%2Fb%20c");
        assert_eq!(event_url("x/../y"), "/events/x%2F%2E%2E%2Fy");
        assert_eq!(event_url(".."), "/events/?key=..");
        assert_eq!(event_url("é"), "/events/%C3%A9");
        assert_eq!(decode_segment("a%2Fb%20c").as_deref(), Some("a/b c"));
    }
}
