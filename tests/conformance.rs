//! The store's rules at the trait level, once, run against every driver
//! (as River's `riverdrivertest` does): each test opens the case's database
//! through `spark::backend::store` and drives the `Store` trait directly,
//! the way the delivery engine does. Beside it, the CLI behaviour suite
//! (tests/core.rs and the others) runs the same per backend.

mod common;

use std::sync::Arc;

use common::{Backend, Case, challenge_config};
use spark::event::Event;
use spark::registry::Registry;
use spark::store::{DeliveryState, Failure, PlannedDelivery, Store};

/// A case on `backend` with an empty store (spark's tables made).
fn store_case(backend: Backend) -> (Case, Box<dyn Store>) {
    let case = Case::on(backend)
        .db(common::CHALLENGE_SCHEMA)
        .config(&challenge_config(""));
    let config = spark::config::Config::load(&case.path("spark.toml"), &Registry::with_builtins())
        .expect("the config loads");
    let store = spark::backend::store(&config).expect("the store opens");
    (case, store)
}

fn events(keys: &[&str]) -> Vec<Event> {
    keys.iter()
        .map(|k| spark::event("g", k, serde_json::Map::new()))
        .collect()
}

/// One delivery of all new events of a batch to handler `h`, in chunks of
/// `chunk`, called one at a time.
fn plan_for(h: &str, chunk: usize) -> impl FnMut(&[bool]) -> Vec<PlannedDelivery> {
    let h = h.to_owned();
    move |mask: &[bool]| {
        vec![PlannedDelivery {
            handler: h.clone(),
            events: (0..mask.len()).filter(|&i| mask[i]).collect(),
            file_mark: None,
            file_sink: false,
            chunk,
            in_flight: 1,
        }]
    }
}

/// Every due delivery, claimed (a shared store hands out one chunk a call;
/// SQLite, where one run holds the database, all that is due, again and
/// again until it is recorded).
fn claim_all(store: &mut dyn Store, handler: &str) -> Vec<spark::store::Delivery> {
    let mut all: Vec<spark::store::Delivery> = Vec::new();
    loop {
        let got = store
            .claim_due(spark::clock::now_ms() + 1, &[handler])
            .expect("claim");
        let fresh: Vec<_> = got
            .into_iter()
            .filter(|d| !all.iter().any(|a| a.id == d.id))
            .collect();
        if fresh.is_empty() {
            return all;
        }
        all.extend(fresh);
    }
}

