"""cml_infra.report.build: the report's sections in order, each only when asked for; bad input
is one usage error naming its flag."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cml_infra.errors import UsageError
from cml_infra.report import Report, ReportOptions, build
from cml_infra.state import StateDir, utcnow


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("GITHUB_RUN_ID", "GITHUB_REPOSITORY", "GITHUB_ACTIONS"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "metrics.json").write_text('{"train": {"loss": 0.25}}')
    (tmp_path / "base.json").write_text('{"train": {"loss": 0.5}}')
    (tmp_path / "loss.png").write_bytes(b"\x89PNG")
    return tmp_path


def test_title_metrics_images_and_cost_in_that_order(folder, make_record):
    state = StateDir(folder / "state")
    created = utcnow() - timedelta(minutes=30)
    state.save(make_record("gpu-7", cloud="aws", region="us-east-1", instance_type="g4dn.xlarge",
                           created_at=created, updated_at=created, hourly_price=0.5,
                           ci={"repository": "octo/repo", "run_id": "7"}))  # fmt: skip
    options = ReportOptions(
        metrics=["metrics.json"], baseline="base.json", images=["loss.png=Loss"], cost=True,
        run_id="7", title="Training\nreport",
    )  # fmt: skip
    report = build(options, state, None)
    markdown = report.markdown
    assert markdown.startswith(
        "## Training report\n\n"
        "### Metrics\n\n"
        "| metric | baseline | value | change |\n"
        "| --- | ---: | ---: | ---: |\n"
        "| train.loss | 0.5 | 0.25 | -0.25 (-50.0%) |\n"
        "\n### Plots\n\n![Loss](loss.png)\n\n*Loss*\n"
        "\n### What this run cost\n\n"
    )
    assert "| gpu-7 | aws | g4dn.xlarge |" in markdown
    assert report.summary is not None and markdown.endswith(report.summary)


def test_metrics_alone_has_no_summary(folder):
    report = build(ReportOptions(metrics=["metrics.json"]), None, None)
    assert report == Report(
        "### Metrics\n\n| metric | value |\n| --- | ---: |\n| train.loss | 0.25 |\n", None
    )


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (ReportOptions(title="t"), "--metrics: nothing to report: give --metrics, --image or"),
        (ReportOptions(baseline="base.json", images=["loss.png"]), "--baseline: is compared"),
        (ReportOptions(metrics=["metrics.json"], baseline="gone.json"), "--baseline: gone.json"),
        (ReportOptions(metrics=["gone.yaml"]), "--metrics: gone.yaml: no such file"),
        (ReportOptions(images=["gone.png"]), "--image: gone.png: no such file"),
        (ReportOptions(cost=True), "--run-id: no workflow run"),
        (ReportOptions(cost=True, run_id="abc"), "--run-id: 'abc' is not a workflow run id"),
    ],
)
def test_bad_input_is_one_usage_error_naming_the_flag(folder, options, said):
    with pytest.raises(UsageError) as caught:
        build(options, StateDir(folder / "state"), None)
    assert str(caught.value).startswith(said) and "\n" not in str(caught.value)
    assert not (folder / "state").exists()


def test_the_run_of_the_actions_job_by_default(folder, monkeypatch):
    monkeypatch.setenv("GITHUB_RUN_ID", "42")
    monkeypatch.setenv("GITHUB_REPOSITORY", "octo/repo")
    report = build(ReportOptions(cost=True), StateDir(folder / "state"), None)
    assert "_No runner of workflow run 42 of octo/repo is in the ledger" in report.markdown
