"""`cml-infra modules eject` and `modules diff`: a fork started in one command, with a README of
the contract from the code, and what differs from the packaged modules after an upgrade."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from cml_infra import clouds, packaged
from cml_infra.cli import app
from cml_infra.modules import contract, eject

MODULES = sorted({cls.module for cls in clouds.classes().values()})


def invoke(*args: str):
    return CliRunner().invoke(app, ["modules", *args])


def test_eject_copies_every_module_the_templates_and_a_readme(tmp_path):
    target = tmp_path / "forks"
    result = invoke("eject", str(target))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{target}\n"
    assert sorted(p.name for p in target.iterdir()) == sorted([*MODULES, "templates", "README.md"])
    for module in MODULES:
        source = packaged.module_dir(module)
        for path in source.rglob("*"):
            copy = target / module / path.relative_to(source)
            assert copy.exists(), copy
            if path.is_file():
                assert copy.read_bytes() == path.read_bytes()
                assert os.access(copy, os.X_OK) == os.access(path, os.X_OK)
    assert (target / "templates" / "root.tf.j2").is_file()


def test_the_readme_is_the_contract_of_the_code(tmp_path):
    target = tmp_path / "forks"
    assert invoke("eject", str(target), "--cloud", "aws").exit_code == 0
    readme = (target / "README.md").read_text()
    assert readme.startswith(eject.MARK)
    assert f"up --modules-dir {target}" in readme
    aws = contract.of(clouds.classes()["aws"])
    for name in aws.variables:
        assert f"| `{name}`" in readme
    for name, flag in aws.flag_variables.items():
        assert f"| `{name}` | {flag} | only with {flag}" in readme
    assert "Outputs cml-infra reads: `id`, `region`." in readme
    assert "### local" not in readme, "only the modules the folder holds"


def test_eject_of_one_cloud_by_its_alias(tmp_path):
    target = tmp_path / "forks"
    assert invoke("eject", str(target), "--cloud", "ec2").exit_code == 0
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "aws", "templates"]


def test_eject_refuses_a_fork_that_is_there_unless_forced(tmp_path):
    target = tmp_path / "forks"
    assert invoke("eject", str(target), "--cloud", "local").exit_code == 0
    (target / "local" / "mine.tf").write_text("# the team's\n")
    result = invoke("eject", str(target), "--cloud", "local")
    assert result.exit_code == 2
    assert result.output.startswith(f"error: DIR: {target} already holds local/ (a fork?)")
    assert (target / "local" / "mine.tf").exists()
    # Another cloud beside it is fine, and keeps the templates the team may have changed.
    (target / "templates" / "root.tf.j2").write_text("# changed\n")
    result = invoke("eject", str(target), "--cloud", "gcp")
    assert result.exit_code == 0, result.output
    assert (target / "templates" / "root.tf.j2").read_text() == "# changed\n"
    assert "### gcp" in (target / "README.md").read_text()
    assert "### local" in (target / "README.md").read_text()
    result = invoke("eject", str(target), "--cloud", "local", "--force")
    assert result.exit_code == 0, result.output
    assert not (target / "local" / "mine.tf").exists()
    assert (target / "templates" / "root.tf.j2").read_text() != "# changed\n"


def test_eject_keeps_a_readme_that_is_not_its_own(tmp_path):
    target = tmp_path / "forks"
    target.mkdir()
    (target / "README.md").write_text("# Our forks\n")
    result = invoke("eject", str(target), "--cloud", "local")
    assert result.exit_code == 0
    assert (target / "README.md").read_text() == "# Our forks\n"


def test_eject_into_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    result = invoke("eject", str(tmp_path / "file"))
    assert result.exit_code == 2
    assert result.output == f"error: DIR: {tmp_path / 'file'} is not a folder\n"


def test_an_unknown_cloud(tmp_path):
    result = invoke("eject", str(tmp_path / "forks"), "--cloud", "gpc")
    assert result.exit_code == 2
    assert "unknown cloud 'gpc'" in result.output
    assert not (tmp_path / "forks").exists()


@pytest.fixture
def fork(tmp_path):
    target = tmp_path / "forks"
    assert invoke("eject", str(target), "--cloud", "local").exit_code == 0
    return target


def test_a_fresh_fork_is_the_same_as_packaged(fork):
    result = invoke("diff", str(fork), "--exit-code")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "local/: same as packaged" in result.output


def test_diff_shows_what_the_fork_added_removed_and_changed(fork):
    (fork / "local" / "marker.tf").write_text('variable "marker_text" {}\n')
    (fork / "local" / "versions.tf").unlink()
    main = fork / "local" / "main.tf"
    main.write_text(main.read_text().replace("locals {", "locals {\n  team = true", 1))
    (fork / "local" / ".terraform").mkdir()
    (fork / "local" / ".terraform" / "junk").write_text("x")
    (fork / "local" / "terraform.tfstate").write_text("{}")
    result = invoke("diff", str(fork))
    assert result.exit_code == 0, "a difference is no error without --exit-code"
    out = result.stdout
    assert (
        '--- /dev/null\n+++ b/local/marker.tf\n@@ -0,0 +1 @@\n+variable "marker_text" {}\n' in out
    )
    assert "--- a/local/versions.tf\n+++ /dev/null\n" in out
    assert "--- a/local/main.tf\n+++ b/local/main.tf\n" in out and "+  team = true\n" in out
    assert ".terraform" not in out and "tfstate" not in out
    assert "local/: 1 added, 1 removed, 1 changed" in result.output
    assert invoke("diff", str(fork), "--exit-code").exit_code == 1


def test_a_template_the_fork_leaves_out_is_not_removed(fork):
    (fork / "templates" / "root.tf.j2").unlink()
    result = invoke("diff", str(fork), "--exit-code")
    assert result.exit_code == 0, result.output
    assert "templates/: same as packaged" in result.output


def test_diff_of_a_cloud_the_folder_lacks(fork):
    result = invoke("diff", str(fork), "--cloud", "gcp")
    assert result.exit_code == 2
    assert result.output == f"error: DIR: no gcp/ in {fork} (looked for {fork / 'gcp'})\n"


def test_diff_of_a_folder_without_forks(tmp_path):
    result = invoke("diff", str(tmp_path))
    assert result.exit_code == 2
    assert "holds no fork: none of aws/, azure/, gcp/, local/ or templates/" in result.output
