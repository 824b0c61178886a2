"""The fake GitHub's repository content: issues and pull requests with their comments, commit
comments, the Git Data API over a real object store (tests/fakes/github_git.py), the contents
API, and the web host's file links. A mixin of FakeGitHub (tests/fakes/github.py), whose module
docstring describes the whole fake.

The mixin raises the fake's replies through `self._fail(status, message, **extra)`, builds
objects with `self._example(schema, **changes)` and checks the caller's rights with
`self._need(...)`, all provided by FakeGitHub, so that this module does not import it.
"""

from __future__ import annotations

import base64
import binascii
import html
import itertools
import mimetypes
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from tests.fakes.github_auth import Credential
from tests.fakes.github_git import Entry, GitError, GitStore

# GitHub's limit on an issue, pull request or commit comment's body, in characters.
COMMENT_MAX = 65536
# The contents API gives a file's bytes inline up to 1 MB; between 1 and 100 MB the JSON says
# encoding "none" with empty content, and only the raw media type gives the bytes.
CONTENTS_INLINE_MAX = 1024 * 1024
DEFAULT_BRANCH = "main"
RAW_TYPES = (
    "application/vnd.github.raw",
    "application/vnd.github.v3.raw",
    "application/vnd.github.raw+json",
    "application/vnd.github.v3.raw+json",
)
HEX = re.compile(r"[0-9a-f]{7,40}")


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _wrapped_base64(data: bytes) -> str:
    """Base64 in lines of 60 characters, each ending in a newline, as GitHub writes it."""
    text = base64.b64encode(data).decode()
    return "".join(text[i : i + 60] + "\n" for i in range(0, len(text), 60))


