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

    [vars]                         # module variables, as `--var KEY=VALUE` (which wins per key)
    boot_disk_kms_key_self_link = "projects/p/locations/l/keyRings/r/cryptoKeys/k"

Keys are the flags without their dashes (`idle-timeout`, `type`; '_' may stand for '-'). A
key that is no option of its command, and a token (which belongs in a CI secret, never in a
repository), is refused with the file's name. A relative path (`state-dir`, `terraform`,
`runner-archive`, `modules-dir`, `startup-script`, `workdir`) is relative to the file, not to
the working folder.

A config file is data, not code: in CI it comes from the commit under test, maybe a pull
request's. So the search stops at the repository root (a folder holding `.git`) or at $HOME,
whichever comes first; it passes over (`doctor` says so) a file that is not the user's, or
whose folder others may write (or is not the user's or root's); and the keys that run a program
or decide where code or the token comes from or goes, or what cloud role jobs get (UNTRUSTED:
`terraform`, `runner-archive`, `image`, `github-url`, `runner-group`, `state-dir`, `backend`,
`instance-profile`, `service-account`, `identity`, `github-app-key`, `modules-dir`,
`startup-script`, `workdir`, `out`, and the `[vars]` table) are refused from any file,
`CML_INFRA_CONFIG`'s included, unless `CML_INFRA_TRUST_CONFIG=1` says that the user trusts it.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cml_infra.errors import UsageError

FILE_NAME = ".cml-infra.toml"
PYPROJECT = "pyproject.toml"
ENV = "CML_INFRA_CONFIG"
# `1`: the user trusts the config file with the UNTRUSTED keys.
TRUST_ENV = "CML_INFRA_TRUST_CONFIG"
# Top-level keys are options of `up` (and of `render` where it has them); a table named after
# one of these commands holds that command's options.
SECTIONS = ("cleanup",)
# The table of module variables (`--var`'s defaults): not options, so not click's default_map,
# which a `--var` on the command line would replace whole instead of key by key.
VARS = "vars"
# Never from a file that may be committed.
REFUSED = frozenset({"token"})
# Top-level keys that every command with the option takes, not only `up` and `render`.
SHARED = frozenset({"state_dir", "terraform", "backend"})
# Options (parameter names) that run a program (`terraform`), choose the code an instance runs
# (`runner_archive`: a local file's checksum is taken as given; `image`: the system that gets
# the runner registration), decide where the token or the runner goes (`github_url`;
# `runner_group`: which repositories may send it jobs), or where records, workspaces and the
# engine's plugin cache live (`state_dir`, `backend`: the state holds the instance's user data),
# or which cloud credentials the jobs get (`instance_profile`, `service_account`, `identity`: a
# pull request's file must not hand its own code a role of its choosing), or which file is read
# as the GitHub App's key (`github_app_key`), or the Terraform module itself (`modules_dir`: a
# module runs code through Terraform, on the launcher with local-exec), or code run as root on
# the instance before the runner (`startup_script`: it can read the runner's registration, and
# a pull request's script must not mint itself runners), or which of the launcher's files go
# to the instance and the bucket (`workdir`: a pull request's file must not ship ~/.aws) and
# which come back into it (`out`): from a file only with TRUST_ENV=1, since in CI the file may
# come from a pull request. The [vars] table too: module variables choose images
# (`gpu_image_family`), roles and network exposure.
UNTRUSTED = frozenset(
    {"terraform", "runner_archive", "github_url", "state_dir", "backend", "image", "runner_group"}
    | {"instance_profile", "service_account", "identity", "github_app_key", "modules_dir"}
    | {"startup_script", "workdir", "out"}
)