on_every_backend! {
    /// Keys already seen, or repeated within the batch, are not new; the
    /// new ones get one delivery per planned handler, in the same
    /// transaction.
    fn a_batch_records_each_key_once_with_its_deliveries(backend: Backend) {
        let (_case, mut store) = store_case(backend);
        let first = store
            .record_batch(&events(&["1", "2", "2"]), &[], &[], &mut plan_for("log", 50))
            .expect("record");
        assert_eq!(first.new.iter().filter(|n| n.is_some()).count(), 2);
        let again = store
            .record_batch(&events(&["2", "3"]), &[], &[], &mut plan_for("log", 50))
            .expect("record");
        let new: Vec<bool> = again.new.iter().map(Option::is_some).collect();
        assert_eq!(new, [false, true]);
        let owed: Vec<Vec<String>> = store
            .deliveries()
            .expect("deliveries")
            .into_iter()
            .map(|d| d.keys)
            .collect();
        let all: Vec<String> = owed.concat();
        assert_eq!(all, ["g_1", "g_2", "g_3"]);
    }

    /// A failing key is split out of its delivery with its attempts and
    /// error; the rest of the delivery goes on; the failure is due again
    /// at its time, and dead when it has none.
    fn a_failing_key_is_split_out_and_failed_then_dead(backend: Backend) {
        let (_case, mut store) = store_case(backend);
        store
            .record_batch(&events(&["1", "2", "3"]), &[], &[], &mut plan_for("log", 50))
            .expect("record");
        let mut claimed = claim_all(&mut *store, "log");
        assert_eq!(claimed.len(), 1, "one chunk");
        let d = &mut claimed[0];
        store.advance(d, 1).expect("advance");
        let failure = Failure {
            error: "boom".into(),
            attempts: 1,
            next_attempt_at: Some(0),
        };
        store.fail_next(d, &failure).expect("fail");
        store.advance(d, 3).expect("the rest");
        let owed = store.deliveries().expect("deliveries");
        assert_eq!(owed.len(), 1, "{owed:?}");
        assert_eq!(owed[0].keys, ["g_2"]);
        assert_eq!(owed[0].state, DeliveryState::Failed);
        assert_eq!(owed[0].attempts, 1);
        assert_eq!(owed[0].last_error.as_deref(), Some("boom"));
        store.finish_run().expect("finish");
        let mut again = claim_all(&mut *store, "log");
        assert_eq!(again.len(), 1, "the failure is due again");
        let dead = Failure {
            error: "boom again".into(),
            attempts: 2,
            next_attempt_at: None,
        };
        store.fail_rest(&mut again[0], &dead).expect("fail");
        let owed = store.deliveries().expect("deliveries");
        assert_eq!(owed[0].state, DeliveryState::Dead);
        store.finish_run().expect("finish");
        assert!(claim_all(&mut *store, "log").is_empty(), "dead is never due");
    }

    /// Deliveries are written in chunks of the planned size for handlers
    /// called one event at a time.
    fn per_event_deliveries_come_in_chunks(backend: Backend) {
        let (_case, mut store) = store_case(backend);
        let keys: Vec<String> = (0..120).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        store
            .record_batch(&events(&refs), &[], &[], &mut plan_for("log", 50))
            .expect("record");
        let sizes: Vec<usize> = store
            .deliveries()
            .expect("deliveries")
            .iter()
            .map(|d| d.keys.len())
            .collect();
        assert_eq!(sizes, [50, 50, 20]);
    }

    /// A delivery row with a state spark does not know, or keys that do not
    /// parse, is the same error on every driver, naming the delivery: once
    /// an error on SQLite and silently `dead` / `[]` on PostgreSQL.
    fn a_corrupt_delivery_row_is_the_same_error_everywhere(backend: Backend) {
        for (column, value, complaint) in [
            ("state", "'paused'", "its state \"paused\" is not one spark knows"),
            ("keys", "'not json'", "its keys are not a JSON list of strings"),
            ("done", "99", "it says 99 of its 1 keys are done"),
        ] {
            let (case, mut store) = store_case(backend);
            store
                .record_batch(&events(&["1"]), &[], &[], &mut plan_for("log", 50))
                .expect("record");
            drop(store);
            case.sql(&format!("UPDATE spark_delivery SET \"{column}\" = {value}"));
            let id = case.query("SELECT id FROM spark_delivery")[0][0].clone().unwrap_or_default();
            for args in [&["deliveries"][..], &["process-sources"], &["deliver"], &["show", "g_1"]] {
                let run = case.run(args).status(2).stderr_has(&[
                    &format!("delivery {id} (handler `log`)"),
                    "is corrupt",
                    complaint,
                ]);
                drop(run);
            }
        }
    }
}

/// The context recorded is the context read back (a shared `Arc` context,
/// serialized once per batch).
#[test]
fn stored_events_read_back_as_recorded() {
    let (_case, mut store) = store_case(Backend::Sqlite);
    let mut map = serde_json::Map::new();
    map.insert("title".into(), serde_json::json!("Swim \"fast\""));
    let context = Arc::new(map);
    let batch = vec![
        spark::event("a", 1, context.clone()),
        spark::event("b", 1, context.clone()),
    ];
    store
        .record_batch(&batch, &[], &[], &mut plan_for("log", 50))
        .expect("record");
    let loaded = store
        .load_events(&["a_1".to_owned(), "b_1".to_owned(), "c_1".to_owned()])
        .expect("load");
    assert_eq!(loaded[0].as_ref().expect("a_1").event.context, context);
    assert_eq!(loaded[1].as_ref().expect("b_1").event.group, "b");
    assert!(loaded[2].is_none());
}
