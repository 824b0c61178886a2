"""cml_infra.cleanup.actions: what is done to a match. `destroy` goes through Terraform where
this state dir has the runner's workspace and through the cloud API otherwise (real local
sandboxes here), `deregister` removes a registration, `forget` closes a stale record.

`down` is stood in for where an action goes through Terraform: its own tests run Terraform."""

from __future__ import annotations

import pytest

from cml_infra.cleanup.actions import ACTIONS
from cml_infra.cleanup.world import InstanceItem, LeftoverItem, RecordItem, RegistrationItem
from cml_infra.clouds.local import LocalCloud
from cml_infra.errors import CmlInfraError
from cml_infra.lifecycle import down as down_module
from tests.unit.cleanup.worlds import (
    ListedForge,
    instance,
    leftover,
    online_runner,
    registration,
    runner_tags,
    world,
)

REASON = "cleanup: expired"


@pytest.fixture
def downs(monkeypatch, state):
    """Stands in for `down`: records each call and closes the record as `down` would."""
    calls = []

    def down(names, on_state, terraform, reason, token=None):
        calls.append((list(names), terraform, reason))
        assert on_state is state
        for name in names:
            record = on_state.load(name)
            on_state.save(record.replace(state="destroyed", end_reason=reason))
        return []

    monkeypatch.setattr(down_module, "down", down)
    return calls


def listed(state, name):
    """Sandbox `name` as the local cloud reports it."""
    return next(i for i in LocalCloud(state).list_managed(None) if i.name == name)


def destroy(item, in_world):
    return ACTIONS["destroy"]().run(item, in_world, REASON)


def test_the_registry():
    assert set(ACTIONS) == {"destroy", "deregister", "forget", "reap"}
    # --max-destroy counts what cannot be undone by a new `up`: instances, records, leftovers.
    assert {name for name, cls in ACTIONS.items() if cls.destructive} == {
        "destroy",
        "forget",
        "reap",
    }


# --- destroy ----------------------------------------------------------------------------------


def test_destroy_without_a_record_goes_through_the_cloud_api(state, sandboxes, downs):
    folder = sandboxes.make("stray")
    result = destroy(InstanceItem(listed(state, "stray")), world(state=state, forge=None))
    assert result == "destroyed (cloud API)"
    assert sandboxes.group_ended("stray")
    assert not folder.exists()
    assert downs == []


def test_destroy_of_a_runner_with_a_workspace_goes_through_terraform(
    state, sandboxes, make_record, downs
):
    sandboxes.make("r1")
    record = state.save(make_record("r1"))
    state.workspace("r1").mkdir(parents=True)
    in_world = world(state=state, records=[record], forge=None)
    assert destroy(InstanceItem(listed(state, "r1")), in_world) == "destroyed (terraform)"
    # The reason is the record's end as it is given, not prefixed again.
    assert downs == [(["r1"], None, REASON)]
    assert state.load("r1").end_reason == REASON


@pytest.mark.parametrize(
    "record_changes",
    [
        pytest.param({"cloud": "aws", "region": "us-east-1"}, id="a record of another cloud"),
        pytest.param({"state": "destroyed"}, id="a destroyed record"),
        pytest.param(None, id="a record without a workspace"),
    ],
)
def test_destroy_goes_through_the_cloud_api_unless_the_workspace_is_this_ones(
    state, sandboxes, make_record, downs, record_changes
):
    folder = sandboxes.make("r1")
    record = state.save(make_record("r1", **(record_changes or {})))
    if record_changes is not None:
        state.workspace("r1").mkdir(parents=True)
    in_world = world(state=state, records=[record], forge=None)
    assert destroy(InstanceItem(listed(state, "r1")), in_world) == "destroyed (cloud API)"
    assert not folder.exists()
    assert downs == []


def test_destroy_of_our_runner_deregisters_it(state, sandboxes):
    sandboxes.make("r1", tags=runner_tags("r1"))
    forge = ListedForge([online_runner("r1"), online_runner("r2")])
    in_world = world(state=state, forge=forge, runners=forge.runners())
    assert destroy(InstanceItem(listed(state, "r1")), in_world) == "destroyed (cloud API)"
    assert [runner.name for runner in forge.listed] == ["r2"]


def test_destroy_of_a_task_instance_leaves_registrations_alone(state, sandboxes):
    sandboxes.make("r1")
    forge = ListedForge([online_runner("r1")])
    in_world = world(state=state, forge=forge, runners=forge.runners())
    assert destroy(InstanceItem(listed(state, "r1")), in_world) == "destroyed (cloud API)"
    assert forge.deregistered == []


