"""Fixtures of the agent's tests."""

from __future__ import annotations

import pytest

from cml_infra.agent import github_runner, loop


@pytest.fixture
def quiet_log(monkeypatch):
    """The agent's log lines, collected instead of printed (each module imports `log`)."""
    lines: list[str] = []
    for module in (loop, github_runner):
        monkeypatch.setattr(module, "log", lines.append)
    return lines
