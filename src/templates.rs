//! Templates as spark renders them (mail subjects, bodies and recipients,
//! webhook bodies and headers): minijinja with Django's habits.
//!
//! - A lookup through a missing value renders empty (`{{ user.email }}`
//!   without `user`), `{% if user.email %}` is false, and
//!   `{{ user.email|default("x") }}` gives `x`, as Django does; a handler
//!   with `strict_templates = true` fails the render instead.
//! - `date(format)` formats a date, a datetime or ISO text with Django's
//!   format codes (`{{ end_date|date("d.m.Y") }}`); `default_if_none`,
//!   `truncatechars(n)`;
//!   `default(x, true)` is Django's `default` (falsy values too).
//! - Every template is checked when the config loads: syntax, and filters
//!   and tests that do not exist (`{{ name|titel }}`), as Django does when it
//!   compiles a template.
//! - Escaping by what the template makes: text (mail text parts: nothing
//!   escaped), HTML (mail HTML parts: `<>&"'` escaped) and JSON (webhook
//!   bodies: a value is written as the inside of a JSON string, so that
//!   `"text": "{{ title }}"` stays valid whatever the title holds; lists and
//!   objects are written as JSON, `|tojson` writes any value as JSON).

use std::fmt::Write as _;

use minijinja::machinery::{self, Instruction};
use minijinja::value::{Value, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};

mod django_date;

pub use django_date::{DEFAULT_FORMAT, format_date};

/// What a template makes, which decides how values are escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Plain text: nothing escaped.
    Text,
    /// HTML: values HTML-escaped.
    Html,
    /// JSON: values escaped as JSON string content.
    Json,
    /// A URL: values percent-encoded (all but `A-Z a-z 0-9 - . _ ~`), so
    /// that a value fills one path segment or query value and nothing more.
    Url,
}

impl Flavor {
    fn auto_escape(self) -> AutoEscape {
        match self {
            Flavor::Text => AutoEscape::None,
            Flavor::Html => AutoEscape::Html,
            Flavor::Json => AutoEscape::Custom("json-string".into()),
            Flavor::Url => AutoEscape::Custom("url-part".into()),
        }
    }

    /// The flavor a template's name implies (`*.html`: HTML, `*.json`:
    /// JSON, `*.url`: URL, anything else text).
    pub fn of_name(name: &str) -> Flavor {
        if name.ends_with(".html") {
            Flavor::Html
        } else if name.ends_with(".json") {
            Flavor::Json
        } else if name.ends_with(".url") {
            Flavor::Url
        } else {
            Flavor::Text
        }
    }
}

/// The work one render may do (minijinja's fuel: about one unit per
/// instruction and per 64 bytes of data made): enough for any mail or
/// webhook body (a loop over 10,000 items takes some 100,000), and a bound
/// on what a value from the database can make a template do
/// (`{{ text|indent(n) }}` with a huge `n`, `{{ items|slice(n) }}`): about
/// 16 MB of output or a few hundred milliseconds at most. A render that
/// runs out fails that key's delivery; the others go on.
pub const RENDER_FUEL: u64 = 250_000;

/// A spark template environment. Templates added to it are escaped by
/// their name's flavor (`Flavor::of_name`); strings rendered with
/// `render_str` are text.
pub fn environment(strict: bool) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(RENDER_FUEL));
    env.set_undefined_behavior(if strict {
        UndefinedBehavior::Strict
    } else {
        UndefinedBehavior::Chainable
    });
    env.set_auto_escape_callback(|name| Flavor::of_name(name).auto_escape());
    env.set_formatter(|out, state, value| {
        match state.auto_escape() {
            AutoEscape::Custom(name) if name == "json-string" => {
                return write_json_string_content(out, value);
            }
            AutoEscape::Custom(_) => return write_url_part(out, value),
            _ => {}
        }
        minijinja::escape_formatter(out, state, value)
    });
    env.add_filter("date", django_date::date_filter);
    env.add_filter("default_if_none", default_if_none);
    env.add_filter("truncatechars", truncatechars);
    env
}

/// Django's `truncatechars(n)`: at most `n` characters, the last one `…`
/// when the text was cut.
fn truncatechars(value: Value, n: usize) -> String {
    let text = if value.is_none() || value.is_undefined() {
        String::new()
    } else {
        value.to_string()
    };
    if text.chars().count() <= n {
        return text;
    }
    let mut out: String = text.chars().take(n.saturating_sub(1)).collect();
    if n > 0 {
        out.push('…');
    }
    out
}

/// `{{ value|default_if_none("x") }}`: `x` only for none (and undefined).
fn default_if_none(value: Value, other: Option<Value>) -> Value {
    if value.is_none() || value.is_undefined() {
        other.unwrap_or_else(|| Value::from(""))
    } else {
        value
    }
}

