"""cml_infra.agent.github_runner, and the agent loop in runner mode: installing the runner
archive, watching its processes, the runner tick, and polling for spot interruption notices
(the probes themselves: test_hooks.py)."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cml_infra.agent import github_runner
from cml_infra.agent.github_runner import Runner, _descendants, _is_worker
from cml_infra.agent.loop import Agent
from tests.fakes.runner_double import EXECUTABLES, build_archive
from tests.fakes.runner_double import sha256 as file_sha256

WAIT = 5.0


pytestmark = pytest.mark.usefixtures("no_proxy")


def runner_config(**changes):
    values = {
        "kind": "github",
        "archive": {"path": "/nonexistent", "sha256": "0" * 64},
        "registration": {"kind": "jit", "secret": "ENCODED", "url": "https://github.com/o/r"},
        "name": "box-1",
        "labels": ["gpu", "cml-infra-box-1"],
        "ephemeral": False,
        "group": None,
        "user": None,
        "preemption": None,
        "startup_timeout": 900,
    }
    values.update(changes)
    return values


@contextlib.contextmanager
def started(argv, **kwargs):
    """A process in a session of its own, killed with its whole group however the test ends."""
    process = subprocess.Popen(argv, start_new_session=True, **kwargs)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=WAIT)


def wait_for(predicate, what, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


# --- Runner.install -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def double_archive(tmp_path_factory):
    return build_archive(tmp_path_factory.mktemp("archive"))


def test_install_extracts_the_verified_archive(tmp_path, double_archive, quiet_log):
    archive = {"path": str(double_archive), "sha256": file_sha256(double_archive)}
    Runner(runner_config(archive=archive), tmp_path, {}).install()
    for name in EXECUTABLES:
        path = tmp_path / "runner" / name
        assert path.is_file(), name
        assert os.access(path, os.X_OK), name
    assert not (tmp_path / "runner.tar.gz").exists(), "the packed copy is removed"


def test_install_refuses_an_archive_with_another_checksum(tmp_path, double_archive, quiet_log):
    archive = {"path": str(double_archive), "sha256": hashlib.sha256(b"other").hexdigest()}
    with pytest.raises(RuntimeError, match="sha256") as raised:
        Runner(runner_config(archive=archive), tmp_path, {}).install()
    assert file_sha256(double_archive) in str(raised.value)
    assert not (tmp_path / "runner").exists(), "nothing is extracted from an unverified archive"


class _FileHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        data = self.server.payload
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass


@pytest.fixture
def archive_origin(double_archive):
    """The double's archive served over HTTP on loopback, at any path: the server's origin."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FileHandler)
    server.payload = double_archive.read_bytes()
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_install_downloads_from_a_url(tmp_path, double_archive, archive_origin, quiet_log):
    url = f"{archive_origin}/runner.tar.gz"
    archive = {"url": url, "sha256": file_sha256(double_archive)}
    (tmp_path / "home").mkdir()  # the agent's home: where its package lives
    Runner(runner_config(archive=archive), tmp_path / "home", {}).install()
    assert (tmp_path / "home" / "runner" / "run.sh").is_file()
    assert any(url in line for line in quiet_log)


def test_install_logs_a_download_url_without_its_credentials(
    tmp_path, double_archive, archive_origin, quiet_log
):
    base = f"{archive_origin}/mirror/runner.tar.gz"
    signed = f"{base}?X-Amz-Signature=SIGNED-SECRET&token=QUERY-SECRET#FRAGMENT-SECRET"
    archive = {"url": signed, "sha256": file_sha256(double_archive)}
    Runner(runner_config(archive=archive), tmp_path, {}).install()
    assert (tmp_path / "runner" / "run.sh").is_file(), "the download used the whole URL"
    assert f"downloading the runner from {base}" in quiet_log
    assert not [line for line in quiet_log if "SECRET" in line]


def test_install_logs_a_mirror_url_without_its_userinfo(tmp_path, quiet_log):
    url = "https://mirror-user:MIRROR-PASSWORD@127.0.0.1:9/path/actions-runner.tar.gz?sig=S3CRET"
    archive = {"url": url, "sha256": "0" * 64}
    with pytest.raises(OSError):
        Runner(runner_config(archive=archive), tmp_path, {}).install()
    assert quiet_log[0] == (
        "downloading the runner from https://127.0.0.1:9/path/actions-runner.tar.gz"
    )
    assert not [line for line in quiet_log if "PASSWORD" in line or "S3CRET" in line]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://user:pa%40ss@mirror.example/path/actions-runner.tar.gz?X-Amz-Signature=abc",
            "https://mirror.example/path/actions-runner.tar.gz",
        ),
        ("https://token@mirror.example:8443/a.tgz#x", "https://mirror.example:8443/a.tgz"),
        ("https://u:p@[::1]:8443/a.tgz?s=1", "https://[::1]:8443/a.tgz"),
        ("https://mirror.example/a.tgz", "https://mirror.example/a.tgz"),
        ("http://[::1/a.tgz?s=SECRET", "a URL that does not parse"),
    ],
)
def test_loggable_url_drops_userinfo_query_and_fragment(url, shown):
    assert github_runner._loggable_url(url) == shown


# --- Runner processes: _descendants, _is_worker, start, busy, stop ----------------------------


def test_descendants_finds_a_grandchild(tmp_path):
    marker = "7.25"  # a sleep argument no other process is likely to have
    with started(["sh", "-c", f'sh -c "sleep {marker} & wait" & wait']) as root:
        found = wait_for(
            lambda: [p for p in _descendants(root.pid) if cmdline(p)[:2] == ["sleep", marker]],
            "the grandchild sleep",
        )
        [grandchild] = found
        parent = int(Path(f"/proc/{grandchild}/stat").read_text().rpartition(")")[2].split()[1])
        assert parent != root.pid, "it is a grandchild, not a child"
        assert parent in _descendants(root.pid)
    assert _descendants(root.pid) == []


def _worker_script(folder: Path) -> Path:
    script = folder / "bin" / "Runner.Worker"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text("import time\ntime.sleep(5)\n")
    return script


def test_is_worker_by_argv(tmp_path):
    script = _worker_script(tmp_path)
    with (
        started([sys.executable, str(script), "--job-id", "1"]) as worker,
        started(["sleep", "5"]) as sleeper,
    ):
        # Until a child has exec'd, /proc shows the argv it inherited from this process.
        wait_for(lambda: _is_worker(worker.pid), "the worker's argv")
        wait_for(lambda: cmdline(sleeper.pid)[:1] == ["sleep"], "the sleeper's argv")
        assert not _is_worker(sleeper.pid)
        assert not _is_worker(os.getpid())
    assert not _is_worker(worker.pid), "a reaped process is no worker"


def _fake_runner_dir(home: Path, run_sh: str) -> None:
    folder = home / "runner"
    folder.mkdir(parents=True)
    run = folder / "run.sh"
    run.write_text("#!/bin/sh\n" + run_sh)
    run.chmod(0o755)


def test_start_relays_listening_and_sees_a_worker(tmp_path, quiet_log, capsys):
    worker = _worker_script(tmp_path)
    flag = tmp_path / "go"
    # Like actions/runner's run.sh: the worker is a child, and a SIGINT is forwarded to it
    # (as TERM: a background child of a non-interactive sh starts with SIGINT ignored).
    _fake_runner_dir(
        tmp_path,
        'echo "args: $*"\necho "jit: $ACTIONS_RUNNER_INPUT_JITCONFIG"\n'
        'echo "√ Connected to GitHub"\necho "Listening for Jobs"\n'
        f'while [ ! -e "{flag}" ]; do sleep 0.05; done\n'
        f'"{sys.executable}" "{worker}" --job-id 9 &\n'
        "pid=$!\ntrap 'kill -TERM $pid' INT TERM\nwait $pid\nwait $pid\n",
    )
    runner = Runner(runner_config(), tmp_path, {})
    spawned: list[int] = []
    try:
        runner.start()
        assert runner.ephemeral, "a JIT registration is ephemeral"
        wait_for(lambda: runner.listening, "the listening line")
        assert runner.exit_code() is None
        assert not runner.busy()
        flag.touch()
        wait_for(runner.busy, "the worker to show up")
        spawned = _descendants(runner.process.pid)
        runner.stop(grace=WAIT)
        assert runner.exit_code() is not None
        assert not runner.busy()
    finally:
        if runner.process is not None and runner.process.poll() is None:
            spawned += _descendants(runner.process.pid)
            runner.process.kill()
            runner.process.wait(timeout=WAIT)
        for pid in spawned:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    out = capsys.readouterr().out
    # The JIT config reaches run.sh in the variable the runner reads, never in its argv.
    assert "[runner] args:\n" in out and "[runner] jit: ENCODED\n" in out
    assert "[runner] Listening for Jobs" in out


