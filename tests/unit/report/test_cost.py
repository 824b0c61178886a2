"""cml_infra.report.cost: what a workflow run's runners cost, from the ledger's records (and,
for runners another run launched, GitHub's list of the run's jobs on the fake GitHub)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import pytest
import requests

from cml_infra import queries
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.forge.github import GitHubForge
from cml_infra.report import cost
from cml_infra.spec import ForgeTarget
from cml_infra.state import StateDir
from tests.fakes.github import FakeGitHub

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
NOW = T0 + timedelta(hours=2)
RUN = cost.Run("100", "octo/repo")
TOKEN = "ghp_report_CANARY_123"
REPO = ForgeTarget(repo="octo/repo")


def ci(run_id="100", attempt="1", repository="octo/repo"):
    return {"repository": repository, "run_id": run_id, "run_attempt": attempt}


def runner(make_record, name, *, created, ended=None, price=0.6, run=None, **changes):
    fields = {
        "cloud": "aws",
        "region": "us-east-1",
        "instance_type": "g4dn.xlarge",
        "gpu": "t4:1",
        "spot": True,
        "hourly_price": price,
        "created_at": created,
        "updated_at": created,
        "state": "destroyed" if ended else "running",
        "ended_at": ended,
        "ci": run,
    }
    return make_record(name, **{**fields, **changes})


@pytest.fixture
def state(tmp_path) -> StateDir:
    return StateDir(tmp_path / "state")


@pytest.fixture
def ledger(state, make_record) -> StateDir:
    """Runners of run 100 (two attempts; one still running, one without a price) and of
    others, which the report leaves out."""
    for record in (
        runner(make_record, "gpu-100-1", created=T0, ended=T0 + timedelta(minutes=30),
               run=ci(attempt="1")),
        runner(make_record, "gpu-100-2", created=T0 + timedelta(minutes=40), price=1.2,
               spot=False, run=ci(attempt="2")),
        runner(make_record, "cpu-100-2", created=T0 + timedelta(minutes=45),
               ended=T0 + timedelta(minutes=50), price=None, gpu=None, instance_type="custom",
               run=ci(attempt="2")),
        runner(make_record, "gpu-101-1", created=T0, run=ci(run_id="101")),
        runner(make_record, "gpu-fork", created=T0, run=ci(repository="fork/repo")),
        runner(make_record, "gpu-by-hand", created=T0),
    ):  # fmt: skip
        state.save(record)
    return state


def test_the_runs_runners_every_attempt_with_a_total(ledger):
    section = cost.section(ledger, RUN, now=NOW)
    assert section == (
        "### What this run cost\n\n"
        "| runner | cloud | type | GPU | spot | region | minutes | $ | note |\n"
        "| --- | --- | --- | --- | --- | --- | ---: | ---: | --- |\n"
        "| gpu-100-1 | aws | g4dn.xlarge | t4:1 | yes | us-east-1 | 30.0 | $0.3000 | attempt 1 |\n"
        "| gpu-100-2 | aws | g4dn.xlarge | t4:1 | no | us-east-1 | 80.0 | $1.6000 "
        "| attempt 2, still running |\n"
        "| cpu-100-2 | aws | custom | - | yes | us-east-1 | 5.0 | - "
        "| attempt 2, no catalog price |\n"
        "| **total** |  |  |  |  |  | 115.0 | at least $1.9000 |  |\n"
        "\nEstimates from the catalog's prices: disks, traffic and taxes are not counted.\n"
    )


def test_dollars_agree_with_status(ledger):
    found = {row.record.name: row.usd for row in cost.rows(ledger.records(), RUN, now=NOW)}
    shown = {row["name"]: row["cost_usd"] for row in queries.status(ledger, True, now=NOW)}
    assert found["gpu-100-1"] == shown["gpu-100-1"] == 0.3


def test_without_a_repository_the_run_id_alone_matches(ledger):
    names = [row.record.name for row in cost.rows(ledger.records(), cost.Run("100"), now=NOW)]
    assert sorted(names) == ["cpu-100-2", "gpu-100-1", "gpu-100-2", "gpu-fork"]


def test_the_repository_is_matched_without_regard_to_case(ledger):
    rows = cost.rows(ledger.records(), cost.Run("101", "Octo/Repo"), now=NOW)
    assert [row.record.name for row in rows] == ["gpu-101-1"]


def test_one_attempt_only_says_no_attempt_and_a_full_price_total_says_no_at_least(
    state, make_record
):
    state.save(runner(make_record, "gpu-1", created=T0, ended=T0 + timedelta(minutes=6),
                      run=ci()))  # fmt: skip
    lines = cost.section(state, RUN, now=NOW).splitlines()
    assert lines[2] == "| runner | cloud | type | GPU | spot | region | minutes | $ |"
    assert lines[4] == "| gpu-1 | aws | g4dn.xlarge | t4:1 | yes | us-east-1 | 6.0 | $0.0600 |"
    assert lines[5] == "| **total** |  |  |  |  |  | 6.0 | $0.0600 |"


def test_a_failed_record_without_an_end_is_counted_until_now(state, make_record):
    state.save(runner(make_record, "gpu-1", created=T0, state="failed", run=ci()))
    [row] = cost.rows(state.records(), RUN, now=NOW)
    assert (row.minutes, row.usd, row.note) == (120.0, 1.2, "failed; counted until now")


def test_no_runner_of_the_run_is_a_one_line_note(state):
    section = cost.section(state, RUN, now=NOW)
    body = section.removeprefix("### What this run cost\n\n")
    assert body.startswith("_No runner of workflow run 100 of octo/repo is in the ledger")
    assert body.count("\n") == 1 and not state.root.exists(), "reading creates no state dir"


# --- runners another run launched (up --reuse-idle) ---------------------------------------------


def test_a_reused_runner_counts_this_runs_jobs_on_it(state, make_record):
    state.save(runner(make_record, "pool", created=T0, run=ci(run_id="55")))
    state.save(runner(make_record, "gpu-100-1", created=T0, ended=T0 + timedelta(minutes=10),
                      run=ci()))  # fmt: skip
    jobs = {
        "pool": [(T0 + timedelta(minutes=20), T0 + timedelta(minutes=30)),
                 (T0 + timedelta(minutes=100), None)],  # still running: until now
        "gpu-100-1": [(T0, T0 + timedelta(minutes=5))],  # launched by this run: counted whole
        "GitHub Actions 2": [(T0, T0 + timedelta(minutes=1))],  # not ours
    }  # fmt: skip
    rows = cost.rows(state.records(), RUN, jobs, now=NOW)
    assert [(r.record.name, r.minutes, r.usd, r.note) for r in rows] == [
        ("gpu-100-1", 10.0, 0.1, ""),
        ("pool", 30.0, 0.3, "reused: this run's jobs only, still running"),
    ]


def test_a_reused_runner_without_job_times_is_marked_and_the_total_is_a_floor(state, make_record):
    state.save(runner(make_record, "pool", created=T0, run=ci(run_id="55")))
    rows = cost.rows(state.records(), RUN, {"pool": [(None, None)]}, now=NOW)
    assert [(r.minutes, r.usd, r.note) for r in rows] == [(None, None, "reused")]
    total = cost.table(rows).splitlines()[-1]
    assert total == "| **total** |  |  |  |  |  | at least 0.0 | at least $0.0000 |  |"


def test_a_reused_name_is_the_launch_alive_when_the_job_started(tmp_path, make_record):
    """In a backend's ledger several launches may share a name."""
    old = runner(make_record, "pool", created=T0, ended=T0 + timedelta(minutes=10), price=9.0,
                 launch_id="a" * 16)  # fmt: skip
    new = runner(make_record, "pool", created=T0 + timedelta(minutes=15), launch_id="b" * 16)
    jobs = {"pool": [(T0 + timedelta(minutes=20), T0 + timedelta(minutes=30))]}
    [row] = cost.rows([old, new], RUN, jobs, now=NOW)
    assert row.record is new and row.usd == 0.1
    assert cost.rows([old], RUN, jobs, now=NOW) == [], "no launch of that name was alive then"


