"""The module's own checks of the values it gets (`validation` blocks, types), run by the real
Terraform engine before anything is created, so that a `--var` the module refuses fails `render`
and `up` with the module's own error message rather than half-way through an apply.

A root module holding nothing but the module's variable blocks (which need no provider, so no
`init` and no download) is applied with the tfvars in a throwaway folder: Terraform evaluates
every variable's type and validation rules when it plans, and creates nothing since the root
declares no resource. It takes a tenth of a second with a terraform binary, about half a second
with the bundled one, and runs only when there is something the packaged module's known
variables do not cover: `--var` values or a fork.

Each variable goes into a file of its own, named after it, so that Terraform's diagnostic (which
names the file and line of the rule that failed) says which variable it was.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cml_infra.errors import UsageError
from cml_infra.modules.hcl import Interface, Variable
from cml_infra.terraform import Diagnostic, Engine, EngineHome, TerraformError

# Terraform's summaries of a value a variable refuses: its validation rule, or its type.
_REFUSED = ("Invalid value for variable", "Invalid value for input variable")
_FILE = re.compile(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*?)(?:_override)?\.tf(?:\.json)?:")
_NAMED = re.compile(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*)")
_CHECKED_AT = "\n\nThis was checked by the validation rule at"


def check(
    interface: Interface,
    values: Mapping[str, Any],
    engine: Callable[[EngineHome], Engine],
    refused: Callable[[str, str], UsageError],
    warn: Callable[[str], None],
) -> None:
    """Apply the module's variable blocks to `values` (every variable it gets). A value one of
    them refuses → `refused(variable, Terraform's message)`; a failure that is not about a
    value (a rule that refers to something other than variables, an engine too old for the
    fork's syntax) cannot be told in advance: `warn`, and the apply will tell."""
    with tempfile.TemporaryDirectory(prefix="cml-infra-vars-") as folder:
        root = Path(folder)
        write_root(root, interface, values)
        try:
            engine(EngineHome(root / ".engine")).apply(root, lambda event: None)
        except TerraformError as exc:
            for diagnostic in exc.diagnostics:
                if diagnostic.summary in _REFUSED:
                    name, message = explain(diagnostic)
                    raise refused(name, message) from None
            warn(f"the module's checks of its variables could not run in advance ({exc})")


def write_root(root: Path, interface: Interface, values: Mapping[str, Any]) -> None:
    """The throwaway root module: each variable block in `var.<name>.tf` (or `.tf.json`), the
    values in terraform.tfvars.json, and an output so that apply reports its outputs at once."""
    from cml_infra.state import write_private

    blocks: list[Variable] = [*interface.variables.values(), *interface.overrides]
    for variable in blocks:
        stem = f"var.{variable.name}{'_override' if variable.override else ''}"
        if variable.json:
            body = {"variable": {variable.name: json.loads(variable.text)}}
            write_private(root / f"{stem}.tf.json", json.dumps(body, indent=2) + "\n")
        else:
            write_private(root / f"{stem}.tf", variable.text + "\n")
    write_private(root / "checked.tf", 'output "checked" {\n  value = true\n}\n')
    known = {name: value for name, value in values.items() if name in interface.variables}
    write_private(root / "terraform.tfvars.json", json.dumps(known, indent=2) + "\n")


def explain(diagnostic: Diagnostic) -> tuple[str, str]:
    """The variable a refusal is about, and the module's message (its `error_message`, or what
    is wrong with the value's type)."""
    detail = diagnostic.detail
    message, _, where = detail.partition(_CHECKED_AT)
    found = _FILE.search(where) or _NAMED.search(detail)
    name = found.group(1) if found else ""
    message = re.sub(r" declared at \S+?:\d+,\d+-\d+", "", message)
    return name, " ".join(message.split()) or diagnostic.summary
