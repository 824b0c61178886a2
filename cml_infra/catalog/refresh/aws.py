"""AWS: where each catalog row is sold and at what price, asked with the user's credentials.

- `DescribeRegions`: the regions the account can use (opted in, or needing no opt-in);
- `DescribeAvailabilityZones` and `DescribeInstanceTypeOfferings` (location type
  availability-zone), per region: its zones, and which of them sell each of our types;
- `DescribeSpotPriceHistory` (Linux/UNIX, StartTime now), per region: the spot price in effect
  now, per zone and type (the latest entry of each);
- the Price List API (`pricing` in us-east-1, `GetProducts`), per type: the on-demand Linux
  price of shared tenancy with no pre-installed software, per region.

Every call pages. Throttling (`RequestLimitExceeded`, HTTP 429) is retried by botocore's
standard retry mode: exponential backoff with jitter, the same rules as every AWS SDK.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any

from cml_infra.catalog.offerings import Figure, Offering, Offerings, Source
from cml_infra.catalog.refresh import register
from cml_infra.catalog.refresh.base import Refresher
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.spec import choices

if TYPE_CHECKING:
    from cml_infra.catalog import Catalog

PRICE_LIST = "aws-price-list"
SPOT_HISTORY = "aws-spot-price-history"
SOURCES = {
    PRICE_LIST: Source(
        what="AWS Price List API (GetProducts): on-demand, Linux, shared tenancy",
        url="https://aws.amazon.com/ec2/pricing/on-demand/",
    ),
    SPOT_HISTORY: Source(
        what="EC2 DescribeSpotPriceHistory: Linux/UNIX, the latest price per zone",
        url="https://aws.amazon.com/ec2/spot/pricing/",
    ),
}
CREDENTIALS_HINT = (
    "set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use OIDC "
    "(aws-actions/configure-aws-credentials)"
)
# The Price List API answers in these regions only; us-east-1 lists every region's prices.
PRICING_REGION = "us-east-1"
# Where DescribeRegions is asked when no region is configured: every account can use it.
HOME_REGION = "us-east-1"
# A region the account cannot use answers with one of these: it is left out, with a warning.
UNUSABLE = frozenset({"UnauthorizedOperation", "OptInRequired", "AuthFailure", "Blocked"})
USABLE_OPT_IN = frozenset({"opt-in-not-required", "opted-in"})
# Spot listings of Linux: plain, and the label of the EC2-Classic era some answers still use.
LINUX_SPOT = frozenset({"Linux/UNIX", "Linux/UNIX (Amazon VPC)"})
# Regions asked at once: each is a handful of calls that mostly wait on the network.
WORKERS = 8
# Botocore's standard mode retries throttling with backoff; adaptive mode's extra client-side
# rate limiter earns nothing here, where each client makes a few calls.
RETRIES = {"mode": "standard", "max_attempts": 10}


@register("aws")
class AwsRefresher(Refresher):
    def __init__(self, session: Any = None) -> None:
        self._session = session
        # One client per (service, region), made on the calling thread before the worker
        # threads use it (a boto3 session is not thread-safe, its clients are); a test stubs
        # the very client the refresher will use.
        self._clients: dict[tuple[str, str], Any] = {}

    @property
    def session(self) -> Any:
        if self._session is None:
            import boto3

            self._session = boto3.Session()
        return self._session

    def client(self, service: str, region: str) -> Any:
        key = (service, region)
        if key not in self._clients:
            from botocore.config import Config

            self._clients[key] = self.session.client(
                service, region_name=region, config=Config(retries=dict(RETRIES))
            )
        return self._clients[key]

    def fetch(
        self, catalog: Catalog, regions: Sequence[str] | None, warn: Callable[[str], None]
    ) -> Offerings:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            credentials = self.session.get_credentials()
        except BotoCoreError as exc:  # a profile that does not exist, an expired SSO login
            raise UsageError("aws", f"no usable credentials ({exc}); {CREDENTIALS_HINT}") from None
        if credentials is None:
            raise UsageError("aws", f"no credentials found; {CREDENTIALS_HINT}")
        now = datetime.now(timezone.utc)
        today = now.date()
        types = sorted({row.instance_type for row in catalog.instance_types})
        try:
            wanted = self._regions(regions, warn)
            for region in wanted:
                self.client("ec2", region)
            self.client("pricing", PRICING_REGION)
            with ThreadPoolExecutor(max_workers=WORKERS) as pool:
                # Priced in the regions asked that the account can use, or all at once.
                named = None if regions is None else wanted
                on_demand = pool.submit(self._on_demand, types, named, today, warn)
                found = list(
                    pool.map(lambda region: self._region(region, types, now, today), wanted)
                )
                prices = on_demand.result()
        except NoCredentialsError:
            raise UsageError("aws", f"no credentials found; {CREDENTIALS_HINT}") from None
        except ClientError as exc:
            raise CmlInfraError(f"aws: {_describe(exc)}") from None
        except BotoCoreError as exc:
            raise CmlInfraError(f"aws: {exc}") from None
        zones: dict[str, list[str]] = {}
        offerings: list[Offering] = []
        rows = {offer.id: offer.instance_type for offer in catalog.instance_types}
        # Warnings in region order, whichever thread finished first.
        for region, result in zip(wanted, found, strict=True):
            if isinstance(result, str):
                warn(result)
                continue
            zones[region] = result.zones
            for offer, instance_type in rows.items():
                for zone in result.sold.get(instance_type, []):
                    offerings.append(
                        Offering(
                            offer=offer,
                            region=region,
                            zone=zone,
                            price=prices.get((instance_type, region)),
                            spot=result.spot.get((instance_type, zone)),
                        )
                    )
        order = {offer: index for index, offer in enumerate(rows)}
        offerings.sort(key=lambda o: (order[o.offer], o.region, o.zone or ""))
        return Offerings(
            cloud="aws", generated_at=now, sources=dict(SOURCES), regions=zones,
            offerings=offerings,
        )  # fmt: skip

    def _regions(self, asked: Sequence[str] | None, warn: Callable[[str], None]) -> list[str]:
        """The regions to ask: those named (each checked against DescribeRegions), else every
        one the account can use."""
        ec2 = self.client("ec2", self.session.region_name or HOME_REGION)
        listed = {
            region["RegionName"]: region.get("OptInStatus", "opt-in-not-required")
            for region in ec2.describe_regions(AllRegions=True)["Regions"]
        }
        if asked is None:
            return sorted(name for name, status in listed.items() if status in USABLE_OPT_IN)
        wanted = []
        for name in dict.fromkeys(asked):
            if name not in listed:
                raise UsageError(
                    "--region", f"unknown aws region {name!r}; " + choices(name, listed)
                )
            if listed[name] in USABLE_OPT_IN:
                wanted.append(name)
            else:
                warn(f"aws {name}: left out: the account has not opted in to it ({listed[name]})")
        return wanted

    def _region(self, region: str, types: list[str], now: datetime, today: date) -> Any:
        """`_Region`, or the warning line of a region the account cannot use."""
        from botocore.exceptions import ClientError

        ec2 = self.client("ec2", region)
        try:
            zones = _zones(ec2)
            sold: dict[str, list[str]] = {}
            for page in ec2.get_paginator("describe_instance_type_offerings").paginate(
                LocationType="availability-zone",
                Filters=[{"Name": "instance-type", "Values": types}],
            ):
                for item in page["InstanceTypeOfferings"]:
                    # Local and Wavelength zones are not the region's zones: left out.
                    if item["Location"] in zones:
                        sold.setdefault(item["InstanceType"], []).append(item["Location"])
            latest: dict[tuple[str, str], tuple[datetime, str]] = {}
            for page in ec2.get_paginator("describe_spot_price_history").paginate(
                InstanceTypes=types, ProductDescriptions=["Linux/UNIX"], StartTime=now
            ):
                for item in page["SpotPriceHistory"]:
                    if item.get("ProductDescription") not in LINUX_SPOT:
                        continue
                    key = (item["InstanceType"], item["AvailabilityZone"])
                    seen = latest.get(key)
                    if seen is None or item["Timestamp"] > seen[0]:
                        latest[key] = (item["Timestamp"], item["SpotPrice"])
        except ClientError as exc:
            if _code(exc) in UNUSABLE:
                return f"aws {region}: left out: the account cannot use it ({_describe(exc)})"
            raise
        spot = {
            key: Figure(usd=usd, source=SPOT_HISTORY, as_of=today)
            for key, (_, text) in latest.items()
            if (usd := float(text)) > 0
        }
        return _Region(zones=zones, sold={t: sorted(z) for t, z in sold.items()}, spot=spot)

    def _on_demand(
        self, types: list[str], regions: Sequence[str] | None, today: date,
        warn: Callable[[str], None],
    ) -> dict[tuple[str, str], Figure]:  # fmt: skip
        """(type, region) → the on-demand figure. Per type (and per region when regions are
        named: fewer products to page through); a refused Price List leaves every row without
        an on-demand figure, with one warning, rather than failing the spot prices too."""
        from botocore.exceptions import ClientError

        pricing = self.client("pricing", PRICING_REGION)
        found: dict[tuple[str, str], Figure] = {}
        try:
            for instance_type in types:
                for region in [None] if regions is None else regions:
                    for product in _products(pricing, instance_type, region):
                        usd = _hourly_usd(product)
                        code = product.get("product", {}).get("attributes", {}).get("regionCode")
                        if usd and code and (region is None or code == region):
                            found[(instance_type, code)] = Figure(
                                usd=usd, source=PRICE_LIST, as_of=today
                            )
        except ClientError as exc:
            if _code(exc) not in {"AccessDeniedException", *UNUSABLE}:
                raise
            warn(f"aws: no on-demand prices: the Price List API refused ({_describe(exc)})")
            return {}
        return found


class _Region:
    """What one region answered: its zones, the zones selling each type, and the spot figures
    by (type, zone)."""

    def __init__(
        self, zones: list[str], sold: dict[str, list[str]], spot: dict[tuple[str, str], Figure]
    ) -> None:
        self.zones = zones
        self.sold = sold
        self.spot = spot


def _zones(ec2: Any) -> list[str]:
    """The region's availability zones (not its local or Wavelength zones)."""
    reply = ec2.describe_availability_zones(
        Filters=[{"Name": "zone-type", "Values": ["availability-zone"]}]
    )
    return sorted(
        zone["ZoneName"]
        for zone in reply["AvailabilityZones"]
        if zone.get("ZoneType", "availability-zone") == "availability-zone"
    )


