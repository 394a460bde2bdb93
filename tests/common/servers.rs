//! Real protocol peers on loopback for the handler tests: an HTTP server
//! (tiny_http) that records each request and answers as it is told, and an
//! SMTP server (mailin-embedded) that collects each mail.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use mailin_embedded::{Handler, Response, Server, SslConfig, response};

/// One request the HTTP server received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub url: String,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: String,
    /// When the server got it.
    pub received: std::time::Instant,
}

/// What the HTTP server answers: status, extra headers, body.
pub type Answer = (u16, Vec<(String, String)>, String);

/// A real HTTP server on a free loopback port, recording every request and
/// answering with `status` (and the body "mailbox full, try later"), or
/// with what `answer` says when one is set.
pub struct Hook {
    pub url: String,
    pub base: String,
    requests: Arc<Mutex<Vec<Request>>>,
    pub status: Arc<AtomicU16>,
}

impl Hook {
    pub fn start() -> Hook {
        Hook::answering(|_, status| (status, Vec::new(), "mailbox full, try later".to_owned()))
    }

    /// A server answering each request (given the status set in `status`)
    /// with what `answer` returns.
    pub fn answering(answer: impl Fn(&Request, u16) -> Answer + Send + 'static) -> Hook {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind");
        let port = server.server_addr().to_ip().expect("ip").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let (r, s) = (requests.clone(), status.clone());
        thread::spawn(move || {
            for mut req in server.incoming_requests() {
                let mut body = String::new();
                let _ = req.as_reader().read_to_string(&mut body);
                let headers = req
                    .headers()
                    .iter()
                    .map(|h| {
                        (
                            h.field.as_str().as_str().to_ascii_lowercase(),
                            h.value.as_str().to_owned(),
                        )
                    })
                    .collect();
                let request = Request {
                    method: req.method().as_str().to_owned(),
                    url: req.url().to_owned(),
                    headers,
                    body,
                    received: std::time::Instant::now(),
                };
                let (code, extra, text) = answer(&request, s.load(Ordering::SeqCst));
                r.lock().unwrap().push(request);
                let mut response = tiny_http::Response::from_string(text).with_status_code(code);
                for (name, value) in extra {
                    if let Ok(h) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
                    {
                        response.add_header(h);
                    }
                }
                let _ = req.respond(response);
            }
        });
        let base = format!("http://127.0.0.1:{port}");
        Hook {
            url: format!("{base}/hooks/spark"),
            base,
            requests,
            status,
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// A server answering 200 after `delay`, each request on a thread of
    /// its own (so that concurrent clients are served concurrently), with
    /// `hold` (if any) called first for each request (a test can make one
    /// hang).
    pub fn slow(
        delay: std::time::Duration,
        hold: impl Fn(&Request) + Send + Sync + 'static,
    ) -> Hook {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind"));
        let port = server.server_addr().to_ip().expect("ip").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let hold = Arc::new(hold);
        let (r, s) = (requests.clone(), status.clone());
        thread::spawn(move || {
            for mut req in server.incoming_requests() {
                let (r, s, hold) = (r.clone(), s.clone(), hold.clone());
                thread::spawn(move || {
                    let mut body = String::new();
                    let _ = req.as_reader().read_to_string(&mut body);
                    let headers = req
                        .headers()
                        .iter()
                        .map(|h| {
                            (
                                h.field.as_str().as_str().to_ascii_lowercase(),
                                h.value.as_str().to_owned(),
                            )
                        })
                        .collect();
                    let request = Request {
                        method: req.method().as_str().to_owned(),
                        url: req.url().to_owned(),
                        headers,
                        body,
                        received: std::time::Instant::now(),
                    };
                    hold(&request);
                    thread::sleep(delay);
                    r.lock().unwrap().push(request);
                    let code = s.load(Ordering::SeqCst);
                    let _ = req.respond(tiny_http::Response::empty(code));
                });
            }
        });
        let base = format!("http://127.0.0.1:{port}");
        Hook {
            url: format!("{base}/hooks/spark"),
            base,
            requests,
            status,
        }
    }

    /// How many requests each Idempotency-Key (event key) got.
    pub fn per_key(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for r in self.requests() {
            let key = r
                .headers
                .get("idempotency-key")
                .cloned()
                .unwrap_or_default();
            *counts.entry(key).or_insert(0) += 1;
        }
        counts
    }
}

/// One mail the SMTP server received: envelope and data.
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub data: Vec<u8>,
}

#[derive(Clone)]
struct Collector {
    current: Arc<Mutex<Received>>,
    received: Arc<Mutex<Vec<Received>>>,
    refuse: Arc<AtomicBool>,
}

impl Handler for Collector {
    fn mail(&mut self, _ip: std::net::IpAddr, _domain: &str, from: &str) -> Response {
        *self.current.lock().unwrap() = Received {
            from: from.to_owned(),
            ..Received::default()
        };
        response::OK
    }
    fn rcpt(&mut self, to: &str) -> Response {
        if self.refuse.load(Ordering::SeqCst) {
            return response::NO_MAILBOX;
        }
        self.current.lock().unwrap().to.push(to.to_owned());
        response::OK
    }
    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current.lock().unwrap().data.extend_from_slice(buf);
        Ok(())
    }
    fn data_end(&mut self) -> Response {
        let mail = std::mem::take(&mut *self.current.lock().unwrap());
        self.received.lock().unwrap().push(mail);
        response::OK
    }
}

/// A real SMTP server on a free loopback port.
pub struct Smtp {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    pub refuse: Arc<AtomicBool>,
}

impl Smtp {
    pub fn start() -> Smtp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let collector = Collector {
            current: Arc::default(),
            received: Arc::default(),
            refuse: Arc::default(),
        };
        let (received, refuse) = (collector.received.clone(), collector.refuse.clone());
        let mut server = Server::new(collector);
        server
            .with_name("smtp.test")
            .with_ssl(SslConfig::None)
            .unwrap()
            .with_tcp_listener(listener);
        thread::spawn(move || {
            let _ = server.serve();
        });
        Smtp {
            port,
            received,
            refuse,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The handler settings that send to this server.
    pub fn transport(&self) -> String {
        format!(
            "transport = \"smtp\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\nsmtp_security = \"none\"\ntimeout = \"5s\"",
            self.port
        )
    }
}
