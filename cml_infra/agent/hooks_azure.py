"""Azure's hooks (registered in hooks.py): the Preempt event, and the delete of the VM's
resource group."""

from __future__ import annotations

import json
import urllib.parse

from .hooks_http import _http, _metadata


def azure_preempt_event(endpoints: dict[str, str]) -> str | None:
    url = f"{endpoints['azure_metadata']}/scheduledevents?api-version=2020-07-01"
    events = json.loads(_metadata("GET", url, {"Metadata": "true"})).get("Events", [])
    preempts = [e for e in events if e.get("EventType") == "Preempt"]
    return f"azure scheduled event Preempt at {preempts[0].get('NotBefore')}" if preempts else None


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
