"""The composite action's entry point (action.yml): its inputs in, one `cml-infra` command out.

action.yml hands every input over as an environment variable (INPUT_*), never written into a
`run:` script, where an expression is pasted into the bash source before bash reads it
(template injection). This module checks the inputs and turns them into the CML_INFRA_*
variables that the command line already reads, so that a token or an App key never lands on a
command line (the process list shows those), and then execs cml-infra, so that the step's exit
code and its outputs ($GITHUB_OUTPUT) are cml-infra's own.

`python -m cml_infra.action prepare` runs with the runner's Python from the action's checkout,
before anything is installed: this module imports nothing but the standard library and
cml_infra's own dependency-free modules.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cml_infra import __version__
from cml_infra.errors import UsageError

COMMANDS = ("up", "down", "cleanup", "comment", "report")
EVERY = frozenset(COMMANDS)
BOOLEANS = {"true": "true", "false": "false"}


@dataclass(frozen=True)
class Input:
    """A named input of action.yml: the variable the command line reads it from, and the
    commands that read that variable (any other would ignore it without a word)."""

    name: str
    variable: str
    commands: frozenset[str]
    boolean: bool = False
    # Passed on exactly as given: a PEM key keeps its last newline.
    secret: bool = False

    @property
    def environment_name(self) -> str:
        """How action.yml hands it over: `idle-timeout` → INPUT_IDLE_TIMEOUT."""
        return "INPUT_" + self.name.upper().replace("-", "_")


INPUTS: tuple[Input, ...] = (
    Input("cloud", "CML_INFRA_CLOUD", frozenset({"up", "cleanup"})),
    Input("gpu", "CML_INFRA_GPU", frozenset({"up"})),
    Input("spot", "CML_INFRA_SPOT", frozenset({"up"}), boolean=True),
    Input("region", "CML_INFRA_REGION", frozenset({"up"})),
    Input("labels", "CML_INFRA_LABELS", frozenset({"up"})),
    Input("idle-timeout", "CML_INFRA_IDLE_TIMEOUT", frozenset({"up"})),
    Input("ttl", "CML_INFRA_TTL", frozenset({"up"})),
    Input("single", "CML_INFRA_SINGLE", frozenset({"up"}), boolean=True),
    Input("token", "CML_INFRA_TOKEN", EVERY, secret=True),
    Input("backend", "CML_INFRA_BACKEND", frozenset({"up", "down", "cleanup", "report"})),
    Input("github-app-id", "CML_INFRA_GITHUB_APP_ID", EVERY),
    # The key's text, not a file: a secret is text, and a file of it would outlive the step.
    Input("github-app-key", "CML_INFRA_GITHUB_APP_PRIVATE_KEY", EVERY, secret=True),
)
COMMAND_INPUT = "INPUT_COMMAND"
ARGS_INPUT = "INPUT_ARGS"


@dataclass(frozen=True)
class Invocation:
    """What the step runs: the argument vector (no secret in it) and the variables to add."""

    argv: tuple[str, ...]
    env: Mapping[str, str]


def plan(environ: Mapping[str, str], executable: str = "cml-infra") -> Invocation:
    """The command the action's inputs (as action.yml passes them in `environ`) ask for.

    An input left empty is not given: Actions passes "" for an input the workflow omits, and
    the command's own default (or the workflow's CML_INFRA_* variable) then holds."""
    command = environ.get(COMMAND_INPUT, "").strip()
    if command not in COMMANDS:
        shown = repr(command) if command else "nothing"
        raise UsageError("command", f"got {shown}; valid: {', '.join(COMMANDS)}")
    env: dict[str, str] = {}
    for spec in INPUTS:
        value = environ.get(spec.environment_name, "")
        if not value.strip():
            continue
        if command not in spec.commands:
            takers = ", ".join(c for c in COMMANDS if c in spec.commands)
            raise UsageError(
                spec.name,
                f"`{command}` does not read this input (only {takers}); give {command}'s "
                "options in args",
            )
        if spec.boolean:
            value = _boolean(spec.name, value)
        env[spec.variable] = value if spec.secret else value.strip()
    try:
        extra = shlex.split(environ.get(ARGS_INPUT, ""))
    except ValueError as exc:
        raise UsageError("args", f"cannot split into words: {exc}") from None
    return Invocation(argv=(executable, command, *extra), env=env)


def _boolean(name: str, value: str) -> str:
    folded = value.strip().lower()
    if folded not in BOOLEANS:
        raise UsageError(name, f"got {value.strip()!r}; valid: true, false")
    return BOOLEANS[folded]


def executable() -> str:
    """cml-infra beside this interpreter (the action's virtual environment), else on PATH."""
    beside = Path(sys.executable).parent / "cml-infra"
    return str(beside) if beside.is_file() else "cml-infra"


# What the installed package is made of: a change to any of these is another virtual env.
SOURCES = ("pyproject.toml", "cml_infra", "terraform", "templates")


def cache_key(root: Path, python: Sequence[int] = sys.version_info[:3]) -> str:
    """The key of the action's virtual environment: the package's version, the interpreter, the
    platform, and a digest of the sources, since a workflow that pins another commit of the
    action must not get the venv of the last one (the version moves only at releases)."""
    digest = hashlib.sha256()
    for path in _source_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    interpreter = ".".join(str(part) for part in python)
    system = f"{platform.system()}-{platform.machine()}".lower()
    return f"cml-infra-{__version__}-py{interpreter}-{system}-{digest.hexdigest()[:20]}"


def _source_files(root: Path) -> Iterator[Path]:
    for name in SOURCES:
        top = root / name
        if top.is_file():
            yield top
            continue
        for folder, subfolders, files in os.walk(top):
            # Caches and Terraform's plugin folders are made by using the sources, not part
            # of them, and a developer's checkout has them.
            subfolders[:] = sorted(s for s in subfolders if not s.startswith((".", "__")))
            yield from (Path(folder, f) for f in sorted(files) if not f.endswith(".pyc"))


def prepare(environ: Mapping[str, str], root: Path) -> dict[str, str]:
    """Where the virtual environment lives and the key it is cached under. The path holds the
    key: a venv's scripts name their interpreter by absolute path, so a cached venv is
    restored only to the place it was made, and a runner that keeps its tool cache between
    jobs (a self-hosted one) finds it there without the cache."""
    key = cache_key(root)
    base = environ.get("RUNNER_TOOL_CACHE") or environ.get("RUNNER_TEMP") or tempfile.gettempdir()
    return {"key": key, "venv": str(Path(base, "cml-infra", key))}


def _write_outputs(outputs: Mapping[str, str], environ: Mapping[str, str]) -> None:
    lines = "".join(f"{name}={value}\n" for name, value in outputs.items())
    target = environ.get("GITHUB_OUTPUT")
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(lines)
    else:
        sys.stdout.write(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m cml_infra.action [prepare]`: run the inputs' command, or say where the
    virtual environment goes. Bad inputs are one line, exit 2, as for cml-infra itself."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args == ["prepare"]:
            _write_outputs(prepare(os.environ, Path(__file__).resolve().parent.parent), os.environ)
            return
        if args:
            raise UsageError("cml_infra.action", f"unknown arguments {args}; valid: prepare")
        invocation = plan(os.environ, executable())
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    sys.stdout.flush()
    os.execvpe(invocation.argv[0], list(invocation.argv), child_environment(os.environ, invocation))


def child_environment(environ: Mapping[str, str], invocation: Invocation) -> dict[str, str]:
    """cml-infra's environment: the step's, less the raw inputs (the token would otherwise be
    there twice, and go on to every process cml-infra starts), plus what they mapped to."""
    raw = {COMMAND_INPUT, ARGS_INPUT, *(spec.environment_name for spec in INPUTS)}
    kept = {name: value for name, value in environ.items() if name not in raw}
    return {**kept, **invocation.env}


if __name__ == "__main__":
    main()
