"""Spec + placement → a Terraform workspace: module copy, root main.tf, tfvars, startup script."""

from __future__ import annotations

import json
import os
import shlex
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from cml_infra import __version__, resources
from cml_infra.clouds.base import Cloud, Placement, RenderContext
from cml_infra.forge.github import Registration
from cml_infra.spec import RunnerSpec
from cml_infra.workspace import make_private_dir, write_private

AGENT_DELIMITER = "CML_INFRA_AGENT_EOF"


@cache
def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(resources.templates_dir())),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["shell_quote"] = shlex.quote
    return env


def agent_source() -> str:
    source = (Path(__file__).parent / "agent.py").read_text(encoding="utf-8")
    if AGENT_DELIMITER in source.replace(f'"{AGENT_DELIMITER}"', ""):
        raise RuntimeError(f"agent.py contains the heredoc delimiter {AGENT_DELIMITER}")
    return source.rstrip("\n")


def startup_script(
    cloud: Cloud, spec: RunnerSpec, expires_at: float, registration: Registration | None = None
) -> str:
    boot = cloud.boot(spec)
    config: dict[str, Any] = {
        "name": spec.name,
        "idle_timeout": spec.idle_timeout,
        "expires_at": int(expires_at),
        "single": spec.single,
        "command": list(spec.command),
        "self_destroy": list(boot.self_destroy),
        "poll_seconds": 1 if cloud.name == "local" else 5,
    }
    if registration is not None:
        from cml_infra import runner

        config["runner"] = runner.agent_config(spec, cloud.name, registration, expires_at)
    template = _environment().get_template("startup.sh.j2")
    return template.render(
        version=__version__,
        name=spec.name,
        default_home=boot.home,
        python=boot.python,
        ttl_timer=boot.ttl_timer,
        runner_user=(config.get("runner") or {}).get("user"),
        gpu=spec.gpu is not None,
        expires_at=int(expires_at),
        agent_source=agent_source(),
        agent_config=json.dumps(config, indent=2),
    )


def root_module(
    cloud: Cloud, spec: RunnerSpec, placement: Placement, variables: dict[str, Any]
) -> str:
    env = _environment()
    provider_template = f"providers/{cloud.name}.tf.j2"
    provider = ""
    if provider_template in env.list_templates():
        provider = env.get_template(provider_template).render(placement=placement)
    keys = list(variables)
    return env.get_template("root.tf.j2").render(
        version=__version__,
        name=spec.name,
        cloud=cloud.name,
        provider=provider,
        module=f"terraform/{cloud.module}",
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
    _copy_module(resources.module_dir(cloud.module), dest / "module")
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
