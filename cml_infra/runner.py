"""What the instance's agent needs to run a GitHub Actions runner: archive, registration, user."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cml_infra.errors import UsageError
from cml_infra.forge.github import Registration
from cml_infra.spec import RunnerSpec

RUNNER_USER = "cml-runner"
PLATFORM = "linux-x64"
# Stands in for a JIT config while inputs are checked before anything is minted: as large as
# GitHub's (a few KB), so that a startup script that would be too large fails first.
PLACEHOLDER = Registration(
    "jit", ("minted-by-cml-infra-up." * 200)[:4096], "https://github.com/minted/by-up"
)


@cache
def pinned() -> dict[str, Any]:
    import yaml

    text = resources.files("cml_infra.catalog").joinpath("runner.yaml").read_text("utf-8")
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def archive(spec: RunnerSpec, cloud: str) -> dict[str, str]:
    """Where the instance gets the runner release, and the sha256 it must have."""
    release = pinned()["platforms"][PLATFORM]
    source = spec.runner_archive
    if source is None:
        return {"url": release["url"], "sha256": release["sha256"]}
    if urlsplit(source).scheme in ("http", "https"):
        # A mirror serves the pinned release, so the pinned checksum still applies.
        return {"url": source, "sha256": release["sha256"]}
    path = Path(source).expanduser()
    if cloud != "local":
        raise UsageError(
            "--runner-archive", "a local path works on the local cloud only; give a URL"
        )
    if not path.is_file():
        raise UsageError("--runner-archive", f"{source}: no such file")
    # A local file is trusted as given: its checksum is taken here and checked on the instance.
    return {"path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def agent_config(
    spec: RunnerSpec, cloud: str, registration: Registration, expires_at: float
) -> dict[str, Any]:
    return {
        "archive": archive(spec, cloud),
        "registration": {
            "kind": registration.kind,
            "secret": registration.secret,
            "url": registration.url,
        },
        "name": spec.name,
        "labels": list(spec.runner_labels(expires_at)),
        "ephemeral": spec.single,
        "group": spec.runner_group,
        # VMs run it as an unprivileged user made at boot; the local cloud as the launcher's user.
        "user": None if cloud == "local" else RUNNER_USER,
        "preemption": cloud if spec.spot and cloud in ("aws", "gcp", "azure") else None,
        "startup_timeout": spec.startup_timeout,
    }
