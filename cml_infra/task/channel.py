"""The channel between the launcher and an instance: where the task's folder comes from and where
the agent reports its status, its log and the task's outputs.

It is the runner's folder in the state dir on the local cloud (the instance runs on this
machine and writes there itself), and the runner's prefix in the backend's bucket everywhere
else: an instance holds no credential of the store, so it gets presigned URLs, one per object,
that outlive the TTL (see README, "Task mode"). Objects, under `task/`:

    workdir.tar.gz   the packed --workdir (launcher → instance, read once at boot)
    status.json      the agent's status: state, idle seconds, the task's exit code, the log's tail
    instance.log     the whole log, once the instance ends
    outputs.tar.gz   the --out paths, once the task ends

A VM with no backend has no channel: nothing of it can come back, so a task there is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cml_infra.errors import CmlInfraError
from cml_infra.state import make_private_dir

if TYPE_CHECKING:
    from cml_infra.backends.base import Backend
    from cml_infra.state import StateDir
    from cml_infra.task.pack import Packed

FOLDER = "task"
WORKDIR, STATUS, LOG, OUTPUTS = "workdir.tar.gz", "status.json", "instance.log", "outputs.tar.gz"
# What the agent uploads (the workdir goes the other way).
REPORTS = (STATUS, LOG, OUTPUTS)
# How often the agent reports while nothing changes (every change is reported at once).
REPORT_SECONDS = 10
# A URL outlives the TTL by this much: the agent's last reports follow the TTL's end.
URL_MARGIN_SECONDS = 3600
# The task's states in the status that mean it will not run any further.
TASK_ENDED = frozenset({"exited", "preempted", "failed-to-start"})


@dataclass(frozen=True)
class LogChunk:
    """What a look at the log found past `offset`: the new bytes, bytes the tail no longer held
    (the log outran the reports; the whole log comes at the end), and whether it is whole."""

    data: bytes
    offset: int
    skipped: int
    complete: bool


class Channel(ABC):
    """One runner's channel; `where` names it for people (never a URL that is a capability)."""

    where: str

    @abstractmethod
    def agent_config(
        self, packed: Packed | None, outputs: tuple[str, ...], ttl: int, *, sign: bool
    ) -> dict[str, Any]:
        """The agent config's `workdir`, `outputs` and `report` keys for an instance that lives
        at most `ttl` seconds; with `sign`, the workdir is stored for the instance first.
        Without (a render, a check), stand-ins of the same size take the places of what only
        a launch makes."""

    @abstractmethod
    def read(self, name: str) -> bytes | None:
        """One of the channel's objects, or None when there is none yet."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """An object gone (the workdir, once the instance has it)."""

    @abstractmethod
    def clear(self) -> None:
        """Everything of an earlier runner of the same key gone."""

    def status(self) -> dict[str, Any] | None:
        """The agent's last status; None before its first, or when it is not one."""
        data = self.read(STATUS)
        if data is None:
            return None
        try:
            found = json.loads(data)
        except ValueError:
            return None
        return found if isinstance(found, dict) else None

    def log_since(self, offset: int, status: dict[str, Any] | None) -> LogChunk:
        """The log past `offset`: the whole log once the agent uploaded it, else its tail as
        the status carries it."""
        log = (status or {}).get("log") or {}
        if log.get("complete"):
            whole = self.read(LOG) or b""
            return LogChunk(whole[offset:], max(offset, len(whole)), 0, True)
        try:
            tail = base64.b64decode(str(log.get("tail_b64", "")), validate=True)
            start = int(log.get("tail_offset", 0))
        except (ValueError, TypeError):
            return LogChunk(b"", offset, 0, False)
        end = start + len(tail)
        if end <= offset:
            return LogChunk(b"", offset, 0, False)
        skipped = max(0, start - offset)
        return LogChunk(tail[max(0, offset - start) :], end, skipped, False)


