#!/usr/bin/env python3
"""Delivery throughput of slow handlers: calls in flight and reused connections.

Usage: handlers.py SPARK_BIN [--reps 3] [--webhook-events 2000] [--delay-ms 20]
                   [--mails 1000] [--concurrency 1,4,16]
                   [--mail-concurrency 1,4]

Webhook: an SQLite database with WEBHOOK_EVENTS/2 challenges (each yields
challenge_created and challenge_inactivity_2d) and a loopback HTTP/1.1
server (keep-alive, a thread per connection) that answers each POST after
DELAY ms. One `spark process-sources` per setting of `concurrency`; the time
is from the start to the server's last answer.

Mail: MAILS challenges, a mail handler for challenge_created, and a loopback
SMTP server (a thread per connection, no TLS) that takes each mail at once
and counts connections. The pooled handler (default) against
`smtp_pool = false` (one connection per mail), at each of MAIL_CONCURRENCY.

Every key must arrive exactly once. Prints one line per run and Markdown
tables with medians and spreads (min-max) over REPS runs; exit 1 if a key
was lost or repeated.
"""
import argparse
import json
import os
import shutil
import socketserver
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


def smtp_server(counter):
    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            counter.connected()
            out = self.wfile
            out.write(b"220 smtp.bench ESMTP\r\n")
            message_id = None
            while True:
                line = self.rfile.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    out.write(b"250-smtp.bench\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
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


def mail(settings):
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
smtp_host = "127.0.0.1"
smtp_port = {port}
smtp_security = "none"
{settings}
"""


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
    for name, settings in [
        (f"pooled, concurrency {n}", f"concurrency = {n}") for n in args.mail_concurrency
    ] + [
        (f"one connection per mail, concurrency {n}", f"smtp_pool = false\nconcurrency = {n}")
        for n in args.mail_concurrency
    ]:
        runs = []
        for _ in range(args.reps):
            seconds, connections, ok = run_spark(spark, mail(settings), args.mails, args.mails,
                                                 smtp_server)
            failed |= not ok
            runs.append((args.mails / seconds, connections))
            print(f"mail {name}: seconds={seconds:.2f} mails_per_s={args.mails / seconds:.1f} "
                  f"connections={connections} ok={ok}", flush=True)
        mails.append((name, runs))

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
    print("| handler | mails/s | spread | vs one connection per mail (same concurrency) | connections |")
    print("| --- | ---: | ---: | ---: | ---: |")
    k = len(args.mail_concurrency)
    for j, (name, runs) in enumerate(mails):
        base = statistics.median(r for r, _ in mails[k + j % k][1])
        rates = [r for r, _ in runs]
        rate = statistics.median(rates)
        print(f"| {name} | {rate:.1f} | {spread(rates)} | {rate / base:.2f}x | "
              f"{max(c for _, c in runs)} |")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
