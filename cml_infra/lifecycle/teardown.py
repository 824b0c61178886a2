"""What `down`, a rollback and a failover share: destroy a runner's resources, roll back a
failed `up`, remove a registration."""

from __future__ import annotations

from cml_infra import ui
from cml_infra.clouds.base import Cloud
from cml_infra.errors import CmlInfraError
from cml_infra.forge.base import Forge
from cml_infra.record import RunnerRecord
from cml_infra.state import StateDir
from cml_infra.terraform import Engine


def destroy(engine: Engine, state: StateDir, cloud: Cloud, record: RunnerRecord) -> str:
    """Terraform destroy where a workspace exists, then the cloud API for anything it missed;
    what went wrong, or "".

    The second step matters when apply was cut short: a half-created resource may be tainted,
    and Terraform runs no destroy-time step for tainted resources.
    """
    problems = []
    key = state.key(record)
    workspace = state.workspace(key)
    if state.fetch_workspace(key):
        try:
            with ui.terraform_progress(f"{record.name}: destroying on {cloud.name}") as on_event:
                if not (workspace / ".terraform").is_dir():
                    engine.init(workspace, on_event)
                engine.destroy(workspace, on_event)
        except CmlInfraError as exc:
            problems.append(str(exc))
    try:
        leftovers = _leftovers(cloud, record)
        if leftovers:
            cloud.terminate(leftovers)
        if record.launch_id:
            # What the module made beside the instance (an Azure group whose VM was evicted, a
            # GCP service account) when Terraform could not destroy it.
            regions = [record.region] if record.region else None
            beside = [x for x in cloud.list_leftovers(regions) if x.launch_id == record.launch_id]
            if beside:
                cloud.delete_leftovers(beside)
    except CmlInfraError as exc:
        problems.append(str(exc))
    return "; ".join(problems)


def _leftovers(cloud: Cloud, record: RunnerRecord) -> list[str]:
    """The instances of this runner the cloud still lists: those tagged with its launch id.

    Never those that merely carry its name: names are chosen by people and collide (another
    team's `gpu-ci`, a re-run's `gpu-<run id>`), and a rollback that went by name destroyed
    someone else's runner. A record written before launch ids sweeps only the instance its
    Terraform outputs name, by id; anything else of it is left to `cleanup`, which finds it by
    its tags and its own rules.
    """
    if not record.launch_id and not record.instance_id:
        ui.warn(
            f"{record.name}: its record predates launch ids and names no instance, so nothing "
            "is swept by name; `cml-infra cleanup` finds leftovers by their tags"
        )
        return []
    regions = [record.region] if record.region else None
    listed = cloud.list_managed(regions)
    if record.launch_id:
        return [i.id for i in listed if i.launch_id == record.launch_id]
    recorded = cloud.listed_id(record.outputs) or record.instance_id
    ui.warn(
        f"{record.name}: its record predates launch ids; only the instance it names "
        f"({recorded}) is swept, nothing by name; `cml-infra cleanup` finds leftovers by their "
        "tags"
    )
    return [i.id for i in listed if i.id == recorded]


def rollback(
    engine: Engine,
    state: StateDir,
    cloud: Cloud,
    record: RunnerRecord,
    failure: BaseException,
    created: bool,
    previous: RunnerRecord | None,
) -> None:
    """Undo a failed `up`. Nothing created yet: the record goes (the one it replaced comes
    back). Something created: it is destroyed and the record says why `up` failed; a rollback
    that cannot finish leaves a `failed` record for `down` or `cleanup`."""
    reason = str(failure) or type(failure).__name__
    if not created:
        # Before apply starts nothing exists in the cloud (a failed init, say, of a provider
        # that cannot be downloaded), and asking the cloud would need credentials the user
        # may not have.
        state.remove_workspace(state.key(record))
        if previous is not None:
            state.save(previous)
        else:
            state.forget(state.key(record))
        ui.info(f"{record.name}: nothing was created")
        return
    ui.warn(f"{record.name}: {reason}; destroying what was created")
    problems = destroy(engine, state, cloud, record)
    if problems:
        state.save(record.replace(state="failed", error=f"{reason}; rollback failed: {problems}"))
        ui.error(
            f"{record.name}: rollback failed ({problems}); it is recorded as failed: "
            f"run `cml-infra down {record.name}` to finish"
        )
        return
    state.remove_workspace(state.key(record))
    state.save(record.replace(state="destroyed", error=f"up failed: {reason}"))
    ui.info(f"{record.name}: rolled back; nothing is left running")


def deregister(forge: Forge, name: str) -> None:
    """Remove a runner registration; a failure here is reported, and `cleanup` finds it later."""
    try:
        if forge.deregister(name):
            ui.info(f"{name}: runner registration removed from {forge.target.slug}")
    except CmlInfraError as exc:
        ui.warn(f"{name}: could not remove the runner registration ({exc})")
