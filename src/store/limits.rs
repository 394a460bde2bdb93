//! What the seen table takes: the longest key and group its columns
//! declare, held to on every database alike (part of the model, so that
//! the store, the backends and the checks share it without a circle).
//!
//! Not here: reading the declared types (the backends) or checking a
//! config against a database (`crate::database`).

/// The longest key and group (in characters) the seen table takes: the
/// lengths its `key` and `group` columns declare (`varchar(100)` and
/// `varchar(50)` in django-spark's schema, which spark creates). SQLite
/// does not enforce them, PostgreSQL does; spark holds every database to
/// them, so that a config behaves the same on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLimits {
    pub key: Option<usize>,
    pub group: Option<usize>,
}

impl KeyLimits {
    /// django-spark's columns: `key varchar(100)`, `group varchar(50)`.
    pub const DJANGO: KeyLimits = KeyLimits {
        key: Some(100),
        group: Some(50),
    };

    /// Why an event cannot be recorded as seen, if it cannot: a key or a
    /// group longer than the columns take, or holding a NUL character
    /// (which PostgreSQL's text cannot store).
    pub fn check(&self, key: &str, group: &str) -> Result<(), String> {
        for (what, value, limit) in [("key", key, self.key), ("group", group, self.group)] {
            if value.as_bytes().contains(&0) {
                return Err(format!(
                    "event {what} {:?} contains a NUL character, which no seen table can store",
                    crate::escape::escape(&clipped(value))
                ));
            }
            // No more bytes than the limit: no more characters either.
            if let Some(limit) = limit
                && value.len() > limit
            {
                let n = value.chars().count();
                if n > limit {
                    return Err(format!(
                        "event {what} {:?} is {n} characters, longer than the seen table's `{what}` column takes ({limit}); \
                         use a shorter id, or a seen table with a wider column",
                        crate::escape::escape(&clipped(value))
                    ));
                }
            }
        }
        Ok(())
    }
}

fn clipped(text: &str) -> String {
    if text.chars().count() <= 40 {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(39).collect();
        s.push('…');
        s
    }
}

/// The length a declared column type allows: `varchar(100)` -> 100;
/// `text` and the like -> no limit.
pub fn declared_length(declared: &str) -> Option<usize> {
    let lower = declared.to_ascii_lowercase();
    if !(lower.contains("char")) {
        return None;
    }
    let open = lower.find('(')?;
    let close = lower[open..].find(')')? + open;
    lower[open + 1..close].trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_lengths_and_limits() {
        assert_eq!(declared_length("varchar(100)"), Some(100));
        assert_eq!(declared_length("character varying( 50 )"), Some(50));
        assert_eq!(declared_length("text"), None);
        assert_eq!(declared_length("decimal(10,2)"), None);
        let limits = KeyLimits::DJANGO;
        assert!(limits.check("g_1", "g").is_ok());
        assert!(
            limits
                .check(&"k".repeat(101), "g")
                .unwrap_err()
                .contains("101 characters")
        );
        assert!(limits.check(&"漢".repeat(100), "g").is_ok());
        assert!(limits.check("a\0b", "g").unwrap_err().contains("NUL"));
        assert!(
            limits
                .check("k", &"g".repeat(51))
                .unwrap_err()
                .contains("`group`")
        );
    }
}
