"""cml_infra.queries: status, catalog and doctor, on state dirs and sandboxes made by hand."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import datetime, timedelta

import pytest

from cml_infra import clouds, cost, queries
from cml_infra.clouds.base import Cloud, ManagedInstance
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.state import StateDir, utcnow


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
    shown as this runner's, whose own instance is gone."""
    state.save(make_record("a-1", state="running", launch_id="0123456789abcdef"))
    groups.append(sandbox_with(state, "a-1", agent_alive=False, launch_id="a11ce0000000beef"))
    [row] = queries.status(state, include_destroyed=False)
    assert (row["state"], row["launch_id"]) == ("ended", "0123456789abcdef")


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


# --- Runners that ended themselves -------------------------------------------------------------

LAUNCH = "0123456789abcdef"


@pytest.fixture
def later() -> datetime:
    """A `now` past the listing's lag after any record the test saves."""
    return utcnow() + Cloud.LISTING_LAG + timedelta(minutes=1)


class FakeCloud(Cloud):
    """A cloud whose listing and end times the test sets; its listing fails while `broken`."""

    name = "fake"
    module = "fake"

    def __init__(self, state: StateDir | None = None) -> None:
        super().__init__(state)
        self.listed: list[ManagedInstance] = []
        self.broken = False
        self.ends: dict[str, datetime] = {}

    def list_managed(self, regions):
        if self.broken:
            raise CmlInfraError("fake: no usable credentials")
        return list(self.listed)

    def ended_at(self, outputs):
        return self.ends.get(outputs.get("id", ""))

    def resolve(self, spec, *, region, spot, max_price):
        raise AssertionError("status never resolves")

    def boot(self, spec):
        raise AssertionError("status never boots")

    def module_vars(self, spec, placement, context):
        raise AssertionError("status never renders")

    def terminate(self, ids):
        raise AssertionError("status never terminates")


@pytest.fixture
def fake_cloud(monkeypatch):
    cloud = FakeCloud()
    real_get = clouds.get
    monkeypatch.setattr(
        clouds, "get", lambda name, *a, **k: cloud if name == "fake" else real_get(name, *a, **k)
    )
    return cloud


def listed(state: str) -> ManagedInstance:
    return ManagedInstance(
        id="vm-1", name="a-1", cloud="fake", region="r1", state=state,
        created_at=None, expires_at=None, launch_id=LAUNCH,
    )  # fmt: skip


def save_runner(state_dir, make_record, **changes):
    fields = {"cloud": "fake", "region": "r1", "state": "running", "launch_id": LAUNCH,
              "hourly_price": 1.0, "outputs": {"id": "vm-1"},
              "created_at": utcnow() - timedelta(hours=1)}  # fmt: skip
    return state_dir.save(make_record("a-1", **{**fields, **changes}))


def test_a_runner_its_cloud_no_longer_lists_has_ended_and_its_cost_stops(
    state, make_record, fake_cloud, later
):
    """Before, it stayed `running` and its cost grew for ever; now the first sighting is its
    end, written once, and later calls agree however late they come."""
    save_runner(state, make_record)
    [first] = queries.status(state, include_destroyed=False, now=later)
    assert (first["state"], first["ended_at"]) == ("ended", later.isoformat())
    assert first["idle_seconds"] is None
    assert state.load("a-1").ended_at == later
    assert state.load("a-1").state == "running"  # for `down` and cleanup to act on
    [second] = queries.status(state, include_destroyed=False, now=later + timedelta(hours=5))
    assert second["state"] == "ended" and second["ended_at"] == first["ended_at"]
    assert second["cost_usd"] == first["cost_usd"]
    assert state.load("a-1").ended_at == later


def test_the_clouds_own_end_time_is_the_end(state, make_record, fake_cloud, later):
    record = save_runner(state, make_record)
    fake_cloud.ends["vm-1"] = record.created_at + timedelta(minutes=30)
    [row] = queries.status(state, include_destroyed=False, now=later)
    assert row["state"] == "ended" and row["cost_usd"] == 0.5
    assert state.load("a-1").ended_at == fake_cloud.ends["vm-1"]


def test_a_listed_instance_is_not_ended(state, make_record, fake_cloud, later):
    save_runner(state, make_record)
    fake_cloud.listed = [listed("idle")]
    [row] = queries.status(state, include_destroyed=False, now=later)
    assert (row["state"], row["ended_at"]) == ("idle", None)
    assert state.load("a-1").ended_at is None


def test_a_missing_instance_of_a_record_just_saved_is_not_ended_yet(state, make_record, fake_cloud):
    """A listing may lag behind the launch: `up --json` must not call its runner ended."""
    save_runner(state, make_record)
    [row] = queries.status(state, include_destroyed=False)
    assert row["state"] == "running" and state.load("a-1").ended_at is None


@pytest.mark.parametrize("recorded", ["provisioning", "destroying", "failed"])
def test_only_a_running_or_idle_record_can_end_itself(
    state, make_record, fake_cloud, recorded, later
):
    save_runner(state, make_record, state=recorded)
    [row] = queries.status(state, include_destroyed=False, now=later)
    assert row["state"] == recorded and state.load("a-1").ended_at is None


def test_nothing_is_written_while_another_command_holds_the_runner(
    state, make_record, fake_cloud, later
):
    record = save_runner(state, make_record)
    with state.lock("a-1", wait=0):
        [row] = queries.status(state, include_destroyed=False, now=later)
    # Ended, but when is not known: the cost runs to now, as before this call.
    assert (row["state"], row["ended_at"]) == ("ended", None)
    assert row["cost_usd"] == cost.accrued(record, later)
    assert state.load("a-1").ended_at is None
    [after] = queries.status(state, include_destroyed=False, now=later + timedelta(minutes=1))
    assert after["ended_at"] == (later + timedelta(minutes=1)).isoformat()


def test_a_failed_listing_shows_recorded_states_with_a_warning(
    state, make_record, fake_cloud, later
):
    save_runner(state, make_record)
    fake_cloud.broken = True
    warnings: list[str] = []
    [row] = queries.status(state, include_destroyed=False, warn=warnings.append, now=later)
    assert row["state"] == "running" and state.load("a-1").ended_at is None
    assert warnings == ["showing recorded states only for fake: fake: no usable credentials"]


def test_a_recorded_end_stands_when_the_listing_fails(state, make_record, fake_cloud, later):
    save_runner(state, make_record, ended_at=later)
    fake_cloud.broken = True
    [row] = queries.status(state, include_destroyed=False, now=later + timedelta(days=1))
    assert (row["state"], row["ended_at"]) == ("ended", later.isoformat())


def test_an_instance_listed_again_takes_the_end_back(state, make_record, fake_cloud, later):
    """The listing that missed it lagged: it runs, and costs, after all."""
    record = save_runner(state, make_record)
    queries.status(state, include_destroyed=False, now=later)
    assert state.load("a-1").ended_at == later
    fake_cloud.listed = [listed("busy")]
    [row] = queries.status(state, include_destroyed=False, now=later + timedelta(hours=1))
    assert (row["state"], row["ended_at"]) == ("running", None)
    assert row["cost_usd"] == cost.accrued(record, later + timedelta(hours=1))
    assert state.load("a-1").ended_at is None


def test_an_end_is_not_written_into_a_record_down_moved_on(state, make_record, fake_cloud, later):
    """Re-read under the lock: a record that `down` took, or another launch of the name made,
    since the scan is not marked."""
    record = save_runner(state, make_record)
    state.save(record.replace(state="destroying"))
    assert queries._save_ended_at(state, record, later) is None
    state.save(record.replace(launch_id="feedface00000000"))
    assert queries._save_ended_at(state, record, later) is None
    assert state.load("a-1").ended_at is None
    state.save(record)
    assert queries._save_ended_at(state, record, later).ended_at == later


def test_the_first_end_written_stands(state, make_record, later):
    """Two `status` calls that both saw it gone: the one that wrote first set its end."""
    record = save_runner(state, make_record)
    state.save(record.replace(ended_at=later))
    kept = queries._save_ended_at(state, record, later + timedelta(minutes=5))
    assert kept is not None and kept.ended_at == later
    assert state.load("a-1").ended_at == later


