"""The ledger in a backend: every machine that can read the bucket sees the same runners.

Under the backend's prefix, one folder per launch, keyed by the launch id (a name is chosen by
people and two CI jobs may pick the same one; they never share a record, a hold or a state):

    runners/<launch id>/runner.json         the record (RunnerRecord)
    runners/<launch id>/workspace.tar.gz    the rendered workspace, the registration secret
                                            replaced by a stand-in (see `publish_workspace`)
    runners/<launch id>/terraform.tfstate   Terraform's state, through its own backend, with
                                            its lock file beside it (`.tflock`, `use_lockfile`)
    runners/<launch id>/hold.json           who works on the runner right now (`lock`)

The state's name is the store's (`Backend.STATE_OBJECTS`): gcs keeps `default.tfstate` and
locks with `default.tflock`; azurerm locks with a lease on the state blob itself.

This machine's state dir keeps a work area under `backends/<digest of the URL>/`: the workspace
Terraform runs in and its lock files; nothing there is the truth, and losing it loses nothing.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import io
import json
import os
import shutil
import socket
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cml_infra import ui
from cml_infra.backends.base import Backend
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.state import (
    RECORD_FILE,
    BrokenRecord,
    Scan,
    StateDir,
    make_private_dir,
    utcnow,
    write_private,
)

if TYPE_CHECKING:
    from cml_infra.record import RunnerRecord
    from cml_infra.terraform import EngineHome

WORKSPACE_ARCHIVE = "workspace.tar.gz"
HOLD_FILE = "hold.json"
# A holder renews its hold this often; one not renewed for HOLD_STALE_SECONDS died with its
# machine (a cancelled CI job) and is taken over.
HOLD_RENEW_SECONDS = 20.0
HOLD_STALE_SECONDS = 90.0
# How often a wait for another machine's hold looks again.
HOLD_POLL_SECONDS = 1.0
# Reads of a listing in parallel: `status` over hundreds of runners is one listing plus these.
READERS = 16
# What of a workspace stays on this machine only: Terraform's plugins and local files, and
# the copy of the startup script kept for people to read (it holds the registration secret).
_NOT_PUBLISHED = frozenset({".terraform", "terraform.tfstate", "terraform.tfstate.backup",
                            "startup.sh", "backend.tf"})  # fmt: skip


class RemoteLedger(StateDir):
    """A StateDir whose records, workspaces and Terraform states live in a backend."""

    remote = True

    def __init__(self, home: StateDir, backend: Backend) -> None:
        digest = hashlib.sha256(backend.url.encode("utf-8")).hexdigest()[:16]
        super().__init__(home.root / "backends" / digest)
        self.home = home
        self.backend = backend
        self.digest = digest
        self._checked = False
        self._listed: frozenset[str] | None = None

    # Identity: the launch id, never the name.

    def key_of(self, name: str, launch_id: str) -> str:
        # Every launch that records itself in a backend has an id; an instance older than
        # launch ids has none, and its name then matches no key.
        return launch_id or name

    def describe(self) -> str:
        return self.backend.describe()

    def cli_args(self) -> tuple[str, ...]:
        return ("--backend", self.backend.url, "--state-dir", str(self.home.root))

    def engine_home(self) -> EngineHome:
        # One plugin cache per machine, whatever the backend.
        return self.home.engine_home()

    @property
    def local_root(self) -> Path:
        # Instances of the local cloud run on this machine: every state dir of this user that
        # uses this backend must see the same ones (another CI job on this machine, a person).
        from platformdirs import user_state_dir

        return Path(user_state_dir("cml-infra", appauthor=False)) / "local" / self.digest

    def instance_logs(self, name: str) -> Path:
        return self.local_root / "logs" / name

    def check(self) -> None:
        """The backend can be listed and written: checked once, before anything is created."""
        if not self._checked:
            self.backend.check()
            self._checked = True

    def ensure(self) -> None:
        super().ensure()
        self.check()

    # Records.

    def _record_key(self, key: str) -> str:
        return f"runners/{key}/{RECORD_FILE}"

    def location(self, relative: str) -> str:
        """Where an object is, as people read it: the URL without its query, and the key."""
        return f"{self.backend.url.split('?')[0].rstrip('/')}/{relative}"

    def record_location(self, key: str) -> str:
        return self.location(self._record_key(key))

    def load(self, name: str) -> RunnerRecord | None:
        from cml_infra.record import RunnerRecord

        self.check()
        blob = self.backend.get(self._record_key(name))
        if blob is None:
            return None
        try:
            return RunnerRecord.from_json(blob.data)
        except ValueError as exc:
            where = self.record_location(name)
            raise BrokenRecord(name, where, " ".join(str(exc).split())) from None

    def save(self, record: RunnerRecord) -> RunnerRecord:
        now = utcnow()
        record = record.replace(updated_at=now)
        if record.state == "destroyed" and record.ended_at is None:
            record = record.replace(ended_at=now)
        self.check()
        self.backend.put(self._record_key(self.key(record)), record.to_json().encode("utf-8"))
        return record

    def names(self) -> list[str]:
        self.check()
        listed = self.backend.list("runners/")
        # What `knows` and `held` answer from while a command works from this listing (one
        # cleanup run), rather than asking the store again for each of hundreds of runners.
        self._listed = frozenset(listed)
        keys = {entry.split("/", 2)[1] for entry in listed if entry.count("/") >= 2}
        return sorted(key for key in keys if key)

    def scan(self) -> Scan:
        keys = self.names()
        records, broken = [], []
        with ThreadPoolExecutor(max_workers=max(1, min(READERS, len(keys)))) as pool:
            for found in pool.map(self._try_load, keys):
                if isinstance(found, BrokenRecord):
                    broken.append(found)
                elif found is not None:
                    records.append(found)
        return Scan(records, broken)

    def _try_load(self, key: str) -> RunnerRecord | BrokenRecord | None:
        try:
            return self.load(key)
        except BrokenRecord as exc:
            return exc

    def named(self, name: str) -> list[RunnerRecord]:
        return [record for record in self.scan().records if record.name == name]

    def knows(self, key: str) -> bool:
        if self._listed is not None:
            return any(entry.startswith(f"runners/{key}/") for entry in self._listed)
        self.check()
        return bool(self.backend.list(f"runners/{key}/"))

    def set_aside(self, name: str) -> str | None:
        blob = self.backend.get(self._record_key(name))
        if blob is None:
            return None
        kept = f"runners/{name}/{RECORD_FILE}.unreadable-{int(utcnow().timestamp())}"
        self.backend.put(kept, blob.data)
        self.backend.delete(self._record_key(name))
        return self.location(kept)

    def forget(self, name: str) -> None:
        for entry in self.backend.list(f"runners/{name}/"):
            self.backend.delete(entry)
        super().forget(name)

    # Workspaces: Terraform runs in this machine's copy; the backend keeps the one to destroy
    # from, and the state.

    def configure_workspace(self, key: str, workspace: Path) -> None:
        write_private(workspace / "backend.tf", self.backend.terraform_block(f"runners/{key}"))

    def publish_workspace(self, key: str, workspace: Path, stand_in: dict[str, object]) -> None:
        """Keep the workspace in the backend, for `down` and `cleanup` on any machine.

        The registration secret is in the startup script, which reaches the module only through
        its sensitive variables: in the copy kept here they hold a stand-in script of the same
        form (destroy needs the variables to be valid, never their values)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
            for path in sorted(workspace.rglob("*")):
                relative = path.relative_to(workspace)
                if relative.parts[0] in _NOT_PUBLISHED or not path.is_file():
                    continue
                if relative.as_posix() == "terraform.tfvars.json":
                    data = (json.dumps(stand_in, indent=2) + "\n").encode("utf-8")
                else:
                    data = path.read_bytes()
                info = tarfile.TarInfo(relative.as_posix())
                info.size = len(data)
                info.mode = 0o700 if os.access(path, os.X_OK) else 0o600
                archive.addfile(info, io.BytesIO(data))
        self.backend.put(f"runners/{key}/{WORKSPACE_ARCHIVE}", buffer.getvalue())

    def fetch_workspace(self, key: str) -> bool:
        """This machine's copy of the workspace, from the backend if it has none."""
        workspace = self.workspace(key)
        if (workspace / "main.tf").is_file():
            return True
        blob = self.backend.get(f"runners/{key}/{WORKSPACE_ARCHIVE}")
        if blob is None:
            return False
        make_private_dir(workspace)
        try:
            with tarfile.open(fileobj=io.BytesIO(blob.data), mode="r:gz") as archive:
                # The data filter refuses links, absolute paths and anything outside the folder.
                archive.extractall(workspace, filter="data")
        except (tarfile.TarError, OSError) as exc:
            shutil.rmtree(workspace, ignore_errors=True)
            raise CmlInfraError(
                f"{self.location(f'runners/{key}/{WORKSPACE_ARCHIVE}')}: "
                f"not a workspace this machine can use ({exc})"
            ) from None
        self.configure_workspace(key, workspace)
        return True

    def put_away(self, key: str) -> None:
        """This machine's copy goes: the backend keeps one to destroy from, and this one holds
        the registration secret in its startup script, which must not stay on a CI machine."""
        super().remove_workspace(key)

    def has_workspace(self, key: str) -> bool:
        if (self.workspace(key) / "main.tf").is_file():
            return True
        return self.backend.get(f"runners/{key}/{WORKSPACE_ARCHIVE}") is not None

    def remove_workspace(self, name: str) -> None:
        """After a destroy that finished (or before anything was applied): the workspace and
        the state, which lists nothing any more."""
        super().remove_workspace(name)
        for entry in (WORKSPACE_ARCHIVE, *self.backend.STATE_OBJECTS):
            self.backend.delete(f"runners/{name}/{entry}")

    # Holds: a lock every machine sees.

    @contextlib.contextmanager
    def lock(self, name: str, *, wait: float, claim: bool | None = None) -> Iterator[None]:
        deadline = time.monotonic() + wait
        with super().lock(name, wait=wait, claim=claim):
            hold = _Hold(self.backend, _hold_key(name))
            holder = hold.acquire(deadline)
            if holder is not None:
                if claim or (claim is None and wait == 0):
                    raise UsageError("--name", f"{name!r} is in use: {holder}")
                raise CmlInfraError(f"{name}: {holder}; waited {wait:.0f}s")
            try:
                yield
            finally:
                hold.release()

    def held(self, name: str) -> bool:
        if super().held(name):
            return True
        key = _hold_key(name)
        if self._listed is not None and key not in self._listed:
            return False
        return _Hold(self.backend, key).holder() is not None


