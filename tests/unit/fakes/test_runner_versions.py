"""GitHub's rule on runner versions, as the fakes enforce it: the runner double says its version
(bin/runnerversion in its archive) when it registers and when it asks for a session, and the fake
GitHub refuses a runner older than its minimum with GitHub's own words."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.fakes import runner_double
from tests.fakes.github import (
    DEPRECATED_RUNNER,
    MINIMUM_RUNNER_VERSION,
    TOO_OLD_TO_REGISTER,
    FakeGitHub,
)

TOKEN = "ghp_versions_CANARY_321"
WAIT = 10.0
# The double's scripts run `python3` from PATH: this interpreter's.
ENV = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))

pytestmark = pytest.mark.usefixtures("no_proxy")


@pytest.fixture
def gh():
    with FakeGitHub(TOKEN) as fake:
        yield fake
        assert fake.violations == [], fake.violations


def unpacked(tmp_path: Path, version: str) -> Path:
    """The double released as `version`, unpacked as an instance would have it."""
    archive = runner_double.build_archive(tmp_path / "dist", version=version)
    folder = tmp_path / f"runner-{version}"
    folder.mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(folder)], check=True, timeout=WAIT)
    return folder


def api(gh: FakeGitHub, method: str, path: str, body: dict | None = None) -> dict:
    with requests.Session() as session:
        session.trust_env = False
        reply = session.request(
            method,
            f"{gh.api_url}{path}",
            json=body,
            headers={"Authorization": f"token {TOKEN}"},
            timeout=5,
        )
    assert reply.ok, reply.text
    return reply.json()


def configure(gh: FakeGitHub, folder: Path) -> subprocess.CompletedProcess[str]:
    token = api(gh, "POST", "/repos/octo/repo/actions/runners/registration-token")["token"]
    argv = ["./config.sh", "--unattended", "--url", f"{gh.url}/octo/repo", "--token", token,
            "--name", "v-1", "--labels", "cml"]  # fmt: skip
    return subprocess.run(
        argv, cwd=folder, env=ENV, capture_output=True, encoding="utf-8", timeout=WAIT
    )


def test_the_archive_carries_its_version(tmp_path):
    folder = unpacked(tmp_path, "2.334.1")
    assert (folder / runner_double.VERSION_FILE).read_text() == "2.334.1\n"
    done = subprocess.run(
        ["bin/Runner.Listener", "--version"],
        cwd=folder,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.stdout.strip() == "2.334.1"


def test_a_current_runner_registers_and_github_shows_its_version(gh, tmp_path):
    done = configure(gh, unpacked(tmp_path, MINIMUM_RUNNER_VERSION))
    assert done.returncode == 0, done.stdout + done.stderr
    (registered,) = gh.runners("octo/repo")
    assert registered["version"] == MINIMUM_RUNNER_VERSION


def test_config_sh_of_a_runner_too_old_is_refused_with_githubs_message(gh, tmp_path):
    done = configure(gh, unpacked(tmp_path, "2.321.0"))
    assert done.returncode == 1
    assert TOO_OLD_TO_REGISTER.format(minimum=MINIMUM_RUNNER_VERSION) in done.stderr
    assert "Http response code: 404" in done.stderr
    assert gh.runners("octo/repo") == []
    assert not (tmp_path / "runner-2.321.0" / ".runner").exists()


def test_the_minimum_is_the_fakes_to_raise(gh, tmp_path):
    gh.minimum_runner_version = "2.331.0"
    done = configure(gh, unpacked(tmp_path, "2.330.0"))
    assert done.returncode == 1
    assert "is now 2.331.0" in done.stderr


def test_a_jit_runner_too_old_gets_no_session_and_exits(gh, tmp_path):
    """A JIT runner skips config.sh: GitHub refuses it when it asks for jobs, and the listener
    exits with the real one's lines (actions/runner#3651)."""
    body = {"name": "jit-old", "runner_group_id": 1, "labels": ["self-hosted", "cml"]}
    minted = api(gh, "POST", "/repos/octo/repo/actions/runners/generate-jitconfig", body)
    config = json.loads(base64.b64decode(minted["encoded_jit_config"]))
    assert config["name"] == "jit-old"
    done = subprocess.run(
        ["./run.sh", "--jitconfig", minted["encoded_jit_config"]],
        cwd=unpacked(tmp_path, "2.321.0"),
        env=ENV,
        capture_output=True,
        encoding="utf-8",
        timeout=WAIT,
    )
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert f"An error occured: {DEPRECATED_RUNNER.format(version='2.321.0')}" in lines
    assert "Runner listener exit with terminated error, stop the service, no retry needed." in lines
    assert not any("Listening for Jobs" in line for line in lines)
    (runner,) = gh.runners("octo/repo")
    assert runner["status"] == "offline"
