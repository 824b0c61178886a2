"""The ledger: one folder per runner (its record and Terraform workspace), and the locks.

Layout under the state dir (platformdirs user state dir, `--state-dir`, or `CML_INFRA_HOME`):

    runners/<name>/runner.json     the ledger record (RunnerRecord)
    runners/<name>/workspace/      the rendered Terraform workspace and its state
    runners/<name>/logs/           logs kept after the instance is gone
    locks/<name>.lock              held by whichever command runs Terraform for <name>
    terraform/                     the engine's CLI config and plugin cache (terraform.py)

Everything is private to the user: folders 0700, files 0600 (the process umask is 077 while
cml-infra works, and Terraform inherits it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cml_infra.errors import CmlInfraError, UsageError

if TYPE_CHECKING:
    from cml_infra.terraform import EngineHome

State = Literal["provisioning", "running", "idle", "destroying", "destroyed", "failed"]
LIVE_STATES: frozenset[str] = frozenset({"provisioning", "running", "idle", "destroying", "failed"})
PRIVATE_UMASK = 0o077
RECORD_FILE = "runner.json"
# Where the option comes from, for errors about an unusable state dir.
STATE_DIR_SOURCE = "--state-dir"
STATE_DIR_HINT = "give --state-dir (or CML_INFRA_HOME) a folder this user can create and write"
# How often a wait for a lock looks again.
LOCK_POLL_SECONDS = 0.05


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def default_state_dir() -> Path:
    from platformdirs import user_state_dir

    return Path(user_state_dir("cml-infra", appauthor=False))


def resolve_state_dir(value: str | Path | None) -> Path:
    """`--state-dir`, else `CML_INFRA_HOME` (typer passes the env var in), else the default.

    An empty value is refused rather than read as the working folder."""
    if value is None:
        return default_state_dir()
    return user_path(str(value), STATE_DIR_SOURCE)


# The state dir whose user catalog (`catalog refresh`'s) `up` and `render` price with; None: the
# packaged catalog only. Set by the command, read where a placement is resolved.
CATALOG_STATE_DIR: ContextVar[Path | None] = ContextVar("CATALOG_STATE_DIR", default=None)


def user_path(value: str, source: str) -> Path:
    """A path a user typed: `~` expanded, made absolute; empty or unusable is a UsageError."""
    if not value.strip():
        raise UsageError(source, "the path is empty; give a folder")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # Bytes that are not UTF-8: such a path could not be written into a workspace.
        raise UsageError(source, f"{value!r} is not valid UTF-8") from None
    try:
        return Path(value).expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, an unknown ~user
        raise UsageError(source, f"{value!r} is not a usable path ({exc})") from None


def _record_model() -> type[RunnerRecord]:
    # Imported when a record is read or written, not by `cml-infra status` on an empty state
    # dir.
    from cml_infra.record import RunnerRecord

    return RunnerRecord


if TYPE_CHECKING:
    from cml_infra.record import RunnerRecord


class BrokenRecord(CmlInfraError):
    """A record file that cannot be read: reported and skipped, never fatal for the others."""

    def __init__(self, name: str, path: Path | str, reason: str) -> None:
        self.name = name
        super().__init__(f"{path}: unreadable runner record ({reason})")


@dataclass(frozen=True)
class Scan:
    """Every record of a state dir: the readable ones, and one line for each that is not."""

    records: list[RunnerRecord]
    broken: list[BrokenRecord]


def write_private(path: Path, text: str) -> None:
    """Write atomically with mode 0600 whatever the umask, so a reader never sees half a file.

    The temporary file gets a fresh random name (O_EXCL), so a file or symlink planted beside
    the target is never written through; the final rename replaces a link, never its target.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def make_private_dir(path: Path) -> Path:
    """Create `path` and its missing parents 0700; a folder that exists keeps its mode (it may
    be the user's, as with `--state-dir .`)."""
    missing = []
    folder = path
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(folder, 0o700)
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    return path


