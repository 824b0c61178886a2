"""The AWS Refresher against moto (EC2) and botocore's Stubber (the Price List API, which moto
does not implement, and answers a test shapes), both checked against botocore's service
model."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from importlib import resources

import pytest
from botocore.stub import Stubber

from cml_infra import catalog
from cml_infra.catalog.refresh.aws import PRICE_LIST, SPOT_HISTORY, AwsRefresher
from cml_infra.errors import UsageError
from tests.unit.catalog.refresh.aws_answers import ec2_error, product, stub_prices

AWS = catalog.load("aws")
TYPES = sorted({row.instance_type for row in AWS.instance_types})
TODAY = dt.datetime.now(dt.timezone.utc).date()


def moto_zones_selling(region: str) -> dict[str, set[str]]:
    """Type → zones, straight from moto's own data file (not through the refresher)."""
    data = resources.files("moto.ec2").joinpath(
        f"resources/instance_type_offerings/availability-zone/{region}.json.gz"
    )
    sold: dict[str, set[str]] = {}
    with data.open("rb") as handle, gzip.open(handle) as unzipped:
        for item in json.load(unzipped):
            sold.setdefault(item["InstanceType"], set()).add(item["Location"])
    return sold


@pytest.fixture
def refresher(mocked_aws):
    return AwsRefresher()


def stubbed_pricing(refresher):
    stubber = Stubber(refresher.client("pricing", "us-east-1"))
    stubber.activate()
    return stubber


def test_moto_zones_spot_and_price_list_make_one_offering_per_row_and_zone(refresher):
    stubber = stubbed_pricing(refresher)
    pages = {
        # Two pages: the refresher follows NextToken; the Capacity Block and Local Zone
        # products of the same type are not its on-demand price.
        ("g4dn.xlarge", "eu-west-2"): [
            [product("g4dn.xlarge", "eu-west-2", "0.6150000000")],
            [
                product("g4dn.xlarge", "eu-west-2", "9.0000000000", market="CapacityBlock"),
                product("g4dn.xlarge", "eu-west-2", "8.0", location_type="AWS Local Zone"),
            ],
        ],
    }
    stub_prices(stubber, TYPES, ["eu-west-2"], pages)
    warnings: list[str] = []

    found = refresher.fetch(AWS, ["eu-west-2"], warnings.append)

    stubber.assert_no_pending_responses()
    assert warnings == []
    assert found.cloud == "aws"
    assert list(found.regions) == ["eu-west-2"]
    zones = found.regions["eu-west-2"]
    sold = moto_zones_selling("eu-west-2")
    expected = {
        (row.id, zone)
        for row in AWS.instance_types
        for zone in sold.get(row.instance_type, set()) & set(zones)
    }
    assert {(o.offer, o.zone) for o in found.offerings} == expected
    assert expected, "moto sells some of our rows in eu-west-2"
    for offering in found.offerings:
        assert offering.region == "eu-west-2"
        # moto answers one spot price per zone and type it sells.
        assert offering.spot is not None
        assert offering.spot.source == SPOT_HISTORY
        assert offering.spot.as_of == TODAY
        if offering.offer == "g4dn.xlarge":
            assert offering.price is not None
            assert (offering.price.usd, offering.price.source) == (0.615, PRICE_LIST)
            assert offering.price.as_of == TODAY
        else:
            assert offering.price is None
    # The file round-trips, every source it names listed.
    type(found).from_json(found.to_json())


def test_every_usable_region_by_default_and_none_that_needs_an_opt_in(refresher):
    # Price List asked once per type over every region: no region filter.
    stubber = stubbed_pricing(refresher)
    stub_prices(stubber, TYPES, [None], {
        ("m7i.large", None): [[product("m7i.large", "us-east-1", "0.1008"),
                               product("m7i.large", "eu-west-2", "0.1176")]],
    })  # fmt: skip
    ec2 = refresher.client("ec2", "us-east-1")
    listed = ec2.describe_regions(AllRegions=True)["Regions"]
    usable = sorted(
        r["RegionName"] for r in listed if r["OptInStatus"] in ("opt-in-not-required", "opted-in")
    )
    closed = {r["RegionName"] for r in listed} - set(usable)
    assert closed, "moto lists some regions as not opted in"

    found = refresher.fetch(AWS, None, print)

    assert sorted(found.regions) == usable
    prices = {(o.offer, o.region): o.price.usd for o in found.offerings if o.price}
    assert prices == {("m7i.large", "us-east-1"): 0.1008, ("m7i.large", "eu-west-2"): 0.1176}


