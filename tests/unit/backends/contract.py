"""What every store must do for the ledger, whatever answers it (moto, fake-gcs-server, Azurite):
each store's tests call these with their own store."""

from __future__ import annotations

from pathlib import Path

import pytest

from cml_infra.backends.base import Backend
from cml_infra.backends.ledger import RemoteLedger
from cml_infra.errors import UsageError
from cml_infra.state import StateDir
from tests.unit.conftest import record_of

LAUNCH = "aaaaaaaaaaaaaaaa"


def refused_in_one_line(url: str, message: str) -> None:
    """A bad --backend URL: one line, starting with the flag, saying what is wrong."""
    from cml_infra import backends

    with pytest.raises(UsageError) as caught:
        backends.parse(url)
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


def conditional_writes(store: Backend) -> None:
    """Create only if absent, replace and delete only at the version read: a hold's rules."""
    first = store.put("hold.json", b"mine", if_absent=True)
    assert first is not None
    assert store.put("hold.json", b"theirs", if_absent=True) is None
    assert store.get("hold.json").data == b"mine"  # type: ignore[union-attr]
    second = store.replace("hold.json", b"renewed", first)
    assert second is not None and second != first
    assert store.replace("hold.json", b"stale", first) is None
    assert store.get("hold.json").data == b"renewed"  # type: ignore[union-attr]
    assert store.delete("hold.json", second) is True
    assert store.get("hold.json") is None
    assert store.replace("hold.json", b"gone", second) is None
    assert store.list("") == []


def hold_seen_from_another_machine(store: Backend, tmp_path: Path) -> None:
    here = RemoteLedger(StateDir(tmp_path / "here"), store)
    there = RemoteLedger(StateDir(tmp_path / "there"), store)
    with here.lock(LAUNCH, wait=0):
        assert there.held(LAUNCH)
        with (
            pytest.raises(UsageError, match=rf"^--name: '{LAUNCH}' is in use: held by "),
            there.lock(LAUNCH, wait=0),
        ):
            pass
    assert not there.held(LAUNCH)
    assert store.list("") == []


def removing_a_workspace_deletes_the_state(store: Backend, tmp_path: Path) -> None:
    """After a destroy that finished, the store keeps the closed record only."""
    ledger = RemoteLedger(StateDir(tmp_path / "state"), store)
    ledger.save(record_of("gpu", launch_id=LAUNCH))
    for entry in ("workspace.tar.gz", *store.STATE_OBJECTS):
        store.put(f"runners/{LAUNCH}/{entry}", b"x")
    ledger.remove_workspace(LAUNCH)
    assert store.list("") == [f"runners/{LAUNCH}/runner.json"]
