"""cml_infra.agent: the on-instance loop, with time under control, and as the script it ships as."""

from __future__ import annotations

import ast
import json
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from cml_infra import agent
from cml_infra.agent import STATUS_FILE, Agent

AGENT_PY = Path(agent.__file__)


def config(**changes):
    values = {
        "name": "box-1",
        "idle_timeout": 60,
        "expires_at": time.time() + 3600,
        "single": False,
        "command": [],
        "self_destroy": ["true"],
        "poll_seconds": 0.1,
    }
    values.update(changes)
    return values


class FakeTask:
    """Stands in for a Popen: poll() gives None while running, then the exit code."""

    def __init__(self):
        self.code = None
        self.terminated = False

    def poll(self):
        return self.code


@pytest.fixture
def quiet_log(monkeypatch):
    lines = []
    monkeypatch.setattr(agent, "log", lines.append)
    return lines


def test_constructor_reads_the_config(tmp_path):
    a = Agent(
        config(command=["echo", 1], self_destroy=["shutdown", "-h", "now"], single=True),
        tmp_path,
    )
    assert a.command == ["echo", "1"]
    assert a.self_destroy_argv == ["shutdown", "-h", "now"]
    assert a.single is True
    assert a.idle_timeout == 60.0
    assert a.poll == 0.1
    assert a.state == "idle"
    assert a.home == tmp_path


def test_idle_past_timeout_returns_an_idle_reason(tmp_path, quiet_log):
    a = Agent(config(idle_timeout=60), tmp_path)
    start = a.last_activity
    assert a._tick(start + 1) is None
    assert a._tick(start + 59.9) is None
    assert a.state == "idle"
    assert a._tick(start + 60) == "idle for 60s"


def test_running_task_keeps_it_busy(tmp_path, quiet_log):
    a = Agent(config(idle_timeout=60), tmp_path)
    task = FakeTask()
    a.task = task
    start = a.last_activity
    for later in (30, 120, 600):
        assert a._tick(start + later) is None
        assert a.state == "busy"
        assert a.last_activity == start + later
    # The idle clock starts when the task ends.
    task.code = 0
    assert a._tick(start + 700) is None
    assert a.state == "idle"
    assert a.task is None
    assert a.last_exit_code == 0
    assert "task ended with exit code 0" in quiet_log
    assert a._tick(start + 759) is None
    assert a._tick(start + 760) == "idle for 60s"


def test_single_returns_a_reason_once_the_task_ends(tmp_path, quiet_log):
    a = Agent(config(single=True), tmp_path)
    task = FakeTask()
    a.task = task
    now = a.last_activity
    assert a._tick(now + 1) is None
    assert a.state == "busy"
    task.code = 3
    assert a._tick(now + 2) == "single task done"
    assert a.last_exit_code == 3
    assert a.task is None


def test_without_single_a_finished_task_does_not_end_the_instance(tmp_path, quiet_log):
    a = Agent(config(single=False), tmp_path)
    a.task = FakeTask()
    a.task.code = 0
    assert a._tick(a.last_activity + 1) is None


def test_ttl_ends_an_idle_instance_before_its_idle_timeout(tmp_path, quiet_log):
    a = Agent(config(idle_timeout=3600, expires_at=time.time() + 10), tmp_path)
    assert a._tick(a.expires_at - 1) is None
    assert a._tick(a.expires_at) == "ttl reached"


def test_ttl_stops_a_running_task(tmp_path, quiet_log):
    a = Agent(config(command=["sleep", "30"], expires_at=time.time() + 100), tmp_path)
    a._start_task()
    process = a.task
    try:
        assert isinstance(process, subprocess.Popen)
        assert a.tasks_run == 1
        assert (tmp_path / "work").is_dir()
        assert a._tick(time.time()) is None
        assert a.state == "busy"
        assert process.poll() is None
        started = time.monotonic()
        assert a._tick(a.expires_at + 1) == "ttl reached"
        assert time.monotonic() - started < 5
        assert process.poll() == -signal.SIGTERM
        assert a.task is None
        assert a.last_exit_code == -signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_stop_task_kills_a_task_that_ignores_sigterm(tmp_path, quiet_log, monkeypatch):
    monkeypatch.setattr(agent, "TASK_STOP_GRACE", 0.3)
    a = Agent(config(command=["sh", "-c", "trap '' TERM; echo ready; exec sleep 30"]), tmp_path)
    process = a.task = subprocess.Popen(a.command, stdout=subprocess.PIPE)
    try:
        assert process.stdout.readline() == b"ready\n"
        a._stop_task()
        assert process.returncode == -signal.SIGKILL
        assert a.last_exit_code == -signal.SIGKILL
    finally:
        process.stdout.close()
        if process.poll() is None:
            process.kill()
            process.wait()


