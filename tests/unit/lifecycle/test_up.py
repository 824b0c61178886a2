"""cml_infra.lifecycle.up: claim, apply, roll back, and the Ctrl-C contract.

The contract: exit 130 and nothing left, or exit 0 and a running instance that the output names,
never anything in between. The engine is scripted (tests/unit/lifecycle/conftest.py); the
local cloud's listing is real, so the rollback's own sweep runs.
"""

from __future__ import annotations

import signal

import pytest

from cml_infra.errors import CmlInfraError, Interrupted, UsageError
from cml_infra.lifecycle import up
from cml_infra.terraform import TerraformError
from tests.unit.lifecycle.conftest import ctrl_c, fail, local_spec


def sandboxes(state):
    root = state.root / "local" / "instances"
    return sorted(path.name for path in root.iterdir()) if root.is_dir() else []


def test_up_records_the_instance_running(state, engine):
    record = up.up(local_spec(), state, None)
    assert (record.state, record.instance_id) == ("running", "box-1")
    assert engine.calls == ["init", "apply"], "one apply answers the outputs too"
    assert state.load("box-1").state == "running"
    assert sandboxes(state) == ["box-1"]


def test_in_github_actions_the_record_remembers_the_workflow_run(state, engine, monkeypatch):
    """What `report --cost` finds a run's runners by."""
    actions = {"GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": "octo/repo", "GITHUB_RUN_ID": "77",
               "GITHUB_RUN_ATTEMPT": "3", "GITHUB_JOB": "launch"}  # fmt: skip
    for name, value in actions.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("GITHUB_WORKFLOW", raising=False)
    monkeypatch.delenv("GITHUB_SERVER_URL", raising=False)
    up.up(local_spec(), state, None)
    assert state.load("box-1").ci == {
        "repository": "octo/repo", "run_id": "77", "run_attempt": "3", "job": "launch"
    }  # fmt: skip


def test_outside_ci_the_record_names_no_run(state, engine, monkeypatch):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.setenv("GITHUB_RUN_ID", "77")
    up.up(local_spec(), state, None)
    assert state.load("box-1").ci is None


def test_a_failed_apply_is_destroyed_and_recorded_with_its_reason(state, engine):
    engine.on("apply", fail("the cloud said no"))
    with pytest.raises(TerraformError, match="the cloud said no"):
        up.up(local_spec(), state, None)
    assert engine.calls == ["init", "apply", "destroy"]
    record = state.load("box-1")
    assert record.state == "destroyed" and "the cloud said no" in record.error
    assert sandboxes(state) == [] and not state.workspace("box-1").exists()


def test_a_failure_before_apply_leaves_no_record(state, engine):
    """Nothing was created (init failed): a record would claim otherwise."""
    engine.on("init", fail("no provider"))
    with pytest.raises(TerraformError, match="no provider"):
        up.up(local_spec(), state, None)
    assert engine.calls == ["init"], "nothing to destroy, nothing asked of the cloud"
    assert state.load("box-1") is None
    assert not state.runner_dir("box-1").exists()


def test_a_failure_before_apply_brings_back_the_record_it_replaced(state, engine, make_record):
    old = state.save(make_record("box-1", state="destroyed", end_reason="idle"))
    engine.on("init", fail("no provider"))
    with pytest.raises(TerraformError):
        up.up(local_spec(), state, None)
    restored = state.load("box-1")
    assert (restored.state, restored.end_reason, restored.created_at) == (
        "destroyed",
        "idle",
        old.created_at,
    )


def test_a_rollback_that_fails_is_recorded_failed_for_down_or_cleanup(state, engine):
    engine.on("apply", fail("half made")).on("destroy", fail("cannot destroy"))
    with pytest.raises(TerraformError, match="half made"):
        up.up(local_spec(), state, None)
    record = state.load("box-1")
    assert record.state == "failed"
    assert "rollback failed" in record.error and "cannot destroy" in record.error


def test_outputs_without_the_instance_fail_up_and_roll_back(state, engine):
    """A --terraform that is not one (/bin/true exits 0 and prints nothing) must not leave a
    record that says running."""
    engine.outputs_of_apply = {}
    with pytest.raises(CmlInfraError, match="reported no instance"):
        up.up(local_spec(), state, None)
    assert state.load("box-1").state == "destroyed"
    assert "destroy" in engine.calls


