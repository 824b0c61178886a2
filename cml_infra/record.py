"""RunnerRecord: what the ledger keeps of one runner (state.py stores it).

Kept apart from state.py so that reading an empty state dir imports no pydantic.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from cml_infra.state import State


class RunnerRecord(BaseModel):
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
    engine: tuple[str, ...] = ()
    outputs: dict[str, Any] = {}
    # The forge the runner registered with (kind, scope, api_url): never a token.
    forge: dict[str, Any] | None = None
    end_reason: str | None = None
    error: str | None = None
    # When it was recorded as destroyed: where `cost.accrued` stops counting.
    ended_at: datetime | None = None
