"""`make bench`: whole-process timings of the CLI, as medians (figures, not pass/fail).

Start-up, 20 runs each (--startup-runs), interleaved, each against its target (0.15 s):
`cml-infra --help`, `cml-infra up --help`, and `cml-infra status` on an empty state dir.

Catalog resolution, --runs fresh processes per cloud: `--region any --optimize price` over
every region the cloud's catalog knows (its imports apart, then reading the data and the walk;
target 50 ms). A cloud whose packaged offerings sell nothing yet is said, not measured.

The lifecycle on the local cloud with real Terraform, 7 runs (--runs), interleaved (which side
goes first alternates), each side in a fresh state dir of its own:
- `cml-infra up --cloud local --idle-timeout 1h --name NAME` (an instance with no task: a task
  ships its working folder, which the floor would not), then `cml-infra down NAME`;
- the floor: a bare `terraform init`, `terraform apply -auto-approve` and
  `terraform destroy -auto-approve` of the very same workspace, written by `cml-infra render -o
  DIR` with the same flags and name into its state dir (only the creation time and the launch
  id differ: this is checked once against the workspace `up` applied). Terraform gets what
  cml-infra gives it: a CLI config file with the content `up` wrote (with this state dir's
  path), TF_IN_AUTOMATION=1, TF_INPUT=0 and CHECKPOINT_DISABLE=1;
and the ratio of the medians of up + down and of the floor (target: at most 1.5x).

Both sides must really start the instance and stop it: after `up` and after `apply` the
instance's process group is alive and its agent has reported (agent-status.json in its
sandbox); after `down` and after `destroy` the group is gone, and so is the sandbox. The plugin
cache is warm: each fresh state dir gets a copy of the one the warm-up run filled (the local
module needs no provider, so today it holds nothing). Whatever happens, instances are stopped:
an interrupted command gets SIGTERM (`up` then rolls back), then `down --all`, `terraform
destroy` and, last, a kill of every process group a sandbox records.

The CLI runs as its console script would, with this checkout's code (the entry point named in
pyproject.toml; an installed script may be another checkout's), compiled to .pyc first, from
the repository's top folder, with no CML_INFRA_* or TF_* variable of the caller's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[2]


def console_script() -> tuple[list[str], str]:
    """What the `cml-infra` console script runs, for this checkout's code: an installed script
    may be another checkout's, with another entry point."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(r'^cml-infra\s*=\s*"([\w.]+):(\w+)"', text, re.MULTILINE)
    if found is None:
        return [sys.executable, "-m", "cml_infra"], "python -m cml_infra"
    module, func = found.groups()
    code = f"import sys; sys.argv[0] = 'cml-infra'; from {module} import {func}; sys.exit({func}())"
    return [sys.executable, "-c", code], f"cml-infra = {module}:{func}"


CLI, CLI_LABEL = console_script()
TERRAFORM = shutil.which("terraform") or shutil.which("tofu")

STARTUP_TARGET = 0.15  # seconds, for --help, up --help and status
RATIO_TARGET = 1.5  # (up + down) / bare init + apply + destroy
UP_FLAGS = ["--cloud", "local", "--idle-timeout", "1h"]
TASK: list[str] = []
COMMAND_TIMEOUT = 300.0
# What cml-infra sets for Terraform besides TF_CLI_CONFIG_FILE (cml_infra's Engine.environment).
TERRAFORM_ENV = {"TF_IN_AUTOMATION": "1", "TF_INPUT": "0", "CHECKPOINT_DISABLE": "1"}
# Never handed to the commands measured: a token, a GitHub step's outputs.
DROPPED_ENV = ("GITHUB_TOKEN", "GH_TOKEN", "GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY")


class BenchError(Exception):
    pass


