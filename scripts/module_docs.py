"""Generate the Requirements, Resources, Inputs and Outputs tables of each module's README.

The tables sit between `<!-- BEGIN_TF_DOCS -->` and `<!-- END_TF_DOCS -->` in
terraform/<cloud>/README.md, as terraform-docs would write them; they are made here from the
module's own .tf files (python-hcl2), since terraform-docs, a Go binary, is not installable
where these modules are built. The prose around the markers is the README's own.

Run it from the repository's root after changing a module's variables or outputs:

    python scripts/module_docs.py [--check] [MODULE_DIR ...]

With no MODULE_DIR, every folder of terraform/ that has a README.md. `--check` writes nothing
and exits 1 naming each README whose tables are out of date (tests/unit/test_module_docs.py
runs it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

BEGIN = "<!-- BEGIN_TF_DOCS -->"
END = "<!-- END_TF_DOCS -->"
NOTICE = (
    "<!-- Generated from the module's .tf files by scripts/module_docs.py; edit those, "
    "then run it. -->"
)
ROOT = Path(__file__).resolve().parent.parent
MODULES = ROOT / "terraform"
# `${ expression }`: how python-hcl2 gives an expression that is not a literal.
_EXPRESSION = re.compile(r"\$\{(.*)\}", re.DOTALL)
# `<<-EOT ... EOT`: a heredoc string, as python-hcl2 keeps it.
_HEREDOC = re.compile(r"<<(-?)([A-Za-z_][A-Za-z0-9_]*)\n(.*?)\n[ \t]*\2\Z", re.DOTALL)


class DocsError(Exception):
    """A module or README this script cannot document; the message says which and why."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", type=Path, help="module folders (default: all)")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a README is out of date"
    )
    args = parser.parse_args(argv)
    folders = args.modules or sorted(p.parent for p in MODULES.glob("*/README.md"))
    stale = []
    try:
        for folder in folders:
            readme = folder / "README.md"
            current = readme.read_text(encoding="utf-8")
            updated = with_tables(current, tables(folder), readme)
            if updated == current:
                continue
            stale.append(readme)
            if not args.check:
                readme.write_text(updated, encoding="utf-8")
    except (DocsError, OSError) as exc:
        print(f"module_docs: {exc}", file=sys.stderr)
        return 2
    for readme in stale:
        if args.check:
            print(
                f"{_shown(readme)}: the module tables are out of date; "
                "run `python scripts/module_docs.py`",
                file=sys.stderr,
            )
        else:
            print(f"updated {_shown(readme)}")
    return 1 if args.check and stale else 0


def with_tables(text: str, generated: str, readme: Path) -> str:
    """The README with the text between its markers replaced by `generated`."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise DocsError(f"{_shown(readme)}: needs one {BEGIN} line, then one {END} line")
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{generated}{END}{tail}"


def tables(folder: Path) -> str:
    """The markdown between the markers, from every .tf file of the module."""
    blocks = _blocks(folder)
    parts = [NOTICE]
    parts += _requirements(blocks.get("terraform", []))
    parts += _resources(blocks.get("resource", []), blocks.get("data", []))
    parts += _inputs(blocks.get("variable", []), folder)
    parts += _outputs(blocks.get("output", []), folder)
    return "\n".join(parts) + "\n"


def _blocks(folder: Path) -> dict[str, list[Any]]:
    """Every top-level block of the module's .tf files, by kind, in file then source order."""
    import hcl2
    from hcl2 import SerializationOptions

    options = SerializationOptions(with_comments=False, explicit_blocks=False)
    found: dict[str, list[Any]] = {}
    files = sorted(folder.glob("*.tf"))
    if not files:
        raise DocsError(f"{_shown(folder)}: no .tf files")
    for path in files:
        try:
            with path.open(encoding="utf-8") as source:
                parsed = hcl2.load(source, serialization_options=options)
        except Exception as exc:  # lark raises its own families; the file is what matters
            raise DocsError(f"{_shown(path)}: not HCL python-hcl2 can read ({exc})") from None
        for kind, entries in parsed.items():
            found.setdefault(kind, []).extend(entries)
    return found


def _requirements(blocks: list[Any]) -> list[str]:
    rows = []
    for block in blocks:
        if "required_version" in block:
            rows.append(("terraform", _string(block["required_version"])))
        for providers in block.get("required_providers", []):
            for name, requirement in providers.items():
                version = requirement.get("version") if isinstance(requirement, dict) else None
                rows.append((_string(name), _string(version) if version else "any"))
    if not rows:
        return []
    return ["## Requirements", "", *_table(["Name", "Version"], rows), ""]


