"""GitHub as the forge, on PyGithub: short-lived runner registrations, runner status, removal.

The long-lived token stays in this process: it is never written to a file, put in a process's
arguments or environment, or echoed in an error. The instance gets only what is minted here — a
JIT runner config (single use) or a registration token (valid for an hour).
"""

from __future__ import annotations

import os
import re
import time
import unicodedata
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cml_infra import forge
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.forge.base import Forge, Registration, RunnerInfo, RunnerRelease
from cml_infra.forge.github_api import PUBLIC_API as PUBLIC_API  # re-exported (github_app)
from cml_infra.forge.github_api import GitHubApi, check_api_url
from cml_infra.forge.github_api import NotFound as _NotFound
from cml_infra.spec import ForgeTarget

if TYPE_CHECKING:
    from cml_infra.clouds.base import Boot
    from cml_infra.spec import RunnerSpec

# Where GitHub publishes the runner's releases (on github.com and GHE.com).
RUNNER_REPO = "/repos/actions/runner"
# GitHub's rules. A user or organization name: letters, digits and single hyphens, neither
# first nor last, at most 39 characters. A repository name: letters, digits, '.', '-' and '_',
# at most 100, and not '.' or '..'.
_OWNER = re.compile(r"(?=[A-Za-z0-9-]{1,39}\Z)[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*\Z")
_REPO_NAME = re.compile(r"(?!\.{1,2}\Z)[A-Za-z0-9._-]{1,100}\Z")
# A runner group name goes to config.sh as a value of its own (--runnergroup NAME). GitHub
# documents no character set or length for it (the REST API's `name` is a plain string, and the
# UI takes spaces), so only what cannot be a name, or could be read as an option, is refused:
# empty, over 100 characters, a leading '-', leading or trailing spaces, control characters.
GROUP_MAX = 100
# What a 403 on the runner calls asks the token to have.
RUNNER_PERMISSION = (
    "admin rights on the repository (fine-grained: Administration read/write) or, for "
    "--org, the organization's self-hosted runners permission"
)
# What listing a workflow run's jobs (run_runner_jobs) needs of the token.
ACTIONS_PERMISSION = "read access to Actions (fine-grained or App: Actions read)"


def enterprise_server(api_url: str | None) -> bool:
    """GitHub Enterprise Server, whose API is under /api/v3 of its host: it names the runner
    version it requires itself, and github.com's minimum does not hold there."""
    return bool(api_url) and urlsplit(str(api_url)).path.rstrip("/").endswith("/api/v3")


def html_url(target: ForgeTarget, api_url: str) -> str:
    """The URL `config.sh --url` takes: github.com/OWNER/NAME, or the GHES host's."""
    parts = urlsplit(api_url.rstrip("/"))
    host = parts.netloc
    # GitHub.com and GHE.com data residency serve the API on api.<host>; GHES on /api/v3.
    if host == "api.github.com" or (host.startswith("api.") and host.endswith(".ghe.com")):
        host = host.removeprefix("api.")
    return f"{parts.scheme}://{host}/{target.slug}"


