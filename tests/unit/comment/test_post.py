"""cml_infra.comment.comment against the loopback FakeGitHub (tests/fakes/github.py), whose
traffic is checked against GitHub's OpenAPI description: comments created and updated in place,
assets on the orphan branch behind working links, and failures that post nothing half-done."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re

import pytest
import requests

from cml_infra.comment import CommentOptions, CommentResult, comment
from cml_infra.comment import assets as assets_module
from cml_infra.comment.assets import Publisher
from cml_infra.errors import CmlInfraError, UsageError
from tests.fakes.github import FakeGitHub

TOKEN = "ghp_comment_CANARY_123"
LIMITED = "ghp_limited_CANARY_456"
REPO = "octo/repo"
PNG = b"\x89PNG\r\n\x1a\n fake plot bytes"
CARD = b"<html>model card</html>"
BRANCH = "cml-infra-assets"

pytestmark = pytest.mark.usefixtures("no_proxy")


@pytest.fixture
def gh():
    with FakeGitHub(TOKEN, repos=(REPO,)) as fake:
        yield fake
        assert fake.violations == [], fake.violations


@pytest.fixture
def report(tmp_path, monkeypatch):
    """A report in out/ linking a plot beside it, a model card and a remote image."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "loss.png").write_bytes(PNG)
    (out / "card.html").write_bytes(CARD)
    path = out / "report.md"
    path.write_text(
        "# Run\n\n![loss](plots/loss.png)\n\n[model card](card.html) "
        "![badge](https://img.shields.io/b.svg)\n\n```\n![not](in-code.png)\n```\n"
    )
    return path


@pytest.fixture
def pull(gh):
    """Pull request #7, whose head is main's commit."""
    head = gh.ref(REPO, "main")
    gh.open_pull(REPO, 7, head)
    return head


def options(gh, source, **changes) -> CommentOptions:
    base = CommentOptions(
        source=str(source), target="pr/7", repo=REPO, token=TOKEN, github_url=gh.api_url
    )
    return dataclasses.replace(base, **changes)


def fetch(url: str) -> bytes:
    with requests.Session() as session:
        session.trust_env = False
        response = session.get(url, timeout=5)
        assert response.status_code == 200, url
        return response.content


def links(markdown: str) -> list[str]:
    return re.findall(r"\]\((http[^)\s]+)\)", markdown)


def assert_no_token(*texts: object) -> None:
    for text in texts:
        assert TOKEN not in str(text) and LIMITED not in str(text)


# --- creating and updating -------------------------------------------------------------------


def test_create_posts_the_report_with_its_files_on_the_orphan_branch(gh, pull, report):
    result = comment(options(gh, report))
    assert isinstance(result, CommentResult)
    [posted] = gh.issue_comments(REPO, 7)
    assert result.url == posted["html_url"]
    assert result.target == "pull request #7 of octo/repo"
    assert posted["body"] == result.markdown
    assert result.markdown.endswith("\n<!-- cml-infra: report -->")
    assert "![not](in-code.png)" in result.markdown
    assert "https://img.shields.io/b.svg" in result.markdown

    files = gh.branch_files(REPO, BRANCH)
    plot_path = f"{hashlib.sha256(PNG).hexdigest()}/loss.png"
    card_path = f"{hashlib.sha256(CARD).hexdigest()}/card.html"
    assert files == {plot_path: PNG, card_path: CARD}
    assert [(u.branch_path, u.uploaded) for u in result.uploads] == [
        (plot_path, True),
        (card_path, True),
    ]
    commit = gh.ref(REPO, BRANCH)
    plot_url, card_url = links(result.markdown)[:2]
    assert plot_url == f"{gh.web_url}/{REPO}/blob/{commit}/{plot_path}?raw=true"
    assert fetch(plot_url) == PNG and fetch(card_url) == CARD
    assert_no_token(result)


