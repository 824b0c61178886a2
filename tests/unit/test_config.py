"""cml_infra.config: project defaults from .cml-infra.toml or pyproject.toml, under flags and
CML_INFRA_* variables, with every bad key refused by name."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile

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
    assert "gpu, identity, idle-timeout" in result.output and "type" in result.output
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


def test_a_relative_path_in_the_file_is_relative_to_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CML_INFRA_TRUST_CONFIG", "1")
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
    monkeypatch.setenv("CML_INFRA_TRUST_CONFIG", "1")
    (project / ".cml-infra.toml").write_text('state-dir = "my-state"\n')
    StateDir(project / "my-state").save(make_record("box-1", state="destroyed"))
    result = CliRunner().invoke(app, ["status", "--all", "--json"])
    assert result.exit_code == 0, result.output
    assert [row["name"] for row in json.loads(result.stdout)] == ["box-1"]


# --- trust: a config file is data, not code (the security issue's item A) ---------------------

EVIL = "#!/bin/sh\n: > '{marker}'\nexit 1\n"
# The keys that would run a program, fetch code or send the token elsewhere.
UNTRUSTED = ("terraform", "runner-archive", "image", "github-url", "runner-group", "state-dir",
             "instance-profile", "service-account", "identity", "modules-dir",
             "startup-script", "workdir", "out")  # fmt: skip


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A pull request's checkout: a git repository whose .cml-infra.toml names its own
    Terraform, ./evil, a script that leaves a marker file when it runs."""
    monkeypatch.delenv("CML_INFRA_CONFIG")
    monkeypatch.setenv("CML_INFRA_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_admin_CANARY_789")
    root = tmp_path / "checkout"
    (root / ".git").mkdir(parents=True)
    marker = tmp_path / "marker"
    evil = root / "evil"
    evil.write_text(EVIL.format(marker=marker))
    evil.chmod(0o755)
    (root / ".cml-infra.toml").write_text('terraform = "./evil"\n')
    monkeypatch.chdir(root)
    return root, marker


def assert_untrusted(result, path, key: str) -> None:
    assert_file_error(result, path, f"{key}: ")
    assert "CML_INFRA_TRUST_CONFIG=1" in result.output


def test_a_checkouts_terraform_never_runs(checkout, tmp_path):
    root, marker = checkout
    result = CliRunner().invoke(app, ["up", "--cloud", "local", "--", "true"])
    assert_untrusted(result, root / ".cml-infra.toml", "terraform")
    assert not marker.exists(), "the checkout's program ran"
    assert not (tmp_path / "state").exists()


def test_a_checkouts_terraform_runs_only_when_trusted(checkout, monkeypatch):
    _, marker = checkout
    monkeypatch.setenv("CML_INFRA_TRUST_CONFIG", "1")
    result = CliRunner().invoke(app, ["up", "--cloud", "local", "--", "true"])
    assert result.exit_code != 0, result.output
    assert marker.exists(), "with the opt-in, the file's terraform is the engine"


