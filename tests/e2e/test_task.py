"""Task mode on the local cloud with real Terraform: the working folder goes with the task, the
log streams back, the task's exit code is `up`'s, outputs come home, a spot preemption is
reported and the task relaunched."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli

pytestmark = pytest.mark.e2e

PY = sys.executable
TRAIN = """\
import pathlib, sys
data = pathlib.Path("data/input.txt").read_text().strip()
print("training on", data, flush=True)
print("secret shipped:", pathlib.Path("secret.key").exists(), flush=True)
print("cache shipped:", pathlib.Path("cache").exists(), flush=True)
pathlib.Path("model.bin").write_bytes(b"weights of " + data.encode())
sys.exit(3)
"""


def make_project(folder: Path) -> Path:
    """A project folder: a training script, its data, and files that must not travel."""
    (folder / "data").mkdir(parents=True)
    (folder / "train.py").write_text(TRAIN)
    (folder / "data" / "input.txt").write_text("42 samples\n")
    (folder / ".gitignore").write_text("secret.key\n")
    (folder / "secret.key").write_text("not for the instance\n")
    (folder / ".cml-infra-ignore").write_text("cache/\n")
    (folder / "cache").mkdir()
    (folder / "cache" / "blob").write_bytes(b"x" * 1024)
    return folder


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


def test_attached_task_streams_its_log_exits_with_its_code_and_outputs_come_home(
    cli: Cli, workdir: Path
) -> None:
    done = cli.run("up", "--name", "train", "--single", "--out", "model.bin",
                   "--", PY, "train.py", cwd=workdir)  # fmt: skip

    assert done.returncode == 3, done.stderr
    assert "training on 42 samples" in done.stdout
    assert "secret shipped: False" in done.stdout
    assert "cache shipped: False" in done.stdout
    assert (workdir / "model.bin").read_bytes() == b"weights of 42 samples"
    assert "the task exited with 3" in done.stderr
    row = cli.wait_state("train", {"destroyed"})
    assert row["exit_code"] == 3 and row["task"] == "exited"
    assert "training on 42 samples" in cli.ok("logs", "train")


def test_a_failed_task_fails_up(cli: Cli) -> None:
    done = cli.run("up", "--name", "seven", "--single", "--", "sh", "-c", "echo failing; exit 7")
    assert done.returncode == 7, done.stderr
    assert "failing" in done.stdout
    assert cli.wait_state("seven", {"destroyed"})["exit_code"] == 7


def test_detached_task_then_logs_status_and_pull(cli: Cli, workdir: Path, tmp_path: Path) -> None:
    done = cli.run("up", "--name", "later", "--single", "--detach", "--out", "model.bin",
                   "--", PY, "train.py", cwd=workdir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "later"

    follow = cli.run("logs", "-f", "later")
    assert follow.returncode == 0, follow.stderr
    assert "training on 42 samples" in follow.stdout
    row = cli.wait_state("later", {"destroyed"})
    assert row["exit_code"] == 3
    assert not (workdir / "model.bin").exists(), "a detached up brings nothing home by itself"

    dest = tmp_path / "pulled"
    pulled = cli.run("pull", "later", str(dest))
    assert pulled.returncode == 0, pulled.stderr
    assert (dest / "model.bin").read_bytes() == b"weights of 42 samples"
    assert pulled.stdout.split() == ["model.bin"]


def test_a_workdir_over_the_limit_is_refused_before_anything_is_created(
    cli: Cli, workdir: Path
) -> None:
    with (workdir / "checkpoints.bin").open("wb") as big:
        big.truncate(101 * 1024 * 1024)  # sparse: counted, never read

    done = cli.run("up", "--name", "huge", "--single", "--", PY, "train.py", cwd=workdir)

    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: --workdir:"), done.stderr
    assert "checkpoints.bin" in done.stderr and ".cml-infra-ignore" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (cli.state_dir / "runners" / "huge").exists()
    assert not cli.sandbox("huge").exists()


class _SpotMetadata(BaseHTTPRequestHandler):
    """AWS's instance metadata, as far as the spot notice goes: the notice is served once the
    test arms it, to the first instance that asks (the relaunched one is not reclaimed)."""

    armed = threading.Event()
    served = threading.Event()

    def do_PUT(self) -> None:
        self._answer(200, b"token")

    def do_GET(self) -> None:
        notice = self.path.endswith("/spot/instance-action") and self.armed.is_set()
        if notice and not self.served.is_set():
            self.served.set()
            self._answer(200, b'{"action": "terminate", "time": "2026-12-02T00:00:00Z"}')
            return
        self._answer(404, b"")

    def _answer(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def metadata() -> Iterator[str]:
    _SpotMetadata.armed.clear()
    _SpotMetadata.served.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SpotMetadata)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


CHECKPOINTING = """\
import pathlib, sys, time
ckpt = pathlib.Path("ckpt.txt")
if ckpt.exists():
    print("resumed from", ckpt.read_text().strip(), flush=True)
    sys.exit(0)
