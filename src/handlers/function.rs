//! `function`: calls a compiled-in handler function registered by name. A
//! panic in the function is caught and recorded as a failed delivery.
//!
//! Not here: the built-in functions themselves (`crate::builtins`).

use super::{DeliverEach, Dispatch, Outcome};
use crate::registry::HandlerFunction;

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
