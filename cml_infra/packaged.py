"""Where the terraform/ modules and templates/ come from: the packaged ones (inside the package
once installed, else the repository: the top-level folders platform teams fork), or a team's
forks in `--modules-dir`."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from cml_infra.errors import UsageError

_PACKAGE = Path(__file__).resolve().parent
TEMPLATES = "templates"


@cache
def data_root() -> Path:
    # A wheel carries terraform/ and templates/ under cml_infra/_data (see pyproject.toml);
    # a source checkout or an editable install reads them from the repository's top level.
    for root in (_PACKAGE / "_data", _PACKAGE.parent):
        if (root / "terraform").is_dir() and (root / "templates").is_dir():
            return root
    raise RuntimeError(f"cml-infra is installed without its terraform/ and templates/ ({_PACKAGE})")


def module_dir(module: str, modules_dir: Path | None = None) -> Path:
    """The module folder: `modules_dir/<module>` when a folder of forks is given (a UsageError
    naming --modules-dir when it lacks that one), else the packaged one."""
    if modules_dir is None:
        return data_root() / "terraform" / module
    fork = modules_dir / module
    if not fork.is_dir():
        found = sorted(
            entry.name + "/"
            for entry in _entries(modules_dir)
            if entry.is_dir() and not entry.name.startswith(".")
        )
        raise UsageError(
            "--modules-dir",
            f"no {module}/ in {modules_dir} (looked for {fork}; found "
            f"{', '.join(found) or 'nothing'}); `cml-infra modules eject {modules_dir} "
            f"--cloud {module}` makes one",
        )
    return fork


def templates_dir() -> Path:
    return data_root() / TEMPLATES


def template_dirs(modules_dir: Path | None = None) -> tuple[Path, ...]:
    """Where templates are looked for, first match wins: a fork's `templates/` (any template
    it holds replaces the packaged one of the same name), then the packaged ones."""
    if modules_dir is not None and (modules_dir / TEMPLATES).is_dir():
        return (modules_dir / TEMPLATES, templates_dir())
    return (templates_dir(),)


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []
