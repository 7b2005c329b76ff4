"""A real OpenAI-compatible server for tests, and a fault-injecting proxy in front of it.

`LLMServer` runs `transformers serve` (transformers' serving extra) on 127.0.0.1, serving a local model
folder. `FaultyLLM` forwards each request to it unless a fault is queued: then it answers 429 or 500 with a
real error body, or holds the request without answering (a hung server), once per queued fault. It counts
requests and keeps the Authorization headers it saw, so tests can check what the client sent.
"""
from __future__ import annotations

import http.client
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.ports import free_port


class LLMServer:
    def __init__(self, model_dir: str, log: Path):
        self.model = model_dir
        self.port = free_port()
        self.log = open(log, "wb")
        serve = Path(sys.executable).parent / "transformers"
        self.proc = subprocess.Popen(
            [str(serve), "serve", "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu", model_dir],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {self.proc.returncode}; see {log}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"transformers serve did not come up in 180 s; see {log}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class FaultyLLM:
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.faults: list[str] = []  # "429", "500" or "hang", consumed one per request
        self.requests = 0
        self.authorization: set[str] = set()
        self.lock = threading.Lock()
        self.release = threading.Event()  # ends every hung request
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._forward(b"")

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy.lock:
                    proxy.requests += 1
                    proxy.authorization.add(self.headers.get("Authorization", ""))
                    fault = proxy.faults.pop(0) if proxy.faults else None
                if fault == "hang":
                    proxy.release.wait(120)
                    self.close_connection = True
                    return
                if fault in ("429", "500"):
                    payload = (b'{"error": {"message": "injected", "type": "rate_limit"}}' if fault == "429"
                               else b'{"error": {"message": "injected", "type": "server_error"}}')
                    self.send_response(int(fault))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    if fault == "429":
                        self.send_header("Retry-After", "0.2")
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                self._forward(body)

            def _forward(self, body: bytes):
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                r = conn.getresponse()
                data = r.read()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
