"""GCP: where each catalog row is sold, from Compute Engine's aggregated machine type and
accelerator type lists, and at what price, from the Cloud Billing Catalog's SKUs of Compute
Engine (service 6F81-5844-456A).

GCP prices a VM by its parts, per region: vCPU-hours at the series' core SKU plus GiB-hours at
its RAM SKU, plus, for GPUs (attached to n1, or built into a2/g2/a3), GPU-hours at the GPU
model's SKU times the count. So a row's price in a region is `vCPUs * core + GiB * RAM (+ GPUs
* GPU)`, with the vCPUs, memory and built-in GPUs as the machine type listing says, on-demand from
the `OnDemand` SKUs and spot from the `Preemptible` ones (Spot VMs bill at those).

SKUs are matched by description because nothing else says what they price: `category.
resourceGroup` is CPU, RAM, GPU or N1Standard for every series alike, and no field names the
series or the GPU model. A description is taken only in full — `[Spot ][Preemptible ]<series
label> Core|Ram running in <place>` (`N1 Predefined Instance Core running in Americas`) or
`... <GPU label> GPU running in <place>` (`Nvidia Tesla T4 GPU running in Americas`) — so that
the SKUs of custom, sole-tenant, committed, reserved, DWS or virtual-workstation use, which
carry more words, never price a predefined on-demand or spot VM. The unit must be `h` (cores,
GPUs) or `GiBy.h` (RAM) and the currency USD, else the SKU is not used. Where several SKUs of
one kind cover a region the one of the fewest regions wins; a tie at different prices gives no
figure. A row whose series or GPU has no known label, or a part without a SKU, gets no figure
there, with one warn line per row: never a guess.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from cml_infra.catalog.refresh import register
from cml_infra.catalog.refresh.base import Refresher
from cml_infra.errors import CmlInfraError, UsageError

if TYPE_CHECKING:
    from cml_infra.catalog import Catalog, Offer
    from cml_infra.catalog.offerings import Offerings

BILLING_ENDPOINT = "https://cloudbilling.googleapis.com"
COMPUTE_SERVICE = "services/6F81-5844-456A"
SOURCE = "gcp-cloud-billing"
SOURCE_WHAT = (
    "Cloud Billing Catalog API v1, Compute Engine SKUs (6F81-5844-456A): vCPU + RAM (+ GPU) "
    "unit prices times the listed machine type; OnDemand, and Preemptible for spot"
)
SOURCE_URL = "https://cloud.google.com/skus"
HTTP_TIMEOUT = 60
# Backoff for throttling (429 / RESOURCE_EXHAUSTED) and passing server errors: the first wait,
# and how long to keep trying.
INITIAL_BACKOFF, RETRY_DEADLINE = 1.0, 300.0
MARKETS = {"OnDemand": False, "Preemptible": True}  # usageType → spot?
# What the SKU descriptions call each machine series (the part before the type's first '-').
SERIES = {
    "a2": "A2 Instance",
    "a3": "A3 Instance",
    "c2": "Compute optimized",
    "c2d": "C2D AMD Instance",
    "c3": "C3 Instance",
    "e2": "E2 Instance",
    "g2": "G2 Instance",
    "n1": "N1 Predefined Instance",
    "n2": "N2 Instance",
    "n2d": "N2D AMD Instance",
    "t2a": "T2A Arm Instance",
    "t2d": "T2D AMD Instance",
}
# What they call each accelerator type.
GPUS = {
    "nvidia-tesla-t4": "Nvidia Tesla T4",
    "nvidia-tesla-v100": "Nvidia Tesla V100",
    "nvidia-tesla-p100": "Nvidia Tesla P100",
    "nvidia-tesla-p4": "Nvidia Tesla P4",
    "nvidia-tesla-a100": "Nvidia Tesla A100",
    "nvidia-a100-80gb": "Nvidia Tesla A100 80GB",
    "nvidia-l4": "Nvidia L4",
    "nvidia-h100-80gb": "Nvidia H100 80GB",
}
UNITS = {"Core": "h", "Ram": "GiBy.h", "GPU": "h"}
_DESCRIPTION = re.compile(
    r"(?:Spot )?(?:Preemptible )?(?P<label>.+?) (?P<part>Core|Ram|GPU) running in [^()]+"
)


@dataclass(frozen=True)
class _Type:
    """A machine type as the listing shows it: what GCP bills it by."""

    cpus: int
    gib: float
    gpus: tuple[tuple[str, int], ...]


@dataclass
class _Listing:
    """What Compute lists for the project: types by zone, and zones it could not reach."""

    machines: dict[str, dict[str, _Type]] = field(default_factory=dict)
    accelerators: dict[str, dict[str, int]] = field(default_factory=dict)
    zones: set[str] = field(default_factory=set)
    unreachable: dict[str, str] = field(default_factory=dict)  # zone → Compute's message


@register("gcp")
class GcpRefresher(Refresher):
    """Listings through the Compute client the gcp cloud uses, SKUs over REST (as its IAM calls
    go); CML_INFRA_GCP_API_ENDPOINT points both elsewhere, anonymously."""

    def fetch(
        self, catalog: Catalog, regions: Sequence[str] | None, warn: Callable[[str], None]
    ) -> Offerings:
        from cml_infra.catalog.offerings import Offerings

        project = _credentials()
        listing = _listing(project, catalog)
        usable = _usable_regions(listing, regions, project, warn)
        prices = _Prices(_skus())
        now = datetime.now(timezone.utc)
        offerings = _offerings(catalog, listing, usable, prices, now, warn)
        return Offerings(
            cloud="gcp",
            generated_at=now,
            sources={SOURCE: _source()},
            regions={region: sorted(zones) for region, zones in sorted(usable.items())},
            offerings=offerings,
        )


def _source() -> Any:
    from cml_infra.catalog.offerings import Source

    return Source(what=SOURCE_WHAT, url=SOURCE_URL)


def _credentials() -> str:
    """The project whose listings are asked; no credentials (or no project) is bad input."""
    from cml_infra.clouds.gcp import _project

    if not os.environ.get("CML_INFRA_GCP_API_ENDPOINT"):
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        try:
            google.auth.default()
        except DefaultCredentialsError as exc:
            raise UsageError(
                "gcp credentials",
                f"none found ({exc}); run `gcloud auth application-default login`, set "
                "GOOGLE_APPLICATION_CREDENTIALS, or use OIDC (google-github-actions/auth)",
            ) from None
    try:
        return _project()
    except CmlInfraError as exc:
        raise UsageError("gcp credentials", str(exc).removeprefix("gcp: ")) from None


def _retry() -> Any:
    from google.api_core import exceptions, retry

    transient = retry.if_exception_type(
        exceptions.TooManyRequests, exceptions.ServiceUnavailable, exceptions.InternalServerError
    )
    return retry.Retry(
        predicate=transient,
        initial=INITIAL_BACKOFF,
        maximum=30.0,
        multiplier=2.0,
        timeout=RETRY_DEADLINE,
    )


def _listing(project: str, catalog: Catalog) -> _Listing:
    """The catalog's machine types and attachable accelerators in every zone the project
    sees (asked by name: the full lists run to tens of thousands of entries)."""
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError
    from google.cloud import compute_v1
    from requests.exceptions import RequestException

    from cml_infra.clouds.gcp import _client

    machine_names = sorted({row.instance_type for row in catalog.instance_types})
    accelerator_names = sorted(
        {row.accelerator for row in catalog.instance_types if row.accelerator}
    )
    found = _Listing()
    try:
        request = compute_v1.AggregatedListMachineTypesRequest(
            project=project, filter=_names_filter(machine_names)
        )
        pages = _client("MachineTypes").aggregated_list(request=request, retry=_retry())
        for zone, types in _scopes(pages, "machine_types", found):
            for machine in types:
                gpus = tuple(
                    (a.guest_accelerator_type, a.guest_accelerator_count)
                    for a in machine.accelerators
                )
                found.machines.setdefault(zone, {})[machine.name] = _Type(
                    machine.guest_cpus, machine.memory_mb / 1024, gpus
                )
        if accelerator_names:
            request = compute_v1.AggregatedListAcceleratorTypesRequest(
                project=project, filter=_names_filter(accelerator_names)
            )
            pages = _client("AcceleratorTypes").aggregated_list(request=request, retry=_retry())
            for zone, types in _scopes(pages, "accelerator_types", found):
                for accelerator in types:
                    found.accelerators.setdefault(zone, {})[accelerator.name] = (
                        accelerator.maximum_cards_per_instance
                    )
    except (GoogleAPIError, GoogleAuthError, RequestException) as exc:
        raise CmlInfraError(f"gcp: could not list machine and accelerator types: {exc}") from None
    return found


def _names_filter(names: Iterable[str]) -> str:
    """Compute's regular-expression filter (RE2, matching the whole name) for these names."""
    return f'name eq "({"|".join(re.escape(name) for name in names)})"'


