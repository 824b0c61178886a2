"""GCP's hooks (registered in hooks.py): the preemption flag, and the VM's delete of itself."""

from __future__ import annotations

import json

from .hooks_http import _http, _metadata


def gcp_preempted(endpoints: dict[str, str]) -> str | None:
    flag = _metadata(
        "GET", f"{endpoints['gcp_metadata']}/instance/preempted", {"Metadata-Flavor": "Google"}
    )
    return "gcp instance/preempted is TRUE" if flag.decode().strip().upper() == "TRUE" else None


def gcp_delete_instance(endpoints: dict[str, str]) -> None:
    """Delete this VM with its own service account (allowed on this instance only)."""
    metadata, flavor = endpoints["gcp_metadata"], {"Metadata-Flavor": "Google"}
    token = json.loads(_http("GET", f"{metadata}/instance/service-accounts/default/token", flavor))
    project = _http("GET", f"{metadata}/project/project-id", flavor).decode().strip()
    zone = _http("GET", f"{metadata}/instance/zone", flavor).decode().strip().rpartition("/")[2]
    name = _http("GET", f"{metadata}/instance/name", flavor).decode().strip()
    url = f"{endpoints['gcp_api']}/projects/{project}/zones/{zone}/instances/{name}"
    _http("DELETE", url, {"Authorization": f"Bearer {token['access_token']}"})
