"""`cml-infra catalog refresh`: offerings and prices fetched with the user's credentials into a
user catalog (`<state dir>/catalog/<cloud>-offerings.json`) that overrides the packaged one.

One module per cloud registers a Refresher; each is imported on first use, with its SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cml_infra.registry import Registry

if TYPE_CHECKING:
    from cml_infra.catalog.refresh.base import Refresher

REFRESHERS: Registry[type[Refresher]] = Registry(
    "catalog refresher", __name__, skip=lambda module: module == "base"
)
register = REFRESHERS.register
