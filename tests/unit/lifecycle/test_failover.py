"""cml_infra.lifecycle.failover, driven through up: failover across zones, regions and from
spot to on-demand.

The engine is scripted (these clouds' providers cannot be downloaded here); the cloud is the
real AwsCloud, with EC2 answered by moto, so the rollback's own lookups run for real. The
local cloud's whole loop with real Terraform is in tests/e2e/test_lifecycle.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cml_infra.errors import CmlInfraError
from cml_infra.lifecycle import prepare, up
from cml_infra.spec import RunnerSpec
from cml_infra.state import StateDir
from cml_infra.terraform import Diagnostic, TerraformError
from tests.unit.lifecycle.conftest import EngineDouble

pytestmark = pytest.mark.usefixtures("mocked_aws")

NO_CAPACITY = Diagnostic(
    "error",
    "creating EC2 Instance: operation error EC2: RunInstances",
    "api error InsufficientInstanceCapacity: There is no Spot capacity available that matches "
    "your request.",
)
NO_QUOTA = Diagnostic(
    "error", "creating EC2 Instance", "api error VcpuLimitExceeded: You have requested more vCPU"
)
NOT_ALLOWED = Diagnostic(
    "error", "creating EC2 Instance", "api error UnauthorizedOperation: You are not authorized"
)


class ScriptedEngine(EngineDouble):
    """Stands in for Terraform: each apply takes the next outcome (None: it succeeds) and notes
    where the workspace asked for (the record's region and market at that moment)."""

    def __init__(self, state: StateDir, name: str, outcomes: list[Diagnostic | None]) -> None:
        self.state, self.name, self.outcomes = state, name, list(outcomes)
        self.calls: list[tuple[str, str, bool]] = []
        self.zones: list[str | None] = []  # the zone of each apply, where the module has one
        self.destroy_fails = False

    def _note(self, command: str, workspace: Path) -> None:
        record = self.state.load(self.name)
        assert record is not None
        variables = json.loads((workspace / "terraform.tfvars.json").read_text())
        # The workspace on disk is the attempt's own: its region is the record's.
        assert record.region in (workspace / "main.tf").read_text() + json.dumps(variables)
        self.calls.append((command, record.region, record.spot))

    def init(self, workspace: Path, on_event) -> None:
        self._note("init", workspace)
        (workspace / ".terraform").mkdir(exist_ok=True)

    def apply(self, workspace: Path, on_event) -> dict:
        self._note("apply", workspace)
        variables = json.loads((workspace / "terraform.tfvars.json").read_text())
        # GCP's module takes `zone`; AWS's takes `availability_zone` (None: AWS picks).
        self.zones.append(variables.get("zone", variables.get("availability_zone")))
        outcome = self.outcomes.pop(0)
        if outcome is not None:
            raise TerraformError("apply", [outcome], "")
        return {"instance": {"id": "us-west-2/i-0123456789abcdef0"}}

    def destroy(self, workspace: Path, on_event) -> None:
        self._note("destroy", workspace)
        if self.destroy_fails:
            raise TerraformError("destroy", [Diagnostic("error", "destroy went wrong")], "")


def _spec(**changes) -> RunnerSpec:
    fields = {
        "name": "gpu-1",
        "cloud": "aws",
        "region": "us-east-1",
        "fallback_regions": ("us-west-2",),
        "gpu": "t4",
        "gpu_count": 1,
        "spot": True,
        "idle_timeout": 300,
        "ttl": 3600,
        "command": ("nvidia-smi",),
    }
    fields.update(changes)
    return RunnerSpec(**fields)


def _engine(monkeypatch, state: StateDir, outcomes: list[Diagnostic | None]) -> ScriptedEngine:
    engine = ScriptedEngine(state, "gpu-1", outcomes)
    monkeypatch.setattr(up.Engine, "discover", classmethod(lambda cls, explicit, home: engine))
    return engine


US_EAST_1_ZONES = ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d", "us-east-1f"]
US_WEST_2_ZONES = ["us-west-2a", "us-west-2b", "us-west-2c", "us-west-2d"]


def test_no_capacity_where_aws_picked_tries_the_zones_in_turn(monkeypatch, state, capsys):
    engine = _engine(monkeypatch, state, [NO_CAPACITY, None])
    record = up.up(_spec(), state, None)
    assert (record.state, record.region, record.spot) == ("running", "us-east-1", True)
    assert engine.calls == [
        ("init", "us-east-1", True),
        ("apply", "us-east-1", True),
        ("destroy", "us-east-1", True),  # what the failed attempt made goes before moving on
        ("init", "us-east-1", True),
        ("apply", "us-east-1", True),
    ]
    assert engine.zones == [None, "us-east-1a"]  # AWS's own pick first, then the catalog's
    err = capsys.readouterr().err
    assert "could not create in us-east-1 (spot)" in err and "trying us-east-1a (spot)" in err
    assert state.load("gpu-1").instance_id == "us-west-2/i-0123456789abcdef0"


def test_a_quota_error_skips_the_rest_of_the_region(monkeypatch, state):
    engine = _engine(monkeypatch, state, [NO_QUOTA, None])
    assert up.up(_spec(), state, None).region == "us-west-2"
    assert engine.zones == [None, None]


def test_any_other_error_stops_at_once_and_rolls_back(monkeypatch, state):
    engine = _engine(monkeypatch, state, [NOT_ALLOWED, None])
    with pytest.raises(TerraformError, match="UnauthorizedOperation"):
        up.up(_spec(), state, None)
    assert [call[:2] for call in engine.calls if call[0] == "apply"] == [("apply", "us-east-1")]
    record = state.load("gpu-1")
    assert record.state == "destroyed" and "UnauthorizedOperation" in record.error
    assert not state.workspace("gpu-1").exists()


def test_when_every_zone_of_every_region_is_full_the_last_error_is_reported(monkeypatch, state):
    tries = 1 + len(US_EAST_1_ZONES) + 1 + len(US_WEST_2_ZONES)
    engine = _engine(monkeypatch, state, [NO_CAPACITY] * tries)
    with pytest.raises(TerraformError, match="InsufficientInstanceCapacity"):
        up.up(_spec(), state, None)
    assert engine.zones == [None, *US_EAST_1_ZONES, None, *US_WEST_2_ZONES]
    assert [call[0] for call in engine.calls].count("destroy") == tries
    assert state.load("gpu-1").state == "destroyed"


def test_on_demand_fallback_comes_after_every_spot_region(monkeypatch, state, capsys):
    engine = _engine(monkeypatch, state, [NO_QUOTA, NO_QUOTA, None])
    record = up.up(_spec(on_demand_fallback=True, max_price=0.3), state, None)
    applies = [call[1:] for call in engine.calls if call[0] == "apply"]
    assert applies == [("us-east-1", True), ("us-west-2", True), ("us-east-1", False)]
    assert (record.region, record.spot) == ("us-east-1", False)
    spot_price = prepare.plan(_spec(), state).attempts[0].placement.hourly_price
    on_demand = prepare.plan(_spec(spot=False), state).attempts[0].placement.hourly_price
    assert record.hourly_price == on_demand != spot_price
    assert "trying us-east-1 (on-demand)" in capsys.readouterr().err


def test_without_fallback_regions_the_one_region_is_walked(monkeypatch, state):
    engine = _engine(monkeypatch, state, [NO_CAPACITY] * (1 + len(US_EAST_1_ZONES)))
    with pytest.raises(TerraformError):
        up.up(_spec(fallback_regions=()), state, None)
    assert engine.zones == [None, *US_EAST_1_ZONES]


def test_a_zone_aws_does_not_offer_the_type_in_moves_on(monkeypatch, state):
    unsupported = Diagnostic(
        "error",
        "creating EC2 Instance",
        "api error Unsupported: Your requested instance type (g4dn.xlarge) is not supported in "
        "your requested Availability Zone (us-east-1a). Please retry your request by not "
        "specifying an Availability Zone or choosing us-east-1b, us-east-1c.",
    )
    engine = _engine(monkeypatch, state, [NO_CAPACITY, unsupported, None])
    up.up(_spec(), state, None)
    assert engine.zones == [None, "us-east-1a", "us-east-1b"]


def test_a_failed_clean_up_between_attempts_stops_and_is_recorded(monkeypatch, state):
    engine = _engine(monkeypatch, state, [NO_CAPACITY, None])
    engine.destroy_fails = True
    with pytest.raises(CmlInfraError, match="cleaning up before the next attempt failed"):
        up.up(_spec(), state, None)
    assert [call[0] for call in engine.calls].count("apply") == 1
    record = state.load("gpu-1")
    # Nothing is abandoned: the record stays for `down` or `cleanup` to finish.
    assert record.state == "failed" and record.region == "us-east-1"


def test_an_unknown_fallback_region_fails_before_anything_is_created(monkeypatch, state):
    engine = _engine(monkeypatch, state, [None])
    with pytest.raises(CmlInfraError, match="--region"):
        up.up(_spec(fallback_regions=("mars-north-1",)), state, None)
    assert engine.calls == []
    assert state.load("gpu-1") is None


# GCP: the zones of a region are tried before the next region, since GCP's stock-outs are zonal.
ZONE_EXHAUSTED = Diagnostic(
    "error",
    "Error waiting for instance to create",
    "The zone 'projects/proj/zones/us-central1-a' does not have enough resources available to "
    "fulfill the request. '(resource type:compute)'. ZONE_RESOURCE_POOL_EXHAUSTED",
)
GPU_QUOTA = Diagnostic(
    "error",
    "Error creating instance",
    "googleapi: Error 403: Quota 'PREEMPTIBLE_NVIDIA_T4_GPUS' exceeded. Limit: 0.0 in region "
    "us-central1., quotaExceeded",
)
NOT_IN_ZONE = Diagnostic(
    "error",
    "Error creating instance",
    "googleapi: Error 400: Invalid value for field 'resource.guestAccelerators[0].acceleratorType'"
    ": 'nvidia-tesla-t4'. Accelerator type 'nvidia-tesla-t4' does not exist in zone "
    "'us-central1-f'., invalid",
)
BAD_IMAGE = Diagnostic(
    "error", "Error creating instance", "googleapi: Error 400: The resource was not found, invalid"
)


def _gcp_spec(**changes) -> RunnerSpec:
    return _spec(**{"cloud": "gcp", "region": "us-central1", "fallback_regions": ("us-east1",),
                    **changes})  # fmt: skip


def test_gcp_tries_the_next_zone_when_one_is_exhausted(monkeypatch, state, fake_compute, capsys):
    engine = _engine(monkeypatch, state, [ZONE_EXHAUSTED, None])
    record = up.up(_gcp_spec(), state, None)
    assert engine.zones == ["us-central1-a", "us-central1-b"]
    assert record.region == "us-central1"
    err = capsys.readouterr().err
    assert (
        "could not create in us-central1-a (spot)" in err and "trying us-central1-b (spot)" in err
    )


def test_gcp_a_type_missing_from_a_zone_moves_on_too(monkeypatch, state, fake_compute):
    engine = _engine(monkeypatch, state, [NOT_IN_ZONE, None])
    up.up(_gcp_spec(), state, None)
    assert engine.zones == ["us-central1-a", "us-central1-b"]


def test_gcp_a_quota_skips_the_rest_of_the_region(monkeypatch, state, fake_compute):
    engine = _engine(monkeypatch, state, [GPU_QUOTA, None])
    record = up.up(_gcp_spec(), state, None)
    assert engine.zones == ["us-central1-a", "us-east1-b"]
    assert record.region == "us-east1"


def test_gcp_walks_every_zone_of_every_region_then_gives_up(monkeypatch, state, fake_compute):
    zones = [
        *("us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"),
        *("us-east1-b", "us-east1-c", "us-east1-d"),
    ]
    engine = _engine(monkeypatch, state, [ZONE_EXHAUSTED] * len(zones))
    with pytest.raises(TerraformError, match="ZONE_RESOURCE_POOL_EXHAUSTED"):
        up.up(_gcp_spec(), state, None)
    assert engine.zones == zones
    assert state.load("gpu-1").state == "destroyed"


def test_gcp_zones_are_walked_without_a_region_list(monkeypatch, state, fake_compute):
    engine = _engine(monkeypatch, state, [ZONE_EXHAUSTED, None])
    up.up(_gcp_spec(fallback_regions=()), state, None)
    assert engine.zones == ["us-central1-a", "us-central1-b"]


def test_gcp_an_invalid_request_is_not_retried_in_another_zone(monkeypatch, state, fake_compute):
    engine = _engine(monkeypatch, state, [BAD_IMAGE, None])
    with pytest.raises(TerraformError, match="not found"):
        up.up(_gcp_spec(), state, None)
    assert engine.zones == ["us-central1-a"]
