"""Fault-injection soak on the local cloud: `up` killed at random points, then `cleanup` alone.

Each cycle starts `cml-infra up --cloud local --name soak-NNN --idle-timeout 1h -- sleep 600`
and, after a random delay (dense: mostly within the time a clean `up` takes on this machine,
measured by two unsignalled `up`s first), sends one signal to one random victim:

- the CLI itself: SIGKILL, SIGINT or SIGTERM;
- a Terraform child of the CLI (found by walking /proc parent pids): SIGKILL or SIGINT;
- the instance's agent (the `python -m cml_infra_agent` process whose working folder is the sandbox
  `<state>/local/instances/<name>/`): SIGKILL or SIGINT. The agent may also be hit after `up`
  returned: an instance whose agent died is one of the leftovers cleanup has to reap. (The
  agent inherits SIGINT ignored from create.sh's background start, so its SIGINT is a no-op;
  kept, as a check that it stays harmless.)

A victim that is not there yet at the chosen moment is waited for (the next Terraform command,
the agent once it starts) until the CLI exits; a CLI or Terraform victim that never showed up
before the CLI exited is a *missed* signal (up finished first).

Per cycle, once the CLI has exited:

- Ctrl-C contract (the CLI got SIGINT/SIGTERM): exit 130 (or death by that very signal, which a
  shell reports the same way) with nothing of that name running, or exit 0 with a running
  instance that stdout names. Anything else is a violation: exit 0 with nothing running, exit
  130 with the instance running, another exit code.
- Bookkeeping (every cycle but a SIGKILLed CLI, which cannot report anything): an instance that
  still runs must have been reported by `up` (exit 0, its name on stdout); after any other exit
  nothing of the name runs and its sandbox is gone.

Which survivors the test destroys itself, and why: an instance whose record `up` closed as
`running` and whose agent is alive is a healthy runner that will end itself (idle timeout, TTL);
no cleanup rule matches it (it is neither expired nor stale) and none should. Those, and only
those, are destroyed with an explicit `down NAME` before cleanup runs: mostly the ones `up`
reported (exit 0, name on stdout), plus the few whose CLI was SIGKILLed (or, a contract
violation already counted above, died of SIGINT/SIGTERM) after it had saved the record as
running but before it could report. Everything else is left to one `cleanup --cloud local
--yes`: provisioning records of killed ups, instances that a SIGKILLed CLI's Terraform finished
creating, instances whose agent died (no kill switch left), failed rollbacks. (The other option,
`--single` with a short task so that a survivor ends itself, was not taken: the agent of an
instance whose `up` was SIGKILLed would then close the abandoned record itself and hide what
cleanup alone must reap.) After that one cleanup: no process under the state dir (polled for
20 s), no sandbox under `<state>/local/instances/`, and every record in `status --all --json`
destroyed (a `failed` record is a leftover too). A second cleanup runs afterwards for the
report only (does a second pass fix it?); the assertion is on the first.

Knobs: `CML_INFRA_SOAK_SEED` (default: random; printed, and in every assertion message),
`CML_INFRA_SOAK_CYCLES` (default 25, about two minutes on two cores), and
`CML_INFRA_SOAK_UP_SECONDS` (default: measured) to replay the same delays. Each cycle draws its
victim, signal and delay from its own generator seeded by (seed, cycle), so a replay makes the
same choices; where a signal lands inside `up` still depends on the machine's timing. Run with
`-s` to watch the cycles; the counts are printed at the end and shown with any failure.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli, processes_in

pytestmark = pytest.mark.e2e

CYCLES = int(os.environ.get("CML_INFRA_SOAK_CYCLES") or 25)
TASK = ("sleep", "600")
# Longer than create.sh's READY_TIMEOUT (60 s: an agent killed right after it started its task
# keeps the group alive without ever reporting) plus a rollback.
CLI_TIMEOUT = 150.0
POLL = 0.01

VICTIMS = {
    "cli": (signal.SIGKILL, signal.SIGINT, signal.SIGTERM),
    "terraform": (signal.SIGKILL, signal.SIGINT),
    "agent": (signal.SIGKILL, signal.SIGINT),
}


# --- processes --------------------------------------------------------------------------------


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _ppid(pid: int) -> int | None:
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # The command name (2nd field) may hold spaces and parentheses: split after the last ')'.
    return int(stat.rsplit(b")", 1)[1].split()[1])


def _argv(pid: int) -> list[str]:
    raw = _read(f"/proc/{pid}/cmdline") or b""
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd").removesuffix(" (deleted)")
    except OSError:
        return None


def procs_under(root: Path) -> list[int]:
    """Pids working in `root` or below it (exactly: `soak-001` is not under `soak-00`)."""
    prefix = str(root)
    found = []
    for pid in _pids():
        cwd = _cwd(pid)
        if cwd is not None and (cwd == prefix or cwd.startswith(prefix + "/")):
            found.append(pid)
    return found


def describe(pid: int) -> str:
    argv = " ".join(_argv(pid)) or "?"
    return f"{pid} (cwd {_cwd(pid)}): {argv}"


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = collections.defaultdict(list)
    for pid in _pids():
        parent = _ppid(pid)
        if parent is not None:
            children[parent].append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def terraform_children(cli_pid: int) -> list[int]:
    return [
        pid
        for pid in descendants(cli_pid)
        if (argv := _argv(pid)) and Path(argv[0]).name in ("terraform", "tofu")
    ]


def agents(sandbox: Path) -> list[int]:
    return [
        pid
        for pid in procs_under(sandbox)
        if _cwd(pid) == str(sandbox) and "cml_infra_agent" in _argv(pid)[1:3]
    ]


def terraforms_under(root: Path) -> list[int]:
    return [
        pid
        for pid in procs_under(root)
        if (argv := _argv(pid)) and Path(argv[0]).name in ("terraform", "tofu")
    ]


def wait_until(condition: Callable[[], object], within: float) -> bool:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# --- one cycle --------------------------------------------------------------------------------


@dataclass
class Cycle:
    index: int
    name: str
    victim: str
    signum: int
    delay: float
    target: str = ""
    delivered_at: float | None = None
    exit_code: int | None = None
    elapsed: float = 0.0
    stdout: str = ""
    stderr: str = ""
    record_state: str | None = None
    outcome: str = ""
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def signame(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def delivered(self) -> bool:
        return self.delivered_at is not None

    def line(self) -> str:
        when = f"at {self.delivered_at:.2f}s" if self.delivered else "MISSED"
        text = (
            f"#{self.index:03d} {self.name} {self.victim}/{self.signame} delay {self.delay:.2f}s "
            f"{when} -> exit {self.exit_code} in {self.elapsed:.2f}s, "
            f"record {self.record_state}: {self.outcome}"
        )
        if self.target:
            text += f" [{self.target}]"
        errors = [ln for ln in self.stderr.splitlines() if ln.startswith(("error:", "Aborted"))]
        if errors:
            text += f"\n      stderr: {errors[-1][:300]}"
        for problem in self.problems:
            text += f"\n      VIOLATION: {problem}"
        for note in self.notes:
            text += f"\n      note: {note}"
        return text


def plan_cycle(seed: int, index: int, up_seconds: float) -> Cycle:
    """Victim, signal and delay of cycle `index`, from a generator of its own (replayable)."""
    rng = random.Random(f"{seed}:{index}")
    victim = rng.choice(sorted(VICTIMS))
    signum = rng.choice(VICTIMS[victim])
    # Dense: 85% while a clean up would still be working, the rest up to twice that.
    share = rng.uniform(0.0, 1.0) if rng.random() < 0.85 else rng.uniform(1.0, 2.0)
    return Cycle(index, f"soak-{index:03d}", victim, signum, share * up_seconds)


def record_state(cli: Cli, name: str) -> str | None:
    raw = _read(str(cli.state_dir / "runners" / name / "runner.json"))
    if raw is None:
        return None
    try:
        return str(json.loads(raw)["state"])
    except (ValueError, KeyError):
        return "unreadable"


def run_cycle(cli: Cli, cycle: Cycle) -> None:
    sandbox = cli.sandbox(cycle.name)
    started = time.monotonic()
    proc = cli.start("up", "--cloud", "local", "--name", cycle.name, "--idle-timeout", "1h",
                     "--", *TASK)  # fmt: skip
    give_up = started + CLI_TIMEOUT
    while time.monotonic() < started + cycle.delay and proc.poll() is None:
        time.sleep(POLL)
    # Find the victim (wait for it to appear while the CLI works) and signal it once.
    while time.monotonic() < give_up:
        cli_running = proc.poll() is None
        if cycle.victim == "cli":
            candidates = [proc.pid] if cli_running else []
        elif cycle.victim == "terraform":
            candidates = terraform_children(proc.pid) if cli_running else []
        else:
            candidates = agents(sandbox)
        if candidates:
            pid = random.Random(f"{cycle.name}:{len(candidates)}").choice(candidates)
            target = describe(pid)
            try:
                os.kill(pid, cycle.signum)
            except ProcessLookupError:
                continue  # exited between the look and the signal: look again
            cycle.delivered_at = time.monotonic() - started
            cycle.target = target
            break
        if not cli_running:
            cycle.target = "up had exited before a victim showed up"
            break
        time.sleep(POLL)
    try:
        cycle.stdout, cycle.stderr = proc.communicate(timeout=max(1.0, give_up - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        cycle.stdout, cycle.stderr = proc.communicate()
        cycle.problems.append(f"up hung for {CLI_TIMEOUT:.0f}s and was SIGKILLed by the test")
    cycle.exit_code = proc.returncode
    cycle.elapsed = time.monotonic() - started
    check_cycle(cli, cycle)


def check_cycle(cli: Cli, cycle: Cycle) -> None:
    sandbox = cli.sandbox(cycle.name)
    runner_dir = cli.state_dir / "runners" / cycle.name
    code = cycle.exit_code
    cli_hit = cycle.victim == "cli" and cycle.delivered
    ctrl_c = cli_hit and cycle.signum in (signal.SIGINT, signal.SIGTERM)
    named = cycle.stdout.strip() == cycle.name

    def nothing_left() -> bool:
        return not procs_under(sandbox) and not procs_under(runner_dir) and not sandbox.exists()

    def leftover() -> str:
        return (
            f"stdout={cycle.stdout.strip()!r}, record {cycle.record_state}, sandbox exists="
            f"{sandbox.exists()}, processes="
            f"{[describe(p) for p in procs_under(sandbox) + procs_under(runner_dir)]}"
        )

    if code == 0:
        # up reported an instance: it must run, and be recorded running.
        cycle.record_state = record_state(cli, cycle.name)
        if named and procs_under(sandbox) and cycle.record_state == "running":
            if cycle.victim == "agent" and cycle.delivered:
                wait_until(lambda: not agents(sandbox), within=0.5)  # a SIGKILL takes a moment
            agent_alive = bool(agents(sandbox))
            cycle.outcome = "reported, running" + ("" if agent_alive else " (agent dead)")
        else:
            cycle.outcome = "exit 0 WITHOUT a running instance"
            cycle.problems.append(f"exit 0 but no running instance: {leftover()}")
    elif cli_hit and cycle.signum == signal.SIGKILL:
        # The CLI could not report anything: whatever its Terraform goes on to do is
        # cleanup's business. Noted, not judged.
        cycle.record_state = record_state(cli, cycle.name)
        cycle.outcome = "CLI SIGKILLed" + (
            f"; sandbox exists, {len(procs_under(sandbox))} processes" if sandbox.exists() else ""
        )
    else:
        gone = wait_until(nothing_left, within=10)
        cycle.record_state = record_state(cli, cycle.name)
        cycle.outcome = (
            "failed/interrupted, nothing left running"
            if gone
            else f"exit {code} but the instance (or part of it) is still there"
        )
        if not gone and not ctrl_c:  # (for Ctrl-C the contract below says it once)
            cycle.problems.append(f"exit {code}, not reported, yet still there: {leftover()}")
        if cycle.record_state not in (None, "destroyed"):
            cycle.notes.append(
                f"up exited {code} and left its record {cycle.record_state!r} (blocks the name)"
            )
        if code not in (1, 130, -signal.SIGINT, -signal.SIGTERM, -signal.SIGKILL):
            cycle.notes.append(f"unexpected exit code {code}; stderr tail: {cycle.stderr[-400:]}")

    if ctrl_c:
        check_interrupt_contract(cycle, named, bool(procs_under(sandbox)), leftover())


def before_cml_infra(cycle: Cycle) -> bool:
    """A SIGINT during the interpreter's own start-up (site, encodings) is a KeyboardInterrupt
    that Python reports with exit 1 before any cml_infra code runs: not the CLI's contract."""
    return (
        cycle.exit_code == 1
        and cycle.signum == signal.SIGINT
        and cycle.stderr.rstrip().endswith("KeyboardInterrupt")
        and "cml_infra" not in cycle.stderr
        and cycle.record_state is None
    )


