"""What cleanup does to a match, registered by name: `destroy` an instance, `deregister` a
runner registration, `forget` a stale record, `reap` a leftover. Each is idempotent and returns
what came of it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from cml_infra import clouds
from cml_infra.cleanup.world import (
    InstanceItem,
    LeftoverItem,
    RecordItem,
    RegistrationItem,
    World,
    made_by,
)
from cml_infra.errors import CmlInfraError
from cml_infra.registry import Registry

if TYPE_CHECKING:
    from cml_infra.clouds.base import Cloud, ManagedInstance
    from cml_infra.record import RunnerRecord

I = TypeVar("I", InstanceItem, RegistrationItem, RecordItem, LeftoverItem)  # noqa: E741


class Action(ABC, Generic[I]):
    name: ClassVar[str]
    # Counted against --max-destroy.
    destructive: ClassVar[bool] = True

    @abstractmethod
    def run(self, item: I, world: World, reason: str) -> str:
        """Do it (`reason` is what a record keeps as its end); the result as the report shows
        it. Raise CmlInfraError on failure."""


ACTIONS: Registry[type[Action[Any]]] = Registry("action")
action = ACTIONS.register


@action("destroy")
class Destroy(Action[InstanceItem]):
    """Through Terraform where this state dir has the workspace of the launch that made the
    instance, else the cloud API (by the instance's id; AWS then deletes the security groups of
    its launch id, Azure deletes the whole resource group), and then whatever else of its launch
    the cloud listed as leftovers; a runner instance's registration goes with it.

    A record of the same name but another launch is not this instance's: its `down` would
    destroy that other runner and leave this one."""

    def run(self, item: InstanceItem, world: World, reason: str) -> str:
        instance = item.instance
        state = world.state
        record = _record(world, instance)
        if state is not None and record is not None and state.has_workspace(state.key(record)):
            _down(world, state.key(record), reason)
            result = "destroyed (terraform)"
        else:
            cloud = clouds.get(instance.cloud, state)
            cloud.terminate([instance.id])
            result = "destroyed (cloud API)" + _reap_launch(cloud, world, instance)
        if world.forge is not None and world.our_runner(instance):
            try:
                world.forge.deregister(instance.name)
            except CmlInfraError as exc:
                result += f"; deregistration failed: {exc}"
        return result


@action("deregister")
class Deregister(Action[RegistrationItem]):
    destructive = False

    def run(self, item: RegistrationItem, world: World, reason: str) -> str:
        assert world.forge is not None  # a registration is only ever listed by a forge
        return "deregistered" if world.forge.deregister_id(item.runner.id) else "already gone"


@action("forget")
class Forget(Action[RecordItem]):
    """A record whose instance is gone or whose command died: destroy what its workspace and
    tags still hold, then close it."""

    def run(self, item: RecordItem, world: World, reason: str) -> str:
        assert world.state is not None
        _down(world, world.state.key(item.record), reason)
        return "leftovers destroyed, record closed"


@action("reap")
class Reap(Action[LeftoverItem]):
    """Delete what a module made beside an instance that is gone (its cloud knows how)."""

    def run(self, item: LeftoverItem, world: World, reason: str) -> str:
        clouds.get(item.leftover.cloud, world.state).delete_leftovers([item.leftover])
        return "deleted (cloud API)"


def _reap_launch(cloud: Cloud, world: World, instance: ManagedInstance) -> str:
    """Delete the leftovers of the instance's launch, once it is terminated (part of destroying
    it: the report says only what remains). Only by launch id: an instance older than launch
    ids shares its name, not its launch, with what it left, and the `leftover` rule finds those
    on a later run."""
    if not instance.launch_id:
        return ""
    same = [
        found
        for found in world.leftovers
        if found.cloud == instance.cloud and found.launch_id == instance.launch_id
    ]
    if not same:
        return ""
    try:
        cloud.delete_leftovers(same)
    except CmlInfraError as exc:
        return f"; its leftovers remain for the next run: {exc}"
    return ""


def _record(world: World, instance: ManagedInstance) -> RunnerRecord | None:
    """The live record of the launch that made `instance` (not merely one of its name)."""
    return next((r for r in world.records if r.state != "destroyed" and made_by(r, instance)), None)


def _down(world: World, key: str, reason: str) -> None:
    from cml_infra.lifecycle import down

    assert world.state is not None
    down.down([key], world.state, None, reason)
