"""Cloud registry: `get("gcp")`; unknown names fail listing every name and alias.

Every module in this package that defines a cloud registers it with `@register`; the registry
imports them all on first use, so adding a cloud adds no line here. Cloud SDKs load later,
inside the methods that call them.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import pkgutil
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING

from cml_infra.errors import UsageError

if TYPE_CHECKING:
    from cml_infra.clouds.base import Cloud
    from cml_infra.state import StateDir

_REGISTRY: dict[str, type[Cloud]] = {}
# Modules of this package that hold no cloud.
_SUPPORT = frozenset({"base", "tags", "vm"})


def register(name: str, aliases: tuple[str, ...] = ()) -> Callable[[type[Cloud]], type[Cloud]]:
    def decorate(cls: type[Cloud]) -> type[Cloud]:
        cls.name = name
        cls.aliases = aliases
        _REGISTRY[name] = cls
        return cls

    return decorate


@cache
def _discover() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name not in _SUPPORT and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


def classes() -> dict[str, type[Cloud]]:
    """Every registered cloud class by name."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def names() -> list[str]:
    return list(classes())


def canonical(name: str, flag: str = "--cloud") -> str:
    """The registered name of `name` or one of its aliases."""
    registry = classes()
    aliases = {alias: cls.name for cls in registry.values() for alias in cls.aliases}
    key = aliases.get(name.lower(), name.lower())
    if key not in registry:
        close = difflib.get_close_matches(name.lower(), sorted({*registry, *aliases}), n=1)
        hint = f"did you mean {aliases.get(close[0], close[0])!r}? " if close else ""
        raise UsageError(
            flag,
            f"unknown cloud {name!r}; {hint}valid: {', '.join(registry)} "
            f"(aliases: {', '.join(sorted(aliases))})",
        )
    return key


def get(name: str, state: StateDir | None = None, flag: str = "--cloud") -> Cloud:
    """The cloud called `name`; `state` where its instances may live on this machine."""
    key = name.lower()
    if key not in _REGISTRY and key.isidentifier() and key not in _SUPPORT:
        # A cloud lives in the module of its name: one import, not all of them, for the
        # commands that name their cloud (every `up` and `down`). Aliases need the rest.
        with contextlib.suppress(ImportError):
            importlib.import_module(f"{__name__}.{key}")
    if key in _REGISTRY:
        return _REGISTRY[key](state)
    return classes()[canonical(name, flag)](state)
