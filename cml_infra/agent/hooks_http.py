"""What the cloud hooks (hooks_*.py) share: a client of the metadata server, and of the cloud
API.

The probes run every few seconds for the instance's whole life, so they ask the metadata
server (plain HTTP on a link-local address, never through a proxy) with a socket of their own
(`_metadata`); urllib, with http.client, email and ssl, would add about 8 MiB to an agent that
otherwise takes 14. The self-destroys, once at the end and over HTTPS, use urllib (`_http`),
imported then.
"""

from __future__ import annotations

import urllib.parse

HTTP_TIMEOUT = 10.0
# A metadata answer is a few hundred bytes; anything past this is not one.
METADATA_REPLY_LIMIT = 1 << 20


class HTTPStatusError(OSError):
    """A metadata server answered with a status other than 2xx."""

    def __init__(self, code: int, url: str) -> None:
        super().__init__(f"HTTP {code} from {url}")
        self.code = code


def _metadata(method: str, url: str, headers: dict[str, str]) -> bytes:
    """One HTTP/1.1 request to a metadata server over a socket of its own; the body of a 2xx
    answer, else HTTPStatusError (OSError). Errors never quote the answer: it may hold a token.
    """
    import socket

    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"a metadata server is asked over plain http, not {url}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close",
             "Accept-Encoding: identity"]  # fmt: skip
    if method in ("PUT", "POST"):
        lines.append("Content-Length: 0")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    reply = bytearray()
    with socket.create_connection((parts.hostname, parts.port or 80), HTTP_TIMEOUT) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        while chunk := conn.recv(65536):
            reply += chunk
            if len(reply) > METADATA_REPLY_LIMIT:
                raise ValueError(f"the answer of {url} is over {METADATA_REPLY_LIMIT} bytes")
    head, end, body = bytes(reply).partition(b"\r\n\r\n")
    status, *fields = head.decode("latin-1").split("\r\n")
    version, _, rest = status.partition(" ")
    if not end or not version.startswith("HTTP/") or not rest[:3].isdigit():
        raise ValueError(f"{url} did not answer in HTTP")
    found = {name.strip().lower(): value.strip() for name, _, value in
             (field.partition(":") for field in fields)}  # fmt: skip
    if "chunked" in found.get("transfer-encoding", "").lower():
        body = _unchunk(body)
    elif found.get("content-length", "").isdigit():
        body = body[: int(found["content-length"])]
    code = int(rest[:3])
    if not 200 <= code < 300:
        raise HTTPStatusError(code, url)
    return body


def _unchunk(data: bytes) -> bytes:
    """A body sent with `Transfer-Encoding: chunked`, joined."""
    out = bytearray()
    while True:
        size, end, data = data.partition(b"\r\n")
        if not end:
            raise ValueError("a chunked answer ended early")
        length = int(size.split(b";")[0], 16)
        if length == 0:
            return bytes(out)
        out += data[:length]
        data = data[length + 2 :]


def _http(method: str, url: str, headers: dict[str, str]) -> bytes:
    import urllib.request

    request = urllib.request.Request(url, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
        body: bytes = response.read()
        return body
