"""cml_infra.queries: status, catalog and doctor, on state dirs and sandboxes made by hand."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from cml_infra import queries
from cml_infra.errors import UsageError
from cml_infra.state import StateDir


@pytest.fixture
def state(tmp_path):
    return StateDir(tmp_path / "state")


def sandbox_with(state, name, *, agent_alive: bool, launch_id: str = ""):
    """A local instance: a process group in its sandbox, and an agent that is alive or gone."""
    sandbox = state.root / "local" / "instances" / name
    sandbox.mkdir(parents=True)
    tags = {"cml-infra-managed": "true", "cml-infra-name": name}
    if launch_id:
        tags["cml-infra-id"] = launch_id
    (sandbox / "instance.json").write_text(json.dumps({"id": name, "tags": tags}))
    group = subprocess.Popen(["sleep", "600"], cwd=sandbox, start_new_session=True)
    (sandbox / "pgid").write_text(str(group.pid))
    agent_pid = group.pid
    if not agent_alive:
        dead = subprocess.Popen(["true"], cwd=sandbox)
        dead.wait()
        agent_pid = dead.pid
    status = {"state": "busy", "pid": agent_pid, "last_activity": time.time()}
    (sandbox / "agent-status.json").write_text(json.dumps(status))
    return group


@pytest.fixture
def groups():
    started = []
    yield started
    for group in started:
        if group.poll() is None:
            os.killpg(group.pid, signal.SIGKILL)
            group.wait()


def test_status_of_an_empty_state_dir_is_empty(state):
    assert queries.status(state, include_destroyed=True) == []
    assert not state.root.exists()


def test_status_skips_an_unreadable_record_with_one_warning(state, make_record):
    for name in ("a-1", "b-1"):
        state.save(make_record(name, state="destroyed"))
    state.record_path("b-1").write_text("{")
    warnings: list[str] = []
    rows = queries.status(state, include_destroyed=True, warn=warnings.append)
    assert [row["name"] for row in rows] == ["a-1"]
    assert len(warnings) == 1 and "unreadable runner record" in warnings[0]
    assert "cml-infra down b-1" in warnings[0]


def test_status_shows_price_and_cost(state, make_record):
    state.save(make_record("a-1", state="destroyed", hourly_price=0.5))
    [row] = queries.status(state, include_destroyed=True)
    assert row["hourly_price"] == 0.5 and row["cost_usd"] is not None


def test_an_instance_whose_agent_died_is_not_running_with_idle_zero(state, make_record, groups):
    """Before the fix the group alone counted: `running`, idle 0, for ever."""
    state.save(make_record("a-1", state="running"))
    groups.append(sandbox_with(state, "a-1", agent_alive=False))
    [row] = queries.status(state, include_destroyed=False)
    assert row["state"] == "agent-dead" and row["idle_seconds"] is None


def test_an_instance_whose_agent_runs_is_running(state, make_record, groups):
    state.save(make_record("a-1", state="running"))
    groups.append(sandbox_with(state, "a-1", agent_alive=True))
    [row] = queries.status(state, include_destroyed=False)
    assert row["state"] == "running" and row["idle_seconds"] == 0.0


def test_an_instance_whose_process_group_is_gone_is_stopped(state, make_record, groups):
    state.save(make_record("a-1", state="running"))
    group = sandbox_with(state, "a-1", agent_alive=True)
    os.killpg(group.pid, signal.SIGKILL)
    group.wait()
    [row] = queries.status(state, include_destroyed=False)
    assert row["state"] == "stopped"


def test_status_reads_the_instance_of_the_records_launch_not_of_its_name(
    state, make_record, groups
):
    """An instance of the same name but another launch is not this record's: its state is not
    shown as this runner's."""
    state.save(make_record("a-1", state="running", launch_id="0123456789abcdef"))
    groups.append(sandbox_with(state, "a-1", agent_alive=False, launch_id="a11ce0000000beef"))
    [row] = queries.status(state, include_destroyed=False)
    assert (row["state"], row["launch_id"]) == ("running", "0123456789abcdef")


def test_status_of_a_record_and_its_launchs_instance(state, make_record, groups):
    state.save(make_record("a-1", state="running", launch_id="0123456789abcdef"))
    groups.append(sandbox_with(state, "a-1", agent_alive=False, launch_id="0123456789abcdef"))
    [row] = queries.status(state, include_destroyed=False)
    assert row["state"] == "agent-dead"


def test_catalog_clouds_are_the_priced_ones():
    assert queries.catalog_clouds(None) == ["aws", "azure", "gcp"]
    assert queries.catalog_clouds("google") == ["gcp"]
    with pytest.raises(UsageError, match=r"^--cloud: no catalog for 'local'; valid: aws, azure"):
        queries.catalog_clouds("local")


def test_doctor_without_a_cloud_judges_only_the_default_one(state, monkeypatch):
    """A cloud nobody uses is information, not a failure: with no credentials anywhere, the
    local default is ready and the others are reported as not set up."""
    for key in list(os.environ):
        if key.startswith(("AWS_", "GOOGLE_", "ARM_", "AZURE_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    results = {subject: ready for subject, ready, _ in queries.doctor(None, "local", None, state)}
    assert results["local"] is True
    assert results["aws"] is None and results["gcp"] is None and results["azure"] is None
    asked = {s: r for s, r, _ in queries.doctor(["aws"], "local", None, state)}
    assert asked["aws"] is False and "gcp" not in asked


def test_doctor_judges_a_configured_default_cloud(state, monkeypatch):
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    for key in list(os.environ):
        if key.startswith("AWS_ACCESS") or key.startswith("AWS_SECRET"):
            monkeypatch.delenv(key)
    results = {subject: ready for subject, ready, _ in queries.doctor(None, "ec2", None, state)}
    assert results["aws"] is False
