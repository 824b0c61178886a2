"""Spec + placement → a Terraform workspace: module copy, root main.tf, tfvars, startup script.

Every value a template prints is quoted for the file it lands in, by the environment itself
(jinja2's `finalize`): shell words for `*.sh.j2`, HCL strings for `*.tf.j2`. A template cannot
forget to quote; what must go in unquoted (the agent's source inside a quoted heredoc, an HCL
identifier) is wrapped in `Verbatim` by a filter that checks it first.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Callable, Collection
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cml_infra import __version__, packaged
from cml_infra.state import make_private_dir, write_private

if TYPE_CHECKING:
    from jinja2 import Environment

    from cml_infra.clouds.base import Boot, Cloud, RenderContext
    from cml_infra.placement import Placement
    from cml_infra.spec import RunnerSpec

AGENT_PACKAGE = "cml_infra_agent"
AGENT_DELIMITER = "CML_INFRA_AGENT_EOF"
CONFIG_DELIMITER = "CML_INFRA_CONFIG_EOF"
# The team's script (--startup-script) is written beside the agent under this name, and ends
# its heredoc at this delimiter (lengthened until no line of the script is it).
TEAM_SCRIPT_FILE = "team-startup-script"
TEAM_SCRIPT_DELIMITER = "CML_INFRA_STARTUP_SCRIPT_EOF"
# How long the agent waits for `nvidia-smi` to list the GPUs (agent/host.py).
GPU_TIMEOUT_SECONDS = 900
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


class Verbatim(str):
    """Text a filter has checked and that goes into a template as it is."""


def shell_word(value: object) -> str:
    """A value as one shell word, whatever characters it holds."""
    return value if isinstance(value, Verbatim) else shlex.quote(str(value))


def hcl_string(value: object) -> str:
    """A value as an HCL string literal: JSON escapes, plus HCL's own template sequences."""
    if isinstance(value, Verbatim):
        return value
    return json.dumps(str(value)).replace("${", "$${").replace("%{", "%%{")


def identifier(value: object, width: int = 0) -> Verbatim:
    """An HCL identifier (a variable's name), padded to `width` to align a block."""
    text = str(value)
    if not _IDENTIFIER.fullmatch(text):
        raise ValueError(f"{text!r} is not an identifier")
    return Verbatim(text.ljust(width))


def comment(value: object) -> Verbatim:
    """Free text on a comment line: on one line, whatever it holds."""
    return Verbatim(" ".join(str(value).split()))


def heredoc(delimiter: str) -> Callable[[str], Verbatim]:
    """Text for a quoted heredoc: verbatim, once it is sure no line ends the heredoc early."""

    def check(text: str) -> Verbatim:
        if delimiter in text.splitlines():
            raise ValueError(f"the text holds the heredoc delimiter {delimiter}")
        return Verbatim(text)

    return check


@cache
def _environment(quote: Callable[[object], str], folders: tuple[Path, ...]) -> Environment:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        # A fork's templates/ first (packaged.template_dirs): it may replace any one of them.
        loader=FileSystemLoader([str(folder) for folder in folders]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        finalize=quote,
    )
    env.filters.update(
        identifier=identifier,
        comment=comment,
        agent_source=heredoc(AGENT_DELIMITER),
        config_json=heredoc(CONFIG_DELIMITER),
        heredoc_body=lambda text, delimiter: heredoc(delimiter)(text),
    )
    return env


def shell_templates(modules_dir: Path | None = None) -> Environment:
    return _environment(shell_word, packaged.template_dirs(modules_dir))


def hcl_templates(modules_dir: Path | None = None) -> Environment:
    return _environment(hcl_string, packaged.template_dirs(modules_dir))


# Modules an instance needs only in runner mode, for a task's workdir or outputs, to report.
RUNNER_MODULES = ("github_runner.py",)
TASK_MODULES = ("task.py",)
REPORT_MODULES = ("report.py",)
# Needed only where there are GPUs to wait for or Docker to install (agent/host.py).
HOST_MODULES = ("host.py",)
# The cloud hooks' HTTP clients (agent/hooks_http.py), needed only with a cloud hook.
HOOKS_SHARED = "hooks_http"


