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

    def _start_server(self, name: str) -> None:
        self._server: Any = Server(("127.0.0.1", 0), Handler)
        self._server.fake = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
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
