"""The actions/runner test double, packed as a release archive.

tests/fakes/runner/ has the layout of an actions/runner release (config.sh, run.sh,
bin/Runner.Listener, bin/Runner.Worker) and talks to the /_fake/ control API of the fake GitHub
(tests/fakes/github.py). `build_archive` packs it as `actions-runner-<platform>-<version>.tar.gz`
with the files at the archive root, so that `tar xzf` in an empty folder gives `./config.sh`,
as with the real archive, plus `bin/runnerversion`: the version the double then says it is (the
real runner has it built in), which the fake GitHub holds to its minimum. The archive is
reproducible: same files and version, same bytes, same sha256.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

RUNNER_VERSION = "2.330.0"
RUNNER_DIR = Path(__file__).resolve().parent / "runner"
ARCHIVE_NAME = f"actions-runner-linux-x64-{RUNNER_VERSION}.tar.gz"
# Written into the archive: the version the double reports (bin/Runner.Listener reads it).
VERSION_FILE = "bin/runnerversion"
EXECUTABLES = ("config.sh", "run.sh", "bin/Runner.Listener", "bin/Runner.Worker")
# Left out if present in the source folder: what running the double there would leave behind.
SKIPPED = {".runner", "_work", "_diag", "__pycache__", "runnerversion"}
# A fixed mtime (the 2.321.0 release week) keeps the archive's bytes reproducible.
MTIME = 1732000000


def _members(root: Path) -> list[Path]:
    found = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part in SKIPPED for part in relative.parts) or path.suffix == ".pyc":
            continue
        found.append(path)
    return found


def build_archive(
    dest_dir: Path, version: str = RUNNER_VERSION, platform: str = "linux-x64"
) -> Path:
    """Pack tests/fakes/runner/ as release `version` for `platform` into dest_dir (modes
    kept) and return its path."""
    missing = [name for name in EXECUTABLES if not (RUNNER_DIR / name).is_file()]
    if missing:
        raise FileNotFoundError(f"runner double incomplete, missing: {', '.join(missing)}")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    archive = dest_dir / f"actions-runner-{platform}-{version}.tar.gz"
    with (
        archive.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in _members(RUNNER_DIR):
            name = path.relative_to(RUNNER_DIR).as_posix()
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = MTIME
            if name in EXECUTABLES:
                # Kept as on disk, plus the execute bits a checkout may have lost.
                info.mode |= 0o755
            if info.isfile():
                with path.open("rb") as content:
                    tar.addfile(info, content)
            else:
                tar.addfile(info)
        stamp = f"{version}\n".encode()
        info = tarfile.TarInfo(VERSION_FILE)
        info.size, info.mode, info.mtime = len(stamp), 0o644, MTIME
        info.uname = info.gname = "root"
        tar.addfile(info, io.BytesIO(stamp))
    return archive


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, as in the `.sha256` next to a release archive."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as content:
        for chunk in iter(lambda: content.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()
