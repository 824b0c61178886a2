"""cml_infra.cleanup.world: what a run gathers (instances, records, registrations), the typed
items the rules see, and World's questions: was a place searched, does a live command work on
a runner."""

from __future__ import annotations

import dataclasses
import subprocess

import pytest

from cml_infra.cleanup import world as gathering
from cml_infra.cleanup.world import InstanceItem, RecordItem, RegistrationItem
from cml_infra.clouds.local import LocalCloud
from cml_infra.spec import ForgeTarget
from tests.unit.cleanup.worlds import (
    MINUTE,
    NOW,
    ListedForge,
    instance,
    leftover,
    make_settings,
    online_runner,
    registration,
    world,
)

# --- items ------------------------------------------------------------------------------------


def test_items_offer_only_live_records(make_record):
    live = make_record("live")
    done = make_record("done", state="destroyed")
    names = [item.name for item in gathering.items(world(records=[live, done]))]
    assert names == ["live"]


def test_items_are_typed_and_say_what_the_report_shows(make_record):
    box = dataclasses.replace(instance("r1", cloud="aws", region="us-east-1"), hourly_price=0.5)
    ghost = registration("ghost", online=False, labels=("cml-infra-ghost",))
    record = make_record("rec", cloud="aws", region="eu-west-1", instance_id="eu-west-1/i-9",
                         hourly_price=0.25)  # fmt: skip
    unlaunched = make_record("new", state="provisioning")
    found = gathering.items(world(instances=[box], runners=[ghost], records=[record, unlaunched]))
    assert [type(item) for item in found] == [InstanceItem, RegistrationItem, RecordItem,
                                             RecordItem]  # fmt: skip
    shown = [(i.kind, i.where, i.id, i.name, i.hourly_price) for i in found]
    assert shown == [
        ("instance", ("aws", "us-east-1"), "us-east-1/i-r1", "r1", 0.5),
        ("registration", ("github", "octo/repo"), str(ghost.id), "ghost", None),
        ("state", ("aws", "eu-west-1"), "eu-west-1/i-9", "rec", 0.25),
        ("state", ("local", "local"), "new", "new", None),
    ]


def test_items_without_a_forge_have_no_registrations():
    ghost = registration("ghost", online=False, labels=("cml-infra-ghost",))
    assert gathering.items(world(runners=[ghost], forge=None)) == []


# --- what the world knows ---------------------------------------------------------------------


def test_online_labels_are_those_of_online_runners_only():
    seen = world(runners=[online_runner("up"), online_runner("down", online=False)])
    assert "cml-infra-up" in seen.online_labels()
    assert "cml-infra-down" not in seen.online_labels()


def test_the_forge_is_asked_for_jobs_once_and_only_when_a_rule_needs_them():
    forge = ListedForge(jobs={"r1": NOW - MINUTE})
    seen = world(forge=forge)
    assert forge.job_lookups == 0
    assert seen.last_jobs() == seen.last_jobs() == {"r1": NOW - MINUTE}
    assert forge.job_lookups == 1
    assert world(forge=None).last_jobs() == {}


def test_our_runner_is_a_runner_of_the_given_scope():
    ours = instance("r1", runner=True)
    task = instance("t1")
    assert world().our_runner(ours)
    assert not world().our_runner(task)
    assert not world(forge=None).our_runner(ours)
    elsewhere = ListedForge(target=ForgeTarget(repo="octo/other"))
    assert not world(forge=elsewhere).our_runner(ours)


# --- searched ---------------------------------------------------------------------------------


def test_searched_only_clouds_that_were_listed():
    seen = world(listed=("local",))
    assert seen.searched("local", "local")
    assert not seen.searched("aws", "us-east-1")


def test_searched_only_the_regions_asked_for():
    seen = world(listed=("aws",), regions=("us-east-1",))
    assert seen.searched("aws", "us-east-1")
    assert not seen.searched("aws", "eu-west-1")
    assert world(listed=("aws",)).searched("aws", "eu-west-1")


