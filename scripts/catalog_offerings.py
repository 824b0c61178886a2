"""Write cml_infra/catalog/data/<cloud>-offerings.json from a SkyPilot catalog snapshot.

SkyPilot publishes its catalog (github.com/skypilot-org/skypilot-catalog) as CSVs it builds from
the providers' own APIs: AWS from the Price List API (on-demand) and DescribeSpotPriceHistory
(spot, per zone); GCP from the Cloud Billing Catalog (on-demand and spot SKUs, per zone); Azure
from the Retail Prices API (per region). This keeps the rows of our catalog yaml (matched by
native type) and writes, per region and zone the CSV lists, their prices with the snapshot as
the source. Output is stable: the same CSV gives the same bytes (tests/unit/catalog checks the
committed files against the recorded extract in tests/data/catalog/).

    python scripts/catalog_offerings.py aws path/to/vms.csv --commit SHA --as-of YYYY-MM-DD

`--as-of` is the snapshot's commit date (`git log -1 --format=%cs -- catalogs/v8/aws/vms.csv`
in a clone): the day SkyPilot observed the prices, not the day they were read.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cml_infra.catalog import Catalog, Offer, load  # noqa: E402
from cml_infra.catalog.offerings import Figure, Offering, Offerings, Source  # noqa: E402

REPOSITORY = "https://github.com/skypilot-org/skypilot-catalog"
# What SkyPilot's fetchers read for each cloud (its catalog/data_fetchers/ scripts).
APIS = {
    "aws": "AWS Price List API (on-demand) and EC2 DescribeSpotPriceHistory (spot)",
    "gcp": "Google Cloud Billing Catalog API (on-demand and spot SKUs)",
    "azure": "Azure Retail Prices API (pay-as-you-go and spot)",
}
# GCP n1 rows attach an accelerator: its name in our yaml → SkyPilot's AcceleratorName.
GCP_ACCELERATORS = {
    "nvidia-tesla-t4": "T4",
    "nvidia-tesla-v100": "V100",
    "nvidia-tesla-p100": "P100",
    "nvidia-tesla-p4": "P4",
    "nvidia-l4": "L4",
}
# GCP machine types with built-in GPUs are priced as the machine (its vCPUs and memory) plus its
# GPUs, in separate rows (InstanceType empty): our GPU name → SkyPilot's AcceleratorName.
GCP_GPUS = {"a100": "A100", "a100-80gb": "A100-80GB", "h100": "H100", "l4": "L4", "t4": "T4"}


@dataclass(frozen=True)
class Snapshot:
    """Which file of which commit; `as_of`: the day its prices stand for; `note`: anything a
    reader must know about that date."""

    path: str
    commit: str
    as_of: date
    note: str = ""


# The snapshots the committed files were generated from. The commit dates were not available
# where these were read (a file reader without git history), so `as_of` is the day they were
# read: every figure is at least as old as its date says.
SNAPSHOTS = {
    "aws": Snapshot(
        "catalogs/v8/aws/vms.csv",
        "00148f2af3672e2229b4f7bf8157d5a3f36e3c35",
        date(2026, 12, 2),
        "read 2026-12-02 without its commit date: the prices are at least that old",
    ),
}


def source_id(cloud: str, snapshot: Snapshot) -> str:
    return f"skypilot-{snapshot.path.split('/')[1]}-{cloud}-{snapshot.commit[:12]}"


def source_of(cloud: str, snapshot: Snapshot) -> Source:
    spot = {
        "aws": "; spot: the lowest over the region's zones (zone ids differ per account)",
        "gcp": "",
        "azure": "",
    }[cloud]
    note = f"; {snapshot.note}" if snapshot.note else ""
    return Source(
        what=f"SkyPilot catalog {snapshot.path} at {snapshot.commit[:12]}, from the "
        f"{APIS[cloud]}{spot}{note}",
        url=f"{REPOSITORY}/blob/{snapshot.commit}/{snapshot.path}",
    )


def _usd(text: str | None) -> float | None:
    """A price cell: empty or zero is no price (SkyPilot writes 0.0 for unpriced types)."""
    if not text:
        return None
    value = float(text)
    return value if value > 0 else None


def _rows(csv_text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(csv_text)))


def _keep(rows: Iterable[dict[str, str]], catalog: Catalog) -> list[dict[str, str]]:
    """The CSV rows our yaml needs: its native types, and on GCP the attached accelerators."""
    types = {offer.instance_type for offer in catalog.instance_types}
    accelerators = {_gcp_gpu(offer) for offer in catalog.instance_types} - {None}
    return [
        row
        for row in rows
        if row["InstanceType"] in types
        or (not row["InstanceType"] and row.get("AcceleratorName") in accelerators)
    ]


def _gcp_gpu(offer: Offer) -> str | None:
    """SkyPilot's name of the GPUs a GCP row pays for on top of its machine."""
    if offer.accelerator is not None:
        return GCP_ACCELERATORS.get(offer.accelerator)
    return GCP_GPUS.get(offer.gpu) if offer.gpu is not None else None