def base_env() -> dict[str, str]:
    """The environment of every command measured: this checkout's code, no CML_INFRA_* setting
    of the caller's, no token."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CML_INFRA_", "TF_")) and k not in DROPPED_ENV
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run(
    args: Sequence[str], env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    with subprocess.Popen(
        list(args),
        env=env,
        cwd=cwd or ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            out, err = child.communicate(timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            stop(child)
            raise BenchError(f"`{' '.join(args)}` took over {COMMAND_TIMEOUT:.0f}s") from None
        except BaseException:
            stop(child)
            raise
    if child.returncode != 0:
        tail = "\n".join((err or out).strip().splitlines()[-15:])
        raise BenchError(f"`{' '.join(args)}` exited {child.returncode}:\n{tail}")
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def stop(child: subprocess.Popen[str]) -> None:
    """Interrupted: let the command stop the way it would on Ctrl-C (`up` rolls back what it
    created, Terraform leaves its state consistent) rather than kill it half-way."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
    try:
        child.communicate(timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()


def timed(args: Sequence[str], env: dict[str, str], cwd: Path | None = None) -> float:
    start = time.perf_counter()
    run(args, env, cwd)
    return time.perf_counter() - start


# --- the instance, seen from outside: its sandbox holds `pgid` and, once up, agent-status.json


def sandbox(state: Path, name: str) -> Path | None:
    found = [p.parent for p in state.rglob("pgid") if p.parent.name == name]
    return found[0] if found else None


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_running(state: Path, name: str, who: str) -> int:
    """The instance's process-group id, once sure that it runs and its agent reported."""
    box = sandbox(state, name)
    if box is None or not (box / "agent-status.json").is_file():
        raise BenchError(f"{who}: no running instance {name!r} under {state}")
    pgid = int((box / "pgid").read_text(encoding="utf-8").strip())
    if not group_alive(pgid):
        raise BenchError(f"{who}: instance {name!r} (process group {pgid}) is not running")
    return pgid


def check_stopped(state: Path, name: str, pgid: int, who: str) -> None:
    deadline = time.monotonic() + 5.0  # an exited process may take a moment to be reaped
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if group_alive(pgid):
        raise BenchError(f"{who}: instance {name!r} (process group {pgid}) still runs")
    if sandbox(state, name) is not None:
        raise BenchError(f"{who}: the sandbox of {name!r} is still there")


def kill_instances(state: Path) -> None:
    """Last resort: stop every process group a sandbox under `state` records."""
    for pgid_file in state.rglob("pgid"):
        try:
            pgid = int(pgid_file.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            continue
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not group_alive(pgid):
                break
            try:
                os.killpg(pgid, sig)
            except OSError:
                break
            time.sleep(0.5)


# --- one lifecycle run of each side


@dataclass
class Samples:
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, label: str, seconds: float) -> None:
        self.values.setdefault(label, []).append(seconds)

    def median(self, label: str) -> float:
        return statistics.median(self.values[label])


@dataclass
class Lifecycle:
    env: dict[str, str]
    terraform: str
    root: Path
    samples: Samples = field(default_factory=Samples)
    compared: bool = False
    # The CLI config `up` writes: where in the state dir, and its text with the state dir's
    # path taken out. The bare side gets the same file in its own state dir.
    config_path: Path | None = None
    config_text: str | None = None
    warm_cache: Path | None = None  # a copy of the warm plugin cache, and where it goes
    cache_path: Path | None = None

    def fresh_state(self, label: str) -> Path:
        state = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=self.root))
        if self.warm_cache is not None and self.cache_path is not None:
            shutil.copytree(self.warm_cache, state / self.cache_path, symlinks=True)
        return state

    def cli_env(self, state: Path) -> dict[str, str]:
        return {**self.env, "CML_INFRA_HOME": str(state)}

    def cli(self, state: Path, name: str, record: bool) -> None:
        env = self.cli_env(state)
        up = timed([*CLI, "up", *UP_FLAGS, "--name", name, *TASK], env)
        pgid = check_running(state, name, "up")
        self._learn_cli_config(state)
        if not self.compared:
            self._compare_with_render(state, name)
        down = timed([*CLI, "down", name], env)
        check_stopped(state, name, pgid, "down")
        if record:
            self.samples.add("up", up)
            self.samples.add("down", down)
            self.samples.add("up + down", up + down)

    def bare(self, state: Path, name: str, record: bool) -> None:
        workspace = state / "bare-workspace"
        run([*CLI, "render", *UP_FLAGS, "--name", name, "-o", str(workspace), *TASK],
            self.cli_env(state))  # fmt: skip
        assert self.config_path is not None and self.config_text is not None
        config = state / self.config_path
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(self.config_text.replace(_STATE, str(state)), encoding="utf-8")
        env = {**self.env, **TERRAFORM_ENV, "TF_CLI_CONFIG_FILE": str(config)}
        tf = self.terraform
        init = timed([tf, "init"], env, workspace)
        apply = timed([tf, "apply", "-auto-approve"], env, workspace)
        pgid = check_running(state, name, "terraform apply")
        destroy = timed([tf, "destroy", "-auto-approve"], env, workspace)
        check_stopped(state, name, pgid, "terraform destroy")
        if record:
            self.samples.add("terraform init", init)
            self.samples.add("terraform apply", apply)
            self.samples.add("terraform destroy", destroy)
            self.samples.add("bare total", init + apply + destroy)

    def one(self, number: int, record: bool) -> None:
        """Run `number` (-1: the warm-up) of each side, each in a fresh state dir."""
        name = f"bench{max(number, 0)}"
        states = []
        try:
            sides: list[tuple[Callable[[Path, str, bool], None], str]] = [
                (self.cli, "cli"),
                (self.bare, "bare"),
            ]
            if number >= 0 and number % 2:
                sides.reverse()  # the bare side needs what the warm-up's `up` wrote
            for side, label in sides:
                states.append(self.fresh_state(label))
                side(states[-1], name, record)
            if number < 0:
                self._keep_plugin_cache(states[0])
        finally:
            for state in states:
                self.clean(state)

    def _learn_cli_config(self, state: Path) -> None:
        """Where `up` wrote its Terraform CLI config, and what; the same on every run."""
        found = [p for p in sorted(state.rglob("*")) if p.is_file() and _is_cli_config(p)]
        if len(found) != 1:
            raise BenchError(f"up wrote {len(found)} Terraform CLI config files under {state}")
        path = found[0].relative_to(state)
        text = found[0].read_text(encoding="utf-8").replace(str(state), _STATE)
        if self.config_text is None:
            self.config_path, self.config_text = path, text
        elif (path, text) != (self.config_path, self.config_text):
            raise BenchError(f"up wrote another Terraform CLI config this time: {found[0]}")

    def _keep_plugin_cache(self, state: Path) -> None:
        assert self.config_text is not None
        text = self.config_text.replace(_STATE, str(state))
        match = re.search(r'plugin_cache_dir\s*=\s*("(?:[^"\\]|\\.)*")', text)
        if match is None:
            return
        cache = Path(json.loads(match.group(1)))
        if cache.is_dir() and state in cache.parents:
            self.cache_path = cache.relative_to(state)
            self.warm_cache = Path(tempfile.mkdtemp(prefix="warm-", dir=self.root)) / "cache"
            shutil.copytree(cache, self.warm_cache, symlinks=True)

    def _compare_with_render(self, state: Path, name: str) -> None:
        """Once: the workspace `up` applied and the one `render` writes are the same."""
        applied = [p.parent for p in state.rglob("terraform.tfstate")]
        if len(applied) != 1:
            raise BenchError(f"found {len(applied)} applied workspaces under {state}")
        rendered = Path(tempfile.mkdtemp(prefix="render-", dir=self.root)) / "ws"
        try:
            run([*CLI, "render", *UP_FLAGS, "--name", name, "-o", str(rendered), *TASK],
                self.cli_env(state))  # fmt: skip
            problems = compare_workspaces(applied[0], rendered)
        finally:
            shutil.rmtree(rendered.parent, ignore_errors=True)
        if problems:
            raise BenchError("render's workspace is not up's: " + "; ".join(problems))
        self.compared = True

    def clean(self, state: Path) -> None:
        """Stop whatever is left in `state`, each way in turn, then remove it."""
        try:
            subprocess.run([*CLI, "down", "--all"], env=self.cli_env(state), cwd=ROOT,
                           capture_output=True, timeout=COMMAND_TIMEOUT, check=False)  # fmt: skip
            workspace = state / "bare-workspace"
            if (workspace / "terraform.tfstate").is_file():
                tf_env = {**self.env, **TERRAFORM_ENV}
                config = [p for p in state.rglob("*") if p.is_file() and _is_cli_config(p)]
                if config:
                    tf_env["TF_CLI_CONFIG_FILE"] = str(config[0])
                subprocess.run([self.terraform, "destroy", "-auto-approve"], cwd=workspace,
                               env=tf_env, capture_output=True, timeout=COMMAND_TIMEOUT,
                               check=False)  # fmt: skip
        finally:
            kill_instances(state)
            shutil.rmtree(state, ignore_errors=True)


