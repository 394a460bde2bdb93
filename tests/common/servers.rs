//! Real protocol peers on loopback for the handler tests: an HTTP server
//! (tiny_http) that records each request and answers as it is told, and an
//! SMTP server (mailin-embedded) that collects each mail.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
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
    /// The most requests a slow server had in hand at once.
    pub most_at_once: Arc<AtomicUsize>,
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
            most_at_once: Arc::default(),
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// A server answering 200 (or the status set in `status`) after
    /// `delay`, each connection on a thread of its own (so that concurrent
    /// clients are served concurrently, as a real receiver would), keeping
    /// connections alive; `hold` is called first for each request (a test
    /// can make one hang). Plain HTTP/1.1 on a `TcpListener`: tiny_http
    /// let some concurrent requests wait for its own timeouts.
    pub fn slow(
        delay: std::time::Duration,
        hold: impl Fn(&Request) + Send + Sync + 'static,
    ) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let hold: Arc<dyn Fn(&Request) + Send + Sync> = Arc::new(hold);
        let most_at_once = Arc::new(AtomicUsize::new(0));
        let in_hand = Arc::new(AtomicUsize::new(0));
        let (r, s, most) = (requests.clone(), status.clone(), most_at_once.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (r, s, hold) = (r.clone(), s.clone(), hold.clone());
                let (most, in_hand) = (most.clone(), in_hand.clone());
                thread::spawn(move || {
                    let mut reader = BufReader::new(match stream.try_clone() {
                        Ok(s) => s,
                        Err(_) => return,
                    });
                    let mut writer = stream;
                    while let Some(request) = read_request(&mut reader) {
                        let now = in_hand.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        hold(&request);
                        thread::sleep(delay);
                        r.lock().unwrap().push(request);
                        let code = s.load(Ordering::SeqCst);
                        in_hand.fetch_sub(1, Ordering::SeqCst);
                        let answer = format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\n\r\n");
                        if writer.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let base = format!("http://127.0.0.1:{port}");
        Hook {
            url: format!("{base}/hooks/spark"),
            base,
            requests,
            status,
            most_at_once,
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

/// Reads one HTTP/1.1 request (with a `content-length` body); `None` at
/// the end of the connection.
fn read_request(reader: &mut BufReader<std::net::TcpStream>) -> Option<Request> {
    let mut line = String::new();
    reader.read_line(&mut line).ok().filter(|n| *n > 0)?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let url = parts.next()?.to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok().filter(|n| *n > 0)?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        url,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        received: std::time::Instant::now(),
    })
}

/// One mail the SMTP server received: envelope and data.
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub data: Vec<u8>,
}

/// Cloned for each connection: `current` is that connection's mail.
#[derive(Clone)]
struct Collector {
    current: Received,
    received: Arc<Mutex<Vec<Received>>>,
    refuse: Arc<AtomicBool>,
    replies: Arc<Mutex<VecDeque<(u16, String)>>>,
    data_replies: Arc<Mutex<VecDeque<(u16, String)>>>,
    hellos: Arc<AtomicUsize>,
}

impl Handler for Collector {
    fn helo(&mut self, _ip: std::net::IpAddr, _domain: &str) -> Response {
        self.hellos.fetch_add(1, Ordering::SeqCst);
        response::OK
    }
    fn mail(&mut self, _ip: std::net::IpAddr, _domain: &str, from: &str) -> Response {
        self.current = Received {
            from: from.to_owned(),
            ..Received::default()
        };
        response::OK
    }
    fn rcpt(&mut self, to: &str) -> Response {
        if self.refuse.load(Ordering::SeqCst) {
            return response::NO_MAILBOX;
        }
        if let Some((code, text)) = self.replies.lock().unwrap().pop_front() {
            return Response::custom(code, text);
        }
        self.current.to.push(to.to_owned());
        response::OK
    }
    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current.data.extend_from_slice(buf);
        Ok(())
    }
    fn data_end(&mut self) -> Response {
        let mail = std::mem::take(&mut self.current);
        if let Some((code, text)) = self.data_replies.lock().unwrap().pop_front() {
            return Response::custom(code, text);
        }
        self.received.lock().unwrap().push(mail);
        response::OK
    }
}

/// A real SMTP server on a free loopback port.
pub struct Smtp {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    pub refuse: Arc<AtomicBool>,
    replies: Arc<Mutex<VecDeque<(u16, String)>>>,
    data_replies: Arc<Mutex<VecDeque<(u16, String)>>>,
    hellos: Arc<AtomicUsize>,
}

impl Smtp {
    pub fn start() -> Smtp {
        Smtp::with_ssl(SslConfig::None)
    }

    /// A server offering STARTTLS with a certificate for `localhost` that
    /// it made itself; returns the server and that certificate (PEM), which
    /// a client must be told to trust.
    pub fn start_tls(dir: &std::path::Path) -> (Smtp, String) {
        // Both of rustls's providers are built into the tests (through
        // mailin-embedded): say which.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = made.cert.pem();
        let (cert_path, key_path) = (dir.join("smtp-cert.pem"), dir.join("smtp-key.pem"));
        std::fs::write(&cert_path, &cert).unwrap();
        std::fs::write(&key_path, made.signing_key.serialize_pem()).unwrap();
        let smtp = Smtp::with_ssl(SslConfig::SelfSigned {
            cert_path: cert_path.display().to_string(),
            key_path: key_path.display().to_string(),
        });
        (smtp, cert)
    }

    fn with_ssl(ssl: SslConfig) -> Smtp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let collector = Collector {
            current: Received::default(),
            received: Arc::default(),
            refuse: Arc::default(),
            replies: Arc::default(),
            data_replies: Arc::default(),
            hellos: Arc::default(),
        };
        let received = collector.received.clone();
        let refuse = collector.refuse.clone();
        let replies = collector.replies.clone();
        let data_replies = collector.data_replies.clone();
        let hellos = collector.hellos.clone();
        let mut server = Server::new(collector);
        server
            .with_name("smtp.test")
            .with_ssl(ssl)
            .unwrap()
            .with_num_threads(16)
            .with_tcp_listener(listener);
        thread::spawn(move || {
            let _ = server.serve();
        });
        Smtp {
            port,
            received,
            refuse,
            replies,
            data_replies,
            hellos,
        }
    }

    /// The replies to the next recipients (RCPT), in order, instead of 250.
    pub fn reply_next(&self, replies: &[(u16, &str)]) {
        self.replies
            .lock()
            .unwrap()
            .extend(replies.iter().map(|(c, t)| (*c, (*t).to_owned())));
    }

    /// The replies to the next mails' ends (after DATA), in order, instead
    /// of 250 (a mail answered so is not kept). mailin-embedded stays in
    /// its DATA state after such a reply, so a client must not use that
    /// connection again (a 421 says as much).
    pub fn reply_after_data(&self, replies: &[(u16, &str)]) {
        self.data_replies
            .lock()
            .unwrap()
            .extend(replies.iter().map(|(c, t)| (*c, (*t).to_owned())));
    }

    /// How many connections said hello.
    pub fn connections(&self) -> usize {
        self.hellos.load(Ordering::SeqCst)
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
