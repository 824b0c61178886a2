"""`up`: claim the name, register with the forge, apply the first attempt that fits, wait for
the runner, record it running.

`up` either returns a running instance or leaves nothing behind: any failure, Ctrl-C or SIGTERM
after the record is written rolls back what was created, and a rollback that cannot finish
leaves a `failed` record for `down` or `cleanup` to finish.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from cml_infra import placement, render, ui
from cml_infra.backends.base import BackendError
from cml_infra.errors import CmlInfraError, Interrupted, UsageError
from cml_infra.forge import Secret
from cml_infra.forge.base import Forge, Registration, RunnerInfo
from cml_infra.lifecycle import failover, prepare, teardown
from cml_infra.lifecycle.guard import SignalGuard
from cml_infra.lifecycle.prepare import Launch
from cml_infra.placement import Attempt
from cml_infra.record import RunnerRecord, ci_run
from cml_infra.spec import OPTIMIZE_PRICE, RunnerSpec
from cml_infra.state import BrokenRecord, StateDir
from cml_infra.task.channel import WORKDIR, write_private_bytes
from cml_infra.terraform import Engine, EventHandler, TerraformError

# What the workspace a backend keeps has in place of the startup script, which holds the
# runner's registration secret (destroy needs valid variables, not their values).
STAND_IN_SCRIPT = (
    "#!/bin/sh\n# Not kept in the ledger: the startup script held a registration secret.\nexit 0\n"
)
# `up` fails when another command works on the name; it waits only this long, so that a
# cleanup that just looks whether anyone holds the lock (StateDir.held) does not fail it.
CLAIM_WAIT_SECONDS = 2.0


def up(
    spec: RunnerSpec,
    state: StateDir,
    terraform: str | None,
    token: Secret = None,
    avoid: RunnerRecord | None = None,
) -> RunnerRecord:
    """`avoid`: a runner whose placement (region, zone, market) is tried last, as the cloud
    just reclaimed its spot instance there."""
    launch = prepare.plan(spec, state, terraform)
    if avoid is not None:
        launch = replace(launch, attempts=_avoiding(launch.attempts, avoid))
    forge = launch.forge(token)
    engine = Engine.discover(terraform, state.engine_home())
    # Both before the state dir is touched: bad input creates nothing. This state dir's own
    # answer comes first, and is asked again under the name's lock.
    state.check()
    key = state.key_of(spec.name, launch.launch_id)
    _free_name(state, spec.name, key)
    _refuse_a_name_in_use(launch)
    # What only the cloud's API can say of the input (`render` asks nothing of it).
    launch.cloud.preflight(spec, sorted({a.placement.region for a in launch.attempts}))
    if forge is not None:
        # Before anything is made: a --runner-version GitHub does not have is bad input.
        launch = replace(launch, runner_release=forge.resolve_runner(spec, launch.boot))
    with SignalGuard() as guard, state.lock(key, wait=CLAIM_WAIT_SECONDS, claim=True):
        return _Up(launch, state, engine, forge, guard).run()


class _Up:
    """One `up`, step by step; `created` says whether the cloud may hold anything of it."""

    def __init__(
        self,
        launch: Launch,
        state: StateDir,
        engine: Engine,
        forge: Forge | None,
        guard: SignalGuard,
    ) -> None:
        self.launch, self.state, self.engine, self.forge, self.guard = (
            launch, state, engine, forge, guard,
        )  # fmt: skip
        self.name = launch.spec.name
        self.key = state.key_of(self.name, launch.launch_id)
        self.created = self.registered = False
        # `where: why` of each attempt that failed before the one that is made.
        self.failed: list[str] = []

    def run(self) -> RunnerRecord:
        previous = _free_name(self.state, self.name, self.key)
        record = self.claim()
        try:
            record = self.open_channel(record)
            registration = self.register()
            record, instance = self.apply_first_that_fits(record, registration)
            self.wait_online()
        except BaseException as exc:
            self.roll_back(record, exc, previous)
            raise
        record = self.state.save(
            record.replace(
                **{"state": "running", "instance_id": instance["id"], "outputs": instance}
            )
        )
        self.state.put_away(self.key)
        self.guard.commit()
        return record

    def claim(self) -> RunnerRecord:
        """The record, `provisioning`, before anything is created: whatever happens next,
        `down` and `cleanup` know the name."""
        spec, launch = self.launch.spec, self.launch
        record = self.state.save(
            RunnerRecord(
                name=spec.name,
                cloud=launch.cloud.name,
                state="provisioning",
                created_at=launch.created_at,
                updated_at=launch.created_at,
                expires_at=launch.expires_at,
                idle_timeout=spec.idle_timeout,
                ttl=spec.ttl,
                single=spec.single,
                labels=spec.all_labels,
                command=spec.command,
                engine=self.engine.argv,
                forge=self.forge.describe() if self.forge else None,
                launch_id=launch.launch_id,
                # The workflow run it serves, for `report --cost`; failover keeps it.
                ci=ci_run(),
                workdir=None if spec.workdir is None else str(spec.workdir),
                task_outputs=spec.outputs,
                reports=_reports(launch, self.state),
                **launch.attempts[0].placement.record_fields(),
            )
        )
        # A reused name starts clean: no workspace, and no log of the runner it replaces.
        self.state.remove_workspace(self.key)
        shutil.rmtree(self.state.log_dir(self.key), ignore_errors=True)
        return record

    def open_channel(self, record: RunnerRecord) -> RunnerRecord:
        """The task's folder stored where the instance reads it, under the claimed key, and
        the URLs of the agent's reports signed. A runner or an idle instance goes without its
        reports when the backend cannot sign (a credential with no key to sign with); a task
        cannot go without its folder."""
        try:
            self.launch = self.launch.signed_task(self.state)
        except BackendError as exc:
            if self.launch.spec.command:
                raise
            ui.warn(f"{self.name}: its agent will send no status or log back: {exc}")
            self.launch = self.launch.without_reports()
            return self.state.save(record.replace(reports=None))
        return record

    def register(self) -> Registration | None:
        if self.forge is None:
            return None
        registration = self.forge.register(self.name, self.launch.labels, self.launch.spec.single)
        self.registered = True
        self.guard.check()
        return registration

    def apply_first_that_fits(
        self, record: RunnerRecord, registration: Registration | None
    ) -> tuple[RunnerRecord, dict[str, Any]]:
        """Apply the attempts in turn until one creates the instance; what a failed one made
        is destroyed before the next starts elsewhere."""
        launch = self.launch
        context = launch.context(launch.startup_script(registration))
        workspace = self.state.workspace(self.key)
        attempt = launch.attempts[0]
        if launch.spec.optimize == OPTIMIZE_PRICE:
            ui.info(f"{self.name}: {placement.describe(launch.spec, launch.attempts)}")
        # Failed attempts whose error holds for their whole region and market.
        left: list[Attempt] = []
        while True:
            if attempt.number:
                update = attempt.placement.record_fields()
                record = self.state.save(record.replace(**update))
            _write(workspace, launch, attempt, context)
            self.state.configure_workspace(self.key, workspace)
            # Before apply: whatever apply creates, another machine can destroy it from here.
            stand_in = launch.context(STAND_IN_SCRIPT)
            self.state.publish_workspace(self.key, workspace, launch.variables(attempt, stand_in))
            try:
                instance = self.apply(workspace, attempt)
            except TerraformError as exc:
                following = (
                    None
                    if self.guard.received
                    else failover.next_attempt(launch.cloud, exc, launch.attempts, attempt, left)
                )
                if following is None:
                    raise
                if failover.leaves_region(launch.cloud, exc):
                    left.append(attempt)
                self.clear(record, exc, attempt, following)
                self.failed.append(f"{attempt.placement.where}: {exc}")
                attempt = following
            else:
                if self.failed:
                    ui.info(
                        f"{self.name}: created in {attempt.placement.where} on attempt "
                        f"{len(self.failed) + 1} of {len(launch.attempts)} "
                        f"(--optimize {launch.spec.optimize}); before it: {'; '.join(self.failed)}"
                    )
                return record, instance

    def apply(self, workspace: Path, attempt: Attempt) -> dict[str, Any]:
        """init and apply one attempt; the instance's outputs."""
        self.guard.engine = self.engine
        with ui.terraform_progress(f"{self.name}: terraform init") as on_event:
            self.engine.init(workspace, on_event)
        self.guard.check()
        self.created = True  # from here on the cloud may hold something of ours
        where = f" in {attempt.placement.where}" if attempt.number else ""
        title = f"{self.name}: creating on {self.launch.cloud.name}{where}"
        with ui.terraform_progress(title) as on_event:
            outputs = self.apply_by_deadline(workspace, on_event)
        self.guard.check()
        instance = outputs.get("instance")
        if not isinstance(instance, dict) or not instance.get("id"):
            raise CmlInfraError(
                f"{self.name}: terraform apply reported no instance (its outputs lack "
                f"instance.id); is {self.engine.label} a Terraform or OpenTofu?"
            )
        return instance

    def apply_by_deadline(self, workspace: Path, on_event: EventHandler) -> dict[str, Any]:
        """The engine's apply, interrupted once (SIGINT, as Terraform wants: it stops and keeps
        its state) when it runs past --attempt-timeout; `up` then waits for it to stop, and the
        caller destroys what it made and moves on. An apply that finishes anyway counts."""
        seconds = self.launch.spec.attempt_timeout
        cut = threading.Event()

        def expire() -> None:
            if self.guard.received:
                return  # a Ctrl-C already stopped it: that is no timeout
            cut.set()  # before the signal: the apply may fail at once
            if not self.engine.interrupt():
                cut.clear()  # nothing ran: the apply had just ended

        timer = threading.Timer(seconds, expire)
        timer.daemon = True
        timer.start()
        try:
            return self.engine.apply(workspace, on_event)
        except TerraformError as exc:
            if cut.is_set():
                raise failover.AttemptTimedOut(seconds, exc) from exc
            raise
        finally:
            timer.cancel()

    def clear(
        self, record: RunnerRecord, error: TerraformError, failed: Attempt, following: Attempt
    ) -> None:
        """Destroy whatever the failed attempt created before the next one starts elsewhere;
        if that fails, up stops and rolls back as for any other failure."""
        ui.warn(
            f"{record.name}: could not create in {failed.placement.where} ({error}); "
            f"trying {following.placement.where}"
        )
        problems = teardown.destroy(self.engine, self.state, self.launch.cloud, record)
        if problems:
            raise CmlInfraError(f"{error}; cleaning up before the next attempt failed: {problems}")
        self.state.remove_workspace(self.key)

    def wait_online(self) -> None:
        if self.forge is None or not self.launch.spec.wait:
            return
        ui.info(f"{self.name}: waiting for the runner to come online")
        try:
            self.forge.wait_online(
                self.name, self.launch.spec.startup_timeout, sleep=self.guard.sleep
            )
        except CmlInfraError as exc:
            ended = self.ended_itself()
            if ended is None:
                raise
            raise CmlInfraError(f"{exc}: {ended}") from None
        self.guard.check()

    def ended_itself(self) -> str | None:
        """When the runner never came online and its instance is gone, why: the agent ends the
        instance itself when the GPUs never appear or the runner cannot start. The forge cannot
        tell an instance that died from one still booting; the cloud's listing can. None while
        it runs, or when the cloud cannot be asked."""
        launch = self.launch
        regions = sorted({attempt.placement.region for attempt in launch.attempts})
        try:
            found = launch.cloud.list_managed(regions)
        except CmlInfraError:
            return None
        # `destroying`: the agent reports that it is ending the instance (the local cloud).
        mine = [i for i in found if i.launch_id == launch.launch_id]
        if any(not i.dead and i.state != "destroying" for i in mine):
            return None
        said = _end_reason(launch.cloud.instance_log(self.name))
        if said:
            return f"the instance ended itself before the runner came online: {said}"
        return (
            "the instance ended before the runner came online (its agent ends it when the GPUs "
            "never appear or the runner cannot start, and a spot instance may be reclaimed; its "
            "log went with it)"
        )

    def roll_back(
        self, record: RunnerRecord, exc: BaseException, previous: RunnerRecord | None
    ) -> None:
        """Undo what this `up` did; a signal that came meanwhile makes it exit 130."""
        self.guard.rolling_back = True
        failure = Interrupted(self.guard.received) if self.guard.received else exc
        teardown.rollback(
            self.engine, self.state, self.launch.cloud, record, failure, self.created, previous
        )
        if self.registered and self.forge is not None:
            teardown.deregister(self.forge, self.name)
        if failure is not exc:
            raise failure from None