class _Hold:
    """An object only one command at a time can create; renewed while its holder lives."""

    def __init__(self, backend: Backend, key: str) -> None:
        self.backend = backend
        self.key = key
        self.version: str | None = None
        self.since = utcnow()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _content(self) -> bytes:
        command = "cml-infra" + (f" {sys.argv[1]}" if len(sys.argv) > 1 else "")
        return json.dumps(
            {
                "holder": f"{command} by {_user()} on {socket.gethostname()} (pid {os.getpid()})",
                "since": self.since.isoformat(),
                "renewed_at": utcnow().isoformat(),
            }
        ).encode("utf-8")

    def holder(self) -> str | None:
        """Who holds it now, or None (nobody, or a holder that stopped renewing)."""
        blob = self.backend.get(self.key)
        if blob is None:
            return None
        return _live_holder(blob.data)

    def acquire(self, deadline: float) -> str | None:
        """None once held; else who held it until the deadline."""
        said = False
        while True:
            version = self.backend.put(self.key, self._content(), if_absent=True)
            if version is not None:
                self.version = version
                self._renewer = threading.Thread(target=self._renew, daemon=True)
                self._renewer.start()
                return None
            blob = self.backend.get(self.key)
            holder = None if blob is None else _live_holder(blob.data)
            if blob is not None and holder is None:
                # Its holder died without letting go: take it over, unless another did first.
                self.backend.delete(self.key, blob.version)
                continue
            if holder is None:
                continue
            if time.monotonic() >= deadline:
                return f"held by {holder}"
            if not said:
                ui.info(f"waiting: {self.key.split('/')[1]} is held by {holder}")
                said = True
            time.sleep(min(HOLD_POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    def _renew(self) -> None:
        while not self._stop.wait(HOLD_RENEW_SECONDS):
            try:
                version = (
                    self.backend.replace(self.key, self._content(), self.version)
                    if self.version
                    else None
                )
            except CmlInfraError:
                continue  # a passing failure: the next renewal comes long before it is stale
            if version is None:
                ui.warn(f"{self.key}: the hold was taken over by another command")
                return
            self.version = version

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self.version is not None:
            with contextlib.suppress(CmlInfraError):
                self.backend.delete(self.key, self.version)


def _hold_key(key: str) -> str:
    return f"runners/{key}/{HOLD_FILE}"


def _live_holder(data: bytes) -> str | None:
    try:
        content = json.loads(data)
        renewed = datetime.fromisoformat(content["renewed_at"])
        since = datetime.fromisoformat(content.get("since", content["renewed_at"]))
        holder = str(content["holder"])
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: nobody can be renewing it
    if utcnow() - renewed > timedelta(seconds=HOLD_STALE_SECONDS):
        return None
    return f"{holder} since {since:%Y-%m-%d %H:%M:%S} UTC"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
