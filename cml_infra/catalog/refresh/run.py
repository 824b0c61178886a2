"""The core of `cml-infra catalog refresh`: which clouds, one Refresher each, one user file each.

The user catalog of a cloud is `<state dir>/catalog/<cloud>-offerings.json`, the packaged
`data/<cloud>-offerings.json`'s shape (catalog/offerings.py); the catalog loader prefers it. It
is replaced whole and atomically, so a reader never sees half of one and a failed refresh
leaves the previous one in place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cml_infra.catalog.offerings import Offerings
from cml_infra.errors import UsageError

FOLDER = "catalog"


def user_catalog(state_root: Path, cloud: str) -> Path:
    """Where `catalog refresh` writes the offerings of `cloud` (and the loader looks)."""
    return state_root / FOLDER / f"{cloud}-offerings.json"


@dataclass(frozen=True)
class Refreshed:
    """One cloud's new user catalog and what it holds, for the summary line."""

    cloud: str
    path: Path
    offerings: Offerings
    # Catalog rows sold in none of the regions asked.
    unsold: tuple[str, ...]
    # Regions named with --region that the answer leaves out (the account cannot use them).
    skipped: tuple[str, ...]

    def summary(self) -> str:
        found = self.offerings
        rows = len({o.offer for o in found.offerings})
        prices = sum(o.price is not None for o in found.offerings)
        spots = sum(o.spot is not None for o in found.offerings)
        used = sorted({f.source for o in found.offerings for f in (o.price, o.spot) if f})
        line = (
            f"{self.cloud}: {rows} rows x {len(found.regions)} regions "
            f"({len(found.offerings)} offerings), {prices} on-demand and {spots} spot figures "
            f"from {', '.join(used) or 'no source'}"
        )
        if self.skipped:
            line += f"; regions skipped: {', '.join(self.skipped)}"
        if self.unsold:
            line += f"; sold in none of them: {', '.join(self.unsold)}"
        return f"{line}; wrote {self.path}"


def clouds(cloud: str | None) -> list[str]:
    """The clouds to refresh: `--cloud`'s (checked), else each with a catalog and a
    Refresher."""
    from cml_infra import catalog
    from cml_infra.catalog.refresh import REFRESHERS

    if cloud is not None:
        name = REFRESHERS.canonical(cloud, "--cloud")
        if not catalog.path(name).is_file():
            raise UsageError("--cloud", f"{name} has no catalog to refresh")
        return [name]
    return [name for name in REFRESHERS if catalog.path(name).is_file()]


def regions_of(values: Sequence[str] | None, clouds: Sequence[str]) -> list[str] | None:
    """`--region` (repeated or comma-separated); region names belong to one cloud."""
    if not values:
        return None
    regions = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if not regions:
        raise UsageError("--region", "empty; give a region name, or leave the flag out")
    if len(clouds) != 1:
        raise UsageError("--region", "region names belong to one cloud; give --cloud too")
    return list(dict.fromkeys(regions))


def refresh(
    cloud_names: Sequence[str],
    regions: Sequence[str] | None,
    state_root: Path,
    warn: Callable[[str], None],
    named: bool,
) -> list[Refreshed]:
    """Refresh each cloud in turn, writing its user catalog as soon as it is fetched. When the
    clouds were not `named`, one the user cannot refresh (no credentials: a UsageError) is left
    out with a warning; the refresh fails (one line, exit 2) only if no cloud could be."""
    from cml_infra import catalog
    from cml_infra.catalog.refresh import REFRESHERS
    from cml_infra.state import make_private_dir, write_private

    done: list[Refreshed] = []
    refused: list[UsageError] = []
    for name in cloud_names:
        rows = catalog.load(name)
        try:
            found = REFRESHERS.find(name, "--cloud")().fetch(rows, regions, warn)
        except UsageError as exc:
            if named:
                raise
            refused.append(exc)
            continue
        path = user_catalog(state_root, name)
        make_private_dir(path.parent)
        write_private(path, found.to_json().decode("utf-8"))
        sold = {o.offer for o in found.offerings}
        done.append(
            Refreshed(
                cloud=name,
                path=path,
                offerings=found,
                unsold=tuple(o.id for o in rows.instance_types if o.id not in sold),
                skipped=tuple(r for r in regions or () if r not in found.regions),
            )
        )
    if refused and not done:
        if len(refused) == 1:
            raise refused[0]
        raise UsageError("catalog refresh", "; ".join(str(error) for error in refused))
    for error in refused:
        warn(f"not refreshed: {error}")
    return done
