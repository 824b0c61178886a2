"""RunnerRecord: what the ledger keeps of one runner (state.py stores it).

A msgspec Struct: decoding checks every field's type (a truncated or hand-edited record is
refused in one line, never half read), and it costs a fraction of a pydantic import, which
every `status` and `down` would pay.
"""

from __future__ import annotations

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

    def replace(self, **changes: Any) -> RunnerRecord:
        return msgspec.structs.replace(self, **changes)

    def to_json(self) -> str:
        return msgspec.json.format(msgspec.json.encode(self), indent=2).decode("utf-8")

    @classmethod
    def from_json(cls, text: str | bytes) -> RunnerRecord:
        """The record in `text`; msgspec.DecodeError (a ValueError) names what is wrong."""
        return msgspec.json.decode(text, type=cls)
