"""Module variables and forks from the config file: a `[vars]` table beneath `--var` (key by
key), and `modules-dir`; both decide what code runs, so both need the user's trust."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cml_infra.cli import app
from cml_infra.spec import parse_vars


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.delenv("CML_INFRA_CONFIG")
    monkeypatch.setenv("CML_INFRA_HOME", str(tmp_path / "state"))
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.chdir(root)
    return root


def render(*args: str):
    return CliRunner().invoke(app, ["render", "-o", "out", *args])


GCP_VARS = """cloud = "gcp"

[vars]
boot_disk_type = "pd-ssd"
gpu_image_family = "team-family"
"""


def test_vars_need_trust(project, tmp_path):
    (project / ".cml-infra.toml").write_text(GCP_VARS)
    result = render()
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {project / '.cml-infra.toml'}: [vars]: not taken ")
    assert "CML_INFRA_TRUST_CONFIG=1" in result.output
    assert not (project / "out").exists() and not (tmp_path / "state").exists()


def test_the_var_flag_wins_key_by_key(project, monkeypatch):
    monkeypatch.setenv("CML_INFRA_TRUST_CONFIG", "1")
    (project / ".cml-infra.toml").write_text(GCP_VARS)
    result = render("--var", "boot_disk_type=pd-standard")
    assert result.exit_code == 0, result.output
    variables = json.loads((project / "out" / "terraform.tfvars.json").read_text())
    assert variables["boot_disk_type"] == "pd-standard"
    assert variables["gpu_image_family"] == "team-family"


def test_a_file_var_the_module_refuses_says_where_it_came_from(project, monkeypatch):
    monkeypatch.setenv("CML_INFRA_TRUST_CONFIG", "1")
    (project / ".cml-infra.toml").write_text(GCP_VARS.replace("pd-ssd", "pd-fast"))
    result = render()
    assert result.exit_code == 2
    assert result.output.startswith(
        f"error: --var: boot_disk_type (set in [vars] of {project / '.cml-infra.toml'}): the "
        'gcp module refuses it: The boot_disk_type must be one of "pd-standard"'
    )
    (project / ".cml-infra.toml").write_text('[vars]\nkms = "k"\n')
    result = render()
    assert result.exit_code == 2
    assert f"kms (set in [vars] of {project / '.cml-infra.toml'}): not a variable" in result.output


def test_doctor_names_the_vars(project, monkeypatch):
    monkeypatch.setenv("CML_INFRA_TRUST_CONFIG", "1")
    (project / ".cml-infra.toml").write_text(GCP_VARS)
    result = CliRunner().invoke(app, ["doctor", "--cloud", "local"])
    assert "[vars] boot_disk_type, [vars] gpu_image_family" in result.stdout.splitlines()[0]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('var = ["boot_disk_type=pd-ssd"]\n', "var: module variables go in a [vars] table"),
        ('vars = "x"\n', "[vars] must be a table of module variables"),
        ('[vars]\n"not a name" = 1\n', "[vars] 'not a name' is not a variable name"),
        ("[vars]\nwhen = 2030-01-01\n", "[vars] when: a date or time is no module value"),
    ],
)
def test_bad_vars(project, monkeypatch, text, fragment):
    monkeypatch.setenv("CML_INFRA_TRUST_CONFIG", "1")
    (project / ".cml-infra.toml").write_text(text)
    result = render()
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {project / '.cml-infra.toml'}: {fragment}")
    assert len(result.output.splitlines()) == 1


def test_modules_dir_needs_trust_and_is_relative_to_the_file(project, monkeypatch):
    (project / ".cml-infra.toml").write_text('modules-dir = "forks"\n')
    result = render()
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {project / '.cml-infra.toml'}: modules-dir: ")
    monkeypatch.setenv("CML_INFRA_TRUST_CONFIG", "1")
    (project / "sub").mkdir()
    monkeypatch.chdir(project / "sub")
    result = render()
    assert result.exit_code == 2
    assert result.output.startswith(f"error: --modules-dir: {project / 'forks'}: no such folder")
    assert f"--modules-dir is set in {project / '.cml-infra.toml'}" in result.output


def test_parse_vars():
    assert parse_vars(["a=1", "b=true", 'c=["x"]', "d=text", "e=", 'f="1"', "g=NaN"]) == {
        "a": 1, "b": True, "c": ["x"], "d": "text", "e": "", "f": "1", "g": "NaN",
    }  # fmt: skip
    assert parse_vars(["a=2"], defaults={"a": 1, "b": 1}) == {"a": 2, "b": 1}
