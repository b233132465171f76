"""A media server on 127.0.0.1 for tests and the fetch benchmark: Range requests, and every way a host fails.

Paths name their behaviour, so one clip list can mix good and bad endpoints:

    /ok/<name>                  the file, with `Range` support (206 + Content-Range), as a real server does
    /delay/<ms>/<name>          the file, after waiting ms milliseconds (each wait is logged in `waits`)
    /status/<code>/<name>       always that HTTP status (429 carries `Retry-After: <retry_after>`)
    /flaky/<n>/<name>           HTTP 503 for the first n requests of this path, then the file
    /hang/<name>                accepts the connection and never answers (until the server stops)
    /cut/<name>                 headers for the whole file, then only half of the body and a closed socket
    /norange/<name>             the file whole with 200 to every request, no `Accept-Ranges` (Python's http.server)
    /drop/<name>                as /norange/, but the connection closes after half of the body
    /slow/<ms>/<name>           as /norange/, the body in 64 KiB pieces, ms milliseconds apart
    /badseek/<name>             206 to `Range: bytes=0-`, yet the whole file with 200 to any other range
    /redirect/<n>/<path>        302 to /redirect/<n-1>/<path>, and at 0 to /<path>
    /redirect-file/<name>       302 to file:///etc/passwd
    /html/<name>                an HTML page (200, text/html)
    /garbage/<name>             200 with `Content-Type: video/mp4` and bytes that are no container

It is also an HTTP proxy for itself: a request for `http://any.host/<path>` is answered as `/<path>` and
counted in `proxied`. Every request's Cookie header is kept in `cookies`.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass  # the test output stays clean; requests are counted in `hits`

    def do_HEAD(self):
        self._answer(head=True)

    def do_GET(self):
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        owner = self.server.owner
        proxied = self.path.startswith("http://")
        path = urlsplit(self.path).path if proxied else self.path.split("?", 1)[0]
        arrived = time.monotonic()
        with owner.lock:
            owner.hits[path] += 1
            owner.proxied += proxied
            owner.cookies.append(self.headers.get("Cookie"))
            hit = owner.hits[path]
        parts = path.strip("/").split("/")
        kind, name = parts[0], parts[-1]
        if kind == "delay":
            time.sleep(int(parts[1]) / 1000)
            with owner.lock:
                owner.waits.append((path, arrived, time.monotonic()))
        if kind == "redirect":
            rest = "/".join(parts[2:])
            target = f"/redirect/{int(parts[1]) - 1}/{rest}" if int(parts[1]) > 0 else f"/{rest}"
            return self._plain(302, b"moved\n", {"Location": target}, head)
        if kind == "redirect-file":
            return self._plain(302, b"moved\n", {"Location": "file:///etc/passwd"}, head)
        if kind == "status":
            headers = {"Retry-After": str(owner.retry_after)} if parts[1] == "429" else {}
            return self._plain(int(parts[1]), b"error page\n", headers, head)
        if kind == "flaky" and hit <= int(parts[1]):
            return self._plain(503, b"busy\n", {}, head)
        if kind == "hang":
            owner.stopping.wait(owner.hang_s)
            self.close_connection = True
            return None
        if kind == "html":
            return self._plain(200, b"<!DOCTYPE html><html><body>not a video</body></html>\n",
                               {"Content-Type": "text/html; charset=utf-8"}, head)
        if kind == "garbage":
            return self._plain(200, bytes(range(256)) * 64, {"Content-Type": "video/mp4"}, head)
        data = owner.files.get(name)
        if data is None or kind not in ("ok", "flaky", "cut", "delay", "norange", "drop", "slow", "badseek"):
            return self._plain(404, b"not found\n", {}, head)
        if kind in ("norange", "drop", "slow"):
            return self._whole(data, head, cut=kind == "drop", pause_s=int(parts[1]) / 1000 if kind == "slow" else 0)
        self._file(data, head, cut=kind == "cut", seeks=kind != "badseek")

    def _plain(self, status: int, body: bytes, headers: dict[str, str], head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", headers.pop("Content-Type", "text/plain"))
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _file(self, data: bytes, head: bool, cut: bool, seeks: bool = True) -> None:
        start, end = 0, len(data) - 1
        match = _RANGE_RE.match(self.headers.get("Range", ""))
        if match and not seeks and match.group(1) != "0":
            match = None  # a broken host: only the range from 0 is honoured
        if match and (match.group(1) or match.group(2)):
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), end) if match.group(2) else end
            else:  # suffix range: the last N bytes
                start = max(0, len(data) - int(match.group(2)))
            if start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            with self.server.owner.lock:
                self.server.owner.range_starts[self.path].append(start)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if head:
            return
        body = data[start:end + 1]
        if cut:
            body = body[: len(body) // 2]
            self.close_connection = True
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client stopped reading (a seek): normal for media players

    def _whole(self, data: bytes, head: bool, cut: bool, pause_s: float) -> None:
        """What a server without range support answers: 200 and the whole file, whatever was asked."""
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if head:
            return
        body = data[: len(data) // 2] if cut else data
        self.close_connection = cut
        try:
            for offset in range(0, len(body), 1 << 16):
                self.wfile.write(body[offset:offset + (1 << 16)])
                if pause_s:
                    self.wfile.flush()
                    if self.server.owner.stopping.wait(pause_s):
                        break
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (a time limit): normal


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: MediaServer


class MediaServer:
    """Serves `files` (name -> bytes) on 127.0.0.1 at an ephemeral port; use as a context manager."""

    def __init__(self, files: dict[str, bytes] | None = None, retry_after: int = 1, hang_s: float = 60.0):
        self.files = dict(files or {})
        self.retry_after, self.hang_s = retry_after, hang_s
        self.hits: Counter[str] = Counter()
        self.range_starts: defaultdict[str, list[int]] = defaultdict(list)  # first byte of each Range request
        self.waits: list[tuple[str, float, float]] = []  # (path, arrival, answer) of /delay requests, monotonic
        self.proxied = 0
        self.cookies: list[str | None] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def add_file(self, path: Path, name: str | None = None) -> str:
        name = name or path.name
        self.files[name] = path.read_bytes()
        return name

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/{path.lstrip('/')}"

    def __enter__(self) -> MediaServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
