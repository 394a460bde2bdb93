//! Sending mail by SMTP for the `mail` handler: a pool of open connections
//! per handler (one per call in flight, kept for the next mail), the SMTP
//! conversation on lettre's connection, and what the server's replies mean
//! for the next attempt.
//!
//! - Pooled: a connection is used for mail after mail (`RSET` after a
//!   refusal), so 1,000 mails are a handful of connections, not 1,000
//!   TLS handshakes. `smtp_pool = false` opens one per mail.
//! - One write for the message and its end (`<CRLF>.<CRLF>`): written
//!   apart, the short end waits for the server's delayed acknowledgement of
//!   the body (Nagle's algorithm), about 40 ms on every mail.
//! - Replies: 4xx (421, 450, 451, 452, ...) and lost connections are
//!   transient, tried again later; 5xx (550, 553, ...) are permanent: the
//!   delivery is dead at once, with the server's reply in the error.
//!
//! Not here: making the message (`mail.rs`).

use std::fmt;
use std::sync::Mutex;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{
    Certificate, CertificateStore, SmtpConnection, TlsParameters,
};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};

use super::config::{SmtpSecurity, SmtpServer};
use crate::handlers::{Failed, Retry};

/// A handler's SMTP connections.
pub struct Pool {
    server: SmtpServer,
    idle: Mutex<Vec<SmtpConnection>>,
}

/// The bytes of a command written as they are: the message with its end.
struct Raw<'a>(&'a str);

impl fmt::Display for Raw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// `message` dot-stuffed (a line starting with `.` gets another) and ended
/// with `<CRLF>.<CRLF>`, as DATA wants it.
pub fn data_payload(message: &[u8]) -> String {
    let text = String::from_utf8_lossy(message);
    let mut out = String::with_capacity(text.len() + 64);
    for (i, line) in text.split("\r\n").enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
    }
    if !out.ends_with("\r\n") {
        out.push_str("\r\n");
    }
    out.push_str(".\r\n");
    out
}

/// What an SMTP error means for the next attempt.
fn failed(server: &str, e: &lettre::transport::smtp::Error) -> Failed {
    let retry = if e.is_permanent() {
        Retry::Never
    } else {
        Retry::Later
    };
    Failed {
        error: format!("SMTP {server}: {e}"),
        retry,
    }
}

impl Pool {
    pub fn new(server: SmtpServer) -> Pool {
        Pool {
            server,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn name(&self) -> String {
        format!("{}:{}", self.server.host, self.server.port)
    }

    /// A new connection: connected, encrypted as configured, logged in.
    fn connect(&self) -> Result<SmtpConnection, lettre::transport::smtp::Error> {
        let s = &self.server;
        let hello = ClientId::default();
        let tls = || match &s.ca {
            None => TlsParameters::new(s.host.clone()),
            Some(ca) => TlsParameters::builder(s.host.clone())
                .certificate_store(CertificateStore::None)
                .add_root_certificate(Certificate::from_pem(&ca.pem)?)
                .build_rustls(),
        };
        let wrapper = match s.security {
            SmtpSecurity::Tls => Some(tls()?),
            _ => None,
        };
        let mut conn = SmtpConnection::connect(
            (s.host.as_str(), s.port),
            Some(s.timeout),
            &hello,
            wrapper.as_ref(),
            None,
        )?;
        if s.security == SmtpSecurity::StartTls {
            conn.starttls(&tls()?, &hello)?;
        }
        if let Some(user) = &s.user {
            let password = s
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default();
            conn.auth(
                DEFAULT_MECHANISMS,
                &Credentials::new(user.clone(), password),
            )?;
        }
        Ok(conn)
    }

    /// Sends one message: on a connection from the pool (or a new one),
    /// returned to the pool afterwards if it is still good.
    pub fn send(&self, envelope: &Envelope, message: &[u8]) -> Result<(), Failed> {
        let server = self.name();
        let pooled = if self.server.pool {
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
        } else {
            None
        };
        let (mut conn, reused) = match pooled {
            Some(conn) => (conn, true),
            None => (self.connect().map_err(|e| failed(&server, &e))?, false),
        };
        let mut outcome = transaction(&mut conn, envelope, message);
        // A kept connection the server closed meanwhile (or is closing:
        // 421) before it took the message: once more, on a new one. Once
        // the message was sent it is never sent again within the call (an
        // at-most-once handler is called once; the run records the rest).
        if reused
            && let Err((Stage::Envelope, e)) = &outcome
            && (conn.has_broken() || e.status().is_none_or(|c| c.to_string() == "421"))
        {
            conn = self.connect().map_err(|e| failed(&server, &e))?;
            outcome = transaction(&mut conn, envelope, message);
        }
        let keep = match &outcome {
            Ok(()) => true,
            // The server answered the end of the message: the transaction
            // is over, the next one can start (unless the server said it
            // is closing: 421).
            Err((Stage::Message, e)) => {
                e.status().is_some_and(|c| c.to_string() != "421") && !conn.has_broken()
            }
            // Refused before the message: the conversation goes on after a
            // reset.
            Err((Stage::Envelope, e)) => {
                e.status().is_some() && !conn.has_broken() && conn.command(Rset).is_ok()
            }
        };
        let outcome = outcome.map_err(|(_, e)| e);
        if keep && self.server.pool {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
        } else if keep {
            let _ = conn.quit();
        }
        // Otherwise the connection is dropped (closed) without waiting for
        // a server that may not answer any more.
        outcome.map_err(|e| failed(&server, &e))
    }
}

/// How far a transaction got when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before the message was written: nothing was sent.
    Envelope,
    /// The message was written (the server may have it).
    Message,
}

/// MAIL, RCPT for each recipient, DATA, and the message with its end in one
/// write.
fn transaction(
    conn: &mut SmtpConnection,
    envelope: &Envelope,
    message: &[u8],
) -> Result<(), (Stage, lettre::transport::smtp::Error)> {
    let at = |stage| move |e| (stage, e);
    let mut params = Vec::new();
    let info = conn.server_info();
    let non_ascii = envelope
        .from()
        .into_iter()
        .chain(envelope.to())
        .any(|a: &lettre::Address| !AsRef::<str>::as_ref(a).is_ascii());
    if non_ascii && info.supports_feature(Extension::SmtpUtfEight) {
        params.push(MailParameter::SmtpUtfEight);
    }
    if !message.is_ascii() && info.supports_feature(Extension::EightBitMime) {
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    conn.command(Mail::new(envelope.from().cloned(), params))
        .map_err(at(Stage::Envelope))?;
    for to in envelope.to() {
        conn.command(Rcpt::new(to.clone(), vec![]))
            .map_err(at(Stage::Envelope))?;
    }
    conn.command(Data).map_err(at(Stage::Envelope))?;
    conn.command(Raw(&data_payload(message)))
        .map_err(at(Stage::Message))?;
    Ok(())
}

impl Drop for Pool {
    fn drop(&mut self) {
        for mut conn in self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = conn.quit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_is_dot_stuffed_and_ended_once() {
        assert_eq!(
            data_payload(b"Subject: x\r\n\r\n.hidden\r\nok\r\n"),
            "Subject: x\r\n\r\n..hidden\r\nok\r\n.\r\n"
        );
        assert_eq!(data_payload(b"a\r\nb"), "a\r\nb\r\n.\r\n");
    }
}
