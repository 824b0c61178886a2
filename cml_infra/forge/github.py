"""GitHub as the forge, on PyGithub: short-lived runner registrations, runner status, removal.

The long-lived token stays in this process: it is never written to a file, put in a process's
arguments or environment, or echoed in an error. The instance gets only what is minted here — a
JIT runner config (single use) or a registration token (valid for an hour).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal
from urllib.parse import urlsplit

from cml_infra.errors import CmlInfraError, UsageError

PUBLIC_API = "https://api.github.com"
_OWNER = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")
_REPO = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}")
# Waiting for a rate-limit reset is worth it only when the reset is this close.
RATE_LIMIT_WAIT_MAX = 60.0


@dataclass(frozen=True)
class Scope:
    """Where runners register: one repository or a whole organization."""

    repo: str | None = None
    org: str | None = None

    @classmethod
    def parse(cls, repo: str | None, org: str | None) -> Scope:
        if bool(repo) == bool(org):
            raise UsageError("--repo", "give --repo OWNER/NAME or --org ORG (one of them)")
        if repo is not None:
            if not _REPO.fullmatch(repo):
                raise UsageError("--repo", f"{repo!r} is not OWNER/NAME")
            return cls(repo=repo)
        assert org is not None
        if not _OWNER.fullmatch(org):
            raise UsageError("--org", f"{org!r} is not an organization name")
        return cls(org=org)

    @property
    def path(self) -> str:
        return f"repos/{self.repo}" if self.repo else f"orgs/{self.org}"

    @property
    def slug(self) -> str:
        return self.repo or self.org or ""

    @property
    def tag(self) -> str:
        """A label-safe mark of the scope (GCP labels allow no '/', '.' or capitals)."""
        return hashlib.sha256(self.path.lower().encode()).hexdigest()[:16]

    def html_url(self, api_url: str) -> str:
        """The URL `config.sh --url` takes: github.com/OWNER/NAME, or the GHES host's."""
        parts = urlsplit(api_url.rstrip("/"))
        host = parts.netloc
        # GitHub.com and GHE.com data residency serve the API on api.<host>; GHES on /api/v3.
        if host == "api.github.com" or (host.startswith("api.") and host.endswith(".ghe.com")):
            host = host.removeprefix("api.")
        return f"{parts.scheme}://{host}/{self.slug}"


@dataclass(frozen=True)
class Registration:
    """What the instance needs to join: a JIT config, or a registration token and the URL."""

    kind: Literal["jit", "token"]
    secret: str
    url: str