def test_the_assets_branch_shares_no_history_with_the_code(gh, pull, report):
    comment(options(gh, report))
    with requests.Session() as session:
        session.trust_env = False
        commit = session.get(
            f"{gh.api_url}/repos/{REPO}/git/commits/{gh.ref(REPO, BRANCH)}",
            headers={"Authorization": f"token {TOKEN}"},
            timeout=5,
        ).json()
    assert commit["parents"] == []
    assert gh.ref(REPO, "main") == pull, "the code's branch is untouched"


def test_update_edits_our_comment_in_place_and_uploads_nothing_new(gh, pull, report):
    first = comment(options(gh, report, update=True))
    gh.requests.clear()
    second = comment(options(gh, report, update=True))
    [posted] = gh.issue_comments(REPO, 7)
    assert (second.updated, first.updated) == (True, False)
    assert second.url == first.url == posted["html_url"]
    assert {u.uploaded for u in second.uploads} == {False}
    writes = [(verb, path) for verb, path, _ in gh.requests if verb != "GET"]
    assert writes == [("PATCH", f"/repos/{REPO}/issues/comments/{posted['id']}")]
    assert links(second.markdown) == links(first.markdown)


def test_update_changes_the_body(gh, pull, report):
    comment(options(gh, report, update=True))
    report.write_text("# Run 2\n\n![loss](plots/loss.png)\n")
    result = comment(options(gh, report, update=True))
    [posted] = gh.issue_comments(REPO, 7)
    assert posted["body"].startswith("# Run 2") and posted["body"] == result.markdown


def test_update_leaves_other_comments_and_other_titles_alone(gh, pull, report):
    comment(options(gh, report, rm_watermark=True))  # someone's plain comment
    comment(options(gh, report, update=True, watermark_title="nightly"))
    comment(options(gh, report, update=True))
    comment(options(gh, report, update=True))
    bodies = [c["body"] for c in gh.issue_comments(REPO, 7)]
    assert len(bodies) == 3
    assert "cml-infra:" not in bodies[0]
    assert bodies[1].endswith("<!-- cml-infra: nightly -->")
    assert bodies[2].endswith("<!-- cml-infra: report -->")


def test_update_edits_the_newest_of_ours(gh, pull, report):
    comment(options(gh, report))
    comment(options(gh, report))
    report.write_text("newest\n")
    comment(options(gh, report, update=True))
    older, newer = gh.issue_comments(REPO, 7)
    assert not older["body"].startswith("newest") and newer["body"].startswith("newest")


def test_create_always_adds_a_comment(gh, pull, report):
    comment(options(gh, report))
    comment(options(gh, report))
    assert len(gh.issue_comments(REPO, 7)) == 2


def test_update_finds_ours_past_the_first_page(gh, pull, report):
    first = comment(options(gh, report, update=True))
    for _ in range(101):
        comment(options(gh, report, rm_watermark=True, publish=False))
    second = comment(options(gh, report, update=True))
    assert second.url == first.url and len(gh.issue_comments(REPO, 7)) == 102


def test_an_issue_and_a_commit(gh, report):
    gh.open_issue(REPO, 3)
    comment(options(gh, report, target="issue/3"))
    assert len(gh.issue_comments(REPO, 3)) == 1
    sha = gh.ref(REPO, "main")
    first = comment(options(gh, report, target=f"commit/{sha}", update=True))
    second = comment(options(gh, report, target=f"commit/{sha}", update=True))
    [posted] = gh.commit_comments(REPO, sha)
    assert first.url == second.url == posted["html_url"]
    assert second.target == f"commit {sha} of octo/repo"


def test_the_target_comes_from_the_pull_request_event(gh, pull, report, tmp_path):
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"number": 7, "pull_request": {"number": 7}}))
    env = {
        "GITHUB_EVENT_NAME": "pull_request",
        "GITHUB_EVENT_PATH": str(event),
        "GITHUB_REPOSITORY": REPO,
        "GITHUB_SHA": pull,
        "GITHUB_API_URL": gh.api_url,
    }
    plain = options(gh, report, target=None, repo=None, github_url=None)
    result = comment(plain, env)
    assert result.target == "pull request #7 of octo/repo"
    assert len(gh.issue_comments(REPO, 7)) == 1