def test_a_name_in_use_is_refused_before_anything(state, engine, make_record):
    state.save(make_record("box-1", state="running"))
    with pytest.raises(UsageError, match=r"'box-1' is in use \(state running\)"):
        up.up(local_spec(), state, None)
    assert engine.calls == []


def test_an_unreadable_record_blocks_its_name_with_a_way_out(state, engine, make_record):
    state.save(make_record("box-1"))
    state.record_path("box-1").write_text("{")
    with pytest.raises(UsageError, match=r"cml-infra down box-1"):
        up.up(local_spec(), state, None)
    assert engine.calls == []


# --- Ctrl-C and SIGTERM -----------------------------------------------------------------------


def test_ctrl_c_during_apply_stops_terraform_and_destroys_what_it_made(state, engine):
    engine.on("apply", lambda: (ctrl_c(), fail("interrupted")()))
    with pytest.raises(Interrupted) as caught:
        up.up(local_spec(), state, None)
    assert caught.value.exit_code == 130
    assert engine.interrupted == 1, "exactly one SIGINT is passed on to Terraform"
    assert engine.calls == ["init", "apply", "destroy"]
    assert state.load("box-1").state == "destroyed" and sandboxes(state) == []


def test_ctrl_c_that_terraform_ignores_still_ends_in_130_and_nothing_left(state, engine):
    """A Terraform command may finish with exit 0 although it got the SIGINT: `up` must not
    report success after saying it stops."""
    engine.on("apply", ctrl_c)
    with pytest.raises(Interrupted):
        up.up(local_spec(), state, None)
    assert engine.calls == ["init", "apply", "destroy"]
    assert state.load("box-1").state == "destroyed" and sandboxes(state) == []


def test_ctrl_c_during_init_leaves_nothing_and_no_record(state, engine):
    engine.on("init", ctrl_c)
    with pytest.raises(Interrupted):
        up.up(local_spec(), state, None)
    assert engine.calls == ["init"]
    assert state.load("box-1") is None


def test_sigterm_is_handled_as_ctrl_c(state, engine):
    engine.on("apply", lambda: signal.raise_signal(signal.SIGTERM))
    with pytest.raises(Interrupted, match="SIGTERM"):
        up.up(local_spec(), state, None)
    assert state.load("box-1").state == "destroyed"


def test_a_second_ctrl_c_does_not_stop_the_rollback(state, engine):
    engine.on("apply", lambda: (ctrl_c(), fail("interrupted")()))
    engine.on("destroy", ctrl_c)
    with pytest.raises(Interrupted):
        up.up(local_spec(), state, None)
    assert engine.interrupted == 1, "the destroy is never interrupted"
    assert state.load("box-1").state == "destroyed" and sandboxes(state) == []


def test_a_signal_after_the_record_says_running_changes_nothing(state, engine):
    """Once committed, `up` ignores SIGINT and SIGTERM until it exits: the name is printed and
    the exit code is 0, with the instance running."""
    record = up.up(local_spec(), state, None)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    ctrl_c()  # would raise KeyboardInterrupt with the default handler
    assert record.state == "running" and state.load("box-1").state == "running"


def test_a_failed_up_gives_the_handlers_back(state, engine):
    before = signal.getsignal(signal.SIGINT)
    engine.on("apply", fail())
    with pytest.raises(TerraformError):
        up.up(local_spec(), state, None)
    assert signal.getsignal(signal.SIGINT) is before


def test_end_reason_is_the_agents_last_ending_line(tmp_path):
    log = tmp_path / "instance.log"
    assert up._end_reason(None) is None
    assert up._end_reason(log) is None, "no log kept"
    log.write_text("[cml-infra agent T] box-1: idle timeout 60s\n[runner] Listening\n")
    assert up._end_reason(log) is None
    log.write_text(
        "[cml-infra agent T] ending the instance: GPU not ready: nvidia-smi saw 0 of 1 GPU(s)\n"
        "[cml-infra agent T] self-destroy attempt 1 exited with 1; retrying in 5s\n"
        "[cml-infra agent T] ending the instance: ttl reached\n"
    )
    assert up._end_reason(log) == "ttl reached"
