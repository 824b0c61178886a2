"""GCP: Compute Engine VMs from `terraform/gcp/`; Spot VMs; GPUs built in (a2/g2/a3) or
attached to n1 machine types.

The hard TTL is GCP's own `max_run_duration` with DELETE. The agent ends the VM by deleting it
with the VM's own identity, which may delete only this instance (resource-level IAM).
"""

from __future__ import annotations

import base64
import gzip
import os
import re
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from cml_infra.clouds import register, tags
from cml_infra.clouds.base import ErrorClass, Feature, ManagedInstance, RenderContext
from cml_infra.clouds.vm import VmCloud
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.placement import Placement
from cml_infra.spec import RunnerSpec

if TYPE_CHECKING:
    from cml_infra.catalog import Offer

METADATA_LIMIT = 256 * 1024
MIN_RUN_SECONDS, MAX_RUN_SECONDS = 30, 120 * 86400
OPERATION_TIMEOUT = 600
# GPUs that attach to n1 machine types, by our name.
ATTACHABLE = {"t4": "nvidia-tesla-t4", "v100": "nvidia-tesla-v100"}
_LABEL = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")


@register("gcp", aliases=("google", "gce"))
class GcpCloud(VmCloud):
    module = "gcp"
    PREEMPTION_PROBE = "gcp-preempted"
    UNSUPPORTED: ClassVar[dict[Feature, str]] = {
        Feature.LOGS: "cml-infra does not fetch VM logs (no inbound ports, no SSH); the agent "
        "logs to /var/lib/cml-infra/instance.log on the instance, and the startup script to "
        "its serial port: gcloud compute instances get-serial-port-output NAME --zone ZONE",
    }
    ERROR_PATTERNS: ClassVar[tuple[tuple[str, ErrorClass], ...]] = (
        ("ZONE_RESOURCE_POOL_EXHAUSTED", ErrorClass.CAPACITY),
        ("does not have enough resources", ErrorClass.CAPACITY),
        # Catalogs list types per region; a zone of it may not have the machine or GPU type.
        ("does not exist in zone", ErrorClass.CAPACITY),
        ("QUOTA_EXCEEDED", ErrorClass.QUOTA),
        ("Quota '", ErrorClass.QUOTA),
        ("googleapi: Error 403", ErrorClass.AUTH),
        ("could not find default credentials", ErrorClass.AUTH),
        ("googleapi: Error 400", ErrorClass.INVALID),
    )

    def attach_gpu(self, spec: RunnerSpec, instance_type: str) -> Offer:
        from cml_infra.catalog import Offer

        if spec.gpu_count not in (1, 2, 4, 8):
            raise UsageError("--gpu", f"gcp attaches 1, 2, 4 or 8 GPUs, not {spec.gpu_count}")
        if not instance_type.startswith("n1-") or spec.gpu not in ATTACHABLE:
            raise UsageError(
                "--type",
                f"gcp attaches GPUs ({', '.join(ATTACHABLE)}) to n1 machine types only; "
                f"{instance_type!r} with {spec.gpu} is not possible",
            )
        return Offer(
            id=f"{instance_type}+{spec.gpu}x{spec.gpu_count}",
            instance_type=instance_type,
            vcpus=0,
            memory_gib=0,
            gpu=spec.gpu,
            gpu_count=spec.gpu_count,
            accelerator=ATTACHABLE[spec.gpu],
            price=None,
        )

    def validate(
        self, spec: RunnerSpec, offer: Offer, *, spot: bool, max_price: float | None
    ) -> None:
        if not MIN_RUN_SECONDS <= spec.ttl <= MAX_RUN_SECONDS:
            raise UsageError(
                "--ttl", "GCP's max run duration (the hard TTL) must be between 30s and 120d"
            )
        if max_price is not None:
            raise UsageError(
                "--max-price",
                "GCP Spot VMs have no bid price (GCP charges its current Spot price); drop it",
            )
        for key, value in spec.tags.items():
            if not _LABEL.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
                raise UsageError(
                    "--tag",
                    f"{key}={value}: GCP labels need lowercase letters, digits, '_' and '-' "
                    "(keys start with a letter, both up to 63 characters)",
                )

    def self_destroy(self) -> tuple[str, ...]:
        return ("@gcp-delete-instance",)

    def module_vars(
        self, spec: RunnerSpec, placement: Placement, context: RenderContext
    ) -> dict[str, Any]:
        return {
            "name": spec.name,
            "zone": placement.zone,
            "machine_type": placement.instance_type,
            "gpu": placement.gpu is not None,
            "accelerator_type": placement.accelerator,
            "accelerator_count": placement.gpu_count if placement.accelerator else 0,
            "spot": placement.spot,
            "image": spec.image,
            "startup_script": metadata_script(context.startup_script),
            "max_run_duration_seconds": spec.ttl,
            "launch_id": context.launch_id,
            "expires_at": int(context.expires_at.timestamp()),
            "labels": tags.resource_tags(spec),
        }

    def list_managed(self, regions: Iterable[str] | None) -> list[ManagedInstance]:
        from google.api_core.exceptions import GoogleAPIError
        from google.auth.exceptions import GoogleAuthError
        from requests.exceptions import RequestException

        try:
            return self._list(None if regions is None else set(regions))
        except (GoogleAPIError, GoogleAuthError, RequestException) as exc:
            raise CmlInfraError(f"gcp: could not list instances: {exc}") from None

    def _list(self, wanted: set[str] | None) -> list[ManagedInstance]:
        from google.cloud import compute_v1

        project = _project()
        request = compute_v1.AggregatedListInstancesRequest(
            project=project, filter=f'labels.{tags.MANAGED} = "true"'
        )
        found = []
        pages = _client("Instances").aggregated_list(request=request, retry=_retry())
        for scope, scoped in pages:
            zone = scope.rpartition("/")[2]
            region = zone.rpartition("-")[0]
            if wanted is not None and region not in wanted:
                continue
            for instance in scoped.instances:
                found.append(_managed(zone, region, instance))
        return found

    def terminate(self, ids: Iterable[str]) -> None:
        from google.api_core.exceptions import GoogleAPIError, NotFound
        from requests.exceptions import RequestException

        instances, operations = _client("Instances"), _client("ZoneOperations")
        project = _project()
        for full_id in ids:
            zone, _, name = full_id.partition("/")
            try:
                operation: Any = instances.delete_unary(
                    project=project, zone=zone, instance=name, retry=_retry()
                )
                _wait_done(operations, project, zone, operation, full_id)
            except NotFound:
                pass
            except (GoogleAPIError, RequestException) as exc:
                raise CmlInfraError(f"gcp {full_id}: delete failed: {exc}") from None

    def listed_id(self, outputs: Mapping[str, Any]) -> str | None:
        if outputs.get("zone") and outputs.get("name"):
            return f"{outputs['zone']}/{outputs['name']}"
        return None

    def check(self) -> tuple[bool, str]:
        try:
            return True, f"project {_project()}"
        except CmlInfraError as exc:
            return False, str(exc).removeprefix("gcp: ")


