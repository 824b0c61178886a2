"""Cleanup ties a record to an instance by launch id, not by name: another launch's instance of
the same name is neither this record's instance (stale-state, untracked) nor destroyed through
this record's workspace (destroy). Its report shows the launch id."""

from __future__ import annotations

import dataclasses

import pytest

from cml_infra.cleanup import run
from cml_infra.cleanup.actions import ACTIONS
from cml_infra.cleanup.rules import RULES, match_all
from cml_infra.cleanup.world import InstanceItem, made_by
from cml_infra.clouds.local import LocalCloud
from cml_infra.commands import CLEANUP_COLUMNS
from cml_infra.lifecycle import down as down_module
from tests.unit.cleanup.worlds import HOUR, instance, match, state_item, world

OURS, THEIRS = "0123456789abcdef", "a11ce0000000beef"
REASON = "cleanup: expired"


def launched(launch_id: str, name: str = "gpu-ci", **changes):
    found = instance(name, **changes)
    return dataclasses.replace(
        found, launch_id=launch_id, tags={**found.tags, "cml-infra-id": launch_id}
    )


# --- made_by -----------------------------------------------------------------------------------


def test_an_instance_is_a_records_by_launch_id_not_by_name(make_record):
    record = make_record("gpu-ci", launch_id=OURS)
    assert made_by(record, launched(OURS))
    assert not made_by(record, launched(THEIRS))
    assert made_by(record, launched(OURS, name="renamed-by-hand"))
    # One older than launch ids is never a new launch's, nor the reverse.
    assert not made_by(record, instance("gpu-ci"))
    assert not made_by(make_record("gpu-ci"), launched(THEIRS))


def test_a_record_and_instance_both_older_than_launch_ids_go_by_what_the_record_names(
    make_record,
):
    """The local cloud's instance id is its name; a record with Terraform's outputs names it."""
    assert made_by(make_record("gpu-ci"), instance("gpu-ci"))
    assert made_by(make_record("gpu-ci", outputs={"id": "gpu-ci"}), instance("gpu-ci"))
    assert not made_by(make_record("gpu-ci", outputs={"id": "other"}), instance("gpu-ci"))
    assert not made_by(make_record("gpu-ci", cloud="aws"), instance("gpu-ci"))


# --- the rules ---------------------------------------------------------------------------------


def test_stale_state_is_not_fooled_by_another_launch_of_the_same_name(make_record):
    record = make_record("gpu-ci", launch_id=OURS)
    in_world = world(records=[record], instances=[launched(THEIRS)])
    reason = match("stale-state", state_item(record), in_world)
    assert reason == "recorded as running, but no instance of it exists"
    in_world = world(records=[record], instances=[launched(THEIRS), launched(OURS)])
    assert match("stale-state", state_item(record), in_world) is None


def test_untracked_sees_another_launch_of_a_known_name(make_record):
    record = make_record("gpu-ci", launch_id=OURS)
    in_world = world(records=[record])
    assert match("untracked", InstanceItem(launched(THEIRS)), in_world) == (
        "no state record knows it"
    )
    assert match("untracked", InstanceItem(launched(OURS)), in_world) is None


def test_a_record_is_acted_on_apart_from_another_launchs_instance_of_its_name(make_record):
    """Their instance expired, our record was left failed: each is matched on its own (our
    record would not be closed by destroying their instance)."""
    record = make_record("gpu-ci", state="failed", launch_id=OURS)
    theirs = InstanceItem(launched(THEIRS, expires_in=-HOUR))
    in_world = world(records=[record], instances=[theirs.instance])
    rules = [RULES["expired"](), RULES["stale-state"]()]
    matched = match_all(rules, [theirs, state_item(record)], in_world)
    assert [(m.item.kind, m.rule.name) for m in matched] == [
        ("instance", "expired"),
        ("state", "stale-state"),
    ]
    # With its own instance matched, the record goes with it.
    ours = InstanceItem(launched(OURS, expires_in=-HOUR))
    matched = match_all(rules, [ours, state_item(record)], in_world)
    assert [(m.item.kind, m.rule.name) for m in matched] == [("instance", "expired")]


# --- destroy -----------------------------------------------------------------------------------


@pytest.fixture
def downs(monkeypatch, state):
    calls = []

    def down(names, on_state, terraform, reason, token=None):
        calls.append(list(names))
        return []

    monkeypatch.setattr(down_module, "down", down)
    return calls


def listed(state, name):
    return next(i for i in LocalCloud(state).list_managed(None) if i.name == name)


def test_destroy_of_another_launchs_instance_never_goes_through_our_workspace(
    state, sandboxes, make_record, downs
):
    """Our record and workspace of the name are our runner's: `down` of it would destroy ours
    and leave theirs. Theirs goes through the cloud API, by its id; our record is untouched."""
    folder = sandboxes.make("gpu-ci", tags={"cml-infra-id": THEIRS})
    record = state.save(make_record("gpu-ci", launch_id=OURS))
    state.workspace("gpu-ci").mkdir(parents=True)
    item = InstanceItem(listed(state, "gpu-ci"))
    assert item.launch == THEIRS
    in_world = world(state=state, records=[record], forge=None)
    assert ACTIONS["destroy"]().run(item, in_world, REASON) == "destroyed (cloud API)"
    assert downs == []
    assert not folder.exists()
    assert state.load("gpu-ci").state == "running"


def test_destroy_of_our_launchs_instance_goes_through_our_workspace(
    state, sandboxes, make_record, downs
):
    sandboxes.make("gpu-ci", tags={"cml-infra-id": OURS})
    record = state.save(make_record("gpu-ci", launch_id=OURS))
    state.workspace("gpu-ci").mkdir(parents=True)
    in_world = world(state=state, records=[record], forge=None)
    item = InstanceItem(listed(state, "gpu-ci"))
    assert ACTIONS["destroy"]().run(item, in_world, REASON) == "destroyed (terraform)"
    assert downs == [["gpu-ci"]]


# --- the report --------------------------------------------------------------------------------


def test_the_report_shows_each_items_launch_id(make_record):
    record = make_record("gone", launch_id=OURS)
    in_world = world(records=[record], instances=[launched(THEIRS, expires_in=None)])
    matched = match_all([RULES["stale-state"]()], [state_item(record)], in_world)
    [row] = run.Plan(in_world, matched).rows("dry run")
    assert (row.kind, row.name, row.launch) == ("state", "gone", OURS)
    assert row.as_dict()["launch"] == OURS
    assert CLEANUP_COLUMNS.index("launch") == CLEANUP_COLUMNS.index("name") + 1
