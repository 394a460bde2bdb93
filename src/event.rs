//! The event model kept from django-spark: `Event { group, key, context }` and
//! the `event()` helper that builds `key = "{group}_{id}"`.
//!
//! Not here: deciding whether an event is new (the store) or who receives it
//! (the pipeline's routing).

use std::fmt::Display;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

/// The context of an event: a JSON object. It is shared (`Arc`) so that the
/// several events one record produces do not each copy it.
pub type Context = Arc<Map<String, Value>>;

/// One event: what happened (`group`), its globally unique `key`, and the data
/// handlers and templates see (`context`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub group: String,
    pub key: String,
    pub context: Context,
}

/// Builds an event whose key is `"{group}_{id}"`, like django-spark's
/// `spark.api.event(group, id, context)`.
///
/// ```
/// let e = spark::event("challenge_ended", 7, serde_json::Map::new());
/// assert_eq!(e.key, "challenge_ended_7");
/// ```
pub fn event(group: impl Into<String>, id: impl Display, context: impl Into<Context>) -> Event {
    let group = group.into();
    let key = format!("{group}_{id}");
    Event {
        group,
        key,
        context: context.into(),
    }
}

/// A context as stored in the seen table: spark writes JSON objects;
/// other text (django-spark wrote Python reprs) is kept under `"text"`.
pub fn context_from_stored(text: &str) -> Map<String, Value> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => map,
        _ => {
            let mut map = Map::new();
            map.insert("text".to_owned(), Value::String(text.to_owned()));
            map
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_is_group_underscore_id() {
        let e = event("challenge_created", 42, Map::new());
        assert_eq!(e.key, "challenge_created_42");
        assert_eq!(e.group, "challenge_created");
    }

    #[test]
    fn string_ids_are_used_verbatim() {
        assert_eq!(event("g", "abc", Map::new()).key, "g_abc");
    }

    #[test]
    fn events_share_one_context() {
        let Value::Object(map) = json!({"challenge": {"id": 1}}) else {
            unreachable!("json! of an object literal is an object")
        };
        let ctx: Context = Arc::new(map);
        let a = event("a", 1, ctx.clone());
        let b = event("b", 1, ctx.clone());
        assert!(Arc::ptr_eq(&a.context, &b.context));
        assert_eq!(a.context["challenge"]["id"], 1);
    }
}
