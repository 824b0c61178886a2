"""A module's interface as Terraform reads it from the module's `*.tf` and `*.tf.json` files:
the variables it declares (and which of them have no default) and the outputs it declares, each
variable with its block's own text.

Only top-level `variable` and `output` blocks matter here, so this is a scanner rather than a
parser: it skips comments, quoted strings (with the `${ }` templates inside them) and heredocs,
counts brackets, and notes each top-level block's type, labels, extent and the attributes set at
its own level (`default`). python-hcl2 would give the values, but not where a block starts and
ends, and the value check (values.py) copies the variable blocks verbatim into a root module of
their own; it would also be a runtime dependency that parses every expression (slowly, with
lark) to answer a question about block names.

Terraform's override files (`override.tf`, `*_override.tf`) merge into the blocks the other files
declare: a `default` there makes a variable optional.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class HclError(ValueError):
    """The file is not HCL this scanner can follow (an unterminated string, comment, heredoc or
    block): Terraform would refuse it too."""


@dataclass(frozen=True)
class Block:
    """A top-level block: `variable "name" { ... }`."""

    type: str
    labels: tuple[str, ...]
    # Offsets in the file's text: the block's type word up to just past its closing brace.
    start: int
    end: int
    # The attributes set at the block's own level (`default`, `type`), not in nested blocks.
    attributes: frozenset[str]


@dataclass(frozen=True)
class Variable:
    name: str
    # Declared without a default: a value must be given.
    required: bool
    # The file (relative to the module) and the block's text: HCL, or the block's JSON body in
    # a `*.tf.json` file.
    file: str
    text: str
    json: bool = False
    # From an override file, merged into the declaration of the same name.
    override: bool = False


@dataclass(frozen=True)
class Interface:
    """What a module declares: variable name → Variable, and output names."""

    folder: Path
    variables: Mapping[str, Variable] = field(default_factory=dict)
    outputs: frozenset[str] = frozenset()
    # Override blocks of variables, applied on top of `variables` by Terraform.
    overrides: tuple[Variable, ...] = ()


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_HEREDOC = re.compile(r"<<(-?)([A-Za-z_][A-Za-z0-9_-]*)[ \t]*\r?\n")
_TWO_CHAR = ("==", "!=", "<=", ">=", "=>", "&&", "||", "...")


def is_override(name: str) -> bool:
    stem = name.removesuffix(".json").removesuffix(".tf")
    return stem == "override" or stem.endswith("_override")


def read(folder: Path) -> Interface:
    """The interface of the module in `folder`; HclError or OSError naming the file that cannot
    be read."""
    variables: dict[str, Variable] = {}
    overrides: list[Variable] = []
    outputs: set[str] = set()
    files = sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and path.name.endswith((".tf", ".tf.json"))
    )
    for path in files:
        text = path.read_text(encoding="utf-8")
        try:
            found = _json_blocks(text) if path.name.endswith(".json") else _hcl_blocks(text)
        except HclError as exc:
            raise HclError(f"{path.name}: {exc}") from None
        for kind, name, variable in found:
            if kind == "output":
                outputs.add(name)
                continue
            declared = Variable(
                name=name,
                required=variable.required,
                file=path.name,
                text=variable.text,
                json=variable.json,
                override=is_override(path.name),
            )
            if declared.override:
                overrides.append(declared)
            else:
                variables[name] = declared
    for override in overrides:
        base = variables.get(override.name)
        # An override's default makes the variable optional; one without leaves it as it was.
        if base is not None and not override.required:
            variables[override.name] = Variable(
                base.name, False, base.file, base.text, base.json, base.override
            )
    return Interface(folder, variables, frozenset(outputs), tuple(overrides))


def _json_blocks(text: str) -> list[tuple[str, str, Variable]]:
    """`variable` and `output` of a `*.tf.json` file: `{"variable": {"x": {...}}}`, or a list
    of such objects, as Terraform's JSON syntax allows."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise HclError(f"not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise HclError("not a JSON object")
    found: list[tuple[str, str, Variable]] = []
    for kind in ("variable", "output"):
        for name, body in _json_named(document.get(kind, {})):
            if not isinstance(body, dict):
                raise HclError(f"{kind} {name!r} is not an object")
            as_text = json.dumps(body, indent=2)
            found.append((kind, name, Variable(name, "default" not in body, "", as_text, True)))
    return found


def _json_named(value: Any) -> Iterator[tuple[str, Any]]:
    for item in value if isinstance(value, list) else [value]:
        if not isinstance(item, dict):
            raise HclError("a block list holds something other than objects")
        yield from item.items()


def _hcl_blocks(text: str) -> list[tuple[str, str, Variable]]:
    found: list[tuple[str, str, Variable]] = []
    for block in blocks(text):
        if block.type in ("variable", "output") and len(block.labels) == 1:
            source = text[block.start : block.end]
            required = "default" not in block.attributes
            name = block.labels[0]
            found.append((block.type, name, Variable(name, required, "", source)))
    return found