def metadata_script(script: str) -> str:
    """The startup script as GCP metadata: as is, or a self-unpacking gzip if too large."""
    if len(script.encode("utf-8")) <= METADATA_LIMIT:
        return script
    packed = base64.b64encode(gzip.compress(script.encode("utf-8"), mtime=0)).decode("ascii")
    wrapper = f"#!/bin/bash\nset -euo pipefail\necho '{packed}' | base64 -d | gunzip | bash\n"
    if len(wrapper) > METADATA_LIMIT:
        raise UsageError(
            "startup script",
            f"{len(script):,} bytes, {len(wrapper):,} even compressed; "
            f"gcp allows {METADATA_LIMIT:,} bytes of metadata",
        )
    return wrapper


def _client(kind: str) -> Any:
    """A Compute client; CML_INFRA_GCP_API_ENDPOINT (http(s)://host:port) points it elsewhere,
    anonymously: a private endpoint or the loopback fake the tests use."""
    from google.cloud import compute_v1

    cls = getattr(compute_v1, f"{kind}Client")
    endpoint = os.environ.get("CML_INFRA_GCP_API_ENDPOINT")
    if not endpoint:
        return cls()
    from google.auth.credentials import AnonymousCredentials

    parts = urlsplit(endpoint)
    transport = cls.get_transport_class("rest")(
        host=parts.netloc,
        url_scheme=parts.scheme or "https",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
    )
    return cls(transport=transport)


def _wait_done(operations: Any, project: str, zone: str, operation: Any, what: str) -> None:
    """Until the zone operation is DONE, through the same endpoint as the call that made it
    (the client library's own waiting always asks Google's public endpoint)."""
    from google.cloud import compute_v1

    deadline = time.monotonic() + OPERATION_TIMEOUT
    while operation.status != compute_v1.Operation.Status.DONE:
        if time.monotonic() > deadline:
            raise CmlInfraError(f"gcp {what}: still deleting after {OPERATION_TIMEOUT}s")
        operation = operations.wait(project=project, zone=zone, operation=operation.name)
    if operation.error and operation.error.errors:
        details = "; ".join(f"{e.code}: {e.message}" for e in operation.error.errors)
        status = operation.http_error_status_code or ""
        raise CmlInfraError(f"gcp {what}: delete failed: {status} {details}".replace("  ", " "))


def _retry() -> Any:
    """google-api-core's backoff for throttling and passing server errors."""
    from google.api_core import exceptions, retry

    transient = retry.if_exception_type(
        exceptions.TooManyRequests, exceptions.ServiceUnavailable, exceptions.InternalServerError
    )
    return retry.Retry(
        predicate=transient, initial=1.0, maximum=30.0, multiplier=2.0, timeout=300.0
    )


def _project() -> str:
    """The project of the default credentials (or GOOGLE_CLOUD_PROJECT)."""
    if os.environ.get("CML_INFRA_GCP_API_ENDPOINT") and os.environ.get("GOOGLE_CLOUD_PROJECT"):
        return os.environ["GOOGLE_CLOUD_PROJECT"]
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        _, project = google.auth.default()
    except DefaultCredentialsError as exc:
        raise CmlInfraError(
            f"gcp: no default credentials ({exc}); run `gcloud auth application-default login`, "
            "set GOOGLE_APPLICATION_CREDENTIALS, or use OIDC (google-github-actions/auth)"
        ) from None
    project = project or os.environ.get("GOOGLE_CLOUD_PROJECT")
    if not project:
        raise CmlInfraError("gcp: credentials found but no project; set GOOGLE_CLOUD_PROJECT")
    return str(project)


def _managed(zone: str, region: str, instance: Any) -> ManagedInstance:
    created = instance.creation_timestamp
    return tags.instance(
        dict(instance.labels),
        id=f"{zone}/{instance.name}",
        cloud=GcpCloud.name,
        region=region,
        state=str(instance.status).lower(),
        created_at=datetime.fromisoformat(created) if created else None,
        fallback_name=instance.name,
        instance_type=str(instance.machine_type).rpartition("/")[2] or None,
    )