_STATE = "<state dir>"


def _is_cli_config(path: Path) -> bool:
    try:
        return "plugin_cache_dir" in path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False


_STAMPS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)?|\b1\d{9}\b")
# Each launch mints its own id (the `cml-infra-id` tag): the one other difference allowed.
_LAUNCH_IDS = re.compile(r'("cml-infra-id": |"launch_id": )"[a-z0-9]{8,32}"')


def compare_workspaces(applied: Path, rendered: Path) -> list[str]:
    """Differences between two workspaces besides Terraform's own files and time stamps."""

    def files(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): _LAUNCH_IDS.sub(
                r'\1"<id>"', _STAMPS.sub("<time>", p.read_text(encoding="utf-8"))
            )
            for p in root.rglob("*")
            if p.is_file()
            and not p.name.startswith("terraform.tfstate")
            and ".terraform" not in p.relative_to(root).parts
            and p.name != ".terraform.lock.hcl"
        }

    ours, theirs = files(applied), files(rendered)
    problems = [f"{f} only in up's" for f in sorted(set(ours) - set(theirs))]
    problems += [f"{f} only in render's" for f in sorted(set(theirs) - set(ours))]
    problems += [f"{f} differs" for f in sorted(set(ours) & set(theirs)) if ours[f] != theirs[f]]
    return problems