def test_a_failed_deregistration_is_said_after_the_destruction(state, sandboxes):
    folder = sandboxes.make("r1", tags=runner_tags("r1"))

    class Refusing(ListedForge):
        def deregister(self, name):
            raise CmlInfraError(f"GitHub refused to remove {name} (HTTP 403)")

    in_world = world(state=state, forge=Refusing())
    result = destroy(InstanceItem(listed(state, "r1")), in_world)
    assert result == (
        "destroyed (cloud API); deregistration failed: GitHub refused to remove r1 (HTTP 403)"
    )
    assert not folder.exists()


def test_destroy_of_an_instance_that_is_already_gone_is_no_error(state):
    # Idempotent: the sandbox went between the listing and the action.
    gone = instance("gone")
    assert destroy(InstanceItem(gone), world(state=state, forge=None)) == "destroyed (cloud API)"


# --- deregister -------------------------------------------------------------------------------


def test_deregister_removes_the_registration_once(state):
    ghost = registration("ghost", online=False, labels=("cml-infra-ghost",))
    forge = ListedForge([ghost])
    item = RegistrationItem(ghost, ("github", "octo/repo"))
    in_world = world(state=state, forge=forge, runners=[ghost])
    deregister = ACTIONS["deregister"]()
    assert deregister.run(item, in_world, "cleanup: stale-registration") == "deregistered"
    assert forge.listed == []
    assert deregister.run(item, in_world, "cleanup: stale-registration") == "already gone"


# --- forget -----------------------------------------------------------------------------------


def test_forget_destroys_leftovers_and_closes_the_record(state, make_record, downs):
    record = state.save(make_record("gone", state="failed"))
    forget = ACTIONS["forget"]()
    in_world = world(state=state, records=[record])
    result = forget.run(RecordItem(record), in_world, "cleanup: stale-state")
    assert result == "leftovers destroyed, record closed"
    assert downs == [(["gone"], None, "cleanup: stale-state")]
    assert state.load("gone").state == "destroyed"


# --- reap, and destroy's reaping of its launch's leftovers --------------------------------------


@pytest.fixture
def deleted(monkeypatch):
    """What the local cloud is asked to delete as leftovers (it leaves none of its own)."""
    calls: list[list[str]] = []

    def delete_leftovers(self, leftovers):
        calls.append([found.id for found in leftovers])

    monkeypatch.setattr(LocalCloud, "delete_leftovers", delete_leftovers)
    return calls


def local_leftover(name, launch_id):
    return leftover(name, launch_id=launch_id, cloud="local", region="local")


def test_reap_deletes_the_leftover_through_its_cloud(state, deleted):
    group = local_leftover("r1", "gone0001")
    result = ACTIONS["reap"]().run(LeftoverItem(group), world(state=state), "cleanup: leftover")
    assert result == "deleted (cloud API)"
    assert deleted == [["local/sg-r1"]]


def test_a_reap_the_cloud_refuses_fails(state, monkeypatch):
    def refuse(self, leftovers):
        raise CmlInfraError("aws us-east-1: security group sg-1 is still in use")

    monkeypatch.setattr(LocalCloud, "delete_leftovers", refuse)
    with pytest.raises(CmlInfraError, match="still in use"):
        ACTIONS["reap"]().run(LeftoverItem(local_leftover("r1", "x1234567")), world(), "x")


def test_destroy_through_the_cloud_api_reaps_its_launchs_leftovers(state, sandboxes, deleted):
    sandboxes.make("r1", tags={"cml-infra-id": "ours0001"})
    ours = local_leftover("r1", "ours0001")
    theirs = local_leftover("r1-other", "them0001")
    elsewhere = leftover("r1", launch_id="ours0001", cloud="aws", region="us-east-1")
    in_world = world(state=state, forge=None, leftovers=[theirs, ours, elsewhere])
    result = destroy(InstanceItem(listed(state, "r1")), in_world)
    assert result == "destroyed (cloud API)"
    assert deleted == [["local/sg-r1"]]


def test_destroy_of_an_instance_older_than_launch_ids_reaps_nothing(state, sandboxes, deleted):
    sandboxes.make("r1")
    in_world = world(state=state, forge=None, leftovers=[local_leftover("r1", "")])
    assert destroy(InstanceItem(listed(state, "r1")), in_world) == "destroyed (cloud API)"
    assert deleted == []


def test_leftovers_destroy_could_not_reap_are_said_and_left(state, sandboxes, monkeypatch):
    folder = sandboxes.make("r1", tags={"cml-infra-id": "ours0001"})

    def refuse(self, leftovers):
        raise CmlInfraError("aws us-east-1: security group sg-1 is still in use")

    monkeypatch.setattr(LocalCloud, "delete_leftovers", refuse)
    in_world = world(state=state, forge=None, leftovers=[local_leftover("r1", "ours0001")])
    assert destroy(InstanceItem(listed(state, "r1")), in_world) == (
        "destroyed (cloud API); its leftovers remain for the next run: "
        "aws us-east-1: security group sg-1 is still in use"
    )
    assert not folder.exists()
