"""A fake GitHub REST API on loopback, checked against GitHub's own OpenAPI description.

`FakeGitHub(token)` serves, on 127.0.0.1 and a free port, the self-hosted-runner endpoints that
cml-infra uses (repository and organization scope), the workflow-run and job endpoints, and
`GET /repos/{owner}/{repo}`, `GET /user` and `GET /rate_limit`. Every request to the REST API and
every response the fake gives is validated with openapi-core against tests/data/github-subset.json
(a cut of GitHub's official description, made by scripts/github_subset.py); whatever does not
match is appended to `gh.violations`, which tests assert is empty. Where the description cannot
take real data the fake validates what it can: `GET /user` against private-user, a directory
listing of the contents API against content-directory, and only the status of a raw file
(`_check_response` says why).

Repository content (tests/fakes/github_repo.py): comments on issues and pull requests (seeded
with `gh.open_issue`/`gh.open_pull`; list with GitHub's pagination, create, get, update),
commit comments, pull requests (get, list, those of a commit), the Git Data API over a real
object store (tests/fakes/github_git.py: git's own blob, tree and commit ids; refs that refuse a
non-fast-forward update), the contents API (JSON or raw bytes, at a branch or commit), and on
the web host (`gh.web_url`: the fake's root, on GitHub Enterprise Server's layout too) the file
links `/{owner}/{repo}/blob/{ref}/{path}?raw=true` and `/{owner}/{repo}/raw/{ref}/{path}`, not
validated and without auth. Every repository starts with a README on `main`.

Callers (tests/fakes/github_auth.py): `token` has every right; `gh.add_token(...)` adds tokens
with limited permissions and scopes, refused with GitHub's 403 ("Resource not accessible by
integration"); `gh.add_app(...)` registers a GitHub App whose RS256 JWTs open `GET /app`, the
installation lookups and `POST /app/installations/{id}/access_tokens`, which mints `ghs_` tokens
(`gh.minted_tokens()`) that act as `{slug}[bot]` with the installation's permissions and scopes.

It also serves the releases of actions/runner (`GET /repos/actions/runner/releases/latest` and
`.../releases/tags/{tag}`, each release with its assets and the SHA-256 of each in its notes, as
GitHub writes them) and, as GitHub Enterprise Server does, the runner applications of a scope
(`GET .../actions/runners/downloads`): tests publish a release with `gh.publish_runner(...)`, and
its archives download from `/_fake/github.com/actions/runner/releases/download/v{V}/{asset}`.
With `api_prefix="/api/v3"` the REST API answers under that path only, as on GitHub Enterprise
Server (`gh.api_url`); `requests` and `request_log` then name paths from the API's root.

Faults: `gh.fail_with`/`gh.fail_count` answer the next REST requests, whatever they are, with a
given reply; `gh.fail_next(count, status, method=..., path_prefix=...)` only those that match.

Under `/_fake/` there is a control API, not validated and without auth, that the runner double
(tests/fakes/runner/) uses the way the real runner uses GitHub's private runner protocol:
register with a registration token, go online, poll for a job, report it done. Tests queue jobs
with `gh.queue_job(...)` and read their state with `gh.job(...)`.

The control API's contract is shared with the runner double: POST /_fake/register (with a
minted registration token and the runner's version), POST /_fake/runners/{id}/online|offline,
GET .../next-job (204 or a job), POST .../job-done; an ephemeral runner's registration is removed
after its job. As GitHub does, the fake refuses to register a runner older than
`gh.minimum_runner_version`, and a runner that old gets no session (`online`).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import json
import re
import secrets
import threading
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from tests.fakes.github_auth import (
    BAD_JWT,
    TOKEN_LIFETIME,
    App,
    Credential,
    accepted_header,
    bot_login,
    installation_token,
    looks_like_jwt,
    verify_jwt,
)
from tests.fakes.github_repo import RAW_TYPES, RepoRoutes
from tests.fakes.loopback import Handler, Loopback

SPEC_PATH = Path(__file__).resolve().parent.parent / "data" / "github-subset.json"
# The validator sees every request as sent to the description's own server, so that the spec is
# built once per process whatever port a fake listens on.
API_HOST = "https://api.github.com"
# The version a runner has when the double does not say (runners seeded with add_runner).
RUNNER_VERSION = "2.330.0"
# The oldest runner GitHub lets configure or register (cml_infra/forge/github_runner.py has
# the launcher's copy), and what GitHub answers an older one. config.sh of an older runner gets
# a 404 from the registration endpoint with the first message (the console output quoted in
# cert-manager/aws-privateca-issuer#478 and man-group/ArcticDB#3404); a listener that is too
# old gets the second when it asks for jobs, and exits (actions/runner#3651, #3266).
MINIMUM_RUNNER_VERSION = "2.329.0"
TOO_OLD_TO_REGISTER = (
    "Your runner version is out of date and can no longer register with GitHub. "
    "The minimum runner version required to register with GitHub Actions is now {minimum}."
)
DEPRECATED_RUNNER = "Runner version v{version} is deprecated and cannot receive messages."
RUNNER_REPO = "actions/runner"
RELEASE_ASSET = "actions-runner-{platform}-{version}.tar.gz"
RUNNER_PLATFORMS = ("linux-x64", "linux-arm64")
READ_ONLY_LABELS = ("self-hosted", "Linux", "X64")
DEFAULT_RUNNER_GROUP = (1, "Default")
DOCS_URL = "https://docs.github.com/rest"
FAKE_PREFIX = "/_fake/"
JSON_TYPE = "application/json; charset=utf-8"
ARCHIVE_TYPE = "application/octet-stream"
# Where release assets download from: github.com's web host, played by the fake's own.
DOWNLOADS = FAKE_PREFIX + "github.com/"
# Path parameters that hold slashes (`heads/main`, `a/b/c.png`), which openapi-core's path
# templates do not match: the validator sees them with their slashes escaped.
_SLASHED_PARAMETER = re.compile(r"(/repos/[^/]+/[^/]+/(?:git/refs?|contents))/(.+)\Z")
# First segments of REST paths at the host's root, which the web host's /OWNER/REPO/... is not.
_API_ROOTS = ("repos", "orgs", "app", "user", "rate_limit", "users", "installation")

_spec_lock = threading.Lock()
# openapi-core and jsonschema-path keep caches; validation is serialized to stay on the safe side.
_validate_lock = threading.Lock()
_cache: dict[str, Any] = {}


# ---------------------------------------------------------------------------------------------
# The OpenAPI description: loaded and built once per process.


def _allow_null_in_nullable_enums(node: Any) -> None:
    """OpenAPI 3.0.3 says `nullable: true` adds null to the allowed values, but a validator
    checks `enum` on its own: GitHub's `job.conclusion` (nullable, enum without null) would
    reject the null that GitHub sends for every job not yet completed. Add null to such enums."""
    if isinstance(node, dict):
        if node.get("nullable") is True and "enum" in node and None not in node["enum"]:
            node["enum"] = [*node["enum"], None]
        for value in node.values():
            _allow_null_in_nullable_enums(value)
    elif isinstance(node, list):
        for value in node:
            _allow_null_in_nullable_enums(value)


def spec() -> dict[str, Any]:
    """The parsed description (shared: do not modify), with null allowed in nullable enums."""
    with _spec_lock:
        if "spec" not in _cache:
            data = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
            _allow_null_in_nullable_enums(data)
            _cache["spec"] = data
        return _cache["spec"]


def openapi() -> Any:
    """The openapi_core.OpenAPI object for the description, built on first use (~1 s)."""
    data = spec()
    with _spec_lock:
        if "openapi" not in _cache:
            from openapi_core import OpenAPI

            _cache["openapi"] = OpenAPI.from_dict(copy.deepcopy(data))
        return _cache["openapi"]


def schema_validator(name: str) -> Any:
    """An OAS 3.0 validator for one of the description's components/schemas."""
    data = spec()
    with _spec_lock:
        key = "schema:" + name
        if key not in _cache:
            from openapi_schema_validator import OAS30Validator

            root = {"$ref": f"#/components/schemas/{name}", "components": data["components"]}
            _cache[key] = OAS30Validator(root)
        return _cache[key]