def agent_files(
    runner: bool = True,
    task: bool = True,
    report: bool = True,
    hooks: Collection[str] | None = None,
    host: bool = True,
) -> dict[str, str]:
    """The agent package's modules by file name, as the startup script writes them; without
    the runner's modules unless `runner`, without task.py (a task's workdir and outputs) unless
    `task`, without report.py unless `report` or `task`, without host.py unless `host`, and with
    only the cloud hook modules (agent/hooks_*.py) of the hooks named in `hooks` (spot probes,
    `@` self-destroys; other words are ignored; None: every cloud's). User data is small."""
    from cml_infra.agent.hooks import PREEMPTION_PROBES, SELF_DESTROY

    package = Path(__file__).parent / "agent"
    skip = (() if runner else RUNNER_MODULES) + (() if task else TASK_MODULES)
    skip += (() if report or task else REPORT_MODULES) + (() if host else HOST_MODULES)
    if hooks is not None:
        table = {**PREEMPTION_PROBES, **SELF_DESTROY}
        wanted = {table[name] for name in hooks if name in table}
        # What the cloud modules share (HOOKS_SHARED) goes with any of them.
        unwanted = set(table.values()) - wanted | (set() if wanted else {HOOKS_SHARED})
        skip += tuple(f"{module}.py" for module in unwanted)
    files = {}
    for path in sorted(package.glob("*.py")):
        if path.name in skip:
            continue
        source = path.read_text(encoding="utf-8")
        if AGENT_DELIMITER in source.replace(f'"{AGENT_DELIMITER}"', ""):
            raise RuntimeError(f"{path.name} contains the heredoc delimiter {AGENT_DELIMITER}")
        files[path.name] = shipped(source).rstrip("\n")
    return files


def shipped(source: str) -> str:
    """Python source as an instance gets it: comments and docstrings (any statement that is a
    lone string) emptied, every line where it was, so that a traceback on the instance names
    the repository's line. User data is capped (AWS: 16 KB, compressed), and the prose of the
    agent's comments is most of its size."""
    import io
    import tokenize

    lines = source.splitlines(keepends=True)
    edits: list[tuple[tuple[int, int], tuple[int, int], str]] = []
    starts_statement = True
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    for index, token in enumerate(tokens):
        kind = token.type
        if kind == tokenize.COMMENT:
            edits.append((token.start, token.end, ""))
            continue
        if kind in (tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING):
            continue
        following = next(
            (t for t in tokens[index + 1 :] if t.type not in (tokenize.COMMENT, tokenize.NL)),
            None,
        )
        if (
            starts_statement
            and kind == tokenize.STRING
            and following is not None
            and following.type in (tokenize.NEWLINE, tokenize.ENDMARKER)
        ):
            breaks = token.end[0] - token.start[0]
            edits.append(
                (token.start, token.end, '"""' + "\n" * breaks + '"""' if breaks else '""')
            )
        starts_statement = kind in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
    for (row, col), (end_row, end_col), text in reversed(edits):
        head = lines[row - 1][:col]
        tail = lines[end_row - 1][end_col:]
        lines[row - 1 : end_row] = [head + text + tail]
    # Without the blanks a removed comment leaves at the end of its line.
    return "\n".join(line.rstrip() for line in "".join(lines).split("\n"))


