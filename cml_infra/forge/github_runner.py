"""GitHub's runner on the instance, launcher side: the pinned release, and the `runner` section
of the agent's config (agent/github_runner.py reads it on the instance)."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cml_infra.errors import UsageError
from cml_infra.forge.base import Registration

if TYPE_CHECKING:
    from cml_infra.clouds.base import Boot
    from cml_infra.spec import RunnerSpec

PLATFORM = "linux-x64"
# Stands in for a JIT config while inputs are checked before anything is minted: as large as
# GitHub's (a few KB), so that a startup script that would be too large fails first.
PLACEHOLDER = Registration(
    "jit", ("minted-by-cml-infra-up." * 200)[:4096], "https://github.com/minted/by-up"
)


@cache
def pinned() -> dict[str, Any]:
    """The release instances install (github_runner.yaml): version, sha256 per platform."""
    import yaml

    text = resources.files(__package__).joinpath("github_runner.yaml").read_text("utf-8")
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def archive(spec: RunnerSpec, boot: Boot) -> dict[str, str]:
    """Where the instance gets the runner release, and the sha256 it must have."""
    release = pinned()["platforms"][PLATFORM]
    source = spec.runner_archive
    if source is None:
        return {"url": release["url"], "sha256": release["sha256"]}
    if urlsplit(source).scheme in ("http", "https"):
        # A mirror serves the pinned release, so the pinned checksum still applies.
        return {"url": source, "sha256": release["sha256"]}
    path = Path(source).expanduser()
    if not boot.reads_launcher_files:
        raise UsageError(
            "--runner-archive", "a local path works on the local cloud only; give a URL"
        )
    if not path.is_file():
        raise UsageError("--runner-archive", f"{source}: no such file")
    # A local file is trusted as given: its checksum is taken here and checked on the instance.
    return {"path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def agent_config(
    spec: RunnerSpec, registration: Registration, labels: tuple[str, ...], boot: Boot
) -> dict[str, Any]:
    assert spec.forge is not None
    return {
        "kind": "github",
        "archive": archive(spec, boot),
        "registration": {
            "kind": registration.kind,
            "secret": registration.secret,
            "url": registration.url,
        },
        "name": spec.name,
        "labels": list(labels),
        "ephemeral": spec.single,
        "group": spec.forge.group,
        "user": boot.runner_user,
        "preemption": boot.preemption_probe,
        "startup_timeout": spec.startup_timeout,
    }
