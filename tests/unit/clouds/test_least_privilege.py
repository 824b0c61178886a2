"""The VM's own identity can end the VM and do nothing else, checked statically: the modules as
every workspace gets them (and their one-time role set-up examples), and the variables each
cloud gives them with and without an identity for the job's data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cml_infra import clouds, packaged
from cml_infra.errors import UsageError
from tests.unit.clouds import least_privilege
from tests.unit.clouds.specs import module_vars, resolve, spec_on

VM_CLOUDS = sorted(least_privilege.CHECKS)
SETUP_EXAMPLE = {"gcp": "self-delete-role", "azure": "self-delete-role"}
# Each cloud's data identity flag: a spec field, the module variable, and a valid value.
DATA_IDENTITY = {
    "aws": ("instance_profile", "iam_instance_profile", "cml-data-reader"),
    "gcp": ("service_account", "service_account_email", "data@proj-123.iam.gserviceaccount.com"),
    "azure": (
        "identity",
        "user_assigned_identity_id",
        "/subscriptions/0000/resourceGroups/ids/providers/"
        "Microsoft.ManagedIdentity/userAssignedIdentities/data-reader",
    ),
}


def example(cloud: str) -> Path | None:
    name = SETUP_EXAMPLE.get(cloud)
    return packaged.module_dir(cloud) / "examples" / name if name else None


def test_every_vm_cloud_is_checked():
    """A new cloud with a module that boots a VM must say what its VM's identity may do."""
    assert set(VM_CLOUDS) == set(clouds.names()) - {"local"}


@pytest.mark.parametrize("cloud", VM_CLOUDS)
def test_the_vm_identity_may_only_end_the_vm(cloud):
    assert least_privilege.problems(cloud, packaged.module_dir(cloud), example(cloud)) == []


@pytest.mark.parametrize(
    ("cloud", "old", "new", "found"),
    [
        # The grant this project had before: instanceAdmin can change scheduling and labels.
        ("gcp", "role          = data.google_project_iam_custom_role.self_delete.name",
         'role          = "roles/compute.instanceAdmin.v1"', "role is '"),
        ("gcp", 'toset(["compute.instances.delete"])',
         'toset(["compute.instances.delete", "compute.instances.setLabels"])', "permissions are"),
        ("azure", "role_definition_id = data.azurerm_role_definition.self_delete."
         "role_definition_resource_id", 'role_definition_name = "Contributor"',
         "role_definition_name is 'Contributor'"),
        ("azure", '"Microsoft.Compute/disks/delete",', '"Microsoft.Compute/disks/delete",\n'
         '    "Microsoft.Resources/tags/write",', "hold more than deletes"),
        ("aws", "iam_instance_profile = var.iam_instance_profile",
         'iam_instance_profile = "admin"', "instance profile is 'admin'"),
        ("aws", "resource \"aws_instance\" \"this\" {",
         'resource "aws_iam_role" "vm" {\n  assume_role_policy = "{}"\n}\n\n'
         'resource "aws_instance" "this" {', "grants ['aws_iam_role.vm']"),
    ],
)  # fmt: skip
def test_a_grant_beyond_ending_the_vm_is_found(cloud, old, new, found, tmp_path):
    module = tmp_path / cloud
    shutil.copytree(packaged.module_dir(cloud), module, ignore=shutil.ignore_patterns("examples"))
    main = module / "main.tf"
    text = main.read_text()
    assert old in text, old
    main.write_text(text.replace(old, new, 1))
    found_problems = least_privilege.problems(cloud, module)
    assert any(found in problem for problem in found_problems), found_problems


def test_an_azure_resource_type_whose_delete_the_role_lacks_is_found(tmp_path):
    """ARM deletes a group's contents with the caller's permissions: a type the module gains
    needs its delete action in the role, or the VM can no longer end itself."""
    module = tmp_path / "azure"
    shutil.copytree(packaged.module_dir("azure"), module, ignore=shutil.ignore_patterns("examples"))
    with (module / "main.tf").open("a") as out:
        out.write('\nresource "azurerm_nat_gateway" "this" {\n  name = "x"\n}\n')
    found = least_privilege.problems("azure", module)
    assert any("azurerm_nat_gateway: say what deleting it takes" in p for p in found), found


@pytest.mark.parametrize("cloud", VM_CLOUDS)
def test_without_a_data_identity_the_module_gets_none(cloud):
    instance = clouds.get(cloud)
    _, variable, _ = DATA_IDENTITY[cloud]
    assert module_vars(instance, spec_on(cloud))[variable] is None


@pytest.mark.parametrize("cloud", VM_CLOUDS)
def test_a_data_identity_reaches_its_module(cloud):
    instance = clouds.get(cloud)
    field, variable, value = DATA_IDENTITY[cloud]
    spec = spec_on(cloud, **{field: value})
    assert module_vars(instance, spec)[variable] == value


@pytest.mark.parametrize("cloud", [*VM_CLOUDS, "local"])
@pytest.mark.parametrize("other", VM_CLOUDS)
def test_another_clouds_data_identity_is_refused_naming_its_flag(cloud, other, tmp_path):
    if cloud == other:
        return
    from cml_infra.spec import DATA_IDENTITY_FLAGS
    from cml_infra.state import StateDir

    field, _, value = DATA_IDENTITY[other]
    flag = next(f for f in DATA_IDENTITY_FLAGS if f[2:].replace("-", "_") == field)
    spec = spec_on(cloud, **{field: value})
    with pytest.raises(UsageError) as raised:
        resolve(clouds.get(cloud, StateDir(tmp_path)), spec)
    assert raised.value.source == flag
    assert str(raised.value).startswith(f"{flag}: ")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("cloud", "value"),
    [
        ("aws", "arn:aws:iam::123456789012:instance-profile/data"),
        ("aws", "a" * 129),
        ("gcp", "data-reader"),
        ("gcp", "someone@example.com"),
        ("azure", "data-reader"),
        ("azure", "/subscriptions/0/resourceGroups/g/providers/Microsoft.Compute/images/x"),
    ],
)
def test_a_data_identity_its_cloud_would_not_take_is_refused(cloud, value):
    field, _, _ = DATA_IDENTITY[cloud]
    with pytest.raises(UsageError) as raised:
        resolve(clouds.get(cloud), spec_on(cloud, **{field: value}))
    assert raised.value.source == "--" + field.replace("_", "-")
