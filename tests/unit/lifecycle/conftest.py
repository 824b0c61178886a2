"""A scripted Terraform for the lifecycle's unit tests, on the local cloud's state dir.

The engine does what a test tells it per command (succeed, fail, get Ctrl-C while it runs), and
writes a sandbox folder on apply the way the local module would, so that the local cloud's own
listing sees an instance until destroy removes it.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from cml_infra.lifecycle import down, up
from cml_infra.spec import RunnerSpec
from cml_infra.state import StateDir
from cml_infra.terraform import Diagnostic, TerraformError

Step = Callable[[], None] | None


class EngineDouble:
    """Stands in for Terraform's Engine: what `up` and `down` show of it (argv, label), and no run
    of its own to interrupt. Each double plays init, apply and destroy its own way."""

    argv = ("terraform",)
    label = "terraform (scripted)"

    def interrupt(self) -> bool:
        return False


class ScriptedEngine(EngineDouble):
    def __init__(self, state: StateDir) -> None:
        self.state = state
        self.calls: list[str] = []
        self.script: dict[str, Step] = {}
        self.outputs_of_apply: dict | None = None
        self.running = False
        self.interrupted = 0

    def on(self, command: str, step: Step) -> ScriptedEngine:
        self.script[command] = step
        return self

    def _run(self, command: str) -> None:
        self.calls.append(command)
        step = self.script.get(command)
        self.running = True
        try:
            if step is not None:
                step()
        finally:
            self.running = False

    def init(self, workspace: Path, on_event) -> None:
        self._run("init")
        (workspace / ".terraform").mkdir(exist_ok=True)

    def apply(self, workspace: Path, on_event) -> dict:
        name = workspace.parent.name
        sandbox = self.state.root / "local" / "instances" / name
        sandbox.mkdir(parents=True, exist_ok=True)
        # The tags the workspace asks for, launch id included, as the local module records them.
        variables = json.loads((workspace / "terraform.tfvars.json").read_text())
        tags = variables["tags"]
        (sandbox / "instance.json").write_text(json.dumps({"id": name, "tags": tags}))
        self._run("apply")
        if self.outputs_of_apply is not None:
            return self.outputs_of_apply
        return {"instance": {"id": name, "name": name}}

    def destroy(self, workspace: Path, on_event) -> None:
        self._run("destroy")
        sandbox = self.state.root / "local" / "instances" / workspace.parent.name
        if sandbox.is_dir():
            for path in sandbox.iterdir():
                path.unlink()
            sandbox.rmdir()

    def interrupt(self) -> bool:
        if not self.running:
            return False
        self.interrupted += 1
        return True


def ctrl_c() -> None:
    """A Ctrl-C reaching cml-infra while the step runs (the handler runs at once)."""
    os.kill(os.getpid(), signal.SIGINT)


def fail(summary: str = "something broke") -> Step:
    def step() -> None:
        raise TerraformError("apply", [Diagnostic("error", summary)], "")

    return step


@pytest.fixture
def state(tmp_path) -> StateDir:
    return StateDir(tmp_path / "state")


@pytest.fixture
def engine(monkeypatch, state) -> ScriptedEngine:
    scripted = ScriptedEngine(state)
    for module in (up, down):
        monkeypatch.setattr(
            module.Engine, "discover", classmethod(lambda cls, explicit, home: scripted)
        )
        monkeypatch.setattr(
            module.Engine, "from_argv", classmethod(lambda cls, argv, home: scripted)
        )
    return scripted


@pytest.fixture(autouse=True)
def restore_signal_handlers():
    """`up` ignores SIGINT and SIGTERM once it has committed, until the process exits; a test
    process goes on, so the handlers come back after each test."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def local_spec(name: str = "box-1", **changes) -> RunnerSpec:
    fields = {"name": name, "cloud": "local", "idle_timeout": 300, "ttl": 3600}
    fields["command"] = ("sleep", "600")
    fields.update(changes)
    return RunnerSpec(**fields)
