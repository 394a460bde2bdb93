//! `spark serve`, over HTTP: every route and status code, auth, CSRF,
//! escaping, secrets, paging and caps, on every backend. The browser
//! scenarios are in console_browser.rs.

mod common;

use common::console::{self, ITEMS, PASSWORD, SERVE_SECTION, config, dead_case};
use common::{Backend, Case};
use serde_json::Value;

fn keys(items: &Value) -> Vec<String> {
    items
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["key"].as_str().expect("key").to_owned())
        .collect()
}

/// The owed deliveries of `key`, as the CLI lists them: (handler, state).
fn owed(case: &Case, key: &str) -> Vec<(String, String)> {
    let out = case.run(&["--json", "deliveries", "--key", key]).success();
    let v: Value = serde_json::from_str(&out.stdout()).expect("json");
    v.as_array()
        .expect("array")
        .iter()
        .map(|d| {
            (
                d["handler"].as_str().unwrap_or_default().to_owned(),
                d["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn history(case: &Case, key: &str) -> Vec<Value> {
    let out = case.run(&["--json", "show", key]).success();
    let v: Value = serde_json::from_str(&out.stdout()).expect("json");
    v["handlers"]
        .as_array()
        .expect("handlers")
        .iter()
        .flat_map(|h| h["attempts"].as_array().cloned().unwrap_or_default())
        .collect()
}

on_every_backend! {
    fn an_operator_finds_a_dead_delivery_reads_why_and_retries_it(backend: Backend) {
        let case = dead_case(backend);
        let console = console::start(&case, &[], &[]);
        let overview = console.json("/");
        assert_eq!(overview["events_seen"], 7);
        assert_eq!(overview["owed"]["dead"], 7);
        let per_hour = |v: &Value, field: &str| -> u64 {
            v["per_hour"].as_array().unwrap().iter().map(|h| h[field].as_u64().unwrap()).sum()
        };
        assert_eq!(overview["per_hour"].as_array().unwrap().len(), 24);
        assert_eq!(per_hour(&overview, "failed"), 7);
        assert_eq!(per_hour(&overview, "delivered"), 0);
        assert_eq!(overview["last_attempt"]["outcome"], "dead");
        let dead = console.json("/deliveries?state=dead");
        assert_eq!(dead["total"], 7);
        let event = console.json("/events/item_ok");
        let story = &event["handlers"][0];
        assert_eq!(story["handler"], "flaky");
        assert_eq!(story["state"], "dead");
        assert!(story["owed"][0]["last_error"].as_str().unwrap().contains("boom"));
        // The file the handler wants, then Retry: delivered now.
        std::fs::write(case.path("ok"), "").unwrap();
        let done = console
            .post("/deliveries/retry", &[("key", "item_ok"), ("handler", "flaky")])
            .status(200)
            .json();
        assert_eq!(done["report"]["retried"], 1, "{done}");
        assert!(done["message"].as_str().unwrap().contains("1 delivered"), "{done}");
        assert_eq!(console.json("/events/item_ok")["handlers"][0]["state"], "done");
        let overview = console.json("/");
        assert_eq!(per_hour(&overview, "delivered"), 1);
        assert_eq!(overview["last_attempt"]["key"], "item_ok");
        assert!(owed(&case, "item_ok").is_empty());
        // The others are still dead; the history says who asked.
        assert_eq!(console.json("/deliveries?state=dead")["total"], 6);
        let retried: Vec<Value> = history(&case, "item_ok")
            .into_iter()
            .filter(|e| e["outcome"] == "retried")
            .collect();
        assert_eq!(retried.len(), 1);
        assert_eq!(retried[0]["by"], "spark (console)");
        let (code, _) = console.stop();
        assert_eq!(code, Some(0));
    }

    fn discard_with_a_reason_and_replay_go_through_the_operator_layer(backend: Backend) {
        let case = dead_case(backend);
        let console = console::start(&case, &[], &[]);
        console
            .post(
                "/deliveries/discard",
                &[("key", "item_a/b c"), ("reason", "customer asked <not> to")],
            )
            .status(200);
        assert!(owed(&case, "item_a/b c").is_empty());
        let discarded: Vec<Value> = history(&case, "item_a/b c")
            .into_iter()
            .filter(|e| e["outcome"] == "discarded")
            .collect();
        assert_eq!(discarded.len(), 1);
        assert_eq!(discarded[0]["error"], "customer asked <not> to");
        assert_eq!(discarded[0]["by"], "spark (console)");
        // Replay it: owed again to flaky.
        let path = format!("{}/replay", spark::console::event_url("item_a/b c"));
        let done = console.post(&path, &[("handler", "flaky")]).status(200).json();
        assert_eq!(done["deliveries"][0]["key"], "item_a/b c", "{done}");
        assert_eq!(owed(&case, "item_a/b c"), vec![("flaky".to_owned(), "pending".to_owned())]);
        // Replaying what is owed adds nothing.
        let again = console.post(&path, &[("handler", "flaky")]).status(200).json();
        assert!(again["deliveries"].as_array().unwrap().is_empty());
        // An unknown handler is a 400 naming it.
        let bad = console.post(&path, &[("handler", "nope")]).status(400);
        assert!(bad.body.contains("nope"), "{}", bad.body);
    }

    fn search_by_key_context_and_group_with_pages(backend: Backend) {
        let case = dead_case(backend);
        let console = console::start(&case, &[], &[]);
        assert_eq!(keys(&console.json("/events?q=a%2Fb")["events"]), vec!["item_a/b c"]);
        // Context text.
        assert_eq!(keys(&console.json("/events?q=non-ASCII")["events"]), vec!["item_é ü 日本"]);
        assert_eq!(console.json("/events?group=%5Eitem%24")["events"].as_array().unwrap().len(), 7);
        assert_eq!(console.json("/events?group=nomatch")["events"].as_array().unwrap().len(), 0);
        // Pages of 3: 3, 3, 1, all different.
        let mut all = Vec::new();
        for page in 1..=3 {
            let p = console.json(&format!("/events?per_page=3&page={page}"));
            assert_eq!(p["more"], page < 3, "page {page}");
            all.extend(keys(&p["events"]));
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 7);
        let d1 = console.json("/deliveries?state=dead&per_page=4");
        assert_eq!(d1["deliveries"].as_array().unwrap().len(), 4);
        assert_eq!(d1["more"], true);
        let d2 = console.json("/deliveries?state=dead&per_page=4&page=2");
        assert_eq!(d2["deliveries"].as_array().unwrap().len(), 3);
        assert_eq!(d2["more"], false);
        for bad in ["/events?per_page=201", "/events?page=0", "/events?page=600&per_page=200", "/deliveries?state=done&page=1000000", "/events?page=x", "/events?group=(", "/deliveries?state=gone"] {
            console.get(bad).status(400);
        }
    }

    fn every_key_reaches_its_own_page(backend: Backend) {
        let case = dead_case(backend);
        for key in ["..", ".", "%2F", "a b/..", "..%2F"] {
            case.run(&["mark-seen", key, "--group", "odd"]).success();
        }
        let console = console::start(&case, &[], &[]);
        let listed = keys(&console.json("/events?per_page=200")["events"]);
        assert_eq!(listed.len(), 12, "{listed:?}");
        for key in &listed {
            let url = spark::console::event_url(key);
            let page = console.json(&url);
            assert_eq!(page["key"].as_str(), Some(key.as_str()), "{url}");
            // The events page links there, in its HTML.
        }
        let html = console.get("/events?per_page=200").status(200).body;
        for key in &listed {
            let href = spark::console::event_url(key).replace('&', "&amp;");
            assert!(html.contains(&format!("href=\"{href}\"")), "no link {href}");
        }
        console.get("/events/item_nope").status(404);
        console.get("/events/a/b").status(404);
    }
}

#[test]
fn database_values_are_escaped_everywhere() {
    let case = dead_case(Backend::Sqlite);
    let console = console::start(&case, &[], &[]);
    let pages = [
        "/".to_owned(),
        "/events".to_owned(),
        "/deliveries".to_owned(),
        "/deliveries?state=dead".to_owned(),
        spark::console::event_url("item_<script>alert(1)</script>"),
        "/events?q=%3Cscript%3E".to_owned(),
    ];
    for path in &pages {
        let page = console.get(path).status(200);
        assert!(
            page.header("Content-Type")
                .unwrap()
                .starts_with("text/html")
        );
        for raw in ["<script", "<img", "<b onmouseover", "onerror=alert(2)>"] {
            assert!(!page.body.contains(raw), "{path}: {raw} unescaped");
        }
    }
    let event = console
        .get(&spark::console::event_url("item_<script>alert(1)</script>"))
        .body;
    assert!(event.contains("item_&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(
        event.contains("&quot;&gt;&lt;img src=x onerror=alert(2)&gt;")
            || event.contains("\\&quot;&gt;&lt;img")
    );
    assert!(event.contains("boom &lt;b onmouseover=alert(3)&gt;"));
    // In attributes too: the hidden key of the Retry form.
    assert!(event.contains("value=\"item_&lt;script&gt;alert(1)&lt;/script&gt;\""));
    // A search for markup is shown back escaped.
    let search = console.get("/events?q=%22%3E%3Cscript%3Ex").body;
    assert!(search.contains("value=\"&quot;&gt;&lt;script&gt;x\""));
}

#[test]
fn every_answer_carries_a_policy_that_runs_no_script() {
    let case = dead_case(Backend::Sqlite);
    let console = console::start(&case, &[], &[]);
    for path in [
        "/",
        "/events",
        "/deliveries",
        "/events/item_ok",
        "/static/spark.css",
        "/nope",
    ] {
        let a = console.get(path);
        let csp = a
            .header("Content-Security-Policy")
            .unwrap_or_else(|| panic!("{path}: no CSP"));
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("script-src"),
            "{csp}"
        );
        assert_eq!(a.header("X-Content-Type-Options"), Some("nosniff"));
        assert_eq!(a.header("X-Frame-Options"), Some("DENY"));
    }
    // No inline script or style attribute in the pages.
    for path in ["/", "/events", "/deliveries?state=dead", "/events/item_ok"] {
        let body = console.get(path).body;
        assert!(
            !body.contains("<script") && !body.contains(" style="),
            "{path}"
        );
    }
}

#[test]
fn credentials_are_required_on_every_route() {
    let case = dead_case(Backend::Sqlite);
    let console = console::start(&case, &[], &[]);
    let routes = [
        "/",
        "/events",
        "/events/item_ok",
        "/deliveries",
        "/static/spark.css",
        "/nope",
    ];
    let console = console.with_user(None);
    for path in routes {
        let a = console.get(path).status(401);
        assert!(a.header("WWW-Authenticate").unwrap().starts_with("Basic"));
        assert!(!a.body.contains("item_ok"));
    }
    console
        .post_with("/deliveries/retry", &[("key", "item_ok")], &[])
        .status(401);
    for (user, password) in [
        ("spark", "wrong"),
        ("spark", ""),
        ("other", PASSWORD),
        ("spark", &PASSWORD[1..]),
    ] {
        let c = console::start(&case, &[], &[]).with_user(Some((user, password)));
        c.get("/").status(401);
    }
    let c = console::start(&case, &[], &[]);
    c.get("/").status(200);
    assert_eq!(
        c.get("/static/spark.css")
            .status(200)
            .header("Content-Type"),
        Some("text/css; charset=utf-8")
    );
}

#[test]
fn a_post_from_another_site_or_without_the_token_changes_nothing() {
    let case = dead_case(Backend::Sqlite);
    std::fs::write(case.path("ok"), "").unwrap();
    let console = console::start(&case, &[], &[]);
    let token = console.token();
    let form = [("key", "item_ok"), ("csrf", token.as_str())];
    let no_token = [("key", "item_ok")];
    let wrong_token = [("key", "item_ok"), ("csrf", "00ff")];
    type Fields<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Fields<'_>, Vec<(&str, &str)>); 5] = [
        (&form, vec![("Origin", "http://evil.example")]),
        (&form, vec![("Origin", "null")]),
        (&form, vec![("Sec-Fetch-Site", "cross-site")]),
        (&no_token, vec![]),
        (&wrong_token, vec![("Origin", console.base.as_str())]),
    ];
    for (form, headers) in &cases {
        for path in [
            "/deliveries/retry",
            "/deliveries/discard",
            "/events/item_ok/replay",
        ] {
            let a = console.post_with(path, form, headers);
            assert_eq!(a.status, 403, "{path} {headers:?}: {}", a.body);
        }
    }
    assert_eq!(
        owed(&case, "item_ok"),
        vec![("flaky".to_owned(), "dead".to_owned())]
    );
    // A same-site page on another port is another site too.
    let other = console.base.replace("127.0.0.1", "localhost");
    console
        .post_with(
            "/deliveries/retry",
            &form,
            &[("Origin", &other), ("Sec-Fetch-Site", "same-site")],
        )
        .status(403);
    // A script (no Origin, no Sec-Fetch-Site) with the token is served.
    console
        .post_with(
            "/deliveries/retry",
            &form,
            &[("Accept", "application/json")],
        )
        .status(200);
    assert!(owed(&case, "item_ok").is_empty());
}

#[test]
fn read_only_shows_no_action_and_refuses_every_post() {
    let case = dead_case(Backend::Sqlite);
    let console = console::start(&case, &["--read-only"], &[]);
    for path in [
        "/",
        "/events/item_ok",
        "/deliveries?state=dead&handler=flaky",
    ] {
        let body = console.get(path).status(200).body;
        for action in [
            "<form method=\"post\"",
            "method=\"post\"",
            ">Retry<",
            ">Discard<",
            ">Replay<",
        ] {
            assert!(!body.contains(action), "{path}: {action}");
        }
    }
    assert!(console.json("/").get("csrf_token").is_none());
    for path in [
        "/deliveries/retry",
        "/deliveries/discard",
        "/events/item_ok/replay",
    ] {
        console
            .post_with(path, &[("key", "item_ok"), ("handler", "flaky")], &[])
            .status(403);
    }
    assert_eq!(
        owed(&case, "item_ok"),
        vec![("flaky".to_owned(), "dead".to_owned())]
    );
}

#[test]
fn routes_answer_with_the_right_status() {
    let case = dead_case(Backend::Sqlite);
    let console = console::start(&case, &[], &[]);
    console.get("/nope").status(404);
    console.get("/deliveries/retry").status(405);
    console.get("/events/item_ok/replay").status(405);
    console.post("/nope", &[]).status(404);
    console.post("/events", &[]).status(405);
    // An action needs a selection; an unknown handler is named.
    let a = console.post("/deliveries/retry", &[]).status(400);
    assert!(a.body.contains("key"), "{}", a.body);
    let a = console
        .post("/deliveries/retry", &[("handler", "gone")])
        .status(400);
    assert!(a.body.contains("gone"));
    console.post("/events/item_ok/replay", &[]).status(400);
    console
        .post("/events/item_nope/replay", &[("handler", "flaky")])
        .status(404);
    // Errors answer JSON when asked.
    let a = console
        .get_with("/nope", &[("Accept", "application/json")])
        .status(404);
    assert_eq!(a.json()["status"], 404);
    // A huge form is refused before it is read.
    let big = "k".repeat(2 << 20);
    console
        .post("/deliveries/retry", &[("key", &big)])
        .status(413);
}

#[test]
fn bulk_actions_are_capped_at_a_thousand_events_per_request() {
    let mut rows = String::from(
        "CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT NOT NULL, note TEXT NOT NULL);\n",
    );
    rows.push_str("INSERT INTO item VALUES ");
    let values: Vec<String> = (1..=1005).map(|i| format!("({i}, 'n{i}', '')")).collect();
    rows.push_str(&values.join(","));
    rows.push(';');
    // `flaky` fails fast here.
    let mut toml = config("");
    let start = toml.find("command = ").unwrap();
    let end = start + toml[start..].find('\n').unwrap();
    toml.replace_range(start..end, "command = [\"false\"]");
    let case = Case::new().db(&rows).config(&toml);
    case.run(&["process-sources"]).status(1);
    let console = console::start(&case, &[], &[]);
    assert_eq!(console.json("/deliveries?state=dead")["total"], 1005);
    let keys: Vec<String> = (1..=1001).map(|i| format!("item_n{i}")).collect();
    let mut form: Vec<(&str, &str)> = keys.iter().map(|k| ("key", k.as_str())).collect();
    let a = console.post("/deliveries/discard", &form).status(400);
    assert!(a.body.contains("1000"), "{}", a.body);
    form.truncate(2);
    console.post("/deliveries/discard", &form).status(200);
    assert_eq!(console.json("/deliveries?state=dead")["total"], 1003);
    // A handler's: the first thousand, the rest counted.
    let done = console
        .post(
            "/deliveries/discard",
            &[
                ("handler", "flaky"),
                ("state", "dead"),
                ("reason", "cleanup"),
            ],
        )
        .status(200)
        .json();
    assert_eq!(
        done["deliveries"].as_array().unwrap().len(),
        1000,
        "{}",
        done["message"]
    );
    assert_eq!(done["left"], 3);
    assert_eq!(console.json("/deliveries?state=dead")["total"], 3);
    let page = console.get("/deliveries?state=dead&handler=flaky").body;
    assert!(
        page.contains("at most 1000 events per request"),
        "the cap is said on the page"
    );
}

#[test]
fn no_secret_shows_in_any_page_or_json() {
    let secret = "hook-secret-4711-xyz";
    let case = Case::new().db(ITEMS).config(&config(
        r#"
[[handlers]]
name = "hook"
group = "^item_ok$"
kind = "webhook"
url = "http://127.0.0.1:9/hook?token=${HOOK_TOKEN}"
timeout = "2s"
"#,
    ));
    case.command()
        .env("HOOK_TOKEN", secret)
        .args(["process-sources"])
        .assert()
        .code(1);
    let console = console::start(&case, &[], &[("HOOK_TOKEN", secret)]);
    let mut seen = String::new();
    for path in [
        "/",
        "/events",
        "/deliveries",
        "/events/item_ok",
        "/deliveries?state=dead&handler=hook",
    ] {
        seen.push_str(&console.get(path).status(200).body);
        seen.push_str(&console.json(path).to_string());
    }
    assert!(seen.contains("hook"), "the hook's delivery is listed");
    assert!(!seen.contains(secret), "the webhook's secret leaked");
    assert!(!seen.contains(PASSWORD), "the console's password leaked");
}

#[test]
fn serve_refuses_to_start_without_a_password_or_with_a_bad_address() {
    let case = Case::new()
        .db(ITEMS)
        .config(&config("").replace(SERVE_SECTION, ""));
    case.run(&["serve", "--listen", "127.0.0.1:0"])
        .status(2)
        .stderr_has(&["no password", "password_env", "--no-auth"]);
    case.run(&["serve", "--no-auth", "--listen", "0.0.0.0:0"])
        .status(2)
        .stderr_has(&["0.0.0.0", "loopback"]);
    case.run(&["serve", "--listen", "localhost:http"])
        .status(2)
        .stderr_has(&["--listen"]);
    let case = Case::new().db(ITEMS).config(&config(""));
    case.command()
        .env_remove("SPARK_CONSOLE_PASSWORD")
        .args(["serve", "--listen", "127.0.0.1:0"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("SPARK_CONSOLE_PASSWORD"));
    let case = Case::new()
        .db(ITEMS)
        .config(&config("").replace(SERVE_SECTION, "\n[serve]\nlisten = \"everywhere\"\n"));
    case.run(&["check"])
        .status(2)
        .stderr_has(&["[serve]", "listen", "everywhere"]);
    // `check` warns of what `serve` would refuse, and of a console open to
    // the network.
    let case = Case::new().db(ITEMS).config(&config("").replace(
        SERVE_SECTION,
        "\n[serve]\nlisten = \"0.0.0.0:8025\"\npassword_env = \"NOT_SET_ANYWHERE\"\n",
    ));
    let out = case.run(&["check"]);
    let all = format!("{}{}", out.stdout(), out.stderr());
    assert!(
        all.contains("NOT_SET_ANYWHERE") && all.contains("refuse to start"),
        "{all}"
    );
    assert!(
        all.contains("0.0.0.0:8025") && all.contains("plain HTTP"),
        "{all}"
    );
}

#[test]
fn without_a_password_only_localhost_is_answered() {
    let case = Case::new()
        .db(ITEMS)
        .config(&config("").replace(SERVE_SECTION, ""));
    let console = console::start(&case, &["--no-auth"], &[]).with_user(None);
    console.get("/").status(200);
    let host = console
        .base
        .trim_start_matches("http://")
        .replace("127.0.0.1", "evil.example");
    console.get_with("/", &[("Host", &host)]).status(403);
}

#[test]
fn reading_does_not_wait_for_a_running_process_sources_and_actions_say_busy() {
    let case = Case::new().db(ITEMS).config(&config("").replace(
        "command = [\"sh\", \"-c\", \"test -f ok",
        "command = [\"sh\", \"-c\", \"sleep 3; test -f ok",
    ));
    let mut run = case.spawn(&["process-sources"]);
    // Wait until the run has recorded its events (it then delivers slowly).
    let mut tries = 0;
    while case
        .run(&["--json", "events"])
        .stdout()
        .matches("\"key\"")
        .count()
        < 7
    {
        tries += 1;
        assert!(tries < 200, "the run never recorded its events");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let console = console::start(&case, &[], &[]);
    assert_eq!(console.json("/")["events_seen"], 7);
    console.get("/events").status(200);
    console.get("/deliveries").status(200);
    let still_running = run.try_wait().expect("try_wait").is_none();
    assert!(
        still_running,
        "the run ended before the pages were read: the test proves nothing"
    );
    // Writing waits for the run lock, then says busy (SQLite).
    let a = console.post("/deliveries/retry", &[("handler", "flaky")]);
    if run.try_wait().expect("try_wait").is_none() {
        assert_eq!(a.status, 409, "{}", a.body);
        assert!(a.body.contains("try again"), "{}", a.body);
    }
    let _ = run.kill();
    let _ = run.wait();
}

#[test]
fn several_requests_are_served_at_once() {
    let case = Case::new().db(ITEMS).config(&config("").replace(
        "command = [\"sh\", \"-c\", \"test -f ok",
        "command = [\"sh\", \"-c\", \"sleep 2; test -f ok",
    ));
    case.run(&["mark-seen", "item_ok", "--group", "item"])
        .success();
    let console = std::sync::Arc::new(console::start(&case, &[], &[]));
    let token = console.token();
    let slow = {
        let console = std::sync::Arc::clone(&console);
        std::thread::spawn(move || {
            console.post_with(
                &format!("{}/replay", spark::console::event_url("item_ok")),
                &[("handler", "flaky"), ("csrf", &token)],
                &[],
            );
            // Retrying delivers: two seconds of handler.
            console.post("/deliveries/retry", &[("handler", "flaky")])
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    for _ in 0..3 {
        console.get("/events").status(200);
    }
    let overlapped = !slow.is_finished();
    let _ = slow.join();
    assert!(
        overlapped,
        "pages were served only after the slow action ended"
    );
}

on_shared_backends! {
    fn a_delivery_a_worker_holds_is_shown_in_flight_with_the_worker(backend: Backend) {
        let case = Case::on(backend).db(ITEMS).config(&config("").replace(
            "command = [\"sh\", \"-c\", \"test -f ok",
            "command = [\"sh\", \"-c\", \"sleep 5; test -f ok",
        ));
        case.run(&["skip-backfill"]).success();
        case.run(&["forget", "item_ok"]).success();
        let mut run = case.spawn(&["process-sources"]);
        let console = console::start(&case, &[], &[]);
        let mut held = Value::Null;
        for _ in 0..100 {
            held = console.json("/deliveries?state=in_flight");
            if held["total"] == 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(held["total"], 1, "{held}");
        let line = &held["deliveries"][0];
        assert_eq!(line["key"], "item_ok");
        let worker = line["worker"].as_str().expect("the worker holding it").to_owned();
        assert!(line["lease_until"].is_string(), "{line}");
        let page = console.get("/deliveries?state=in_flight").status(200).body;
        assert!(page.contains(&format!(" by {worker} until ")), "{page}");
        // Nothing to act on while a worker holds it: no Retry, no Discard.
        let event = console.get("/events/item_ok").body;
        assert!(!event.contains(">Retry<") && !event.contains(">Discard<"), "{event}");
        let _ = run.kill();
        let _ = run.wait();
    }
}
