"""The working folder a task takes with it (a gzip tar), and the outputs that come back.

What is shipped follows git: every `.gitignore` (at any depth) and then `.cml-infra-ignore` at
the folder's root, both in gitignore syntax; `.git` is never shipped.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pathspec

from cml_infra import ui
from cml_infra.errors import CmlInfraError, UsageError

DEFAULT_LIMIT: int = 100 * 1024 * 1024
IGNORE_FILE = ".cml-infra-ignore"

_OUT_HINT = "must be a path inside the working folder, e.g. model.bin or results/"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


@dataclass(frozen=True)
class Packed:
    """A packed working folder: `data` is a deterministic gzip tar."""

    data: bytes
    files: int
    size: int
    sha256: str


@dataclass
class _Entry:
    rel: str
    mode: int  # st_mode from lstat
    size: int
    mtime: int
    link: str | None = None  # target as it is written into the tar


@dataclass
class _Tree:
    entries: list[_Entry] = field(default_factory=list)
    dirs: dict[str, int] = field(default_factory=dict)  # folder -> mtime
    escaping: list[str] = field(default_factory=list)  # symlinks leading out, skipped


def select(workdir: Path) -> list[str]:
    """Relative POSIX paths of what is shipped (files and symlinks; folders implied), sorted."""
    return [entry.rel for entry in _walk(workdir, "--workdir").entries]


def pack(workdir: Path, limit: int = DEFAULT_LIMIT, flag: str = "--workdir") -> Packed:
    """Pack what `select` picks; refuse (before reading any file) more than `limit` bytes."""
    tree = _walk(workdir, flag)
    if tree.escaping:
        shown = ", ".join(tree.escaping[:3])
        more = f" and {len(tree.escaping) - 3} more" if len(tree.escaping) > 3 else ""
        ui.warn(f"symlinks leading out of {workdir} are not shipped: {shown}{more}")
    regular = [entry for entry in tree.entries if entry.link is None]
    total = sum(entry.size for entry in regular)
    if total > limit:
        raise UsageError(flag, _too_big(total, limit, regular))

    buffer = io.BytesIO()
    # mtime=0 and no file name in the gzip header: the same tree gives the same bytes.
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="", compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        root = Path(workdir)
        shipped = 0
        pending_dirs = sorted(tree.dirs)
        for entry in tree.entries:
            # Folders go before what they hold: tar order is sorted by path.
            while pending_dirs and pending_dirs[0] < entry.rel:
                name = pending_dirs.pop(0)
                tar.addfile(_info(name, tarfile.DIRTYPE, 0o755, tree.dirs[name]))
            if entry.link is not None:
                info = _info(entry.rel, tarfile.SYMTYPE, 0o777, entry.mtime)
                info.linkname = entry.link
                tar.addfile(info)
                continue
            mode = 0o755 if entry.mode & 0o111 else 0o644
            path = root / entry.rel
            try:
                fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
            except OSError as exc:
                raise _unreadable(flag, path, exc) from None
            with os.fdopen(fd, "rb") as file:
                try:
                    info = _info(entry.rel, tarfile.REGTYPE, mode, entry.mtime)
                    info.size = os.fstat(fd).st_size
                    tar.addfile(info, file)
                except OSError as exc:
                    raise _unreadable(flag, path, exc) from None
            shipped += info.size
        for name in pending_dirs:
            tar.addfile(_info(name, tarfile.DIRTYPE, 0o755, tree.dirs[name]))
    data = buffer.getvalue()
    return Packed(
        data=data, files=len(regular), size=shipped, sha256=hashlib.sha256(data).hexdigest()
    )


def parse_outputs(values: Sequence[str]) -> tuple[str, ...]:
    """The `--out` paths, normalised (`./a//b/` -> `a/b`), without duplicates, in order."""
    seen: dict[str, None] = {}
    for value in values:
        path = PurePosixPath(value)
        if (
            not value.strip()
            or "\0" in value
            or path.is_absolute()
            or ".." in path.parts
            or str(path) == "."
        ):
            raise UsageError("--out", f"{value!r} {_OUT_HINT}")
        seen.setdefault(str(path), None)
    return tuple(seen)


def unpack(
    data: bytes, dest: Path, flag: str = "DEST", *, only: Sequence[str] | None = None
) -> list[str]:
    """Extract an outputs tar sent back by an instance into `dest`; return the files and
    symlinks written, in archive order.

    Every entry is checked before anything is written. Regular files overwrite older copies;
    anything that could land outside `dest` (absolute or `..` names, links leading out, a
    path through a symlink) and devices, fifos and hard links are refused. With `only`
    (normalised `--out` paths), entries that are not one of them or under one are skipped.
    """
    members = _checked_members(data)
    if only is not None:
        members = [member for member in members if _wanted(member[0], only)]
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(flag, f"{dest} cannot be made a folder ({exc.strerror})") from None
    if not dest.is_dir():
        raise UsageError(flag, f"{dest} is not a folder")
    written: list[str] = []
    for name, member, payload in members:
        parts = name.split("/")
        parent = _real_parent(dest, parts[:-1], name)
        target = parent / parts[-1]
        try:
            if member.isdir():
                _make_dir(target, name)
            elif member.issym():
                _replace_with_link(target, member.linkname, name)
                if name not in written:
                    written.append(name)
            else:
                _write_file(target, payload, member, name)
                if name not in written:
                    written.append(name)
        except OSError as exc:
            raise CmlInfraError(f"cannot write the output {target} ({exc.strerror})") from None
    return written


def _walk(workdir: Path, flag: str) -> _Tree:
    root = Path(workdir)
    if not root.is_dir():
        raise UsageError(flag, f"{workdir} is not a folder")
    real_root = os.path.realpath(root)
    tree = _Tree()
    final = _read_spec(root / IGNORE_FILE, flag)
    _scan(root, "", real_root, [], final, tree, flag)
    tree.entries.sort(key=lambda entry: entry.rel)
    tree.escaping.sort()
    for entry in tree.entries:
        parts = entry.rel.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            folder = "/".join(parts[:depth])
            if folder not in tree.dirs:
                tree.dirs[folder] = int(os.lstat(root / folder).st_mtime)
    return tree


def _scan(
    root: Path,
    rel_dir: str,
    real_root: str,
    specs: list[tuple[str, pathspec.GitIgnoreSpec]],
    final: pathspec.GitIgnoreSpec | None,
    tree: _Tree,
    flag: str,
) -> None:
    folder = root / rel_dir if rel_dir else root
    prefix = f"{rel_dir}/" if rel_dir else ""
    gitignore = _read_spec(folder / ".gitignore", flag)
    if gitignore is not None:
        specs = [*specs, (prefix, gitignore)]
    try:
        with os.scandir(folder) as scan:
            children = sorted(scan, key=lambda child: child.name)
    except OSError as exc:
        raise _unreadable(flag, folder, exc) from None
    for child in children:
        if child.name == ".git":
            continue
        rel = prefix + child.name
        try:
            info = child.stat(follow_symlinks=False)
        except OSError as exc:
            raise _unreadable(flag, root / rel, exc) from None
        is_dir = stat.S_ISDIR(info.st_mode)
        if _ignored(rel, is_dir, specs, final):
            continue
        if is_dir:
            _scan(root, rel, real_root, specs, final, tree, flag)
        elif stat.S_ISREG(info.st_mode):
            tree.entries.append(_Entry(rel, info.st_mode, info.st_size, int(info.st_mtime)))
        elif stat.S_ISLNK(info.st_mode):
            link = _inside_link(root, rel, real_root)
            if link is None:
                tree.escaping.append(rel)
            else:
                tree.entries.append(_Entry(rel, info.st_mode, 0, int(info.st_mtime), link))
        # Sockets, fifos and devices mean nothing on another machine.


def _ignored(
    rel: str,
    is_dir: bool,
    specs: list[tuple[str, pathspec.GitIgnoreSpec]],
    final: pathspec.GitIgnoreSpec | None,
) -> bool:
    """Git's answer: the deepest .gitignore with a matching rule decides; ours overrides."""
    suffix = "/" if is_dir else ""
    verdict: bool | None = None
    for prefix, spec in reversed(specs):
        verdict = spec.check_file(rel[len(prefix) :] + suffix).include
        if verdict is not None:
            break
    if final is not None:
        last = final.check_file(rel + suffix).include
        if last is not None:
            verdict = last
    return bool(verdict)


