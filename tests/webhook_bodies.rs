//! Webhook bodies for the tools people post to: `body`, `content_type`,
//! `method`, templated headers and URLs, and the shipped examples for
//! Slack, Discord, Microsoft Teams and Matrix, each run against a loopback
//! server that checks the payload's shape and that untrusted text arrives
//! intact (JSON-escaped, not HTML-escaped).

mod common;

use common::servers::Hook;
use common::{CHALLENGE_SCHEMA, Case};
use serde_json::Value;

/// A title an end user could write: quotes, backslashes, a line break, a
/// tab, `<>&`, a would-be mention, and text that is not ASCII.
const TITLE: &str = "He said \"hi\" \\ back\\slash\n<b>&amp;</b>\t<!channel> @everyone ünïcødé";

/// SQLite's spelling of TITLE.
fn title_sql() -> String {
    let parts: Vec<String> = TITLE
        .split('\n')
        .map(|p| {
            format!(
                "'{}'",
                p.replace('\'', "''").replace('\t', "' || char(9) || '")
            )
        })
        .collect();
    parts.join(" || char(10) || ")
}

/// A case with one ended challenge whose title is TITLE, configured by the
/// example `name` (its database pointed at the case's).
fn example_case(name: &str) -> Case {
    let path = format!("{}/config/examples/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(&path).expect("the example exists");
    assert!(example.contains("path = \"../../var/examples.sqlite3\""));
    let config = example
        .replace(
            "path = \"../../var/examples.sqlite3\"",
            "path = \"app.sqlite3\"",
        )
        .replace("create_from = \"../demo.sql\"\n", "");
    Case::new()
        .db(&format!(
            "{CHALLENGE_SCHEMA}
             INSERT INTO challenge VALUES
               (1, {}, 'ana+\"x\"@example.org', 1, '2026-02-01', '2026-03-05'),
               (2, 'Still running', 'ben@example.org', 1, '2026-03-01', '2026-04-01');",
            title_sql()
        ))
        .config(&config)
}

fn run_with(case: &Case, env: &[(&str, String)]) {
    let mut cmd = case.command();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .args(["process-sources", "--as-of", "2026-03-10"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The one request the hook got, its body parsed.
fn the_request(hook: &Hook) -> (common::servers::Request, Value) {
    let requests = hook.requests();
    assert_eq!(requests.len(), 1, "one ended challenge, one request");
    let request = requests.into_iter().next().unwrap();
    let body: Value = serde_json::from_str(&request.body).expect("the body is JSON");
    (request, body)
}

#[test]
fn slack_gets_text_and_blocks_with_the_title_intact() {
    let hook = Hook::start();
    let case = example_case("slack");
    run_with(
        &case,
        &[(
            "SLACK_WEBHOOK_URL",
            format!("{}/services/T0/B0/X", hook.base.clone()),
        )],
    );
    let (request, body) = the_request(&hook);
    assert_eq!(request.method, "POST");
    assert_eq!(request.url, "/services/T0/B0/X");
    assert_eq!(request.headers["content-type"], "application/json");
    assert_eq!(body["text"], format!("Challenge ended: {TITLE}"));
    let block = &body["blocks"][0];
    assert_eq!(block["type"], "section");
    assert_eq!(block["text"]["type"], "mrkdwn");
    assert_eq!(
        block["text"]["text"],
        format!("*Challenge ended:* {TITLE}\nOwner: ana+\"x\"@example.org, ended March 5, 2026")
    );
}

#[test]
fn discord_gets_content_without_mentions() {
    let hook = Hook::start();
    let case = example_case("discord");
    run_with(
        &case,
        &[(
            "DISCORD_WEBHOOK_URL",
            format!("{}/api/webhooks/1/abc", hook.base.clone()),
        )],
    );
    let (request, body) = the_request(&hook);
    assert_eq!(request.method, "POST");
    assert_eq!(request.url, "/api/webhooks/1/abc");
    assert_eq!(body["username"], "spark");
    assert_eq!(
        body["content"],
        format!("Challenge ended: {TITLE} (ana+\"x\"@example.org)")
    );
    assert_eq!(body["allowed_mentions"], serde_json::json!({"parse": []}));
}

#[test]
fn teams_gets_an_adaptive_card() {
    let hook = Hook::start();
    let case = example_case("teams");
    run_with(
        &case,
        &[(
            "TEAMS_WEBHOOK_URL",
            format!("{}/workflows/w1", hook.base.clone()),
        )],
    );
    let (request, body) = the_request(&hook);
    assert_eq!(request.method, "POST");
    assert_eq!(body["type"], "message");
    let attachment = &body["attachments"][0];
    assert_eq!(
        attachment["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    let card = &attachment["content"];
    assert_eq!(card["type"], "AdaptiveCard");
    assert_eq!(card["body"][1]["text"], TITLE);
    assert_eq!(
        card["body"][2]["facts"][0]["value"],
        "ana+\"x\"@example.org"
    );
    assert_eq!(card["body"][2]["facts"][1]["value"], "05.03.2026");
}

#[test]
fn matrix_gets_a_put_whose_transaction_id_is_the_key() {
    let hook = Hook::start();
    let case = example_case("matrix");
    run_with(
        &case,
        &[
            ("MATRIX_HOMESERVER", hook.base.clone()),
            ("MATRIX_ROOM", "%21room%3Aexample.org".to_owned()),
            ("MATRIX_AUTHORIZATION", "Bearer syt_secret".to_owned()),
        ],
    );
    let (request, body) = the_request(&hook);
    assert_eq!(request.method, "PUT");
    assert_eq!(
        request.url,
        "/_matrix/client/v3/rooms/%21room%3Aexample.org/send/m.room.message/challenge_ended_1"
    );
    assert_eq!(request.headers["authorization"], "Bearer syt_secret");
    assert_eq!(body["msgtype"], "m.text");
    assert_eq!(
        body["body"],
        format!("Challenge ended: {TITLE} (ana+\"x\"@example.org)")
    );
}

/// A case with one challenge and a webhook handler configured by `fields`.
fn hook_case(hook: &Hook, title: &str, fields: &str) -> Case {
    Case::new()
        .db(&format!(
            "{CHALLENGE_SCHEMA}
             INSERT INTO challenge VALUES (1, '{}', 'ana@example.org', 1, '2026-02-01', '2026-03-05');",
            title.replace('\'', "''")
        ))
        .config(&format!(
            r#"
[database]
path = "app.sqlite3"

[delivery]
backoff = "0s"

[[sources]]
name = "challenges"
function = "challenge_events"
query = "SELECT c.*, 0 AS donation_count FROM challenge c"

[[handlers]]
name = "hook"
group = "^challenge_ended$"
kind = "webhook"
url = "{}"
{fields}
"#,
            hook.base.clone()
        ))
}

#[test]
fn a_body_that_does_not_render_to_json_is_a_failed_delivery_naming_the_key() {
    let hook = Hook::start();
    // Text outside quotes: fine for "Boots", not JSON for most titles.
    let case = hook_case(
        &hook,
        "two words",
        r#"body = '{"text": {{ challenge.title }}}'"#,
    );
    case.run(&["process-sources", "--as-of", "2026-03-10"])
        .status(1)
        .stderr_has(&["challenge_ended_1", "`body`", "is not JSON"]);
    assert!(hook.requests().is_empty(), "nothing sent");
}

#[test]
fn method_content_type_and_templated_headers() {
    let hook = Hook::start();
    let case = hook_case(
        &hook,
        "Boots & <socks>",
        r#"method = "patch"
content_type = "text/plain; charset=utf-8"
body = "{{ challenge.title }} ended"
headers = { "X-Event" = "{{ spark_event.group }}", "X-Fixed" = "yes" }"#,
    );
    case.run(&["process-sources", "--as-of", "2026-03-10"])
        .success();
    let requests = hook.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.method, "PATCH");
    assert_eq!(r.headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(
        r.body, "Boots & <socks> ended",
        "text bodies are not escaped"
    );
    assert_eq!(r.headers["x-event"], "challenge_ended");
    assert_eq!(r.headers["x-fixed"], "yes");
    assert_eq!(r.headers["idempotency-key"], "challenge_ended_1");
}

#[test]
fn a_header_rendered_with_a_line_break_is_refused() {
    let hook = Hook::start();
    let case = hook_case(
        &hook,
        "a\r\nX-Evil: 1",
        r#"headers = { "X-Title" = "{{ challenge.title }}" }"#,
    );
    case.run(&["process-sources", "--as-of", "2026-03-10"])
        .status(1)
        .stderr_has(&["header `X-Title`", "challenge_ended_1", "line break"]);
    assert!(hook.requests().is_empty());
}

#[test]
fn values_in_a_templated_url_cannot_leave_their_segment() {
    let hook = Hook::start();
    let case = hook_case(&hook, "../../admin?x=1#", "");
    let toml = std::fs::read_to_string(case.path("spark.toml"))
        .unwrap()
        .replace(
            &format!("url = \"{}\"", hook.base.clone()),
            &format!(
                "url = \"{}/items/{{{{ challenge.title }}}}\"\nmethod = \"PUT\"",
                hook.base.clone()
            ),
        );
    std::fs::write(case.path("spark.toml"), toml).unwrap();
    case.run(&["process-sources", "--as-of", "2026-03-10"])
        .success();
    let requests = hook.requests();
    assert_eq!(requests[0].url, "/items/..%2F..%2Fadmin%3Fx%3D1%23");
}

#[test]
fn bad_webhook_settings_are_exit_2_at_load() {
    let hook = Hook::start();
    for (fields, complaint) in [
        (
            r#"method = "GET""#,
            "expected \"POST\", \"PUT\" or \"PATCH\"",
        ),
        (r#"content_type = "text/plain""#, "without `body`"),
        (r#"body = "{{ x|nope }}""#, "unknown filter `nope`"),
        (
            r#"headers = { "X-A" = "{{ x|jsn }}" }"#,
            "unknown filter `jsn`",
        ),
        (r#"body = "{{ x""#, "`body`"),
    ] {
        let case = hook_case(&hook, "t", fields);
        case.run(&["check"])
            .status(2)
            .stderr_has(&["handler `hook`", complaint]);
    }
    // A template may not choose the host.
    let case = hook_case(&hook, "t", "");
    let toml = std::fs::read_to_string(case.path("spark.toml"))
        .unwrap()
        .replace(
            &format!("url = \"{}\"", hook.base.clone()),
            "url = \"http://{{ challenge.user_email }}/x\"",
        );
    std::fs::write(case.path("spark.toml"), toml).unwrap();
    case.run(&["check"])
        .status(2)
        .stderr_has(&["not the scheme or the host"]);
}
