"""The report's markdown: which links point at local files, rewriting them, and the watermark.

Links are found where GitHub would render them: inline links and images (`[t](p "title")`,
`![a](<p q.png>)`), reference definitions (`[id]: p`) and the `src` of `<img>` / `href` of `<a>`
tags, but not inside fenced or indented code blocks or code spans. markdown-it (CommonMark)
says where the blocks are and which destinations are links; a small scanner finds each
destination's place in the text, so that a rewrite changes those characters only and leaves the
rest byte for byte.

Only relative paths are local. Remote URLs (any scheme), data: URIs, protocol-relative `//host`
links, pure anchors `#x` and site paths `/x` are left alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from cml_infra.errors import UsageError

WATERMARK_FLAG = "--watermark-title"
# A scheme as CommonMark reads one (2 to 32 characters): `C:\x` is not a URL.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]{1,31}:")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
# The attribute of each tag that links a file.
_TAG_ATTRIBUTE = {"img": "src", "a": "href"}
_TAG = re.compile(r"<(img|a)(?=[\s/>])([^<>]*)>", re.IGNORECASE)
_ATTRIBUTE = re.compile(
    r"""(?:(?<=\s)|(?<=^))(?P<name>[A-Za-z_:][-A-Za-z0-9_:.]*)"""
    r"""(?:\s*=\s*(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<uq>[^\s"'=<>`]+)))?"""
)
# A reference definition: container markers (block quotes, list items) may come first.
_DEFINITION = re.compile(
    r"^(?:[ \t]*(?:>|[-*+](?=[ \t])|\d{1,9}[.)](?=[ \t])))*[ \t]*"
    r"\[(?P<label>(?:\\.|[^\\\[\]])+)\]:[ \t]*(?:(?:\r\n|\r|\n)[ \t>]*)?"
    r"(?P<dest><(?:\\.|[^<>\r\n\\])*>|[^\s<][^\s]*)",
    re.MULTILINE,
)
_PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


@dataclass(frozen=True)
class Link:
    """A link destination in the text: `text[start:end]` is it as written (inside `<…>` or the
    quotes when it has them), `target` the URL it means (escapes and entities decoded)."""

    start: int
    end: int
    target: str
    kind: str  # "inline" (also images), "definition", "html"
    quoted: bool = True  # False: an unquoted HTML attribute, to be quoted when rewritten


@dataclass(frozen=True)
class LocalLink:
    """A link to a file on this machine: `file` resolved, `fragment` kept for the new URL."""

    link: Link
    file: Path
    fragment: str


def find_links(text: str) -> list[Link]:
    """Every link destination outside code, in the order they appear."""
    from markdown_it import MarkdownIt
    from markdown_it.common.utils import normalizeReference, unescapeAll

    md = MarkdownIt("commonmark")
    env: dict[str, Any] = {}
    tokens = md.parse(text, env)
    starts = _line_starts(text)

    def span(lines: Sequence[int]) -> tuple[int, int]:
        return starts[lines[0]], starts[min(lines[1], len(starts) - 1)]

    # What markdown-it reads as a link or an image: a candidate of the scanner must be one.
    destinations: set[str] = set()
    covered: list[tuple[int, int]] = []
    found: list[Link] = []
    for token in tokens:
        if token.map is None:
            continue
        if token.type in ("fence", "code_block"):
            covered.append(span(token.map))
        elif token.type == "html_block":
            covered.append(span(token.map))
            found += _html_links(text, *span(token.map))
        elif token.type == "inline":
            covered.append(span(token.map))
            for child in _walk(token.children or []):
                for name in ("href", "src"):
                    if isinstance(child.attrs.get(name), str):
                        destinations.add(str(child.attrs[name]))
    for token in tokens:
        if token.type == "inline" and token.map is not None:
            start, end = span(token.map)
            masked = _mask(text, start, end)
            for link in _inline_links(text, masked, start, end):
                if md.normalizeLink(link.target) in destinations:
                    found.append(link)
            found += _html_links(text, start, end, masked)
    references = env.get("references", {})
    for start, end in _gaps(covered, len(text)):
        for match in _DEFINITION.finditer(text[start:end]):
            label = normalizeReference(match.group("label"))
            raw = match.group("dest")
            angle = raw.startswith("<")
            target = unescapeAll(raw[1:-1] if angle else raw)
            defined = references.get(label)
            if defined is None or defined.get("href") != md.normalizeLink(target):
                continue
            begin = start + match.start("dest") + (1 if angle else 0)
            found.append(Link(begin, begin + len(raw) - (2 if angle else 0), target, "definition"))
    return sorted(set(found), key=lambda link: link.start)


def local_links(
    text: str, report: str, folder: Path, roots: Iterable[Path] | None = None
) -> list[LocalLink]:
    """The links to local files, resolved from `folder` (the report's; the working directory
    for stdin). A link to a missing file, a folder or anything but a regular file is a
    UsageError naming the report and the link. So is a file outside `roots` (default: the
    working directory and `folder`), symbolic links followed: a report written by the code
    under test could otherwise publish any file this machine can read."""
    allowed = [Path(root).resolve() for root in (roots or (Path.cwd(), folder))]
    found: list[LocalLink] = []
    for link in find_links(text):
        path = local_path(link.target)
        if path is None:
            continue
        fragment = link.target.partition("#")[2] if "#" in link.target else ""
        file = (folder / path).resolve()
        if not any(file == root or root in file.parents for root in allowed):
            raise UsageError(
                report,
                f"the link {link.target!r} points outside the working directory and the "
                "report's folder; only files inside them are published",
            )
        if not file.exists():
            raise UsageError(report, f"the link {link.target!r} names a file that does not exist")
        if file.is_dir():
            raise UsageError(report, f"the link {link.target!r} is a folder, not a file")
        if not file.is_file():
            raise UsageError(report, f"the link {link.target!r} is not a regular file")
        found.append(LocalLink(link, file, fragment))
    return found


def local_path(target: str) -> str | None:
    """The relative file path a link destination names, or None when it is not local."""
    if not target or target.startswith(("#", "/", "\\")) or _SCHEME.match(target):
        return None
    path = unquote(re.split(r"[?#]", target, maxsplit=1)[0])
    return path or None


def rewrite(text: str, urls: Mapping[Link, str]) -> str:
    """`text` with each link's destination replaced by its new URL, nothing else changed."""
    pieces: list[str] = []
    position = 0
    for link in sorted(urls, key=lambda link: link.start):
        url = urls[link]
        pieces += [text[position : link.start], url if link.quoted else f'"{url}"']
        position = link.end
    pieces.append(text[position:])
    return "".join(pieces)


def url_path(path: str) -> str:
    """A path for a URL: each segment percent-encoded (spaces, parentheses and quotes too, so
    that the URL can stand bare in a markdown link or inside an HTML attribute)."""
    return "/".join(quote(part, safe="") for part in path.split("/"))


def fragment_suffix(fragment: str) -> str:
    return "#" + quote(fragment, safe="-._~!$&*+,;=:@/?%") if fragment else ""


# --- the watermark ------------------------------------------------------------------------------


def check_title(title: str) -> None:
    """A title fits in an HTML comment on one line."""
    if not title or not title.strip():
        raise UsageError(WATERMARK_FLAG, "the title is empty")
    if "--" in title or ">" in title or any(ord(c) < 0x20 or c == "\x7f" for c in title):
        raise UsageError(
            WATERMARK_FLAG,
            f"{title!r} cannot stand in an HTML comment: no '--', '>' or control characters",
        )


def watermark(title: str) -> str:
    """What marks our comments (per title): hidden when GitHub renders the markdown."""
    return f"<!-- cml-infra: {title} -->"


def is_ours(body: str, title: str) -> bool:
    return watermark(title) in body


def with_watermark(text: str, title: str) -> str:
    """`text` with the watermark appended on a block of its own. A report that ends inside an
    open code fence or HTML block would show it as text: then it goes first instead."""
    mark = watermark(title)
    appended = text + ("" if text.endswith(("\n", "\r")) or not text else "\n") + "\n" + mark
    if text and _standalone_comment(appended, mark):
        return appended
    return mark + "\n\n" + text


def _standalone_comment(text: str, mark: str) -> bool:
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").parse(text)
    return bool(tokens) and tokens[-1].type == "html_block" and tokens[-1].content.strip() == mark


# --- the scanner ---------------------------------------------------------------------------------


def _walk(tokens: Iterable[Any]) -> Iterable[Any]:
    for token in tokens:
        yield token
        yield from _walk(token.children or [])


def _line_starts(text: str) -> list[int]:
    """Offsets where each line starts (markdown-it's lines: \\r\\n, \\r and \\n end one), and
    the text's length last."""
    return [0, *(match.end() for match in _LINE_BREAK.finditer(text)), len(text)]


def _gaps(covered: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    gaps, position = [], 0
    for start, end in sorted(covered):
        if start > position:
            gaps.append((position, start))
        position = max(position, end)
    if position < length:
        gaps.append((position, length))
    return gaps


def _escaped(text: str, index: int) -> bool:
    """Whether text[index] follows an odd number of backslashes."""
    count = 0
    while index - count - 1 >= 0 and text[index - count - 1] == "\\":
        count += 1
    return count % 2 == 1


def _mask(text: str, start: int, end: int) -> str:
    """text[start:end] with code spans and HTML comments blanked (same length), so that the
    scanner sees no link inside them."""
    chars = list(text[start:end])
    segment = text[start:end]
    index = 0
    while index < len(segment):
        char = segment[index]
        if char == "\\":
            index += 2
            continue
        if char != "`":
            index += 1
            continue
        run = index
        while run < len(segment) and segment[run] == "`":
            run += 1
        width, closing = run - index, run
        while True:
            closing = segment.find("`", closing)
            if closing < 0:
                break
            after = closing
            while after < len(segment) and segment[after] == "`":
                after += 1
            if after - closing == width:
                chars[index:after] = " " * (after - index)
                run = after
                break
            closing = after
        index = run
    masked = "".join(chars)
    return _HTML_COMMENT.sub(lambda match: " " * len(match.group()), masked)


def _inline_links(text: str, masked: str, base: int, end: int) -> list[Link]:
    from markdown_it.common.utils import unescapeAll

    found = []
    position = masked.find("](")
    while position >= 0:
        if not _escaped(masked, position) and _opening_bracket(masked, position) is not None:
            parsed = _destination(masked, position + 2)
            if parsed is not None:
                start, stop = parsed
                raw = text[base + start : base + stop]
                found.append(Link(base + start, base + stop, unescapeAll(raw), "inline"))
        position = masked.find("](", position + 1)
    return found


def _opening_bracket(masked: str, close: int) -> int | None:
    depth = 0
    for index in range(close - 1, -1, -1):
        char = masked[index]
        if char not in "[]" or _escaped(masked, index):
            continue
        if char == "]":
            depth += 1
        elif depth == 0:
            return index
        else:
            depth -= 1
    return None


def _skip_space(text: str, index: int) -> int:
    """Past spaces and tabs and at most one line ending."""
    while index < len(text) and text[index] in " \t":
        index += 1
    if text.startswith("\r\n", index):
        index += 2
    elif index < len(text) and text[index] in "\r\n":
        index += 1
    while index < len(text) and text[index] in " \t":
        index += 1
    return index


def _destination(text: str, index: int) -> tuple[int, int] | None:
    """Where the destination of `[…](` ending at `index` lies (without its angle brackets), if
    a destination, an optional title and `)` follow as CommonMark reads them."""
    index = _skip_space(text, index)
    if index < len(text) and text[index] == "<":
        close = index + 1
        while close < len(text) and text[close] not in "<>\r\n":
            close += 2 if text[close] == "\\" else 1
        if close >= len(text) or text[close] != ">":
            return None
        start, stop, index = index + 1, close, close + 1
    else:
        start, depth = index, 0
        while index < len(text):
            char = text[index]
            if char == "\\" and index + 1 < len(text) and text[index + 1] in _PUNCTUATION:
                index += 2
                continue
            if char.isspace() or ord(char) < 0x20 or char == "\x7f":
                break
            if char == "(":
                depth += 1
            elif char == ")":
                if depth == 0:
                    break
                depth -= 1
            index += 1
        stop = index
        if stop == start or depth:
            return None
    after = _skip_space(text, index)
    if after < len(text) and text[after] in "\"'(" and after > index:
        closer = ")" if text[after] == "(" else text[after]
        after += 1
        while after < len(text) and text[after] != closer:
            after += 2 if text[after] == "\\" else 1
        if after >= len(text):
            return None
        after = _skip_space(text, after + 1)
    if after < len(text) and text[after] == ")":
        return start, stop
    return None


def _html_links(text: str, start: int, end: int, masked: str | None = None) -> list[Link]:
    """`src` of <img> and `href` of <a> tags in text[start:end] (outside comments)."""
    import html

    masked = masked if masked is not None else _mask_comments(text[start:end])
    found = []
    for tag in _TAG.finditer(masked):
        wanted = _TAG_ATTRIBUTE[tag.group(1).lower()]
        body_start = tag.start(2)
        for attribute in _ATTRIBUTE.finditer(tag.group(2)):
            if attribute.group("name").lower() != wanted:
                continue
            for group, quoted in (("dq", True), ("sq", True), ("uq", False)):
                if attribute.group(group) is not None:
                    first = start + body_start + attribute.start(group)
                    last = start + body_start + attribute.end(group)
                    target = html.unescape(text[first:last])
                    found.append(Link(first, last, target, "html", quoted))
            break
    return found


def _mask_comments(segment: str) -> str:
    return _HTML_COMMENT.sub(lambda match: " " * len(match.group()), segment)
