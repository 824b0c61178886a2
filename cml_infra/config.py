"""Project defaults from a file: `.cml-infra.toml`, or `[tool.cml-infra]` in pyproject.toml.

The file is looked for in the working folder and then in each parent; the first folder with
either file wins. `CML_INFRA_CONFIG=PATH` names the file instead, and `CML_INFRA_CONFIG=`
(empty) turns the search off. A flag or a `CML_INFRA_*` variable wins over the file, which
wins over the built-in default (the file becomes click's `default_map`).

    cloud = "gcp"                  # top-level keys: options of `up` (and `render`)
    gpu = "t4"
    spot = true
    region = "us-central1,us-east1"
    idle-timeout = "10m"
    labels = ["gpu"]

    [cleanup]                      # options of `cleanup`
    max-age = "6h"

Keys are the flags without their dashes (`idle-timeout`, `type`; '_' may stand for '-'). A
key that is no option of its command, and a token (which belongs in a CI secret, never in a
repository), is refused with the file's name. A relative path (`state-dir`, `terraform`,
`runner-archive`) is relative to the file, not to the working folder.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cml_infra.errors import UsageError

FILE_NAME = ".cml-infra.toml"
PYPROJECT = "pyproject.toml"
ENV = "CML_INFRA_CONFIG"
# Top-level keys are options of `up` (and of `render` where it has them); a table named after
# one of these commands holds that command's options.
SECTIONS = ("cleanup",)
# Never from a file that may be committed.
REFUSED = frozenset({"token"})
# Top-level keys that every command with the option takes, not only `up` and `render`.
SHARED = frozenset({"state_dir", "terraform"})


@dataclass(frozen=True)
class Config:
    """Where the defaults came from and, per command, option name → value."""

    path: Path | None = None
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class InUse:
    """The config of the command that runs: its file's defaults, each command's flags (flag →
    option name, for error messages and `doctor`), and which command it is."""

    config: Config = Config()
    flags: dict[str, dict[str, str]] = field(default_factory=dict)
    command: str | None = None


_NONE = InUse()
_IN_USE: ContextVar[InUse] = ContextVar("cml_infra_config", default=_NONE)


def use(ctx: Any) -> None:
    """Make the project's config file the defaults of the command `ctx` (the CLI's group
    context, before its subcommand parses) is about to run."""
    # Per command, each option's key in the file (its long flag without dashes) → its name.
    options = {
        name: {
            flag[2:]: param.name
            for param in command.params
            if param.name and getattr(param, "param_type_name", "") == "option"
            for flag in param.opts[:1]
            if flag.startswith("--")
        }
        for name, command in getattr(ctx.command, "commands", {}).items()
    }
    in_use = InUse(
        config=load(find(Path.cwd()), options),
        flags={
            command: {f"--{key}": name for key, name in keys.items()}
            for command, keys in options.items()
        },
        command=ctx.invoked_subcommand,
    )
    _IN_USE.set(in_use)
    ctx.default_map = in_use.config.defaults


def setting_origin(flag: str) -> Path | None:
    """The config file, when it sets `flag` for the command that runs."""
    in_use = _IN_USE.get()
    name = in_use.flags.get(in_use.command or "", {}).get(flag)
    sets = in_use.config.defaults.get(in_use.command or "", {})
    return in_use.config.path if name is not None and name in sets else None


def default(command: str, option: str, fallback: Any) -> Any:
    """What the config file in use sets for `option` of `command`, else `fallback`."""
    return _IN_USE.get().config.defaults.get(command, {}).get(option, fallback)


def describe() -> str:
    """What the config file in use sets, in a sentence."""
    in_use = _IN_USE.get()
    flags = sorted(
        flag
        for command, values in in_use.config.defaults.items()
        for flag, name in in_use.flags.get(command, {}).items()
        if name in values
    )
    if in_use.config.path is None or not flags:
        return f"no {FILE_NAME} or [tool.cml-infra] sets anything here; built-in defaults"
    return f"{in_use.config.path} sets {', '.join(dict.fromkeys(flags))}"


def find(start: Path) -> Path | None:
    """The config file for a command run in `start`, or None."""
    named = os.environ.get(ENV)
    if named is not None:
        return Path(named) if named else None
    for folder in (start, *start.parents):
        if (folder / FILE_NAME).is_file():
            return folder / FILE_NAME
        pyproject = folder / PYPROJECT
        if pyproject.is_file() and b"[tool.cml-infra]" in pyproject.read_bytes():
            return pyproject
    return None


def load(path: Path | None, options: Mapping[str, Mapping[str, str]]) -> Config:
    """Read `path` and check its keys against `options`: per command, each option's key (its
    flag without the dashes: `idle-timeout`, `type`) → the parameter it sets."""
    if path is None:
        return Config()
    table = _read(path)
    if path.name == PYPROJECT:
        tool = table.get("tool", {})
        ours = tool.get("cml-infra", {}) if isinstance(tool, dict) else None
        if not isinstance(ours, dict):
            raise UsageError(str(path), "[tool.cml-infra] must be a table of options")
        table = ours
    top = _checked(path, "", {k: v for k, v in table.items() if k not in SECTIONS}, options["up"])
    # `render` takes the placement of `up`, not its launch-only options (--budget, --wait, ...).
    defaults = {
        "up": top,
        "render": {
            name: value for name, value in top.items() if name in set(options["render"].values())
        },
    }
    # Where runners live and what runs Terraform hold for every command, or `status` and
    # `down` would not see the runners `up` made.
    shared = {name: value for name, value in top.items() if name in SHARED}
    for command, keys in options.items():
        if command not in defaults:
            defaults[command] = {n: v for n, v in shared.items() if n in set(keys.values())}
    for section in SECTIONS:
        value = table.get(section, {})
        if not isinstance(value, dict):
            raise UsageError(str(path), f"[{section}] must be a table of {section}'s options")
        checked = _checked(path, f"{section}.", value, options[section])
        defaults[section] = {**defaults.get(section, {}), **checked}
    return Config(path, {command: values for command, values in defaults.items() if values})


def _read(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib
    try:
        with path.open("rb") as handle:
            data: dict[str, Any] = tomllib.load(handle)
            return data
    except OSError as exc:
        raise UsageError(str(path), f"cannot read the config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(str(path), f"not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise UsageError(str(path), "not valid TOML: the file is not UTF-8") from None


def _checked(
    path: Path, prefix: str, table: Mapping[str, Any], options: Mapping[str, str]
) -> dict[str, Any]:
    """`table` with each key turned into the parameter it sets."""
    checked = {}
    for key, value in table.items():
        name = key.replace("_", "-")
        if name in REFUSED:
            raise UsageError(
                str(path),
                f"{prefix}{key}: a token never goes in a file; set CML_INFRA_TOKEN from a secret",
            )
        if name not in options:
            valid = ", ".join(sorted(set(options) - REFUSED))
            raise UsageError(str(path), f"unknown key '{prefix}{key}'; valid: {valid}")
        checked[options[name]] = _relative_to(path.parent, options[name], value)
    return checked


# Options whose value may be a path; one given relative in the file is relative to the file.
_PATHS = frozenset({"state_dir", "terraform", "runner_archive"})


def _relative_to(folder: Path, name: str, value: Any) -> Any:
    # A bare word is a command (`tofu`, `bundled`) and a URL is a URL: only paths move.
    if name not in _PATHS or not isinstance(value, str) or "://" in value:
        return value
    if "/" not in value and name != "state_dir":
        return value
    try:
        return str(folder / Path(value).expanduser())
    except RuntimeError as exc:  # ~user of a user this machine does not know
        raise UsageError(f"--{name.replace('_', '-')}", f"{value!r}: {exc}") from None
