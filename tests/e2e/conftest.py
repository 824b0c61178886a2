"""End-to-end fixtures: the real CLI in subprocesses, real Terraform, the local cloud."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.emulators import moto_server
from tests.fakes.github import FakeGitHub
from tests.fakes.runner_double import build_archive

pytestmark = pytest.mark.e2e


def processes_in(root: Path) -> list[int]:
    """Pids whose working directory is under `root` (a local instance runs in its sandbox)."""
    cwds = Path("/proc").glob("[0-9]*/cwd")
    return [int(cwd.parent.name) for cwd in cwds if _target(cwd).startswith(str(root))]


def _target(link: Path) -> str:
    """Where `link` points; "" once its process is gone, or when it is not ours to read."""
    try:
        return os.readlink(link)
    except OSError:
        return ""


def assert_no_processes_in(root: Path, within: float = 15.0) -> None:
    """No process runs under `root`, or none does within `within` seconds: the instance's own
    `down` (in a session of its own) may still be exiting when the record already says
    destroyed. A leaked process outlives the wait, and is named."""
    deadline = time.monotonic() + within
    while left := processes_in(root):
        if time.monotonic() > deadline:
            described = []
            for pid in left:
                with contextlib.suppress(OSError):
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                    described.append(f"{pid}: {cmdline.decode(errors='replace').strip()}")
            raise AssertionError(f"still running under {root} after {within:g}s: {described}")
        time.sleep(0.2)


class Cli:
    """Runs `python -m cml_infra` against one state dir, as a user would from a shell."""

    def __init__(self, state_dir: Path, env: dict[str, str]) -> None:
        self.state_dir = state_dir
        self.env = env
        # Where the commands run: a task packs its working folder, which must not be the
        # repository the tests run from.
        self.cwd = state_dir.parent / "cwd"
        self.cwd.mkdir(parents=True, exist_ok=True)

    def run(
        self, *args: str, timeout: float = 120, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cml_infra", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=cwd or self.cwd,
        )

    def start(
        self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "cml_infra", *args],
            env=env or self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd or self.cwd,
        )

    def ok(self, *args: str, cwd: Path | None = None) -> str:
        done = self.run(*args, cwd=cwd)
        assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stderr}"
        return done.stdout

    def status(self) -> dict[str, dict[str, object]]:
        return {row["name"]: row for row in json.loads(self.ok("status", "--all", "--json"))}

    def wait_state(self, name: str, states: set[str], timeout: float = 60) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while True:
            row = self.status().get(name, {})
            if row.get("state") in states:
                return row
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} never reached {states}; last: {row}")
            time.sleep(0.5)

    def sandbox(self, name: str) -> Path:
        return self.state_dir / "local" / "instances" / name


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    state_dir = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CML_INFRA_")}
    env["CML_INFRA_HOME"] = str(state_dir)
    env["CML_INFRA_CONFIG"] = ""  # no project config file of the machine's folders applies
    env.pop("TF_CLI_CONFIG_FILE", None)
    yield Cli(state_dir, env)
    # Whatever a failing test left running is destroyed, then killed outright if need be.
    if (state_dir / "runners").is_dir():
        Cli(state_dir, env).run("down", "--all")
    for pid in processes_in(state_dir):
        with contextlib.suppress(OSError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)


@pytest.fixture
def fake_bash(tmp_path: Path) -> Callable[[str], dict[str, str]]:
    """Env overrides that put a `bash` running `prelude` first on PATH: the startup script runs
    under it, so a test can hold `up` inside terraform apply (sleep) or fail the boot (exit)."""

    def make(prelude: str) -> dict[str, str]:
        bin_dir = tmp_path / "fake-bin"
        bin_dir.mkdir(exist_ok=True)
        wrapper = bin_dir / "bash"
        wrapper.write_text(f'#!/bin/sh\n{prelude}\nexec /bin/bash "$@"\n')
        wrapper.chmod(0o755)
        return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    return make


# --- GitHub runners: a loopback GitHub and the runner double -----------------------------------

# Unique per run, so that no other test process can be mistaken for a leak.
TOKEN = f"ghp_CANARY{secrets.token_hex(12)}"
SCOPE = "repos/octo/repo"


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub(token=TOKEN, repos=("octo/repo",), orgs=("octo",)) as fake:
        yield fake
        assert fake.violations == [], fake.violations


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return build_archive(tmp_path / "archive")


@pytest.fixture
def runner_cli(cli: Cli) -> Cli:
    # The double's scripts run with the first python3 on PATH: the test interpreter's.
    cli.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{cli.env['PATH']}"
    cli.env["CML_INFRA_TOKEN"] = TOKEN
    return cli


# --- A ledger in S3: moto's server on loopback ------------------------------------------------

REGION = "us-east-1"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    import boto3

    for key, value in aws_env().items():
        monkeypatch.setenv(key, value)
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name=REGION)


def aws_env() -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
