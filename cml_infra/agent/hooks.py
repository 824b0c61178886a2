"""Per-cloud hooks of the agent: what it asks a cloud's metadata service and API.

Each is registered by the name a cloud's Boot gives it (clouds/*.py): spot interruption probes
in PREEMPTION_PROBES, self-destroy calls (`@name`) in SELF_DESTROY.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request

HTTP_TIMEOUT = 10.0
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


def aws_spot_notice(endpoints: dict[str, str]) -> str | None:
    base = endpoints["aws_metadata"]
    token = _http(
        "PUT", f"{base}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    ).decode()
    try:
        body = _http(
            "GET",
            f"{base}/latest/meta-data/spot/instance-action",
            {"X-aws-ec2-metadata-token": token},
        )
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    return f"aws spot instance-action {body.decode().strip()}"


def gcp_preempted(endpoints: dict[str, str]) -> str | None:
    flag = _http(
        "GET", f"{endpoints['gcp_metadata']}/instance/preempted", {"Metadata-Flavor": "Google"}
    )
    return "gcp instance/preempted is TRUE" if flag.decode().strip().upper() == "TRUE" else None


def azure_preempt_event(endpoints: dict[str, str]) -> str | None:
    url = f"{endpoints['azure_metadata']}/scheduledevents?api-version=2020-07-01"
    events = json.loads(_http("GET", url, {"Metadata": "true"})).get("Events", [])
    preempts = [e for e in events if e.get("EventType") == "Preempt"]
    return f"azure scheduled event Preempt at {preempts[0].get('NotBefore')}" if preempts else None


PREEMPTION_PROBES = {
    "aws-spot-notice": aws_spot_notice,
    "gcp-preempted": gcp_preempted,
    "azure-preempt-event": azure_preempt_event,
}


def _http(method: str, url: str, headers: dict[str, str]) -> bytes:
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
