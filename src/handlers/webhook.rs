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

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use ureq::Agent;

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use super::kind::{self, Checks, Secret};
use super::{DeliverEach, Dispatch, Failed, HandlerKind, Kind, Outcome, Retry};

/// A `webhook` handler's options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// The address; a template may fill in its path and query.
    pub url: Option<Spanned<String>>,
    /// POST (default), PUT or PATCH.
    pub method: Option<Spanned<String>>,
    /// A template of what is sent instead of the event JSON.
    pub body: Option<Spanned<String>>,
    pub content_type: Option<Spanned<String>>,
    pub strict_templates: Option<Spanned<bool>>,
    /// Headers whose values are templates.
    pub headers: Option<Spanned<BTreeMap<String, String>>>,
    /// Headers whose values are secrets from environment variables.
    pub header_env: Option<Spanned<BTreeMap<String, String>>>,
    pub signing_secret_env: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
}

pub const KIND: Kind = Kind {
    name: "webhook",
    per_event: true,
    fields: kind::fields_of::<Options>,
    config,
};

fn config(c: &mut dyn Checks, table: Spanned<DeValue<'_>>) -> Option<HandlerKind> {
    let raw: Options = kind::options(c, table)?;
    let timeout = kind::timeout(c, raw.timeout.as_ref());
    let connect_timeout = c.duration(
        "connect_timeout",
        raw.connect_timeout.as_ref(),
        Duration::from_secs(10),
    );
    let Some(url) = raw.url else {
        c.missing("url", "webhook");
        return None;
    };
    crate::redact::register_url(url.get_ref());
    let lower = url.get_ref().to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        c.bad_value(
            "url",
            url.span(),
            format!("{:?} is not an http:// or https:// URL", url.get_ref()),
        );
    } else if let Some(at) = url.get_ref().find(['{']) {
        // A templated URL: the scheme and the host stay literal.
        let literal = &url.get_ref()[..at];
        let after_scheme = literal.split_once("://").map_or("", |(_, rest)| rest);
        if !after_scheme.contains('/') {
            c.bad_value(
                "url",
                url.span(),
                format!(
                    "{:?}: a template may fill in the path and the query, not the scheme or the host (write them literally, up to the first `/`)",
                    url.get_ref()
                ),
            );
        }
    }
    let method = match raw
        .method
        .as_ref()
        .map(|m| m.get_ref().to_ascii_uppercase())
    {
        None => HttpMethod::Post,
        Some(m) if m == "POST" => HttpMethod::Post,
        Some(m) if m == "PUT" => HttpMethod::Put,
        Some(m) if m == "PATCH" => HttpMethod::Patch,
        Some(other) => {
            let span = raw.method.as_ref().map_or(0..0, Spanned::span);
            c.bad_value(
                "method",
                span,
                format!("{other:?}: expected \"POST\", \"PUT\" or \"PATCH\""),
            );
            HttpMethod::Post
        }
    };
    let content_type = match &raw.content_type {
        None => "application/json".to_owned(),
        Some(t) => {
            let text = t.get_ref().trim();
            if text.is_empty() || text.chars().any(char::is_control) || !text.contains('/') {
                c.bad_value(
                    "content_type",
                    t.span(),
                    format!(
                        "{:?} is not a media type (like \"application/json\")",
                        t.get_ref()
                    ),
                );
            }
            text.to_owned()
        }
    };
    if raw.content_type.is_some() && raw.body.is_none() {
        let span = raw.content_type.as_ref().map_or(0..0, Spanned::span);
        c.bad_value(
            "content_type",
            span,
            "without `body` the event is sent as JSON; set `body` to send something else".into(),
        );
    }
    if let Some(body) = &raw.body
        && BodyKind::of(&content_type) == BodyKind::Other
        && body.get_ref().contains('{')
    {
        let span = raw.content_type.as_ref().map_or(body.span(), Spanned::span);
        c.bad_value(
            "content_type",
            span,
            format!(
                "{content_type:?}: spark escapes values rendered into a body only for JSON types, \
                 application/x-www-form-urlencoded and text/plain; a body of another type \
                 must not be a template"
            ),
        );
    }
    let mut headers: Vec<(String, Secret)> = Vec::new();
    let mut templates: Vec<(String, String)> = Vec::new();
    for (field, names) in [
        ("headers", raw.headers.as_ref()),
        ("header_env", raw.header_env.as_ref()),
    ] {
        let Some(names) = names else { continue };
        for name in names.get_ref().keys() {
            if !is_header_name(name) {
                c.bad_value(
                    field,
                    names.span(),
                    format!(
                        "{:?} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)",
                        crate::escape::escape(name)
                    ),
                );
            }
        }
    }
    if let Some(literal) = raw.headers {
        for (name, value) in literal.into_inner() {
            templates.push((format!("header `{name}`"), value.clone()));
            headers.push((name, Secret::literal(value)));
        }
    }
    if let Some(from_env) = raw.header_env {
        let span = from_env.span();
        for (name, var) in from_env.into_inner() {
            let var = Spanned::new(span.clone(), var);
            let secret = c.secret("header_env", &var);
            headers.push((name, secret));
        }
    }
    if let Some(body) = &raw.body {
        templates.push(("`body`".into(), body.get_ref().clone()));
    }
    if url.get_ref().contains('{') {
        templates.push(("`url`".into(), url.get_ref().clone()));
    }
    kind::check_templates(c, &templates);
    let signing_secret = raw
        .signing_secret_env
        .as_ref()
        .map(|var| c.secret("signing_secret_env", var));
    Some(HandlerKind::Webhook(Box::new(WebhookConfig {
        url: url.into_inner(),
        method,
        body: raw.body.map(Spanned::into_inner),
        content_type,
        headers,
        signing_secret,
        timeout,
        connect_timeout,
        strict_templates: kind::flag(&raw.strict_templates),
    })))
}

