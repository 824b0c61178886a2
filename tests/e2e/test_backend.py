"""A ledger every machine sees: real Terraform with its real S3 backend, against moto's server on
loopback. Two state dirs stand for two CI jobs: one launches, the other lists, ends and cleans
up, with nothing shared but the bucket."""

from __future__ import annotations

import json
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

from tests.e2e.conftest import REGION, Cli, assert_no_processes_in, aws_env, processes_in

pytestmark = pytest.mark.e2e


class Job(Cli):
    """The CLI in one state dir, with `--backend` given through the environment."""

    def __init__(self, state_dir: Path, env: dict[str, str], backend: str) -> None:
        super().__init__(state_dir, {**env, "CML_INFRA_HOME": str(state_dir),
                                     "CML_INFRA_BACKEND": backend})  # fmt: skip
        self.backend = backend

    def sandbox(self, name: str) -> Path:
        roots = list((Path(self.env["XDG_STATE_HOME"]) / "cml-infra" / "local").glob("*"))
        assert len(roots) == 1, roots
        return roots[0] / "instances" / name


@pytest.fixture
def jobs(s3: Any, s3_endpoint: str, cli: Cli, tmp_path: Path) -> Iterator[tuple[Job, Job]]:
    bucket = f"ledger-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=bucket)
    backend = f"s3://{bucket}/ci/runners-of-test?region={REGION}&endpoint={s3_endpoint}"
    env = {**cli.env, **aws_env(), "XDG_STATE_HOME": str(tmp_path / "machine")}
    first, second = Job(tmp_path / "job-a", env, backend), Job(tmp_path / "job-b", env, backend)
    yield first, second
    second.run("down", "--all")
    for pid in processes_in(tmp_path / "machine"):
        with_group = os.getpgid(pid)
        os.killpg(with_group, signal.SIGKILL)


def _closed(objects: list[str], prefix: str) -> bool:
    """Whether a runner's prefix holds its closed record and nothing of its workspace or state:
    only the agent's last status and log (task/, for `status` and `logs`) stay beside it."""
    return [key for key in objects if not key.startswith(f"{prefix}task/")] == [
        f"{prefix}runner.json"
    ] and f"{prefix}task/workdir.tar.gz" not in objects


def _objects(s3: Any, backend: str) -> list[str]:
    bucket = backend.removeprefix("s3://").split("/", 1)[0]
    answer = s3.list_objects_v2(Bucket=bucket)
    return sorted(entry["Key"] for entry in answer.get("Contents", ()))


def test_another_job_lists_and_destroys_the_runner(jobs: tuple[Job, Job], s3: Any) -> None:
    first, second = jobs
    first.ok("up", "--name", "shared", "--idle-timeout", "1h")
    launch = first.status()["shared"]["launch_id"]
    shutil.rmtree(first.state_dir)  # the launch job is over, and its machine gone

    row = second.status()["shared"]
    assert row["state"] in {"running", "idle"} and row["launch_id"] == launch
    keys = _objects(s3, second.backend)
    prefix = f"ci/runners-of-test/runners/{launch}/"
    assert {
        f"{prefix}runner.json",
        f"{prefix}workspace.tar.gz",
        f"{prefix}terraform.tfstate",
    } <= set(keys)

    done = second.run("down", "shared")
    assert done.returncode == 0, done.stderr
    assert "Destroy complete! Resources: 1 destroyed." in done.stderr
    assert second.status()["shared"]["state"] == "destroyed"
    assert not second.sandbox("shared").exists()
    # The state listed nothing any more: only the closed record is kept.
    assert _closed(_objects(s3, second.backend), prefix)
    assert_no_processes_in(second.state_dir.parent / "machine")


def test_cleanup_elsewhere_destroys_what_a_self_ended_runner_left(
    jobs: tuple[Job, Job], s3: Any
) -> None:
    first, second = jobs
    first.ok("up", "--name", "ended", "--idle-timeout", "1h")
    launch = first.status()["ended"]["launch_id"]
    # The instance ends itself the way a VM does: it goes, its Terraform state stays.
    sandbox = first.sandbox("ended")
    os.killpg(int((sandbox / "pgid").read_text()), signal.SIGKILL)
    shutil.rmtree(sandbox)
    shutil.rmtree(first.state_dir)

    rows = json.loads(second.ok("cleanup", "--json", "--yes"))
    assert [(r["kind"], r["name"], r["rule"], r["launch"]) for r in rows] == [
        ("state", "ended", "stale-state", launch)
    ]
    assert rows[0]["result"] == "leftovers destroyed, record closed"
    assert second.status()["ended"]["state"] == "destroyed"
    prefix = f"ci/runners-of-test/runners/{launch}/"
    assert _closed(_objects(s3, second.backend), prefix)
    assert json.loads(second.ok("cleanup", "--json", "--yes")) == []


