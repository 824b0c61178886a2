"""The packaged offerings: generated from a recorded extract of a public snapshot (the round
trip), read lazily and overlaid by the user catalog, and what resolution takes from them."""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from cml_infra import catalog as cat
from cml_infra import clouds
from cml_infra.catalog.offerings import Figure, Offering, Offerings, Source
from cml_infra.errors import UsageError
from cml_infra.spec import RunnerSpec

ROOT = Path(__file__).resolve().parents[3]
EXTRACTS = ROOT / "tests/data/catalog"


def _script():
    spec = importlib.util.spec_from_file_location(
        "catalog_offerings", ROOT / "scripts/catalog_offerings.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _fresh_indexes():
    cat._INDEXES.clear()
    yield
    cat._INDEXES.clear()


@pytest.mark.parametrize("cloud", ["aws"])
def test_the_generator_over_the_recorded_extract_gives_the_committed_file(cloud):
    script = _script()
    extract = (EXTRACTS / f"skypilot-v8-{cloud}-vms.csv").read_text("utf-8")
    found = script.generate(cloud, extract, script.SNAPSHOTS[cloud], cat.load(cloud))
    assert found.to_json() == cat.offerings_path(cloud).read_bytes()


def test_the_extract_holds_only_our_rows_and_each_figure_names_its_snapshot():
    script = _script()
    extract = (EXTRACTS / "skypilot-v8-aws-vms.csv").read_text("utf-8")
    ours = {offer.instance_type for offer in cat.load("aws").instance_types}
    assert {row["InstanceType"] for row in script._rows(extract)} <= ours
    packaged = cat.offerings_of("aws").offerings
    (sid,) = packaged.sources
    assert packaged.sources[sid].url.startswith("https://github.com/skypilot-org/skypilot-catalog/")
    assert all(f.source == sid for o in packaged.offerings for f in (o.price, o.spot) if f)


def test_gcp_gpu_machines_need_their_gpu_rows_for_a_full_price():
    """SkyPilot prices a GCP GPU machine as the machine plus its GPUs in rows of their own: a
    machine row alone is not the price of the row."""
    script = _script()
    header = (
        "InstanceType,vCPUs,MemoryGiB,AcceleratorName,AcceleratorCount,GpuInfo,Region,"
        "AvailabilityZone,Price,SpotPrice\n"
    )
    machine = "a2-highgpu-1g,12.0,85.0,,,,us-central1,us-central1-a,0.73948,0.36975\n"
    gpu = ",,,A100,1,A100,us-central1,us-central1-a,2.93,1.1\n"
    snapshot = script.Snapshot("catalogs/v8/gcp/vms.csv", "0" * 40, date(2026, 1, 1))
    alone = script.generate("gcp", header + machine, snapshot, cat.load("gcp"))
    assert alone.offerings == []
    both = script.generate("gcp", header + machine + gpu, snapshot, cat.load("gcp"))
    (offering,) = both.offerings
    assert (offering.offer, offering.zone) == ("a2-highgpu-1g", "us-central1-a")
    assert offering.price.usd == pytest.approx(0.73948 + 2.93)
    assert offering.spot.usd == pytest.approx(0.36975 + 1.1)


def _user_file(state_dir: Path, *, usd: float, generated_at: datetime) -> Path:
    user = Offerings(
        cloud="aws",
        generated_at=generated_at,
        sources={"refresh": Source(what="DescribeSpotPriceHistory")},
        regions={"eu-west-2": []},
        offerings=[
            Offering(
                offer="g5.12xlarge", region="eu-west-2",
                spot=Figure(usd=usd, source="refresh", as_of=generated_at.date()),
            )
        ],
    )  # fmt: skip
    file = cat.user_offerings_path("aws", state_dir)
    file.parent.mkdir(parents=True)
    file.write_bytes(user.to_json())
    return file


def test_the_user_catalog_wins_per_offer_region_and_zone(tmp_path, capsys):
    _user_file(tmp_path, usd=1.25, generated_at=datetime.now(timezone.utc))
    packaged = cat.offerings_of("aws")
    index = cat.offerings_of("aws", tmp_path)
    figure = index.cheapest("g5.12xlarge", "eu-west-2", spot=True)
    assert figure.usd == 1.25 and index.origin(figure) == "refreshed"
    # Everything else is still the packaged data.
    assert index.cheapest("g5.12xlarge", "us-east-1", True) == packaged.cheapest(
        "g5.12xlarge", "us-east-1", True
    )
    on_demand = index.cheapest("g5.12xlarge", "eu-west-2", spot=False)
    assert index.origin(on_demand) == "packaged"
    assert capsys.readouterr().err == ""


def test_a_corrupt_user_catalog_is_one_line_and_the_packaged_one_is_used(tmp_path, capsys):
    file = cat.user_offerings_path("aws", tmp_path)
    file.parent.mkdir(parents=True)
    file.write_text('{"format": "cml-infra-offerings/1", "cloud": ')
    index = cat.offerings_of("aws", tmp_path)
    assert index.offerings == cat.offerings_of("aws").offerings
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(file) in err[0] and "packaged aws catalog" in err[0]


def test_a_stale_user_catalog_is_used_and_flagged(tmp_path, capsys):
    nine_days_ago = datetime.now(timezone.utc) - timedelta(days=9)
    file = _user_file(tmp_path, usd=1.25, generated_at=nine_days_ago)
    index = cat.offerings_of("aws", tmp_path)
    assert index.cheapest("g5.12xlarge", "eu-west-2", spot=True).usd == 1.25
    err = capsys.readouterr().err
    assert str(file) in err and "9 days ago" in err


def _spec(cloud, **changes):
    fields = {"name": "box-1", "cloud": cloud, "idle_timeout": 60, "ttl": 3600}
    fields.update(changes)
    return RunnerSpec(**fields)


def _resolve(cloud, **changes):
    spec = _spec(cloud, **changes)
    return clouds.get(cloud).resolve(spec, region=spec.region, spot=spec.spot, max_price=None)


def test_a_region_only_the_offerings_know_resolves_at_their_price():
    assert "eu-west-2" not in cat.load("aws").regions
    placement = _resolve("aws", region="eu-west-2", gpu="a10g", gpu_count=4, spot=True)
    index = cat.offerings_of("aws")
    assert placement.region == "eu-west-2"
    assert placement.hourly_price == index.cheapest("g5.12xlarge", "eu-west-2", True).usd


def test_t4_in_eu_west_2_resolves_unpriced_where_no_figure_was_observed():
    # The yaml's price is us-east-1's: passing it off as London's would mislead --budget.
    assert cat.offerings_of("aws").cheapest("g4dn.xlarge", "eu-west-2", False) is None
    placement = _resolve("aws", region="eu-west-2", gpu="t4", gpu_count=1)
    assert placement.instance_type == "g4dn.xlarge"
    assert placement.hourly_price is None


def test_a_yaml_region_without_a_figure_keeps_the_yaml_price():
    assert cat.offerings_of("aws").cheapest("g4dn.xlarge", "us-west-2", False) is None
    assert "us-west-2" in cat.load("aws").regions
    placement = _resolve("aws", region="us-west-2", gpu="t4", gpu_count=1)
    assert placement.hourly_price == cat.load("aws").offer("g4dn.xlarge").price


def test_an_unknown_region_is_accepted_only_with_a_native_type_and_a_warning(capsys):
    with pytest.raises(
        UsageError, match=r"--region: unknown region 'eu-west-9'.*did you mean 'eu-west-2'"
    ):
        _resolve("aws", region="eu-west-9", gpu="t4", gpu_count=1)
    placement = _resolve("aws", region="eu-west-9", instance_type="g4dn.xlarge")
    assert placement.region == "eu-west-9"
    assert "--region eu-west-9: not in the aws catalog" in capsys.readouterr().err


def test_a_native_type_the_catalog_does_not_know_is_warned_about(capsys):
    placement = _resolve("aws", instance_type="x9z.large")
    assert placement.hourly_price is None
    assert "--type x9z.large: not in the aws catalog" in capsys.readouterr().err


def test_catalog_rows_say_region_source_and_age():
    from cml_infra import queries

    rows = queries.catalog_rows(["aws"], region="eu-west-2")
    row = next(r for r in rows if r["instance_type"] == "g5.12xlarge")
    index = cat.offerings_of("aws")
    figure = index.cheapest("g5.12xlarge", "eu-west-2", False)
    assert (row["region"], row["price"], row["source"]) == ("eu-west-2", figure.usd, "packaged")
    assert row["as_of"] == figure.as_of.isoformat()
    assert row["age_days"] == (date.today() - figure.as_of).days
    assert row["stale"] is (row["age_days"] > cat.STALE_AFTER.days)
    assert row["source_id"] == figure.source
    # No figure in a region the yaml does not list: no price, as `up` resolves it.
    unpriced = next(r for r in rows if r["instance_type"] == "g4dn.xlarge")
    assert (unpriced["source"], unpriced["price"], unpriced["spot_price"]) == ("none", None, None)
    yaml_region = queries.catalog_rows(["aws"], region="us-west-2")
    fallback = next(r for r in yaml_region if r["instance_type"] == "g4dn.xlarge")
    yaml_price = cat.load("aws").offer("g4dn.xlarge").price
    assert (fallback["source"], fallback["price"]) == ("catalog yaml", yaml_price)
    everywhere = queries.catalog_rows(["aws"], region="all")
    assert {r["region"] for r in everywhere if r["instance_type"] == "g5.12xlarge"} == set(
        index.offerings.regions
    ) | set(cat.load("aws").regions)
    json.dumps(everywhere)


def test_render_prices_with_the_state_dirs_refreshed_catalog(tmp_path, monkeypatch):
    # The command sets the state dir (state.CATALOG_STATE_DIR); resolution reads its catalog.
    from typer.testing import CliRunner

    from cml_infra.cli import app

    state = tmp_path / "state"
    _user_file(state, usd=1.25, generated_at=datetime.now(timezone.utc))
    monkeypatch.setenv("CML_INFRA_CONFIG", "")
    argv = ["render", "--cloud", "aws", "--gpu", "a10g:4", "--spot", "--region", "eu-west-2",
            "--state-dir", str(state), "-o", str(tmp_path / "out")]  # fmt: skip
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert "$1.2500/h spot" in result.output
