"""Per-cloud hooks of the agent: what it asks a cloud's metadata service and API.

Each is registered by the name a cloud's Boot gives it (clouds/*.py): spot interruption probes
in PREEMPTION_PROBES, self-destroy calls (`@name`) in SELF_DESTROY.

The probes run every few seconds for the instance's whole life, so they ask the metadata
server (plain HTTP on a link-local address, never through a proxy) with a socket of their own
(`_metadata`); urllib, with http.client, email and ssl, would add about 8 MiB to an agent that
otherwise takes 14. The self-destroys, once at the end and over HTTPS, use urllib, imported
then.
"""

from __future__ import annotations

import json
import time
import urllib.parse

HTTP_TIMEOUT = 10.0
# A metadata answer is a few hundred bytes; anything past this is not one.
METADATA_REPLY_LIMIT = 1 << 20
DEFAULT_ENDPOINTS = {
    "gcp_metadata": "http://metadata.google.internal/computeMetadata/v1",
    "gcp_api": "https://compute.googleapis.com/compute/v1",
    "azure_metadata": "http://169.254.169.254/metadata",
    "azure_api": "https://management.azure.com",
    "aws_metadata": "http://169.254.169.254",
}


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"[cml-infra agent {stamp}] {message}", flush=True)


class HTTPStatusError(OSError):
    """A metadata server answered with a status other than 2xx."""

    def __init__(self, code: int, url: str) -> None:
        super().__init__(f"HTTP {code} from {url}")
        self.code = code


def aws_spot_notice(endpoints: dict[str, str]) -> str | None:
    base = endpoints["aws_metadata"]
    token = _metadata(
        "PUT", f"{base}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    ).decode()
    try:
        body = _metadata(
            "GET",
            f"{base}/latest/meta-data/spot/instance-action",
            {"X-aws-ec2-metadata-token": token},
        )
    except HTTPStatusError as exc:
        if exc.code == 404:
            return None
        raise
    return f"aws spot instance-action {body.decode().strip()}"


def gcp_preempted(endpoints: dict[str, str]) -> str | None:
    flag = _metadata(
        "GET", f"{endpoints['gcp_metadata']}/instance/preempted", {"Metadata-Flavor": "Google"}
    )
    return "gcp instance/preempted is TRUE" if flag.decode().strip().upper() == "TRUE" else None


def azure_preempt_event(endpoints: dict[str, str]) -> str | None:
    url = f"{endpoints['azure_metadata']}/scheduledevents?api-version=2020-07-01"
    events = json.loads(_metadata("GET", url, {"Metadata": "true"})).get("Events", [])
    preempts = [e for e in events if e.get("EventType") == "Preempt"]
    return f"azure scheduled event Preempt at {preempts[0].get('NotBefore')}" if preempts else None


PREEMPTION_PROBES = {
    "aws-spot-notice": aws_spot_notice,
    "gcp-preempted": gcp_preempted,
    "azure-preempt-event": azure_preempt_event,
}


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


def gcp_delete_instance(endpoints: dict[str, str]) -> None:
    """Delete this VM with its own service account (allowed on this instance only)."""
    metadata, flavor = endpoints["gcp_metadata"], {"Metadata-Flavor": "Google"}
    token = json.loads(_http("GET", f"{metadata}/instance/service-accounts/default/token", flavor))
    project = _http("GET", f"{metadata}/project/project-id", flavor).decode().strip()
    zone = _http("GET", f"{metadata}/instance/zone", flavor).decode().strip().rpartition("/")[2]
    name = _http("GET", f"{metadata}/instance/name", flavor).decode().strip()
    url = f"{endpoints['gcp_api']}/projects/{project}/zones/{zone}/instances/{name}"
    _http("DELETE", url, {"Authorization": f"Bearer {token['access_token']}"})


def azure_delete_resource_group(endpoints: dict[str, str]) -> None:
    """Delete this runner's resource group (VM included) with the VM's managed identity."""
    metadata, header = endpoints["azure_metadata"], {"Metadata": "true"}
    resource = urllib.parse.quote("https://management.azure.com/", safe="")
    token_url = f"{metadata}/identity/oauth2/token?api-version=2018-02-01&resource={resource}"
    token = json.loads(_http("GET", token_url, header))
    compute = json.loads(
        _http("GET", f"{metadata}/instance/compute?api-version=2021-02-01", header)
    )
    url = (
        f"{endpoints['azure_api']}/subscriptions/{compute['subscriptionId']}"
        f"/resourceGroups/{compute['resourceGroupName']}?api-version=2021-04-01"
    )
    _http("DELETE", url, {"Authorization": f"Bearer {token['access_token']}"})


SELF_DESTROY = {
    "@gcp-delete-instance": gcp_delete_instance,
    "@azure-delete-resource-group": azure_delete_resource_group,
}
