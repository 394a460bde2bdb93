#!/usr/bin/env python3
"""Delivery throughput of slow handlers: calls in flight and reused connections.

Usage: handlers.py SPARK_BIN [--reps 3] [--webhook-events 2000] [--delay-ms 20]
                   [--mails 1000] [--concurrency 1,4,16]
                   [--mail-concurrency 1,4] [--mail-security starttls,none]

Webhook: an SQLite database with WEBHOOK_EVENTS/2 challenges (each yields
challenge_created and challenge_inactivity_2d) and a loopback HTTP/1.1
server (keep-alive, a thread per connection) that answers each POST after
DELAY ms. One `spark process-sources` per setting of `concurrency`; the time
is from the start to the server's last answer.

Mail: MAILS challenges, a mail handler for challenge_created, and a loopback
SMTP server (a thread per connection) that takes each mail at once and
counts connections: with STARTTLS (as relays require; a certificate for
localhost made with openssl, given to spark in `smtp_ca_file`) and without
TLS. The pooled handler (default) against `smtp_pool = false` (one
connection per mail), at each of MAIL_CONCURRENCY.

Every key must arrive exactly once. Prints one line per run and Markdown
tables with medians and spreads (min-max) over REPS runs; exit 1 if a key
was lost or repeated.
"""
import argparse
import json
import os
import shutil
import socketserver
import ssl
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

QUERY = ("SELECT c.*, (SELECT count(*) FROM donation d WHERE d.challenge_id = c.id) "
         "AS donation_count FROM challenge c")


class Counter:
    def __init__(self):
        self.lock = threading.Lock()
        self.keys = {}
        self.last = 0.0
        self.connections = 0

    def hit(self, key):
        with self.lock:
            self.keys[key] = self.keys.get(key, 0) + 1
            self.last = time.monotonic()

    def connected(self):
        with self.lock:
            self.connections += 1


def http_server(counter, delay):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            counter.connected()

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            self.rfile.read(length)
            time.sleep(delay)
            counter.hit(self.headers.get("Idempotency-Key", ""))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def smtp_server(counter, tls=None):
    """An SMTP server; with `tls` (an ssl.SSLContext) it offers STARTTLS."""
    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            counter.connected()
            out = self.wfile
            out.write(b"220 smtp.bench ESMTP\r\n")
            out.flush()
            message_id = None
            while True:
                line = self.rfile.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    starttls = b"250-STARTTLS\r\n" if tls and not hasattr(self, "tls") else b""
                    out.write(b"250-smtp.bench\r\n" + starttls + b"250-8BITMIME\r\n250 SMTPUTF8\r\n")
                elif verb == b"STAR" and tls:
                    out.write(b"220 go ahead\r\n")
                    out.flush()
                    self.tls = tls.wrap_socket(self.connection, server_side=True)
                    self.rfile = self.tls.makefile("rb")
                    self.wfile = out = self.tls.makefile("wb")
                    continue
                elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                    out.write(b"250 OK\r\n")
                elif verb == b"DATA":
                    out.write(b"354 go ahead\r\n")
                    out.flush()
                    message_id = None
                    while True:
                        data = self.rfile.readline()
                        if not data or data == b".\r\n":
                            break
                        if data.lower().startswith(b"message-id:"):
                            message_id = data.split(b":", 1)[1].strip().decode()
                    counter.hit(message_id or "")
                    out.write(b"250 OK queued\r\n")
                elif verb == b"QUIT":
                    out.write(b"221 bye\r\n")
                    out.flush()
                    return
                else:
                    out.write(b"502 not implemented\r\n")
                out.flush()

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def make_db(path, n):
    db = sqlite3.connect(path)
    db.executescript(f"""
        CREATE TABLE challenge (id INTEGER PRIMARY KEY, title TEXT NOT NULL, user_email TEXT NOT NULL,
          is_active INTEGER NOT NULL, start_date TEXT NOT NULL, end_date TEXT NOT NULL);
        CREATE TABLE donation (id INTEGER PRIMARY KEY, challenge_id INTEGER NOT NULL, amount INTEGER NOT NULL);
        WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {n})
        INSERT INTO challenge SELECT i, 'challenge ' || i, 'u' || i || '@example.org', 1,
          '2026-01-01', '2026-06-01' FROM c;""")
    db.commit()
    db.close()


def run_spark(spark, handler, records, expected, server_for):
    counter = Counter()
    server = server_for(counter)
    work = tempfile.mkdtemp(prefix="spark-handlers-")
    try:
        make_db(os.path.join(work, "app.sqlite3"), records)
        config = os.path.join(work, "spark.toml")
        with open(config, "w") as f:
            f.write(f"""
[database]
path = "app.sqlite3"

[[sources]]
name = "challenges"
function = "challenge_events"
query = {json.dumps(QUERY)}

{handler(server.server_address[1])}
""")
        started = time.monotonic()
        proc = subprocess.run([spark, "--config", config, "-q", "process-sources",
                               "--as-of", "2026-03-10"], capture_output=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr.decode(errors="replace"))
        seconds = counter.last - started
        received = sum(counter.keys.values())
        unique = len(counter.keys)
        ok = proc.returncode == 0 and unique == expected and received == expected
        return seconds, counter.connections, ok
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(work, ignore_errors=True)