def _scopes(pages: Iterable[Any], attribute: str, found: _Listing) -> Iterator[tuple[str, Any]]:
    """(zone, items) of each zone scope of an aggregated list; every zone scope counts as a zone
    the project sees, except one Compute answers UNREACHABLE (a region it may not use)."""
    for scope, scoped in pages:
        if not scope.startswith("zones/"):
            continue
        zone = scope.removeprefix("zones/")
        warning = scoped.warning if "warning" in scoped else None
        if warning is not None and warning.code == "UNREACHABLE":
            found.unreachable[zone] = warning.message or "unreachable"
            continue
        found.zones.add(zone)
        yield zone, getattr(scoped, attribute)


def _region(zone: str) -> str:
    return zone.rpartition("-")[0]


def _usable_regions(
    listing: _Listing, wanted: Sequence[str] | None, project: str, warn: Callable[[str], None]
) -> dict[str, set[str]]:
    """Region → the zones to offer in: every region the project sees (or those `wanted`),
    each one it cannot use left out with one warn line."""
    seen: dict[str, set[str]] = {}
    for zone in listing.zones - set(listing.unreachable):
        seen.setdefault(_region(zone), set()).add(zone)
    blocked: dict[str, list[str]] = {}
    for zone in listing.unreachable:
        blocked.setdefault(_region(zone), []).append(zone)
    for region, zones in sorted(blocked.items()):
        if wanted is not None and region not in wanted:
            continue
        what = "left out" if region not in seen else "those zones left out"
        message = listing.unreachable[sorted(zones)[0]]
        warn(
            f"gcp: region {region}: project {project} cannot list {', '.join(sorted(zones))} "
            f"({message}); {what}"
        )
    if wanted is None:
        return seen
    for region in wanted:
        if region not in seen and region not in blocked:
            warn(
                f"gcp: region {region}: project {project} sees no zones there (it may not use "
                "the region, or there is no such region); left out"
            )
    return {region: seen[region] for region in wanted if region in seen}


