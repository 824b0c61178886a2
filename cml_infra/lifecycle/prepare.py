"""Spec → Launch: every attempt resolved and every input checked before anything is created.

An unknown GPU or region, a budget the placements could exceed, a name the forge would refuse,
a startup script too large for the cloud, a module fork that does not fit the contract or a
`--var` the module refuses all fail here, with nothing written.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cml_infra import clouds, cost, forge, modules, packaged, placement, render, ui
from cml_infra.clouds.base import Boot, Cloud, RenderContext, new_launch_id
from cml_infra.errors import UsageError
from cml_infra.forge.base import Registration, RunnerRelease, registration_labels
from cml_infra.placement import Attempt
from cml_infra.spec import OPTIMIZE_PRICE, RunnerSpec
from cml_infra.state import StateDir, utcnow
from cml_infra.task.channel import Channel, channel_of
from cml_infra.task.pack import Packed, pack

if TYPE_CHECKING:
    from cml_infra.catalog.offerings import Index
    from cml_infra.forge.base import Forge


# The sources of the UsageError a cloud raises for a startup script over its user data limit.
USER_DATA_SOURCES = frozenset({"startup script", "--startup-script"})


@dataclass(frozen=True)
class Launch:
    """One `up`, planned: the cloud, the attempts in order, and the runner's lifetime."""

    spec: RunnerSpec
    cloud: Cloud
    boot: Boot
    attempts: list[Attempt]
    created_at: datetime
    expires_at: datetime
    # The script `plan` checked: with a stand-in registration in runner mode, else the real one.
    checked_script: str = ""
    # This launch's identity, minted once: the record keeps it, every attempt's resources carry
    # it (`cml-infra-id`), and teardown matches it rather than the name.
    launch_id: str = field(default_factory=new_launch_id)
    # The runner release `up` looked up through the forge (None: the one the forge names
    # without a lookup).
    runner_release: RunnerRelease | None = None
    # Task mode: the packed --workdir (None: no task).
    packed: Packed | None = None
    # What the agent is told of the task's folder, its outputs and where to report
    # (task/channel.py): stand-ins until `up` signs them (`signed_task`); None: no channel.
    task: dict[str, Any] | None = None

    @property
    def labels(self) -> tuple[str, ...]:
        """The registration's labels (runner mode)."""
        return registration_labels(self.spec, self.cloud.name, self.created_at.timestamp())

    def startup_script(self, registration: Registration | None) -> str:
        if registration is None and self.checked_script:
            return self.checked_script
        runner = None
        if self.spec.forge is not None:
            forge_class = forge.forge_class(self.spec.forge)
            registration = registration or forge_class.placeholder()
            runner = forge_class.agent_runner(
                self.spec, registration, self.labels, self.boot, self.runner_release
            )
        return render.startup_script(
            self.boot, self.spec, self.expires_at.timestamp(), runner, gpus=self.gpus,
            task=self.task,
        )  # fmt: skip

    def channel(self, state: StateDir) -> Channel | None:
        """Where this launch's instance reports (None: a VM with no backend)."""
        return channel_of(
            state, state.key_of(self.spec.name, self.launch_id), self.cloud.ON_THIS_MACHINE
        )

    def signed_task(self, state: StateDir) -> Launch:
        """The launch with its channel made real: the workdir stored where the instance reads
        it, and URLs signed in place of the stand-ins."""
        channel = self.channel(state)
        if channel is None or self.task is None:
            return self
        channel.clear()
        task = task_config(self.spec, self.boot, channel, self.packed, sign=True)
        valid_until = getattr(channel, "valid_until", None)
        if valid_until is not None and valid_until < self.expires_at:
            ui.warn(
                f"{self.spec.name}: its agent's reports stop at {valid_until:%Y-%m-%d %H:%M} UTC, "
                "when the credentials that signed their URLs expire, before its TTL ends it: "
                "sign with credentials that last as long (see README, Task mode)"
            )
        # The checked script holds the stand-ins: the script is rendered again with these.
        return replace(self, task=task, checked_script="")

    def reading_workdir(self, path: Path) -> Launch:
        """The launch with its instance reading the task's folder from `path` (a render's)."""
        task = {**(self.task or {}), "workdir": {"file": str(path)}}
        return replace(self, task=task, checked_script="")

    def without_reports(self) -> Launch:
        """The launch with no channel: its agent reports nowhere (see `_Up.open_channel`)."""
        return replace(self, task=None, checked_script="")

    @property
    def gpus(self) -> int:
        """The GPUs the placement promises, which the agent waits for before any work: at
        least one on a type whose count the catalog does not know. Attempts differ in region,
        market and zone only, so the first one's count is every one's."""
        placement = self.attempts[0].placement
        return max(placement.gpu_count, 1) if placement.gpu else 0

    def context(self, script: str) -> RenderContext:
        return RenderContext(script, self.created_at, self.expires_at, self.launch_id)

    def variables(self, attempt: Attempt, context: RenderContext) -> dict[str, Any]:
        """The module's variables: what the cloud passes, and the extra ones (`--var`, the
        config's [vars]), which `plan` checked set none of the cloud's."""
        passed = self.cloud.module_vars(self.spec, attempt.placement, context)
        extra = {k: v for k, v in self.spec.extra_vars.items() if k not in passed}
        return {**passed, **extra}

    def forge(self, token: forge.Secret) -> Forge | None:
        """A client of the runner's forge, holding the token (runner mode only)."""
        return None if self.spec.forge is None else forge.for_target(self.spec.forge, token)


