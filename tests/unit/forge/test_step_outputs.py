"""Step outputs: inside a GitHub Actions step, `up` leaves outputs and a summary row.

commands._step_outputs (and _report_reuse for `up --reuse-idle`) build them; forge/github.py's
`github_actions_outputs`, registered as a CI environment, writes them to $GITHUB_OUTPUT and
$GITHUB_STEP_SUMMARY.
"""

from __future__ import annotations

import pytest

from cml_infra import commands, forge
from cml_infra.forge.base import RunnerInfo
from cml_infra.forge.github import github_actions_outputs


@pytest.fixture
def step_files(tmp_path, monkeypatch):
    output = tmp_path / "github_output"
    summary = tmp_path / "step_summary.md"
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    return output, summary


def test_github_actions_is_a_registered_ci_environment():
    assert github_actions_outputs in forge.ci_environments()


def test_outputs_and_summary_row(step_files, make_record):
    output, summary = step_files
    output.write_text("earlier=1\n")
    record = make_record(
        "gpu-1",
        cloud="aws",
        region="us-east-1",
        instance_type="g4dn.xlarge",
        gpu="t4:1",
        spot=True,
        hourly_price=0.2104,
        labels=("gpu", "cml-infra-gpu-1"),
        launch_id="0123456789abcdef",
    )
    commands._step_outputs(record)
    assert output.read_text() == (
        "earlier=1\nname=gpu-1\nid=0123456789abcdef\nlabels=gpu,cml-infra-gpu-1\n"
        "region=us-east-1\nspot=true\nreused=false\n"
    )
    lines = summary.read_text().splitlines()
    assert lines[0] == "| name | cloud | type | GPU | spot | $/h | labels |"
    assert lines[1] == "| --- | --- | --- | --- | --- | --- | --- |"
    assert lines[2] == (
        "| gpu-1 | aws (us-east-1) | g4dn.xlarge | t4:1 | yes | $0.2104 | `gpu,cml-infra-gpu-1` |"
    )
    assert len(lines) == 3


def test_summary_row_without_gpu_or_price(step_files, make_record):
    _, summary = step_files
    record = make_record("cpu-1", instance_type="process", labels=("cml-infra-cpu-1",))
    commands._step_outputs(record)
    row = summary.read_text().splitlines()[2]
    assert row == "| cpu-1 | local (local) | process | - | no | - | `cml-infra-cpu-1` |"


def test_nothing_is_written_outside_github_actions(tmp_path, monkeypatch, make_record):
    monkeypatch.delenv("GITHUB_OUTPUT", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.chdir(tmp_path)
    commands._step_outputs(make_record("gpu-1"))
    assert list(tmp_path.iterdir()) == []


def test_only_the_variables_that_are_set_are_written(tmp_path, monkeypatch, make_record):
    output = tmp_path / "github_output"
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", "")
    monkeypatch.chdir(tmp_path)
    commands._step_outputs(make_record("gpu-1"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["github_output"]
    assert output.read_text().startswith("name=gpu-1\n")


def test_outputs_of_a_reused_runner(step_files):
    output, summary = step_files
    reused = RunnerInfo(
        id=7, name="gpu-7", online=True, labels=("self-hosted", "gpu", "t4", "cml-infra-gpu-7")
    )
    commands._report_reuse(reused, json_output=False)
    assert output.read_text() == (
        "name=gpu-7\nlabels=self-hosted,gpu,t4,cml-infra-gpu-7\nreused=true\n"
    )
    assert not summary.exists(), "a reused runner adds no summary row"


def test_a_summary_without_outputs_goes_to_the_summary_only(step_files):
    output, summary = step_files
    github_actions_outputs({}, "| a |\n")
    assert not output.exists() or output.read_text() == ""
    assert summary.read_text() == "| a |\n"
