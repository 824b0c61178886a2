"""cml_infra.cleanup: each rule on hand-built worlds, the whole reaper against moto, and the CLI.

No test here reaches a cloud or GitHub: rules see World objects built in the test, the AWS tests
run against moto, and the CLI tests use the local cloud with sandboxes written by hand.
"""

from __future__ import annotations

import itertools
import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cml_infra import cleanup, cli
from cml_infra.catalog import load as load_catalog
from cml_infra.cleanup import FORGE_TAG, RULES, Item, Settings, World
from cml_infra.cli import app
from cml_infra.clouds.base import ManagedInstance
from cml_infra.clouds.local import LocalCloud
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.forge.github import GitHubForge, Scope
from cml_infra.spec import RunnerSpec
from cml_infra.workspace import StateDir
from tests.fakes import ec2

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
DEFAULT_RULES = ["expired", "stale-state"]
RUNNER_IDS = itertools.count(1)
FORGE_RULES = ["expired", "orphan", "idle", "stale-state", "stale-registration"]


# --- hand-built worlds ------------------------------------------------------------------------


def make_settings(**changes) -> Settings:
    fields = {
        "clouds": ("local",),
        "regions": None,
        "max_age": None,
        "idle": 30 * MINUTE,
        "orphan_grace": 10 * MINUTE,
        "dry_run": False,
        "rules": None,
    }
    fields.update(changes)
    return Settings(**fields)


def runner_tags(name: str, repo: str = "octo/repo") -> dict[str, str]:
    """The tags `up --repo` puts on a runner instance (spec.resource_tags), as in the module."""
    spec = RunnerSpec(name=name, cloud="local", idle_timeout=60, ttl=3600, repo=repo)
    return dict(spec.resource_tags)


def instance(
    name: str = "r1",
    *,
    age: timedelta | None = HOUR,
    expires_in: timedelta | None = HOUR,
    runner: bool = False,
    cloud: str = "local",
    region: str = "local",
    tags: dict[str, str] | None = None,
) -> ManagedInstance:
    expires = None if expires_in is None else NOW + expires_in
    all_tags = {"cml-infra-managed": "true", "cml-infra-name": name}
    if expires is not None:
        all_tags["cml-infra-expires"] = str(int(expires.timestamp()))
    if runner:
        all_tags.update(runner_tags(name))
    all_tags.update(tags or {})
    return ManagedInstance(
        id=name if cloud == "local" else f"{region}/i-{name}",
        name=name,
        cloud=cloud,
        region=region,
        state="running",
        created_at=None if age is None else NOW - age,
        expires_at=expires,
        tags=all_tags,
    )


def registration(
    name: str, *, status: str = "online", busy: bool = False, labels: tuple[str, ...] = ()
) -> dict:
    """A runner object as GitHub lists it (labels as {"name": ...} dicts)."""
    every = ("self-hosted", "Linux", "X64", *labels)
    return {
        "id": next(RUNNER_IDS),
        "name": name,
        "os": "linux",
        "status": status,
        "busy": busy,
        "labels": [{"id": i, "name": label, "type": "custom"} for i, label in enumerate(every)],
    }


def online_runner(name: str, **changes) -> dict:
    return registration(name, labels=(f"cml-infra-{name}",), **changes)


# The forge a runner rule needs: the scope the runner instances here were tagged with.
REPO_FORGE = GitHubForge(Scope(repo="octo/repo"), "token")


def world(
    *,
    instances=(),
    records=(),
    runners=(),
    jobs=None,
    listed=("local",),
    forge=REPO_FORGE,
    **settings,
) -> World:
    return World(
        now=NOW,
        settings=make_settings(**settings),
        instances=list(instances),
        listed_clouds=set(listed),
        records=list(records),
        forge=forge,
        runners=list(runners),
        _last_jobs=jobs,
    )


def instance_item(found: ManagedInstance) -> Item:
    return Item("instance", found.cloud, found.region, found.id, found.name, instance=found)


def registration_item(runner: dict) -> Item:
    return Item("registration", "github", "octo/repo", str(runner["id"]), runner["name"],
                runner=runner)  # fmt: skip


def state_item(record) -> Item:
    return Item("state", record.cloud, record.region, record.name, record.name, record=record)


def match(rule: str, item: Item, in_world: World) -> str | None:
    return RULES[rule]().match(item, in_world)


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
    in_world = world(instances=[box], runners=[online_runner("r1", status="offline")])
    assert match("orphan", instance_item(box), in_world)