def _param(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


class RepoRoutes:
    """Repository content routes and helpers (see the module docstring)."""

    _caller: Credential  # the caller of the request being served

    if TYPE_CHECKING:  # what FakeGitHub, the class this is mixed into, provides

        @property
        def api_url(self) -> str: ...

        @property
        def web_url(self) -> str: ...

        _lock: Any

        def _fail(self, status: int, message: str, **extra: Any) -> Exception: ...

        def _example(self, schema: str, /, **changes: Any) -> dict[str, Any]: ...

        def _need(self, *alternatives: tuple[str, str]) -> None: ...

        def _repository(self, full_name: str, schema: str) -> dict[str, Any]: ...

        def _paginate(
            self, items: list[Any], path: str, query: dict[str, list[str]]
        ) -> tuple[list[Any], dict[str, str]]: ...

        def scope_of(self, scope: str) -> str: ...

    # -- state ----------------------------------------------------------------------------

    def _init_repo_state(self, repos: tuple[str, ...]) -> None:
        self._git: dict[str, GitStore] = {}
        # (repo, number) -> {"number", "title", "state", "pull": bool, "created_at", ...}
        self._issues: dict[tuple[str, int], dict[str, Any]] = {}
        self._issue_comments: dict[int, dict[str, Any]] = {}
        self._commit_comments: dict[int, dict[str, Any]] = {}
        # Commits a test names (a pull request's head) without their objects in the store.
        self._known_commits: dict[str, set[str]] = {}
        self._comment_ids = itertools.count(1_000_001)
        for repo in repos:
            self._seed_repo(repo)

    def _seed_repo(self, full_name: str) -> None:
        """A repository as GitHub creates it with a README: one commit on main."""
        key = full_name.lower()
        self._git[key] = GitStore()
        self._known_commits[key] = set()
        self._commit_to(full_name, DEFAULT_BRANCH, {"README.md": f"# {full_name}\n"}, "Initial")

    def _repo_name(self, repo: str) -> str:
        """The canonical OWNER/NAME of a repository the fake serves (KeyError if not)."""
        return self.scope_of(f"repos/{repo}").removeprefix("repos/")

    def _store(self, repo: str) -> GitStore:
        return self._git[repo.lower()]

    def _signature(
        self, caller: Credential | None = None, when: datetime | None = None
    ) -> dict[str, str]:
        who = caller or getattr(self, "_caller", None)
        login = who.login if who is not None else "fake-user"
        user_id = who.user_id if who is not None else 1
        moment = when or datetime.now(timezone.utc)
        return {
            "name": login,
            "email": f"{user_id}+{login}@users.noreply.github.com",
            "date": _iso(moment),
            "seconds": str(int(moment.timestamp())),
        }

    def _commit_to(
        self,
        repo: str,
        branch: str,
        files: Mapping[str, bytes | str | None],
        message: str,
    ) -> str:
        store = self._store(repo)
        ref = f"refs/heads/{branch}"
        parent = store.refs.get(ref)
        changes: list[dict[str, Any]] = []
        for path, data in files.items():
            if data is None:
                changes.append({"path": path, "mode": "100644", "type": "blob", "sha": None})
            else:
                raw = data.encode() if isinstance(data, str) else bytes(data)
                changes.append({"path": path, "mode": "100644", "sha": store.put_blob(raw)})
        base = store.commit(parent).tree if parent else None
        tree = store.build_tree(base, changes)
        author = self._signature(None)
        sha = store.put_commit(tree, [parent] if parent else [], message, author)
        store.refs[ref] = sha
        return sha

    # -- helpers for tests ----------------------------------------------------------------

    def push(
        self,
        repo: str,
        branch: str,
        files: Mapping[str, bytes | str | None],
        message: str = "Update files",
    ) -> str:
        """Commit `files` (path -> bytes or text; None deletes the path) on top of `branch`
        (created if absent) and move the branch there; returns the commit's id."""
        with self._lock:
            return self._commit_to(self._repo_name(repo), branch, files, message)

    def ref(self, repo: str, branch: str) -> str | None:
        """The commit `refs/heads/{branch}` points at, None if there is no such branch."""
        with self._lock:
            return self._store(self._repo_name(repo)).refs.get(f"refs/heads/{branch}")

    def branch_files(self, repo: str, branch: str) -> dict[str, bytes]:
        """Every file of the branch's commit, recursively (path -> bytes); KeyError if none."""
        with self._lock:
            store = self._store(self._repo_name(repo))
            return store.files(store.refs[f"refs/heads/{branch}"])

    def git_objects(self, repo: str) -> dict[str, str]:
        """Every object of the repository: id -> blob, tree or commit."""
        with self._lock:
            return {s: k for s, (k, _) in self._store(self._repo_name(repo)).objects.items()}

    def open_issue(self, repo: str, number: int, title: str = "", *, state: str = "open") -> None:
        """Seed issue `number` (comments need one: GitHub answers 404 otherwise)."""
        with self._lock:
            name = self._repo_name(repo)
            self._issues[(name.lower(), number)] = {
                "number": number,
                "title": title or f"Issue {number}",
                "state": state,
                "pull": False,
                "created_at": datetime.now(timezone.utc),
            }

    def open_pull(
        self,
        repo: str,
        number: int,
        head_sha: str,
        state: str = "open",
        base: str = DEFAULT_BRANCH,
        *,
        head: str | None = None,
        title: str = "",
        merged: bool = False,
    ) -> None:
        """Seed pull request `number` (an issue too, as on GitHub) whose head is commit
        `head_sha` on branch `head` (default `pr-{number}`); `state` is open or closed."""
        with self._lock:
            name = self._repo_name(repo)
            key = name.lower()
            self._known_commits[key].add(head_sha)
            self._issues[(key, number)] = {
                "number": number,
                "title": title or f"Pull request {number}",
                "state": state,
                "pull": True,
                "head_sha": head_sha,
                "head": head or f"pr-{number}",
                "base": base,
                "merged": merged,
                "created_at": datetime.now(timezone.utc),
            }

    def issue_comments(self, repo: str, number: int) -> list[dict[str, Any]]:
        """The comments on issue or pull request `number`, as the API shows them, oldest first."""
        with self._lock:
            key = self._repo_name(repo).lower()
            return [
                self._issue_comment(c)
                for c in self._issue_comments.values()
                if c["repo"].lower() == key and c["number"] == number
            ]

    def commit_comments(self, repo: str, sha: str) -> list[dict[str, Any]]:
        """The comments on commit `sha`, as the API shows them, oldest first."""
        with self._lock:
            key = self._repo_name(repo).lower()
            return [
                self._commit_comment(c)
                for c in self._commit_comments.values()
                if c["repo"].lower() == key and c["commit_id"] == sha
            ]

    # -- routes (called with the lock held; repo is canonical OWNER/NAME) -----------------

    def _repo_route(
        self,
        method: str,
        path: str,
        repo: str,
        rest: list[str],
        query: dict[str, list[str]],
        body: Any,
        headers: Mapping[str, str],
    ) -> tuple[int, Any, dict[str, str]] | None:
        """The answer for a repository content route; None if `rest` names none of them."""
        head = rest[0] if rest else ""
        if head == "issues" and len(rest) == 3 and rest[1] == "comments":
            return self._one_issue_comment(method, repo, rest[2], body)
        if head == "issues" and len(rest) == 3 and rest[2] == "comments":
            return self._issue_comments_route(method, path, repo, rest[1], query, body)
        if head == "comments" and len(rest) == 2 and method == "PATCH":
            return self._update_commit_comment(repo, rest[1], body)
        if head == "commits" and len(rest) == 3 and rest[2] == "comments":
            return self._commit_comments_route(method, path, repo, rest[1], query, body)
        if head == "commits" and len(rest) == 3 and rest[2] == "pulls" and method == "GET":
            return self._pulls_for_commit(path, repo, rest[1], query)
        if head == "pulls" and method == "GET" and len(rest) <= 2:
            return self._pulls_route(path, repo, rest[1:], query)
        if head == "git" and len(rest) >= 2:
            return self._git_route(method, repo, rest[1:], query, body)
        if head == "contents" and method == "GET" and len(rest) >= 2:
            return self._contents(repo, "/".join(rest[1:]), query, headers)
        return None

    # issue comments

    def _issue(self, repo: str, number_text: str) -> dict[str, Any]:
        number = _int(number_text)
        issue = None if number is None else self._issues.get((repo.lower(), number))
        if issue is None:
            raise self._fail(404, "Not Found")
        return issue

    def _need_comment_right(self, issue: Mapping[str, Any], level: str) -> None:
        if issue["pull"]:
            self._need(("issues", level), ("pull_requests", level))
        else:
            self._need(("issues", level))

    def _check_body(self, body: Any, resource: str) -> str:
        text = str(body["body"])
        if len(text) > COMMENT_MAX:
            raise self._fail(
                422,
                "Validation Failed",
                errors=[
                    {
                        "resource": resource,
                        "code": "unprocessable",
                        "field": "data",
                        "message": f"Body is too long (maximum is {COMMENT_MAX} characters)",
                    }
                ],
            )
        return text

    def _author(self) -> dict[str, Any]:
        caller = self._caller
        return {"login": caller.login, "type": caller.user_type, "id": caller.user_id}

    def _issue_comments_route(
        self,
        method: str,
        path: str,
        repo: str,
        number_text: str,
        query: dict[str, list[str]],
        body: Any,
    ) -> tuple[int, Any, dict[str, str]]:
        issue = self._issue(repo, number_text)
        if method == "GET":
            self._need_comment_right(issue, "read")
            found = [
                c
                for c in self._issue_comments.values()
                if c["repo"] == repo and c["number"] == issue["number"]
            ]
            since = _param(query, "since")
            if since:
                found = [c for c in found if _iso(c["updated_at"]) >= since]
            page, links = self._paginate(found, path, query)
            return 200, [self._issue_comment(c) for c in page], links
        if method == "POST":
            self._need_comment_right(issue, "write")
            text = self._check_body(body, "IssueComment")
            now = datetime.now(timezone.utc)
            comment = {
                "id": next(self._comment_ids),
                "repo": repo,
                "number": issue["number"],
                "body": text,
                "user": self._author(),
                "app": self._caller.app,
                "created_at": now,
                "updated_at": now,
            }
            self._issue_comments[comment["id"]] = comment
            shown = self._issue_comment(comment)
            return 201, shown, {"Location": shown["url"]}
        raise self._fail(404, "Not Found")

    def _one_issue_comment(
        self, method: str, repo: str, id_text: str, body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        comment_id = _int(id_text)
        comment = None if comment_id is None else self._issue_comments.get(comment_id)
        if comment is None or comment["repo"] != repo:
            raise self._fail(404, "Not Found")
        issue = self._issues[(repo.lower(), comment["number"])]
        if method == "GET":
            self._need_comment_right(issue, "read")
            return 200, self._issue_comment(comment), {}
        if method == "PATCH":
            self._need_comment_right(issue, "write")
            comment["body"] = self._check_body(body, "IssueComment")
            comment["updated_at"] = datetime.now(timezone.utc)
            return 200, self._issue_comment(comment), {}
        raise self._fail(404, "Not Found")

    def _simple_user(self, author: Mapping[str, Any]) -> dict[str, Any]:
        login = author["login"]
        api = f"{self.api_url}/users/{quote(login)}"
        return self._example(
            "simple-user",
            login=login,
            id=author["id"],
            node_id=f"U_fake{author['id']}",
            type=author["type"],
            url=api,
            html_url=f"{self.web_url}/{quote(login)}",
            avatar_url=f"https://avatars.githubusercontent.com/u/{author['id']}",
            repos_url=f"{api}/repos",
        )

    def _issue_comment(self, comment: Mapping[str, Any]) -> dict[str, Any]:
        repo, number = comment["repo"], comment["number"]
        kind = "pull" if self._issues[(repo.lower(), number)]["pull"] else "issues"
        bot = comment["user"]["type"] == "Bot"
        return self._example(
            "issue-comment",
            id=comment["id"],
            node_id=f"IC_fake{comment['id']}",
            url=f"{self.api_url}/repos/{repo}/issues/comments/{comment['id']}",
            html_url=f"{self.web_url}/{repo}/{kind}/{number}#issuecomment-{comment['id']}",
            issue_url=f"{self.api_url}/repos/{repo}/issues/{number}",
            body=comment["body"],
            user=self._simple_user(comment["user"]),
            author_association="NONE" if bot else "OWNER",
            created_at=_iso(comment["created_at"]),
            updated_at=_iso(comment["updated_at"]),
        )

    # commit comments

    def _known_commit(self, repo: str, sha: str) -> str | None:
        """The full id of a commit the repository has (or a test named), None otherwise."""
        if not HEX.fullmatch(sha):
            return None
        named = [s for s in self._known_commits[repo.lower()] if s.startswith(sha)]
        return named[0] if len(named) == 1 else self._store(repo).resolve(sha)

    def _commit_comments_route(
        self,
        method: str,
        path: str,
        repo: str,
        sha: str,
        query: dict[str, list[str]],
        body: Any,
    ) -> tuple[int, Any, dict[str, str]]:
        self._need(("contents", "write" if method == "POST" else "read"))
        commit = self._known_commit(repo, sha)
        if commit is None:
            raise self._fail(422, f"No commit found for SHA: {sha}")
        if method == "GET":
            found = [
                c
                for c in self._commit_comments.values()
                if c["repo"] == repo and c["commit_id"] == commit
            ]
            page, links = self._paginate(found, path, query)
            return 200, [self._commit_comment(c) for c in page], links
        if method == "POST":
            text = self._check_body(body, "CommitComment")
            now = datetime.now(timezone.utc)
            comment = {
                "id": next(self._comment_ids),
                "repo": repo,
                "commit_id": commit,
                "body": text,
                "path": body.get("path"),
                "position": body.get("position"),
                "line": body.get("line"),
                "user": self._author(),
                "created_at": now,
                "updated_at": now,
            }
            self._commit_comments[comment["id"]] = comment
            shown = self._commit_comment(comment)
            return 201, shown, {"Location": shown["url"]}
        raise self._fail(404, "Not Found")

    def _update_commit_comment(
        self, repo: str, id_text: str, body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        self._need(("contents", "write"))
        comment_id = _int(id_text)
        comment = None if comment_id is None else self._commit_comments.get(comment_id)
        if comment is None or comment["repo"] != repo:
            raise self._fail(404, "Not Found")
        comment["body"] = self._check_body(body, "CommitComment")
        comment["updated_at"] = datetime.now(timezone.utc)
        return 200, self._commit_comment(comment), {}

    def _commit_comment(self, comment: Mapping[str, Any]) -> dict[str, Any]:
        repo, sha = comment["repo"], comment["commit_id"]
        bot = comment["user"]["type"] == "Bot"
        return self._example(
            "commit-comment",
            id=comment["id"],
            node_id=f"CC_fake{comment['id']}",
            url=f"{self.api_url}/repos/{repo}/comments/{comment['id']}",
            html_url=f"{self.web_url}/{repo}/commit/{sha}#commitcomment-{comment['id']}",
            body=comment["body"],
            path=comment["path"],
            position=comment["position"],
            line=comment["line"],
            commit_id=sha,
            user=self._simple_user(comment["user"]),
            author_association="NONE" if bot else "OWNER",
            created_at=_iso(comment["created_at"]),
            updated_at=_iso(comment["updated_at"]),
        )

    # pull requests

    def _pulls(self, repo: str) -> list[dict[str, Any]]:
        found = [i for (r, _), i in self._issues.items() if r == repo.lower() and i["pull"]]
        return sorted(found, key=lambda i: i["number"], reverse=True)

    def _pulls_route(
        self, path: str, repo: str, rest: list[str], query: dict[str, list[str]]
    ) -> tuple[int, Any, dict[str, str]]:
        self._need(("pull_requests", "read"))
        if rest:
            issue = self._issue(repo, rest[0])
            if not issue["pull"]:
                raise self._fail(404, "Not Found")
            return 200, self._pull(repo, issue, "pull-request"), {}
        state = (query.get("state") or ["open"])[0]
        found = [p for p in self._pulls(repo) if state == "all" or p["state"] == state]
        head = _param(query, "head")
        if head:
            found = [p for p in found if f"{repo.split('/')[0]}:{p['head']}" == head]
        base = _param(query, "base")
        if base:
            found = [p for p in found if p["base"] == base]
        page, links = self._paginate(found, path, query)
        return 200, [self._pull(repo, p, "pull-request-simple") for p in page], links

    def _pulls_for_commit(
        self, path: str, repo: str, sha: str, query: dict[str, list[str]]
    ) -> tuple[int, Any, dict[str, str]]:
        self._need(("pull_requests", "read"))
        if self._known_commit(repo, sha) is None:
            raise self._fail(422, f"No commit found for SHA: {sha}")
        found = [p for p in self._pulls(repo) if p["head_sha"].startswith(sha)]
        page, links = self._paginate(found, path, query)
        return 200, [self._pull(repo, p, "pull-request-simple") for p in page], links

    def _pull(self, repo: str, pull: Mapping[str, Any], schema: str) -> dict[str, Any]:
        owner = repo.split("/")[0]
        number = pull["number"]
        api = f"{self.api_url}/repos/{repo}"
        store = self._store(repo)
        created = _iso(pull["created_at"])
        closed = created if pull["state"] == "closed" else None
        owner_user = {"login": owner, "type": "User", "id": 2}

        def side(ref: str, sha: str) -> dict[str, Any]:
            return {
                "label": f"{owner}:{ref}",
                "ref": ref,
                "sha": sha,
                "user": self._simple_user(owner_user),
                "repo": self._repository(repo, "repository"),
            }

        base_sha = store.refs.get(f"refs/heads/{pull['base']}", pull["head_sha"])
        links = {
            name: {"href": href}
            for name, href in {
                "self": f"{api}/pulls/{number}",
                "html": f"{self.web_url}/{repo}/pull/{number}",
                "issue": f"{api}/issues/{number}",
                "comments": f"{api}/issues/{number}/comments",
                "review_comments": f"{api}/pulls/{number}/comments",
                "review_comment": f"{api}/pulls/comments{{/number}}",
                "commits": f"{api}/pulls/{number}/commits",
                "statuses": f"{api}/statuses/{pull['head_sha']}",
            }.items()
        }
        shown = self._example(
            schema,
            id=500000 + number,
            node_id=f"PR_fake{number}",
            number=number,
            state=pull["state"],
            title=pull["title"],
            body=None,
            locked=False,
            url=f"{api}/pulls/{number}",
            html_url=f"{self.web_url}/{repo}/pull/{number}",
            diff_url=f"{self.web_url}/{repo}/pull/{number}.diff",
            patch_url=f"{self.web_url}/{repo}/pull/{number}.patch",
            issue_url=f"{api}/issues/{number}",
            commits_url=f"{api}/pulls/{number}/commits",
            review_comments_url=f"{api}/pulls/{number}/comments",
            review_comment_url=f"{api}/pulls/comments{{/number}}",
            comments_url=f"{api}/issues/{number}/comments",
            statuses_url=f"{api}/statuses/{pull['head_sha']}",
            user=self._simple_user(owner_user),
            labels=[],
            created_at=created,
            updated_at=created,
            closed_at=closed,
            merged_at=closed if pull["merged"] else None,
            merge_commit_sha=None,
            head=side(pull["head"], pull["head_sha"]),
            base=side(pull["base"], base_sha),
            _links=links,
            author_association="OWNER",
            draft=False,
        )
        if schema == "pull-request":
            shown.update(
                merged=bool(pull["merged"]),
                mergeable=None,
                comments=len(
                    [
                        c
                        for c in self._issue_comments.values()
                        if c["repo"] == repo and c["number"] == number
                    ]
                ),
            )
        return shown

    # the Git Data API

    def _git_route(
        self,
        method: str,
        repo: str,
        rest: list[str],
        query: dict[str, list[str]],
        body: Any,
    ) -> tuple[int, Any, dict[str, str]]:
        self._need(("contents", "read" if method == "GET" else "write"))
        store = self._store(repo)
        kind, tail = rest[0], rest[1:]
        try:
            if method == "POST" and not tail and kind == "blobs":
                return self._create_blob(repo, store, body)
            if method == "GET" and len(tail) == 1 and kind == "blobs":
                return 200, self._blob(repo, store, tail[0]), {}
            if method == "POST" and not tail and kind == "trees":
                sha = store.build_tree(body.get("base_tree"), list(body["tree"]))
                shown = self._tree(repo, store, sha, recursive=False)
                return 201, shown, {"Location": shown["url"]}
            if method == "GET" and len(tail) == 1 and kind == "trees":
                sha = self._tree_id(store, tail[0])
                return 200, self._tree(repo, store, sha, recursive="recursive" in query), {}
            if method == "POST" and not tail and kind == "commits":
                return self._create_commit(repo, store, body)
            if method == "GET" and len(tail) == 1 and kind == "commits":
                if store.kind(tail[0]) != "commit":
                    raise self._fail(404, "Not Found")
                return 200, self._git_commit(repo, store, tail[0]), {}
            if method == "GET" and tail and kind == "ref":
                name = "refs/" + "/".join(tail)
                if name not in store.refs:
                    raise self._fail(404, "Not Found")
                return 200, self._git_ref(repo, store, name), {}
            if method == "POST" and not tail and kind == "refs":
                return self._create_ref(repo, store, body)
            if method == "PATCH" and tail and kind == "refs":
                return self._update_ref(repo, store, "refs/" + "/".join(tail), body)
        except GitError as exc:
            raise self._fail(422, str(exc)) from None
        raise self._fail(404, "Not Found")

    def _create_blob(
        self, repo: str, store: GitStore, body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        encoding = body.get("encoding") or "utf-8"
        content = str(body["content"])
        if encoding == "base64":
            try:
                data = base64.b64decode(content.encode(), validate=False)
            except (binascii.Error, ValueError):
                raise self._fail(422, "Invalid base64 content") from None
        elif encoding in ("utf-8", "utf8"):
            data = content.encode()
        else:
            raise self._fail(422, f'encoding must be "utf-8" or "base64", not "{encoding}"')
        sha = store.put_blob(data)
        url = f"{self.api_url}/repos/{repo}/git/blobs/{sha}"
        return 201, {"url": url, "sha": sha}, {"Location": url}

    def _blob(self, repo: str, store: GitStore, sha: str) -> dict[str, Any]:
        if store.kind(sha) != "blob":
            raise self._fail(404, "Not Found")
        data = store.blob(sha)
        return {
            "sha": sha,
            "node_id": f"B_fake{sha[:12]}",
            "size": len(data),
            "url": f"{self.api_url}/repos/{repo}/git/blobs/{sha}",
            "content": _wrapped_base64(data),
            "encoding": "base64",
        }

    def _tree_id(self, store: GitStore, name: str) -> str:
        """GET /git/trees/{tree_sha} takes a tree's id, or a commit or ref naming one."""
        if store.kind(name) == "tree":
            return name
        commit = name if store.kind(name) == "commit" else store.resolve(name)
        if commit is None:
            raise self._fail(404, "Not Found")
        return store.commit(commit).tree

    def _tree(self, repo: str, store: GitStore, sha: str, *, recursive: bool) -> dict[str, Any]:
        api = f"{self.api_url}/repos/{repo}/git"
        listed = store.walk(sha) if recursive else list(store.tree(sha).items())
        entries = []
        for path, entry in listed:
            shown: dict[str, Any] = {
                "path": path,
                "mode": entry.mode,
                "type": entry.kind,
                "sha": entry.sha,
            }
            if entry.kind == "blob":
                shown["size"] = len(store.blob(entry.sha))
                shown["url"] = f"{api}/blobs/{entry.sha}"
            elif entry.kind == "tree":
                shown["url"] = f"{api}/trees/{entry.sha}"
            entries.append(shown)
        return {"sha": sha, "url": f"{api}/trees/{sha}", "tree": entries, "truncated": False}

    def _create_commit(
        self, repo: str, store: GitStore, body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        def person(given: Any, fallback: dict[str, str]) -> dict[str, str]:
            if not isinstance(given, Mapping):
                return fallback
            out = {**fallback, "name": str(given["name"]), "email": str(given["email"])}
            if given.get("date"):
                when = datetime.fromisoformat(str(given["date"]).replace("Z", "+00:00"))
                out.update(date=_iso(when), seconds=str(int(when.timestamp())))
            return out

        author = person(body.get("author"), self._signature())
        committer = person(body.get("committer"), author)
        sha = store.put_commit(
            str(body["tree"]),
            list(body.get("parents") or []),
            str(body["message"]),
            author,
            committer,
        )
        shown = self._git_commit(repo, store, sha)
        return 201, shown, {"Location": shown["url"]}

    def _git_commit(self, repo: str, store: GitStore, sha: str) -> dict[str, Any]:
        commit = store.commit(sha)
        api = f"{self.api_url}/repos/{repo}/git"

        def person(who: Mapping[str, str]) -> dict[str, str]:
            return {"name": who["name"], "email": who["email"], "date": who["date"]}

        return {
            "sha": sha,
            "node_id": f"C_fake{sha[:12]}",
            "url": f"{api}/commits/{sha}",
            "html_url": f"{self.web_url}/{repo}/commit/{sha}",
            "author": person(commit.author),
            "committer": person(commit.committer),
            "message": commit.message,
            "tree": {"sha": commit.tree, "url": f"{api}/trees/{commit.tree}"},
            "parents": [
                {
                    "sha": p,
                    "url": f"{api}/commits/{p}",
                    "html_url": f"{self.web_url}/{repo}/commit/{p}",
                }
                for p in commit.parents
            ],
            "verification": {
                "verified": False,
                "reason": "unsigned",
                "signature": None,
                "payload": None,
                "verified_at": None,
            },
        }

    def _git_ref(self, repo: str, store: GitStore, name: str) -> dict[str, Any]:
        sha = store.refs[name]
        api = f"{self.api_url}/repos/{repo}/git"
        return {
            "ref": name,
            "node_id": f"REF_fake{abs(hash((repo, name))) % 10**9}",
            "url": f"{api}/{name}",
            "object": {"type": "commit", "sha": sha, "url": f"{api}/commits/{sha}"},
        }

    def _create_ref(self, repo: str, store: GitStore, body: Any) -> tuple[int, Any, dict[str, str]]:
        name, sha = str(body["ref"]), str(body["sha"])
        if not name.startswith("refs/") or name.count("/") < 2 or name.endswith("/"):
            raise self._fail(422, "Reference name is not valid")
        if name in store.refs:
            raise self._fail(422, "Reference already exists")
        if store.kind(sha) != "commit":
            raise self._fail(422, "Object does not exist")
        store.refs[name] = sha
        shown = self._git_ref(repo, store, name)
        return 201, shown, {"Location": shown["url"]}

    def _update_ref(
        self, repo: str, store: GitStore, name: str, body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        sha = str(body["sha"])
        if name not in store.refs:
            raise self._fail(422, "Reference does not exist")
        if store.kind(sha) != "commit":
            raise self._fail(422, "Object does not exist")
        if not body.get("force") and not store.descends(sha, store.refs[name]):
            raise self._fail(422, "Update is not a fast forward")
        store.refs[name] = sha
        return 200, self._git_ref(repo, store, name), {}

    # contents and the web host

    def _contents(
        self, repo: str, path: str, query: dict[str, list[str]], headers: Mapping[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        self._need(("contents", "read"))
        store = self._store(repo)
        ref = (query.get("ref") or [DEFAULT_BRANCH])[0]
        commit = store.resolve(ref)
        if commit is None:
            raise self._fail(404, f"No commit found for the ref {ref}")
        entry = store.lookup(commit, path)
        if entry is None:
            raise self._fail(404, "Not Found")
        accept = {k.lower(): v for k, v in headers.items()}.get("accept", "")
        wanted = [t.split(";")[0].strip().lower() for t in accept.split(",")]
        raw = next((t for t in wanted if t in RAW_TYPES), None)
        if entry.kind == "blob" and raw is not None:
            return 200, store.blob(entry.sha), {"Content-Type": f"{raw}; charset=utf-8"}
        if entry.kind == "tree":
            listing = [
                self._content_entry(repo, ref, f"{path.strip('/')}/{name}".lstrip("/"), e, store)
                for name, e in store.tree(entry.sha).items()
            ]
            return 200, listing, {}
        shown = self._content_entry(repo, ref, path.strip("/"), entry, store)
        data = store.blob(entry.sha)
        inline = len(data) <= CONTENTS_INLINE_MAX
        shown.update(
            content=_wrapped_base64(data) if inline else "",
            encoding="base64" if inline else "none",
        )
        return 200, shown, {}

    def _content_entry(
        self, repo: str, ref: str, path: str, entry: Entry, store: GitStore
    ) -> dict[str, Any]:
        api = f"{self.api_url}/repos/{repo}"
        kind = {"blob": "file", "tree": "dir", "commit": "submodule"}[entry.kind]
        quoted = quote(path)
        git_url = f"{api}/git/{'trees' if entry.kind == 'tree' else 'blobs'}/{entry.sha}"
        html_url = f"{self.web_url}/{repo}/{'tree' if kind == 'dir' else 'blob'}/{ref}/{quoted}"
        return {
            "type": kind,
            "size": len(store.blob(entry.sha)) if entry.kind == "blob" else 0,
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "sha": entry.sha,
            "url": f"{api}/contents/{quoted}?ref={quote(ref)}",
            "git_url": git_url,
            "html_url": html_url,
            "download_url": f"{self.web_url}/{repo}/raw/{ref}/{quoted}" if kind == "file" else None,
            "_links": {
                "self": f"{api}/contents/{quoted}?ref={quote(ref)}",
                "git": git_url,
                "html": html_url,
            },
        }

    def _web(
        self, method: str, parts: list[str], query: dict[str, list[str]]
    ) -> tuple[int, Any, dict[str, str]]:
        """github.com's file pages: /OWNER/REPO/blob/REF/PATH(?raw=true) and .../raw/REF/PATH.
        A REF may hold slashes: the longest split that names a file wins."""
        not_found = 404, b"Not Found", {"Content-Type": "text/plain; charset=utf-8"}
        if method not in ("GET", "HEAD"):
            return not_found
        try:
            repo = self._repo_name("/".join(parts[:2]))
        except KeyError:
            return not_found
        store = self._store(repo)
        view, tail = parts[2], parts[3:]
        for cut in range(len(tail) - 1, 0, -1):
            commit = store.resolve("/".join(tail[:cut]))
            entry = None if commit is None else store.lookup(commit, "/".join(tail[cut:]))
            if entry is None or entry.kind != "blob":
                continue
            path = "/".join(tail[cut:])
            if view == "raw" or (query.get("raw") or [""])[0] in ("true", "1"):
                kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
                return 200, store.blob(entry.sha), {"Content-Type": kind}
            title = html.escape(f"{path} at {'/'.join(tail[:cut])} · {repo}")
            page = f"<!DOCTYPE html><title>{title}</title>"
            return 200, page.encode(), {"Content-Type": "text/html; charset=utf-8"}
        return not_found
