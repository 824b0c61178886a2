"""The example workflow as written (examples/train-report.yml), end to end: its jobs and `run:`
steps, and action.yml's, executed in order by tests/fakes/workflow.py for a `pull_request`
event, against the loopback GitHub (signed in as an App) and a ledger in S3 on moto's server,
with real Terraform on the local cloud and the runner double taking the train job.

Launch → train (metrics.json and a PNG) → report → comment → teardown; then the fake holds one
comment on the pull request with the metrics table, an image link to a blob on the assets
branch and the cost row of the runner that ran; a re-run (attempt 2) edits that comment."""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.e2e.conftest import REGION, Cli, assert_no_processes_in, aws_env
from tests.e2e.test_backend import _objects
from tests.fakes.github import FakeGitHub
from tests.fakes.runner_double import build_archive
from tests.fakes.workflow import Options, RunResult, WorkflowRun

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "examples" / "train-report.yml"
REPO = "octo/repo"
PR = 7
HEAD = "5" * 40
RUN_ID = 4711
APP_ID = 90210
# Unique per run, so that a leak is this run's and nobody else's.
JOB_TOKEN = f"ghs_JOBCANARY{secrets.token_hex(10)}"
# The project's training script: metrics and a 1x1 PNG, the same bytes on every run. It waits
# (bounded) for the file the test writes once the runner double has run the GPU job, so that
# the job's steps and the runner's job are one job, as on a real runner.
TRAIN = """\
import json, os, struct, sys, time, zlib

deadline = time.monotonic() + 120
while not os.path.exists(os.environ["JOB_DONE"]):
    if time.monotonic() > deadline:
        sys.exit("the runner never ran the job")
    time.sleep(0.2)

def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

png = (b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(b"\\x00\\xff\\x00\\x00")) + chunk(b"IEND", b""))
open("plot.png", "wb").write(png)
json.dump({"train": {"loss": 0.125, "accuracy": 0.9375}, "epochs": 3}, open("metrics.json", "w"))
print("trained")
"""


@pytest.fixture(scope="module")
def app_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture
def github(app_key: rsa.RSAPrivateKey) -> Iterator[FakeGitHub]:
    public = app_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # No personal token at all: the App for runners, the job's own token for the report.
    with FakeGitHub(token=f"ghp_unused{secrets.token_hex(8)}", repos=(REPO,)) as fake:
        fake.add_app(APP_ID, public, slug="cml-infra-ci", installations={1: [f"repos/{REPO}"]},
                     permissions={"administration": "write", "metadata": "read"})  # fmt: skip
        # What the report job's `permissions:` grant its GITHUB_TOKEN.
        fake.add_token(JOB_TOKEN, permissions={"contents": "write", "pull_requests": "write",
                                               "actions": "read", "metadata": "read"})  # fmt: skip
        fake.open_pull(REPO, PR, HEAD)
        yield fake
        assert fake.violations == [], fake.violations


@pytest.fixture
def backend(s3: Any, s3_endpoint: str) -> str:
    bucket = f"ledger-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=bucket)
    return f"s3://{bucket}/ci?region={REGION}&endpoint={s3_endpoint}"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    tree = tmp_path / "project"
    tree.mkdir()
    (tree / "train.py").write_text(TRAIN)
    return tree


def _serve_the_gpu_job(github: FakeGitHub, name: str, done: Path) -> threading.Thread:
    """What GitHub does once the launch job has brought the runner online: gives it this run's
    train job. The job is done for the train step once the runner reports it done."""

    def serve() -> None:
        deadline = time.monotonic() + 300
        while not any(r["name"] == name and r["status"] == "online"
                      for r in github.runners(f"repos/{REPO}")):  # fmt: skip
            if time.monotonic() > deadline:
                return
            time.sleep(0.2)
        job = github.queue_job(["self-hosted", f"cml-infra-{name}"], seconds=1, run_id=RUN_ID,
                               name="Train on the GPU")  # fmt: skip
        while github.job(job)["status"] != "completed" and time.monotonic() < deadline:
            time.sleep(0.2)
        done.write_text(json.dumps(github.job(job)))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def _run(
    attempt: int, tmp_path: Path, github: FakeGitHub, cli: Cli, backend: str, project: Path,
    app_key: rsa.RSAPrivateKey,
) -> tuple[RunResult, dict[str, Any]]:  # fmt: skip
    name = f"gpu-{RUN_ID}-{attempt}"
    done = tmp_path / f"job-done-{attempt}"
    server = _serve_the_gpu_job(github, name, done)
    event = {
        "action": "synchronize",
        "number": PR,
        "pull_request": {
            "number": PR,
            "head": {"sha": HEAD, "ref": "feature", "repo": {"full_name": REPO}},
            "base": {"ref": "main", "repo": {"full_name": REPO}},
        },
        "repository": {"full_name": REPO},
    }
    env = {
        **cli.env,
        **aws_env(),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "JOB_DONE": str(done),
    }
    # Over the workflow's own env: the ledger in moto's S3 instead of the example's bucket.
    overrides = {
        "CML_INFRA_BACKEND": backend,
        "CML_INFRA_GITHUB_URL": github.api_url,
        "CML_INFRA_RUNNER_ARCHIVE": str(build_archive(tmp_path / f"archive-{attempt}")),
    }
    options = Options(
        event_name="pull_request",
        event=event,
        repository=REPO,
        run_id=RUN_ID,
        run_attempt=attempt,
        sha=HEAD,
        ref=f"refs/pull/{PR}/merge",
        vars={"CML_INFRA_APP_ID": str(APP_ID)},
        secrets={"CML_INFRA_APP_PRIVATE_KEY": _pem(app_key)},
        github_token=JOB_TOKEN,
        api_url=github.api_url,
        server_url=github.web_url,
        base_env=env,
        env_overrides=overrides,
        # The example asks AWS for a spot T4; here the same launch runs on the local cloud.
        with_overrides={
            "launch.up": {
                "cloud": "local",
                "gpu": None,
                "spot": None,
                "region": None,
                "args": f"--name {name}",
            }
        },
        checkout=project,
        action_root=ROOT,
        use_current_venv=True,
        step_timeout=300,
    )
    result = WorkflowRun(WORKFLOW, tmp_path / f"run-{attempt}", options).run()
    server.join(timeout=60)
    return result, json.loads(done.read_text()) if done.exists() else {}


