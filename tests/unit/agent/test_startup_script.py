"""The agent's first step, the team's `--startup-script`: run under its `#!` interpreter (else
bash), its output into the instance log, and the instance ended, saying why, when it fails."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from cml_infra.agent.loop import Agent
from tests.unit.agent.test_loop import _run_agent, _self_destroy_by_sigterm, config


def _agent(home: Path, text: str, **changes) -> Agent:
    home.mkdir(exist_ok=True)
    (home / "team-startup-script").write_text(text, encoding="utf-8")
    (home / "team-startup-script").chmod(0o700)
    return Agent(config(startup_script="team-startup-script", **changes), home)


def test_without_the_key_there_is_no_script(tmp_path):
    assert Agent(config(), tmp_path).startup_script is None


def test_a_script_without_a_shebang_runs_under_bash_in_the_home(tmp_path, capfd):
    agent = _agent(tmp_path, '[[ -n "$BASH_VERSION" ]] && echo "bash in $PWD"\n')
    assert agent._run_startup_script(agent.startup_script) is None
    out = capfd.readouterr().out
    assert f"bash in {tmp_path}" in out
    assert f"startup script: running team-startup-script as uid {os.getuid()}" in out
    assert "startup script: done in " in out


def test_a_script_with_a_shebang_runs_under_its_interpreter(tmp_path, capfd):
    agent = _agent(
        tmp_path, f"#!{sys.executable}\nimport sys\nprint('python', sys.version_info[0])\n"
    )
    assert agent._run_startup_script(agent.startup_script) is None
    assert "python 3" in capfd.readouterr().out


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("exit 3\n", "startup script failed: it exited with 3 after "),
        ("kill -KILL $$\n", "startup script failed: it was killed by signal 9 after "),
        ("#!/no/such/interpreter\n", "startup script could not run: "),
    ],
)
def test_a_failing_script_says_why(tmp_path, text, reason, capfd):
    agent = _agent(tmp_path, text)
    said = agent._run_startup_script(agent.startup_script)
    assert said is not None and said.startswith(reason), said


def test_the_ttl_stops_a_script_that_hangs(tmp_path, capfd):
    agent = _agent(tmp_path, "echo $$ >pid\nexec sleep 600\n", expires_at=time.time() + 1)
    started = time.monotonic()
    assert agent._run_startup_script(agent.startup_script) == (
        "ttl reached (while the startup script ran)"
    )
    assert time.monotonic() - started < 15
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_the_agent_runs_it_first_and_no_task_when_it_fails(tmp_path):
    record = tmp_path / "reason.txt"
    cfg = config(
        single=True,
        command=["sh", "-c", "echo task-output"],
        self_destroy=_self_destroy_by_sigterm(record),
        startup_script="team-startup-script",
    )
    home = tmp_path / "instance"
    home.mkdir()
    # The script sees the agent `starting`, then fails.
    (home / "team-startup-script").write_text("cat agent-status.json; echo\nexit 5\n")
    _, done = _run_agent(tmp_path, cfg)
    assert done.returncode == 0, done.stdout + done.stderr
    reason = record.read_text().strip()
    assert reason.startswith("startup script failed: it exited with 5 after "), reason
    assert "task-output" not in done.stdout and "task:" not in done.stdout
    status = next(line for line in done.stdout.splitlines() if line.startswith("{"))
    assert json.loads(status)["state"] == "starting"


def test_the_agent_runs_the_task_after_a_script_that_succeeds(tmp_path):
    record = tmp_path / "reason.txt"
    cfg = config(
        single=True,
        command=["sh", "-c", "echo task-output"],
        self_destroy=_self_destroy_by_sigterm(record),
        startup_script="team-startup-script",
    )
    home = tmp_path / "instance"
    home.mkdir()
    (home / "team-startup-script").write_text("echo team-output\n")
    _, done = _run_agent(tmp_path, cfg)
    assert record.read_text().strip() == "single task done"
    assert done.stdout.index("team-output") < done.stdout.index("task-output"), done.stdout
