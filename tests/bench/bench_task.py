"""`make bench`: task mode's own costs, as medians (figures, not pass/fail).

- Packing a working folder (`task/pack.py`): 2,000 files of 10 KiB in 40 folders (20 MiB),
  beside an ignored `node_modules/` of 20,000 small files that must cost nothing (it is never
  walked) and a `.git/` of 5,000; --runs runs in this process.
- An attached task on the local cloud with real Terraform: `cml-infra up --single --out
  out.txt -- sh -c 'echo done > out.txt'` from a small project folder, until `up` exits with
  the task's code and out.txt is home; --runs fresh state dirs. Beside it, the same `up` with
  `--detach` (returns once the instance runs), so that the difference is the attach: the log
  followed, the outputs brought home.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cml_infra.task.pack import pack  # noqa: E402 - after the checkout is on the path


def make_tree(root: Path) -> None:
    for folder in range(40):
        sub = root / "src" / f"pkg{folder:02d}"
        sub.mkdir(parents=True)
        for number in range(50):
            (sub / f"m{number:03d}.py").write_bytes(os.urandom(10 * 1024))
    (root / ".gitignore").write_text("node_modules/\n*.pyc\n")
    for name, count in (("node_modules", 20_000), (".git", 5_000)):
        for number in range(count):
            sub = root / name / f"d{number // 500:03d}"
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"f{number}").write_bytes(b"x")


def bench_pack(runs: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="bench-pack-") as tmp:
        root = Path(tmp) / "project"
        make_tree(root)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            packed = pack(root)
            times.append(time.perf_counter() - started)
        assert packed.files == 2_001, packed.files  # the tree and its .gitignore
        return times


def bench_attached(runs: int) -> tuple[list[float], list[float]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CML_INFRA_", "TF_"))}
    env["CML_INFRA_CONFIG"] = ""
    cli = [sys.executable, "-m", "cml_infra"]
    attached, detached = [], []
    for run in range(runs):
        with tempfile.TemporaryDirectory(prefix="bench-task-") as tmp:
            project = Path(tmp) / "project"
            project.mkdir()
            (project / "train.py").write_text("print('hi')\n")
            state = {**env, "CML_INFRA_HOME": str(Path(tmp) / "state")}
            task = ["--", "sh", "-c", "echo done > out.txt"]
            try:
                for kind, flags, into in (
                    ("attached", ["--out", "out.txt"], attached),
                    ("detached", ["--detach"], detached),
                ):
                    started = time.perf_counter()
                    done = subprocess.run(
                        [*cli, "up", "--single", "--name", f"{kind}-{run}", *flags, *task],
                        env=state, cwd=project, capture_output=True, text=True, check=False,
                    )  # fmt: skip
                    into.append(time.perf_counter() - started)
                    if done.returncode != 0:
                        raise SystemExit(f"{kind} up failed: {done.stderr[-2000:]}")
                if (project / "out.txt").read_text() != "done\n":
                    raise SystemExit("the attached task's output did not come home")
            finally:
                subprocess.run([*cli, "down", "--all"], env=state, cwd=project,
                               capture_output=True, check=False)  # fmt: skip
                shutil.rmtree(Path(tmp) / "state", ignore_errors=True)
    return attached, detached


def line(label: str, times: list[float]) -> str:
    return f"  {label:<40} {statistics.median(times):7.3f}s {min(times):7.3f}s {max(times):7.3f}s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print("task mode (medians)                         median      min      max")
    print(line("pack 20 MiB, 2,000 files (+25,000 ignored)", bench_pack(args.runs)))
    attached, detached = bench_attached(max(1, args.runs // 2 + 1))
    print(line("up --single, attached, output home", attached))
    print(line("up --single --detach", detached))
    print(f"  attach costs {statistics.median(attached) - statistics.median(detached):+.3f}s")


if __name__ == "__main__":
    main()