class StateDir:
    """Access to one state dir; creates nothing until something is written.

    The ledger commands work with: records, holds and workspaces keyed by `key(record)` (the
    name here; the launch id in a backend, see backends/ledger.py, which keeps the same shape).
    """

    # Whether the records live elsewhere than this machine (a backend).
    remote = False

    def __init__(self, root: Path) -> None:
        self.root = root

    def key_of(self, name: str, launch_id: str) -> str:
        """The key of a runner's record, hold and workspace: its name, unique in a state dir."""
        return name

    def key(self, record: RunnerRecord) -> str:
        return self.key_of(record.name, record.launch_id)

    def describe(self) -> str:
        return str(self.root)

    def cli_args(self) -> tuple[str, ...]:
        """The flags that make another cml-infra process use this same ledger."""
        return ("--state-dir", str(self.root))

    @property
    def local_root(self) -> Path:
        """Where the local cloud keeps its instances and their logs."""
        return self.root / "local"

    def instance_logs(self, name: str) -> Path:
        """Where a local instance's log is kept once its sandbox is gone."""
        return self.log_dir(name)

    def check(self) -> None:
        """Whether the ledger can be used (a backend is asked; a state dir is made on use)."""

    def knows(self, key: str) -> bool:
        try:
            return self.runner_dir(key).is_dir()
        except OSError:  # a state dir whose path cannot be one (too long): it knows nothing
            return False

    def named(self, name: str) -> list[RunnerRecord]:
        """The records of runners called `name` (one at most in a state dir)."""
        record = self.load(name)
        return [] if record is None else [record]

    def configure_workspace(self, key: str, workspace: Path) -> None:
        """Add what the workspace needs besides the render (a backend block in a backend)."""

    def publish_workspace(self, key: str, workspace: Path, stand_in: dict[str, object]) -> None:
        """Keep the workspace where other machines find it (nothing to do here)."""

    def fetch_workspace(self, key: str) -> bool:
        """Whether this machine has the workspace (a backend brings its copy here first)."""
        return (self.workspace(key) / "main.tf").is_file()

    def has_workspace(self, key: str) -> bool:
        return self.workspace(key).is_dir()

    def put_away(self, key: str) -> None:
        """After `up` made the runner: the workspace stays where `down` will run Terraform."""

    @property
    def runners(self) -> Path:
        return self.root / "runners"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    def runner_dir(self, name: str) -> Path:
        return self.runners / name

    def record_path(self, name: str) -> Path:
        return self.runner_dir(name) / RECORD_FILE

    def workspace(self, name: str) -> Path:
        return self.runner_dir(name) / "workspace"

    def log_dir(self, name: str) -> Path:
        return self.runner_dir(name) / "logs"

    def engine_home(self) -> EngineHome:
        from cml_infra.terraform import EngineHome

        return EngineHome(self.root / "terraform")

    def ensure(self) -> None:
        """Create the state dir's folders, or fail in one line naming the option."""
        os.umask(PRIVATE_UMASK)
        with unusable_as_usage(self.root):
            for folder in (self.root, self.runners, self.locks):
                make_private_dir(folder)
            if not os.access(self.root, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self.root))

    @contextlib.contextmanager
    def lock(self, name: str, *, wait: float, claim: bool | None = None) -> Iterator[None]:
        """Hold `name`'s lock; `wait` seconds at most. For a claim of the name (`up`; the
        default when `wait` is 0) a lock held past the wait is bad input, the name being in
        use; otherwise it is a failure."""
        self.ensure()
        with unusable_as_usage(self.root):
            fd = acquire(self.locks / f"{name}.lock", wait)
        if fd is None:
            if claim or (claim is None and wait == 0):
                raise UsageError(
                    "--name", f"{name!r} is in use: another cml-infra command is working on it"
                )
            raise CmlInfraError(
                f"{name}: another cml-infra command has held its lock for over {wait:.0f}s"
            )
        try:
            yield
        finally:
            release(fd)

    def held(self, name: str) -> bool:
        """Whether a live command holds `name`'s lock (a killed one holds nothing). It takes
        the lock for a moment to know, which `up` allows for (it waits a little)."""
        if not (self.locks / f"{name}.lock").exists():
            return False
        try:
            with self.lock(name, wait=0):
                return False
        except UsageError:
            return True

    def load(self, name: str) -> RunnerRecord | None:
        path = self.record_path(name)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:  # a folder in its place, no permission
            raise BrokenRecord(name, path, exc.strerror or type(exc).__name__) from None
        try:
            record: RunnerRecord = _record_model().from_json(text)
        except ValueError as exc:  # msgspec's DecodeError and ValidationError are ValueErrors
            raise BrokenRecord(name, path, " ".join(str(exc).split())) from None
        return record

    def save(self, record: RunnerRecord) -> RunnerRecord:
        now = utcnow()
        record = record.replace(updated_at=now)
        if record.state == "destroyed" and record.ended_at is None:
            record = record.replace(ended_at=now)
        self.ensure()
        path = self.record_path(self.key(record))
        with unusable_as_usage(self.root):
            make_private_dir(path.parent)
            if path.is_dir() and not path.is_symlink():
                # A folder where the record belongs cannot be replaced by rename; it is junk.
                shutil.rmtree(path)
            write_private(path, record.to_json())
        return record

    def names(self) -> list[str]:
        """Every runner folder's name, records readable or not."""
        try:
            return sorted(path.name for path in self.runners.iterdir() if path.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise UsageError(
                STATE_DIR_SOURCE, f"{self.root}: cannot read it ({exc.strerror}); {STATE_DIR_HINT}"
            ) from None

    def scan(self) -> Scan:
        records, broken = [], []
        for name in self.names():
            try:
                record = self.load(name)
            except BrokenRecord as exc:
                broken.append(exc)
                continue
            if record is not None:
                records.append(record)
        return Scan(records, broken)

    def records(self) -> list[RunnerRecord]:
        """The readable records (see `scan` for the others)."""
        return self.scan().records

    def set_aside(self, name: str) -> Path | str | None:
        """Move an unreadable record out of the way (kept for a person to read)."""
        path = self.record_path(name)
        if not path.exists():
            return None
        kept = path.with_name(f"{RECORD_FILE}.unreadable-{int(utcnow().timestamp())}")
        os.replace(path, kept)
        return kept

    def remove_workspace(self, name: str) -> None:
        shutil.rmtree(self.workspace(name), ignore_errors=True)

    def forget(self, name: str) -> None:
        """Remove everything of a runner that never existed: record, workspace, logs."""
        shutil.rmtree(self.runner_dir(name), ignore_errors=True)


def acquire(path: Path, wait: float) -> int | None:
    """An exclusive lock on `path` (created 0600): its descriptor, or None when another open
    of it held the lock for `wait` seconds. An flock ends with its holder, however it dies."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(min(LOCK_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        except OSError:
            os.close(fd)
            raise


def release(fd: int) -> None:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def unusable_as_usage(root: Path) -> Iterator[None]:
    """An OSError on the state dir itself becomes one line that names the option."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UsageError(
            STATE_DIR_SOURCE, f"cannot use {root} as the state dir ({reason}); {STATE_DIR_HINT}"
        ) from None
