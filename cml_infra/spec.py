"""RunnerSpec: what the user asked for, parsed and validated once; every error names its flag."""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict

from cml_infra.errors import UsageError

DEFAULT_IDLE_TIMEOUT = "5m"
DEFAULT_TTL = "24h"

_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_INTEGER = re.compile(r"-?[0-9]+")
_DURATION = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")
# Short enough for every cloud's instance name and for the GitHub label `cml-infra-<name>`;
# lowercase because GCP and Azure reject upper case in names.
_NAME = re.compile(r"[a-z][a-z0-9-]{0,37}[a-z0-9]")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
AUTO_LABEL_PREFIX = "cml-infra-"


def parse_duration(text: str, flag: str) -> int:
    """Seconds in `text` (`90`, `30s`, `5m`, `6h`, `1d`, `1h30m`); zero or negative is an error."""
    value = text.strip().lower()
    hint = "use a whole number with a unit: 30s, 5m, 6h, 1d or 1h30m"
    if _INTEGER.fullmatch(value):
        seconds = int(value)
    else:
        match = _DURATION.fullmatch(value)
        if not value or match is None:
            raise UsageError(flag, f"{text!r} is not a duration; {hint}")
        seconds = sum(
            int(amount) * _UNIT_SECONDS[unit]
            for amount, unit in zip(match.groups(), "dhms", strict=True)
            if amount is not None
        )
    if seconds <= 0:
        raise UsageError(flag, f"{text!r} must be longer than zero; {hint}")
    return seconds


def format_duration(seconds: int) -> str:
    parts = []
    for unit, size in _UNIT_SECONDS.items():
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0s"


def validate_name(name: str, flag: str = "--name") -> str:
    if not _NAME.fullmatch(name):
        raise UsageError(
            flag,
            f"{name!r} is not a valid name; use 2 to 39 lowercase letters, digits and '-', "
            "starting with a letter and not ending with '-'",
        )
    return name


def generate_name() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "cml-" + "".join(secrets.choice(alphabet) for _ in range(6))


def parse_labels(values: Iterable[str], flag: str = "--labels") -> tuple[str, ...]:
    """Labels from repeated and/or comma-separated values, in order, without duplicates."""
    labels: list[str] = []
    for value in values:
        for label in (part.strip() for part in value.split(",")):
            if not label:
                continue
            if not _LABEL.fullmatch(label):
                raise UsageError(
                    flag,
                    f"{label!r} is not a valid label; use up to 64 letters, digits, '.', '_' "
                    "and '-', starting with a letter or digit",
                )
            if label.startswith(AUTO_LABEL_PREFIX):
                raise UsageError(
                    flag, f"{label!r}: labels starting with {AUTO_LABEL_PREFIX!r} are reserved"
                )
            if label not in labels:
                labels.append(label)
    return tuple(labels)


class RunnerSpec(BaseModel):
    """One runner as asked for; immutable once built."""

    model_config = ConfigDict(frozen=True)

    name: str
    cloud: str
    region: str | None = None
    idle_timeout: int
    ttl: int
    single: bool = False
    labels: tuple[str, ...] = ()
    command: tuple[str, ...] = ()

    @property
    def all_labels(self) -> tuple[str, ...]:
        """The user's labels plus the unique one a workflow's `runs-on` can target."""
        return (*self.labels, AUTO_LABEL_PREFIX + self.name)


def build_spec(
    *,
    cloud: str,
    name: str | None,
    region: str | None,
    idle_timeout: str,
    ttl: str,
    single: bool,
    labels: Sequence[str],
    command: Sequence[str],
) -> RunnerSpec:
    """Parse raw flag values into a RunnerSpec; the cloud name is checked by the registry."""
    return RunnerSpec(
        name=validate_name(name) if name else generate_name(),
        cloud=cloud,
        region=region,
        idle_timeout=parse_duration(idle_timeout, "--idle-timeout"),
        ttl=parse_duration(ttl, "--ttl"),
        single=single,
        labels=parse_labels(labels),
        command=tuple(command),
    )
