"""cml_infra.cleanup.rules: each rule on hand-built worlds, choosing rules, and matching.

No test here reaches a cloud or GitHub: rules see World objects built in the test (worlds.py);
where a rule asks whether a live command works on a runner, the world has a real state dir.
"""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta

import pytest

from cml_infra import cli
from cml_infra.cleanup import world as gathering
from cml_infra.cleanup.actions import ACTIONS
from cml_infra.cleanup.rules import RULES, choose, match_all
from cml_infra.clouds import tags as keys
from cml_infra.errors import UsageError
from cml_infra.forge.github import GitHubForge
from cml_infra.spec import ForgeTarget
from tests.unit.cleanup.worlds import (
    HOUR,
    MINUTE,
    NOW,
    instance,
    instance_item,
    leftover,
    leftover_item,
    match,
    online_runner,
    registration,
    registration_item,
    runner_tags,
    state_item,
    world,
)

DEFAULT_RULES = ["expired", "dead", "stale-state", "leftover"]
FORGE_RULES = [
    "expired",
    "dead",
    "orphan",
    "idle",
    "stale-state",
    "stale-registration",
    "leftover",
]


# --- expired ----------------------------------------------------------------------------------


def test_expired_matches_a_past_expires_tag():
    old = instance(expires_in=-5 * MINUTE)
    reason = match("expired", instance_item(old), world(instances=[old]))
    assert reason == f"expired at {NOW - 5 * MINUTE:%Y-%m-%d %H:%M:%S} UTC"


def test_expired_at_exactly_now_matches():
    due = instance(expires_in=timedelta(0))
    assert match("expired", instance_item(due), world(instances=[due]))


def test_expired_leaves_a_future_expiry_alone():
    fresh = instance(expires_in=HOUR, age=timedelta(days=30))
    assert match("expired", instance_item(fresh), world(instances=[fresh])) is None


def test_expired_max_age_matches_an_old_instance_whatever_its_tag():
    old = instance(age=2 * HOUR + 5 * MINUTE, expires_in=timedelta(days=1))
    reason = match("expired", instance_item(old), world(instances=[old], max_age=HOUR))
    assert reason == "2h05m old, over --max-age 1h00m"


def test_expired_max_age_spares_a_younger_instance():
    young = instance(age=30 * MINUTE, expires_in=timedelta(days=1))
    assert match("expired", instance_item(young), world(max_age=HOUR)) is None


def test_expired_without_tag_or_creation_time_never_matches():
    unknown = instance(age=None, expires_in=None)
    assert match("expired", instance_item(unknown), world(max_age=timedelta(seconds=1))) is None


# --- dead -------------------------------------------------------------------------------------


@pytest.mark.parametrize("condition", ["stopped", "agent-dead", "terminated"])
def test_dead_matches_an_instance_that_can_take_no_work(condition):
    gone = instance("r1", state=condition, age=HOUR)
    reason = match("dead", instance_item(gone), world(instances=[gone]))
    assert reason == f"it is {condition}: nothing on it runs or ends it"


@pytest.mark.parametrize("condition", ["running", "idle", "busy", "booting"])
def test_dead_spares_an_instance_that_works(condition):
    working = instance("r1", state=condition, age=HOUR)
    assert match("dead", instance_item(working), world(instances=[working])) is None


def test_dead_reaps_a_young_one_the_state_dir_knows_and_no_command_works_on(state, make_record):
    # Known to the state dir: the `up` that made it is gone, so no grace is owed, however young.
    state.save(make_record("r1"))
    gone = instance("r1", state="agent-dead", age=MINUTE)
    in_world = world(instances=[gone], state=state)
    assert match("dead", instance_item(gone), in_world) == (
        "it is agent-dead: nothing on it runs or ends it"
    )


