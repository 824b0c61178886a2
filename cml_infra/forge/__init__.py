"""Forge registry: `for_target(target, token)`; every module here that defines a forge
registers it with `@register`, and is imported on first use."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol, Union

from cml_infra.registry import Registry

if TYPE_CHECKING:
    from cml_infra.forge.base import Forge
    from cml_infra.spec import ForgeTarget

# Modules of this package that hold no forge (a forge's runner support is `<kind>_runner`).
FORGES: Registry[type[Forge]] = Registry(
    "forge", __name__, skip=lambda module: module == "base" or module.endswith("_runner")
)
register = FORGES.register


class Credential(Protocol):
    """What mints a forge token per target (a GitHub App): the target is known only once a
    command has read its flags or a record."""

    def token_for(self, target: ForgeTarget) -> str: ...


# What commands hand down: a token, a Credential that mints one per target, or nothing.
Secret = Union[str, Credential, None]  # noqa: UP007 - a runtime alias, read on 3.10
# Functions that write a CI job's step outputs where that CI runs us (GitHub Actions: the
# $GITHUB_OUTPUT file); each returns quietly elsewhere.
_CI: list[Callable[[Mapping[str, str], str | None], None]] = []


def register_ci(
    write: Callable[[Mapping[str, str], str | None], None],
) -> Callable[[Mapping[str, str], str | None], None]:
    _CI.append(write)
    return write


def classes() -> dict[str, type[Forge]]:
    return dict(sorted(FORGES.items()))


def ci_environments() -> list[Callable[[Mapping[str, str], str | None], None]]:
    classes()  # the writers register with their forge's module
    return list(_CI)


def forge_class(target: ForgeTarget) -> type[Forge]:
    return FORGES.find(target.kind, "forge")


def check(target: ForgeTarget) -> None:
    """Whether the forge would take this target; UsageError naming the flag if not."""
    forge_class(target).check_target(target)


def for_target(target: ForgeTarget, token: Secret) -> Forge:
    cls = forge_class(target)
    cls.check_target(target)
    if token is not None and not isinstance(token, str):
        token = token.token_for(target)
    return cls(target, token or "")
