"""A fake Compute Engine v1 REST API on loopback, checked against Google's Discovery description.

`FakeCompute(project)` serves, on 127.0.0.1 and a free port, what `cml_infra.clouds.gcp` calls
through google-cloud-compute's REST transport (set CML_INFRA_GCP_API_ENDPOINT to `fake.url`):

- `instances.aggregatedList` (GET .../aggregated/instances): every zone scope, with the
  `NO_RESULTS_ON_PAGE` warning for zones without (matching) instances; the `filter` query in the
  AIP-160 form `FIELD = VALUE`, `FIELD != VALUE` or `labels.KEY:*` on `name`, `status` and
  `labels.KEY` (so `labels.cml-infra-managed = "true"` works); `maxResults` (default and most
  500) with `pageToken`/`nextPageToken`; `includeAllScopes` adds the region scopes.
- `instances.get` and `instances.delete`: delete answers a zone Operation that is RUNNING (the
  instance is STOPPING) until it has been polled `operation_polls` times; then it is DONE and
  the instance is gone. With `operation_polls = 0` the delete answers a DONE operation at once.
- `zoneOperations.get` (one poll; this is what `ExtendedOperation.result()` calls, through the
  transport's `_zone_operations_client`) and `zoneOperations.wait` (finishes the operation).

Every request is checked against tests/data/gcp-compute-subset.json (Compute v1 Discovery
document, revision 20261106): the path must match a method's template (with the parameter
patterns) for its HTTP method, every query parameter must be one the method or the API describes
(type, format, enum, minimum checked), required parameters must be present, and a body is allowed
only where the method describes one. Every response body is checked with jsonschema against the
method's response schema, converted from Discovery with `additionalProperties: false` added (a
misspelt field fails), int64/uint64 as digit strings; plus RFC 3339 for timestamps and full URLs
for `zone`/`selfLink`/`targetLink`/`machineType`. The description has no error schema: error
bodies are checked against Google's JSON error format (ERROR_SCHEMA below). Whatever does not
match goes to `fake.violations`, which tests assert is empty; an undescribed request (or a
described method the fake does not implement) is also answered 404, a described one with bad
parameters 400, as Google does.

Fault switches: `fail(status, ...)` answers the next request(s) with a Google error;
`fail_operation(...)` makes the next delete's operation end DONE with an error.

Note: google-cloud-compute polls an ExtendedOperation through a ZoneOperationsClient that the
transport builds itself with the *default* endpoint, so a client aimed at this fake only by its
transport's host sends its polls to compute.googleapis.com (operation_polls=0 avoids polling).
"""

from __future__ import annotations

import base64
import copy
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

SPEC_PATH = Path(__file__).resolve().parent.parent / "data" / "gcp-compute-subset.json"
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
LINK_FIELDS = ("zone", "selfLink", "targetLink", "machineType", "region")
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


def discovery() -> dict[str, Any]:
    """The parsed Discovery document (shared: do not modify)."""
    with _lock:
        if "doc" not in _cache:
            _cache["doc"] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
        return _cache["doc"]


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


