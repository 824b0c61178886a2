"""cml_infra.agent.task and .report: the working folder in (unpacked safely), the outputs out,
and the reports to a folder or to presigned URLs; then the agent run for real in task mode."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cml_infra.agent import task
from cml_infra.agent.report import Reporter
from cml_infra.agent.task import fetch_workdir, pack_outputs, unpack
from tests.unit.agent.test_loop import (
    _self_destroy_by_sigterm,
    _write_package,
    _write_shipped,
    config,
)

SECRET = "X-Amz-Signature=s3cr3t"


def _member(name, kind=tarfile.REGTYPE, data=b"", linkname="", mode=0o644):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.size = kind, linkname, mode, len(data)
    return info, data


def _tar(path: Path, members) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


# --- unpack: what may come in -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("members", "refused"),
    [
        ([_member("/etc/evil")], "not a relative path"),
        ([_member("../evil")], "not a relative path"),
        ([_member("a/../../evil")], "not a relative path"),
        ([_member("dev", tarfile.CHRTYPE)], "not a file, folder or symlink"),
        ([_member("blk", tarfile.BLKTYPE)], "not a file, folder or symlink"),
        ([_member("pipe", tarfile.FIFOTYPE)], "not a file, folder or symlink"),
        ([_member("f"), _member("hard", tarfile.LNKTYPE, linkname="f")], "not a file, folder"),
        ([_member("abs", tarfile.SYMTYPE, linkname="/etc")], "a symlink leaving the folder"),
        ([_member("up", tarfile.SYMTYPE, linkname="../outside")], "a symlink leaving"),
        ([_member("d/up", tarfile.SYMTYPE, linkname="../../x")], "a symlink leaving"),
        # A link that stays inside, then a write through it.
        (
            [
                _member("sub", tarfile.DIRTYPE, mode=0o755),
                _member("ln", tarfile.SYMTYPE, linkname="sub"),
                _member("ln/f", data=b"x"),
            ],
            "through a symlink",
        ),
        (
            [
                _member("t", data=b"x"),
                _member("ln", tarfile.SYMTYPE, linkname="t"),
                _member("ln", data=b"over"),
            ],
            "through a symlink",
        ),
    ],
)
def test_unpack_refuses_what_could_leave_the_folder(tmp_path, members, refused):
    archive = _tar(tmp_path / "w.tar.gz", members)
    dest = tmp_path / "box" / "work"
    dest.parent.mkdir()
    with pytest.raises(ValueError, match=refused):
        unpack(archive, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box", "w.tar.gz"]
    assert sorted(p.name for p in (tmp_path / "box").iterdir()) == ["work"]
    if (dest / "t").exists():
        assert (dest / "t").read_bytes() == b"x"


def test_a_workdir_round_trips_with_its_modes_and_inner_links(tmp_path):
    source = tmp_path / "src"
    (source / "data" / "deep").mkdir(parents=True)
    (source / "train.sh").write_text("#!/bin/sh\necho hi\n")
    (source / "train.sh").chmod(0o755)
    (source / "data" / "deep" / "x.csv").write_text("1,2\n")
    (source / "data" / "deep" / "x.csv").chmod(0o640)
    (source / "latest").symlink_to("data/deep/x.csv")
    archive = tmp_path / "w.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("train.sh", "data", "latest"):
            tar.add(source / name, name)
    work = tmp_path / "work"
    unpack(archive, work)
    assert (work / "train.sh").read_text() == "#!/bin/sh\necho hi\n"
    assert (work / "train.sh").stat().st_mode & 0o777 == 0o755
    assert (work / "data" / "deep" / "x.csv").stat().st_mode & 0o777 == 0o640
    assert os.readlink(work / "latest") == "data/deep/x.csv"
    assert (work / "latest").read_text() == "1,2\n"


def test_unpack_drops_setuid_bits(tmp_path):
    archive = _tar(tmp_path / "w.tar.gz", [_member("tool", data=b"x", mode=0o4755)])
    unpack(archive, tmp_path / "work")
    assert (tmp_path / "work" / "tool").stat().st_mode & 0o7777 == 0o755


def test_fetch_workdir_says_why_without_the_url(tmp_path, monkeypatch):
    monkeypatch.setattr(task, "FETCH_ATTEMPTS", 1)
    (tmp_path / "bad.tar.gz").write_bytes(b"not gzip")
    reason = fetch_workdir({"file": str(tmp_path / "bad.tar.gz")}, tmp_path, tmp_path / "work")
    assert reason is not None and reason.startswith("workdir could not be unpacked: ")
    url = f"http://127.0.0.1:9/workdir.tar.gz?{SECRET}"
    reason = fetch_workdir({"url": url}, tmp_path, tmp_path / "work")
    assert reason is not None and reason.startswith("workdir could not be fetched: ")
    assert "the workdir URL" in reason
    assert "127.0.0.1" not in reason and SECRET not in reason


# --- outputs: what goes out -------------------------------------------------------------------


def test_pack_outputs_lists_what_is_missing_and_keeps_links_inside(tmp_path):
    work = tmp_path / "work"
    (work / "ckpt" / "inner").mkdir(parents=True)
    (work / "model.bin").write_bytes(b"weights")
    (work / "ckpt" / "inner" / "step1").write_bytes(b"1")
    (work / "ckpt" / "twin").hardlink_to(work / "model.bin")
    (work / "ckpt" / "latest").symlink_to("inner/step1")
    (work / "ckpt" / "passwd").symlink_to("/etc/passwd")
    (work / "escape").symlink_to(tmp_path)
    os.mkfifo(work / "ckpt" / "pipe")
    archive = tmp_path / "outputs.tar.gz"
    paths = ["model.bin", "ckpt/", "nope.txt", "escape/secret", "../outside/model.bin", "escape"]
    done = pack_outputs(work, paths, archive)
    assert done == {
        "uploaded": ["model.bin", "ckpt/"],
        "missing": ["nope.txt", "escape/secret", "../outside/model.bin", "escape"],
        "bytes": archive.stat().st_size,
    }
    with tarfile.open(archive) as tar:
        kinds = {m.name: m.type for m in tar.getmembers()}
    assert kinds == {
        "model.bin": tarfile.REGTYPE,
        "ckpt": tarfile.DIRTYPE,
        "ckpt/inner": tarfile.DIRTYPE,
        "ckpt/inner/step1": tarfile.REGTYPE,
        "ckpt/twin": tarfile.REGTYPE,
        "ckpt/latest": tarfile.SYMTYPE,
    }
    # What the agent packs, its own unpacker takes.
    unpack(archive, tmp_path / "back")
    assert (tmp_path / "back" / "ckpt" / "latest").read_bytes() == b"1"


# --- Reporter ---------------------------------------------------------------------------------


def test_reporter_to_a_folder_reports_on_change_or_when_due(tmp_path):
    sink = tmp_path / "sink" / "deep"
    reporter = Reporter({"report": {"dir": str(sink)}, "report_seconds": 15})
    builds = []

    def build():
        builds.append(1)
        return {"n": len(builds)}

    reporter.status(100.0, ["idle"], build)
    reporter.status(110.0, ["idle"], build)
    assert json.loads((sink / "status.json").read_text()) == {"n": 1}
    reporter.status(111.0, ["busy"], build)
    reporter.status(126.0, ["busy"], build)
    assert json.loads((sink / "status.json").read_text()) == {"n": 3}
    assert [p.name for p in sink.iterdir()] == ["status.json"]


def test_reporter_to_urls_reports_only_the_names_it_has(tmp_path, quiet_log, sink_server):
    reporter = Reporter({"report": {"urls": {"status.json": sink_server.url("status.json")}}})
    (tmp_path / "outputs.tar.gz").write_bytes(b"tar")
    reporter.queue("outputs.tar.gz", tmp_path / "outputs.tar.gz")
    assert reporter.flush()
    reporter.status(1.0, [1], lambda: {"state": "idle"})
    assert sink_server.puts == [("/status.json", b'{"state": "idle"}')]


# --- the agent in task mode, for real ---------------------------------------------------------


class Sink:
    """A loopback stand-in for the bucket: serves the workdir, records the PUTs, fails the
    ones named in `fail` once each with a 500."""

    def __init__(self, workdir: bytes = b"") -> None:
        self.workdir = workdir
        self.puts: list[tuple[str, bytes]] = []
        self.fail: set[str] = set()
        self.queries: set[str] = set()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, code: int, body: bytes = b"") -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                sink.queries.add(query)
                self._answer(200, sink.workdir) if path == "/workdir" else self._answer(404)

            def do_PUT(self) -> None:
                path, _, query = self.path.partition("?")
                sink.queries.add(query)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if path in sink.fail:
                    sink.fail.discard(path)
                    self._answer(500)
                    return
                sink.puts.append((path, body))
                self._answer(200)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/{name}?{SECRET}"

    def last(self, name: str) -> bytes | None:
        bodies = [body for path, body in self.puts if path == f"/{name}"]
        return bodies[-1] if bodies else None


@pytest.fixture
def sink_server(no_proxy):
    server = Sink()
    yield server
    server.server.shutdown()
    server.server.server_close()


def _until(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def _start(home: Path, cfg: dict, poll_preemption: float = 5.0) -> subprocess.Popen[bytes]:
    """The agent as the startup script runs it (its output appended to instance.log), with
    a faster preemption poll."""
    _write_package(home)
    (home / "agent-config.json").write_text(json.dumps(cfg))
    code = (
        "import sys, cml_infra_agent.loop as loop\n"
        f"loop.PREEMPTION_POLL_SECONDS = {poll_preemption}\n"
        "from cml_infra_agent.__main__ import main\n"
        "sys.exit(main(['--config', 'agent-config.json']))\n"
    )
    with (home / "instance.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-E", "-S", "-c", code], cwd=home, stdout=log, stderr=log
        )


def _finish(agent: subprocess.Popen[bytes], home: Path) -> str:
    try:
        assert agent.wait(timeout=60) == 0, (home / "instance.log").read_text()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    return (home / "instance.log").read_text()


TASK = """
import os, pathlib, sys, time
print("input:", pathlib.Path("data/input.txt").read_text().strip(), flush=True)
pathlib.Path("running").touch()
while not pathlib.Path("finish").exists():
    time.sleep(0.05)
