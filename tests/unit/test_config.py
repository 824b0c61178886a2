"""cml_infra.config: project defaults from .cml-infra.toml or pyproject.toml, under flags and
CML_INFRA_* variables, with every bad key refused by name."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from cml_infra import catalog, config
from cml_infra.cli import app


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder as the working folder, with the search for a config file on."""
    monkeypatch.delenv("CML_INFRA_CONFIG")
    monkeypatch.setenv("CML_INFRA_HOME", str(tmp_path / "state"))
    root = tmp_path / "project"
    (root / "sub").mkdir(parents=True)
    monkeypatch.chdir(root)
    return root


def render(*args: str):
    return CliRunner().invoke(app, ["render", "-o", "out", *args])


def tfvars(folder, out: str = "out") -> dict:
    return json.loads((folder / out / "terraform.tfvars.json").read_text())


def region(folder, out: str = "out") -> str:
    """The provider's region in the rendered root module."""
    found = re.search(r'region\s*=\s*"([^"]+)"', (folder / out / "main.tf").read_text())
    assert found, "no region in main.tf"
    return found.group(1)


AWS_T4_SPOT = 'cloud = "aws"\ngpu = "t4"\nspot = true\nregion = "us-west-2"\n'


def test_the_file_sets_the_defaults(project):
    (project / ".cml-infra.toml").write_text(AWS_T4_SPOT)
    result = render()
    assert result.exit_code == 0, result.output
    variables = tfvars(project)
    assert variables["instance_type"] == "g4dn.xlarge"
    assert region(project) == "us-west-2"
    assert variables["spot"] is True


def test_a_flag_wins_over_the_file(project):
    (project / ".cml-infra.toml").write_text(AWS_T4_SPOT)
    assert render("--region", "eu-west-1", "--no-spot").exit_code == 0
    assert region(project) == "eu-west-1"
    assert tfvars(project)["spot"] is False


def test_a_variable_wins_over_the_file(project, monkeypatch):
    (project / ".cml-infra.toml").write_text(AWS_T4_SPOT)
    monkeypatch.setenv("CML_INFRA_REGION", "us-east-2")
    assert render().exit_code == 0
    assert region(project) == "us-east-2"


def test_found_from_a_subfolder_in_pyproject(project, monkeypatch):
    (project / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.cml-infra]\ncloud = "aws"\nsize = "l"\n'
    )
    monkeypatch.chdir(project / "sub")
    assert render().exit_code == 0
    assert tfvars(project / "sub")["instance_type"] == catalog.load("aws").sizes["l"]


