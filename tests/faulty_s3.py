"""A fault-injecting HTTP proxy in front of the moto S3 server, for storage-failure tests.

Requests pass through unchanged unless a rule matches (method and a substring of the path): then the
proxy answers with a real S3 error response instead (503 SlowDown, 403 AccessDenied), `times` times, after
letting the first `after` matching requests through. `requests` records every request (method, path, Range);
`delays` holds back the requests whose path contains a key by its value in seconds (a slow store).
"""
from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ERRORS = {
    "SlowDown": (503, "Please reduce your request rate."),
    "AccessDenied": (403, "Access Denied"),
    "InternalError": (500, "We encountered an internal error. Please try again."),
}


@dataclass
class Rule:
    method: str
    path_contains: str
    code: str
    times: int = 10**9
    hits: int = 0
    after: int = 0  # matching requests let through before the rule answers
    seen: int = 0


class FaultyS3:
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.rules: list[Rule] = []
        self.requests: list[tuple[str, str, str | None]] = []
        self.delays: dict[str, float] = {}
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    proxy.requests.append((self.command, self.path, self.headers.get("Range")))
                time.sleep(max([s for part, s in proxy.delays.items() if part in self.path], default=0))
                rule = proxy.match(self.command, self.path)
                if rule is not None:
                    status, message = ERRORS[rule.code]
                    xml = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{rule.code}</Code>'
                           f"<Message>{message}</Message></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    self.wfile.write(xml)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = f"127.0.0.1:{proxy.upstream_port}"
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(k, v)
                # A HEAD answer has no body but must still tell the object's size.
                length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def match(self, method: str, path: str) -> Rule | None:
        with self.lock:
            for rule in self.rules:
                if rule.method == method and rule.path_contains in path and rule.hits < rule.times:
                    rule.seen += 1
                    if rule.seen > rule.after:
                        rule.hits += 1
                        return rule
        return None

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
