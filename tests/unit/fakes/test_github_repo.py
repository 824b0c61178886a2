"""The fake GitHub's repository content (tests/fakes/github_repo.py): comments, pull requests,
the Git Data API, contents and the web host's file links, over HTTP and through PyGithub, each
request and response valid for GitHub's description."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import github
import pytest
import requests

from cml_infra.forge.github import html_url
from cml_infra.spec import ForgeTarget
from tests.fakes.github import FakeGitHub

TOKEN = "ghp_fake_token_for_repo_tests"
REPO = "octo/repo"
HEAD = "1234567890abcdef1234567890abcdef12345678"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@pytest.fixture
def gh():
    with FakeGitHub(TOKEN) as fake:
        yield fake
        assert fake.violations == []


def session(token: str = TOKEN) -> requests.Session:
    http = requests.Session()
    http.trust_env = False
    http.headers["Authorization"] = f"token {token}"
    return http


@pytest.fixture
def http():
    with session() as client:
        yield client


def api(gh: FakeGitHub, path: str) -> str:
    return f"{gh.api_url}/repos/{REPO}{path}"


def blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# -- issue comments --------------------------------------------------------------------------


def test_comments_on_a_pull_request_list_create_get_update(gh, http):
    gh.open_pull(REPO, 7, HEAD)
    created = []
    for n in range(5):
        reply = http.post(api(gh, "/issues/7/comments"), json={"body": f"report {n}"})
        assert reply.status_code == 201
        created.append(reply.json())
        assert reply.headers["Location"] == reply.json()["url"]
    first = created[0]
    assert first["user"]["login"] == gh.user_login and first["user"]["type"] == "User"
    assert first["html_url"] == f"{gh.web_url}/{REPO}/pull/7#issuecomment-{first['id']}"
    assert first["issue_url"] == api(gh, "/issues/7")

    page = http.get(api(gh, "/issues/7/comments"), params={"per_page": 2})
    assert [c["body"] for c in page.json()] == ["report 0", "report 1"]
    assert 'rel="next"' in page.headers["Link"] and "page=3" in page.headers["Link"]
    assert page.links["next"]["url"].startswith(gh.api_url + f"/repos/{REPO}/issues/7/comments")
    last = http.get(page.links["last"]["url"])
    assert [c["body"] for c in last.json()] == ["report 4"]
    assert "next" not in last.links

    one = http.get(api(gh, f"/issues/comments/{first['id']}"))
    assert one.json()["body"] == "report 0"
    edited = http.patch(api(gh, f"/issues/comments/{first['id']}"), json={"body": "new"})
    assert edited.status_code == 200 and edited.json()["body"] == "new"
    assert [c["body"] for c in gh.issue_comments(REPO, 7)][:2] == ["new", "report 1"]


def test_comments_on_an_issue_and_what_is_refused(gh, http):
    gh.open_issue(REPO, 3)
    reply = http.post(api(gh, "/issues/3/comments"), json={"body": "hello"})
    comment_id = reply.json()["id"]
    assert reply.json()["html_url"] == f"{gh.web_url}/{REPO}/issues/3#issuecomment-{comment_id}"
    assert http.post(api(gh, "/issues/4/comments"), json={"body": "x"}).status_code == 404
    assert http.get(api(gh, "/issues/comments/999")).status_code == 404
    too_long = http.post(api(gh, "/issues/3/comments"), json={"body": "x" * 65537})
    assert too_long.status_code == 422
    assert "maximum is 65536" in too_long.json()["errors"][0]["message"]
    # A request off the description (no body) is a 422 and a violation.
    assert http.post(api(gh, "/issues/3/comments"), json={}).status_code == 422
    assert len(gh.violations) == 1
    gh.violations.clear()
    assert len(gh.issue_comments(REPO, 3)) == 1


def test_a_limited_token_acts_as_the_actions_bot_and_needs_its_permissions(gh):
    gh.open_pull(REPO, 7, HEAD)
    gh.open_issue(REPO, 8)
    gh.add_token("ghs_pulls", {"pull_requests": "write", "contents": "read"})
    gh.add_token("ghs_readonly", {"issues": "read", "contents": "read"})
    with session("ghs_pulls") as pulls, session("ghs_readonly") as readonly:
        made = pulls.post(api(gh, "/issues/7/comments"), json={"body": "ok"})
        assert made.status_code == 201
        assert made.json()["user"]["login"] == "github-actions[bot]"
        assert made.json()["user"]["type"] == "Bot"
        # A plain issue needs the issues permission; pull_requests does not do.
        refused = pulls.post(api(gh, "/issues/8/comments"), json={"body": "no"})
        assert refused.status_code == 403
        assert refused.json()["message"] == "Resource not accessible by integration"
        assert refused.headers["X-Accepted-GitHub-Permissions"] == "issues=write"
        assert readonly.get(api(gh, "/issues/7/comments")).status_code == 200
        refused = readonly.patch(
            api(gh, f"/issues/comments/{made.json()['id']}"), json={"body": "x"}
        )
        assert refused.status_code == 403
        assert refused.headers["X-Accepted-GitHub-Permissions"] == (
            "issues=write; pull_requests=write"
        )
        blob = pulls.post(api(gh, "/git/blobs"), json={"content": "x"})
        assert blob.status_code == 403
        assert blob.headers["X-Accepted-GitHub-Permissions"] == "contents=write"
        commit_comment = pulls.post(api(gh, f"/commits/{HEAD}/comments"), json={"body": "x"})
        assert commit_comment.status_code == 403
        # The runner endpoints need administration.
        assert pulls.get(api(gh, "/actions/runners")).status_code == 403
    assert gh.issue_comments(REPO, 8) == []


def test_a_token_limited_to_one_repository(gh):
    gh.add_repo("octo/other")
    gh.open_pull("octo/other", 1, HEAD)
    gh.add_token("ghs_one", {"pull_requests": "write"}, scopes=[REPO])
    with session("ghs_one") as one:
        assert one.get(f"{gh.api_url}/repos/octo/other/pulls/1").status_code == 404
        assert one.get(f"{gh.api_url}/orgs/octo/actions/runners").status_code == 403
        assert one.get(f"{gh.api_url}/repos/{REPO}").status_code == 200


# -- commit comments and pull requests ---------------------------------------------------------


def test_commit_comments_create_list_update(gh, http):
    sha = gh.ref(REPO, "main")
    made = http.post(api(gh, f"/commits/{sha}/comments"), json={"body": "cost: $1"})
    assert made.status_code == 201
    comment = made.json()
    assert comment["commit_id"] == sha and comment["path"] is None
    assert comment["html_url"] == f"{gh.web_url}/{REPO}/commit/{sha}#commitcomment-{comment['id']}"
    listed = http.get(api(gh, f"/commits/{sha}/comments"))
    assert [c["id"] for c in listed.json()] == [comment["id"]]
    edited = http.patch(api(gh, f"/comments/{comment['id']}"), json={"body": "cost: $2"})
    assert edited.status_code == 200
    assert [c["body"] for c in gh.commit_comments(REPO, sha)] == ["cost: $2"]
    unknown = http.post(api(gh, f"/commits/{'f' * 40}/comments"), json={"body": "x"})
    assert unknown.status_code == 422
    assert http.patch(api(gh, "/comments/5"), json={"body": "x"}).status_code == 404


def test_pull_requests_get_list_and_for_a_commit(gh, http):
    gh.open_pull(REPO, 7, HEAD)
    gh.open_pull(REPO, 9, "ab" * 20, state="closed", head="done")
    pull = http.get(api(gh, "/pulls/7")).json()
    assert (pull["number"], pull["state"], pull["head"]["sha"]) == (7, "open", HEAD)
    assert pull["base"]["ref"] == "main" and pull["base"]["sha"] == gh.ref(REPO, "main")
    assert pull["html_url"] == f"{gh.web_url}/{REPO}/pull/7"
    assert [p["number"] for p in http.get(api(gh, "/pulls")).json()] == [7]
    closed = http.get(api(gh, "/pulls"), params={"state": "closed"}).json()
    assert [p["number"] for p in closed] == [9]
    every = http.get(api(gh, "/pulls"), params={"state": "all"}).json()
    assert [p["number"] for p in every] == [9, 7]
    assert [p["number"] for p in http.get(api(gh, f"/commits/{HEAD}/pulls")).json()] == [7]
    other = gh.ref(REPO, "main")
    assert http.get(api(gh, f"/commits/{other}/pulls")).json() == []
    assert http.get(api(gh, "/pulls/8")).status_code == 404


def test_pygithub_comments_and_pull_requests(gh):
    gh.open_pull(REPO, 7, HEAD)
    client = github.Github(
        auth=github.Auth.Token(TOKEN),
        base_url=gh.api_url,
        seconds_between_requests=None,
        seconds_between_writes=None,
    )
    repo = client.get_repo(REPO)
    pull = repo.get_pull(7)
    comment = pull.create_issue_comment("first")
    comment.edit("second")
    assert [c.body for c in pull.get_issue_comments()] == ["second"]
    assert [p.number for p in repo.get_pulls(state="open")] == [7]
    _, shown = client.requester.requestJsonAndCheck(
        "GET", f"/repos/{REPO}/issues/comments/{comment.id}"
    )
    assert shown["body"] == "second"


# -- the Git Data API ------------------------------------------------------------------------


def test_blobs_have_git_ids_and_read_back_as_base64(gh, http):
    text = http.post(api(gh, "/git/blobs"), json={"content": "héllo\n"})
    assert text.status_code == 201
    assert text.json()["sha"] == blob_sha("héllo\n".encode())
    encoded = base64.b64encode(PNG).decode()
    binary = http.post(api(gh, "/git/blobs"), json={"content": encoded, "encoding": "base64"})
    assert binary.json()["sha"] == blob_sha(PNG)
    back = http.get(api(gh, f"/git/blobs/{binary.json()['sha']}")).json()
    assert back["encoding"] == "base64" and back["size"] == len(PNG)
    assert base64.b64decode(back["content"]) == PNG
    assert http.get(api(gh, f"/git/blobs/{'0' * 40}")).status_code == 404


def test_trees_commits_and_refs_make_an_orphan_branch(gh, http):
    png = http.post(
        api(gh, "/git/blobs"),
        json={"content": base64.b64encode(PNG).decode(), "encoding": "base64"},
    ).json()["sha"]
    tree = http.post(
        api(gh, "/git/trees"),
        json={
            "tree": [
                {"path": "a/b/c.png", "mode": "100644", "type": "blob", "sha": png},
                {"path": "a/notes.md", "mode": "100644", "type": "blob", "content": "# notes\n"},
            ]
        },
    )
    assert tree.status_code == 201
    assert [(e["path"], e["type"]) for e in tree.json()["tree"]] == [("a", "tree")]
    listing = http.get(api(gh, f"/git/trees/{tree.json()['sha']}"), params={"recursive": "1"})
    assert [(e["path"], e["type"]) for e in listing.json()["tree"]] == [
        ("a", "tree"),
        ("a/b", "tree"),
        ("a/b/c.png", "blob"),
        ("a/notes.md", "blob"),
    ]
    assert listing.json()["tree"][2]["size"] == len(PNG)

    assert http.get(api(gh, "/git/ref/heads/assets")).status_code == 404
    commit = http.post(
        api(gh, "/git/commits"), json={"message": "assets", "tree": tree.json()["sha"]}
    )
    assert commit.status_code == 201 and commit.json()["parents"] == []
    first = commit.json()["sha"]
    made = http.post(api(gh, "/git/refs"), json={"ref": "refs/heads/assets", "sha": first})
    assert made.status_code == 201 and made.json()["object"]["sha"] == first
    again = http.post(api(gh, "/git/refs"), json={"ref": "refs/heads/assets", "sha": first})
    assert (again.status_code, again.json()["message"]) == (422, "Reference already exists")
    assert http.get(api(gh, "/git/ref/heads/assets")).json()["object"]["sha"] == first

    # A second run: a tree on top of the branch's, a child commit, a fast-forward.
    added = http.post(
        api(gh, "/git/trees"),
        json={
            "base_tree": tree.json()["sha"],
            "tree": [{"path": "a/b/d.txt", "mode": "100644", "type": "blob", "content": "d"}],
        },
    ).json()["sha"]
    child = http.post(
        api(gh, "/git/commits"), json={"message": "more", "tree": added, "parents": [first]}
    ).json()["sha"]
    assert http.get(api(gh, f"/git/commits/{child}")).json()["parents"][0]["sha"] == first
    moved = http.patch(api(gh, "/git/refs/heads/assets"), json={"sha": child})
    assert moved.status_code == 200 and gh.ref(REPO, "assets") == child
    assert gh.branch_files(REPO, "assets") == {
        "a/b/c.png": PNG,
        "a/b/d.txt": b"d",
        "a/notes.md": b"# notes\n",
    }

    # Back to the parent is not a fast forward unless forced.
    back = http.patch(api(gh, "/git/refs/heads/assets"), json={"sha": first})
    assert (back.status_code, back.json()["message"]) == (422, "Update is not a fast forward")
    forced = http.patch(api(gh, "/git/refs/heads/assets"), json={"sha": first, "force": True})
    assert forced.status_code == 200 and gh.ref(REPO, "assets") == first
    missing = http.patch(api(gh, "/git/refs/heads/nope"), json={"sha": first})
    assert missing.status_code == 422
    bad_parent = http.post(
        api(gh, "/git/commits"), json={"message": "x", "tree": added, "parents": ["f" * 40]}
    )
    assert bad_parent.status_code == 422


def test_a_tree_deletes_a_path_and_refuses_a_missing_blob(gh, http):
    main = gh.ref(REPO, "main")
    base = http.get(api(gh, f"/git/commits/{main}")).json()["tree"]["sha"]
    entry = {"path": "README.md", "mode": "100644", "type": "blob", "sha": None}
    emptied = http.post(api(gh, "/git/trees"), json={"base_tree": base, "tree": [entry]})
    assert emptied.status_code == 201 and emptied.json()["tree"] == []
    entry["sha"] = "e" * 40
    assert http.post(api(gh, "/git/trees"), json={"tree": [entry]}).status_code == 422


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_tree_and_commit_ids_are_the_ones_git_computes(gh, http, tmp_path):
    files = {"a/b/c.png": PNG, "a/notes.md": b"# notes\n", "z.txt": b"z"}
    entries = []
    for path, data in files.items():
        sha = http.post(
            api(gh, "/git/blobs"),
            json={"content": base64.b64encode(data).decode(), "encoding": "base64"},
        ).json()["sha"]
        entries.append({"path": path, "mode": "100644", "type": "blob", "sha": sha})
    tree = http.post(api(gh, "/git/trees"), json={"tree": entries}).json()["sha"]
    when = "2026-12-02T10:00:00Z"
    person = {"name": "Report Bot", "email": "bot@example.com", "date": when}
    commit = http.post(
        api(gh, "/git/commits"),
        json={"message": "assets", "tree": tree, "author": person, "committer": person},
    ).json()["sha"]

    for path, data in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Report Bot",
        "GIT_AUTHOR_EMAIL": "bot@example.com",
        "GIT_AUTHOR_DATE": "2026-12-02T10:00:00+0000",
        "GIT_COMMITTER_NAME": "Report Bot",
        "GIT_COMMITTER_EMAIL": "bot@example.com",
        "GIT_COMMITTER_DATE": "2026-12-02T10:00:00+0000",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }

    def git(*args: str, stdin: bytes | None = None) -> str:
        done = subprocess.run(
            ["git", *args], cwd=tmp_path, env=env, input=stdin, capture_output=True, check=True
        )
        return done.stdout.decode().strip()

    git("init", "-q")
    git("add", ".")
    assert git("write-tree") == tree
    assert git("commit-tree", tree, stdin=b"assets") == commit


def test_pygithub_builds_a_branch_through_the_git_data_api(gh):
    client = github.Github(
        auth=github.Auth.Token(TOKEN),
        base_url=gh.api_url,
        seconds_between_requests=None,
        seconds_between_writes=None,
    )
    repo = client.get_repo(REPO)
    blob = repo.create_git_blob(base64.b64encode(PNG).decode(), "base64")
    element = github.InputGitTreeElement("plots/loss.png", "100644", "blob", sha=blob.sha)
    tree = repo.create_git_tree([element])
    commit = repo.create_git_commit("plots", tree, [])
    ref = repo.create_git_ref("refs/heads/cml-infra-assets", commit.sha)
    assert ref.object.sha == commit.sha
    assert repo.get_git_ref("heads/cml-infra-assets").object.sha == commit.sha
    content = repo.get_contents("plots/loss.png", ref="cml-infra-assets")
    assert content.decoded_content == PNG
    with pytest.raises(github.GithubException) as caught:
        repo.get_git_ref("heads/absent")
    assert caught.value.status == 404


# -- contents and the web host ---------------------------------------------------------------


def test_contents_as_json_and_raw_at_a_branch_or_commit(gh, http):
    sha = gh.push(REPO, "results", {"plots/loss.png": PNG, "metrics.json": '{"acc": 0.9}'})
    for ref in ("results", sha, sha[:10]):
        shown = http.get(api(gh, "/contents/plots/loss.png"), params={"ref": ref})
        assert shown.status_code == 200
        body = shown.json()
        assert (body["type"], body["encoding"], body["size"]) == ("file", "base64", len(PNG))
        assert base64.b64decode(body["content"]) == PNG
        assert body["sha"] == blob_sha(PNG)
        assert body["download_url"] == f"{gh.web_url}/{REPO}/raw/{ref}/plots/loss.png"
    raw = http.get(
        api(gh, "/contents/plots/loss.png"),
        params={"ref": "results"},
        headers={"Accept": "application/vnd.github.raw"},
    )
    assert raw.content == PNG
    assert raw.headers["Content-Type"] == "application/vnd.github.raw; charset=utf-8"
    listing = http.get(api(gh, "/contents/plots"), params={"ref": "results"}).json()
    assert [(e["name"], e["type"]) for e in listing] == [("loss.png", "file")]
    assert http.get(api(gh, "/contents/README.md")).json()["path"] == "README.md"
    assert http.get(api(gh, "/contents/nope.txt")).status_code == 404
    unknown = http.get(api(gh, "/contents/README.md"), params={"ref": "nope"})
    assert unknown.status_code == 404


@pytest.mark.parametrize("api_prefix", ["", "/api/v3"])
def test_the_web_host_serves_file_links(api_prefix):
    with FakeGitHub(TOKEN, api_prefix=api_prefix) as gh, requests.Session() as web:
        web.trust_env = False  # and no token: the browser shows the page, not the API
        gh.push(REPO, "feature/x", {"plots/loss.png": PNG, "card.html": "<p>card</p>"})
        assert gh.web_url == html_url(ForgeTarget(repo=REPO), gh.api_url).removesuffix(f"/{REPO}")
        base = f"{gh.web_url}/{REPO}"
        image = web.get(f"{base}/blob/feature/x/plots/loss.png", params={"raw": "true"})
        assert (image.status_code, image.content) == (200, PNG)
        assert image.headers["Content-Type"] == "image/png"
        card = web.get(f"{base}/raw/feature/x/card.html")
        assert card.content == b"<p>card</p>" and card.headers["Content-Type"] == "text/html"
        page = web.get(f"{base}/blob/main/README.md")
        assert page.headers["Content-Type"].startswith("text/html")
        assert web.get(f"{base}/raw/main/nope.png").status_code == 404
        assert web.get(f"{gh.web_url}/octo/absent/raw/main/README.md").status_code == 404
        # The API is where it was.
        listed = web.get(
            f"{gh.api_url}/repos/{REPO}/pulls", headers={"Authorization": f"token {TOKEN}"}
        )
        assert listed.status_code == 200
        assert gh.violations == []


# -- helpers ---------------------------------------------------------------------------------


def test_push_ref_and_branch_files(gh):
    assert gh.ref(REPO, "absent") is None
    first = gh.push(REPO, "data", {"a/b.txt": "b", "c.bin": b"\0"})
    second = gh.push(REPO, "data", {"c.bin": None, "d.txt": "d"}, message="more")
    assert gh.ref(REPO, "data") == second != first
    assert gh.branch_files(REPO, "data") == {"a/b.txt": b"b", "d.txt": b"d"}
    assert gh.git_objects(REPO)[second] == "commit"
    assert Path("README.md").name in gh.branch_files(REPO, "main")
    with pytest.raises(KeyError):
        gh.branch_files(REPO, "absent")


def test_fail_next_matches_method_and_path_prefix(gh, http):
    gh.open_pull(REPO, 7, HEAD)
    gh.fail_next(2, 502, method="POST", path_prefix=f"/repos/{REPO}/issues/")
    assert http.post(api(gh, "/git/blobs"), json={"content": "x"}).status_code == 201
    assert http.get(api(gh, "/issues/7/comments")).status_code == 200
    for _ in range(2):
        failed = http.post(api(gh, "/issues/7/comments"), json={"body": "x"})
        assert failed.status_code == 502 and failed.json()["message"] == "Server Error"
    assert http.post(api(gh, "/issues/7/comments"), json={"body": "x"}).status_code == 201
    assert len(gh.issue_comments(REPO, 7)) == 1


def test_a_response_of_the_new_routes_off_the_description_is_a_violation(gh, http, monkeypatch):
    from tests.fakes.github_repo import RepoRoutes

    shown = RepoRoutes._git_commit

    def unverified(self, repo, store, sha):
        out = shown(self, repo, store, sha)
        del out["verification"]
        return out

    monkeypatch.setattr(RepoRoutes, "_git_commit", unverified)
    assert http.get(api(gh, f"/git/commits/{gh.ref(REPO, 'main')}")).status_code == 200
    assert len(gh.violations) == 1 and "verification" in gh.violations[0]
    gh.violations.clear()
