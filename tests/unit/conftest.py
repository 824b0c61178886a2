"""Shared fixtures for the unit tests: a clean environment and a restored umask."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest

from cml_infra.workspace import RunnerRecord


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No CML_INFRA_* setting of the machine leaks in; the machine's Terraform config neither."""
    for key in list(os.environ):
        if key.startswith("CML_INFRA_"):
            monkeypatch.delenv(key)
    monkeypatch.delenv("TF_CLI_CONFIG_FILE", raising=False)


@pytest.fixture(autouse=True)
def restore_umask():
    """StateDir.ensure() sets the process umask to 077; later tests must not inherit it."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield
    os.umask(previous)


@pytest.fixture
def umask_022():
    """A permissive umask, as on most machines, so that 0600/0700 come from the code."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture
def make_record():
    def make(name="runner-a", **changes):
        now = datetime.now(timezone.utc)
        fields = {
            "name": name,
            "cloud": "local",
            "region": "local",
            "state": "running",
            "created_at": now,
            "updated_at": now,
            "expires_at": now + timedelta(hours=1),
            "idle_timeout": 300,
            "ttl": 3600,
            "labels": ("gpu", f"cml-infra-{name}"),
            "command": ("echo", "hi"),
        }
        fields.update(changes)
        return RunnerRecord(**fields)

    return make