def schema_validator(name: str, strict: bool = True) -> Any:
    """A jsonschema validator for one of the document's schemas (e.g. "Operation")."""
    import jsonschema

    doc = discovery()
    key = f"schema:{name}:{strict}"
    with _lock:
        if key not in _cache:
            definitions = _cache.setdefault(
                f"definitions:{strict}",
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
    """Every method of the document by id ("compute.instances.get"), with an extra key
    "_regex": the compiled path template (relative to the host, servicePath included)."""
    doc = discovery()
    with _lock:
        if "methods" not in _cache:
            found: dict[str, dict[str, Any]] = {}

            def walk(resources: Mapping[str, Any]) -> None:
                for resource in resources.values():
                    for method in resource.get("methods", {}).values():
                        entry = dict(method)
                        entry["_regex"] = _template_regex(doc["servicePath"], method)
                        entry["_literals"] = len(re.sub(r"\{[^}]*\}", "", method["path"]))
                        found[method["id"]] = entry
                    walk(resource.get("resources", {}))

            walk(doc["resources"])
            _cache["methods"] = found
        return _cache["methods"]


def _template_regex(service_path: str, method: Mapping[str, Any]) -> re.Pattern[str]:
    template = "/" + service_path + method.get("flatPath", method["path"])
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
    common = discovery()["parameters"]
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
            for error in schema_validator(name).iter_errors(data):
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
    errors = [f"{method_id}: {name}: {_where(e)}" for e in schema_validator(name).iter_errors(body)]
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
                if not value.startswith(LINK_BASE):
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
    def __init__(self, status: int, body: Any):
        super().__init__(status)
        self.status = status
        self.body = body


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


def _error(status: int, message: str, reason: str | None = None) -> _Reply:
    return _Reply(status, google_error(status, message, reason))


class FakeCompute(Loopback):
    """A fake Compute Engine v1 API server; see the module docstring.

    Public: url, project, zones, violations [str], requests [dicts: method, path, query
    {name: [values]}, id (Discovery method id or None), status], operation_polls, and
    add_instance(), instances(), instance(), operations(), link(), fail(), fail_operation(),
    close() (or use it as a context manager).
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
        self._operations: dict[tuple[str, str], dict[str, Any]] = {}
        self._faults: list[dict[str, Any]] = []
        self._op_faults: list[dict[str, Any]] = []
        self._ids = itertools.count(4_611_686_018_427_387_904 + 17)
        self._op_numbers = itertools.count(1)
        for name in ("Instance", "InstanceAggregatedList", "Operation"):
            schema_validator(name)  # convert the description before the first request needs it
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
        if created is None:
            created = datetime.now(timezone.utc)
        instance_id = str(next(self._ids))
        resource: dict[str, Any] = {
            "kind": "compute#instance",
            "id": instance_id,
            "creationTimestamp": created if isinstance(created, str) else timestamp(created),
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

    def operations(self) -> list[dict[str, Any]]:
        """The zone operations so far (as the API shows them), oldest first, each with an extra
        key "polls": how many zoneOperations.get/wait calls it has had."""
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
        """The next `count` delete operations end DONE with this error (httpErrorStatusCode,
        httpErrorMessage and error.errors[]) and leave the instance in place."""
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
            status, body = reply.status, reply.body
        except Exception as exc:  # a bug in the fake: answer 500 and make the test fail
            self._violate([f"{method} {path}: the fake raised {exc!r}"])
            status, body = 500, google_error(500, "fake crashed")
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
        if params["project"] != self.project:
            raise _error(
                403, f"Permission denied on resource project {params['project']}.", "forbidden"
            )
        with self._lock:
            if method_id == "compute.instances.aggregatedList":
                return self._aggregated_list(query)
            zone = params["zone"]
            if zone not in self.zones:
                raise _error(
                    404, f"The resource 'projects/{self.project}/zones/{zone}' was not found"
                )
            if method_id == "compute.instances.get":
                return copy.deepcopy(self._find_instance(zone, params["instance"]))
            if method_id == "compute.instances.delete":
                return self._delete(zone, params["instance"])
            op = self._operations.get((zone, params["operation"]))
            if op is None:
                where = f"projects/{self.project}/zones/{zone}/operations/{params['operation']}"
                raise _error(404, f"The resource '{where}' was not found")
            self._poll(op, finish=method_id == "compute.zoneOperations.wait")
            return self._operation_resource(op)

    def _find_instance(self, zone: str, name: str) -> dict[str, Any]:
        found = self._instances.get((zone, name))
        if found is None:
            where = f"projects/{self.project}/zones/{zone}/instances/{name}"
            raise _error(404, f"The resource '{where}' was not found")
        return found

    # -- instances.aggregatedList ---------------------------------------------------------

    def _aggregated_list(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        text = (query.get("filter") or [""])[0]
        keep = _parse_filter(text)
        if keep is None:
            self._violate([f"the fake does not implement the filter {text!r}"])
            raise _error(400, f"Invalid value for field 'filter': '{text}'. Invalid expression")
        size = int((query.get("maxResults") or ["500"])[0]) or MAX_RESULTS
        if size > MAX_RESULTS:
            raise _error(
                400,
                f"Invalid value for field 'maxResults': '{size}'. Must be less than or "
                f"equal to {MAX_RESULTS}",
            )
        offset = 0
        token = (query.get("pageToken") or [""])[0]
        if token:
            offset = _read_token(token, text)
            if offset is None:
                raise _error(400, f"Invalid value for field 'pageToken': '{token}'.")
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

    # -- instances.delete and its operation -----------------------------------------------

    def _delete(self, zone: str, name: str) -> dict[str, Any]:
        resource = self._find_instance(zone, name)
        now = datetime.now(timezone.utc)
        number = next(self._op_numbers)
        op = {
            "id": str(next(self._ids)),
            "name": f"operation-{int(now.timestamp() * 1000)}-{number:013x}-{number:08x}",
            "zone": zone,
            "operationType": "delete",
            "targetLink": resource["selfLink"],
            "targetId": resource["id"],
            "target": (zone, name),
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
        self._operations[(zone, op["name"])] = op
        resource["status"] = "STOPPING"
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
        if "error" in op:
            self._instances[op["target"]]["status"] = "RUNNING"
        else:
            self._instances.pop(op["target"], None)

    def _operation_resource(self, op: Mapping[str, Any]) -> dict[str, Any]:
        done = op["status"] == "DONE"
        out = {
            "kind": "compute#operation",
            "id": op["id"],
            "name": op["name"],
            "zone": self.link("zones", op["zone"]),
            "operationType": op["operationType"],
            "targetLink": op["targetLink"],
            "targetId": op["targetId"],
            "status": op["status"],
            "user": "fake@proj.iam.gserviceaccount.com",
            "progress": 100 if done else 0,
            "insertTime": op["insertTime"],
            "startTime": op["startTime"],
            "selfLink": self.link("zones", op["zone"], "operations", op["name"]),
        }
        if done:
            out["endTime"] = op["endTime"]
        if done and "error" in op:
            error = op["error"]
            out["httpErrorStatusCode"] = error["status"]
            out["httpErrorMessage"] = HTTP_REASONS.get(error["status"], "ERROR")
            out["error"] = {"errors": [{"code": error["code"], "message": error["message"]}]}
        return out


# ---------------------------------------------------------------------------------------------
# Filters and page tokens.

_FILTER = re.compile(
    r"\s*(?P<field>name|status|labels\.[a-z][a-z0-9_-]*)\s*"
    r"(?:(?P<op>!=|=)\s*(?P<value>\"[^\"]*\"|'[^']*'|[^\s\"'()]+)|:\s*\*)\s*"
)


def _parse_filter(text: str) -> Any:
    """A predicate on an Instance for one AIP-160 comparison (or "" for all); None if the fake
    does not understand the expression."""
    if not text.strip():
        return lambda resource: True
    found = _FILTER.fullmatch(text)
    if found is None:
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
    if op == "=":
        return lambda resource: actual(resource) == value
    return lambda resource: actual(resource) != value


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


def _no_results(scope: str) -> dict[str, Any]:
    return {
        "code": "NO_RESULTS_ON_PAGE",
        "message": "There are no results for scope '" + scope + "' on this page.",
        "data": [{"key": "scope", "value": scope}],
    }
