"""Reading a runner's channel from the launcher: its log as it grows (`logs -f`, and `up`
attached to its task), how its task ended, and its outputs brought home (`pull`).

The log comes from the instance's own file where the instance runs on this machine (the local
cloud without a backend), else from the channel: the tail each status carries while the
instance runs, the whole log once the agent uploaded it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cml_infra.errors import CmlInfraError
from cml_infra.task.channel import OUTPUTS, TASK_ENDED, Channel, channel_of

if TYPE_CHECKING:
    from cml_infra.clouds.base import Cloud
    from cml_infra.record import RunnerRecord
    from cml_infra.state import StateDir

# How often the log and the status are looked at: a request each in a bucket; a file here.
POLL_SECONDS = 1.0
LOCAL_POLL_SECONDS = 0.25
# Once the task ended, how long the rest of the log is awaited (the agent uploads it as the
# instance ends) before `up` returns without it.
DRAIN_SECONDS = 60.0
# How often the cloud is asked whether the instance still lives while its task has not ended:
# an instance that is gone without a word (reclaimed, killed) sends no status.
LIVENESS_SECONDS = 15.0
# Recorded or shown states of a runner whose instance is gone.
_GONE = frozenset({"destroyed", "failed", "ended", "preempted", "stopped", "agent-dead"})


@dataclass(frozen=True)
class Outcome:
    """How a task ended, as its last status says: `exited` (with its exit code), `preempted`,
    `failed-to-start`, or `lost` (the instance went without saying how its task ended)."""

    kind: str
    exit_code: int | None
    status: dict[str, Any] | None

    @property
    def reason(self) -> str:
        return str((self.status or {}).get("reason") or "")


class LogFollower:
    """The log of one runner, read on from where the last look stopped."""

    def __init__(self, state: StateDir, record: RunnerRecord, channel: Channel | None) -> None:
        from cml_infra import clouds

        self.state = state
        self.record = record
        self.channel = channel
        self.cloud: Cloud = clouds.get(record.cloud, state)
        self.offset = 0
        self.complete = False
        self.status: dict[str, Any] | None = None
        # A VM's log exists only in the channel; an instance here writes its own file.
        self.local_file = record.reports != "bucket" and self.cloud.ON_THIS_MACHINE
        self.poll = LOCAL_POLL_SECONDS if self.local_file else POLL_SECONDS

    def read(self) -> str:
        """What the log gained since the last read (its status refreshed first)."""
        if self.channel is not None:
            self.status = self.channel.status()
        if self.local_file:
            path = self.cloud.instance_log(self.record.name)
            if path is None:
                return ""
            data, self.offset = read_from(path, self.offset)
            self.complete = bool(((self.status or {}).get("log") or {}).get("complete"))
            return data.decode("utf-8", errors="replace")
        if self.channel is None:
            return ""
        chunk = self.channel.log_since(self.offset, self.status)
        self.offset, self.complete = chunk.offset, chunk.complete
        text = chunk.data.decode("utf-8", errors="replace")
        if chunk.skipped:
            text = (
                f"[cml-infra: {chunk.skipped:,} bytes of the log went by between two reports; "
                "`cml-infra logs` shows them once the instance ends]\n" + text
            )
        return text

    def task_ended(self) -> Outcome | None:
        status = self.status or {}
        task = status.get("task")
        if task not in TASK_ENDED:
            return None
        code = status.get("exit_code")
        return Outcome(str(task), code if isinstance(code, int) else None, status)


def follow(
    state: StateDir,
    record: RunnerRecord,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[str]:
    """`logs -f`: the log until it is whole, or until the runner is gone (what it wrote before
    it went included): its record closed, or, for an instance that ended itself without a last
    word, its cloud no longer listing it."""
    follower = LogFollower(state, record, _channel(state, record))
    next_look = clock() + LIVENESS_SECONDS
    while True:
        gone = record_gone(state, record)
        if not gone and not follower.local_file and clock() >= next_look:
            next_look = clock() + LIVENESS_SECONDS
            gone = _instance_gone(state, record)
        chunk = follower.read()
        if chunk:
            yield chunk
        if not chunk and (gone or (follower.complete and not follower.local_file)):
            return
        sleep(follower.poll)


def read_all(state: StateDir, record: RunnerRecord) -> Iterator[str]:
    """`logs` without -f: the log as it is now."""
    follower = LogFollower(state, record, _channel(state, record))
    chunk = follower.read()
    if not chunk and follower.status is None and not follower.local_file:
        where = follower.channel.where if follower.channel else "its channel"
        raise CmlInfraError(f"{record.name}: the instance has sent no log to {where} yet")
    if chunk:
        yield chunk


def attach(
    state: StateDir,
    record: RunnerRecord,
    write: Callable[[str], None],
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """`up` attached: the task's log written as it grows until the task ended and its log is
    whole (or DRAIN_SECONDS passed), or the instance is gone."""
    follower = LogFollower(state, record, _channel(state, record))
    ended: Outcome | None = None
    ended_at = 0.0
    next_look = clock() + LIVENESS_SECONDS
    while True:
        chunk = follower.read()
        if chunk:
            write(chunk)
        if ended is None:
            ended = follower.task_ended()
            ended_at = clock()
        if ended is not None:
            # The whole log from a bucket is all there is; a file here may still grow. The
            # last status counts: it says which outputs the agent's last tries sent.
            if follower.complete and (not chunk or not follower.local_file):
                return follower.task_ended() or ended
            if clock() - ended_at > DRAIN_SECONDS or (not chunk and record_gone(state, record)):
                return follower.task_ended() or ended
        elif clock() >= next_look:
            next_look = clock() + LIVENESS_SECONDS
            if _instance_gone(state, record):
                # One more read: its last words may have come meanwhile.
                chunk = follower.read()
                if chunk:
                    write(chunk)
                return follower.task_ended() or Outcome(
                    "preempted" if (follower.status or {}).get("preempted") else "lost",
                    None,
                    follower.status,
                )
        sleep(follower.poll)


def pull(state: StateDir, record: RunnerRecord, dest: Path) -> list[str]:
    """The task's outputs unpacked into `dest` (only what its --out paths name); the paths
    written."""
    from cml_infra.task.pack import unpack

    if not record.task_outputs:
        raise CmlInfraError(f"{record.name}: its task was given no --out paths; nothing to pull")
    channel = _channel(state, record)
    if channel is None:
        raise CmlInfraError(f"{record.name}: its instance reports nowhere; nothing comes back")
    data = channel.read(OUTPUTS)
    if data is None:
        status = channel.status() or {}
        task = status.get("task") or "not started"
        raise CmlInfraError(
            f"{record.name}: no outputs in {channel.where} yet (the task is {task}); they "
            "come back when it ends"
        )
    return unpack(data, dest, only=record.task_outputs)


def task_status(state: StateDir, record: RunnerRecord) -> dict[str, Any] | None:
    """The agent's last status of a runner that has a channel, else None."""
    channel = _channel(state, record)
    return None if channel is None else channel.status()


def _channel(state: StateDir, record: RunnerRecord) -> Channel | None:
    if record.reports is None:
        return None
    return channel_of(state, state.key(record), on_this_machine=record.reports == "folder")


def record_gone(state: StateDir, record: RunnerRecord) -> bool:
    """Whether the runner's record is closed (destroyed) or given up on (failed)."""
    current = state.load(state.key(record))
    return current is None or current.state in ("destroyed", "failed")


def _instance_gone(state: StateDir, record: RunnerRecord) -> bool:
    """Whether the record or the cloud says the instance is gone (status's own judgement)."""
    from cml_infra import queries

    rows = queries.status(state, include_destroyed=True, only=state.key(record))
    return not rows or rows[0]["state"] in _GONE


def read_from(path: Path, offset: int) -> tuple[bytes, int]:
    """What a file gained past `offset`, and where it ends now (nothing while it is missing)."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return b"", offset
    return data, offset + len(data)