ckpt.write_text("step 1")
print("started; checkpoint written", flush=True)
time.sleep(600)
"""


def test_a_preempted_task_is_relaunched_from_its_checkpoint(
    cli: Cli, tmp_path: Path, metadata: str
) -> None:
    folder = tmp_path / "resumable"
    folder.mkdir()
    (folder / "task.py").write_text(CHECKPOINTING)
    env = {**cli.env, "CML_INFRA_LOCAL_SPOT_METADATA": metadata}
    proc = cli.start("up", "--name", "spotty", "--spot", "--single", "--out", "ckpt.txt",
                     "--retry-on-preemption", "1", "--", PY, "task.py",
                     env=env, cwd=folder)  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    deadline = time.monotonic() + 90
    while not any("checkpoint written" in line for line in lines):
        assert proc.poll() is None and time.monotonic() < deadline, lines
        time.sleep(0.2)
    _SpotMetadata.armed.set()

    try:
        stderr = proc.stderr.read()  # type: ignore[union-attr]
        proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    reader.join(timeout=10)

    assert proc.returncode == 0, stderr
    out = "".join(lines)
    assert "spot interruption notice" in out
    assert "resumed from step 1" in out
    assert "reclaimed its spot instance" in stderr and "launching it again (1 of 1)" in stderr
    assert (folder / "ckpt.txt").read_text() == "step 1"
    row = cli.status()["spotty"]
    assert row["exit_code"] == 0 and row["task"] == "exited"


def test_status_json_has_exit_code_null_while_the_task_runs(cli: Cli) -> None:
    cli.ok("up", "--name", "busy", "--single", "--detach", "--", "sleep", "600")
    deadline = time.monotonic() + 60
    while (row := cli.status()["busy"])["task"] != "running":
        assert time.monotonic() < deadline, row
        time.sleep(0.5)
    assert row["exit_code"] is None
    rows = json.loads(cli.ok("status", "--json"))
    assert [r["exit_code"] for r in rows if r["name"] == "busy"] == [None]


def test_ctrl_c_while_attached_detaches_and_the_task_runs_on(cli: Cli, tmp_path: Path) -> None:
    proc = cli.start("up", "--name", "held", "--single", "--", "sh", "-c",
                     "echo started; sleep 600")  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    deadline = time.monotonic() + 90
    while not any("started" in line for line in lines):
        assert proc.poll() is None and time.monotonic() < deadline, lines
        time.sleep(0.2)

    proc.send_signal(signal.SIGINT)
    stderr = proc.stderr.read()  # type: ignore[union-attr]
    proc.wait(timeout=30)
    reader.join(timeout=10)

    assert proc.returncode == 130, stderr
    assert "detached: held keeps running" in stderr and "cml-infra logs -f held" in stderr
    assert "Traceback" not in stderr
    row = cli.status()["held"]
    assert row["state"] == "running" and row["task"] == "running" and row["exit_code"] is None
    cli.ok("down", "held")
