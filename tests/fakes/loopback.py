"""What the loopback fakes share: serving a handler on 127.0.0.1 from a daemon thread."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Handler(BaseHTTPRequestHandler):
    """Hands every request to the fake that owns the server (its `_serve(handler)`)."""

    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _dispatch(self) -> None:
        self.server.fake._serve(self)

    do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = do_HEAD = _dispatch


class Server(ThreadingHTTPServer):
    daemon_threads = True


class Loopback:
    """A fake's server on a free loopback port; a context manager that stops it on exit."""

    url: str
    # Where it listens: a free port on 127.0.0.1, unless a fake must answer at a fixed address
    # (a cloud's metadata service at 169.254.169.254:80, inside a network namespace of its own).
    address: tuple[str, int] = ("127.0.0.1", 0)

    def _start_server(self, name: str) -> None:
        self._server: Any = Server(self.address, Handler)
        self._server.fake = self
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name=name, daemon=True
        )
        self._thread.start()
        self._closed = False

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