def check_interrupt_contract(cycle: Cycle, named: bool, alive: bool, leftover: str) -> None:
    """Ctrl-C/SIGTERM: 130 (or death by that signal, which a shell reports as 128+N) and
    nothing running, or 0 and a running instance that stdout names. Never anything between."""
    code = cycle.exit_code
    interrupted = code in (130, -cycle.signum)
    if interrupted and not alive:
        return
    if code == 0 and named and alive:
        return
    if before_cml_infra(cycle) and not alive:
        cycle.outcome = "interrupted in interpreter start-up (exit 1), nothing created"
        return
    if interrupted and alive:
        what = f"exit {code} (interrupted) but the instance is running"
    elif code == 0:
        what = "exit 0 but no running instance"
    else:
        what = f"exit {code} after {cycle.signame} (expected 130 or 0)"
    tail = " | ".join(cycle.stderr.strip().splitlines()[-3:])
    cycle.problems.append(f"Ctrl-C contract: {what}: {leftover}; stderr tail: {tail}")


# --- the whole state dir ----------------------------------------------------------------------


@dataclass
class Inventory:
    """What is left in the state dir: non-destroyed records, sandboxes, live processes."""

    records: dict[str, str]
    sandboxes: list[str]
    processes: list[str]
    workspaces: list[str]
    status_error: str = ""

    @property
    def empty(self) -> bool:
        return not (self.records or self.sandboxes or self.processes or self.status_error)

    def names(self) -> set[str]:
        with_process = {name for p in self.processes for name in re.findall(r"soak-\d+", p)}
        return set(self.records) | set(self.sandboxes) | with_process

    def counts(self) -> str:
        by_state = collections.Counter(self.records.values())
        return (
            f"records {dict(sorted(by_state.items())) or 0}, sandboxes {len(self.sandboxes)}, "
            f"processes {len(self.processes)}, workspaces {len(self.workspaces)}"
        )

    def details(self) -> str:
        lines = [f"  records not destroyed: {self.records}", f"  sandboxes: {self.sandboxes}"]
        lines += [f"  workspaces still on disk: {self.workspaces}"]
        lines += [f"  process {p}" for p in self.processes]
        if self.status_error:
            lines.append(f"  status failed: {self.status_error}")
        return "\n".join(lines)


