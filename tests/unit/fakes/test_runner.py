"""The actions/runner double (tests/fakes/runner/, tests/fakes/runner_double.py).

It is run as released: packed by build_archive, unpacked with tar, started through config.sh and
run.sh, against a small in-test stand-in for the fake GitHub's /_fake/ control API.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.fakes import runner_double

SHELLCHECK = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "shellcheck"
WAIT = 5.0  # the bound on every wait for the double; each normally takes well under 1 s
# The double's scripts run `python3` from PATH: this interpreter's, not a slower shim (pyenv).
ENV = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))


class ControlStub:
    """The /_fake/ control API, just as far as the double uses it, with a log of every call."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str, dict | None]] = []
        self.tokens = {"good-token": "repos/octo/repo", "org-token": "orgs/octo"}
        self.runners: dict[int, dict] = {}
        self.queue: list[dict] = []
        self.done: dict[int, str] = {}
        self.next_id = 1
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                stub.handle(self, "GET")

            def do_POST(self):
                stub.handle(self, "POST")

            def log_message(self, format, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> ControlStub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()

    def add_runner(self, name: str, labels=(), ephemeral: bool = False) -> int:
        with self.lock:
            runner_id, self.next_id = self.next_id, self.next_id + 1
            self.runners[runner_id] = {
                "name": name,
                "labels": list(labels),
                "ephemeral": ephemeral,
                "status": "offline",
            }
            return runner_id

    def queue_job(self, name: str, seconds: float = 0.0, exit_code: int = 0) -> int:
        with self.lock:
            job_id = 100 + len(self.queue) + len(self.done)
            self.queue.append(
                {"job_id": job_id, "name": name, "seconds": seconds, "exit_code": exit_code}
            )
            return job_id

    def paths(self, method: str | None = None) -> list[str]:
        with self.lock:
            return [path for m, path, _ in self.calls if method in (None, m)]

    def handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = json.loads(request.rfile.read(length)) if length else None
        with self.lock:
            self.calls.append((method, request.path, body))
            status, payload = self.route(method, request.path, body)
        data = b"" if payload is None else json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def route(self, method: str, path: str, body: dict | None) -> tuple[int, dict | None]:
        if (method, path) == ("POST", "/_fake/register"):
            assert body is not None
            if self.tokens.get(body["token"]) != body["scope"]:
                return 401, {"message": "invalid registration token"}
            runner_id, self.next_id = self.next_id, self.next_id + 1
            self.runners[runner_id] = dict(body, status="offline")
            return 201, {"runner_id": runner_id}
        match = re.fullmatch(r"/_fake/runners/(\d+)/([a-z-]+)", path)
        if not match or int(match[1]) not in self.runners:
            return 404, {"message": "Not Found"}
        runner_id, action = int(match[1]), match[2]
        runner = self.runners[runner_id]
        if (method, action) in (("POST", "online"), ("POST", "offline")):
            runner["status"] = action
            return 200, {}
        if (method, action) == ("GET", "next-job"):
            return (200, self.queue.pop(0)) if self.queue else (204, None)
        if (method, action) == ("POST", "job-done"):
            assert body is not None
            self.done[body["job_id"]] = body["conclusion"]
            if runner.get("ephemeral"):
                del self.runners[runner_id]
            return 200, {}
        return 404, {"message": "Not Found"}


class Proc:
    """A started script whose merged output is collected line by line by a reader thread."""

    def __init__(self, argv: list[str], cwd: Path, env: dict) -> None:
        self.popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            encoding="utf-8",
        )
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()

    def wait_line(self, text: str, timeout: float = WAIT) -> str:
        def found():
            return next((line for line in self.lines if text in line), None)

        with self.changed:
            if not self.changed.wait_for(lambda: found() or self.popen.poll() is not None, timeout):
                pytest.fail(f"no line with {text!r} within {timeout}s; output: {self.lines}")
            line = found()
        assert line is not None, f"exited {self.popen.returncode} before {text!r}: {self.lines}"
        return line

    def wait_exit(self, timeout: float = WAIT) -> int:
        code = self.popen.wait(timeout)
        self.reader.join(timeout)
        return code

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(WAIT)


