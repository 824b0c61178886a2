"""`cml-infra cleanup` end to end: real Terraform on the local cloud, and for the forge rules the
runner double against the loopback GitHub (tests/fakes/github.py).

Every cleanup here is run with --yes: the child inherits the test's stdin, which may be a
terminal, and a prompt there would wait forever.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.e2e.conftest import SCOPE, TOKEN, Cli, assert_no_processes_in, processes_in
from tests.e2e.test_runner import our_runner, wait_for
from tests.fakes.github import FakeGitHub

pytestmark = pytest.mark.e2e


def cleanup(cli: Cli, *args: str) -> list[dict[str, object]]:
    done = cli.run("cleanup", "--json", "--yes", *args)
    assert done.returncode == 0, f"cleanup {args}: exit {done.returncode}\n{done.stderr}"
    return json.loads(done.stdout)


def summary(rows: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return sorted((row["kind"], row["name"], row["rule"], row["result"]) for row in rows)


def kill_instance(cli: Cli, name: str) -> None:
    """SIGKILL the instance's whole process group: neither its agent nor its runner can react."""
    pgid = int((cli.sandbox(name) / "pgid").read_text().strip())
    os.killpg(pgid, signal.SIGKILL)
    wait_for(lambda: processes_in(cli.sandbox(name)) == [], f"{name}'s processes to die", 10)


def workspace(cli: Cli, name: str) -> Path:
    return cli.state_dir / "runners" / name / "workspace"


def assert_gone(cli: Cli, name: str) -> None:
    assert not cli.sandbox(name).exists(), f"sandbox of {name} left behind"
    assert not workspace(cli, name).exists(), f"workspace of {name} left behind"
    assert cli.status()[name]["state"] == "destroyed"


def runner_up(cli: Cli, github: FakeGitHub, archive: Path, name: str) -> None:
    cli.ok("up", "--name", name, "--repo", "octo/repo", "--github-url", github.url,
           "--runner-archive", str(archive), "--idle-timeout", "1h")  # fmt: skip
    runner = our_runner(github, name)
    assert runner is not None and runner["status"] == "online"


def forge_args(github: FakeGitHub) -> tuple[str, ...]:
    return ("--repo", "octo/repo", "--github-url", github.url)


def age_seconds(cli: Cli, name: str) -> float:
    created = datetime.fromisoformat(str(cli.status()[name]["created_at"]))
    return (datetime.now(timezone.utc) - created).total_seconds()


def delete_registration(github: FakeGitHub, runner_id: int) -> None:
    """DELETE the runner through the fake's REST API, as someone in GitHub's UI would."""
    request = urllib.request.Request(
        f"{github.url}/{SCOPE}/actions/runners/{runner_id}",
        method="DELETE",
        headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/vnd.github+json",
                 "X-GitHub-Api-Version": "2022-11-28"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=5) as reply:
        assert reply.status == 204


# --- no forge ---------------------------------------------------------------------------------


def test_expired_instance_whose_agent_died_is_destroyed_through_terraform(cli: Cli) -> None:
    cli.ok("up", "--name", "dead", "--ttl", "4s", "--idle-timeout", "1h", "--", "sleep", "600")
    cli.ok("up", "--name", "alive", "--ttl", "1h", "--idle-timeout", "1h")
    kill_instance(cli, "dead")
    expires = datetime.fromisoformat(str(cli.status()["dead"]["expires_at"]))
    time.sleep(max(0.0, (expires - datetime.now(timezone.utc)).total_seconds()) + 0.5)

    rows = cleanup(cli, "--dry-run")
    assert summary(rows) == [("instance", "dead", "expired", "dry run")]
    assert str(rows[0]["reason"]).startswith("expired at ")
    assert cli.sandbox("dead").is_dir() and workspace(cli, "dead").is_dir()
    assert cli.status()["dead"]["state"] != "destroyed"

    rows = cleanup(cli)
    assert summary(rows) == [("instance", "dead", "expired", "destroyed (terraform)")]
    assert_gone(cli, "dead")
    assert cli.status()["dead"]["end_reason"] == "cleanup: expired"
    assert cli.status()["alive"]["state"] in {"running", "idle"}
    assert processes_in(cli.sandbox("alive")), "the healthy instance was touched"

    assert cleanup(cli) == []
    cli.ok("down", "alive")
    assert_no_processes_in(cli.state_dir)


