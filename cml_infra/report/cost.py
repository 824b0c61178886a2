"""What a workflow run's runners cost: a markdown table for the pull request and the job
summary, from the ledger's records and the prices they were launched at.

"This run" is a GitHub Actions workflow run (every attempt of it). Its runners are:

- the records whose `ci` (what `up` keeps when it runs in Actions, `record.ci_run`) names the
  run: counted from creation to their recorded end, or to now while the ledger counts them
  live (marked `still running`; `status` stamps the end of an instance that ended itself);
- with a forge that can list the run's jobs, the runners of ours GitHub says ran them although
  another run launched them (`up --reuse-idle`). What share of such a runner's life this run
  should pay is unknown; it is counted for the time of this run's jobs on it (`reused`), or
  not at all when GitHub gives no times (`reused`, no minutes).

Dollars come from `cost.accrued`, as in `status`, so the two agree; they are estimates (the
catalog's price; no disks, traffic or taxes). A runner without a price shows `-` and the total
says `at least`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from cml_infra import cost
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.record import CI_FIELDS, RunnerRecord
from cml_infra.report import markdown
from cml_infra.state import StateDir, utcnow

HEADING = "### What this run cost"
COLUMNS = ("runner", "cloud", "type", "GPU", "spot", "region", "minutes", "$")
# A job's (started_at, completed_at); completed_at None while it runs.
JobTimes = tuple[datetime | None, datetime | None]


@runtime_checkable
class RunJobs(Protocol):
    """A forge that can say which runners ran a workflow run's jobs, and when (GitHub)."""

    def run_runner_jobs(
        self, run_id: str, repository: str | None = None
    ) -> dict[str, list[JobTimes]]: ...


@dataclass(frozen=True)
class Run:
    """The workflow run to report on. Run ids are unique on a GitHub host, so without a
    repository the id alone is matched; with one, a record of another repository is not."""

    run_id: str
    repository: str | None = None

    def __str__(self) -> str:
        return f"workflow run {self.run_id}" + (f" of {self.repository}" if self.repository else "")

    def launched(self, record: RunnerRecord) -> bool:
        ci = record.ci or {}
        if ci.get("run_id") != self.run_id:
            return False
        return (
            self.repository is None or ci.get("repository", "").lower() == self.repository.lower()
        )


