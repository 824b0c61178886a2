"""`up` in runner mode when the instance ends itself before its runner comes online: the error
says so, with the agent's reason where the cloud keeps the instance log (the local cloud)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Cli, assert_no_processes_in

pytestmark = pytest.mark.e2e


def test_a_runner_that_cannot_start_fails_up_with_the_agents_reason(
    runner_cli: Cli, github, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not a runner archive")
    done = runner_cli.run("up", "--name", "broken", "--repo", "octo/repo", "--github-url",
                          github.url, "--runner-archive", str(broken), "--single",
                          "--startup-timeout", "8s")  # fmt: skip
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "did not come online" in errors[0]
    assert (
        "the instance ended itself before the runner came online: runner could not start: "
        in errors[0]
    ), errors[0]
    assert not runner_cli.sandbox("broken").exists()
    assert_no_processes_in(runner_cli.state_dir)
    assert runner_cli.status()["broken"]["state"] == "destroyed"
