"""The whole loop with real Terraform on the local cloud: up → task → idle/ttl/single → gone."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli, assert_no_processes_in, processes_in

pytestmark = pytest.mark.e2e


def assert_gone(cli: Cli, name: str) -> None:
    assert not cli.sandbox(name).exists(), f"sandbox of {name} left behind"
    assert not (cli.state_dir / "runners" / name / "workspace").exists()
    assert_no_processes_in(cli.sandbox(name))


def test_up_runs_task_then_idles_out(cli: Cli) -> None:
    done = cli.run("up", "--name", "loop1", "--idle-timeout", "3s", "--labels", "gpu,t4",
                   "--budget", "0.01",
                   "--", "sh", "-c", "echo hello; echo to-stderr >&2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "loop1"
    assert "loop1 is running on local" in done.stderr

    row = cli.status()["loop1"]
    assert row["state"] in {"running", "idle"}
    assert row["cloud"] == "local" and row["region"] == "local"
    assert row["labels"] == ["gpu", "t4", "cml-infra-loop1"]
    assert row["hourly_price"] == 0.0 and row["cost_usd"] == 0.0  # this machine is free
    assert cli.sandbox("loop1").is_dir()
    assert processes_in(cli.sandbox("loop1")), "the instance is not running"

    row = cli.wait_state("loop1", {"destroyed"}, timeout=40)
    assert row["end_reason"] == "idle for 3s"
    assert_gone(cli, "loop1")
    log = cli.ok("logs", "loop1")
    assert "hello" in log and "to-stderr" in log
    assert "ending the instance: idle for 3s" in log


def test_status_reports_idle_seconds(cli: Cli) -> None:
    cli.ok("up", "--name", "idler", "--idle-timeout", "1h")
    row = cli.wait_state("idler", {"idle"}, timeout=30)
    deadline = time.monotonic() + 30
    # The agent writes its status every second or so; a loaded machine may be slower.
    while not (isinstance(row["idle_seconds"], float) and row["idle_seconds"] >= 1.0):
        assert time.monotonic() < deadline, f"idle seconds never counted: {row}"
        time.sleep(0.5)
        row = cli.status()["idler"]
    assert row["state"] == "idle"
    created = row["created_at"]
    assert isinstance(created, str) and created.endswith("+00:00")


def test_ttl_ends_a_busy_instance(cli: Cli) -> None:
    cli.ok("up", "--name", "ttl1", "--ttl", "4s", "--idle-timeout", "1h", "--", "sleep", "600")
    assert cli.status()["ttl1"]["state"] == "running"
    row = cli.wait_state("ttl1", {"destroyed"}, timeout=40)
    assert row["end_reason"] == "ttl reached"
    assert_gone(cli, "ttl1")
    assert "ttl reached while the task runs" in cli.ok("logs", "ttl1")


def test_single_ends_after_first_task(cli: Cli) -> None:
    cli.ok("up", "--name", "one", "--single", "--idle-timeout", "1h", "--", "echo", "once")
    row = cli.wait_state("one", {"destroyed"}, timeout=40)
    assert row["end_reason"] == "single task done"
    assert_gone(cli, "one")
    assert "once" in cli.ok("logs", "one")


def test_down_while_running_and_twice(cli: Cli) -> None:
    cli.ok("up", "--name", "busy", "--idle-timeout", "1h", "--", "sleep", "600")
    assert processes_in(cli.sandbox("busy"))
    done = cli.run("down", "busy")
    assert done.returncode == 0, done.stderr
    assert "busy destroyed" in done.stderr
    assert_gone(cli, "busy")
    assert cli.status()["busy"]["state"] == "destroyed"

    again = cli.run("down", "busy")
    assert again.returncode == 0
    assert "already gone" in again.stderr


def test_logs_follow_until_gone(cli: Cli) -> None:
    cli.ok("up", "--name", "follow", "--idle-timeout", "2s", "--", "echo", "followed")
    done = cli.run("logs", "--follow", "follow", timeout=60)
    assert done.returncode == 0, done.stderr
    assert "followed" in done.stdout
    assert "ending the instance" in done.stdout
    assert cli.status()["follow"]["state"] == "destroyed"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_during_apply_rolls_back(cli: Cli, fake_bash, signum: int) -> None:
    env = {**cli.env, **fake_bash("sleep 30")}
    proc = cli.start("up", "--name", "halfway", "--idle-timeout", "1h", env=env)
    sandbox = cli.sandbox("halfway")
    deadline = time.monotonic() + 30
    while not (sandbox / "pgid").exists():  # apply is under way: the instance is booting
        assert time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 130, stderr
    assert f"interrupted by {signal.Signals(signum).name}" in stderr
    assert "rolled back; nothing is left running" in stderr
    assert "Traceback" not in stderr
    assert_gone(cli, "halfway")
    assert cli.status()["halfway"]["state"] == "destroyed"
    # The name is free again.
    cli.ok("up", "--name", "halfway", "--idle-timeout", "1h")


def test_failed_boot_is_rolled_back_with_terraform_diagnostic(cli: Cli, fake_bash) -> None:
    env = {**cli.env, **fake_bash("echo 'no bash for you' >&2; exit 3")}
    proc = cli.start("up", "--name", "broken", env=env)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    error = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, stderr
    assert "terraform apply failed" in error[0]
    assert "local-exec provisioner error" in error[0]
    assert "Traceback" not in stderr
    assert_gone(cli, "broken")
    record = cli.status()["broken"]
    assert record["state"] == "destroyed"
    assert "terraform apply failed" in str(record["error"])


def test_three_concurrent_ups(cli: Cli) -> None:
    names = ["par-a", "par-b", "par-c"]
    procs = [cli.start("up", "--name", n, "--idle-timeout", "1h") for n in names]
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    rows = cli.status()
    assert {rows[n]["state"] for n in names} <= {"running", "idle"}
    assert all(processes_in(cli.sandbox(n)) for n in names)
    cli.ok("down", "--all")
    for name in names:
        assert_gone(cli, name)


def test_same_name_twice(cli: Cli) -> None:
    cli.ok("up", "--name", "dup", "--idle-timeout", "1h")
    again = cli.run("up", "--name", "dup")
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        "error: --name: 'dup' is in use (state running); pick another name "
        "or run `cml-infra down dup` first"
    ]
    assert cli.status()["dup"]["state"] in {"running", "idle"}
    assert processes_in(cli.sandbox("dup"))


def test_same_name_at_once(cli: Cli) -> None:
    procs = [cli.start("up", "--name", "race", "--idle-timeout", "1h") for _ in range(2)]
    results = sorted(p.wait(timeout=120) for p in procs)
    assert results == [0, 2]
    assert cli.status()["race"]["state"] in {"running", "idle"}


def test_state_dir_is_private(cli: Cli) -> None:
    cli.ok("up", "--name", "private", "--idle-timeout", "1h", "--", "echo", "x")
    for path in [cli.state_dir, *cli.state_dir.rglob("*")]:
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode == 0o700, f"{path}: {oct(mode)}"
        else:
            assert mode & 0o077 == 0, f"{path}: {oct(mode)}"


def test_bundled_engine(cli: Cli) -> None:
    done = cli.run("up", "--name", "bundled", "--terraform", "bundled", "--idle-timeout", "1h")
    assert done.returncode == 0, done.stderr
    record = json.loads((cli.state_dir / "runners" / "bundled" / "runner.json").read_text())
    assert record["engine"][-1] == "cml_infra._bundled_terraform"
    cli.ok("down", "bundled")
    assert_gone(cli, "bundled")


def test_render_writes_without_applying(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "rendered"
    done = cli.run("render", "--name", "drawn", "-o", str(out), "--", "echo", "hi")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    assert {p.name for p in out.iterdir()} >= {
        "main.tf",
        "terraform.tfvars.json",
        "startup.sh",
        "module",
    }
    assert not (cli.state_dir / "runners").exists()
    refused = cli.run("render", "--name", "drawn", "-o", str(out))
    assert refused.returncode == 2
    assert "--output" in refused.stderr
    assert os.listdir(out)


def test_reused_name_starts_with_a_fresh_log(cli: Cli) -> None:
    cli.ok("up", "--name", "again", "--single", "--", "echo", "first-life")
    cli.wait_state("again", {"destroyed"}, timeout=40)
    assert "first-life" in cli.ok("logs", "again")
    cli.ok("up", "--name", "again", "--idle-timeout", "1h", "--", "echo", "second-life")
    log = cli.ok("logs", "again")
    assert "first-life" not in log
    deadline = time.monotonic() + 10
    while "second-life" not in log:
        assert time.monotonic() < deadline, log
        time.sleep(0.2)
        log = cli.ok("logs", "again")
