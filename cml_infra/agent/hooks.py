"""The agent's per-cloud hooks by name: what it asks a cloud's metadata service and API.

Each hook is registered here by the name a cloud's Boot gives it (clouds/*.py): spot
interruption probes in PREEMPTION_PROBES, self-destroy calls (`@name`) in SELF_DESTROY, with the
module that holds it (hooks_aws.py, hooks_gcp.py, hooks_azure.py; what they share is in
hooks_http.py). An instance carries its own cloud's modules only, none where it calls no hook
(user data is small: render.agent_files); `hook` imports one when first used.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable

DEFAULT_ENDPOINTS = {
    "gcp_metadata": "http://metadata.google.internal/computeMetadata/v1",
    "gcp_api": "https://compute.googleapis.com/compute/v1",
    "azure_metadata": "http://169.254.169.254/metadata",
    "azure_api": "https://management.azure.com",
    "aws_metadata": "http://169.254.169.254",
}

# Each hook's module; its function is the name without `@`, `-` as `_` (aws-spot-notice:
# hooks_aws.aws_spot_notice).
PREEMPTION_PROBES = {
    "aws-spot-notice": "hooks_aws",
    "gcp-preempted": "hooks_gcp",
    "azure-preempt-event": "hooks_azure",
}
SELF_DESTROY = {
    "@gcp-delete-instance": "hooks_gcp",
    "@azure-delete-resource-group": "hooks_azure",
}


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"[cml-infra agent {stamp}] {message}", flush=True)


def hook(name: str) -> Callable[[dict[str, str]], str | None]:
    """The hook registered as `name`, its module imported; KeyError for a name that is none,
    or whose module this instance was not given. A probe returns the notice (None: none); a
    self-destroy returns None."""
    module = {**PREEMPTION_PROBES, **SELF_DESTROY}[name]
    try:
        found = importlib.import_module(f".{module}", __package__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.{module}":
            raise
        raise KeyError(f"{name}: {module}.py is not on this instance") from None
    function: Callable[[dict[str, str]], str | None] = getattr(
        found, name.lstrip("@").replace("-", "_")
    )
    return function