def test_start_with_a_token_runs_config_sh_first(tmp_path, quiet_log, monkeypatch):
    argv_file, token_file = tmp_path / "config-args", tmp_path / "config-token"
    _fake_runner_dir(tmp_path, "exec sleep 5\n")
    config_sh = tmp_path / "runner" / "config.sh"
    config_sh.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" >"{argv_file}"\n'
        f'printf "%s" "$ACTIONS_RUNNER_INPUT_TOKEN" >"{token_file}"\n'
    )
    config_sh.chmod(0o755)
    # One the agent's own environment holds (a launcher's, on the local cloud) is not passed on.
    monkeypatch.setenv("ACTIONS_RUNNER_INPUT_URL", "https://evil.example/o/r")
    registration = {"kind": "token", "secret": "AREG", "url": "https://github.com/o/r"}
    runner = Runner(
        runner_config(registration=registration, ephemeral=True, group="gpu-pool"), tmp_path, {}
    )
    try:
        runner.start()
        environ = wait_for(lambda: Path(f"/proc/{runner.process.pid}/environ").read_bytes(),
                           "run.sh's environment")  # fmt: skip
    finally:
        runner.stop(grace=2.0)
    args = argv_file.read_text().splitlines()
    pairs = dict(itertools.pairwise(args))
    assert pairs["--url"] == "https://github.com/o/r"
    # The token reaches config.sh in the variable the runner reads, and nothing else holds it.
    assert token_file.read_text() == "AREG"
    assert "AREG" not in args and "--token" not in args
    assert b"AREG" not in environ and b"ACTIONS_RUNNER_INPUT_" not in environ
    assert pairs["--name"] == "box-1"
    assert pairs["--labels"] == "gpu,cml-infra-box-1"
    assert pairs["--runnergroup"] == "gpu-pool"
    assert {"--unattended", "--replace", "--disableupdate", "--ephemeral"} <= set(args)


def test_start_fails_when_config_sh_fails(tmp_path, quiet_log):
    _fake_runner_dir(tmp_path, "exec sleep 5\n")
    config_sh = tmp_path / "runner" / "config.sh"
    config_sh.write_text("#!/bin/sh\nexit 3\n")
    config_sh.chmod(0o755)
    registration = {"kind": "token", "secret": "AREG", "url": "https://github.com/o/r"}
    runner = Runner(runner_config(registration=registration), tmp_path, {})
    with pytest.raises(RuntimeError, match=r"config\.sh exited with 3"):
        runner.start()
    assert runner.process is None


TOKEN_REGISTRATION = {"kind": "token", "secret": "AREG", "url": "https://github.com/o/r"}


@pytest.mark.parametrize(
    "changes",
    [
        {"name": "--ephemeral"},
        {"labels": ["gpu", "--replace"]},
        {"labels": ["-x"]},
        {"group": "--ephemeral"},
        {"group": "gpu\npool"},
        {"name": "box\x00-1"},
        {"registration": {**TOKEN_REGISTRATION, "url": "--url"}},
        {"registration": {**TOKEN_REGISTRATION, "secret": "-AREG"}},
        {"registration": {**TOKEN_REGISTRATION, "secret": "AREG\n--ephemeral"}},
    ],
)
def test_start_passes_config_sh_no_value_that_reads_as_an_option(tmp_path, quiet_log, changes):
    """Defense in depth (the launcher validates first): a value starting with '-' would be read
    by config.sh as a flag of its own, a newline or NUL would end or split it."""
    argv_file = tmp_path / "config-args"
    _fake_runner_dir(tmp_path, "exec sleep 5\n")
    config_sh = tmp_path / "runner" / "config.sh"
    config_sh.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >"{argv_file}"\n')
    config_sh.chmod(0o755)
    config = runner_config(**{"registration": TOKEN_REGISTRATION, **changes})
    runner = Runner(config, tmp_path, {})
    with pytest.raises(RuntimeError, match="refusing to pass") as raised:
        runner.start()
    assert not argv_file.exists(), "config.sh ran"
    assert runner.process is None
    assert "AREG" not in str(raised.value), "the registration token is never shown"


def test_start_passes_run_sh_no_jit_config_that_reads_as_an_option(tmp_path, quiet_log):
    started_file = tmp_path / "started"
    _fake_runner_dir(tmp_path, f': > "{started_file}"\nexec sleep 5\n')
    registration = {"kind": "jit", "secret": "--once", "url": "https://github.com/o/r"}
    runner = Runner(runner_config(registration=registration), tmp_path, {})
    with pytest.raises(RuntimeError, match="refusing to pass"):
        runner.start()
    assert runner.process is None and not started_file.exists()


def test_stop_kills_a_runner_that_ignores_sigint(tmp_path, quiet_log):
    _fake_runner_dir(
        tmp_path, "trap '' INT\necho Listening for Jobs\nwhile :; do sleep 0.05; done\n"
    )
    runner = Runner(runner_config(), tmp_path, {})
    runner.start()
    try:
        wait_for(lambda: runner.listening, "the listening line")
        started_at = time.monotonic()
        runner.stop(grace=0.3)
        assert time.monotonic() - started_at < WAIT
        assert runner.exit_code() == -signal.SIGKILL
    finally:
        if runner.process.poll() is None:
            runner.process.kill()
            runner.process.wait(timeout=WAIT)
    runner.stop()  # a stopped runner: nothing to do


# --- Agent._tick_runner with a scripted runner ------------------------------------------------


class ScriptedRunner:
    """The attributes and methods _tick_runner uses, answering as the test says."""

    def __init__(self, *, listening=True, started_at=0.0, ephemeral=False, code=None,
                 busy=(False,), notice=None):  # fmt: skip
        self.listening = listening
        self.started_at = started_at
        self.ephemeral = ephemeral
        self.code = code
        self.busy_answers = list(busy)
        self.busy_calls = 0
        self.notice = notice
        self.notice_calls: list[float] = []
        self.stops = 0

    def exit_code(self):
        return self.code

    def busy(self):
        self.busy_calls += 1
        if len(self.busy_answers) > 1:
            return self.busy_answers.pop(0)
        return self.busy_answers[0]

    def stop(self, grace=30.0):
        self.stops += 1

    def preemption_notice(self, now):
        self.notice_calls.append(now)
        return self.notice


NOW = 1_000_000.0


def runner_agent(tmp_path, runner, idle_timeout=60, ttl=3600, startup_timeout=100):
    config = {
        "name": "box-1",
        "idle_timeout": idle_timeout,
        "expires_at": NOW + ttl,
        "command": [],
        "self_destroy": ["true"],
        "poll_seconds": 0.1,
        "runner": runner_config(startup_timeout=startup_timeout),
    }
    made = Agent(config, tmp_path)
    assert made.startup_timeout == startup_timeout
    made.runner = runner
    made.last_activity = NOW
    return made


def test_not_listening_within_the_startup_timeout_waits(tmp_path, quiet_log):
    runner = ScriptedRunner(listening=False, started_at=NOW)
    made = runner_agent(tmp_path, runner)
    assert made._tick_runner(NOW + 99) is None
    assert made.state == "starting"
    assert runner.stops == 0


def test_not_listening_past_the_startup_timeout_stops_the_runner(tmp_path, quiet_log):
    runner = ScriptedRunner(listening=False, started_at=NOW)
    made = runner_agent(tmp_path, runner)
    reason = made._tick_runner(NOW + 101)
    assert reason == "runner did not listen for jobs within 100s"
    assert runner.stops == 1


def test_exiting_before_listening_ends_the_instance(tmp_path, quiet_log):
    runner = ScriptedRunner(listening=False, started_at=NOW, code=1)
    made = runner_agent(tmp_path, runner)
    assert made._tick_runner(NOW + 1) == "runner exited with code 1 before it listened for jobs"


def test_first_listening_resets_the_idle_clock(tmp_path, quiet_log):
    runner = ScriptedRunner(listening=False, started_at=NOW)
    made = runner_agent(tmp_path, runner, idle_timeout=60)
    assert made._tick_runner(NOW + 90) is None  # starting took longer than the idle timeout
    runner.listening = True
    assert made._tick_runner(NOW + 95) is None, "the idle clock starts at listening"
    assert made.last_activity == NOW + 95
    assert made.state == "idle"
    assert made._tick_runner(NOW + 95 + 59) is None
    assert runner.stops == 0
    assert made._tick_runner(NOW + 95 + 60) == "idle for 60s"
    assert runner.stops == 1


def test_busy_keeps_the_instance_busy(tmp_path, quiet_log):
    runner = ScriptedRunner(busy=(True,))
    made = runner_agent(tmp_path, runner, idle_timeout=60)
    for later in (10, 100, 1000):
        assert made._tick_runner(NOW + later) is None
        assert made.state == "busy"
        assert made.last_activity == NOW + later
    assert runner.stops == 0


def test_idle_past_the_timeout_looks_once_more_before_stopping(tmp_path, quiet_log):
    # A job assigned right at the deadline: the second look sees it and nothing ends.
    runner = ScriptedRunner(busy=(False, True))
    made = runner_agent(tmp_path, runner, idle_timeout=60)
    made._listening_seen = True
    assert made._tick_runner(NOW + 61) is None
    assert runner.busy_calls == 2
    assert runner.stops == 0
    # The next tick sees the job: busy, the idle clock restarts.
    assert made._tick_runner(NOW + 62) is None
    assert made.state == "busy" and made.last_activity == NOW + 62


def test_idle_past_the_timeout_stops_the_runner(tmp_path, quiet_log):
    runner = ScriptedRunner(busy=(False,))
    made = runner_agent(tmp_path, runner, idle_timeout=60)
    made._listening_seen = True
    assert made._tick_runner(NOW + 61) == "idle for 60s"
    assert runner.busy_calls == 2
    assert runner.stops == 1


def test_an_ephemeral_runner_that_exited_finished_its_job(tmp_path, quiet_log):
    runner = ScriptedRunner(ephemeral=True, code=0)
    made = runner_agent(tmp_path, runner)
    assert made._tick_runner(NOW + 5) == "runner finished its job"
    assert runner.stops == 0


def test_a_persistent_runner_that_exited_is_reported(tmp_path, quiet_log):
    runner = ScriptedRunner(ephemeral=False, code=2)
    made = runner_agent(tmp_path, runner)
    assert made._tick_runner(NOW + 5) == "runner exited with 2"


def test_ttl_stops_even_a_busy_runner(tmp_path, quiet_log):
    runner = ScriptedRunner(busy=(True,))
    made = runner_agent(tmp_path, runner, ttl=3600)
    assert made._tick_runner(NOW + 3599) is None
    assert made._tick_runner(NOW + 3600) == "ttl reached"
    assert runner.stops == 1


def test_a_spot_notice_lets_the_running_job_go_on_then_stops_the_runner(tmp_path, quiet_log):
    runner = ScriptedRunner(busy=(True, False), notice="aws spot instance-action {}")
    made = runner_agent(tmp_path, runner)
    assert made._tick_runner(NOW + 5) is None, "a running job is not cut short"
    assert runner.stops == 0
    assert made._tick_runner(NOW + 6) == "spot interruption"
    assert runner.stops == 1
    assert runner.notice_calls == [NOW + 5], "the notice is read once"
    assert sum("aws spot instance-action" in line for line in quiet_log) == 1


def test_a_spot_notice_on_an_idle_runner_stops_it_at_once(tmp_path, quiet_log):
    runner = ScriptedRunner(busy=(False,), notice="gcp instance/preempted is TRUE")
    made = runner_agent(tmp_path, runner)
    assert made._tick_runner(NOW + 5) == "spot interruption"
    assert runner.stops == 1


# --- Runner.preemption_notice: the probe of its cloud, at most every few seconds ---------------


GCP_PREEMPTED = "/computeMetadata/v1/instance/preempted"
AZURE_EVENTS = "/metadata/scheduledevents"


def test_runner_polls_its_cloud_at_most_every_few_seconds(tmp_path, route_server):
    server = route_server({("GET", GCP_PREEMPTED): (200, "TRUE", {"Metadata-Flavor": "Google"})})
    endpoints = {"gcp_metadata": server.base + "/computeMetadata/v1"}
    runner = Runner(runner_config(preemption="gcp-preempted"), tmp_path, endpoints)
    assert runner.preemption_notice(NOW) == "gcp instance/preempted is TRUE"
    assert runner.preemption_notice(NOW + github_runner.PREEMPTION_POLL_SECONDS - 1) is None
    assert len(server.requests) == 1
    assert runner.preemption_notice(NOW + github_runner.PREEMPTION_POLL_SECONDS) is not None
    assert len(server.requests) == 2


def test_runner_without_preemption_never_polls(tmp_path, route_server):
    server = route_server({})
    runner = Runner(runner_config(preemption=None), tmp_path, {"gcp_metadata": server.base})
    assert runner.preemption_notice(NOW) is None
    assert server.requests == []


def test_an_unreachable_or_garbled_metadata_server_is_no_notice(tmp_path, route_server):
    server = route_server({("GET", AZURE_EVENTS): (200, "not json", {"Metadata": "true"})})
    runner = Runner(
        runner_config(preemption="azure-preempt-event"),
        tmp_path,
        {"azure_metadata": server.base + "/metadata"},
    )
    assert runner.preemption_notice(NOW) is None
    server.close()
    runner = Runner(
        runner_config(preemption="aws-spot-notice"), tmp_path, {"aws_metadata": server.base}
    )
    assert runner.preemption_notice(NOW) is None