def test_orphan_looks_only_at_runner_instances():
    task = instance("t1", runner=False, age=timedelta(days=2))
    assert FORGE_TAG not in task.tags
    assert match("orphan", instance_item(task), world(instances=[task])) is None


def test_orphan_spares_an_instance_younger_than_the_grace():
    booting = instance("r1", runner=True, age=5 * MINUTE)
    assert match("orphan", instance_item(booting), world(instances=[booting])) is None
    unknown_age = instance("r2", runner=True, age=None)
    assert match("orphan", instance_item(unknown_age), world(instances=[unknown_age])) is None


def test_orphan_spares_a_runner_instance_of_another_repository():
    other = instance("r9", age=HOUR, tags=runner_tags("r9", repo="octo/other"))
    forge = GitHubForge(Scope(repo="octo/repo"), "token")
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
    forge = GitHubForge(Scope(org="octo"), "token")
    in_world = world(instances=[box], runners=[online_runner("r1")], forge=forge)
    assert in_world.last_jobs() == {}  # no network: organizations have no job listing
    assert match("idle", instance_item(box), in_world) is None


# --- stale-state ------------------------------------------------------------------------------


def test_stale_state_matches_a_live_record_whose_instance_is_gone(make_record):
    record = make_record("gone", state="running")
    reason = match("stale-state", state_item(record), world(records=[record]))
    assert reason == "recorded as running, but no instance of it exists"


@pytest.mark.parametrize("state", ["idle", "destroying", "failed"])
def test_stale_state_matches_every_live_state_but_provisioning(make_record, state):
    record = make_record("gone", state=state)
    assert match("stale-state", state_item(record), world(records=[record]))


def test_stale_state_spares_a_record_whose_instance_exists(make_record):
    record = make_record("here")
    in_world = world(records=[record], instances=[instance("here")])
    assert match("stale-state", state_item(record), in_world) is None


def test_stale_state_spares_a_record_of_a_cloud_not_listed(make_record):
    record = make_record("far", cloud="aws", region="us-east-1")
    assert match("stale-state", state_item(record), world(records=[record])) is None


def test_stale_state_spares_a_record_still_provisioning(make_record):
    record = make_record("new", state="provisioning")
    assert match("stale-state", state_item(record), world(records=[record])) is None


def test_items_offer_only_live_records(make_record):
    live = make_record("live")
    done = make_record("done", state="destroyed")
    names = [item.name for item in cleanup.items(world(records=[live, done]))]
    assert names == ["live"]


# --- stale-registration -----------------------------------------------------------------------


def test_stale_registration_matches_an_offline_ours_without_instance():
    ghost = registration("ghost", status="offline", labels=("gpu", "cml-infra-ghost"))
    reason = match("stale-registration", registration_item(ghost), world(runners=[ghost]))
    assert reason == "offline, and no instance carries its name"


def test_stale_registration_spares_an_online_runner():
    live = registration("live", status="online", labels=("cml-infra-live",))
    assert match("stale-registration", registration_item(live), world(runners=[live])) is None


def test_stale_registration_spares_runners_without_our_label():
    theirs = registration("theirs", status="offline", labels=("gpu",))
    assert match("stale-registration", registration_item(theirs), world(runners=[theirs])) is None


def test_stale_registration_spares_an_offline_runner_whose_instance_exists():
    booting = registration("r1", status="offline", labels=("cml-infra-r1",))
    in_world = world(runners=[booting], instances=[instance("r1", runner=True)])
    assert match("stale-registration", registration_item(booting), in_world) is None


def test_stale_registration_spares_a_runner_on_a_cloud_not_listed(make_record):
    record = make_record("r1", cloud="aws", region="us-east-1")
    offline = registration("r1", status="offline", labels=("cml-infra-r1",))
    in_world = world(runners=[offline], records=[record], listed=("local",))
    assert match("stale-registration", registration_item(offline), in_world) is None


def _since(moment: datetime) -> str:
    return f"cml-infra-since-{int(moment.timestamp())}"


def test_stale_registration_spares_one_registered_within_the_grace():
    # `up` mints a single-job registration before its instance exists; it is not stale yet.
    labels = ("cml-infra-new", "cml-infra-on-local", _since(NOW - MINUTE * 9))
    fresh = registration("new", status="offline", labels=labels)
    assert match("stale-registration", registration_item(fresh), world(runners=[fresh])) is None


