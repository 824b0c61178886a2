"""The report's local files, stored in the repository itself on an orphan branch.

Through the Git Data API: a blob per new file, one tree on top of the branch's, one commit, then
the ref created or moved forward. Paths are content-addressed (`<sha256>/<file name>`), so a
re-run finds its files already there and writes nothing, and two reports never overwrite each
other's files. Links point at `{web}/{owner}/{repo}/blob/{commit}/{path}?raw=true`: GitHub
renders that for whoever can read the repository, so a private repository's plots stay private
(no third-party asset host).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from cml_infra.errors import CmlInfraError, UsageError

if TYPE_CHECKING:
    from cml_infra.forge.github_api import GitHubApi

BRANCH_FLAG = "--assets-branch"
DEFAULT_BRANCH = "cml-infra-assets"
# GitHub refuses a blob over 100 MiB (its hard limit for a file in a repository).
MAX_FILE_BYTES = 100 * 1024 * 1024
# Another job moving the branch between our read and our update: read again, this many times.
ATTEMPTS = 5
CONTENTS_PERMISSION = (
    "write access to the repository's contents for the assets branch (fine-grained or App: "
    "Contents read/write)"
)
COMMIT_MESSAGE = "cml-infra: report assets"
# git check-ref-format: no control characters, space, ~ ^ : ? * [ \ or "..", "@{", "//".
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")


@dataclass(frozen=True)
class Asset:
    """A local file to publish: `path` is where it lives on the branch."""

    file: Path
    sha256: str
    size: int

    @property
    def path(self) -> str:
        return f"{self.sha256}/{self.file.name}"


@dataclass(frozen=True)
class Upload:
    """One linked file: `local` its path here, `branch_path` its path on the assets branch,
    `uploaded` whether this run added it (False: already there from an earlier run; on a dry
    run, which looks nothing up, always False)."""

    local: str
    branch_path: str
    uploaded: bool


def check_branch(branch: str) -> None:
    """A branch name git takes (git check-ref-format's rules)."""
    parts = branch.split("/")
    if (
        not branch
        or len(branch) > 255
        or _BAD_REF.search(branch)
        or branch in ("@", "HEAD")
        or branch.startswith(("/", "-"))
        or branch.endswith(("/", "."))
        or any(not part or part.startswith(".") or part.endswith(".lock") for part in parts)
    ):
        raise UsageError(
            BRANCH_FLAG,
            f"{branch!r} is not a branch name git takes (no spaces, control characters, "
            "~ ^ : ? * [ \\, '..', '@{', '//', no part starting with '.' or ending in '.lock', "
            f"not ending in '/' or '.'); e.g. {DEFAULT_BRANCH}",
        )


def inspect(files: Iterable[Path], token: str | None = None) -> list[Asset]:
    """Each distinct file's size and SHA-256, in order; a file over GitHub's limit, or one
    holding the token, is a UsageError naming it, before anything is uploaded."""
    assets: dict[Path, Asset] = {}
    for file in files:
        if file in assets:
            continue
        size = file.stat().st_size
        if size > MAX_FILE_BYTES:
            raise UsageError(
                str(file),
                f"{size / 1024 / 1024:.1f} MiB is over GitHub's limit of 100 MiB for a file "
                "in a repository; link a smaller file or keep it out of the report",
            )
        digest = hashlib.sha256()
        needle = token.encode() if token else b""
        tail = b""
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
                if needle and needle in tail + chunk:
                    raise UsageError(str(file), "holds the GitHub token; refusing to publish it")
                tail = chunk[-len(needle) :] if needle else b""
        assets[file] = Asset(file, digest.hexdigest(), size)
    return list(assets.values())


def web_root(api_url: str, repo: str) -> str:
    """`{web}/{owner}/{repo}`: github.com, GHE.com or the GHES host of the API."""
    from cml_infra.forge.github import html_url
    from cml_infra.spec import ForgeTarget

    return html_url(ForgeTarget(repo=repo), api_url)


def link(api_url: str, repo: str, ref: str, path: str) -> str:
    """The URL a comment shows the file at: GitHub's raw view of the blob at `ref`."""
    from cml_infra.comment.markdown import url_path

    return f"{web_root(api_url, repo)}/blob/{url_path(ref)}/{url_path(path)}?raw=true"


class Publisher:
    """Puts assets on the branch of one repository with one API client."""

    def __init__(self, api: GitHubApi, repo: str, branch: str) -> None:
        self.api = api
        self.repo = repo
        self.branch = branch
        self._git = f"/repos/{repo}/git"

    def publish(self, assets: Sequence[Asset]) -> tuple[str, list[Upload]]:
        """The commit that holds every asset, and what became of each. Nothing is written when
        all are there already."""
        blobs: dict[str, str] = {}  # path -> blob sha, kept across attempts
        for _ in range(ATTEMPTS):
            head = self._head()
            present = self._paths(head) if head else set()
            missing = [asset for asset in assets if asset.path not in present]
            if head and not missing:
                return head[0], [Upload(str(a.file), a.path, False) for a in assets]
            for asset in missing:
                if asset.path not in blobs:
                    blobs[asset.path] = self._blob(asset)
            commit = self._commit(head, [(asset.path, blobs[asset.path]) for asset in missing])
            if self._move(head, commit):
                uploaded = {asset.path for asset in missing}
                return commit, [Upload(str(a.file), a.path, a.path in uploaded) for a in assets]
        raise CmlInfraError(
            f"github: the branch {self.branch} of {self.repo} kept moving while the assets were "
            f"added ({ATTEMPTS} attempts); run again"
        )

    def _request(self, verb: str, path: str, body: Any = None, **params: Any) -> Any:
        return self.api.request(verb, path, body, params or None, needs=CONTENTS_PERMISSION)

    def _ref_path(self) -> str:
        return f"heads/{quote(self.branch, safe='/')}"

    def _head(self) -> tuple[str, str] | None:
        """The branch's commit and its tree, or None while the branch does not exist."""
        from cml_infra.forge.github_api import NotFound

        try:
            ref = self._request("GET", f"{self._git}/ref/{self._ref_path()}")
        except NotFound:
            return None
        commit_sha = str(ref["object"]["sha"])
        commit = self._request("GET", f"{self._git}/commits/{commit_sha}")
        return commit_sha, str(commit["tree"]["sha"])

    def _paths(self, head: tuple[str, str]) -> set[str]:
        """The blobs of the head's tree. A tree too large to list whole (truncated) lists
        fewer: the files not seen are uploaded again, to the same paths, harmlessly."""
        tree = self._request("GET", f"{self._git}/trees/{head[1]}", recursive="1")
        return {
            str(entry["path"])
            for entry in tree.get("tree", [])
            if isinstance(entry, dict) and entry.get("type") == "blob"
        }

    def _blob(self, asset: Asset) -> str:
        content = base64.b64encode(asset.file.read_bytes()).decode("ascii")
        blob = self._request(
            "POST", f"{self._git}/blobs", {"content": content, "encoding": "base64"}
        )
        return str(blob["sha"])

    def _commit(self, head: tuple[str, str] | None, entries: list[tuple[str, str]]) -> str:
        body: dict[str, Any] = {
            "tree": [
                {"path": path, "mode": "100644", "type": "blob", "sha": sha}
                for path, sha in entries
            ]
        }
        if head:
            body["base_tree"] = head[1]
        tree = self._request("POST", f"{self._git}/trees", body)
        commit = self._request(
            "POST",
            f"{self._git}/commits",
            {
                "message": COMMIT_MESSAGE,
                "tree": str(tree["sha"]),
                # No parent when the branch is new: an orphan, sharing no history with the code.
                "parents": [head[0]] if head else [],
            },
        )
        return str(commit["sha"])

    def _move(self, head: tuple[str, str] | None, commit: str) -> bool:
        """Point the branch at `commit`: create it, or fast-forward it. False when another job
        got there first (422: the ref exists, or the update is not a fast-forward)."""
        from cml_infra.forge.github_api import GitHubApiError

        try:
            if head is None:
                self._request(
                    "POST", f"{self._git}/refs", {"ref": f"refs/heads/{self.branch}", "sha": commit}
                )
            else:
                self._request(
                    "PATCH", f"{self._git}/refs/{self._ref_path()}", {"sha": commit, "force": False}
                )
        except GitHubApiError as exc:
            if exc.status == 422:
                return False
            raise
        return True
