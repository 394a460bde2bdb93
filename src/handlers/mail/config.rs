//! A `mail` handler's config: its options as the config file writes them,
//! and what they become (templates read and checked, the transport).
//!
//! Not here: rendering and sending (`super`, `super::smtp`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use crate::handlers::kind::{self, Checks, Secret, span};
use crate::handlers::{HandlerKind, Kind};

/// A `mail` handler's options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// A folder of `GROUP.txt` / `GROUP.html` templates, or them inline.
    pub templates: Option<Spanned<RawTemplates>>,
    /// The default HTML part (a template).
    pub html: Option<Spanned<String>>,
    pub strict_templates: Option<Spanned<bool>>,
    pub from: Option<Spanned<String>>,
    pub to: Option<Spanned<OneOrMany>>,
    pub cc: Option<Spanned<OneOrMany>>,
    pub bcc: Option<Spanned<OneOrMany>>,
    pub reply_to: Option<Spanned<OneOrMany>>,
    pub subject: Option<Spanned<String>>,
    pub body: Option<Spanned<String>>,
    /// "smtp" or "outbox" (default: whichever of `smtp_host` and `outbox` is set).
    pub transport: Option<Spanned<String>>,
    pub outbox: Option<Spanned<String>>,
    /// The mode of the `.eml` files an outbox gets ("0600").
    pub mode: Option<Spanned<String>>,
    pub smtp_host: Option<Spanned<String>>,
    pub smtp_port: Option<Spanned<i64>>,
    pub smtp_security: Option<Spanned<String>>,
    pub smtp_user: Option<Spanned<String>>,
    pub smtp_password_env: Option<Spanned<String>>,
    pub smtp_pool: Option<Spanned<bool>>,
    pub smtp_ca_file: Option<Spanned<String>>,
    /// Send SMTP credentials over a connection without TLS to a relay that
    /// is not on loopback.
    pub smtp_allow_plaintext_auth: Option<Spanned<bool>>,
    /// The `spark_mail` keys honoured when `spark_mail` comes from the
    /// database (a column of a generator's records).
    pub spark_mail_from_records: Option<Spanned<Vec<String>>>,
    pub timeout: Option<Spanned<String>>,
}

pub const KIND: Kind = Kind {
    name: "mail",
    per_event: true,
    fields: kind::fields_of::<Options>,
    config,
};

fn config(c: &mut dyn Checks, table: Spanned<DeValue<'_>>) -> Option<HandlerKind> {
    let raw: Options = kind::options(c, table)?;
    let transport = transport(c, &raw);
    let strict_templates = kind::flag(&raw.strict_templates);
    let templates_folder = match raw.templates.as_ref().map(Spanned::get_ref) {
        Some(RawTemplates::Folder(dir)) => Some(dir.clone()),
        _ => None,
    };
    let (templates, html_templates) = match raw.templates {
        None => (BTreeMap::new(), BTreeMap::new()),
        Some(t) => {
            let span = t.span();
            match t.into_inner() {
                RawTemplates::Inline(map) => {
                    let (mut text, mut html) = (BTreeMap::new(), BTreeMap::new());
                    for (name, source) in map {
                        match name.strip_suffix(".html") {
                            Some(group) => {
                                html.insert(group.to_owned(), (format!("{name} (inline)"), source));
                            }
                            None => {
                                let group = name.strip_suffix(".txt").unwrap_or(&name).to_owned();
                                text.insert(group, (format!("{name} (inline)"), source));
                            }
                        }
                    }
                    (text, html)
                }
                RawTemplates::Folder(dir) => {
                    let dir = c.resolve(&dir);
                    match read_template_folder(&dir) {
                        Ok(maps) => maps,
                        Err(message) => {
                            c.bad_value("templates", span, message);
                            (BTreeMap::new(), BTreeMap::new())
                        }
                    }
                }
            }
        }
    };
    // Every template must parse and name only filters and tests that
    // exist: check now rather than at the first mail.
    let defaults = [
        ("from", raw.from.as_ref().map(|s| s.get_ref().clone())),
        ("subject", raw.subject.as_ref().map(|s| s.get_ref().clone())),
        ("body", raw.body.as_ref().map(|s| s.get_ref().clone())),
        ("html", raw.html.as_ref().map(|s| s.get_ref().clone())),
    ];
    let addresses = |v: &Option<Spanned<OneOrMany>>| {
        v.as_ref()
            .map(|s| s.get_ref().clone().into_vec())
            .unwrap_or_default()
    };
    let (to, cc, bcc, reply_to) = (
        addresses(&raw.to),
        addresses(&raw.cc),
        addresses(&raw.bcc),
        addresses(&raw.reply_to),
    );
    let mut sources: Vec<(String, &str)> = templates
        .values()
        .chain(html_templates.values())
        .map(|(name, source)| (name.clone(), source.as_str()))
        .collect();
    for (field, value) in &defaults {
        if let Some(v) = value {
            sources.push((format!("`{field}`"), v.as_str()));
        }
    }
    for (field, list) in [
        ("to", &to),
        ("cc", &cc),
        ("bcc", &bcc),
        ("reply_to", &reply_to),
    ] {
        for v in list {
            sources.push((format!("`{field}`"), v.as_str()));
        }
    }
    kind::check_templates(c, &sources);
    let spark_mail_from_records = match &raw.spark_mail_from_records {
        None => Vec::new(),
        Some(keys) => {
            for key in keys.get_ref() {
                if !super::SPARK_MAIL_KEYS.contains(&key.as_str()) {
                    c.bad_value(
                        "spark_mail_from_records",
                        keys.span(),
                        format!(
                            "{key:?} is not a spark_mail key (they are {})",
                            super::SPARK_MAIL_KEYS.join(", ")
                        ),
                    );
                }
            }
            keys.get_ref().clone()
        }
    };

    let transport = transport?;
    let [(_, from), (_, subject), (_, body), (_, html)] = defaults;
    Some(HandlerKind::Mail(Box::new(MailConfig {
        templates,
        html_templates,
        html,
        strict_templates,
        templates_folder,
        from,
        subject,
        body,
        to,
        cc,
        bcc,
        reply_to,
        transport,
        spark_mail_from_records,
        record_groups: Default::default(),
    })))
}

