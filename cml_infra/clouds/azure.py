"""Azure: one resource group per runner from `terraform/azure/`; Spot with Delete eviction.

A VM that shuts itself down on Azure stays allocated and billed, so the agent (and the TTL
timer armed at boot) delete the runner's resource group with the VM's managed identity, whose
only role is on that resource group.

An instance is a managed resource group that still holds its VM. A Spot eviction deletes the VM
alone: the group, with its network, NIC, public IP and security group, is then a leftover,
which cleanup deletes whole.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from cml_infra.clouds import register, tags
from cml_infra.clouds.base import ErrorClass, Feature, Leftover, ManagedInstance, RenderContext
from cml_infra.clouds.vm import VmCloud, encode_user_data
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.placement import Placement
from cml_infra.spec import Network, RunnerSpec

if TYPE_CHECKING:
    from cml_infra.catalog import Offer
    from cml_infra.state import StateDir

CUSTOM_DATA_LIMIT = 64 * 1024
MANAGED_FILTER = f"tagName eq '{tags.MANAGED}' and tagValue eq 'true'"
# Every VM of the subscription, ours or not: ARM documents no filter that joins a resource type
# with a tag, and a tag filter would drop the tags from the answer anyway. A VM is what makes
# its group an instance, so none may be missed: one missed would get a live runner deleted.
VM_FILTER = "resourceType eq 'Microsoft.Compute/virtualMachines'"
RESOURCE_GROUP = "azurerm_resource_group"
_WITH_THE_GROUP = "with the resource group, which terminate and cleanup delete whole"
_IMAGE_ID = re.compile(
    r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Compute/.+", re.I
)
_IDENTITY_ID = re.compile(
    r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
    r"Microsoft\.ManagedIdentity/userAssignedIdentities/[^/]+",
    re.I,
)
_SUBNET_ID = re.compile(
    r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
    r"Microsoft\.Network/virtualNetworks/[^/]+/subnets/[^/]+",
    re.I,
)


@register("azure", aliases=("az",))
class AzureCloud(VmCloud):
    module = "azure"
    PREEMPTION_PROBE = "azure-preempt-event"
    UNSUPPORTED: ClassVar[dict[Feature, str]] = {
        Feature.LOGS: "launched without --backend, its log has no way back (no inbound ports, no "
        "SSH); the agent logs to /var/lib/cml-infra/instance.log on "
        "the instance, and cloud-init to "
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
    NETWORK_VARS: ClassVar[Mapping[str, str]] = {
        "subnet_id": "subnet_id",
        "disk_size_gb": "os_disk_size_gb",
        "public_ip": "public_ip",
    }
    NETWORK_FLAGS: ClassVar[frozenset[str]] = frozenset(NETWORK_VARS)
    NETWORK_INSTEAD: ClassVar[Mapping[str, str]] = {"subnetwork": "--subnet-id"}
    # A managed OS disk's range as the module takes it; the HPC image's disk is 64 GiB,
    # Ubuntu's 30.
    DISK_SIZE_GB: ClassVar[tuple[int, int]] = (30, 4095)
    IMAGE_DISK_GB: ClassVar[Mapping[bool, int]] = {False: 30, True: 64}
    REAPED: ClassVar[Mapping[str, str]] = {
        RESOURCE_GROUP: "the instance while it holds its VM (terminate deletes it); a leftover "
        "once the VM is gone (a Spot eviction deletes the VM alone): cleanup deletes it then",
        "azurerm_linux_virtual_machine": _WITH_THE_GROUP,
        "azurerm_virtual_network": _WITH_THE_GROUP,
        "azurerm_subnet": _WITH_THE_GROUP,
        "azurerm_network_security_group": _WITH_THE_GROUP,
        "azurerm_subnet_network_security_group_association": _WITH_THE_GROUP,
        "azurerm_public_ip": _WITH_THE_GROUP,
        "azurerm_network_interface": _WITH_THE_GROUP,
        "azurerm_network_interface_security_group_association": _WITH_THE_GROUP,
        "azurerm_role_assignment": "with the resource group, its scope (Azure deletes the "
        "assignments of a scope with it)",
        "tls_private_key": "nowhere to reap: it lives only in the Terraform state",
    }

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
        identity = spec.data_identity_for(self.name, "--identity")
        if identity is not None and not _IDENTITY_ID.fullmatch(identity):
            raise UsageError(
                "--identity",
                f"{identity!r} is not a user-assigned identity's resource id (/subscriptions/…/"
                "resourceGroups/…/providers/Microsoft.ManagedIdentity/userAssignedIdentities/…)",
            )
        if spec.image is not None and not _IMAGE_ID.fullmatch(spec.image):
            raise UsageError(
                "--image",
                f"{spec.image!r} is not an image resource id "
                "(/subscriptions/…/resourceGroups/…/providers/Microsoft.Compute/images/…)",
            )

    def check_network(self, spec: RunnerSpec, network: Network, *, region: str) -> None:
        subnet = network.subnet_id
        if subnet is not None and not _SUBNET_ID.fullmatch(subnet):
            raise UsageError(
                "--subnet-id",
                f"{subnet!r} is not a subnet's resource id (/subscriptions/…/resourceGroups/…/"
                "providers/Microsoft.Network/virtualNetworks/…/subnets/…)",
            )
        if subnet is not None and not spec.one_region:
            raise UsageError(
                "--subnet-id",
                "a virtual network is in one region: give its region alone as --region, "
                "without fallback regions or `any`",
            )
        if not network.public_ip and subnet is None:
            raise UsageError(
                "--no-public-ip",
                "the module's own network has no outbound access but the public IP: give "
                "--subnet-id of a subnet with a NAT gateway",
            )

    def zones(self, region: str) -> tuple[str | None, ...]:
        """None to choose: the module takes no zone and Azure places the VM in the region, so
        the zones a refreshed catalog lists (Resource SKUs name them) are no attempts of their
        own."""
        return ()

    def self_destroy(self) -> tuple[str, ...]:
        return ("@azure-delete-resource-group",)

    def module_vars(
        self, spec: RunnerSpec, placement: Placement, context: RenderContext
    ) -> dict[str, Any]:
        custom_data, _ = encode_user_data(
            context.startup_script,
            cloud=self.name,
            limit=CUSTOM_DATA_LIMIT,
            base64_counts=True,
            team_script=spec.startup_script,
        )
        return {
            "name": spec.name,
            "location": placement.region,
            "vm_size": placement.instance_type,
            "spot": placement.spot,
            "max_bid_price": placement.max_price if placement.max_price is not None else -1,
            "gpu": placement.gpu is not None,
            "source_image_id": spec.image,
            # Beside the system-assigned identity, which alone holds the self-delete role.
            "user_assigned_identity_id": spec.identity,
            "custom_data_base64": custom_data,
            "launch_id": context.launch_id,
            "expires_at": int(context.expires_at.timestamp()),
            "created_at": int(context.created_at.timestamp()),
            "tags": tags.resource_tags(spec),
            **self.network_vars(spec),
        }

    def sensitive_vars(self) -> frozenset[str]:
        return frozenset({"custom_data_base64"})

    def list_managed(self, regions: Iterable[str] | None) -> list[ManagedInstance]:
        """The managed resource groups in `regions` that still hold a VM."""
        groups, with_vm = self._groups(regions)
        return [_managed(g) for g in groups if g.name.lower() in with_vm]

    def list_leftovers(self, regions: Iterable[str] | None) -> list[Leftover]:
        """The managed resource groups in `regions` that hold no VM (an evicted Spot VM's, or
        one whose `up` died before its VM was made), but not one already being deleted."""
        groups, with_vm = self._groups(regions)
        return [
            _leftover(g)
            for g in groups
            if g.name.lower() not in with_vm and _state(g) != "deleting"
        ]

    def delete_leftovers(self, leftovers: Iterable[Leftover]) -> None:
        names = []
        for leftover in leftovers:
            if leftover.kind != RESOURCE_GROUP:
                raise CmlInfraError(f"azure: {leftover.label}: not something azure leaves behind")
            names.append(leftover.id)
        _delete_groups(_resources(self.transport), names)

    def terminate(self, ids: Iterable[str]) -> None:
        _delete_groups(_resources(self.transport), ids)

    def _groups(self, regions: Iterable[str] | None) -> tuple[list[Any], set[str]]:
        """Our resource groups in `regions`, and the names (lowercase) of the groups of the
        subscription that hold a VM: two listings, whatever the number of groups."""
        from azure.core.exceptions import AzureError

        wanted = None if regions is None else set(regions)
        client = _resources(self.transport)
        try:
            groups = [
                g
                for g in client.resource_groups.list(filter=MANAGED_FILTER)
                if wanted is None or g.location in wanted
            ]
        except AzureError as exc:
            raise CmlInfraError(f"azure: could not list resource groups: {exc}") from None
        if not groups:
            return [], set()
        try:
            with_vm = {_group_of(vm.id) for vm in client.resources.list(filter=VM_FILTER)}
        except AzureError as exc:
            raise CmlInfraError(f"azure: could not list virtual machines: {exc}") from None
        return groups, with_vm

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


def _delete_groups(client: Any, names: Iterable[str]) -> None:
    """Delete resource groups, everything in them with them, and wait until they are gone; one
    already gone is fine."""
    from azure.core.exceptions import AzureError, ResourceNotFoundError

    try:
        pollers = []
        for group in names:
            try:
                pollers.append(client.resource_groups.begin_delete(group))
            except ResourceNotFoundError:
                continue
        for poller in pollers:
            poller.result()
    except AzureError as exc:
        raise CmlInfraError(f"azure: delete failed: {exc}") from None


def _group_of(resource_id: str) -> str:
    """The resource group (lowercase) in a resource id: ARM's ids do not always keep the case
    the group was created with."""
    parts = resource_id.split("/")
    for index, part in enumerate(parts[:-1]):
        if part.lower() == "resourcegroups":
            return parts[index + 1].lower()
    return ""


def _state(group: Any) -> str:
    return str(group.properties.provisioning_state if group.properties else "unknown").lower()


def _managed(group: Any) -> ManagedInstance:
    # ARM does not say when a group was made: tags.instance reads our cml-infra-created tag.
    return tags.instance(
        dict(group.tags or {}),
        id=group.name,
        cloud=AzureCloud.name,
        region=group.location,
        state=_state(group),
        created_at=None,
        fallback_name=group.name,
    )


def _leftover(group: Any) -> Leftover:
    found = {str(key): str(value) for key, value in (group.tags or {}).items()}
    return Leftover(
        kind=RESOURCE_GROUP,
        id=group.name,
        cloud=AzureCloud.name,
        region=group.location,
        name=found.get(tags.NAME, group.name),
        launch_id=found.get(tags.LAUNCH_ID, ""),
        created_at=tags.unix_time(found.get(tags.CREATED, "")),
    )
