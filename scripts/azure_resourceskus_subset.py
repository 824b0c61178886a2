"""Cut tests/data/azure-resourceskus-subset.json out of the Azure REST API description.

The fake Azure Resource Manager (tests/fakes/azure.py) checks every Resource SKUs request and
response against that subset. It holds the operations named in its own
`x-subset-operations` (`ResourceSkus_List`), with every definition and parameter they reference
followed all the way down, unmodified but for the `x-ms-examples` (links to example files the
subset does not carry); its `info` is upstream's plus `x-derived-from` (repository, path,
commit, the source file's SHA-256 and the extraction date).

The source is `skus.json` of the compute resource-manager specification, stable 2021-07-01, in
github.com/Azure/azure-rest-api-specs; get that file at a commit and run, from the repository's
root:

    python scripts/azure_resourceskus_subset.py path/to/skus.json --commit SHA \\
        [--add OPERATION_ID ...] [--extracted YYYY-MM-DD] [--output PATH] [--check]

`--check` writes nothing and exits 1 when the subset on disk differs (as parsed JSON) from a
fresh cut, for instance after a hand edit.
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

DEFAULT_OUTPUT = (
    Path(__file__).resolve().parent.parent / "tests" / "data" / "azure-resourceskus-subset.json"
)
SPEC_PATH = "specification/compute/resource-manager/Microsoft.Compute/stable/2021-07-01/skus.json"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch")
# Swagger 2.0 keeps reusable parts in these top-level sections.
SECTIONS = ("definitions", "parameters", "responses")


def _refs(node: Any) -> list[tuple[str, str]]:
    """The (section, name) of every local `#/SECTION/NAME` reference under `node`."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            section, _, name = ref.removeprefix("#/").partition("/")
            if not ref.startswith("#/") or section not in SECTIONS:
                raise SystemExit(f"unsupported $ref {ref!r}: only #/{{{','.join(SECTIONS)}}}/…")
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
        kept = {}
        for method, op in item.items():
            if method in METHODS and op.get("operationId") in wanted:
                # Example files are not carried: their links would dangle.
                kept[method] = {k: v for k, v in op.items() if k != "x-ms-examples"}
        if kept:
            shared = {k: v for k, v in item.items() if k not in METHODS}
            paths[path] = {**shared, **kept}
            seen.update(op["operationId"] for op in kept.values())
    missing = [op for op in operations if op not in seen]
    if missing:
        raise SystemExit(f"not in the source description: {', '.join(missing)}")

    needed: set[tuple[str, str]] = set()
    queue = _refs(paths)
    while queue:
        key = queue.pop()
        if key in needed:
            continue
        section, name = key
        if name not in source.get(section, {}):
            raise SystemExit(f"dangling reference #/{section}/{name}")
        needed.add(key)
        queue += _refs(source[section][name])
    out: dict[str, Any] = {
        key: source[key]
        for key in ("swagger", "host", "schemes", "consumes", "produces")
        if key in source
    }
    out["info"] = info
    out["security"] = source.get("security", [])
    out["securityDefinitions"] = source.get("securityDefinitions", {})
    out["x-subset-operations"] = list(operations)
    out["paths"] = paths
    for section in SECTIONS:
        kept_section = {n: v for n, v in source.get(section, {}).items() if (section, n) in needed}
        if kept_section:
            out[section] = kept_section
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("source", type=Path, help="skus.json of the specification")
    parser.add_argument("--commit", help="the azure-rest-api-specs commit the file is from")
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
    current: dict[str, Any] = {}
    if args.output.exists():
        current = json.loads(args.output.read_text(encoding="utf-8"))
    operations = list(current.get("x-subset-operations", ["ResourceSkus_List"]))
    operations += [op for op in args.add if op not in operations]
    info = copy.deepcopy(source["info"])
    derived = copy.deepcopy(current.get("info", {}).get("x-derived-from", {}))
    derived["repository"] = "https://github.com/Azure/azure-rest-api-specs"
    derived["path"] = SPEC_PATH
    if args.commit:
        derived["commit"] = args.commit
    derived["source-sha256"] = hashlib.sha256(raw).hexdigest()
    if not args.check:
        derived["extracted"] = args.extracted
    info["x-derived-from"] = derived
    subset = cut(source, operations, info)

    if args.check:
        if subset != current:
            print(f"{args.output} differs from a fresh cut of {args.source}", file=sys.stderr)
            return 1
        print(f"{args.output}: {len(operations)} operations, as cut")
        return 0
    args.output.write_text(json.dumps(subset, indent=1, ensure_ascii=False) + "\n", "utf-8")
    counts = ", ".join(f"{len(subset[s])} {s}" for s in SECTIONS if s in subset)
    print(f"{args.output}: {len(operations)} operations, {len(subset['paths'])} paths, {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