def test_stale_registration_matches_one_registered_before_the_grace():
    labels = ("cml-infra-old", "cml-infra-on-local", _since(NOW - MINUTE * 11))
    old = registration("old", status="offline", labels=labels)
    reason = match("stale-registration", registration_item(old), world(runners=[old]))
    assert reason == "offline, and no instance carries its name"


def test_the_since_and_cloud_labels_are_not_runner_names():
    # Only metadata labels: nothing says which runner it is, so it is not ours to judge.
    odd = registration("odd", status="offline", labels=("cml-infra-on-local", _since(NOW)))
    assert match("stale-registration", registration_item(odd), world(runners=[odd])) is None


@pytest.mark.parametrize("label", ["cml-infra-since-", "cml-infra-since-soon"])
def test_a_malformed_since_label_is_no_grace(label):
    ghost = registration("ghost", status="offline", labels=("cml-infra-ghost", label))
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
        assert "untracked" not in [r.name for r in cleanup.choose_rules(None, has_forge)]
    assert [r.name for r in cleanup.choose_rules(["untracked"], False)] == ["untracked"]


# --- choosing rules, matching -----------------------------------------------------------------


def test_default_rules_without_a_forge():
    assert [rule.name for rule in cleanup.choose_rules(None, forge=False)] == DEFAULT_RULES
    assert [rule.name for rule in cleanup.choose_rules([], forge=False)] == DEFAULT_RULES


def test_default_rules_with_a_forge():
    assert [rule.name for rule in cleanup.choose_rules(None, forge=True)] == FORGE_RULES


def test_rules_asked_for_are_the_only_ones():
    chosen = cleanup.choose_rules(["stale-state", "expired"], forge=False)
    assert [rule.name for rule in chosen] == ["stale-state", "expired"]


def test_unknown_rule_lists_the_valid_ones():
    with pytest.raises(UsageError) as caught:
        cleanup.choose_rules(["expird"], forge=True)
    assert caught.value.source == "--rule"
    assert "unknown rule 'expird'" in str(caught.value)
    assert f"valid: {', '.join(RULES)}" in str(caught.value)


@pytest.mark.parametrize("name", ["orphan", "idle", "stale-registration"])
def test_a_forge_rule_without_a_forge_is_a_usage_error(name):
    with pytest.raises(UsageError, match=rf"^--rule: {name} needs a forge: add --repo or --org"):
        cleanup.choose_rules([name], forge=False)


def test_every_rule_is_in_the_cli_help():
    for name in RULES:
        assert f"{name} (" in cli.CLEANUP_RULES_HELP, name
    assert "untracked (opt-in" in cli.CLEANUP_RULES_HELP


def test_one_item_is_matched_once_by_the_first_rule():
    # Expired and orphaned at once: one row, from `expired`, which comes first.
    both = instance("r1", runner=True, age=HOUR, expires_in=-MINUTE)
    in_world = world(instances=[both])
    rules = cleanup.choose_rules(None, forge=True)
    matched = cleanup.match_all(rules, cleanup.items(in_world), in_world)
    assert [(item.name, rule.name) for item, rule, _ in matched] == [("r1", "expired")]


def test_rules_see_only_items_of_their_kind(make_record):
    record = make_record("gone")
    ghost = registration("ghost", status="offline", labels=("cml-infra-ghost",))
    old = instance("old", expires_in=-MINUTE)
    in_world = world(instances=[old], records=[record], runners=[ghost])
    rules = cleanup.choose_rules(None, forge=True)
    matched = cleanup.match_all(rules, cleanup.items(in_world), in_world)
    assert sorted((item.kind, item.name, rule.name) for item, rule, _ in matched) == [
        ("instance", "old", "expired"),
        ("registration", "ghost", "stale-registration"),
        ("state", "gone", "stale-state"),
    ]


# --- the whole run against moto ---------------------------------------------------------------

TYPE = "m7i.large"  # in the aws catalog: rows carry its price
REGIONS = ("us-east-1", "eu-west-1")


def _launch(region, tags=None):
    return ec2.launch(region, tags, instance_type=TYPE)[0]


GONE = {"shutting-down", "terminated"}


