"""Metrics files → a markdown table, against a baseline when there is one.

The files are the ones a training job writes, in the shapes DVC reads:

- JSON or YAML (`.json`, `.yaml`, `.yml`): a mapping at the top; nested mappings are flattened
  with `.` (`{"train": {"loss": 0.1}}` → `train.loss`), as `dvc metrics show` does. Lists are
  flattened too, by index (`{"loss": [0.5, 0.3]}` → `loss.0`, `loss.1`): skipping them would
  drop values silently, and a per-class list is a common metric.
- CSV or TSV (`.csv`, `.tsv`): a header row of metric names, then data rows. One data row: each
  column is a metric. Several rows (a per-epoch log): the last row, the state the run ended in.

Several files make one table with a `file` column first (the path as given), as the path is
DVC's first column; one file needs no such column. With a baseline (a metrics file of the
target branch) the table shows both values and the change: the signed difference, and the
percentage of the baseline where it is not zero; a metric only one side has is `new` or
`removed`. Numbers keep their type: ints stay ints, floats lose the noise of binary arithmetic
(see `markdown.number`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cml_infra.errors import UsageError
from cml_infra.report import markdown

# A metric's value once read: what JSON, YAML and CSV cells can hold, None for an empty one.
Value = int | float | str | bool | None

FORMATS = {".json": "JSON", ".yaml": "YAML", ".yml": "YAML", ".csv": "CSV", ".tsv": "TSV"}


@dataclass(frozen=True)
class MetricsFile:
    """One file, read and flattened: metric name → value, in the file's order."""

    path: str
    values: dict[str, Value]


def load(path: str, flag: str = "--metrics") -> MetricsFile:
    """Read and flatten one metrics file; UsageError naming `flag` and the file when it is
    missing, unreadable, of an unknown kind, malformed, or not a mapping of metrics."""
    kind = FORMATS.get(Path(path).suffix.lower())
    if kind is None:
        raise UsageError(flag, f"{path}: unknown kind of metrics file; give a {_choices()} file")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(flag, f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise UsageError(flag, f"{path}: cannot read it ({reason})") from None
    if kind in ("CSV", "TSV"):
        values = _last_row(text, "\t" if kind == "TSV" else ",", path, flag)
    else:
        data = _parse(text, kind, path, flag)
        if not isinstance(data, Mapping):
            shown = "nothing" if data is None else f"a {_kind_of(data)}"
            raise UsageError(
                flag, f"{path}: holds {shown} at the top, not a mapping of metric names"
            )
        values = flatten(data)
    return MetricsFile(path, values)


def flatten(data: Mapping[Any, Any], prefix: str = "") -> dict[str, Value]:
    """Nested mappings and lists → one level, keys joined with `.` (list items by index)."""
    flat: dict[str, Value] = {}
    items = data.items() if isinstance(data, Mapping) else enumerate(data)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (Mapping, list, tuple)):
            flat.update(flatten(value, f"{name}."))  # type: ignore[arg-type]
        elif value is None or isinstance(value, (int, float, str, bool)):
            flat[name] = value
        else:  # YAML dates and the like: shown as written
            flat[name] = str(value)
    return flat


def table(files: Sequence[MetricsFile], baseline: MetricsFile | None = None) -> str:
    """The markdown table of `files`; with a `baseline` (one file only), its values and the
    change. A note line in place of a table when no file holds a metric."""
    if baseline is not None and len(files) != 1:
        raise UsageError(
            "--baseline", "compares one metrics file with its baseline; give one --metrics"
        )
    several = len(files) > 1
    header = (["file"] if several else []) + ["metric"]
    rows: list[list[str]] = []
    if baseline is None:
        header.append("value")
        for each in files:
            lead = [markdown.cell(each.path)] if several else []
            rows += [[*lead, markdown.cell(k), _shown(v)] for k, v in each.values.items()]
    else:
        header += ["baseline", "value", "change"]
        current = files[0].values
        names = list(current) + [k for k in baseline.values if k not in current]
        for name in names:
            old, new = baseline.values.get(name, _MISSING), current.get(name, _MISSING)
            rows.append(
                [markdown.cell(name), _shown(old), _shown(new), markdown.cell(change(old, new))]
            )
    if not rows:
        return "_No metrics in " + ", ".join(f"`{f.path}`" for f in files) + "._\n"
    right = range(len(header) - (3 if baseline else 1), len(header))
    return markdown.table(header, rows, right=list(right))


class _Missing:
    """A metric the other side has and this one lacks."""


_MISSING: Any = _Missing()


def change(old: Value | _Missing, new: Value | _Missing) -> str:
    """What became of a metric: `new`, `removed`, a signed delta (with the percentage of a
    non-zero baseline) for numbers, `changed` for other values that differ, "" when equal."""
    if isinstance(old, _Missing):
        return "new"
    if isinstance(new, _Missing):
        return "removed"
    before, after = _number(old), _number(new)
    if before is not None and after is not None:
        delta = after - before
        if delta == 0:
            return "0"
        text = markdown.signed(delta)
        if before != 0 and math.isfinite(delta) and math.isfinite(before):
            text += f" ({delta / abs(before) * 100:+.1f}%)"
        return text
    return "" if old == new and type(old) is type(new) else "changed"


def _number(value: Value) -> int | float | None:
    """A value that has a difference: a number, not a boolean (True - False is no change)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return None


def _shown(value: Value | _Missing) -> str:
    if isinstance(value, _Missing) or value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return markdown.number(value)
    return markdown.cell(value)


def _parse(text: str, kind: str, path: str, flag: str) -> Any:
    if kind == "JSON":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise UsageError(flag, f"{path}: not valid JSON ({exc})") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise UsageError(flag, f"{path}: not valid YAML ({problem}{at})") from None


def _last_row(text: str, delimiter: str, path: str, flag: str) -> dict[str, Value]:
    """The header's names with the last data row's cells (numbers as numbers)."""
    try:
        rows = [row for row in csv.reader(io.StringIO(text), delimiter=delimiter) if row]
    except csv.Error as exc:
        raise UsageError(flag, f"{path}: not valid CSV ({exc})") from None
    if len(rows) < 2:
        raise UsageError(flag, f"{path}: needs a header row of metric names and a data row")
    header, last = rows[0], rows[-1]
    if len(last) != len(header):
        raise UsageError(
            flag,
            f"{path}: its last row has {len(last)} cells for {len(header)} names in the header",
        )
    return {
        name.strip(): _cell_value(value)
        for name, value in zip(header, last, strict=True)
        if name.strip()  # an unnamed column (a pandas index) is no metric
    }


def _cell_value(text: str) -> Value:
    text = text.strip()
    if not text:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _kind_of(data: object) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(data), type(data).__name__
    )


def _choices() -> str:
    return ", ".join(sorted(set(FORMATS)))
