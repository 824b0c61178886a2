"""Cloud registry: `get("local")`; unknown names fail listing every name and alias."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

from cml_infra.clouds.base import Cloud
from cml_infra.errors import UsageError

_REGISTRY: dict[str, type[Cloud]] = {}
_ALIASES: dict[str, str] = {}


def register(name: str, aliases: tuple[str, ...] = ()) -> Callable[[type[Cloud]], type[Cloud]]:
    def decorate(cls: type[Cloud]) -> type[Cloud]:
        cls.name = name
        _REGISTRY[name] = cls
        for alias in aliases:
            _ALIASES[alias] = name
        return cls

    return decorate


def names() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def get(name: str, state_dir: Path, flag: str = "--cloud") -> Cloud:
    _load()
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _REGISTRY:
        close = difflib.get_close_matches(name.lower(), sorted({*_REGISTRY, *_ALIASES}), n=1)
        hint = f"did you mean {_ALIASES.get(close[0], close[0])!r}? " if close else ""
        raise UsageError(
            flag,
            f"unknown cloud {name!r}; {hint}valid: {', '.join(sorted(_REGISTRY))} "
            f"(aliases: {', '.join(sorted(_ALIASES))})",
        )
    return _REGISTRY[key](state_dir)


def _load() -> None:
    # Importing a cloud module registers it; cloud SDKs load later, inside methods.
    from cml_infra.clouds import aws, azure, gcp, local  # noqa: F401
