"""What the per-cloud tests share: a spec on a cloud, where it is placed, and the variables its
Terraform module is given for a launch created at CREATED that expires at EXPIRES."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from cml_infra.clouds.base import RenderContext
from cml_infra.placement import Placement
from cml_infra.spec import RunnerSpec

CREATED = datetime(2030, 1, 1, tzinfo=timezone.utc)
EXPIRES = CREATED + timedelta(hours=1)


def spec_on(cloud: str, **changes) -> RunnerSpec:
    fields = {"name": "box-1", "cloud": cloud, "idle_timeout": 60, "ttl": 3600}
    fields.update(changes)
    return RunnerSpec(**fields)


def resolve(cloud, spec: RunnerSpec) -> Placement:
    """The placement of `spec` in its first region, on the market it asks for."""
    return cloud.resolve(spec, region=spec.region, spot=spec.spot, max_price=spec.max_price)


def module_vars(cloud, spec: RunnerSpec, script: str = "#!/bin/bash\necho hi\n", placement=None):
    """The module's variables for `spec` booting `script`, placed as resolve() places it unless
    `placement` says otherwise."""
    context = RenderContext(script, CREATED, EXPIRES)
    return cloud.module_vars(spec, placement or resolve(cloud, spec), context)
