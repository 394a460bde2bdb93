//! The mail handler (django-spark's spark_mails) against a real SMTP server
//! on loopback (mailin-embedded), and the outbox transport: the right mails
//! with the right subject, body and recipients, nothing twice, refusals
//! retried, templates checked at load time, previews.

mod common;

use std::sync::atomic::Ordering;

use common::servers::Smtp;
use common::{CHALLENGE_SCHEMA, Case, challenge_config};
use mail_parser::MessageParser;

const TEMPLATES: &str = r#"
[handlers.templates]
challenge_created = """

  Your challenge "{{ challenge.title }}" is live   

Hi {{ challenge.user_email }},

good luck with {{ challenge.title }}!
It ends on {{ challenge.end_date }}.

"""
challenge_ended = """{{ challenge.title | indent("x") }}"""
"#;

fn mail_config(transport: &str) -> String {
    challenge_config(&format!(
        r#"
[[handlers]]
name = "owner-mail"
group = "^challenge"
kind = "mail"
from = "Challenges <noreply@example.org>"
to = "{{{{ challenge.user_email }}}}"
bcc = "audit@example.org"
subject = "News about {{{{ challenge.title }}}}"
body = "Something happened ({{{{ spark_event.group }}}})."
{transport}
{TEMPLATES}"#
    ))
}

fn case(transport: &str) -> Case {
    Case::new()
        .db(&format!(
            "{CHALLENGE_SCHEMA}
            INSERT INTO challenge VALUES
              (1, 'Plant trees', 'ana@example.org', 1, '2026-03-01', '2026-03-30'),
              (2, 'Bake sale', 'ben@example.org', 1, '2026-03-09', '2026-03-30');"
        ))
        .config(&mail_config(transport))
}

#[test]
fn the_smtp_server_receives_exactly_the_expected_mails() {
    let smtp = Smtp::start();
    let case = case(&smtp.transport());
    case.run(&["process-sources", "--as-of", "2026-03-10"])
        .success()
        .stdout_has(&["3 new", "6 delivered"]);
    let mails = smtp.received();
    assert_eq!(mails.len(), 3);
    let parsed: Vec<_> = mails
        .iter()
        .map(|m| {
            MessageParser::default()
                .parse(&m.data)
                .expect("a parseable mail")
        })
        .collect();
    let subjects: Vec<&str> = parsed.iter().map(|m| m.subject().unwrap_or("")).collect();
    assert_eq!(
        subjects,
        [
            "Your challenge \"Plant trees\" is live",
            "News about Plant trees",
            "Your challenge \"Bake sale\" is live",
        ]
    );
    // Bodies travel with CRLF line ends.
    let body = parsed[0].body_text(0).unwrap().replace("\r\n", "\n");
    assert_eq!(
        body.trim_end(),
        "Hi ana@example.org,\n\ngood luck with Plant trees!\nIt ends on 2026-03-30."
    );
    assert_eq!(
        parsed[1].body_text(0).unwrap().trim_end(),
        "Something happened (challenge_inactivity_2d)."
    );
    // Envelope: the owner and the bcc; headers: no Bcc over SMTP.
    assert_eq!(mails[0].from, "noreply@example.org");
    assert_eq!(mails[0].to, ["ana@example.org", "audit@example.org"]);
    assert_eq!(mails[2].to, ["ben@example.org", "audit@example.org"]);
    assert!(parsed[0].bcc().is_none());
    assert_eq!(
        parsed[0].message_id(),
        Some("challenge_created_1.owner-mail@example.org")
    );
    // A second run sends nothing.
    case.run(&["process-sources", "--as-of", "2026-03-10"])
        .success();
    assert_eq!(smtp.received().len(), 3);
}

#[test]
fn a_refusing_server_makes_the_delivery_dead_and_retry_sends_it() {
    let smtp = Smtp::start();
    smtp.refuse.store(true, Ordering::SeqCst);
    let case = case(&smtp.transport());
    // 550 is permanent: dead at once, with the server's reply.
    case.run(&["process-sources", "--as-of", "2026-03-10"])
        .status(1)
        .stderr_has(&[
            "handler `owner-mail`",
            "SMTP 127.0.0.1:",
            "550",
            "Mailbox unavailable",
        ]);
    assert!(smtp.received().is_empty());
    let dead = case.run(&["deliveries", "--json"]).success().json();
    assert_eq!(dead.as_array().unwrap().len(), 3);
    assert!(
        dead.as_array()
            .unwrap()
            .iter()
            .all(|d| d["state"] == "dead"),
        "{dead:#}"
    );
    smtp.refuse.store(false, Ordering::SeqCst);
    // A later run does not try a dead delivery again; retry does.
    case.run(&["process-sources", "--as-of", "2026-03-10"])
        .success()
        .stdout_has(&["0 delivered"]);
    assert!(smtp.received().is_empty());
    case.run(&["retry", "--dead"])
        .success()
        .stdout_has(&["3 delivered"]);
    assert_eq!(smtp.received().len(), 3);
}