def startup_script(
    boot: Boot,
    spec: RunnerSpec,
    expires_at: float,
    runner: dict[str, Any] | None = None,
    gpus: int | None = None,
    task: dict[str, Any] | None = None,
) -> str:
    """The script an instance boots: it writes the agent and its config, then runs the agent.
    `gpus`: how many the placement promised (None: as the spec asks, at least one for a GPU).
    `task`: task mode's agent config as the launcher built it (workdir, outputs, report,
    report_seconds, preemption: agent/loop.py), merged into the config as given."""
    if gpus is None:
        gpus = max(spec.gpu_count, 1) if spec.gpu else 0
    config: dict[str, Any] = {
        "name": spec.name,
        "idle_timeout": spec.idle_timeout,
        "expires_at": int(expires_at),
        "single": spec.single,
        "command": list(spec.command),
        "self_destroy": list(boot.self_destroy),
        "poll_seconds": boot.poll_seconds,
        "gpus": gpus,
        "gpu_timeout": gpu_timeout(spec),
        # Docker for the jobs (agent/host.py installs it and adds the runner user to its group).
        "docker": spec.docker if spec.docker is not None else gpus > 0,
    }
    if runner is not None:
        config["runner"] = runner
    config.update(task or {})
    team_script = spec.startup_script
    if team_script is not None:
        # The agent runs it as its first step (agent/loop.py): before the GPU wait, Docker, the
        # task or the runner.
        config["startup_script"] = TEAM_SCRIPT_FILE
    return (
        shell_templates(spec.modules_dir)
        .get_template("startup.sh.j2")
        .render(
            version=__version__,
            name=spec.name,
            default_home=boot.home,
            python=boot.python,
            ttl_timer=boot.ttl_timer,
            runner_user=runner.get("user") if runner else None,
            docker=config["docker"],
            # A role for the job's data is fetched from the metadata service by job code.
            block_metadata=not spec.data_identities,
            expires_at=int(expires_at),
            agent_package=AGENT_PACKAGE,
            agent_files=agent_files(
                runner=runner is not None,
                task="workdir" in config or "outputs" in config,
                report="report" in config,
                # The hooks the agent may call: its self-destroy, a task's or a runner's probe.
                hooks=[
                    *config["self_destroy"][:1],
                    config.get("preemption") or "",
                    (runner or {}).get("preemption") or "",
                ],
                # As agent/host.py's HostSetup.needed decides.
                host=gpus > 0 or bool(config["docker"]),
            ),
            agent_config=json.dumps(config, indent=2),
            team_script=team_script_body(team_script) if team_script is not None else None,
            team_script_file=TEAM_SCRIPT_FILE,
            team_delimiter=team_script_delimiter(team_script or ""),
        )
    )


def team_script_body(text: str) -> str:
    """The team's script as its heredoc's body: the heredoc ends every body with a newline, so
    the file the instance gets is the script byte for byte (a final newline added if missing)."""
    return text.removesuffix("\n")


def team_script_delimiter(text: str) -> str:
    """A heredoc delimiter that no line of the team's script is (a script may hold ours)."""
    delimiter = TEAM_SCRIPT_DELIMITER
    lines = set(text.splitlines())
    while delimiter in lines:
        delimiter += "_"
    return delimiter


def gpu_timeout(spec: RunnerSpec) -> int:
    """The agent's wait for the GPUs. A runner's leaves a third of its startup timeout for
    Docker, the toolkit and the runner itself: a GPU that never comes then ends the instance,
    with the reason in its log, before `up` stops waiting for the runner to come online."""
    if spec.forge is None:
        return GPU_TIMEOUT_SECONDS
    return min(GPU_TIMEOUT_SECONDS, spec.startup_timeout * 2 // 3)


def root_module(
    cloud: Cloud, spec: RunnerSpec, placement: Placement, variables: dict[str, Any]
) -> str:
    env = hcl_templates(spec.modules_dir)
    provider = env.get_template(f"providers/{cloud.module}.tf.j2").render(placement=placement)
    keys = list(variables)
    return env.get_template("root.tf.j2").render(
        version=__version__,
        name=spec.name,
        cloud=cloud.name,
        provider=Verbatim(provider.strip("\n")),
        module=(
            f"terraform/{cloud.module}"
            if spec.modules_dir is None
            else str(spec.modules_dir / cloud.module)
        ),
        variables=keys,
        sensitive=cloud.sensitive_vars(),
        width=max(len(key) for key in keys),
    )


def write_workspace(
    dest: Path,
    cloud: Cloud,
    spec: RunnerSpec,
    placement: Placement,
    context: RenderContext,
    variables: dict[str, Any],
) -> None:
    """Write the workspace into `dest` (created 0700, files 0600)."""
    make_private_dir(dest)
    _copy_module(packaged.module_dir(cloud.module, spec.modules_dir), dest / "module")
    write_private(dest / "main.tf", root_module(cloud, spec, placement, variables))
    write_private(dest / "terraform.tfvars.json", json.dumps(variables, indent=2) + "\n")
    # The script is in the tfvars too; this copy is for people and linters to read.
    write_private(dest / "startup.sh", context.startup_script)


def _copy_module(source: Path, dest: Path) -> None:
    """Copy a module folder privately; a fork's local `examples/` are not needed to apply."""
    make_private_dir(dest)
    for entry in sorted(source.iterdir()):
        if entry.name.startswith(".") or entry.name == "examples":
            continue
        if entry.is_dir():
            _copy_module(entry, dest / entry.name)
        else:
            write_private(dest / entry.name, entry.read_text(encoding="utf-8"))
            if os.access(entry, os.X_OK):
                os.chmod(dest / entry.name, 0o700)
