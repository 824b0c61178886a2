"""Which attempt `up` makes after a failed one: the cloud's error table decides.

Capacity ("not here, not now") moves to the next zone or region. A quota holds for the whole
region and market, so their other zones are skipped. An attempt cut at --attempt-timeout skips
them too: what hangs is most often the region's API or its spot market, and each of its zones
would cost another whole timeout. Any other error would follow `up` everywhere, and ends it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from cml_infra.clouds.base import Cloud, ErrorClass
from cml_infra.placement import Attempt
from cml_infra.spec import format_duration
from cml_infra.terraform import TerraformError


class AttemptTimedOut(TerraformError):
    """An attempt's apply ran past --attempt-timeout and was interrupted (`error`: how the
    interrupted apply ended, if it raised)."""

    def __init__(self, seconds: float, error: TerraformError | None = None) -> None:
        self.seconds = seconds
        self.cause = error
        super().__init__("apply", [], f"timed out after {timeout_text(seconds)}")


def timeout_text(seconds: float) -> str:
    """`5m`, `1m30s`; under a second (tests) `0.2s`."""
    return format_duration(int(seconds)) if seconds >= 1 else f"{seconds:.1f}s"


def classes(cloud: Cloud, error: TerraformError) -> set[ErrorClass]:
    found = {cloud.classify(d.summary, d.detail) for d in error.diagnostics}
    return found or {cloud.classify(str(error), "")}


def next_attempt(
    cloud: Cloud,
    error: TerraformError,
    attempts: Sequence[Attempt],
    failed: Attempt,
    left: Collection[Attempt] = (),
) -> Attempt | None:
    """The attempt to make after `failed`, or None to give up. `left`: earlier failed attempts
    that gave up on their region and market (`leaves_region`), whose later placements are
    skipped too: a price-ordered walk interleaves regions."""
    leaves = leaves_region(cloud, error)
    if not (leaves or ErrorClass.CAPACITY in classes(cloud, error)):
        return None
    gone = [*left, failed] if leaves else list(left)
    later = attempts[failed.number + 1 :]
    return next((a for a in later if not any(a.same_region_and_market(g) for g in gone)), None)


def leaves_region(cloud: Cloud, error: TerraformError) -> bool:
    """Whether the error holds for the failed attempt's whole region and market: a quota, or
    an attempt cut at its deadline; a capacity error is the zone's only."""
    if isinstance(error, AttemptTimedOut):
        return True
    found = classes(cloud, error)
    return ErrorClass.QUOTA in found and ErrorClass.CAPACITY not in found
