//! Writing mails as django-spark users do: Django's forgiving lookups, the
//! `date` filter, unknown filters caught by `check`, `spark_mail` keys as
//! Django's mail class takes them, HTML mail, long subjects, bare `\r`,
//! previews without recipients. Real outbox files, parsed.

mod common;

use common::{Backend, Case};
use mail_parser::MessageParser;

const DB: &str = "
CREATE TABLE shop_order (id INTEGER PRIMARY KEY, email TEXT, name TEXT, title TEXT,
    shipped date, paid_at datetime, extra TEXT);
INSERT INTO shop_order VALUES
  (1, 'ana@example.org', 'Ana <b>&amp;</b> \"Co\"', 'Boots', '2026-03-10', '2026-03-10 14:30:00', NULL);
";

/// A case with one order and a mail handler writing to `outbox`; `handler`
/// adds fields to the handler, `templates` is its `[handlers.templates]`.
fn case(handler: &str, templates: &str) -> Case {
    Case::new().db(DB).config(&format!(
        r#"
[database]
path = "app.sqlite3"

[[sources]]
name = "orders"
table = "shop_order"
group = "order_shipped"

[[handlers]]
name = "mail"
group = "^order"
kind = "mail"
from = "Shop <shop@example.org>"
outbox = "outbox"
{handler}

[handlers.templates]
{templates}
"#
    ))
}

fn the_mail(case: &Case) -> Vec<u8> {
    std::fs::read(case.path("outbox/order_shipped_1.eml")).expect("the mail was written")
}

fn text_of(bytes: &[u8]) -> String {
    let mail = MessageParser::default()
        .parse(bytes)
        .expect("a parseable mail");
    mail.body_text(0).expect("a text part").into_owned()
}

