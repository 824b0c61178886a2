"""cml_infra.agent.loop: the on-instance loop, with time under control, and the agent package
as it ships: written out as `cml_infra_agent/` and run with no site-packages."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from cml_infra import render
from cml_infra.agent import loop
from cml_infra.agent.__main__ import main
from cml_infra.agent.github_runner import Runner
from cml_infra.agent.loop import STATUS_FILE, Agent

AGENT_DIR = Path(loop.__file__).parent


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
    assert a.runner is None


def test_a_runner_section_makes_the_runner_of_its_kind(tmp_path):
    section = {
        "kind": "github",
        "archive": {"path": "/nonexistent", "sha256": "0" * 64},
        "registration": {"kind": "jit", "secret": "ENCODED", "url": "https://github.com/o/r"},
        "name": "box-1",
        "labels": ["gpu"],
        "startup_timeout": 120,
    }
    a = Agent(config(runner=section), tmp_path)
    # Imported only in runner mode: a task-mode instance is not shipped the module.
    assert loop.RUNNERS["github"] == "github_runner"
    assert isinstance(a.runner, Runner)
    assert a.startup_timeout == 120.0
    # A config without a kind (written before there were forges to choose from) is GitHub's.
    del section["kind"]
    assert isinstance(Agent(config(runner=section), tmp_path).runner, Runner)


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
    monkeypatch.setattr(loop, "TASK_STOP_GRACE", 0.3)
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
    monkeypatch.setattr(loop, "time", clock)


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


@pytest.mark.parametrize("planted", [f".{STATUS_FILE}.tmp", STATUS_FILE])
def test_write_status_writes_a_fresh_file_not_through_a_planted_link(tmp_path, planted):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / planted).symlink_to(victim)
    a = Agent(config(), home)
    a._write_status()
    assert victim.read_text() == "precious\n"
    written = home / STATUS_FILE
    assert not written.is_symlink()
    assert json.loads(written.read_text())["name"] == "box-1"
    assert oct(written.stat().st_mode & 0o777) == oct(0o600)
    leftovers = {p.name for p in home.iterdir()} - {STATUS_FILE, planted}
    assert leftovers == set()


def test_write_status_leaves_no_temporary_file_when_it_fails(tmp_path, monkeypatch):
    a = Agent(config(), tmp_path)

    def refuse(src, dst):
        raise OSError("read-only")

    monkeypatch.setattr(loop.os, "replace", refuse)
    with pytest.raises(OSError, match="read-only"):
        a._write_status()
    assert list(tmp_path.iterdir()) == []


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(absolute top-level modules, modules of the package) that a module imports."""
    absolute, relative = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            absolute.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            assert node.module is not None
            absolute.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 1, f"{path.name}: an import from outside the agent package"
            # `from .hooks import log`, or `from . import hooks`
            relative.update([node.module] if node.module else [a.name for a in node.names])
    return absolute, relative


def test_the_agent_imports_only_the_standard_library_and_itself():
    modules = sorted(AGENT_DIR.glob("*.py"))
    own = {path.stem for path in modules}
    assert {"__init__", "__main__", "loop", "hooks", "github_runner"} <= own
    absolute, relative = set(), set()
    for path in modules:
        of_module, of_package = _imports(path)
        absolute |= of_module
        relative |= of_package
    assert absolute and relative, "no imports found: the check is broken"
    assert sorted(m for m in absolute if m not in sys.stdlib_module_names) == []
    assert relative <= own, f"relative imports of no module of the package: {relative - own}"
    # The startup script writes each of these modules, and nothing else.
    assert set(render.agent_files()) == {path.name for path in modules}


def _write_package(home: Path) -> None:
    """The agent package as the startup script writes it: `cml_infra_agent/` in its home."""
    package = home / render.AGENT_PACKAGE
    package.mkdir(parents=True)
    for name, source in render.agent_files().items():
        (package / name).write_text(source + "\n", encoding="utf-8")


