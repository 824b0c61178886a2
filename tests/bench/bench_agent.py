"""`make bench`: the on-instance agent at rest, on the local cloud: its memory and CPU.

Two instances, each `cml-infra up --cloud local --idle-timeout 1h` in a fresh state dir of its
own, started with this checkout's CLI (as bench_cli.py runs it):
- a task instance with nothing to run (the agent watches its idle and TTL clocks);
- a runner waiting for jobs: `--repo octo/repo` against the loopback GitHub of tests/fakes,
  with the runner double as `--runner-archive` (the agent also watches the runner's processes;
  the double's own processes are not counted).

Once each agent has reported (agent-status.json in its sandbox) and SETTLE_SECONDS have passed,
both are sampled over the same --seconds (default 60): the agent process's resident memory
(VmRSS in /proc/PID/status, at the end, and its peak VmHWM) and its CPU time (utime + stime of
/proc/PID/stat) over the window, as a percentage of one core. The target is the issue's: at
most 16 MiB resident, printed as met or not (it does not fail the bench). Linux only (/proc).
Both instances are taken down afterwards, whatever happens (`down --all`, then a kill of every
process group a sandbox records).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_cli import CLI, ROOT, BenchError, base_env, kill_instances, run, stopped_on_sigterm

RSS_TARGET_MIB = 16.0
SETTLE_SECONDS = 5.0
REPORT_TIMEOUT = 60.0
TICKS = os.sysconf("SC_CLK_TCK")


def agent_pid(state: Path, name: str) -> int:
    """The agent's pid, from its status file, once it has reported (`up` waits for that)."""
    deadline = time.monotonic() + REPORT_TIMEOUT
    while True:
        found = list(state.rglob("agent-status.json"))
        if found:
            status = json.loads(found[0].read_text(encoding="utf-8"))
            if status.get("state") in ("idle", "busy") and Path(f"/proc/{status['pid']}").is_dir():
                return int(status["pid"])
        if time.monotonic() > deadline:
            raise BenchError(f"{name}: no agent reported idle under {state}")
        time.sleep(0.2)


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def cpu_seconds(pid: int) -> float:
    # The command name in parentheses may hold spaces: the fields follow the last ')'.
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def start_task_instance(env: dict[str, str], state: Path) -> None:
    run([*CLI, "up", "--cloud", "local", "--idle-timeout", "1h", "--name", "agent-task"],
        {**env, "CML_INFRA_HOME": str(state)})  # fmt: skip


def start_runner_instance(env: dict[str, str], state: Path, github_url: str, token: str) -> None:
    from tests.fakes.runner_double import build_archive

    archive = build_archive(state.parent / "archive")
    # The double's scripts run with the first python3 on PATH: this interpreter's.
    path = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    run([*CLI, "up", "--cloud", "local", "--idle-timeout", "1h", "--name", "agent-runner",
         "--repo", "octo/repo", "--github-url", github_url, "--runner-archive", str(archive)],
        {**env, "CML_INFRA_HOME": str(state), "CML_INFRA_TOKEN": token, "PATH": path})  # fmt: skip


def measure(pids: dict[str, int], seconds: float) -> None:
    time.sleep(SETTLE_SECONDS)
    before = {label: cpu_seconds(pid) for label, pid in pids.items()}
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    print(f"agent at rest on the local cloud ({seconds:.0f}s window, after {SETTLE_SECONDS:.0f}s)")
    print(f"  {'':<24} {'VmRSS':>9} {'VmHWM':>9} {'CPU':>7}  target")
    for label, pid in pids.items():
        cpu = (cpu_seconds(pid) - before[label]) / elapsed * 100
        memory = memory_kib(pid)
        rss = memory["VmRSS"] / 1024
        verdict = (
            "met" if rss <= RSS_TARGET_MIB else f"not met (over by {rss - RSS_TARGET_MIB:.1f})"
        )
        print(
            f"  {label:<24} {rss:6.1f}MiB {memory['VmHWM'] / 1024:6.1f}MiB {cpu:6.2f}%  "
            f"RSS <= {RSS_TARGET_MIB:.0f} MiB: {verdict}"
        )


def bench(seconds: float) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.fakes.github import FakeGitHub

    env = base_env()
    root = Path(tempfile.mkdtemp(prefix="cml-infra-bench-agent-")).resolve()
    states = {"task": root / "task" / "state", "runner": root / "runner" / "state"}
    token = f"ghp_bench{secrets.token_hex(12)}"
    try:
        with FakeGitHub(token=token, repos=("octo/repo",), orgs=("octo",)) as github:
            start_task_instance(env, states["task"])
            start_runner_instance(env, states["runner"], github.url, token)
            pids = {
                "task instance (idle)": agent_pid(states["task"], "agent-task"),
                "runner (listening)": agent_pid(states["runner"], "agent-runner"),
            }
            measure(pids, seconds)
            for state in states.values():
                down = [*CLI, "down", "--all"]
                subprocess.run(down, env={**env, "CML_INFRA_HOME": str(state)}, cwd=ROOT,
                               capture_output=True, timeout=120, check=False)  # fmt: skip
    finally:
        for state in states.values():
            if state.exists():
                kill_instances(state)
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="the window (default 60)")
    args = parser.parse_args(argv)
    with stopped_on_sigterm():
        try:
            bench(args.seconds)
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench interrupted; what it started is stopped", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
