"""A launch's module checked before anything is created (prepare.plan): a fork in --modules-dir,
the extra variables (--var), and the module's own validation of them, run by real Terraform."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from cml_infra import packaged
from cml_infra.errors import UsageError
from cml_infra.lifecycle import prepare
from cml_infra.lifecycle.up import render_only
from cml_infra.modules import values
from cml_infra.spec import build_spec
from cml_infra.state import StateDir


def spec(**flags: Any):
    args: dict[str, Any] = {"cloud": "local", "name": "mod-check", "region": None,
                            "idle_timeout": "5m", "ttl": "1h", "single": False, "labels": (),
                            "command": ()}  # fmt: skip
    args.update(flags)
    return build_spec(**args)


@pytest.fixture
def state(tmp_path) -> StateDir:
    return StateDir(tmp_path / "state")


@pytest.fixture
def forks(tmp_path) -> Path:
    """A folder of forks: the packaged local module, copied."""
    root = tmp_path / "forks"
    shutil.copytree(packaged.module_dir("local"), root / "local")
    return root


def refused(state: StateDir, **flags: Any) -> str:
    with pytest.raises(UsageError) as caught:
        prepare.plan(spec(**flags), state)
    assert not state.root.exists(), "bad input must create nothing"
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_var_the_modules_validation_refuses(state):
    assert refused(state, var=["stop_grace_seconds=9999"]) == (
        "--var: stop_grace_seconds: the local module refuses it: "
        "The stop_grace_seconds must be between 0 and 600."
    )


def test_a_var_of_the_wrong_type(state):
    message = refused(state, var=['stop_grace_seconds="soon"'])
    assert message.startswith("--var: stop_grace_seconds: the local module refuses it: ")
    assert "a number is required" in message


def test_a_var_the_module_takes_reaches_the_workspace(state, tmp_path):
    out = tmp_path / "out"
    render_only(spec(var=["stop_grace_seconds=42"]), state, out)
    assert json.loads((out / "terraform.tfvars.json").read_text())["stop_grace_seconds"] == 42
    main = (out / "main.tf").read_text()
    assert "stop_grace_seconds" in main.partition('module "instance"')[2]


def test_nothing_runs_terraform_without_a_fork_or_a_var(state, monkeypatch):
    def never(*args: Any) -> None:
        raise AssertionError("the value check ran")

    monkeypatch.setattr(values, "check", never)
    prepare.plan(spec(), state)


def test_the_engine_named_is_the_one_that_checks(state):
    with pytest.raises(UsageError, match=r"^--terraform: "):
        prepare.plan(spec(var=["stop_grace_seconds=1"]), state, "/nonexistent/terraform")


def test_a_modules_dir_without_the_clouds_folder(state, tmp_path):
    (tmp_path / "forks" / "aws").mkdir(parents=True)
    (tmp_path / "forks" / "templates").mkdir()
    message = refused(state, modules_dir=str(tmp_path / "forks"))
    assert message.startswith(f"--modules-dir: no local/ in {tmp_path / 'forks'} (looked for ")
    assert "found aws/, templates/)" in message


def test_a_fork_without_an_output(state, forks):
    outputs = forks / "local" / "outputs.tf"
    outputs.write_text(outputs.read_text().replace('output "id"', 'output "identifier"'))
    message = refused(state, modules_dir=str(forks))
    assert message == (
        f"--modules-dir: the local module in {forks / 'local'} does not fit cml-infra's "
        "contract: declares no output id (cml-infra reads it)"
    )


def test_a_fork_with_a_variable_of_its_own(state, forks, tmp_path):
    (forks / "local" / "kms.tf").write_text(
        'variable "kms_key" {\n  type = string\n\n  validation {\n'
        '    condition     = startswith(var.kms_key, "key-")\n'
        '    error_message = "The kms_key must start with key-."\n  }\n}\n'
    )
    assert "requires kms_key" in refused(state, modules_dir=str(forks))
    assert refused(state, modules_dir=str(forks), var=["kms_key=nope"]) == (
        "--var: kms_key: the local module refuses it: The kms_key must start with key-."
    )
    out = tmp_path / "out"
    render_only(spec(modules_dir=str(forks), var=["kms_key=key-1"]), state, out)
    assert (out / "module" / "kms.tf").is_file(), "the workspace holds the fork"
    assert json.loads((out / "terraform.tfvars.json").read_text())["kms_key"] == "key-1"


def test_a_fork_that_refuses_a_value_cml_infra_passes(state, forks):
    variables = forks / "local" / "variables.tf"
    variables.write_text(
        variables.read_text().replace(
            'condition     = can(regex("^[a-z][a-z0-9-]{0,37}[a-z0-9]$", var.name))',
            'condition     = startswith(var.name, "team-")',
        )
    )
    message = refused(state, modules_dir=str(forks))
    assert message.startswith(
        f"--modules-dir: the local module in {forks / 'local'} refuses the value of name "
        "(set by cml-infra from --name): "
    )


def test_a_check_terraform_cannot_run_in_advance_is_left_to_apply(state, forks, capsys):
    # A rule that refers to a local value: the variable blocks alone cannot evaluate it.
    (forks / "local" / "extra.tf").write_text(
        'locals {\n  prefix = "x"\n}\n\nvariable "flavour" {\n  type    = string\n'
        '  default = "x1"\n\n  validation {\n    condition     = startswith(var.flavour, '
        'local.prefix)\n    error_message = "No."\n  }\n}\n'
    )
    prepare.plan(spec(modules_dir=str(forks)), state)
    assert "could not run in advance" in capsys.readouterr().err


def test_a_fork_file_that_is_not_text(state, forks):
    (forks / "local" / "scripts" / "blob.bin").write_bytes(b"\xff\xfe\x00")
    assert refused(state, modules_dir=str(forks)) == (
        f"--modules-dir: {forks / 'local' / 'scripts' / 'blob.bin'}: not UTF-8 text (a module "
        "holds .tf files and scripts)"
    )


def test_a_fork_that_is_no_hcl(state, forks):
    (forks / "local" / "broken.tf").write_text('variable "x" {\n')
    assert refused(state, modules_dir=str(forks)).startswith(
        f"--modules-dir: {forks / 'local'}/broken.tf: a block is not closed"
    )


def test_a_forks_template_replaces_the_packaged_one(state, forks, tmp_path):
    (forks / "templates").mkdir()
    packaged_script = (packaged.templates_dir() / "startup.sh.j2").read_text()
    shebang, _, rest = packaged_script.partition("\n")
    (forks / "templates" / "startup.sh.j2").write_text(f"{shebang}\n# team boot steps\n{rest}")
    assert "# team boot steps" not in packaged_script
    out = tmp_path / "out"
    render_only(spec(modules_dir=str(forks)), state, out)
    assert "# team boot steps" in (out / "startup.sh").read_text()
    # The templates the fork does not hold are the packaged ones.
    assert (out / "main.tf").read_text().startswith("# Generated from templates/root.tf.j2")


def test_a_forks_template_that_does_not_render(state, forks):
    (forks / "templates").mkdir()
    (forks / "templates" / "root.tf.j2").write_text("{{ no_such_value }}\n")
    message = refused(state, modules_dir=str(forks))
    assert message.startswith(
        f"--modules-dir: a template in {forks / 'templates'} does not render: UndefinedError: "
    )
