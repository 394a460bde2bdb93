//! Your own spark binary: the built-ins plus a compiled-in source and a
//! compiled-in handler, in a few lines. Build and run it like `spark`:
//!
//!   cargo run --example custom_spark -- --config orders.toml process-sources
//!
//! with a config such as
//!
//!   [[sources]]
//!   name = "orders"
//!   function = "order_events"
//!   table = "orders"
//!
//!   [[handlers]]
//!   name = "ship"
//!   group = "^order_shipped$"
//!   kind = "function"
//!   function = "announce_shipment"

use std::process::ExitCode;

use spark::{Registry, event};

fn main() -> ExitCode {
    let mut registry = Registry::with_builtins();

    // One record of `orders` -> events. `?` turns an unreadable column into a
    // skipped record that names the column.
    registry
        .add_source("order_events", |record, _ctx| {
            let id = record.key_text("id")?;
            let context = record.to_map();
            let mut events = vec![event("order_placed", &id, context.clone())];
            if record.str("status")? == "shipped" {
                events.push(event("order_shipped", &id, context));
            }
            Ok(events)
        })
        .reads(["id", "status"])
        .emits(["order_placed", "order_shipped"]);

    // Called once per event; an `Err` is recorded and retried later.
    registry.add_handler("announce_shipment", |event| {
        let email = event.context.get("email").and_then(|v| v.as_str());
        match email {
            Some(email) => {
                eprintln!("shipment notice for {} to {email}", event.key);
                Ok(())
            }
            None => Err(format!("order {} has no email", event.key).into()),
        }
    });

    spark::run_cli(registry)
}