def _free_name(state: StateDir, name: str, key: str) -> RunnerRecord | None:
    """The destroyed record a new runner replaces under the same key (in a state dir, the
    name's); a record of the name that is not destroyed is refused."""
    try:
        existing = state.named(name)
    except BrokenRecord as exc:
        raise UsageError(
            "--name", f"{name!r} is in use ({exc}); run `cml-infra down {name}` first"
        ) from None
    live = [record for record in existing if record.state != "destroyed"]
    if live:
        raise UsageError(
            "--name",
            f"{name!r} is in use (state {live[0].state}"
            + (f", launch {live[0].launch_id}" if state.remote else "")
            + f"); pick another name or run `cml-infra down {name}` first",
        )
    return next((record for record in existing if state.key(record) == key), None)


def _avoiding(attempts: list[Attempt], record: RunnerRecord) -> list[Attempt]:
    """The attempts in the record's region and market (and zone, where its outputs name one)
    moved to the end."""
    zone = record.outputs.get("zone")
    there = [
        a
        for a in attempts
        if (a.placement.region, a.placement.spot) == (record.region, record.spot)
        and (zone is None or a.placement.zone in (None, zone))
    ]
    others = [a for a in attempts if a not in there]
    return [replace(a, number=n) for n, a in enumerate(others + there)]


