"""Task mode's traffic: the working folder in, the outputs out (reported by report.py).

What needs tarfile, urllib or ssl runs in a forked child (loop._isolated), so that none of it
stays in the agent, which lives as long as the instance. A URL is a capability: no message
here quotes one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .hooks import log
from .loop import _isolated
from .report import OUTPUTS_ARCHIVE, _scrub

if TYPE_CHECKING:
    from .loop import Agent

# The workdir download: attempts, and its timeout (a large archive over a slow link).
FETCH_ATTEMPTS = 4
FETCH_TIMEOUT = 60.0
WORKDIR_ARCHIVE = "workdir.tar.gz"


def fetch_workdir(source: dict[str, Any], home: Path, work: Path) -> str | None:
    """Fetch and unpack the working folder into `work`; None once done, else why not."""
    if "file" in source:
        archive = Path(source["file"])
    else:
        archive = home / WORKDIR_ARCHIVE
        try:
            _isolated(lambda: _download(str(source["url"]), archive))
        except RuntimeError as exc:
            return f"workdir could not be fetched: {exc}"
    try:
        _isolated(lambda: unpack(archive, work))
    except RuntimeError as exc:
        return f"workdir could not be unpacked: {exc}"
    finally:
        if "file" not in source:
            archive.unlink(missing_ok=True)
    return None


def _download(url: str, dest: Path) -> None:
    import shutil
    import urllib.request

    delay = 2.0
    for attempt in range(1, FETCH_ATTEMPTS + 1):
        try:
            with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as got, dest.open("wb") as out:
                shutil.copyfileobj(got, out, 1 << 20)
            return
        except (OSError, ValueError) as exc:
            message = _scrub(exc, url)
            if attempt == FETCH_ATTEMPTS:
                tries = f"{attempt} attempt" + "s" * (attempt > 1)
                raise OSError(f"{message} from the workdir URL ({tries})") from None
            log(f"workdir: download attempt {attempt} failed ({message}); retrying")
            time.sleep(delay)
            delay *= 2


def _inside(name: str) -> bool:
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and ".." not in parts and "\0" not in name


def unpack(archive: Path, dest: Path) -> None:
    """Unpack a gzip tar into `dest`, refusing what could reach outside it: absolute names,
    `..`, links out of it, hard links, devices and fifos, and any write through a symlink."""
    import tarfile

    dest.mkdir(exist_ok=True)
    modes: list[tuple[Path, int]] = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            name = member.name.removeprefix("./").rstrip("/")
            if name in ("", "."):
                continue
            if not _inside(name):
                raise ValueError(f"{member.name!r}: not a relative path inside the folder")
            parent = dest
            for part in name.split("/")[:-1]:
                parent = parent / part
                if parent.is_symlink():
                    raise ValueError(f"{member.name!r}: would be written through a symlink")
                parent.mkdir(mode=0o755, exist_ok=True)
            path = dest / name
            if path.is_symlink():
                raise ValueError(f"{member.name!r}: would be written through a symlink")
            if member.isdir():
                path.mkdir(mode=0o755, exist_ok=True)
                modes.append((path, (member.mode & 0o777) | 0o700))
            elif member.isfile():
                source = tar.extractfile(member)
                assert source is not None
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                with source, os.fdopen(os.open(path, flags, 0o600), "wb") as out:
                    while chunk := source.read(1 << 20):
                        out.write(chunk)
                os.chmod(path, member.mode & 0o777)
            elif member.issym():
                target = os.path.normpath(os.path.join(os.path.dirname(name), member.linkname))
                if member.linkname.startswith("/") or not _inside(target):
                    raise ValueError(f"{member.name!r}: a symlink leaving the folder")
                os.symlink(member.linkname, path)
            else:
                raise ValueError(f"{member.name!r}: not a file, folder or symlink")
    # Last, deepest first: a read-only folder must not stop what goes into it.
    for folder, mode in reversed(modes):
        os.chmod(folder, mode)


def pack_outputs(work: Path, paths: list[str], archive: Path) -> dict[str, Any]:
    """Pack the outputs that exist into `archive`; what was packed, what is missing, the size."""
    real = os.path.realpath(work)
    # A path through a symlink, or a symlink, that leaves the folder is not an output.
    found = [p for p in paths if _inside(p.strip("/")) and os.path.lexists(work / p)
             and _within(real, str(work / p))]  # fmt: skip
    _isolated(lambda: _pack(work, [p.strip("/") for p in found], archive))
    missing = [p for p in paths if p not in found]
    return {"uploaded": found, "missing": missing, "bytes": archive.stat().st_size}


def pack_for(agent: Agent) -> None:
    """The agent's outputs packed at its task's end, and queued for upload."""
    archive = agent.home / OUTPUTS_ARCHIVE
    try:
        agent.outputs = outputs = pack_outputs(agent.home / "work", agent.output_paths, archive)
    except (OSError, RuntimeError) as exc:
        log(f"outputs could not be packed: {exc}")
        return
    log(f"outputs: packed {len(outputs['uploaded'])}, missing {outputs['missing']}")
    if agent.reporter is not None:
        agent.reporter.queue(OUTPUTS_ARCHIVE, archive)


def _within(root: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real == root or real.startswith(root + os.sep)


def _pack(work: Path, names: list[str], archive: Path) -> None:
    import tarfile

    root = os.path.realpath(work)

    def add(tar: tarfile.TarFile, name: str) -> None:
        path = work / name
        link = path.is_symlink()
        # Fifos, sockets and devices are no outputs; nor a link out of the folder.
        if (link and not _within(root, str(path))) or not (link or path.is_file() or path.is_dir()):
            return
        # Never a hard link entry: an unpacker that refuses them must take the archive.
        tar.inodes.clear()  # type: ignore[attr-defined]
        tar.add(path, name, recursive=False)
        if not link and path.is_dir():
            for child in sorted(os.listdir(path)):
                add(tar, f"{name}/{child}")

    with tarfile.open(archive, "w:gz") as tar:
        for name in names:
            add(tar, name)
