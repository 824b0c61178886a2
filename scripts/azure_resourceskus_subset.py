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
from pathlib import Path
from typing import Any

from api_subset import METHODS, arguments, finish, needed, pick_paths, refs

DEFAULT_OUTPUT = (
    Path(__file__).resolve().parent.parent / "tests" / "data" / "azure-resourceskus-subset.json"
)
SPEC_PATH = "specification/compute/resource-manager/Microsoft.Compute/stable/2021-07-01/skus.json"
# Swagger 2.0 keeps reusable parts in these top-level sections.
SECTIONS = ("definitions", "parameters", "responses")
REF_PREFIX = "#/"


def _without_examples(item: dict[str, Any]) -> dict[str, Any]:
    """A path item whose operations carry no `x-ms-examples`: their links would dangle."""
    return {
        key: {k: v for k, v in value.items() if k != "x-ms-examples"} if key in METHODS else value
        for key, value in item.items()
    }


def cut(source: dict[str, Any], operations: list[str], info: dict[str, Any]) -> dict[str, Any]:
    """The subset of `source` holding `operations` (operationIds) and what they reference."""
    paths = pick_paths(source, operations, _without_examples)
    sections = {section: source.get(section, {}) for section in SECTIONS}
    kept = needed(paths, sections, lambda node: refs(node, REF_PREFIX, SECTIONS), REF_PREFIX)
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
        kept_section = {n: v for n, v in sections[section].items() if (section, n) in kept}
        if kept_section:
            out[section] = kept_section
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("source", type=Path, help="skus.json of the specification")
    parser.add_argument("--commit", help="the azure-rest-api-specs commit the file is from")
    arguments(parser, DEFAULT_OUTPUT)
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
    counts = ", ".join(f"{len(subset[s])} {s}" for s in SECTIONS if s in subset)
    return finish(args, subset, current, counts)


if __name__ == "__main__":
    sys.exit(main())
