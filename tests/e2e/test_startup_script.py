"""`up --startup-script FILE` on the local cloud, with real Terraform: the team's script runs
before the task or the runner, as whoever runs the sandbox (the local cloud's "root"), its
output in the instance log; a script that fails ends the instance before any work starts."""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

import pytest

from cml_infra.clouds.local import STARTUP_SCRIPT_LIMIT
from tests.e2e.conftest import Cli, assert_no_processes_in

pytestmark = pytest.mark.e2e

TEAM_LINE = "team boot step: the image is ready"


def team_script(tmp_path: Path, body: str) -> Path:
    """A script that prints TEAM_LINE and writes a marker (with its uid) beside the sandbox."""
    marker = tmp_path / "marker"
    script = tmp_path / "s.sh"
    script.write_text(
        f"echo {shlex.quote(TEAM_LINE)}\nid -u >{shlex.quote(str(marker))}\n{body}",
        encoding="utf-8",
    )
    return script


def wait_for_log(cli: Cli, name: str, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = cli.run("logs", name).stdout
        if text in log:
            return log
        assert time.monotonic() < deadline, f"{text!r} never reached the log:\n{log}"
        time.sleep(0.2)


def test_the_script_runs_before_the_task_and_logs_to_the_instance_log(
    cli: Cli, tmp_path: Path
) -> None:
    # Quotes, a `$`, backticks and the heredoc's own delimiter reach the instance untouched.
    body = "printf '%s\\n' 'kept: $HOME `x` \"q\"'\n: <<'X'\nCML_INFRA_STARTUP_SCRIPT_EOF\nX\n"
    script = team_script(tmp_path, body)
    cli.ok("up", "--name", "team", "--single", "--startup-script", str(script), "--",
           "echo", "task output")  # fmt: skip
    row = cli.wait_state("team", {"destroyed"})
    assert row["end_reason"] == "single task done"
    log = wait_for_log(cli, "team", "task output")
    lines = log.splitlines()
    assert lines.index(TEAM_LINE) < lines.index("task output"), log
    assert 'kept: $HOME `x` "q"' in lines, log
    assert (tmp_path / "marker").read_text().strip() == str(os.getuid())
    assert_no_processes_in(cli.state_dir)


def test_a_failing_script_ends_the_instance_before_the_task(cli: Cli, tmp_path: Path) -> None:
    """Task mode: `up` returns once the instance exists (as on every cloud); the instance then
    ends itself without running the task, saying why."""
    script = team_script(tmp_path, "echo 'apt mirror unreachable' >&2\nexit 3\n")
    cli.ok("up", "--name", "failing", "--startup-script", str(script), "--",
           "echo", "task output")  # fmt: skip
    row = cli.wait_state("failing", {"destroyed"})
    assert str(row["end_reason"]).startswith("startup script failed: it exited with 3 after ")
    log = wait_for_log(cli, "failing", "ending the instance: startup script failed")
    assert "apt mirror unreachable" in log
    assert "task output" not in log and "task:" not in log
    assert not cli.sandbox("failing").exists()
    assert_no_processes_in(cli.state_dir)


def test_a_failing_script_fails_up_in_runner_mode(
    runner_cli: Cli, github, archive: Path, tmp_path: Path
) -> None:
    script = team_script(tmp_path, "exit 7\n")
    done = runner_cli.run("up", "--name", "noboot", "--repo", "octo/repo", "--github-url",
                          github.url, "--runner-archive", str(archive), "--single",
                          "--startup-timeout", "20s", "--startup-script", str(script))  # fmt: skip
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert (
        "the instance ended itself before the runner came online: startup script failed: "
        "it exited with 7" in errors[0]
    ), errors[0]
    log = runner_cli.ok("logs", "noboot")
    assert TEAM_LINE in log and "Listening for Jobs" not in log
    assert not runner_cli.sandbox("noboot").exists()
    assert_no_processes_in(runner_cli.state_dir)
    assert runner_cli.status()["noboot"]["state"] == "destroyed"
    assert github.runners("repos/octo/repo") == []


def test_a_script_over_the_limit_fails_before_anything_is_created(cli: Cli, tmp_path: Path) -> None:
    script = tmp_path / "big.sh"
    script.write_text("#" * STARTUP_SCRIPT_LIMIT + "\n", encoding="utf-8")
    done = cli.run("up", "--name", "big", "--startup-script", str(script), "--", "true")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: --startup-script: your script ("), lines[0]
    assert f"caps at {STARTUP_SCRIPT_LIMIT:,} bytes" in lines[0]
    assert not (cli.state_dir / "runners").exists() or "big" not in cli.status()
    assert not cli.sandbox("big").exists()
