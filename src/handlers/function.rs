//! `function`: calls a compiled-in handler function registered by name. A
//! panic in the function is caught and recorded as a failed delivery.
//!
//! Not here: the built-in functions themselves (`crate::builtins`).

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use super::kind::{self, Checks};
use super::{DeliverEach, Dispatch, HandlerKind, Kind, Outcome};
use crate::registry::HandlerFunction;

/// A `function` handler's options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// The compiled-in function's name.
    pub function: Option<Spanned<String>>,
}

pub const KIND: Kind = Kind {
    name: "function",
    per_event: true,
    fields: kind::fields_of::<Options>,
    config,
};

fn config(c: &mut dyn Checks, table: Spanned<DeValue<'_>>) -> Option<HandlerKind> {
    let raw: Options = kind::options(c, table)?;
    let Some(function) = raw.function else {
        c.missing("function", "function");
        return None;
    };
    if c.registry().handler(function.get_ref()).is_none() {
        c.unknown_function(function.span(), function.get_ref());
        return None;
    }
    Some(HandlerKind::Function {
        function: function.into_inner(),
    })
}

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
