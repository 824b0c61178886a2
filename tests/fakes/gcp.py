"""A fake Compute Engine v1 REST API, and beside it the IAM v1 service accounts and the Cloud
Billing Catalog v1 SKUs, on loopback, checked against Google's Discovery descriptions.

`FakeCompute(project)` serves, on 127.0.0.1 and a free port, what `cml_infra.clouds.gcp` calls
through google-cloud-compute's REST transport and its IAM REST calls, and what
`cml_infra.catalog.refresh.gcp` calls (set CML_INFRA_GCP_API_ENDPOINT to `fake.url`: every API
answers on it, their paths do not overlap):

- `instances.aggregatedList` (GET .../aggregated/instances): every zone scope, with the
  `NO_RESULTS_ON_PAGE` warning for zones without (matching) instances; the `filter` query (see
  "Filters" below) on `name`, `status` and `labels.KEY` (so `labels.cml-infra-managed = "true"`
  works); `maxResults` (default and most 500) with `pageToken`/`nextPageToken`;
  `includeAllScopes` adds the region scopes.
- `instances.get` and `instances.delete`: delete answers a zone Operation that is RUNNING (the
  instance is STOPPING) until it has been polled `operation_polls` times; then it is DONE and
  the instance is gone. With `operation_polls = 0` the delete answers a DONE operation at once.
- `zoneOperations.get` (one poll; this is what `ExtendedOperation.result()` calls, through the
  transport's `_zone_operations_client`) and `zoneOperations.wait` (finishes the operation).
- `firewalls.list` (the `filter` on `name`, `description`, `network`, `direction`;
  `maxResults`/`pageToken`), `firewalls.get` and `firewalls.delete`, which answers a global
  Operation that behaves as an instance's delete does; `globalOperations.get` and `.wait`.
- `machineTypes.aggregatedList` and `acceleratorTypes.aggregatedList` (GET .../aggregated/
  machineTypes, .../aggregated/acceleratorTypes): the types `add_machine_type` and
  `add_accelerator_type` put in place, every zone scope (`NO_RESULTS_ON_PAGE` for one without),
  a zone of `unreachable_zones` as Compute answers a scope it cannot reach (the `UNREACHABLE`
  warning, no items); the `filter` on `name`; `maxResults` (default `max_results`) with
  `pageToken`.
- Cloud Billing `services.skus.list` (GET /v1/services/SERVICE/skus) of Compute Engine's service
  (6F81-5844-456A; any other is a 404): the SKUs `add_sku` put in place, `pageSize` (default
  and most `sku_page_size`, 5000 as the API's) with `pageToken`.
- IAM `projects.serviceAccounts.list` (`pageSize`: 20 unless given, at most 100, as IAM does;
  `pageToken`), `.get` and `.delete` (which answers Empty), by email or unique id, in
  `projects/PROJECT` or `projects/-`.

Filters: one comparison in the AIP-160 form `FIELD = VALUE`, `FIELD != VALUE` or `FIELD:*`, or
in the regular-expression form `FIELD eq RE` / `FIELD ne RE` (RE matches the whole field); any
other expression is answered 400 and recorded as a violation.

Every request is checked against the Discovery document of its API: tests/data/
gcp-compute-subset.json (Compute v1, revision 20261106), tests/data/gcp-iam-subset.json (IAM
v1, revision 20261023) and tests/data/gcp-cloudbilling-subset.json (Cloud Billing v1, revision
20260901), all cut from google-api-python-client 2.202.0's
`googleapiclient/discovery_cache/documents/` by keeping the methods their `x-subset` lists and
the schemas those reference, unmodified. The path must match a method's template (with the
parameter patterns) for its HTTP method, every query parameter must be one the method or the API
describes (type, format, enum, minimum checked), required parameters must be present, and a
body is allowed only where the method describes one. Every response body is checked with
jsonschema against the method's response schema, converted from Discovery with
`additionalProperties: false` added (a misspelt field fails), int64/uint64 as digit strings;
plus RFC 3339 for timestamps and full URLs for `zone`/`selfLink`/`targetLink`/`machineType`/
`network`. The descriptions have no error schema: error bodies are checked against Google's
JSON error format (ERROR_SCHEMA below; Compute sends the v1 `errors` list, IAM and Cloud Billing
the `status`).
Whatever does not match goes to `fake.violations`, which tests assert is empty; an undescribed
request (or a described method the fake does not implement) is also answered 404, a described
one with bad parameters 400, as Google does.

Fault switches: `fail(status, ...)` answers the next request(s) with a Google error;
`fail_operation(...)` makes the next delete's operation end DONE with an error.

Note: google-cloud-compute polls an ExtendedOperation through a ZoneOperationsClient that the
transport builds itself with the *default* endpoint, so a client aimed at this fake only by its
transport's host sends its polls to compute.googleapis.com (operation_polls=0 avoids polling).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import json
import re
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fakes.loopback import Handler, Loopback

DATA = Path(__file__).resolve().parent.parent / "data"
SPEC_PATH = DATA / "gcp-compute-subset.json"
IAM_SPEC_PATH = DATA / "gcp-iam-subset.json"
BILLING_SPEC_PATH = DATA / "gcp-cloudbilling-subset.json"
# The Discovery document of each API, by the first part of its method ids.
APIS = {"compute": SPEC_PATH, "iam": IAM_SPEC_PATH, "cloudbilling": BILLING_SPEC_PATH}
# Compute Engine's service in the Cloud Billing Catalog.
COMPUTE_SERVICE = "services/6F81-5844-456A"
# ListSkus: "Requested page size. Defaults to 5000."
SKU_PAGE_SIZE = 5000
# Links in resources name the public API, whatever address the fake listens on (as a private
# endpoint would, too).
LINK_BASE = "https://www.googleapis.com/compute/v1/"
DEFAULT_ZONES = (
    "us-central1-a",
    "us-central1-b",
    "us-central1-c",
    "us-east1-b",
    "europe-west4-a",
    "asia-east1-b",
)
MAX_RESULTS = 500
# IAM's ListServiceAccounts: "The default is 20, and the maximum is 100."
IAM_PAGE_SIZE, IAM_MAX_PAGE_SIZE = 20, 100
JSON_TYPE = "application/json; charset=UTF-8"
# GCE writes its timestamps in Pacific time with milliseconds: 2026-11-27T05:22:13.512-08:00.
PACIFIC = timezone(timedelta(hours=-8))
IMPLEMENTED = frozenset(
    {
        "compute.instances.aggregatedList",
        "compute.instances.get",
        "compute.instances.delete",
        "compute.zoneOperations.get",
        "compute.zoneOperations.wait",
        "compute.firewalls.list",
        "compute.firewalls.get",
        "compute.firewalls.delete",
        "compute.globalOperations.get",
        "compute.globalOperations.wait",
        "iam.projects.serviceAccounts.list",
        "iam.projects.serviceAccounts.get",
        "iam.projects.serviceAccounts.delete",
        "compute.machineTypes.aggregatedList",
        "compute.acceleratorTypes.aggregatedList",
        "cloudbilling.services.skus.list",
    }
)
HTTP_REASONS = {
    400: "BAD REQUEST",
    403: "FORBIDDEN",
    404: "NOT FOUND",
    409: "CONFLICT",
    412: "PRECONDITION FAILED",
    500: "INTERNAL SERVER ERROR",
}
ERROR_REASONS = {
    400: "invalid",
    401: "required",
    403: "forbidden",
    404: "notFound",
    409: "alreadyExists",
    412: "conditionNotMet",
    429: "rateLimitExceeded",
    500: "backendError",
    503: "backendError",
}
# The google.rpc code IAM names in an error's `status`.
RPC_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
# Google's JSON error body (https://cloud.google.com/apis/design/errors#http_mapping, with the
# v1 `errors` list Compute still sends); the Discovery document itself describes no errors.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "additionalProperties": False,
            "properties": {
                "code": {"type": "integer"},
                "message": {"type": "string"},
                "status": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}},
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["message", "domain", "reason"],
                        "additionalProperties": False,
                        "properties": {
                            "message": {"type": "string"},
                            "domain": {"type": "string"},
                            "reason": {"type": "string"},
                        },
                    },
                },
            },
        }
    },
}
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")
# What GCE accepts as labels (https://cloud.google.com/compute/docs/labeling-resources).
LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
TIME_FIELDS = ("insertTime", "startTime", "endTime")
LINK_FIELDS = ("zone", "selfLink", "targetLink", "machineType", "region", "network")
# What IAM accepts (CreateServiceAccountRequest.accountId, ServiceAccount.description and
# .displayName), and what Compute accepts as a firewall rule's description.
ACCOUNT_ID = re.compile(r"[a-z](?:[-a-z0-9]{4,28}[a-z0-9])")
ACCOUNT_DESCRIPTION_BYTES, DISPLAY_NAME_BYTES = 256, 100
FIREWALL_DESCRIPTION_CHARS = 2048
_INT_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}

_lock = threading.Lock()
_cache: dict[str, Any] = {}


# ---------------------------------------------------------------------------------------------
# The Discovery description: loaded, converted and indexed once per process.


def discovery(api: str = "compute") -> dict[str, Any]:
    """The parsed Discovery document of "compute" or "iam" (shared: do not modify)."""
    with _lock:
        if f"doc:{api}" not in _cache:
            _cache[f"doc:{api}"] = json.loads(APIS[api].read_text(encoding="utf-8"))
        return _cache[f"doc:{api}"]


def to_json_schema(node: Any, strict: bool = True) -> Any:
    """A Discovery schema as JSON Schema (draft 7, `$ref`s into #/definitions): type, properties,
    items, additionalProperties, $ref, enum, pattern, minimum/maximum and formats (64-bit
    integers are digit strings, 32-bit ones are range-checked integers). With `strict`, objects
    that list their properties reject any other key."""
    if isinstance(node, list):
        return [to_json_schema(value, strict) for value in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return {"$ref": "#/definitions/" + node["$ref"]}
    out: dict[str, Any] = {}
    kind = node.get("type")
    fmt = node.get("format")
    if kind and kind != "any":
        out["type"] = kind
    if "properties" in node:
        out["properties"] = {k: to_json_schema(v, strict) for k, v in node["properties"].items()}
    for key in ("items", "additionalProperties"):
        if key in node:
            out[key] = to_json_schema(node[key], strict)
    if "enum" in node:
        out["enum"] = list(node["enum"])
    if "pattern" in node:
        out["pattern"] = "^(?:" + node["pattern"] + ")$"
    for key in ("minimum", "maximum"):
        if key in node:
            out[key] = float(node[key]) if kind == "number" else int(node[key])
    if kind == "string" and fmt in ("int64", "uint64"):
        out["pattern"] = r"^-?[0-9]+$" if fmt == "int64" else r"^[0-9]+$"
    if kind == "integer" and fmt in _INT_RANGES:
        low, high = _INT_RANGES[fmt]
        out.setdefault("minimum", low)
        out.setdefault("maximum", high)
    if strict and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def schema_validator(name: str, strict: bool = True, api: str = "compute") -> Any:
    """A jsonschema validator for one of the schemas of an API's document (e.g. "Operation")."""
    import jsonschema

    doc = discovery(api)
    key = f"schema:{api}:{name}:{strict}"
    with _lock:
        if key not in _cache:
            definitions = _cache.setdefault(
                f"definitions:{api}:{strict}",
                {n: to_json_schema(s, strict) for n, s in doc["schemas"].items()},
            )
            root = {"$ref": "#/definitions/" + name, "definitions": definitions}
            _cache[key] = jsonschema.Draft7Validator(root)
        return _cache[key]


def _error_validator() -> Any:
    import jsonschema

    with _lock:
        if "error" not in _cache:
            _cache["error"] = jsonschema.Draft7Validator(ERROR_SCHEMA)
        return _cache["error"]


def methods() -> dict[str, dict[str, Any]]:
    """Every method of every API's document by id ("compute.instances.get"), with extra keys
    "_api" (its document) and "_regex": the compiled path template (relative to the host,
    servicePath included)."""
    docs = {api: discovery(api) for api in APIS}
    with _lock:
        if "methods" not in _cache:
            found: dict[str, dict[str, Any]] = {}

            def walk(api: str, resources: Mapping[str, Any]) -> None:
                for resource in resources.values():
                    for method in resource.get("methods", {}).values():
                        entry = dict(method)
                        entry["_api"] = api
                        entry["_regex"] = _template_regex(docs[api]["servicePath"], method)
                        entry["_literals"] = len(re.sub(r"\{[^}]*\}", "", method["path"]))
                        found[method["id"]] = entry
                    walk(api, resource.get("resources", {}))

            for api, doc in docs.items():
                walk(api, doc["resources"])
            _cache["methods"] = found
        return _cache["methods"]


def _template_regex(service_path: str, method: Mapping[str, Any]) -> re.Pattern[str]:
    """The flat path where its parameters are the method's (Compute's), else the path: IAM's
    flat paths name parameters (`projectsId`) that the method does not describe, its paths
    take the resource name whole (`v1/{+name}`)."""
    flat = method.get("flatPath", "")
    named = set(re.findall(r"\{\+?([A-Za-z_][A-Za-z0-9_]*)\}", flat))
    usable = flat and named <= set(method.get("parameters", {}))
    template = "/" + service_path + (flat if usable else method["path"])
    pattern = ""
    for part in re.split(r"(\{\+?[A-Za-z_][A-Za-z0-9_]*\})", template):
        if part.startswith("{"):
            name = part.strip("{}+")
            pattern += f"(?P<{name}>.+)" if part.startswith("{+") else f"(?P<{name}>[^/]+)"
        else:
            pattern += re.escape(part)
    return re.compile(pattern)


def _parameter_errors(name: str, spec: Mapping[str, Any], values: list[str]) -> list[str]:
    """What is wrong with the values of one (path or query) parameter, as the wire carries it."""
    errors = []
    if len(values) > 1 and not spec.get("repeated"):
        errors.append(f"parameter {name!r} given {len(values)} times but is not repeated")
    kind, fmt = spec.get("type", "string"), spec.get("format")
    for value in values:
        if "enum" in spec and value not in spec["enum"]:
            errors.append(f"parameter {name!r}={value!r} is not one of {spec['enum']}")
        if "pattern" in spec and not re.fullmatch(spec["pattern"], value):
            errors.append(f"parameter {name!r}={value!r} does not match {spec['pattern']!r}")
        if kind == "boolean" and value not in ("true", "false"):
            errors.append(f"parameter {name!r}={value!r} is not a boolean")
        number: float | int | None = None
        if kind == "integer" or (kind == "string" and fmt in ("int64", "uint64")):
            try:
                number = int(value)
            except ValueError:
                errors.append(f"parameter {name!r}={value!r} is not an integer ({fmt})")
        elif kind == "number":
            try:
                number = float(value)
            except ValueError:
                errors.append(f"parameter {name!r}={value!r} is not a number")
        if number is not None:
            low, high = _INT_RANGES.get(fmt or "", (None, None))
            low = int(spec["minimum"]) if "minimum" in spec else low
            high = int(spec["maximum"]) if "maximum" in spec else high
            if (low is not None and number < low) or (high is not None and number > high):
                errors.append(f"parameter {name!r}={value!r} is out of range [{low}, {high}]")
    return errors


def match_request(
    http_method: str, path: str
) -> tuple[dict[str, Any] | None, dict[str, str], list[str]]:
    """The described method for an HTTP method and (percent-encoded) path, its path parameters
    and what is wrong; (None, {}, [reason]) when nothing describes the request."""
    candidates = []
    for method in methods().values():
        found = method["_regex"].fullmatch(path)
        if found:
            candidates.append((method, found))
    if not candidates:
        return None, {}, [f"no method of the description has the path {path!r}"]
    same = [(m, f) for m, f in candidates if m["httpMethod"] == http_method.upper()]
    if not same:
        described = sorted({m["httpMethod"] for m, _ in candidates})
        return None, {}, [f"the path is described for {described}, not {http_method.upper()}"]
    # A literal segment beats a parameter (.../instances/bulkInsert before .../{instance}).
    method, found = max(same, key=lambda pair: pair[0]["_literals"])
    params = {name: unquote(value) for name, value in found.groupdict().items()}
    errors = []
    for name, value in params.items():
        spec = method["parameters"].get(name)
        if spec is None or spec.get("location") != "path":
            errors.append(f"{method['id']}: path parameter {name!r} is not described")
            continue
        errors.extend(f"{method['id']}: {e}" for e in _parameter_errors(name, spec, [value]))
    return method, params, errors


def request_violations(
    http_method: str,
    path: str,
    query: Mapping[str, list[str]] | None = None,
    body: bytes = b"",
) -> tuple[str | None, dict[str, str], list[str]]:
    """(method id or None, path parameters, violations) for a request as it arrived."""
    method, params, errors = match_request(http_method, path)
    if method is None:
        return None, {}, [f"{http_method.upper()} {path}: {e}" for e in errors]
    method_id = method["id"]
    common = discovery(method["_api"])["parameters"]
    for name, values in (query or {}).items():
        spec = method["parameters"].get(name) or common.get(name)
        if spec is None:
            errors.append(f"{method_id}: query parameter {name!r} is not described")
        elif spec.get("location") != "query":
            errors.append(f"{method_id}: {name!r} is a {spec.get('location')} parameter")
        else:
            errors.extend(f"{method_id}: {e}" for e in _parameter_errors(name, spec, values))
    for name, spec in method["parameters"].items():
        if spec.get("required") and name not in params and name not in (query or {}):
            errors.append(f"{method_id}: required parameter {name!r} is missing")
    if "request" in method:
        try:
            data = json.loads(body or b"null")
        except ValueError as exc:
            errors.append(f"{method_id}: the request body is not JSON: {exc}")
        else:
            name = method["request"]["$ref"]
            for error in schema_validator(name, api=method["_api"]).iter_errors(data):
                errors.append(f"{method_id}: request body ({name}): {_where(error)}")
    elif body.strip():
        errors.append(f"{method_id}: the method takes no request body, got {body[:80]!r}")
    return method_id, params, errors


def response_violations(method_id: str, status: int, body: Any) -> list[str]:
    """What is wrong with a JSON response body for a described method."""
    if status >= 400:
        return [
            f"{method_id}: error body: {_where(e)}" for e in _error_validator().iter_errors(body)
        ]
    method = methods()[method_id]
    if "response" not in method:
        return [] if body is None else [f"{method_id}: the method has no response body"]
    name = method["response"]["$ref"]
    validator = schema_validator(name, api=method["_api"])
    errors = [f"{method_id}: {name}: {_where(e)}" for e in validator.iter_errors(body)]
    errors.extend(f"{method_id}: {name}: {e}" for e in _semantic_errors(body, "$"))
    return errors


def _where(error: Any) -> str:
    path = "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in error.absolute_path)
    return f"${path}: {error.message}"


def _semantic_errors(node: Any, where: str) -> list[str]:
    """What the schema cannot say: timestamps are RFC 3339, links are full URLs."""
    errors = []
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}[{key!r}]"
            if isinstance(value, str) and (key.endswith("Timestamp") or key in TIME_FIELDS):
                if not RFC3339.fullmatch(value):
                    errors.append(f"{here}: {value!r} is not an RFC 3339 timestamp")
            elif isinstance(value, str) and key in LINK_FIELDS:
                # A machine type names its zone ("us-central1-a"); every other resource links it.
                named = key == "zone" and node.get("kind") == "compute#machineType"
                if not named and not value.startswith(LINK_BASE):
                    errors.append(f"{here}: {value!r} is not a URL under {LINK_BASE}")
            else:
                errors.extend(_semantic_errors(value, here))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            errors.extend(_semantic_errors(value, f"{where}[{index}]"))
    return errors