def _deref(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = spec()["components"]["schemas"][name]
    return schema


def minimal(schema: dict[str, Any] | str) -> Any:
    """The smallest value valid for a schema (a name in components/schemas, or a schema): every
    required property filled, nullable ones with null, enums with their first value."""
    if isinstance(schema, str):
        schema = {"$ref": f"#/components/schemas/{schema}"}
    schema = _deref(schema)
    if schema.get("nullable"):
        return None
    if "allOf" in schema:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            value = minimal(part)
            if isinstance(value, dict):
                merged.update(value)
        return merged
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return minimal(schema[key][0])
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "object" if "properties" in schema else None)
    if kind == "object":
        props = schema.get("properties", {})
        return {name: minimal(props.get(name, {})) for name in schema.get("required", [])}
    if kind == "array":
        return [minimal(schema.get("items", {})) for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        fmt = schema.get("format")
        if fmt == "date-time":
            return "2026-01-01T00:00:00Z"
        if fmt == "uri":
            return "https://github.com/"
        if fmt == "email":
            return "fake@example.com"
        return ""
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return False
    return None


def _merge(base: Any, changes: Mapping[str, Any]) -> Any:
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def example(schema_name: str, /, **changes: Any) -> dict[str, Any]:
    """minimal(name) with `changes` merged in (nested dicts merge key by key). A nullable
    schema (GitHub's `integration` is one) gives its non-null shape."""
    base = minimal(schema_name)
    if base is None:
        shape = dict(_deref({"$ref": f"#/components/schemas/{schema_name}"}))
        shape.pop("nullable", None)
        base = minimal(shape)
    return _merge(base, changes)


# ---------------------------------------------------------------------------------------------
# Request/response objects for openapi-core (its protocols.Request / protocols.Response).


class _MultiDict(Mapping[str, Any]):
    """Query, header or cookie values: a Mapping of first values that has getlist()."""

    def __init__(self, pairs: Mapping[str, list[str]] | None = None, fold_case: bool = False):
        self._fold = fold_case
        self._data: dict[str, list[str]] = {}
        self._names: dict[str, str] = {}
        for name, values in (pairs or {}).items():
            key = self._key(name)
            self._data.setdefault(key, []).extend(values)
            self._names.setdefault(key, name)

    def _key(self, name: str) -> str:
        return name.lower() if self._fold else name

    def __getitem__(self, name: str) -> str:
        return self._data[self._key(name)][0]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._names.values())

    def __len__(self) -> int:
        return len(self._data)

    def getlist(self, name: str) -> list[str]:
        return list(self._data.get(self._key(name), []))


class ApiRequest:
    """A request as openapi_core.protocols.Request wants it."""

    host_url = API_HOST

    def __init__(
        self,
        method: str,
        path: str,
        query: Mapping[str, list[str]] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ):
        from openapi_core.datatypes import RequestParameters

        self.method = method.lower()
        self.path = template_path(path)
        self.body = body or None
        header_lists = {k: [v] for k, v in (headers or {}).items()}
        self.content_type = (_MultiDict(header_lists, True).get("content-type") or "").lower()
        if not self.content_type and self.body:
            self.content_type = "application/json"
        self.parameters = RequestParameters(
            query=_MultiDict(query),
            header=_MultiDict(header_lists, fold_case=True),
            cookie=_MultiDict(),
            path={},
        )


class ApiResponse:
    """A response as openapi_core.protocols.Response wants it."""

    def __init__(self, status_code: int, data: bytes, headers: Mapping[str, str]):
        self.status_code = status_code
        self.data = data
        self.headers = _MultiDict({k: [v] for k, v in headers.items()}, fold_case=True)
        self.content_type = (self.headers.get("content-type") or "").lower() if data else ""


def template_path(path: str) -> str:
    """`path` as openapi-core can match it (see _SLASHED_PARAMETER)."""
    found = _SLASHED_PARAMETER.match(path)
    return f"{found[1]}/{found[2].replace('/', '%2F')}" if found else path


def _describe(error: BaseException) -> str:
    """One line for an openapi-core error, with the schema errors that caused it."""
    text = f"{type(error).__name__}: {error}"
    cause = error.__cause__
    details = [getattr(e, "message", str(e)) for e in getattr(cause, "schema_errors", ()) or ()]
    for sub in getattr(error, "errors", ()) or ():
        details.append(_describe(sub))
    if cause is not None and not details:
        details.append(f"{type(cause).__name__}: {cause}")
    if details:
        text += " [" + "; ".join(details) + "]"
    return text


def request_errors(request: ApiRequest) -> list[BaseException]:
    with _validate_lock:
        return list(openapi().iter_request_errors(request))


def response_errors(request: ApiRequest, response: ApiResponse) -> list[BaseException]:
    with _validate_lock:
        return list(openapi().iter_response_errors(request, response))


def _documented_statuses(method: str, path: str) -> set[str] | None:
    """The response codes the description documents for the operation, None if none matches."""
    from openapi_core.templating.paths.exceptions import PathError

    with _validate_lock:
        finder = openapi().request_validator.path_finder
        try:
            found = finder.find(method.lower(), f"{API_HOST}{template_path(path)}")
        except PathError:
            return None
    return set(spec()["paths"][found.path_result.pattern][method.lower()]["responses"])


