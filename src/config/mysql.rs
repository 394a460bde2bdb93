//! `[database] url` for MySQL and MariaDB:
//! `mysql://user[:password]@host[:port]/database?ssl-mode=...&ssl-ca=PATH`
//! (`mariadb://` the same), TLS spelled as the mysql client spells it.
//!
//! The password (from the URL, or `[database] password_env`) is registered
//! with the redactor and never shown: `MysqlConfig::describe` names user,
//! host, port and database only.
//!
//! Not here: connecting (`backend::mysql`).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// How TLS is used, as the mysql client's `--ssl-mode` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MysqlSslMode {
    /// Never.
    Disabled,
    /// When the server offers it, without checking its certificate (the
    /// client's default).
    Preferred,
    /// Always, without checking the certificate.
    Required,
    /// Always, the certificate checked against the trusted roots.
    VerifyCa,
    /// Always, the certificate checked against the roots and the host name.
    VerifyIdentity,
}

impl MysqlSslMode {
    fn parse(text: &str) -> Option<MysqlSslMode> {
        Some(match text.to_ascii_uppercase().as_str() {
            "DISABLED" => MysqlSslMode::Disabled,
            "PREFERRED" => MysqlSslMode::Preferred,
            "REQUIRED" => MysqlSslMode::Required,
            "VERIFY_CA" => MysqlSslMode::VerifyCa,
            "VERIFY_IDENTITY" => MysqlSslMode::VerifyIdentity,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MysqlSslMode::Disabled => "DISABLED",
            MysqlSslMode::Preferred => "PREFERRED",
            MysqlSslMode::Required => "REQUIRED",
            MysqlSslMode::VerifyCa => "VERIFY_CA",
            MysqlSslMode::VerifyIdentity => "VERIFY_IDENTITY",
        }
    }
}

/// A MySQL or MariaDB database to connect to.
#[derive(Clone, PartialEq, Eq)]
pub struct MysqlConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub ssl_mode: MysqlSslMode,
    /// Trusted roots for VERIFY_CA / VERIFY_IDENTITY (a PEM file).
    pub ssl_ca: Option<PathBuf>,
    pub connect_timeout: Option<Duration>,
    /// How long a claim on a delivery lasts without being renewed.
    pub lease: Duration,
    /// The `url` as the config wrote it (for `spark config`).
    pub written: String,
}

impl fmt::Debug for MysqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MysqlConfig({})", self.describe())
    }
}

impl MysqlConfig {
    /// The database, for messages: `user@host:port/database`, never the
    /// password.
    pub fn describe(&self) -> String {
        format!(
            "{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        )
    }
}

/// Whether `text` names a MySQL or MariaDB database.
pub fn is_mysql_url(text: &str) -> bool {
    let lower = text.trim().to_ascii_lowercase();
    lower.starts_with("mysql://") || lower.starts_with("mariadb://")
}

/// The parameters spark understands in the query string.
const KNOWN: &[&str] = &["ssl-mode", "ssl-ca", "connect-timeout"];

/// Parses a `mysql://` (or `mariadb://`) URL.
pub fn parse(text: &str) -> Result<MysqlConfig, String> {
    let written = text.trim();
    let rest = written.split_once("://").map_or(written, |(_, rest)| rest);
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some((user, password)) => (Some(decode(user)?), Some(decode(password)?)),
            None => (Some(decode(u)?), None),
        },
    };
    let (host, port) = super::postgres::host_port(hostport)?;
    let port = match port.filter(|p| !p.is_empty()) {
        None => 3306,
        Some(p) => p
            .parse()
            .map_err(|_| format!("port {p:?} is not a port number"))?,
    };
    let database = decode(path.trim_end_matches('/'))?;
    if database.is_empty() {
        return Err("the URL names no database: write mysql://user@host:3306/database".to_owned());
    }
    let mut ssl_mode = MysqlSslMode::Preferred;
    let mut ssl_ca = None;
    let mut connect_timeout = None;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("URL parameter {pair:?} has no `=`"))?;
        let (k, v) = (decode(k)?.replace('_', "-"), decode(v)?);
        match k.as_str() {
            "ssl-mode" => {
                ssl_mode = MysqlSslMode::parse(&v).ok_or_else(|| {
                    format!(
                        "ssl-mode {v:?} is not one of DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY"
                    )
                })?;
            }
            "ssl-ca" => ssl_ca = Some(PathBuf::from(v)),
            "connect-timeout" => {
                connect_timeout = Some(super::connect_timeout("connect-timeout", &v)?);
            }
            other => {
                return Err(format!(
                    "unknown connection parameter `{other}` (spark knows: {})",
                    KNOWN.join(", ")
                ));
            }
        }
    }
    if ssl_ca.is_some()
        && !matches!(
            ssl_mode,
            MysqlSslMode::VerifyCa | MysqlSslMode::VerifyIdentity
        )
        && ssl_mode != MysqlSslMode::Preferred
    {
        return Err(format!(
            "ssl-ca is for VERIFY_CA or VERIFY_IDENTITY, not ssl-mode={}",
            ssl_mode.as_str()
        ));
    }
    if ssl_ca.is_some() && ssl_mode == MysqlSslMode::Preferred {
        // As the mysql client does: a CA given means it is to be checked.
        ssl_mode = MysqlSslMode::VerifyCa;
    }
    if let Some(p) = &password {
        crate::redact::register(p);
    }
    let user = user
        .filter(|u| !u.is_empty())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "root".to_owned());
    Ok(MysqlConfig {
        host: if host.is_empty() {
            "localhost".to_owned()
        } else {
            host
        },
        port,
        user,
        password,
        database,
        ssl_mode,
        ssl_ca,
        connect_timeout,
        lease: Duration::from_secs(15),
        written: written.to_owned(),
    })
}

/// `%XX` escapes decoded.
fn decode(text: &str) -> Result<String, String> {
    super::postgres::percent_decode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_every_part() {
        let c = parse(
            "mysql://spark:p%40ss@db.internal:3307/app?ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/ca.pem",
        )
        .unwrap();
        assert_eq!(c.host, "db.internal");
        assert_eq!(c.port, 3307);
        assert_eq!(c.user, "spark");
        assert_eq!(c.password.as_deref(), Some("p@ss"));
        assert_eq!(c.database, "app");
        assert_eq!(c.ssl_mode, MysqlSslMode::VerifyIdentity);
        assert_eq!(c.ssl_ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(c.describe(), "spark@db.internal:3307/app");
        let m = parse("mariadb://u@[::1]/x?ssl-mode=disabled").unwrap();
        assert_eq!((m.host.as_str(), m.port), ("::1", 3306));
        assert_eq!(m.ssl_mode, MysqlSslMode::Disabled);
        assert_eq!(
            parse("mysql://u@h/db?ssl-ca=/c.pem").unwrap().ssl_mode,
            MysqlSslMode::VerifyCa
        );
    }

    #[test]
    fn mistakes_are_named() {
        for (url, says) in [
            ("mysql://h/db?ssl-mode=sometimes", "ssl-mode"),
            ("mysql://h/db?sslmode=require", "`sslmode`"),
            ("mysql://h:x/db", "port"),
            ("mysql://u@h", "no database"),
            ("mysql://u@h/db?ssl-mode=REQUIRED&ssl-ca=/c.pem", "ssl-ca"),
        ] {
            let e = parse(url).unwrap_err();
            assert!(e.contains(says), "{url}: {e}");
        }
    }
}