def _read_spec(path: Path, flag: str) -> pathspec.GitIgnoreSpec | None:
    if not path.is_file():
        return None
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise _unreadable(flag, path, exc) from None
    return pathspec.GitIgnoreSpec.from_lines(lines)


def _inside_link(root: Path, rel: str, real_root: str) -> str | None:
    """The target to ship for the symlink at `rel`, or None when it leads out of the folder."""
    path = root / rel
    resolved = os.path.realpath(path)
    if os.path.commonpath([resolved, real_root]) != real_root:
        return None
    raw = os.readlink(path)
    parent = os.path.dirname(rel)
    lexical = os.path.normpath(os.path.join(parent, raw))
    if not os.path.isabs(raw) and lexical != ".." and not lexical.startswith("../"):
        return raw
    # An absolute target, or one that climbs out and back in, would not hold elsewhere.
    return os.path.relpath(resolved, os.path.join(real_root, parent))


def _too_big(total: int, limit: int, regular: list[_Entry]) -> str:
    tops: dict[str, int] = {}
    for entry in regular:
        head, sep, _ = entry.rel.partition("/")
        key = head + sep
        tops[key] = tops.get(key, 0) + entry.size
    biggest = sorted(tops.items(), key=lambda item: (-item[1], item[0]))[:3]
    shown = ", ".join(f"{name} ({_human(size)})" for name, size in biggest)
    return (
        f"the files to ship total {_human(total)} over the {_human(limit)} limit "
        f"(biggest: {shown}); list what the task does not need in {IGNORE_FILE} "
        "(gitignore syntax)"
    )


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            break
        value /= 1024
    if unit == "B":
        return f"{size} B"
    text = f"{value:.1f}"
    return f"{text.removesuffix('.0')} {unit}"


