"""A fault-injecting HTTP proxy in front of a local S3 server (moto), for storage-fault tests.

Clients (boto3, delta-rs) talk to the proxy over real HTTP; it relays each request to the S3
server unless a rule matches it, in which case it answers what a failing S3 answers: an error
status with S3's XML error body (503 SlowDown, 500 InternalError, 403 AccessDenied), or a
connection reset (RST) after reading part of the request body, as a dying load balancer does
mid-upload. Rules match an HTTP method and a regular expression on the path (+ query).
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

ERRORS = {
    503: ("SlowDown", "Please reduce your request rate."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    403: ("AccessDenied", "Access Denied"),
}


@dataclass
class Rule:
    """Fail requests whose method is in ``methods`` and whose path matches ``path``.

    ``action``: an HTTP status from :data:`ERRORS`, or ``"reset"``. ``times``: how many matching
    requests fail (None: all of them). ``hits`` counts the failures injected.
    """

    methods: tuple[str, ...]
    path: str
    action: int | str
    times: int | None = None
    hits: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, method: str, path: str) -> bool:
        if method not in self.methods or not re.search(self.path, path):
            return False
        with self._lock:
            if self.times is not None and self.hits >= self.times:
                return False
            self.hits += 1
            return True


class FaultProxy:
    """``with FaultProxy(upstream) as proxy:`` then point clients at ``proxy.url``."""

    def __init__(self, upstream: str):
        self.upstream = urlparse(upstream)
        self.rules: list[Rule] = []
        self.requests: list[tuple[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                proxy.requests.append((self.command, self.path))
                rule = next((r for r in list(proxy.rules) if r.take(self.command, self.path)), None)
                if rule is not None and rule.action == "reset":
                    if length:
                        self.rfile.read(max(1, length // 2))  # part of the upload arrived
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()  # RST: the client sees "connection reset by peer"
                    self.close_connection = True
                    return
                body = self.rfile.read(length) if length else None
                if rule is not None:
                    code, message = ERRORS[rule.action]
                    payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                               f"<Message>{message}</Message><Resource>{self.path}</Resource>"
                               "<RequestId>fault-proxy</RequestId></Error>").encode()
                    self.send_response(rule.action)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                # A HEAD response carries the object's length without its body.
                self.send_header("Content-Length", resp.getheader("Content-Length", "0") if self.command == "HEAD"
                                 else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def fail(self, methods: str, path: str, action: int | str, times: int | None = None) -> Rule:
        """Add a rule, e.g. ``fail("GET", r"/silver/transactions/", 503)``."""
        rule = Rule(tuple(methods.split(",")), path, action, times)
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        self.rules.clear()

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
