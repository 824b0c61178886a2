"""Our tag keys (GCP: labels) and the one parser of a ManagedInstance from a cloud's tags.

Every resource a module creates carries `cml-infra-managed = "true"`, `cml-infra-name`,
`cml-infra-expires`, `cml-infra-id` and `cml-infra-created`; a runner's also names its forge and
scope, so that `cleanup` given a repository acts only on that repository's runners.

A name is chosen by people and is not an identity (`gpu-${{ github.run_id }}` collides across
repositories and re-runs): `cml-infra-id` is the launch's own, minted by each `up`, and it is
what teardown matches (`down`, a rollback, a failover's clean-up, the AWS security groups of a
terminated instance).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from cml_infra.clouds.base import ManagedInstance

if TYPE_CHECKING:
    from cml_infra.spec import RunnerSpec

PREFIX = "cml-infra-"
MANAGED = "cml-infra-managed"
NAME = "cml-infra-name"
EXPIRES = "cml-infra-expires"
FORGE = "cml-infra-forge"
SCOPE = "cml-infra-scope"
LAUNCH_ID = "cml-infra-id"
# Unix seconds at launch, on every resource: its age for the rules that go by age, where the
# cloud does not say when a resource was made (Azure resource groups, GCP service accounts).
CREATED = "cml-infra-created"
# What the modules accept as a launch id (their `launch_id` variable's validation).
LAUNCH_ID_FORMAT = re.compile(r"[a-z0-9]{8,32}")


def resource_tags(spec: RunnerSpec) -> dict[str, str]:
    """The user's tags, plus marks on runners: cleanup's runner rules look only at those of
    the repository or organization it was given."""
    if spec.forge is None:
        return dict(spec.tags)
    return {**spec.tags, FORGE: spec.forge.kind, SCOPE: spec.forge.scope_tag}


def managed_tags(
    spec: RunnerSpec, expires_at: datetime, launch_id: str, created_at: datetime
) -> dict[str, str]:
    """Everything on a resource: `resource_tags` and the marks cleanup and teardown find it by
    (modules of the VM clouds add these themselves from their variables; the local module takes
    them whole)."""
    return {
        **resource_tags(spec),
        MANAGED: "true",
        NAME: spec.name,
        EXPIRES: str(int(expires_at.timestamp())),
        LAUNCH_ID: launch_id,
        CREATED: str(int(created_at.timestamp())),
    }


def is_managed(tags: Mapping[str, str]) -> bool:
    return tags.get(MANAGED) == "true"


def instance(
    tags: Mapping[str, str],
    *,
    id: str,
    cloud: str,
    region: str,
    state: str,
    created_at: datetime | None,
    fallback_name: str,
    idle_seconds: float | None = None,
    hourly_price: float | None = None,
    instance_type: str | None = None,
) -> ManagedInstance:
    """A ManagedInstance from what the cloud reports: the name, deadline and launch id come
    from our tags, and so does the creation time where the cloud does not report one."""
    tags = {str(key): str(value) for key, value in tags.items()}
    return ManagedInstance(
        id=id,
        name=tags.get(NAME, fallback_name),
        cloud=cloud,
        region=region,
        state=state,
        created_at=created_at if created_at is not None else unix_time(tags.get(CREATED, "")),
        expires_at=unix_time(tags.get(EXPIRES, "")),
        tags=tags,
        idle_seconds=idle_seconds,
        hourly_price=hourly_price,
        instance_type=instance_type,
        launch_id=tags.get(LAUNCH_ID, ""),
    )


def unix_time(text: str) -> datetime | None:
    """The time in a `cml-infra-expires` or `cml-infra-created` tag; None for anything but Unix
    seconds a datetime can hold (anyone may write a tag, and one bad tag must not stop a whole
    listing)."""
    if not (text.isascii() and text.isdigit()):
        return None
    try:
        return datetime.fromtimestamp(int(text), timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None
