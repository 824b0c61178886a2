"""The state dir: one folder per runner (ledger record + Terraform workspace), locks, shared cache.

Layout under the state dir (platformdirs user state dir, `--state-dir`, or `CML_INFRA_HOME`):

    runners/<name>/runner.json     the ledger record (RunnerRecord)
    runners/<name>/workspace/      the rendered Terraform workspace and its state
    runners/<name>/logs/           logs kept after the instance is gone
    locks/<name>.lock              held by whichever command runs Terraform for <name>
    plugin-cache/, terraformrc     shared by every workspace

Everything is private to the user: folders 0700, files 0600 (the process umask is 077 while
cml-infra works, and Terraform inherits it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout
from pydantic import BaseModel

from cml_infra.errors import CmlInfraError, UsageError

State = Literal["provisioning", "running", "idle", "destroying", "destroyed", "failed"]
LIVE_STATES: frozenset[str] = frozenset({"provisioning", "running", "idle", "destroying", "failed"})
PRIVATE_UMASK = 0o077


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def default_state_dir() -> Path:
    from platformdirs import user_state_dir

    return Path(user_state_dir("cml-infra", appauthor=False))


def resolve_state_dir(value: str | Path | None) -> Path:
    """`--state-dir`, else `CML_INFRA_HOME` (typer passes the env var in), else the default."""
    return Path(value).expanduser().resolve() if value else default_state_dir()


class RunnerRecord(BaseModel):
    """What the launcher knows of one runner; enough for `status`, `down` and `cleanup`."""

    name: str
    cloud: str
    region: str
    state: State
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    idle_timeout: int
    ttl: int
    single: bool = False
    labels: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    instance_type: str = ""
    gpu: str | None = None
    spot: bool = False
    hourly_price: float | None = None
    instance_id: str | None = None
    engine: tuple[str, ...] = ()
    outputs: dict[str, Any] = {}
    # The forge the runner registered with (kind, scope, api_url): never a token.
    forge: dict[str, Any] | None = None
    end_reason: str | None = None
    error: str | None = None
    # When it was recorded as destroyed: where `cost.accrued` stops counting.
    ended_at: datetime | None = None


def write_private(path: Path, text: str) -> None:
    """Write atomically with mode 0600 whatever the umask, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def make_private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


class StateDir:
    """Access to one state dir; creates nothing until something is written."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def runners(self) -> Path:
        return self.root / "runners"

    @property
    def plugin_cache(self) -> Path:
        return self.root / "plugin-cache"

    @property
    def cli_config(self) -> Path:
        return self.root / "terraformrc"

    def runner_dir(self, name: str) -> Path:
        return self.runners / name

    def workspace(self, name: str) -> Path:
        return self.runner_dir(name) / "workspace"

    def log_dir(self, name: str) -> Path:
        return self.runner_dir(name) / "logs"

    def ensure(self) -> None:
        os.umask(PRIVATE_UMASK)
        for folder in (self.root, self.runners, self.root / "locks", self.plugin_cache):
            make_private_dir(folder)

    @contextlib.contextmanager
    def lock(self, name: str, *, wait: float) -> Iterator[None]:
        """Hold `name`'s lock; `wait` seconds at most (0: fail at once if another holds it)."""
        self.ensure()
        lock = FileLock(self.root / "locks" / f"{name}.lock", mode=0o600)
        try:
            lock.acquire(timeout=wait)
        except Timeout:
            if wait == 0:
                raise UsageError(
                    "--name", f"{name!r} is in use: another cml-infra command is working on it"
                ) from None
            raise CmlInfraError(
                f"{name}: another cml-infra command has held its lock for over {wait:.0f}s"
            ) from None
        try:
            yield
        finally:
            lock.release()

    @contextlib.contextmanager
    def shared_lock(self, what: str) -> Iterator[None]:
        """A lock for what all runners share (the plugin cache is unsafe for parallel init)."""
        with self.lock(f".{what}", wait=600):
            yield

    def load(self, name: str) -> RunnerRecord | None:
        path = self.runner_dir(name) / "runner.json"
        try:
            return RunnerRecord.model_validate_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise CmlInfraError(f"{path}: unreadable runner record ({exc})") from None

    def save(self, record: RunnerRecord) -> RunnerRecord:
        now = utcnow()
        record = record.model_copy(update={"updated_at": now})
        if record.state == "destroyed" and record.ended_at is None:
            record = record.model_copy(update={"ended_at": now})
        self.ensure()
        make_private_dir(self.runner_dir(record.name))
        write_private(
            self.runner_dir(record.name) / "runner.json", record.model_dump_json(indent=2)
        )
        return record

    def records(self) -> list[RunnerRecord]:
        if not self.runners.is_dir():
            return []
        found = (self.load(path.name) for path in sorted(self.runners.iterdir()) if path.is_dir())
        return [record for record in found if record is not None]

    def remove_workspace(self, name: str) -> None:
        shutil.rmtree(self.workspace(name), ignore_errors=True)

    def write_cli_config(self) -> Path:
        """Terraform CLI config of our own: a shared plugin cache and no calls home.

        Written rather than inherited because the environment may point TF_CLI_CONFIG_FILE at a
        file that does not exist, which makes every Terraform command print a warning.
        """
        self.ensure()
        text = (
            f"plugin_cache_dir   = {json.dumps(str(self.plugin_cache))}\n"
            "disable_checkpoint = true\n"
        )
        if not self.cli_config.exists() or self.cli_config.read_text(encoding="utf-8") != text:
            write_private(self.cli_config, text)
        return self.cli_config
