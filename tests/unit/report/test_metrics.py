"""cml_infra.report.metrics: JSON, YAML and CSV metrics files, flattened as DVC does, shown as a
table, against a baseline; bad files are one-line usage errors naming the flag and the file."""

from __future__ import annotations

import json

import pytest

from cml_infra.errors import UsageError
from cml_infra.report import metrics


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(folder, name: str, text: str) -> str:
    (folder / name).write_text(text, encoding="utf-8")
    return name


def test_nested_keys_are_joined_with_dots_and_lists_by_index():
    data = {"train": {"loss": 0.1, "per_class": [0.5, {"f1": 0.7}]}, "epochs": 3, "empty": {}}
    assert metrics.flatten(data) == {
        "train.loss": 0.1,
        "train.per_class.0": 0.5,
        "train.per_class.1.f1": 0.7,
        "epochs": 3,
    }


def test_json(folder):
    path = write(folder, "m.json", json.dumps({"train": {"loss": 0.25, "steps": 10}}))
    assert metrics.load(path).values == {"train.loss": 0.25, "train.steps": 10}


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".YAML"])
def test_yaml(folder, suffix):
    path = write(folder, f"m{suffix}", "train:\n  loss: 0.25\n  done: 2030-01-02\nok: true\n")
    assert metrics.load(path).values == {"train.loss": 0.25, "train.done": "2030-01-02", "ok": True}


def test_csv_with_one_row_makes_each_column_a_metric(folder):
    path = write(folder, "m.csv", "loss,acc,model\n0.25,0.9,resnet\n")
    assert metrics.load(path).values == {"loss": 0.25, "acc": 0.9, "model": "resnet"}


def test_csv_with_several_rows_keeps_the_last(folder):
    """A per-epoch log: the run ended in the last row's state."""
    path = write(folder, "log.csv", ",epoch,loss\n0,1,0.5\n1,2,0.3\n\n")
    assert metrics.load(path).values == {"epoch": 2, "loss": 0.3}  # pandas' unnamed index too


def test_tsv_and_empty_cells(folder):
    path = write(folder, "m.tsv", "loss\tnote\n0.5\t\n")
    assert metrics.load(path).values == {"loss": 0.5, "note": None}


def test_one_file_is_a_metric_value_table(folder):
    path = write(folder, "m.json", '{"loss": 0.30000000000000004, "steps": 1200, "ok": false}')
    assert metrics.table([metrics.load(path)]) == (
        "| metric | value |\n| --- | ---: |\n| loss | 0.3 |\n| steps | 1200 |\n| ok | false |\n"
    )


def test_several_files_lead_with_the_file(folder):
    first = write(folder, "a.json", '{"loss": 1}')
    second = write(folder, "b.csv", "loss\n2\n")
    table = metrics.table([metrics.load(first), metrics.load(second)])
    assert table.splitlines() == [
        "| file | metric | value |",
        "| --- | --- | ---: |",
        "| a.json | loss | 1 |",
        "| b.csv | loss | 2 |",
    ]


def test_baseline_shows_the_change_new_and_removed(folder):
    current = write(
        folder, "m.json", '{"loss": 0.3, "acc": 0.5, "steps": 1200, "model": "b", "extra": 1}'
    )
    base = write(folder, "base.yaml", "loss: 0.35\nacc: 0\nsteps: 1000\nmodel: a\nold: 2\n")
    table = metrics.table([metrics.load(current)], metrics.load(base, "--baseline"))
    assert table.splitlines() == [
        "| metric | baseline | value | change |",
        "| --- | ---: | ---: | ---: |",
        "| loss | 0.35 | 0.3 | -0.05 (-14.3%) |",
        "| acc | 0 | 0.5 | +0.5 |",  # no percentage of a zero baseline
        "| steps | 1000 | 1200 | +200 (+20.0%) |",
        "| model | a | b | changed |",
        "| extra | - | 1 | new |",
        "| old | 2 | - | removed |",
    ]


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        (5, 5, "0"),
        (2, 1.5, "-0.5 (-25.0%)"),
        (-4, -2, "+2 (+50.0%)"),
        (True, False, "changed"),
        (1, True, "changed"),
        ("x", "x", ""),
        (None, 1, "changed"),
    ],
)
def test_change(old, new, said):
    assert metrics.change(old, new) == said


def test_a_file_with_no_metric_is_a_note(folder):
    path = write(folder, "m.json", '{"nested": {}}')
    assert metrics.table([metrics.load(path)]) == "_No metrics in `m.json`._\n"


def test_a_baseline_compares_one_file(folder):
    first, second = write(folder, "a.json", "{}"), write(folder, "b.json", "{}")
    loaded = [metrics.load(first), metrics.load(second)]
    with pytest.raises(UsageError, match=r"^--baseline: .*give one --metrics"):
        metrics.table(loaded, metrics.load(first))


@pytest.mark.parametrize(
    ("name", "text", "said"),
    [
        ("gone.json", None, "gone.json: no such file"),
        ("m.txt", "loss=1", "m.txt: unknown kind of metrics file; give a .csv, .json, .tsv, .yaml"),
        ("m.json", "{loss: 1", "m.json: not valid JSON (Expecting property name"),
        ("m.json", "[1, 2]", "m.json: holds a list at the top, not a mapping of metric names"),
        ("m.json", "0.5", "m.json: holds a number at the top"),
        ("m.yaml", "a: [1\n", "m.yaml: not valid YAML ("),
        ("m.yaml", "", "m.yaml: holds nothing at the top"),
        ("m.csv", "loss,acc\n", "m.csv: needs a header row of metric names and a data row"),
        ("m.csv", "loss,acc\n1,2\n3\n", "m.csv: its last row has 1 cells for 2 names"),
        ("m.json", b"\xff\xfe{}", "m.json: cannot read it (UnicodeDecodeError)"),
    ],
)
def test_bad_files_are_one_line_usage_errors(folder, name, text, said):
    if isinstance(text, bytes):
        (folder / name).write_bytes(text)
    elif text is not None:
        write(folder, name, text)
    for flag in ("--metrics", "--baseline"):
        with pytest.raises(UsageError) as caught:
            metrics.load(name, flag)
        message = str(caught.value)
        assert message.startswith(f"{flag}: {said}"), message
        assert "\n" not in message and caught.value.exit_code == 2


def test_a_folder_is_not_a_metrics_file(folder):
    (folder / "m.json").mkdir()
    with pytest.raises(UsageError, match=r"^--metrics: m\.json: cannot read it \("):
        metrics.load("m.json")