def test_a_local_sandbox_gone_without_down_has_ended(state, make_record, groups, later):
    """A local instance that ran its own `down` is `destroyed`; one whose sandbox vanished
    otherwise is ended, both with no sandbox left at all and beside another one."""
    state.save(make_record("a-1", state="running", launch_id=LAUNCH))
    [row] = queries.status(state, include_destroyed=False, now=later)
    assert row["state"] == "ended" and state.load("a-1").ended_at == later
    state.save(make_record("b-1", state="running", launch_id="feedface00000000"))
    state.save(make_record("c-1", state="running", launch_id="c0ffee0000000000"))
    groups.append(sandbox_with(state, "c-1", agent_alive=True, launch_id="c0ffee0000000000"))
    rows = queries.status(state, include_destroyed=False, now=later)
    assert {row["name"]: row["state"] for row in rows} == {
        "a-1": "ended", "b-1": "ended", "c-1": "running",
    }  # fmt: skip


def test_an_aws_instance_that_ended_itself_ends_when_ec2_says(
    state, make_record, mocked_aws, later
):
    from tests.fakes import ec2

    [full_id] = ec2.launch("us-east-1", {"cml-infra-managed": "true", "cml-infra-id": LAUNCH})
    region, _, instance_id = full_id.partition("/")
    outputs = {"id": instance_id, "region": region}
    state.save(make_record("a-1", cloud="aws", region=region, launch_id=LAUNCH, outputs=outputs))
    [row] = queries.status(state, include_destroyed=False, now=later)
    assert row["state"] == "running"
    before = utcnow().replace(microsecond=0)
    ec2.client(region).terminate_instances(InstanceIds=[instance_id])
    after = utcnow()
    [row] = queries.status(state, include_destroyed=False, now=later)
    ended_at = state.load("a-1").ended_at
    assert row["state"] == "ended" and row["ended_at"] == ended_at.isoformat()
    assert before <= ended_at <= after
    assert clouds.get("aws").ended_at({"id": "i-0123456789abcdef0", "region": region}) is None


def _agent_report(state_dir, **fields):
    folder = state_dir.runner_dir("a-1") / "task"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "status.json").write_text(json.dumps(fields))


def test_a_vms_idle_seconds_and_exit_code_come_from_its_agents_report(
    state, make_record, fake_cloud
):
    """A VM's listing knows nothing of its agent: the agent's report says it is idle, since
    when, and how its task ended."""
    save_runner(state, make_record, reports="folder", command=("python", "train.py"))
    fake_cloud.listed = [listed("running")]
    now = utcnow()
    _agent_report(state, state="idle", idle_seconds=30.0, updated_at=now.timestamp() - 10,
                  task="exited", exit_code=3, preempted=None)  # fmt: skip
    [row] = queries.status(state, include_destroyed=False, now=now)
    assert (row["state"], row["task"], row["exit_code"]) == ("idle", "exited", 3)
    assert row["idle_seconds"] == pytest.approx(40.0, abs=0.2)


def test_a_stale_report_says_nothing_of_now_but_keeps_the_exit_code(state, make_record, fake_cloud):
    save_runner(state, make_record, reports="folder")
    fake_cloud.listed = [listed("running")]
    now = utcnow()
    _agent_report(state, state="idle", idle_seconds=30.0,
                  updated_at=now.timestamp() - 3600, task="exited", exit_code=0)  # fmt: skip
    [row] = queries.status(state, include_destroyed=False, now=now)
    assert (row["state"], row["idle_seconds"], row["exit_code"]) == ("running", None, 0)


def test_no_report_no_exit_code(state, make_record, fake_cloud):
    save_runner(state, make_record)
    fake_cloud.listed = [listed("running")]
    [row] = queries.status(state, include_destroyed=False)
    assert (row["task"], row["exit_code"], row["preempted"]) == (None, None, None)


def test_a_vm_its_agent_saw_reclaimed_is_preempted_with_what_it_sent_back(
    state, make_record, fake_cloud, later
):
    save_runner(state, make_record, reports="folder")
    _agent_report(state, state="destroying", task="preempted", exit_code=None,
                  preempted="aws spot instance-action {}", outputs={"uploaded": ["ckpt.pt"]},
                  updated_at=utcnow().timestamp())  # fmt: skip
    [row] = queries.status(state, include_destroyed=False, now=later)
    assert (row["state"], row["task"], row["exit_code"]) == ("preempted", "preempted", None)
    assert row["outputs"] == ["ckpt.pt"]
