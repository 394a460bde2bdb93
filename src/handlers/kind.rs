//! What a handler kind's config is made with: each kind's file holds its
//! options as a serde struct (`#[serde(deny_unknown_fields)]`: the fields a
//! kind takes are the struct's, known to the compiler) and turns them into
//! its `HandlerKind`, reporting problems through `Checks` (the config's
//! validator, which names the file, line and handler).
//!
//! Not here: the options every handler has (name, group, delivery, retry,
//! concurrency, rate: `crate::config`), delivering (the kinds' sinks).

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use toml::Spanned;

use crate::registry::Registry;

/// A place in the config file (a byte range).
pub type Span = Range<usize>;

/// The config's validator, as a kind's options see it: every report names
/// the handler and the line.
pub trait Checks {
    /// A value that cannot be used; `message` says why.
    fn bad_value(&mut self, field: &'static str, span: Span, message: String);

    /// A field the kind needs is missing (`what`: "jsonl", "mail with
    /// transport smtp").
    fn missing(&mut self, field: &'static str, what: &str);

    /// A field set where it means nothing (`why`: "to transport outbox (it
    /// sends nothing)"); nothing when it is not set.
    fn unused(&mut self, field: &'static str, span: Option<Span>, why: &str);

    /// A field that must not be empty is.
    fn empty(&mut self, field: &'static str, span: Span);

    /// A template (named for messages) that does not parse, or names a
    /// filter or test that does not exist.
    fn bad_template(&mut self, name: &str, error: String);

    /// A compiled-in handler function the registry does not have.
    fn unknown_function(&mut self, span: Span, function: &str);

    /// The options do not fit the kind's struct (a value of another type).
    fn syntax(&mut self, error: toml::de::Error);

    /// A duration field, or `default` when it is not set.
    fn duration(
        &mut self,
        field: &'static str,
        value: Option<&Spanned<String>>,
        default: Duration,
    ) -> Duration;

    /// A path as the config means it: relative to the config's folder.
    fn resolve(&self, path: &str) -> PathBuf;

    /// The config's folder (`.` for a config in the working directory).
    fn dir(&self) -> PathBuf;

    /// The secret in environment variable `var`, which `field` names (one
    /// not set is noted: only delivering needs it).
    fn secret(&mut self, field: &'static str, var: &Spanned<String>) -> Secret;

    /// The compiled-in functions.
    fn registry(&self) -> &Registry;
}

/// A value read from the environment (a token, a password): never printed
/// (it is registered with `crate::redact`). A variable that is not set
/// leaves it empty; `Config::require_secrets` refuses to deliver then.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: Option<String>,
    /// The environment variable it came from, for messages.
    pub var: String,
}

impl Secret {
    pub fn new(var: &str, value: String) -> Secret {
        crate::redact::register(&value);
        Secret {
            value: Some(value),
            var: var.to_owned(),
        }
    }

    /// The secret in environment variable `var` (unset: empty).
    pub fn from_env(var: &str) -> Secret {
        match std::env::var(var) {
            Ok(value) => Secret::new(var, value),
            Err(_) => Secret {
                value: None,
                var: var.to_owned(),
            },
        }
    }

    /// A value given in the config itself (a literal header).
    pub fn literal(value: String) -> Secret {
        Secret {
            value: Some(value),
            var: String::new(),
        }
    }

    /// Whether it has a value (its variable is set).
    pub fn is_set(&self) -> bool {
        self.value.is_some()
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        self.value.as_deref().unwrap_or_default()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.var.is_empty() {
            write!(f, "{:?}", self.expose())
        } else {
            write!(f, "${{{}}} (hidden)", self.var)
        }
    }
}

/// How `spark config` writes a path the config resolved: absolute.
pub type Absolute<'a> = &'a dyn Fn(&std::path::Path) -> String;

/// A duration as the config writes it (`"1m 30s"`).
pub fn duration_text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The span of an optional field, if set.
pub fn span<T>(v: &Option<Spanned<T>>) -> Option<Span> {
    v.as_ref().map(Spanned::span)
}

/// Whether an optional flag is set to true.
pub fn flag(v: &Option<Spanned<bool>>) -> bool {
    v.as_ref().is_some_and(|b| *b.get_ref())
}

/// A handler's `timeout` (default 30 s).
pub fn timeout(c: &mut dyn Checks, value: Option<&Spanned<String>>) -> Duration {
    c.duration("timeout", value, Duration::from_secs(30))
}

/// A file mode written like `"0640"` (default 0600). The owner must be
/// able to read and write, and nobody else to write.
pub fn mode(c: &mut dyn Checks, mode: Option<&Spanned<String>>) -> u32 {
    let Some(mode) = mode else {
        return crate::files::PRIVATE;
    };
    match u32::from_str_radix(mode.get_ref().trim(), 8) {
        // Event data that others could rewrite is not spark's to make.
        Ok(m) if m <= 0o777 && m & 0o022 != 0 => {
            c.bad_value(
                "mode",
                mode.span(),
                format!(
                    "{:?} lets the group or others write the files, which hold event data: \
                     give write to the owner only (like \"0640\")",
                    mode.get_ref()
                ),
            );
            crate::files::PRIVATE
        }
        Ok(m) if m <= 0o777 && m & 0o600 == 0o600 => m,
        _ => {
            c.bad_value(
                "mode",
                mode.span(),
                format!(
                    "{:?} is not a file mode spark can use: write it in octal, like \"0640\", with read and write for the owner",
                    mode.get_ref()
                ),
            );
            crate::files::PRIVATE
        }
    }
}

/// Reports each template (name, source) that does not parse or names a
/// filter or test that does not exist: checked at load, not at the first
/// delivery.
pub fn check_templates<S: AsRef<str>>(c: &mut dyn Checks, sources: &[(String, S)]) {
    let env = crate::templates::environment(false);
    for (name, source) in sources {
        if let Err(error) = crate::templates::check(&env, source.as_ref()) {
            c.bad_template(name, error);
        }
    }
}

/// A kind's options, deserialized from the handler's table (`None`, with
/// the problem reported, when a value has another type).
pub fn options<'de, T: Deserialize<'de>>(
    c: &mut dyn Checks,
    table: Spanned<toml::de::DeValue<'de>>,
) -> Option<T> {
    use serde::de::IntoDeserializer;
    T::deserialize(table.into_deserializer())
        .map_err(|e| c.syntax(e))
        .ok()
}

/// The fields a serde struct takes, as its derived `Deserialize` names
/// them: the compiler's list, never a copy of it.
pub fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Fields(Option<&'static [&'static str]>);
    #[derive(Debug)]
    struct Stop;
    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("fields read")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> Deserializer<'de> for &mut Fields {
        type Error = Stop;
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Stop> {
            self.0 = Some(fields);
            Err(Stop)
        }
        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields = Fields(None);
    let _ = T::deserialize(&mut fields);
    fields.0.unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Two {
        a: Option<String>,
        b_c: Option<Spanned<i64>>,
    }

    #[test]
    fn the_fields_are_the_structs() {
        assert_eq!(fields_of::<Two>(), ["a", "b_c"]);
    }
}