# ---------------------------------------------------------------------------------------------
# The fake itself.


def timestamp(moment: datetime) -> str:
    """A time as GCE writes it: RFC 3339, milliseconds, Pacific offset."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    local = moment.astimezone(PACIFIC)
    return local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{local.microsecond // 1000:03d}-08:00"


class _Reply(Exception):
    """A Google error to answer with; its body takes the form of the API that answers it."""

    def __init__(self, status: int, message: str, reason: str | None = None):
        super().__init__(status)
        self.status = status
        self.message = message
        self.reason = reason

    def body(self, api: str) -> dict[str, Any]:
        if api != "compute":  # IAM and Cloud Billing: the google.rpc status form
            return iam_error(self.status, self.message)
        return google_error(self.status, self.message, self.reason)


def google_error(status: int, message: str, reason: str | None = None) -> dict[str, Any]:
    """A JSON error body the way Compute sends it."""
    reason = reason or ERROR_REASONS.get(status, "error")
    return {
        "error": {
            "code": status,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}],
        }
    }


def iam_error(status: int, message: str) -> dict[str, Any]:
    """A JSON error body the way IAM sends it: the google.rpc status, no `errors` list."""
    return {
        "error": {"code": status, "message": message, "status": RPC_STATUSES.get(status, "UNKNOWN")}
    }


def _error(status: int, message: str, reason: str | None = None) -> _Reply:
    return _Reply(status, message, reason)


def _not_found(where: str) -> _Reply:
    return _error(404, f"The resource '{where}' was not found")


class FakeCompute(Loopback):
    """A fake Compute Engine v1 API server, with IAM v1 service accounts and Cloud Billing's
    Compute Engine SKUs; see the module docstring.

    Public: url, project, zones, violations [str], requests [dicts: method, path, query
    {name: [values]}, id (Discovery method id or None), status], operation_polls,
    unreachable_zones, max_results, sku_page_size, and add_machine_type(),
    add_accelerator_type(), add_sku(), add_instance(), instances(), instance(), add_firewall(),
    firewalls(), firewall(), add_service_account(), service_accounts(), service_account(),
    operations(), link(), fail(), fail_operation(), close() (or use it as a context manager).
    """

    def __init__(
        self,
        project: str = "proj",
        *,
        zones: Iterable[str] = DEFAULT_ZONES,
        operation_polls: int = 1,
    ):
        self.project = project
        self.zones: list[str] = list(zones)
        # zoneOperations.get calls a delete's operation answers RUNNING before it is DONE.
        self.operation_polls = operation_polls
        self.violations: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.RLock()
        self._instances: dict[tuple[str, str], dict[str, Any]] = {}
        self._firewalls: dict[str, dict[str, Any]] = {}
        self._accounts: dict[str, dict[str, Any]] = {}
        # Keyed by (zone, name), or ("global", name) for a global operation.
        self._operations: dict[tuple[str, str], dict[str, Any]] = {}
        self._faults: list[dict[str, Any]] = []
        self._op_faults: list[dict[str, Any]] = []
        # Machine and accelerator types by (zone, name); the SKUs of Compute Engine's service.
        self._machine_types: dict[tuple[str, str], dict[str, Any]] = {}
        self._accelerator_types: dict[tuple[str, str], dict[str, Any]] = {}
        self._skus: list[dict[str, Any]] = []
        # Zones the project cannot use: their scope in a type listing is UNREACHABLE.
        self.unreachable_zones: set[str] = set()
        # Page sizes when the request names none: Compute's 500, ListSkus' 5000 (tests make
        # them small to see paging).
        self.max_results = MAX_RESULTS
        self.sku_page_size = SKU_PAGE_SIZE
        self._ids = itertools.count(4_611_686_018_427_387_904 + 17)
        self._unique_ids = itertools.count(104_729_000_000_000_000_001)
        self._op_numbers = itertools.count(1)
        for name in ("Instance", "InstanceAggregatedList", "Operation", "FirewallList"):
            schema_validator(name)  # convert the descriptions before the first request needs it
        schema_validator("ListServiceAccountsResponse", api="iam")
        schema_validator("ListSkusResponse", api="cloudbilling")
        self._start_server("fake-compute")

    # -- helpers for tests ----------------------------------------------------------------

    def link(self, *parts: str) -> str:
        """The full URL of a resource of the project: link("zones", "us-central1-a")."""
        return LINK_BASE + "/".join(("projects", self.project, *parts))

    def add_instance(
        self,
        zone: str,
        name: str,
        labels: Mapping[str, str] | None = None,
        status: str = "RUNNING",
        created: datetime | str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Puts an instance in place (not recorded as a request) and returns it as the API shows
        it. `created` is a datetime (naive means UTC) or a timestamp string used as is; `fields`
        are merged into the resource as given (e.g. machineType=..., or a misspelt key to see
        response validation fail). A zone not yet in `zones` is added."""
        params = methods()["compute.instances.get"]["parameters"]
        for what, value in (("zone", zone), ("instance", name)):
            if not re.fullmatch(params[what]["pattern"], value):
                raise ValueError(f"{what} {value!r} does not match {params[what]['pattern']!r}")
        for key, value in (labels or {}).items():
            if not LABEL_KEY.fullmatch(key) or not LABEL_VALUE.fullmatch(value):
                raise ValueError(f"GCE would refuse the label {key}={value!r}")
        statuses = discovery()["schemas"]["Instance"]["properties"]["status"]["enum"]
        if status not in statuses:
            raise ValueError(f"status {status!r} is not one of {statuses}")
        instance_id = str(next(self._ids))
        resource: dict[str, Any] = {
            "kind": "compute#instance",
            "id": instance_id,
            "creationTimestamp": _created(created),
            "name": name,
            "machineType": self.link("zones", zone, "machineTypes", "n1-standard-4"),
            "status": status,
            "zone": self.link("zones", zone),
            "canIpForward": False,
            "cpuPlatform": "Intel Broadwell",
            "deletionProtection": False,
            "fingerprint": base64.b64encode(instance_id.encode()[-8:]).decode("ascii"),
            "labelFingerprint": "42WmSpB8rSM=",
            "selfLink": self.link("zones", zone, "instances", name),
        }
        if labels:
            resource["labels"] = dict(labels)
        resource.update(fields)
        with self._lock:
            if zone not in self.zones:
                self.zones.append(zone)
            self._instances[(zone, name)] = resource
            return copy.deepcopy(resource)

    def add_machine_type(
        self,
        zone: str,
        name: str,
        guest_cpus: int,
        memory_mb: int,
        accelerators: Mapping[str, int] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Puts a machine type in a zone (as Compute lists it: its zone by name, not link);
        `accelerators` are the GPUs built in ({"nvidia-tesla-a100": 1}); `fields` are merged
        in as given. A zone not yet in `zones` is added."""
        resource: dict[str, Any] = {
            "kind": "compute#machineType",
            "id": str(next(self._ids)),
            "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
            "name": name,
            "description": f"{guest_cpus} vCPUs, {memory_mb / 1024:g} GB RAM",
            "guestCpus": guest_cpus,
            "memoryMb": memory_mb,
            "imageSpaceGb": 10,
            "maximumPersistentDisks": 128,
            "maximumPersistentDisksSizeGb": "263168",
            "isSharedCpu": False,
            "architecture": "ARM64" if name.startswith(("t2a-", "c4a-")) else "X86_64",
            "zone": zone,
            "selfLink": self.link("zones", zone, "machineTypes", name),
        }
        if accelerators:
            resource["accelerators"] = [
                {"guestAcceleratorType": kind, "guestAcceleratorCount": count}
                for kind, count in accelerators.items()
            ]
        resource.update(fields)
        return self._add_type(self._machine_types, zone, name, resource)

    def add_accelerator_type(
        self, zone: str, name: str, maximum_cards: int, description: str = "", **fields: Any
    ) -> dict[str, Any]:
        """Puts an accelerator type in a zone, as Compute lists it (`nvidia-tesla-t4`, at most
        `maximum_cards` per instance)."""
        resource: dict[str, Any] = {
            "kind": "compute#acceleratorType",
            "id": str(next(self._ids)),
            "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
            "name": name,
            "description": description or name,
            "maximumCardsPerInstance": maximum_cards,
            "zone": self.link("zones", zone),
            "selfLink": self.link("zones", zone, "acceleratorTypes", name),
        }
        resource.update(fields)
        return self._add_type(self._accelerator_types, zone, name, resource)

    def _add_type(
        self,
        store: dict[tuple[str, str], dict[str, Any]],
        zone: str,
        name: str,
        resource: dict[str, Any],
    ) -> dict[str, Any]:
        pattern = discovery()["schemas"]["AcceleratorType"]["properties"]["name"]["pattern"]
        for what, value in (("zone", zone), ("name", name)):
            if not re.fullmatch(pattern, value):
                raise ValueError(f"{what} {value!r} does not match {pattern!r}")
        with self._lock:
            if zone not in self.zones:
                self.zones.append(zone)
            store[(zone, name)] = resource
            return copy.deepcopy(resource)

    def add_sku(self, sku: Mapping[str, Any]) -> dict[str, Any]:
        """Puts a SKU of Compute Engine's service in place, as given (the response check holds
        it to the Sku schema); listed in the order added."""
        with self._lock:
            self._skus.append(copy.deepcopy(dict(sku)))
            return copy.deepcopy(dict(sku))

    def instances(self, zone: str | None = None) -> list[dict[str, Any]]:
        """The instances (as the API shows them), of one zone or all, by zone and name."""
        with self._lock:
            return [
                copy.deepcopy(self._instances[key])
                for key in sorted(self._instances)
                if zone is None or key[0] == zone
            ]

    def instance(self, zone: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._instances.get((zone, name))
            return None if found is None else copy.deepcopy(found)

    def add_firewall(
        self,
        name: str,
        description: str | None = None,
        *,
        network: str = "default",
        created: datetime | str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Puts a firewall rule in place (not recorded as a request) and returns it as the API
        shows it: by default an ingress rule that allows TCP 22 from anywhere, as the default
        network's `default-allow-ssh`; `fields` are merged in as given (denied=[...],
        targetTags=[...], priority=0, ...)."""
        pattern = discovery()["schemas"]["Firewall"]["properties"]["name"]["pattern"]
        if not re.fullmatch(pattern, name):
            raise ValueError(f"firewall name {name!r} does not match {pattern!r}")
        if description is not None and len(description) > FIREWALL_DESCRIPTION_CHARS:
            raise ValueError(f"a description of {len(description)} characters is too long")
        resource: dict[str, Any] = {
            "kind": "compute#firewall",
            "id": str(next(self._ids)),
            "creationTimestamp": _created(created),
            "name": name,
            "network": self.link("global", "networks", network),
            "priority": 1000,
            "sourceRanges": ["0.0.0.0/0"],
            "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}],
            "direction": "INGRESS",
            "logConfig": {"enable": False},
            "disabled": False,
            "selfLink": self.link("global", "firewalls", name),
        }
        if description is not None:
            resource["description"] = description
        resource.update(fields)
        with self._lock:
            self._firewalls[name] = resource
            return copy.deepcopy(resource)

    def firewalls(self) -> list[dict[str, Any]]:
        """The firewall rules (as the API shows them), by name."""
        with self._lock:
            return [copy.deepcopy(self._firewalls[name]) for name in sorted(self._firewalls)]

    def firewall(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._firewalls.get(name)
            return None if found is None else copy.deepcopy(found)

    def add_service_account(
        self,
        account_id: str,
        description: str | None = None,
        *,
        display_name: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Puts a service account `account_id@PROJECT.iam.gserviceaccount.com` in place (not
        recorded as a request) and returns it as IAM shows it; `fields` are merged in as given.
        What IAM would refuse to create raises ValueError."""
        if not ACCOUNT_ID.fullmatch(account_id):
            raise ValueError(f"IAM would refuse the account id {account_id!r}")
        for what, text, limit in (
            ("description", description, ACCOUNT_DESCRIPTION_BYTES),
            ("display name", display_name, DISPLAY_NAME_BYTES),
        ):
            if text is not None and len(text.encode("utf-8")) > limit:
                raise ValueError(f"a {what} of more than {limit} bytes: {text!r}")
        email = f"{account_id}@{self.project}.iam.gserviceaccount.com"
        unique_id = str(next(self._unique_ids))
        resource: dict[str, Any] = {
            "name": f"projects/{self.project}/serviceAccounts/{email}",
            "projectId": self.project,
            "uniqueId": unique_id,
            "email": email,
            "etag": "MDEwMjE5MjA=",
            "oauth2ClientId": unique_id,
        }
        if display_name is not None:
            resource["displayName"] = display_name
        if description is not None:
            resource["description"] = description
        resource.update(fields)
        with self._lock:
            self._accounts[email] = resource
            return copy.deepcopy(resource)

    def service_accounts(self) -> list[dict[str, Any]]:
        """The service accounts (as IAM shows them), by email."""
        with self._lock:
            return [copy.deepcopy(self._accounts[email]) for email in sorted(self._accounts)]

    def service_account(self, email: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._accounts.get(email)
            return None if found is None else copy.deepcopy(found)

    def add_runner(
        self,
        zone: str,
        name: str,
        launch_id: str,
        *,
        created: datetime,
        expires: datetime,
        instance: bool = True,
        status: str = "RUNNING",
    ) -> dict[str, Any]:
        """Puts in place what terraform/gcp makes for one runner: its deny-ingress firewall rule
        and its service account, named and described as the module names and describes them,
        and (unless `instance` is false: the VM deleted itself) its instance with the module's
        labels. Returns them as the APIs show them: {"firewall", "service_account",
        "instance" (None without)}."""
        made = module_made(name, launch_id, created, expires)
        firewall = self.add_firewall(
            made["firewall_name"],
            made["firewall_description"],
            created=created,
            priority=0,
            denied=[{"IPProtocol": "all"}],
            allowed=[],
            targetTags=[made["network_tag"]],
        )
        account = self.add_service_account(
            made["account_id"],
            made["account_description"],
            display_name=f"cml-infra runner {name}",
        )
        found = None
        if instance:
            labels = {
                "cml-infra-managed": "true",
                "cml-infra-name": name,
                "cml-infra-expires": str(int(expires.timestamp())),
                "cml-infra-created": str(int(created.timestamp())),
                "cml-infra-id": launch_id,
            }
            found = self.add_instance(zone, name, labels, status=status, created=created)
        return {"firewall": firewall, "service_account": account, "instance": found}

    def operations(self) -> list[dict[str, Any]]:
        """The zone and global operations so far (as the API shows them), oldest first, each
        with an extra key "polls": how many get/wait calls it has had."""
        with self._lock:
            return [
                {**self._operation_resource(op), "polls": op["polls"]}
                for op in self._operations.values()
            ]

    def fail(
        self,
        status: int = 403,
        message: str | None = None,
        *,
        count: int = 1,
        method: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Fault switch: the next `count` described requests (of the Discovery method id
        `method`, e.g. "compute.instances.delete", or of any) are answered with a Google error
        of `status` instead. The client library retries some 5xx answers on its own."""
        if message is None:
            message = (
                f"Required 'compute.instances.list' permission for 'projects/{self.project}'"
                if status == 403
                else f"fake failure {status}"
            )
        with self._lock:
            self._faults.append(
                {
                    "status": status,
                    "message": message,
                    "count": count,
                    "method": method,
                    "reason": reason,
                }
            )

    def fail_operation(
        self,
        status: int = 400,
        code: str = "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE",
        message: str | None = None,
        *,
        count: int = 1,
    ) -> None:
        """The next `count` delete operations (of an instance or a firewall rule) end DONE with
        this error (httpErrorStatusCode, httpErrorMessage and error.errors[]) and leave the
        resource in place."""
        with self._lock:
            self._op_faults.append(
                {"status": status, "code": code, "message": message, "count": count}
            )

    # -- HTTP -----------------------------------------------------------------------------

    def _serve(self, handler: Handler) -> None:
        split = urlsplit(handler.path)
        path, query = split.path, parse_qs(split.query, keep_blank_values=True)
        method = handler.command.upper()
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        method_id, params, errors = request_violations(method, path, query, raw)
        api = method_id.partition(".")[0] if method_id else _api_of(path)
        if errors:
            self._violate(errors)
        try:
            if method_id is None:
                raise _error(404, f"The requested URL {path} was not found on this server.")
            if method_id not in IMPLEMENTED:
                self._violate([f"{method_id}: described, but the fake does not implement it"])
                raise _error(404, f"{method_id} is not implemented by the fake")
            if errors:  # as Google does: unknown or malformed parameters are a 400
                raise _error(400, "Invalid request: " + "; ".join(errors), "invalidParameter")
            self._maybe_fail(method_id)
            status, body = 200, self._route(method_id, params, query)
        except _Reply as reply:
            status, body = reply.status, reply.body(api)
        except Exception as exc:  # a bug in the fake: answer 500 and make the test fail
            self._violate([f"{method} {path}: the fake raised {exc!r}"])
            status, body = 500, _error(500, "fake crashed").body(api)
        if method_id is not None:
            self._violate(response_violations(method_id, status, body))
        data = json.dumps(body).encode("utf-8")
        with self._lock:
            self.requests.append(
                {"method": method, "path": path, "query": query, "id": method_id, "status": status}
            )
        handler.send_response(status)
        handler.send_header("Content-Type", JSON_TYPE)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if method != "HEAD":
            handler.wfile.write(data)

    def _violate(self, errors: Iterable[str]) -> None:
        with self._lock:
            self.violations.extend(errors)

    def _maybe_fail(self, method_id: str) -> None:
        with self._lock:
            for fault in self._faults:
                if fault["method"] in (None, method_id) and fault["count"] > 0:
                    fault["count"] -= 1
                    raise _error(fault["status"], fault["message"], fault["reason"])

    def _route(
        self, method_id: str, params: Mapping[str, str], query: Mapping[str, list[str]]
    ) -> dict[str, Any]:
        if method_id.startswith("iam."):
            return self._route_iam(method_id, params, query)
        if method_id == "cloudbilling.services.skus.list":
            return self._sku_list(params["parent"], query)
        if params["project"] != self.project:
            raise _error(
                403, f"Permission denied on resource project {params['project']}.", "forbidden"
            )
        with self._lock:
            if method_id == "compute.instances.aggregatedList":
                return self._aggregated_list(query)
            if method_id == "compute.firewalls.list":
                return self._firewall_list(query)
            if method_id == "compute.machineTypes.aggregatedList":
                return self._type_list("machineTypes", self._machine_types, query)
            if method_id == "compute.acceleratorTypes.aggregatedList":
                return self._type_list("acceleratorTypes", self._accelerator_types, query)
            if method_id == "compute.firewalls.get":
                return copy.deepcopy(self._find_firewall(params["firewall"]))
            if method_id == "compute.firewalls.delete":
                resource = self._find_firewall(params["firewall"])
                return self._delete(None, ("firewall", params["firewall"]), resource)
            if method_id.startswith("compute.globalOperations."):
                scope = "global"
            else:
                scope = params["zone"]
                if scope not in self.zones:
                    raise _not_found(f"projects/{self.project}/zones/{scope}")
            if method_id == "compute.instances.get":
                return copy.deepcopy(self._find_instance(scope, params["instance"]))
            if method_id == "compute.instances.delete":
                key = (scope, params["instance"])
                return self._delete(scope, ("instance", key), self._find_instance(*key))
            op = self._operations.get((scope, params["operation"]))
            if op is None:
                where = "global" if scope == "global" else f"zones/{scope}"
                raise _not_found(
                    f"projects/{self.project}/{where}/operations/{params['operation']}"
                )
            self._poll(op, finish=method_id.endswith(".wait"))
            return self._operation_resource(op)

    def _find_instance(self, zone: str, name: str) -> dict[str, Any]:
        found = self._instances.get((zone, name))
        if found is None:
            raise _not_found(f"projects/{self.project}/zones/{zone}/instances/{name}")
        return found

    def _find_firewall(self, name: str) -> dict[str, Any]:
        found = self._firewalls.get(name)
        if found is None:
            raise _not_found(f"projects/{self.project}/global/firewalls/{name}")
        return found

    # -- instances.aggregatedList ---------------------------------------------------------

    def _aggregated_list(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        text = (query.get("filter") or [""])[0]
        keep = _filter(text, INSTANCE_FIELDS, self._violate)
        offset, size = _page(query, text)
        matching = [
            (zone, resource)
            for (zone, _), resource in sorted(self._instances.items())
            if keep(resource)
        ]
        page = matching[offset : offset + size]
        items: dict[str, Any] = {}
        for zone, resource in page:
            items.setdefault(f"zones/{zone}", {"instances": []})["instances"].append(
                copy.deepcopy(resource)
            )
        scopes = [f"zones/{zone}" for zone in sorted(self.zones)]
        if (query.get("includeAllScopes") or ["false"])[0] == "true":
            regions = sorted({zone.rpartition("-")[0] for zone in self.zones})
            scopes += [f"regions/{region}" for region in regions] + ["global"]
        for scope in scopes:
            if scope not in items and offset == 0:
                items[scope] = {"warning": _no_results(scope)}
        body: dict[str, Any] = {
            "kind": "compute#instanceAggregatedList",
            "id": f"projects/{self.project}/aggregated/instances",
            "items": dict(sorted(items.items())),
            "selfLink": self.link("aggregated", "instances"),
        }
        if offset + size < len(matching):
            body["nextPageToken"] = _make_token(offset + size, text)
        return body

    # -- machineTypes / acceleratorTypes.aggregatedList -----------------------------------

    def _type_list(
        self,
        kind: str,
        store: Mapping[tuple[str, str], dict[str, Any]],
        query: Mapping[str, list[str]],
    ) -> dict[str, Any]:
        text = (query.get("filter") or [""])[0]
        keep = _filter(text, TYPE_FIELDS, self._violate)
        offset, size = _page(query, text, self.max_results)
        matching = [
            (zone, resource)
            for (zone, _), resource in sorted(store.items())
            if zone not in self.unreachable_zones and keep(resource)
        ]
        items: dict[str, Any] = {}
        for zone, resource in matching[offset : offset + size]:
            items.setdefault(f"zones/{zone}", {kind: []})[kind].append(copy.deepcopy(resource))
        if offset == 0:
            for zone in sorted(self.zones):
                scope = f"zones/{zone}"
                if zone in self.unreachable_zones:
                    items[scope] = {"warning": _unreachable(scope)}
                elif scope not in items:
                    items[scope] = {"warning": _no_results(scope)}
        body: dict[str, Any] = {
            "kind": f"compute#{kind[:-1]}AggregatedList",
            "id": f"projects/{self.project}/aggregated/{kind}",
            "items": dict(sorted(items.items())),
            "selfLink": self.link("aggregated", kind),
        }
        if offset + size < len(matching):
            body["nextPageToken"] = _make_token(offset + size, text)
        return body

    # -- Cloud Billing: services.skus.list ------------------------------------------------

    def _sku_list(self, parent: str, query: Mapping[str, list[str]]) -> dict[str, Any]:
        if parent != COMPUTE_SERVICE:
            raise _error(404, f"Service {parent.removeprefix('services/')} not found.")
        size = int((query.get("pageSize") or ["0"])[0]) or self.sku_page_size
        size = min(max(size, 1), self.sku_page_size)
        offset = 0
        token = (query.get("pageToken") or [""])[0]
        if token:
            found = _read_token(token, parent)
            if found is None:
                raise _error(400, f"Invalid page token {token!r}")
            offset = found
        with self._lock:
            skus = self._skus
            body: dict[str, Any] = {"skus": copy.deepcopy(skus[offset : offset + size])}
            # The API sends the field empty on the last page, as the description says.
            more = offset + size < len(skus)
            body["nextPageToken"] = _make_token(offset + size, parent) if more else ""
        return body

    # -- firewalls.list -------------------------------------------------------------------

    def _firewall_list(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        text = (query.get("filter") or [""])[0]
        keep = _filter(text, FIREWALL_FIELDS, self._violate)
        offset, size = _page(query, text)
        matching = [self._firewalls[name] for name in sorted(self._firewalls)]
        matching = [resource for resource in matching if keep(resource)]
        body: dict[str, Any] = {
            "kind": "compute#firewallList",
            "id": f"projects/{self.project}/global/firewalls",
            "items": copy.deepcopy(matching[offset : offset + size]),
            "selfLink": self.link("global", "firewalls"),
        }
        if offset + size < len(matching):
            body["nextPageToken"] = _make_token(offset + size, text)
        return body

    # -- deletes and their operations -----------------------------------------------------

    def _delete(
        self, zone: str | None, target: tuple[str, Any], resource: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Starts deleting an instance (`zone`, ("instance", (zone, name))) or a firewall rule
        (None, ("firewall", name)): the operation that deletes it once DONE."""
        now = datetime.now(timezone.utc)
        number = next(self._op_numbers)
        op = {
            "id": str(next(self._ids)),
            "name": f"operation-{int(now.timestamp() * 1000)}-{number:013x}-{number:08x}",
            "zone": zone,
            "operationType": "delete",
            "targetLink": resource["selfLink"],
            "targetId": resource["id"],
            "target": target,
            "insertTime": timestamp(now),
            "startTime": timestamp(now),
            "polls_left": self.operation_polls,
            "polls": 0,
            "status": "RUNNING",
        }
        for fault in self._op_faults:
            if fault["count"] > 0:
                fault["count"] -= 1
                op["error"] = fault | {
                    "message": fault["message"]
                    or f"The resource '{resource['selfLink']}' is in use and cannot be deleted."
                }
                break
        self._operations[(zone or "global", op["name"])] = op
        if target[0] == "instance":
            self._instances[target[1]]["status"] = "STOPPING"
        if op["polls_left"] <= 0:
            self._finish(op)
        return self._operation_resource(op)

    def _poll(self, op: dict[str, Any], finish: bool) -> None:
        op["polls"] += 1
        if op["status"] == "DONE":
            return
        op["polls_left"] -= 1
        if finish or op["polls_left"] <= 0:
            self._finish(op)

    def _finish(self, op: dict[str, Any]) -> None:
        op["status"] = "DONE"
        op["endTime"] = timestamp(datetime.now(timezone.utc))
        kind, key = op["target"]
        store: dict[Any, dict[str, Any]] = (
            self._instances if kind == "instance" else self._firewalls
        )
        if "error" not in op:
            store.pop(key, None)
        elif kind == "instance" and key in store:
            store[key]["status"] = "RUNNING"

    def _operation_resource(self, op: Mapping[str, Any]) -> dict[str, Any]:
        done = op["status"] == "DONE"
        where = ("zones", op["zone"]) if op["zone"] else ("global",)
        out = {
            "kind": "compute#operation",
            "id": op["id"],
            "name": op["name"],
            "operationType": op["operationType"],
            "targetLink": op["targetLink"],
            "targetId": op["targetId"],
            "status": op["status"],
            "user": "fake@proj.iam.gserviceaccount.com",
            "progress": 100 if done else 0,
            "insertTime": op["insertTime"],
            "startTime": op["startTime"],
            "selfLink": self.link(*where, "operations", op["name"]),
        }
        if op["zone"]:
            out["zone"] = self.link("zones", op["zone"])
        if done:
            out["endTime"] = op["endTime"]
        if done and "error" in op:
            error = op["error"]
            out["httpErrorStatusCode"] = error["status"]
            out["httpErrorMessage"] = HTTP_REASONS.get(error["status"], "ERROR")
            out["error"] = {"errors": [{"code": error["code"], "message": error["message"]}]}
        return out

    # -- IAM: projects.serviceAccounts ----------------------------------------------------

    def _route_iam(
        self, method_id: str, params: Mapping[str, str], query: Mapping[str, list[str]]
    ) -> dict[str, Any]:
        project, _, account = params["name"].removeprefix("projects/").partition("/")
        account = account.removeprefix("serviceAccounts/")
        if project not in (self.project, "-") or (project == "-" and not account):
            verb = method_id.rpartition(".")[2]
            raise _error(
                403,
                f"Permission 'iam.serviceAccounts.{verb}' denied on resource "
                "(or it may not exist).",
            )
        with self._lock:
            if method_id == "iam.projects.serviceAccounts.list":
                return self._account_list(query)
            found = self._find_account(account)
            if method_id == "iam.projects.serviceAccounts.get":
                return copy.deepcopy(found)
            del self._accounts[found["email"]]
            return {}

    def _find_account(self, key: str) -> dict[str, Any]:
        for resource in self._accounts.values():
            if key in (resource["email"], resource["uniqueId"]):
                return resource
        raise _error(404, f"Unknown service account {key}")

    def _account_list(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        size = int((query.get("pageSize") or ["0"])[0]) or IAM_PAGE_SIZE
        size = min(max(size, 1), IAM_MAX_PAGE_SIZE)
        offset = 0
        token = (query.get("pageToken") or [""])[0]
        if token:
            found = _read_token(token, "")
            if found is None:
                raise _error(400, f"Invalid page token {token!r}")
            offset = found
        emails = sorted(self._accounts)
        body: dict[str, Any] = {}
        page = [copy.deepcopy(self._accounts[email]) for email in emails[offset : offset + size]]
        if page:  # IAM leaves out an empty list
            body["accounts"] = page
        if offset + size < len(emails):
            body["nextPageToken"] = _make_token(offset + size, "")
        return body


def module_made(name: str, launch_id: str, created: datetime, expires: datetime) -> dict[str, str]:
    """The names and descriptions terraform/gcp/main.tf gives a runner's firewall rule, network
    tag and service account (written out here from the module, not from the code under test;
    tests/unit/clouds/test_gcp.py holds them against Terraform's own evaluation)."""
    launch_hash = hashlib.sha1(launch_id.encode("utf-8")).hexdigest()[:8]
    mark = (
        f"(managed by cml-infra, launch {launch_id}, created {int(created.timestamp())}, "
        f"expires {int(expires.timestamp())})."
    )
    tag = f"cml-infra-{name}-{launch_hash}"
    return {
        "network_tag": tag,
        "firewall_name": f"{tag}-deny",
        "firewall_description": f"cml-infra runner {name}: no inbound traffic at all {mark}",
        "account_id": f"cml-{re.sub('-+$', '', name[:19])}-{launch_hash[:6]}",
        "account_description": (
            f"Identity of cml-infra runner VM {name}; may delete only that instance {mark}"
        ),
    }


def _created(created: datetime | str | None) -> str:
    """A creationTimestamp: now, a datetime (naive means UTC), or a string used as is."""
    if isinstance(created, str):
        return created
    return timestamp(created or datetime.now(timezone.utc))


def _api_of(path: str) -> str:
    """The API an undescribed request was meant for, for the form of its error body."""
    if path.startswith("/compute/"):
        return "compute"
    return "cloudbilling" if path.startswith("/v1/services/") else "iam"


# ---------------------------------------------------------------------------------------------
# Filters and page tokens.

# The fields the fake filters each list on.
INSTANCE_FIELDS = re.compile(r"name|status|labels\.[a-z][a-z0-9_-]*")
FIREWALL_FIELDS = re.compile(r"name|description|network|direction")
TYPE_FIELDS = re.compile(r"name")
_FILTER = re.compile(
    r"\s*(?P<field>[A-Za-z][A-Za-z0-9_.-]*)\s*"
    r"(?:(?P<op>!=|=|eq\b|ne\b)\s*(?P<value>\"[^\"]*\"|'[^']*'|[^\s\"'()]+)|:\s*\*)\s*"
)


def _filter(text: str, fields: re.Pattern[str], violate: Any) -> Any:
    """The predicate of a list's `filter`; an expression the fake does not understand is a
    violation (the fake would answer it wrongly) and a 400."""
    keep = _parse_filter(text, fields)
    if keep is None:
        violate([f"the fake does not implement the filter {text!r}"])
        raise _error(400, f"Invalid value for field 'filter': '{text}'. Invalid expression")
    return keep


def _parse_filter(text: str, fields: re.Pattern[str] = INSTANCE_FIELDS) -> Any:
    """A predicate on a resource for one comparison on one of `fields` (or "" for all): AIP-160
    (`=`, `!=`, `:*`) or a regular expression (`eq`, `ne`) that must match the whole field; None
    if the fake does not understand the expression."""
    if not text.strip():
        return lambda resource: True
    found = _FILTER.fullmatch(text)
    if found is None or not fields.fullmatch(found["field"]):
        return None
    field, op, value = found["field"], found["op"], found["value"]

    def actual(resource: Mapping[str, Any]) -> str | None:
        if field.startswith("labels."):
            return resource.get("labels", {}).get(field.removeprefix("labels."))
        return resource.get(field)

    if op is None:  # FIELD:*
        return lambda resource: actual(resource) is not None
    if value[:1] in ("'", '"'):
        value = value[1:-1]
    if op in ("eq", "ne"):
        try:
            pattern = re.compile(value)
        except re.error:
            return None
        want = op == "eq"
        return lambda resource: (pattern.fullmatch(actual(resource) or "") is not None) == want
    if op == "=":
        return lambda resource: actual(resource) == value
    return lambda resource: actual(resource) != value


def _page(query: Mapping[str, list[str]], text: str, default: int = MAX_RESULTS) -> tuple[int, int]:
    """(offset, size) of a Compute list's page: maxResults (0 or none: `default`, 500 as
    Compute's) and pageToken."""
    size = int((query.get("maxResults") or ["0"])[0]) or default
    if size > MAX_RESULTS:
        raise _error(
            400,
            f"Invalid value for field 'maxResults': '{size}'. Must be less than or "
            f"equal to {MAX_RESULTS}",
        )
    token = (query.get("pageToken") or [""])[0]
    if not token:
        return 0, size
    offset = _read_token(token, text)
    if offset is None:
        raise _error(400, f"Invalid value for field 'pageToken': '{token}'.")
    return offset, size


def _make_token(offset: int, filter_text: str) -> str:
    raw = json.dumps({"o": offset, "f": filter_text}).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _read_token(token: str, filter_text: str) -> int | None:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("f") != filter_text:
        return None
    offset = data.get("o")
    return offset if isinstance(offset, int) and offset > 0 else None


def _unreachable(scope: str) -> dict[str, Any]:
    """The warning of a scope Compute could not list for the project (a region it may not use:
    an organization's location policy, or one that needs enabling)."""
    return {
        "code": "UNREACHABLE",
        "message": "Scope '" + scope + "' is unreachable.",
        "data": [{"key": "scope", "value": scope}],
    }


def _no_results(scope: str) -> dict[str, Any]:
    return {
        "code": "NO_RESULTS_ON_PAGE",
        "message": "There are no results for scope '" + scope + "' on this page.",
        "data": [{"key": "scope", "value": scope}],
    }