# ---------------------------------------------------------------------------------------------
# The fake itself.


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class _Reply(Exception):
    """Raised by a handler to answer at once: status, JSON body (or None), extra headers."""

    def __init__(self, status: int, body: Any = None, headers: Mapping[str, str] | None = None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


def _error(status: int, message: str, **extra: Any) -> _Reply:
    return _Reply(status, {"message": message, "documentation_url": DOCS_URL, **extra})


class FakeGitHub(RepoRoutes, Loopback):
    """A fake GitHub API server; see the module docstring.

    Public attributes: url (the server), api_url (its REST API), web_url (its web host), token,
    repos, orgs, requests [(method, path, status)], request_log [dicts with the query and JSON
    body too], violations [str], fail_with, fail_count, tokens (minted runner registration and
    remove tokens), minimum_runner_version, downloads [paths of archives fetched], user_login.
    """

    def __init__(
        self,
        token: str,
        repos: tuple[str, ...] | list[str] = ("octo/repo",),
        orgs: tuple[str, ...] | list[str] = ("octo",),
        *,
        api_prefix: str = "",
    ):
        self.token = token
        self.repos = tuple(repos)
        self.orgs = tuple(orgs)
        # "/api/v3": the REST API answers there, as on GitHub Enterprise Server.
        self.api_prefix = api_prefix.rstrip("/")
        self.minimum_runner_version = MINIMUM_RUNNER_VERSION
        # actions/runner releases: version -> {"assets": {platform: bytes}, "sha256": {...},
        # "digests": bool, "published_at"}; the latest is the last published with latest=True.
        self._releases: dict[str, dict[str, Any]] = {}
        self._latest_release: str | None = None
        self._release_ids = itertools.count(90001)
        self.downloads: list[str] = []
        self.user_login = "fake-user"
        self.requests: list[tuple[str, str, int]] = []
        self.request_log: list[dict[str, Any]] = []
        self.violations: list[str] = []
        # Fault switch: while set, the next `fail_count` REST requests (not /_fake/) are answered
        # with (status, body, headers); it disarms itself (back to None and 1) once used up.
        self.fail_with: tuple[int, Any, Mapping[str, str] | None] | None = None
        self.fail_count = 1
        # Rules of fail_next(): {"method", "prefix", "count", "reply": (status, body, headers)}.
        self._faults: list[dict[str, Any]] = []
        # Minted tokens: token -> {"kind": "registration"|"remove", "scope", "expires_at"}.
        self.tokens: dict[str, dict[str, Any]] = {}
        # API tokens other than `token` (add_token, installation tokens) and the Apps.
        self._credentials: dict[str, Credential] = {}
        self._apps: dict[int, App] = {}
        self._minted: list[str] = []
        self._caller = Credential("token", self.user_login, "User")
        self._lock = threading.RLock()
        self._scopes = {f"repos/{r}".lower(): f"repos/{r}" for r in self.repos}
        self._scopes.update({f"orgs/{o}".lower(): f"orgs/{o}" for o in self.orgs})
        self._init_repo_state(self.repos)
        self._runners: dict[int, dict[str, Any]] = {}  # id -> internal record (with "scope")
        self._jobs: dict[int, dict[str, Any]] = {}
        self._runs: dict[int, dict[str, Any]] = {}
        self._label_ids: dict[str, int] = {}
        self._runner_ids = itertools.count(1)
        self._job_ids = itertools.count(1001)
        self._run_ids = itertools.count(501)
        self._repo_ids = {r.lower(): 1000 + i for i, r in enumerate(self.repos, 1)}
        openapi()  # build the description before the first request needs it
        self._start_server("fake-github")

    @property
    def api_url(self) -> str:
        """What `--github-url` takes: the REST API's root."""
        return self.url + self.api_prefix

    @property
    def web_url(self) -> str:
        """The web host's root, as cml_infra.forge.github.html_url derives it from api_url
        (the host of a GitHub Enterprise Server API under /api/v3): the fake's own root."""
        return self.url

    # -- helpers for tests ----------------------------------------------------------------

    def add_repo(self, full_name: str) -> None:
        """Serve one more repository (a README on main, like the others)."""
        with self._lock:
            if f"repos/{full_name}".lower() in self._scopes:
                return
            self.repos = (*self.repos, full_name)
            self._scopes[f"repos/{full_name}".lower()] = f"repos/{full_name}"
            self._repo_ids[full_name.lower()] = 1000 + len(self.repos)
            self._seed_repo(full_name)

    def add_token(
        self,
        token: str,
        permissions: Mapping[str, str] | None = None,
        *,
        login: str = "github-actions[bot]",
        scopes: tuple[str, ...] | list[str] | None = None,
    ) -> None:
        """Accept `token` with only `permissions` (GitHub's names: {"issues": "write",
        "pull_requests": "write", "contents": "read", "administration": "write",
        "organization_self_hosted_runners": "write", "actions": "read", ...}; None: all) on
        `scopes` (None: all). It acts as `login`: by default the Actions bot, as a workflow's
        GITHUB_TOKEN does; a login ending in [bot] is a Bot and is refused "by integration"."""
        with self._lock:
            self._credentials[token] = Credential(
                "installation" if login.endswith("[bot]") else "token",
                login,
                "Bot" if login.endswith("[bot]") else "User",
                permissions=None if permissions is None else dict(permissions),
                scopes=None if scopes is None else frozenset(self.scope_of(s) for s in scopes),
                user_id=41898282 if login == "github-actions[bot]" else 1,
            )

    def add_app(
        self,
        app_id: int,
        public_key_pem: bytes | str,
        slug: str,
        installations: Mapping[int, tuple[str, ...] | list[str]],
        permissions: Mapping[str, str],
    ) -> None:
        """Register a GitHub App: JWTs signed by the private key of `public_key_pem` (PEM)
        authenticate it; `installations` maps an installation id to the scopes it reaches
        ("repos/OWNER/NAME", "orgs/ORG": an organization's own endpoints, not its repositories,
        which are listed one by one); its installation tokens act as `{slug}[bot]` with
        `permissions`."""
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        pem = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
        with self._lock:
            self._apps[int(app_id)] = App(
                int(app_id),
                slug,
                load_pem_public_key(pem),
                dict(permissions),
                {
                    int(i): tuple(self.scope_of(s) for s in scopes)
                    for i, scopes in installations.items()
                },
            )

    def minted_tokens(self) -> list[str]:
        """Every installation token minted so far, oldest first (to search outputs for)."""
        with self._lock:
            return list(self._minted)

    def fail_next(
        self,
        count: int,
        status: int,
        body: Any = None,
        *,
        method: str | None = None,
        path_prefix: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next `count` REST requests with `method` (any if None) whose path from
        the API's root starts with `path_prefix` (any if None) with `status` and `body` (default
        GitHub's basic error); the others are served. Not validated, like fail_with."""
        if body is None:
            body = {"message": "Server Error" if status >= 500 else "Forbidden"}
            body["documentation_url"] = DOCS_URL
        with self._lock:
            self._faults.append(
                {
                    "method": method.upper() if method else None,
                    "prefix": path_prefix,
                    "count": count,
                    "reply": (status, body, dict(headers or {})),
                }
            )

    def publish_runner(
        self,
        version: str,
        archive: bytes | Path,
        *,
        platforms: tuple[str, ...] = RUNNER_PLATFORMS,
        sha256: Mapping[str, str] | None = None,
        digests: bool = True,
        latest: bool = True,
    ) -> dict[str, str]:
        """Publish release v`version` of actions/runner with `archive` as the asset of every
        platform. Its notes carry each asset's SHA-256 (`sha256` overrides some, as a release
        whose notes disagree with its files would), and with `digests` each asset also has
        GitHub's `digest`. Returns platform -> the asset's download URL."""
        data = archive if isinstance(archive, bytes) else Path(archive).read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        with self._lock:
            self._releases[version] = {
                "id": next(self._release_ids),
                "assets": dict.fromkeys(platforms, data),
                "sha256": {p: (sha256 or {}).get(p, actual) for p in platforms},
                "digest": actual if digests else None,
                "published_at": _now(),
            }
            if latest:
                self._latest_release = version
        return {p: self._download_url(version, p) for p in platforms}

    def scope_of(self, scope: str) -> str:
        """The canonical scope ("repos/OWNER/REPO" or "orgs/ORG") for a scope string; also
        accepts "OWNER/REPO" and "ORG". KeyError if the fake does not serve it."""
        key = scope.strip("/").lower()
        if not key.startswith(("repos/", "orgs/")):
            key = ("repos/" if "/" in key else "orgs/") + key
        return self._scopes[key]

    def runners(self, scope: str | None = None) -> list[dict[str, Any]]:
        """Runner objects (as the API shows them) of one scope, or of all when scope is None."""
        with self._lock:
            wanted = None if scope is None else self.scope_of(scope)
            return [
                self._public_runner(r)
                for r in self._runners.values()
                if wanted is None or r["scope"] == wanted
            ]

    def add_runner(
        self,
        scope: str,
        name: str,
        labels: tuple[str, ...] | list[str] = (),
        *,
        ephemeral: bool = False,
        status: str = "offline",
        busy: bool = False,
    ) -> dict[str, Any]:
        """Registers a runner directly (no token, not recorded): for seeding lists."""
        with self._lock:
            record = self._create_runner(self.scope_of(scope), name, labels, ephemeral=ephemeral)
            record["status"] = status
            record["busy"] = busy
            return self._public_runner(record)

    def queue_job(
        self,
        labels: tuple[str, ...] | list[str],
        seconds: float = 1.0,
        exit_code: int = 0,
        *,
        name: str | None = None,
        repo: str | None = None,
        run_id: int | None = None,
    ) -> int:
        """Queues a job (in a workflow run of its own, or in run `run_id`, in `repo`, default
        the first repo); the first online, non-busy runner whose labels include all of `labels`
        (any case) gets it when it next polls /_fake/runners/{id}/next-job."""
        with self._lock:
            full_name = self.scope_of(repo or self.repos[0]).removeprefix("repos/")
            job_id = next(self._job_ids)
            now = _now()
            if run_id is None:
                run_id = next(self._run_ids)
            self._runs.setdefault(run_id, {"id": run_id, "repo": full_name, "created_at": now})
            self._jobs[job_id] = {
                "id": job_id,
                "run_id": run_id,
                "repo": full_name,
                "name": name or f"job-{job_id}",
                "labels": list(labels),
                "seconds": float(seconds),
                "exit_code": int(exit_code),
                "status": "queued",
                "conclusion": None,
                "runner_id": None,
                "runner_name": None,
                "created_at": now,
                "started_at": None,
                "completed_at": None,
            }
            return job_id

    def job(self, job_id: int) -> dict[str, Any]:
        """{"id", "run_id", "name", "labels", "status" ("queued"|"in_progress"|"completed"),
        "conclusion", "runner_id", "runner_name", "created_at", "started_at", "completed_at"}
        (times as ISO 8601 strings, None until they happen). KeyError if unknown."""
        with self._lock:
            job = self._jobs[job_id]
            out = {k: job[k] for k in ("id", "run_id", "name", "status", "conclusion")}
            out.update(labels=list(job["labels"]), runner_id=job["runner_id"])
            out["runner_name"] = job["runner_name"]
            for key in ("created_at", "started_at", "completed_at"):
                out[key] = _iso(job[key])
            return out

    def jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self.job(job_id) for job_id in self._jobs]

    # -- state ----------------------------------------------------------------------------

    def _label(self, name: str, kind: str) -> dict[str, Any]:
        label_id = self._label_ids.setdefault(name.lower(), len(self._label_ids) + 1)
        return {"id": label_id, "name": name, "type": kind}

    def _create_runner(
        self,
        scope: str,
        name: str,
        labels: Any,
        *,
        ephemeral: bool,
        group_id: int = DEFAULT_RUNNER_GROUP[0],
    ) -> dict[str, Any]:
        read_only = [self._label(n, "read-only") for n in READ_ONLY_LABELS]
        custom: list[dict[str, Any]] = []
        seen = {n.lower() for n in READ_ONLY_LABELS}
        for label in labels:
            if label.lower() not in seen:
                seen.add(label.lower())
                custom.append(self._label(label, "custom"))
        record = {
            "id": next(self._runner_ids),
            "name": name,
            "os": "linux",
            "status": "offline",
            "busy": False,
            "ephemeral": bool(ephemeral),
            "runner_group_id": group_id,
            "version": None,
            "labels": read_only + custom,
            "scope": scope,
            "job_id": None,
        }
        self._runners[record["id"]] = record
        return record

    @staticmethod
    def _public_runner(record: Mapping[str, Any]) -> dict[str, Any]:
        keys = ("id", "name", "os", "status", "busy", "ephemeral", "runner_group_id", "version")
        out = {k: record[k] for k in keys}
        out["labels"] = [dict(label) for label in record["labels"]]
        return out

    def _mint(self, kind: str, scope: str) -> dict[str, Any]:
        token = "A" + secrets.token_hex(14).upper()
        expires = _now() + timedelta(hours=1)
        self.tokens[token] = {"kind": kind, "scope": scope, "expires_at": expires}
        return {"token": token, "expires_at": _iso(expires)}

    # -- HTTP -----------------------------------------------------------------------------

    def _serve(self, handler: Handler) -> None:
        split = urlsplit(handler.path)
        path, query = split.path, parse_qs(split.query, keep_blank_values=True)
        web = self._web_parts(path)
        if self.api_prefix and not path.startswith(FAKE_PREFIX) and web is None:
            # GitHub Enterprise Server's API lives under /api/v3; nothing answers outside it.
            inside = path.startswith(self.api_prefix + "/")
            path = path[len(self.api_prefix) :] if inside else "/__outside_the_api__" + path
        method = handler.command.upper()
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        headers = {k: v for k, v in handler.headers.items()}
        try:
            if path.startswith(FAKE_PREFIX):
                status, body, extra = self._control(method, path, raw)
                validate = False
            elif web is not None:
                with self._lock:
                    status, body, extra = self._web(method, web, query)
                validate = False
            else:
                status, body, extra, validate = self._rest(method, path, query, headers, raw)
        except Exception as exc:  # a bug in the fake: answer 500 and make the test fail
            self.violations.append(f"{method} {path}: the fake raised {exc!r}")
            status, body, extra, validate = 500, {"message": "fake crashed"}, {}, False
        data = b"" if body is None else (body if isinstance(body, bytes) else _dump(body))
        reply_headers = {}
        if data:
            reply_headers["Content-Type"] = ARCHIVE_TYPE if isinstance(body, bytes) else JSON_TYPE
        if not path.startswith(FAKE_PREFIX) and web is None:
            reply_headers.update(self._rate_headers())
        for key, value in extra.items():  # header names are case-insensitive
            for same in [k for k in reply_headers if k.lower() == key.lower()]:
                del reply_headers[same]
            reply_headers[key] = value
        if validate:
            self._check_response(method, path, query, headers, raw, status, data, reply_headers)
        with self._lock:
            self.requests.append((method, path, status))
            self.request_log.append(
                {
                    "method": method,
                    "path": path,
                    "query": {k: v[0] if len(v) == 1 else v for k, v in query.items()},
                    "json": _load(raw),
                    "status": status,
                }
            )
        handler.send_response(status)
        for key, value in reply_headers.items():
            handler.send_header(key, str(value))
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if method != "HEAD":
            handler.wfile.write(data)

    def _web_parts(self, path: str) -> list[str] | None:
        """The segments of a web file link (/OWNER/REPO/blob|raw/REF/PATH), None for any other
        path. The web host is the API's host: at its root beside the API on github.com's
        layout, outside /api/v3 on GitHub Enterprise Server's."""
        parts = [unquote(p) for p in path.split("/") if p]
        if len(parts) < 5 or parts[2] not in ("blob", "raw") or path.startswith(FAKE_PREFIX):
            return None
        if self.api_prefix:
            return None if path.startswith(self.api_prefix + "/") else parts
        return None if parts[0] in _API_ROOTS else parts

    def _rate_headers(self) -> dict[str, str]:
        reset = int(_now().timestamp()) + 3600
        return {
            "X-RateLimit-Limit": "5000",
            "X-RateLimit-Remaining": "4999",
            "X-RateLimit-Reset": str(reset),
            "X-RateLimit-Used": "1",
            "X-RateLimit-Resource": "core",
        }

    def _violation(self, method: str, path: str, what: str, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else _describe(error)
        with self._lock:
            self.violations.append(f"{method} {path}: {what}: {text}")

    def _rest(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        raw: bytes,
    ) -> tuple[int, Any, dict[str, str], bool]:
        from openapi_core.templating.paths.exceptions import PathError

        request = ApiRequest(method, path, query, headers, raw)
        errors = request_errors(request)
        unmatched = [e for e in errors if isinstance(e, PathError)]
        for error in errors:
            self._violation(method, path, "request", error)
        with self._lock:
            fault = self._fault(method, path)
            if fault is not None:
                return (*fault, False)
            if self.fail_with is not None and self.fail_count > 0:
                status, body, extra = self.fail_with
                self.fail_count -= 1
                if self.fail_count <= 0:
                    self.fail_with, self.fail_count = None, 1
                if isinstance(body, str):
                    body = body.encode()
                return status, body, dict(extra or {}), False
        try:
            if unmatched:
                raise _error(404, "Not Found")
            caller = self._authenticate(headers)
            if errors:
                # GitHub's words for a body off its schema: "Invalid request." and the reasons.
                reasons = "\n".join(_describe(e) for e in errors)
                raise _error(422, f"Invalid request.\n\n{reasons}")
            with self._lock:
                self._caller = caller
                status, body, extra = self._route(method, path, query, _load(raw), headers)
        except _Reply as reply:
            status, body, extra = reply.status, reply.body, reply.headers
        return status, body, extra, not unmatched

    def _fault(self, method: str, path: str) -> tuple[int, Any, dict[str, str]] | None:
        """The reply of the first fail_next() rule matching the request, used up once."""
        for rule in self._faults:
            if rule["method"] not in (None, method) or not path.startswith(rule["prefix"] or ""):
                continue
            rule["count"] -= 1
            if rule["count"] <= 0:
                self._faults.remove(rule)
            status, body, extra = rule["reply"]
            return status, body.encode() if isinstance(body, str) else body, dict(extra)
        return None

    def _authenticate(self, headers: Mapping[str, str]) -> Credential:
        """The caller: the main token (every right), a token of add_token(), an installation
        token, or an App's JWT (tests/fakes/github_auth.py); else GitHub's 401."""
        value = _MultiDict({k: [v] for k, v in headers.items()}, True).get("authorization", "")
        scheme, _, credential = value.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() not in ("token", "bearer") or not credential:
            raise _error(401, "Bad credentials")
        with self._lock:
            if credential == self.token:
                return Credential("token", self.user_login, "User")
            known = self._credentials.get(credential)
            if known is not None:
                if known.expires_at is not None and known.expires_at <= _now():
                    raise _error(401, "Bad credentials")
                return known
            if scheme.lower() == "bearer" and looks_like_jwt(credential):
                app = verify_jwt(credential, self._apps, _now())
                if isinstance(app, str):
                    raise _error(401, app)
                return Credential("app", app.slug, "Bot", permissions={}, app=app)
        raise _error(401, "Bad credentials")

    def _fail(self, status: int, message: str, **extra: Any) -> _Reply:
        return _error(status, message, **extra)

    def _example(self, schema: str, /, **changes: Any) -> dict[str, Any]:
        return example(schema, **changes)

    def _need(self, *alternatives: tuple[str, str]) -> None:
        """Refuse (403) a caller granted none of the (permission, level) alternatives."""
        caller = self._caller
        if caller.kind == "app":  # a JWT opens the App's own endpoints only
            raise _error(403, caller.refusal())
        if not caller.allows(*alternatives):
            header = {"X-Accepted-GitHub-Permissions": accepted_header(alternatives)}
            raise _Reply(403, {"message": caller.refusal(), "documentation_url": DOCS_URL}, header)

    def _check_response(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        raw: bytes,
        status: int,
        data: bytes,
        reply_headers: Mapping[str, str],
    ) -> None:
        what = f"response {status}"
        documented = _documented_statuses(method, path) or set()
        code = str(status)
        if code not in documented and f"{code[0]}XX" not in documented:
            # GitHub answers errors the description leaves out (401, 404 on most operations)
            # with its basic-error body; hold the fake to that.
            if status < 400:
                self._violation(method, path, what, "status not documented for the operation")
                return
            for error in schema_validator("basic-error").iter_errors(_load(data)):
                self._violation(method, path, what, error.message)
            return
        kind = next((v for k, v in reply_headers.items() if k.lower() == "content-type"), "")
        if status == 200 and kind.split(";")[0] in RAW_TYPES:
            # The description leaves out the raw media types of the contents API
            # (github/rest-api-description#6089): the status is checked, the bytes cannot be.
            return
        if status == 200 and "/contents/" in path and data.startswith(b"["):
            # A directory is a JSON array, which the operation's oneOf cannot take: its
            # discriminator (`type`) needs an object. Validate it as content-directory.
            for error in schema_validator("content-directory").iter_errors(_load(data)):
                self._violation(method, path, what, error.message)
            return
        if method == "GET" and path == "/user" and status == 200:
            # The operation's oneOf(private-user, public-user) fails on real data (see
            # shared/apispec/README.md): validate against private-user directly.
            for error in schema_validator("private-user").iter_errors(_load(data)):
                self._violation(method, path, what, error.message)
            return
        request = ApiRequest(method, path, query, headers, raw)
        for error in response_errors(request, ApiResponse(status, data, reply_headers)):
            self._violation(method, path, what, error)

    # -- REST routes (called with the lock held) -------------------------------------------

    def _scope_from_path(self, parts: list[str]) -> tuple[str, list[str]]:
        if parts[0] == "repos" and len(parts) >= 3:
            scope, rest = "/".join(parts[:3]), parts[3:]
        elif parts[0] == "orgs" and len(parts) >= 2:
            scope, rest = "/".join(parts[:2]), parts[2:]
        else:
            raise _error(404, "Not Found")
        try:
            return self.scope_of(scope), rest
        except KeyError:
            raise _error(404, "Not Found") from None

    def _route(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        body: Any,
        headers: Mapping[str, str],
    ) -> tuple[int, Any, dict[str, str]]:
        caller = self._caller
        parts = [unquote(p) for p in path.split("/") if p]
        if parts[:1] == ["app"]:
            return self._app_route(method, parts[1:], body)
        if path == "/user":
            if caller.user_type == "Bot":
                raise _error(403, caller.refusal())
            return 200, self._user(), {}
        if path == "/rate_limit":
            return 200, self._rate_limit(), {}
        if method == "GET" and "/".join(parts[:3]) == f"repos/{RUNNER_REPO}":
            return self._release_route(parts[3:])  # a public repository: any caller
        scope, rest = self._scope_from_path(parts)
        if rest == ["installation"] and method == "GET":
            return 200, self._installation_of(scope), {}
        if caller.scopes is not None and scope not in caller.scopes:
            # GitHub does not tell a repository out of reach from one that does not exist.
            if scope.startswith("repos/"):
                raise _error(404, "Not Found")
            raise _error(403, caller.refusal())
        if not rest and scope.startswith("repos/"):
            self._need(("metadata", "read"))
            return 200, self._repository(scope.removeprefix("repos/"), "full-repository"), {}
        if rest[:2] == ["actions", "runners"]:
            # A repository's runners need its administration permission; an organization's
            # the organization_self_hosted_runners one.
            name = (
                "administration"
                if scope.startswith("repos/")
                else "organization_self_hosted_runners"
            )
            self._need((name, "read" if method == "GET" else "write"))
            return self._runner_route(method, path, scope, rest[2:], query, body)
        if rest[:1] == ["actions"] and scope.startswith("repos/"):
            self._need(("actions", "read"))
            return self._runs_route(path, scope.removeprefix("repos/"), rest[1:], query)
        if scope.startswith("repos/"):
            repo = scope.removeprefix("repos/")
            found = self._repo_route(method, path, repo, rest, query, body, headers)
            if found is not None:
                return found
        raise _error(404, "Not Found")

    # -- GitHub Apps (a JWT's endpoints) ----------------------------------------------------

    def _app_caller(self) -> App:
        app = self._caller.app
        if self._caller.kind != "app" or app is None:
            raise _error(401, BAD_JWT)
        return app

    def _app_route(
        self, method: str, rest: list[str], body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        app = self._app_caller()
        if method == "GET" and not rest:
            return 200, self._integration(app), {}
        minting = len(rest) == 3 and rest[0] == "installations" and rest[2] == "access_tokens"
        if method == "POST" and minting and rest[1].isdigit():
            installation_id = int(rest[1])
            if installation_id not in app.installations:
                raise _error(404, "Not Found")
            return 201, self._mint_installation_token(app, installation_id, body or {}), {}
        raise _error(404, "Not Found")

    def _installation_of(self, scope: str) -> dict[str, Any]:
        """GET /repos/{o}/{r}/installation, /orgs/{org}/installation: the calling App's
        installation that reaches the scope."""
        app = self._app_caller()
        for installation_id, scopes in app.installations.items():
            if scope in scopes:
                return self._installation(app, installation_id)
        raise _error(404, "Not Found")

    def _integration(self, app: App) -> dict[str, Any]:
        # The App's owner: the account of its first installation, as the fake knows no other.
        scopes = [s for installed in app.installations.values() for s in installed]
        login = scopes[0].split("/")[1] if scopes else self.user_login
        return example(
            "integration",
            id=app.app_id,
            slug=app.slug,
            node_id=f"A_fake{app.app_id}",
            client_id=f"Iv1.fake{app.app_id}",
            owner=self._owner(login),
            name=app.slug,
            description=None,
            external_url=f"{self.web_url}/apps/{app.slug}",
            html_url=f"{self.web_url}/apps/{app.slug}",
            created_at=_iso(app.created_at),
            updated_at=_iso(app.created_at),
            permissions=dict(app.permissions),
            events=[],
            installations_count=len(app.installations),
        )

    def _installation(self, app: App, installation_id: int) -> dict[str, Any]:
        scopes = app.installations[installation_id]
        login = scopes[0].split("/")[1] if scopes else self.user_login
        account = self._owner(login)
        api = f"{self.api_url}/app/installations/{installation_id}"
        return example(
            "installation",
            id=installation_id,
            app_id=app.app_id,
            app_slug=app.slug,
            client_id=f"Iv1.fake{app.app_id}",
            target_id=account["id"],
            target_type=account["type"],
            account=account,
            single_file_name=None,
            # The scopes are listed one by one: the selection is always explicit.
            repository_selection="selected",
            access_tokens_url=f"{api}/access_tokens",
            repositories_url=f"{self.api_url}/installation/repositories",
            html_url=f"{self.web_url}/settings/installations/{installation_id}",
            events=[],
            permissions=dict(app.permissions),
            created_at=_iso(app.created_at),
            updated_at=_iso(app.created_at),
            suspended_by=None,
            suspended_at=None,
        )

    def _mint_installation_token(
        self, app: App, installation_id: int, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """An installation token, narrowed as asked: `permissions` no wider than the App's,
        `repositories` (names) or `repository_ids` among the installation's."""
        scopes = app.installations[installation_id]
        permissions = dict(app.permissions)
        asked = body.get("permissions") or {}
        for name, level in asked.items():
            have = permissions.get(name)
            if have is None or (have, level) == ("read", "write"):
                message = "The permissions requested are not granted to this installation."
                raise _error(422, message)
        if asked:
            permissions = dict(asked)
        repos = [s for s in scopes if s.startswith("repos/")]
        names = body.get("repositories")
        ids = body.get("repository_ids")
        if names is not None or ids is not None:
            by_name = {s.split("/")[2].lower(): s for s in repos}
            by_id = {self._repo_ids[s.removeprefix("repos/").lower()]: s for s in repos}
            chosen = [by_name.get(str(n).lower()) for n in names or ()]
            chosen += [by_id.get(i) for i in ids or ()]
            if None in chosen:
                message = (
                    "There is at least one repository that does not exist or is not "
                    "accessible to the parent installation."
                )
                raise _error(422, message)
            repos = [s for s in repos if s in chosen]
        token = installation_token()
        expires = _now() + TOKEN_LIFETIME
        reach = frozenset([*repos, *(s for s in scopes if s.startswith("orgs/"))])
        self._credentials[token] = Credential(
            "installation",
            bot_login(app.slug),
            "Bot",
            permissions=permissions,
            scopes=reach,
            expires_at=expires,
            app=app,
            installation_id=installation_id,
            user_id=100_000_000 + app.app_id,
        )
        self._minted.append(token)
        return {
            "token": token,
            "expires_at": _iso(expires),
            "permissions": permissions,
            "repository_selection": "selected",
            "repositories": [
                self._repository(s.removeprefix("repos/"), "repository") for s in repos
            ],
        }

    def _runner_route(
        self,
        method: str,
        path: str,
        scope: str,
        rest: list[str],
        query: dict[str, list[str]],
        body: Any,
    ) -> tuple[int, Any, dict[str, str]]:
        if method == "POST" and rest == ["registration-token"]:
            return 201, self._mint("registration", scope), {}
        if method == "POST" and rest == ["remove-token"]:
            return 201, self._mint("remove", scope), {}
        if method == "POST" and rest == ["generate-jitconfig"]:
            return 201, self._generate_jitconfig(scope, body), {}
        if method == "GET" and rest == ["downloads"]:
            return 200, self._runner_applications(), {}
        if method == "GET" and not rest:
            found = [r for r in self._runners.values() if r["scope"] == scope]
            name = _first(query, "name")
            if name is not None:
                found = [r for r in found if r["name"] == name]
            page, links = self._paginate(found, path, query)
            items = [self._public_runner(r) for r in page]
            return 200, {"total_count": len(found), "runners": items}, links
        record = self._runners.get(int(rest[0]))
        if record is None or record["scope"] != scope:
            raise _error(404, "Not Found")
        if method == "GET" and len(rest) == 1:
            return 200, self._public_runner(record), {}
        if method == "GET" and rest[1:] == ["labels"]:
            labels = [dict(label) for label in record["labels"]]
            return 200, {"total_count": len(labels), "labels": labels}, {}
        if method == "DELETE" and len(rest) == 1:
            if record["busy"]:
                message = f'Bad request - Runner "{record["name"]}" is still running a job"'
                raise _error(422, message)
            del self._runners[record["id"]]
            return 204, None, {}
        raise _error(404, "Not Found")

    def _generate_jitconfig(self, scope: str, body: Mapping[str, Any]) -> dict[str, Any]:
        name = body["name"]
        if any(r["name"] == name and r["scope"] == scope for r in self._runners.values()):
            raise _error(409, f"Already exists - A runner with the name {name} already exists.")
        record = self._create_runner(
            scope, name, body["labels"], ephemeral=True, group_id=body["runner_group_id"]
        )
        record["work_folder"] = body.get("work_folder", "_work")
        config = {
            "runner_id": record["id"],
            "name": name,
            "labels": list(body["labels"]),
            "server": self.url,
            "ephemeral": True,
        }
        encoded = base64.b64encode(json.dumps(config).encode()).decode()
        return {"runner": self._public_runner(record), "encoded_jit_config": encoded}

    def _runs_route(
        self, path: str, repo: str, rest: list[str], query: dict[str, list[str]]
    ) -> tuple[int, Any, dict[str, str]]:
        if rest == ["runs"]:
            runs = [r for r in self._runs.values() if r["repo"] == repo]
            runs.sort(key=lambda r: r["id"], reverse=True)
            items = [self._workflow_run(r) for r in runs]
            wanted = _first(query, "status")
            if wanted:
                items = [r for r in items if wanted in (r["status"], r["conclusion"])]
            page, links = self._paginate(items, path, query)
            return 200, {"total_count": len(items), "workflow_runs": page}, links
        if len(rest) == 3 and rest[0] == "runs" and rest[2] == "jobs":
            run = self._runs.get(int(rest[1]))
            if run is None or run["repo"] != repo:
                raise _error(404, "Not Found")
            jobs = [self._job_object(j) for j in self._jobs.values() if j["run_id"] == run["id"]]
            page, links = self._paginate(jobs, path, query)
            return 200, {"total_count": len(jobs), "jobs": page}, links
        if len(rest) == 2 and rest[0] == "jobs":
            job = self._jobs.get(int(rest[1]))
            if job is None or job["repo"] != repo:
                raise _error(404, "Not Found")
            return 200, self._job_object(job), {}
        raise _error(404, "Not Found")

    def _paginate(
        self, items: list[Any], path: str, query: dict[str, list[str]]
    ) -> tuple[list[Any], dict[str, str]]:
        per_page = max(1, min(100, int(_first(query, "per_page") or 30)))
        page = max(1, int(_first(query, "page") or 1))
        last = max(1, -(-len(items) // per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        others = {k: v for k, v in query.items() if k not in ("per_page", "page")}

        def link(number: int, rel: str) -> str:
            params = urlencode(
                [*others.items(), ("per_page", [str(per_page)]), ("page", [str(number)])],
                doseq=True,
            )
            return f'<{self.api_url}{path}?{params}>; rel="{rel}"'

        rels = []
        if page > 1:
            rels.append(link(min(page - 1, last), "prev"))
        if page < last:
            rels += [link(page + 1, "next"), link(last, "last")]
        if page > 1:
            rels.append(link(1, "first"))
        return chunk, ({"Link": ", ".join(rels)} if rels else {})

    # -- REST objects ---------------------------------------------------------------------

    def _user(self) -> dict[str, Any]:
        login = self.user_login
        api = f"{self.url}/users/{login}"
        return example(
            "private-user",
            login=login,
            id=1,
            node_id="U_fake1",
            type="User",
            url=api,
            html_url=f"https://github.com/{login}",
            avatar_url="https://avatars.githubusercontent.com/u/1",
            repos_url=f"{api}/repos",
            created_at="2020-01-01T00:00:00Z",
            updated_at="2020-01-01T00:00:00Z",
        )

    def _rate_limit(self) -> dict[str, Any]:
        reset = int(_now().timestamp()) + 3600
        core = {"limit": 5000, "remaining": 4999, "reset": reset, "used": 1}
        search = {"limit": 30, "remaining": 30, "reset": reset, "used": 0}
        return {"resources": {"core": core, "search": search}, "rate": dict(core)}

    def _owner(self, login: str) -> dict[str, Any]:
        kind = "Organization" if f"orgs/{login}".lower() in self._scopes else "User"
        api = f"{self.url}/users/{login}"
        return example(
            "simple-user",
            login=login,
            id=2,
            node_id="O_fake2",
            type=kind,
            url=api,
            html_url=f"https://github.com/{login}",
            repos_url=f"{api}/repos",
        )

    def _repository(self, full_name: str, schema: str) -> dict[str, Any]:
        owner, name = full_name.split("/", 1)
        api = f"{self.url}/repos/{full_name}"
        return example(
            schema,
            id=self._repo_ids[full_name.lower()],
            node_id=f"R_fake{self._repo_ids[full_name.lower()]}",
            name=name,
            full_name=full_name,
            owner=self._owner(owner),
            private=True,
            fork=False,
            url=api,
            html_url=f"https://github.com/{full_name}",
            clone_url=f"https://github.com/{full_name}.git",
            default_branch="main",
            visibility="private",
            permissions={
                "admin": True,
                "maintain": True,
                "push": True,
                "triage": True,
                "pull": True,
            },
        )

    def _job_object(self, job: Mapping[str, Any]) -> dict[str, Any]:
        repo, run_id = job["repo"], job["run_id"]
        runner_assigned = job["runner_id"] is not None
        return example(
            "job",
            id=job["id"],
            run_id=run_id,
            run_url=f"{self.url}/repos/{repo}/actions/runs/{run_id}",
            run_attempt=1,
            node_id=f"CR_fake{job['id']}",
            head_sha="0" * 40,
            url=f"{self.url}/repos/{repo}/actions/jobs/{job['id']}",
            html_url=f"https://github.com/{repo}/actions/runs/{run_id}/job/{job['id']}",
            status=job["status"],
            conclusion=job["conclusion"],
            created_at=_iso(job["created_at"]),
            # GitHub shows a queued job's creation time as its start time.
            started_at=_iso(job["started_at"] or job["created_at"]),
            completed_at=_iso(job["completed_at"]),
            name=job["name"],
            check_run_url=f"{self.url}/repos/{repo}/check-runs/{job['id']}",
            labels=list(job["labels"]),
            runner_id=job["runner_id"],
            runner_name=job["runner_name"],
            runner_group_id=DEFAULT_RUNNER_GROUP[0] if runner_assigned else None,
            runner_group_name=DEFAULT_RUNNER_GROUP[1] if runner_assigned else None,
            workflow_name="CI",
            head_branch="main",
        )

    def _workflow_run(self, run: Mapping[str, Any]) -> dict[str, Any]:
        repo, run_id = run["repo"], run["id"]
        jobs = [j for j in self._jobs.values() if j["run_id"] == run_id]
        if all(j["status"] == "completed" for j in jobs):
            status = "completed"
            failed = any(j["conclusion"] == "failure" for j in jobs)
            conclusion: str | None = "failure" if failed else "success"
        else:
            status = "in_progress" if any(j["status"] != "queued" for j in jobs) else "queued"
            conclusion = None
        api = f"{self.url}/repos/{repo}/actions/runs/{run_id}"
        started = [j["started_at"] for j in jobs if j["started_at"]]
        changes = [run["created_at"], *started, *(j["completed_at"] for j in jobs)]
        return example(
            "workflow-run",
            id=run_id,
            name="CI",
            node_id=f"WFR_fake{run_id}",
            head_branch="main",
            head_sha="0" * 40,
            path=".github/workflows/ci.yml",
            display_title="CI",
            run_number=run_id,
            run_attempt=1,
            event="push",
            status=status,
            conclusion=conclusion,
            workflow_id=1,
            url=api,
            html_url=f"https://github.com/{repo}/actions/runs/{run_id}",
            created_at=_iso(run["created_at"]),
            updated_at=_iso(max(m for m in changes if m is not None)),
            run_started_at=_iso(min(started) if started else run["created_at"]),
            jobs_url=f"{api}/jobs",
            logs_url=f"{api}/logs",
            check_suite_url=f"{self.url}/repos/{repo}/check-suites/{run_id}",
            cancel_url=f"{api}/cancel",
            rerun_url=f"{api}/rerun",
            artifacts_url=f"{api}/artifacts",
            workflow_url=f"{self.url}/repos/{repo}/actions/workflows/1",
            repository=self._repository(repo, "minimal-repository"),
            head_repository=self._repository(repo, "minimal-repository"),
            pull_requests=[],
        )

    # -- actions/runner releases ------------------------------------------------------------

    def _download_url(self, version: str, platform: str) -> str:
        name = RELEASE_ASSET.format(platform=platform, version=version)
        return f"{self.url}{DOWNLOADS}{RUNNER_REPO}/releases/download/v{version}/{name}"

    def _release_route(self, rest: list[str]) -> tuple[int, Any, dict[str, str]]:
        if rest == ["releases", "latest"] and self._latest_release is not None:
            return 200, self._release(self._latest_release), {}
        tagged = len(rest) == 3 and rest[:2] == ["releases", "tags"] and rest[2].startswith("v")
        if tagged and rest[2][1:] in self._releases:
            return 200, self._release(rest[2][1:]), {}
        raise _error(404, "Not Found")

    def _release(self, version: str) -> dict[str, Any]:
        """A release as GitHub describes actions/runner's: an asset per platform, and notes
        with the SHA-256 of each between GitHub's markers."""
        release = self._releases[version]
        api = f"{self.api_url}/repos/{RUNNER_REPO}/releases/{release['id']}"
        published = _iso(release["published_at"])
        assets = []
        for number, (platform, data) in enumerate(release["assets"].items()):
            name = RELEASE_ASSET.format(platform=platform, version=version)
            asset = example(
                "release-asset",
                id=release["id"] * 10 + number,
                node_id=f"RA_fake{release['id']}{number}",
                name=name,
                label="",
                state="uploaded",
                content_type="application/gzip",
                size=len(data),
                download_count=0,
                url=f"{self.api_url}/repos/{RUNNER_REPO}/releases/assets/{release['id']}{number}",
                browser_download_url=self._download_url(version, platform),
                created_at=published,
                updated_at=published,
            )
            asset["digest"] = f"sha256:{release['digest']}" if release["digest"] else None
            assets.append(asset)
        checksums = "".join(
            f"- {RELEASE_ASSET.format(platform=p, version=version)} "
            f"<!-- BEGIN SHA {p} -->{sha}<!-- END SHA {p} -->\n"
            for p, sha in release["sha256"].items()
        )
        body = (
            f"## What's Changed\n* Runner release {version}\n\n## Linux x64\n\n"
            "``` bash\n# Create a folder\nmkdir actions-runner && cd actions-runner\n```\n\n"
            "## SHA-256 Checksums\n\nThe SHA-256 checksums for the packages included in this "
            f"build are shown below:\n\n{checksums}"
        )
        return example(
            "release",
            id=release["id"],
            node_id=f"RE_fake{release['id']}",
            url=api,
            html_url=f"https://github.com/{RUNNER_REPO}/releases/tag/v{version}",
            assets_url=f"{api}/assets",
            upload_url=f"https://uploads.github.com/repos/{RUNNER_REPO}/releases/{release['id']}"
            "/assets{?name,label}",
            tarball_url=f"{self.api_url}/repos/{RUNNER_REPO}/tarball/v{version}",
            zipball_url=f"{self.api_url}/repos/{RUNNER_REPO}/zipball/v{version}",
            tag_name=f"v{version}",
            target_commitish="main",
            name=f"v{version}",
            body=body,
            draft=False,
            prerelease=False,
            created_at=published,
            published_at=published,
            author=self._owner("github-actions[bot]"),
            assets=assets,
        )

    def _runner_applications(self) -> list[dict[str, Any]]:
        """What GitHub Enterprise Server lists for a scope: the runner it serves (here, the
        latest release), one entry per platform, with its checksum."""
        if self._latest_release is None:
            return []
        version = self._latest_release
        release = self._releases[version]
        found = []
        for platform in release["assets"]:
            os_name, _, architecture = platform.partition("-")
            found.append(
                {
                    "os": os_name,
                    "architecture": architecture,
                    "download_url": self._download_url(version, platform),
                    "filename": RELEASE_ASSET.format(platform=platform, version=version),
                    "sha256_checksum": release["sha256"][platform],
                }
            )
        return found

    def _download(self, path: str) -> tuple[int, Any, dict[str, str]]:
        prefix = f"{DOWNLOADS}{RUNNER_REPO}/releases/download/v"
        version, _, name = path.removeprefix(prefix).partition("/")
        release = self._releases.get(version) if path.startswith(prefix) else None
        for platform, data in (release or {}).get("assets", {}).items():
            if name == RELEASE_ASSET.format(platform=platform, version=version):
                self.downloads.append(path)
                return 200, data, {}
        return 404, b"Not Found", {"Content-Type": "text/plain"}

    # -- the control API for the runner double ---------------------------------------------

    def _control(self, method: str, path: str, raw: bytes) -> tuple[int, Any, dict[str, str]]:
        parts = [p for p in path[len(FAKE_PREFIX) :].split("/") if p]
        body = _load(raw)
        if not isinstance(body, dict):
            body = {}
        try:
            with self._lock:
                if method == "GET" and path.startswith(DOWNLOADS):
                    return self._download(path)
                if method == "POST" and parts == ["register"]:
                    return 201, self._register(body), {}
                if len(parts) == 3 and parts[0] == "runners" and parts[1].isdigit():
                    record = self._runners.get(int(parts[1]))
                    if record is None:
                        raise _Reply(404, {"message": "runner not found"})
                    action = (method, parts[2])
                    if action == ("POST", "online"):
                        version = str(body.get("version") or record["version"] or RUNNER_VERSION)
                        if self._too_old(version):
                            message = DEPRECATED_RUNNER.format(version=version)
                            raise _Reply(403, {"message": message})
                        record.update(status="online", version=version)
                        return 200, {"status": record["status"]}, {}
                    if action == ("POST", "offline"):
                        record["status"] = "offline"
                        return 200, {"status": record["status"]}, {}
                    if action == ("GET", "next-job"):
                        return self._next_job(record)
                    if action == ("POST", "job-done"):
                        return 200, self._job_done(record, body), {}
                raise _Reply(404, {"message": f"no fake endpoint {method} {path}"})
        except _Reply as reply:
            return reply.status, reply.body, reply.headers

    def _register(self, body: Mapping[str, Any]) -> dict[str, Any]:
        minted = self.tokens.get(str(body.get("token")))
        try:
            scope = self.scope_of(str(body.get("scope", "")))
        except KeyError:
            scope = None
        if (
            minted is None
            or minted["kind"] != "registration"
            or minted["scope"] != scope
            or minted["expires_at"] <= _now()
        ):
            raise _Reply(401, {"message": "invalid registration token"})
        name = body.get("name")
        labels = body.get("labels") or []
        if not isinstance(name, str) or not name or not isinstance(labels, list):
            raise _Reply(400, {"message": "name (string) and labels (list) are required"})
        version = body.get("version")
        if version is not None and self._too_old(str(version)):
            message = TOO_OLD_TO_REGISTER.format(minimum=self.minimum_runner_version)
            raise _Reply(404, {"message": message})
        for old in [r for r in self._runners.values() if r["scope"] == scope]:
            if old["name"] == name:  # as config.sh --replace does
                del self._runners[old["id"]]
        record = self._create_runner(scope, name, labels, ephemeral=bool(body.get("ephemeral")))
        record["version"] = version
        return {"runner_id": record["id"]}

    def _too_old(self, version: str) -> bool:
        try:
            return _version_key(version) < _version_key(self.minimum_runner_version)
        except ValueError:
            return True

    def _next_job(self, record: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        if record["status"] != "online" or record["busy"]:
            return 204, None, {}
        names = {label["name"].lower() for label in record["labels"]}
        for job in self._jobs.values():
            if job["status"] == "queued" and {n.lower() for n in job["labels"]} <= names:
                job.update(status="in_progress", started_at=_now())
                job.update(runner_id=record["id"], runner_name=record["name"])
                record.update(busy=True, job_id=job["id"])
                reply = {k: job[k] for k in ("name", "seconds", "exit_code")}
                return 200, {"job_id": job["id"], **reply}, {}
        return 204, None, {}

    def _job_done(self, record: dict[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
        job = self._jobs.get(body.get("job_id"))  # type: ignore[arg-type]
        conclusion = body.get("conclusion")
        if job is None or job["runner_id"] != record["id"] or job["status"] != "in_progress":
            raise _Reply(400, {"message": "no such job in progress on this runner"})
        if conclusion not in ("success", "failure"):
            raise _Reply(400, {"message": 'conclusion must be "success" or "failure"'})
        job.update(status="completed", conclusion=conclusion, completed_at=_now())
        record.update(busy=False, job_id=None)
        if record["ephemeral"]:  # GitHub removes ephemeral runners once their job is done
            self._runners.pop(record["id"], None)
        return {"job_id": job["id"], "status": "completed"}


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _first(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _dump(body: Any) -> bytes:
    return json.dumps(body).encode()


def _load(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None