def test_a_named_region_not_opted_in_is_left_out_with_one_warning(refresher):
    stubber = stubbed_pricing(refresher)
    stub_prices(stubber, TYPES, ["eu-west-2"])
    listed = refresher.client("ec2", "us-east-1").describe_regions(AllRegions=True)["Regions"]
    closed = sorted(r["RegionName"] for r in listed if r["OptInStatus"] == "not-opted-in")[0]
    warnings: list[str] = []

    found = refresher.fetch(AWS, ["eu-west-2", closed], warnings.append)

    assert list(found.regions) == ["eu-west-2"]
    assert len(warnings) == 1
    assert closed in warnings[0] and "not opted in" in warnings[0]


def test_a_region_that_answers_opt_in_required_is_left_out_with_one_warning(refresher, monkeypatch):
    stubber = stubbed_pricing(refresher)
    stub_prices(stubber, TYPES, ["eu-west-2", "us-east-1"])

    def refuse(request, **_):
        return ec2_error("OptInRequired", 401, request.url)

    refresher.client("ec2", "eu-west-2").meta.events.register_first(
        "before-send.ec2.DescribeAvailabilityZones", refuse
    )
    warnings: list[str] = []

    found = refresher.fetch(AWS, ["eu-west-2", "us-east-1"], warnings.append)

    assert list(found.regions) == ["us-east-1"]
    assert {o.region for o in found.offerings} == {"us-east-1"}
    assert len(warnings) == 1
    assert "eu-west-2" in warnings[0] and "OptInRequired" in warnings[0]


def test_throttling_is_retried_with_backoff(refresher, monkeypatch):
    delays: list[int] = []

    def no_wait(self, context):
        # The backoff botocore would wait, recorded instead of slept.
        delays.append(context.attempt_number)
        return 0

    monkeypatch.setattr("botocore.retries.standard.ExponentialBackoff.delay_amount", no_wait)
    stubber = stubbed_pricing(refresher)
    stub_prices(stubber, TYPES, ["eu-west-2"])
    sent: list[str] = []

    def throttle_twice(request, **_):
        sent.append(request.url)
        if len(sent) <= 2:
            return ec2_error("RequestLimitExceeded", 503, request.url)
        return None  # moto answers

    refresher.client("ec2", "eu-west-2").meta.events.register_first(
        "before-send.ec2.DescribeSpotPriceHistory", throttle_twice
    )

    found = refresher.fetch(AWS, ["eu-west-2"], print)

    assert len(sent) == 3
    assert delays == [1, 2]
    assert found.offerings and all(o.spot is not None for o in found.offerings)