@pytest.mark.parametrize("condition", ["stopped", "agent-dead"])
def test_dead_spares_one_a_live_command_holds_the_lock_of(state, make_record, condition):
    # `up` holds the name's lock while the sandbox is made: a half-made one looks stopped.
    state.save(make_record("r1"))
    gone = instance("r1", state=condition, age=HOUR)
    in_world = world(instances=[gone], state=state)
    with state.lock("r1", wait=0):
        assert match("dead", instance_item(gone), in_world) is None
    assert match("dead", instance_item(gone), in_world)


def test_dead_spares_an_unknown_instance_for_the_orphan_grace(state):
    # Another machine's `up` may be making it: its lock is not ours to see.
    young = instance("r1", state="stopped", age=9 * MINUTE)
    assert match("dead", instance_item(young), world(instances=[young], state=state)) is None
    unknown_age = instance("r2", state="stopped", age=None)
    in_world = world(instances=[unknown_age], state=state)
    assert match("dead", instance_item(unknown_age), in_world) is None
    old = instance("r3", state="stopped", age=11 * MINUTE)
    assert match("dead", instance_item(old), world(instances=[old], state=state))


# --- orphan -----------------------------------------------------------------------------------


def test_orphan_matches_an_old_runner_instance_no_online_runner_labels():
    box = instance("r1", runner=True, age=HOUR)
    reason = match("orphan", instance_item(box), world(instances=[box]))
    assert reason == "no online runner carries cml-infra-r1 after 1h00m"


def test_orphan_spares_an_instance_an_online_runner_labels():
    box = instance("r1", runner=True, age=HOUR)
    in_world = world(instances=[box], runners=[online_runner("r1")])
    assert match("orphan", instance_item(box), in_world) is None


def test_orphan_label_on_an_offline_runner_does_not_count():
    box = instance("r1", runner=True, age=HOUR)
    in_world = world(instances=[box], runners=[online_runner("r1", online=False)])
    assert match("orphan", instance_item(box), in_world)


def test_orphan_looks_only_at_runner_instances():
    task = instance("t1", runner=False, age=timedelta(days=2))
    assert keys.FORGE not in task.tags
    assert match("orphan", instance_item(task), world(instances=[task])) is None


def test_orphan_spares_an_instance_younger_than_the_grace():
    booting = instance("r1", runner=True, age=5 * MINUTE)
    assert match("orphan", instance_item(booting), world(instances=[booting])) is None
    unknown_age = instance("r2", runner=True, age=None)
    assert match("orphan", instance_item(unknown_age), world(instances=[unknown_age])) is None


def test_orphan_spares_a_runner_instance_of_another_repository():
    other = instance("r9", age=HOUR, tags=runner_tags("r9", repo="octo/other"))
    forge = GitHubForge(ForgeTarget(repo="octo/repo"), "token")
    assert match("orphan", instance_item(other), world(instances=[other], forge=forge)) is None


# --- idle -------------------------------------------------------------------------------------


def test_idle_matches_when_the_last_job_ended_long_ago():
    box = instance("r1", runner=True, age=3 * HOUR)
    in_world = world(instances=[box], runners=[online_runner("r1")], jobs={"r1": NOW - 2 * HOUR})
    assert match("idle", instance_item(box), in_world) == "last job ended 2h00m ago"


def test_idle_spares_a_runner_whose_last_job_ended_recently():
    box = instance("r1", runner=True, age=3 * HOUR)
    in_world = world(instances=[box], runners=[online_runner("r1")], jobs={"r1": NOW - MINUTE})
    assert match("idle", instance_item(box), in_world) is None


def test_idle_spares_a_runner_with_a_job_running():
    box = instance("r1", runner=True, age=3 * HOUR)
    in_world = world(instances=[box], runners=[online_runner("r1")], jobs={"r1": None})
    assert match("idle", instance_item(box), in_world) is None


def test_idle_spares_a_busy_runner():
    box = instance("r1", runner=True, age=3 * HOUR)
    in_world = world(
        instances=[box], runners=[online_runner("r1", busy=True)], jobs={"r1": NOW - 2 * HOUR}
    )
    assert match("idle", instance_item(box), in_world) is None


