"""`up` attached to its task, on a channel the test writes as the agent would."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cml_infra.errors import CmlInfraError
from cml_infra.state import StateDir
from cml_infra.task import attach
from cml_infra.task.channel import LOG, OUTPUTS, STATUS
from tests.unit.conftest import record_of


class Clock:
    """Time that moves only when the loop sleeps; each sleep lets the test's agent act."""

    def __init__(self, steps: list[Any]) -> None:
        self.now = 0.0
        self.steps = steps

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.steps:
            self.steps.pop(0)()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def runner(tmp_path: Path) -> tuple[StateDir, Any, Path]:
    state = StateDir(tmp_path / "state")
    record = record_of(name="job", cloud="aws").replace(
        reports="folder", task_outputs=("model.bin",), state="running"
    )
    state.ensure()
    state.save(record)
    folder = state.runner_dir("job") / "task"
    folder.mkdir(parents=True)
    return state, record, folder


def _report(folder: Path, log: bytes, **fields: Any) -> None:
    status = {
        "log": {"size": len(log), "tail_offset": 0, "tail_b64": base64.b64encode(log).decode(),
                "complete": fields.pop("complete", False)},
        **fields,
    }  # fmt: skip
    (folder / STATUS).write_text(json.dumps(status))


def test_attached_until_the_task_exits_and_its_log_is_whole(
    runner: tuple[StateDir, Any, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, record, folder = runner
    # A VM's log comes from the channel only (reports=folder here, but the cloud is aws).
    written: list[str] = []
    steps = [
        lambda: _report(folder, b"step 1\n", task="running"),
        lambda: _report(folder, b"step 1\nstep 2\n", task="exited", exit_code=3),
        lambda: (
            (folder / LOG).write_bytes(b"step 1\nstep 2\nending\n"),
            _report(folder, b"step 1\nstep 2\n", task="exited", exit_code=3, complete=True),
        ),
    ]
    clock = Clock(steps)
    monkeypatch.setattr(attach, "_instance_gone", lambda *a: pytest.fail("asked the cloud"))

    outcome = attach.attach(state, record, written.append, sleep=clock.sleep, clock=clock)

    assert (outcome.kind, outcome.exit_code) == ("exited", 3)
    assert "".join(written) == "step 1\nstep 2\nending\n"


def test_an_instance_gone_without_a_word_is_lost(
    runner: tuple[StateDir, Any, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, record, folder = runner
    _report(folder, b"working\n", task="running")
    looked: list[float] = []
    clock = Clock([])

    def gone(*args: object) -> bool:
        looked.append(clock.now)
        return True

    monkeypatch.setattr(attach, "_instance_gone", gone)
    outcome = attach.attach(state, record, lambda text: None, sleep=clock.sleep, clock=clock)
    assert outcome.kind == "lost" and outcome.exit_code is None
    # The cloud is asked only every LIVENESS_SECONDS, not at every poll.
    assert looked == [pytest.approx(attach.LIVENESS_SECONDS, abs=attach.POLL_SECONDS)]


def test_a_preemption_notice_in_the_last_status_makes_it_preempted(
    runner: tuple[StateDir, Any, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, record, folder = runner
    _report(folder, b"", task="preempted", preempted="aws spot instance-action", complete=True)
    (folder / LOG).write_bytes(b"")
    outcome = attach.attach(state, record, lambda text: None, sleep=lambda s: None)
    assert outcome.kind == "preempted"


def test_an_ended_task_whose_log_never_completes_is_awaited_only_so_long(
    runner: tuple[StateDir, Any, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, record, folder = runner
    _report(folder, b"done\n", task="exited", exit_code=0)
    clock = Clock([])
    outcome = attach.attach(state, record, lambda text: None, sleep=clock.sleep, clock=clock)
    assert outcome.exit_code == 0
    assert attach.DRAIN_SECONDS <= clock.now <= attach.DRAIN_SECONDS + 2 * attach.POLL_SECONDS


def _outputs(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_pull_brings_home_only_the_out_paths(
    runner: tuple[StateDir, Any, Path], tmp_path: Path
) -> None:
    state, record, folder = runner
    (folder / OUTPUTS).write_bytes(
        _outputs({"model.bin": b"weights", ".github/workflows/evil.yml": b"on: push"})
    )
    dest = tmp_path / "home"
    assert attach.pull(state, record, dest) == ["model.bin"]
    assert (dest / "model.bin").read_bytes() == b"weights"
    assert not (dest / ".github").exists()


def test_pull_before_the_task_ended_says_so(runner: tuple[StateDir, Any, Path]) -> None:
    state, record, folder = runner
    _report(folder, b"", task="running")
    with pytest.raises(CmlInfraError, match=r"job: no outputs in .* yet \(the task is running\)"):
        attach.pull(state, record, folder / "x")


def test_pull_of_a_task_without_outputs(runner: tuple[StateDir, Any, Path]) -> None:
    state, record, _ = runner
    with pytest.raises(CmlInfraError, match="given no --out paths"):
        attach.pull(state, record.replace(task_outputs=()), Path("."))


def test_make_record_has_no_channel_by_default() -> None:
    record = record_of(name="old")
    assert record.reports is None and record.task_outputs == () and record.workdir is None
    assert record.expires_at - record.created_at > timedelta(0)
