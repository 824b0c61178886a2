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
from typing import TYPE_CHECKING, Any

from cml_infra import clouds, cost, forge, modules, packaged, placement, render
from cml_infra.clouds.base import Boot, Cloud, RenderContext, new_launch_id
from cml_infra.errors import UsageError
from cml_infra.forge.base import Registration, RunnerRelease, registration_labels
from cml_infra.placement import Attempt
from cml_infra.spec import OPTIMIZE_PRICE, RunnerSpec
from cml_infra.state import StateDir, utcnow

if TYPE_CHECKING:
    from cml_infra.catalog.offerings import Index
    from cml_infra.forge.base import Forge


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
            self.boot, self.spec, self.expires_at.timestamp(), runner, gpus=self.gpus
        )

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
    # Every attempt gets the same script, so the first one's variables show whether it fits.
    with _fork_templates(spec):
        launch = replace(launch, checked_script=launch.startup_script(None))
        context = launch.context(launch.checked_script)
        passed = cloud.module_vars(spec, attempts[0].placement, context)
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