def test_idle_matches_a_runner_that_never_ran_a_job_after_the_threshold():
    box = instance("r1", runner=True, age=45 * MINUTE)
    in_world = world(instances=[box], runners=[online_runner("r1")], jobs={"other": NOW})
    assert match("idle", instance_item(box), in_world) == "never ran a job in 0h45m"
    young = instance("r2", runner=True, age=10 * MINUTE)
    in_world = world(instances=[young], runners=[online_runner("r2")], jobs={})
    assert match("idle", instance_item(young), in_world) is None


def test_idle_leaves_an_unregistered_instance_to_orphan():
    box = instance("r1", runner=True, age=3 * HOUR)
    in_world = world(instances=[box], runners=[], jobs={"r1": NOW - 2 * HOUR})
    assert match("idle", instance_item(box), in_world) is None


def test_idle_looks_only_at_runner_instances():
    task = instance("t1", runner=False, age=3 * HOUR)
    in_world = world(instances=[task], runners=[online_runner("t1")], jobs={})
    assert match("idle", instance_item(task), in_world) is None


def test_idle_does_not_guess_for_an_organization_it_cannot_see_jobs_of():
    box = instance("r1", runner=True, age=3 * HOUR)
    forge = GitHubForge(ForgeTarget(org="octo"), "token")
    in_world = world(instances=[box], runners=[online_runner("r1")], forge=forge)
    assert in_world.last_jobs() == {}  # no network: organizations have no job listing
    assert match("idle", instance_item(box), in_world) is None


# --- stale-state ------------------------------------------------------------------------------


def test_stale_state_matches_a_live_record_whose_instance_is_gone(make_record):
    record = make_record("gone", state="running")
    reason = match("stale-state", state_item(record), world(records=[record]))
    assert reason == "recorded as running, but no instance of it exists"


@pytest.mark.parametrize("live", ["provisioning", "running", "idle", "destroying", "failed"])
def test_stale_state_matches_every_live_state(make_record, live):
    # Before, `provisioning` was never matched: now a record is spared only while a live
    # command works on it (below), so one left provisioning by a killed `up` is reaped too.
    record = make_record("gone", state=live)
    assert match("stale-state", state_item(record), world(records=[record]))


def test_stale_state_spares_a_record_whose_instance_exists(make_record):
    record = make_record("here")
    in_world = world(records=[record], instances=[instance("here")])
    assert match("stale-state", state_item(record), in_world) is None


def test_stale_state_spares_a_record_of_a_cloud_not_listed(make_record):
    record = make_record("far", cloud="aws", region="us-east-1")
    assert match("stale-state", state_item(record), world(records=[record])) is None


def test_stale_state_spares_a_record_of_a_region_not_searched(make_record):
    record = make_record("far", cloud="aws", region="eu-west-1")
    in_world = world(records=[record], listed=("aws",), regions=("us-east-1",))
    assert match("stale-state", state_item(record), in_world) is None


def test_stale_state_spares_a_record_still_provisioning(state, make_record):
    # The `up` that makes it holds its lock; its instance may not exist yet.
    record = state.save(make_record("new", state="provisioning"))
    in_world = world(records=[record], state=state)
    with state.lock("new", wait=0):
        assert match("stale-state", state_item(record), in_world) is None


@pytest.mark.parametrize("left", ["provisioning", "destroying", "failed"])
def test_stale_state_matches_a_record_a_dead_command_left_unfinished(state, make_record, left):
    # Its instance still exists: the record, not the instance, says the command never finished.
    record = state.save(make_record("r1", state=left))
    in_world = world(records=[record], instances=[instance("r1")], state=state)
    assert not state.held("r1")
    reason = match("stale-state", state_item(record), in_world)
    assert reason == f"left {left} by a command that is no longer running"