/// A value written inside a JSON string: text escaped (quotes,
/// backslashes, control characters), numbers and booleans as they are,
/// none and undefined as nothing, safe strings (`|tojson`, `|safe`) as
/// they are, lists and objects as JSON.
fn write_json_string_content(
    out: &mut minijinja::Output,
    value: &Value,
) -> Result<(), minijinja::Error> {
    let fail = |_| minijinja::Error::new(ErrorKind::WriteFailure, "cannot write the output");
    if value.is_safe() {
        return out
            .write_str(value.as_str().unwrap_or_default())
            .map_err(fail);
    }
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => Ok(()),
        ValueKind::Seq | ValueKind::Map | ValueKind::Iterable | ValueKind::Plain => {
            let json = serde_json::to_string(&value)
                .map_err(|e| minijinja::Error::new(ErrorKind::BadSerialization, e.to_string()))?;
            out.write_str(&json).map_err(fail)
        }
        _ => {
            let text = value.to_string();
            let quoted = serde_json::to_string(&text).unwrap_or_default();
            out.write_str(&quoted[1..quoted.len().saturating_sub(1)])
                .map_err(fail)
        }
    }
}

/// A value written into a URL: percent-encoded, none and undefined as
/// nothing.
fn write_url_part(out: &mut minijinja::Output, value: &Value) -> Result<(), minijinja::Error> {
    if value.is_none() || value.is_undefined() {
        return Ok(());
    }
    let text = value.to_string();
    let mut encoded = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(b));
        } else {
            let _ = write!(encoded, "%{b:02X}");
        }
    }
    out.write_str(&encoded)
        .map_err(|_| minijinja::Error::new(ErrorKind::WriteFailure, "cannot write the output"))
}

/// The context templates see: the event's context at the top level, and
/// `spark_event` with its `key`, `group` (and `seen_at` when known).
pub fn event_context(event: &crate::event::Event, seen_at: Option<&str>) -> Value {
    let mut ctx: serde_json::Map<String, serde_json::Value> = (*event.context).clone();
    let mut about = serde_json::Map::new();
    about.insert("key".into(), serde_json::Value::String(event.key.clone()));
    about.insert(
        "group".into(),
        serde_json::Value::String(event.group.clone()),
    );
    if let Some(seen_at) = seen_at {
        about.insert(
            "seen_at".into(),
            serde_json::Value::String(seen_at.to_owned()),
        );
    }
    ctx.insert("spark_event".into(), serde_json::Value::Object(about));
    Value::from(minijinja::value::Serde(ctx))
}

/// A template error in one line: what, and where in the template.
pub fn describe_error(e: &minijinja::Error) -> String {
    match (e.line(), e.detail()) {
        (Some(line), Some(detail)) => format!("line {line}: {detail}"),
        (Some(line), None) => format!("line {line}: {e}"),
        (None, _) => e.to_string(),
    }
}