def _products(pricing: Any, instance_type: str, region: str | None) -> Iterable[dict[str, Any]]:
    """The Price List's product documents (each a JSON string in the answer) of one type."""
    attributes = {
        "instanceType": instance_type,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
    }
    if region is not None:
        attributes["regionCode"] = region
    filters = [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in attributes.items()]
    for page in pricing.get_paginator("get_products").paginate(
        ServiceCode="AmazonEC2", Filters=filters, FormatVersion="aws_v1"
    ):
        for text in page["PriceList"]:
            product = json.loads(text)
            attributes_found = product.get("product", {}).get("attributes", {})
            # Capacity Blocks and Local Zones list the same type at other prices.
            if attributes_found.get("marketoption", "OnDemand") != "OnDemand":
                continue
            if attributes_found.get("locationType", "AWS Region") != "AWS Region":
                continue
            yield product


def _hourly_usd(product: dict[str, Any]) -> float | None:
    """The USD per hour of a product's on-demand term; None if it names no positive one."""
    for term in product.get("terms", {}).get("OnDemand", {}).values():
        for dimension in term.get("priceDimensions", {}).values():
            if dimension.get("unit") != "Hrs":
                continue
            try:
                usd = float(dimension["pricePerUnit"]["USD"])
            except (KeyError, TypeError, ValueError):
                continue
            if usd > 0:
                return usd
    return None


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _describe(exc: Any) -> str:
    error = exc.response.get("Error", {})
    return f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
