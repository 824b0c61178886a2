"""Azure: where each VM size is sold from Resource SKUs, at what price from the Retail Prices API.

- Resource SKUs (`GET /subscriptions/{id}/providers/Microsoft.Compute/skus`, api-version
  2021-07-01) lists, per VM size, its locations and zones with the subscription's restrictions:
  a location or zone restricted for the subscription (`NotAvailableForSubscription`, or a
  `QuotaId` the offer does not allow) is left out, with one warning per region. No SDK holds
  this operation but azure-mgmt-compute, a large package for one GET: it goes through
  azure-core's ARM pipeline (bearer token, retries with Retry-After, the same transport hook
  the cloud has), with the cloud's credential and subscription.
- The public Retail Prices API (no credentials) gives Linux pay-as-you-go prices per region:
  the meters whose skuName ends in " Spot" are the spot prices, " Low Priority" (Batch) and the
  Windows products are not ours. Prices are regional: every zone of a region gets its figure.
  Throttling (429, with Retry-After) is retried by urllib3. CML_INFRA_AZURE_PRICES_ENDPOINT
  replaces https://prices.azure.com (a mirror, or a test's fake).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from cml_infra.catalog.offerings import Figure, Offering, Offerings, Source
from cml_infra.catalog.refresh import register
from cml_infra.catalog.refresh.base import Refresher
from cml_infra.errors import CmlInfraError, UsageError

if TYPE_CHECKING:
    import requests

    from cml_infra.catalog import Catalog

ARM = "https://management.azure.com"
ARM_SCOPE = f"{ARM}/.default"
SKUS_API_VERSION = "2021-07-01"
PRICES = "https://prices.azure.com"
PRICES_ENDPOINT_ENV = "CML_INFRA_AZURE_PRICES_ENDPOINT"
PRICES_API_VERSION = "2023-01-01-preview"
SKUS_SOURCE = "azure-resource-skus"
PRICES_SOURCE = "azure-retail-prices"
# Pages are followed while the API gives a next link; a link that repeats, or more pages than
# any real answer has (a size has a few hundred meters), means a broken server, not more data.
MAX_PAGES = 200
_CREDENTIAL_HINT = (
    "run `az login`, set AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET, or use OIDC "
    "(azure/login)"
)


@dataclass
class _Location:
    """What the listing says of one size in one location: its zones, those restricted for the
    subscription, and whether the whole location is (with the reason codes)."""

    zones: set[str] = field(default_factory=set)
    restricted_zones: set[str] = field(default_factory=set)
    restricted: bool = False
    reasons: set[str] = field(default_factory=set)


@register("azure")
class AzureRefresher(Refresher):
    def __init__(
        self,
        *,
        transport: Any = None,
        credential: Any = None,
        session: requests.Session | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        # An azure-core HttpTransport for ARM and a requests Session for the prices (tests'
        # fakes); the credential defaults to the cloud's DefaultAzureCredential.
        self.transport = transport
        self.credential = credential
        self.session = session
        self.now = now or (lambda: datetime.now(timezone.utc))

    def fetch(
        self, catalog: Catalog, regions: Sequence[str] | None, warn: Callable[[str], None]
    ) -> Offerings:
        subscription = _subscription()
        credential = self.credential if self.credential is not None else _default_credential()
        _check_credential(credential)
        now = self.now()
        today = now.date()
        wanted = None if regions is None else {r.lower() for r in regions}

        rows: dict[str, list[str]] = {}
        for offer in catalog.instance_types:
            if offer.accelerator is None:
                rows.setdefault(offer.instance_type.lower(), []).append(offer.id)

        listing, zones_of = self._listing(subscription, credential, set(rows))
        offerings: list[Offering] = []
        prices = self._prices(sorted({o.instance_type for o in catalog.instance_types}), now)
        warnings: dict[str, list[str]] = {}
        sold_regions: set[str] = set()
        for (size, region), where in sorted(listing.items()):
            if wanted is not None and region not in wanted:
                continue
            if where.restricted:
                warnings.setdefault(region, []).append(
                    f"{_display(size, catalog)} ({', '.join(sorted(where.reasons))})"
                )
                continue
            if where.restricted_zones:
                shut = ", ".join(sorted(where.restricted_zones & where.zones))
                warnings.setdefault(region, []).append(
                    f"{_display(size, catalog)} in zone(s) {shut} "
                    f"({', '.join(sorted(where.reasons))})"
                )
            sold_regions.add(region)
            # Zonal restrictions leave the region itself usable: a VM without a zone still
            # goes there, so a size with every zone shut is offered for the region as a whole.
            open_zones: list[str | None] = [*sorted(where.zones - where.restricted_zones)]
            price, spot = prices.get((size, region), (None, None))
            for offer_id in rows[size]:
                for zone in open_zones or [None]:
                    offerings.append(
                        Offering(
                            offer=offer_id,
                            region=region,
                            zone=zone,
                            price=None if price is None else Figure(**price, as_of=today),
                            spot=None if spot is None else Figure(**spot, as_of=today),
                        )
                    )
        for region in sorted(warnings):
            warn(
                f"azure: {region}: not available to this subscription, left out: "
                + "; ".join(warnings[region])
            )
        for region in sorted((wanted or set()) - {r for _, r in listing}):
            warn(f"azure: {region}: Resource SKUs lists none of the catalog's sizes there")

        listed = {r: z for r, z in zones_of.items() if wanted is None or r in wanted}
        offerings.sort(key=lambda o: (o.offer, o.region, o.zone or ""))
        return Offerings(
            cloud="azure",
            generated_at=now,
            sources={
                SKUS_SOURCE: Source(
                    what=f"Azure Resource SKUs (Microsoft.Compute/skus, api-version "
                    f"{SKUS_API_VERSION}) of subscription {subscription}, with its restrictions",
                    url="https://learn.microsoft.com/rest/api/compute/resource-skus/list",
                ),
                PRICES_SOURCE: Source(
                    what=f"Azure Retail Prices API (api-version {PRICES_API_VERSION}): Linux "
                    "pay-as-you-go, USD per hour; spot from the ' Spot' meters",
                    url=f"{PRICES}/api/retail/prices",
                ),
            },
            regions={r: sorted(listed[r]) for r in sorted(listed) if r in sold_regions},
            offerings=offerings,
        )

    # -----------------------------------------------------------------------------------------
    # Resource SKUs.

    def _listing(
        self, subscription: str, credential: Any, sizes: set[str]
    ) -> tuple[dict[tuple[str, str], _Location], dict[str, set[str]]]:
        """(size, location) → _Location for `sizes` (lowercase), and every location's zones as
        the listing names them for any VM size the subscription may use there."""
        listing: dict[tuple[str, str], _Location] = {}
        zones_of: dict[str, set[str]] = {}
        path = f"/subscriptions/{quote(subscription, safe='')}/providers/Microsoft.Compute/skus"
        for sku in self._arm_pages(f"{ARM}{path}?api-version={SKUS_API_VERSION}", credential):
            if str(sku.get("resourceType", "")).lower() != "virtualmachines":
                continue
            size = str(sku.get("name", "")).lower()
            infos = sku.get("locationInfo") or [
                {"location": loc} for loc in sku.get("locations", [])
            ]
            for info in infos:
                region = str(info.get("location", "")).lower()
                if not region:
                    continue
                zones = {str(z) for z in info.get("zones") or ()}
                where = _Location(zones=zones)
                for restriction in sku.get("restrictions") or ():
                    _restrict(where, region, restriction)
                if not where.restricted:
                    zones_of.setdefault(region, set()).update(zones - where.restricted_zones)
                if size in sizes:
                    found = listing.setdefault((size, region), _Location())
                    found.zones |= where.zones
                    found.restricted_zones |= where.restricted_zones
                    found.restricted |= where.restricted
                    found.reasons |= where.reasons
        return listing, zones_of

    def _arm_pages(self, url: str, credential: Any) -> Iterator[dict[str, Any]]:
        """The `value` items of a listing and of every `nextLink` page after it."""
        from azure.core.exceptions import AzureError, ClientAuthenticationError
        from azure.core.pipeline.policies import RetryPolicy, UserAgentPolicy
        from azure.core.rest import HttpRequest
        from azure.mgmt.core import ARMPipelineClient
        from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy

        policies = [
            UserAgentPolicy(sdk_moniker="cml-infra"),
            # Retries 408/429/5xx, honouring Retry-After, sleeping through the transport.
            RetryPolicy(),
            ARMChallengeAuthenticationPolicy(credential, ARM_SCOPE),
        ]
        options = {"transport": self.transport} if self.transport is not None else {}
        seen: set[str] = set()
        client: Any = ARMPipelineClient(base_url=ARM, policies=policies, **options)
        with client:
            next_url: str | None = url
            while next_url:
                if next_url in seen or len(seen) >= MAX_PAGES:
                    raise CmlInfraError(f"azure: Resource SKUs: paging does not end ({next_url})")
                seen.add(next_url)
                try:
                    response = client.send_request(HttpRequest("GET", next_url))
                except ClientAuthenticationError as exc:
                    raise UsageError(
                        "azure credentials", f"{_first_line(exc)}; {_CREDENTIAL_HINT}"
                    ) from None
                except AzureError as exc:
                    raise CmlInfraError(f"azure: Resource SKUs: {_first_line(exc)}") from None
                if response.status_code != 200:
                    raise CmlInfraError(
                        f"azure: Resource SKUs: HTTP {response.status_code}: {_arm_error(response)}"
                    )
                body = response.json()
                yield from body.get("value") or ()
                next_url = body.get("nextLink")

    # -----------------------------------------------------------------------------------------
    # Retail prices.

    def _prices(
        self, sizes: Sequence[str], now: datetime
    ) -> dict[tuple[str, str], tuple[dict[str, Any] | None, dict[str, Any] | None]]:
        """(size lowercase, region) → (on-demand, spot) figure fields, from the meters in
        effect `now`: the latest effectiveStartDate wins (a primary meter over another)."""
        import requests

        session = self.session or _session()
        base = os.environ.get(PRICES_ENDPOINT_ENV, PRICES).rstrip("/")
        best: dict[tuple[str, str, bool], tuple[str, bool, float]] = {}
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        for size in sizes:
            filter_ = (
                f"serviceName eq 'Virtual Machines' and armSkuName eq '{size}' "
                "and priceType eq 'Consumption'"
            )
            url: str | None = f"{base}/api/retail/prices"
            params: dict[str, str] | None = {"api-version": PRICES_API_VERSION, "$filter": filter_}
            seen: set[str] = set()
            while url:
                if url in seen or len(seen) >= MAX_PAGES:
                    raise CmlInfraError(f"azure: Retail Prices: paging does not end ({url})")
                seen.add(url)
                try:
                    response = session.get(url, params=params, timeout=60)
                    response.raise_for_status()
                    page = response.json()
                except (requests.RequestException, ValueError) as exc:
                    raise CmlInfraError(f"azure: Retail Prices ({size}): {exc}") from None
                for item in page.get("Items") or ():
                    kept = _meter(item, size)
                    if kept is None:
                        continue
                    region, spot, usd = kept
                    started = str(item.get("effectiveStartDate", ""))
                    if started > stamp:
                        continue  # announced, not yet in effect
                    rank = (started, bool(item.get("isPrimaryMeterRegion")), usd)
                    key = (size.lower(), region, spot)
                    if key not in best or rank[:2] > best[key][:2]:
                        best[key] = rank
                url, params = page.get("NextPageLink") or None, None
        found: dict[tuple[str, str], tuple[dict[str, Any] | None, dict[str, Any] | None]] = {}
        for (size, region, spot), (_, _, usd) in best.items():
            price, spot_price = found.get((size, region), (None, None))
            figure = {"usd": usd, "source": PRICES_SOURCE}
            found[(size, region)] = (price, figure) if spot else (figure, spot_price)
        return found


def _meter(item: Mapping[str, Any], size: str) -> tuple[str, bool, float] | None:
    """(region, spot, USD per hour) of a Linux pay-as-you-go meter of `size`; None for any
    other (Windows, Low Priority, another unit, currency or type)."""
    sku_name = str(item.get("skuName", ""))
    if (
        str(item.get("armSkuName", "")).lower() != size.lower()
        or item.get("type") != "Consumption"
        or item.get("unitOfMeasure") != "1 Hour"
        or item.get("currencyCode", "USD") != "USD"
        or "windows" in str(item.get("productName", "")).lower()
        or sku_name.endswith(" Low Priority")
    ):
        return None
    region = str(item.get("armRegionName", "")).lower()
    usd = item.get("retailPrice")
    if not region or not isinstance(usd, (int, float)) or usd <= 0:
        return None
    return region, sku_name.endswith(" Spot"), float(usd)


def _restrict(where: _Location, region: str, restriction: Mapping[str, Any]) -> None:
    """Apply one `restrictions` entry of a SKU to what it says of `region`."""
    info = restriction.get("restrictionInfo") or {}
    kind = restriction.get("type")
    reason = str(restriction.get("reasonCode") or "restricted")
    if kind == "Location":
        places = {
            str(v).lower() for v in [*restriction.get("values", ()), *info.get("locations", ())]
        }
        if region in places:
            where.restricted = True
            where.reasons.add(reason)
    elif kind == "Zone":
        places = {
            str(v).lower() for v in [*restriction.get("values", ()), *info.get("locations", ())]
        }
        if region in places:
            shut = {str(z) for z in info.get("zones", ())}
            where.restricted_zones |= shut
            if shut & where.zones:
                where.reasons.add(reason)


def _display(size: str, catalog: Catalog) -> str:
    """The size as the catalog spells it (the listing is matched case-insensitively)."""
    for offer in catalog.instance_types:
        if offer.instance_type.lower() == size:
            return offer.instance_type
    return size


def _subscription() -> str:
    for variable in ("ARM_SUBSCRIPTION_ID", "AZURE_SUBSCRIPTION_ID"):
        if os.environ.get(variable):
            return os.environ[variable]
    raise UsageError(
        "ARM_SUBSCRIPTION_ID",
        "not set: set it (or AZURE_SUBSCRIPTION_ID) to the subscription whose sizes and "
        "restrictions to list",
    )


def _default_credential() -> Any:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def _check_credential(credential: Any) -> None:
    """A token now, so that missing credentials stop the refresh before any request."""
    try:
        credential.get_token(ARM_SCOPE)
    except Exception as exc:  # azure-identity raises several unrelated classes
        raise UsageError(
            "azure credentials",
            f"none usable ({type(exc).__name__}: {_first_line(exc)}); {_CREDENTIAL_HINT}",
        ) from None


def _session() -> requests.Session:
    """A Session that retries throttling and transient errors, honouring Retry-After."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = Retry(
        total=6,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=frozenset({"GET"}),
        backoff_factor=1.0,
        respect_retry_after_header=True,
    )
    session = requests.Session()
    session.mount("https://", HTTPAdapter(max_retries=retry))
    session.mount("http://", HTTPAdapter(max_retries=retry))
    return session


def _arm_error(response: Any) -> str:
    try:
        error = response.json().get("error") or {}
        return f"{error.get('code')}: {error.get('message')}"
    except (ValueError, AttributeError):
        return str(response.text())[:200]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
