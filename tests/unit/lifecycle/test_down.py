"""cml_infra.lifecycle.down: ending runners by name, including one whose record is unreadable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.lifecycle import down, up
from tests.unit.lifecycle.conftest import fail, local_spec


def live_sandbox(state, name):
    """A local instance as create.sh leaves it: a sandbox with a process group running in it."""
    sandbox = state.root / "local" / "instances" / name
    sandbox.mkdir(parents=True)
    tags = {"cml-infra-managed": "true", "cml-infra-name": name}
    (sandbox / "instance.json").write_text(json.dumps({"id": name, "tags": tags}))
    process = subprocess.Popen(
        ["sleep", "600"], cwd=sandbox, start_new_session=True, stdin=subprocess.DEVNULL
    )
    (sandbox / "pgid").write_text(f"{process.pid}\n")
    return sandbox, process


def gone(process, within=15.0):
    deadline = time.monotonic() + within
    while process.poll() is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_down_destroys_and_closes_the_record(state, engine):
    up.up(local_spec(), state, None)
    [ended] = down.down(["box-1"], state, None, "done")
    assert (ended.state, ended.end_reason) == ("destroyed", "done")
    assert engine.calls[-1] == "destroy"
    assert not state.workspace("box-1").exists()


def test_down_of_a_runner_already_gone_is_fine(state, engine, make_record):
    state.save(make_record("box-1", state="destroyed"))
    [ended] = down.down(["box-1"], state, None, None)
    assert ended.state == "destroyed"
    assert engine.calls == []


def test_an_unknown_name_is_bad_input_listing_the_known(state, make_record):
    state.save(make_record("box-1"))
    with pytest.raises(UsageError, match=r"^NAME: no runner named 'nope' .*known: box-1"):
        down.down(["nope"], state, None, None)


def test_an_engine_that_does_not_exist_is_bad_input_and_changes_nothing(state, make_record):
    """Before the fix: exit 1, and the record stuck in `destroying` with the instance up."""
    state.save(make_record("box-1", state="running"))
    with pytest.raises(UsageError, match=r"^--terraform: "):
        down.down(["box-1"], state, "/nonexistent/terraform", None)
    assert state.load("box-1").state == "running"


def test_a_failed_destroy_is_recorded_failed(state, engine):
    up.up(local_spec(), state, None)
    engine.on("destroy", fail("cannot"))
    with pytest.raises(CmlInfraError, match=r"box-1: destroy failed: .*cannot"):
        down.down(["box-1"], state, None, None)
    assert state.load("box-1").state == "failed"


@pytest.mark.parametrize("spoil", ["truncate", "folder"])
def test_down_ends_the_instance_of_an_unreadable_record(state, make_record, spoil):
    """Its sandbox says it is a local instance: it is found and ended, the unreadable file is
    kept aside, and the record says destroyed."""
    state.save(make_record("box-1", state="running"))
    path = state.record_path("box-1")
    if spoil == "truncate":
        path.write_text(path.read_text()[:30])
    else:
        path.unlink()
        path.mkdir()
    _, process = live_sandbox(state, "box-1")
    try:
        [ended] = down.down(["box-1"], state, None, None)
        assert gone(process), "the instance's process group is stopped"
        assert ended.state == "destroyed"
        assert state.load("box-1").state == "destroyed"
        kept = [p.name for p in state.runner_dir("box-1").iterdir() if "unreadable" in p.name]
        assert len(kept) == 1
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_down_all_includes_unreadable_records(state, make_record):
    for name in ("a-1", "b-1"):
        state.save(make_record(name))
    state.save(make_record("c-1", state="destroyed"))
    state.record_path("b-1").write_text("")
    assert down.all_live(state) == ["a-1", "b-1"]


def test_target_of_record_reads_old_and_new_records():
    new = down.target_of_record({"kind": "github", "repo": "octo/repo", "api_url": "https://x"})
    old = down.target_of_record(
        {"kind": "github", "scope": "orgs/octo", "api_url": "https://x", "runner_group": "3"}
    )
    assert (new.repo, new.org) == ("octo/repo", None)
    assert (old.repo, old.org, old.group) == (None, "octo", "3")


def test_a_forge_the_record_names_but_that_is_refused_now_does_not_stop_down(
    state, engine, make_record
):
    """A record of an older cml-infra may keep a plain-http API URL: the instance still goes,
    and the record still says destroyed; the registration is left to cleanup."""
    state.save(
        make_record(
            "box-1",
            state="running",
            forge={"kind": "github", "repo": "octo/repo", "api_url": "http://ghe.example/api/v3"},
        )
    )
    [ended] = down.down(["box-1"], state, None, None, token="ghp_x")
    assert ended.state == "destroyed"
    assert state.load("box-1").state == "destroyed"
