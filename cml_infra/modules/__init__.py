"""Modules a team customises: a fork in `--modules-dir`, extra variables from `--var` and the
config file's `[vars]`, and `cml-infra modules eject|diff`.

    contract.py  what cml-infra passes to a cloud's module and reads back, derived from the
                 Cloud classes; the checks of a fork and of `--var` against it
    hcl.py       a module's variables and outputs, read from its *.tf and *.tf.json files
    values.py    the module's own validation of the values, by the Terraform engine
    eject.py     `modules eject`: the packaged modules, templates and a README of the contract
    diff.py      `modules diff`: how a fork differs from the packaged modules

`check` runs every check of a launch's module before anything is created (lifecycle/prepare).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cml_infra import packaged
from cml_infra.errors import UsageError

if TYPE_CHECKING:
    from cml_infra.clouds.base import Cloud
    from cml_infra.modules.hcl import Interface
    from cml_infra.spec import RunnerSpec


def check(
    spec: RunnerSpec, cloud: Cloud, passed: Mapping[str, Any], terraform: str | None = None
) -> None:
    """The module `spec` uses against what cml-infra `passed` (module_vars) and the extra
    variables: a fork fits the contract, each `--var` is the module's to take, and the module's
    own validation takes every value. Only with a fork or extra variables: the packaged modules
    take what cml-infra passes (a unit test holds them to it)."""
    if spec.modules_dir is None and not spec.extra_vars:
        return
    from cml_infra.modules import contract, values

    folder = packaged.module_dir(cloud.module, spec.modules_dir)
    fork = spec.modules_dir is not None
    where = f"in {folder}" if fork else "packaged with cml-infra"
    if fork:
        check_files(folder)
    interface = read(folder)
    terms = contract.of(type(cloud))
    given = spec.extra_vars
    contract.check_vars(terms, interface, given, where, _origin)
    if fork:
        contract.check_fork(terms, interface, passed, given, where)

    def refused(name: str, message: str) -> UsageError:
        if name in given:
            return UsageError(
                "--var", f"{name}{_origin([name])}: the {cloud.name} module refuses it: {message}"
            )
        flag = "--modules-dir" if fork else terms.set_by(name)
        return UsageError(
            flag,
            f"the {cloud.name} module {where} refuses the value of {name or 'a variable'} "
            f"(set by cml-infra from {terms.set_by(name)}): {message}",
        )

    def engine(home: Any) -> Any:
        from cml_infra.terraform import Engine

        return Engine.discover(terraform, home)

    from cml_infra import ui

    values.check(interface, {**given, **passed}, engine, refused, ui.warn)


def read(folder: Path) -> Interface:
    """The module's interface; a UsageError naming --modules-dir when a file cannot be read."""
    from cml_infra.modules import hcl

    try:
        return hcl.read(folder)
    except hcl.HclError as exc:
        raise UsageError("--modules-dir", f"{folder}/{exc}") from None
    except UnicodeDecodeError:
        raise UsageError("--modules-dir", f"{folder}: a .tf file is not UTF-8 text") from None
    except OSError as exc:
        raise UsageError("--modules-dir", f"{folder}: cannot read ({exc})") from None


def check_files(folder: Path) -> None:
    """Every file the workspace copies from a fork (render._copy_module: not `.*`, not
    `examples/`) is UTF-8 text, found now rather than once `up` has claimed the name."""
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.name == "examples":
            continue
        if entry.is_dir():
            check_files(entry)
            continue
        try:
            entry.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError(
                "--modules-dir", f"{entry}: not UTF-8 text (a module holds .tf files and scripts)"
            ) from None
        except OSError as exc:
            raise UsageError("--modules-dir", f"{entry}: cannot read ({exc.strerror})") from None


def _origin(names: Sequence[str]) -> str:
    """Where a variable's value came from besides --var: the config file's [vars]."""
    from cml_infra import config

    found = config.vars_origin()
    if found is None:
        return ""
    table = config.module_vars()
    return f" (set in [vars] of {found})" if any(name in table for name in names) else ""
