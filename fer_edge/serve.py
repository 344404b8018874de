"""A small local web page for watching a stream from a machine with no display (a Pi, a robot)
over SSH port-forwarding: ``GET /`` a page with the live picture and the latest results,
``GET /stream.mjpg`` the annotated frames as a multipart JPEG stream, ``GET /faces`` the latest
results as JSON.

Standard library only (``http.server``): one page and two endpoints need no web framework, and
the on-device SDK keeps its three dependencies. Bounded: at most ``max_clients`` streams at
once (more get 503), each frame is encoded once whatever the number of viewers, and a viewer
slower than the camera skips frames rather than queueing them. ``close()`` ends every stream
and frees the port. Binds to 127.0.0.1 unless told otherwise: the page has no authentication.
"""

from __future__ import annotations

import html
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from .errors import InputError

BOUNDARY = "fer-edge-frame"
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>fer-edge live</title>
<style>
body {{ background: #111; color: #ddd; font-family: sans-serif; margin: 1em; }}
img {{ max-width: 100%; border: 1px solid #444; }}
pre {{ font-size: 12px; }}
</style></head>
<body>
<h3>fer-edge: {source}</h3>
<img id="stream" src="/stream.mjpg" alt="live stream">
<pre id="faces">waiting for results...</pre>
<script>
async function poll() {{
  try {{
    const r = await fetch("/faces", {{cache: "no-store"}});
    const j = await r.json();
    document.getElementById("faces").textContent = JSON.stringify(j, null, 1);
  }} catch (e) {{}}
  setTimeout(poll, 500);
}}
poll();
</script>
</body></html>
"""


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``PORT`` or ``HOST:PORT`` -> (host, port); InputError for anything else."""
    host, sep, port = str(text).rpartition(":")
    host = host.strip("[]") if sep else default_host
    if not port.isdigit() or not 0 <= int(port) <= 65535 or (sep and not host):
        raise InputError(
            f"--serve takes PORT or HOST:PORT (e.g. 8000 or 0.0.0.0:8000), got {text!r}"
        )
    return host, int(port)


class LiveView:
    """Serves the newest published frame and results; ``publish()`` from the inference loop."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        source: str = "",
        max_clients: int = 4,
        quality: int = 80,
    ):
        self.source = source
        self.quality = int(quality)
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._faces: dict = {"frame": None, "faces": []}
        self._seq = 0
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(max_clients)
        try:
            self._server = ThreadingHTTPServer((host, port), self._handler())
        except OSError as e:
            raise InputError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/"

    def publish(self, image: np.ndarray, record: dict) -> None:
        """The newest annotated BGR frame and its results (a JSON-ready dict)."""
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            return
        with self._cond:
            self._jpeg, self._faces = buf.tobytes(), record
            self._seq += 1
            self._cond.notify_all()

    def close(self) -> None:
        """End every stream and free the port."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LiveView:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _next_frame(self, seen: int) -> tuple[int, bytes | None]:
        with self._cond:
            self._cond.wait_for(lambda: self._seq != seen or self._stop.is_set(), timeout=1.0)
            return self._seq, self._jpeg

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        view = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "fer-edge"

            def log_message(self, *args) -> None:  # no line per request on the console
                pass

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path in ("/", "/index.html"):
                    page = PAGE.format(source=html.escape(view.source))
                    self._send(200, page.encode(), "text/html; charset=utf-8")
                elif path == "/faces":
                    with view._cond:
                        body = json.dumps(view._faces).encode()
                    self._send(200, body, "application/json")
                elif path == "/stream.mjpg":
                    self._stream()
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _stream(self) -> None:
                if not view._slots.acquire(blocking=False):
                    self._send(503, b"too many viewers\n", "text/plain")
                    return
                try:
                    self.send_response(200)
                    self.send_header(
                        "Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}"
                    )
                    self.send_header("Cache-Control", "no-store")
                    self.end_headers()
                    # The boundary goes right after each frame: a browser shows a part when the
                    # next boundary arrives, so a still photo's only frame would never show.
                    self.wfile.write(f"--{BOUNDARY}\r\n".encode())
                    seen = -1
                    while not view._stop.is_set():
                        seq, jpeg = view._next_frame(seen)
                        if jpeg is None:
                            continue
                        # The same frame again after a second without a new one keeps the
                        # connection alive through proxies and SSH tunnels.
                        seen = seq
                        self.wfile.write(
                            f"Content-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                            + jpeg
                            + f"\r\n--{BOUNDARY}\r\n".encode()
                        )
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the viewer went away
                finally:
                    view._slots.release()

        return Handler