class Refusing:
    def run_runner_jobs(self, run_id, repository=None):
        raise CmlInfraError("github: permission denied (403 Resource not accessible)")


def test_github_refusing_the_job_list_is_said_in_the_report(state, make_record):
    state.save(runner(make_record, "gpu-1", created=T0, ended=T0 + timedelta(minutes=6),
                      run=ci()))  # fmt: skip
    section = cost.section(state, RUN, Refusing(), now=NOW)
    assert "| gpu-1 |" in section
    assert section.endswith(
        "_GitHub's list of this run's jobs could not be read (github: permission denied (403 "
        "Resource not accessible)): runners reused from other runs are missing._\n"
    )


# --- which run ----------------------------------------------------------------------------------


def test_this_run_is_the_actions_run_by_default():
    env = {"GITHUB_RUN_ID": "123", "GITHUB_REPOSITORY": "octo/repo"}
    assert cost.this_run(None, environ=env) == cost.Run("123", "octo/repo")


def test_run_id_overrides_and_the_forges_repository_serves_outside_actions():
    assert cost.this_run("456", environ={"GITHUB_RUN_ID": "123"}) == cost.Run("456")
    assert cost.this_run("456", "octo/repo", environ={}) == cost.Run("456", "octo/repo")
    env = {"GITHUB_REPOSITORY": "bad repo"}
    assert cost.this_run("456", "octo/repo", environ=env) == cost.Run("456", "octo/repo")


