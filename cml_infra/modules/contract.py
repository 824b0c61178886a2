"""The contract between cml-infra and a cloud's module, written down once: the variables it
passes (always, or only when a flag is given) and the outputs it reads back. A fork
(`--modules-dir`) is checked against it before anything is created, `modules eject` writes it
into the fork's README, and a unit test holds the packaged modules to it.

It is derived from the Cloud classes rather than listed by hand, so that it cannot drift from
what they do: the variables are the keys `module_vars` returns for a spec with no optional flag
and for one with each network flag given (`Network.FLAGS`), and the outputs are `id` (what `up`
records as the instance) and whatever `Cloud.listed_id` reads from a record's outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cml_infra.errors import CmlInfraError, UsageError

if TYPE_CHECKING:
    from cml_infra.clouds.base import Cloud
    from cml_infra.modules.hcl import Interface

# What `up` reads from every module: the instance's id, which its record keeps
# (lifecycle/up.py); each cloud's `listed_id` adds what it needs to find the instance again.
ALWAYS_READ = ("id",)

# The flag (or the fact) behind each variable cml-infra passes, for the error when `--var`
# names one: whatever a user means by it, that flag is the way to say it. A unit test fails when
# a cloud passes a variable missing here.
SET_BY: Mapping[str, str] = {
    "name": "--name",
    "launch_id": "each up's own launch id",
    "created_at": "the launch time",
    "expires_at": "--ttl",
    "max_run_duration_seconds": "--ttl",
    "startup_script": "the runner or task flags and --startup-script",
    "user_data_base64": "the runner or task flags and --startup-script",
    "custom_data_base64": "the runner or task flags and --startup-script",
    "tags": "--tag",
    "labels": "--tag",
    "instance_type": "--type, --gpu or --size",
    "machine_type": "--type, --gpu or --size",
    "vm_size": "--type, --gpu or --size",
    "gpu": "--gpu or --type",
    "accelerator_type": "--gpu",
    "accelerator_count": "--gpu",
    "spot": "--spot",
    "max_price": "--max-price",
    "max_bid_price": "--max-price",
    "availability_zone": "--region",
    "zone": "--region",
    "location": "--region",
    "image_id": "--image",
    "image": "--image",
    "source_image_id": "--image",
    "iam_instance_profile": "--instance-profile",
    "service_account_email": "--service-account",
    "user_assigned_identity_id": "--identity",
    "instances_root": "--state-dir",
    "log_archive_dir": "--state-dir",
    "ready_timeout_seconds": "the local cloud's boot timeout",
}

# A value for each network field, to see which variable giving it adds (any value the Cloud
# classes' `module_vars` take: they pass what `resolve` already checked).
_NETWORK_SAMPLES: Mapping[str, Any] = {
    "subnet_id": "subnet-0123456789abcdef0",
    "security_group_ids": ("sg-0123456789abcdef0",),
    "project": "contract-project",
    "network": "contract-network",
    "subnetwork": "contract-subnetwork",
    "disk_size_gb": 200,
    "public_ip": False,
}


@dataclass(frozen=True)
class Contract:
    """What cml-infra relies on in one cloud's module."""

    cloud: str
    module: str
    # Passed on every launch: a fork must declare each.
    variables: tuple[str, ...]
    # Passed only when the flag is given (variable → flag): a fork may leave out those it does
    # not use, and is then refused with that flag.
    flag_variables: Mapping[str, str]
    # Variables Terraform keeps out of its output (they hold the startup script).
    sensitive: tuple[str, ...]
    # Outputs of the module that cml-infra reads back.
    outputs: tuple[str, ...]

    @property
    def passed(self) -> frozenset[str]:
        """Every variable cml-infra may pass: none of them is for `--var` to set."""
        return frozenset(self.variables) | frozenset(self.flag_variables)

    def set_by(self, variable: str) -> str:
        return self.flag_variables.get(variable) or SET_BY.get(variable, "cml-infra itself")


