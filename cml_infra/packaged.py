"""Where the packaged terraform/ modules and templates/ are: inside the package once installed,
else the repository (the top-level folders platform teams fork)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


@cache
def data_root() -> Path:
    # A wheel carries terraform/ and templates/ under cml_infra/_data (see pyproject.toml);
    # a source checkout or an editable install reads them from the repository's top level.
    for root in (_PACKAGE / "_data", _PACKAGE.parent):
        if (root / "terraform").is_dir() and (root / "templates").is_dir():
            return root
    raise RuntimeError(f"cml-infra is installed without its terraform/ and templates/ ({_PACKAGE})")


def module_dir(module: str) -> Path:
    return data_root() / "terraform" / module


def templates_dir() -> Path:
    return data_root() / "templates"