@pytest.mark.parametrize("left", ["provisioning", "destroying", "failed"])
def test_stale_state_spares_an_unfinished_record_a_live_command_holds(state, make_record, left):
    record = state.save(make_record("r1", state=left))
    in_world = world(records=[record], instances=[instance("r1")], state=state)
    with state.lock("r1", wait=0):
        assert match("stale-state", state_item(record), in_world) is None


def test_stale_state_spares_a_record_whose_terraform_still_runs(state, make_record):
    # `up` was killed, its Terraform was not: no lock is held, but the workspace is in use.
    record = state.save(make_record("r1", state="provisioning"))
    state.workspace("r1").mkdir(parents=True)
    in_world = world(records=[record], state=state)
    terraform = subprocess.Popen(["sleep", "3600"], cwd=state.workspace("r1"))
    try:
        assert match("stale-state", state_item(record), in_world) is None
    finally:
        terraform.kill()
        terraform.wait()
    assert match("stale-state", state_item(record), in_world)


@pytest.mark.parametrize("kept", ["running", "idle"])
def test_stale_state_leaves_a_finished_record_with_its_instance_alone(state, make_record, kept):
    record = state.save(make_record("r1", state=kept))
    in_world = world(records=[record], instances=[instance("r1")], state=state)
    assert match("stale-state", state_item(record), in_world) is None


# --- stale-registration -----------------------------------------------------------------------


def test_stale_registration_matches_an_offline_ours_without_instance():
    ghost = registration("ghost", online=False, labels=("gpu", "cml-infra-ghost"))
    reason = match("stale-registration", registration_item(ghost), world(runners=[ghost]))
    assert reason == "offline, and no instance carries its name"


def test_stale_registration_spares_an_online_runner():
    live = registration("live", online=True, labels=("cml-infra-live",))
    assert match("stale-registration", registration_item(live), world(runners=[live])) is None


def test_stale_registration_spares_runners_without_our_label():
    theirs = registration("theirs", online=False, labels=("gpu",))
    assert match("stale-registration", registration_item(theirs), world(runners=[theirs])) is None


def test_stale_registration_spares_an_offline_runner_whose_instance_exists():
    booting = registration("r1", online=False, labels=("cml-infra-r1",))
    in_world = world(runners=[booting], instances=[instance("r1", runner=True)])
    assert match("stale-registration", registration_item(booting), in_world) is None


def test_stale_registration_spares_a_runner_on_a_cloud_not_listed(make_record):
    record = make_record("r1", cloud="aws", region="us-east-1")
    offline = registration("r1", online=False, labels=("cml-infra-r1",))
    in_world = world(runners=[offline], records=[record], listed=("local",))
    assert match("stale-registration", registration_item(offline), in_world) is None


def _since(moment: datetime) -> str:
    return f"cml-infra-since-{int(moment.timestamp())}"


def test_stale_registration_spares_one_registered_within_the_grace():
    # `up` mints a single-job registration before its instance exists; it is not stale yet.
    labels = ("cml-infra-new", "cml-infra-on-local", _since(NOW - MINUTE * 9))
    fresh = registration("new", online=False, labels=labels)
    assert match("stale-registration", registration_item(fresh), world(runners=[fresh])) is None


def test_stale_registration_matches_one_registered_before_the_grace():
    labels = ("cml-infra-old", "cml-infra-on-local", _since(NOW - MINUTE * 11))
    old = registration("old", online=False, labels=labels)
    reason = match("stale-registration", registration_item(old), world(runners=[old]))
    assert reason == "offline, and no instance carries its name"


def test_the_since_and_cloud_labels_are_not_runner_names():
    # Only metadata labels: nothing says which runner it is, so it is not ours to judge.
    odd = registration("odd", online=False, labels=("cml-infra-on-local", _since(NOW)))
    assert match("stale-registration", registration_item(odd), world(runners=[odd])) is None


@pytest.mark.parametrize("label", ["cml-infra-since-", "cml-infra-since-soon"])
def test_a_malformed_since_label_is_no_grace(label):
    ghost = registration("ghost", online=False, labels=("cml-infra-ghost", label))
    assert match("stale-registration", registration_item(ghost), world(runners=[ghost]))