fn transport(c: &mut dyn Checks, raw: &Options) -> Option<MailTransport> {
    let transport = match (&raw.transport, &raw.outbox, &raw.smtp_host) {
        (Some(t), _, _) => t.get_ref().clone(),
        (None, Some(_), None) => "outbox".to_owned(),
        (None, None, Some(_)) => "smtp".to_owned(),
        _ => {
            c.missing("transport", "mail");
            return None;
        }
    };
    let timeout = kind::timeout(c, raw.timeout.as_ref());
    match transport.as_str() {
        "outbox" => {
            let Some(dir) = &raw.outbox else {
                c.missing("outbox", "mail with transport outbox");
                return None;
            };
            // An SMTP setting beside an outbox is a slip that would
            // leave every mail in a folder: said, not ignored.
            for (field, span) in [
                ("smtp_host", span(&raw.smtp_host)),
                ("smtp_port", span(&raw.smtp_port)),
                ("smtp_security", span(&raw.smtp_security)),
                ("smtp_user", span(&raw.smtp_user)),
                ("smtp_password_env", span(&raw.smtp_password_env)),
                ("smtp_pool", span(&raw.smtp_pool)),
                ("smtp_ca_file", span(&raw.smtp_ca_file)),
                (
                    "smtp_allow_plaintext_auth",
                    span(&raw.smtp_allow_plaintext_auth),
                ),
                ("timeout", span(&raw.timeout)),
            ] {
                c.unused(field, span, "to transport outbox (it sends nothing)");
            }
            Some(MailTransport::Outbox {
                dir: c.resolve(dir.get_ref()),
                mode: kind::mode(c, raw.mode.as_ref()),
            })
        }
        "smtp" => {
            for (field, span) in [("mode", span(&raw.mode)), ("outbox", span(&raw.outbox))] {
                c.unused(field, span, "to transport smtp (it writes no files)");
            }
            let Some(host) = &raw.smtp_host else {
                c.missing("smtp_host", "mail with transport smtp");
                return None;
            };
            let security = match raw.smtp_security.as_ref().map(|s| s.get_ref().as_str()) {
                None | Some("starttls") => SmtpSecurity::StartTls,
                Some("tls") => SmtpSecurity::Tls,
                Some("none") => SmtpSecurity::None,
                Some(other) => {
                    let span = raw.smtp_security.as_ref().map_or(0..0, Spanned::span);
                    c.bad_value(
                        "smtp_security",
                        span,
                        format!("{other:?}: expected \"starttls\", \"tls\" or \"none\""),
                    );
                    SmtpSecurity::StartTls
                }
            };
            let default_port = match security {
                SmtpSecurity::StartTls => 587,
                SmtpSecurity::Tls => 465,
                SmtpSecurity::None => 25,
            };
            let port = match &raw.smtp_port {
                None => default_port,
                Some(p) => u16::try_from(*p.get_ref()).unwrap_or_else(|_| {
                    c.bad_value(
                        "smtp_port",
                        p.span(),
                        format!("{} is not a port number", p.get_ref()),
                    );
                    default_port
                }),
            };
            let password = raw
                .smtp_password_env
                .as_ref()
                .map(|var| c.secret("smtp_password_env", var));
            let allow_plaintext = raw
                .smtp_allow_plaintext_auth
                .as_ref()
                .is_some_and(|a| *a.get_ref());
            if security == SmtpSecurity::None
                && (raw.smtp_user.is_some() || password.is_some())
                && !is_loopback_host(host.get_ref())
                && !allow_plaintext
            {
                let span = raw
                    .smtp_security
                    .as_ref()
                    .map_or(host.span(), Spanned::span);
                c.bad_value(
                    "smtp_security",
                    span,
                    format!(
                        "\"none\" would send the SMTP credentials in the clear to {}: use \
                         \"starttls\" or \"tls\", or set smtp_allow_plaintext_auth = true \
                         for a relay you trust on this network",
                        host.get_ref()
                    ),
                );
            }
            let ca = raw
                .smtp_ca_file
                .as_ref()
                .and_then(|file| ca_file(c, file, security));
            Some(MailTransport::Smtp(SmtpServer {
                host: host.get_ref().clone(),
                port,
                security,
                user: raw.smtp_user.as_ref().map(|u| u.get_ref().clone()),
                password,
                timeout,
                pool: raw.smtp_pool.as_ref().is_none_or(|p| *p.get_ref()),
                ca,
                allow_plaintext_auth: allow_plaintext,
            }))
        }
        other => {
            let span = raw.transport.as_ref().map_or(0..0, Spanned::span);
            c.bad_value(
                "transport",
                span,
                format!("{other:?}: expected \"smtp\" or \"outbox\""),
            );
            None
        }
    }
}

