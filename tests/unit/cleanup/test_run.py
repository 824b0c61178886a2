"""cml_infra.cleanup.run: one run (plan, the --max-destroy guard, act, a row per match) against
moto and real local sandboxes, and `cml-infra cleanup` through typer's CliRunner.

No test here reaches a cloud or GitHub: AWS is moto, the local cloud's sandboxes are made by
hand (conftest.py), and a forge is an in-memory list (worlds.ListedForge).
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone

import pytest
from typer.testing import CliRunner

from cml_infra.catalog import load as load_catalog
from cml_infra.cleanup import run as reaper
from cml_infra.cleanup import world as gathering
from cml_infra.cleanup.rules import RULES
from cml_infra.cli import app
from cml_infra.clouds.local import LocalCloud
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.state import StateDir
from tests.fakes import ec2
from tests.unit.cleanup.worlds import HOUR, MINUTE, ListedForge, make_settings, registration

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


def aws_settings(state, *, max_age=None, dry_run=False, regions=REGIONS, max_destroy=50):
    return reaper.settings(
        "aws", regions, max_age, "30m", "10m", dry_run, [], state, max_destroy=max_destroy
    )


def never_asked(found):
    raise AssertionError(f"confirm must not be called (asked about {len(found.matched)})")


def test_run_destroys_exactly_ours_that_a_rule_matches(fleet, tmp_path, monkeypatch):
    state = StateDir(tmp_path / "state")
    ours = fleet["ours"]
    everything = [*ours.values(), *fleet["theirs"]]

    rows = reaper.run(aws_settings(state, dry_run=True), state, None, never_asked)
    assert sorted((row.name, row.result) for row in rows) == [("a", "dry run"), ("c", "dry run")]
    rows = reaper.run(aws_settings(state), state, None, lambda found: False)
    assert {row.result for row in rows} == {"skipped: not confirmed"}
    rows = reaper.run(aws_settings(state, regions=("eu-west-1",), dry_run=True), state, None,
                      never_asked)  # fmt: skip
    assert [row.name for row in rows] == ["c"]
    assert set(ec2.states(everything).values()) == {"running"}, "a dry run or a no changed things"
    assert not state.root.exists()

    asked = []
    rows = reaper.run(
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

    assert reaper.run(aws_settings(state), state, None, never_asked) == []

    # --max-age: two hours on (moto launched them at the real now), it takes the healthy ones
    # of ours too, and still never one that is not ours.
    later = datetime.now(timezone.utc) + 2 * HOUR
    monkeypatch.setattr(gathering, "utcnow", lambda: later)
    rows = reaper.run(aws_settings(state, max_age="1h"), state, None, lambda found: True)
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
    rows = reaper.run(settings, state, None, lambda found: True)
    assert ec2.states([far]) == {far: "running"}, rows
    assert rows == []


# --- --max-destroy ----------------------------------------------------------------------------

OVER = re.compile(
    r"^not done: (\d+) runners to destroy is over --max-destroy (\d+); "
    r"check the plan \(--dry-run\), then raise the limit or give --max-destroy 0$"
)


def test_over_max_destroy_nothing_is_destroyed(fleet, tmp_path):
    state = StateDir(tmp_path / "state")
    everything = [*fleet["ours"].values(), *fleet["theirs"]]
    rows = reaper.run(aws_settings(state, max_destroy=1), state, None, never_asked)
    assert sorted(row.name for row in rows) == ["a", "c"]
    for row in rows:
        assert OVER.match(row.result).groups() == ("2", "1"), row.result
        assert row.failed
    assert set(ec2.states(everything).values()) == {"running"}


def expired_sandboxes(sandboxes, count):
    # Expired sandboxes need no processes: `expired` matches them before `dead` looks.
    return [sandboxes.make(f"old-{n:02d}", agent=None, expires_in=-MINUTE) for n in range(count)]


@pytest.mark.parametrize("limit", [2, 0], ids=["at the limit", "no limit"])
def test_at_max_destroy_or_without_a_limit_all_is_destroyed(state, sandboxes, limit):
    folders = expired_sandboxes(sandboxes, 2)
    settings = make_settings(max_destroy=limit)
    rows = reaper.run(settings, state, None, lambda found: True)
    assert sorted((row.name, row.result) for row in rows) == [
        ("old-00", "destroyed (cloud API)"),
        ("old-01", "destroyed (cloud API)"),
    ]
    assert not any(folder.exists() for folder in folders)


def test_a_dry_run_over_max_destroy_is_still_a_dry_run(state, sandboxes):
    folders = expired_sandboxes(sandboxes, 2)
    rows = reaper.run(make_settings(max_destroy=1, dry_run=True), state, None, never_asked)
    assert {row.result for row in rows} == {"dry run"}
    assert all(folder.is_dir() for folder in folders)


def test_deregistrations_do_not_count_against_max_destroy(state, sandboxes):
    old = sandboxes.make("old", expires_in=-MINUTE)
    ghosts = [registration(f"ghost-{n}", online=False, labels=(f"cml-infra-ghost-{n}",))
              for n in range(3)]  # fmt: skip
    forge = ListedForge(ghosts)
    settings = make_settings(max_destroy=1)
    rows = reaper.run(settings, state, forge, lambda found: True)
    assert sorted((row.name, row.action, row.result) for row in rows) == [
        ("ghost-0", "deregister", "deregistered"),
        ("ghost-1", "deregister", "deregistered"),
        ("ghost-2", "deregister", "deregistered"),
        ("old", "destroy", "destroyed (cloud API)"),
    ]
    assert not old.exists()
    assert forge.listed == []


def test_forgetting_a_record_counts_against_max_destroy(state, sandboxes, make_record):
    old = sandboxes.make("old", expires_in=-MINUTE)
    state.save(make_record("gone"))
    settings = make_settings(max_destroy=1)
    rows = reaper.run(settings, state, None, never_asked)
    assert sorted((row.name, row.action) for row in rows) == [
        ("gone", "forget"),
        ("old", "destroy"),
    ]
    assert {OVER.match(row.result).groups() for row in rows} == {("2", "1")}
    assert old.is_dir()
    assert state.load("gone").state == "running"


def test_max_destroy_is_50_unless_told(state):
    assert reaper.DEFAULT_MAX_DESTROY == 50
    defaults = reaper.settings(None, [], None, "30m", "10m", False, [], state)
    assert defaults.max_destroy == 50
    assert make_settings().max_destroy == 50


def test_a_negative_max_destroy_is_a_usage_error(state):
    with pytest.raises(UsageError, match=r"^--max-destroy: must be 0 \(no limit\) or more"):
        reaper.settings(None, [], None, "30m", "10m", False, [], state, max_destroy=-1)


# --- dead local instances ---------------------------------------------------------------------


def test_dead_local_instances_are_reaped_unless_a_command_works_on_them(
    state, sandboxes, make_record
):
    crashed = sandboxes.make("crashed", agent=None)  # unknown here, past the grace
    agentless = sandboxes.make("agentless", agent="dead", age=MINUTE)
    state.save(make_record("agentless"))  # known here: no grace, however young
    in_use = sandboxes.make("in-use", agent=None)
    state.save(make_record("in-use", state="provisioning"))
    just_made = sandboxes.make("just-made", agent=None, age=MINUTE)  # unknown, within grace
    healthy = sandboxes.make("healthy")
    settings = make_settings()
    with state.lock("in-use", wait=0):
        rows = reaper.run(settings, state, None, lambda found: True)
    assert sorted((row.name, row.rule, row.reason, row.result) for row in rows) == [
        ("agentless", "dead", "it is agent-dead: nothing on it runs or ends it",
         "destroyed (cloud API)"),
        ("crashed", "dead", "it is stopped: nothing on it runs or ends it",
         "destroyed (cloud API)"),
    ]  # fmt: skip
    assert not crashed.exists() and not agentless.exists()
    assert sandboxes.group_ended("agentless")
    assert in_use.is_dir() and just_made.is_dir() and healthy.is_dir()
    assert not sandboxes.group_ended("healthy", timeout=0)


# --- a failed action --------------------------------------------------------------------------


def test_a_failed_action_fails_its_row_only(state, sandboxes, monkeypatch):
    sandboxes.make("a", expires_in=-MINUTE)
    b = sandboxes.make("b", expires_in=-MINUTE)
    real = LocalCloud.terminate

    def refuse_a(self, ids):
        if list(ids) == ["a"]:
            raise CmlInfraError("local instance a: could not stop it: EPERM")
        real(self, ids)

    monkeypatch.setattr(LocalCloud, "terminate", refuse_a)
    rows = reaper.run(make_settings(), state, None, lambda found: True)
    assert sorted((row.name, row.result, row.failed) for row in rows) == [
        ("a", "failed: local instance a: could not stop it: EPERM", True),
        ("b", "destroyed (cloud API)", False),
    ]
    assert not b.exists()


# --- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def state_root(state, monkeypatch):
    monkeypatch.setenv("CML_INFRA_HOME", str(state.root))
    for key in ("GITHUB_TOKEN", "CI"):
        monkeypatch.delenv(key, raising=False)
    return state.root


def invoke(*args, **kwargs):
    return CliRunner().invoke(app, ["cleanup", *args], **kwargs)


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
        (["--max-destroy", "-1"], "error: --max-destroy: must be 0 (no limit) or more"),
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


def test_cli_destroys_an_expired_local_instance(state_root, sandboxes):
    old = sandboxes.make("old", expires_in=-MINUTE)
    fresh = sandboxes.make("fresh", expires_in=HOUR)
    result = invoke("--json", "--yes")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["name"] == "old" and row["rule"] == "expired"
    assert row["result"] == "destroyed (cloud API)"
    assert not old.exists()
    assert fresh.is_dir()
    again = invoke("--json", "--yes")
    assert json.loads(again.stdout) == []


def test_cli_dry_run_changes_nothing(state_root, sandboxes):
    old = sandboxes.make("old", expires_in=-MINUTE)
    result = invoke("--dry-run")
    assert result.exit_code == 0, result.output
    assert "dry run" in result.stdout and "old" in result.stdout
    assert old.is_dir()


def test_a_failed_action_is_exit_1_saying_what_and_why(state_root, sandboxes, monkeypatch):
    old = sandboxes.make("old", expires_in=-MINUTE)

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


@pytest.fixture
def on_a_terminal(monkeypatch):
    monkeypatch.setattr(reaper, "interactive", lambda: True)


def answer(reply: str):
    """`cleanup` on a terminal, answering its prompt with `reply`."""
    result = invoke(input=f"{reply}\n")
    assert result.exit_code == 0, result.output
    return result


def test_on_a_terminal_without_yes_a_no_destroys_nothing(state_root, sandboxes, on_a_terminal):
    old = sandboxes.make("old", expires_in=-MINUTE)
    result = answer("n")
    assert "destroy or deregister these 1? [y/N]" in result.output
    assert "skipped: not confirmed" in result.stdout
    assert old.is_dir()


def test_on_a_terminal_a_yes_answer_destroys(state_root, sandboxes, on_a_terminal):
    old = sandboxes.make("old", expires_in=-MINUTE)
    assert "destroyed (cloud API)" in answer("y").stdout
    assert not old.exists()


def test_the_prompt_comes_after_the_items_it_asks_about(state_root, sandboxes, on_a_terminal):
    sandboxes.make("old", expires_in=-MINUTE)
    result = invoke(input="n\n")
    before_prompt = result.output.partition("destroy or deregister")[0]
    assert "old" in before_prompt, result.output


def test_cli_over_max_destroy_destroys_nothing_and_fails(state_root, sandboxes):
    old = expired_sandboxes(sandboxes, 2)
    result = invoke("--json", "--yes", "--max-destroy", "1")
    assert result.exit_code == 1, result.output
    rows = json.loads(result.stdout)
    assert sorted(row["name"] for row in rows) == ["old-00", "old-01"]
    assert {OVER.match(row["result"]).groups() for row in rows} == {("2", "1")}
    assert all(folder.is_dir() for folder in old)
    assert "cleanup: 2 matched, 2 failed" in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "over --max-destroy 1" in errors[0], result.stderr

    result = invoke("--json", "--yes", "--max-destroy", "0")
    assert result.exit_code == 0, result.output
    assert {row["result"] for row in json.loads(result.stdout)} == {"destroyed (cloud API)"}
    assert not any(folder.exists() for folder in old)


def test_cli_max_destroy_is_50_by_default(state_root, sandboxes):
    folders = expired_sandboxes(sandboxes, 51)
    result = invoke("--json", "--yes")
    assert result.exit_code == 1, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 51
    assert {OVER.match(row["result"]).groups() for row in rows} == {("51", "50")}
    assert all(folder.is_dir() for folder in folders)


def test_cleanup_help_describes_its_own_repo_option(state_root):
    result = CliRunner().invoke(app, ["cleanup", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())
    assert re.search(r"--repo \S+ Look at this repository's runners \(OWNER/NAME\)", text), text
    assert "Run a GitHub Actions runner" not in text
    assert "--max-destroy" in text