# --- untracked --------------------------------------------------------------------------------


def test_untracked_matches_an_instance_no_live_record_knows(make_record):
    stray = instance("stray")
    closed = make_record("stray", state="destroyed")
    in_world = world(instances=[stray], records=[closed])
    assert match("untracked", instance_item(stray), in_world) == "no state record knows it"


def test_untracked_spares_an_instance_a_live_record_knows(make_record):
    known = instance("known")
    in_world = world(instances=[known], records=[make_record("known")])
    assert match("untracked", instance_item(known), in_world) is None


def test_untracked_is_opt_in():
    assert RULES["untracked"].default is False
    for has_forge in (False, True):
        assert "untracked" not in [r.name for r in choose(None, has_forge)]
    assert [r.name for r in choose(["untracked"], False)] == ["untracked"]


# --- leftover ---------------------------------------------------------------------------------

AWS = {"listed": ("aws",)}


def test_leftover_of_a_launch_whose_instance_is_gone():
    group = leftover("gpu-ci", launch_id="gone0001", age=HOUR)
    in_world = world(leftovers=[group], **AWS)
    assert match("leftover", leftover_item(group), in_world) == (
        "no instance of launch gone0001 is left, 1h00m after it began"
    )


def test_leftover_spares_one_whose_launch_still_has_an_instance():
    group = leftover("gpu-ci", launch_id="live0001")
    # Even one that is shutting down: its network interface still holds the group.
    live = instance("gpu-ci", cloud="aws", region="us-east-1", state="shutting-down",
                    launch_id="live0001")  # fmt: skip
    in_world = world(instances=[live], leftovers=[group], **AWS)
    assert match("leftover", leftover_item(group), in_world) is None


def test_leftover_goes_by_launch_id_not_by_name():
    # Another launch of the same name lives; this one's instance is gone.
    group = leftover("gpu-ci", launch_id="gone0001")
    other = instance("gpu-ci", cloud="aws", region="us-east-1", launch_id="x1234567")
    in_world = world(instances=[other], leftovers=[group], **AWS)
    assert match("leftover", leftover_item(group), in_world) is not None


def test_leftover_without_a_launch_id_goes_by_its_name():
    group = leftover("gpu-ci", launch_id="")
    namesake = instance("gpu-ci", cloud="aws", region="us-east-1")
    assert match("leftover", leftover_item(group), world(instances=[namesake], **AWS)) is None
    assert match("leftover", leftover_item(group), world(**AWS)) == (
        "no instance of runner gpu-ci is left, 1h00m after it began"
    )


def test_leftover_looks_at_instances_of_its_own_cloud_only():
    group = leftover("gpu-ci", launch_id="same0001")
    elsewhere = instance("gpu-ci", launch_id="same0001")  # a local instance
    in_world = world(instances=[elsewhere], leftovers=[group], listed=("aws", "local"))
    assert match("leftover", leftover_item(group), in_world) is not None
    same_cloud = instance("gpu-ci", cloud="aws", region="us-east-1", launch_id="same0001")
    in_world = world(instances=[same_cloud], leftovers=[group], listed=("aws", "local"))
    assert match("leftover", leftover_item(group), in_world) is None


@pytest.mark.parametrize("age", [None, 5 * MINUTE, 10 * MINUTE])
def test_leftover_spares_one_too_young_or_of_unknown_age(age):
    # An `up` makes its security group before its instance.
    group = leftover("gpu-ci", age=age)
    assert match("leftover", leftover_item(group), world(**AWS)) is None


def test_leftover_spares_one_in_a_region_or_cloud_not_searched():
    group = leftover("gpu-ci", region="eu-west-1")
    assert match("leftover", leftover_item(group), world(regions=("us-east-1",), **AWS)) is None
    assert match("leftover", leftover_item(group), world(listed=("local",))) is None
    assert match("leftover", leftover_item(group), world(regions=("eu-west-1",), **AWS))


