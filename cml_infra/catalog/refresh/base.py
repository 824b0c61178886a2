"""The Refresher protocol: one cloud's listings and price APIs → Offerings."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from cml_infra.catalog import Catalog
    from cml_infra.catalog.offerings import Offerings


class Refresher(ABC):
    """One subclass per cloud, registered with `@refresh.register(cloud)`."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def fetch(
        self, catalog: Catalog, regions: Sequence[str] | None, warn: Callable[[str], None]
    ) -> Offerings:
        """Where each row of `catalog` is sold, in `regions` (None: every region the account
        can use), with on-demand and spot prices, each figure with its source and today's
        date. No credentials → UsageError (exit 2) saying what to set; a region the account
        cannot use is left out with one `warn` line, never a failure of the whole refresh.
        Throttling is retried with backoff."""
