//! `${VAR}` in the config's string values: replaced by the environment
//! variable's value before the config is read, so that secrets and
//! per-host paths stay out of the file. `$${` stands for a literal `${`.
//! A variable that is not set is a problem naming it, at its line.
//!
//! Every value put in is masked wherever spark prints, logs or stores text
//! (`crate::redact`), and variables whose names look secret are withheld
//! from command handlers.
//!
//! Not here: `*_env` keys (`header_env`, `signing_secret_env`,
//! `smtp_password_env`), which name variables whose values are secrets and
//! are read where they are used.

use std::borrow::Cow;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// A variable that was used but is not set, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unset {
    pub var: String,
    pub span: Range<usize>,
    /// Inside a `[[handlers]]` entry: that handler's name and the field.
    /// Such a variable is a delivery secret, needed only by the commands
    /// that deliver (see `Config::require_secrets`).
    pub handler: Option<(String, String)>,
}

/// What interpolation did: the variables it could not find, and every
/// value it put in, as (variable, value) pairs (all of them are masked in
/// output; see `crate::redact`).
#[derive(Debug, Default)]
pub struct Interpolation {
    pub unset: Vec<Unset>,
    pub values: Vec<(String, String)>,
}

/// Expands `${VAR}` in `text` with `lookup`, noting each (variable, value)
/// put in; `Err` lists the unset names.
pub fn expand(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    values: &mut Vec<(String, String)>,
) -> Result<Option<String>, Vec<String>> {
    if !text.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(text.len());
    let mut unset = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${")
            && let Some(end) = after.find('}')
        {
            let var = &after[..end];
            match lookup(var) {
                Some(value) => {
                    out.push_str(&value);
                    values.push((var.to_owned(), value));
                }
                None => unset.push(var.to_owned()),
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    if unset.is_empty() {
        Ok(Some(out))
    } else {
        Err(unset)
    }
}

/// Expands every string value of a parsed config in place.
pub fn interpolate(
    table: &mut DeTable<'_>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Interpolation {
    let mut done = Interpolation::default();
    for (key, value) in table.iter_mut() {
        match (key.get_ref().as_ref(), value.get_mut()) {
            ("handlers", DeValue::Array(handlers)) => {
                for handler in handlers.iter_mut() {
                    let DeValue::Table(fields) = handler.get_mut() else {
                        walk(handler, lookup, &mut done);
                        continue;
                    };
                    let name = match fields.get("name").map(|n| n.get_ref()) {
                        Some(DeValue::String(n)) => n.to_string(),
                        _ => String::new(),
                    };
                    for (field, value) in fields.iter_mut() {
                        let before = done.unset.len();
                        walk(value, lookup, &mut done);
                        for unset in &mut done.unset[before..] {
                            unset.handler = Some((name.clone(), field.get_ref().to_string()));
                        }
                    }
                }
            }
            (_, _) => walk(value, lookup, &mut done),
        }
    }
    done
}

fn walk(
    value: &mut Spanned<DeValue<'_>>,
    lookup: &dyn Fn(&str) -> Option<String>,
    done: &mut Interpolation,
) {
    let span = value.span();
    match value.get_mut() {
        DeValue::String(s) => match expand(s, lookup, &mut done.values) {
            Ok(Some(expanded)) => *s = Cow::Owned(expanded),
            Ok(None) => {}
            Err(unset) => done.unset.extend(unset.into_iter().map(|var| Unset {
                var,
                span: span.clone(),
                handler: None,
            })),
        },
        DeValue::Array(items) => {
            for item in items.iter_mut() {
                walk(item, lookup, done);
            }
        }
        DeValue::Table(table) => {
            for (_, v) in table.iter_mut() {
                walk(v, lookup, done);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(var: &str) -> Option<String> {
        match var {
            "HOST" => Some("db.example.org".into()),
            "API_TOKEN" => Some("t0k".into()),
            _ => None,
        }
    }

    #[test]
    fn variables_are_replaced_and_escapes_kept() {
        let mut values = Vec::new();
        assert_eq!(
            expand("smtp://${HOST}:25/$${NOT}/$x", &env, &mut values),
            Ok(Some("smtp://db.example.org:25/${NOT}/$x".into()))
        );
        assert_eq!(expand("plain", &env, &mut values), Ok(None));
        assert_eq!(
            expand("?token=${API_TOKEN}", &env, &mut values),
            Ok(Some("?token=t0k".into()))
        );
        assert_eq!(
            values,
            [
                ("HOST".to_owned(), "db.example.org".to_owned()),
                ("API_TOKEN".to_owned(), "t0k".to_owned())
            ]
        );
        assert_eq!(
            expand("${NOPE} and ${ALSO}", &env, &mut values),
            Err(vec!["NOPE".into(), "ALSO".into()])
        );
        assert_eq!(
            expand("${unclosed", &env, &mut values),
            Ok(Some("${unclosed".into()))
        );
    }
}
