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
from pathlib import Path
from typing import Any

from api_subset import arguments, finish, needed, pick_paths, refs

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "github-subset.json"
REF_PREFIX = "#/components/"


def _strip_octokit(node: Any) -> Any:
    """A copy of `node` without any `x-octokit` key, at any depth."""
    if isinstance(node, dict):
        return {k: _strip_octokit(v) for k, v in node.items() if k != "x-octokit"}
    if isinstance(node, list):
        return [_strip_octokit(v) for v in node]
    return node


def cut(source: dict[str, Any], operations: list[str], info: dict[str, Any]) -> dict[str, Any]:
    """The subset of `source` holding `operations` (operationIds) and what they reference."""
    paths = pick_paths(source, operations, _strip_octokit)
    components = source["components"]
    kept = needed(paths, components, lambda node: refs(node, REF_PREFIX), REF_PREFIX)
    kept_components = {
        section: {
            name: _strip_octokit(value)
            for name, value in entries.items()
            if (section, name) in kept
        }
        for section, entries in components.items()
    }
    used_tags = {
        tag for item in paths.values() for op in item.values() for tag in op.get("tags", ())
    }
    return {
        "openapi": source["openapi"],
        "info": info,
        "tags": [t for t in source.get("tags", []) if t["name"] in used_tags],
        "servers": source["servers"],
        "externalDocs": source["externalDocs"],
        "x-subset-operations": list(operations),
        "paths": paths,
        "components": {k: v for k, v in kept_components.items() if v},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("source", type=Path, help="generated/api.github.com.json of the package")
    arguments(parser, DEFAULT_OUTPUT)
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
    counts = ", ".join(f"{len(v)} {k}" for k, v in subset["components"].items())
    return finish(args, subset, current, counts)


if __name__ == "__main__":
    sys.exit(main())
