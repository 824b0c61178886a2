"""Cloud registry: `get("gcp")`; unknown names fail listing every name and alias.

Every module in this package that defines a cloud registers it with `@register`; the registry
imports them on first use, so adding a cloud adds no line here. Cloud SDKs load later, inside
the methods that call them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cml_infra.registry import Registry

if TYPE_CHECKING:
    from cml_infra.clouds.base import Cloud
    from cml_infra.state import StateDir

# Modules of this package that hold no cloud.
_SUPPORT = frozenset({"base", "tags", "vm"})
CLOUDS: Registry[type[Cloud]] = Registry("cloud", __name__, skip=_SUPPORT.__contains__)
register = CLOUDS.register


def classes() -> dict[str, type[Cloud]]:
    """Every registered cloud class by name."""
    return dict(sorted(CLOUDS.items()))


def names() -> list[str]:
    return list(classes())


def canonical(name: str, flag: str = "--cloud") -> str:
    """The registered name of `name` or one of its aliases."""
    return CLOUDS.canonical(name, flag)


def get(name: str, state: StateDir | None = None, flag: str = "--cloud") -> Cloud:
    """The cloud called `name`; `state` where its instances may live on this machine."""
    return CLOUDS.find(name, flag)(state)
