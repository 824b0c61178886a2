"""`cml-infra catalog refresh`: the command, the user catalog it writes, and its bad input."""

from __future__ import annotations

import datetime as dt
import stat

import pytest
from botocore.stub import Stubber
from typer.testing import CliRunner

from cml_infra import catalog
from cml_infra.catalog.offerings import Figure, Offering, Offerings, Source
from cml_infra.catalog.refresh import REFRESHERS, run
from cml_infra.catalog.refresh.aws import AwsRefresher
from cml_infra.catalog.refresh.base import Refresher
from cml_infra.cli import app
from cml_infra.errors import CmlInfraError, UsageError
from tests.unit.catalog.refresh.aws_answers import product, stub_prices

AWS = catalog.load("aws")
TYPES = sorted({row.instance_type for row in AWS.instance_types})


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_one_line_error(result, starts: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {starts}"), result.output
    assert "Traceback" not in result.output


@pytest.fixture
def stubbed_price_list(mocked_aws, monkeypatch):
    """moto answers EC2; the Price List (which moto lacks) answers from a Stubber."""
    session_refresher = AwsRefresher()
    pricing = session_refresher.client("pricing", "us-east-1")
    stubber = Stubber(pricing)
    made = AwsRefresher.client

    def client(self, service, region):
        return pricing if service == "pricing" else made(self, service, region)

    monkeypatch.setattr(AwsRefresher, "client", client)
    stubber.activate()
    return stubber


def test_refresh_writes_the_user_catalog_privately_and_covers_every_row(
    stubbed_price_list, tmp_path
):
    stub_prices(stubbed_price_list, TYPES, ["eu-west-2"], {
        ("g4dn.xlarge", "eu-west-2"): [[product("g4dn.xlarge", "eu-west-2", "0.6150000000")]],
    })  # fmt: skip
    root = tmp_path / "state"

    result = invoke("catalog", "refresh", "--cloud", "aws", "--region", "eu-west-2",
                    "--state-dir", str(root))  # fmt: skip

    assert result.exit_code == 0, result.output
    stubbed_price_list.assert_no_pending_responses()
    path = root / "catalog" / "aws-offerings.json"
    # Where the catalog loader looks for it.
    assert path == run.user_catalog(root, "aws") == catalog.user_offerings_path("aws", root)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary file is left"
    found = Offerings.from_json(path.read_bytes())
    assert found.cloud == "aws" and list(found.regions) == ["eu-west-2"]
    sold = {o.offer for o in found.offerings}
    unsold = [row.id for row in AWS.instance_types if row.id not in sold]
    # Every row of the catalog is either in the file or named as sold nowhere asked.
    assert sold | set(unsold) == {row.id for row in AWS.instance_types}
    assert sold <= {row.id for row in AWS.instance_types}
    summary = result.stdout.strip()
    assert summary.startswith(f"aws: {len(sold)} rows x 1 regions ({len(found.offerings)} ")
    # One row priced on demand, in each zone that sells it; moto prices spot everywhere.
    g4dn_zones = sum(o.offer == "g4dn.xlarge" for o in found.offerings)
    assert f"{g4dn_zones} on-demand and {len(found.offerings)} spot figures" in summary
    assert "aws-price-list, aws-spot-price-history" in summary
    if unsold:
        assert f"sold in none of them: {', '.join(unsold)}" in summary
    assert summary.endswith(f"wrote {path}")


def test_a_second_refresh_replaces_the_file_and_a_failed_one_keeps_it(tmp_path, monkeypatch):
    calls: list[str] = []

    class Once(Refresher):
        def fetch(self, catalog, regions, warn):
            calls.append("fetch")
            if len(calls) > 1:
                raise CmlInfraError("aws: the network went away")
            return _offerings(0.5)

    monkeypatch.setitem(REFRESHERS._classes, "aws", Once)
    root = tmp_path / "state"
    run.refresh(["aws"], None, root, print, named=True)
    first = run.user_catalog(root, "aws").read_bytes()

    with pytest.raises(CmlInfraError, match="network"):
        run.refresh(["aws"], None, root, print, named=True)

    assert run.user_catalog(root, "aws").read_bytes() == first
    assert Offerings.from_json(first).offerings[0].price.usd == 0.5  # type: ignore[union-attr]


def test_unnamed_clouds_without_credentials_are_skipped_with_a_warning(tmp_path, monkeypatch):
    class Works(Refresher):
        def fetch(self, catalog, regions, warn):
            return _offerings(0.5)

    class NoCredentials(Refresher):
        def fetch(self, catalog, regions, warn):
            raise UsageError("gcp", "no credentials found; set GOOGLE_APPLICATION_CREDENTIALS")

    monkeypatch.setitem(REFRESHERS._classes, "aws", Works)
    monkeypatch.setitem(REFRESHERS._classes, "gcp", NoCredentials)
    warnings: list[str] = []

    done = run.refresh(["aws", "gcp"], None, tmp_path, warnings.append, named=False)

    assert [d.cloud for d in done] == ["aws"]
    assert warnings == [
        "not refreshed: gcp: no credentials found; set GOOGLE_APPLICATION_CREDENTIALS"
    ]
    assert not run.user_catalog(tmp_path, "gcp").exists()
    # None refreshed: one line, exit 2.
    monkeypatch.setitem(REFRESHERS._classes, "aws", NoCredentials)
    with pytest.raises(UsageError) as caught:
        run.refresh(["aws", "gcp"], None, tmp_path, warnings.append, named=False)
    assert "\n" not in str(caught.value) and str(caught.value).count("no credentials") == 2


def test_no_aws_credentials_is_one_line_saying_what_to_set(no_aws_credentials, tmp_path):
    root = tmp_path / "state"

    result = invoke("catalog", "refresh", "--cloud", "aws", "--state-dir", str(root))

    assert_one_line_error(result, "aws: no credentials found; set AWS_PROFILE")
    assert not root.exists(), "nothing is written"


@pytest.mark.parametrize(
    ("args", "starts"),
    [
        (["--cloud", "awz"], "--cloud: unknown catalog refresher 'awz'; did you mean 'aws'?"),
        (["--cloud", "local"], "--cloud: unknown catalog refresher 'local'"),
        (["--cloud", "aws", "--region", ","], "--region: empty"),
    ],
)
def test_bad_input_is_one_line_before_anything_is_asked(args, starts, tmp_path):
    root = tmp_path / "state"

    result = invoke("catalog", "refresh", *args, "--state-dir", str(root))

    assert_one_line_error(result, starts)
    assert not root.exists()


def test_regions_are_per_cloud():
    assert run.regions_of(["eu-west-2,us-east-1", "eu-west-2"], ["aws"]) == [
        "eu-west-2", "us-east-1",
    ]  # fmt: skip
    assert run.regions_of(None, ["aws", "gcp"]) is None
    with pytest.raises(UsageError, match="--region: region names belong to one cloud"):
        run.regions_of(["eu-west-2"], ["aws", "gcp"])


def test_default_clouds_are_those_with_a_catalog_and_a_refresher():
    found = run.clouds(None)
    assert "aws" in found
    assert all(catalog.path(name).is_file() and name in REFRESHERS for name in found)


def test_plain_catalog_still_lists_rows():
    result = invoke("catalog", "--cloud", "aws")
    assert result.exit_code == 0, result.output
    assert "g4dn.xlarge" in result.stdout
    result = invoke("catalog", "--cloud", "aws", "--json")
    assert result.exit_code == 0, result.output
    assert '"instance_type": "g4dn.xlarge"' in result.stdout


def _offerings(usd: float) -> Offerings:
    today = dt.datetime.now(dt.timezone.utc)
    return Offerings(
        cloud="aws",
        generated_at=today,
        sources={"test": Source(what="a test double")},
        regions={"eu-west-2": ["eu-west-2a"]},
        offerings=[
            Offering(
                offer="g4dn.xlarge", region="eu-west-2", zone="eu-west-2a",
                price=Figure(usd=usd, source="test", as_of=today.date()),
            )
        ],
    )  # fmt: skip
