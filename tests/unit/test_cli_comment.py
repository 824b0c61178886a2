"""`cml-infra comment` and `cml-infra report` as a workflow step runs them: the console script in
a subprocess against the loopback FakeGitHub. Bad input is one line and exit 2, GitHub saying no
is one line and exit 1, and either way nothing is half-posted; the token is never printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.github import FakeGitHub

pytestmark = pytest.mark.usefixtures("no_proxy")

TOKEN = "ghp_cli_comment_CANARY_1"
READ_ONLY = "ghs_cli_readonly_CANARY_2"
REPO = "octo/repo"
PNG = b"\x89PNG\r\n\x1a\n plot"


@pytest.fixture
def gh():
    with FakeGitHub(TOKEN, repos=(REPO,)) as fake:
        fake.add_token(READ_ONLY, permissions={"contents": "read", "pull_requests": "read",
                                               "metadata": "read"})  # fmt: skip
        yield fake
        assert fake.violations == [], fake.violations


@pytest.fixture
def work(tmp_path, gh, monkeypatch):
    """A job's workspace: a metrics file and a plot; the job runs for a push of main's head."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"train": {"loss": 0.5}, "epochs": 2}))
    (tmp_path / "plot.png").write_bytes(PNG)
    return tmp_path


def cml(gh: FakeGitHub, cwd: Path, *args: str, stdin: str | None = None, **env: str):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CML_INFRA_", "GITHUB_"))}
    environ.update(
        CML_INFRA_CONFIG="",
        CML_INFRA_HOME=str(cwd / "state"),
        CML_INFRA_GITHUB_URL=gh.api_url,
        GITHUB_REPOSITORY=REPO,
        GITHUB_EVENT_NAME="push",
        GITHUB_SHA=gh.ref(REPO, "main") or "",
        GITHUB_OUTPUT=str(cwd / "output"),
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", "cml_infra", *args],
        cwd=cwd, env=environ, input=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def one_line_error(result, code: int, *words: str) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert TOKEN not in result.stdout + result.stderr


def test_report_piped_into_comment_update_posts_once_then_edits(gh, work):
    head = gh.ref(REPO, "main")
    gh.open_pull(REPO, 3, head)
    made = cml(gh, work, "report", "--metrics", "metrics.json", "--image", "plot.png")
    assert made.returncode == 0, made.stderr
    assert "| train.loss | 0.5 |" in made.stdout
    for _ in range(2):
        posted = cml(gh, work, "comment", "update", "-", "--pr", stdin=made.stdout,
                     CML_INFRA_TOKEN=TOKEN)  # fmt: skip
        assert posted.returncode == 0, posted.stderr
    comments = gh.issue_comments(REPO, 3)
    assert len(comments) == 1 and "| epochs | 2 |" in comments[0]["body"]
    assert posted.stdout.strip() == comments[0]["html_url"]
    assert f"comment-url={comments[0]['html_url']}" in (work / "output").read_text()
    assert list(gh.branch_files(REPO, "cml-infra-assets").values()) == [PNG]
    assert TOKEN not in posted.stdout + posted.stderr + (work / "output").read_text()


def test_a_missing_report_is_exit_2(gh, work):
    result = cml(gh, work, "comment", "create", "nope.md", "--target", "pr/1",
                 CML_INFRA_TOKEN=TOKEN)  # fmt: skip
    one_line_error(result, 2, "nope.md")


def test_an_image_over_githubs_limit_is_exit_2_and_uploads_nothing(gh, work):
    with open(work / "huge.png", "wb") as handle:
        handle.truncate(100 * 1024 * 1024 + 1)  # sparse: no disk is used
    (work / "r.md").write_text("![big](huge.png)\n")
    gh.open_issue(REPO, 4)
    result = cml(gh, work, "comment", "create", "r.md", "--target", "issue/4",
                 CML_INFRA_TOKEN=TOKEN)  # fmt: skip
    one_line_error(result, 2, "huge.png", "100 MiB")
    assert gh.issue_comments(REPO, 4) == [] and gh.ref(REPO, "cml-infra-assets") is None


def test_no_pull_request_for_the_commit_with_pr_is_exit_1(gh, work):
    (work / "r.md").write_text("hello\n")
    result = cml(gh, work, "comment", "create", "r.md", "--pr", CML_INFRA_TOKEN=TOKEN)
    one_line_error(result, 1, "no open pull request")


def test_a_token_without_permission_is_exit_1_and_posts_nothing(gh, work):
    gh.open_pull(REPO, 5, gh.ref(REPO, "main") or "")
    (work / "r.md").write_text("![p](plot.png)\n")
    result = cml(gh, work, "comment", "create", "r.md", "--target", "pr/5",
                 CML_INFRA_TOKEN=READ_ONLY)  # fmt: skip
    one_line_error(result, 1, "403")
    assert READ_ONLY not in result.stderr
    assert gh.issue_comments(REPO, 5) == [] and gh.ref(REPO, "cml-infra-assets") is None


def test_a_dry_run_needs_no_token_and_posts_nothing(gh, work):
    (work / "r.md").write_text("![p](plot.png)\n")
    result = cml(gh, work, "comment", "create", "r.md", "--target", "pr/9", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"/{REPO}/blob/cml-infra-assets/" in result.stdout
    assert "would upload" in result.stderr
    assert gh.ref(REPO, "cml-infra-assets") is None


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (("report",), 2, ("--metrics",)),
        (("report", "--metrics", "missing.json"), 2, ("--metrics", "missing.json")),
        (("report", "--metrics", "metrics.json", "--cost"), 2, ("--run-id",)),
        (("report", "--metrics", "metrics.json", "-o", "no/such/dir/r.md"), 2, ("--output",)),
        (("comment", "create", "r.md", "--target", "pull-request/1"), 2, ("--target",)),
        (("comment", "update", "r.md", "--rm-watermark", "--dry-run"), 2, ("--rm-watermark",)),
        (("comment", "create", "r.md", "--github-app-id", "x1"), 2, ("--github-app-id",)),
    ],
)
def test_bad_input_is_one_line_and_exit_2(gh, work, args, code, words):
    (work / "r.md").write_text("hello\n")
    one_line_error(cml(gh, work, *args, CML_INFRA_TOKEN=TOKEN), code, *words)