def _skus() -> list[dict[str, Any]]:
    """Every SKU of Compute Engine's service, all pages."""
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError
    from requests.exceptions import RequestException

    session, base = _billing_session()
    found: list[dict[str, Any]] = []
    token = ""
    try:
        while True:
            query = {"currencyCode": "USD"}
            if token:
                query["pageToken"] = token
            page = _get(session, f"{base}/v1/{COMPUTE_SERVICE}/skus", query)
            found.extend(page.get("skus", []))
            token = page.get("nextPageToken", "")
            if not token:
                return found
    except (GoogleAPIError, GoogleAuthError, RequestException) as exc:
        raise CmlInfraError(
            f"gcp: could not list Compute Engine SKUs from the Cloud Billing Catalog API "
            f"(is cloudbilling.googleapis.com enabled for the project?): {exc}"
        ) from None


def _billing_session() -> tuple[Any, str]:
    endpoint = os.environ.get("CML_INFRA_GCP_API_ENDPOINT")
    if endpoint:
        import requests

        return requests.Session(), endpoint.rstrip("/")
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    return AuthorizedSession(credentials), BILLING_ENDPOINT  # type: ignore[no-untyped-call]


def _get(session: Any, url: str, query: Mapping[str, str]) -> dict[str, Any]:
    from google.api_core import exceptions

    def once() -> dict[str, Any]:
        response = session.get(url, params=query, timeout=HTTP_TIMEOUT)
        if response.status_code >= 400:
            raise exceptions.from_http_response(response)  # type: ignore[no-untyped-call]
        found: dict[str, Any] = response.json()
        return found

    result: dict[str, Any] = _retry()(once)()
    return result


@dataclass(frozen=True)
class _Rate:
    usd: float
    regions: frozenset[str]
    sku: str