def generate(cloud: str, csv_text: str, snapshot: Snapshot, catalog: Catalog) -> Offerings:
    """The offerings of `catalog`'s rows found in the CSV, each figure dated `snapshot.as_of`."""
    sid = source_id(cloud, snapshot)
    rows = _keep(_rows(csv_text), catalog)
    # (type, region, zone) → (on-demand, spot); accelerators (GCP) by (name, count, region, zone).
    machines: dict[tuple[str, str, str | None], tuple[float | None, float | None]] = {}
    gpus: dict[tuple[str, int, str, str], tuple[float | None, float | None]] = {}
    for row in rows:
        zone = row.get("AvailabilityZone") or None
        if cloud == "aws":
            zone = None  # zone ids (use1-az1), not the names an account launches in
        prices = (_usd(row["Price"]), _usd(row["SpotPrice"]))
        if row["InstanceType"]:
            key = (row["InstanceType"], row["Region"], zone)
            machines[key] = _lowest(machines.get(key), prices)
        elif zone is not None:
            count = int(float(row["AcceleratorCount"]))
            gpus[(row["AcceleratorName"], count, row["Region"], zone)] = prices
    offerings = []
    regions: dict[str, set[str]] = {}
    for offer in catalog.instance_types:
        for (instance_type, region, zone), (price, spot) in machines.items():
            if instance_type != offer.instance_type:
                continue
            if cloud == "gcp" and offer.gpu is not None:
                # The GPUs are priced apart (attached or built in): no GPU row, no full price.
                name = _gcp_gpu(offer)
                attached = gpus.get((name or "", offer.gpu_count, region, zone or ""))
                if attached is None:
                    continue
                price = _sum(price, attached[0])
                spot = _sum(spot, attached[1])
            if price is None and spot is None:
                continue
            regions.setdefault(region, set())
            if zone is not None:
                regions[region].add(zone)
            offerings.append(
                Offering(
                    offer=offer.id,
                    region=region,
                    zone=zone,
                    price=_figure(price, sid, snapshot.as_of),
                    spot=_figure(spot, sid, snapshot.as_of),
                )
            )
    offerings.sort(key=lambda o: (o.offer, o.region, o.zone or ""))
    return Offerings(
        cloud=cloud,
        generated_at=datetime.combine(snapshot.as_of, datetime.min.time(), timezone.utc),
        sources={sid: source_of(cloud, snapshot)},
        regions={region: sorted(zones) for region, zones in sorted(regions.items())},
        offerings=offerings,
    )


def _lowest(
    seen: tuple[float | None, float | None] | None, new: tuple[float | None, float | None]
) -> tuple[float | None, float | None]:
    if seen is None:
        return new
    return (_min(seen[0], new[0]), _min(seen[1], new[1]))


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _sum(machine: float | None, accelerators: float | None) -> float | None:
    if machine is None or accelerators is None:
        return None
    return round(machine + accelerators, 6)


def _figure(usd: float | None, sid: str, as_of: date) -> Figure | None:
    return None if usd is None else Figure(usd=usd, source=sid, as_of=as_of)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cloud", choices=sorted(APIS))
    parser.add_argument("csv", type=Path, help="the snapshot's vms.csv (or an extract of it)")
    parser.add_argument("--commit", help="the snapshot's commit (default: the recorded one)")
    parser.add_argument("--as-of", type=date.fromisoformat, help="the commit's date")
    parser.add_argument("--path", help="the CSV's path in the repository")
    parser.add_argument("-o", "--output", type=Path, help="default: the packaged file")
    args = parser.parse_args(argv)
    known = SNAPSHOTS.get(args.cloud)
    if known is None and not (args.commit and args.as_of and args.path):
        parser.error(f"no recorded snapshot for {args.cloud}: give --commit, --as-of, --path")
    snapshot = Snapshot(
        args.path or known.path,  # type: ignore[union-attr]
        args.commit or known.commit,  # type: ignore[union-attr]
        args.as_of or known.as_of,  # type: ignore[union-attr]
        "" if args.as_of else (known.note if known else ""),
    )
    found = generate(args.cloud, args.csv.read_text("utf-8"), snapshot, load(args.cloud))
    output = args.output or ROOT / "cml_infra/catalog/data" / f"{args.cloud}-offerings.json"
    output.write_bytes(found.to_json())
    print(f"{output}: {len(found.offerings)} offerings in {len(found.regions)} regions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
