"""A local HTTP server for download tests (127.0.0.1, an ephemeral port, a thread).

``srv.routes[path] = {"body": bytes, "mode": "range" | "norange" | "truncate" | "sleep"}``; any
other path answers 404. ``range`` honours ``Range: bytes=N-`` (206 + Content-Range); ``norange``
ignores it; ``truncate`` announces every byte, sends half and closes; ``sleep`` waits
``route["sleep"]`` seconds (1.5) first. ``srv.requests`` records ``(path, Range header)``.
"""
from __future__ import annotations

import contextlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    timeout = 10

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        route = srv.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        body, mode = route["body"], route.get("mode", "range")
        try:
            if mode == "sleep":
                time.sleep(route.get("sleep", 1.5))
            start = int(rng.split("=")[1].split("-")[0]) if rng and mode == "range" else 0
            if start >= len(body) > 0:
                self.send_error(416)
                return
            data = body[start:]
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if mode == "truncate":  # announce every byte, send half, close
                data = data[: len(data) // 2]
                self.close_connection = True
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass


@contextlib.contextmanager
def serve(prefix: str = "", lifetime: float = 120):
    """The running server; ``srv.base`` is ``http://127.0.0.1:PORT`` + ``prefix``. It stops by itself
    after ``lifetime`` seconds even if the test hangs."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.routes, srv.requests = {}, []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    guard = threading.Timer(lifetime, srv.shutdown)
    guard.daemon = True
    guard.start()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}{prefix}"
    try:
        yield srv
    finally:
        guard.cancel()
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def closed_port_base() -> str:
    """``http://127.0.0.1:PORT`` where nothing listens (bound, then closed): connection refused."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def cache_files(home) -> list[str]:
    """Names in ``home``/weights (the download cache), lock files left out."""
    from pathlib import Path
    d = Path(home) / "weights"
    return sorted(p.name for p in d.iterdir() if not p.name.endswith(".lock")) if d.is_dir() else []