def _write_shipped(script: str, home: Path) -> set[str]:
    """The agent package and config exactly as a startup script writes them (its heredocs), and
    the module names; then the shipped agent is built from its config, in a child with the
    standard library only: every module it imports (lazily too: the runner, host.py,
    report.py, task.py) must be among those shipped."""
    found = re.findall(
        r"cat >cml_infra_agent/(\w+\.py) <<'CML_INFRA_AGENT_EOF'\n(.*?)\nCML_INFRA_AGENT_EOF\n",
        script,
        flags=re.DOTALL,
    )
    package = home / render.AGENT_PACKAGE
    package.mkdir(parents=True)
    for name, source in found:
        (package / name).write_text(source + "\n", encoding="utf-8")
    config = script.split("<<'CML_INFRA_CONFIG_EOF'\n")[1].split("\nCML_INFRA_CONFIG_EOF")[0]
    (home / "agent-config.json").write_text(config)
    build = (
        "import json\nfrom pathlib import Path\nfrom cml_infra_agent.loop import Agent\n"
        "config = json.loads(Path('agent-config.json').read_text())\n"
        "Agent(config, Path('.'))\n"
        "if config.get('workdir') or config.get('outputs'):\n    import cml_infra_agent.task\n"
    )
    done = subprocess.run([sys.executable, "-E", "-S", "-c", build], cwd=home,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return {name for name, _ in found}


def _agent(cwd, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """The agent run to its end in `cwd`. No site-packages (-S) and no PYTHON* variables (-E):
    the standard library only. The package is found in the working folder, as on an instance."""
    argv = [sys.executable, "-E", "-S", "-m", render.AGENT_PACKAGE, *args]
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def _run_agent(tmp_path, cfg, timeout=20):
    """The agent as the startup script runs it: a package beside its config, no site-packages."""
    home = tmp_path / "instance"
    _write_package(home)
    (home / "agent-config.json").write_text(json.dumps(cfg))
    return home, _agent(home, "--config", "agent-config.json", timeout=timeout)


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
    _write_package(tmp_path)
    done = _agent(tmp_path)
    assert done.returncode == 2
    assert "--config" in done.stderr


# --- main --end-now: the TTL timer's way in -------------------------------------------------


@pytest.fixture
def agents(monkeypatch):
    """Every Agent made during the test, to reach the one main() builds."""
    made = []
    original = Agent.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Agent, "__init__", init)
    return made


def _config_file(tmp_path, **changes):
    path = tmp_path / "agent-config.json"
    path.write_text(json.dumps(config(**changes)))
    return path


def test_end_now_destroys_once_and_exits_when_stopped(
    tmp_path, quiet_log, monkeypatch, restore_sigterm, agents
):
    record = tmp_path / "destroyed.txt"
    path = _config_file(
        tmp_path, self_destroy=["sh", "-c", f'echo "$CML_INFRA_END_REASON" >>"{record}"']
    )
    sleeps = []

    def sleep(seconds):
        # The cloud ends the VM while the agent waits: SIGTERM arrives and the agent stops.
        sleeps.append(seconds)
        agents[0].stopping = True

    monkeypatch.setattr(loop.time, "sleep", sleep)
    assert main(["--config", str(path), "--end-now", "ttl reached"]) == 0
    assert record.read_text() == "ttl reached\n"
    assert sleeps == [30.0]
    assert "ending the instance: ttl reached" in quiet_log
    status = json.loads((tmp_path / STATUS_FILE).read_text())
    assert (status["state"], status["reason"]) == ("destroying", "ttl reached")
    assert signal.getsignal(signal.SIGTERM) == agents[0]._on_term


def test_end_now_retries_a_failing_destroy_with_backoff(
    tmp_path, quiet_log, monkeypatch, restore_sigterm, agents
):
    path = _config_file(tmp_path, self_destroy=["false"], poll_seconds=1)
    calls = []
    sleeps = []

    def destroy_once(self, reason):
        calls.append(reason)
        return 1

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) > loop.SELF_DESTROY_ATTEMPTS + 2:
            agents[0].stopping = True

    monkeypatch.setattr(Agent, "_destroy_once", destroy_once)
    monkeypatch.setattr(loop.time, "sleep", sleep)
    assert main(["--config", str(path), "--end-now", "ttl reached"]) == 1
    assert calls == ["ttl reached"] * loop.SELF_DESTROY_ATTEMPTS
    assert sleeps[: loop.SELF_DESTROY_ATTEMPTS] == [5.0, 10.0, 20.0, 40.0, 80.0]
    assert set(sleeps[loop.SELF_DESTROY_ATTEMPTS :]) == {1.0}
    assert any("cml-infra cleanup" in line for line in quiet_log)


# --- what the agent keeps in memory ---------------------------------------------------------


def test_a_planted_link_at_the_first_status_name_is_stepped_over(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / f".{STATUS_FILE}.{os.getpid()}.0").symlink_to(victim)
    Agent(config(), home)._write_status()
    assert victim.read_text() == "precious\n"
    assert json.loads((home / STATUS_FILE).read_text())["name"] == "box-1"


def test_isolated_work_leaves_its_imports_in_the_child(tmp_path):
    # A standard module nothing else here imports: the work imports it, the parent never does.
    assert "colorsys" not in sys.modules
    done = tmp_path / "done"

    def work():
        import colorsys

        done.write_text(str(colorsys.rgb_to_hsv(1.0, 0.0, 0.0)))

    loop._isolated(work)
    assert done.read_text() == "(0.0, 1.0, 1.0)"
    assert "colorsys" not in sys.modules


def test_isolated_work_that_fails_raises_its_message_here():
    def work():
        raise RuntimeError("the runner archive's sha256 is 00, not ff")

    with pytest.raises(RuntimeError, match=r"^the runner archive's sha256 is 00, not ff$"):
        loop._isolated(work)


def test_isolated_work_that_dies_says_how():
    with pytest.raises(RuntimeError, match="its process exited with -9"):
        loop._isolated(lambda: os.kill(os.getpid(), signal.SIGKILL))


# Modules that take megabytes and that the watch loop does not need: the runner's install (in
# a child, loop._isolated) and the self-destroys over HTTPS (once, at the end) load them.
HEAVY = {"ssl", "hashlib", "http.client", "urllib.request", "email", "tarfile", "tempfile",
         "shutil", "socket"}  # fmt: skip


def test_the_agent_loads_no_heavy_module_to_watch(tmp_path):
    """What the agent's entry point imports (the package as shipped, no site-packages): none
    of HEAVY, which would keep the idle agent over its 16 MiB target."""
    _write_package(tmp_path)
    probe = (
        "import sys, cml_infra_agent.__main__, cml_infra_agent.host\n"
        "print(' '.join(sorted(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-E", "-S", "-c", probe], cwd=tmp_path,
                          capture_output=True, text=True, check=True)  # fmt: skip
    loaded = set(done.stdout.split())
    assert "cml_infra_agent.loop" in loaded and "cml_infra_agent.host" in loaded
    assert sorted(HEAVY & loaded) == []