def inventory(cli: Cli) -> Inventory:
    done = cli.run("status", "--all", "--json")
    records: dict[str, str] = {}
    error = ""
    if done.returncode == 0:
        for row in json.loads(done.stdout):
            if row["state"] != "destroyed":
                error_text = f" ({row['error']})" if row.get("error") else ""
                records[str(row["name"])] = f"{row['state']}{error_text}"
    else:
        error = f"exit {done.returncode}: {done.stderr.strip()}"
    root = cli.state_dir / "local" / "instances"
    sandboxes = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    runners = cli.state_dir / "runners"
    workspaces = (
        sorted(p.parent.name for p in runners.glob("*/workspace")) if runners.is_dir() else []
    )
    processes = [describe(pid) for pid in processes_in(cli.state_dir)]
    return Inventory(records, sandboxes, processes, workspaces, error)


def settle(cli: Cli, within: float) -> bool:
    """Wait for processes under the state dir to end (`assert_no_processes_in`'s poll)."""
    return wait_until(lambda: not processes_in(cli.state_dir), within)


def cleanup_once(cli: Cli) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    done = cli.run("cleanup", "--cloud", "local", "--yes", "--json", timeout=300)
    rows = []
    with contextlib.suppress(ValueError):
        for row in json.loads(done.stdout or "[]"):
            rows.append(f"{row['name']}: {row['rule']} -> {row['result']}")
    return done, rows