def _reports(launch: Launch, state: StateDir) -> str | None:
    """Where the agent reports (RunnerRecord.reports)."""
    if launch.task is None:
        return None
    return "bucket" if state.remote else "folder"


def _refuse_a_name_in_use(launch: Launch) -> None:
    """Refuse a name that a live instance of another launch already has where `up` may create
    (this cloud, the regions of its attempts), before anything is created. Teardown tells two
    launches apart by their launch ids, but a job's `runs-on: cml-infra-<name>` cannot, nor can
    a cloud that wants instance names unique (GCP answers a second one with a 409).

    Listing is a check in advance, not a guard: two `up`s of one name may race past it, which
    is why teardown never acts on a name. When the cloud cannot be asked (no credentials, no
    network), `up` warns and goes on rather than fail here: Terraform then fails the same way,
    with the cloud's own diagnostic, and a cloud that can be reached by Terraform but not
    listed (a narrower role) should not stop a launch that teardown keeps safe anyway.
    """
    spec, cloud = launch.spec, launch.cloud
    regions = sorted({attempt.placement.region for attempt in launch.attempts})
    try:
        found = cloud.list_managed(regions)
    except CmlInfraError as exc:  # each cloud turns its SDK's failures into this
        ui.warn(
            f"{spec.name}: could not check whether a live {cloud.name} instance already uses "
            f"this name ({exc}); going on"
        )
        return
    taken = sorted(
        f"{i.id} in {i.region} (launch {i.launch_id or 'unknown'}, {i.state})"
        for i in found
        if i.name == spec.name and i.launch_id != launch.launch_id
    )
    if taken:
        raise UsageError(
            "--name",
            f"{spec.name!r} is in use on {cloud.name} by a live instance of another launch: "
            f"{'; '.join(taken)}; pick another name (if it is yours, `cml-infra down` or "
            "`cml-infra cleanup` ends it first)",
        )