class FolderChannel(Channel):
    """The runner's folder in the state dir: the local cloud's instances write into it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.where = str(folder)

    def agent_config(
        self, packed: Packed | None, outputs: tuple[str, ...], ttl: int, *, sign: bool
    ) -> dict[str, Any]:
        # Written on this machine: as often as the agent looks at anything.
        config: dict[str, Any] = {"report": {"dir": str(self.folder)}, "report_seconds": 1}
        if packed is not None:
            if sign:
                make_private_dir(self.folder)
                write_private_bytes(self.folder / WORKDIR, packed.data)
            config["workdir"] = {"file": str(self.folder / WORKDIR)}
        if outputs:
            config["outputs"] = list(outputs)
        return config

    def read(self, name: str) -> bytes | None:
        try:
            return (self.folder / name).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise CmlInfraError(f"{self.folder / name}: cannot read ({exc.strerror})") from None

    def delete(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)

    def clear(self) -> None:
        for name in (WORKDIR, *REPORTS):
            self.delete(name)


class BucketChannel(Channel):
    """The runner's prefix in the backend: the instance reaches it with presigned URLs."""

    def __init__(self, backend: Backend, key: str, location: str) -> None:
        self.backend = backend
        self.prefix = f"runners/{key}/{FOLDER}"
        self.where = location
        # When the first of the URLs signed here stops working (None: none signed yet).
        self.valid_until: datetime | None = None

    def agent_config(
        self, packed: Packed | None, outputs: tuple[str, ...], ttl: int, *, sign: bool
    ) -> dict[str, Any]:
        lifetime = ttl + URL_MARGIN_SECONDS
        urls: dict[str, Any] = {}
        headers: dict[str, str] = {}
        for name in REPORTS if outputs else (STATUS, LOG):
            # A store asks the same of every PUT (Azure: the blob type).
            urls[name], headers = self._url(name, "PUT", lifetime, sign)
        config: dict[str, Any] = {"report": {"urls": urls}, "report_seconds": REPORT_SECONDS}
        if headers:
            config["report"]["headers"] = headers
        if packed is not None:
            if sign:
                self.backend.put(f"{self.prefix}/{WORKDIR}", packed.data)
            # The instance reads it within minutes of boot; a failover's next attempt too.
            url, _ = self._url(WORKDIR, "GET", lifetime, sign)
            config["workdir"] = {"url": url}
        if outputs:
            config["outputs"] = list(outputs)
        return config

    def _url(self, name: str, method: str, seconds: int, sign: bool) -> tuple[str, dict[str, str]]:
        if not sign:
            return _stand_in_url(f"{self.prefix}/{name}"), {}
        signed = self.backend.sign(f"{self.prefix}/{name}", method, seconds)
        if self.valid_until is None or signed.expires_at < self.valid_until:
            self.valid_until = signed.expires_at
        return signed.url, dict(signed.headers)

    def read(self, name: str) -> bytes | None:
        blob = self.backend.get(f"{self.prefix}/{name}")
        return None if blob is None else blob.data

    def delete(self, name: str) -> None:
        self.backend.delete(f"{self.prefix}/{name}")

    def clear(self) -> None:
        for name in (WORKDIR, *REPORTS):
            self.delete(name)


def channel_of(state: StateDir, key: str, on_this_machine: bool) -> Channel | None:
    """The channel of the runner at `key`: the backend's, the state dir's for an instance on
    this machine, or None (a VM with no backend)."""
    backend: Backend | None = getattr(state, "backend", None)
    if state.remote and backend is not None:
        location = getattr(state, "location", lambda relative: relative)
        return BucketChannel(backend, key, location(f"runners/{key}/{FOLDER}"))
    if on_this_machine:
        return FolderChannel(state.runner_dir(key) / FOLDER)
    return None


def _stand_in_url(relative: str) -> str:
    """What a presigned URL of `relative` looks like in a render: as long as one signed with a
    session's credentials, and as incompressible, so that the user data size check holds."""
    digest = hashlib.sha256(relative.encode("utf-8")).hexdigest()
    noise = "".join(hashlib.sha256(f"{digest}{n}".encode()).hexdigest() for n in range(16))
    return f"https://presigned-url.invalid/{relative}?stand-in-for-a-url-up-signs={noise}"


def write_private_bytes(path: Path, data: bytes) -> None:
    """A private file (0600), replaced whole."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)  # one a crashed launch of this pid left
    # O_EXCL: nothing planted at the name (a symlink) is written through.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)