def webhook(concurrency):
    return lambda port: f"""
[[handlers]]
name = "hook"
group = "^challenge"
kind = "webhook"
url = "http://127.0.0.1:{port}/hook"
concurrency = {concurrency}
"""


def mail(settings, ca=None):
    security = (f'smtp_host = "localhost"\nsmtp_security = "starttls"\nsmtp_ca_file = {json.dumps(ca)}'
                if ca else 'smtp_host = "127.0.0.1"\nsmtp_security = "none"')
    return lambda port: f"""
[[handlers]]
name = "mail"
group = "created"
kind = "mail"
from = "spark@example.org"
to = "{{{{ challenge.user_email }}}}"
subject = "Your challenge {{{{ challenge.title }}}}"
body = "Hello {{{{ challenge.user_email }}}}, good luck!"
transport = "smtp"
smtp_port = {port}
{security}
{settings}
"""


def tls_context(folder):
    """A private CA and a certificate for localhost it signed (made with
    openssl); returns a server context and the CA's file."""
    path = lambda name: os.path.join(folder, name)
    openssl = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bench CA",
            "-keyout", path("ca.key"), "-out", path("ca.pem"))
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
            "-keyout", path("key.pem"), "-out", path("req.pem"))
    with open(path("ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", path("req.pem"), "-CA", path("ca.pem"), "-CAkey", path("ca.key"),
            "-CAcreateserial", "-days", "2", "-extfile", path("ext.cnf"), "-out", path("cert.pem"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(path("cert.pem"), path("key.pem"))
    return context, path("ca.pem")


def spread(values):
    return f"{min(values):.2f}-{max(values):.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("spark")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--webhook-events", type=int, default=2000)
    ap.add_argument("--delay-ms", type=float, default=20)
    ap.add_argument("--mails", type=int, default=1000)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--mail-concurrency", default="1,4",
                    type=lambda v: [int(x) for x in v.split(",")])
    ap.add_argument("--mail-security", default="starttls,none",
                    type=lambda v: v.split(","))
    args = ap.parse_args()
    spark = os.path.abspath(args.spark)
    failed = False

    hooks = []
    for n in [int(x) for x in args.concurrency.split(",")]:
        runs = []
        for _ in range(args.reps):
            seconds, connections, ok = run_spark(
                spark, webhook(n), args.webhook_events // 2, args.webhook_events,
                lambda c: http_server(c, args.delay_ms / 1000))
            failed |= not ok
            runs.append((args.webhook_events / seconds, connections))
            print(f"webhook concurrency={n} seconds={seconds:.2f} "
                  f"events_per_s={args.webhook_events / seconds:.1f} connections={connections} ok={ok}",
                  flush=True)
        hooks.append((n, runs))

    mails = []
    certs = tempfile.mkdtemp(prefix="spark-handlers-tls-")
    context, ca = tls_context(certs)
    for security in args.mail_security:
        tls = security == "starttls"
        for pooled in (True, False):
            for n in args.mail_concurrency:
                name = (f"{security}, {'pooled' if pooled else 'one connection per mail'}, "
                        f"concurrency {n}")
                settings = f"concurrency = {n}" + ("" if pooled else "\nsmtp_pool = false")
                runs = []
                for _ in range(args.reps):
                    seconds, connections, ok = run_spark(
                        spark, mail(settings, ca if tls else None), args.mails, args.mails,
                        lambda c: smtp_server(c, context if tls else None))
                    failed |= not ok
                    runs.append((args.mails / seconds, connections))
                    print(f"mail {name}: seconds={seconds:.2f} mails_per_s={args.mails / seconds:.1f} "
                          f"connections={connections} ok={ok}", flush=True)
                mails.append(((security, pooled, n), name, runs))
    shutil.rmtree(certs, ignore_errors=True)

    print()
    print(f"Webhook, {args.webhook_events} events, server answering after {args.delay_ms:g} ms "
          f"(median of {args.reps}; spread min-max):")
    print()
    print("| concurrency | events/s | spread | vs concurrency 1 | connections |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    base = statistics.median(r for r, _ in hooks[0][1])
    for n, runs in hooks:
        rates = [r for r, _ in runs]
        rate = statistics.median(rates)
        print(f"| {n} | {rate:.1f} | {spread(rates)} | {rate / base:.2f}x | "
              f"{max(c for _, c in runs)} |")
    print()
    print(f"Mail, {args.mails} mails to a loopback SMTP server (median of {args.reps}):")
    print()
    print("| handler | mails/s | spread | vs one connection per mail (same security, concurrency) | connections |")
    print("| --- | ---: | ---: | ---: | ---: |")
    rates = {key: statistics.median(r for r, _ in runs) for key, _, runs in mails}
    for (security, pooled, n), name, runs in mails:
        values = [r for r, _ in runs]
        base = rates[(security, False, n)]
        print(f"| {name} | {rates[(security, pooled, n)]:.1f} | {spread(values)} | "
              f"{rates[(security, pooled, n)] / base:.2f}x | {max(c for _, c in runs)} |")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
