"""Where a comment goes: `--target pr/N | commit/SHA | issue/N`, else the workflow's event.

Inside GitHub Actions the event says it: a pull request's conversation on `pull_request` (and
`pull_request_target`, reviews), an issue's on `issues` and `issue_comment` (a comment on a pull
request arrives as `issue_comment` too, with the pull request's number: the same thread). Any
other event (push, workflow_dispatch, schedule, …) comments on the commit `GITHUB_SHA`, or with
`--pr` on the open pull request whose head that commit is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cml_infra.errors import CmlInfraError, UsageError

if TYPE_CHECKING:
    from cml_infra.forge.github_api import GitHubApi

TARGET_FLAG = "--target"
FORMS = "pr/N, issue/N or commit/SHA"
_NUMBER = re.compile(r"[1-9][0-9]{0,9}\Z")
_SHA = re.compile(r"[0-9a-fA-F]{7,40}\Z")
# Events whose payload names a pull request, and those that name an issue.
PULL_REQUEST_EVENTS = (
    "pull_request",
    "pull_request_target",
    "pull_request_review",
    "pull_request_review_comment",
)
ISSUE_EVENTS = ("issues", "issue_comment")
PULLS_PERMISSION = "read access to pull requests (fine-grained or App: Pull requests read)"


@dataclass(frozen=True)
class Target:
    """A thread to comment on. `kind` is "pr", "issue" or "commit"; `ref` the number or SHA."""

    repo: str
    kind: str
    ref: str

    @property
    def threaded(self) -> bool:
        """Pull requests and issues share GitHub's issue comments; commits have their own."""
        return self.kind in ("pr", "issue")

    def describe(self) -> str:
        what = {"pr": "pull request #", "issue": "issue #", "commit": "commit "}[self.kind]
        return f"{what}{self.ref} of {self.repo}"


def parse(text: str, repo: str) -> Target:
    """`--target`'s value."""
    kind, _, ref = text.strip().partition("/")
    kind = {"pull": "pr"}.get(kind.lower(), kind.lower())
    if kind in ("pr", "issue") and _NUMBER.match(ref):
        return Target(repo, kind, ref)
    if kind == "commit" and _SHA.match(ref):
        return Target(repo, kind, ref.lower())
    raise UsageError(
        TARGET_FLAG, f"{text!r} is not a target; give {FORMS} (N a number, SHA 7 to 40 hex digits)"
    )


def repository(flag: str | None, env: Mapping[str, str]) -> str:
    """--repo, else the workflow's GITHUB_REPOSITORY; checked as GitHub names repositories."""
    from cml_infra.forge.github import GitHubForge
    from cml_infra.spec import ForgeTarget

    repo = flag or env.get("GITHUB_REPOSITORY", "")
    if not repo:
        raise UsageError("--repo", "no repository: give --repo OWNER/NAME (or GITHUB_REPOSITORY)")
    GitHubForge.check_target(ForgeTarget(repo=repo))
    return repo


def detect(flag: str | None, repo: str, env: Mapping[str, str]) -> Target:
    """--target, else the target the workflow's event names (see the module docstring)."""
    if flag:
        return parse(flag, repo)
    event = env.get("GITHUB_EVENT_NAME", "")
    if event in PULL_REQUEST_EVENTS:
        payload = _payload(env)
        number = _number(payload.get("pull_request")) or _number(payload)
        if number is None:
            raise UsageError("GITHUB_EVENT_PATH", f"the {event} event names no pull request")
        return Target(repo, "pr", number)
    if event in ISSUE_EVENTS:
        number = _number(_payload(env).get("issue"))
        if number is None:
            raise UsageError("GITHUB_EVENT_PATH", f"the {event} event names no issue")
        return Target(repo, "issue", number)
    sha = env.get("GITHUB_SHA", "")
    if sha:
        if not _SHA.match(sha):
            raise UsageError("GITHUB_SHA", f"{sha!r} is not a commit SHA")
        return Target(repo, "commit", sha.lower())
    raise UsageError(
        TARGET_FLAG,
        f"no target: give {FORMS}, or run inside a GitHub Actions workflow "
        "(GITHUB_EVENT_NAME, GITHUB_EVENT_PATH, GITHUB_SHA)",
    )


def open_pull(api: GitHubApi, target: Target) -> Target:
    """The open pull request whose head is the target's commit (`--pr`): the most recent one
    when several are open on it. None open: CmlInfraError (exit 1), GitHub's answer, not the
    input, is what failed."""
    path = f"/repos/{target.repo}/commits/{target.ref}/pulls"
    pulls: list[dict[str, Any]] = []
    page = 1
    while True:
        batch = api.request(
            "GET", path, params={"per_page": 100, "page": page}, needs=PULLS_PERMISSION
        )
        batch = batch if isinstance(batch, list) else []
        pulls += [pull for pull in batch if isinstance(pull, dict)]
        if len(batch) < 100:
            break
        page += 1
    open_ = [pull for pull in pulls if pull.get("state") == "open"]
    heads = [pull for pull in open_ if str(pull.get("head", {}).get("sha", "")) == target.ref]
    chosen = max(heads or open_, key=lambda pull: int(pull.get("number", 0)), default=None)
    if chosen is None:
        raise CmlInfraError(f"no open pull request for commit {target.ref} in {target.repo}")
    return Target(target.repo, "pr", str(int(chosen["number"])))


def _payload(env: Mapping[str, str]) -> dict[str, Any]:
    path = env.get("GITHUB_EVENT_PATH", "")
    if not path:
        raise UsageError("GITHUB_EVENT_PATH", "not set: give --target " + FORMS)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise UsageError("GITHUB_EVENT_PATH", f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise UsageError("GITHUB_EVENT_PATH", f"{path} is not a JSON event") from None
    if not isinstance(data, dict):
        raise UsageError("GITHUB_EVENT_PATH", f"{path} is not a JSON event")
    return data


def _number(node: object) -> str | None:
    if isinstance(node, dict):
        value = node.get("number")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return str(value)
    return None
