"""The ledger in a backend: records keyed by launch id, workspaces without the secret, holds
every machine sees."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from cml_infra.backends import ledger as ledger_module
from cml_infra.backends.ledger import RemoteLedger, _Hold
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.state import BrokenRecord, StateDir, utcnow
from tests.unit.conftest import record_of


def test_records_are_keyed_by_launch_id_not_name(ledger: RemoteLedger) -> None:
    one = ledger.save(record_of("gpu", launch_id="aaaaaaaaaaaaaaaa"))
    two = ledger.save(record_of("gpu", launch_id="bbbbbbbbbbbbbbbb", state="destroyed"))
    assert ledger.names() == ["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"]
    assert [r.launch_id for r in ledger.named("gpu")] == [one.launch_id, two.launch_id]
    assert ledger.load("bbbbbbbbbbbbbbbb").ended_at is not None  # type: ignore[union-attr]
    assert ledger.key(one) == "aaaaaaaaaaaaaaaa"
    # Nothing of the ledger is kept in the state dir: another machine has none of it.
    assert not (ledger.root / "runners" / "aaaaaaaaaaaaaaaa" / "runner.json").exists()


def test_a_second_machine_sees_the_same_records(ledger: RemoteLedger, tmp_path: Path) -> None:
    ledger.save(record_of("gpu", launch_id="aaaaaaaaaaaaaaaa"))
    other = RemoteLedger(StateDir(tmp_path / "elsewhere"), ledger.backend)
    assert [r.name for r in other.scan().records] == ["gpu"]


def test_an_unreadable_record_is_reported_and_set_aside(ledger: RemoteLedger) -> None:
    ledger.save(record_of("gpu", launch_id="aaaaaaaaaaaaaaaa"))
    ledger.backend.put("runners/cccccccccccccccc/runner.json", b"{not json")
    scan = ledger.scan()
    assert [r.launch_id for r in scan.records] == ["aaaaaaaaaaaaaaaa"]
    assert [b.name for b in scan.broken] == ["cccccccccccccccc"]
    assert "runners/cccccccccccccccc/runner.json: unreadable runner record" in str(scan.broken[0])
    with pytest.raises(BrokenRecord):
        ledger.load("cccccccccccccccc")
    kept = ledger.set_aside("cccccccccccccccc")
    assert kept is not None and ".unreadable-" in kept
    assert ledger.load("cccccccccccccccc") is None


def test_forget_removes_every_object_of_the_launch(ledger: RemoteLedger) -> None:
    ledger.save(record_of("gpu", launch_id="aaaaaaaaaaaaaaaa"))
    ledger.save(record_of("gpu", launch_id="bbbbbbbbbbbbbbbb"))
    ledger.backend.put("runners/aaaaaaaaaaaaaaaa/workspace.tar.gz", b"x")
    ledger.forget("aaaaaaaaaaaaaaaa")
    assert ledger.names() == ["bbbbbbbbbbbbbbbb"]


def _workspace(root: Path, secret: str) -> Path:
    (root / "module" / "scripts").mkdir(parents=True)
    (root / "main.tf").write_text("# root\n")
    (root / "module" / "main.tf").write_text("# module\n")
    script = root / "module" / "scripts" / "create.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o700)
    (root / "terraform.tfvars.json").write_text(json.dumps({"startup_script": secret}))
    (root / "startup.sh").write_text(secret)
    (root / ".terraform").mkdir()
    (root / ".terraform" / "plugin").write_text("binary")
    (root / "terraform.tfstate").write_text(secret)
    return root


def test_the_published_workspace_holds_no_secret(ledger: RemoteLedger, tmp_path: Path) -> None:
    secret = "REGISTRATION-SECRET-" + "7" * 20
    workspace = _workspace(tmp_path / "ws", secret)
    ledger.publish_workspace("aaaaaaaaaaaaaaaa", workspace, {"startup_script": "stand-in"})
    blob = ledger.backend.get("runners/aaaaaaaaaaaaaaaa/workspace.tar.gz")
    assert blob is not None
    with tarfile.open(fileobj=io.BytesIO(blob.data), mode="r:gz") as archive:
        names = sorted(archive.getnames())
        contents = b"".join(archive.extractfile(m).read() for m in archive.getmembers())  # type: ignore[union-attr]
    assert names == [
        "main.tf",
        "module/main.tf",
        "module/scripts/create.sh",
        "terraform.tfvars.json",
    ]
    assert secret.encode() not in blob.data and secret.encode() not in contents

    # Another machine gets it back, with its backend block, and can run Terraform in it.
    other = RemoteLedger(StateDir(tmp_path / "elsewhere"), ledger.backend)
    assert other.fetch_workspace("aaaaaaaaaaaaaaaa")
    copy = other.workspace("aaaaaaaaaaaaaaaa")
    assert json.loads((copy / "terraform.tfvars.json").read_text()) == {
        "startup_script": "stand-in"
    }
    assert (copy / "module" / "scripts" / "create.sh").stat().st_mode & 0o100
    assert (
        'key          = "team/ci/runners/aaaaaaaaaaaaaaaa/terraform.tfstate"'
        in (copy / "backend.tf").read_text()
    )
    other.remove_workspace("aaaaaaaaaaaaaaaa")
    assert not copy.exists() and not other.has_workspace("aaaaaaaaaaaaaaaa")


def test_a_planted_archive_cannot_write_outside_the_workspace(
    ledger: RemoteLedger, tmp_path: Path
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("../../escaped")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    ledger.backend.put("runners/aaaaaaaaaaaaaaaa/workspace.tar.gz", buffer.getvalue())
    with pytest.raises(
        CmlInfraError, match=r"workspace\.tar\.gz: not a workspace this machine can use"
    ):
        ledger.fetch_workspace("aaaaaaaaaaaaaaaa")
    assert not list(tmp_path.rglob("escaped"))


def test_a_hold_is_seen_from_another_machine(ledger: RemoteLedger, tmp_path: Path) -> None:
    other = RemoteLedger(StateDir(tmp_path / "elsewhere"), ledger.backend)
    with ledger.lock("aaaaaaaaaaaaaaaa", wait=0, claim=False):
        assert other.held("aaaaaaaaaaaaaaaa")
        with (
            pytest.raises(
                CmlInfraError,
                match=r"^aaaaaaaaaaaaaaaa: held by cml-infra .* since .* UTC; waited 0s$",
            ),
            other.lock("aaaaaaaaaaaaaaaa", wait=0, claim=False),
        ):
            pass
        in_use = r"^--name: 'aaaaaaaaaaaaaaaa' is in use: held by"
        with pytest.raises(UsageError, match=in_use), other.lock("aaaaaaaaaaaaaaaa", wait=0):
            pass
    assert not other.held("aaaaaaaaaaaaaaaa")
    with other.lock("aaaaaaaaaaaaaaaa", wait=0, claim=False):
        pass


def test_a_waiting_command_gets_the_hold_once_it_is_let_go(
    ledger: RemoteLedger, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(ledger_module, "HOLD_POLL_SECONDS", 0.05)
    other = RemoteLedger(StateDir(tmp_path / "elsewhere"), ledger.backend)
    holding, release = threading.Event(), threading.Event()

    def first() -> None:
        with ledger.lock("aaaaaaaaaaaaaaaa", wait=0, claim=False):
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=first)
    thread.start()
    assert holding.wait(10)
    release.set()
    with other.lock("aaaaaaaaaaaaaaaa", wait=30, claim=False):
        pass
    thread.join()


def test_a_hold_whose_holder_died_is_taken_over(ledger: RemoteLedger) -> None:
    stale = utcnow() - timedelta(seconds=ledger_module.HOLD_STALE_SECONDS + 5)
    content = {"holder": "cml-infra down by ci on gone (pid 1)", "since": stale.isoformat(),
               "renewed_at": stale.isoformat()}  # fmt: skip
    ledger.backend.put("runners/aaaaaaaaaaaaaaaa/hold.json", json.dumps(content).encode())
    assert not ledger.held("aaaaaaaaaaaaaaaa")
    with ledger.lock("aaaaaaaaaaaaaaaa", wait=0, claim=False):
        held = json.loads(ledger.backend.get("runners/aaaaaaaaaaaaaaaa/hold.json").data)  # type: ignore[union-attr]
        assert "gone" not in held["holder"]


def test_a_hold_is_renewed_while_its_command_works(ledger: RemoteLedger, monkeypatch) -> None:
    monkeypatch.setattr(ledger_module, "HOLD_RENEW_SECONDS", 0.05)
    hold = _Hold(ledger.backend, "runners/aaaaaaaaaaaaaaaa/hold.json")
    assert hold.acquire(0) is None
    first = hold.version
    try:
        import time

        deadline = time.monotonic() + 10
        while hold.version == first:
            assert time.monotonic() < deadline, "never renewed"
            time.sleep(0.02)
    finally:
        hold.release()
    assert ledger.backend.get("runners/aaaaaaaaaaaaaaaa/hold.json") is None
