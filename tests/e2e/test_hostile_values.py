"""Hostile values through the whole local cloud, for real: a state dir whose path holds `$()`,
backticks, quotes, `${}`, `%{}` (and a newline), and a task whose arguments hold the same. `up`
(real Terraform: tfvars, create.sh, the startup script, the agent), `status`, `logs`, then
`down` or the instance's own self-destroy (whose argv carries the state dir). Nothing runs that
the values spell out: no marker file appears, and the task gets its arguments as given.
(The templates one by one, with every input: tests/unit/test_render_hostile.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli, assert_no_processes_in, processes_in
from tests.unit.test_render_hostile import hostile_name, hostile_values, markers_left

pytestmark = pytest.mark.e2e


class ElsewhereCli(Cli):
    """The CLI run from a folder of the test's own, so that a command a value smuggled into a
    shell, with a relative path, would leave its file where the test looks."""

    def __init__(self, state_dir: Path, env: dict[str, str], cwd: Path) -> None:
        super().__init__(state_dir, env)
        self.cwd = cwd


@pytest.fixture
def hostile_cli(tmp_path: Path) -> Iterator[Callable[[Path], ElsewhereCli]]:
    """A CLI whose CML_INFRA_HOME is the given path; whatever it leaves running is ended."""
    made: list[ElsewhereCli] = []
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    def make(state_dir: Path) -> ElsewhereCli:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CML_INFRA_")}
        env["CML_INFRA_HOME"] = str(state_dir)
        env["CML_INFRA_CONFIG"] = ""
        env.pop("TF_CLI_CONFIG_FILE", None)
        made.append(ElsewhereCli(state_dir, env, cwd))
        return made[-1]

    yield make
    for cli in made:
        if (cli.state_dir / "runners").is_dir():
            cli.run("down", "--all")
        for pid in processes_in(cli.state_dir):
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)


def assert_nothing_ran(tmp_path: Path) -> None:
    assert markers_left(tmp_path) == []
    assert not (tmp_path / "PWNED").exists()
    assert not [path.name for path in Path.cwd().glob("PWNED*")]


def test_the_reviewers_state_dir_runs_nothing(hostile_cli, tmp_path: Path) -> None:
    """`CML_INFRA_HOME='/tmp/sd$(touch /tmp/PWNED)' cml-infra up --cloud local -- true`, which
    once made the marker, here under the test's own folder rather than the shared /tmp."""
    cli = hostile_cli(Path(f"{tmp_path}/sd$(touch {tmp_path}/PWNED)"))
    done = cli.run("up", "--cloud", "local", "--", "true")
    assert done.returncode == 0, done.stderr
    name = done.stdout.strip()
    assert cli.status()[name]["state"] in {"running", "idle"}
    down = cli.run("down", name)
    assert down.returncode == 0, down.stderr
    assert_no_processes_in(cli.sandbox(name))
    assert_nothing_ran(tmp_path)


STATE_DIRS = {
    "quotes": lambda tmp: tmp / hostile_name(newline=False),
    "newline": lambda tmp: tmp / hostile_name(newline=True),
}


@pytest.mark.parametrize("state_dir", list(STATE_DIRS))
def test_hostile_state_dir_and_task_stay_literal(hostile_cli, tmp_path: Path, state_dir) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    cli = hostile_cli(STATE_DIRS[state_dir](tmp_path))
    args = hostile_values(markers)
    seen = tmp_path / "argv.json"
    task = [sys.executable, "-c",
            "import json, sys; open(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))",
            str(seen), *args]  # fmt: skip
    tag = args[0]
    done = cli.run("up", "--cloud", "local", "--name", "hostile", "--idle-timeout", "1h",
                   "--tag", f"k={tag}", "--", *task)  # fmt: skip
    assert done.returncode == 0, done.stderr

    deadline = time.monotonic() + 30
    while not (seen.exists() and seen.read_text().endswith("]")):
        assert time.monotonic() < deadline, cli.ok("logs", "hostile")
        time.sleep(0.1)
    assert json.loads(seen.read_text()) == args
    sandbox = cli.sandbox("hostile")
    assert json.loads((sandbox / "instance.json").read_text())["tags"]["k"] == tag
    assert cli.status()["hostile"]["state"] in {"running", "idle"}
    while "task ended with exit code 0" not in (log := cli.ok("logs", "hostile")):
        assert time.monotonic() < deadline, log
        time.sleep(0.2)

    down = cli.run("down", "hostile")
    assert down.returncode == 0, down.stderr
    assert not sandbox.exists()
    assert_no_processes_in(sandbox)
    assert cli.status()["hostile"]["state"] == "destroyed"
    assert "task ended with exit code 0" in cli.ok("logs", "hostile")
    assert_nothing_ran(tmp_path)


@pytest.mark.parametrize("state_dir", list(STATE_DIRS))
def test_self_destroy_under_a_hostile_state_dir(hostile_cli, tmp_path: Path, state_dir) -> None:
    """The instance ends itself with `cml-infra down NAME --state-dir <that path>`."""
    cli = hostile_cli(STATE_DIRS[state_dir](tmp_path))
    done = cli.run("up", "--cloud", "local", "--name", "selfie", "--single", "--", "true")
    assert done.returncode == 0, done.stderr
    row = cli.wait_state("selfie", {"destroyed"}, timeout=60)
    assert row["end_reason"] == "single task done"
    assert not cli.sandbox("selfie").exists()
    assert_no_processes_in(cli.sandbox("selfie"))
    assert_nothing_ran(tmp_path)
