"""Which attempt `up` makes after a failed one: the cloud's error table decides.

Capacity ("not here, not now") moves to the next zone or region. A quota holds for the whole
region and market, so their other zones are skipped. Any other error would follow `up`
everywhere, and ends it.
"""

from __future__ import annotations

from collections.abc import Sequence

from cml_infra.clouds.base import Cloud, ErrorClass
from cml_infra.placement import Attempt
from cml_infra.terraform import TerraformError


def classes(cloud: Cloud, error: TerraformError) -> set[ErrorClass]:
    found = {cloud.classify(d.summary, d.detail) for d in error.diagnostics}
    return found or {cloud.classify(str(error), "")}


def next_attempt(
    cloud: Cloud, error: TerraformError, attempts: Sequence[Attempt], failed: Attempt
) -> Attempt | None:
    """The attempt to make after `failed`, or None to give up."""
    found = classes(cloud, error)
    later = attempts[failed.number + 1 :]
    if ErrorClass.CAPACITY in found:
        return later[0] if later else None
    if ErrorClass.QUOTA in found:
        return next((a for a in later if not a.same_region_and_market(failed)), None)
    return None
