//! `[database] url` for PostgreSQL: the connection parameters as libpq
//! takes them, from a URL (`postgresql://user@host:5432/app?sslmode=require`)
//! or a key=value string (`host=db dbname=app sslmode=verify-full`), with
//! libpq's environment variables (`PGHOST`, `PGPORT`, `PGUSER`,
//! `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE`, `PGSSLROOTCERT`, `PGAPPNAME`,
//! `PGCONNECT_TIMEOUT`) filling in what the string leaves out.
//!
//! The password (from the URL, `password=`, or `PGPASSWORD`) is registered
//! with the redactor and never shown: `PgConfig::describe` names user, host,
//! port and database only.
//!
//! Not here: connecting (`backend::postgres`).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// How TLS is used, as libpq's `sslmode` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never.
    Disable,
    /// When the server offers it, without checking its certificate (libpq's
    /// default).
    Prefer,
    /// Always, without checking the certificate.
    Require,
    /// Always, the certificate checked against the trusted roots.
    VerifyCa,
    /// Always, the certificate checked against the roots and the host name.
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Option<SslMode> {
        Some(match text {
            "disable" => SslMode::Disable,
            // libpq's `allow` tries without TLS first; spark prefers TLS.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A PostgreSQL database to connect to.
#[derive(Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// Host names, IP addresses or Unix socket folders (a path), tried in
    /// order.
    pub hosts: Vec<String>,
    /// The address to connect to instead of resolving `hosts` (libpq's
    /// `hostaddr`); the host name still checks the certificate.
    pub hostaddr: Option<String>,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub sslmode: SslMode,
    /// Trusted roots for verify-ca / verify-full (a PEM file).
    pub sslrootcert: Option<PathBuf>,
    pub application_name: String,
    pub connect_timeout: Option<Duration>,
    /// How long a claim on a delivery lasts without being renewed: after a
    /// worker dies, others take its deliveries over when it runs out.
    pub lease: Duration,
    /// The `url` as the config wrote it (for `spark config`).
    pub written: String,
    /// The channel `watch` listens on (`LISTEN`), woken by a trigger's
    /// `pg_notify`; `None`: it polls.
    pub listen: Option<String>,
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgConfig({})", self.describe())
    }
}

impl PgConfig {
    /// The database, for messages: `user@host:port/dbname`, never the
    /// password.
    pub fn describe(&self) -> String {
        let host = self.hosts.join(",");
        format!("{}@{host}:{}/{}", self.user, self.port, self.dbname)
    }
}

/// Parses `text` (a URL or key=value pairs), filling what it leaves out from
/// `env` (libpq's variables) and libpq's defaults.
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<PgConfig, String> {
    let text = text.trim();
    let pairs = if text.starts_with("postgresql://") || text.starts_with("postgres://") {
        url_pairs(text)?
    } else {
        keyword_pairs(text)?
    };
    let get = |key: &str| -> Option<String> {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    for (key, _) in &pairs {
        if !KNOWN.contains(&key.as_str()) {
            return Err(format!(
                "unknown connection parameter `{key}` (spark knows: {})",
                KNOWN.join(", ")
            ));
        }
    }
    let from_env = |var: &str| env(var).filter(|v| !v.is_empty());
    let hosts: Vec<String> = get("host")
        .or_else(|| from_env("PGHOST"))
        .map(|h| h.split(',').map(str::to_owned).collect())
        .unwrap_or_else(|| {
            // libpq's default: the local socket folder, where there is one.
            let socket = "/var/run/postgresql";
            vec![if std::path::Path::new(socket).is_dir() {
                socket.to_owned()
            } else {
                "localhost".to_owned()
            }]
        });
    let port = match get("port").or_else(|| from_env("PGPORT")) {
        None => 5432,
        Some(p) => p
            .split(',')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| format!("port {p:?} is not a port number"))?,
    };
    let user = get("user")
        .or_else(|| from_env("PGUSER"))
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "postgres".to_owned());
    let dbname = get("dbname")
        .or_else(|| from_env("PGDATABASE"))
        .unwrap_or_else(|| user.clone());
    let password = get("password").or_else(|| from_env("PGPASSWORD"));
    if let Some(p) = &password {
        crate::redact::register(p);
    }
    let sslmode = match get("sslmode").or_else(|| from_env("PGSSLMODE")) {
        None => SslMode::Prefer,
        Some(m) => SslMode::parse(&m).ok_or_else(|| {
            format!(
                "sslmode {m:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            )
        })?,
    };
    let connect_timeout = match get("connect_timeout").or_else(|| from_env("PGCONNECT_TIMEOUT")) {
        None => None,
        Some(t) => Some(super::connect_timeout("connect_timeout", &t)?),
    };
    Ok(PgConfig {
        hosts,
        hostaddr: get("hostaddr"),
        port,
        user,
        password,
        dbname,
        sslmode,
        sslrootcert: get("sslrootcert")
            .or_else(|| from_env("PGSSLROOTCERT"))
            .map(PathBuf::from),
        application_name: get("application_name")
            .or_else(|| from_env("PGAPPNAME"))
            .unwrap_or_else(|| "spark".to_owned()),
        connect_timeout,
        lease: Duration::from_secs(15),
        written: text.to_owned(),
        listen: None,
    })
}

/// The parameters spark understands.
const KNOWN: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "user",
    "password",
    "dbname",
    "sslmode",
    "sslrootcert",
    "application_name",
    "connect_timeout",
];

/// `%XX` escapes decoded (a `+` stays a `+`, as in libpq).
/// A URL's `host[:port]` (or `[v6]:port`): the host decoded, the port as
/// written.
pub(super) fn host_port(spec: &str) -> Result<(String, Option<&str>), String> {
    if let Some(v6) = spec.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("host {spec:?}: an IPv6 address lacks its `]`"))?;
        return Ok((host.to_owned(), after.strip_prefix(':')));
    }
    Ok(match spec.rsplit_once(':') {
        Some((h, p)) => (percent_decode(h)?, Some(p)),
        None => (percent_decode(spec)?, None),
    })
}

pub(super) fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "a `%` in the URL is not followed by two hex digits".to_owned())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the URL decodes to invalid UTF-8".to_owned())
}

/// The parameters of a `postgresql://` URL.
fn url_pairs(url: &str) -> Result<Vec<(String, String)>, String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let mut pairs = Vec::new();
    let hostspec = match authority.rsplit_once('@') {
        Some((userinfo, hostspec)) => {
            match userinfo.split_once(':') {
                Some((user, password)) => {
                    pairs.push(("user".to_owned(), percent_decode(user)?));
                    pairs.push(("password".to_owned(), percent_decode(password)?));
                }
                None => pairs.push(("user".to_owned(), percent_decode(userinfo)?)),
            }
            hostspec
        }
        None => authority,
    };
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for spec in hostspec.split(',').filter(|s| !s.is_empty()) {
        let (host, port) = host_port(spec)?;
        if !host.is_empty() {
            hosts.push(host);
        }
        if let Some(port) = port.filter(|p| !p.is_empty()) {
            ports.push(port.to_owned());
        }
    }
    if !hosts.is_empty() {
        pairs.push(("host".to_owned(), hosts.join(",")));
    }
    if !ports.is_empty() {
        pairs.push(("port".to_owned(), ports.join(",")));
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        pairs.push(("dbname".to_owned(), percent_decode(db)?));
    }
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("URL parameter {pair:?} has no `=`"))?;
        pairs.push((percent_decode(k)?, percent_decode(v)?));
    }
    Ok(pairs)
}

/// The parameters of a `key=value key='quoted value'` string.
fn keyword_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!(
                "`{key}` is not followed by `=` (write key=value pairs, or a postgresql:// URL)"
            ));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("the value of `{key}` lacks its closing quote")),
                    Some('\'') => break,
                    Some('\\') => {
                        if let Some(c) = chars.next() {
                            value.push(c);
                        }
                    }
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    if let Some(c) = chars.next() {
                        value.push(c);
                    }
                    continue;
                }
                value.push(c);
                chars.next();
            }
        }
        pairs.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn urls_give_every_part() {
        let c = parse(
            "postgresql://spark:p%40ss@db.internal:6543/app?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=x",
            &no_env,
        )
        .unwrap();
        assert_eq!(c.hosts, ["db.internal"]);
        assert_eq!(c.port, 6543);
        assert_eq!(c.user, "spark");
        assert_eq!(c.password.as_deref(), Some("p@ss"));
        assert_eq!(c.dbname, "app");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.sslrootcert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(c.describe(), "spark@db.internal:6543/app");
        let v6 = parse("postgres://[::1]:5433/x", &no_env).unwrap();
        assert_eq!((v6.hosts[0].as_str(), v6.port), ("::1", 5433));
        let socket = parse("postgresql://%2Fvar%2Frun%2Fpostgresql/app?user=u", &no_env).unwrap();
        assert_eq!(socket.hosts, ["/var/run/postgresql"]);
        assert_eq!(socket.user, "u");
    }

    #[test]
    fn keyword_strings_and_quotes() {
        let c = parse(
            "host=db port = 5433 dbname='my app' password='it\\'s' sslmode=require",
            &no_env,
        )
        .unwrap();
        assert_eq!(c.hosts, ["db"]);
        assert_eq!(c.port, 5433);
        assert_eq!(c.dbname, "my app");
        assert_eq!(c.password.as_deref(), Some("it's"));
        assert_eq!(c.sslmode, SslMode::Require);
    }

    #[test]
    fn the_environment_fills_what_the_string_leaves_out() {
        let env = |var: &str| match var {
            "PGHOST" => Some("envhost".to_owned()),
            "PGPASSWORD" => Some("from-env".to_owned()),
            "PGDATABASE" => Some("envdb".to_owned()),
            "PGSSLMODE" => Some("disable".to_owned()),
            _ => None,
        };
        let c = parse("postgresql://u@/", &env).unwrap();
        assert_eq!(c.hosts, ["envhost"]);
        assert_eq!(c.dbname, "envdb");
        assert_eq!(c.password.as_deref(), Some("from-env"));
        assert_eq!(c.sslmode, SslMode::Disable);
        let c = parse("postgresql://u@h/db?sslmode=require", &env).unwrap();
        assert_eq!((c.hosts[0].as_str(), c.dbname.as_str()), ("h", "db"));
        assert_eq!(c.sslmode, SslMode::Require);
    }

    #[test]
    fn mistakes_are_named() {
        assert!(
            parse("postgresql://h/db?sslmode=sometimes", &no_env)
                .unwrap_err()
                .contains("sslmode")
        );
        assert!(
            parse("postgresql://h/db?colour=blue", &no_env)
                .unwrap_err()
                .contains("`colour`")
        );
        assert!(
            parse("host=h dbname", &no_env)
                .unwrap_err()
                .contains("`dbname`")
        );
        assert!(
            parse("postgresql://h:notaport/db", &no_env)
                .unwrap_err()
                .contains("port")
        );
    }
}