def plan(spec: RunnerSpec, state: StateDir | None, terraform: str | None = None) -> Launch:
    """`terraform`: the engine that checks the module's validation of extra variables and of a
    fork's (None: the one `up` would find by itself)."""
    cloud = clouds.get(spec.cloud, state)
    # First, as it is the first thing to fix: a --modules-dir without the cloud's folder.
    packaged.module_dir(cloud.module, spec.modules_dir)
    if spec.forge is not None:
        forge.check(spec.forge)
    attempts = placement.attempts(spec, cloud, _offerings(spec, cloud))
    # With --optimize price the walk holds only what fits; in the given order, all must.
    cost.check_budget([attempt.placement for attempt in attempts], spec.ttl, spec.budget)
    created = utcnow()
    launch = Launch(
        spec=spec,
        cloud=cloud,
        boot=cloud.boot(spec),
        attempts=attempts,
        created_at=created,
        expires_at=created + timedelta(seconds=spec.ttl),
    )
    if state is not None:
        launch = _with_task(launch, state)
    # Every attempt gets the same script, so the first one's variables show whether it fits.
    with _fork_templates(spec):
        try:
            launch, passed = _scripted(launch)
        except UsageError as exc:
            if launch.task is None or spec.command or exc.source not in USER_DATA_SOURCES:
                raise
            # A runner does its work without them; a task could not.
            ui.warn(
                f"{spec.name}: the agent's status and log reports do not fit in the user data "
                f"{cloud.name} takes beside the runner, so they stay on the instance ({exc})"
            )
            launch, passed = _scripted(launch.without_reports())
        context = launch.context(launch.checked_script)
        # The root module too, which `up` renders only once it has claimed the name.
        render.root_module(
            cloud, spec, attempts[0].placement, launch.variables(attempts[0], context)
        )
    modules.check(spec, cloud, passed, terraform)
    return launch


def _offerings(spec: RunnerSpec, cloud: Cloud) -> Index | None:
    """The cloud's offerings (where each row is sold, at what price), read only when the walk is
    ordered by price (`--region any` is): the full table is every public region's. None for a
    cloud without a catalog (local)."""
    if spec.optimize != OPTIMIZE_PRICE or not cloud.HAS_CATALOG:
        return None
    from cml_infra import catalog

    return catalog.current_offerings(cloud.name)


def _scripted(launch: Launch) -> tuple[Launch, dict[str, Any]]:
    """The launch with its checked startup script, and the variables the cloud passes with it
    (which say whether the script fits the cloud's user data)."""
    launch = replace(launch, checked_script=launch.startup_script(None))
    context = launch.context(launch.checked_script)
    return launch, launch.cloud.module_vars(launch.spec, launch.attempts[0].placement, context)


def _with_task(launch: Launch, state: StateDir) -> Launch:
    """The task's folder packed (over its size limit: bad input) and the agent's channel
    config with stand-ins; a task where nothing could come back is refused."""
    spec, cloud = launch.spec, launch.cloud
    channel = launch.channel(state)
    if channel is None:
        if spec.workdir is not None or spec.outputs:
            raise UsageError(
                "--backend",
                f"a task on {cloud.name} needs a backend: its folder goes to the instance, and "
                "its log, exit code and outputs come back, through the bucket; give --backend "
                "s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or azurerm://ACCOUNT/CONTAINER/PREFIX "
                "(or CML_INFRA_BACKEND)",
            )
        return launch
    packed = pack(spec.workdir) if spec.workdir is not None else None
    return replace(
        launch, packed=packed, task=task_config(spec, launch.boot, channel, packed, sign=False)
    )


def task_config(
    spec: RunnerSpec, boot: Boot, channel: Channel, packed: Packed | None, *, sign: bool
) -> dict[str, Any]:
    """The agent config's task keys: the channel's, and the spot notice the agent watches in
    task mode (a runner watches it in its own config)."""
    config = channel.agent_config(packed, spec.outputs, spec.ttl, sign=sign)
    if spec.command and boot.preemption_probe:
        config["preemption"] = boot.preemption_probe
    if boot.endpoints:
        config["endpoints"] = dict(boot.endpoints)
    return config


@contextmanager
def _fork_templates(spec: RunnerSpec) -> Iterator[None]:
    """A template of a fork's templates/ that does not render is bad input, named."""
    from jinja2 import TemplateError

    try:
        yield
    except TemplateError as exc:
        if spec.modules_dir is None:
            raise
        raise UsageError(
            "--modules-dir",
            f"a template in {spec.modules_dir / packaged.TEMPLATES} does not render: "
            f"{type(exc).__name__}: {exc}",
        ) from None
