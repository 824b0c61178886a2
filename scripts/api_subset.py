"""What the scripts that cut an API description down for the test fakes share
(github_subset.py: OpenAPI 3, azure_resourceskus_subset.py: Swagger 2): picking operations by
id, following `$ref`s all the way down, and the command line that writes or checks the subset.

Imported by those scripts, which Python runs with this folder on its path.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
Ref = tuple[str, str]


def refs(node: Any, prefix: str, sections: Collection[str] | None = None) -> list[Ref]:
    """The (section, name) of every local `{prefix}SECTION/NAME` reference under `node`; any
    other reference (another file, a section not in `sections`) stops the script."""
    found: list[Ref] = []
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            section, _, name = ref.removeprefix(prefix).partition("/")
            if not ref.startswith(prefix) or (sections is not None and section not in sections):
                where = f"{prefix}{{{','.join(sections)}}}" if sections else prefix
                raise SystemExit(f"unsupported $ref {ref!r}: only {where}/… is followed")
            found.append((section, name.replace("~1", "/").replace("~0", "~")))
        for value in node.values():
            found += refs(value, prefix, sections)
    elif isinstance(node, list):
        for value in node:
            found += refs(value, prefix, sections)
    return found


def pick_paths(
    source: Mapping[str, Any],
    operations: list[str],
    clean: Callable[[dict[str, Any]], dict[str, Any]],
) -> dict[str, Any]:
    """The path items holding `operations` (operationIds), with only those operations and the
    parameters their path shares, each item passed through `clean`; a missing one stops."""
    wanted = set(operations)
    paths: dict[str, Any] = {}
    seen: set[str] = set()
    for path, item in source["paths"].items():
        kept = {
            method: op
            for method, op in item.items()
            if method in METHODS and op.get("operationId") in wanted
        }
        if kept:
            # Parameters shared by all of a path's operations belong with them.
            shared = {k: v for k, v in item.items() if k not in METHODS}
            paths[path] = clean({**shared, **kept})
            seen.update(op["operationId"] for op in kept.values())
    missing = [op for op in operations if op not in seen]
    if missing:
        raise SystemExit(f"not in the source description: {', '.join(missing)}")
    return paths


def needed(
    paths: Mapping[str, Any],
    sections: Mapping[str, Mapping[str, Any]],
    follow: Callable[[Any], list[Ref]],
    prefix: str,
) -> set[Ref]:
    """Every reusable part `paths` reference, directly or through another part."""
    found: set[Ref] = set()
    queue = follow(paths)
    while queue:
        key = queue.pop()
        if key in found:
            continue
        section, name = key
        if name not in sections.get(section, {}):
            raise SystemExit(f"dangling reference {prefix}{section}/{name}")
        found.add(key)
        queue += follow(sections[section][name])
    return found


def arguments(parser: argparse.ArgumentParser, default_output: Path) -> None:
    """The options every cutter takes."""
    parser.add_argument("--output", type=Path, default=default_output, help="the subset file")
    parser.add_argument("--add", action="append", default=[], metavar="OPERATION_ID")
    parser.add_argument(
        "--extracted",
        default=datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        help="the date recorded in info.x-derived-from.extracted (default: today, UTC)",
    )
    parser.add_argument("--check", action="store_true", help="compare, write nothing")


def finish(
    args: argparse.Namespace, subset: dict[str, Any], current: dict[str, Any], counts: str
) -> int:
    """With --check, whether the file on disk is a fresh cut (exit 1 if not); else write it."""
    operations = len(subset["x-subset-operations"])
    if args.check:
        if subset != current:
            print(f"{args.output} differs from a fresh cut of {args.source}", file=sys.stderr)
            return 1
        print(f"{args.output}: {operations} operations, as cut")
        return 0
    args.output.write_text(json.dumps(subset, indent=1, ensure_ascii=False) + "\n", "utf-8")
    print(f"{args.output}: {operations} operations, {len(subset['paths'])} paths, {counts}")
    return 0