def test_leftover_spares_one_a_command_works_on(state, make_record):
    group = leftover("gpu-ci", launch_id="busy0001")
    state.save(make_record("gpu-ci", cloud="aws", region="us-east-1", launch_id="busy0001"))
    key = state.key_of("gpu-ci", "busy0001")
    in_world = world(leftovers=[group], state=state, **AWS)
    with state.lock(key, wait=0):
        assert match("leftover", leftover_item(group), in_world) is None
    assert match("leftover", leftover_item(group), in_world) is not None


def test_a_leftover_is_reported_by_its_resource_type():
    group = leftover("gpu-ci", kind="azurerm_resource_group", cloud="azure", region="eastus")
    item = leftover_item(group)
    assert (item.kind, item.where, item.id, item.name, item.launch) == (
        "azurerm_resource_group",
        ("azure", "eastus"),
        "eastus/sg-gpu-ci",
        "gpu-ci",
        "launch0001",
    )
    assert item.hourly_price is None


def test_items_offer_the_leftovers():
    group = leftover("gpu-ci")
    assert gathering.items(world(leftovers=[group], forge=None)) == [leftover_item(group)]


# --- the registry, choosing rules, matching ---------------------------------------------------


def test_every_rule_names_an_action_for_its_item_type():
    for name, cls in RULES.items():
        assert cls.name == name
        assert cls.action in ACTIONS, name
        assert cls.item in (gathering.InstanceItem, gathering.RegistrationItem,
                            gathering.RecordItem, gathering.LeftoverItem), name  # fmt: skip


def test_default_rules_without_a_forge():
    assert [rule.name for rule in choose(None, forge=False)] == DEFAULT_RULES
    assert [rule.name for rule in choose([], forge=False)] == DEFAULT_RULES


def test_default_rules_with_a_forge():
    assert [rule.name for rule in choose(None, forge=True)] == FORGE_RULES


def test_rules_asked_for_are_the_only_ones():
    chosen = choose(["stale-state", "expired"], forge=False)
    assert [rule.name for rule in chosen] == ["stale-state", "expired"]


def test_unknown_rule_lists_the_valid_ones():
    with pytest.raises(UsageError) as caught:
        choose(["expird"], forge=True)
    assert caught.value.source == "--rule"
    assert "unknown rule 'expird'" in str(caught.value)
    assert f"valid: {', '.join(RULES)}" in str(caught.value)


@pytest.mark.parametrize("name", ["orphan", "idle", "stale-registration"])
def test_a_forge_rule_without_a_forge_is_a_usage_error(name):
    with pytest.raises(UsageError, match=rf"^--rule: {name} needs a forge: add --repo or --org"):
        choose([name], forge=False)


def test_every_rule_is_in_the_cli_help():
    for name in RULES:
        assert f"{name} (" in cli.CLEANUP_RULES_HELP, name
    assert "untracked (opt-in" in cli.CLEANUP_RULES_HELP


def test_one_item_is_matched_once_by_the_first_rule():
    # Expired and orphaned at once: one row, from `expired`, which comes first.
    both = instance("r1", runner=True, age=HOUR, expires_in=-MINUTE)
    in_world = world(instances=[both])
    matched = match_all(choose(None, forge=True), gathering.items(in_world), in_world)
    assert [(m.item.name, m.rule.name) for m in matched] == [("r1", "expired")]


def test_rules_see_only_items_of_their_kind(make_record):
    record = make_record("gone")
    ghost = registration("ghost", online=False, labels=("cml-infra-ghost",))
    old = instance("old", expires_in=-MINUTE)
    in_world = world(instances=[old], records=[record], runners=[ghost])
    matched = match_all(choose(None, forge=True), gathering.items(in_world), in_world)
    assert sorted((m.item.kind, m.item.name, m.rule.name) for m in matched) == [
        ("instance", "old", "expired"),
        ("registration", "ghost", "stale-registration"),
        ("state", "gone", "stale-state"),
    ]
