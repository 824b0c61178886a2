"""Fixtures of the agent's tests."""

from __future__ import annotations

import signal

import pytest

from cml_infra.agent import github_runner, host, loop, report, task


@pytest.fixture
def quiet_log(monkeypatch):
    """The agent's log lines, collected instead of printed (each module imports `log`)."""
    lines: list[str] = []
    for module in (loop, github_runner, host, report, task):
        monkeypatch.setattr(module, "log", lines.append)
    return lines


@pytest.fixture
def restore_sigterm():
    """The SIGTERM handler as it was: Agent.run and end_now install their own."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)
