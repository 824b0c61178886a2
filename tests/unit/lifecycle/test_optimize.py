"""`up --region any --optimize price` and `--attempt-timeout`, through `up` with a scripted
engine: the cheapest placement first, failover to the next cheapest, an attempt that hangs cut
at its deadline, rolled back, and the walk going on; and the bad input of both, at the CLI.

Prices come from Offerings built here (never the packaged data's numbers), handed to `up`
through the catalog's loader.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from cml_infra import catalog, placement
from cml_infra.catalog.offerings import Figure, Index, Offering, Offerings, Source
from cml_infra.lifecycle import failover, prepare, up
from cml_infra.spec import RunnerSpec, build_spec
from cml_infra.state import StateDir
from cml_infra.terraform import Diagnostic, TerraformError
from tests.unit.lifecycle.conftest import EngineDouble
from tests.unit.test_cli import _imported_modules, assert_one_line_error, invoke

NO_CAPACITY = Diagnostic(
    "error",
    "creating EC2 Instance",
    "api error InsufficientInstanceCapacity: There is no Spot capacity available",
)
HANG = "hang"
DAY = date(2025, 11, 30)


def _figure(usd: float) -> Figure:
    return Figure(usd=usd, source="test", as_of=DAY)


def t4_offerings(spot: dict[str, float], on_demand: dict[str, float] | None = None) -> Offerings:
    """g4dn.xlarge (AWS's t4:1 row) sold in each `region-zone` at these spot prices."""
    zones = sorted({*spot, *(on_demand or {})})
    regions: dict[str, list[str]] = {}
    for zone in zones:
        regions.setdefault(zone[:-1], []).append(zone)
    return Offerings(
        cloud="aws",
        generated_at=datetime(2025, 11, 30, tzinfo=timezone.utc),
        sources={"test": Source(what="figures made up for this test")},
        regions=regions,
        offerings=[
            Offering(
                offer="g4dn.xlarge",
                region=zone[:-1],
                zone=zone,
                spot=_figure(spot[zone]) if zone in spot else None,
                price=_figure((on_demand or {})[zone]) if zone in (on_demand or {}) else None,
            )
            for zone in zones
        ],
    )


# Cheapest first: us-west-2b, us-east-1a, us-east-1b, us-west-2a, eu-west-1a.
SPOT = {
    "us-west-2b": 0.15,
    "us-east-1a": 0.20,
    "us-east-1b": 0.25,
    "us-west-2a": 0.30,
    "eu-west-1a": 0.40,
}


@pytest.fixture
def state_root(tmp_path, monkeypatch):
    root = tmp_path / "state"
    monkeypatch.setenv("CML_INFRA_HOME", str(root))
    return root


@pytest.fixture
def offerings(monkeypatch):
    """The catalog's loader answers with what the test sets."""
    held = {"aws": t4_offerings(SPOT)}

    def load(cloud: str, state_dir: Path | None = None) -> Index:
        return Index(held[cloud])

    monkeypatch.setattr(catalog, "offerings_of", load)
    return held


class WalkEngine(EngineDouble):
    """Each apply takes the next outcome: None succeeds, a Diagnostic fails, HANG blocks until
    `up` interrupts it (then fails the way an interrupted Terraform does)."""

    def __init__(self, state: StateDir, outcomes: list) -> None:
        self.state, self.outcomes = state, list(outcomes)
        self.applies: list[tuple[str, str | None]] = []  # (region, zone) of each apply
        self.calls: list[str] = []
        self.interrupts = 0
        self._running = False
        self._stop = threading.Event()

    def init(self, workspace: Path, on_event) -> None:
        self.calls.append("init")
        (workspace / ".terraform").mkdir(exist_ok=True)

    def apply(self, workspace: Path, on_event) -> dict:
        self.calls.append("apply")
        record = self.state.load("gpu-1")
        variables = json.loads((workspace / "terraform.tfvars.json").read_text())
        self.applies.append((record.region, variables.get("availability_zone")))
        outcome = self.outcomes.pop(0)
        if outcome == HANG:
            self._running = True
            try:
                deadline = time.monotonic() + 10
                while not self._stop.wait(0.01):
                    assert time.monotonic() < deadline, "the attempt was never interrupted"
            finally:
                self._running = False
                self._stop.clear()
            raise TerraformError("apply", [Diagnostic("error", "execution halted")], "")
        if outcome is not None:
            raise TerraformError("apply", [outcome], "")
        return {"instance": {"id": "us-west-2/i-0123456789abcdef0"}}

    def destroy(self, workspace: Path, on_event) -> None:
        self.calls.append("destroy")

    def interrupt(self) -> bool:
        if not self._running:
            return False
        self.interrupts += 1
        self._stop.set()
        return True


def _engine(monkeypatch, state: StateDir, outcomes: list) -> WalkEngine:
    engine = WalkEngine(state, outcomes)
    monkeypatch.setattr(up.Engine, "discover", classmethod(lambda cls, explicit, home: engine))
    return engine


def _spec(**changes) -> RunnerSpec:
    fields = {
        "name": "gpu-1",
        "cloud": "aws",
        "any_region": True,
        "optimize": "price",
        "gpu": "t4",
        "gpu_count": 1,
        "spot": True,
        "idle_timeout": 300,
        "ttl": 3600,
        "command": ("nvidia-smi",),
    }
    fields.update(changes)
    return RunnerSpec(**fields)


@pytest.mark.usefixtures("mocked_aws", "offerings")
def test_any_region_starts_with_the_cheapest_and_falls_over_to_the_next(monkeypatch, state, capsys):
    spec = build_spec(
        cloud="aws", name="gpu-1", region="any", gpu="t4", spot=True, idle_timeout="5m",
        ttl="1h", single=False, labels=(), command=(),
    )  # fmt: skip
    assert (spec.any_region, spec.optimize) == (True, "price")
    engine = _engine(monkeypatch, state, [NO_CAPACITY, None])
    record = up.up(spec, state, None)
    # AWS's own pick in the cheapest region first (at that region's best price), then its
    # cheapest zone; the rest of the walk is never reached.
    assert engine.applies == [("us-west-2", None), ("us-west-2", "us-west-2b")]
    assert engine.calls == ["init", "apply", "destroy", "init", "apply"]
    assert (record.state, record.region, record.spot) == ("running", "us-west-2", True)
    assert record.hourly_price == 0.15
    err = capsys.readouterr().err
    assert "--optimize price: us-west-2 (spot) $0.1500/h, us-west-2b (spot) $0.1500/h" in err
    assert "created in us-west-2b (spot) on attempt 2" in err


@pytest.mark.usefixtures("mocked_aws", "offerings")
def test_an_attempt_that_hangs_is_cut_at_its_deadline_rolled_back_and_the_walk_goes_on(
    monkeypatch, state, capsys
):
    engine = _engine(monkeypatch, state, [HANG, None])
    started = time.monotonic()
    record = up.up(_spec(attempt_timeout=0.2), state, None)
    assert time.monotonic() - started < 8
    assert engine.interrupts == 1  # one SIGINT, as Terraform wants
    # The hung region's other placements are skipped: us-east-1 is the next cheapest region.
    assert engine.applies == [("us-west-2", None), ("us-east-1", None)]
    assert engine.calls == ["init", "apply", "destroy", "init", "apply"]
    assert record.state == "running" and record.region == "us-east-1"
    err = capsys.readouterr().err
    assert (
        "could not create in us-west-2 (spot) (terraform apply failed: timed out after 0.2s)"
        in (err)
    )
    assert "before it: us-west-2 (spot): terraform apply failed: timed out after 0.2s" in err


@pytest.mark.usefixtures("mocked_aws", "offerings")
def test_a_last_attempt_that_times_out_rolls_back_with_the_reason(monkeypatch, state):
    engine = _engine(monkeypatch, state, [HANG])
    spec = _spec(any_region=False, region="us-east-1", attempt_timeout=0.2)
    with pytest.raises(failover.AttemptTimedOut, match=r"timed out after 0\.2s"):
        up.up(spec, state, None)
    assert engine.calls == ["init", "apply", "destroy"]
    record = state.load("gpu-1")
    assert record.state == "destroyed" and "timed out after 0.2s" in record.error


@pytest.mark.usefixtures("mocked_aws", "offerings")
def test_an_apply_that_ends_before_its_deadline_is_not_interrupted(monkeypatch, state):
    engine = _engine(monkeypatch, state, [None])
    up.up(_spec(attempt_timeout=0.2), state, None)
    # The deadline's timer is cancelled with the apply: it ends without ever firing.
    deadline = time.monotonic() + 5
    while any(isinstance(t, threading.Timer) for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the attempt's timer outlived it"
        time.sleep(0.01)
    assert engine.interrupts == 0


@pytest.mark.usefixtures("offerings")
def test_the_walk_after_a_timeout_skips_the_region_even_when_prices_interleave(state):
    launch = prepare.plan(_spec(), state)
    where = [a.placement.where for a in launch.attempts]
    assert where[:5] == [
        "us-west-2 (spot)",
        "us-west-2b (spot)",
        "us-east-1 (spot)",
        "us-east-1a (spot)",
        "us-east-1b (spot)",
    ]
    cloud, attempts = launch.cloud, launch.attempts
    timed_out = failover.AttemptTimedOut(300)
    capacity = TerraformError("apply", [NO_CAPACITY], "")
    following = failover.next_attempt(cloud, timed_out, attempts, attempts[0])
    assert following is attempts[2]
    # us-east-1's capacity error moves on by one; us-west-2a, later, is still skipped.
    after = failover.next_attempt(cloud, capacity, attempts, attempts[4], left=[attempts[0]])
    assert after is not None and after.placement.region == "eu-west-1"


def test_the_cli_takes_the_new_flags_and_help_stays_light():
    result = invoke("up", "--help")
    assert "--optimize" in result.stdout and "--attempt-timeout" in result.stdout
    _, modules = _imported_modules("up", "--help")
    assert "cml_infra.placement" not in modules and "msgspec" not in modules


@pytest.mark.parametrize(
    ("args", "flag", "fragment"),
    [
        (["--optimize", "cheap"], "--optimize", "valid: order, price"),
        (["--region", "any,us-east-1"], "--region", "give it alone"),
        (["--region", "any", "--optimize", "order"], "--optimize", "use --optimize price"),
        (["--attempt-timeout", "soon"], "--attempt-timeout", "not a duration"),
    ],
)
def test_bad_input_is_one_line(state_root, args, flag, fragment):
    result = invoke("up", "--cloud", "aws", "--gpu", "t4", "--spot", *args)
    assert_one_line_error(result, flag, state_root)
    assert fragment in result.output


@pytest.mark.usefixtures("offerings")
def test_a_budget_nothing_fits_is_one_line_naming_the_cheapest(state_root, tmp_path):
    out = tmp_path / "out"
    result = invoke(
        "render", "--cloud", "aws", "--region", "any", "--gpu", "t4", "--spot",
        "--ttl", "10h", "--budget", "1", "-o", str(out),
    )  # fmt: skip
    assert_one_line_error(result, "--budget", state_root)
    assert "the cheapest placement, g4dn.xlarge in us-west-2 (spot) at $0.1500/h" in result.output
    assert "$1.50 over --ttl 10h, more than $1.00" in result.output
    assert not out.exists()


@pytest.mark.usefixtures("offerings")
def test_render_prints_the_order_it_would_walk(state_root, tmp_path):
    out = tmp_path / "out"
    result = invoke(
        "render", "--cloud", "aws", "--region", "any", "--gpu", "t4", "--spot", "-o", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "g4dn.xlarge in us-west-2 (spot), $0.1500/h spot" in result.output
    assert (
        "(--optimize price: us-west-2 (spot) $0.1500/h, us-west-2b (spot) $0.1500/h, "
        "us-east-1 (spot) $0.2000/h, ... (8 placements))"
    ) in result.output


def test_local_any_is_its_one_region(state):
    found = placement.attempts(_spec(cloud="local", gpu=None, gpu_count=0, spot=False), _local())
    assert [a.placement.region for a in found] == ["local"]


def _local():
    from cml_infra import clouds

    return clouds.get("local")