def test_pr_on_a_push_finds_the_open_pull_request_of_the_commit(gh, report):
    head = gh.push(REPO, "feature", {"train.py": "print(1)\n"})
    gh.open_pull(REPO, 5, head, state="closed")
    gh.open_pull(REPO, 6, head)
    env = {"GITHUB_EVENT_NAME": "push", "GITHUB_SHA": head}
    result = comment(options(gh, report, target=None, pr=True), env)
    assert result.target == "pull request #6 of octo/repo"
    assert len(gh.issue_comments(REPO, 6)) == 1 and gh.issue_comments(REPO, 5) == []


def test_pr_with_no_open_pull_request_posts_nothing(gh, report):
    head = gh.push(REPO, "lonely", {"a.txt": "a"})
    env = {"GITHUB_EVENT_NAME": "push", "GITHUB_SHA": head}
    with pytest.raises(CmlInfraError) as raised:
        comment(options(gh, report, target=None, pr=True), env)
    assert type(raised.value) is CmlInfraError and raised.value.exit_code == 1
    assert f"no open pull request for commit {head}" in str(raised.value)
    assert gh.ref(REPO, BRANCH) is None


def test_stdin_links_resolve_from_the_working_directory(gh, pull, report, monkeypatch):
    monkeypatch.chdir(report.parent)
    monkeypatch.setattr("sys.stdin", io.StringIO("![l](plots/loss.png)\n"))
    result = comment(options(gh, "-"))
    assert fetch(links(result.markdown)[0]) == PNG


def test_no_publish_leaves_links_alone(gh, pull, report):
    report.write_text("![gone](missing.png)\n")
    result = comment(options(gh, report, publish=False))
    assert result.markdown.startswith("![gone](missing.png)\n") and result.uploads == ()
    assert gh.ref(REPO, BRANCH) is None


def test_links_on_an_enterprise_server_work(report):
    with FakeGitHub(TOKEN, repos=(REPO,), api_prefix="/api/v3") as ghes:
        ghes.open_pull(REPO, 7, ghes.ref(REPO, "main"))
        result = comment(options(ghes, report, assets_branch="reports/assets"))
        assert fetch(links(result.markdown)[0]) == PNG
        assert ghes.violations == []


# --- a branch moved by another job -------------------------------------------------------------


def test_a_branch_moved_meanwhile_is_read_again_and_keeps_both(gh, pull, report, monkeypatch):
    comment(options(gh, report, publish=True))  # the branch exists
    other = report.parent / "other.png"
    other.write_bytes(b"other")
    report.write_text("![o](other.png)\n")
    real_commit = Publisher._commit
    calls = []

    def commit_then_race(self, head, entries):
        made = real_commit(self, head, entries)
        if not calls:  # another job's report lands between our read and our update
            gh.push(REPO, BRANCH, {"elsewhere/x.txt": "x"}, message="another job")
        calls.append(made)
        return made

    monkeypatch.setattr(Publisher, "_commit", commit_then_race)
    result = comment(options(gh, report))
    assert len(calls) == 2
    files = gh.branch_files(REPO, BRANCH)
    assert "elsewhere/x.txt" in files and files[result.uploads[0].branch_path] == b"other"
    assert fetch(links(result.markdown)[0]) == b"other"
    blobs = [path for verb, path, _ in gh.requests if path.endswith("/git/blobs")]
    assert len(blobs) == 3, "the file's blob is not sent twice"


def test_a_branch_that_keeps_moving_gives_up(gh, pull, report, monkeypatch):
    monkeypatch.setattr(Publisher, "_move", lambda self, head, commit: False)
    with pytest.raises(CmlInfraError) as raised:
        comment(options(gh, report))
    assert "kept moving" in str(raised.value) and "not posted" in str(raised.value)
    assert gh.issue_comments(REPO, 7) == []


