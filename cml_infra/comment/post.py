"""`cml-infra comment create|update`: a markdown report as a comment, its local files stored in
the repository.

The order of work keeps a failure from leaving half a report: first everything is read and
checked (the report, every linked file and its size, the body's length once the links are
rewritten), then the files go to the assets branch, and the comment is posted last. Files
uploaded before a failure are named in the error; they are harmless (content-addressed paths on
a branch of their own) and a re-run reuses them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cml_infra.comment import assets as assets_module
from cml_infra.comment import markdown
from cml_infra.comment.target import Target
from cml_infra.errors import CmlInfraError, UsageError

if TYPE_CHECKING:
    from cml_infra.forge import Credential
    from cml_infra.forge.github_api import GitHubApi

# GitHub refuses a comment body longer than this many characters.
MAX_BODY = 65_536
COMMENTS_PERMISSION = (
    "write access to the repository's pull requests and issues (fine-grained or App: Pull "
    "requests and Issues read/write)"
)
COMMIT_COMMENTS_PERMISSION = (
    "write access to the repository's contents, for commit comments (fine-grained or App: "
    "Contents read/write)"
)
# A commit SHA's length: the body's length is checked before the commit exists.
_SHA_PLACEHOLDER = "0" * 40


@dataclass(frozen=True)
class CommentOptions:
    """What `comment create|update` was asked; `source` is a file or "-" for stdin; `token` a
    token, or a Credential (a GitHub App) that mints one for the repository."""

    source: str
    update: bool = False
    target: str | None = None
    pr: bool = False
    repo: str | None = None
    token: str | Credential | None = None
    github_url: str | None = None
    watermark_title: str = "report"
    rm_watermark: bool = False
    publish: bool = True
    assets_branch: str = assets_module.DEFAULT_BRANCH
    dry_run: bool = False


@dataclass(frozen=True)
class CommentResult:
    """`url`: the comment's page (None on a dry run); `target`: where it went, in words;
    `markdown`: the body posted (or that would be); `uploads`: each local file linked;
    `updated`: an earlier comment of ours was edited rather than a new one made."""

    url: str | None
    target: str
    markdown: str
    uploads: tuple[assets_module.Upload, ...]
    updated: bool = False


def comment(options: CommentOptions, env: Mapping[str, str] | None = None) -> CommentResult:
    """Post (or, with `update`, edit in place) the report; see the module docstring.

    `env` is the workflow's environment (default: this process's): GITHUB_REPOSITORY,
    GITHUB_EVENT_NAME, GITHUB_EVENT_PATH, GITHUB_SHA and GITHUB_API_URL (the API of the GitHub
    the workflow runs on, when --github-url is not given).

    With `dry_run` no token is needed and nothing is asked of GitHub: the markdown comes back
    with links to the assets branch by name (`…/blob/{branch}/{path}?raw=true`). A posted
    comment links each file at the commit that added it instead, so that the link keeps working
    whatever later happens to the branch (another report's commit on top, a force-push, the
    branch deleted and made again), and the file's content-addressed path keeps it the same file.
    """
    from cml_infra.comment import target as targets

    env = os.environ if env is None else env
    plan = _check(options, env)
    if options.dry_run:
        return _dry_run(options, plan)
    api = _api(options, plan)
    uploads: list[assets_module.Upload] = []
    try:
        where = plan.target
        if options.pr and where.kind == "commit":
            where = targets.open_pull(api, where)
        thread = _Thread(api, where)
        previous = thread.ours(options.watermark_title) if options.update else None
        commit = None
        if plan.assets:
            publisher = assets_module.Publisher(api, plan.repo, options.assets_branch)
            commit, uploads = publisher.publish(plan.assets)
        body = _body(options, plan, plan.api_url, commit)
        url = thread.edit(previous, body) if previous is not None else thread.post(body)
    except UsageError:
        raise
    except CmlInfraError as exc:
        raise CmlInfraError(_not_posted(str(exc), options.assets_branch, uploads)) from None
    return CommentResult(url, where.describe(), body, tuple(uploads), previous is not None)


@dataclass(frozen=True)
class _Plan:
    """Everything read and checked before the first request."""

    repo: str
    api_url: str
    target: Target
    report: str  # the report's name in messages
    text: str
    links: tuple[markdown.LocalLink, ...]
    assets: tuple[assets_module.Asset, ...]


def _check(options: CommentOptions, env: Mapping[str, str]) -> _Plan:
    from cml_infra.comment import target as targets
    from cml_infra.forge.github_api import PUBLIC_API, check_api_url

    markdown.check_title(options.watermark_title)
    if options.update and options.rm_watermark:
        raise UsageError(
            "--rm-watermark",
            "`comment update` finds its comment by the watermark; use `comment create` for a "
            "comment without one",
        )
    if options.publish:
        assets_module.check_branch(options.assets_branch)
    api_url = (options.github_url or env.get("GITHUB_API_URL") or PUBLIC_API).rstrip("/")
    check_api_url("--github-url", api_url)
    if not options.dry_run and not options.token:
        raise UsageError(
            "--token", "no GitHub token: give --token, CML_INFRA_TOKEN or GITHUB_TOKEN"
        )
    repo = targets.repository(options.repo, env)
    where = targets.detect(options.target, repo, env)
    report, text, folder = _read(options.source)
    if not text.strip():
        raise UsageError(report, "the report is empty")
    if isinstance(options.token, str) and options.token and options.token in text:
        raise UsageError(report, "holds the GitHub token; refusing to post it")
    links = markdown.local_links(text, report, folder) if options.publish else []
    token = options.token if isinstance(options.token, str) else None
    found = assets_module.inspect([link.file for link in links], token)
    plan = _Plan(repo, api_url, where, report, text, tuple(links), tuple(found))
    length = len(_body(options, plan, api_url, _SHA_PLACEHOLDER))
    if length > MAX_BODY:
        raise UsageError(
            report,
            f"the comment would be {length:,} characters, over GitHub's limit of {MAX_BODY:,} "
            "per comment (links and watermark included); shorten the report",
        )
    return plan


def _read(source: str) -> tuple[str, str, Path]:
    """The report's name for messages, its text and the folder its links start from."""
    if source == "-":
        try:
            return "stdin", sys.stdin.read(), Path.cwd()
        except UnicodeDecodeError:
            raise UsageError("stdin", "the report is not UTF-8 text") from None
    path = Path(source)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(source, "no such report file") from None
    except IsADirectoryError:
        raise UsageError(source, "is a folder, not a report file") from None
    except OSError as exc:
        raise UsageError(source, f"cannot read the report: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(source, "the report is not UTF-8 text") from None
    return source, text.removeprefix("\ufeff"), path.resolve().parent


def _body(options: CommentOptions, plan: _Plan, api_url: str, commit: str | None) -> str:
    """The comment's body: links to local files rewritten (at `commit`, or the branch's name
    when None), the watermark added."""
    text = plan.text
    if plan.links:
        ref = commit or options.assets_branch
        paths = {asset.file: asset.path for asset in plan.assets}
        urls = {
            local.link: assets_module.link(api_url, plan.repo, ref, paths[local.file])
            + markdown.fragment_suffix(local.fragment)
            for local in plan.links
        }
        text = markdown.rewrite(text, urls)
    if options.rm_watermark:
        return text
    return markdown.with_watermark(text, options.watermark_title)


def _dry_run(options: CommentOptions, plan: _Plan) -> CommentResult:
    uploads = tuple(assets_module.Upload(str(a.file), a.path, False) for a in plan.assets)
    where = plan.target.describe()
    if options.pr and plan.target.kind == "commit":
        where = f"the open pull request for commit {plan.target.ref} of {plan.repo}"
    return CommentResult(None, where, _body(options, plan, plan.api_url, None), uploads)


def _api(options: CommentOptions, plan: _Plan) -> GitHubApi:
    from cml_infra.forge.github_api import GitHubApi
    from cml_infra.spec import ForgeTarget

    token = options.token
    if token is not None and not isinstance(token, str):
        token = token.token_for(ForgeTarget(repo=plan.repo, api_url=plan.api_url))
    return GitHubApi(plan.api_url, str(token), COMMENTS_PERMISSION, subject=plan.repo)


def _not_posted(error: str, branch: str, uploads: list[assets_module.Upload]) -> str:
    added = [upload for upload in uploads if upload.uploaded]
    if not added:
        return f"{error}; the comment was not posted"
    files = ", ".join(f"{upload.local} ({upload.branch_path})" for upload in added)
    return (
        f"{error}; the comment was not posted. Uploaded to the branch {branch}: {files} "
        "(harmless; a re-run reuses them)"
    )


class _Thread:
    """The comments of one pull request, issue or commit."""

    def __init__(self, api: GitHubApi, target: Target) -> None:
        self.api = api
        self.target = target
        repo = f"/repos/{target.repo}"
        if target.threaded:
            self._list = f"{repo}/issues/{target.ref}/comments"
            self._one = f"{repo}/issues/comments/{{id}}"
            self._needs = COMMENTS_PERMISSION
        else:
            self._list = f"{repo}/commits/{target.ref}/comments"
            self._one = f"{repo}/comments/{{id}}"
            self._needs = COMMIT_COMMENTS_PERMISSION

    def ours(self, title: str) -> int | None:
        """The id of our newest comment with that title's watermark (GitHub lists the oldest
        first), if any."""
        found = None
        page = 1
        while True:
            batch = self._request("GET", self._list, params={"per_page": 100, "page": page})
            batch = batch if isinstance(batch, list) else []
            for item in batch:
                if isinstance(item, dict) and markdown.is_ours(str(item.get("body") or ""), title):
                    found = int(item["id"])
            if len(batch) < 100:
                return found
            page += 1

    def post(self, body: str) -> str:
        return str(self._request("POST", self._list, {"body": body})["html_url"])

    def edit(self, comment_id: int, body: str) -> str:
        return str(
            self._request("PATCH", self._one.format(id=comment_id), {"body": body})["html_url"]
        )

    def _request(
        self, verb: str, path: str, body: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        from cml_infra.forge.github_api import NotFound

        try:
            return self.api.request(verb, path, body, params, needs=self._needs)
        except NotFound as exc:
            raise NotFound(
                f"github: {self.target.describe()} not found, or the token cannot see it "
                f"(404 on {verb} {path})",
                exc.status,
            ) from None