@dataclass(frozen=True)
class Config:
    """Where the defaults came from and, per command, option name → value."""

    path: Path | None = None
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The [vars] table: module variable → value, beneath `--var` (of `up` and `render`).
    vars: dict[str, Any] = field(default_factory=dict)
    # Files the search passed over, each with why (`doctor` says so).
    skipped: tuple[str, ...] = ()


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
    skipped: list[str] = []
    found = find(Path.cwd(), skipped)
    in_use = InUse(
        config=replace(load(found, options), skipped=tuple(skipped)),
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


def module_vars() -> dict[str, Any]:
    """The config file's [vars]: module variables beneath `--var`."""
    return dict(_IN_USE.get().config.vars)


def vars_origin() -> Path | None:
    """The config file, when it has a [vars] table."""
    in_use = _IN_USE.get()
    return in_use.config.path if in_use.config.vars else None


def describe() -> str:
    """What the config file in use sets, in a sentence."""
    in_use = _IN_USE.get()
    flags = sorted(
        flag
        for command, values in in_use.config.defaults.items()
        for flag, name in in_use.flags.get(command, {}).items()
        if name in values
    )
    flags += [f"[vars] {name}" for name in sorted(in_use.config.vars)]
    if in_use.config.path is None or not flags:
        said = f"no {FILE_NAME} or [tool.cml-infra] sets anything here; built-in defaults"
    else:
        said = f"{in_use.config.path} sets {', '.join(dict.fromkeys(flags))}"
    return "; ".join((said, *(f"skipped {note}" for note in in_use.config.skipped)))


def trusted() -> bool:
    """Whether the user trusts the config file with the UNTRUSTED keys."""
    return os.environ.get(TRUST_ENV) == "1"


def find(start: Path, skipped: list[str] | None = None) -> Path | None:
    """The config file for a command run in `start`, or None. The search climbs from `start` to
    the repository root or $HOME, whichever comes first (or to / when it meets neither), and
    passes over files that others could have written; each one passed over, with why, is added
    to `skipped`."""
    named = os.environ.get(ENV)
    if named is not None:
        return Path(named) if named else None
    home = _home()
    for folder in (start, *start.parents):
        for path in (folder / FILE_NAME, folder / PYPROJECT):
            if not path.is_file():
                continue
            if path.name == PYPROJECT and not _OURS.search(_head(path)):
                continue
            why = _unsafe(path)
            if why is None:
                return path
            if skipped is not None:
                skipped.append(f"{path} ({why})")
        if os.path.lexists(folder / ".git") or folder == home:
            return None
    return None


# A pyproject.toml holds our table when it has `[tool.cml-infra]` or `[tool.cml-infra.cleanup]`.
_OURS = re.compile(rb"^\s*\[\s*tool\s*\.\s*cml-infra\s*[\].]", re.MULTILINE)


def _home() -> Path | None:
    try:
        return Path.home().resolve()
    except (OSError, RuntimeError):  # no $HOME and no passwd entry
        return None


def _head(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _unsafe(path: Path) -> str | None:
    """Why `path` may hold what others wrote, or None: a file not owned by the user (the
    effective uid), or whose folder others may write (world-writable, a sticky /tmp too;
    group-writable unless the group is the user's own; owned by neither the user nor root).
    For a symbolic link, the folders of both the link and its target are checked."""
    try:
        info = path.stat()
        folders = dict.fromkeys((path.parent, path.resolve().parent))
        uid = os.geteuid()
        if info.st_uid != uid:
            return "not owned by you"
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not _own_group(info, uid):
            return "writable by others"
        for folder in folders:
            held = folder.stat()
            if held.st_uid not in (uid, 0):
                return f"its folder {folder} is not owned by you or root"
            if held.st_mode & stat.S_IWOTH or (
                held.st_mode & stat.S_IWGRP and not _own_group(held, uid)
            ):
                return f"its folder {folder} is writable by others"
    except OSError as exc:
        return f"cannot check who may write it: {exc.strerror}"
    return None


def _own_group(info: os.stat_result, uid: int) -> bool:
    """Whether the file's group is the user's private group (umask 002 set-ups): the user's
    primary group, named after the user, with no other member."""
    import grp
    import pwd

    try:
        user = pwd.getpwuid(uid)
        group = grp.getgrgid(info.st_gid)
    except KeyError:
        return False
    return (
        info.st_gid == user.pw_gid
        and group.gr_name == user.pw_name
        and set(group.gr_mem) <= {user.pw_name}
    )


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
    trust = trusted()
    top = _checked(
        path,
        "",
        {k: v for k, v in table.items() if k not in (*SECTIONS, VARS)},
        options["up"],
        trust,
    )
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
        checked = _checked(path, f"{section}.", value, options[section], trust)
        defaults[section] = {**defaults.get(section, {}), **checked}
    return Config(
        path,
        {command: values for command, values in defaults.items() if values},
        vars=_vars(path, table.get(VARS, {}), trust),
    )


# A module variable's name, as HCL takes it (spec.parse_vars checks `--var` the same way).
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _vars(path: Path, table: Any, trust: bool) -> dict[str, Any]:
    """The [vars] table: variable names, each with a value the tfvars file can hold (any TOML
    value but a date or time, which JSON has no type for)."""
    if not isinstance(table, dict):
        raise UsageError(str(path), f"[{VARS}] must be a table of module variables")
    if table and not trust:
        raise UsageError(
            str(path),
            f"[{VARS}]: not taken from a file unless you trust the file (module variables "
            f"choose images, roles and network exposure): set {TRUST_ENV}=1, or give --var",
        )
    for key, value in table.items():
        if not _VARIABLE.fullmatch(key):
            raise UsageError(
                str(path), f"[{VARS}] {key!r} is not a variable name (letters, digits, '_', '-')"
            )
        if not _json_value(value):
            raise UsageError(
                str(path), f"[{VARS}] {key}: a date or time is no module value; quote it"
            )
    return dict(table)


def _json_value(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_json_value(item) for item in value.values())
    if isinstance(value, list):
        return all(_json_value(item) for item in value)
    return isinstance(value, (str, int, float, bool))


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
    path: Path, prefix: str, table: Mapping[str, Any], options: Mapping[str, str], trust: bool
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
        if name == "var":
            # Not a list of KEY=VALUE strings, which would bypass the [vars] table's checks.
            raise UsageError(str(path), f"{prefix}{key}: module variables go in a [{VARS}] table")
        if name not in options:
            valid = ", ".join(sorted(set(options) - REFUSED))
            raise UsageError(str(path), f"unknown key '{prefix}{key}'; valid: {valid}")
        if options[name] in UNTRUSTED and not trust:
            raise UsageError(
                str(path),
                f"{prefix}{key}: not taken from a file unless you trust the file (it runs code "
                f"or decides where code, state or the token goes): set {TRUST_ENV}=1, or give "
                f"--{name}",
            )
        checked[options[name]] = _relative_to(path.parent, options[name], value)
    return checked


# Options whose value may be a path; one given relative in the file is relative to the file.
_PATHS = frozenset(
    {"state_dir", "terraform", "runner_archive", "modules_dir", "startup_script", "workdir"}
)
# Of those, the ones that are always a folder (never a command on PATH).
_FOLDERS = frozenset({"state_dir", "modules_dir", "workdir"})


def _relative_to(folder: Path, name: str, value: Any) -> Any:
    # A bare word is a command (`tofu`, `bundled`) and a URL is a URL: only paths move.
    if name not in _PATHS or not isinstance(value, str) or "://" in value:
        return value
    if "/" not in value and name not in _FOLDERS:
        return value
    try:
        return str(folder / Path(value).expanduser())
    except RuntimeError as exc:  # ~user of a user this machine does not know
        raise UsageError(f"--{name.replace('_', '-')}", f"{value!r}: {exc}") from None
