//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz), also replayed
//! over the seed corpus by `cargo test` (tests/fuzz_corpus.rs), so that
//! every case found stays fixed. Each must return normally on any input: a
//! panic is a bug.
//!
//! Not a public API: it may change with any release.

use std::path::Path;

use serde_json::{Map, Value};

use crate::config::{Config, MailConfig, MailTransport};
use crate::handlers::mail::MailHandler;
use crate::records::Record;
use crate::registry::Registry;
use crate::sources::generator::{CondValue, Condition, Generator, Op};

/// The config loader on arbitrary text.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let registry = Registry::with_builtins();
    if let Ok(config) = Config::parse(text, Path::new("/nonexistent/spark.toml"), &registry) {
        let _ = config.require_secrets();
        let _ = crate::check::emitted_groups(&config, &registry);
    }
}

/// A template (the bytes before the first NUL) rendered in every flavor
/// with a context from the database (the bytes after it: a JSON object,
/// else the values `n` and `text`): whatever numbers and text the context
/// holds, the render returns, within `RENDER_FUEL` (never an abort, a hang
/// or an allocation of gigabytes).
pub fn render(data: &[u8]) {
    use crate::templates::{Flavor, RENDER_FUEL};
    let (template, context) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(template) = std::str::from_utf8(template) else {
        return;
    };
    let context = match serde_json::from_slice::<Value>(context) {
        Ok(Value::Object(map)) => Value::Object(map),
        _ => serde_json::json!({
            "n": i64::MAX,
            "text": String::from_utf8_lossy(context),
            "items": [1, 2, 3],
        }),
    };
    for strict in [false, true] {
        let mut env = crate::templates::environment(strict);
        if crate::templates::check(&env, template).is_err() {
            return;
        }
        for flavor in [Flavor::Text, Flavor::Html, Flavor::Json, Flavor::Url] {
            let name = match flavor {
                Flavor::Text => "t.txt",
                Flavor::Html => "t.html",
                Flavor::Json => "t.json",
                Flavor::Url => "t.url",
            };
            if env.add_template_owned(name, template.to_owned()).is_err() {
                return;
            }
            if let Ok(t) = env.get_template(name)
                && let Ok(out) = t.render(minijinja::Value::from(minijinja::value::Serde(&context)))
            {
                // Fuel is charged about one unit per 64 bytes made.
                let most = usize::try_from(RENDER_FUEL).unwrap_or(usize::MAX) * 64;
                assert!(out.len() <= most, "a render made {} bytes", out.len());
            }
        }
    }
}

/// A record (the bytes after the first NUL: a JSON object, else one text
/// column) through a generator into an event, the event through a mail
/// template (the bytes before the NUL) into a message.
pub fn mail(data: &[u8]) {
    let (template, record) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b""[..]),
    };
    let template = String::from_utf8_lossy(template).into_owned();
    let map = match serde_json::from_slice::<Value>(record) {
        Ok(Value::Object(map)) => map,
        _ => {
            let mut map = Map::new();
            map.insert("id".into(), Value::from(1));
            map.insert(
                "email".into(),
                Value::String(String::from_utf8_lossy(record).into_owned()),
            );
            map
        }
    };
    let record = Record::from_map(map);
    let generator = Generator {
        group: "fuzz".into(),
        id: "id".into(),
        conditions: vec![Condition {
            variable: "id".into(),
            op: Op::Ne,
            value: CondValue::Text(String::new()),
            at: String::new(),
        }],
    };
    let mut context = None;
    let Ok(Some(event)) = generator.evaluate(&record, &mut context) else {
        return;
    };
    let env = crate::templates::environment(false);
    if crate::templates::check(&env, &template).is_err() {
        return;
    }
    let config = MailConfig {
        templates: [("fuzz".to_owned(), ("fuzz.txt".to_owned(), template.clone()))]
            .into_iter()
            .collect(),
        html_templates: [("fuzz".to_owned(), ("fuzz.html".to_owned(), template))]
            .into_iter()
            .collect(),
        html: None,
        strict_templates: false,
        templates_folder: None,
        from: Some("{{ from | default('spark@example.org') }}".into()),
        subject: Some("{{ subject }}".into()),
        body: None,
        to: vec!["{{ email }}".into(), "fixed@example.org".into()],
        cc: vec!["{{ cc }}".into()],
        bcc: Vec::new(),
        reply_to: Vec::new(),
        transport: MailTransport::Outbox {
            dir: "/nonexistent".into(),
            mode: crate::files::PRIVATE,
        },
        // The record's spark_mail is a value from the database.
        spark_mail_from_records: vec!["to".into(), "subject".into(), "headers".into()],
        record_groups: ["fuzz".to_owned()].into_iter().collect(),
    };
    let handler = MailHandler::new("fuzz", config);
    {
        if let Ok(mail) = handler.render(&event)
            && let Ok(message) = handler.message(&event, &mail)
        {
            let formatted = message.formatted();
            let text = String::from_utf8_lossy(&formatted);
            // A header line never exceeds what RFC 5322 allows.
            for line in text.split("\r\n") {
                if line.starts_with(|c: char| !c.is_whitespace()) && line.contains(':') {
                    assert!(line.len() <= 998, "header line of {} bytes", line.len());
                }
                if line.is_empty() {
                    break;
                }
            }
        }
        let _ = crate::handlers::mail::outbox_file(Path::new("/nonexistent"), &event.key);
    }
}
