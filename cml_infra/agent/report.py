"""The reports of the agent (its status, the instance log, task mode's outputs) to a folder or
to presigned PUT URLs: in task mode, or for a runner with a report channel.

An upload runs in a forked child (loop._isolated), so that urllib and ssl never stay in the
agent, which lives as long as the instance. A URL is a capability: no message here quotes one.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .hooks import log
from .loop import LOG_FILE, STATUS_FILE, _fresh_file, _isolated

if TYPE_CHECKING:
    from .loop import Agent

HTTP_TIMEOUT = 10.0
OUTPUTS_ARCHIVE = "outputs.tar.gz"
# How long the last reports (the whole log) may hold up the self-destroy.
FINAL_REPORT_SECONDS = 30.0


class Reporter:
    """Status, log and outputs to the report sink: a folder or presigned PUT URLs. A failed
    upload is logged once per kind of failure and retried at the next report."""

    def __init__(self, config: dict[str, Any]) -> None:
        report = config.get("report") or {}
        self.dir = Path(report["dir"]) if "dir" in report else None
        self.urls: dict[str, str] = dict(report.get("urls") or {})
        self.headers: dict[str, str] = dict(report.get("headers") or {})
        self.every = float(config.get("report_seconds", 15))
        self.due = 0.0
        self.last_key: object = None
        self.pending: dict[str, Path] = {}
        self.sent: set[str] = set()
        self.failures: set[str] = set()

    def wants(self, name: str) -> bool:
        return self.dir is not None or name in self.urls

    def queue(self, name: str, path: Path) -> None:
        if self.wants(name):
            self.pending[name] = path
            self.sent.discard(name)

    def flush(self) -> bool:
        """Upload what is queued; True once nothing is left."""
        for name, path in list(self.pending.items()):
            if self.put(name, path):
                del self.pending[name]
                self.sent.add(name)
        return not self.pending

    def status(
        self, now: float, key: object, build: Callable[[], dict[str, Any]], flush: bool = True
    ) -> None:
        """Report the status if it changed (`key`) or is due; queued files go first."""
        if key == self.last_key and now < self.due:
            return
        self.last_key, self.due = key, now + self.every
        if flush:
            self.flush()
        self.put("status.json", json.dumps(build()).encode())

    def report(
        self, status: dict[str, Any], build: Callable[[], dict[str, Any]], flush: bool = True
    ) -> None:
        """The agent's status document, reported when what it says changed or is due: built
        anew then, with its outputs only once they are uploaded."""
        key = [status[k] for k in ("state", "task", "exit_code", "preempted", "reason")]
        key += [status["outputs"] is not None, status["log"]["complete"], status["tasks_run"]]

        def sent() -> dict[str, Any]:
            document = build()
            if self.wants(OUTPUTS_ARCHIVE) and OUTPUTS_ARCHIVE not in self.sent:
                document["outputs"] = None
            return document

        self.status(time.time(), key, sent, flush)

    def final(self, agent: Agent) -> None:
        """The whole log (and outputs not yet uploaded), then the status that says so: within
        FINAL_REPORT_SECONDS, whatever fails."""
        deadline = time.time() + FINAL_REPORT_SECONDS
        log_file = agent.home / LOG_FILE
        if log_file.is_file():
            self.queue(LOG_FILE, log_file)
        while not self.flush() and time.time() + 5 < deadline:
            time.sleep(5)
        agent.log_complete = LOG_FILE in self.sent
        agent._write_status(agent.reason)

    @staticmethod
    def resume(agent: Agent) -> None:
        """What the agent last wrote of its task, into `agent`: the TTL timer's agent
        (loop.Agent.end_now) reports on it."""
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            last = json.loads((agent.home / STATUS_FILE).read_text(encoding="utf-8"))
            agent.tasks_run = int(last.get("tasks_run", 0))
            agent.last_exit_code = last.get("last_exit_code")
            for key, field in (("task", "task_state"), ("exit_code", "exit_code"),
                               ("preempted", "notice"), ("outputs", "outputs")):  # fmt: skip
                setattr(agent, field, last.get(key, getattr(agent, field)))

    def put(self, name: str, data: bytes | Path) -> bool:
        if not self.wants(name):
            return True
        try:
            if self.dir is not None:
                self._write(name, data)
            else:
                url, headers = self.urls[name], self.headers
                _isolated(lambda: _http_put(url, data, headers))
        except (OSError, RuntimeError) as exc:
            message = f"{name}: {exc}"
            if message not in self.failures:
                self.failures.add(message)
                log(f"report: could not upload {message}; retrying")
            return False
        return True

    def _write(self, name: str, data: bytes | Path) -> None:
        assert self.dir is not None
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = _fresh_file(self.dir, f".{name}")
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(data, bytes):
                    out.write(data)
                else:
                    with data.open("rb") as source:
                        while chunk := source.read(1 << 20):
                            out.write(chunk)
            os.replace(tmp, self.dir / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _http_put(url: str, data: bytes | Path, headers: dict[str, str]) -> None:
    import urllib.request

    try:
        # In a child that exits next: the file needs no closing.
        body = data if isinstance(data, bytes) else data.open("rb")
        size = len(data) if isinstance(data, bytes) else data.stat().st_size
        sent = {"Content-Type": "application/octet-stream", **headers, "Content-Length": str(size)}
        request = urllib.request.Request(url, data=body, method="PUT", headers=sent)
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            response.read()
    except (OSError, ValueError) as exc:
        raise OSError(_scrub(exc, url)) from None


def _scrub(exc: BaseException, url: str) -> str:
    """An error's text without the URL (nor its signed query)."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return f"HTTP {code}"
    text = f"{type(exc).__name__}: {exc}"
    for secret in (url, url.partition("?")[2]):
        if secret:
            text = text.replace(secret, "<url>")
    return text