def test_a_pyproject_without_our_table_is_passed_over(project):
    (project.parent / ".cml-infra.toml").write_text('cloud = "aws"\n')
    (project / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert render().exit_code == 0
    assert "instance_type" in tfvars(project), "the parent folder's file was not used"


def test_the_variable_names_the_file_or_turns_the_search_off(project, monkeypatch, tmp_path):
    (project / ".cml-infra.toml").write_text(AWS_T4_SPOT)
    elsewhere = tmp_path / "team.toml"
    elsewhere.write_text('cloud = "aws"\nregion = "eu-central-1"\n')
    monkeypatch.setenv("CML_INFRA_CONFIG", str(elsewhere))
    assert render().exit_code == 0
    assert region(project) == "eu-central-1"
    monkeypatch.setenv("CML_INFRA_CONFIG", "")
    assert render("-o", "out2").exit_code == 0  # the last -o wins: out2
    assert "instance_type" not in tfvars(project, "out2"), "the local cloud, as if no file"


def assert_file_error(result, path, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith(f"error: {path}: "), result.output
    assert fragment in lines[0]


def test_an_unknown_key_is_refused_with_the_valid_ones(project):
    (project / ".cml-infra.toml").write_text('cloud = "aws"\ngpus = "t4"\n')
    result = render()
    assert_file_error(result, project / ".cml-infra.toml", "unknown key 'gpus'; valid: ")
    assert "gpu, idle-timeout" in result.output and "type" in result.output
    assert not (project / "out").exists()


def test_a_token_never_comes_from_a_file(project):
    (project / ".cml-infra.toml").write_text('token = "ghp_CANARY_in_a_file"\n')
    result = render()
    assert_file_error(result, project / ".cml-infra.toml", "a token never goes in a file")
    assert "ghp_CANARY_in_a_file" not in result.output


def test_bad_toml_is_one_line(project):
    (project / ".cml-infra.toml").write_text('cloud = "aws\n')
    assert_file_error(render(), project / ".cml-infra.toml", "not valid TOML")


def test_a_cleanup_table_must_hold_cleanup_options(project):
    (project / ".cml-infra.toml").write_text('[cleanup]\nmax-age = "6h"\ngpu = "t4"\n')
    assert_file_error(render(), project / ".cml-infra.toml", "unknown key 'cleanup.gpu'")


def test_a_bad_value_from_the_file_names_the_flag_and_the_file(project):
    (project / ".cml-infra.toml").write_text('ttl = "0"\n')
    result = render()
    assert result.exit_code == 2
    assert result.output.startswith("error: --ttl: '0' must be longer than zero")
    assert f"(--ttl is set in {project / '.cml-infra.toml'}" in result.output


def test_cleanup_takes_its_table(project, monkeypatch):
    (project / ".cml-infra.toml").write_text('cloud = "aws"\n[cleanup]\nmax-age = "0"\n')
    result = CliRunner().invoke(app, ["cleanup", "--cloud", "local", "--dry-run"])
    assert result.exit_code == 2
    assert result.output.startswith("error: --max-age: '0' must be longer than zero")


def test_render_skips_the_launch_only_keys_of_up(project):
    # --wait and --reuse-idle are options of up alone; the same file serves both commands.
    (project / ".cml-infra.toml").write_text('cloud = "aws"\nwait = false\nreuse-idle = false\n')
    assert render().exit_code == 0


def test_render_checks_the_budget_as_up_would(project):
    (project / ".cml-infra.toml").write_text('cloud = "aws"\nbudget = 0.01\n')
    result = render()
    assert result.exit_code == 2
    assert result.output.startswith("error: --budget: ")


def test_load_maps_keys_to_parameters(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('idle_timeout = "10m"\ntype = "g5.xlarge"\n[cleanup]\nmax-age = "6h"\n')
    options = {
        "up": {"idle-timeout": "idle_timeout", "type": "instance_type", "budget": "budget"},
        "render": {"idle-timeout": "idle_timeout", "type": "instance_type"},
        "cleanup": {"max-age": "max_age"},
    }
    loaded = config.load(path, options)
    assert loaded.defaults == {
        "up": {"idle_timeout": "10m", "instance_type": "g5.xlarge"},
        "render": {"idle_timeout": "10m", "instance_type": "g5.xlarge"},
        "cleanup": {"max_age": "6h"},
    }
    assert config.load(None, options).defaults == {}


def test_doctor_says_which_file_sets_what(project):
    (project / ".cml-infra.toml").write_text(AWS_T4_SPOT)
    result = CliRunner().invoke(app, ["doctor", "--cloud", "local"])
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert (
        first == f"config: ok: {project / '.cml-infra.toml'} sets --cloud, --gpu, --region, --spot"
    )


def test_an_error_is_put_on_the_file_only_for_the_command_it_configures(project):
    # The file's top-level cloud is up's and render's; cleanup's --cloud came from its flag.
    (project / ".cml-infra.toml").write_text('cloud = "gpc"\n')
    result = CliRunner().invoke(app, ["cleanup", "--cloud", "gpc", "--dry-run"])
    assert result.exit_code == 2
    assert "unknown cloud 'gpc'" in result.output and "is set in" not in result.output
    result = render()
    assert result.exit_code == 2
    assert f"--cloud is set in {project / '.cml-infra.toml'}" in result.output


def test_a_relative_path_in_the_file_is_relative_to_the_file(tmp_path):
    path = tmp_path / "team" / ".cml-infra.toml"
    path.parent.mkdir()
    path.write_text(
        'state-dir = "state"\nterraform = "bin/terraform"\n'
        'runner-archive = "https://mirror.example/runner.tgz"\n'
    )
    options = {
        "up": {"state-dir": "state_dir", "terraform": "terraform",
               "runner-archive": "runner_archive"},
        "render": {},
        "cleanup": {"state-dir": "state_dir", "terraform": "terraform"},
    }  # fmt: skip
    up = config.load(path, options).defaults["up"]
    assert up["state_dir"] == str(path.parent / "state")
    assert up["terraform"] == str(path.parent / "bin" / "terraform")
    assert up["runner_archive"] == "https://mirror.example/runner.tgz"
    path.write_text('terraform = "tofu"\n[cleanup]\nstate-dir = "/var/lib/ci-state"\n')
    loaded = config.load(path, options).defaults
    assert loaded["up"]["terraform"] == "tofu", "a command name is looked up on PATH"
    assert loaded["cleanup"]["state_dir"] == "/var/lib/ci-state"


def test_the_state_dir_of_the_file_holds_for_every_command(project, monkeypatch, make_record):
    """Else `status` and `down` would not see the runners `up` made there."""
    from cml_infra.state import StateDir

    monkeypatch.delenv("CML_INFRA_HOME")
    (project / ".cml-infra.toml").write_text('state-dir = "my-state"\n')
    StateDir(project / "my-state").save(make_record("box-1", state="destroyed"))
    result = CliRunner().invoke(app, ["status", "--all", "--json"])
    assert result.exit_code == 0, result.output
    assert [row["name"] for row in json.loads(result.stdout)] == ["box-1"]
