"""A small threaded HTTP proxy for tests and benchmarks: forwards every request to one upstream server,
after ``latency`` seconds (a uniform draw from a range), and answers a share of requests with a fault
instead: HTTP 503, or a connection closed without an answer."""

from __future__ import annotations

import http.client
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

__all__ = ["Proxy"]

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade", "content-length"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that hung up (as clients of a faulty server do) is not news


class Proxy:
    """Serve on 127.0.0.1 in a background thread; ``endpoint`` is its URL. Use as a context manager.

    Parameters
    ----------
    upstream : str
        ``http://host:port`` of the real server.
    latency : (float, float)
        Seconds added to each request, drawn uniformly from this range.
    error_rate, drop_rate : float
        Shares of requests answered with 503, or with a closed connection, instead of being forwarded.
    seed : int
        Seed of the draws, so that a test's faults repeat.

    Examples
    --------
    >>> with Proxy("http://127.0.0.1:9", error_rate=0.1) as proxy:   # doctest: +SKIP
    ...     print(proxy.endpoint, proxy.counts)
    """

    def __init__(self, upstream: str, latency: tuple[float, float] = (0.0, 0.0), error_rate: float = 0.0,
                 drop_rate: float = 0.0, seed: int = 0):
        self.upstream = urlsplit(upstream)
        self.latency = latency
        self.error_rate = error_rate
        self.drop_rate = drop_rate
        self.counts = {"forwarded": 0, "503": 0, "dropped": 0}
        #: bytes of response bodies sent back to the clients
        self.bytes_out = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._local = threading.local()
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="imgtools-proxy", daemon=True)

    def __enter__(self) -> Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _draw(self) -> tuple[float, str]:
        with self._lock:
            delay = self._random.uniform(*self.latency)
            x = self._random.random()
            fate = "503" if x < self.error_rate else "dropped" if x < self.error_rate + self.drop_rate else "forwarded"
            self.counts[fate] += 1
        return delay, fate

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        return conn

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    data = b""
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        if not size:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self) -> None:
                body = self._body()
                delay, fate = proxy._draw()
                if delay:
                    threading.Event().wait(delay)
                if fate == "dropped":
                    self.close_connection = True
                    self.connection.close()
                    return
                if fate == "503":
                    payload = b'{"error": {"code": 503, "message": "injected fault"}}'
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                headers["Content-Length"] = str(len(body))
                for attempt in range(2):  # a kept-alive upstream connection may have gone stale
                    conn = proxy._connection()
                    try:
                        conn.request(self.command, self.path, body=body, headers=headers)
                        response = conn.getresponse()
                        data = response.read()
                        break
                    except (http.client.HTTPException, OSError):
                        conn.close()
                        proxy._local.conn = None
                        if attempt:
                            raise
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP:
                        self.send_header(key, value)
                # a HEAD answer has no body but states the object's length: pass that on as it is
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length if length is not None else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                    with proxy._lock:
                        proxy.bytes_out += len(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _forward

        return Handler
