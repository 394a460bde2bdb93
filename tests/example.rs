//! The example of building your own binary (examples/custom_spark.rs) builds
//! and works: its compiled-in source and function handler run for real.

mod common;

use std::path::PathBuf;

use common::Case;

/// `cargo test` builds the examples next to the test binaries; when only
/// this test was asked for, build the example here.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target profile folder");
    let bin = profile.join("examples").join("custom_spark");
    if !bin.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--example", "custom_spark"])
            .status()
            .expect("run cargo build --example");
        assert!(status.success(), "the example does not build");
    }
    bin
}

const CONFIG: &str = r#"
[database]
path = "app.sqlite3"

[delivery]
backoff = "0s"

[[sources]]
name = "orders"
function = "order_events"
table = "orders"

[[handlers]]
name = "ship"
group = "^order_shipped$"
kind = "function"
function = "announce_shipment"

[[handlers]]
name = "log"
group = "^order"
kind = "jsonl"
path = "orders.jsonl"
"#;

#[test]
fn custom_binary_runs_its_own_source_and_handler() {
    let bin = example_binary();
    assert!(
        bin.exists(),
        "{} was not built by cargo test",
        bin.display()
    );
    let case = Case::new()
        .binary(bin)
        .db(
            "CREATE TABLE orders (id TEXT PRIMARY KEY, status TEXT, email TEXT);
             INSERT INTO orders VALUES ('a1', 'placed', 'x@example.org'),
                                       ('b2', 'shipped', 'y@example.org'),
                                       ('c3', 'shipped', NULL);",
        )
        .config(CONFIG);
    case.run(&["process-sources"])
        .status(1)
        .stdout_has(&["5 new", "1 failed"])
        .stderr_has(&[
            "shipment notice for order_shipped_b2 to y@example.org",
            "order order_shipped_c3 has no email",
        ]);
    assert_eq!(case.jsonl_keys("orders.jsonl").len(), 5);
    case.run(&["list-sources"]).success().stdout_has(&[
        "orders",
        "function order_events",
        "order_placed, order_shipped",
    ]);
    case.run(&["list-handlers"])
        .success()
        .stdout_has(&["ship", "function", "announce_shipment"]);
}