# --- reporting


def line(label: str, samples: list[float], target: str = "", verdict: str = "") -> None:
    print(
        f"  {label:<36} {statistics.median(samples):7.3f}s  {min(samples):7.3f}s "
        f"{max(samples):7.3f}s  {target:<9} {verdict}"
    )


def header(title: str) -> None:
    print(f"{title}\n  {'':<36} {'median':>8} {'min':>8} {'max':>8}  target")


def verdict(value: float, target: float) -> str:
    return "ok" if value <= target else f"over by {value / target:.2f}x"


def startup(env: dict[str, str], runs: int) -> None:
    empty = Path(tempfile.mkdtemp(prefix="cml-infra-bench-empty-"))
    commands = {
        "cml-infra --help": ([*CLI, "--help"], env),
        "cml-infra up --help": ([*CLI, "up", "--help"], env),
        "cml-infra status (empty state dir)": (
            [*CLI, "status"],
            {**env, "CML_INFRA_HOME": str(empty)},
        ),
    }
    samples = Samples()
    try:
        for args, command_env in commands.values():  # warm the page cache
            run(args, command_env)
        for _ in range(runs):
            for label, (args, command_env) in commands.items():
                samples.add(label, timed(args, command_env))
    finally:
        shutil.rmtree(empty, ignore_errors=True)
    header(f"start-up ({runs} runs each, interleaved)")
    target = f"<= {STARTUP_TARGET:.2f}s"
    for label, values in samples.values.items():
        line(label, values, target, verdict(samples.median(label), STARTUP_TARGET))


# One process per sample: the catalog's imports, then the data read and a `--region any
# --optimize price` walk over every region the cloud's catalog knows (cold: nothing cached).
RESOLVE_TARGET = 0.05
RESOLVE_SCRIPT = """
import sys, time
start = time.perf_counter()
from cml_infra import catalog, clouds, placement
from cml_infra.spec import build_spec
imported = time.perf_counter()
cloud = clouds.get(sys.argv[1], None)
spec = build_spec(cloud=sys.argv[1], name="bench-1", region="any", idle_timeout="5m", ttl="1h",
                  single=False, labels=(), command=("true",), gpu=sys.argv[2], spot=True)
index = catalog.offerings_of(sys.argv[1], None)
found = placement.attempts(spec, cloud, index)
done = time.perf_counter()
print(imported - start, done - imported, len(found), len(index.offerings.regions))
"""