@pytest.fixture
def fleet(mocked_aws):
    """Per region: ours expired, ours healthy, and three that are not ours (one untagged, one
    tagged managed=false, one with only our name tag), the last two past their expiry too."""
    past = str(int(time.time()) - 3600)
    future = str(int(time.time()) + 86400)
    ours = {}
    theirs = []
    for region, (old, new) in zip(REGIONS, (("a", "b"), ("c", "d")), strict=True):
        ours[old] = _launch(region, {"cml-infra-managed": "true", "cml-infra-name": old,
                                     "cml-infra-expires": past})  # fmt: skip
        ours[new] = _launch(region, {"cml-infra-managed": "true", "cml-infra-name": new,
                                     "cml-infra-expires": future})  # fmt: skip
        theirs.append(_launch(region))
        theirs.append(_launch(region, {"cml-infra-managed": "false", "cml-infra-name": "x",
                                       "cml-infra-expires": past}))  # fmt: skip
        theirs.append(_launch(region, {"cml-infra-name": "y", "cml-infra-expires": past}))
    return {"ours": ours, "theirs": theirs}


def aws_settings(state, *, max_age=None, dry_run=False, regions=REGIONS) -> Settings:
    return cleanup.settings("aws", regions, max_age, "30m", "10m", dry_run, [], state)


def never_asked(count):
    raise AssertionError(f"confirm must not be called (asked about {count})")


def test_run_destroys_exactly_ours_that_a_rule_matches(fleet, tmp_path, monkeypatch):
    state = StateDir(tmp_path / "state")
    ours = fleet["ours"]
    everything = [*ours.values(), *fleet["theirs"]]

    rows = cleanup.run(aws_settings(state, dry_run=True), state, None, never_asked)
    assert sorted((row.name, row.result) for row in rows) == [("a", "dry run"), ("c", "dry run")]
    rows = cleanup.run(aws_settings(state), state, None, lambda n: False)
    assert {row.result for row in rows} == {"skipped: not confirmed"}
    rows = cleanup.run(aws_settings(state, regions=("eu-west-1",), dry_run=True), state, None,
                       never_asked)  # fmt: skip
    assert [row.name for row in rows] == ["c"]
    assert set(ec2.states(everything).values()) == {"running"}, "a dry run or a no changed things"
    assert not state.root.exists()

    asked = []
    rows = cleanup.run(
        aws_settings(state), state, None, lambda found: asked.append(len(found.matched)) or True
    )
    assert asked == [2]
    assert sorted((row.name, row.id, row.rule, row.action, row.result) for row in rows) == [
        ("a", ours["a"], "expired", "destroy", "destroyed (cloud API)"),
        ("c", ours["c"], "expired", "destroy", "destroyed (cloud API)"),
    ]
    assert {row.region for row in rows} == set(REGIONS)
    price = load_catalog("aws").for_type(TYPE).hourly(False)
    assert {row.hourly_price for row in rows} == {price}
    states = ec2.states(everything)
    assert {states[ours["a"]], states[ours["c"]]} <= GONE
    survivors = [full_id for full_id in states if full_id not in (ours["a"], ours["c"])]
    assert {states[full_id] for full_id in survivors} == {"running"}

    assert cleanup.run(aws_settings(state), state, None, never_asked) == []

    # --max-age: two hours on (moto launched them at the real now), it takes the healthy ones
    # of ours too, and still never one that is not ours.
    later = datetime.now(timezone.utc) + 2 * HOUR
    monkeypatch.setattr(cleanup, "utcnow", lambda: later)
    rows = cleanup.run(aws_settings(state, max_age="1h"), state, None, lambda n: True)
    assert sorted((row.name, row.result) for row in rows) == [
        ("b", "destroyed (cloud API)"),
        ("d", "destroyed (cloud API)"),
    ]
    assert {row.reason for row in rows} == {"2h00m old, over --max-age 1h00m"}
    states = ec2.states(everything)
    assert {states[full_id] for full_id in ours.values()} <= GONE
    assert {states[full_id] for full_id in fleet["theirs"]} == {"running"}


def test_a_record_in_a_region_not_searched_is_left_alone(mocked_aws, tmp_path, make_record):
    future = str(int(time.time()) + 86400)
    far = _launch("eu-west-1", {"cml-infra-managed": "true", "cml-infra-name": "far",
                                "cml-infra-expires": future})  # fmt: skip
    state = StateDir(tmp_path / "state")
    state.save(make_record("far", cloud="aws", region="eu-west-1", instance_id=far))
    settings = aws_settings(state, regions=("us-east-1",))
    rows = cleanup.run(settings, state, None, lambda n: True)
    assert ec2.states([far]) == {far: "running"}, rows
    assert rows == []


# --- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def state_root(tmp_path, monkeypatch):
    root = tmp_path / "state"
    monkeypatch.setenv("CML_INFRA_HOME", str(root))
    for key in ("GITHUB_TOKEN", "CI"):
        monkeypatch.delenv(key, raising=False)
    return root