def test_record_whose_instance_vanished_is_closed(cli: Cli) -> None:
    cli.ok("up", "--name", "vanished", "--idle-timeout", "1h")
    kill_instance(cli, "vanished")
    shutil.rmtree(cli.sandbox("vanished"))
    # `status` tells the truth (the instance is gone), and its record is still open.
    assert cli.status()["vanished"]["state"] == "ended"

    rows = cleanup(cli)
    assert summary(rows) == [
        ("state", "vanished", "stale-state", "leftovers destroyed, record closed")
    ]
    assert rows[0]["action"] == "forget"
    assert_gone(cli, "vanished")
    assert cleanup(cli) == []
    assert_no_processes_in(cli.state_dir)


# --- forge rules, against the fake GitHub -----------------------------------------------------


def test_idle_runner_is_destroyed_and_deregistered(runner_cli: Cli, github, archive) -> None:
    runner_up(runner_cli, github, archive, "idle1")
    runner_up(runner_cli, github, archive, "worker")
    # Both older than --idle 3s by the time cleanup looks; only worker has run a job since.
    wait_for(lambda: age_seconds(runner_cli, "worker") > 4, "worker to be 4 s old", 10)
    job = github.queue_job(["self-hosted", "cml-infra-worker"], seconds=1)
    wait_for(lambda: github.job(job)["status"] == "completed", "the job to end")
    assert github.job(job)["runner_name"] == "worker"

    rows = cleanup(runner_cli, *forge_args(github), "--idle", "3s")
    assert summary(rows) == [("instance", "idle1", "idle", "destroyed (terraform)")]
    assert str(rows[0]["reason"]).startswith("never ran a job in ")
    assert_gone(runner_cli, "idle1")
    assert our_runner(github, "idle1") is None, "the registration outlived its instance"
    worker = our_runner(github, "worker")
    assert worker is not None and worker["status"] == "online"
    assert runner_cli.status()["worker"]["state"] in {"running", "idle"}

    runner_cli.ok("down", "worker")
    assert our_runner(github, "worker") is None
    assert github.violations == []
    assert_no_processes_in(runner_cli.state_dir)


def test_orphaned_runner_instance_is_destroyed(runner_cli: Cli, github, archive) -> None:
    runner_up(runner_cli, github, archive, "orph")
    # Killed, the runner cannot go offline: GitHub goes on showing it online...
    kill_instance(runner_cli, "orph")
    # (the `dead` rule would take the killed instance at once: this test is orphan's)
    orphan_only = (*forge_args(github), "--orphan-grace", "1s", "--rule", "orphan")
    assert cleanup(runner_cli, *orphan_only, "--dry-run") == []
    # ...until its registration is deleted behind cml-infra's back.
    delete_registration(github, int(our_runner(github, "orph")["id"]))
    assert our_runner(github, "orph") is None

    rows = cleanup(runner_cli, *orphan_only)
    assert summary(rows) == [("instance", "orph", "orphan", "destroyed (terraform)")]
    assert str(rows[0]["reason"]).startswith("no online runner carries cml-infra-orph after ")
    assert_gone(runner_cli, "orph")
    assert cleanup(runner_cli, *forge_args(github), "--orphan-grace", "1s") == []
    assert github.violations == []
    assert_no_processes_in(runner_cli.state_dir)


def test_stale_registration_is_deregistered(runner_cli: Cli, github) -> None:
    github.add_runner(SCOPE, "cml-ghost", labels=["cml-infra-ghost"], status="offline")
    github.add_runner(SCOPE, "their-runner", labels=["gpu"], status="offline")
    github.add_runner(SCOPE, "cml-live", labels=["cml-infra-live"], status="online")

    rows = cleanup(runner_cli, *forge_args(github), "--dry-run")
    assert summary(rows) == [("registration", "cml-ghost", "stale-registration", "dry run")]
    assert len(github.runners(SCOPE)) == 3

    rows = cleanup(runner_cli, *forge_args(github))
    assert summary(rows) == [("registration", "cml-ghost", "stale-registration", "deregistered")]
    assert rows[0]["action"] == "deregister" and rows[0]["region"] == "octo/repo"
    assert sorted(r["name"] for r in github.runners(SCOPE)) == ["cml-live", "their-runner"]
    assert cleanup(runner_cli, *forge_args(github)) == []
    assert github.violations == []
    assert_no_processes_in(runner_cli.state_dir)
