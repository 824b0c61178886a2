"""scripts/module_docs.py: each module README's tables are generated from its .tf files, and
this test fails when one is out of date (run `python scripts/module_docs.py` to fix it)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def module_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("module_docs", ROOT / "scripts/module_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("module_docs", module)
    spec.loader.exec_module(module)
    return module


def test_every_module_readme_is_up_to_date(module_docs, capsys):
    readmes = sorted(ROOT.glob("terraform/*/README.md"))
    assert {p.parent.name for p in readmes} >= {"aws", "gcp", "azure", "local"}
    code = module_docs.main(["--check"])
    assert code == 0, capsys.readouterr().err


VARIABLES = """
variable "name" {
  description = "The name | with a pipe, \\"quotes\\" and $${literal}."
  type        = string
  validation {
    condition     = length(var.name) > 1
    error_message = "The name must be 2 characters or more."
  }
}

variable "tags" {
  description = <<-EOT
    Extra tags,
    on two lines.
  EOT
  type        = map(string)
  default     = { team = "ml", "a b" = "c" }
}

variable "secret" {
  description = "A secret."
  type        = string
  default     = ""
  sensitive   = true
}

variable "zones" {
  description = "Zones."
  type        = list(string)
  default     = ["a", "b"]
  nullable    = false
}

variable "anything" {
  description = "Untyped, null by default."
  default     = null
}
"""

OUTPUTS = """
output "id" {
  description = "The id."
  value       = terraform_data.this.id
}
"""

VERSIONS = """
terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.0"
    }
  }
}
"""

MAIN = """
resource "terraform_data" "this" {}

data "aws_region" "current" {}
"""

EXPECTED = """## Requirements

| Name | Version |
|------|---------|
| terraform | >= 1.5 |
| aws | >= 6.0 |

## Resources

| Name | Type |
|------|------|
| terraform_data.this | resource |
| aws_region.current | data source |

## Inputs

| Name | Description | Type | Default | Required |
|------|-------------|------|---------|:--------:|
| name | The name \\| with a pipe, "quotes" and ${literal}. The name must be 2 characters or more. \
| `string` | n/a | yes |
| tags | Extra tags, on two lines. | `map(string)` | `{ "team" = "ml", "a b" = "c" }` | no |
| secret | A secret. | `string` (sensitive) | `""` | no |
| zones | Zones. | `list(string)` | `["a", "b"]` | no |
| anything | Untyped, null by default. | `any` | `null` | no |

## Outputs

| Name | Description |
|------|-------------|
| id | The id. |
"""


@pytest.fixture
def module(tmp_path: Path) -> Path:
    folder = tmp_path / "mod"
    folder.mkdir()
    for name, text in (
        ("variables.tf", VARIABLES),
        ("outputs.tf", OUTPUTS),
        ("versions.tf", VERSIONS),
        ("main.tf", MAIN),
    ):
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "README.md").write_text(
        "# Mod\n\nProse.\n\n<!-- BEGIN_TF_DOCS -->\n| stale | table |\n<!-- END_TF_DOCS -->\n\n"
        "## After\n",
        encoding="utf-8",
    )
    return folder


def test_check_names_a_stale_readme_and_writes_nothing(module_docs, module, capsys):
    before = (module / "README.md").read_text()
    assert module_docs.main(["--check", str(module)]) == 1
    err = capsys.readouterr().err
    assert f"{module / 'README.md'}: the module tables are out of date" in err
    assert (module / "README.md").read_text() == before


def test_the_tables_are_written_between_the_markers(module_docs, module, capsys):
    assert module_docs.main([str(module)]) == 0
    text = (module / "README.md").read_text()
    head, _, rest = text.partition("<!-- BEGIN_TF_DOCS -->\n")
    generated, _, tail = rest.partition("<!-- END_TF_DOCS -->")
    assert head == "# Mod\n\nProse.\n\n"
    assert tail == "\n\n## After\n"
    notice, _, tables = generated.partition("\n")
    assert "scripts/module_docs.py" in notice and notice.startswith("<!--")
    assert tables == EXPECTED
    assert module_docs.main(["--check", str(module)]) == 0


def test_a_new_variable_makes_the_readme_stale(module_docs, module, capsys):
    assert module_docs.main([str(module)]) == 0
    with (module / "variables.tf").open("a", encoding="utf-8") as out:
        out.write('\nvariable "added" {\n  description = "New."\n  type = bool\n}\n')
    assert module_docs.main(["--check", str(module)]) == 1
    assert module_docs.main([str(module)]) == 0
    assert "| added | New. | `bool` | n/a | yes |" in (module / "README.md").read_text()


@pytest.mark.parametrize(
    ("readme", "said"),
    [
        ("# No markers\n", "needs one <!-- BEGIN_TF_DOCS --> line, then one <!-- END_TF_DOCS -->"),
        ("<!-- END_TF_DOCS -->\n<!-- BEGIN_TF_DOCS -->\n", "needs one <!-- BEGIN_TF_DOCS -->"),
    ],
)
def test_a_readme_without_its_markers_is_refused(module_docs, module, capsys, readme, said):
    (module / "README.md").write_text(readme, encoding="utf-8")
    assert module_docs.main(["--check", str(module)]) == 2
    assert said in capsys.readouterr().err


def test_a_variable_without_a_description_is_refused(module_docs, module, capsys):
    (module / "variables.tf").write_text('variable "bare" {\n  type = string\n}\n')
    assert module_docs.main([str(module)]) == 2
    assert "variable bare has no description" in capsys.readouterr().err