# --- failures: nothing half-posted, one clean line, never the token ----------------------------


@pytest.mark.parametrize(
    "permissions",
    [
        {"contents": "read", "pull_requests": "read", "issues": "read"},
        {"contents": "write", "pull_requests": "read", "issues": "read"},
    ],
)
def test_a_token_without_permission_posts_nothing(gh, pull, report, permissions):
    gh.add_token(LIMITED, permissions)
    with pytest.raises(CmlInfraError) as raised:
        comment(options(gh, report, token=LIMITED))
    message = str(raised.value)
    assert type(raised.value) is CmlInfraError and raised.value.exit_code == 1
    assert "permission denied (403" in message and "not posted" in message
    assert "\n" not in message
    assert gh.issue_comments(REPO, 7) == []
    assert_no_token(message)
    if permissions["contents"] == "read":
        assert "Contents read/write" in message and gh.ref(REPO, BRANCH) is None
    else:
        assert "Issues read/write" in message
        assert "Uploaded to the branch cml-infra-assets" in message and "loss.png" in message


def test_a_failure_between_assets_and_comment_says_what_was_uploaded(gh, pull, report):
    gh.fail_next(1, 502, method="POST", path_prefix=f"/repos/{REPO}/issues/")
    with pytest.raises(CmlInfraError) as raised:
        comment(options(gh, report))
    message = str(raised.value)
    assert "502" in message and "the comment was not posted" in message
    assert "plots/loss.png" in message and "card.html" in message and "re-run" in message
    assert gh.issue_comments(REPO, 7) == []
    assert_no_token(message)
    rerun = comment(options(gh, report))
    assert {u.uploaded for u in rerun.uploads} == {False}
    assert len(gh.issue_comments(REPO, 7)) == 1


def test_a_wrong_token_is_rejected_cleanly(gh, pull, report):
    with pytest.raises(CmlInfraError) as raised:
        comment(options(gh, report, token=LIMITED))
    assert "401" in str(raised.value) and "--token" in str(raised.value)
    assert_no_token(raised.value)


def test_a_missing_pull_request_is_named(gh, report):
    with pytest.raises(CmlInfraError) as raised:
        comment(options(gh, report, target="pr/99", publish=False))
    assert "pull request #99 of octo/repo not found" in str(raised.value)


def test_an_error_echoing_the_token_is_scrubbed(gh, pull, report):
    gh.fail_next(1, 500, {"message": f"echo {TOKEN}"}, method="POST")
    with pytest.raises(CmlInfraError) as raised:
        comment(options(gh, report, publish=False))
    assert "***" in str(raised.value)
    assert_no_token(raised.value)


# --- bad input: exit 2, nothing asked of GitHub -------------------------------------------------


def bad_input(gh, opts, env=None) -> UsageError:
    with pytest.raises(UsageError) as raised:
        comment(opts, env or {})
    assert raised.value.exit_code == 2
    assert gh.requests == [], "bad input is found before any request"
    assert_no_token(raised.value)
    return raised.value


def test_a_body_over_the_limit_names_the_report_and_the_limit(gh, pull, report):
    report.write_text("x" * 65_520 + "\n")
    error = bad_input(gh, options(gh, report))
    assert error.source == str(report)
    assert "65,536" in str(error) and "65,5" in str(error)


def test_a_body_at_the_limit_is_posted_one_more_is_not(gh, pull, report):
    added = len("\n<!-- cml-infra: report -->")  # after the report's own last newline
    report.write_text("é" * (65_536 - added - 1) + "\n")  # characters, not bytes, count
    result = comment(options(gh, report))
    assert len(result.markdown) == 65_536
    assert len(gh.issue_comments(REPO, 7)[0]["body"]) == 65_536
    report.write_text("é" * (65_536 - added) + "\n")
    with pytest.raises(UsageError):
        comment(options(gh, report))


def test_the_limit_counts_the_rewritten_links(gh, pull, report):
    body = "![l](plots/loss.png)\n"
    # Fits as written, not once the link is a URL of the assets branch.
    report.write_text("z" * (65_536 - 40 - len(body)) + "\n" + body)
    assert "65,536" in str(bad_input(gh, options(gh, report)))


