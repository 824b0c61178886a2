"""cml_infra.cost: accrued cost, the TTL ceiling and the budget guard."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from cml_infra import cost
from cml_infra.errors import UsageError
from cml_infra.placement import Placement
from cml_infra.state import StateDir

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


def _placement(price: float | None, spot: bool = True, region: str = "us-east-1") -> Placement:
    return Placement("aws", region, "g4dn.xlarge", price, spot=spot)


def test_accrued_is_price_times_hours_while_it_lives(make_record):
    record = make_record(created_at=T0, hourly_price=0.5)
    assert cost.accrued(record, now=T0 + timedelta(hours=2, minutes=30)) == 1.25


def test_accrued_stops_at_the_end(make_record):
    record = make_record(created_at=T0, hourly_price=0.5, state="destroyed",
                         ended_at=T0 + timedelta(minutes=12))  # fmt: skip
    assert cost.accrued(record, now=T0 + timedelta(days=3)) == 0.1


def test_accrued_stops_at_an_end_status_saw_on_a_record_still_running(make_record):
    """`status` stamps `ended_at` on a running record whose instance ended itself; the record
    stays `running` until `down` or cleanup, and the cost must not grow meanwhile."""
    record = make_record(created_at=T0, hourly_price=0.5, state="running",
                         ended_at=T0 + timedelta(hours=1))  # fmt: skip
    assert cost.accrued(record, now=T0 + timedelta(hours=2)) == 0.5
    assert cost.accrued(record, now=T0 + timedelta(days=30)) == 0.5


def test_accrued_without_a_price_is_unknown(make_record):
    assert cost.accrued(make_record(created_at=T0, hourly_price=None), now=T0) is None


def test_accrued_never_goes_negative(make_record):
    record = make_record(created_at=T0, hourly_price=0.5)
    assert cost.accrued(record, now=T0 - timedelta(minutes=1)) == 0.0


def test_ceiling_is_price_times_ttl():
    assert cost.ceiling(0.526, 6 * 3600) == pytest.approx(3.156)


def test_no_budget_checks_nothing():
    cost.check_budget([_placement(None), _placement(100.0)], 86400, None)


def test_a_placement_within_the_budget_passes():
    cost.check_budget([_placement(0.25)], 4 * 3600, 1.0)  # exactly $1.00


def test_over_budget_is_a_usage_error_with_the_numbers():
    with pytest.raises(UsageError) as caught:
        cost.check_budget([_placement(0.526, spot=False)], 24 * 3600, 5)
    message = str(caught.value)
    assert message.startswith("--budget: g4dn.xlarge (on-demand, us-east-1) at $0.5260/h")
    assert "could cost $12.62 over --ttl 1d, more than $5.00" in message
    assert "lower --ttl" in message


def test_every_fallback_must_fit():
    # Spot fits; the on-demand fallback would not: refused before anything is created.
    placements = [_placement(0.16), _placement(0.526, spot=False)]
    with pytest.raises(UsageError, match=r"\(on-demand, us-east-1\)"):
        cost.check_budget(placements, 24 * 3600, 5)


def test_an_unpriced_placement_cannot_be_budgeted():
    with pytest.raises(UsageError, match=r"no catalog price for g4dn\.xlarge"):
        cost.check_budget([_placement(None)], 3600, 5)


def test_saving_a_destroyed_record_stamps_its_end_once(tmp_path, make_record):
    state = StateDir(tmp_path / "state")
    live = state.save(make_record("box", hourly_price=1.0))
    assert live.ended_at is None
    gone = state.save(live.replace(state="destroyed"))
    assert gone.ended_at is not None
    again = state.save(gone.replace(end_reason="noted later"))
    assert again.ended_at == gone.ended_at
    assert state.load("box").ended_at == gone.ended_at