def _resources(resources: list[Any], data: list[Any]) -> list[str]:
    rows = sorted(f"{_string(t)}.{_string(n)}" for t, n in _labelled(resources))
    sources = sorted(f"{_string(t)}.{_string(n)}" for t, n in _labelled(data))
    table = [(row, "resource") for row in rows] + [(row, "data source") for row in sources]
    if not table:
        return []
    return ["## Resources", "", *_table(["Name", "Type"], table), ""]


def _labelled(blocks: list[Any]) -> Iterator[tuple[str, str]]:
    """`resource "TYPE" "NAME"` blocks as (TYPE, NAME)."""
    for block in blocks:
        for kind, named in block.items():
            for name in named:
                yield kind, name


def _inputs(blocks: list[Any], folder: Path) -> list[str]:
    rows = []
    for name, body in _named(blocks):
        kind = _expression(body["type"]) if "type" in body else "any"
        shown = f"`{kind}`" + (" (sensitive)" if body.get("sensitive") is True else "")
        required = "default" not in body
        default = "n/a" if required else f"`{_literal(body['default'])}`"
        description = _description(body, f"{_shown(folder)}: variable {name}")
        # What the module accepts, in its own words: its validations' messages.
        checks = [_string(v["error_message"]) for v in body.get("validation", [])]
        description = " ".join([description, *(c for c in checks if c)])
        rows.append((name, description, shown, default, "yes" if required else "no"))
    if not rows:
        return []
    head = ["Name", "Description", "Type", "Default", "Required"]
    return ["## Inputs", "", *_table(head, rows, centred=frozenset({4})), ""]


def _outputs(blocks: list[Any], folder: Path) -> list[str]:
    rows = [
        (name, _description(body, f"{_shown(folder)}: output {name}"))
        for name, body in _named(blocks)
    ]
    if not rows:
        return []
    return ["## Outputs", "", *_table(["Name", "Description"], rows)]


def _named(blocks: list[Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for block in blocks:
        for name, body in block.items():
            yield _string(name), body


def _description(body: dict[str, Any], what: str) -> str:
    """A block's description: required, since a table row without one documents nothing."""
    if not body.get("description"):
        raise DocsError(f"{what} has no description")
    return _string(body["description"])


def _table(
    head: list[str], rows: Iterable[tuple[str, ...]], centred: frozenset[int] = frozenset()
) -> list[str]:
    # As terraform-docs draws it: two dashes wider than the heading.
    rule = [f":{'-' * len(h)}:" if i in centred else "-" * (len(h) + 2) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(rule) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(cell) for cell in row) + " |")
    return lines


def _cell(text: str) -> str:
    """Text in one table cell: a `|` would end it, a line break would end the row."""
    return " ".join(part.strip() for part in text.replace("|", "\\|").splitlines() if part)


def _string(value: Any) -> str:
    """An HCL string as its text: python-hcl2 keeps the quotes and escapes (and a heredoc as
    written); anything else as it came."""
    if not isinstance(value, str):
        return str(value)
    if len(value) >= 2 and value[0] == value[-1] == '"':
        heredoc = _HEREDOC.fullmatch(value[1:-1])
        if heredoc:
            return _heredoc(heredoc.group(1) == "-", heredoc.group(3))
        # HCL's escapes are JSON's, plus `$${` and `%%{` for a literal `${` and `%{`.
        text: str = json.loads(value)
        return text.replace("$${", "${").replace("%%{", "%{")
    return value


def _heredoc(indented: bool, body: str) -> str:
    lines = body.split("\n")
    if indented:
        margin = min((len(x) - len(x.lstrip()) for x in lines if x.strip()), default=0)
        lines = [line[margin:] for line in lines]
    return "\n".join(lines)


def _expression(value: Any) -> str:
    """A type constraint (or another expression) as written, without python-hcl2's `${}`."""
    text = str(value)
    match = _EXPRESSION.fullmatch(text)
    return match.group(1) if match else text


def _literal(value: Any) -> str:
    """A default value, as HCL (JSON is HCL): strings decoded, then quoted again."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        if _EXPRESSION.fullmatch(value):
            return _expression(value)
        return json.dumps(_string(value), ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_literal(item) for item in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_literal(_string(k))} = {_literal(v)}" for k, v in value.items())
        return "{" + (f" {items} " if items else "") + "}"
    return str(value)


def _shown(path: Path) -> str:
    """A path as the user would type it from the repository's root."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
