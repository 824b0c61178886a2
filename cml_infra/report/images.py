"""`--image FILE` (or `FILE=Caption`) → markdown images with a caption under each.

Links are local paths relative to the report's folder, so that `comment` finds the files and
publishes them (it rewrites the links then). The caption is the file's stem
(`plots/loss.png` → `loss`) unless one is given after `=`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePath
from urllib.parse import quote

from cml_infra.errors import UsageError

# What GitHub shows inline in a comment.
EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")
# Characters that would end or change a markdown image's alt text or caption.
_MARKUP = str.maketrans({c: f"\\{c}" for c in "\\`*_[]<>#!|~"})


@dataclass(frozen=True)
class Image:
    path: str
    caption: str


def parse(spec: str) -> Image:
    """One `--image` value; UsageError naming --image for a missing file or one that is not an
    image GitHub shows. The caption starts after the first `=` that follows a file's path, so
    file names and captions may both hold `=`."""
    path, caption = spec, ""
    if not Path(spec).exists():
        cuts = [index for index, char in enumerate(spec) if char == "="]
        cut = next((i for i in cuts if Path(spec[:i]).is_file()), cuts[0] if cuts else None)
        if cut is not None:
            path, caption = spec[:cut], spec[cut + 1 :]
    if any(char in path for char in "\r\n"):
        raise UsageError("--image", f"{path!r}: a path with a line break cannot be a link")
    if not Path(path).is_file():
        what = "is not a file" if Path(path).exists() else "no such file"
        raise UsageError("--image", f"{path}: {what}")
    if Path(path).suffix.lower() not in EXTENSIONS:
        raise UsageError(
            "--image",
            f"{path}: not an image GitHub shows in a comment; give one of " + ", ".join(EXTENSIONS),
        )
    return Image(path, " ".join(caption.split()) or Path(path).stem)


def section(specs: list[str], relative_to: str | None = None) -> str:
    """The images of `specs`, each followed by its caption; `relative_to` is the folder the
    report is written to, when not the working directory: links resolve from there."""
    blocks = []
    for image in map(parse, specs):
        link = _link(image.path, relative_to)
        caption = image.caption.translate(_MARKUP)
        blocks.append(f"![{caption}]({link})\n\n*{caption}*\n")
    return "\n".join(blocks)


def _link(path: str, relative_to: str | None) -> str:
    """A link destination for `path`, relative to the report's folder (`comment` publishes
    relative links only, resolved from there; the working directory for a report on stdin),
    with forward slashes, percent-encoded (a space, `(`, `#` or `?` would end or cut it)."""
    path = os.path.relpath(os.path.abspath(path), relative_to or os.curdir)
    return quote(PurePath(path).as_posix(), safe="/=+,@")
