"""What cleanup does to a match, registered by name: `destroy` an instance, `deregister` a
runner registration, `forget` a stale record. Each is idempotent and returns what came of it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, TypeVar

from cml_infra import clouds
from cml_infra.cleanup.world import InstanceItem, RecordItem, RegistrationItem, World, made_by
from cml_infra.errors import CmlInfraError
from cml_infra.registry import Registry

I = TypeVar("I", InstanceItem, RegistrationItem, RecordItem)  # noqa: E741


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
    its launch id); a runner instance's registration goes with it.

    A record of the same name but another launch is not this instance's: its `down` would
    destroy that other runner and leave this one."""

    def run(self, item: InstanceItem, world: World, reason: str) -> str:
        instance = item.instance
        state = world.state
        record = _record(world, instance.name)
        if (
            state is not None
            and record is not None
            and made_by(record, instance)
            and state.workspace(instance.name).is_dir()
        ):
            _down(world, instance.name, reason)
            result = "destroyed (terraform)"
        else:
            clouds.get(instance.cloud, state).terminate([instance.id])
            result = "destroyed (cloud API)"
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
        _down(world, item.record.name, reason)
        return "leftovers destroyed, record closed"


def _record(world: World, name: str) -> Any:
    return next((r for r in world.records if r.name == name and r.state != "destroyed"), None)


def _down(world: World, name: str, reason: str) -> None:
    from cml_infra.lifecycle import down

    assert world.state is not None
    down.down([name], world.state, None, reason)