def _unreadable(flag: str, path: Path, exc: OSError) -> UsageError:
    reason = exc.strerror or str(exc)
    return UsageError(flag, f"a file of the working folder cannot be read: {path} ({reason})")


def _info(name: str, kind: bytes, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


# --- unpacking ------------------------------------------------------------------------------


def _wanted(name: str, only: Sequence[str]) -> bool:
    return any(name == path or name.startswith(f"{path}/") for path in only)


def _refuse(name: str, why: str) -> CmlInfraError:
    return CmlInfraError(f"refusing the outputs sent back by the instance: {name!r} {why}")


def _checked_members(data: bytes) -> list[tuple[str, tarfile.TarInfo, bytes]]:
    """Every entry (normalised name, header, content), checked before anything is written."""
    members: list[tuple[str, tarfile.TarInfo, bytes]] = []
    kinds: dict[str, str] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                name = _checked_name(member.name)
                if name is None:
                    continue  # the archive's own root, "./"
                payload = b""
                if member.isreg():
                    kind = "file"
                    source = tar.extractfile(member)
                    payload = source.read() if source is not None else b""
                elif member.isdir():
                    kind = "dir"
                elif member.issym():
                    _check_link(name, member.linkname)
                    kind = "link"
                elif member.islnk():
                    raise _refuse(name, "is a hard link")
                else:
                    raise _refuse(name, "is a device, fifo or other special file")
                # Nested --out paths put an entry in twice; the later copy wins, as in tar.
                if kinds.setdefault(name, kind) != kind:
                    raise _refuse(name, "appears twice, as different kinds of entry")
                members.append((name, member, payload))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise CmlInfraError(
            f"the outputs sent back by the instance are not a readable gzip tar ({exc})"
        ) from None
    for name in kinds:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            above = "/".join(parts[:depth])
            if kinds.get(above, "dir") != "dir":
                raise _refuse(name, f"lies under {above!r}, which is not a folder")
    return members


def _checked_name(raw: str) -> str | None:
    # A backslash would be a separator on a Windows launcher.
    if raw.startswith("/") or "\\" in raw or not raw:
        raise _refuse(raw, "is not a relative POSIX path")
    path = PurePosixPath(raw)
    if ".." in path.parts:
        raise _refuse(raw, "climbs out with ..")
    name = str(path)
    return None if name == "." else name


def _check_link(name: str, target: str) -> None:
    """A link may climb only through the real folders above it, then only go down."""
    parts = PurePosixPath(target).parts
    if not target or target.startswith("/"):
        raise _refuse(name, f"is a symlink to {target!r}, outside the destination")
    climbs = 0
    while climbs < len(parts) and parts[climbs] == "..":
        climbs += 1
    # `..` after a name is judged on the real folders only, which a symlink may not be.
    if ".." in parts[climbs:] or climbs > name.count("/"):
        raise _refuse(name, f"is a symlink to {target!r}, outside the destination")


def _real_parent(dest: Path, parts: list[str], name: str) -> Path:
    """`dest/parts`, made where missing; none of it may be a symlink or a file."""
    folder = dest
    for part in parts:
        folder = folder / part
        try:
            info = os.lstat(folder)
        except FileNotFoundError:
            try:
                folder.mkdir()
            except OSError as exc:
                raise CmlInfraError(f"cannot make the folder {folder} ({exc.strerror})") from None
            continue
        if stat.S_ISLNK(info.st_mode):
            raise _refuse(name, f"would be written through the symlink {folder}")
        if not stat.S_ISDIR(info.st_mode):
            raise CmlInfraError(f"cannot write the output {name}: {folder} is not a folder")
    return folder


def _make_dir(target: Path, name: str) -> None:
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        target.mkdir()
        return
    if stat.S_ISLNK(info.st_mode):
        raise _refuse(name, f"would be written through the symlink {target}")
    if not stat.S_ISDIR(info.st_mode):
        raise CmlInfraError(f"cannot write the output folder {name}: {target} is a file")


def _existing_symlink(target: Path, name: str) -> None:
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise _refuse(name, f"would be written through the symlink {target}")


def _write_file(target: Path, payload: bytes, member: tarfile.TarInfo, name: str) -> None:
    _existing_symlink(target, name)
    # A new file renamed over the old one: a reader never sees half an output.
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(payload)
        os.chmod(temp, 0o755 if member.mode & 0o111 else 0o644)
        os.utime(temp, (member.mtime, member.mtime))
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _replace_with_link(target: Path, link: str, name: str) -> None:
    # An older link is replaced, not followed; a folder is never replaced.
    if target.is_dir() and not target.is_symlink():
        raise CmlInfraError(f"cannot write the output {name}: {target} is a folder")
    temp = target.parent / f".{target.name}.{os.getpid()}.link"
    temp.unlink(missing_ok=True)
    os.symlink(link, temp)
    os.replace(temp, target)