pathlib.Path("model.bin").write_bytes(b"weights")
sys.exit(3)
"""


def _workdir(tmp_path: Path, *extra: tuple[tarfile.TarInfo, bytes]) -> Path:
    return _tar(tmp_path / "workdir.tar.gz", [
        _member("data", tarfile.DIRTYPE, mode=0o755),
        _member("data/input.txt", data=b"forty-two\n"),
        *extra,
    ])  # fmt: skip


def _outputs(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_task_mode_reports_to_a_folder(tmp_path):
    home, sink, record = tmp_path / "instance", tmp_path / "sink", tmp_path / "reason"
    hold = tmp_path / "go"
    home.mkdir()
    (home / "team.sh").write_text(f"while [ ! -e '{hold}' ]; do sleep 0.05; done\n")
    cfg = config(
        single=True,
        command=[sys.executable, "-c", TASK],
        self_destroy=_self_destroy_by_sigterm(record),
        startup_script="team.sh",
        workdir={"file": str(_workdir(tmp_path))},
        outputs=["model.bin", "missing/file"],
        report={"dir": str(sink)},
    )
    agent = _start(home, cfg)

    def status() -> dict:
        with_status = sink / "status.json"
        return json.loads(with_status.read_text()) if with_status.exists() else {}

    try:
        assert _until(lambda: status().get("task") == "pending")
        assert status()["state"] == "starting" and status()["exit_code"] is None
        hold.touch()
        assert _until(lambda: status().get("task") == "running")
        assert status()["state"] == "busy"
        (home / "work" / "finish").touch()
    finally:
        hold.touch()
        log = _finish(agent, home)
    final = status()
    assert record.read_text().strip() == "single task done"
    assert (final["task"], final["exit_code"], final["reason"]) == ("exited", 3, "single task done")
    assert final["outputs"] == {
        "uploaded": ["model.bin"],
        "missing": ["missing/file"],
        "bytes": (sink / "outputs.tar.gz").stat().st_size,
    }
    assert _outputs((sink / "outputs.tar.gz").read_bytes()) == {"model.bin": b"weights"}
    assert final["log"]["complete"] is True
    uploaded = (sink / "instance.log").read_text()
    assert log.startswith(uploaded)
    assert "input: forty-two" in uploaded and "ending the instance: single task done" in uploaded
    tail = base64.b64decode(final["log"]["tail_b64"])
    assert log.encode()[final["log"]["tail_offset"] :].startswith(tail)
    assert final["log"]["size"] == final["log"]["tail_offset"] + len(tail)
    local = json.loads((home / "agent-status.json").read_text())
    assert (local["task"], local["exit_code"], local["last_exit_code"]) == ("exited", 3, 3)


def test_task_mode_reports_to_urls_and_retries_a_failed_put(tmp_path, sink_server):
    # The task finds `finish` at once: it comes with the workdir.
    sink_server.workdir = _workdir(tmp_path, _member("finish")).read_bytes()
    sink_server.fail.add("/outputs.tar.gz")
    home, record = tmp_path / "instance", tmp_path / "reason"
    names = ("status.json", "instance.log", "outputs.tar.gz")
    cfg = config(
        idle_timeout=2,
        command=[sys.executable, "-c", TASK],
        self_destroy=_self_destroy_by_sigterm(record),
        workdir={"url": sink_server.url("workdir")},
        outputs=["model.bin"],
        report={"urls": {name: sink_server.url(name) for name in names}},
        report_seconds=0.5,
    )
    log = _finish(_start(home, cfg), home)
    assert record.read_text().strip() == "idle for 2s"
    statuses = [json.loads(body) for path, body in sink_server.puts if path == "/status.json"]
    order = [s["task"] for s in statuses]
    assert order[0] == "pending" and "running" in order
    assert order.index("running") < order.index("exited")
    final = statuses[-1]
    assert (final["task"], final["exit_code"], final["log"]["complete"]) == ("exited", 3, True)
    assert final["outputs"]["uploaded"] == ["model.bin"]
    # The first status after the task ended came before its outputs were in.
    assert next(s for s in statuses if s["task"] == "exited")["outputs"] is None
    # Retried at the next report, while the instance idles: not only at its end.
    assert any(s["outputs"] and s["state"] == "idle" for s in statuses)
    assert _outputs(sink_server.last("outputs.tar.gz")) == {"model.bin": b"weights"}
    assert log.count("report: could not upload outputs.tar.gz: HTTP 500; retrying") == 1
    assert log.startswith(sink_server.last("instance.log").decode())
    assert SECRET not in log and "127.0.0.1" not in log
    assert sink_server.queries == {SECRET}


def test_task_mode_spot_interruption_stops_the_task(tmp_path, route_server):
    metadata = route_server({("GET", "/instance/preempted"): (200, "FALSE")})
    home, sink, record = tmp_path / "instance", tmp_path / "sink", tmp_path / "reason"
    script = (
        "import os, pathlib, time\n"
        "os.makedirs('ckpt'); pathlib.Path('ckpt/step1').write_bytes(b'1')\n"
        "pathlib.Path('running').touch(); time.sleep(60)\n"
    )
    cfg = config(
        single=True,
        command=[sys.executable, "-c", script],
        self_destroy=_self_destroy_by_sigterm(record),
        outputs=["ckpt", "model.bin"],
        report={"dir": str(sink)},
        preemption="gcp-preempted",
        endpoints={"gcp_metadata": metadata.base},
    )
    agent = _start(home, cfg, poll_preemption=0.2)
    try:
        _until(lambda: (home / "work" / "running").exists())
        metadata.routes[("GET", "/instance/preempted")] = (200, "TRUE")
    finally:
        log = _finish(agent, home)
    assert record.read_text().strip() == "spot interruption"
    assert "spot interruption notice (gcp instance/preempted is TRUE)" in log
    final = json.loads((sink / "status.json").read_text())
    assert final["task"] == "preempted"
    assert final["preempted"] == "gcp instance/preempted is TRUE"
    assert final["exit_code"] is None
    assert final["reason"] == "spot interruption"
    assert final["outputs"]["uploaded"] == ["ckpt"]
    assert final["outputs"]["missing"] == ["model.bin"]
    assert _outputs((sink / "outputs.tar.gz").read_bytes()) == {"ckpt/step1": b"1"}
    assert final["log"]["complete"] is True


def test_a_workdir_that_cannot_be_fetched_ends_the_instance(tmp_path, sink_server):
    home, record = tmp_path / "instance", tmp_path / "reason"
    cfg = config(
        single=True,
        command=["true"],
        self_destroy=_self_destroy_by_sigterm(record),
        workdir={"url": sink_server.url("no-such-workdir")},
        report={"urls": {"status.json": sink_server.url("status.json")}},
    )
    task_attempts = "import cml_infra_agent.task as t; t.FETCH_ATTEMPTS = 1\n"
    _write_package(home)
    (home / "agent-config.json").write_text(json.dumps(cfg))
    code = f"{task_attempts}import sys\nfrom cml_infra_agent.__main__ import main\n"
    code += "sys.exit(main(['--config', 'agent-config.json']))\n"
    done = subprocess.run([sys.executable, "-E", "-S", "-c", code], cwd=home,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    reason = record.read_text().strip()
    assert reason == "workdir could not be fetched: HTTP 404 from the workdir URL (1 attempt)"
    final = json.loads(sink_server.last("status.json"))
    assert (final["task"], final["exit_code"], final["reason"]) == ("failed-to-start", None, reason)
    assert SECRET not in done.stdout


def test_reporting_to_urls_loads_no_heavy_module_here(tmp_path):
    """The PUTs run in a child: the agent that lives as long as the instance never loads
    urllib, ssl or tarfile for them."""
    from tests.unit.agent.test_loop import HEAVY

    _write_package(tmp_path)
    cfg = config(report={"urls": {"status.json": f"http://127.0.0.1:9/s?{SECRET}"}})
    probe = (
        "import json, sys\nfrom pathlib import Path\nfrom cml_infra_agent.loop import Agent\n"
        f"Agent(json.loads({json.dumps(json.dumps(cfg))}), Path('.'))._write_status()\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-E", "-S", "-c", probe], cwd=tmp_path,
                          capture_output=True, text=True, check=True)  # fmt: skip
    *lines, loaded = done.stdout.splitlines()
    assert "cml_infra_agent.report" in loaded.split()
    assert sorted(HEAVY & set(loaded.split())) == []
    assert any("report: could not upload status.json: " in line for line in lines), lines
    assert SECRET not in done.stdout


def test_the_ttl_timer_reports_what_the_agent_last_wrote(
    tmp_path, quiet_log, monkeypatch, restore_sigterm
):
    from cml_infra.agent import loop

    (tmp_path / "agent-status.json").write_text(
        json.dumps({"task": "exited", "exit_code": 3, "tasks_run": 1, "last_exit_code": 3})
    )
    (tmp_path / "instance.log").write_text("the task's output\n")
    sink = tmp_path / "sink"
    agent = loop.Agent(config(report={"dir": str(sink)}), tmp_path)

    def sleep(seconds):
        agent.stopping = True  # the cloud ends the VM while the agent waits

    monkeypatch.setattr(loop.time, "sleep", sleep)
    assert agent.end_now("ttl reached") == 0
    final = json.loads((sink / "status.json").read_text())
    assert (final["task"], final["exit_code"], final["tasks_run"]) == ("exited", 3, 1)
    assert (final["state"], final["reason"]) == ("destroying", "ttl reached")
    assert final["log"]["complete"] is True
    assert (sink / "instance.log").read_text() == "the task's output\n"


@pytest.mark.parametrize(
    "mode", ["task", "task-reporting", "task-workdir", "runner", "runner-reporting"]
)
def test_the_startup_script_ships_what_its_mode_needs(mode, tmp_path):
    from cml_infra import clouds, render
    from cml_infra.spec import RunnerSpec

    spec = RunnerSpec(name="box-1", cloud="local", idle_timeout=60, ttl=60, command=("true",))
    boot = clouds.get("aws").boot(spec)
    registration = {"kind": "jit", "secret": "s", "url": "u"}
    runner = {"kind": "github", "user": boot.runner_user, "registration": registration}
    runner = runner if "runner" in mode else None
    extra = {"report": {"dir": "/r"}, "report_seconds": 5, "preemption": "aws-spot-notice"}
    if mode == "task-workdir":
        extra.update(workdir={"url": "https://x.invalid/w"}, outputs=["model.bin"])
    script = render.startup_script(boot, spec, 2e9, runner, task=extra if "-" in mode else None)
    shipped = _write_shipped(script, tmp_path)
    assert ("github_runner.py" in shipped) == ("runner" in mode)
    assert ("report.py" in shipped) == ("-" in mode)
    assert ("task.py" in shipped) == (mode == "task-workdir")
    # The task's spot probe is AWS's; an on-demand AWS VM ends with a shutdown, no hook.
    hooks = {"hooks_aws.py", "hooks_http.py"} if "-" in mode else set()
    assert {name for name in shipped if name.startswith("hooks_")} == hooks
    # No GPU and no Docker: nothing for host.py to do.
    assert shipped & {"loop.py", "hooks.py", "host.py", "__main__.py", "__init__.py"} == {
        "loop.py", "hooks.py", "__main__.py", "__init__.py"
    }  # fmt: skip
    agent_config = json.loads(script.split("<<'CML_INFRA_CONFIG_EOF'\n")[1].split("\nCML_")[0])
    for key, value in extra.items():
        assert (agent_config.get(key) == value) == ("-" in mode), key
