"""GitHub Actions runners on the local cloud, end to end: real Terraform, the runner double, and a
loopback GitHub whose traffic is checked against GitHub's OpenAPI description."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import SCOPE, TOKEN, Cli, assert_no_processes_in, processes_in
from tests.fakes.github import FakeGitHub

pytestmark = pytest.mark.e2e


def wait_for(predicate, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def our_runner(github: FakeGitHub, name: str) -> dict | None:
    return next((r for r in github.runners(SCOPE) if r["name"] == name), None)


def test_runner_runs_a_job_then_idles_out(runner_cli: Cli, github, archive) -> None:
    up = runner_cli.run("up", "--name", "gpu1", "--repo", "octo/repo", "--github-url", github.url,
                        "--runner-archive", str(archive), "--labels", "gpu,t4",
                        "--idle-timeout", "4s")  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == "gpu1"
    runner = our_runner(github, "gpu1")
    assert runner is not None and runner["status"] == "online", "up returned before online"
    assert {label["name"] for label in runner["labels"]} >= {"gpu", "t4", "cml-infra-gpu1"}

    job = github.queue_job(["self-hosted", "cml-infra-gpu1"], seconds=6)
    wait_for(lambda: github.job(job)["status"] == "in_progress", "the job to start")
    wait_for(lambda: runner_cli.status()["gpu1"]["state"] == "running", "the agent to see busy")
    wait_for(lambda: github.job(job)["status"] == "completed", "the job to end")
    assert github.job(job)["runner_name"] == "gpu1"

    row = runner_cli.wait_state("gpu1", {"destroyed"}, timeout=40)
    assert row["end_reason"] == "idle for 4s"
    assert not runner_cli.sandbox("gpu1").exists()
    assert_no_processes_in(runner_cli.state_dir)
    log = runner_cli.ok("logs", "gpu1")
    assert "Listening for Jobs" in log and "Running job" in log


def test_single_runner_takes_one_job_and_is_removed(runner_cli: Cli, github, archive) -> None:
    up = runner_cli.run("up", "--name", "once", "--repo", "octo/repo", "--github-url", github.url,
                        "--runner-archive", str(archive), "--single")  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert our_runner(github, "once")["status"] == "online"
    job = github.queue_job(["cml-infra-once"], seconds=1)
    wait_for(lambda: github.job(job)["status"] == "completed", "the job to end")
    row = runner_cli.wait_state("once", {"destroyed"}, timeout=40)
    assert row["end_reason"] == "runner finished its job"
    assert our_runner(github, "once") is None, "a single-job runner outlived its job"
    assert_no_processes_in(runner_cli.state_dir)


def test_down_removes_the_registration(runner_cli: Cli, github, archive) -> None:
    runner_cli.ok("up", "--name", "multi", "--repo", "octo/repo", "--github-url", github.url,
                  "--runner-archive", str(archive), "--idle-timeout", "1h")  # fmt: skip
    assert our_runner(github, "multi") is not None
    done = runner_cli.run("down", "multi")
    assert done.returncode == 0, done.stderr
    assert our_runner(github, "multi") is None
    assert "runner registration removed" in done.stderr
    again = runner_cli.run("down", "multi")
    assert again.returncode == 0


def test_runner_never_online_is_rolled_back(runner_cli: Cli, github, tmp_path: Path) -> None:
    # A runner whose listener never connects: up must not leave its instance behind.
    mute = tmp_path / "mute"
    mute.mkdir()
    for script in ("run.sh", "config.sh"):
        (mute / script).write_text("#!/bin/sh\nexec sleep 600\n")
        (mute / script).chmod(0o755)
    broken = tmp_path / "mute.tar.gz"
    with tarfile.open(broken, "w:gz") as tar:
        for script in ("run.sh", "config.sh"):
            tar.add(mute / script, arcname=script)
    done = runner_cli.run("up", "--name", "mute", "--repo", "octo/repo", "--github-url",
                          github.url, "--runner-archive", str(broken), "--single",
                          "--startup-timeout", "5s")  # fmt: skip
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "did not come online" in errors[0], done.stderr
    assert not runner_cli.sandbox("mute").exists()
    assert_no_processes_in(runner_cli.state_dir)
    assert our_runner(github, "mute") is None
    assert runner_cli.status()["mute"]["state"] == "destroyed"


def test_the_token_leaks_nowhere(runner_cli: Cli, github, archive, tmp_path: Path) -> None:
    seen_in_processes: list[str] = []
    proc = subprocess.Popen(
        [sys.executable, "-m", "cml_infra", "up", "--name", "leak", "--repo", "octo/repo",
         "--github-url", github.url, "--runner-archive", str(archive), "--idle-timeout", "1h"],
        env=runner_cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # The launcher holds the token; nothing it starts may, nor any process of the instance.
    while proc.poll() is None:
        ours = set(descendants(proc.pid)) | set(processes_in(runner_cli.state_dir))
        seen_in_processes += processes_holding(TOKEN, ours, launcher=proc.pid)
        time.sleep(0.05)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    seen_in_processes += processes_holding(TOKEN, set(processes_in(runner_cli.state_dir)))
    logs = runner_cli.ok("logs", "leak")
    status = runner_cli.ok("status", "--all", "--json")
    down = runner_cli.run("down", "leak")
    assert down.returncode == 0
    assert seen_in_processes == []
    for text in (out, err, logs, status, down.stdout, down.stderr):
        assert TOKEN not in text
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaked == []


def descendants(root: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def processes_holding(secret: str, pids: set[int], launcher: int | None = None) -> list[str]:
    """Those of `pids` whose arguments or environment carry `secret`.

    A child the launcher has forked but not yet exec'd still shows the launcher's own memory,
    token included; it is not a leak, and the look after its exec judges the program it runs.
    """
    image = _read(launcher, "cmdline") if launcher else None
    found = []
    for pid in pids:
        before, environ, after = (_read(pid, part) for part in ("cmdline", "environ", "cmdline"))
        if before is None or environ is None or before != after or before == image:
            continue
        found += [f"{pid} {part}: {data[:120]!r}"
                  for part, data in (("cmdline", before), ("environ", environ))
                  if secret.encode() in data]  # fmt: skip
    return found


def _read(pid: int, part: str) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/{part}").read_bytes()
    except OSError:
        return None


def test_reuse_idle_takes_a_warm_runner_until_it_is_busy(runner_cli: Cli, github, archive) -> None:
    common = ("--repo", "octo/repo", "--github-url", github.url, "--runner-archive", str(archive),
              "--labels", "gpu,t4", "--idle-timeout", "1h")  # fmt: skip
    assert runner_cli.ok("up", "--name", "warm", *common).strip() == "warm"
    again = runner_cli.run("up", "--name", "extra", "--reuse-idle", *common)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "warm" and "nothing created" in again.stderr
    assert set(runner_cli.status()) == {"warm"}, "a reused runner needs no second instance"

    job = github.queue_job(["self-hosted", "gpu", "t4"], seconds=30)
    wait_for(lambda: github.job(job)["status"] == "in_progress", "the job to start")
    busy = runner_cli.run("up", "--name", "extra", "--reuse-idle", *common)
    assert busy.returncode == 0, busy.stderr
    assert busy.stdout.strip() == "extra", "the only runner with the labels is busy"
    assert our_runner(github, "extra")["status"] == "online"
    for name in ("warm", "extra"):
        assert runner_cli.run("down", name).returncode == 0
