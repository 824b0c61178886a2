"""`make bench`: whole-process timings of the CLI, as medians (figures, not pass/fail).

- `cml-infra --help`: start-up cost of the CLI (target: under 0.2 s), 10 runs.
- `up` and `down` on the local cloud with real Terraform, 3 runs each.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = str(Path(sys.executable).with_name("cml-infra"))


def timed(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def report(label: str, samples: list[float]) -> None:
    print(
        f"{label:<28} median {statistics.median(samples):.3f}s  "
        f"min {min(samples):.3f}s  max {max(samples):.3f}s  ({len(samples)} runs)"
    )


def main() -> None:
    env = dict(os.environ)
    timed([CLI, "--help"], env)  # warm the page cache and .pyc files
    report("cml-infra --help", [timed([CLI, "--help"], env) for _ in range(10)])

    state = tempfile.mkdtemp(prefix="cml-infra-bench-")
    env["CML_INFRA_HOME"] = state
    ups, downs = [], []
    try:
        for run in range(3):
            name = f"bench{run}"
            ups.append(timed([CLI, "up", "--name", name, "--idle-timeout", "1h"], env))
            downs.append(timed([CLI, "down", name], env))
    finally:
        subprocess.run([CLI, "down", "--all"], env=env, capture_output=True, check=False)
        shutil.rmtree(state, ignore_errors=True)
    report("up --cloud local", ups)
    report("down (local)", downs)


if __name__ == "__main__":
    main()
