//! `webhook`: an HTTP request per event (POST by default; PUT or PATCH with
//! `method`), carrying the event JSON, or the handler's `body` template
//! rendered against the event (Slack, Discord, Teams, Matrix, ...).
//!
//! A `body` is a template whose values are JSON-escaped (see
//! `crate::templates`); when the content type is JSON (the default) the
//! rendered body must parse as JSON, or the delivery fails naming the key.
//! Literal header values and the URL may be templates too (values rendered
//! into the URL are percent-encoded; scheme and host are literal).
//!
//! Headers: `Content-Type` (default `application/json`), `Idempotency-Key: <event key>`
//! (a receiver that stores it can drop the duplicate an at-least-once
//! redelivery may bring), `User-Agent: spark/<version>`, the configured extra
//! headers (values given literally or read from the environment), and, when
//! a signing secret is configured, a signature in the style of Stripe's:
//!
//! ```text
//! Spark-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">
//! ```
//!
//! A 2xx response is success; any other status, a timeout or a refused
//! connection is a failure whose error carries the status and the first
//! bytes of the response body. A 429 or 503 with `Retry-After` (seconds or
//! an HTTP date) is tried again after the time it asks for, and does not
//! count towards `max_attempts`: the receiver is throttling, not failing. Redirects are not followed (an HTTP client
//! would re-send as GET without the body, and hand the signature and the
//! headers to another address): a 3xx is a failure naming its `Location`.
//! The response body is read to its end (up to a limit), so that the
//! connection can be used again: one agent per handler keeps as many
//! connections alive as the handler has calls in flight.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use ureq::Agent;

use super::{DeliverEach, Dispatch, Failed, Outcome, Retry};
use crate::config::{BodyKind, HttpMethod, WebhookConfig};

/// How much of an error response's body a failure keeps.
const BODY_KEEP: u64 = 300;

/// How much of a successful response's body is read (and dropped) so that
/// the connection can be reused.
const BODY_DRAIN: u64 = 64 * 1024;

/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "Spark-Signature";

pub struct WebhookHandler {
    config: WebhookConfig,
    agent: Agent,
    /// The templates (body, URL, literal headers), when there are any.
    env: minijinja::Environment<'static>,
    /// Whether the URL is a template.
    url_template: bool,
    /// How the body's values are escaped, and whether it must be JSON.
    body_kind: BodyKind,
    /// Whether anything is rendered per event (else the event JSON is
    /// sent as it is, to the URL as it is).
    templated: bool,
}

const BODY: &str = "body.json";
const FORM_BODY: &str = "body.url";
const TEXT_BODY: &str = "body.txt";

/// The template name (whose suffix picks the escaping) of a body of `kind`.
fn body_template(kind: BodyKind) -> &'static str {
    match kind {
        BodyKind::Json => BODY,
        BodyKind::Form => FORM_BODY,
        // Another type's body is never a template (refused at load).
        BodyKind::Text | BodyKind::Other => TEXT_BODY,
    }
}
const URL: &str = "url.url";

fn header_template(i: usize) -> String {
    format!("header-{i}.txt")
}