# --- the test ---------------------------------------------------------------------------------


@pytest.mark.timeout(int(240 + 20 * CYCLES))
def test_killed_ups_are_reaped_by_cleanup_alone(cli: Cli) -> None:
    seed = int(os.environ.get("CML_INFRA_SOAK_SEED") or random.randrange(2**32))
    tag = f"[soak seed={seed} cycles={CYCLES}]"
    replay = f"CML_INFRA_SOAK_SEED={seed} CML_INFRA_SOAK_CYCLES={CYCLES}"
    print(f"\n{tag} replay with {replay}", flush=True)

    # Clean ups first: the machinery works, and how long a warm up takes here sets the delays.
    up_seconds_env = os.environ.get("CML_INFRA_SOAK_UP_SECONDS")
    measured = []
    for attempt in range(2):
        name = f"soak-calibrate-{attempt}"
        started = time.monotonic()
        done = cli.run(
            "up", "--cloud", "local", "--name", name, "--idle-timeout", "1h", "--", *TASK
        )
        measured.append(time.monotonic() - started)
        assert done.returncode == 0, f"{tag} a clean up failed: {done.stderr}"
        assert cli.run("down", name).returncode == 0, tag
    up_seconds = float(up_seconds_env) if up_seconds_env else max(0.5, min(measured))
    print(
        f"{tag} clean ups take {', '.join(f'{m:.2f}s' for m in measured)} here; delays scale "
        f"with CML_INFRA_SOAK_UP_SECONDS={up_seconds:.2f}",
        flush=True,
    )

    cycles = []
    for index in range(CYCLES):
        cycle = plan_cycle(seed, index, up_seconds)
        run_cycle(cli, cycle)
        cycles.append(cycle)
        print(f"{tag} {cycle.line()}", flush=True)

    # Terraform of a SIGKILLed CLI runs on in a session of its own: let it finish first, as a
    # scheduled cleanup would come later anyway.
    orphans_settled = wait_until(lambda: not terraforms_under(cli.state_dir), within=60)
    after_cycles = inventory(cli)

    # Healthy runners are not leftovers: destroyed explicitly (see the module docstring).
    healthy = [
        c for c in cycles if record_state(cli, c.name) == "running" and agents(cli.sandbox(c.name))
    ]
    down_failures = []
    for cycle in healthy:
        done = cli.run("down", cycle.name)
        if done.returncode != 0:
            down_failures.append(f"down {cycle.name}: exit {done.returncode}: {done.stderr}")
    before = inventory(cli)

    first, first_rows = cleanup_once(cli)
    settle(cli, within=20)
    after_first = inventory(cli)
    second, second_rows = cleanup_once(cli)
    settle(cli, within=10)
    after_second = inventory(cli)

    signals = collections.Counter(
        f"{c.victim}/{c.signame}/{'delivered' if c.delivered else 'missed'}" for c in cycles
    )
    exits = collections.Counter(str(c.exit_code) for c in cycles)
    outcomes = collections.Counter(c.outcome for c in cycles)
    violations = [f"#{c.index:03d} {c.name}: {p}" for c in cycles for p in c.problems]
    report = "\n".join(
        [
            f"{tag} replay with {replay} CML_INFRA_SOAK_UP_SECONDS={up_seconds:.2f}",
            f"cycles: {len(cycles)}; signals delivered while up ran: "
            f"{sum(1 for c in cycles if (c.delivered_at or 1e9) < c.elapsed)}",
            f"signals (victim/signal/fate): {dict(sorted(signals.items()))}",
            f"exit codes: {dict(sorted(exits.items()))}",
            f"outcomes: {dict(sorted(outcomes.items()))}",
            f"per-cycle violations: {len(violations)}",
            *[f"  {v}" for v in violations],
            f"orphaned terraform finished before cleanup: {orphans_settled}",
            f"left after the cycles: {after_cycles.counts()}",
            "healthy runners destroyed with down: "
            + str(
                [c.name if c.exit_code == 0 else f"{c.name} (exit {c.exit_code})" for c in healthy]
            )
            + (f"; FAILED: {down_failures}" if down_failures else ""),
            f"leftovers before cleanup: {before.counts()}",
            before.details(),
            f"cleanup #1: exit {first.returncode}; rows: {first_rows}",
            f"  stderr tail: {' | '.join(first.stderr.strip().splitlines()[-3:])}",
            f"leftovers after cleanup #1: {after_first.counts()}",
            after_first.details(),
            "  where they come from:",
            *[
                f"    {c.name}: {c.victim}/{c.signame} "
                f"{f'at {c.delivered_at:.2f}s' if c.delivered else 'missed'}, exit {c.exit_code} "
                f"in {c.elapsed:.2f}s ({c.outcome})"
                for c in cycles
                if c.name in after_first.names()
            ],
            f"cleanup #2 (report only): exit {second.returncode}; rows: {second_rows}",
            f"leftovers after cleanup #2: {after_second.counts()}",
            after_second.details(),
        ]
    )
    print(report, flush=True)

    failures = [
        *(["down of a healthy runner failed"] if down_failures else []),
        *([f"{len(violations)} per-cycle violations"] if violations else []),
        *([f"cleanup exited {first.returncode}"] if first.returncode != 0 else []),
        *([f"cleanup alone left {after_first.counts()}"] if not after_first.empty else []),
    ]
    assert not failures, f"{tag} {'; '.join(failures)}\n{report}"
