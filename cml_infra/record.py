"""RunnerRecord: what the ledger keeps of one runner (state.py stores it).

A msgspec Struct: decoding checks every field's type (a truncated or hand-edited record is
refused in one line, never half read), and it costs a fraction of a pydantic import, which
every `status` and `down` would pay.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec

from cml_infra.state import State


class RunnerRecord(msgspec.Struct, kw_only=True):
    """What the launcher knows of one runner; enough for `status`, `down` and `cleanup`."""

    name: str
    cloud: str
    region: str
    state: State
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    idle_timeout: int
    ttl: int
    single: bool = False
    labels: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    instance_type: str = ""
    gpu: str | None = None
    spot: bool = False
    hourly_price: float | None = None
    instance_id: str | None = None
    # The launch's unique id, in the `cml-infra-id` tag of everything its module made: what
    # `down`, a rollback and a failover's clean-up match (a name is not an identity). "" in a
    # record written before launch ids.
    launch_id: str = ""
    engine: tuple[str, ...] = ()
    outputs: dict[str, Any] = {}
    # The forge the runner registered with (kind, repository or organization, api_url): never
    # a token.
    forge: dict[str, Any] | None = None
    end_reason: str | None = None
    error: str | None = None
    # When it was recorded as destroyed: where `cost.accrued` stops counting.
    ended_at: datetime | None = None
    # The CI workflow run whose `up` launched it (`ci_run`): how `report --cost` finds the
    # runners of a run. None outside CI, and in a record written before it was kept.
    ci: dict[str, str] | None = None
    # Task mode: the launcher's --workdir and the --out paths that come back into it.
    workdir: str | None = None
    task_outputs: tuple[str, ...] = ()
    # Where the agent reports its status, log and outputs (task/channel.py): "folder" (the
    # state dir's, local cloud), "bucket" (the backend's), or None: nothing comes back.
    reports: str | None = None

    def replace(self, **changes: Any) -> RunnerRecord:
        return msgspec.structs.replace(self, **changes)

    def to_json(self) -> str:
        return msgspec.json.format(msgspec.json.encode(self), indent=2).decode("utf-8")

    @classmethod
    def from_json(cls, text: str | bytes) -> RunnerRecord:
        """The record in `text`; msgspec.DecodeError (a ValueError) names what is wrong."""
        return msgspec.json.decode(text, type=cls)


# What a record keeps of the workflow run that launched it: field → (the GitHub Actions
# variable, the shape a value must have). A value of another shape is dropped, never kept half:
# these end up in reports and tables.
CI_FIELDS: Mapping[str, tuple[str, re.Pattern[str]]] = {
    "repository": ("GITHUB_REPOSITORY", re.compile(r"[A-Za-z0-9-]{1,39}/[A-Za-z0-9._-]{1,100}")),
    "run_id": ("GITHUB_RUN_ID", re.compile(r"[0-9]{1,20}")),
    "run_attempt": ("GITHUB_RUN_ATTEMPT", re.compile(r"[0-9]{1,6}")),
    "workflow": ("GITHUB_WORKFLOW", re.compile(r"[^\x00-\x1f\x7f]{1,200}")),
    "job": ("GITHUB_JOB", re.compile(r"[A-Za-z0-9_-]{1,100}")),
    "server": (
        "GITHUB_SERVER_URL",
        re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/\S{0,150})?"),
    ),
}


def ci_run(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The GitHub Actions workflow run this process is a step of (its repository and run id at
    least, as a record's `ci`), or None: not in Actions, or no usable run id or repository."""
    env = os.environ if environ is None else environ
    if env.get("GITHUB_ACTIONS") != "true":
        return None
    found = {
        field: value
        for field, (variable, shape) in CI_FIELDS.items()
        if shape.fullmatch(value := env.get(variable, ""))
    }
    return found if {"repository", "run_id"} <= found.keys() else None
