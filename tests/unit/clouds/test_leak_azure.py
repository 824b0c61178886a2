"""Nothing left by an Azure runner whose VM is gone: a Spot eviction (policy Delete) deletes the
VM alone, and its resource group (network, NIC, public IP, security group) is found by tag and
deleted whole by `cleanup`, with no state at all.

The real ResourceManagementClient talks to tests/fakes/azure.py's FakeArm, in process.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
from typer.testing import CliRunner

from cml_infra.cli import app
from cml_infra.clouds import azure
from cml_infra.clouds import tags as keys
from tests.fakes.azure import FakeArm, FakeCredential

SUB = "sub-1"
HOUR = 3600
RUNNERS = 50
NETWORK = ("virtualNetworks", "networkInterfaces", "publicIPAddresses", "networkSecurityGroups")


@pytest.fixture
def arm(monkeypatch):
    """FakeArm behind every client the cloud makes, with a fake credential; no socket opens."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"network connection attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    fake = FakeArm(SUB)
    made = azure._resources
    monkeypatch.setattr(azure, "_resources", lambda transport=None: made(fake))
    monkeypatch.setattr(azure, "_credential", FakeCredential)
    monkeypatch.setenv("ARM_SUBSCRIPTION_ID", SUB)
    yield fake
    assert fake.violations == []


def ours(name: str, launch_id: str, *, age: float = 2 * HOUR) -> dict[str, str]:
    """The tags terraform/azure puts on every resource of a launch that began `age` ago."""
    now = time.time()
    return {
        keys.MANAGED: "true",
        keys.NAME: name,
        keys.EXPIRES: str(int(now + 22 * HOUR)),
        keys.LAUNCH_ID: launch_id,
        keys.CREATED: str(int(now - age)),
    }


def runner_group(arm: FakeArm, group: str, tags: dict[str, str] | None, *, vm: bool) -> str:
    """A runner's resource group as the module makes it, with its VM unless `vm` is False."""
    arm.add_group(group, "eastus", tags)
    for kind in NETWORK:
        arm.add_resource(group, f"Microsoft.Network/{kind}", group, tags)
    if vm:
        arm.add_vm(group, group, tags)
    return group


@pytest.fixture
def ledger(arm):
    """50 runners whose Spot VMs were evicted, beside what cleanup must not touch: a group
    without our tag, one another tool tagged (our key, its value), a runner of ours younger
    than the grace (its `up` has made the group, not yet the VM), and a live runner of ours."""
    evicted = []
    for n in range(RUNNERS):
        group = runner_group(arm, f"cml-infra-gpu-{n}-0a1b2c{n:02d}",
                             ours(f"gpu-{n}", f"launch{n:04d}abcd"), vm=True)  # fmt: skip
        [vm] = [r for r in arm.in_group(group) if r["type"].endswith("/virtualMachines")]
        arm.remove_resource(vm["id"])  # the eviction: the VM alone
        evicted.append(group)
    decoys = [
        runner_group(arm, "someone-elses", None, vm=False),
        runner_group(arm, "other-tool", {**ours("x", "launch9997"), keys.MANAGED: "no"}, vm=False),
        runner_group(arm, "cml-infra-young", ours("young", "launch9998abcd", age=60), vm=False),
        runner_group(arm, "cml-infra-live", ours("live", "launch9999abcd"), vm=True),
    ]
    return {"evicted": evicted, "decoys": decoys}


def test_cleanup_without_state_deletes_every_group_whose_vm_is_gone(
    ledger, arm, tmp_path, monkeypatch
):
    monkeypatch.setenv("CML_INFRA_HOME", str(tmp_path / "empty-state"))
    monkeypatch.delenv("CI", raising=False)
    decoys = {group: [r["id"] for r in arm.in_group(group)] for group in ledger["decoys"]}
    args = ["cleanup", "--cloud", "azure", "--orphan-grace", "10m", "--json", "--yes"]

    result = CliRunner().invoke(app, args)

    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == RUNNERS
    assert {(row["kind"], row["rule"], row["action"], row["result"]) for row in rows} == {
        ("azurerm_resource_group", "leftover", "reap", "deleted (cloud API)")
    }
    assert {row["id"] for row in rows} == set(ledger["evicted"])
    # Nothing of those launches is left: no group, nothing that was in one.
    launches = {f"launch{n:04d}abcd" for n in range(RUNNERS)}
    left = [g for g in arm.groups.values() if g.get("tags", {}).get(keys.LAUNCH_ID) in launches]
    assert left == []
    assert [r for group in ledger["evicted"] for r in arm.in_group(group)] == []
    # Every decoy is untouched, with everything in it.
    assert set(arm.groups) == set(ledger["decoys"])
    assert {group: [r["id"] for r in arm.in_group(group)] for group in decoys} == decoys
    assert len(arm.requests_for("DELETE")) == RUNNERS
    assert not (tmp_path / "empty-state" / "runners").exists()

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == []
