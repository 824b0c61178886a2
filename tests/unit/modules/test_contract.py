"""cml_infra.modules.contract: what cml-infra passes to each cloud's module and reads back, held
against the packaged modules, and the one-line refusals of a fork or a --var that break it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cml_infra import clouds, packaged
from cml_infra.errors import UsageError
from cml_infra.modules import contract, hcl
from cml_infra.spec import Network

CLOUDS = sorted(clouds.classes())


def terms(cloud: str) -> contract.Contract:
    return contract.of(clouds.classes()[cloud])


@pytest.mark.parametrize("cloud", CLOUDS)
def test_the_packaged_module_declares_everything_the_contract_names(cloud):
    found = hcl.read(packaged.module_dir(terms(cloud).module))
    assert set(terms(cloud).passed) <= set(found.variables)
    assert set(terms(cloud).outputs) <= found.outputs
    # And needs nothing else: each variable without a default is one cml-infra always passes.
    assert {n for n, v in found.variables.items() if v.required} <= set(terms(cloud).variables)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_every_variable_says_which_flag_sets_it(cloud):
    """A cloud that starts passing a variable says here which flag sets it: that is what a
    --var of it is told to use instead."""
    unnamed = [name for name in terms(cloud).variables if name not in contract.SET_BY]
    assert unnamed == []


def test_the_outputs_are_what_up_and_listed_id_read():
    assert terms("local").outputs == ("id",)
    assert terms("aws").outputs == ("id", "region")
    assert set(terms("gcp").outputs) == {"id", "name", "zone"}
    assert set(terms("azure").outputs) == {"id", "resource_group_name"}


def test_a_network_flag_passes_its_variable_only_when_given():
    aws = terms("aws")
    assert aws.flag_variables["subnet_id"] == "--subnet-id"
    assert "subnet_id" not in aws.variables
    # The local cloud takes no network flag: it passes no variable for one.
    assert terms("local").flag_variables == {}


def test_every_network_flag_is_probed():
    """A new Network field needs a sample value, or no cloud's variable for it is found."""
    assert set(Network.FLAGS) <= set(contract._NETWORK_SAMPLES)


def interface(tmp_path: Path, text: str) -> hcl.Interface:
    (tmp_path / "main.tf").write_text(text)
    return hcl.read(tmp_path)


LOCAL_OUTPUTS = 'output "id" { value = 1 }\n'


def local_passed() -> dict[str, object]:
    return {name: "x" for name in terms("local").variables}


def declared(names, extra: str = "") -> str:
    return "".join(f'variable "{name}" {{}}\n' for name in names) + extra


def test_a_fork_that_fits_passes(tmp_path):
    fork = interface(tmp_path, declared(terms("local").variables, LOCAL_OUTPUTS))
    contract.check_fork(terms("local"), fork, local_passed(), {}, "in DIR")


def test_a_fork_is_told_everything_it_lacks_in_one_line(tmp_path):
    names = [n for n in terms("local").variables if n not in ("tags", "name")]
    fork = interface(tmp_path, declared(names, 'variable "kms_key" {}\n'))
    with pytest.raises(UsageError) as caught:
        contract.check_fork(terms("local"), fork, local_passed(), {}, "in DIR")
    message = str(caught.value)
    assert message.startswith("--modules-dir: the local module in DIR does not fit")
    assert "declares no variable name, tags" in message
    assert "declares no output id" in message
    assert "requires kms_key, which cml-infra does not set (give --var kms_key=VALUE)" in message
    assert "\n" not in message


def test_a_required_variable_given_by_var_is_fine(tmp_path):
    fork = interface(
        tmp_path, declared(terms("local").variables, LOCAL_OUTPUTS + 'variable "k" {}')
    )
    contract.check_fork(terms("local"), fork, local_passed(), {"k": "v"}, "in DIR")


def test_a_flag_variable_the_fork_lacks_names_its_flag(tmp_path):
    aws = terms("aws")
    fork = interface(tmp_path, declared(aws.variables, 'output "id" {}\noutput "region" {}\n'))
    passed = {**{name: "x" for name in aws.variables}, "subnet_id": "subnet-1"}
    with pytest.raises(
        UsageError, match=r"declares no variable subnet_id \(passed with --subnet-id\)"
    ):
        contract.check_fork(aws, fork, passed, {}, "in DIR")
    # Without the flag the fork needs no such variable.
    contract.check_fork(aws, fork, {name: "x" for name in aws.variables}, {}, "in DIR")


@pytest.mark.parametrize(
    ("variable", "flag"),
    [("name", "--name"), ("instances_root", "--state-dir"), ("tags", "--tag")],
)
def test_a_var_of_what_cml_infra_sets_names_the_flag(variable, flag):
    found = hcl.read(packaged.module_dir("local"))
    with pytest.raises(UsageError) as caught:
        contract.check_vars(terms("local"), found, {variable: "x"}, "packaged with cml-infra")
    assert str(caught.value) == (
        f"--var: {variable} is set by cml-infra from {flag}; use that instead"
    )


def test_a_var_of_a_network_variable_names_the_network_flag():
    found = hcl.read(packaged.module_dir("aws"))
    with pytest.raises(UsageError, match="subnet_id is set by cml-infra from --subnet-id"):
        contract.check_vars(terms("aws"), found, {"subnet_id": "subnet-1"}, "packaged")


def test_an_undeclared_var_lists_what_var_may_set():
    found = hcl.read(packaged.module_dir("gcp"))
    with pytest.raises(UsageError) as caught:
        contract.check_vars(
            terms("gcp"), found, {"kms": "k", "boot_disk_type": "pd-ssd"}, "packaged with cml-infra"
        )
    message = str(caught.value)
    assert message.startswith("--var: kms: not a variable of the gcp module packaged with ")
    settable = message.partition("--var may set: ")[2].split(", ")
    assert "boot_disk_kms_key_self_link" in settable and "gpu_image_family" in settable
    assert "name" not in settable and "network" not in settable, "set by cml-infra or a flag"


def test_an_undeclared_var_says_where_it_came_from():
    found = hcl.read(packaged.module_dir("local"))
    with pytest.raises(UsageError, match=r"kms \(set in \[vars\] of F\): not a variable"):
        contract.check_vars(
            terms("local"), found, {"kms": 1}, "packaged", lambda names: " (set in [vars] of F)"
        )