/// Checks a template as the config loads: it must parse, and every filter
/// and test it names must exist. The error names the line.
pub fn check(env: &Environment<'_>, source: &str) -> Result<(), String> {
    let template = env
        .template_from_str(source)
        .map_err(|e| describe_error(&e))?;
    let compiled = machinery::get_compiled_template(&template);
    let mut problems = Vec::new();
    for instructions in std::iter::once(&compiled.instructions).chain(compiled.blocks.values()) {
        let mut at = 0;
        while let Some(instruction) = instructions.get(at) {
            let unknown = match instruction {
                Instruction::ApplyFilter(name, _, _) if !exists(env, "|", name) => {
                    Some(("filter", *name))
                }
                Instruction::PerformTest(name, _, _) if !exists(env, " is ", name) => {
                    Some(("test", *name))
                }
                _ => None,
            };
            if let Some((what, name)) = unknown {
                let line = instructions.get_line(at).unwrap_or(0);
                problems.push(format!("line {line}: unknown {what} `{name}`"));
            }
            at += 1;
        }
    }
    problems.dedup();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Whether the filter (`joint` "|") or test (" is ") `name` exists in
/// `env`: applied to none, anything but "unknown" means it does.
fn exists(env: &Environment<'_>, joint: &str, name: &str) -> bool {
    if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return false;
    }
    let mut probe = String::new();
    let _ = write!(probe, "{{{{ none{joint}{name} }}}}");
    match env.render_str(&probe, ()) {
        Ok(_) => true,
        Err(e) => !matches!(e.kind(), ErrorKind::UnknownFilter | ErrorKind::UnknownTest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn to_value(v: serde_json::Value) -> Value {
        Value::from(minijinja::value::Serde(v))
    }

    fn render(strict: bool, source: &str, ctx: serde_json::Value) -> Result<String, String> {
        environment(strict)
            .render_str(source, to_value(ctx))
            .map_err(|e| describe_error(&e))
    }

    #[test]
    fn lookups_through_missing_values_render_empty_as_in_django() {
        let ctx = json!({"name": "Ana"});
        assert_eq!(
            render(false, "[{{ user.email }}]", ctx.clone()).unwrap(),
            "[]"
        );
        assert_eq!(
            render(
                false,
                "{% if user.email %}yes{% else %}no{% endif %}",
                ctx.clone()
            )
            .unwrap(),
            "no"
        );
        assert_eq!(
            render(false, "{{ user.email|default(\"x\") }}", ctx.clone()).unwrap(),
            "x"
        );
        assert_eq!(render(false, "{{ user.a.b.c }}", ctx.clone()).unwrap(), "");
        assert!(render(true, "{{ user.email }}", ctx.clone()).is_err());
        assert!(render(true, "{{ missing }}", ctx).is_err());
    }

    #[test]
    fn default_with_true_is_djangos_default() {
        let ctx = json!({"empty": "", "zero": 0, "none": null, "name": "Ana"});
        let r = |s: &str| render(false, s, ctx.clone()).unwrap();
        assert_eq!(r("{{ empty|default('x') }}"), "");
        assert_eq!(r("{{ empty|default('x', true) }}"), "x");
        assert_eq!(r("{{ zero|default('x', true) }}"), "x");
        assert_eq!(r("{{ none|default_if_none('x') }}"), "x");
        assert_eq!(r("{{ empty|default_if_none('x') }}"), "");
        assert_eq!(r("{{ name|default_if_none('x') }}"), "Ana");
        assert_eq!(r("{{ 'abcdef'|truncatechars(4) }}"), "abc…");
        assert_eq!(r("{{ 'abc'|truncatechars(4) }}"), "abc");
    }

    #[test]
    fn unknown_filters_and_tests_are_caught_with_their_line() {
        let env = environment(false);
        assert_eq!(
            check(&env, "Hello\n{{ name|titel }}").unwrap_err(),
            "line 2: unknown filter `titel`"
        );
        assert_eq!(
            check(&env, "{% if x is evn %}{% endif %}").unwrap_err(),
            "line 1: unknown test `evn`"
        );
        assert!(
            check(&env, "{% macro m(x) %}{{ x|nope }}{% endmacro %}")
                .unwrap_err()
                .contains("unknown filter `nope`")
        );
        assert!(
            check(
                &env,
                "{% for i in items|sort %}{{ i|title|date('Y')|default('') }}{% endfor %}{{ x is defined }}"
            )
            .is_ok()
        );
        assert!(check(&env, "{{ ").unwrap_err().starts_with("line 1:"));
    }

    #[test]
    fn json_flavor_escapes_inside_strings() {
        let mut env = environment(false);
        env.add_template_owned(
            "body.json",
            r#"{"text": "{{ title }} by {{ user.name }}", "n": {{ n }}, "tags": {{ tags }}, "raw": {{ user|tojson }}}"#,
        )
        .unwrap();
        let out = env
            .get_template("body.json")
            .unwrap()
            .render(to_value(json!({"title": "a \"quoted\"\\ <b>&\nline", "n": 3, "tags": ["x", "y"], "user": {"name": "Zoë"}})))
            .unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed["text"], "a \"quoted\"\\ <b>&\nline by Zoë");
        assert_eq!(parsed["n"], 3);
        assert_eq!(parsed["tags"], json!(["x", "y"]));
        assert_eq!(parsed["raw"], json!({"name": "Zoë"}));
    }

    #[test]
    fn url_flavor_percent_encodes_values() {
        let mut env = environment(false);
        env.add_template_owned("u.url", "https://h.example/send/{{ key }}?q={{ q }}")
            .unwrap();
        let out = env
            .get_template("u.url")
            .unwrap()
            .render(to_value(
                json!({"key": "a/b@evil.example:1 ü", "q": "x&y=z#"}),
            ))
            .unwrap();
        assert_eq!(
            out,
            "https://h.example/send/a%2Fb%40evil.example%3A1%20%C3%BC?q=x%26y%3Dz%23"
        );
    }

    #[test]
    fn html_flavor_escapes_and_text_does_not() {
        let mut env = environment(false);
        env.add_template_owned("m.html", "<p>{{ x }}</p>").unwrap();
        env.add_template_owned("m.txt", "{{ x }}").unwrap();
        let ctx = to_value(json!({"x": "<b>&\"'"}));
        assert_eq!(
            env.get_template("m.html").unwrap().render(&ctx).unwrap(),
            "<p>&lt;b&gt;&amp;&quot;&#x27;</p>"
        );
        assert_eq!(
            env.get_template("m.txt").unwrap().render(&ctx).unwrap(),
            "<b>&\"'"
        );
    }
}
