"""Fixtures of the cleanup tests: a state dir, and real local sandboxes with process groups."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

import pytest

from cml_infra.state import StateDir
from tests.unit.cleanup.worlds import HOUR


def exited_pid() -> int:
    """The pid (and process-group id) of a process that has come and gone."""
    child = subprocess.Popen(["true"], start_new_session=True)
    child.wait()
    return child.pid


class Sandboxes:
    """Local instances as create.sh leaves them, built by hand under a state dir.

    `agent` says what runs in one:
      "alive"  a process group of its own (setsid, as create.sh) working in the sandbox, whose
               leader agent-status.json names as the agent;
      "dead"   the same group, but agent-status.json names a pid that is gone (`agent-dead`);
      None     no group: `pgid` names one that has exited (`stopped`).
    Every group still alive is killed when the test ends; each is reaped as soon as it dies,
    as init would, so that destroy.sh never waits on a zombie.
    """

    def __init__(self, state_root: Path) -> None:
        self.root = state_root / "local" / "instances"
        self.groups: dict[str, subprocess.Popen[bytes]] = {}
        self._reapers: list[threading.Thread] = []

    def make(
        self,
        name: str,
        *,
        agent: Literal["alive", "dead"] | None = "alive",
        age: timedelta = HOUR,
        expires_in: timedelta = HOUR,
        tags: dict[str, str] | None = None,
    ) -> Path:
        folder = self.root / name
        folder.mkdir(parents=True)
        now = datetime.now(timezone.utc)
        expires = str(int((now + expires_in).timestamp()))
        ours = {"cml-infra-managed": "true", "cml-infra-name": name, "cml-infra-expires": expires}
        ours.update(tags or {})
        meta = {"id": name, "name": name, "created_at": (now - age).isoformat(), "tags": ours}
        (folder / "instance.json").write_text(json.dumps(meta))
        if agent is None:
            (folder / "pgid").write_text(f"{exited_pid()}\n")
            return folder
        group = subprocess.Popen(["sleep", "3600"], cwd=folder, start_new_session=True)
        self.groups[name] = group
        reaper = threading.Thread(target=group.wait, daemon=True)
        reaper.start()
        self._reapers.append(reaper)
        (folder / "pgid").write_text(f"{group.pid}\n")
        pid = group.pid if agent == "alive" else exited_pid()
        status = {"pid": pid, "state": "idle", "last_activity": time.time()}
        (folder / "agent-status.json").write_text(json.dumps(status))
        return folder

    def group_ended(self, name: str, timeout: float = 10.0) -> bool:
        """Whether sandbox `name`'s process group has ended (waits for it at most `timeout`)."""
        try:
            self.groups[name].wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def close(self) -> None:
        for group in self.groups.values():
            if group.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group.pid, signal.SIGKILL)
        for reaper in self._reapers:
            reaper.join(10)


@pytest.fixture
def state(tmp_path) -> StateDir:
    return StateDir(tmp_path / "state")


@pytest.fixture
def sandboxes(state):
    made = Sandboxes(state.root)
    yield made
    made.close()
