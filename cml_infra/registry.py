"""Registry: name → class, filled by a class decorator (Cloud Custodian's PluginRegistry shape).

Clouds, forges, cleanup rules and cleanup actions are each one Registry. A registry of a
package imports the package's modules on first use, so adding a plugin is adding a module; an
unknown name fails in one line with the closest match and every valid name and alias.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from cml_infra.errors import UsageError

T = TypeVar("T", bound=type)


class Registry(Mapping[str, T], Generic[T]):
    def __init__(
        self,
        what: str,
        package: str | None = None,
        skip: Callable[[str], bool] = lambda module: False,
    ) -> None:
        self.what = what
        self.package = package
        self.skip = skip
        self._classes: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._discovered = package is None

    def register(self, name: str, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """A class decorator: the class is known by `name` (and `aliases`), which it keeps as
        its `name` attribute."""

        def decorate(cls: T) -> T:
            setattr(cls, "name", name)  # noqa: B010 - any class, whatever it declares
            setattr(cls, "aliases", aliases)  # noqa: B010
            self._classes[name] = cls
            self._aliases.update(dict.fromkeys(aliases, name))
            return cls

        return decorate

    def load(self, module: str) -> None:
        """Import one module of the package (the plugin of that name, if it is one)."""
        if self.package is not None and module.isidentifier() and not self.skip(module):
            try:
                importlib.import_module(f"{self.package}.{module}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{self.package}.{module}":
                    raise

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(str(self.package))
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                self.load(module.name)

    def canonical(self, name: str, source: str) -> str:
        """The registered name of `name` or of one of its aliases; a UsageError on `source`
        (the flag or file that named it) listing the valid ones otherwise."""
        key = name.lower()
        key = self._aliases.get(key, key)
        if key in self._classes:
            return key
        self._discover()
        key = self._aliases.get(key, key)
        if key in self._classes:
            return key
        choices = sorted({*self._classes, *self._aliases})
        close = difflib.get_close_matches(name.lower(), choices, n=1)
        hint = f"did you mean {self._aliases.get(close[0], close[0])!r}? " if close else ""
        aliases = f" (aliases: {', '.join(sorted(self._aliases))})" if self._aliases else ""
        raise UsageError(
            source,
            f"unknown {self.what} {name!r}; {hint}valid: {', '.join(self)}{aliases}",
        )

    def find(self, name: str, source: str) -> T:
        """The class of `name`: a plugin lives in the module of its name, so naming one imports
        only that module, not all of them (every `up` and `down` name their cloud)."""
        if name.lower() not in self._classes:
            self.load(name.lower())
        return self._classes[self.canonical(name, source)]

    def __getitem__(self, name: str) -> T:
        self._discover()
        return self._classes[name]

    def __iter__(self) -> Iterator[str]:
        # A package's plugins by name; others in the order they registered (cleanup's rules
        # are asked in that order, and the first that matches an item wins).
        self._discover()
        return iter(sorted(self._classes) if self.package else self._classes)

    def __len__(self) -> int:
        self._discover()
        return len(self._classes)