/// A webhook handler: where, how, and what it sends.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The address; a template when it holds `{{`/`{%` (values rendered
    /// into it are percent-encoded, and scheme and host are literal).
    pub url: String,
    pub method: HttpMethod,
    /// The body template (default: the event JSON).
    pub body: Option<String>,
    /// The body's content type (default `application/json`).
    pub content_type: String,
    /// Extra headers: literal values are templates, `header_env` ones
    /// secrets sent as they are (`Secret::var` tells them apart).
    pub headers: Vec<(String, Secret)>,
    pub signing_secret: Option<Secret>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Fail a render that looks up something undefined.
    pub strict_templates: bool,
}

/// How values rendered into a webhook body are escaped: by its content
/// type, so that a value stays inside its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// Any JSON type (`application/json`, `text/json`, `*/*+json`): values
    /// JSON-escaped, and the body must parse as JSON.
    Json,
    /// `application/x-www-form-urlencoded`: values percent-encoded, so
    /// that a value cannot add a field.
    Form,
    /// `text/plain`: values as they are (there is nothing to break out of).
    Text,
    /// Anything else: spark cannot escape values for it, so its body may
    /// not be a template.
    Other,
}

impl BodyKind {
    /// The kind a content type (`type/subtype; params`) makes.
    pub fn of(content_type: &str) -> BodyKind {
        let t = content_type.to_ascii_lowercase();
        let essence = t.split(';').next().unwrap_or_default().trim();
        let subtype = essence.split_once('/').map_or("", |(_, sub)| sub);
        if subtype == "json" || subtype == "x-json" || subtype.ends_with("+json") {
            BodyKind::Json
        } else if essence == "application/x-www-form-urlencoded" {
            BodyKind::Form
        } else if essence == "text/plain" {
            BodyKind::Text
        } else {
            BodyKind::Other
        }
    }
}

impl WebhookConfig {
    /// The options as the config writes them (`spark config`): secrets by
    /// the names of their variables.
    pub fn view(&self, v: &mut serde_json::Value) {
        use serde_json::json;
        v["url"] = json!(self.url);
        v["method"] = json!(self.method.to_string());
        if let Some(body) = &self.body {
            v["body"] = json!(body);
            v["content_type"] = json!(self.content_type);
        }
        if self.strict_templates {
            v["strict_templates"] = json!(true);
        }
        let (literal, from_env): (Vec<_>, Vec<_>) =
            self.headers.iter().partition(|(_, s)| s.var.is_empty());
        if !literal.is_empty() {
            v["headers"] = json!(
                literal
                    .iter()
                    .map(|(k, s)| (k.clone(), s.expose().to_owned()))
                    .collect::<BTreeMap<_, _>>()
            );
        }
        if !from_env.is_empty() {
            v["header_env"] = json!(
                from_env
                    .iter()
                    .map(|(k, s)| (k.clone(), s.var.clone()))
                    .collect::<BTreeMap<_, _>>()
            );
        }
        if let Some(s) = &self.signing_secret {
            v["signing_secret_env"] = json!(s.var);
        }
        v["timeout"] = json!(kind::duration_text(self.timeout));
        v["connect_timeout"] = json!(kind::duration_text(self.connect_timeout));
    }

    /// How the body's values are escaped (its content type says).
    pub fn body_kind(&self) -> BodyKind {
        BodyKind::of(&self.content_type)
    }
}

/// Whether `name` is an HTTP header field name (RFC 9110's token).
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// The HTTP methods a webhook may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Post,
    Put,
    Patch,
}

impl fmt::Display for HttpMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
        })
    }
}

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
