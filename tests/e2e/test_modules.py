"""A platform team's fork, with real Terraform on the local cloud: `modules eject`, a resource and
a variable of its own (`up --modules-dir DIR --var ...`), destroyed with the instance; and a fork
or a value that does not fit, refused before anything is created."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli

pytestmark = pytest.mark.e2e

# A file beside the sandbox holding `marker_text`, made after the instance and removed before
# it goes; only the built-in terraform_data, like the module itself: no provider to download.
MARKER_TF = """\
variable "marker_text" {
  description = "What the marker file beside the sandbox holds."
  type        = string
  nullable    = false

  validation {
    condition     = length(var.marker_text) > 0
    error_message = "The marker_text must not be empty."
  }
}

resource "terraform_data" "marker" {
  depends_on = [terraform_data.instance]

  input = {
    path = "${var.instances_root}/${var.name}.marker"
    text = var.marker_text
  }

  provisioner "local-exec" {
    interpreter = ["/bin/sh", "-c"]
    command     = "printf '%s' \\"$TEXT\\" > \\"$MARKER\\""
    environment = {
      MARKER = self.output.path
      TEXT   = self.output.text
    }
  }

  provisioner "local-exec" {
    when        = destroy
    interpreter = ["/bin/sh", "-c"]
    command     = "rm -f \\"$MARKER\\""
    environment = {
      MARKER = self.output.path
    }
  }
}
"""


@pytest.fixture
def fork(cli: Cli, tmp_path: Path) -> Path:
    forks = tmp_path / "forks"
    assert cli.ok("modules", "eject", str(forks), "--cloud", "local").strip() == str(forks)
    (forks / "local" / "marker.tf").write_text(MARKER_TF)
    return forks


def marker(cli: Cli, name: str) -> Path:
    return cli.sandbox(name).parent / f"{name}.marker"


def test_a_fork_with_a_resource_and_a_variable_of_its_own(cli: Cli, fork: Path) -> None:
    diff = cli.run("modules", "diff", str(fork), "--exit-code")
    assert diff.returncode == 1
    assert "+++ b/local/marker.tf" in diff.stdout
    assert "local/: 1 added, 0 removed, 0 changed" in diff.stderr

    up = cli.run("up", "--name", "forked", "--modules-dir", str(fork),
                 "--var", "marker_text=hello")  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert marker(cli, "forked").read_text() == "hello"
    workspace = cli.state_dir / "runners" / "forked" / "workspace"
    assert (workspace / "module" / "marker.tf").read_text() == MARKER_TF

    # `down` destroys with the workspace's own copy, whatever the fork folder holds by then.
    (fork / "local" / "marker.tf").unlink()
    cli.ok("down", "forked")
    assert not marker(cli, "forked").exists()
    assert not cli.sandbox("forked").exists()


def test_the_instance_ending_itself_removes_what_the_fork_made(cli: Cli, fork: Path) -> None:
    cli.ok("up", "--name", "selfend", "--modules-dir", str(fork), "--var", "marker_text=bye",
           "--idle-timeout", "2s")  # fmt: skip
    assert marker(cli, "selfend").read_text() == "bye"
    cli.wait_state("selfend", {"destroyed"}, timeout=60)
    assert not marker(cli, "selfend").exists()


def assert_nothing_created(cli: Cli, name: str) -> None:
    assert not (cli.state_dir / "runners" / name).exists(), "a record was written"
    assert not cli.sandbox(name).exists(), "an instance was made"
    assert cli.ok("status", "--all", "--json").strip() == "[]"


def test_a_fork_without_an_output_creates_nothing(cli: Cli, fork: Path) -> None:
    outputs = fork / "local" / "outputs.tf"
    outputs.write_text(re.sub(r'output "id" \{.*?\n\}\n', "", outputs.read_text(), flags=re.S))
    done = cli.run("up", "--name", "noid", "--modules-dir", str(fork), "--var", "marker_text=x")
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"error: --modules-dir: the local module in {fork / 'local'} does not fit cml-infra's "
        "contract: declares no output id (cml-infra reads it)"
    ]
    assert_nothing_created(cli, "noid")


def test_a_fork_variable_without_a_value_creates_nothing(cli: Cli, fork: Path) -> None:
    done = cli.run("up", "--name", "novalue", "--modules-dir", str(fork))
    assert done.returncode == 2
    assert "requires marker_text, which cml-infra does not set" in done.stderr
    assert_nothing_created(cli, "novalue")


def test_a_value_the_forks_validation_refuses_fails_render(cli: Cli, fork: Path, tmp_path) -> None:
    out = tmp_path / "out"
    done = cli.run("render", "-o", str(out), "--modules-dir", str(fork), "--var", "marker_text=")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: --var: marker_text: the local module refuses it: The marker_text must not be empty."
    ]
    assert not out.exists()
    done = cli.run("render", "-o", str(out), "--var", "marker_text=x")
    assert done.returncode == 2
    assert done.stderr.startswith(
        "error: --var: marker_text: not a variable of the local module packaged with cml-infra; "
        "--var may set: stop_grace_seconds"
    )
