"""The local cloud's scripts and its view of a sandbox, where they touch processes and files
outside the sandbox: a process group is signalled (destroy.sh, create.sh) or counted as the
instance (LocalCloud) only when it provably is the sandbox's — its pgid file holds an integer
above 1 and a live member of that group works in the sandbox — and the log kept at destroy is
written without following a link planted in its place."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cml_infra import clouds, packaged
from cml_infra.state import StateDir

SCRIPTS = packaged.module_dir("local") / "scripts"
# Anything the pgid file may hold that does not name a process group of ours. As root, `kill --
# -1` would signal every process on the machine and `kill -- -0` the caller's own group.
NOT_A_PGID = ["1", "0", "-5", "-1", "abc", "", " ", "12abc", "1 2", "1\n2", "0x10", "+7", "007",
              "99999999999999999999999"]  # fmt: skip
# Records every `kill` the scripts make and performs only the harmless `kill -s 0` probes, so
# that a test can show that nothing else was signalled without risking the machine if it was.
RECORDING_KILL = """
kill() {
  printf '%s\\n' "$*" >>"$KILL_LOG"
  if [ "$1" = "-s" ] && [ "$2" = "0" ]; then
    command kill "$@"
  else
    return 0
  fi
}
. "$0"
"""


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    return StateDir(tmp_path / "state")


@pytest.fixture
def start_group() -> Iterator[Callable[[Path], subprocess.Popen[bytes]]]:
    """Starts `sleep` in a session (so a process group) of its own, working in `cwd`; a thread
    reaps it as soon as it dies, as init would. Whatever still runs is killed at the end."""
    started: list[tuple[subprocess.Popen[bytes], threading.Thread]] = []

    def start(cwd: Path) -> subprocess.Popen[bytes]:
        cwd.mkdir(parents=True, exist_ok=True)
        child = subprocess.Popen(
            ["sleep", "600"], cwd=cwd, start_new_session=True, stdin=subprocess.DEVNULL
        )
        reaper = threading.Thread(target=child.wait, daemon=True)
        reaper.start()
        started.append((child, reaper))
        return child

    yield start
    for child, reaper in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        reaper.join(5)


def make_sandbox(state: StateDir, name: str, pgid: str | None = None) -> Path:
    sandbox = state.root / "local" / "instances" / name
    sandbox.mkdir(parents=True)
    tags = {"cml-infra-managed": "true", "cml-infra-name": name}
    (sandbox / "instance.json").write_text(json.dumps({"id": name, "tags": tags}))
    if pgid is not None:
        (sandbox / "pgid").write_text(pgid)
    return sandbox


def destroy(
    sandbox: Path, *, archive: Path | None = None, kill_log: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "SANDBOX": str(sandbox),
        "LOG_ARCHIVE_DIR": str(archive or ""),
        "GRACE_SECONDS": "1",
    }
    script = str(SCRIPTS / "destroy.sh")
    if kill_log is None:
        argv = ["sh", script]
    else:
        env["KILL_LOG"] = str(kill_log)
        argv = ["sh", "-c", RECORDING_KILL, script]
    return run_script(argv, env)


def run_script(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A script of the local module, run to its end with only `env` for its environment."""
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def signals_sent(kill_log: Path) -> list[str]:
    """The `kill` calls that would have signalled something (the `-s 0` probes are not)."""
    if not kill_log.exists():
        return []
    return [line for line in kill_log.read_text().splitlines() if not line.startswith("-s 0 ")]


