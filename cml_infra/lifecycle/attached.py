"""`up --single -- TASK`, attached: the task's log streamed to standard output until the task
ends, its outputs brought home, and its exit code made `up`'s, so that a failed task fails the
CI step. A spot instance reclaimed mid-task is launched again (`--retry-on-preemption N`), the
outputs it uploaded before it went brought home first: a task that checkpoints into an --out
path resumes from there, since the next launch packs the working folder again.

Ctrl-C detaches: the instance runs on and ends itself after the task, as with --detach.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass

from cml_infra import ui
from cml_infra.errors import CmlInfraError
from cml_infra.forge import Secret
from cml_infra.record import RunnerRecord
from cml_infra.spec import RunnerSpec
from cml_infra.state import StateDir
from cml_infra.task import attach
from cml_infra.task.attach import Outcome

# `up`'s exit code once Ctrl-C detached it, as for any interrupted command.
DETACHED = 130
# The reason `down` records for an instance the cloud reclaimed.
PREEMPTED_REASON = "spot interruption"


@dataclass(frozen=True)
class Done:
    """The runner the task last ran on, and the exit code `up` ends with."""

    record: RunnerRecord
    exit_code: int


def until_done(
    spec: RunnerSpec,
    state: StateDir,
    record: RunnerRecord,
    terraform: str | None,
    token: Secret,
    *,
    retries: int,
) -> Done:
    relaunched = 0
    while True:
        # `up` ignores signals once its instance runs (lifecycle/guard.py); attached, Ctrl-C
        # detaches and SIGTERM ends this process alone: the instance runs on either way.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            outcome = attach.attach(state, record, _write)
        except KeyboardInterrupt:
            _say_detached(state, record)
            return Done(record, DETACHED)
        if outcome.kind == "exited":
            return Done(record, _exited(spec, state, record, outcome))
        if outcome.kind == "preempted":
            saved = _bring_home(spec, state, record, outcome, partial=True)
            if relaunched < retries:
                relaunched += 1
                ui.warn(
                    f"{record.name}: the cloud reclaimed its spot instance before the task "
                    f"ended ({outcome.status and outcome.status.get('preempted')}){saved}; "
                    f"launching it again ({relaunched} of {retries})"
                )
                record = _relaunch(spec, state, record, terraform, token)
                continue
            raise CmlInfraError(
                f"{record.name}: the cloud reclaimed its spot instance before the task ended"
                + (f", after {relaunched} relaunch(es)" if relaunched else "")
                + f"{saved}; --retry-on-preemption N launches it again"
            )
        if outcome.kind == "failed-to-start":
            raise CmlInfraError(
                f"{record.name}: the task did not start: {outcome.reason or 'see its log'}"
            )
        raise CmlInfraError(
            f"{record.name}: the instance is gone and never reported how its task ended "
            f"(`cml-infra logs {record.name}` shows what it sent before)"
        )


def _exited(spec: RunnerSpec, state: StateDir, record: RunnerRecord, outcome: Outcome) -> int:
    code = outcome.exit_code if outcome.exit_code is not None else 1
    _bring_home(spec, state, record, outcome, partial=False)
    ui.info(f"{record.name}: the task exited with {code}")
    return code


def _bring_home(
    spec: RunnerSpec, state: StateDir, record: RunnerRecord, outcome: Outcome, *, partial: bool
) -> str:
    """The outputs the instance uploaded, unpacked into the working folder; what a message
    says of them."""
    if not spec.outputs or spec.workdir is None:
        return ""
    sent = (outcome.status or {}).get("outputs") or {}
    missing = [str(p) for p in sent.get("missing") or ()]
    if missing:
        ui.warn(f"{record.name}: the task left no {', '.join(missing)} (--out)")
    if not sent.get("uploaded"):
        if not partial and not missing:
            ui.warn(
                f"{record.name}: its outputs did not come back (`cml-infra logs {record.name}` "
                f"says why; `cml-infra pull {record.name}` fetches them if they arrive later)"
            )
        return "; it had uploaded no outputs" if partial else ""
    try:
        written = attach.pull(state, record, spec.workdir)
    except CmlInfraError as exc:
        ui.warn(f"{record.name}: its outputs could not be brought home: {exc}")
        return ""
    ui.info(f"{record.name}: {len(written)} file(s) of its outputs in {spec.workdir}")
    return f"; the outputs it uploaded before ({', '.join(sent['uploaded'])}) are in {spec.workdir}"


def _relaunch(
    spec: RunnerSpec, state: StateDir, record: RunnerRecord, terraform: str | None, token: Secret
) -> RunnerRecord:
    """What is left of the reclaimed instance destroyed, and the task launched anew, its next
    placement first."""
    from cml_infra.lifecycle import down, up

    current = state.load(state.key(record))
    if current is not None and current.state != "destroyed":
        down.down([state.key(record)], state, terraform, PREEMPTED_REASON, token)
    return up.up(spec, state, terraform, token, avoid=record)


def _say_detached(state: StateDir, record: RunnerRecord) -> None:
    where = " ".join(state.cli_args()) if _explicit_ledger() else ""
    flags = f" {where}" if where else ""
    ui.warn(
        f"detached: {record.name} keeps running and ends itself after its task; "
        f"`cml-infra logs -f {record.name}{flags}` reattaches, "
        f"`cml-infra down {record.name}{flags}` stops it"
    )


def _explicit_ledger() -> bool:
    """Whether the ledger came from flags another command must repeat (not the defaults)."""
    return any(arg.startswith(("--state-dir", "--backend")) for arg in sys.argv)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