def resolution(env: dict[str, str], runs: int) -> None:
    """Resolving `--region any --optimize price` over one cloud's whole catalog, per cloud."""
    header(f"catalog resolution, --region any --optimize price ({runs} runs, fresh processes)")
    for cloud, gpu in (("aws", "a10g:4"), ("gcp", "t4"), ("azure", "t4")):
        imports, walks = [], []
        shape = ""
        for _ in range(runs):
            try:
                answer = run([sys.executable, "-c", RESOLVE_SCRIPT, cloud, gpu], env)
            except BenchError as exc:
                # A cloud whose packaged offerings sell nothing yet: said, not fatal.
                print(f"  {cloud}: not measured: {str(exc).strip().splitlines()[-1]}")
                break
            first, second, placements, regions = answer.stdout.split()
            imports.append(float(first))
            walks.append(float(second))
            shape = f"{placements} placements over {regions} regions"
        else:
            line(f"{cloud} imports", imports)
            line(f"{cloud} data + walk ({shape})", walks, f"<= {RESOLVE_TARGET * 1000:.0f}ms",
                 verdict(statistics.median(walks), RESOLVE_TARGET))  # fmt: skip


def lifecycle(env: dict[str, str], runs: int) -> None:
    if TERRAFORM is None:
        print("lifecycle: skipped, no terraform or tofu on PATH")
        return
    root = Path(tempfile.mkdtemp(prefix="cml-infra-bench-")).resolve()
    bench = Lifecycle(env, TERRAFORM, root)
    try:
        bench.one(-1, record=False)  # warm-up: page cache, .pyc files, plugin cache
        for number in range(runs):
            bench.one(number, record=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    s = bench.samples
    header(
        f"local cloud, `up {' '.join(UP_FLAGS)}` + `down` vs bare Terraform of the "
        f"same workspace ({runs} runs, interleaved, fresh state dirs, warm plugin cache)"
    )
    for label in ("up", "down", "up + down"):
        line(f"cml-infra {label}", s.values[label])
    for label in ("terraform init", "terraform apply", "terraform destroy"):
        line(f"bare {label}", s.values[label])
    line("bare init + apply + destroy", s.values["bare total"])
    ratio = s.median("up + down") / s.median("bare total")
    print(
        f"  {'ratio (up + down) / bare':<36} {ratio:7.2f}x {'':<18} "
        f"<= {RATIO_TARGET:.1f}x    {verdict(ratio, RATIO_TARGET)}"
    )


def describe(env: dict[str, str]) -> None:
    code = run([sys.executable, "-c", "import cml_infra, os; print(os.path.dirname("
                "cml_infra.__file__))"], env).stdout.strip()  # fmt: skip
    # Time what an installed package runs: compiled modules, not source compiled at each start.
    run([sys.executable, "-m", "compileall", "-q", code], env)
    engine = "none"
    if TERRAFORM is not None:
        version = run([TERRAFORM, "-version"], {**env, **TERRAFORM_ENV}).stdout.splitlines()
        engine = f"{version[0] if version else '?'} ({TERRAFORM})"
    print(f"code: {code} ({CLI_LABEL}); python {sys.version.split()[0]}; {engine}")


@contextmanager
def stopped_on_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so that the cleanup in `finally` blocks runs."""

    def handle(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=7, help="lifecycle runs (default 7)")
    parser.add_argument("--startup-runs", type=int, default=20, help="default 20")
    args = parser.parse_args(argv)
    env = base_env()
    with stopped_on_sigterm():
        try:
            describe(env)
            startup(env, args.startup_runs)
            resolution(env, args.runs)
            lifecycle(env, args.runs)
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench interrupted; what it started is stopped", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
