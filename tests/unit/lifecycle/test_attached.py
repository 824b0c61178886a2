"""`up` attached: what each way a task ends makes of `up`'s exit, its outputs and its retries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cml_infra.errors import CmlInfraError
from cml_infra.lifecycle import attached
from cml_infra.spec import RunnerSpec
from cml_infra.state import StateDir
from cml_infra.task.attach import Outcome
from tests.unit.conftest import record_of


@pytest.fixture
def spec(tmp_path: Path) -> RunnerSpec:
    return RunnerSpec(name="job", cloud="aws", idle_timeout=60, ttl=3600, single=True,
                      spot=True, command=("python", "train.py"), workdir=tmp_path,
                      outputs=("model.bin",))  # fmt: skip


@pytest.fixture
def outcomes(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What each attach returns, in turn (an exception is raised); pulls are recorded."""
    queue: list[Any] = []

    def attach(state: Any, record: Any, write: Any) -> Outcome:
        found = queue.pop(0)
        if isinstance(found, BaseException):
            raise found
        return found

    monkeypatch.setattr(attached.attach, "attach", attach)
    monkeypatch.setattr(attached.attach, "pull", lambda state, record, dest: ["model.bin"])
    return queue


def _exited(code: int, **status: Any) -> Outcome:
    return Outcome("exited", code, {"task": "exited", "exit_code": code, **status})


def test_the_tasks_exit_code_is_ups(spec, outcomes, tmp_path, capsys) -> None:
    outcomes.append(_exited(3, outputs={"uploaded": ["model.bin"], "missing": []}))
    done = attached.until_done(spec, StateDir(tmp_path), record_of("job"), None, None, retries=0)
    assert done.exit_code == 3
    assert "job: the task exited with 3" in capsys.readouterr().err


def test_outputs_that_did_not_come_back_are_said(spec, outcomes, tmp_path, capsys) -> None:
    outcomes.append(_exited(0, outputs=None))
    attached.until_done(spec, StateDir(tmp_path), record_of("job"), None, None, retries=0)
    assert "job: its outputs did not come back" in capsys.readouterr().err


def test_an_out_path_the_task_did_not_make_is_named(spec, outcomes, tmp_path, capsys) -> None:
    outcomes.append(_exited(0, outputs={"uploaded": [], "missing": ["model.bin"]}))
    attached.until_done(spec, StateDir(tmp_path), record_of("job"), None, None, retries=0)
    assert "job: the task left no model.bin (--out)" in capsys.readouterr().err


def test_a_preempted_task_is_launched_again_up_to_n_times(
    spec, outcomes, tmp_path, monkeypatch, capsys
) -> None:
    preempted = Outcome(
        "preempted", None, {"preempted": "notice", "outputs": {"uploaded": ["model.bin"]}}
    )
    outcomes.extend([preempted, preempted, _exited(0, outputs={"uploaded": ["model.bin"]})])
    launched: list[str] = []

    def relaunch(spec: Any, state: Any, record: Any, terraform: Any, token: Any) -> Any:
        launched.append(record.name)
        return record_of(f"job{len(launched)}")

    monkeypatch.setattr(attached, "_relaunch", relaunch)
    done = attached.until_done(spec, StateDir(tmp_path), record_of("job"), None, None, retries=2)
    assert done.exit_code == 0 and launched == ["job", "job1"]
    err = capsys.readouterr().err
    assert "launching it again (1 of 2)" in err and "launching it again (2 of 2)" in err
    assert "the outputs it uploaded before (model.bin)" in err


def test_without_retries_left_a_preemption_fails_up(spec, outcomes, tmp_path, monkeypatch) -> None:
    outcomes.append(Outcome("preempted", None, {"preempted": "notice", "outputs": None}))
    monkeypatch.setattr(attached, "_relaunch", lambda *a: pytest.fail("relaunched"))
    with pytest.raises(CmlInfraError, match="reclaimed its spot instance before the task ended"):
        attached.until_done(spec, StateDir(tmp_path), record_of("job"), None, None, retries=0)


@pytest.mark.parametrize(
    ("outcome", "message"),
    [
        (Outcome("failed-to-start", None, {"reason": "workdir could not be fetched: HTTP 403"}),
         "job: the task did not start: workdir could not be fetched: HTTP 403"),
        (Outcome("lost", None, None), "job: the instance is gone and never reported"),
    ],
)  # fmt: skip
def test_a_task_that_never_ended_fails_up(spec, outcomes, tmp_path, outcome, message) -> None:
    outcomes.append(outcome)
    with pytest.raises(CmlInfraError, match=message):
        attached.until_done(spec, StateDir(tmp_path), record_of("job"), None, None, retries=1)


def test_ctrl_c_detaches(spec, outcomes, tmp_path, capsys) -> None:
    outcomes.append(KeyboardInterrupt())
    done = attached.until_done(spec, StateDir(tmp_path), record_of("job"), None, None, retries=0)
    assert done.exit_code == 130
    err = capsys.readouterr().err
    assert "detached: job keeps running" in err and "`cml-infra down job" in err