def _write(workspace: Path, launch: Launch, attempt: Attempt, context: Any) -> None:
    render.write_workspace(
        workspace,
        launch.cloud,
        launch.spec,
        attempt.placement,
        context,
        launch.variables(attempt, context),
    )


def reusable(
    spec: RunnerSpec, state: StateDir, token: Secret, terraform: str | None = None
) -> RunnerInfo | None:
    """An online idle runner of the scope that has every asked-for label (`up --reuse-idle`
    then creates nothing). Input is checked first, as `up` would, so that bad input is an
    error whether or not a runner is free."""
    forge = prepare.plan(spec, state, terraform).forge(token)
    return None if forge is None else forge.idle_runner(spec.labels)


def render_only(spec: RunnerSpec, state: StateDir, out: Path) -> Launch:
    """Write the workspace of `up`'s first attempt; its fallbacks are checked, not written. A
    task's folder that the instance reads from this machine (the local cloud) is packed beside
    it, so that the workspace applies as it is; through a bucket it is `up`'s to store."""
    launch = prepare.plan(spec, state)
    beside = launch.packed is not None and "file" in ((launch.task or {}).get("workdir") or {})
    if beside:
        launch = launch.reading_workdir(out / WORKDIR)
    context = launch.context(launch.startup_script(None))
    created = None
    try:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UsageError("--output", f"{out} exists and is not an empty folder")
        created = _first_missing(out)
        _write(out, launch, launch.attempts[0], context)
        if beside and launch.packed is not None:
            write_private_bytes(out / WORKDIR, launch.packed.data)
        state.configure_workspace(state.key_of(spec.name, launch.launch_id), out)
    except OSError as exc:
        if created is not None:  # half a workspace is worse than none
            shutil.rmtree(created, ignore_errors=True)
        raise UsageError("--output", f"cannot write {out} ({exc.strerror or exc})") from None
    return launch


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (what writing it creates)."""
    missing = None
    while not path.exists():
        missing, path = path, path.parent
    return missing


# What the agent logs as it ends its instance (agent/loop.py, Agent._end_instance).
_ENDING = "ending the instance: "


def _end_reason(log: Path | None) -> str | None:
    """The reason of the last `ending the instance: …` line of an instance log, where the cloud
    keeps the log for the launcher (the local cloud)."""
    if log is None:
        return None
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    found = [line.partition(_ENDING)[2] for line in lines if _ENDING in line]
    return found[-1].strip() if found else None