def test_a_file_over_the_limit_uploads_nothing(gh, pull, report):
    with (report.parent / "plots" / "loss.png").open("wb") as handle:
        handle.truncate(assets_module.MAX_FILE_BYTES + 1)
    error = bad_input(gh, options(gh, report))
    assert error.source.endswith("loss.png") and "100 MiB" in str(error)


def test_a_missing_linked_file_names_the_report_and_the_link(gh, report):
    report.write_text("![a](plots/loss.png) ![b](plots/gone.png)\n")
    error = bad_input(gh, options(gh, report))
    assert error.source == str(report) and "plots/gone.png" in str(error)


def test_a_missing_report(gh, tmp_path):
    error = bad_input(gh, options(gh, tmp_path / "nope.md"))
    assert "no such report file" in str(error)


def test_update_with_rm_watermark_is_refused(gh, report):
    error = bad_input(gh, options(gh, report, update=True, rm_watermark=True))
    assert error.source == "--rm-watermark"


def test_no_token_is_refused(gh, report):
    assert bad_input(gh, options(gh, report, token=None)).source == "--token"


def test_a_report_holding_the_token_is_refused(gh, report):
    report.write_text(f"debug: {TOKEN}\n")
    error = bad_input(gh, options(gh, report))
    assert "token" in str(error)


def test_plain_http_elsewhere_is_refused(gh, report):
    error = bad_input(gh, options(gh, report, github_url="http://ghe.example/api/v3"))
    assert error.source == "--github-url"


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"target": "pr/x"}, "--target"),
        ({"repo": "not a repo"}, "--repo"),
        ({"assets_branch": "a..b"}, "--assets-branch"),
        ({"watermark_title": "a-->b"}, "--watermark-title"),
    ],
)
def test_bad_flags_are_named(gh, report, changes, flag):
    assert bad_input(gh, options(gh, report, **changes)).source == flag


# --- dry run -------------------------------------------------------------------------------------


def test_dry_run_needs_no_token_and_asks_nothing(gh, report):
    result = comment(options(gh, report, token=None, dry_run=True), {})
    assert gh.requests == []
    assert result.url is None
    plot = f"{hashlib.sha256(PNG).hexdigest()}/loss.png"
    assert links(result.markdown)[0] == f"{gh.web_url}/{REPO}/blob/{BRANCH}/{plot}?raw=true"
    assert (result.uploads[0].branch_path, result.uploads[0].uploaded) == (plot, False)
    assert result.markdown.endswith("<!-- cml-infra: report -->")


def test_dry_run_with_pr_on_a_push_says_what_it_would_look_up(gh, report):
    env = {"GITHUB_EVENT_NAME": "push", "GITHUB_SHA": "a" * 40}
    result = comment(options(gh, report, target=None, pr=True, dry_run=True), env)
    assert "open pull request for commit " + "a" * 40 in result.target
    assert gh.requests == []


def test_dry_run_still_checks_the_input(gh, report):
    report.write_text("![b](gone.png)\n")
    bad_input(gh, options(gh, report, token=None, dry_run=True))


class Minter:
    """Stands in for a GitHub App: mints the token for the target it is asked about."""

    def __init__(self) -> None:
        self.asked: list[object] = []

    def token_for(self, target):
        self.asked.append(target)
        return TOKEN


def test_an_app_credential_mints_the_token_for_the_repository(gh, pull, report):
    minter = Minter()
    result = comment(options(gh, report, token=minter))
    [target] = minter.asked
    assert (target.repo, target.api_url) == (REPO, gh.api_url)
    assert result.url == gh.issue_comments(REPO, 7)[0]["html_url"]


def test_a_dry_run_mints_nothing(gh, report):
    minter = Minter()
    comment(options(gh, report, token=minter, dry_run=True), {})
    assert minter.asked == [] and gh.requests == []
