"""The Forge protocol: where runners register and jobs come from (GitHub today, GitLab next).

Nothing past this seam sees a forge's own API JSON: runners are RunnerInfo, registrations are
Registration, releases of the forge's runner are RunnerRelease, and the record keeps
`describe()`. The long-lived token stays in the forge object; the instance only ever gets what
`register` mints.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from cml_infra.spec import AUTO_LABEL_PREFIX, CLOUD_LABEL, SINCE_LABEL, ForgeTarget

if TYPE_CHECKING:
    from cml_infra.clouds.base import Boot
    from cml_infra.spec import RunnerSpec


@dataclass(frozen=True)
class Registration:
    """What the instance needs to join: a single-use config, or a token and the URL."""

    kind: Literal["jit", "token"]
    secret: str
    url: str


@dataclass(frozen=True)
class RunnerRelease:
    """One build of the forge's runner, for one platform: where the instance downloads it, and
    the SHA-256 the forge publishes for it (the instance refuses an archive that differs)."""

    version: str
    url: str
    sha256: str


@dataclass(frozen=True)
class RunnerInfo:
    """One registered runner, as the forge reports it."""

    id: int
    name: str
    online: bool
    busy: bool = False
    ephemeral: bool = False
    labels: tuple[str, ...] = ()

    @property
    def ours(self) -> tuple[str, ...]:
        """The runner names its `cml-infra-<name>` labels point at."""
        return tuple(
            label[len(AUTO_LABEL_PREFIX) :]
            for label in self.labels
            if label.startswith(AUTO_LABEL_PREFIX)
            and not label.startswith((CLOUD_LABEL, SINCE_LABEL))
        )

    @property
    def clouds(self) -> tuple[str, ...]:
        """Where its instance lives, from its `cml-infra-on-<cloud>` label."""
        return tuple(
            label[len(CLOUD_LABEL) :] for label in self.labels if label.startswith(CLOUD_LABEL)
        )

    @property
    def registered_at(self) -> datetime | None:
        for label in self.labels:
            seconds = label[len(SINCE_LABEL) :]
            if label.startswith(SINCE_LABEL) and seconds.isdigit() and len(seconds) <= 12:
                return datetime.fromtimestamp(int(seconds), timezone.utc)
        return None


def registration_labels(spec: RunnerSpec, cloud: str, since: float) -> tuple[str, ...]:
    """A registration's labels: the runner's own, plus where it runs and since when (cleanup
    leaves a fresh registration alone while its instance is still being made)."""
    return (*spec.all_labels, f"{CLOUD_LABEL}{cloud}", f"{SINCE_LABEL}{int(since)}")


class Forge(ABC):
    """One subclass per forge, registered with `@forge.register(kind)`."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    # The flag a user gives the forge's API URL with, for messages.
    URL_FLAG: ClassVar[str]

    def __init__(self, target: ForgeTarget, token: str) -> None:
        self.target = target

    @classmethod
    @abstractmethod
    def check_target(cls, target: ForgeTarget) -> None:
        """Raise UsageError (naming the flag) for a repository, organization, group or URL the
        forge would refuse; before anything is created."""

    def describe(self) -> dict[str, Any]:
        """What a record keeps of the forge: never the token."""
        fields = {k: v for k, v in dataclasses.asdict(self.target).items() if v is not None}
        return {**fields, "kind": self.name}

    def owns(self, tags: Mapping[str, str]) -> bool:
        """Whether an instance with these tags is a runner of this forge target."""
        from cml_infra.clouds import tags as keys

        return tags.get(keys.FORGE) == self.name and tags.get(keys.SCOPE) == self.target.scope_tag

    @abstractmethod
    def register(self, name: str, labels: tuple[str, ...], single: bool) -> Registration:
        """A single-use registration for a one-job runner, a short-lived token otherwise."""

    @abstractmethod
    def runners(self) -> list[RunnerInfo]:
        """Every self-hosted runner registered in the scope."""

    def runner(self, name: str) -> RunnerInfo | None:
        return next((r for r in self.runners() if r.name == name), None)

    @abstractmethod
    def deregister_id(self, runner_id: int) -> bool:
        """Remove a registration by id; False when it was already gone."""

    def deregister(self, name: str) -> bool:
        """Remove the registration; False when it was already gone."""
        runner = self.runner(name)
        return runner is not None and self.deregister_id(runner.id)

    @abstractmethod
    def wait_online(
        self, name: str, timeout: float, sleep: Callable[[float], None] | None = None
    ) -> RunnerInfo:
        """Until the forge shows the runner online; `sleep` is how to wait between looks (an
        interruptible one from `up`)."""

    def idle_runner(self, labels: Iterable[str]) -> RunnerInfo | None:
        """An online, idle, reusable (not single-job) runner that carries every one of
        `labels`; the first by name, so that concurrent callers agree."""
        # Forges match `runs-on` labels without regard to case.
        wanted = {label.lower() for label in labels}
        fitting = [
            runner
            for runner in self.runners()
            if runner.online
            and not runner.busy
            and not runner.ephemeral
            and wanted <= {label.lower() for label in runner.labels}
        ]
        return min(fitting, key=lambda runner: runner.name, default=None)

    def last_jobs(self) -> dict[str, datetime | None]:
        """runner name → when its latest job ended (None: one runs now); {} where the forge
        cannot list them for this scope."""
        return {}

    @abstractmethod
    def latest_runner(self, platform: str) -> RunnerRelease:
        """The release of the forge's runner that runners should install now, for `platform`
        (`linux-x64`, `linux-arm64`); CmlInfraError when the forge cannot say."""

    @abstractmethod
    def runner_release(self, platform: str, version: str) -> RunnerRelease:
        """One given release of the runner, for `platform`; UsageError (naming
        --runner-version) when there is no such release, CmlInfraError when the forge cannot
        be asked."""

    def resolve_runner(self, spec: RunnerSpec, boot: Boot) -> RunnerRelease | None:
        """At `up`, before anything is created: the release this launch installs, looked up
        through the forge (None: the one `agent_runner` names without a lookup)."""
        return None

    @classmethod
    @abstractmethod
    def agent_runner(
        cls,
        spec: RunnerSpec,
        registration: Registration,
        labels: tuple[str, ...],
        boot: Boot,
        release: RunnerRelease | None = None,
    ) -> dict[str, Any]:
        """The `runner` section of the agent's config: how the instance installs and runs
        this forge's runner (agent/<kind>_runner.py reads it); `release` is what
        `resolve_runner` found (None: render, or nothing to look up)."""

    @classmethod
    @abstractmethod
    def placeholder(cls) -> Registration:
        """Stands in for a registration while inputs are checked before anything is minted:
        as large as a real one, so that a startup script too large for the cloud fails first."""


def step_outputs(outputs: Mapping[str, str], summary: str | None = None) -> None:
    """Inside a CI job: the step's outputs and a job-summary table, where the CI has them."""
    from cml_infra.forge import ci_environments

    for write in ci_environments():
        write(outputs, summary)