def test_spot_is_the_latest_price_per_zone_over_pages():
    """Stubbed EC2 (moto answers one constant spot price): paged history, older entries."""
    refresher = AwsRefresher(session=_session())
    ec2 = Stubber(refresher.client("ec2", "us-east-1"))
    pricing = Stubber(refresher.client("pricing", "us-east-1"))
    t4 = "g4dn.xlarge"
    now = dt.datetime.now(dt.timezone.utc)
    ec2.add_response(
        "describe_regions",
        {"Regions": [{"RegionName": "us-east-1", "OptInStatus": "opt-in-not-required"}]},
        {"AllRegions": True},
    )
    ec2.add_response(
        "describe_availability_zones",
        {"AvailabilityZones": [
            {"ZoneName": z, "ZoneType": "availability-zone", "RegionName": "us-east-1"}
            for z in ("us-east-1a", "us-east-1b")
        ] + [{"ZoneName": "us-east-1-bos-1a", "ZoneType": "local-zone"}]},
        {"Filters": [{"Name": "zone-type", "Values": ["availability-zone"]}]},
    )  # fmt: skip
    offers = {"LocationType": "availability-zone",
              "Filters": [{"Name": "instance-type", "Values": TYPES}]}  # fmt: skip
    ec2.add_response(
        "describe_instance_type_offerings",
        {"InstanceTypeOfferings": [{"InstanceType": t4, "LocationType": "availability-zone",
                                    "Location": "us-east-1a"}], "NextToken": "t2"},
        offers,
    )  # fmt: skip
    ec2.add_response(
        "describe_instance_type_offerings",
        {"InstanceTypeOfferings": [
            {"InstanceType": t4, "LocationType": "availability-zone", "Location": zone}
            for zone in ("us-east-1b", "us-east-1-bos-1a")
        ]},
        {**offers, "NextToken": "t2"},
    )  # fmt: skip

    def spot(zone, usd, hours_ago, description="Linux/UNIX"):
        return {"AvailabilityZone": zone, "InstanceType": t4, "ProductDescription": description,
                "SpotPrice": usd, "Timestamp": now - dt.timedelta(hours=hours_ago)}  # fmt: skip

    history = {"InstanceTypes": TYPES, "ProductDescriptions": ["Linux/UNIX"], "StartTime": now}
    ec2.add_response(
        "describe_spot_price_history",
        {"SpotPriceHistory": [spot("us-east-1a", "0.300000", 5), spot("us-east-1b", "0.250000", 1)],
         "NextToken": "s2"},
        history,
    )  # fmt: skip
    ec2.add_response(
        "describe_spot_price_history",
        {"SpotPriceHistory": [spot("us-east-1a", "0.210000", 2),
                              spot("us-east-1b", "0.990000", 1, "Windows")]},
        {**history, "NextToken": "s2"},
    )  # fmt: skip
    stub_prices(pricing, TYPES, ["us-east-1"], {
        (t4, "us-east-1"): [[product(t4, "us-east-1", "0.5260000000")]],
    })  # fmt: skip
    ec2.activate()
    pricing.activate()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("cml_infra.catalog.refresh.aws.datetime", _Frozen(now))
        found = refresher.fetch(AWS, ["us-east-1"], print)

    ec2.assert_no_pending_responses()
    pricing.assert_no_pending_responses()
    assert found.regions == {"us-east-1": ["us-east-1a", "us-east-1b"]}
    got = {(o.zone, o.price.usd, o.spot.usd) for o in found.offerings}  # type: ignore[union-attr]
    assert got == {("us-east-1a", 0.526, 0.21), ("us-east-1b", 0.526, 0.25)}


def test_a_refused_price_list_leaves_on_demand_empty_with_one_warning(refresher):
    stubber = stubbed_pricing(refresher)
    stubber.add_client_error(
        "get_products", service_error_code="AccessDeniedException", http_status_code=400
    )
    warnings: list[str] = []

    found = refresher.fetch(AWS, ["eu-west-2"], warnings.append)

    assert len(warnings) == 1 and "Price List" in warnings[0]
    assert found.offerings and all(o.price is None for o in found.offerings)


def test_an_unknown_region_is_refused_with_the_closest_match(refresher):
    with pytest.raises(UsageError, match=r"--region: unknown aws region 'eu-west-9'.*did you mean"):
        refresher.fetch(AWS, ["eu-west-9"], print)


def test_no_credentials_say_what_to_set(no_aws_credentials):
    with pytest.raises(UsageError, match="aws: no credentials found; set AWS_PROFILE"):
        AwsRefresher().fetch(AWS, None, print)


def test_a_profile_that_does_not_exist_is_no_credentials(no_aws_credentials, monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "nope")
    with pytest.raises(UsageError, match=r"aws: no usable credentials \(.*nope.*\); set AWS_"):
        AwsRefresher().fetch(AWS, None, print)


def _session():
    import boto3

    return boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )


class _Frozen:
    """`datetime` with `now()` fixed, so the StartTime the refresher sends is known."""

    def __init__(self, now: dt.datetime) -> None:
        self._now = now

    def now(self, tz=None):
        return self._now