def test_two_downs_from_two_jobs_destroy_once(jobs: tuple[Job, Job]) -> None:
    first, second = jobs
    first.ok("up", "--name", "contended", "--idle-timeout", "1h")
    downs = [job.start("down", "contended") for job in (first, second)]
    outputs = [process.communicate(timeout=120) for process in downs]
    assert [process.returncode for process in downs] == [0, 0], outputs
    errors = "".join(err for _, err in outputs)
    assert errors.count("Destroy complete!") == 1, errors
    lines = errors.splitlines()
    assert lines.count("contended destroyed") == 1 and "contended is already gone" in lines
    assert any(line.startswith("waiting: ") and " is held by cml-infra down by " in line
               for line in lines), lines  # fmt: skip
    assert second.status()["contended"]["state"] == "destroyed"


def test_same_name_from_two_jobs_never_shares_a_record(jobs: tuple[Job, Job]) -> None:
    first, second = jobs
    first.ok("up", "--name", "twin", "--idle-timeout", "1h")
    refused = second.run("up", "--name", "twin")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("error: --name: 'twin' is in use")
    first.ok("down", "twin")
    second.ok("up", "--name", "twin", "--idle-timeout", "1h")
    rows = json.loads(second.ok("status", "--all", "--json"))
    assert sorted(r["state"] for r in rows if r["name"] == "twin") == [
        "destroyed",
        "idle",
    ] or sorted(r["state"] for r in rows if r["name"] == "twin") == ["destroyed", "running"]
    assert len({r["launch_id"] for r in rows}) == 2
    second.ok("down", "twin")


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        ("ftp://bucket/prefix", "--backend: unknown backend scheme 'ftp'"),
        ("s3://no-such-bucket-here/prefix?region=us-east-1&endpoint={endpoint}",
         "--backend: s3://no-such-bucket-here/prefix"),
        ("s3://key:secret@bucket/prefix", "--backend: a backend URL must not hold a credential"),
        ("s3://bucket/prefix?colour=blue", "--backend: unknown URL parameter 'colour'"),
    ],
)  # fmt: skip
def test_bad_backend_is_one_line_and_creates_nothing(
    cli: Cli, s3: Any, s3_endpoint: str, tmp_path: Path, backend: str, expected: str
) -> None:
    env = {**cli.env, **aws_env(), "XDG_STATE_HOME": str(tmp_path / "machine")}
    for command in (["up", "--name", "nothing"], ["status"], ["down", "nothing"], ["cleanup"]):
        done = subprocess.run(
            [*_cli(), *command, "--backend", backend.format(endpoint=s3_endpoint)],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2, (command, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), (command, lines)
        assert "Traceback" not in done.stderr
    assert not (cli.state_dir / "runners").exists()
    assert not list((cli.state_dir / "backends").glob("*/runners/*"))


def _cli() -> list[str]:
    return [sys.executable, "-m", "cml_infra"]


def test_a_runner_ends_itself_through_the_backend_and_no_secret_is_stored(
    jobs: tuple[Job, Job], s3: Any, github: Any, archive: Path, tmp_path: Path
) -> None:
    from tests.e2e.conftest import TOKEN

    first, second = jobs
    for job in jobs:
        job.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{job.env['PATH']}"
    first.env["CML_INFRA_TOKEN"] = TOKEN
    first.ok("up", "--name", "selfish", "--repo", "octo/repo", "--github-url", github.url,
             "--runner-archive", str(archive), "--idle-timeout", "3s")  # fmt: skip
    minted = [token for token, grant in github.tokens.items() if grant["kind"] == "registration"]
    assert minted, github.tokens
    # Idle, the instance ends itself as a VM does: it goes, its state stays (the instance has
    # no credential of the store). Another job sees it ended, and its cleanup finishes it.
    row = second.wait_state("selfish", {"ended"}, timeout=60)
    assert row["ended_at"] is not None
    rows = json.loads(second.ok("cleanup", "--json", "--yes"))
    assert [(r["name"], r["rule"], r["result"]) for r in rows] == [
        ("selfish", "stale-state", "leftovers destroyed, record closed")
    ]
    row = second.status()["selfish"]
    assert (row["state"], row["end_reason"]) == ("destroyed", "cleanup: stale-state")
    secrets_ = [TOKEN, *minted]
    bucket = second.backend.removeprefix("s3://").split("/", 1)[0]
    for key in _objects(s3, second.backend):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert not any(secret.encode() in body for secret in secrets_), key
    leaked = [
        path for path in tmp_path.rglob("*")
        if path.is_file() and any(secret.encode() in path.read_bytes() for secret in secrets_)
    ]  # fmt: skip
    assert leaked == []


def test_doctor_says_whether_the_backend_can_be_used(
    jobs: tuple[Job, Job], s3_endpoint: str
) -> None:
    first, _ = jobs
    lines = first.ok("doctor", "--cloud", "local").splitlines()
    assert any(line.startswith("backend: ok: s3://ledger-") for line in lines), lines
    missing = f"s3://no-such-ledger/p?region={REGION}&endpoint={s3_endpoint}"
    done = first.run("doctor", "--cloud", "local", "--backend", missing)
    assert done.returncode == 1
    assert "backend: NOT READY: --backend: s3://no-such-ledger/p" in done.stdout
    assert "does not exist" in done.stdout