@forge.register("github")
class GitHubForge(Forge):
    URL_FLAG = "--github-url"

    def __init__(self, target: ForgeTarget, token: str) -> None:
        super().__init__(target, token)
        if not token:
            raise UsageError(
                "--token", "no GitHub token: give --token, CML_INFRA_TOKEN or GITHUB_TOKEN"
            )
        # check_target ran before anything was created; this holds for every forge made, one
        # from a record included, so that the token never goes out in clear text.
        check_api_url(self.URL_FLAG, target.api_url or PUBLIC_API)
        self.api_url = (target.api_url or PUBLIC_API).rstrip("/")
        self._token = token
        # `time` is looked up at each wait, so that tests can stand in for this module's clock.
        self._api = GitHubApi(
            self.api_url,
            token,
            RUNNER_PERMISSION,
            subject=target.slug,
            flag=self.URL_FLAG,
            sleep=lambda seconds: time.sleep(seconds),
        )

    @classmethod
    def check_target(cls, target: ForgeTarget) -> None:
        if bool(target.repo) == bool(target.org):
            # Else the API paths would name no scope (`orgs/None`).
            raise UsageError("--repo", "give --repo OWNER/NAME or --org ORG (one of them)")
        if target.repo is not None:
            owner, _, name = target.repo.partition("/")
            if not (_OWNER.match(owner) and _REPO_NAME.match(name)):
                raise UsageError(
                    "--repo",
                    f"{target.repo!r} is not OWNER/NAME (an owner of letters, digits and "
                    "single inner hyphens, up to 39; a name of letters, digits, '.', '-' and "
                    "'_', up to 100, not '.' or '..')",
                )
        if target.org is not None and not _OWNER.match(target.org):
            raise UsageError(
                "--org",
                f"{target.org!r} is not an organization name (letters, digits and single "
                "hyphens, not first or last, up to 39)",
            )
        if target.group is not None:
            _check_group(target.group)
        if target.api_url is not None:
            check_api_url(cls.URL_FLAG, target.api_url)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "api_url": self.api_url}

    @classmethod
    def placeholder(cls) -> Registration:
        from cml_infra.forge.github_runner import PLACEHOLDER

        return PLACEHOLDER

    @classmethod
    def agent_runner(
        cls,
        spec: RunnerSpec,
        registration: Registration,
        labels: tuple[str, ...],
        boot: Boot,
        release: RunnerRelease | None = None,
    ) -> dict[str, Any]:
        from cml_infra.forge import github_runner

        return github_runner.agent_config(spec, registration, labels, boot, release)

    def latest_runner(self, platform: str) -> RunnerRelease:
        """github.com and GHE.com: the latest release of actions/runner. GitHub Enterprise
        Server: the runner it serves for its scopes (its own version, which may lag github.com's
        releases), from the list of runner applications."""
        from cml_infra.forge import github_runner

        if enterprise_server(self.api_url):
            path = f"/{self.target.scope_path}/actions/runners/downloads"
            return github_runner.from_applications(self._request("GET", path), platform)
        try:
            data = self._request("GET", f"{RUNNER_REPO}/releases/latest")
        except _NotFound:
            raise CmlInfraError(
                f"github: {self.api_url} lists no release of actions/runner"
            ) from None
        return github_runner.from_release(data, platform)

    def runner_release(self, platform: str, version: str) -> RunnerRelease:
        from cml_infra.forge import github_runner

        if enterprise_server(self.api_url):
            served = self.latest_runner(platform)
            if served.version != version:
                raise UsageError(
                    "--runner-version",
                    f"{self.api_url} serves actions/runner {served.version}, not {version}: "
                    "GitHub Enterprise Server installs the runner it requires; drop the flag",
                )
            return served
        try:
            data = self._request("GET", f"{RUNNER_REPO}/releases/tags/v{version}")
        except _NotFound:
            raise UsageError(
                "--runner-version", f"actions/runner has no release v{version} on {self.api_url}"
            ) from None
        return github_runner.from_release(data, platform)

    def resolve_runner(self, spec: RunnerSpec, boot: Boot) -> RunnerRelease | None:
        from cml_infra.forge import github_runner

        return github_runner.resolve(self, spec, boot)

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
            url = html_url(self.target, self.api_url)
            return Registration("jit", str(data["encoded_jit_config"]), url)
        data = self._call("POST", "actions/runners/registration-token")
        return Registration("token", str(data["token"]), html_url(self.target, self.api_url))

    def runners(self) -> list[RunnerInfo]:
        found: list[RunnerInfo] = []
        page = 1
        while True:
            data = self._call("GET", "actions/runners", params={"per_page": 100, "page": page})
            batch = [_runner_info(runner) for runner in data.get("runners", [])]
            found.extend(batch)
            if len(batch) < 100:
                return found
            page += 1

    def deregister_id(self, runner_id: int) -> bool:
        try:
            self._call("DELETE", f"actions/runners/{runner_id}")
        except _NotFound:
            return False
        return True

    def last_jobs(self, runs: int = 100) -> dict[str, datetime | None]:
        """runner name → when its latest job completed (None: a job of it is still running),
        from the repository's most recent workflow runs. Organizations have no such listing."""
        if self.target.repo is None:
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

    def run_runner_jobs(
        self, run_id: str, repository: str | None = None
    ) -> dict[str, list[tuple[datetime | None, datetime | None]]]:
        """runner name → (started_at, completed_at) of each job of workflow run `run_id` (of
        every attempt) that it ran; completed_at None while the job runs. Any runner, ours or
        GitHub's. `repository` (OWNER/NAME) defaults to the target's: an organization's forge
        has none, and then nothing is asked."""
        repository = repository or self.target.repo
        if repository is None or not (run_id.isascii() and run_id.isdigit()):
            return {}
        owner, _, name = repository.partition("/")
        if not (_OWNER.match(owner) and _REPO_NAME.match(name)):
            return {}  # no such repository: a name that is not one goes into no URL
        found: dict[str, list[tuple[datetime | None, datetime | None]]] = {}
        path = f"/repos/{repository}/actions/runs/{run_id}/jobs"
        page = 1
        while True:
            params = {"filter": "all", "per_page": 100, "page": page}
            data = self._api.request("GET", path, params=params, needs=ACTIONS_PERMISSION)
            jobs = dict(data or {}).get("jobs", [])
            for job in jobs:
                if job.get("runner_name"):
                    times = (
                        _parse_time(job.get("started_at")),
                        _parse_time(job.get("completed_at")),
                    )
                    found.setdefault(str(job["runner_name"]), []).append(times)
            if len(jobs) < 100:
                return found
            page += 1

    def run_runner_names(self, run_id: str, repository: str | None = None) -> set[str]:
        """The runners GitHub says ran a job of workflow run `run_id` (see run_runner_jobs)."""
        return set(self.run_runner_jobs(run_id, repository))

    def wait_online(
        self, name: str, timeout: float, sleep: Callable[[float], None] | None = None
    ) -> RunnerInfo:
        """Poll with backoff until the runner shows `online`; GitHub's view, not the VM's."""
        deadline = time.monotonic() + timeout
        delay = 1.0
        while True:
            runner = self.runner(name)
            if runner is not None and runner.online:
                return runner
            if time.monotonic() + delay > deadline:
                seen = "never registered" if runner is None else "still offline"
                raise CmlInfraError(
                    f"runner {name} did not come online on GitHub within {timeout:.0f}s ({seen})"
                )
            (sleep or time.sleep)(delay)
            delay = min(delay * 1.5, 10.0)

    def _runner_group_id(self) -> int:
        group = self.target.group
        if group is None:
            return 1  # GitHub's "Default" group
        if not group.isdigit():
            raise UsageError(
                "--runner-group",
                "single-job (JIT) runners need the group's numeric id, e.g. --runner-group 3",
            )
        return int(group)

    def _call(
        self,
        verb: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A call on the target's scope (`repos/OWNER/NAME/…`, `orgs/ORG/…`)."""
        return dict(self._request(verb, f"/{self.target.scope_path}/{path}", body, params) or {})

    def _request(
        self,
        verb: str,
        url: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """One API call (`url` from the API root) through the shared client (github_api.py)."""
        return self._api.request(verb, url, body, params)


def _check_group(group: str) -> None:
    if not group or len(group) > GROUP_MAX:
        raise UsageError("--runner-group", f"a runner group name has 1 to {GROUP_MAX} characters")
    if group.startswith("-"):
        raise UsageError("--runner-group", f"{group!r} must not start with '-'")
    if group != group.strip():
        raise UsageError("--runner-group", f"{group!r} must not start or end with a space")
    if any(unicodedata.category(char) == "Cc" or char in "\u2028\u2029" for char in group):
        raise UsageError("--runner-group", f"{group!r} must not hold control characters")


def _runner_info(raw: dict[str, Any]) -> RunnerInfo:
    return RunnerInfo(
        id=int(raw["id"]),
        name=str(raw["name"]),
        online=raw.get("status") == "online",
        busy=bool(raw.get("busy")),
        ephemeral=bool(raw.get("ephemeral")),
        labels=tuple(str(label.get("name")) for label in raw.get("labels", [])),
    )


@forge.register_ci
def github_actions_outputs(outputs: Mapping[str, str], summary: str | None) -> None:
    """Inside a GitHub Actions step: outputs to $GITHUB_OUTPUT, a table to the job summary."""
    output = os.environ.get("GITHUB_OUTPUT")
    if output:
        with open(output, "a", encoding="utf-8") as handle:
            handle.write("".join(f"{key}={value}\n" for key, value in outputs.items()))
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary and summary:
        with open(step_summary, "a", encoding="utf-8") as handle:
            handle.write(summary)


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
