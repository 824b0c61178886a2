"""cml_infra.comment.target: --target, the repository, and the target a workflow's event names."""

from __future__ import annotations

import json

import pytest

from cml_infra.comment.target import Target, detect, parse, repository
from cml_infra.errors import UsageError

SHA = "0123456789abcdef0123456789abcdef01234567"


def event(tmp_path, name: str, payload: object) -> dict[str, str]:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(payload))
    return {
        "GITHUB_EVENT_NAME": name,
        "GITHUB_EVENT_PATH": str(path),
        "GITHUB_SHA": SHA,
        "GITHUB_REPOSITORY": "octo/repo",
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pr/12", Target("o/r", "pr", "12")),
        ("pull/3", Target("o/r", "pr", "3")),
        ("issue/7", Target("o/r", "issue", "7")),
        ("commit/ABCDEF1", Target("o/r", "commit", "abcdef1")),
        (f"commit/{SHA}", Target("o/r", "commit", SHA)),
    ],
)
def test_parse_takes_the_three_forms(text, expected):
    assert parse(text, "o/r") == expected


@pytest.mark.parametrize(
    "text", ["pr/0", "pr/-1", "pr/x", "pr/", "issue/1.5", "commit/xyz1234", "commit/abc", "42", ""]
)
def test_parse_refuses_anything_else_naming_the_flag_and_the_forms(text):
    with pytest.raises(UsageError) as raised:
        parse(text, "o/r")
    assert raised.value.source == "--target"
    assert "pr/N, issue/N or commit/SHA" in str(raised.value)


def test_describe():
    assert Target("o/r", "pr", "3").describe() == "pull request #3 of o/r"
    assert Target("o/r", "commit", SHA).describe() == f"commit {SHA} of o/r"


@pytest.mark.parametrize("name", ["pull_request", "pull_request_target"])
def test_a_pull_request_event_names_the_pull_request(tmp_path, name):
    env = event(tmp_path, name, {"number": 9, "pull_request": {"number": 9}})
    assert detect(None, "octo/repo", env) == Target("octo/repo", "pr", "9")


@pytest.mark.parametrize("name", ["issues", "issue_comment"])
def test_issue_events_name_the_issue(tmp_path, name):
    env = event(tmp_path, name, {"issue": {"number": 4}, "comment": {"id": 1}})
    assert detect(None, "octo/repo", env) == Target("octo/repo", "issue", "4")


@pytest.mark.parametrize("name", ["push", "workflow_dispatch", "schedule", "release"])
def test_other_events_comment_on_the_commit(tmp_path, name):
    env = event(tmp_path, name, {"ref": "refs/heads/main"})
    assert detect(None, "octo/repo", env) == Target("octo/repo", "commit", SHA)


def test_target_wins_over_the_event(tmp_path):
    env = event(tmp_path, "pull_request", {"number": 9})
    assert detect("issue/2", "octo/repo", env) == Target("octo/repo", "issue", "2")


def test_a_pull_request_event_without_a_number_is_refused(tmp_path):
    env = event(tmp_path, "pull_request", {"action": "opened"})
    with pytest.raises(UsageError) as raised:
        detect(None, "octo/repo", env)
    assert raised.value.source == "GITHUB_EVENT_PATH"


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_an_unreadable_event_file_is_refused(tmp_path, content):
    env = event(tmp_path, "pull_request", {})
    (tmp_path / "event.json").write_text(content)
    with pytest.raises(UsageError) as raised:
        detect(None, "octo/repo", env)
    assert raised.value.source == "GITHUB_EVENT_PATH"


def test_a_missing_event_file_is_refused(tmp_path):
    env = {"GITHUB_EVENT_NAME": "pull_request", "GITHUB_EVENT_PATH": str(tmp_path / "none")}
    with pytest.raises(UsageError) as raised:
        detect(None, "octo/repo", env)
    assert "cannot read" in str(raised.value)


def test_outside_a_workflow_the_target_must_be_given():
    with pytest.raises(UsageError) as raised:
        detect(None, "octo/repo", {})
    assert raised.value.source == "--target"
    assert "pr/N, issue/N or commit/SHA" in str(raised.value)


def test_a_bad_github_sha_is_refused():
    with pytest.raises(UsageError) as raised:
        detect(None, "octo/repo", {"GITHUB_EVENT_NAME": "push", "GITHUB_SHA": "main"})
    assert raised.value.source == "GITHUB_SHA"


def test_repository_from_the_flag_else_the_workflow():
    assert repository("a/b", {"GITHUB_REPOSITORY": "c/d"}) == "a/b"
    assert repository(None, {"GITHUB_REPOSITORY": "c/d"}) == "c/d"


@pytest.mark.parametrize(
    ("flag", "env"), [(None, {}), ("no-slash", {}), (None, {"GITHUB_REPOSITORY": "a/b/c"})]
)
def test_no_repository_or_a_bad_one_names_repo(flag, env):
    with pytest.raises(UsageError) as raised:
        repository(flag, env)
    assert raised.value.source == "--repo"