def wait_until(predicate, timeout: float = WAIT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def children_running(parent: int, marker: str) -> list[int]:
    """Live processes whose parent is `parent` and whose /proc cmdline contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == parent and marker in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return runner_double.build_archive(tmp_path_factory.mktemp("dist"))


@pytest.fixture
def runner_dir(archive, tmp_path) -> Path:
    """A fresh unpacked runner, as an instance would have it after `tar xzf`."""
    folder = tmp_path / "actions-runner"
    folder.mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(folder)], check=True, timeout=WAIT)
    return folder


@pytest.fixture
def stub():
    with ControlStub() as control:
        yield control


@pytest.fixture
def procs():
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


def start(procs: list[Proc], argv: list[str], cwd: Path, **env) -> Proc:
    proc = Proc(argv, cwd, dict(ENV, **env))
    procs.append(proc)
    return proc


def run_script(runner_dir: Path, *argv: str) -> subprocess.CompletedProcess:
    """One of the double's scripts, run to its end in `runner_dir`, its output captured."""
    return subprocess.run(
        argv, cwd=runner_dir, capture_output=True, encoding="utf-8", timeout=WAIT, env=ENV
    )


def configure(runner_dir: Path, url: str, token: str, *extra: str) -> subprocess.CompletedProcess:
    return run_script(
        runner_dir,
        "./config.sh",
        "--url",
        url,
        "--token",
        token,
        "--name",
        "gpu-1",
        "--labels",
        "cml,gpu",
        "--unattended",
        "--replace",
        "--disableupdate",
        *extra,
    )


def jit_config(stub: ControlStub, name: str = "jit-1") -> tuple[int, str]:
    runner_id = stub.add_runner(name, ["self-hosted", "cml"], ephemeral=True)
    config = {
        "runner_id": runner_id,
        "name": name,
        "labels": ["self-hosted", "cml"],
        "server": stub.url,
        "ephemeral": True,
    }
    return runner_id, base64.b64encode(json.dumps(config).encode()).decode()


# --- the archive -----------------------------------------------------------------------------


def test_build_archive_has_the_release_layout_with_executable_bits(archive, tmp_path):
    assert archive.name == f"actions-runner-linux-x64-{runner_double.RUNNER_VERSION}.tar.gz"
    with tarfile.open(archive, "r:gz") as tar:
        members = {member.name: member for member in tar.getmembers()}
    for name in runner_double.EXECUTABLES:
        assert members[name].isfile(), name
        assert members[name].mode & 0o111 == 0o111, f"{name}: {oct(members[name].mode)}"
    assert not [name for name in members if name.startswith(("/", "./", "actions-runner"))]
    assert not [name for name in members if "__pycache__" in name or name == ".runner"]
    digest = runner_double.sha256(archive)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    # Reproducible: the same files pack to the same bytes.
    assert runner_double.sha256(runner_double.build_archive(tmp_path)) == digest


def test_shell_scripts_pass_shellcheck():
    if not SHELLCHECK.exists():
        pytest.skip("no shellcheck in .venv")
    scripts = [str(runner_double.RUNNER_DIR / name) for name in ("config.sh", "run.sh")]
    result = subprocess.run([str(SHELLCHECK), *scripts], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_worker_sleeps_then_exits_with_the_code(runner_dir):
    argv = ["bin/Runner.Worker", "--job-id", "7", "--seconds", "0.1", "--exit-code", "3"]
    assert subprocess.run(argv, cwd=runner_dir, timeout=WAIT, env=ENV).returncode == 3


# --- config.sh -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "token", "scope"),
    [("/octo/repo", "good-token", "repos/octo/repo"), ("/octo", "org-token", "orgs/octo")],
)
def test_config_registers_and_writes_dot_runner(runner_dir, stub, path, token, scope):
    result = configure(
        runner_dir,
        stub.url + path,
        token,
        "--ephemeral",
        "--runnergroup",
        "Default",
        "--work",
        "_work",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "√ Runner successfully added" in result.stdout
    assert "√ Settings Saved." in result.stdout
    assert stub.calls == [
        (
            "POST",
            "/_fake/register",
            {
                "token": token,
                "name": "gpu-1",
                "labels": ["cml", "gpu"],
                "ephemeral": True,
                "scope": scope,
                "version": runner_double.RUNNER_VERSION,
            },
        )
    ]
    settings = json.loads((runner_dir / ".runner").read_text())
    assert settings == {
        "runner_id": 1,
        "name": "gpu-1",
        "labels": ["cml", "gpu"],
        "server": stub.url,
        "ephemeral": True,
    }


def test_config_with_a_rejected_token_exits_1(runner_dir, stub):
    result = configure(runner_dir, stub.url + "/octo/repo", "stale-token")
    assert result.returncode == 1
    assert "401" in result.stderr
    assert not (runner_dir / ".runner").exists()
    assert stub.runners == {}


@pytest.mark.parametrize("missing", ["--url", "--token"])
def test_config_without_url_or_token_exits_1(runner_dir, missing):
    argv = {"--url": "http://127.0.0.1:9/octo/repo", "--token": "t", "--unattended": None}
    del argv[missing]
    flat = [part for key, value in argv.items() for part in (key, value) if part is not None]
    result = run_script(runner_dir, "./config.sh", *flat)
    assert result.returncode == 1
    assert f"Missing required argument {missing}" in result.stderr


def test_config_rejects_unknown_arguments_and_a_second_configuration(runner_dir, stub):
    result = configure(runner_dir, stub.url + "/octo/repo", "good-token", "--bogus")
    assert result.returncode == 1
    assert "Unrecognized command-line input arguments: '--bogus'" in result.stderr
    assert configure(runner_dir, stub.url + "/octo/repo", "good-token").returncode == 0
    again = configure(runner_dir, stub.url + "/octo/repo", "good-token")
    assert again.returncode == 1
    assert "already configured" in again.stderr


def test_config_takes_the_token_from_its_variable_as_the_real_runner_does(runner_dir, stub):
    """ACTIONS_RUNNER_INPUT_TOKEN stands in for --token (the agent passes the secret that way,
    never in argv); a --token given on the command line wins, as in CommandSettings.cs."""
    argv = ["./config.sh", "--url", stub.url + "/octo/repo", "--name", "env-1", "--unattended"]
    env = dict(ENV, actions_runner_input_TOKEN=" good-token ")
    done = subprocess.run(argv, cwd=runner_dir, capture_output=True, encoding="utf-8",
                          timeout=WAIT, env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert stub.calls[-1][2]["token"] == "good-token"

    (runner_dir / ".runner").unlink()
    env["actions_runner_input_TOKEN"] = "stale-token"
    done = subprocess.run([*argv, "--token", "good-token"], cwd=runner_dir, capture_output=True,
                          encoding="utf-8", timeout=WAIT, env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert [call[2]["token"] for call in stub.calls] == ["good-token", "good-token"]


# --- run.sh ----------------------------------------------------------------------------------


def test_run_ephemeral_registration_runs_one_job_in_a_worker_and_exits(runner_dir, stub, procs):
    assert (
        configure(runner_dir, stub.url + "/octo/repo", "good-token", "--ephemeral").returncode == 0
    )
    listener = start(procs, ["./run.sh"], runner_dir)
    listener.wait_line("Listening for Jobs")
    assert stub.runners[1]["status"] == "online"
    version = runner_double.RUNNER_VERSION
    connected = ["√ Connected to GitHub", "", f"Current runner version: '{version}'"]
    assert listener.lines[:3] == connected
    assert stub.calls[1][2] == {"version": version}, "the session carries the runner's version"
    job_id = stub.queue_job("train", seconds=0.6)

    listener.wait_line("Running job: train")
    workers = wait_until(
        lambda: children_running(listener.popen.pid, "Runner.Worker"), what="a Runner.Worker child"
    )
    cmdline = Path(f"/proc/{workers[0]}/cmdline").read_bytes().split(b"\0")
    assert b"--job-id" in cmdline and str(job_id).encode() in cmdline

    assert listener.wait_exit() == 0
    assert stub.done == {job_id: "success"}
    assert listener.wait_line("Job train completed with result: Succeeded")
    assert not alive(workers[0])
    assert 1 not in stub.runners  # the stub, like GitHub, dropped the ephemeral runner


def test_run_persistent_reports_a_failed_job_keeps_listening_and_stops_on_sigterm(
    runner_dir, stub, procs
):
    assert configure(runner_dir, stub.url + "/octo", "org-token").returncode == 0
    listener = start(procs, ["./run.sh"], runner_dir)
    listener.wait_line("Listening for Jobs")
    job_id = stub.queue_job("lint", seconds=0.1, exit_code=3)
    listener.wait_line("Job lint completed with result: Failed")
    assert stub.done == {job_id: "failure"}
    polls = len(stub.paths("GET"))
    wait_until(lambda: len(stub.paths("GET")) > polls, what="polling after the job")
    assert listener.popen.poll() is None

    sent = time.monotonic()
    listener.popen.send_signal(signal.SIGTERM)
    assert listener.wait_exit(2.0) == 0
    assert time.monotonic() - sent < 2.0
    assert stub.paths("POST")[-1] == "/_fake/runners/1/offline"
    assert stub.runners[1]["status"] == "offline"


def test_run_jitconfig_needs_no_config_sh(runner_dir, stub, procs):
    runner_id, encoded = jit_config(stub)
    listener = start(procs, ["./run.sh", "--jitconfig", encoded], runner_dir)
    listener.wait_line("Listening for Jobs")
    assert stub.runners[runner_id]["status"] == "online"
    job_id = stub.queue_job("smoke", seconds=0.1)
    assert listener.wait_exit() == 0
    assert stub.done == {job_id: "success"}
    assert not (runner_dir / ".runner").exists()
    assert "/_fake/register" not in stub.paths()


def test_run_takes_the_jit_config_from_its_variable_and_no_worker_inherits_it(
    runner_dir, stub, procs
):
    runner_id, encoded = jit_config(stub)
    listener = start(procs, ["./run.sh"], runner_dir, ACTIONS_RUNNER_INPUT_JITCONFIG=encoded)
    listener.wait_line("Listening for Jobs")
    assert stub.runners[runner_id]["status"] == "online"
    stub.queue_job("smoke", seconds=1.0)
    workers = wait_until(
        lambda: children_running(listener.popen.pid, "Runner.Worker"), what="a Runner.Worker child"
    )
    environ = Path(f"/proc/{workers[0]}/environ").read_bytes()
    assert b"ACTIONS_RUNNER_INPUT_" not in environ and encoded.encode() not in environ
    assert listener.wait_exit() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_job_stops_the_worker_posts_offline_and_exits_0(
    runner_dir, stub, procs, signum
):
    runner_id, encoded = jit_config(stub)
    listener = start(procs, ["./run.sh", "--jitconfig", encoded], runner_dir)
    listener.wait_line("Listening for Jobs")
    stub.queue_job("long", seconds=60)
    workers = wait_until(
        lambda: children_running(listener.popen.pid, "Runner.Worker"), what="a Runner.Worker child"
    )
    try:
        sent = time.monotonic()
        listener.popen.send_signal(signum)
        assert listener.wait_exit(2.0) == 0
        assert time.monotonic() - sent < 2.0
        assert not alive(workers[0])
        assert stub.paths("POST")[-1] == f"/_fake/runners/{runner_id}/offline"
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_deleted_registration_makes_the_listener_exit_1(runner_dir, stub, procs):
    runner_id, encoded = jit_config(stub)
    listener = start(procs, ["./run.sh", "--jitconfig", encoded], runner_dir)
    listener.wait_line("Listening for Jobs")
    with stub.lock:
        del stub.runners[runner_id]
    assert listener.wait_exit() == 1
    assert listener.wait_line("registration (id 1) has been deleted from the server")


def test_unreachable_server_makes_the_listener_give_up(runner_dir, stub, procs):
    _, encoded = jit_config(stub)
    stub.__exit__()  # nothing listens on that port any more
    listener = start(
        procs, ["./run.sh", "--jitconfig", encoded], runner_dir, RUNNER_DOUBLE_GIVE_UP_SECONDS="0.5"
    )
    assert listener.wait_exit() == 1
    assert listener.wait_line("Cannot reach the server")
    assert not [line for line in listener.lines if "Listening for Jobs" in line]


@pytest.mark.parametrize(
    ("argv", "message"),
    [([], "Not configured"), (["--jitconfig", "not base64!"], "Invalid JIT config")],
)
def test_run_without_a_configuration_exits_1(runner_dir, argv, message):
    result = run_script(runner_dir, "./run.sh", *argv)
    assert result.returncode == 1
    assert message in result.stderr


def test_extracted_layout_matches_the_source(runner_dir):
    for name in runner_double.EXECUTABLES:
        assert os.access(runner_dir / name, os.X_OK), name
        assert (runner_dir / name).read_bytes() == (runner_double.RUNNER_DIR / name).read_bytes()
    assert shutil.which("python3"), "the double's scripts run on python3 from PATH"
