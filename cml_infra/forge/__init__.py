"""Forge registry: `for_target(target, token)`; every module here that defines a forge
registers it with `@register`, and is imported on first use."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from functools import cache
from typing import TYPE_CHECKING

from cml_infra.errors import UsageError

if TYPE_CHECKING:
    from cml_infra.forge.base import Forge
    from cml_infra.spec import ForgeTarget

_REGISTRY: dict[str, type[Forge]] = {}
# Functions that write a CI job's step outputs where that CI runs us (GitHub Actions: the
# $GITHUB_OUTPUT file); each returns quietly elsewhere.
_CI: list[Callable[[Mapping[str, str], str | None], None]] = []
# Modules of this package that hold no forge.
_SUPPORT = frozenset({"base"})


def register(kind: str) -> Callable[[type[Forge]], type[Forge]]:
    def decorate(cls: type[Forge]) -> type[Forge]:
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return decorate


def register_ci(
    write: Callable[[Mapping[str, str], str | None], None],
) -> Callable[[Mapping[str, str], str | None], None]:
    _CI.append(write)
    return write


@cache
def _discover() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name not in _SUPPORT and not module.name.endswith("_runner"):
            importlib.import_module(f"{__name__}.{module.name}")


def classes() -> dict[str, type[Forge]]:
    _discover()
    return dict(sorted(_REGISTRY.items()))


def ci_environments() -> list[Callable[[Mapping[str, str], str | None], None]]:
    _discover()
    return list(_CI)


def forge_class(target: ForgeTarget) -> type[Forge]:
    registry = classes()
    if target.kind not in registry:
        valid = ", ".join(registry)
        raise UsageError("forge", f"unknown forge {target.kind!r}; valid: {valid}")
    return registry[target.kind]


def check(target: ForgeTarget) -> None:
    """Whether the forge would take this target; UsageError naming the flag if not."""
    forge_class(target).check_target(target)


def for_target(target: ForgeTarget, token: str | None) -> Forge:
    cls = forge_class(target)
    cls.check_target(target)
    return cls(target, token or "")
