//! `function`: calls a compiled-in handler function registered by name. A
//! panic in the function is caught and recorded as a failed delivery.
//!
//! Also the built-in handler functions every `spark` binary offers.

use super::{DeliverEach, Dispatch, Outcome};
use crate::registry::{HandlerFunction, Registry};

pub struct FunctionSink {
    name: String,
    function: Option<HandlerFunction>,
}

impl FunctionSink {
    pub fn new(name: &str, function: Option<HandlerFunction>) -> Self {
        FunctionSink {
            name: name.to_owned(),
            function,
        }
    }
}

impl DeliverEach for FunctionSink {
    fn deliver(&self, dispatch: &Dispatch<'_>, _attempt: u32) -> Outcome {
        let Some(function) = &self.function else {
            return Err(format!("no handler function `{}` in this binary", self.name).into());
        };
        match crate::panics::catch(|| function.call(dispatch.event)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string().into()),
            Err(msg) => Err(format!("handler function `{}` panicked: {msg}", self.name).into()),
        }
    }
}

/// Registers the handler functions every `spark` binary offers:
/// `log_event` logs each event at info level (see `-v`).
pub fn register_builtins(registry: &mut Registry) {
    registry.add_handler("log_event", |event| {
        tracing::info!(
            key = event.key.as_str(),
            group = event.group.as_str(),
            "event"
        );
        Ok(())
    });
}
