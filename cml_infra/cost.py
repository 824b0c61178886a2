"""What a runner costs: the catalog's $/h times time. Estimates, not bills: disks, traffic and
taxes are not counted, and a spot price is the catalog's typical one, not the one charged."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cml_infra.errors import UsageError
from cml_infra.placement import Placement
from cml_infra.record import RunnerRecord
from cml_infra.spec import format_duration
from cml_infra.state import utcnow


def accrued(record: RunnerRecord, now: datetime | None = None) -> float | None:
    """USD spent so far: from creation to the end (or now, while it lives). The end is
    `ended_at`: stamped when the record is saved destroyed, or earlier by `status` on a record
    still `running` whose instance ended itself; the state does not matter here."""
    if record.hourly_price is None:
        return None
    end = record.ended_at or now or utcnow()
    hours = max(0.0, (end - record.created_at).total_seconds() / 3600)
    return round(record.hourly_price * hours, 4)


def ceiling(hourly_price: float, ttl: int) -> float:
    """The most a runner can cost: its TTL ends it whatever it is doing."""
    return hourly_price * ttl / 3600


def check_budget(placements: Sequence[Placement], ttl: int, budget: float | None) -> None:
    """Refuse, before anything is created, a placement that could cost more than `budget` over
    its TTL; with failover every placement `up` might end on must fit."""
    if budget is None:
        return
    for placement in placements:
        where = f"{placement.instance_type} ({placement.market}, {placement.region})"
        if placement.hourly_price is None:
            raise UsageError(
                "--budget",
                f"no catalog price for {where}, so the budget cannot be checked; "
                "pick a catalog type (`cml-infra catalog`) or drop --budget",
            )
        worst = ceiling(placement.hourly_price, ttl)
        if worst > budget:
            raise UsageError(
                "--budget",
                f"{where} at ${placement.hourly_price:.4f}/h could cost ${worst:.2f} over "
                f"--ttl {format_duration(ttl)}, more than ${budget:.2f}; "
                "lower --ttl, pick a cheaper placement or raise --budget",
            )
