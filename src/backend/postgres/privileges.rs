//! What a PostgreSQL role needs for spark: one list of the privileges on
//! every table and sequence spark uses, from which `check` tells what a
//! role lacks, `spark migrate --print-grants ROLE` prints the GRANT
//! statements, and the README's list is checked (so they cannot drift).
//!
//! Not here: the tables themselves (`schema.rs`).

use postgres::GenericClient;

use crate::backend::quote_ident;

/// A name as SQL writes it: as it is when it is a plain lower-case word
/// (easier to read in a GRANT), quoted otherwise.
fn sql_name(name: &str) -> String {
    const RESERVED: [&str; 10] = [
        "all", "group", "grant", "order", "public", "role", "select", "table", "to", "user",
    ];
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !RESERVED.contains(&name);
    if plain {
        name.to_owned()
    } else {
        quote_ident(name)
    }
}

/// A table or sequence spark uses, and what it does with it.
pub struct Needed {
    /// `TABLE` or `SEQUENCE`.
    pub kind: &'static str,
    pub name: String,
    pub privileges: &'static [&'static str],
}

/// Everything spark does on PostgreSQL besides reading the sources: the
/// seen table (recorded, forgotten, pruned), the deliveries (claimed,
/// updated, finished), the schema version, the history, the sources' cursors
/// and the sequences behind their ids.
pub fn needed(seen_table: &str) -> Vec<Needed> {
    let table = |name: &str, privileges| Needed {
        kind: "TABLE",
        name: name.to_owned(),
        privileges,
    };
    let sequence = |name: &str| Needed {
        kind: "SEQUENCE",
        name: name.to_owned(),
        privileges: &["USAGE"],
    };
    vec![
        table(seen_table, &["SELECT", "INSERT", "DELETE"]),
        table("spark_delivery", &["SELECT", "INSERT", "UPDATE", "DELETE"]),
        table("spark_meta", &["SELECT"]),
        table("spark_history", &["SELECT", "INSERT", "DELETE"]),
        table("spark_cursor", &["SELECT", "INSERT", "UPDATE", "DELETE"]),
        sequence("spark_delivery_id_seq"),
        sequence("spark_history_id_seq"),
    ]
}

/// The GRANT statements that give `role` what spark needs: its own tables
/// and sequences, and SELECT on `source_tables` (the tables the sources
/// name; a query's tables are the operator's to add).
pub fn grants(seen_table: &str, role: &str, source_tables: &[String], queries: bool) -> String {
    let role = sql_name(role);
    let mut out = format!("GRANT USAGE ON SCHEMA public TO {role};\n");
    if !source_tables.is_empty() {
        let tables: Vec<String> = source_tables.iter().map(|t| sql_name(t)).collect();
        out.push_str(&format!(
            "GRANT SELECT ON {} TO {role};\n",
            tables.join(", ")
        ));
    }
    if queries {
        out.push_str("-- and SELECT on every table the sources' queries read\n");
    }
    for n in needed(seen_table) {
        out.push_str(&format!(
            "GRANT {} ON {}{} TO {role};\n",
            n.privileges.join(", "),
            if n.kind == "SEQUENCE" {
                "SEQUENCE "
            } else {
                ""
            },
            sql_name(&n.name)
        ));
    }
    out
}

/// What the connected role lacks of `needed`, one line each, naming the
/// table or sequence and the privileges; a missing table is a problem only
/// when the role may not create it. One query.
pub fn missing(
    client: &mut impl GenericClient,
    seen_table: &str,
) -> Result<Vec<String>, postgres::Error> {
    let needed = needed(seen_table);
    let (mut names, mut quoted, mut kinds, mut privileges) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for n in &needed {
        for p in n.privileges {
            names.push(n.name.clone());
            quoted.push(quote_ident(&n.name));
            kinds.push(n.kind.to_owned());
            privileges.push((*p).to_owned());
        }
    }
    let rows = client.query(
        "SELECT o.name, o.priv, to_regclass(o.q) IS NOT NULL, \
                CASE o.kind WHEN 'SEQUENCE' THEN has_sequence_privilege(to_regclass(o.q), o.priv) \
                            ELSE has_table_privilege(to_regclass(o.q), o.priv) END, \
                current_user::text, coalesce(current_schema()::text, 'public'), \
                coalesce(has_schema_privilege(current_schema(), 'CREATE'), false) \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS o(name, q, kind, priv)",
        &[&names, &quoted, &kinds, &privileges],
    )?;
    let mut absent: Vec<String> = Vec::new();
    let mut lacking: Vec<(String, Vec<String>)> = Vec::new();
    let (mut user, mut schema, mut may_create) = (String::new(), String::new(), true);
    for row in &rows {
        let name: String = row.try_get(0)?;
        let privilege: String = row.try_get(1)?;
        let exists: bool = row.try_get(2)?;
        let has: Option<bool> = row.try_get(3)?;
        user = row.try_get(4)?;
        schema = row.try_get(5)?;
        may_create = row.try_get(6)?;
        if !exists {
            if !absent.contains(&name) {
                absent.push(name);
            }
        } else if has != Some(true) {
            match lacking.iter_mut().find(|(n, _)| *n == name) {
                Some((_, ps)) => ps.push(privilege),
                None => lacking.push((name, vec![privilege])),
            }
        }
    }
    let kind = |name: &str| {
        needed.iter().find(|n| n.name == name).map_or("table", |n| {
            if n.kind == "SEQUENCE" {
                "sequence"
            } else {
                "table"
            }
        })
    };
    let mut problems = Vec::new();
    if !may_create {
        for name in &absent {
            problems.push(format!(
                "{} {name} does not exist, and role {user} may not CREATE in schema {schema} to make it: \
                 run `spark migrate` as a role that may (or apply `spark migrate --print-sql`)",
                kind(name)
            ));
        }
    }
    for (name, ps) in lacking {
        problems.push(format!(
            "role {user} lacks {} on {} {name} (`spark migrate --print-grants {user}` prints the GRANT statements)",
            ps.join(", "),
            kind(&name)
        ));
    }
    Ok(problems)
}