/// Whether `host` is this machine (`localhost`, `127.0.0.0/8`, `::1`).
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Reads `smtp_ca_file`: a readable PEM file with at least one
/// certificate, for a handler that uses TLS.
fn ca_file(c: &mut dyn Checks, file: &Spanned<String>, security: SmtpSecurity) -> Option<CaFile> {
    let path = c.resolve(file.get_ref());
    let problem = if security == SmtpSecurity::None {
        Some("smtp_security = \"none\" uses no TLS: set \"starttls\" or \"tls\"".to_owned())
    } else {
        match std::fs::read(&path) {
            Err(e) => Some(format!("cannot read {}: {e}", path.display())),
            Ok(pem) => {
                use rustls_pki_types::CertificateDer;
                use rustls_pki_types::pem::PemObject;
                let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
                match certs {
                    Ok(certs) if !certs.is_empty() => {
                        return Some(CaFile { path, pem });
                    }
                    Ok(_) => Some(format!("{} holds no PEM certificate", path.display())),
                    Err(e) => Some(format!("{}: not PEM certificates ({e})", path.display())),
                }
            }
        }
    };
    if let Some(problem) = problem {
        c.bad_value("smtp_ca_file", file.span(), problem);
    }
    None
}

impl MailConfig {
    /// The options as the config writes them (`spark config`): paths
    /// absolute, a templates folder as `folder` writes it, secrets by the
    /// names of their variables.
    pub fn view(
        &self,
        v: &mut serde_json::Value,
        absolute: kind::Absolute<'_>,
        folder: &dyn Fn(&str) -> String,
    ) {
        use serde_json::json;
        match &self.templates_folder {
            Some(dir) => v["templates"] = json!(folder(dir)),
            None if !self.templates.is_empty() || !self.html_templates.is_empty() => {
                let mut inline = serde_json::Map::new();
                for (group, (_, source)) in &self.templates {
                    inline.insert(group.clone(), json!(source));
                }
                for (group, (_, source)) in &self.html_templates {
                    inline.insert(format!("{group}.html"), json!(source));
                }
                v["templates"] = serde_json::Value::Object(inline);
            }
            None => {}
        }
        if let Some(html) = &self.html {
            v["html"] = json!(html);
        }
        if self.strict_templates {
            v["strict_templates"] = json!(true);
        }
        for (key, value) in [
            ("from", &self.from),
            ("subject", &self.subject),
            ("body", &self.body),
        ] {
            if let Some(value) = value {
                v[key] = json!(value);
            }
        }
        for (key, list) in [
            ("to", &self.to),
            ("cc", &self.cc),
            ("bcc", &self.bcc),
            ("reply_to", &self.reply_to),
        ] {
            if !list.is_empty() {
                v[key] = json!(list);
            }
        }
        if !self.spark_mail_from_records.is_empty() {
            v["spark_mail_from_records"] = json!(self.spark_mail_from_records);
        }
        match &self.transport {
            MailTransport::Outbox { dir, mode } => {
                v["transport"] = json!("outbox");
                v["outbox"] = json!(absolute(dir));
                v["mode"] = json!(format!("{mode:04o}"));
            }
            MailTransport::Smtp(smtp) => {
                v["transport"] = json!("smtp");
                if let Some(ca) = &smtp.ca {
                    v["smtp_ca_file"] = json!(absolute(&ca.path));
                }
                if !smtp.pool {
                    v["smtp_pool"] = json!(false);
                }
                v["smtp_host"] = json!(smtp.host);
                v["smtp_port"] = json!(smtp.port);
                v["smtp_security"] = json!(match smtp.security {
                    SmtpSecurity::StartTls => "starttls",
                    SmtpSecurity::Tls => "tls",
                    SmtpSecurity::None => "none",
                });
                if let Some(user) = &smtp.user {
                    v["smtp_user"] = json!(user);
                }
                if let Some(p) = &smtp.password {
                    v["smtp_password_env"] = json!(p.var);
                }
                if smtp.allow_plaintext_auth {
                    v["smtp_allow_plaintext_auth"] = json!(true);
                }
                v["timeout"] = json!(kind::duration_text(smtp.timeout));
            }
        }
    }
}