def test_the_local_cloud_is_searched_whatever_regions_are_asked_for():
    assert world(listed=("local",), regions=("us-east-1",)).searched("local", "local")


# --- busy: a live command works on a runner ---------------------------------------------------


def test_busy_needs_a_state_dir_that_knows_the_name(state, make_record):
    assert not world(state=None).busy("r1")
    assert not world(state=state).busy("r1")
    state.save(make_record("r1"))
    assert not world(state=state).busy("r1")


def test_a_lock_held_in_this_process_is_seen_as_held(state):
    # The rule tests hold a runner's lock in the test's own process: that works only if a
    # second FileLock on the file is refused (flock is per open file, not per process).
    with state.lock("r1", wait=0):
        assert state.held("r1")
    assert not state.held("r1")


def test_busy_while_a_command_holds_the_runners_lock(state, make_record):
    state.save(make_record("r1"))
    seen = world(state=state)
    with state.lock("r1", wait=0):
        assert seen.busy("r1")
    assert not seen.busy("r1")


def test_busy_while_a_process_works_in_the_runners_workspace(state, make_record):
    # A killed `up` leaves its Terraform running: that holds no lock, but works in the workspace.
    state.save(make_record("r1"))
    workspace = state.workspace("r1") / ".terraform"
    workspace.mkdir(parents=True)
    seen = world(state=state)
    assert not seen.busy("r1")
    terraform = subprocess.Popen(["sleep", "3600"], cwd=workspace)
    try:
        assert seen.busy("r1")
    finally:
        terraform.kill()
        terraform.wait()
    assert not seen.busy("r1")


# --- gather -----------------------------------------------------------------------------------


def test_the_local_cloud_tells_a_dead_agent_and_a_stopped_sandbox(state, sandboxes):
    sandboxes.make("healthy", agent="alive")
    sandboxes.make("agentless", agent="dead")
    sandboxes.make("crashed", agent=None)
    found = {i.name: i for i in LocalCloud(state).list_managed(None)}
    assert {name: i.state for name, i in found.items()} == {
        "healthy": "idle",
        "agentless": "agent-dead",
        "crashed": "stopped",
    }
    assert {name for name, i in found.items() if i.dead} == {"agentless", "crashed"}


@pytest.mark.parametrize("with_forge", [False, True])
def test_gather_collects_every_source_once(state, sandboxes, make_record, with_forge):
    sandboxes.make("box")
    state.save(make_record("box"))
    state.save(make_record("old", state="destroyed"))
    ghost = registration("ghost", online=False, labels=("cml-infra-ghost",))
    forge = ListedForge([ghost]) if with_forge else None
    seen = gathering.gather(make_settings(clouds=("local",)), state, forge)
    assert [(i.name, i.cloud) for i in seen.instances] == [("box", "local")]
    assert sorted(r.name for r in seen.records) == ["box", "old"]
    assert seen.listed_clouds == {"local"}
    assert seen.runners == ([ghost] if with_forge else [])
    assert seen.state is state
    assert seen.forge is forge
    assert seen.leftovers == []


def test_gather_lists_leftovers_of_the_searched_regions_before_instances(state, monkeypatch):
    """Leftovers first: an instance made between the two listings still spares its launch's."""
    calls = []
    found = leftover("gone", cloud="local", region="local")

    def list_leftovers(self, regions):
        calls.append(("leftovers", regions))
        return [found]

    def list_managed(self, regions):
        calls.append(("instances", regions))
        return []

    monkeypatch.setattr(LocalCloud, "list_leftovers", list_leftovers)
    monkeypatch.setattr(LocalCloud, "list_managed", list_managed)
    seen = gathering.gather(make_settings(regions=("us-east-1",)), state, None)
    # The local cloud searches its one region whatever --region says (None: all of it).
    assert calls == [("leftovers", None), ("instances", None)]
    assert seen.leftovers == [found]
    assert gathering.items(seen) == [gathering.LeftoverItem(found)]
