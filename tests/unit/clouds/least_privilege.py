"""What a VM's own identity is granted, read from a module folder's Terraform: the checks that
`test_least_privilege.py` runs on the packaged modules and `tests/e2e/test_cloud_render.py` on
the module copy of every rendered workspace.

The rule (DESIGN, "Security model"): the VM's identity can do exactly one thing, end that VM.
GCP: the custom role with `compute.instances.delete` alone, on the instance alone. Azure: the
custom role that deletes the runner's resource group and what the module puts in it, on that
group alone. AWS: no IAM at all, and no instance profile unless the caller names one for the
job's data.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hcl2

# Resource types that grant an identity something, or make a credential: each one a module
# creates must be one the cloud's check below allows.
GRANTS = re.compile(
    r"_iam_|^aws_iam_|role_assignment|role_definition|access_policy|service_account_key"
)
GCP_PERMISSIONS = ["compute.instances.delete"]
# What deleting each resource type of the Azure module takes of the caller, beyond the group's
# own delete (ARM deletes a group's contents with the caller's permissions). The associations
# are properties of the subnet and the NIC, and the key lives in the Terraform state only.
AZURE_DELETE_ACTIONS = {
    "azurerm_resource_group": ["Microsoft.Resources/subscriptions/resourceGroups/delete"],
    "azurerm_virtual_network": ["Microsoft.Network/virtualNetworks/delete"],
    "azurerm_subnet": ["Microsoft.Network/virtualNetworks/subnets/delete"],
    "azurerm_network_security_group": [
        "Microsoft.Network/networkSecurityGroups/delete",
        "Microsoft.Network/networkSecurityGroups/securityRules/delete",
    ],
    "azurerm_subnet_network_security_group_association": [],
    "azurerm_public_ip": ["Microsoft.Network/publicIPAddresses/delete"],
    "azurerm_network_interface": ["Microsoft.Network/networkInterfaces/delete"],
    "azurerm_network_interface_security_group_association": [],
    # The VM's OS disk is a resource of the group that the VM creates.
    "azurerm_linux_virtual_machine": [
        "Microsoft.Compute/virtualMachines/delete",
        "Microsoft.Compute/disks/delete",
    ],
    "azurerm_role_assignment": ["Microsoft.Authorization/roleAssignments/delete"],
    "tls_private_key": [],
}


def unquote(value: Any) -> Any:
    """python-hcl2 keeps HCL's quotes on names and strings; compare without them."""
    if isinstance(value, dict):
        return {str(unquote(k)): unquote(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unquote(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


@dataclass(frozen=True)
class Module:
    """A module folder's blocks: resources and data sources (type → name → body), locals and
    variables (name → body)."""

    resources: dict[str, dict[str, dict[str, Any]]]
    data: dict[str, dict[str, dict[str, Any]]]
    locals: dict[str, Any]
    variables: dict[str, dict[str, Any]]

    @classmethod
    def read(cls, folder: Path) -> Module:
        resources: dict[str, dict[str, dict[str, Any]]] = {}
        data: dict[str, dict[str, dict[str, Any]]] = {}
        local_values: dict[str, Any] = {}
        variables: dict[str, dict[str, Any]] = {}
        for path in sorted(folder.glob("*.tf")):
            parsed = unquote(hcl2.loads(path.read_text(encoding="utf-8")))
            for kind, found in (("resource", resources), ("data", data)):
                for block in parsed.get(kind, []):
                    for rtype, named in block.items():
                        found.setdefault(rtype, {}).update(named)
            for block in parsed.get("locals", []):
                local_values.update(block)
            for block in parsed.get("variable", []):
                variables.update(block)
        return cls(resources, data, local_values, variables)

    def grants(self) -> list[str]:
        return [
            f"{rtype}.{name}"
            for rtype, named in sorted(self.resources.items())
            if GRANTS.search(rtype)
            for name in named
        ]


def _postcondition(body: dict[str, Any]) -> str:
    return " ".join(
        str(check.get("condition", ""))
        for lifecycle in body.get("lifecycle", [])
        for check in lifecycle.get("postcondition", [])
    )


def gcp(module: Module, example: Module | None = None) -> list[str]:
    problems = []
    if module.grants() != ["google_compute_instance_iam_member.self_delete"]:
        problems.append(f"grants {module.grants()}, not only the self-delete on the instance")
    grant = module.resources.get("google_compute_instance_iam_member", {}).get("self_delete", {})
    wanted = {
        "instance_name": "${google_compute_instance.runner.name}",
        "role": "${data.google_project_iam_custom_role.self_delete.name}",
        "member": "serviceAccount:${local.service_account_email}",
    }
    problems += [
        f"the self-delete grant's {key} is {grant.get(key)!r}, not {value!r}"
        for key, value in wanted.items()
        if grant.get(key) != value
    ]
    if "roles/" in json.dumps(module.resources):
        problems.append("a predefined role (roles/...) is named: every one holds more than delete")
    role = module.data.get("google_project_iam_custom_role", {}).get("self_delete", {})
    listed = re.search(r"self\.permissions == toset\(\[(.*?)\]\)", _postcondition(role))
    permissions = json.loads(f"[{listed[1]}]") if listed else None
    if permissions != GCP_PERMISSIONS:
        problems.append(f"the role's permissions are checked against {permissions}")
    (instance,) = module.resources["google_compute_instance"].values()
    (account,) = instance["service_account"]
    if account.get("email") != "${local.service_account_email}":
        problems.append(f"the VM runs as {account.get('email')!r}")
    if example is not None:
        (made,) = example.resources["google_project_iam_custom_role"].values()
        if made.get("permissions") != GCP_PERMISSIONS:
            problems.append(f"the set-up example's role holds {made.get('permissions')}")
        default = module.variables["self_delete_role_id"].get("default")
        if made.get("role_id") != default:
            problems.append(
                f"the example makes {made.get('role_id')!r}, the module uses {default!r}"
            )
    return problems


def azure(module: Module, example: Module | None = None) -> list[str]:
    problems = []
    if module.grants() != ["azurerm_role_assignment.self_delete"]:
        problems.append(f"grants {module.grants()}, not only the self-delete on the group")
    grant = module.resources.get("azurerm_role_assignment", {}).get("self_delete", {})
    wanted = {
        "scope": "${azurerm_resource_group.this.id}",
        "role_definition_id": (
            "${data.azurerm_role_definition.self_delete.role_definition_resource_id}"
        ),
        "principal_id": "${azurerm_linux_virtual_machine.this.identity[0].principal_id}",
        "role_definition_name": None,
    }
    problems += [
        f"the self-delete assignment's {key} is {grant.get(key)!r}, not {value!r}"
        for key, value in wanted.items()
        if grant.get(key) != value
    ]
    actions = module.locals.get("self_delete_actions", [])
    needed = set()
    for rtype in module.resources:
        if rtype not in AZURE_DELETE_ACTIONS:
            problems.append(f"{rtype}: say what deleting it takes (AZURE_DELETE_ACTIONS)")
        needed.update(AZURE_DELETE_ACTIONS.get(rtype, []))
    if set(actions) != needed:
        problems.append(
            f"the role's actions {sorted(actions)} are not the deletes of the group's contents "
            f"{sorted(needed)}"
        )
    if any("*" in action or not action.endswith("/delete") for action in actions):
        problems.append(f"the role's actions {actions} hold more than deletes")
    check = _postcondition(module.data["azurerm_role_definition"]["self_delete"])
    for part in ("local.self_delete_actions", "data_actions)) == 0"):
        if part not in check:
            problems.append(f"the role read at plan is not checked for {part}")
    if example is not None:
        (made,) = example.resources["azurerm_role_definition"].values()
        (permissions,) = made["permissions"]
        if permissions.get("actions") != actions or set(permissions) - {"actions", "__is_block__"}:
            problems.append(f"the set-up example's role is {permissions}, not {actions}")
        default = module.variables["self_delete_role_name"].get("default")
        if made.get("name") != default:
            problems.append(f"the example makes {made.get('name')!r}, the module uses {default!r}")
    return problems


def aws(module: Module, example: Module | None = None) -> list[str]:
    problems = []
    if module.grants():
        problems.append(f"grants {module.grants()}: the VM needs no AWS credentials to end")
    (instance,) = module.resources["aws_instance"].values()
    if instance.get("iam_instance_profile") != "${var.iam_instance_profile}":
        problems.append(f"the instance profile is {instance.get('iam_instance_profile')!r}")
    if module.variables["iam_instance_profile"].get("default") is not None:
        problems.append("an instance profile is given by default")
    return problems


CHECKS = {"aws": aws, "gcp": gcp, "azure": azure}


def problems(cloud: str, folder: Path, example: Path | None = None) -> list[str]:
    """What the module in `folder` grants its VM beyond ending itself, one sentence each;
    `example`: the module's one-time set-up of the role, held against it too."""
    return CHECKS[cloud](Module.read(folder), Module.read(example) if example else None)