class GitHubForge:
    def __init__(
        self, scope: Scope, token: str, api_url: str = PUBLIC_API, runner_group: str | None = None
    ) -> None:
        if not token:
            raise UsageError(
                "--token", "no GitHub token: give --token, CML_INFRA_TOKEN or GITHUB_TOKEN"
            )
        self.scope = scope
        self.api_url = api_url.rstrip("/")
        self.runner_group = runner_group
        self._token = token
        self._github: Any = None

    def describe(self) -> dict[str, Any]:
        """What a record keeps of the forge: never the token."""
        return {"kind": "github", "scope": self.scope.path, "api_url": self.api_url,
                "runner_group": self.runner_group}  # fmt: skip

    def register(self, name: str, labels: tuple[str, ...], single: bool) -> Registration:
        """A JIT config for a single-job runner, a registration token otherwise."""
        if single:
            body = {
                "name": name,
                "runner_group_id": self._runner_group_id(),
                "labels": ["self-hosted", *labels],
                "work_folder": "_work",
            }
            data = self._call("POST", "actions/runners/generate-jitconfig", body)
            return Registration(
                "jit", str(data["encoded_jit_config"]), self.scope.html_url(self.api_url)
            )
        data = self._call("POST", "actions/runners/registration-token")
        return Registration("token", str(data["token"]), self.scope.html_url(self.api_url))

    def runner(self, name: str) -> dict[str, Any] | None:
        return next((r for r in self.runners() if r.get("name") == name), None)

    def runners(self) -> list[dict[str, Any]]:
        """Every self-hosted runner registered in the scope."""
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            data = self._call("GET", "actions/runners", params={"per_page": 100, "page": page})
            batch = [dict(runner) for runner in data.get("runners", [])]
            found.extend(batch)
            if len(batch) < 100:
                return found
            page += 1

    def idle_runner(self, labels: Iterable[str]) -> dict[str, Any] | None:
        """An online, idle, reusable (not single-job) runner that carries every one of
        `labels`; the first by name, so that concurrent callers agree."""
        # GitHub matches `runs-on` labels without regard to case.
        wanted = {label.lower() for label in labels}
        fitting = [
            runner
            for runner in self.runners()
            if runner.get("status") == "online"
            and not runner.get("busy")
            and not runner.get("ephemeral")
            and wanted <= {str(label.get("name")).lower() for label in runner.get("labels", [])}
        ]
        return min(fitting, key=lambda runner: str(runner.get("name")), default=None)

    def delete_id(self, runner_id: int) -> bool:
        try:
            self._call("DELETE", f"actions/runners/{runner_id}")
        except _NotFound:
            return False
        return True

    def last_jobs(self, runs: int = 100) -> dict[str, datetime | None]:
        """runner name → when its latest job completed (None: a job of it is still running),
        from the repository's most recent workflow runs. Organizations have no such listing."""
        if self.scope.repo is None:
            return {}
        latest: dict[str, datetime | None] = {}
        data = self._call("GET", "actions/runs", params={"per_page": runs})
        for run in data.get("workflow_runs", []):
            jobs = self._call("GET", f"actions/runs/{run['id']}/jobs", params={"per_page": 100})
            for job in jobs.get("jobs", []):
                runner = job.get("runner_name")
                if not runner:
                    continue
                done = _parse_time(job.get("completed_at"))
                if done is None or job.get("status") != "completed":
                    latest[runner] = None  # running now: busy whatever came before
                elif runner not in latest:
                    latest[runner] = done
                else:
                    previous = latest[runner]
                    if previous is not None and done > previous:
                        latest[runner] = done
        return latest

    def wait_online(self, name: str, timeout: float) -> dict[str, Any]:
        """Poll with backoff until the runner shows `online`; GitHub's view, not the VM's."""
        deadline = time.monotonic() + timeout
        delay = 1.0
        while True:
            runner = self.runner(name)
            if runner is not None and runner.get("status") == "online":
                return runner
            if time.monotonic() + delay > deadline:
                seen = "never registered" if runner is None else f"still {runner.get('status')}"
                raise CmlInfraError(
                    f"runner {name} did not come online on GitHub within {timeout:.0f}s ({seen})"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 10.0)

    def delete(self, name: str) -> bool:
        """Remove the registration; False when it was already gone."""
        runner = self.runner(name)
        return runner is not None and self.delete_id(int(runner["id"]))

    def _runner_group_id(self) -> int:
        if self.runner_group is None:
            return 1  # GitHub's "Default" group
        if not self.runner_group.isdigit():
            raise UsageError(
                "--runner-group",
                "single-job (JIT) runners need the group's numeric id, e.g. --runner-group 3",
            )
        return int(self.runner_group)

    def _client(self) -> Any:
        if self._github is None:
            from github import Auth, Github

            # No PyGithub retries or pacing: it would sleep up to an hour on a rate limit; the
            # few calls made here handle limits themselves and report the reset time.
            self._github = Github(
                auth=Auth.Token(self._token),
                base_url=self.api_url,
                timeout=20,
                retry=None,
                seconds_between_requests=None,
                seconds_between_writes=None,
            )
        return self._github

    def _call(
        self,
        verb: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        from github import GithubException

        url = f"/{self.scope.path}/{path}"
        for attempt in range(2):
            try:
                _, data = self._client().requester.requestJsonAndCheck(
                    verb, url, parameters=params, input=body
                )
                return dict(data or {})
            except GithubException as exc:
                wait = _rate_limit_wait(exc)
                if wait is not None and wait <= RATE_LIMIT_WAIT_MAX and attempt == 0:
                    time.sleep(max(wait, 0.0) + 1.0)
                    continue
                raise self._error(exc, verb, url) from None
            except Exception as exc:  # requests' connection errors, timeouts, TLS failures
                if type(exc).__module__.startswith(("requests", "urllib3")):
                    raise CmlInfraError(
                        f"github: {self.api_url} is unreachable ({type(exc).__name__})"
                    ) from None
                raise
        raise AssertionError("unreachable")

    def _error(self, exc: Any, verb: str, url: str) -> CmlInfraError:
        status = exc.status
        message = _scrub(
            str((exc.data or {}).get("message", "")) if isinstance(exc.data, dict) else "",
            self._token,
        )
        where = f"{verb} {url}"
        if status == 401:
            return CmlInfraError(f"github: the token was rejected (401 {message}); check --token")
        if status == 404:
            return _NotFound(
                f"github: {self.scope.slug} not found, or the token cannot see it (404 on {where})"
            )
        wait = _rate_limit_wait(exc)
        if wait is not None:
            reset = datetime.fromtimestamp(time.time() + wait, timezone.utc)
            return CmlInfraError(
                f"github: rate limited until {reset:%Y-%m-%d %H:%M:%S} UTC ({where})"
            )
        if status == 403:
            return CmlInfraError(
                f"github: permission denied (403 {message}) on {where}; the token needs admin "
                "rights on the repository (fine-grained: Administration read/write) or, for "
                "--org, the organization's self-hosted runners permission"
            )
        return CmlInfraError(f"github: {where} failed ({status} {message})")


class _NotFound(CmlInfraError):
    pass


def _rate_limit_wait(exc: Any) -> float | None:
    """Seconds until the limit resets, when the error is GitHub's rate limit."""
    headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
    if exc.status not in (403, 429):
        return None
    if headers.get("x-ratelimit-remaining") == "0" and "x-ratelimit-reset" in headers:
        return float(headers["x-ratelimit-reset"]) - time.time()
    if "retry-after" in headers:
        value = headers["retry-after"]
        if value.strip().isdigit():
            return float(value)
        from email.utils import parsedate_to_datetime

        try:  # Retry-After may also be an HTTP date
            return parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return None


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text