def blocks(text: str) -> list[Block]:
    """Every top-level block of an HCL file, in order."""
    found: list[Block] = []
    depth = 0
    # At depth 0: the words since the last line break (a block's type and labels).
    head: list[tuple[str, str, int]] = []
    opened: tuple[str, tuple[str, ...], int] | None = None
    attributes: set[str] = set()
    # At depth 1: whether the next word starts a line, and the word that did, until `=`.
    line_start = False
    pending: str | None = None
    for kind, value, offset in _tokens(text):
        if depth == 0:
            if kind == "nl":
                head = []
            elif kind == "{":
                if not head or head[0][0] != "ident":
                    raise HclError(f"a block without a type at offset {offset}")
                labels = tuple(_label(k, v) for k, v, _ in head[1:])
                opened = (head[0][1], labels, head[0][2])
                attributes, line_start, pending, head = set(), True, None, []
                depth = 1
            elif kind in ("}", "open", "close"):
                # Top-level content is blocks only: a bracket here is no Terraform file.
                raise HclError(f"an unexpected {value!r} at offset {offset}")
            else:
                head.append((kind, value, offset))
            continue
        if kind in ("{", "open"):
            depth += 1
            line_start, pending = False, None
        elif kind in ("}", "close"):
            depth -= 1
            if depth == 0 and opened is not None:
                kind_, labels_, start = opened
                found.append(Block(kind_, labels_, start, offset + 1, frozenset(attributes)))
                opened, head = None, []
            line_start, pending = depth == 1, None
        elif depth != 1:
            continue
        elif kind == "nl":
            line_start, pending = True, None
        elif kind == "ident" and line_start:
            line_start, pending = False, value
        elif kind == "=" and pending is not None:
            attributes.add(pending)
            pending = None
        else:
            line_start, pending = False, None
    if depth:
        raise HclError("a block is not closed (a '}' is missing)")
    return found


def _label(kind: str, value: str) -> str:
    if kind == "ident":
        return value
    if kind == "string":
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, str) else value
    raise HclError(f"{value!r} is not a block label")


def _tokens(text: str) -> Iterator[tuple[str, str, int]]:
    """(kind, text, offset): `ident`, `string`, `{`, `}`, `open` (`(` `[`), `close`, `=`, `nl`,
    `other`; comments and whitespace dropped, a heredoc as one `other`."""
    i, size = 0, len(text)
    while i < size:
        char = text[i]
        if char == "\n":
            yield "nl", "\n", i
            i += 1
        elif char in " \t\r\f\ufeff":
            i += 1
        elif char == "#" or text.startswith("//", i):
            end = text.find("\n", i)
            i = size if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise HclError(f"a /* comment is not closed (offset {i})")
            i = end + 2
        elif char == '"':
            end = _string_end(text, i)
            yield "string", text[i:end], i
            i = end
        elif char == "<" and (match := _HEREDOC.match(text, i)):
            end = _heredoc_end(text, match)
            yield "other", text[i:end], i
            i = end
        elif char == "{":
            yield "{", char, i
            i += 1
        elif char == "}":
            yield "}", char, i
            i += 1
        elif char in "([":
            yield "open", char, i
            i += 1
        elif char in ")]":
            yield "close", char, i
            i += 1
        elif text.startswith(_TWO_CHAR, i):
            width = 3 if text.startswith("...", i) else 2
            yield "other", text[i : i + width], i
            i += width
        elif char == "=":
            yield "=", char, i
            i += 1
        elif match := _IDENT.match(text, i):
            yield "ident", match.group(), i
            i = match.end()
        else:
            yield "other", char, i
            i += 1


def _string_end(text: str, start: int) -> int:
    """Just past the quoted string that opens at `start`, its `${ }` and `%{ }` templates (which
    may hold strings of their own) included."""
    i, size = start + 1, len(text)
    while i < size:
        char = text[i]
        if char == "\\":
            i += 2
        elif char == '"':
            return i + 1
        elif char == "\n":
            break
        elif text.startswith(("$${", "%%{"), i):
            i += 3
        elif text.startswith(("${", "%{"), i):
            i = _template_end(text, i + 2)
        else:
            i += 1
    raise HclError(f"a quoted string is not closed on its line (offset {start})")


def _template_end(text: str, start: int) -> int:
    """Just past the `}` that closes a template sequence whose expression starts at `start`."""
    depth, i, size = 0, start, len(text)
    while i < size:
        char = text[i]
        if char == '"':
            i = _string_end(text, i)
            continue
        if char in "{([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "}":
            if depth == 0:
                return i + 1
            depth -= 1
        i += 1
    raise HclError(f"a ${{ template is not closed (offset {start})")


def _heredoc_end(text: str, match: re.Match[str]) -> int:
    """The end of the heredoc's closing line (its marker alone on a line, maybe indented)."""
    marker = match.group(2)
    i = match.end()
    while i <= len(text):
        end = text.find("\n", i)
        line_end = len(text) if end < 0 else end
        if text[i:line_end].strip() == marker:
            return line_end
        if end < 0:
            break
        i = end + 1
    raise HclError(f"the heredoc <<{marker} is not closed")