def _cost_row(body: str, name: str) -> str:
    rows = [line for line in body.splitlines() if line.startswith(f"| {name} |")]
    assert len(rows) == 1, body
    return rows[0]


def _files_under(root: Path) -> Iterator[bytes]:
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            yield path.read_bytes()


def test_the_example_workflow_reports_a_gpu_run_in_the_pull_request(
    tmp_path: Path, github: FakeGitHub, cli: Cli, backend: str, project: Path, s3: Any,
    app_key: rsa.RSAPrivateKey,
) -> None:  # fmt: skip
    first, job = _run(1, tmp_path, github, cli, backend, project, app_key)
    assert first.conclusion == "success", first.log
    assert {jid: j.result for jid, j in first.jobs.items()} == {
        "launch": "success", "train": "success", "report": "success", "teardown": "success",
    }  # fmt: skip
    # The runner that launch made ran the train job of this run, and is gone with the run.
    assert job["runner_name"] == f"gpu-{RUN_ID}-1" and job["run_id"] == RUN_ID
    assert first.jobs["launch"].outputs["name"] == f"gpu-{RUN_ID}-1"
    assert not [r for r in github.runners(f"repos/{REPO}") if r["name"].startswith("gpu-")]

    comments = github.issue_comments(REPO, PR)
    assert len(comments) == 1
    body = comments[0]["body"]
    assert comments[0]["user"]["login"] == "github-actions[bot]"
    assert "| train.loss | 0.125 |" in body and "| epochs | 3 |" in body
    row = _cost_row(body, f"gpu-{RUN_ID}-1")
    assert "| local |" in row
    assert first.jobs["report"].step("comment").outputs["comment-url"] == comments[0]["html_url"]
    # The plot: a blob of the assets branch, linked at the commit that holds it, whose bytes
    # are the train job's.
    links = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", body)
    assert len(links) == 1 and links[0].startswith(f"{github.web_url}/{REPO}/blob/")
    plot = (first.jobs["train"].workspace / "plot.png").read_bytes()
    web = requests.Session()
    web.trust_env = False  # loopback, never through a proxy
    assert web.get(links[0], timeout=10).content == plot
    branch = github.branch_files(REPO, "cml-infra-assets")
    assert list(branch.values()) == [plot]
    assert "What this run cost" in first.jobs["report"].summary

    # Re-run: a new runner for attempt 2; the same comment is edited, the plot (the same
    # bytes) is not uploaded again, and the cost table counts both attempts.
    assets_head = github.ref(REPO, "cml-infra-assets")
    second, job = _run(2, tmp_path, github, cli, backend, project, app_key)
    assert second.conclusion == "success", second.log
    assert job["runner_name"] == f"gpu-{RUN_ID}-2"
    again = github.issue_comments(REPO, PR)
    assert len(again) == 1 and again[0]["id"] == comments[0]["id"]
    assert again[0]["updated_at"] >= comments[0]["updated_at"]
    _cost_row(again[0]["body"], f"gpu-{RUN_ID}-1")
    _cost_row(again[0]["body"], f"gpu-{RUN_ID}-2")
    assert github.ref(REPO, "cml-infra-assets") == assets_head
    link = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", again[0]["body"])[0]
    assert urlsplit(link).path == urlsplit(links[0]).path

    assert_no_processes_in(tmp_path)
    # No secret anywhere: not the App's key, not a token minted from it, not the job's token.
    key_line = _pem(app_key).splitlines()[5]
    canaries = [key_line, JOB_TOKEN, *github.minted_tokens()]
    assert len(canaries) >= 3
    bucket = backend.removeprefix("s3://").split("/", 1)[0]
    stored = [s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in _objects(s3, backend)]
    texts = [first.log, second.log, *(c["body"] for c in again)]
    for canary in canaries:
        assert all(canary not in text for text in texts), "a secret in a log or the comment"
        raw = canary.encode()
        assert all(raw not in blob for blob in branch.values())
        assert all(raw not in blob for blob in stored), "a secret in the ledger"
        assert all(raw not in blob for blob in _files_under(cli.state_dir))
