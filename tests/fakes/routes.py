"""A loopback server answering from a table of routes, for the agent's calls to metadata
servers and cloud APIs; it records every request.

`routes` maps (method, path) to (status, body) or (status, body, required headers): a request
without those headers gets 400. A body that is not a string is sent as JSON.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from tests.fakes.loopback import Loopback


class Routes(Loopback):
    def __init__(self, routes: dict[tuple[str, str], tuple[Any, ...]]) -> None:
        self.routes = routes
        self.requests: list[dict[str, Any]] = []
        self._start_server("routes")
        self.base = self.url

    def _serve(self, handler: Any) -> None:
        parsed = urllib.parse.urlsplit(handler.path)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        self.requests.append(
            {
                "method": handler.command,
                "path": parsed.path,
                "query": urllib.parse.parse_qs(parsed.query),
                "headers": headers,
            }
        )
        route = self.routes.get((handler.command, parsed.path), (404, "not found"))
        status, body = route[0], route[1]
        required = route[2] if len(route) > 2 else {}
        if any(headers.get(k.lower()) != v for k, v in required.items()):
            status, body = 400, "missing header"
        data = body if isinstance(body, str) else json.dumps(body)
        handler.send_response(status)
        handler.send_header(
            "Content-Type", "application/json" if data[:1] in "[{" else "text/plain"
        )
        handler.send_header("Content-Length", str(len(data.encode())))
        handler.end_headers()
        handler.wfile.write(data.encode())
