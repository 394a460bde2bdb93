//! `spark check`: a config checked against its database without writing
//! anything, every problem reported at once. Errors make the config
//! unusable; warnings are allowed but probably mistakes (a handler whose
//! regex matches no group any source emits would silently get nothing).
//!
//! Not here: what the config file alone can tell (TOML, regexes, templates,
//! environment variables): `Config::load` reports those, all together.

use std::path::Path;

use serde::Serialize;

use crate::config::{Config, HandlerKind};
use crate::registry::Registry;
use crate::{backend, database};

/// What `check` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    /// Deliveries owed to handlers that are not in the config.
    pub orphaned: Vec<crate::store::admin::Orphaned>,
}

impl CheckReport {
    /// 2 with errors, 1 with orphaned deliveries (they need attention), else 0.
    pub fn exit_code(&self) -> u8 {
        if !self.errors.is_empty() {
            2
        } else if !self.orphaned.is_empty() {
            1
        } else {
            0
        }
    }
}

/// The groups the sources (enabled or not) may emit, and whether every
/// source said which (a compiled-in function may not declare them).
pub fn emitted_groups<'a>(config: &'a Config, registry: &'a Registry) -> (Vec<&'a str>, bool) {
    let mut groups: Vec<&str> = Vec::new();
    let mut complete = true;
    for source in &config.sources {
        let emits = source.kind.emits(registry);
        if emits.is_empty() {
            complete = false;
        }
        for g in emits {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    (groups, complete)
}

/// Whether `program` can be run: a path that exists, or a name on `$PATH`.
fn runnable(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// A Django project whose `django_migrations` has no rows of django-spark's
/// app (`spark`) beside a seen table made without them (spark made it, with
/// Django's DDL): its next `manage.py migrate` would fail with "relation
/// spark_event already exists" unless the migrations are faked.
fn django_migrations_note(
    reader: &mut dyn crate::store::Reader,
    config: &Config,
) -> Option<String> {
    if !reader.table_exists("django_migrations").ok()?
        || !reader.table_exists(&config.database.seen_table).ok()?
    {
        return None;
    }
    let mut applied = None;
    reader
        .scan(
            &crate::records::RecordSet::Query(
                "SELECT count(*) AS n FROM django_migrations WHERE app = 'spark'".into(),
            ),
            None,
            &mut |r| {
                applied = r.get("n").and_then(serde_json::Value::as_i64);
                std::ops::ControlFlow::Break(())
            },
        )
        .ok()?;
    (applied == Some(0)).then(|| {
        format!(
            "the seen table `{}` was not made by Django's migrations (django_migrations has no rows of \
             django-spark's app `spark`): if the project keeps django-spark installed, mark its \
             migrations applied before the next `manage.py migrate`: `python manage.py migrate spark 0002 --fake`",
            config.database.seen_table
        )
    })
}

/// Checks a config that may have problems of its own: they are reported
/// first, and what is valid of it is checked against its database too (the
/// database when `[database]` itself is valid). Writes nothing.
pub fn check(partial: &crate::config::PartialConfig, registry: &Registry) -> CheckReport {
    let config = &partial.config;
    let mut report = CheckReport {
        errors: partial.problems.iter().map(ToString::to_string).collect(),
        ..CheckReport::default()
    };
    let reader = if partial.database_usable {
        Some(backend::reader(config))
    } else {
        report
            .warnings
            .push("the database was not checked: fix `[database]` first".into());
        None
    };
    match reader {
        None => {}
        Some(Err(e)) => report.errors.push(e.to_string()),
        Some(Ok(mut reader)) => {
            for source in &config.sources {
                match database::check_source(&mut *reader, registry, source) {
                    Ok(warnings) => {
                        report.warnings.extend(warnings);
                        report
                            .warnings
                            .extend(database::cursor_index_warning(&mut *reader, source));
                    }
                    Err(e) if source.enabled => report.errors.push(e.to_string()),
                    Err(e) => report
                        .warnings
                        .push(format!("{e} (the source is disabled)")),
                }
            }
            if let Err(e) = reader.seen_table() {
                report.errors.push(e.to_string());
            }
            if let crate::config::BackendConfig::Postgres(pg) = &config.database.backend
                && let Some(channel) = &pg.listen
                && let Ok(Some(false)) = reader.notifies(channel)
            {
                report.warnings.push(format!(
                    "[database] listen = {channel:?}, but no trigger in {} notifies {channel:?}: `spark watch` \
                     will wake on its interval only (see the README's watch mode for the trigger)",
                    reader.name()
                ));
            }
            if let Some(warning) = django_migrations_note(&mut *reader, config) {
                report.warnings.push(warning);
            }
            match reader.missing_privileges() {
                Ok(lacking) => report.errors.extend(
                    lacking
                        .into_iter()
                        .map(|l| format!("database {}: {l}", reader.name())),
                ),
                Err(e) => report.errors.push(e.to_string()),
            }
            match reader.deliveries() {
                Ok(deliveries) => {
                    report.orphaned =
                        crate::store::admin::orphaned(&deliveries, &config.handler_names())
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }
    }
    report.errors.extend(
        config
            .missing_secrets
            .iter()
            .map(|m| m.problem().to_string()),
    );
    if !partial.problems.is_empty() {
        // Handlers or sources left out for their problems would make the
        // warnings below about groups and regexes misleading.
        return report;
    }

    // The console's password: only `serve` needs it, so a warning.
    if let Some(var) = &config.serve.password_env
        && std::env::var(var).map_or(true, |v| v.is_empty())
    {
        report.warnings.push(format!(
            "[serve] password_env: {var} is not set here; `spark serve` will refuse to start without it"
        ));
    }
    if !config.serve.listen.ip().is_loopback() {
        report.warnings.push(format!(
            "[serve] listen = \"{}\": the console speaks plain HTTP; off a loopback address, put it behind a VPN or a TLS proxy",
            config.serve.listen
        ));
    }

    // Groups no handler receives: their events would be recorded as seen
    // and never delivered.
    for source in config.sources.iter().filter(|s| s.enabled) {
        for group in source.kind.emits(registry) {
            if !config.handlers.iter().any(|h| h.group.is_match(group)) {
                report.warnings.push(format!(
                    "source `{}`: group `{group}` has no handler: its events will be recorded as seen and delivered to no one",
                    source.name
                ));
            }
        }
    }

    let (groups, complete) = emitted_groups(config, registry);
    for handler in &config.handlers {
        let matched = groups.iter().any(|g| handler.group.is_match(g));
        if !matched && complete {
            report.warnings.push(format!(
                "handler `{}`: group regex `{}` matches no group a source emits ({}); it will receive nothing",
                handler.name,
                handler.group.as_str(),
                if groups.is_empty() {
                    "there are none".to_owned()
                } else {
                    groups.join(", ")
                }
            ));
        }
        if let Some(mode) = handler.kind.file_mode()
            && mode & 0o004 != 0
        {
            report.warnings.push(format!(
                "handler `{}`: mode {mode:04o} lets every user of this machine read the event data it writes",
                handler.name
            ));
        }
        if let HandlerKind::Mail(mail) = &handler.kind
            && let crate::config::MailTransport::Smtp(smtp) = &mail.transport
            && smtp.security == crate::config::SmtpSecurity::None
            && (smtp.user.is_some() || smtp.password.is_some())
            && !crate::config::is_loopback_host(&smtp.host)
        {
            report.warnings.push(format!(
                "handler `{}`: SMTP credentials go to {} in the clear (smtp_security = \"none\", smtp_allow_plaintext_auth = true)",
                handler.name, smtp.host
            ));
        }
        if let HandlerKind::Command { argv, .. } = &handler.kind
            && let Some(program) = argv.first()
            && !runnable(program)
        {
            report.errors.push(format!(
                "handler `{}`: command `{program}` is not a file that exists nor a program on $PATH",
                handler.name
            ));
        }
    }
    report
}
