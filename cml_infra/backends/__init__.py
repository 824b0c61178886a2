"""Backend registry: where the ledger and Terraform's state live when they must outlive the CI
job (`--backend s3://…`, `gs://…`, `azurerm://…`); with none, the state dir on this machine.

Every module in this package that defines a store registers it by its URL scheme; naming one
imports only that module, and its SDK loads later, inside the calls that reach the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cml_infra.errors import UsageError
from cml_infra.registry import Registry

if TYPE_CHECKING:
    from cml_infra.backends.base import Backend
    from cml_infra.state import StateDir

_SUPPORT = frozenset({"base", "ledger"})
BACKENDS: Registry[type[Backend]] = Registry("backend scheme", __name__, skip=_SUPPORT.__contains__)
register = BACKENDS.register


def parse(url: str) -> Backend:
    """The backend a `--backend` URL names; one line on --backend for anything wrong with it."""
    url = url.strip()
    scheme, sep, _ = url.partition("://")
    if not sep or not scheme:
        forms = ", ".join(cls.FORM for cls in BACKENDS.values())
        raise UsageError("--backend", f"{url!r} is not a backend URL; valid forms: {forms}")
    return BACKENDS.find(scheme, "--backend").parse(url)


def open_ledger(state: StateDir, url: str | None) -> StateDir:
    """The ledger commands work with: the state dir itself, or a remote one that keeps a work
    area in it."""
    if url is None or not url.strip():
        if url is not None:
            raise UsageError("--backend", "the URL is empty; give s3://, gs:// or azurerm://")
        return state
    from cml_infra.backends.ledger import RemoteLedger

    return RemoteLedger(state, parse(url))
