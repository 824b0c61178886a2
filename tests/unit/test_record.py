"""cml_infra.record: the workflow run a record remembers (`ci`), and records written before it."""

from __future__ import annotations

import json

import pytest

from cml_infra.record import RunnerRecord, ci_run

ACTIONS = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_REPOSITORY": "octo/repo.ml",
    "GITHUB_RUN_ID": "9876543210",
    "GITHUB_RUN_ATTEMPT": "2",
    "GITHUB_WORKFLOW": "Train | GPU",
    "GITHUB_JOB": "launch-runner",
    "GITHUB_SERVER_URL": "https://github.com",
    "GITHUB_TOKEN": "ghs_must_not_be_kept",
}


def test_ci_run_keeps_the_run_and_nothing_else():
    assert ci_run(ACTIONS) == {
        "repository": "octo/repo.ml",
        "run_id": "9876543210",
        "run_attempt": "2",
        "workflow": "Train | GPU",
        "job": "launch-runner",
        "server": "https://github.com",
    }


def test_outside_actions_there_is_no_run():
    assert ci_run({**ACTIONS, "GITHUB_ACTIONS": "false"}) is None
    assert ci_run({}) is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [("GITHUB_RUN_ID", "12a"), ("GITHUB_RUN_ID", ""), ("GITHUB_REPOSITORY", "octo"),
     ("GITHUB_REPOSITORY", "octo/repo/x"), ("GITHUB_REPOSITORY", "../etc")],
)  # fmt: skip
def test_without_a_well_formed_run_id_and_repository_there_is_no_run(variable, value):
    assert ci_run({**ACTIONS, variable: value}) is None


@pytest.mark.parametrize(
    ("variable", "field", "value"),
    [("GITHUB_RUN_ATTEMPT", "run_attempt", "two"), ("GITHUB_WORKFLOW", "workflow", "a\nb"),
     ("GITHUB_JOB", "job", "a job"), ("GITHUB_SERVER_URL", "server", "javascript:alert(1)")],
)  # fmt: skip
def test_other_malformed_values_are_dropped(variable, field, value):
    found = ci_run({**ACTIONS, variable: value})
    assert found is not None and field not in found and found["run_id"] == "9876543210"


def test_the_process_environment_is_the_default(monkeypatch):
    for name, value in ACTIONS.items():
        monkeypatch.setenv(name, value)
    assert ci_run() == ci_run(ACTIONS)


def test_a_record_written_before_ci_was_kept_still_decodes(make_record):
    old = json.loads(make_record("gpu-1").to_json())
    del old["ci"]
    assert RunnerRecord.from_json(json.dumps(old)).ci is None


def test_ci_goes_through_the_json_of_a_record(make_record):
    record = make_record("gpu-1", ci=ci_run(ACTIONS))
    assert RunnerRecord.from_json(record.to_json()) == record