@pytest.mark.parametrize(
    ("run_id", "env", "said"),
    [
        (None, {}, "--run-id: no workflow run to report the cost of: give --run-id"),
        (None, {"GITHUB_RUN_ID": "x1"}, "--run-id: no workflow run to report the cost of"),
        ("12a", {"GITHUB_RUN_ID": "1"}, "--run-id: '12a' is not a workflow run id"),
        ("", {}, "--run-id: '' is not a workflow run id"),
    ],
)
def test_no_run_id_is_a_usage_error_naming_run_id(run_id, env, said):
    with pytest.raises(UsageError) as caught:
        cost.this_run(run_id, environ=env)
    assert str(caught.value).startswith(said) and caught.value.exit_code == 2


# --- GitHub: the runners that ran a run's jobs --------------------------------------------------


@pytest.fixture
def gh(no_proxy):
    with FakeGitHub(TOKEN, repos=("octo/repo",), orgs=("octo",)) as fake:
        yield fake
        assert fake.violations == [], fake.violations


def control(gh, path, body=None):
    with requests.Session() as session:
        session.trust_env = False
        reply = session.post(f"{gh.url}/_fake{path}", json=body, timeout=5)
        assert reply.status_code == 200, reply.text


def run_a_job(gh, runner_name: str) -> dict:
    """A job of a run of its own, run to its end by `runner_name`: GitHub's view of it."""
    runner_id = gh.add_runner("octo/repo", runner_name, ["gpu"], status="online")["id"]
    job_id = gh.queue_job(["gpu"], name="train")
    with requests.Session() as session:
        session.trust_env = False
        got = session.get(f"{gh.url}/_fake/runners/{runner_id}/next-job", timeout=5).json()
    assert got["job_id"] == job_id
    control(gh, f"/runners/{runner_id}/job-done", {"job_id": job_id, "conclusion": "success"})
    return gh.job(job_id)


def forge(gh, target=REPO):
    return GitHubForge(dataclasses.replace(target, api_url=gh.url), TOKEN)


def test_run_runner_names_are_the_runners_of_the_runs_jobs(gh):
    job = run_a_job(gh, "pool")
    gh.queue_job(["nobody-has-this"])  # queued in another run: no runner
    assert forge(gh).run_runner_names(str(job["run_id"])) == {"pool"}
    started = datetime.fromisoformat(job["started_at"].replace("Z", "+00:00"))
    done = datetime.fromisoformat(job["completed_at"].replace("Z", "+00:00"))
    assert forge(gh).run_runner_jobs(str(job["run_id"])) == {"pool": [(started, done)]}
    asked = next(r for r in gh.request_log if r["path"].endswith("/jobs"))
    assert asked["query"]["filter"] == "all", "the jobs of every attempt"


def test_an_organizations_forge_asks_the_runs_repository(gh):
    job = run_a_job(gh, "pool")
    org = forge(gh, ForgeTarget(org="octo"))
    assert org.run_runner_names(str(job["run_id"])) == set(), "no repository to ask"
    assert org.run_runner_names(str(job["run_id"]), "octo/repo") == {"pool"}


def test_an_unknown_run_is_githubs_clean_error(gh):
    with pytest.raises(CmlInfraError) as caught:
        forge(gh).run_runner_names("999999")
    assert "404" in str(caught.value) and TOKEN not in str(caught.value)


def test_the_report_counts_a_runner_another_run_launched(gh, state, make_record):
    job = run_a_job(gh, "pool")
    started = datetime.fromisoformat(job["started_at"].replace("Z", "+00:00"))
    state.save(runner(make_record, "pool", created=started - timedelta(hours=1),
                      run=ci(run_id="55")))  # fmt: skip
    section = cost.section(state, cost.Run(str(job["run_id"]), "octo/repo"), forge(gh))
    assert "| pool | aws | g4dn.xlarge | t4:1 | yes | us-east-1 | 0.0 | $0.0000 " in section
    assert "| reused: this run's jobs only |" in section


def test_a_token_that_cannot_read_actions_is_told_so(gh):
    gh.fail_with = (403, {"message": "Resource not accessible by integration"}, None)
    with pytest.raises(CmlInfraError) as caught:
        forge(gh).run_runner_names("501")
    assert "Actions read" in str(caught.value) and TOKEN not in str(caught.value)