def test_a_checkouts_terraform_never_runs_in_a_process_with_a_token(checkout, tmp_path):
    root, marker = checkout
    env = {k: v for k, v in os.environ.items() if not k.startswith("CML_INFRA_")}
    env.update(CML_INFRA_HOME=str(tmp_path / "state"), CML_INFRA_TOKEN="ghp_admin_CANARY_789")

    def up(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cml_infra", "up", "--cloud", "local", "--", "true"],
            cwd=root, env={**env, **extra}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    refused = up()
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith(f"error: {root / '.cml-infra.toml'}: terraform: ")
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert not marker.exists(), "the checkout's program ran"
    trusted = up(CML_INFRA_TRUST_CONFIG="1")
    assert trusted.returncode != 0
    assert marker.exists(), trusted.stderr


@pytest.mark.parametrize("key", UNTRUSTED)
def test_a_key_that_runs_or_redirects_is_refused_from_a_file(project, key):
    (project / ".cml-infra.toml").write_text(f'{key} = "./x"\n')
    result = CliRunner().invoke(app, ["status"])
    assert_untrusted(result, project / ".cml-infra.toml", key)


@pytest.mark.parametrize("key", ["github-url", "github_url", "state-dir"])
def test_a_key_that_runs_or_redirects_is_refused_from_the_cleanup_table(project, key):
    (project / ".cml-infra.toml").write_text(f'[cleanup]\n{key} = "https://x.example/api/v3"\n')
    result = CliRunner().invoke(app, ["cleanup", "--cloud", "local", "--dry-run"])
    assert_untrusted(result, project / ".cml-infra.toml", f"cleanup.{key}")


@pytest.mark.parametrize(
    ("table", "key"), [("tool.cml-infra", "terraform"), ("tool.cml-infra.cleanup", "state-dir")]
)
def test_a_key_that_runs_or_redirects_is_refused_from_pyproject(project, table, key):
    (project / "pyproject.toml").write_text(f'[project]\nname = "x"\n\n[{table}]\n{key} = "x"\n')
    result = CliRunner().invoke(app, ["status"])
    assert_untrusted(result, project / "pyproject.toml", key)


def test_a_file_the_variable_names_is_not_trusted_either(project, monkeypatch, tmp_path):
    named = tmp_path / "team.toml"
    named.write_text('terraform = "tofu"\n')
    monkeypatch.setenv("CML_INFRA_CONFIG", str(named))
    assert_untrusted(CliRunner().invoke(app, ["status"]), named, "terraform")
    monkeypatch.setenv("CML_INFRA_TRUST_CONFIG", "1")
    assert CliRunner().invoke(app, ["status"]).exit_code == 0


def test_only_the_exact_opt_in_trusts(project, monkeypatch):
    (project / ".cml-infra.toml").write_text('state-dir = "s"\n')
    for value in ("", "0", "yes", "true "):
        monkeypatch.setenv("CML_INFRA_TRUST_CONFIG", value)
        assert CliRunner().invoke(app, ["status"]).exit_code == 2, value


def cloud_of_render(folder) -> bool:
    """Whether `render` in `folder` took cloud = "aws" from a file (else: the local cloud)."""
    shutil.rmtree(folder / "out", ignore_errors=True)
    result = render()
    assert result.exit_code == 0, result.output
    return "instance_type" in tfvars(folder)


@pytest.mark.parametrize("git", ["folder", "file"])
def test_the_search_stops_at_the_repository_root(project, monkeypatch, git):
    (project.parent / ".cml-infra.toml").write_text('cloud = "aws"\n')
    if git == "folder":
        (project / ".git").mkdir()
    else:  # a worktree or submodule: .git is a file
        (project / ".git").write_text("gitdir: /elsewhere\n")
    monkeypatch.chdir(project / "sub")
    assert not cloud_of_render(project / "sub"), "a file above the repository root was used"
    (project / ".cml-infra.toml").write_text('cloud = "aws"\n')
    assert cloud_of_render(project / "sub"), "the repository root's own file is found"


def test_the_search_stops_at_home(project, monkeypatch):
    (project.parent / ".cml-infra.toml").write_text('cloud = "aws"\n')
    monkeypatch.setenv("HOME", str(project))
    monkeypatch.chdir(project / "sub")
    assert not cloud_of_render(project / "sub"), "a file above $HOME was used"
    (project / ".cml-infra.toml").write_text('cloud = "aws"\n')
    assert cloud_of_render(project / "sub"), "$HOME's own file is found"


def assert_skipped(path, reason: str) -> None:
    """`render` passed over the file at `path`, and `doctor` says so, and why."""
    assert not cloud_of_render(path.parent)
    result = CliRunner().invoke(app, ["doctor", "--cloud", "local"])
    assert result.exit_code == 0, result.output
    line = result.stdout.splitlines()[0]
    assert f"skipped {path}" in line and reason in line


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o775])
def test_a_file_in_a_folder_others_may_write_is_skipped(project, monkeypatch, mode):
    """World-writable (a sticky /tmp too), or writable by a group of other users."""
    shared = project / "sub"
    (shared / ".git").mkdir()
    (shared / ".cml-infra.toml").write_text('cloud = "aws"\n')
    if mode & 0o020:
        if os.geteuid() != 0:
            pytest.skip("giving a folder to another group needs root")
        os.chown(shared, -1, 54321)  # a group that is not the user's own
    shared.chmod(mode)
    monkeypatch.chdir(shared)
    assert_skipped(shared / ".cml-infra.toml", "writable by others")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (".cml-infra.toml", 'cloud = "aws"\n'),
        ("pyproject.toml", '[tool.cml-infra]\ncloud = "aws"\n'),
    ],
)
def test_a_file_owned_by_another_user_is_skipped(project, name, text):
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    (project / ".git").mkdir()
    (project / name).write_text(text)
    os.chown(project / name, 54321, -1)
    assert_skipped(project / name, "not owned by you")


def test_a_trusted_workdir_is_relative_to_the_file_and_out_paths_apply(project, monkeypatch):
    (project / "train").mkdir()
    (project / "train" / "train.py").write_text("print('hi')\n")
    (project / ".cml-infra.toml").write_text('workdir = "train"\nout = ["model.bin"]\n')
    monkeypatch.setenv("CML_INFRA_TRUST_CONFIG", "1")
    monkeypatch.chdir(project / "sub")
    result = render("--name", "cfg", "--", "python", "train.py")
    assert result.exit_code == 0, result.output
    with tarfile.open(fileobj=io.BytesIO((project / "sub/out/workdir.tar.gz").read_bytes())) as tar:
        assert tar.getnames() == ["train.py"]
    assert '"model.bin"' in (project / "sub/out/startup.sh").read_text()