/// A PEM file of certificate authorities, read when the config is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFile {
    pub path: PathBuf,
    pub pem: Vec<u8>,
}

/// A mail handler: templates per group, defaults, and how mail leaves.
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// Template source per event group, with a name for messages.
    pub templates: BTreeMap<String, (String, String)>,
    /// HTML template source per event group (`<group>.html`).
    pub html_templates: BTreeMap<String, (String, String)>,
    /// The default HTML part (a template), for groups without one.
    pub html: Option<String>,
    /// Fail a render that looks up something undefined (default: render
    /// it empty, as Django does).
    pub strict_templates: bool,
    /// `templates` as the config wrote it when it named a folder.
    pub templates_folder: Option<String>,
    /// Defaults (each itself a template): `from`, `subject`, `body`.
    pub from: Option<String>,
    pub subject: Option<String>,
    pub body: Option<String>,
    /// Default recipients (templates too).
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub reply_to: Vec<String>,
    pub transport: MailTransport,
    /// The `spark_mail` keys honoured when `spark_mail` came from the
    /// database (`spark_mail_from_records`; none by default).
    pub spark_mail_from_records: Vec<String>,
    /// The groups whose events carry a record as their context (the
    /// groups of the config's generators): their `spark_mail` is a value
    /// from the database. Filled in once the sources are known.
    pub record_groups: std::collections::BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub enum MailTransport {
    /// One `.eml` file per delivery, named by the event key, created with
    /// `mode`.
    Outbox {
        dir: PathBuf,
        mode: u32,
    },
    Smtp(SmtpServer),
}

/// The SMTP server a mail handler sends through, and how.
#[derive(Debug, Clone)]
pub struct SmtpServer {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub timeout: Duration,
    /// Keep connections open for the next mail (`smtp_pool`, default
    /// true); false opens one per mail.
    pub pool: bool,
    /// The certificate authorities to trust instead of the public ones
    /// (`smtp_ca_file`, PEM), for a relay with a private CA.
    pub ca: Option<CaFile>,
    /// Credentials may go over a connection without TLS to a relay off
    /// loopback (`smtp_allow_plaintext_auth`).
    pub allow_plaintext_auth: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS (port 587).
    StartTls,
    /// TLS from the start (port 465).
    Tls,
    /// No encryption (a local relay).
    None,
}

/// The templates of a folder: `GROUP.txt` (text) and `GROUP.html` (HTML),
/// each group -> (file path, source).
type TemplateMap = BTreeMap<String, (String, String)>;

fn read_template_folder(dir: &Path) -> Result<(TemplateMap, TemplateMap), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read folder {}: {e}", dir.display()))?;
    let (mut text, mut html) = (BTreeMap::new(), BTreeMap::new());
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot read folder {}: {e}", dir.display()))?
            .path();
        let into = match path.extension().and_then(|e| e.to_str()) {
            Some("txt") => &mut text,
            Some("html") => &mut html,
            _ => continue,
        };
        let Some(group) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let source = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        into.insert(group.to_owned(), (path.display().to_string(), source));
    }
    Ok((text, html))
}

/// A mail handler's templates: a folder of `GROUP.txt` files, or inline.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawTemplates {
    Folder(String),
    Inline(BTreeMap<String, String>),
}

/// An address field: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}