#[test]
fn a_lookup_through_a_missing_value_renders_empty_as_in_django() {
    let case = case(
        r#"to = "{{ email }}""#,
        r#"order_shipped = """Shipped: {{ title }}
[{{ user.email }}] {% if user.email %}has user{% else %}no user{% endif %} {{ user.email|default("x") }}"""
"#,
    );
    case.run(&["process-sources"]).success();
    assert_eq!(text_of(&the_mail(&case)).trim(), "[] no user x");

    // strict_templates: the same template fails the delivery, naming it.
    let strict = self::case(
        "to = \"{{ email }}\"\nstrict_templates = true",
        r#"order_shipped = """Shipped
{{ user.email }}""""#,
    );
    strict.run(&["process-sources"]).status(1).stderr_has(&[
        "order_shipped_1",
        "does not render",
        "undefined",
    ]);
}

#[test]
fn the_date_filter_takes_djangos_format_codes() {
    let case = case(
        r#"to = "{{ email }}""#,
        r#"order_shipped = """Shipped on {{ shipped|date("d.m.Y") }}
{{ paid_at|date("N j, Y, P") }} / {{ shipped|date }} / [{{ extra|date("Y") }}] / {{ extra|default_if_none("none") }} / {{ ""|default("empty", true) }}""""#,
    );
    case.run(&["process-sources"]).success();
    let bytes = the_mail(&case);
    let mail = MessageParser::default().parse(&bytes).unwrap();
    assert_eq!(mail.subject(), Some("Shipped on 10.03.2026"));
    assert_eq!(
        text_of(&bytes).trim(),
        "March 10, 2026, 2:30 p.m. / March 10, 2026 / [] / none / empty"
    );
}

#[test]
fn check_catches_an_unknown_filter_or_test_at_load() {
    for (template, unknown) in [
        ("{{ name|titel }}", "unknown filter `titel`"),
        ("{% if title is evn %}x{% endif %}", "unknown test `evn`"),
    ] {
        let case = case(
            r#"to = "{{ email }}""#,
            &format!("order_shipped = \"\"\"Subject\n\n{template}\"\"\""),
        );
        for command in ["check", "process-sources"] {
            case.run(&[command]).status(2).stderr_has(&[
                "spark.toml:",
                "handler `mail`",
                "order_shipped (inline)",
                "line 3",
                unknown,
            ]);
        }
        assert!(!case.path("outbox").exists(), "nothing written");
    }
    // In a default too, and in a template folder.
    let case = case(r#"to = "{{ email|lower|nope }}""#, "");
    case.run(&["check"])
        .status(2)
        .stderr_has(&["`to`", "unknown filter `nope`"]);
}

/// A case on PostgreSQL whose order row carries `spark_mail` as jsonb (a
/// context's nested object; SQLite text would stay a string).
fn spark_mail_case(test: &str, spark_mail: &str) -> Option<Case> {
    let backend = Backend::postgres(test)?;
    let case = Case::on(backend);
    case.pg_sql(&format!(
        "CREATE TABLE shop_order (id integer PRIMARY KEY, spark_mail jsonb);
         INSERT INTO shop_order VALUES (1, '{}');",
        spark_mail.replace('\'', "''")
    ));
    Some(case.config(
        r#"
[database]
path = "app.sqlite3"

[[sources]]
name = "orders"
table = "shop_order"
group = "order_shipped"

[[handlers]]
name = "mail"
group = "^order"
kind = "mail"
from = "Shop <shop@example.org>"
to = "fallback@example.org"
subject = "Hello"
body = "Body"
outbox = "outbox"
spark_mail_from_records = ["from_email", "to", "headers"]
"#,
    ))
}

#[test]
fn spark_mail_from_email_and_headers_reach_the_mail() {
    let Some(case) = spark_mail_case(
        "spark_mail_from_email_and_headers_reach_the_mail",
        r#"{"from_email": "Sales <sales@example.org>", "to": ["x@example.org"],
            "headers": {"X-Campaign": "spring \"26\"", "List-Unsubscribe": "<https://example.org/u/1>"}}"#,
    ) else {
        return;
    };
    case.run(&["process-sources"]).success();
    let bytes = the_mail(&case);
    let mail = MessageParser::default().parse(&bytes).unwrap();
    assert_eq!(
        mail.from()
            .and_then(|a| a.first())
            .and_then(|a| a.address()),
        Some("sales@example.org")
    );
    assert_eq!(
        mail.to().and_then(|a| a.first()).and_then(|a| a.address()),
        Some("x@example.org")
    );
    assert_eq!(
        mail.header("X-Campaign").and_then(|h| h.as_text()),
        Some("spring \"26\"")
    );
    assert!(
        mail.header("List-Unsubscribe").is_some(),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
}

#[test]
fn spark_mail_headers_cannot_inject_or_take_over_fields() {
    for (spark_mail, complaint) in [
        (
            r#"{"headers": {"X-A": "v\r\nBcc: evil@attacker.org"}}"#,
            "line break",
        ),
        (
            r#"{"headers": {"Bcc": "evil@attacker.org"}}"#,
            "not a field spark_mail may set",
        ),
        (
            r#"{"headers": {"content-type": "text/html"}}"#,
            "not a field spark_mail may set",
        ),
        (
            r#"{"headers": {"To": "evil@attacker.org"}}"#,
            "not a field spark_mail may set",
        ),
        (
            r#"{"headers": {"X-A\r\nBcc": "x"}}"#,
            "not a header field name",
        ),
        (r#"{"headers": {"X A": "x"}}"#, "not a header field name"),
        (r#"{"headers": ["X-A: x"]}"#, "must be an object"),
        (r#"{"attachments": []}"#, "spark does not take this key"),
    ] {
        let Some(case) = spark_mail_case("spark_mail_headers_cannot_inject", spark_mail) else {
            return;
        };
        case.run(&["process-sources"])
            .status(1)
            .stderr_has(&["order_shipped_1", complaint]);
        assert!(
            !case.path("outbox/order_shipped_1.eml").exists(),
            "{spark_mail}: nothing sent"
        );
    }
}

#[test]
fn an_html_template_beside_the_text_one_makes_multipart_alternative() {
    let case = case(
        r#"to = "{{ email }}""#,
        r#"order_shipped = """Shipped: {{ name }}

Hello {{ name }}, your {{ title }} are on their way."""
"order_shipped.html" = """<p>Hello {{ name }}, your <b>{{ title }}</b> are on their way.</p>""""#,
    );
    case.run(&["process-sources"]).success();
    let bytes = the_mail(&case);
    let raw = String::from_utf8_lossy(&bytes);
    assert!(raw.contains("multipart/alternative"), "{raw}");
    let mail = MessageParser::default().parse(&bytes).unwrap();
    assert_eq!(mail.subject(), Some("Shipped: Ana <b>&amp;</b> \"Co\""));
    // The text part as written (not autoescaped), the HTML part escaped.
    assert_eq!(
        mail.body_text(0).unwrap().trim(),
        "Hello Ana <b>&amp;</b> \"Co\", your Boots are on their way."
    );
    assert_eq!(
        mail.body_html(0).unwrap().trim(),
        "<p>Hello Ana &lt;b&gt;&amp;amp;&lt;&#x2f;b&gt; &quot;Co&quot;, your <b>Boots</b> are on their way.</p>"
    );
    assert_eq!(mail.text_body.len(), 1);
    assert_eq!(mail.html_body.len(), 1);
}

#[test]
fn html_templates_come_from_the_folder_and_the_html_default() {
    let case = Case::new()
        .db(DB)
        .file("mails/order_shipped.txt", "Shipped\n\nText for {{ name }}")
        .file("mails/order_shipped.html", "<i>{{ name }}</i>")
        .config(
            r#"
[database]
path = "app.sqlite3"

[[sources]]
name = "orders"
table = "shop_order"
group = "order_shipped"

[[sources]]
name = "others"
table = "shop_order"
group = "order_other"

[[handlers]]
name = "mail"
group = "^order"
kind = "mail"
from = "Shop <shop@example.org>"
to = "{{ email }}"
subject = "Default"
html = "<u>{{ title }}</u>"
outbox = "outbox"
templates = "mails"
"#,
        );
    case.run(&["process-sources"]).success();
    let shipped = MessageParser::default()
        .parse(&the_mail(&case))
        .unwrap()
        .body_html(0)
        .unwrap()
        .into_owned();
    assert_eq!(
        shipped,
        "<i>Ana &lt;b&gt;&amp;amp;&lt;&#x2f;b&gt; &quot;Co&quot;</i>"
    );
    let other = std::fs::read(case.path("outbox/order_other_1.eml")).unwrap();
    let other = MessageParser::default().parse(&other).unwrap();
    // No text body at all: one HTML part.
    assert_eq!(other.body_html(0).unwrap().trim(), "<u>Boots</u>");
    assert!(!String::from_utf8_lossy(other.raw_message()).contains("multipart"));
}

#[test]
fn long_subjects_and_names_are_folded_within_the_line_limit() {
    for title in ["x".repeat(1500), "word ".repeat(300), "ü".repeat(700)] {
        let case = Case::new()
            .db(&format!(
                "CREATE TABLE shop_order (id INTEGER PRIMARY KEY, email TEXT, title TEXT);
                 INSERT INTO shop_order VALUES (1, 'ana@example.org', '{title}');"
            ))
            .config(
                r#"
[database]
path = "app.sqlite3"

[[sources]]
name = "orders"
table = "shop_order"
group = "order_shipped"

[[handlers]]
name = "mail"
group = "^order"
kind = "mail"
from = "{{ title }} <shop@example.org>"
to = ["{{ title }} <{{ email }}>", "Audit <audit@example.org>"]
subject = "{{ title }}"
body = "Body"
outbox = "outbox"
"#,
            );
        case.run(&["process-sources"]).success();
        let bytes = the_mail(&case);
        let raw = String::from_utf8_lossy(&bytes);
        let headers = raw.split("\r\n\r\n").next().unwrap();
        for line in headers.split("\r\n") {
            assert!(
                line.len() <= 78,
                "a header line of {} characters: {line}",
                line.len()
            );
        }
        let mail = MessageParser::default().parse(&bytes).unwrap();
        assert_eq!(mail.subject(), Some(title.trim()));
        // Display names from the database are folded too, and read back whole.
        let from = mail.from().and_then(|a| a.first()).unwrap();
        assert_eq!(from.name(), Some(title.trim()));
        assert_eq!(from.address(), Some("shop@example.org"));
        let to: Vec<_> = mail.to().unwrap().iter().collect();
        assert_eq!(to.len(), 2, "{raw}");
        assert_eq!(to[0].name(), Some(title.trim()));
        assert_eq!(to[0].address(), Some("ana@example.org"));
        assert_eq!(to[1].address(), Some("audit@example.org"));
    }
}

#[test]
fn a_bare_carriage_return_breaks_a_line_as_pythons_splitlines_does() {
    let case = case(
        r#"to = "{{ email }}""#,
        "order_shipped = \"Shipped\\rLine one\\rLine two\\u2028Line three\"",
    );
    case.run(&["process-sources"]).success();
    let bytes = the_mail(&case);
    let mail = MessageParser::default().parse(&bytes).unwrap();
    assert_eq!(mail.subject(), Some("Shipped"));
    let body: Vec<String> = text_of(&bytes).lines().map(str::to_owned).collect();
    assert_eq!(body, ["Line one", "Line two", "Line three"]);
}

#[test]
fn preview_shows_a_mail_whose_recipients_come_only_from_spark_mail() {
    // The group is a generator's: its spark_mail is taken from records only
    // for the keys the handler lists.
    let case = case(
        r#"spark_mail_from_records = ["to"]"#,
        r#"order_shipped = """Shipped: {{ title }}

Hello""""#,
    );
    let preview = case
        .run(&[
            "preview-mail",
            "mail",
            "--group",
            "order_shipped",
            "--context",
            r#"{"title": "Boots"}"#,
        ])
        .success()
        .stdout();
    assert!(
        preview.contains("# no recipient for order_shipped_preview"),
        "{preview}"
    );
    assert!(preview.contains("Subject: Shipped: Boots"), "{preview}");
    assert!(preview.contains("Hello"), "{preview}");
    assert!(!preview.contains("no-recipient@invalid"), "{preview}");
    let json = case
        .run(&[
            "--json",
            "preview-mail",
            "mail",
            "--group",
            "order_shipped",
            "--context",
            r#"{"title": "Boots", "spark_mail": {"to": "x@example.org"}}"#,
        ])
        .success()
        .json();
    assert_eq!(json["to"][0], "x@example.org");
    assert_eq!(json["missing"], serde_json::Value::Null);
    // Delivering it still fails: a mail needs a recipient.
    case.run(&["process-sources"])
        .status(1)
        .stderr_has(&["no recipient for order_shipped_1"]);
}
