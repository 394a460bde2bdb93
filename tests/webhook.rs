//! The webhook handler against a real HTTP server on loopback: one POST per
//! event with the right headers and a verifiable signature; a failing
//! server makes the delivery fail and a later run deliver it.

mod common;

use std::sync::atomic::Ordering;

use common::servers::Hook;
use common::{Case, challenges_case};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

fn case(hook_url: &str) -> Case {
    challenges_case(
        "(1, 'a', 'a@x', 1, '2026-03-01', '2026-03-30'), (2, 'b', 'b@x', 1, '2026-03-09', '2026-03-30')",
        &format!(
            r#"
[[handlers]]
name = "hook"
group = "^challenge"
kind = "webhook"
url = "{hook_url}"
headers = {{ "X-Source" = "spark-tests" }}
header_env = {{ "Authorization" = "HOOK_AUTH" }}
signing_secret_env = "HOOK_SECRET"
timeout = "5s"
"#
        ),
    )
}

fn run(case: &Case, args: &[&str]) -> common::Run {
    let output = case
        .command()
        .env("HOOK_AUTH", "Bearer t0ken")
        .env("HOOK_SECRET", "s3cret")
        .args(args)
        .output()
        .unwrap();
    common::Run { output }
}

fn verify(signature: &str, body: &str, secret: &[u8]) -> bool {
    let (Some(t), Some(v1)) = (
        signature.split(',').find_map(|p| p.strip_prefix("t=")),
        signature.split(',').find_map(|p| p.strip_prefix("v1=")),
    ) else {
        return false;
    };
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    hex::decode(v1).is_ok_and(|sig| mac.verify_slice(&sig).is_ok())
}

#[test]
fn one_post_per_event_with_headers_and_a_verifiable_signature() {
    let hook = Hook::start();
    let case = case(&hook.url);
    run(&case, &["process-sources", "--as-of", "2026-03-10"]).success();
    let requests = hook.requests();
    let keys: Vec<String> = requests
        .iter()
        .map(|r| r.headers["idempotency-key"].clone())
        .collect();
    assert_eq!(
        keys,
        [
            "challenge_created_1",
            "challenge_inactivity_2d_1",
            "challenge_created_2"
        ]
    );
    for r in &requests {
        assert_eq!(r.method, "POST");
        assert_eq!(r.url, "/hooks/spark");
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["x-source"], "spark-tests");
        assert_eq!(r.headers["authorization"], "Bearer t0ken");
        assert!(r.headers["user-agent"].starts_with("spark/"));
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["key"], r.headers["idempotency-key"].as_str());
        assert!(
            verify(&r.headers["spark-signature"], &r.body, b"s3cret"),
            "signature {:?} does not verify",
            r.headers["spark-signature"]
        );
        assert!(!verify(&r.headers["spark-signature"], &r.body, b"wrong"));
    }
    // A second run posts nothing.
    run(&case, &["process-sources", "--as-of", "2026-03-10"]).success();
    assert_eq!(hook.requests().len(), 3);
}

#[test]
fn a_failing_server_fails_the_delivery_and_a_later_run_delivers_it() {
    let hook = Hook::start();
    hook.status.store(500, Ordering::SeqCst);
    let case = case(&hook.url);
    run(&case, &["process-sources", "--as-of", "2026-03-10"])
        .status(1)
        .stderr_has(&["handler `hook`", "HTTP 500", "mailbox full, try later"]);
    assert_eq!(case.deliveries().len(), 3);
    hook.status.store(204, Ordering::SeqCst);
    run(&case, &["process-sources", "--as-of", "2026-03-10"])
        .success()
        .stdout_has(&["3 delivered"]);
    assert!(case.deliveries().is_empty());
    // Each event was posted twice: once refused, once accepted; same key.
    assert_eq!(hook.requests().len(), 6);
}

#[test]
fn a_refused_connection_is_a_failure() {
    // Bind and drop: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let case = case(&format!("http://127.0.0.1:{port}/x"));
    run(&case, &["process-sources", "--as-of", "2026-03-10"])
        .status(1)
        .stderr_has(&["handler `hook`", "POST http://127.0.0.1"]);
}

#[test]
fn a_missing_secret_variable_is_a_config_error() {
    let hook = Hook::start();
    let case = case(&hook.url);
    let before = case.db_bytes();
    let output = case
        .command()
        .env_remove("HOOK_SECRET")
        .env("HOOK_AUTH", "x")
        .args(["process-sources"])
        .output()
        .unwrap();
    common::Run { output }.status(2).stderr_has(&[
        "handler `hook`",
        "`signing_secret_env`",
        "HOOK_SECRET",
        "not set",
    ]);
    assert_eq!(case.db_bytes(), before);
    assert!(hook.requests().is_empty());
}