#[test]
fn the_outbox_holds_one_parseable_eml_per_event() {
    let case = case("outbox = \"outbox\"");
    case.run(&["process-sources", "--as-of", "2026-03-10"])
        .success();
    let mut names: Vec<String> = std::fs::read_dir(case.path("outbox"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "challenge_created_1.eml",
            "challenge_created_2.eml",
            "challenge_inactivity_2d_1.eml"
        ]
    );
    let bytes = std::fs::read(case.path("outbox/challenge_created_2.eml")).unwrap();
    let mail = MessageParser::default().parse(&bytes).unwrap();
    assert_eq!(mail.subject(), Some("Your challenge \"Bake sale\" is live"));
    assert_eq!(
        mail.to().and_then(|a| a.first()).and_then(|a| a.address()),
        Some("ben@example.org")
    );
    assert!(mail.bcc().is_some(), "the outbox keeps Bcc for the pickup");
    // Sent again (forgotten, then found again), the file is replaced, not doubled.
    case.run(&["forget", "challenge_created_2"]).success();
    case.run(&["process-sources", "--as-of", "2026-03-10"])
        .success();
    assert_eq!(std::fs::read_dir(case.path("outbox")).unwrap().count(), 3);
}

#[test]
fn a_template_that_fails_to_render_is_a_failed_delivery_naming_it() {
    let case = case("outbox = \"outbox\"");
    case.sql("UPDATE challenge SET end_date = '2026-03-05' WHERE id = 1");
    case.run(&["process-sources", "--as-of", "2026-03-10"])
        .status(1)
        .stderr_has(&[
            "challenge_ended_1",
            "template challenge_ended (inline) does not render",
            "line 1",
        ]);
    assert!(!case.path("outbox/challenge_ended_1.eml").exists());
}

#[test]
fn a_mail_without_recipient_is_a_failed_delivery() {
    let config =
        mail_config("outbox = \"outbox\"").replace("to = \"{{ challenge.user_email }}\"\n", "");
    let case = case("outbox = \"outbox\"").config(&config);
    case.run(&["process-sources", "--as-of", "2026-03-10"])
        .status(1)
        .stderr_has(&["no recipient for challenge_created_1", "spark_mail.to"]);
}

#[test]
fn a_template_syntax_error_is_a_config_error_with_its_file_and_line() {
    let case = case("outbox = \"outbox\"").file(
        "mails/challenge_created.txt",
        "Hello\n\n{% if challenge.title %}\nno endif\n",
    );
    let config = mail_config("outbox = \"outbox\"").replace(TEMPLATES, "templates = \"mails\"\n");
    let case = case.config(&config);
    let before = case.db_bytes();
    case.run(&["process-sources"]).status(2).stderr_has(&[
        "handler `owner-mail`",
        "mails/challenge_created.txt",
        "line 3",
    ]);
    assert_eq!(case.db_bytes(), before);
    assert!(!case.path("outbox").exists());
}

#[test]
fn preview_renders_without_sending() {
    let case = case("outbox = \"outbox\"");
    case.run(&["process-sources", "--as-of", "2026-03-10"])
        .success();
    let run = case
        .run(&["preview-mail", "owner-mail", "--key", "challenge_created_1"])
        .success()
        .stdout_has(&[
            "Subject: Your challenge \"Plant trees\" is live",
            "To: ana@example.org",
        ]);
    assert!(run.stdout().contains("good luck with Plant trees!"));
    let preview = case
        .run(&[
            "preview-mail",
            "owner-mail",
            "--group",
            "challenge_created",
            "--context",
            r#"{"challenge": {"title": "Swim", "user_email": "x@example.org", "end_date": "2026-04-01"}}"#,
            "--json",
        ])
        .success()
        .json();
    assert_eq!(preview["subject"], "Your challenge \"Swim\" is live");
    assert_eq!(preview["to"][0], "x@example.org");
    case.run(&["preview-mail", "log", "--key", "challenge_created_1"])
        .status(2)
        .stderr_has(&["`log` is a jsonl handler"]);
}