def invoke(*args, **kwargs):
    return CliRunner().invoke(app, ["cleanup", *args], **kwargs)


def sandbox(root: Path, name: str, *, expires_in: timedelta) -> Path:
    """A local instance as create.sh leaves it, minus the processes: instance.json only."""
    folder = root / "local" / "instances" / name
    folder.mkdir(parents=True)
    now = datetime.now(timezone.utc)
    tags = {"cml-infra-managed": "true", "cml-infra-name": name,
            "cml-infra-expires": str(int((now + expires_in).timestamp()))}  # fmt: skip
    meta = {"id": name, "name": name, "created_at": (now - HOUR).isoformat(), "tags": tags}
    (folder / "instance.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--cloud", "nope"], "error: --cloud: unknown cloud 'nope'"),
        (["--idle", "5x"], "error: --idle: '5x' is not a duration"),
        (["--max-age", "0"], "error: --max-age: "),
        (["--orphan-grace", "soon"], "error: --orphan-grace: 'soon' is not a duration"),
        (["--rule", "nope"], "error: --rule: unknown rule 'nope'; valid: " + ", ".join(RULES)),
        (["--rule", "orphan"], "error: --rule: orphan needs a forge: add --repo or --org"),
        (["--repo", "octo/repo"], "error: --token: no GitHub token"),
        (["--repo", "octo"], "error: --repo: 'octo' is not OWNER/NAME"),
    ],
)
def test_bad_input_is_exit_2_and_one_line(state_root, args, fragment):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(fragment), result.output
    assert result.stdout == ""
    assert not state_root.exists()


def test_json_on_an_empty_state_dir(state_root):
    result = invoke("--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []
    assert "cleanup: 0 matched, 0 failed" in result.stderr


def test_cli_destroys_an_expired_local_instance(state_root):
    old = sandbox(state_root, "old", expires_in=-MINUTE)
    fresh = sandbox(state_root, "fresh", expires_in=HOUR)
    result = invoke("--json", "--yes")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["name"] == "old" and row["rule"] == "expired"
    assert row["result"] == "destroyed (cloud API)"
    assert not old.exists()
    assert fresh.is_dir()
    again = invoke("--json", "--yes")
    assert json.loads(again.stdout) == []


def test_cli_dry_run_changes_nothing(state_root):
    old = sandbox(state_root, "old", expires_in=-MINUTE)
    result = invoke("--dry-run")
    assert result.exit_code == 0, result.output
    assert "dry run" in result.stdout and "old" in result.stdout
    assert old.is_dir()


def test_a_failed_action_is_exit_1_saying_what_and_why(state_root, monkeypatch):
    old = sandbox(state_root, "old", expires_in=-MINUTE)

    def refuse(self, ids):
        raise CmlInfraError(f"local instance {next(iter(ids))}: could not stop it: EPERM")

    monkeypatch.setattr(LocalCloud, "terminate", refuse)
    result = invoke("--json", "--yes")
    assert result.exit_code == 1, result.output
    [row] = json.loads(result.stdout)
    assert row["result"] == "failed: local instance old: could not stop it: EPERM"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: old: failed: local instance old: could not stop it: EPERM"]
    assert "cleanup: 1 matched, 1 failed" in result.stderr
    assert old.is_dir()


def test_on_a_terminal_without_yes_a_no_destroys_nothing(state_root, monkeypatch):
    old = sandbox(state_root, "old", expires_in=-MINUTE)
    monkeypatch.setattr(cleanup, "interactive", lambda: True)
    result = invoke(input="n\n")
    assert result.exit_code == 0, result.output
    assert "destroy or deregister these 1? [y/N]" in result.output
    assert "skipped: not confirmed" in result.stdout
    assert old.is_dir()


def test_on_a_terminal_a_yes_answer_destroys(state_root, monkeypatch):
    old = sandbox(state_root, "old", expires_in=-MINUTE)
    monkeypatch.setattr(cleanup, "interactive", lambda: True)
    result = invoke(input="y\n")
    assert result.exit_code == 0, result.output
    assert "destroyed (cloud API)" in result.stdout
    assert not old.exists()


def test_the_prompt_comes_after_the_items_it_asks_about(state_root, monkeypatch):
    sandbox(state_root, "old", expires_in=-MINUTE)
    monkeypatch.setattr(cleanup, "interactive", lambda: True)
    result = invoke(input="n\n")
    before_prompt = result.output.partition("destroy or deregister")[0]
    assert "old" in before_prompt, result.output
