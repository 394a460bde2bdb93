//! The console in a real browser: headless Chromium driven over WebDriver
//! (chromedriver, the fantoccini crate). An operator logs in, finds a dead
//! delivery, reads why, retries it and sees it delivered; discards one
//! with a reason; payloads from the database render as text and run
//! nothing; a form on another local site cannot post to the console.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them). Without them the tests are skipped saying so, unless `CI` is
//! set: then they fail. `SPARK_SCREENSHOTS=DIR` saves the README's
//! screenshots there.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Case;
use common::console::{self, PASSWORD, dead_case};
use fantoccini::{Client, ClientBuilder, Locator};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// chromedriver, or `None` (skipped, said) where Chromium is missing
/// outside CI.
fn driver(test: &str) -> Option<Driver> {
    let present = [CHROMEDRIVER, CHROMIUM]
        .iter()
        .all(|p| std::path::Path::new(p).exists())
        .then_some(())
        .ok_or_else(|| "apt-get install chromium chromium-driver".to_owned());
    let at = format!("{CHROMIUM}, {CHROMEDRIVER}");
    if !common::available(test, "Chromium", &at, &present) {
        return None;
    }
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver {
        child,
        port,
        _profile: tempfile::tempdir().expect("temp dir"),
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(driver);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("chromedriver did not listen on {port}");
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--window-size=1200,900",
                format!("--user-data-dir={}", driver._profile.path().display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session")
}

/// Logs in: the first page with the credentials in its URL, then the
/// console without them (the browser keeps them for the site).
async fn log_in(client: &Client, base: &str) {
    let with_credentials = base.replace("http://", &format!("http://spark:{PASSWORD}@"));
    client
        .goto(&format!("{with_credentials}/"))
        .await
        .expect("goto");
    client.goto(&format!("{base}/")).await.expect("goto");
    let title = client.title().await.expect("title");
    assert!(title.starts_with("Overview"), "not logged in: {title}");
}

/// Waits (up to 10 s) until the page's title starts with `prefix`: a click
/// that submits a form returns before the next page has loaded.
async fn wait_title(client: &Client, prefix: &str) {
    for _ in 0..100 {
        if client.title().await.is_ok_and(|t| t.starts_with(prefix)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let source = client.source().await.unwrap_or_default();
    panic!("no page titled {prefix:?} came: {source}");
}

/// Opens the console's page at `path`.
async fn open(client: &Client, console: &console::Console, path: &str) {
    client
        .goto(&format!("{}{path}", console.base))
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
}

/// Clicks what `locator` finds and waits for the page titled `title`.
async fn click(client: &Client, locator: Locator<'_>, title: &str) {
    client
        .find(locator)
        .await
        .unwrap_or_else(|e| panic!("{locator:?}: {e}"))
        .click()
        .await
        .expect("click");
    wait_title(client, title).await;
}

/// chromedriver, a case whose every delivery is dead, its console, and a
/// browser logged in to it; `None` where the browser is missing (skipped).
async fn logged_in(test: &str) -> Option<(Driver, Case, console::Console, Client)> {
    let driver = driver(test)?;
    let case = dead_case(common::Backend::Sqlite);
    let console = console::start(&case, &[], &[]);
    let client = browser(&driver).await;
    log_in(&client, &console.base).await;
    Some((driver, case, console, client))
}

async fn text_of(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .expect("text")
}

async fn screenshot(client: &Client, name: &str) {
    if let Some(dir) = std::env::var_os("SPARK_SCREENSHOTS") {
        let png = client.screenshot().await.expect("screenshot");
        std::fs::write(std::path::Path::new(&dir).join(name), png).expect("write screenshot");
    }
}

fn owed_state(case: &Case, key: &str) -> Option<String> {
    let out = case.run(&["--json", "deliveries", "--key", key]).success();
    let v: serde_json::Value = serde_json::from_str(&out.stdout()).expect("json");
    v[0]["state"].as_str().map(str::to_owned)
}

/// Whether a JavaScript dialog is open (an `alert` ran).
async fn alert_open(client: &Client) -> bool {
    client.get_alert_text().await.is_ok()
}

#[tokio::test]
async fn an_operator_retries_a_dead_delivery_from_the_page() {
    let Some((_driver, case, _console, client)) =
        logged_in("an_operator_retries_a_dead_delivery_from_the_page").await
    else {
        return;
    };
    assert!(text_of(&client, ".card.dead b").await == "7");
    screenshot(&client, "console-overview.png").await;
    // The dead ones, then the one whose key is `item_ok`.
    click(&client, Locator::LinkText("Dead"), "Deliveries").await;
    click(&client, Locator::LinkText("item_ok"), "Event").await;
    let why = text_of(&client, ".err").await;
    assert!(why.contains("boom <b onmouseover=alert(3)>x</b>"), "{why}");
    screenshot(&client, "console-event.png").await;
    // The cause is fixed; Retry delivers it.
    std::fs::write(case.path("ok"), "").expect("write");
    click(&client, Locator::XPath("//button[text()='Retry']"), "Retry").await;
    let source = client.source().await.expect("source");
    assert!(source.contains("1 delivered"), "{source}");
    click(&client, Locator::LinkText("item_ok"), "Event").await;
    let state = text_of(&client, "h2 span").await;
    assert_eq!(state, "done");
    assert_eq!(owed_state(&case, "item_ok"), None);
    assert_eq!(owed_state(&case, "item_a/b c").as_deref(), Some("dead"));
    client.close().await.expect("close");
}

#[tokio::test]
async fn an_operator_discards_with_a_reason() {
    let Some((_driver, case, console, client)) =
        logged_in("an_operator_discards_with_a_reason").await
    else {
        return;
    };
    open(&client, &console, &spark::console::event_url("item_a/b c")).await;
    client
        .find(Locator::Css(
            "form[action='/deliveries/discard'] input[name=reason]",
        ))
        .await
        .expect("the reason field")
        .send_keys("the customer unsubscribed")
        .await
        .expect("type");
    click(
        &client,
        Locator::XPath("//button[text()='Discard']"),
        "Discard",
    )
    .await;
    assert!(text_of(&client, ".flash").await.contains("discarded 1"));
    assert_eq!(owed_state(&case, "item_a/b c"), None);
    let show = case.run(&["show", "item_a/b c"]).success().stdout();
    assert!(
        show.contains("discarded")
            && show.contains("by spark (console): the customer unsubscribed"),
        "{show}"
    );
    client.close().await.expect("close");
}

#[tokio::test]
async fn payloads_from_the_database_render_as_text_and_run_nothing() {
    let Some((_driver, _case, console, client)) =
        logged_in("payloads_from_the_database_render_as_text_and_run_nothing").await
    else {
        return;
    };
    let key = "item_<script>alert(1)</script>";
    for path in [
        "/".to_owned(),
        "/events".to_owned(),
        "/deliveries?state=dead".to_owned(),
        spark::console::event_url(key),
        "/events?q=%3Cscript%3E".to_owned(),
    ] {
        open(&client, &console, &path).await;
        // Let an image's onerror or a mouseover run, if they could.
        if let Ok(b) = client.find(Locator::Css("span.err")).await {
            let _ = b.click().await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!alert_open(&client).await, "{path}: a script ran");
        let injected = client
            .find_all(Locator::Css("script, img, [onerror], [onmouseover]"))
            .await
            .expect("find");
        assert!(
            injected.is_empty(),
            "{path}: markup from the database became elements"
        );
    }
    open(&client, &console, &spark::console::event_url(key)).await;
    assert_eq!(text_of(&client, "h1 code").await, key);
    let context = text_of(&client, "pre").await;
    assert!(
        context.contains(r#""><img src=x onerror=alert(2)>"#),
        "{context}"
    );
    client.close().await.expect("close");
}

/// A page of another local site with a form that posts to the console,
/// with a token stolen from it: the browser sends it with the console's
/// credentials, as in a real cross-site request forgery.
fn evil_site(target: &str, token: &str) -> (String, std::thread::JoinHandle<()>) {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("listen");
    let url = format!("http://{}/", server.server_addr().to_ip().expect("ip"));
    let page = format!(
        r#"<!DOCTYPE html><title>prize</title>
<form method="post" action="{target}/deliveries/retry">
<input type="hidden" name="key" value="item_ok">
<input type="hidden" name="csrf" value="{token}">
<button id="go" type="submit">Claim your prize</button></form>"#
    );
    let handle = std::thread::spawn(move || {
        if let Ok(Some(request)) = server.recv_timeout(Duration::from_secs(30)) {
            let response = tiny_http::Response::from_string(page).with_header(
                tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"text/html"[..])
                    .expect("header"),
            );
            let _ = request.respond(response);
        }
    });
    (url, handle)
}

#[tokio::test]
async fn a_form_on_another_local_site_cannot_post_to_the_console() {
    let Some((_driver, case, console, client)) =
        logged_in("a_form_on_another_local_site_cannot_post_to_the_console").await
    else {
        return;
    };
    std::fs::write(case.path("ok"), "").expect("write");
    let (evil, server) = evil_site(&console.base, &console.token());
    client.goto(&evil).await.expect("goto the other site");
    client
        .find(Locator::Id("go"))
        .await
        .expect("the other site's button")
        .click()
        .await
        .expect("click");
    wait_title(&client, "403").await;
    let source = client.source().await.expect("source");
    assert!(
        source.contains("403") && source.contains("another site"),
        "{source}"
    );
    assert_eq!(
        owed_state(&case, "item_ok").as_deref(),
        Some("dead"),
        "the forged retry ran"
    );
    let _ = server.join();
    client.close().await.expect("close");
}

#[tokio::test]
async fn an_operator_retries_the_deliveries_they_tick() {
    let Some((_driver, case, console, client)) =
        logged_in("an_operator_retries_the_deliveries_they_tick").await
    else {
        return;
    };
    std::fs::write(case.path("ok"), "").expect("write");
    open(&client, &console, "/deliveries?state=dead&handler=flaky").await;
    for key in ["item_ok", "item_a/b c"] {
        client
            .find(Locator::Css(&format!(
                "input[type=checkbox][value='{key}']"
            )))
            .await
            .unwrap_or_else(|e| panic!("{key}'s box: {e}"))
            .click()
            .await
            .expect("tick");
    }
    click(
        &client,
        Locator::XPath("//button[text()='Retry selected']"),
        "Retry",
    )
    .await;
    let flash = text_of(&client, ".flash").await;
    assert!(
        flash.contains("retried 2 deliveries: 2 delivered"),
        "{flash}"
    );
    assert_eq!(owed_state(&case, "item_ok"), None);
    assert_eq!(owed_state(&case, "item_a/b c"), None);
    // The ones not ticked are still dead.
    assert_eq!(owed_state(&case, "item_%2F").as_deref(), Some("dead"));
    client.close().await.expect("close");
}