@cache
def of(cloud_class: type[Cloud]) -> Contract:
    """The contract of a cloud's module, from what its class passes and reads."""
    from cml_infra.clouds.base import RenderContext
    from cml_infra.placement import Placement
    from cml_infra.spec import Network, RunnerSpec
    from cml_infra.state import StateDir

    # A state dir only for the paths the local cloud puts in its variables: nothing is written.
    cloud = cloud_class(StateDir(Path("/cml-infra-contract")))
    created = datetime(2030, 1, 1, tzinfo=timezone.utc)
    context = RenderContext("#!/bin/sh\nexit 0\n", created, created + timedelta(hours=1))
    spec = RunnerSpec(name="contract", cloud=cloud.name, idle_timeout=300, ttl=3600)
    placement = Placement(cloud.name, "region", "type", None)
    always = set(cloud.module_vars(spec, placement, context))
    # Every optional placement and identity at once: whatever they add is passed whenever
    # they are set, which a fork cannot know in advance, so it counts as always passed.
    fuller = replace(
        placement, zone="zone", spot=True, max_price=1.0, gpu="gpu", gpu_count=1,
        accelerator="accelerator", image="image",
    )  # fmt: skip
    identities = replace(
        spec, image="image", instance_profile="p", service_account="s@x", identity="i"
    )
    always |= set(_vars_or_none(cloud, identities, fuller, context))
    flag_variables: dict[str, str] = {}
    for name, value in _network_fields():
        given = replace(spec, network=Network(**{name: value}))
        for variable in set(_vars_or_none(cloud, given, placement, context)) - always:
            flag_variables[variable] = Network.FLAGS[name]
    reads = _Reads()
    cloud.listed_id(reads)
    return Contract(
        cloud=cloud.name,
        module=cloud.module,
        variables=tuple(sorted(always)),
        flag_variables=dict(sorted(flag_variables.items())),
        sensitive=tuple(sorted(cloud.sensitive_vars())),
        outputs=tuple(dict.fromkeys((*ALWAYS_READ, *sorted(reads.read)))),
    )


def _network_fields() -> Iterator[tuple[str, Any]]:
    from cml_infra.spec import Network

    for item in fields(Network):
        if item.name in Network.FLAGS:
            # A field without a sample is a new flag this module has not learnt: fail here.
            yield item.name, _NETWORK_SAMPLES[item.name]


def _vars_or_none(cloud: Cloud, spec: Any, placement: Any, context: Any) -> dict[str, Any]:
    # A cloud may refuse a flag it does not take: then that flag adds no variable.
    try:
        return cloud.module_vars(spec, placement, context)
    except CmlInfraError:
        return {}


class _Reads(Mapping[str, Any]):
    """Outputs that answer every key, and note which were asked for."""

    def __init__(self) -> None:
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return "contract"

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def check_fork(
    contract: Contract,
    interface: Interface,
    passed: Mapping[str, Any],
    given: Mapping[str, Any],
    where: str,
) -> None:
    """A UsageError naming --modules-dir and everything the fork (`where`: "in DIR") lacks: a
    variable cml-infra passes on this launch (`passed`), an output it reads, or a value for a
    variable the fork declares without a default that neither cml-infra nor --var (`given`)
    sets."""
    problems = []
    missing = [name for name in passed if name not in interface.variables]
    if missing:
        described = [
            f"{name} (passed with {contract.flag_variables[name]})"
            if name in contract.flag_variables
            else name
            for name in sorted(missing)
        ]
        problems.append(f"declares no variable {', '.join(described)}")
    outputs = [name for name in contract.outputs if name not in interface.outputs]
    if outputs:
        problems.append(f"declares no output {', '.join(outputs)} (cml-infra reads it)")
    unset = sorted(
        name
        for name, variable in interface.variables.items()
        if variable.required and name not in passed and name not in given
    )
    if unset:
        example = f"--var {unset[0]}=VALUE"
        problems.append(
            f"requires {', '.join(unset)}, which cml-infra does not set (give {example})"
        )
    if problems:
        raise UsageError(
            "--modules-dir",
            f"the {contract.cloud} module {where} does not fit cml-infra's contract: "
            + "; ".join(problems),
        )


def check_vars(
    contract: Contract,
    interface: Interface,
    given: Mapping[str, Any],
    where: str,
    origin: Callable[[Sequence[str]], str] = lambda names: "",
) -> None:
    """A UsageError naming --var when it sets a variable cml-infra passes itself (saying which
    flag sets it) or one the module does not declare (listing those --var may set). `origin`:
    where the values of some names came from besides --var (the config file's [vars])."""
    for name in given:
        if name in contract.passed:
            raise UsageError(
                "--var",
                f"{name}{origin([name])} is set by cml-infra from {contract.set_by(name)}; use "
                "that instead",
            )
    undeclared = sorted(name for name in given if name not in interface.variables)
    if undeclared:
        settable = sorted(name for name in interface.variables if name not in contract.passed)
        listed = ", ".join(settable) if settable else "none that cml-infra does not set itself"
        raise UsageError(
            "--var",
            f"{', '.join(undeclared)}{origin(undeclared)}: not a variable of the "
            f"{contract.cloud} module {where}; --var may set: {listed}",
        )
