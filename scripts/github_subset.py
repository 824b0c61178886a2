"""Cut tests/data/github-subset.json out of GitHub's official REST API description.

The fake GitHub (tests/fakes/github.py) validates every request and response against that
subset. The operations it holds are those listed in its own `x-subset-operations`; this script
keeps them, with every component they reference followed all the way down, drops the
`x-octokit` extension the npm re-packaging adds, keeps only the tags the operations use, and
keeps the subset's `info` block (upstream's values plus `x-derived-from`), in which it updates
the source file's SHA-256 and the extraction date.

The source is GitHub's description as the npm package `@octokit/openapi` ships it
(`generated/api.github.com.json`); get it and run the script from the repository's root:

    npm pack @octokit/openapi@23.0.2 && tar xzf octokit-openapi-23.0.2.tgz
    python scripts/github_subset.py package/generated/api.github.com.json \\
        [--add OPERATION_ID ...] [--extracted YYYY-MM-DD] [--output PATH] [--check]

`--add` appends operations to the list; `--check` writes nothing and exits 1 when the subset on
disk differs (as parsed JSON) from a fresh cut, for instance after a hand edit.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "github-subset.json"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
REF_PREFIX = "#/components/"


def _strip_octokit(node: Any) -> Any:
    """A copy of `node` without any `x-octokit` key, at any depth."""
    if isinstance(node, dict):
        return {k: _strip_octokit(v) for k, v in node.items() if k != "x-octokit"}
    if isinstance(node, list):
        return [_strip_octokit(v) for v in node]
    return node


def _refs(node: Any) -> list[tuple[str, str]]:
    """The (section, name) of every `#/components/SECTION/NAME` reference under `node`."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            if not ref.startswith(REF_PREFIX):
                raise SystemExit(f"unsupported $ref {ref!r}: only {REF_PREFIX}... is followed")
            section, _, name = ref[len(REF_PREFIX) :].partition("/")
            found.append((section, name.replace("~1", "/").replace("~0", "~")))
        for value in node.values():
            found += _refs(value)
    elif isinstance(node, list):
        for value in node:
            found += _refs(value)
    return found


def cut(source: dict[str, Any], operations: list[str], info: dict[str, Any]) -> dict[str, Any]:
    """The subset of `source` holding `operations` (operationIds) and what they reference."""
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
            paths[path] = _strip_octokit({**shared, **kept})
            seen.update(op["operationId"] for op in kept.values())
    missing = [op for op in operations if op not in seen]
    if missing:
        raise SystemExit(f"not in the source description: {', '.join(missing)}")

    components = source["components"]
    needed: set[tuple[str, str]] = set()
    queue = _refs(paths)
    while queue:
        key = queue.pop()
        if key in needed:
            continue
        section, name = key
        if name not in components.get(section, {}):
            raise SystemExit(f"dangling reference #/components/{section}/{name}")
        needed.add(key)
        queue += _refs(components[section][name])
    kept_components = {
        section: {
            name: _strip_octokit(value)
            for name, value in entries.items()
            if (section, name) in needed
        }
        for section, entries in components.items()
    }
    used_tags = {
        tag for item in paths.values() for op in item.values() for tag in op.get("tags", ())
    }
    out: dict[str, Any] = {
        "openapi": source["openapi"],
        "info": info,
        "tags": [t for t in source.get("tags", []) if t["name"] in used_tags],
        "servers": source["servers"],
        "externalDocs": source["externalDocs"],
        "x-subset-operations": list(operations),
        "paths": paths,
        "components": {k: v for k, v in kept_components.items() if v},
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("source", type=Path, help="generated/api.github.com.json of the package")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the subset file")
    parser.add_argument("--add", action="append", default=[], metavar="OPERATION_ID")
    parser.add_argument(
        "--extracted",
        default=datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        help="the date recorded in info.x-derived-from.extracted (default: today, UTC)",
    )
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args(argv)

    raw = args.source.read_bytes()
    source = json.loads(raw)
    current = json.loads(args.output.read_text(encoding="utf-8"))
    operations = list(current["x-subset-operations"])
    operations += [op for op in args.add if op not in operations]
    info = copy.deepcopy(current["info"])
    derived = info.setdefault("x-derived-from", {})
    derived["source-sha256"] = hashlib.sha256(raw).hexdigest()
    if not args.check:
        derived["extracted"] = args.extracted
    subset = cut(source, operations, info)

    if args.check:
        if subset != current:
            print(f"{args.output} differs from a fresh cut of {args.source}", file=sys.stderr)
            return 1
        print(f"{args.output}: {len(operations)} operations, as cut")
        return 0
    args.output.write_text(json.dumps(subset, indent=1, ensure_ascii=False) + "\n", "utf-8")
    counts = ", ".join(f"{len(v)} {k}" for k, v in subset["components"].items())
    print(f"{args.output}: {len(operations)} operations, {len(subset['paths'])} paths, {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