class _Prices:
    """Unit prices by (part, label, spot): each with the regions its SKU covers."""

    def __init__(self, skus: Iterable[Mapping[str, Any]]) -> None:
        self._rates: dict[tuple[str, str, bool], list[_Rate]] = {}
        for sku in skus:
            category = sku.get("category", {})
            spot = MARKETS.get(category.get("usageType", ""))
            found = _DESCRIPTION.fullmatch(sku.get("description", ""))
            if spot is None or found is None or category.get("resourceFamily") != "Compute":
                continue
            part = found["part"]
            if (part == "GPU") != (category.get("resourceGroup") == "GPU"):
                continue
            usd = _unit_price(sku, UNITS[part])
            if usd is not None:
                rate = _Rate(usd, frozenset(sku.get("serviceRegions", [])), sku.get("skuId", ""))
                self._rates.setdefault((part, found["label"], spot), []).append(rate)

    def rate(self, part: str, label: str, spot: bool, region: str) -> float | None:
        """The unit price in `region`: of the SKU covering the fewest regions; None if none
        covers it, or if the narrowest disagree."""
        covering = [r for r in self._rates.get((part, label, spot), []) if region in r.regions]
        if not covering:
            return None
        narrowest = min(len(r.regions) for r in covering)
        prices = {r.usd for r in covering if len(r.regions) == narrowest}
        return prices.pop() if len(prices) == 1 else None


def _unit_price(sku: Mapping[str, Any], unit: str) -> float | None:
    """The USD price per `unit` of the SKU's latest pricing, first tier; None if it is in
    another unit or currency (a SKU not priced the way this module adds up)."""
    infos = sku.get("pricingInfo") or []
    if not infos:
        return None
    expression = infos[-1].get("pricingExpression", {})
    rates = expression.get("tieredRates") or []
    if expression.get("usageUnit") != unit or not rates:
        return None
    first = min(rates, key=lambda tier: float(tier.get("startUsageAmount", 0)))
    price = first.get("unitPrice", {})
    if price.get("currencyCode", "USD") != "USD":
        return None
    return int(price.get("units", "0") or 0) + int(price.get("nanos", 0)) / 1e9


def _sold_in(row: Offer, listing: _Listing, zone: str) -> _Type | None:
    """The machine type of `row` if `zone` sells the row (its attached GPUs too)."""
    machine = listing.machines.get(zone, {}).get(row.instance_type)
    if machine is None:
        return None
    if row.accelerator and listing.accelerators.get(zone, {}).get(row.accelerator, 0) < max(
        row.gpu_count, 1
    ):
        return None
    return machine


def _price(row: Offer, machine: _Type, prices: _Prices, region: str, spot: bool) -> float | None:
    """vCPUs * core + GiB * RAM (+ each GPU model * count); None if any part has no price."""
    label = SERIES.get(row.instance_type.partition("-")[0])
    gpus = list(machine.gpus)
    if row.accelerator:
        gpus.append((row.accelerator, row.gpu_count))
    if label is None or any(kind not in GPUS for kind, _ in gpus) or (row.gpu and not gpus):
        return None
    parts = [("Core", label, machine.cpus), ("Ram", label, machine.gib)]
    parts += [("GPU", GPUS[kind], count) for kind, count in gpus]
    total = 0.0
    for part, name, amount in parts:
        rate = prices.rate(part, name, spot, region)
        if rate is None:
            return None
        total += rate * amount
    return round(total, 6)


def _offerings(
    catalog: Catalog,
    listing: _Listing,
    usable: Mapping[str, set[str]],
    prices: _Prices,
    now: datetime,
    warn: Callable[[str], None],
) -> list[Any]:
    from cml_infra.catalog.offerings import Figure, Offering

    today = now.date()
    found = []
    unpriced: dict[str, list[str]] = {}
    for row in catalog.instance_types:
        for region in sorted(usable):
            figures: dict[bool, Figure | None] = {}
            for zone in sorted(usable[region]):
                machine = _sold_in(row, listing, zone)
                if machine is None:
                    continue
                if not figures:
                    for spot in (False, True):
                        usd = _price(row, machine, prices, region, spot)
                        figures[spot] = (
                            None if usd is None else Figure(usd=usd, source=SOURCE, as_of=today)
                        )
                    if figures[False] is None or figures[True] is None:
                        unpriced.setdefault(row.id, []).append(region)
                found.append(
                    Offering(
                        offer=row.id,
                        region=region,
                        zone=zone,
                        price=figures[False],
                        spot=figures[True],
                    )
                )
    for offer, regions in unpriced.items():
        warn(
            f"gcp: {offer}: no SKU gives its on-demand or spot price in {', '.join(regions)}; "
            "left without that figure there"
        )
    return found
