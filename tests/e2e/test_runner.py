"""GitHub Actions runners on the local cloud, end to end: real Terraform, the runner double, and a
loopback GitHub whose traffic is checked against GitHub's OpenAPI description."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from cml_infra.clouds.base import machine_arch
from cml_infra.forge.github_runner import MINIMUM_VERSION, PLATFORMS
from tests.e2e.conftest import SCOPE, TOKEN, Cli, assert_no_processes_in, processes_in
from tests.fakes.github import TOO_OLD_TO_REGISTER, FakeGitHub
from tests.fakes.runner_double import build_archive

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


def recording(archive: Path, dest: Path) -> Path:
    """The runner double's archive, its config.sh and run.sh first noting, in the runner folder,
    their arguments (argv-seen) and the ACTIONS_RUNNER_INPUT_* variables they were given
    (inputs-seen): a short-lived config.sh cannot be caught in /proc, but it can write."""
    folder = dest / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    note = (
        'here="$(dirname "$0")"\n'
        'printf "%s\\0" "$@" >>"$here/argv-seen"\n'
        'env | sed -n "s/^\\(ACTIONS_RUNNER_INPUT_[A-Z]*\\)=.*/\\1/p" >>"$here/inputs-seen"\n'
    )
    for script in ("config.sh", "run.sh"):
        shebang, body = (folder / script).read_text().split("\n", 1)
        (folder / script).write_text(f"{shebang}\n{note}{body}")
    packed = dest / archive.name
    with tarfile.open(packed, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
    return packed


@pytest.mark.parametrize(("single", "variable"), [(False, "TOKEN"), (True, "JITCONFIG")])
def test_the_registration_secret_is_in_no_argv_of_the_runner(
    runner_cli: Cli, github, archive, tmp_path: Path, single: bool, variable: str
) -> None:
    """config.sh gets the registration token, and run.sh the JIT config, in the variable the
    runner reads (ACTIONS_RUNNER_INPUT_*): /proc/PID/cmdline, which every user of the machine
    can read, never holds it, neither theirs nor the listener's for the runner's whole life."""
    recorded = recording(archive, tmp_path / "recorded")
    up = runner_cli.run("up", "--name", "quiet", "--repo", "octo/repo", "--github-url",
                        github.url, "--runner-archive", str(recorded), "--idle-timeout", "1h",
                        *(["--single"] if single else []))  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert our_runner(github, "quiet")["status"] == "online", "the secret did not reach it"
    (config,) = runner_cli.sandbox("quiet").rglob("agent-config.json")
    secret = json.loads(config.read_text())["runner"]["registration"]["secret"].encode()
    (runner_folder,) = {path.parent for path in runner_cli.sandbox("quiet").rglob("argv-seen")}

    argv_seen = (runner_folder / "argv-seen").read_bytes().split(b"\0")
    assert secret not in b"\0".join(argv_seen)
    assert not {b"--token", b"--jitconfig"} & set(argv_seen)
    assert (runner_folder / "inputs-seen").read_text().split() == [
        f"ACTIONS_RUNNER_INPUT_{variable}"
    ]
    listening = processes_in(runner_cli.state_dir)
    assert any(b"Runner.Listener" in (_read(pid, "cmdline") or b"") for pid in listening)
    assert [pid for pid in listening if secret in (_read(pid, "cmdline") or b"")] == []
    runner_cli.ok("down", "quiet")


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


# --- which runner release the instance installs ------------------------------------------------

# The runner build this machine runs: what a local instance downloads.
PLATFORM = PLATFORMS[machine_arch()]


def download_path(version: str) -> str:
    name = f"actions-runner-{PLATFORM}-{version}.tar.gz"
    return f"/_fake/github.com/actions/runner/releases/download/v{version}/{name}"


def test_up_installs_githubs_latest_runner_release(runner_cli: Cli, github, tmp_path) -> None:
    # No --runner-archive: up asks GitHub for the latest release, and the instance downloads it
    # from the URL GitHub gives and checks it against the checksum in the release notes.
    github.publish_runner("2.331.0", build_archive(tmp_path / "old", version="2.331.0"))
    github.publish_runner("2.333.0", build_archive(tmp_path / "new", version="2.333.0"))
    up = runner_cli.run("up", "--name", "fresh", "--repo", "octo/repo", "--github-url",
                        github.url, "--idle-timeout", "1h")  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert "warning" not in up.stderr
    runner = our_runner(github, "fresh")
    assert runner is not None and runner["status"] == "online"
    assert runner["version"] == "2.333.0", "GitHub sees the release that was installed"
    assert github.downloads == [download_path("2.333.0")]
    log = runner_cli.ok("logs", "fresh")
    assert f"downloading the runner from {github.url}{download_path('2.333.0')}" in log
    assert "Current runner version: '2.333.0'" in log
    assert runner_cli.run("down", "fresh").returncode == 0


def test_up_installs_the_runner_version_asked_for(runner_cli: Cli, github, tmp_path) -> None:
    github.publish_runner("2.331.0", build_archive(tmp_path / "old", version="2.331.0"))
    github.publish_runner("2.333.0", build_archive(tmp_path / "new", version="2.333.0"))
    up = runner_cli.run("up", "--name", "pinned", "--repo", "octo/repo", "--github-url",
                        github.url, "--runner-version", "2.331.0", "--single")  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert our_runner(github, "pinned")["version"] == "2.331.0"
    assert github.downloads == [download_path("2.331.0")]
    assert runner_cli.run("down", "pinned").returncode == 0


def test_a_runner_older_than_githubs_minimum_is_refused_before_anything(runner_cli: Cli, github):
    done = runner_cli.run("up", "--name", "old", "--repo", "octo/repo", "--github-url", github.url,
                          "--runner-version", "2.300.0")  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --runner-version: 2.300.0 is older "), (
        lines
    )
    assert MINIMUM_VERSION in lines[0]
    assert github.requests == [], "nothing is asked of GitHub"
    assert not runner_cli.state_dir.exists(), "nothing is created"


def test_a_checksum_mismatch_stops_the_boot_and_up_fails(runner_cli: Cli, github, tmp_path):
    # The notes publish one checksum, the download has another (a tampered or broken file).
    archive = build_archive(tmp_path / "new", version="2.333.0")
    github.publish_runner("2.333.0", archive, sha256={PLATFORM: "0" * 64}, digests=False)
    done = runner_cli.run("up", "--name", "tampered", "--repo", "octo/repo", "--github-url",
                          github.url, "--startup-timeout", "8s")  # fmt: skip
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    log = runner_cli.ok("logs", "tampered")
    assert f"not the {'0' * 64} it must have" in log
    assert "refusing to install it" in log
    assert "Listening for Jobs" not in log
    assert our_runner(github, "tampered") is None
    assert not runner_cli.sandbox("tampered").exists()
    assert_no_processes_in(runner_cli.state_dir)
    assert runner_cli.status()["tampered"]["state"] == "destroyed"


def test_github_refuses_to_register_a_runner_too_old(runner_cli: Cli, github, tmp_path) -> None:
    # A mirror or a local file may hold any release; GitHub (the double's server) refuses one
    # below its minimum, in its own words, and up fails rather than wait for ever.
    old = build_archive(tmp_path / "old", version="2.321.0")
    done = runner_cli.run("up", "--name", "stale", "--repo", "octo/repo", "--github-url",
                          github.url, "--runner-archive", str(old),
                          "--startup-timeout", "8s")  # fmt: skip
    assert done.returncode == 1
    log = runner_cli.ok("logs", "stale")
    assert TOO_OLD_TO_REGISTER.format(minimum=MINIMUM_VERSION) in log
    assert our_runner(github, "stale") is None
    assert_no_processes_in(runner_cli.state_dir)
