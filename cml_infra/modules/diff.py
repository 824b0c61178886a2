"""`cml-infra modules diff DIR`: how the forks in DIR differ from the modules and templates this
version of cml-infra packages, as a unified diff per file, so that a team sees after an upgrade
what it changed and what the new version changed under it.

A module fork replaces the packaged module whole, so a packaged file it lacks is `removed`; a
fork's templates/ replaces templates one by one, so only the ones it holds are compared.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cml_infra import packaged
from cml_infra.errors import UsageError
from cml_infra.modules.eject import IGNORED, modules_of


@dataclass(frozen=True)
class FileDiff:
    """One file that differs: `added` (only in the fork), `removed` (only packaged) or
    `changed`, with its unified diff (packaged → fork)."""

    path: str
    status: str
    text: str


@dataclass(frozen=True)
class FolderDiff:
    """A fork folder (`local`, `templates`) against the packaged one."""

    folder: str
    files: tuple[FileDiff, ...]

    def summary(self) -> str:
        if not self.files:
            return f"{self.folder}/: same as packaged"
        counts = {status: 0 for status in ("added", "removed", "changed")}
        for item in self.files:
            counts[item.status] += 1
        return f"{self.folder}/: " + ", ".join(f"{n} {status}" for status, n in counts.items())


def diff(target: Path, cloud: str | None) -> list[FolderDiff]:
    """Each fork in `target` (the one of `cloud`) and its templates/, against the packaged."""
    if not target.is_dir():
        raise UsageError("DIR", f"{target}: no such folder")
    wanted = modules_of(cloud)
    present = {name: module for name, module in wanted.items() if (target / module).is_dir()}
    if cloud is not None and not present:
        module = next(iter(wanted.values()))
        raise UsageError("DIR", f"no {module}/ in {target} (looked for {target / module})")
    templates = target / packaged.TEMPLATES
    if not present and not templates.is_dir():
        listed = ", ".join(f"{module}/" for module in sorted(set(wanted.values())))
        raise UsageError("DIR", f"{target} holds no fork: none of {listed} or templates/")
    found = [
        FolderDiff(module, tuple(_compare(packaged.module_dir(module), target / module, module)))
        for module in dict.fromkeys(present.values())
    ]
    if templates.is_dir():
        compared = _compare(packaged.templates_dir(), templates, packaged.TEMPLATES)
        found.append(
            FolderDiff(packaged.TEMPLATES, tuple(f for f in compared if f.status != "removed"))
        )
    return found


def _compare(packaged_folder: Path, fork: Path, label: str) -> Iterator[FileDiff]:
    ours, theirs = _files(packaged_folder), _files(fork)
    for relative in sorted(set(ours) | set(theirs)):
        path = f"{label}/{relative}"
        before, after = ours.get(relative), theirs.get(relative)
        if before is not None and after is not None and before.read_bytes() == after.read_bytes():
            continue
        status = "added" if before is None else "removed" if after is None else "changed"
        yield FileDiff(path, status, _unified(path, before, after))


def _files(folder: Path) -> dict[str, Path]:
    """Relative path → file, without what eject leaves out (Terraform's working files)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(fnmatch.fnmatch(part, pattern) for part in relative.parts for pattern in IGNORED):
            continue
        if path.is_file():
            found[relative.as_posix()] = path
    return found


def _unified(path: str, before: Path | None, after: Path | None) -> str:
    old, new = _lines(before), _lines(after)
    if old is None or new is None:
        return f"Binary files a/{path} and b/{path} differ\n"
    lines = difflib.unified_diff(
        old,
        new,
        fromfile=f"a/{path}" if before is not None else "/dev/null",
        tofile=f"b/{path}" if after is not None else "/dev/null",
    )
    text = ""
    for line in lines:
        # A last line without its newline, marked as diff and patch mark it.
        text += line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
    return text


def _lines(path: Path | None) -> list[str] | None:
    if path is None:
        return []
    try:
        return path.read_text(encoding="utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None
