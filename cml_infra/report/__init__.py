"""`cml-infra report`: the markdown a training job posts in its pull request — a metrics table,
plots, and what the run's runners cost.

`build` makes it; the command writes it (stdout or `-o FILE`, for `comment update -`) and puts
`Report.summary` in the job summary. Every input is read before anything is returned, so bad
input (a missing file, a malformed metrics file, no run id) is one UsageError naming its flag.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cml_infra.forge.base import Forge
    from cml_infra.state import StateDir

METRICS_HEADING = "### Metrics"
IMAGES_HEADING = "### Plots"


@dataclass(frozen=True)
class ReportOptions:
    """What `report` was asked for."""

    metrics: list[str] = field(default_factory=list)
    # A metrics file of the target branch: the table gains baseline and change columns.
    baseline: str | None = None
    # `FILE` or `FILE=Caption`.
    images: list[str] = field(default_factory=list)
    cost: bool = False
    # The workflow run whose cost is shown; None: this Actions run (GITHUB_RUN_ID).
    run_id: str | None = None
    title: str | None = None
    # The folder the report is written to (`-o`'s), when not the working directory: image links
    # are relative to it, as `comment` resolves a report's links from the report's folder.
    relative_to: str | None = None


@dataclass(frozen=True)
class Report:
    markdown: str
    # What goes to the CI job's summary (the cost section), None when there is nothing.
    summary: str | None = None


def build(
    options: ReportOptions,
    state: StateDir | None,
    forge: Forge | None,
    settle: Callable[[], None] | None = None,
) -> Report:
    """The report: the title, the metrics table, the images, the cost section, in that order
    and each only when asked for. `state` (the ledger) is needed for the cost; `forge`, when
    given, adds the runners GitHub says ran the run's jobs although another run launched them.
    `settle` runs once every input is read and found good, just before the ledger is (the
    command brings the records up to date there, which bad input must not do).
    """
    from cml_infra.errors import UsageError
    from cml_infra.report import cost, images, metrics

    if not (options.metrics or options.images or options.cost):
        raise UsageError("--metrics", "nothing to report: give --metrics, --image or --cost")
    if options.baseline is not None and not options.metrics:
        raise UsageError("--baseline", "is compared with a metrics file; give --metrics too")
    run = None
    if options.cost:
        run = cost.this_run(options.run_id, forge.target.repo if forge is not None else None)
    sections = []
    if options.title:
        sections.append(f"## {' '.join(options.title.split())}\n")
    if options.metrics:
        files = [metrics.load(path, "--metrics") for path in options.metrics]
        baseline = None
        if options.baseline is not None:
            baseline = metrics.load(options.baseline, "--baseline")
        sections.append(f"{METRICS_HEADING}\n\n{metrics.table(files, baseline)}")
    if options.images:
        sections.append(
            f"{IMAGES_HEADING}\n\n{images.section(options.images, options.relative_to)}"
        )
    summary = None
    if run is not None:
        if state is None:
            raise ValueError("report: the cost section needs the ledger")
        if settle is not None:
            settle()
        summary = cost.section(state, run, forge)
        sections.append(summary)
    return Report("\n".join(sections), summary)