def test_task_that_cannot_start(tmp_path, quiet_log):
    a = Agent(config(command=[str(tmp_path / "no-such-program")]), tmp_path)
    a._start_task()
    assert a.task is None
    assert a.last_exit_code == 127
    assert a.tasks_run == 0
    assert any("could not start" in line for line in quiet_log)


def _fixed_clock(monkeypatch, now):
    clock = types.SimpleNamespace(
        time=lambda: now, strftime=time.strftime, gmtime=time.gmtime, sleep=time.sleep
    )
    monkeypatch.setattr(agent, "time", clock)


def test_write_status_idle(tmp_path, monkeypatch):
    a = Agent(config(), tmp_path)
    a.last_activity = 1000.0
    _fixed_clock(monkeypatch, 1012.34)
    a._write_status()
    status = json.loads((tmp_path / STATUS_FILE).read_text())
    assert status["state"] == "idle"
    assert status["idle_seconds"] == 12.3
    assert status["last_activity"] == 1000.0
    assert status["updated_at"] == 1012.34
    assert status["name"] == "box-1"
    assert status["expires_at"] == a.expires_at
    assert status["tasks_run"] == 0
    assert status["last_exit_code"] is None
    assert status["reason"] is None
    assert isinstance(status["pid"], int)
    assert [p.name for p in tmp_path.iterdir()] == [STATUS_FILE]


def test_write_status_busy_has_zero_idle_and_a_reason(tmp_path, monkeypatch):
    a = Agent(config(), tmp_path)
    a.last_activity = 1000.0
    a.state = "busy"
    _fixed_clock(monkeypatch, 2000.0)
    a._write_status("ttl reached")
    status = json.loads((tmp_path / STATUS_FILE).read_text())
    assert status["state"] == "busy"
    assert status["idle_seconds"] == 0.0
    assert status["reason"] == "ttl reached"


def test_agent_imports_only_the_standard_library():
    tree = ast.parse(AGENT_PY.read_text(encoding="utf-8"))
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in agent.py"
            modules.add(node.module.split(".")[0])
    assert modules, "no imports found: the check is broken"
    outside = sorted(m for m in modules if m not in sys.stdlib_module_names)
    assert outside == []


def _run_agent(tmp_path, cfg, timeout=20):
    """agent.py as the startup script runs it: a copy beside its config, no site-packages."""
    home = tmp_path / "instance"
    home.mkdir()
    (home / "agent.py").write_text(AGENT_PY.read_text())
    (home / "agent-config.json").write_text(json.dumps(cfg))
    done = subprocess.run(
        [sys.executable, "-I", "-S", "agent.py", "--config", "agent-config.json"],
        cwd=home,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return home, done


def _self_destroy_by_sigterm(record):
    # What the real destroy does to the agent: SIGTERM its process group. $PPID is the agent.
    return ["sh", "-c", f'echo "$CML_INFRA_END_REASON" >"{record}"; kill -TERM "$PPID"']


def test_agent_script_ends_an_idle_instance(tmp_path):
    record = tmp_path / "reason.txt"
    cfg = config(idle_timeout=1, self_destroy=_self_destroy_by_sigterm(record))
    started = time.monotonic()
    home, done = _run_agent(tmp_path, cfg)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 1 <= time.monotonic() - started < 15
    assert record.read_text().strip() == "idle for 1s"
    assert "ending the instance: idle for 1s" in done.stdout
    assert "stopping (SIGTERM)" in done.stdout
    status = json.loads((home / STATUS_FILE).read_text())
    assert status["state"] == "stopped"


def test_agent_script_single_task(tmp_path):
    record = tmp_path / "reason.txt"
    cfg = config(
        single=True,
        idle_timeout=600,
        command=["sh", "-c", "echo task-output; pwd; exit 3"],
        self_destroy=_self_destroy_by_sigterm(record),
    )
    home, done = _run_agent(tmp_path, cfg)
    assert done.returncode == 0, done.stdout + done.stderr
    assert record.read_text().strip() == "single task done"
    assert "task-output" in done.stdout
    assert str(home / "work") in done.stdout
    assert "task ended with exit code 3" in done.stdout
    status = json.loads((home / STATUS_FILE).read_text())
    assert status["tasks_run"] == 1
    assert status["last_exit_code"] == 3


def test_agent_script_needs_a_config(tmp_path):
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(AGENT_PY)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 2
    assert "--config" in done.stderr