def this_run(
    run_id: str | None,
    repository: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Run:
    """The run `report --cost` is about: `run_id` (--run-id) or the Actions run this step is
    part of (GITHUB_RUN_ID); the repository from GITHUB_REPOSITORY, else `repository` (the
    forge's). UsageError naming --run-id when there is none, or it is not a run id."""
    env = os.environ if environ is None else environ
    shapes = {field: shape for field, (_, shape) in CI_FIELDS.items()}
    if run_id is not None and not shapes["run_id"].fullmatch(run_id):
        raise UsageError("--run-id", f"{run_id!r} is not a workflow run id (its digits)")
    run_id = run_id or env.get("GITHUB_RUN_ID", "")
    if not shapes["run_id"].fullmatch(run_id):
        raise UsageError(
            "--run-id",
            "no workflow run to report the cost of: give --run-id, or run in a GitHub Actions "
            "job (GITHUB_RUN_ID)",
        )
    found = env.get("GITHUB_REPOSITORY", "")
    if shapes["repository"].fullmatch(found):
        repository = found
    return Run(run_id, repository)


@dataclass(frozen=True)
class Row:
    record: RunnerRecord
    minutes: float | None
    usd: float | None
    note: str = ""


def rows(
    records: Sequence[RunnerRecord],
    run: Run,
    jobs: Mapping[str, Sequence[JobTimes]] | None = None,
    now: datetime | None = None,
) -> list[Row]:
    """One row per runner of `run`, oldest first: the records it launched, then the records
    of other runners that `jobs` (runner name → this run's jobs on it) says served it."""
    now = now or utcnow()
    launched = sorted((r for r in records if run.launched(r)), key=lambda r: r.created_at)
    attempts = {(r.ci or {}).get("run_attempt") for r in launched}
    found = [_launched_row(r, now, len(attempts) > 1) for r in launched]
    names = {r.name for r in launched}
    for name, times in sorted((jobs or {}).items()):
        if name in names:
            continue
        record = _serving(records, name, times, now)
        if record is not None:
            found.append(_reused_row(record, times, now))
    return found


def section(
    state: StateDir,
    run: Run,
    forge: object | None = None,
    now: datetime | None = None,
) -> str:
    """The markdown section: a heading, the table with a total row (or a one-line note when
    the ledger has no runner of the run), and what it is based on."""
    now = now or utcnow()
    jobs, trouble = None, ""
    if isinstance(forge, RunJobs):
        try:
            jobs = forge.run_runner_jobs(run.run_id, run.repository)
        except CmlInfraError as exc:
            # The ledger's own records still make a report; the gap is said in it.
            trouble = (
                f"\n_GitHub's list of this run's jobs could not be read ({exc}): runners "
                "reused from other runs are missing._\n"
            )
    found = rows(state.records(), run, jobs, now)
    if not found:
        body = (
            f"_No runner of {run} is in the ledger: `up` records its run when it runs in "
            "GitHub Actions, and `report` must read the same ledger (--state-dir or "
            "--backend)._\n"
        )
    else:
        body = table(found) + (
            "\nEstimates from the catalog's prices: disks, traffic and taxes are not counted.\n"
        )
    return f"{HEADING}\n\n{body}{trouble}"


def table(found: Sequence[Row]) -> str:
    """The rows and their total; a `note` column when any row has one."""
    noted = any(row.note for row in found)
    header = [*COLUMNS, *(["note"] if noted else [])]
    lines = [_cells(row, noted) for row in found]
    minutes = sum(row.minutes for row in found if row.minutes is not None)
    usd = sum(row.usd for row in found if row.usd is not None)
    partial = any(row.usd is None for row in found)
    some_minutes = "at least " if any(row.minutes is None for row in found) else ""
    total = ["**total**", *[""] * 5, some_minutes + f"{minutes:.1f}"]
    total.append(("at least " if partial else "") + markdown.money(usd))
    lines.append(total + ([""] if noted else []))
    return markdown.table(header, lines, right=(6, 7))


def _cells(row: Row, noted: bool) -> list[str]:
    record = row.record
    cells = [
        record.name,
        record.cloud,
        record.instance_type or "-",
        record.gpu or "-",
        "yes" if record.spot else "no",
        record.region,
        "-" if row.minutes is None else f"{row.minutes:.1f}",
        "-" if row.usd is None else markdown.money(row.usd),
    ]
    return [markdown.cell(cell) for cell in cells] + ([markdown.cell(row.note)] if noted else [])


def _launched_row(record: RunnerRecord, now: datetime, show_attempt: bool) -> Row:
    end = record.ended_at or now
    notes = []
    if show_attempt:
        notes.append(f"attempt {(record.ci or {}).get('run_attempt', '?')}")
    if record.ended_at is None:
        notes.append("failed; counted until now" if record.state == "failed" else "still running")
    if record.hourly_price is None:
        notes.append("no catalog price")
    minutes = max(0.0, (end - record.created_at).total_seconds() / 60)
    return Row(record, minutes, cost.accrued(record, now), ", ".join(notes))


def _reused_row(record: RunnerRecord, times: Sequence[JobTimes], now: datetime) -> Row:
    seconds = 0.0
    for started, done in times:
        if started is None:  # GitHub gave no start: this run's share cannot be told
            return Row(record, None, None, "reused")
        seconds += max(0.0, ((done or now) - started).total_seconds())
    minutes = seconds / 60
    usd = None if record.hourly_price is None else round(record.hourly_price * minutes / 60, 4)
    note = "reused: this run's jobs only"
    if any(done is None for _, done in times):
        note += ", still running"
    return Row(record, minutes, usd, note)


def _serving(
    records: Sequence[RunnerRecord], name: str, times: Sequence[JobTimes], now: datetime
) -> RunnerRecord | None:
    """The record of the runner called `name` that was alive when this run's jobs started on
    it (a name may have been used by several launches); the latest one when the jobs carry
    no times; None when the ledger has no such runner (one of GitHub's, say)."""
    named = sorted((r for r in records if r.name == name), key=lambda r: r.created_at)
    starts = [started for started, _ in times if started is not None]
    if not starts:
        return named[-1] if named else None
    first = min(starts)
    for record in reversed(named):
        if record.created_at <= first <= (record.ended_at or now):
            return record
    return None
