"""cml_infra.modules.hcl: a module's variables (and which have no default) and outputs, read as
Terraform reads them, whatever comments, strings, heredocs and nested braces surround them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import hcl2
import pytest

from cml_infra import clouds, packaged
from cml_infra.modules import hcl
from cml_infra.terraform import Engine, EngineHome


def interface(tmp_path: Path, files: dict[str, str]) -> hcl.Interface:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return hcl.read(tmp_path)


def required(found: hcl.Interface) -> dict[str, bool]:
    return {name: variable.required for name, variable in found.variables.items()}


TRICKY = r"""
# variable "in_a_comment" {
// output "in_a_line_comment" {
/* variable "in_a_block_comment" {
   default = 1 } */
variable "plain" {}
variable "with_default" { default = null }
variable unquoted_label {
  type = string
}
variable "nested" {
  type = object({ default = optional(string, "}") })
  validation {
    # A default inside a nested block does not make the variable optional.
    condition     = var.nested.default != "{"
    error_message = "Not \"{\" ${"}"} %{ if true }}%{ endif } $${literal {"
  }
}
variable "heredoc" {
  description = <<-EOT
    variable "in_a_heredoc" {
      default = "x"
    }
    EOT
  default = { a = [1, 2, { b = "}" }], "c" = <<END
}
END
  }
}
locals {
  text = "output \"in_a_string\" {"
  map  = { for k, v in var.nested : k => v if v == "x" }
}
output "one" { value = 1 }
output "two" {
  value = {
    inner = "}"
  }
}
"""


def test_tricky_hcl(tmp_path):
    found = interface(tmp_path, {"main.tf": TRICKY})
    assert required(found) == {
        "plain": True,
        "with_default": False,
        "unquoted_label": True,
        "nested": True,
        "heredoc": False,
    }
    assert found.outputs == {"one", "two"}
    block = found.variables["nested"].text
    assert block.startswith('variable "nested" {') and block.endswith("}")
    assert "error_message" in block


def test_the_tricky_hcl_reads_as_terraform_reads_it(tmp_path):
    """Terraform's own reading: the configuration in `show -json` of a plan."""
    (tmp_path / "main.tf").write_text(TRICKY)
    values = {"plain": "x", "unquoted_label": "y", "nested": {}}
    (tmp_path / "terraform.tfvars.json").write_text(json.dumps(values))
    engine = Engine.discover(None, EngineHome(tmp_path / "engine"))

    def terraform(*args: str) -> str:
        done = subprocess.run(
            [*engine.argv, *args],
            cwd=tmp_path,
            env=engine.environment(),
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    terraform("plan", "-input=false", "-no-color", "-out=plan")
    root = json.loads(terraform("show", "-json", "plan"))["configuration"]["root_module"]
    found = interface(tmp_path, {})
    assert required(found) == {
        name: "default" not in body for name, body in root["variables"].items()
    }
    assert found.outputs == set(root["outputs"])


def test_tf_json_in_both_forms(tmp_path):
    found = interface(
        tmp_path,
        {
            "a.tf.json": json.dumps({"variable": {"x": {"type": "string"}, "y": {"default": 2}}}),
            "b.tf.json": json.dumps(
                {"variable": [{"z": {"default": None}}], "output": [{"o": {"value": 1}}]}
            ),
        },
    )
    assert required(found) == {"x": True, "y": False, "z": False}
    assert found.outputs == {"o"}
    assert found.variables["x"].json
    assert json.loads(found.variables["x"].text) == {"type": "string"}


def test_an_override_default_makes_a_variable_optional(tmp_path):
    found = interface(
        tmp_path,
        {
            "variables.tf": 'variable "a" {}\nvariable "b" {}\n',
            "variables_override.tf": (
                'variable "a" {\n  default = "x"\n}\nvariable "b" {\n  type = string\n}\n'
            ),
        },
    )
    assert required(found) == {"a": False, "b": True}
    assert [override.name for override in found.overrides] == ["a", "b"]


@pytest.mark.parametrize(
    "text",
    [
        'variable "a" {\n',
        'variable "a" {\n  default = "open\n}\n',
        'variable "a" {\n  default = <<EOT\nnever closed\n}\n',
        "/* never closed\n",
        "}\n",
        'variable "a" {\n  default = "${ "x" \n}\n',
        '[variable "a"]\n',
    ],
)
def test_what_terraform_would_refuse_is_an_error(tmp_path, text):
    (tmp_path / "main.tf").write_text(text)
    with pytest.raises(hcl.HclError, match=r"^main\.tf: "):
        hcl.read(tmp_path)


def test_only_the_tf_files_of_the_folder_itself(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner.tf").write_text('variable "inner" {}\n')
    (tmp_path / "notes.txt").write_text('variable "text" {}\n')
    (tmp_path / "main.tf").write_text('variable "top" {}\n')
    assert set(hcl.read(tmp_path).variables) == {"top"}


@pytest.mark.parametrize("module", sorted({c.module for c in clouds.classes().values()}))
def test_the_packaged_modules_read_as_python_hcl2_reads_them(module):
    folder = packaged.module_dir(module)
    variables: dict[str, bool] = {}
    outputs: set[str] = set()
    for path in folder.glob("*.tf"):
        parsed = hcl2.loads(path.read_text(encoding="utf-8"))
        for item in parsed.get("variable", []):
            variables.update({k.strip('"'): "default" not in v for k, v in item.items()})
        for item in parsed.get("output", []):
            outputs.update(k.strip('"') for k in item)
    found = hcl.read(folder)
    assert required(found) == variables
    assert found.outputs == outputs