def alive(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is None


# --- destroy.sh --------------------------------------------------------------------------------


def test_destroy_stops_the_sandbox_group(state, start_group, tmp_path):
    sandbox = make_sandbox(state, "box-1")
    group = start_group(sandbox)
    (sandbox / "pgid").write_text(f"{group.pid}\n")
    kill_log = tmp_path / "kills"
    done = destroy(sandbox, kill_log=kill_log)
    assert done.returncode == 0, done.stderr
    # Recorded, not performed: the group was proven to be the sandbox's and signalled.
    assert signals_sent(kill_log)[0] == f"-s TERM -- -{group.pid}"
    assert not sandbox.exists()


def test_destroy_stops_a_group_working_below_the_sandbox(state, start_group):
    sandbox = make_sandbox(state, "box-1")
    group = start_group(sandbox / "work" / "deeper")
    (sandbox / "pgid").write_text(f"{group.pid}\n")
    done = destroy(sandbox)
    assert done.returncode == 0, done.stderr
    assert group.wait(10) is not None
    assert not sandbox.exists()


def test_destroy_stops_the_group_under_a_symlinked_state_dir(tmp_path, start_group):
    # The kernel names a process's working folder with every symlink resolved.
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    sandbox = make_sandbox(StateDir(tmp_path / "link" / "state"), "box-1")
    group = start_group(sandbox)
    (sandbox / "pgid").write_text(f"{group.pid}\n")
    done = destroy(sandbox)
    assert done.returncode == 0, done.stderr
    assert group.wait(10) is not None


@pytest.mark.parametrize("where", ["elsewhere", "sibling-with-the-same-prefix", "parent"])
def test_destroy_leaves_an_unrelated_group_alone(state, start_group, tmp_path, where):
    """A stale sandbox whose pgid was reused by another process group: not ours to stop."""
    sandbox = make_sandbox(state, "box-1")
    cwd = {
        "elsewhere": tmp_path / "elsewhere",
        "sibling-with-the-same-prefix": sandbox.parent / "box-10",
        "parent": sandbox.parent,
    }[where]
    unrelated = start_group(cwd)
    (sandbox / "pgid").write_text(f"{unrelated.pid}\n")
    kill_log = tmp_path / "kills"
    done = destroy(sandbox, kill_log=kill_log)
    assert done.returncode == 0, done.stderr
    assert signals_sent(kill_log) == []
    assert not sandbox.exists()
    # And for real, not through the recording `kill`.
    sandbox = make_sandbox(state, "box-2", pgid=f"{unrelated.pid}\n")
    done = destroy(sandbox)
    assert done.returncode == 0, done.stderr
    assert alive(unrelated)
    assert not sandbox.exists()
    assert "destroyed" in done.stdout


@pytest.mark.parametrize("pgid", NOT_A_PGID)
def test_destroy_signals_nothing_for_a_pgid_that_is_not_a_group_id(state, tmp_path, pgid):
    sandbox = make_sandbox(state, "box-1", pgid=pgid)
    kill_log = tmp_path / "kills"
    done = destroy(sandbox, kill_log=kill_log)
    assert done.returncode == 0, done.stderr
    assert signals_sent(kill_log) == []
    assert not sandbox.exists()


def test_destroy_without_a_pgid_file_removes_the_sandbox(state, tmp_path):
    sandbox = make_sandbox(state, "box-1")
    kill_log = tmp_path / "kills"
    done = destroy(sandbox, kill_log=kill_log)
    assert done.returncode == 0, done.stderr
    assert signals_sent(kill_log) == []
    assert not sandbox.exists()


@pytest.mark.parametrize("target", ["file", "folder"])
def test_destroy_keeps_the_log_through_a_fresh_file_not_a_planted_link(state, tmp_path, target):
    sandbox = make_sandbox(state, "box-1")
    (sandbox / "instance.log").write_text("agent line\n")
    archive = tmp_path / "logs"
    archive.mkdir()
    victim = tmp_path / "victim"
    if target == "file":
        victim.write_text("precious\n")
    else:
        victim.mkdir()
    (archive / "instance.log").symlink_to(victim)
    done = destroy(sandbox, archive=archive)
    assert done.returncode == 0, done.stderr
    if target == "file":
        assert victim.read_text() == "precious\n"
    else:
        assert list(victim.iterdir()) == []
    kept = archive / "instance.log"
    assert not kept.is_symlink()
    assert kept.read_text() == "agent line\n"
    assert oct(kept.stat().st_mode & 0o777) == oct(0o600)
    assert sorted(p.name for p in archive.iterdir()) == ["instance.log"]


def test_destroy_replaces_a_kept_log(state, tmp_path):
    sandbox = make_sandbox(state, "box-1")
    (sandbox / "instance.log").write_text("second run\n")
    archive = tmp_path / "logs"
    archive.mkdir()
    (archive / "instance.log").write_text("first run\n")
    done = destroy(sandbox, archive=archive)
    assert done.returncode == 0, done.stderr
    assert (archive / "instance.log").read_text() == "second run\n"
    assert sorted(p.name for p in archive.iterdir()) == ["instance.log"]


# --- create.sh ---------------------------------------------------------------------------------


def test_create_does_not_take_an_unrelated_group_for_its_instance(state, start_group, tmp_path):
    """A startup script that exits early, leaving a pgid file that names another live group:
    the boot fails at once, and the cleanup signals nothing of that group."""
    unrelated = start_group(tmp_path / "elsewhere")
    sandbox = state.root / "local" / "instances" / "box-1"
    sandbox.parent.mkdir(parents=True)
    env = {
        "PATH": os.environ["PATH"],
        "SANDBOX": str(sandbox),
        "STARTUP_SCRIPT": f"echo {unrelated.pid} >pgid\nexit 0\n",
        "INSTANCE_JSON": "{}",
        "READY_TIMEOUT": "20",
    }
    done = run_script(["sh", str(SCRIPTS / "create.sh")], env)
    assert done.returncode == 1
    assert "the startup script exited before the agent started" in done.stderr
    assert alive(unrelated)
    assert not sandbox.exists()


# --- LocalCloud --------------------------------------------------------------------------------


def test_local_cloud_counts_the_sandbox_group_as_running(state, start_group):
    sandbox = make_sandbox(state, "box-1")
    group = start_group(sandbox / "work")
    (sandbox / "pgid").write_text(f"{group.pid}\n")
    [instance] = clouds.get("local", state).list_managed(["local"])
    assert instance.state == "booting"


@pytest.mark.parametrize("where", ["elsewhere", "sibling-with-the-same-prefix"])
def test_local_cloud_calls_a_reused_pgid_stopped(state, start_group, tmp_path, where):
    sandbox = make_sandbox(state, "box-1")
    cwd = tmp_path / "elsewhere" if where == "elsewhere" else sandbox.parent / "box-10x"
    unrelated = start_group(cwd)
    (sandbox / "pgid").write_text(f"{unrelated.pid}\n")
    (sandbox / "agent-status.json").write_text(json.dumps({"state": "busy", "pid": unrelated.pid}))
    found = {i.name: i.state for i in clouds.get("local", state).list_managed(["local"])}
    assert found["box-1"] == "stopped"


@pytest.mark.parametrize("pgid", NOT_A_PGID)
def test_local_cloud_calls_a_pgid_that_is_not_a_group_id_stopped(state, pgid):
    make_sandbox(state, "box-1", pgid=pgid)
    [instance] = clouds.get("local", state).list_managed(["local"])
    assert instance.state == "stopped"


def test_docker_is_refused_on_the_local_cloud_which_installs_nothing_here(tmp_path):
    """Its jobs run as you: installing Docker on this machine is not the instance's to do."""
    from cml_infra.errors import UsageError
    from tests.unit.clouds.specs import resolve, spec_on

    local = clouds.get("local", StateDir(tmp_path))
    with pytest.raises(UsageError) as raised:
        resolve(local, spec_on("local", docker=True))
    assert raised.value.source == "--docker"
    assert resolve(local, spec_on("local", docker=False)).instance_type == "process"
