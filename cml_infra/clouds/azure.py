"""Azure: one resource group per runner from `terraform/azure/`; Spot with Delete eviction.

A VM that shuts itself down on Azure stays allocated and billed, so the agent (and the TTL
timer armed at boot) delete the runner's resource group with the VM's managed identity, whose
only role is on that resource group.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from cml_infra.clouds import register, tags
from cml_infra.clouds.base import ErrorClass, Feature, ManagedInstance, RenderContext
from cml_infra.clouds.vm import VmCloud, encode_user_data
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.placement import Placement
from cml_infra.spec import RunnerSpec

if TYPE_CHECKING:
    from cml_infra.catalog import Offer
    from cml_infra.state import StateDir

CUSTOM_DATA_LIMIT = 64 * 1024
MANAGED_FILTER = f"tagName eq '{tags.MANAGED}' and tagValue eq 'true'"
_IMAGE_ID = re.compile(
    r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Compute/.+", re.I
)


@register("azure", aliases=("az",))
class AzureCloud(VmCloud):
    module = "azure"
    PREEMPTION_PROBE = "azure-preempt-event"
    UNSUPPORTED: ClassVar[dict[Feature, str]] = {
        Feature.LOGS: "cml-infra does not fetch VM logs (no inbound ports, no SSH); the agent "
        "logs to /var/lib/cml-infra/instance.log on the instance, and cloud-init to "
        "/var/log/cloud-init-output.log",
    }
    ERROR_PATTERNS: ClassVar[tuple[tuple[str, ErrorClass], ...]] = (
        ("SkuNotAvailable", ErrorClass.CAPACITY),
        ("AllocationFailed", ErrorClass.CAPACITY),
        ("ZonalAllocationFailed", ErrorClass.CAPACITY),
        ("OverconstrainedAllocationRequest", ErrorClass.CAPACITY),
        ("QuotaExceeded", ErrorClass.QUOTA),
        ("exceeding approved", ErrorClass.QUOTA),
        ("AuthorizationFailed", ErrorClass.AUTH),
        ("InvalidAuthenticationToken", ErrorClass.AUTH),
        ("InvalidParameter", ErrorClass.INVALID),
    )

    def __init__(self, state: StateDir | None = None, transport: Any = None) -> None:
        super().__init__(state)
        # An azure-core HttpTransport to send requests through instead of the network.
        self.transport = transport

    def validate(
        self, spec: RunnerSpec, offer: Offer, *, spot: bool, max_price: float | None
    ) -> None:
        if spec.instance_type is not None and not re.fullmatch(
            r"(Standard|Basic)_[A-Za-z0-9_-]+", spec.instance_type
        ):
            raise UsageError(
                "--type", f"{spec.instance_type!r} is not an Azure VM size (Standard_NC4as_T4_v3)"
            )
        for key in spec.tags:
            if any(char in key for char in "<>%&\\?/"):
                raise UsageError("--tag", f"{key!r}: Azure tag names cannot contain <>%&\\?/")
        if spec.image is not None and not _IMAGE_ID.fullmatch(spec.image):
            raise UsageError(
                "--image",
                f"{spec.image!r} is not an image resource id "
                "(/subscriptions/…/resourceGroups/…/providers/Microsoft.Compute/images/…)",
            )

    def self_destroy(self) -> tuple[str, ...]:
        return ("@azure-delete-resource-group",)

    def module_vars(
        self, spec: RunnerSpec, placement: Placement, context: RenderContext
    ) -> dict[str, Any]:
        custom_data, _ = encode_user_data(
            context.startup_script, cloud=self.name, limit=CUSTOM_DATA_LIMIT, base64_counts=True
        )
        return {
            "name": spec.name,
            "location": placement.region,
            "vm_size": placement.instance_type,
            "spot": placement.spot,
            "max_bid_price": placement.max_price if placement.max_price is not None else -1,
            "gpu": placement.gpu is not None,
            "source_image_id": spec.image,
            "custom_data_base64": custom_data,
            "launch_id": context.launch_id,
            "expires_at": int(context.expires_at.timestamp()),
            "tags": tags.resource_tags(spec),
        }

    def sensitive_vars(self) -> frozenset[str]:
        return frozenset({"custom_data_base64"})

    def list_managed(self, regions: Iterable[str] | None) -> list[ManagedInstance]:
        from azure.core.exceptions import AzureError

        wanted = None if regions is None else set(regions)
        try:
            groups = list(_resources(self.transport).resource_groups.list(filter=MANAGED_FILTER))
        except AzureError as exc:
            raise CmlInfraError(f"azure: could not list resource groups: {exc}") from None
        return [_managed(g) for g in groups if wanted is None or g.location in wanted]

    def terminate(self, ids: Iterable[str]) -> None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        client = _resources(self.transport)
        try:
            pollers = []
            for group in ids:
                try:
                    pollers.append(client.resource_groups.begin_delete(group))
                except ResourceNotFoundError:
                    continue
            for poller in pollers:
                poller.result()
        except AzureError as exc:
            raise CmlInfraError(f"azure: delete failed: {exc}") from None

    def listed_id(self, outputs: Mapping[str, Any]) -> str | None:
        found = outputs.get("resource_group_name")
        return str(found) if found else None

    def check(self) -> tuple[bool, str]:
        try:
            subscription = _subscription()
            _credential().get_token("https://management.azure.com/.default")
        except CmlInfraError as exc:
            return False, str(exc).removeprefix("azure: ")
        except Exception as exc:  # azure-identity raises several unrelated classes
            return False, (
                f"no usable credentials ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                "run `az login`, set AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET, "
                "or use OIDC (azure/login)"
            )
        return True, f"subscription {subscription}"


def _subscription() -> str:
    for variable in ("ARM_SUBSCRIPTION_ID", "AZURE_SUBSCRIPTION_ID"):
        if os.environ.get(variable):
            return os.environ[variable]
    raise CmlInfraError("azure: no subscription; set ARM_SUBSCRIPTION_ID (Terraform reads it too)")


def _credential() -> Any:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def _resources(transport: Any = None) -> Any:
    # azure-mgmt-resource 26 keeps the client only in its `resources` subpackage.
    from azure.mgmt.resource.resources import ResourceManagementClient

    options = {"transport": transport} if transport is not None else {}
    return ResourceManagementClient(_credential(), _subscription(), **options)


def _managed(group: Any) -> ManagedInstance:
    return tags.instance(
        dict(group.tags or {}),
        id=group.name,
        cloud=AzureCloud.name,
        region=group.location,
        state=str(group.properties.provisioning_state if group.properties else "unknown").lower(),
        created_at=None,
        fallback_name=group.name,
    )