impl WebhookHandler {
    pub fn new(config: WebhookConfig, concurrency: usize) -> Self {
        let agent: Agent = Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .timeout_connect(Some(config.connect_timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .max_idle_connections_per_host(concurrency.max(1))
            .max_idle_connections(concurrency.max(1) * 2)
            .user_agent(concat!("spark/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        // Checked when the config was loaded; a template that failed there
        // never gets here.
        let mut env = crate::templates::environment(config.strict_templates);
        if let Some(body) = &config.body {
            let _ = env.add_template_owned(body_template(config.body_kind()), body.clone());
        }
        let url_template = config.url.contains('{');
        if url_template {
            let _ = env.add_template_owned(URL, config.url.clone());
        }
        let mut literal_headers = false;
        for (i, (_, value)) in config.headers.iter().enumerate() {
            if value.var.is_empty() {
                literal_headers = true;
                let _ = env.add_template_owned(header_template(i), value.expose().to_owned());
            }
        }
        WebhookHandler {
            templated: config.body.is_some() || url_template || literal_headers,
            body_kind: config.body_kind(),
            url_template,
            config,
            agent,
            env,
        }
    }

    fn render(
        &self,
        template: &str,
        what: &str,
        key: &str,
        ctx: &minijinja::Value,
    ) -> Result<String, Failed> {
        self.env
            .get_template(template)
            .and_then(|t| t.render(ctx.clone()))
            .map_err(|e| {
                Failed::later(format!(
                    "{what} for {key} does not render: {}",
                    crate::templates::describe_error(&e)
                ))
            })
    }

    /// The URL, body and headers of the request for `dispatch`.
    fn request_parts(&self, dispatch: &Dispatch<'_>) -> Result<RequestParts<'_>, Failed> {
        let key = &dispatch.event.key;
        let c = &self.config;
        if !self.templated {
            let headers = c
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.expose().to_owned()))
                .collect();
            return Ok((c.url.clone(), dispatch.to_json(), headers));
        }
        let ctx = crate::templates::event_context(dispatch.event, Some(dispatch.seen_at));
        let url = if self.url_template {
            let url = self.render(URL, "`url`", key, &ctx)?;
            // A value is percent-encoded, but `.` is not (`a.b` stays
            // itself), so a value `..` would address another resource.
            if let Some(segment) = dot_segment(&url) {
                return Err(Failed::later(format!(
                    "`url` for {key} renders a path with a {segment:?} segment, which would \
                     address another resource: {}",
                    crate::escape::escape(&excerpt(&url))
                )));
            }
            url
        } else {
            c.url.clone()
        };
        let body = match &c.body {
            None => dispatch.to_json(),
            Some(_) if self.body_kind == BodyKind::Json => {
                let body = self.render(BODY, "`body`", key, &ctx)?;
                if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&body) {
                    return Err(Failed::later(format!(
                        "`body` for {key} is not JSON ({e}): {}",
                        crate::escape::escape(&excerpt(&body))
                    )));
                }
                body
            }
            Some(_) => self.render(body_template(self.body_kind), "`body`", key, &ctx)?,
        };
        let mut headers = Vec::with_capacity(c.headers.len());
        for (i, (name, value)) in c.headers.iter().enumerate() {
            let value = if value.var.is_empty() {
                let v = self.render(&header_template(i), &format!("header `{name}`"), key, &ctx)?;
                if v.chars().any(|c| c.is_control() && c != '\t') {
                    return Err(Failed::later(format!(
                        "header `{name}` for {key}: the rendered value holds a line break or a control character"
                    )));
                }
                v
            } else {
                value.expose().to_owned()
            };
            headers.push((name.as_str(), value));
        }
        Ok((url, body, headers))
    }
}

/// The first segment of a URL's path that is `.` or `..`, also spelled
/// with `%2E` (a receiver that decodes before it resolves would take it as
/// one), if there is one.
fn dot_segment(url: &str) -> Option<&str> {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme
        .split_once('/')
        .map_or("", |(_, path)| path)
        .split(['?', '#'])
        .next()
        .unwrap_or_default();
    path.split('/').find(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        matches!(decoded.as_str(), "." | "..")
    })
}

/// A request's URL, body and headers.
type RequestParts<'a> = (String, String, Vec<(&'a str, String)>);

/// The first 200 characters of `text`, for an error.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

/// The signature header's value for `body` signed at `timestamp`.
pub fn signature(secret: &[u8], timestamp: i64, body: &str) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// How long a `Retry-After` header asks to wait: seconds, or an HTTP date.
pub fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let wait = at.duration_since(jiff::Timestamp::now());
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

impl DeliverEach for WebhookHandler {
    fn deliver(&self, dispatch: &Dispatch<'_>, _attempt: u32) -> Outcome {
        let (url, body, headers) = self.request_parts(dispatch)?;
        let method = self.config.method;
        let request = match method {
            HttpMethod::Post => self.agent.post(&url),
            HttpMethod::Put => self.agent.put(&url),
            HttpMethod::Patch => self.agent.patch(&url),
        };
        let mut request = request
            .header("Content-Type", &self.config.content_type)
            .header("Idempotency-Key", &dispatch.event.key);
        for (name, value) in &headers {
            request = request.header(*name, value);
        }
        if let Some(secret) = &self.config.signing_secret {
            let now = jiff::Timestamp::now().as_second();
            request = request.header(
                SIGNATURE_HEADER,
                signature(secret.expose().as_bytes(), now, &body),
            );
        }
        let mut response = request
            .send(body.as_bytes())
            .map_err(|e| Failed::later(format!("{method} {url}: {e}")))?;
        let status = response.status();
        if status.is_success() {
            let _ = response
                .body_mut()
                .with_config()
                .limit(BODY_DRAIN)
                .read_to_vec();
            return Ok(());
        }
        if status.is_redirection() {
            let location = response
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .unwrap_or("(none)");
            return Err(Failed::later(format!(
                "{method} {url}: HTTP {status}, redirected to {location}; spark does not follow redirects (point `url` at the final address)"
            )));
        }
        let throttled = (status.as_u16() == 429 || status.as_u16() == 503)
            .then(|| response.headers().get("retry-after"))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(retry_after);
        let text = response
            .body_mut()
            .with_config()
            .limit(BODY_KEEP)
            .read_to_string()
            .unwrap_or_default();
        let text = text.trim();
        let error = if text.is_empty() {
            format!("{method} {url}: HTTP {status}")
        } else {
            format!("{method} {url}: HTTP {status}: {text}")
        };
        Err(match throttled {
            Some(after) => Failed {
                error: format!(
                    "{error} (retry after {})",
                    humantime::format_duration(after)
                ),
                retry: Retry::After(after),
            },
            None => Failed::later(error),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        assert_eq!(retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a date in the past: now"
        );
        assert_eq!(retry_after("soon"), None);
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Checked against Python: hmac.new(b"secret", b"1700000000.{}", sha256).hexdigest()
        assert_eq!(
            signature(b"secret", 1_700_000_000, "{}"),
            "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }
}
