"""A fake Azure Resource Manager, in-process, at the HTTP level of azure-core.

`FakeArm(subscription)` is an azure-core `HttpTransport`: a client built with
`transport=FakeArm(...)` keeps its whole pipeline (headers, bearer-token policy, retries,
paging, long-running-operation polling, error mapping) and only the last step, sending bytes
to https://management.azure.com, is replaced by a dispatch to the handlers below. No socket is
ever opened. Responses are `requests.Response` objects built with requests' own
`HTTPAdapter.build_response` around an in-memory urllib3 response, wrapped the way
`azure.core.pipeline.transport.RequestsTransport` wraps a real one.

The fake answers, for its one subscription:

* `GET  /subscriptions/{sub}/resourcegroups` with `$filter` (`tagName eq '...'`, optionally
  `and tagValue eq '...'`, as ARM documents it), `$top` and paging through `nextLink`
  (`page_size=` sets the page length; the continuation is an opaque `$skiptoken`);
* `GET|HEAD /subscriptions/{sub}/resourcegroups/{name}` (200/204, or 404 ResourceGroupNotFound);
* `GET  /subscriptions/{sub}/resources` (the resources of every group, `add_resource()`/`add_vm()`)
  with `$filter` `resourceType eq '...'` or the same tag filter as groups (then, as ARM
  documents, without each resource's tags), `$top` and paging as above; any other filter, or a
  combination ARM does not document (a type and a tag), is a violation;
* `DELETE /subscriptions/{sub}/resourcegroups/{name}` as ARM does: 202 with `Location`
  (and `Azure-AsyncOperation` when `lro="azure-async-operation"`) and `Retry-After`; the group
  is then `Deleting`, the poll URL answers "in progress" `pending_polls` times and then
  "succeeded", and the group is gone, with every resource in it. A missing group is 404
  ResourceGroupNotFound. `remove_resource()` deletes one resource alone, as a Spot eviction with
  the Delete policy deletes the VM and leaves its group.

Errors have ARM's `{"error": {"code", "message"}}` shape. `fail(status, code)` makes matching
requests fail that way (403 AuthorizationFailed, say). Every request must be HTTPS to
management.azure.com, carry `Authorization: Bearer <token>` and an `api-version` query;
anything else the fake did not expect is appended to `arm.violations`, which tests assert is
empty. `sleep()` (which azure-core's retry and LRO polling call on the transport) records the
delay in `arm.sleeps` and returns at once, so a Retry-After of 15 s costs nothing.

`FakeCredential` is a token credential whose `get_token()` returns a fixed `AccessToken`.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import requests
import urllib3
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import HttpTransport, RequestsTransportResponse
from azure.core.rest import HttpRequest as RestHttpRequest
from requests.adapters import HTTPAdapter

from tests.fakes.loopback import Loopback

ARM_HOST = "management.azure.com"
DATA = Path(__file__).resolve().parent.parent / "data"
SKUS_SPEC = DATA / "azure-resourceskus-subset.json"
PRICES_SCHEMA = DATA / "azure-retail-prices-schema.json"
ARM_SCOPE = f"https://{ARM_HOST}/.default"
DEFAULT_TOKEN = "fake-token"
JSON_TYPE = "application/json; charset=utf-8"
# Far enough that azure-core never refreshes the token during a test.
FAR_FUTURE = 4102444800  # 2100-01-01T00:00:00Z

_API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")
# An OData string literal: '...' with '' standing for one quote.
_LITERAL = r"'((?:[^']|'')*)'"
_TAG_FILTER = re.compile(
    rf"\s*tagName\s+eq\s+{_LITERAL}(?:\s+and\s+tagValue\s+eq\s+{_LITERAL})?\s*", re.I
)
_LOCATION_FILTER = re.compile(rf"\s*location\s+eq\s+{_LITERAL}\s*", re.I)
_TYPE_FILTER = re.compile(rf"\s*resourceType\s+eq\s+{_LITERAL}\s*", re.I)
_LIST_PARAMS = frozenset({"api-version", "$filter", "$top", "$skiptoken"})
VM_TYPE = "Microsoft.Compute/virtualMachines"
_REASONS = {
    200: "OK",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
}


class FakeCredential:
    """A TokenCredential: `get_token()` returns `AccessToken(token, FAR_FUTURE)`; the scopes
    asked for are kept in `.scopes` (one tuple per call)."""

    def __init__(self, token: str = DEFAULT_TOKEN) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, FAR_FUTURE)


@dataclass
class _Operation:
    group: str
    polls_left: int
    done: bool = False


@dataclass
class _Fault:
    status: int
    code: str
    message: str
    method: str | None
    path: re.Pattern[str] | None
    times: int | None
    retry_after: int | None = None


@dataclass
class _Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class FakeArm(HttpTransport):  # type: ignore[type-arg]
    """Azure Resource Manager for resource groups and the resources in them, as an azure-core
    transport; see the module docstring. State: `.groups` (name → group JSON as ARM returns
    it), `.resources` (id → resource JSON), `.requests` ((method, url) in order),
    `.violations`, `.sleeps`, `.polls`."""

    def __init__(
        self,
        subscription: str = "sub-1",
        *,
        token: str = DEFAULT_TOKEN,
        page_size: int | None = None,
        lro: str = "location",
        pending_polls: int = 1,
        retry_after: int = 15,
        api_version: str | None = None,
    ) -> None:
        if lro not in ("location", "azure-async-operation"):
            raise ValueError(f"lro must be 'location' or 'azure-async-operation', not {lro!r}")
        self.subscription = subscription
        self.token = token
        self.page_size = page_size
        self.lro = lro
        self.pending_polls = pending_polls
        self.retry_after = retry_after
        # When set, every request must use exactly this api-version (polls included).
        self.api_version = api_version
        self.groups: dict[str, dict[str, Any]] = {}
        self.resources: dict[str, dict[str, Any]] = {}
        # Resource SKUs (Microsoft.Compute/skus) as ARM lists them: see add_sku().
        self.skus: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.violations: list[str] = []
        self.sleeps: list[float] = []
        self.polls = 0
        self.opened = 0
        self.closed = 0
        self.is_open = False
        self._faults: list[_Fault] = []
        self._operations: dict[str, _Operation] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    # -----------------------------------------------------------------------------------------
    # Test helpers.

    def add_group(
        self,
        name: str,
        location: str = "eastus",
        tags: Mapping[str, str] | None = None,
        *,
        provisioning_state: str = "Succeeded",
    ) -> dict[str, Any]:
        """Create (or replace) a resource group as ARM would list it; return its JSON."""
        group: dict[str, Any] = {
            "id": f"/subscriptions/{self.subscription}/resourceGroups/{name}",
            "name": name,
            "type": "Microsoft.Resources/resourceGroups",
            "location": location,
            "properties": {"provisioningState": provisioning_state},
        }
        if tags is not None:
            group["tags"] = dict(tags)
        with self._lock:
            existing = self._find(name)
            if existing is not None:
                del self.groups[existing]
            self.groups[name] = group
        return group

    def add_resource(
        self,
        group: str,
        resource_type: str,
        name: str,
        tags: Mapping[str, str] | None = None,
        *,
        location: str | None = None,
    ) -> dict[str, Any]:
        """Create a resource in an existing group (its id spells the group as given here: ARM's
        ids do not always keep a group's case); return its JSON as ARM lists it."""
        with self._lock:
            key = self._find(group)
            if key is None:
                raise ValueError(f"no resource group {group!r} to put {name!r} in")
            resource: dict[str, Any] = {
                "id": f"/subscriptions/{self.subscription}/resourceGroups/{group}"
                f"/providers/{resource_type}/{name}",
                "name": name,
                "type": resource_type,
                "location": location or self.groups[key]["location"],
            }
            if tags is not None:
                resource["tags"] = dict(tags)
            self.resources[resource["id"]] = resource
        return resource

    def add_vm(
        self, group: str, name: str = "vm", tags: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        return self.add_resource(group, VM_TYPE, name, tags)

    def remove_resource(self, resource_id: str) -> None:
        """Delete one resource and nothing else (a Spot VM evicted with the Delete policy)."""
        with self._lock:
            del self.resources[resource_id]

    def add_sku(
        self,
        name: str,
        zones: Mapping[str, Sequence[str]],
        *,
        resource_type: str = "virtualMachines",
        restricted: Sequence[str] = (),
        restricted_zones: Mapping[str, Sequence[str]] | None = None,
        reason: str = "NotAvailableForSubscription",
    ) -> list[dict[str, Any]]:
        """List a size in locations (location → its zones), one entry per location as ARM lists
        VM sizes; `restricted` locations and `restricted_zones` (location → zones) carry the
        `restrictions` ARM gives a subscription that may not use them. Returns the entries."""
        entries = []
        for location, location_zones in zones.items():
            restrictions: list[dict[str, Any]] = []
            if location in restricted:
                restrictions.append(
                    {
                        "type": "Location",
                        "values": [location],
                        "restrictionInfo": {"locations": [location]},
                        "reasonCode": reason,
                    }
                )
            shut = (restricted_zones or {}).get(location)
            if shut:
                restrictions.append(
                    {
                        "type": "Zone",
                        "values": [location],
                        "restrictionInfo": {"locations": [location], "zones": list(shut)},
                        "reasonCode": reason,
                    }
                )
            info: dict[str, Any] = {"location": location, "zones": list(location_zones)}
            if location_zones:
                info["zoneDetails"] = []
            entry = {
                "resourceType": resource_type,
                "name": name,
                "tier": name.split("_", 1)[0],
                "size": name.split("_", 1)[-1],
                "family": f"standard{name.split('_')[1].rstrip('0123456789')}Family"
                if "_" in name
                else name,
                "locations": [location],
                "locationInfo": [info],
                "capabilities": [{"name": "vCPUs", "value": "4"}],
                "restrictions": restrictions,
            }
            entries.append(entry)
        with self._lock:
            self.skus.extend(entries)
        return entries

    def in_group(self, group: str) -> list[dict[str, Any]]:
        """The resources in `group` (case-insensitive)."""
        return [r for r in self.resources.values() if _group_of(r["id"]) == group.lower()]

    def fail(
        self,
        status: int,
        code: str,
        message: str | None = None,
        *,
        method: str | None = None,
        path: str | None = None,
        times: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Answer matching requests (by method, and by a regex searched in the path) with an ARM
        error `status`/`code`, `times` times or until `clear_faults()`; with a `Retry-After`
        header when `retry_after` is given (ARM's throttling: 429 with Retry-After)."""
        if message is None:
            message = (
                f"The client 'ci@example.com' with object id '{uuid.UUID(int=1)}' does not have "
                "authorization to perform this action or the scope is invalid."
                if code == "AuthorizationFailed"
                else f"{code} (injected by FakeArm)"
            )
        with self._lock:
            self._faults.append(
                _Fault(
                    status,
                    code,
                    message,
                    method.upper() if method else None,
                    re.compile(path) if path else None,
                    times,
                    retry_after,
                )
            )

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def requests_for(self, method: str, path_contains: str = "") -> list[str]:
        """The URLs of recorded requests with this method whose URL contains the text."""
        return [u for m, u in self.requests if m == method.upper() and path_contains in u]

    # -----------------------------------------------------------------------------------------
    # The HttpTransport contract.

    def __enter__(self) -> FakeArm:
        self.open()
        return self

    def __exit__(self, *args: object) -> None:
        self.close()

    def open(self) -> None:
        if not self.is_open:
            self.is_open = True
            self.opened += 1

    def close(self) -> None:
        if self.is_open:
            self.is_open = False
            self.closed += 1

    def sleep(self, duration: float) -> None:
        """azure-core asks the transport to sleep (retry back-off, LRO polling): record only."""
        self.sleeps.append(duration)

    def send(self, request: Any, **kwargs: Any) -> Any:
        """Answer an azure-core request (`azure.core.rest.HttpRequest` or the legacy
        `azure.core.pipeline.transport.HttpRequest`) with a response of the matching kind."""
        self.open()
        method = request.method.upper()
        url = request.url
        headers = {k.lower(): v for k, v in dict(request.headers).items()}
        with self._lock:
            self.requests.append((method, url))
            reply = self._handle(method, url, headers)
        return self._response(request, method, url, reply, stream=bool(kwargs.get("stream")))

    # -----------------------------------------------------------------------------------------
    # Dispatch.

    def _violation(self, message: str) -> None:
        self.violations.append(message)

    def _handle(self, method: str, url: str, headers: dict[str, str]) -> _Reply:
        parts = urlsplit(url)
        where = f"{method} {parts.path}"
        if parts.scheme != "https" or parts.netloc.lower() != ARM_HOST:
            self._violation(f"{where}: sent to {parts.scheme}://{parts.netloc}, not ARM")
        query = parse_qs(parts.query, keep_blank_values=True)
        for key, values in query.items():
            if len(values) > 1:
                self._violation(f"{where}: query parameter {key!r} repeated: {values}")
        params = {key: values[-1] for key, values in query.items()}

        authorization = headers.get("authorization")
        if authorization != f"Bearer {self.token}":
            self._violation(f"{where}: Authorization is {authorization!r}, not a Bearer token")
            if not authorization:
                return _error(
                    401,
                    "AuthenticationFailed",
                    "Authentication failed. The 'Authorization' header is missing.",
                )
            return _error(401, "InvalidAuthenticationToken", "The access token is invalid.")
        version = params.get("api-version")
        if not version:
            self._violation(f"{where}: no api-version query parameter")
            return _error(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        if not _API_VERSION.fullmatch(version):
            self._violation(f"{where}: api-version {version!r} is not a date")
        elif self.api_version is not None and version != self.api_version:
            self._violation(f"{where}: api-version {version} instead of {self.api_version}")

        fault = self._fault(method, parts.path)
        if fault is not None:
            return fault

        segments = [s for s in parts.path.split("/") if s]
        if len(segments) < 2 or segments[0].lower() != "subscriptions":
            return self._unknown(where)
        if segments[1] != self.subscription:
            self._violation(f"{where}: subscription {segments[1]!r}, not {self.subscription!r}")
            return _error(
                404, "SubscriptionNotFound", f"The subscription '{segments[1]}' could not be found."
            )
        rest = [s.lower() for s in segments[2:]]
        if rest == ["providers", "microsoft.compute", "skus"]:
            if method != "GET":
                return self._not_allowed(where)
            return self._list_skus(where, params)
        if rest == ["resourcegroups"]:
            if method != "GET":
                return self._not_allowed(where)
            return self._list(where, params)
        if rest == ["resources"]:
            if method != "GET":
                return self._not_allowed(where)
            return self._list_resources(where, params)
        if len(rest) == 2 and rest[0] == "resourcegroups":
            name = segments[3]
            if method == "GET":
                return self._get(name)
            if method == "HEAD":
                return _Reply(204) if self._find(name) is not None else _Reply(404)
            if method == "DELETE":
                return self._delete(where, name, params)
            return self._not_allowed(where)
        if len(rest) == 2 and rest[0] in ("operationresults", "operationstatuses"):
            if method != "GET":
                return self._not_allowed(where)
            return self._poll(where, url, rest[0], segments[3])
        return self._unknown(where)

    def _fault(self, method: str, path: str) -> _Reply | None:
        for fault in self._faults:
            if fault.method not in (None, method):
                continue
            if fault.path is not None and not fault.path.search(path):
                continue
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
            reply = _error(fault.status, fault.code, fault.message)
            if fault.retry_after is not None:
                reply.headers["Retry-After"] = str(fault.retry_after)
            return reply
        return None

    def _unknown(self, where: str) -> _Reply:
        self._violation(f"{where}: not an endpoint FakeArm serves")
        return _error(404, "InvalidResourceType", f"{where}: no such resource type (FakeArm)")

    def _not_allowed(self, where: str) -> _Reply:
        self._violation(f"{where}: method not supported")
        return _error(405, "MethodNotAllowed", f"{where}: method not allowed")

    def _find(self, name: str) -> str | None:
        """Resource group names are case-insensitive in ARM."""
        for key in self.groups:
            if key.lower() == name.lower():
                return key
        return None

    # -----------------------------------------------------------------------------------------
    # Resource groups.

    def _list(self, where: str, params: dict[str, str]) -> _Reply:
        def groups(filter_: str | None) -> list[dict[str, Any]] | _Reply:
            found = list(self.groups.values())
            if filter_ is None:
                return found
            tag = _tag_filter(filter_)
            if tag is None:
                return self._bad_filter(where, filter_)
            return [g for g in found if _has_tag(g, *tag)]

        return self._paged(where, params, "resourcegroups", groups)

    def _list_resources(self, where: str, params: dict[str, str]) -> _Reply:
        def resources(filter_: str | None) -> list[dict[str, Any]] | _Reply:
            found = list(self.resources.values())
            if filter_ is None:
                return found
            by_type = _TYPE_FILTER.fullmatch(filter_)
            if by_type is not None:
                wanted = by_type.group(1).replace("''", "'").lower()
                return [r for r in found if r["type"].lower() == wanted]
            tag = _tag_filter(filter_)
            if tag is None:
                return self._bad_filter(where, filter_)
            # "When you filter by a tag name and value, the tags for each resource are not
            # returned in the results" (ARM's Resources - List).
            return [{k: v for k, v in r.items() if k != "tags"} for r in found if _has_tag(r, *tag)]

        return self._paged(where, params, "resources", resources)

    def _list_skus(self, where: str, params: dict[str, str]) -> _Reply:
        """ResourceSkus_List, checked against tests/data/azure-resourceskus-subset.json: the
        query parameters the operation describes (our continuation's `$skiptoken` aside), its
        api-version, the one filter it documents (`location eq '...'`), and the response body
        against its schema."""
        operation = _skus_operation()
        version = operation["api-version"]
        if params.get("api-version") != version:
            self._violation(f"{where}: api-version {params.get('api-version')}, not {version}")
        for key in params:
            if key not in operation["query"] and key != "$skiptoken":
                self._violation(f"{where}: query parameter {key!r} not in ResourceSkus_List")
        page_params = {k: v for k, v in params.items() if k != "includeExtendedLocations"}

        def skus(filter_: str | None) -> list[dict[str, Any]] | _Reply:
            if filter_ is None:
                return list(self.skus)
            match = _LOCATION_FILTER.fullmatch(filter_)
            if match is None:
                return self._bad_filter(where, filter_)
            location = match.group(1).replace("''", "'").lower()
            return [s for s in self.skus if location in (x.lower() for x in s["locations"])]

        reply = self._paged(where, page_params, "providers/Microsoft.Compute/skus", skus)
        if reply.status == 200:
            for error in _skus_validator().iter_errors(reply.body):
                self._violation(f"{where}: response: {error.message} at {list(error.path)}")
        return reply

    def _bad_filter(self, where: str, filter_: str) -> _Reply:
        self._violation(f"{where}: unsupported $filter {filter_!r}")
        return _error(
            400,
            "InvalidFilterInQueryString",
            f"Invalid $filter '{filter_}' specified in the query string.",
        )

    def _paged(
        self,
        where: str,
        params: dict[str, str],
        collection: str,
        select: Callable[[str | None], list[dict[str, Any]] | _Reply],
    ) -> _Reply:
        """A page of what `select($filter)` finds, with a `nextLink` while more are left."""
        for key in params:
            if key not in _LIST_PARAMS:
                self._violation(f"{where}: unexpected query parameter {key!r}")
        offset = 0
        filter_ = params.get("$filter")
        top = params.get("$top")
        if "$skiptoken" in params:
            try:
                state = json.loads(_unb64(params["$skiptoken"]))
                offset, filter_, top = state["offset"], state["filter"], state["top"]
            except (ValueError, KeyError, TypeError):
                self._violation(f"{where}: $skiptoken {params['$skiptoken']!r} was not ours")
                return _error(400, "InvalidSkipToken", "The skip token is invalid.")
        found = select(filter_)
        if isinstance(found, _Reply):
            return found
        if top is not None:
            if not str(top).isdigit():
                self._violation(f"{where}: $top {top!r} is not a number")
                return _error(400, "InvalidTopInQueryString", f"Invalid $top '{top}'.")
            found = found[: int(top)]
        end = len(found) if self.page_size is None else offset + self.page_size
        body: dict[str, Any] = {"value": [json.loads(json.dumps(g)) for g in found[offset:end]]}
        if end < len(found):
            token = _b64(json.dumps({"offset": end, "filter": filter_, "top": top}))
            query = urlencode({"api-version": params["api-version"], "$skiptoken": token})
            body["nextLink"] = (
                f"https://{ARM_HOST}/subscriptions/{self.subscription}/{collection}?{query}"
            )
        return _Reply(200, body)

    def _get(self, name: str) -> _Reply:
        key = self._find(name)
        if key is None:
            return _group_not_found(name)
        return _Reply(200, self.groups[key])

    def _delete(self, where: str, name: str, params: dict[str, str]) -> _Reply:
        for key in params:
            if key not in ("api-version", "forceDeletionTypes"):
                self._violation(f"{where}: unexpected query parameter {key!r}")
        key = self._find(name)
        if key is None:
            return _group_not_found(name)
        self.groups[key]["properties"]["provisioningState"] = "Deleting"
        operation_id = _b64(f"RESOURCEGROUPDELETIONJOB-{next(self._ids)}-{key.upper()}")
        self._operations[operation_id] = _Operation(key, self.pending_polls)
        headers = {"Retry-After": str(self.retry_after)}
        version = quote(params["api-version"])
        base = f"https://{ARM_HOST}/subscriptions/{self.subscription}"
        headers["Location"] = f"{base}/operationresults/{operation_id}?api-version={version}"
        if self.lro == "azure-async-operation":
            headers["Azure-AsyncOperation"] = (
                f"{base}/operationstatuses/{operation_id}?api-version={version}"
            )
        return _Reply(202, None, headers)

    def _poll(self, where: str, url: str, kind: str, operation_id: str) -> _Reply:
        self.polls += 1
        operation = self._operations.get(operation_id)
        if operation is None:
            self._violation(f"{where}: unknown operation")
            return _error(404, "OperationNotFound", "The operation could not be found.")
        if not operation.done and operation.polls_left > 0:
            operation.polls_left -= 1
            status = "InProgress"
        else:
            if not operation.done:
                key = self._find(operation.group)
                if key is not None:
                    del self.groups[key]
                    for resource in self.in_group(key):
                        del self.resources[resource["id"]]
                operation.done = True
            status = "Succeeded"
        if kind == "operationstatuses":
            headers = {"Retry-After": str(self.retry_after)} if status == "InProgress" else {}
            return _Reply(200, {"id": operation_id, "status": status}, headers)
        if status == "InProgress":
            return _Reply(202, None, {"Retry-After": str(self.retry_after), "Location": url})
        return _Reply(200)

    # -----------------------------------------------------------------------------------------
    # Responses.

    def _response(self, request: Any, method: str, url: str, reply: _Reply, *, stream: bool) -> Any:
        body = b"" if reply.body is None else json.dumps(reply.body).encode()
        headers = {
            "Cache-Control": "no-cache",
            "Pragma": "no-cache",
            "Expires": "-1",
            "x-ms-request-id": str(uuid.uuid4()),
            "x-ms-correlation-request-id": str(uuid.uuid4()),
            "Date": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()),
            "Content-Length": str(len(body)),
            **reply.headers,
        }
        if reply.body is not None:
            headers["Content-Type"] = JSON_TYPE
        if method == "HEAD":
            body = b""
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(body),
            headers=headers,
            status=reply.status,
            reason=_REASONS.get(reply.status, ""),
            preload_content=False,
            decode_content=False,
            request_method=method,
            request_url=url,
        )
        prepared = requests.Request(method, url, headers=dict(request.headers)).prepare()
        response = HTTPAdapter().build_response(prepared, raw)
        if isinstance(request, RestHttpRequest):
            # What RequestsTransport.send does for azure.core.rest requests.
            from azure.core.rest._requests_basic import RestRequestsTransportResponse

            rest = RestRequestsTransportResponse(request=request, internal_response=response)
            if not stream:
                rest.read()
            return rest
        return RequestsTransportResponse(request, response)


def _b64(text: str) -> str:
    """An opaque token that survives any URL quoting: base64url without padding, as ARM's."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(token: str) -> str:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


def _tag_filter(filter_: str) -> tuple[str, str | None] | None:
    """The tag name (lowercase) and value (None: any) of a tag `$filter`; None for another."""
    match = _TAG_FILTER.fullmatch(filter_)
    if match is None:
        return None
    name = match.group(1).replace("''", "'").lower()
    value = None if match.group(2) is None else match.group(2).replace("''", "'")
    return name, value


def _group_of(resource_id: str) -> str:
    """The resource group (lowercase) in a resource id."""
    parts = resource_id.split("/")
    for index, part in enumerate(parts[:-1]):
        if part.lower() == "resourcegroups":
            return parts[index + 1].lower()
    return ""


def _has_tag(group: Mapping[str, Any], name: str, value: str | None) -> bool:
    """ARM matches tag names case-insensitively and tag values exactly."""
    for tag, tag_value in (group.get("tags") or {}).items():
        if tag.lower() == name and (value is None or tag_value == value):
            return True
    return False


def _error(status: int, code: str, message: str) -> _Reply:
    return _Reply(status, {"error": {"code": code, "message": message}})


def _group_not_found(name: str) -> _Reply:
    return _error(404, "ResourceGroupNotFound", f"Resource group '{name}' could not be found.")


@cache
def _skus_spec() -> dict[str, Any]:
    return dict(json.loads(SKUS_SPEC.read_text(encoding="utf-8")))


@cache
def _skus_operation() -> dict[str, Any]:
    """ResourceSkus_List's api-version and query parameter names, from the subset."""
    spec = _skus_spec()
    path = "/subscriptions/{subscriptionId}/providers/Microsoft.Compute/skus"
    query = set()
    for parameter in spec["paths"][path]["get"]["parameters"]:
        if "$ref" in parameter:
            parameter = spec["parameters"][parameter["$ref"].rsplit("/", 1)[-1]]
        if parameter["in"] == "query":
            query.add(parameter["name"])
    return {"api-version": spec["info"]["version"], "query": frozenset(query)}


def _closed(node: Any) -> Any:
    """A copy of a Swagger schema with `additionalProperties: false` on every object that lists
    its properties (and none of its own): a misspelt field in the fake then fails."""
    if isinstance(node, dict):
        out = {k: _closed(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_closed(v) for v in node]
    return node


@cache
def _skus_validator() -> Any:
    import jsonschema

    spec = _skus_spec()
    root = {"$ref": "#/definitions/ResourceSkusResult", "definitions": _closed(spec["definitions"])}
    return jsonschema.Draft4Validator(root)


@cache
def _prices_validator() -> Any:
    import jsonschema

    return jsonschema.Draft7Validator(json.loads(PRICES_SCHEMA.read_text(encoding="utf-8")))


class FakeRetailPrices(Loopback):
    """The public Azure Retail Prices API (GET /api/retail/prices), on loopback: set
    CML_INFRA_AZURE_PRICES_ENDPOINT to `.url`.

    It serves the items given with `add_price()`, filtered by `$filter` (clauses
    `FIELD eq 'VALUE'` joined by `and`, on the fields Microsoft's page says filters support;
    `priceType` matches an item's `type`; values compare case-insensitively), `page_size` items
    a page with `NextPageLink` (`$skip`) while more are left, and only for `api_version`. Every
    200 body is checked against tests/data/azure-retail-prices-schema.json (written from
    Microsoft's documentation); what does not match, an unknown parameter or filter, goes to
    `.violations`. `throttle(times, retry_after)` answers the next requests 429 with that
    Retry-After. `.requests` holds (monotonic time, status, URL path and query) per request.
    """

    FILTERABLE: ClassVar[dict[str, str]] = {
        "armregionname": "armRegionName",
        "location": "location",
        "meterid": "meterId",
        "metername": "meterName",
        "productid": "productId",
        "skuid": "skuId",
        "productname": "productName",
        "skuname": "skuName",
        "servicename": "serviceName",
        "serviceid": "serviceId",
        "servicefamily": "serviceFamily",
        "pricetype": "type",
        "armskuname": "armSkuName",
    }

    def __init__(self, *, page_size: int = 1000, api_version: str = "2023-01-01-preview") -> None:
        self.page_size = page_size
        self.api_version = api_version
        self.items: list[dict[str, Any]] = []
        self.requests: list[tuple[float, int, str]] = []
        self.violations: list[str] = []
        self._throttles: list[int] = []
        self._lock = threading.Lock()
        self._meters = itertools.count(1)
        self._start_server("fake-retail-prices")

    def add_price(
        self,
        arm_sku: str,
        region: str,
        usd: float,
        *,
        spot: bool = False,
        windows: bool = False,
        low_priority: bool = False,
        effective: str = "2025-01-01T00:00:00Z",
        unit: str = "1 Hour",
        primary: bool = True,
        price_type: str = "Consumption",
    ) -> dict[str, Any]:
        """One meter as the API lists it (skuName: the size without `Standard_` and with
        spaces, plus ' Spot' or ' Low Priority'; productName ends in ' Windows' for Windows)."""
        short = arm_sku.removeprefix("Standard_").replace("_", " ")
        suffix = " Spot" if spot else " Low Priority" if low_priority else ""
        series = short.split(" ")[0].rstrip("0123456789")
        number = next(self._meters)
        item = {
            "currencyCode": "USD",
            "tierMinimumUnits": 0.0,
            "retailPrice": usd,
            "unitPrice": usd,
            "armRegionName": region,
            "location": region,
            "effectiveStartDate": effective,
            "meterId": str(uuid.UUID(int=number)),
            "meterName": short + suffix,
            "productId": f"DZH318Z0{number:04d}",
            "skuId": f"DZH318Z0{number:04d}/0001",
            "productName": f"Virtual Machines {series} Series" + (" Windows" if windows else ""),
            "skuName": short + suffix,
            "serviceName": "Virtual Machines",
            "serviceId": "DZH313Z7MMC8",
            "serviceFamily": "Compute",
            "unitOfMeasure": unit,
            "type": price_type,
            "isPrimaryMeterRegion": primary,
            "armSkuName": arm_sku,
        }
        with self._lock:
            self.items.append(item)
        return item

    def throttle(self, times: int = 1, retry_after: int = 1) -> None:
        with self._lock:
            self._throttles += [retry_after] * times

    def _serve(self, handler: Any) -> None:
        parts = urlsplit(handler.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        params = {key: values[-1] for key, values in query.items()}
        with self._lock:
            throttled = self._throttles.pop(0) if self._throttles else None
            if throttled is not None:
                status, body, headers = 429, b"", {"Retry-After": str(throttled)}
            else:
                status, reply = self._answer(handler.command, parts.path, params)
                body, headers = json.dumps(reply).encode(), {"Content-Type": JSON_TYPE}
            self.requests.append((time.monotonic(), status, handler.path))
        handler.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(body)

    def _bad(self, message: str) -> tuple[int, dict[str, Any]]:
        self.violations.append(message)
        return 400, {"Error": {"Code": "BadRequest", "Message": message}}

    def _answer(self, method: str, path: str, params: dict[str, str]) -> tuple[int, Any]:
        if method != "GET" or path != "/api/retail/prices":
            return self._bad(f"{method} {path}: not the Retail Prices API")
        for key in params:
            if key not in ("api-version", "$filter", "$skip", "currencyCode"):
                return self._bad(f"unexpected query parameter {key!r}")
        if params.get("api-version") != self.api_version:
            return self._bad(f"api-version {params.get('api-version')!r}, not {self.api_version}")
        wanted: list[tuple[str, str]] = []
        filter_ = params.get("$filter", "").strip()
        for clause in re.split(r"\s+and\s+", filter_) if filter_ else []:
            match = re.fullmatch(rf"(\w+)\s+eq\s+{_LITERAL}", clause.strip())
            if match is None or match.group(1).lower() not in self.FILTERABLE:
                return self._bad(f"unsupported $filter clause {clause!r}")
            field_ = self.FILTERABLE[match.group(1).lower()]
            wanted.append((field_, match.group(2).replace("''", "'").lower()))
        found = [i for i in self.items if all(str(i[f]).lower() == v for f, v in wanted)]
        skip = int(params.get("$skip", "0") or 0)
        page = found[skip : skip + self.page_size]
        next_link = None
        if skip + self.page_size < len(found):
            rest = {k: v for k, v in params.items() if k != "$skip"}
            next_link = f"{self.url}/api/retail/prices?" + urlencode(
                {**rest, "$skip": str(skip + self.page_size)}, quote_via=quote
            )
        body = {
            "BillingCurrency": "USD",
            "CustomerEntityId": "Default",
            "CustomerEntityType": "Retail",
            "Items": json.loads(json.dumps(page)),
            "NextPageLink": next_link,
            "Count": len(page),
        }
        for error in _prices_validator().iter_errors(body):
            self.violations.append(f"response: {error.message} at {list(error.path)}")
        return 200, body
