"""Property-based fuzzing (hypothesis) of every command's flags and of the config file.

The issue's contract, checked for every generated case (at least 500 per run, see EXAMPLES):

* the exit code is 0, 1, 2 or 130, and never an uncaught exception (a traceback): a crash is
  re-raised as it happened, with the command line (and config file) added as a note;
* nothing is created, changed or removed outside the state dir and the folder `render -o`
  names; a value starting with '~' never leaves a literal '~' folder in the working folder;
* bad input (exit 2) creates and changes nothing at all, and an error naming its flag
  (`error: --flag: ...`) is bad input: exit 2 (README: "2 bad input (one line naming the flag
  ...; nothing created)").

Cases are drawn in four modes: a valid command (a cloud with its own regions, machines and
images), a valid command with one option set to an edge or junk value (deep code paths with one
odd input), and mixed or all-junk options. KNOWN at the end holds the smallest command line of
each failure class found so far, checked every run.

Each case runs in process (typer's CliRunner on `cml_infra.cli.app`) in a sandbox of its own:

    ROOT/cwd/       the working folder (chdir)            ROOT/state   CML_INFRA_HOME
    ROOT/home/      HOME: '~' and platformdirs stay here  ROOT/tmp/    TMPDIR
    ROOT/project/   the config file, named by CML_INFRA_CONFIG (else CML_INFRA_CONFIG="")
    ROOT/afile      a regular file                        ROOT/full/   a non-empty folder

Every file and folder under ROOT (and beside it) is listed before and after the command.

Nothing real is ever started: `up` always gets a Terraform that does not exist (first and last
on its command line, and CML_INFRA_TERRAFORM), `subprocess.Popen`, `os.system`, `os.fork` and
`os.posix_spawn*` refuse and are recorded (a case that tried is a failure), sockets refuse to
connect or resolve (likewise), GitHub calls fail as if unreachable, and cloud SDKs find no
credentials (AWS/gcloud config files point into the sandbox). `cleanup` only gets `local` or
bogus clouds.

Replay: `derandomize=True`, so every run generates the same cases and a failure shows again on
the next run. FUZZ_SEED=N explores other cases with that seed (named in each failure);
FUZZ_SCALE=K runs K times as many cases; FUZZ_SHRINK=1 shrinks a failure to its smallest form
(minutes, not seconds).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import typer.main
import typer.testing
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cml_infra.cli import app

# --- how many cases, and how they replay ----------------------------------------------------

SCALE = max(1, int(os.environ.get("FUZZ_SCALE", "1")))
SEED = os.environ.get("FUZZ_SEED")
EXAMPLES = {
    "up": 400,
    "render": 200,
    "down": 60,
    "status": 40,
    "logs": 40,
    "pull": 30,
    "catalog": 25,
    "doctor": 30,
    "cleanup": 150,
    "report": 120,
    "comment": 120,
    "top_level": 60,
    "config_file": 250,
}
# Shrinking a failure to its smallest form takes minutes; the note on each failure already
# names the whole command line. FUZZ_SHRINK=1 shrinks.
SHRINK = os.environ.get("FUZZ_SHRINK") == "1"
REPLAY = "derandomized" if SEED is None else f"FUZZ_SEED={SEED}"
EXIT_CODES = frozenset({0, 1, 2, 130})
# `up` must never find an engine: whatever it is given, nothing is applied.
NO_TERRAFORM = "/nonexistent/cml-infra-fuzz/terraform"
RECORD_NAME = "runner-a"


def fuzz(kind: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The settings of one fuzz test: its share of the cases, no deadline, replayable."""

    def decorate(test: Callable[..., None]) -> Callable[..., None]:
        configured = settings(
            max_examples=EXAMPLES[kind] * SCALE,
            deadline=None,
            derandomize=SEED is None,
            database=None,
            print_blob=True,
            phases=[Phase.explicit, Phase.reuse, Phase.generate, *([Phase.shrink] * SHRINK)],
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.large_base_example,
                HealthCheck.filter_too_much,
            ],
        )(test)
        return seed(int(SEED))(configured) if SEED is not None else configured

    return decorate


def test_fuzz_runs_at_least_500_cases():
    assert sum(EXAMPLES.values()) >= 500


# --- values -------------------------------------------------------------------------------------

# Argv on Linux can hold anything but NUL; a lone surrogate is what Python makes of bytes that
# are not UTF-8 (a real `cml-infra up --name $'\xff'`).
TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=24)
ODD = st.sampled_from(
    [
        "", " ", "~", "~/x", "$(touch pwned)", "`touch pwned`", "a\nb", "a b", "-", "--", "-x",
        "--help", "é", "日本語", "🙂", "\t", "'", '"', "%s", "{}", "{{ 7*7 }}", "${HOME}", "*",
        "\\", "\x7f", "\u200b", "\r\n", "\udcff", "x" * 300, "9" * 5000, "99999999999999999999",
        "-1", "0", "1e308", "inf", "-inf", "nan", "0x10", "1_000", "true", "null",
    ]
)  # fmt: skip
JUNK = st.one_of(ODD, TEXT)
# For values that name a path: relative (to the sandbox's working folder) or '~' (its home);
# never an absolute path or '..', which could reach outside the sandbox.
PATH_JUNK = JUNK.filter(lambda text: not text.startswith("/") and ".." not in text)

# Edge durations: malformed, zero or negative, other digits, and numbers too large for a
# timedelta (999999999 days), a datetime (year 9999) or int() (4300 digits).
DURATIONS = st.one_of(
    st.sampled_from(
        [
            "0", "0s", "-5m", "1h30", "5x", "5M", " 5m ", "", "m", "1h1h", "\u0661\u0662m",
            "\uff15m", "99999999999999999999d", "99999999999999999999", "100000000000000d",
            "1" + "0" * 30 + "s", "9" * 5000, "999999999d", "1000000000d", "2932896d",
            "106751991167300d", "9223372036854775807", "9223372036854775808s",
        ]
    ),
    st.builds(
        lambda n, unit: f"{n}{unit}",
        st.one_of(st.integers(-(10**6), 10**6), st.integers(10**9, 10**40)),
        st.sampled_from(["", "s", "m", "h", "d", "w"]),
    ),
)  # fmt: skip
GPUS = st.sampled_from(
    [
        "t4", "l4", "a10g", "v100", "a100", "a100-80gb", "h100", "a100:8", "t4:2", "t4:4",
        "h100:8", "a100:0", "a100:17", "T4", "t4:", "t4:x", "gpu", "t4:99999999999999999999",
        "v100:٣", "a100: 8", "t4:1:1", "t4:" + "9" * 5000,
    ]
)  # fmt: skip
CLOUDS = st.sampled_from(
    ["local", "aws", "gcp", "azure", "bogus", "LOCAL", "Aws", "ec2", "gce", "google", "az",
     "gpc", "", " local"]
)  # fmt: skip
REGIONS = st.sampled_from(
    [
        "local", "us-east-1", "us-west-2", "us-east-1,us-west-2", "us-central1",
        "us-central1,us-east1", "europe-west4", "eastus", "westeurope", "eastus,westus2",
        "us-east-1,,us-west-2", "us-east-1,us-east-1", ",", "", " us-east-1 ", "local,local",
        "mars-1",
    ]
)  # fmt: skip
SIZES = st.sampled_from(["s", "m", "l", "xl", "XL", "xxl", ""])
TYPES = st.sampled_from(
    ["g5.2xlarge", "g4dn.xlarge", "t3.medium", "n1-standard-8", "n1-standard-16",
     "a2-highgpu-1g", "Standard_NC4as_T4_v3", "Standard_D4s_v5", "x9.huge", "", ".x", "a" * 65]
)  # fmt: skip
IMAGES = st.sampled_from(
    ["ami-0123456789abcdef0", "ami-xyz", "projects/debian-cloud/global/images/family/debian-12",
     "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/images/i", "", " "]
)  # fmt: skip
PRICES = st.one_of(
    st.sampled_from(
        ["0.75", "25", "1", "0.01", "1000000", "0", "-3", "inf", "nan", "1e308", "1e-300",
         "lots", "", "1_000", " 5 ", "\uff19", "1e309", "0x1p3"]
    ),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)  # fmt: skip
TAGS = st.sampled_from(
    ["team=ml", "k=v", "k=", "=v", "k", "cml-infra-x=1", "CML-INFRA-X=1", "a/b=c", "k=v=w",
     "k=" + "v" * 256, "Team=ML", "env=prod", "日本=語", "k=\n"]
)  # fmt: skip
LABELS = st.sampled_from(
    ["gpu", "gpu,t4", "t4", "a b", "cml-infra-x", ",", "", " , ", "x" * 65, "gpu,gpu",
     "self-hosted"]
)  # fmt: skip
NAMES = st.sampled_from(
    ["cml-abc123", "ab", "a", RECORD_NAME, "on-aws", "since-1", "Bad_Name", "x" * 39, "x" * 40,
     "a-", "-a", "ab-cd", "z9"]
)  # fmt: skip
REPOS = st.sampled_from(["octo/repo", "octo/re.po", "octo", "a/b/c", "/repo", "octo/", "-x/y"])
ORGS = st.sampled_from(["octo", "-octo", "a" * 40, "octo/repo"])
TOKENS = st.sampled_from(["ghp_fuzzfuzzfuzzfuzz", ""])
URLS = st.sampled_from(
    ["https://api.github.com", "https://ghe.example/api/v3", "http://127.0.0.1:9", "ftp://x",
     "https://", "https://h h", ""]
)  # fmt: skip
NETWORK_IDS = st.sampled_from(
    ["subnet-0123456789abcdef0", "subnet-xyz", "sg-01234567", "sg-", "a b", "",
     "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/virtualNetworks/v/subnets/d",
     "projects/p/global/networks/n", "Bad_Project", "p" * 40]
)  # fmt: skip
MODULE_VARS = st.sampled_from(
    ["name=x", "launch_id=x", "=1", "k", "k==", "1x=2", "k=[1,", "k={}", "k=null", "k=NaN",
     "spot=true", "x-y=1", "k=" + "9" * 5000]
)  # fmt: skip
GROUPS = st.sampled_from(["3", "1", "default", "", "-1"])
RULES = st.sampled_from(
    ["expired", "orphan", "idle", "stale-state", "stale-registration", "untracked", "bogus", ""]
)
CLEANUP_CLOUDS = st.sampled_from(
    ["local", "LOCAL", "bogus", "local,bogus", "local,,local", ",", "", "local,local", "mars"]
)
REAL_CLOUDS = frozenset({"aws", "ec2", "gcp", "gce", "google", "azure", "az"})
TERRAFORMS = st.sampled_from(
    ["bundled", "terraform", "tofu", NO_TERRAFORM, "", "~/terraform", "Bundled", "terraform "]
)


@dataclass(frozen=True)
class BoxPath:
    """A path argument, made concrete in each case's sandbox (drawn before the sandbox exists).

    anchor: rel (to the working folder), abs (under ROOT/area), tilde ('~/rel'), state (inside
    the state dir), file (an existing file), under-file (a path below it), full (a non-empty
    folder), literal (used as is: /dev/null and /proc paths nothing can be created in, a
    '~user' of no user), empty ("")."""

    anchor: str
    rel: str = "x"

    def text(self, box: Sandbox) -> str:
        return {
            "rel": lambda: self.rel,
            "abs": lambda: str(box.root / "area" / self.rel),
            "tilde": lambda: f"~/{self.rel}" if self.rel else "~",
            "state": lambda: str(box.state / self.rel),
            "file": lambda: str(box.afile),
            "under-file": lambda: str(box.afile / self.rel),
            "full": lambda: str(box.full),
            "literal": lambda: self.rel,
            "empty": lambda: "",
        }[self.anchor]()

    def target(self, box: Sandbox) -> Path:
        return target(box, self.text(box))


def target(box: Sandbox, text: str) -> Path:
    """Where the folder `text` names is: '~' is the home folder, as a shell would have it."""
    return box.cwd / os.path.expanduser(text)


PART = st.one_of(
    st.sampled_from(
        ["out", "a b", "$(touch pwned)", "`id`", "new\nline", "日本語", "🙂", "-o", "*", "'q'",
         '"dq"', ".hidden", "x" * 300, "\udcff", "tab\there", "%", "~x"]
    ),
    st.text(
        st.characters(exclude_characters="\x00/", exclude_categories=("Cs",)),
        min_size=1,
        max_size=12,
    ),
).filter(lambda part: part not in (".", ".."))  # fmt: skip
RELATIVE = (
    st.lists(PART, min_size=1, max_size=3).map("/".join).filter(lambda rel: not rel.startswith("~"))
)
PATHS = st.one_of(
    st.builds(BoxPath, st.sampled_from(["rel", "abs", "tilde", "state", "under-file"]), RELATIVE),
    st.builds(BoxPath, st.sampled_from(["file", "full", "empty"])),
    st.builds(BoxPath, st.just("tilde"), st.just("")),
    st.builds(
        BoxPath,
        st.just("literal"),
        st.sampled_from(
            ["/dev/null", "/dev/null/x", "/proc/cml-infra-fuzz/x", "~nosuchuser/x", "~nosuchuser"]
        ),
    ),
)
# Where a state dir may be: never "/" or a place outside the sandbox that can be written.
STATE_DIRS = PATHS.filter(lambda p: p.anchor != "full")
ARCHIVES = st.one_of(
    st.sampled_from(
        ["https://example.invalid/actions-runner.tar.gz", "/nonexistent/runner.tgz",
         "~/runner.tgz", "", "file:///etc/hostname"]
    ),
    st.builds(BoxPath, st.sampled_from(["file", "full", "rel"]), RELATIVE),
)  # fmt: skip

Token = str | BoxPath
VALID_STATE_DIRS = st.builds(BoxPath, st.sampled_from(["rel", "abs", "tilde", "state"]), RELATIVE)


class Opt:
    """One option of a command: its flag(s), valid values, plausible edge values, and shape:
    'value', 'multi' (repeatable), 'flag' (no value) or 'bool' ('--x|--no-x': one of them)."""

    def __init__(self, flag: str, valid: Any = None, edge: Any = None, shape: str = "value"):
        self.flag, self.shape = flag, shape
        self.valid = st.sampled_from(valid) if isinstance(valid, list) else valid
        self.edge = st.sampled_from(edge) if isinstance(edge, list) else edge

    def tokens(self, draw: st.DrawFn, values: st.SearchStrategy[Any] | None) -> list[Token]:
        if self.shape == "flag":
            return [self.flag]
        if self.shape == "bool":
            return [draw(st.sampled_from(self.flag.split("|")))]
        assert values is not None
        if self.shape == "multi":
            drawn = draw(st.lists(values, min_size=1, max_size=3))
            return [token for value in drawn for token in (self.flag, value)]
        return [self.flag, draw(values)]


PATH_FLAGS = frozenset(
    {"--state-dir", "-o", "--output", "--runner-archive", "--terraform", "--workdir"}
)
MODES = st.sampled_from(["valid", "one-odd", "one-odd", "one-odd", "one-odd", "mixed", "junk"])


@st.composite
def options(
    draw: st.DrawFn,
    table: Sequence[Opt],
    coherent: Callable[[st.DrawFn], list[Token]] | None = None,
) -> list[Token]:
    """Some of `table`'s options, in some order. Modes: 'valid' (a command that should work),
    'one-odd' (a valid command plus one option with an edge or junk value: deep code paths
    with one odd input), 'mixed' and 'junk'. `coherent` draws the valid options instead of
    each option's own valid values (options that must agree with each other: a cloud and its
    regions and GPUs)."""
    mode = draw(MODES)
    chosen: list[list[Token]] = []
    if mode in ("valid", "one-odd"):
        if coherent is not None:
            chosen.append(coherent(draw))
        else:
            for opt in table:
                if draw(st.integers(0, 2)) == 0:
                    chosen.append(opt.tokens(draw, opt.valid))
        chosen = [list(group) for group in draw(st.permutations(chosen))]
        if mode == "one-odd":
            opt = draw(st.sampled_from([opt for opt in table if opt.shape in ("value", "multi")]))
            junk = PATH_JUNK if opt.flag in PATH_FLAGS else JUNK
            edge = opt.edge if opt.edge is not None else junk
            odd = st.one_of(edge, edge, edge, edge, junk)
            chosen.append(opt.tokens(draw, odd))
    else:
        for opt in table:
            if draw(st.integers(0, 3)) != 3:  # each option in about one case out of four
                continue
            values = [v for v in (opt.valid, opt.edge) if v is not None]
            junk = PATH_JUNK if opt.flag in PATH_FLAGS else JUNK
            pool = junk if mode == "junk" or not values else st.one_of(*values, junk)
            chosen.append(opt.tokens(draw, pool))
        chosen = [list(group) for group in draw(st.permutations(chosen))]
    if draw(st.integers(0, 9)) == 9:  # an option no command has
        chosen.append([draw(st.sampled_from(["--bogus", "-Z", "--cloud=", "--spot=maybe"]))])
    if draw(st.integers(0, 29)) == 29:
        chosen.append(["--help"])
    return [token for group in chosen for token in group]


def prefix() -> st.SearchStrategy[list[str]]:
    """Options of the group, before the command."""
    return st.lists(st.sampled_from(["-q", "--quiet"]), max_size=1)


# `--out`: paths that leave the working folder, or name none of it.
OUT_PATHS = ["..", "../x", "/etc/passwd", ".", "./", "a/../../b", "", " "]
PLACEMENT_OPTIONS = [
    Opt("--cloud", ["local", "aws", "gcp", "azure"], CLOUDS),
    Opt("--region", ["local"], REGIONS),
    Opt("--gpu", ["t4"], GPUS),
    Opt("--size", ["m"], SIZES),
    Opt("--type", ["g5.2xlarge"], TYPES),
    Opt("--spot|--no-spot", shape="bool"),
    Opt("--max-price", ["0.75"], PRICES),
    Opt("--image", ["ami-0123456789abcdef0"], IMAGES),
    Opt("--tag", ["team=ml", "env=prod"], TAGS, "multi"),
    Opt("--name", ["cml-abc123", "ab-cd", "z9"], NAMES),
    Opt("--labels", ["gpu", "gpu,t4", "self-hosted"], LABELS, "multi"),
    Opt("--repo", ["octo/repo"], REPOS),
    Opt("--org", ["octo"], ORGS),
    Opt("--github-url", ["https://ghe.example/api/v3"], URLS),
    Opt("--runner-group", ["3"], GROUPS),
    Opt("--runner-archive", ["https://example.invalid/actions-runner.tar.gz"], ARCHIVES),
    Opt("--idle-timeout", ["5m", "1h30m", "30s", "1d", "90"], DURATIONS),
    Opt("--ttl", ["24h", "1h", "2d", "45m"], DURATIONS),
    Opt("--startup-timeout", ["15m", "1h"], DURATIONS),
    Opt("--single", shape="flag"),
    Opt("--state-dir", VALID_STATE_DIRS, STATE_DIRS),
    # Bring your own network: each taken by some clouds, refused by the others.
    Opt("--subnet-id", ["subnet-0123456789abcdef0"], NETWORK_IDS),
    Opt("--security-group-id", ["sg-0123456789abcdef0"], NETWORK_IDS, "multi"),
    Opt("--project", ["my-project-1"], NETWORK_IDS),
    Opt("--network", ["default"], NETWORK_IDS),
    Opt("--subnetwork", ["default"], NETWORK_IDS),
    Opt("--disk-size", ["100"], ["0", "-1", "7", "99999999", "1e3", "x", ""]),
    Opt("--public-ip|--no-public-ip", shape="bool"),
    # Task mode: the folder that travels and the paths that come back.
    Opt("--workdir", [BoxPath("full")], PATHS),
    Opt("--out", ["model.bin", "runs/", "a/b.txt"], OUT_PATHS, "multi"),
]
UP_ONLY_OPTIONS = [
    # Only up: render runs Terraform to check --var values against the module's validation.
    Opt("--var", ["team=ml", 'disk_kms="k"'], MODULE_VARS, "multi"),
    Opt("--modules-dir", [BoxPath("full")], PATHS),
    Opt("--startup-script", [BoxPath("file")], ARCHIVES),
    Opt("--on-demand-fallback|--no-on-demand-fallback", shape="bool"),
    Opt("--budget", ["1000", "5"], PRICES),
    Opt("--token", ["ghp_fuzzfuzzfuzzfuzz"], TOKENS),
    Opt("--wait|--no-wait", shape="bool"),
    Opt("--reuse-idle|--no-reuse-idle", shape="bool"),
    Opt("--json", shape="flag"),
    Opt("--detach", shape="flag"),
    Opt("--retry-on-preemption", ["1", "0", "10"], ["-1", "11", "x", "", "1.5"]),
    # Only Terraforms that do not exist: the last --terraform on the line is always ours.
    Opt("--terraform", [NO_TERRAFORM], ["/nonexistent/tofu", "~/nonexistent", ""]),
]
UP_OPTIONS = [*PLACEMENT_OPTIONS, *UP_ONLY_OPTIONS]
RENDER_OPTIONS = PLACEMENT_OPTIONS

# What a cloud accepts: regions, one way to pick the machine, an image, a spot price cap.
CLOUD_CHOICES: dict[str, dict[str, list[Any]]] = {
    "local": {"--region": ["local"], "machine": [], "--image": [], "--max-price": []},
    "aws": {
        "--region": ["us-east-1", "us-west-2", "eu-west-1", "us-east-1,us-west-2"],
        "machine": [("--gpu", ["t4", "a10g:4", "a100:8", "l4"]), ("--size", ["s", "m", "xl"]),
                    ("--type", ["g5.2xlarge", "t3.medium", "m7i.large"])],
        "--image": ["ami-0123456789abcdef0"],
        "--max-price": ["0.75", "3"],
    },
    "gcp": {
        "--region": ["us-central1", "us-central1,us-east1", "europe-west4"],
        "machine": [("--gpu", ["t4", "a100:2", "l4:8"]), ("--size", ["s", "l"]),
                    ("--type", ["n1-standard-8", "e2-standard-4"])],
        "--image": ["projects/debian-cloud/global/images/family/debian-12"],
        "--max-price": [],
    },
    "azure": {
        "--region": ["eastus", "eastus,westus2"],
        "machine": [("--gpu", ["t4", "h100:2"]), ("--size", ["m"]),
                    ("--type", ["Standard_NC4as_T4_v3", "Standard_D4s_v5"])],
        "--image": ["/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/images/i"],
        "--max-price": ["0.75"],
    },
}  # fmt: skip


def coherent_placement(up: bool) -> Callable[[st.DrawFn], list[Token]]:
    """Options of `up`/`render` that make sense together: a cloud, its regions and machines,
    spot where it exists, a runner scope, valid lifetimes and names."""

    def draw_options(draw: st.DrawFn) -> list[Token]:
        def maybe() -> bool:
            return draw(st.integers(0, 2)) == 0

        cloud = draw(st.sampled_from(["local", "local", "aws", "gcp", "azure"]))
        choices = CLOUD_CHOICES[cloud]
        tokens: list[Token] = []
        if cloud != "local" or maybe():
            tokens += ["--cloud", cloud]
        if maybe():
            tokens += ["--region", draw(st.sampled_from(choices["--region"]))]
        if choices["machine"] and maybe():
            flag, values = draw(st.sampled_from(choices["machine"]))
            tokens += [flag, draw(st.sampled_from(values))]
        if choices["--image"] and maybe():
            tokens += ["--image", draw(st.sampled_from(choices["--image"]))]
        if cloud != "local" and maybe():
            tokens += ["--spot"]
            if choices["--max-price"] and maybe():
                tokens += ["--max-price", draw(st.sampled_from(choices["--max-price"]))]
            if up and maybe():
                tokens += ["--on-demand-fallback"]
        if maybe():  # a runner instead of a task
            if draw(st.booleans()):
                tokens += ["--repo", "octo/repo"]
            else:
                tokens += ["--org", "octo"] + (["--runner-group", "3"] if maybe() else [])
            if maybe():
                tokens += ["--github-url", "https://ghe.example/api/v3"]
            if maybe():
                archive = ARCHIVES if cloud == "local" else st.just("https://example.invalid/r")
                tokens += ["--runner-archive", draw(archive)]
            if up:
                tokens += ["--token", "ghp_fuzzfuzzfuzzfuzz"] if maybe() else []
                tokens += draw(st.sampled_from([[], ["--no-wait"], ["--reuse-idle"]]))
        lifetime = {"--idle-timeout": ["5m", "1h30m", "30s", "1d", "90"],
                    "--ttl": ["24h", "1h", "2d", "45m"], "--startup-timeout": ["15m", "1h"],
                    "--name": ["cml-abc123", "ab-cd", "z9"], "--labels": ["gpu", "gpu,t4"],
                    "--tag": ["team=ml", "env=prod"]}  # fmt: skip
        for flag, values in lifetime.items():
            if maybe():
                tokens += [flag, draw(st.sampled_from(values))]
        if maybe():
            tokens += ["--single"]
        if maybe():
            tokens += ["--state-dir", draw(VALID_STATE_DIRS)]
        if up and maybe():
            tokens += draw(st.sampled_from([["--json"], ["--budget", "1000"], ["--no-wait"]]))
        return tokens

    return draw_options


TASK = st.one_of(
    st.just([]),
    st.just([]),
    st.just([]),
    st.lists(st.one_of(st.sampled_from(["python", "train.py", "-c", "--", "--help"]), JUNK)),
)


# --- the sandbox --------------------------------------------------------------------------------


@dataclass
class Sandbox:
    root: Path
    started: list[str] = field(default_factory=list)
    network: list[str] = field(default_factory=list)
    # Below root, each named as its attribute: folders, but for afile.
    cwd: Path = field(init=False)
    home: Path = field(init=False)
    state: Path = field(init=False)
    project: Path = field(init=False)
    afile: Path = field(init=False)
    full: Path = field(init=False)

    def __post_init__(self) -> None:
        for name in ("cwd", "home", "state", "project", "afile", "full"):
            setattr(self, name, self.root / name)


_SECRET_OR_MACHINE = ("CML_INFRA_", "AWS_", "GOOGLE_", "CLOUDSDK_", "AZURE_", "ARM_", "GITHUB_",
                      "XDG_", "TF_")  # fmt: skip


@contextlib.contextmanager
def sandbox(base: Path, env: dict[str, str] | None = None) -> Iterator[Sandbox]:
    box = Sandbox(Path(tempfile.mkdtemp(prefix="case-", dir=base)))
    try:
        with _isolated(box, env):
            yield box
    finally:
        shutil.rmtree(box.root, ignore_errors=True)


@contextlib.contextmanager
def _isolated(box: Sandbox, env: dict[str, str] | None) -> Iterator[None]:
    for folder in (box.cwd, box.home, box.root / "tmp", box.project, box.full):
        folder.mkdir()
    (box.full / "keep").write_text("keep\n")
    box.afile.write_text("a file\n")
    umask = os.umask(0o022)
    os.umask(umask)
    with pytest.MonkeyPatch.context() as patch:
        for key in list(os.environ):
            if key.startswith(_SECRET_OR_MACHINE) or key in ("GH_TOKEN", "CI"):
                patch.delenv(key)
        patch.setenv("HOME", str(box.home))
        patch.setenv("TMPDIR", str(box.root / "tmp"))
        patch.setattr(tempfile, "tempdir", str(box.root / "tmp"))
        patch.setenv("CML_INFRA_HOME", str(box.state))
        patch.setenv("CML_INFRA_CONFIG", "")
        # Cloud SDKs: no credentials anywhere, no metadata servers (see also conftest.py).
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(box.root / "no-aws" / "credentials"))
        patch.setenv("AWS_CONFIG_FILE", str(box.root / "no-aws" / "config"))
        patch.setenv("CLOUDSDK_CONFIG", str(box.root / "no-gcloud"))
        for key, value in (env or {}).items():
            patch.setenv(key, value)
        # typer turns `app` into a click command on every invoke; once is enough (and 3x faster).
        patch.setattr(typer.testing, "_get_command", lambda _: click_command())
        _refuse_processes(patch, box)
        _refuse_network(patch, box)
        _refuse_github(patch, box)
        patch.chdir(box.cwd)
        try:
            yield
        finally:
            os.umask(umask)


def _first_argument(what: str, args: tuple) -> tuple:
    return args[:1]


def _refuser(
    attempts: list[str],
    code: int,
    refusal: str,
    shown: Callable[[str, tuple], tuple] = _first_argument,
) -> Callable[[str], Callable[..., Any]]:
    """Makes stand-ins, each named for what it replaces, that note every call in `attempts` (the
    case fails) with the arguments `shown` picks, and raise OSError."""

    def refuse(what: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            attempts.append(f"{what}{shown(what, args)!r}")
            raise OSError(code, f"the fuzz test refuses {refusal} ({what})")

        return refused

    return refuse


def _refuse_processes(patch: pytest.MonkeyPatch, box: Sandbox) -> None:
    """No process is started: each attempt is recorded (the case fails) and refused."""
    refuse = _refuser(box.started, errno.EPERM, "to start processes")
    patch.setattr(subprocess, "Popen", refuse("subprocess.Popen"))
    for name in ("system", "fork", "forkpty", "posix_spawn", "posix_spawnp", "execv", "execve"):
        if hasattr(os, name):
            patch.setattr(os, name, refuse(f"os.{name}"))


def _refuse_network(patch: pytest.MonkeyPatch, box: Sandbox) -> None:
    """No connection and no name lookup: recorded (the case fails) and refused."""
    refuse = _refuser(
        box.network,
        errno.ENETUNREACH,
        "network access",
        shown=lambda what, args: args[1:2] if what.startswith("socket.") else args[:1],
    )
    patch.setattr(socket.socket, "connect", refuse("socket.connect"))
    patch.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
    patch.setattr(socket, "create_connection", refuse("create_connection"))
    patch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))


def _refuse_github(patch: pytest.MonkeyPatch, box: Sandbox) -> None:
    """GitHub is unreachable: a legitimate outcome (exit 1)."""
    from cml_infra.errors import CmlInfraError
    from cml_infra.forge import github, github_api

    def unreachable(self: Any, verb: str, path: str, *args: Any, **kwargs: Any) -> Any:
        raise CmlInfraError("github: unreachable (the fuzz test has no network)")

    patch.setattr(github.GitHubForge, "_call", unreachable)
    patch.setattr(github_api.GitHubApi, "request", unreachable)


def seed_record(box: Sandbox, state: str) -> None:
    """A local runner record (no workspace, no instance) in the state dir, or a broken one."""
    folder = box.state / "runners" / RECORD_NAME
    folder.mkdir(parents=True)
    if state == "unreadable":
        (folder / "runner.json").write_text('{"name": "runner-a", "cloud": ')
        return
    now = datetime.now(timezone.utc)
    record = {
        "name": RECORD_NAME,
        "cloud": "local",
        "region": "local",
        "state": state,
        "created_at": (now - timedelta(hours=2)).isoformat(),
        "updated_at": now.isoformat(),
        "expires_at": (now - timedelta(hours=1)).isoformat(),
        "idle_timeout": 300,
        "ttl": 3600,
        "labels": ["gpu", f"cml-infra-{RECORD_NAME}"],
        "command": ["echo", "hi"],
        "instance_type": "process",
        "hourly_price": 0.0,
    }
    (folder / "runner.json").write_text(json.dumps(record))


SEEDS = st.sampled_from([None, None, "running", "destroyed", "failed", "unreadable"])


# --- one case -----------------------------------------------------------------------------------


@dataclass
class Case:
    box: Sandbox
    argv: list[str]
    allowed: list[Path]
    config: str | None = None

    def describe(self) -> str:
        text = f"cml-infra {shlex.join(self.argv)}"
        if self.config is not None:
            text += f"\n  with CML_INFRA_CONFIG={os.environ.get('CML_INFRA_CONFIG')!r}:\n"
            text += "\n".join(f"    | {line}" for line in self.config.splitlines())
        return text.replace(str(self.box.root), "ROOT")


def concrete(box: Sandbox, tokens: Sequence[Token]) -> tuple[list[str], list[Path]]:
    """The command line in `box`, and where it may create things: the state dir and the folder
    `render -o` names (any value given to --state-dir or --output/-o: the last one wins, but
    which one is a value is click's to say)."""
    argv: list[str] = []
    allowed = [box.state]
    for index, token in enumerate(tokens):
        text = token.text(box) if isinstance(token, BoxPath) else token
        if index and tokens[index - 1] in ("--state-dir", "-o", "--output"):
            allowed.append(target(box, text))
        argv.append(text)
    return argv, allowed


@functools.cache
def click_command() -> Any:
    return typer.main.get_command(app)


def run(
    box: Sandbox, tokens: Sequence[Token], config: str | None = None, also: Sequence[Path] = ()
) -> Case:
    """Run one command line in `box` and check the contract; `also`: more state dirs."""
    argv, allowed = concrete(box, tokens)
    case = Case(box, argv, [*allowed, *also], config)
    before = listing(box.root)
    beside = set(box.root.parent.iterdir())
    result = CliRunner().invoke(app, argv)
    verdict(case, result, before, beside)
    return case


def listing(root: Path) -> dict[Path, tuple[int, int] | None]:
    """Every folder (None) and file (size, mtime) under `root`."""
    found: dict[Path, tuple[int, int] | None] = {}
    for folder, dirs, files in os.walk(root):
        found.update((Path(folder, name), None) for name in dirs)
        for name in files:
            with contextlib.suppress(OSError):
                stat = os.lstat(Path(folder, name))
                found[Path(folder, name)] = (stat.st_size, stat.st_mtime_ns)
    return found


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


# Our one-line error for bad input: `error: --flag: ...` (README: exit 2).
USAGE_ERROR = re.compile(r"error: --[a-z][a-z-]*: ")


def verdict(case: Case, result: Any, before: dict[Path, Any], beside: set[Path]) -> None:
    """The issue's contract for one case; a crash is re-raised as it happened."""
    box = case.box
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        exc.add_note(f"fuzz case ({REPLAY}): {case.describe()}")
        raise exc
    where = (
        f"\n  {case.describe()}\n  ({REPLAY}) exit {result.exit_code}, output:\n"
        f"{result.output[-2000:]}"
    )
    assert "Traceback" not in result.output, f"a traceback was printed:{where}"
    assert result.exit_code in EXIT_CODES, f"exit code {result.exit_code}:{where}"
    last = (result.output.strip().splitlines() or [""])[-1]
    assert not (result.exit_code == 1 and USAGE_ERROR.match(last)), (
        f"bad input (an error naming its flag) must exit 2, not 1:{where}"
    )
    assert not box.started, f"tried to start a process {box.started}:{where}"
    assert not box.network, f"tried to reach the network {box.network}:{where}"

    def shown(paths: Sequence[Path]) -> list[str]:
        return [str(path).replace(str(box.root), "ROOT") for path in paths]

    def allowed(path: Path) -> bool:
        # In the state dir or the output folder, or one of the folders made to hold them.
        return any(_within(path, root) or _within(root, path) for root in case.allowed)

    after = listing(box.root)
    created = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    outside = [path for path in created if not allowed(path)]
    assert not outside, f"created outside the state dir (and -o): {shown(outside)}:{where}"
    tilde = [path for path in created if _within(path, box.cwd / "~")]
    assert not tilde, f"a literal '~' folder in the working folder: {shown(tilde)}:{where}"
    gone = [path for path in removed + changed if not allowed(path)]
    assert not gone, f"removed or changed outside the state dir: {shown(gone)}:{where}"
    strays = set(box.root.parent.iterdir()) - beside
    assert not strays, f"created beside the sandbox: {sorted(strays)}:{where}"
    if result.exit_code == 2:
        touched = shown(created + removed + changed)
        assert not touched, f"bad input (exit 2) created or changed {touched}:{where}"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# --- the commands -------------------------------------------------------------------------------


@fuzz("up")
@given(head=prefix(), flags=options(UP_OPTIONS, coherent_placement(up=True)), task=TASK)
def test_fuzz_up(base, head, flags, task):
    tokens = [*head, "up", "--terraform", NO_TERRAFORM, *flags, "--terraform", NO_TERRAFORM]
    if task:
        tokens += ["--", *task]
    with sandbox(base, {"CML_INFRA_TERRAFORM": NO_TERRAFORM}) as box:
        run(box, tokens)


@fuzz("render")
@given(
    head=prefix(),
    out=PATHS,
    flags=options(RENDER_OPTIONS, coherent_placement(up=False)),
    task=TASK,
    short=st.booleans(),
)
def test_fuzz_render(base, head, out, flags, task, short):
    tokens = [*head, "render", "-o" if short else "--output", out, *flags]
    if task:
        tokens += ["--", *task]
    with sandbox(base) as box:
        run(box, tokens)


@fuzz("down")
@given(
    head=prefix(),
    names=st.lists(
        st.one_of(st.sampled_from([RECORD_NAME, "cml-abc123"]), NAMES, JUNK), max_size=3
    ),
    dashes=st.booleans(),
    flags=options(
        [
            Opt("--all", shape="flag"),
            Opt("--state-dir", VALID_STATE_DIRS, STATE_DIRS),
            Opt("--terraform", ["bundled", "terraform"], TERRAFORMS),
            Opt("--token", ["ghp_fuzzfuzzfuzzfuzz"], TOKENS),
            Opt("--reason", ["manual", "cleanup: idle"], ["", "a\nb", "x" * 5000]),
        ]
    ),
    record=SEEDS,
)
def test_fuzz_down(base, head, names, dashes, flags, record):
    tokens = [*head, "down", *flags] + (["--"] if dashes else []) + names
    with sandbox(base) as box:
        if record:
            seed_record(box, record)
        run(box, tokens)


@fuzz("status")
@given(
    head=prefix(),
    flags=options(
        [
            Opt("--all", shape="flag"),
            Opt("--state-dir", VALID_STATE_DIRS, STATE_DIRS),
            Opt("--json", shape="flag"),
        ]
    ),
    record=SEEDS,
)
def test_fuzz_status(base, head, flags, record):
    with sandbox(base) as box:
        if record:
            seed_record(box, record)
        run(box, [*head, "status", *flags])


@fuzz("logs")
@given(
    head=prefix(),
    name=st.one_of(st.just(RECORD_NAME), NAMES, JUNK),
    flags=options(
        [Opt("--follow|-f", shape="bool"), Opt("--state-dir", VALID_STATE_DIRS, STATE_DIRS)]
    ),
    record=SEEDS,
)
def test_fuzz_logs(base, head, name, flags, record):
    with sandbox(base) as box:
        if record:
            seed_record(box, record)
        run(box, [*head, "logs", *flags, "--", name])


@fuzz("pull")
@given(
    head=prefix(),
    name=st.one_of(st.just(RECORD_NAME), NAMES, JUNK),
    dest=st.one_of(st.none(), PATHS),
    flags=options([Opt("--state-dir", VALID_STATE_DIRS, STATE_DIRS)]),
    record=SEEDS,
)
def test_fuzz_pull(base, head, name, dest, flags, record):
    with sandbox(base) as box:
        if record:
            seed_record(box, record)
        run(box, [*head, "pull", *flags, "--", name, *([] if dest is None else [dest])])


@fuzz("catalog")
@given(
    head=prefix(),
    flags=options([Opt("--cloud", ["aws", "gcp", "azure"], CLOUDS), Opt("--json", shape="flag")]),
)
def test_fuzz_catalog(base, head, flags):
    with sandbox(base) as box:
        run(box, [*head, "catalog", *flags])


@fuzz("doctor")
@given(
    head=prefix(),
    flags=options(
        [
            Opt("--cloud", ["local", "aws", "gcp", "azure"], CLOUDS),
            Opt("--terraform", ["bundled", "terraform"], TERRAFORMS),
        ]
    ),
)
def test_fuzz_doctor(base, head, flags):
    with sandbox(base) as box:
        run(box, [*head, "doctor", *flags])


def no_real_cloud(value: Any) -> bool:
    """cleanup lists what a cloud holds: only the local cloud, or names that are none."""
    return not isinstance(value, str) or not any(
        part.strip().lower() in REAL_CLOUDS for part in value.split(",")
    )


@fuzz("cleanup")
@given(
    head=prefix(),
    flags=options(
        [
            Opt("--region", ["local"], ["us-east-1", "", "mars-1"], "multi"),
            Opt("--max-age", ["6h", "1d"], DURATIONS),
            Opt("--idle", ["30m"], DURATIONS),
            Opt("--orphan-grace", ["10m"], DURATIONS),
            Opt("--rule", ["expired", "stale-state", "untracked"], RULES, "multi"),
            Opt("--dry-run", shape="flag"),
            Opt("--yes|-y", shape="bool"),
            Opt("--repo", ["octo/repo"], REPOS),
            Opt("--org", ["octo"], ORGS),
            Opt("--token", ["ghp_fuzzfuzzfuzzfuzz"], TOKENS),
            Opt("--github-url", ["https://ghe.example/api/v3"], URLS),
            Opt("--state-dir", VALID_STATE_DIRS, STATE_DIRS),
            Opt("--json", shape="flag"),
        ]
    ),
    cloud=st.one_of(st.just("local"), CLEANUP_CLOUDS, JUNK.filter(no_real_cloud)),
    record=SEEDS,
)
def test_fuzz_cleanup(base, head, flags, cloud, record):
    # The last --cloud wins: whatever the flags held, cleanup never lists a real cloud.
    tokens = [*head, "cleanup", "--cloud", cloud, *flags, "--cloud", cloud]
    with sandbox(base) as box:
        if record:
            seed_record(box, record)
        run(box, tokens)


# What a training job leaves in its working folder for `report` and `comment`.
JOB_FILES = {
    "metrics.json": '{"train": {"loss": 0.5, "acc": [0.9, 0.95]}, "epochs": 3}',
    "metrics.yaml": "train:\n  loss: 0.4\nnote: fine\n",
    "metrics.csv": "epoch,loss\n1,0.9\n2,0.5\n",
    "base.json": '{"train": {"loss": 0.6}, "gone": 1}',
    "bad.json": '{"train": ',
    "list.json": "[1, 2]",
    "plot.png": "\x89PNG fake",
    "report.md": "# Run\n\n![plot](plot.png) [metrics](metrics.json) ![r](https://x.example/a.png)\n",
    "escape.md": "![x](../afile)\n",
    "missing.md": "![x](nope.png)\n",
}
METRIC_FILES = st.sampled_from(
    ["metrics.json", "metrics.yaml", "metrics.csv", "base.json", "bad.json", "list.json",
     "plot.png", "nope.json", "", "report.md", "."]
)  # fmt: skip
IMAGE_FILES = st.sampled_from(
    ["plot.png", "plot.png=Loss", "plot.png=", "=x", "metrics.json", "nope.png", "", ".",
     "plot.png=a|b"]
)  # fmt: skip
RUN_IDS = st.sampled_from(["4711", "", "abc", "-1", "9" * 40, "1 2"])
COMMENT_TARGETS = st.sampled_from(
    ["pr/1", "issue/2", "commit/" + "a" * 40, "commit/abc", "pr/0", "pr/x", "pull/3", "",
     "pr/99999999999999999999", "commit/" + "g" * 40]
)  # fmt: skip
REPORTS = st.sampled_from(["report.md", "escape.md", "missing.md", "nope.md", "-", "", "."])


def write_job_files(box: Sandbox) -> None:
    for name, text in JOB_FILES.items():
        (box.cwd / name).write_text(text)


@fuzz("report")
@given(
    head=prefix(),
    flags=options(
        [
            Opt("--metrics", ["metrics.json", "metrics.yaml", "metrics.csv"], METRIC_FILES,
                "multi"),
            Opt("--baseline", ["base.json"], METRIC_FILES),
            Opt("--image", ["plot.png", "plot.png=Loss"], IMAGE_FILES, "multi"),
            Opt("--title", ["Run 7"]),
            Opt("--cost|--no-cost", shape="bool"),
            Opt("--run-id", ["4711"], RUN_IDS),
            Opt("--repo", ["octo/repo"], REPOS),
            Opt("--token", ["ghp_fuzzfuzzfuzzfuzz"], TOKENS),
            Opt("-o", [BoxPath("rel", "report-out.md")], PATHS),
            Opt("--state-dir", VALID_STATE_DIRS, STATE_DIRS),
        ]
    ),
    record=SEEDS,
)  # fmt: skip
def test_fuzz_report(base, head, flags, record):
    with sandbox(base) as box:
        write_job_files(box)
        if record:
            seed_record(box, record)
        run(box, [*head, "report", *flags])


@fuzz("comment")
@given(
    head=prefix(),
    verb=st.sampled_from(["create", "update"]),
    source=REPORTS,
    flags=options(
        [
            Opt("--target", ["pr/1", "issue/2"], COMMENT_TARGETS),
            Opt("--pr", shape="flag"),
            Opt("--repo", ["octo/repo"], REPOS),
            Opt("--token", ["ghp_fuzzfuzzfuzzfuzz"], TOKENS),
            Opt("--github-url", ["https://ghe.example/api/v3"], URLS),
            Opt("--watermark-title", ["report", "nightly"]),
            Opt("--rm-watermark", shape="flag"),
            Opt("--publish|--no-publish", shape="bool"),
            Opt("--assets-branch", ["cml-infra-assets", "reports/plots"],
                ["", "a..b", "-x", "a b", "x.lock", "@", "a/"]),
        ]
    ),
)  # fmt: skip
def test_fuzz_comment(base, head, verb, source, flags):
    # Always a dry run, the last flag: it sends nothing, so any case may run here.
    with sandbox(base) as box:
        write_job_files(box)
        run(box, [*head, "comment", verb, *flags, "--", source])
        run(box, [*head, "comment", verb, *flags, "--dry-run", "--", source])


TOP_LEVEL = st.sampled_from(
    ["up", "down", "status", "logs", "render", "catalog", "doctor", "cleanup", "--help",
     "--version", "-q", "--quiet", "--", "-h", "help", "Up", "--bogus", "--json", "--all"]
)  # fmt: skip


@fuzz("top_level")
@given(tokens=st.lists(st.one_of(TOP_LEVEL, TOP_LEVEL, PATH_JUNK), max_size=5))
def test_fuzz_top_level(base, tokens):
    # `up` here has no flag of ours: CML_INFRA_TERRAFORM keeps it from finding an engine.
    with sandbox(base, {"CML_INFRA_TERRAFORM": NO_TERRAFORM}) as box:
        run(box, tokens)


@pytest.mark.parametrize("argv", [["--help"], ["--version"], *([c, "--help"] for c in (
    "up", "down", "status", "logs", "render", "catalog", "doctor", "cleanup"))])  # fmt: skip
def test_help_and_version(base, argv):
    with sandbox(base) as box:
        run(box, argv)


# --- the config file ----------------------------------------------------------------------------


class Raw(str):
    """TOML text used as is (a date, a malformed value)."""


UP_KEYS = [
    "cloud", "region", "gpu", "size", "type", "spot", "max-price", "on-demand-fallback",
    "budget", "image", "tag", "name", "labels", "repo", "org", "github-url", "runner-group",
    "runner-archive", "wait", "reuse-idle", "idle-timeout", "ttl", "startup-timeout", "single",
    "state-dir", "terraform", "json", "idle_timeout", "max_price", "state_dir",
]  # fmt: skip
CLEANUP_KEYS = [
    "cloud", "region", "max-age", "idle", "orphan-grace", "rule", "dry-run", "yes", "repo",
    "org", "github-url", "state-dir", "json", "max_age", "orphan_grace",
]  # fmt: skip
ODD_KEYS = ["token", "output", "bogus", "Cloud", "no-spot", "help", "version", "quiet", "",
            "a b", "日本", "cleanup.max-age"]  # fmt: skip
PLAUSIBLE_BY_KEY: dict[str, st.SearchStrategy[Any]] = {
    "cloud": CLOUDS, "region": REGIONS, "gpu": GPUS, "size": SIZES, "type": TYPES,
    "max-price": PRICES, "budget": PRICES, "image": IMAGES, "tag": TAGS, "name": NAMES,
    "labels": LABELS, "repo": REPOS, "org": ORGS, "github-url": URLS, "runner-group": GROUPS,
    "idle-timeout": DURATIONS, "ttl": DURATIONS, "startup-timeout": DURATIONS,
    "max-age": DURATIONS, "idle": DURATIONS, "orphan-grace": DURATIONS, "rule": RULES,
    "state-dir": st.sampled_from(
        ["state", "~/state", "../elsewhere", "", "/dev/null", "~nosuchuser/state", "x" * 300]
    ),
    "terraform": st.sampled_from(["bundled", "tofu", "bin/terraform", "~/tf", NO_TERRAFORM]),
    "runner-archive": st.sampled_from(["runner.tgz", "https://example.invalid/r.tgz", "~/r"]),
}  # fmt: skip
SCALARS = st.one_of(
    JUNK,
    st.integers(),
    st.sampled_from([2**63 - 1, -(2**63), 2**64, 10**20, 99999999999999999999, 10**400, 0, -1]),
    st.floats(),
    st.booleans(),
    st.sampled_from([Raw("1979-05-27T07:32:00Z"), Raw("1979-05-27"), Raw("07:32:00")]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "b", "c"]), inner)
    ),
    max_leaves=5,
)


def value_for(key: str) -> st.SearchStrategy[Any]:
    plausible = PLAUSIBLE_BY_KEY.get(key.replace("_", "-"))
    if key.replace("_", "-") in ("tag", "labels", "region", "rule") and plausible is not None:
        plausible = st.one_of(plausible, st.lists(plausible, max_size=3))
    if key.replace("_", "-") in ("spot", "wait", "single", "json", "dry-run", "yes", "reuse-idle",
                                 "on-demand-fallback"):  # fmt: skip
        plausible = st.one_of(st.booleans(), st.sampled_from(["yes", "no", "true", "maybe", 1]))
    if plausible is None:
        return VALUES
    return st.one_of(plausible, plausible, VALUES)


def toml_value(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def toml_key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key)
    return key if bare else json.dumps(key, ensure_ascii=False)


@st.composite
def table(draw: st.DrawFn, keys: Sequence[str]) -> list[tuple[str, Any]]:
    names = draw(st.lists(st.one_of(st.sampled_from(keys), st.sampled_from(ODD_KEYS)),
                          max_size=6, unique=True))  # fmt: skip
    return [(name, draw(value_for(name))) for name in names]


@st.composite
def config_files(draw: st.DrawFn) -> tuple[str, bytes, Any]:
    """(file name, content, its top-level state-dir or None): valid and invalid TOML,
    .cml-infra.toml or pyproject.toml."""
    name = draw(st.sampled_from([".cml-infra.toml", ".cml-infra.toml", "pyproject.toml"]))
    shape = draw(st.sampled_from(["tables"] * 6 + ["broken", "bytes", "odd-sections"]))
    if shape == "bytes":
        junk = [b"", b"\xff\xfe\x00", "cloud = \"café\"".encode("latin-1"),
                b"\xef\xbb\xbfcloud = \"aws\"\n", b"cloud = \"a\x00b\"\n"]  # fmt: skip
        return name, draw(st.sampled_from(junk) | st.binary(max_size=40)), None
    if shape == "broken":
        text = draw(
            st.sampled_from(
                ['cloud = "aws"\ncloud = "gcp"\n', 'ttl = "5m\n', "[cleanup\n", "= 1\n",
                 'idle-timeout = "5m"\nidle-timeout = 1\n', "cloud = aws\n",
                 "[[cleanup]]\nidle = 1\n",
                 'cloud = "\\ud800"\n', "tag = [1, \"a\"]\n"]
            ) | TEXT
        )  # fmt: skip
        return name, text.encode("utf-8", "surrogatepass"), None
    lines: list[str] = []
    top = draw(table(UP_KEYS))
    prefix_ = "tool.cml-infra" if name == "pyproject.toml" else ""
    if prefix_:
        if draw(st.integers(0, 5)) == 0:  # `tool` or `tool.cml-infra` not a table
            odd = draw(st.sampled_from(['tool = "x"\n', "[tool]\ncml-infra = 5\n",
                                        '[tool]\ncml-infra = ["a"]\n']))  # fmt: skip
            return name, odd.encode(), None
        lines.append('[project]\nname = "x"\n')
        lines.append(f"[{prefix_}]")
    lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in top]
    section = draw(st.sampled_from(["none", "table", "table", "value"]))
    where = f"{prefix_}.cleanup" if prefix_ else "cleanup"
    if section == "table":
        lines.append(f"\n[{where}]")
        lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in draw(table(CLEANUP_KEYS))]
    elif section == "value" and not prefix_:
        lines.insert(0, f"cleanup = {toml_value(draw(SCALARS))}")
    if shape == "odd-sections":
        odd_sections = ["\n[foo]\nbar = 1", '\n[up]\ncloud = "aws"', "\n[cleanup.nested]\nx = 1",
                        "\n[render]\nx = 1"]  # fmt: skip
        lines.append(draw(st.sampled_from(odd_sections)))
    state_dir = next((v for k, v in reversed(top) if k in ("state-dir", "state_dir")), None)
    return name, ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass"), state_dir


CONFIG_COMMANDS = st.sampled_from(
    [
        ["status"],
        ["status", "--json"],
        ["render", "-o", BoxPath("abs", "out")],
        ["render", "-o", BoxPath("rel", "out"), "--cloud", "aws"],
        ["up", "--terraform", NO_TERRAFORM],
        ["up", "--terraform", NO_TERRAFORM, "--json"],
        ["cleanup", "--cloud", "local", "--dry-run"],
        ["doctor", "--cloud", "local"],
    ]
)
WHERE = st.sampled_from(["file", "file", "file", "missing", "folder"])


@fuzz("config_file")
@given(config=config_files(), command=CONFIG_COMMANDS, where=WHERE, home=st.booleans())
def test_fuzz_config_file(base, config, command, where, home):
    """`home`: CML_INFRA_HOME is set (and wins over the file's state-dir); else the file's
    state-dir (relative to the file) or the default state dir is the state dir."""
    name, content, state_dir = config
    if isinstance(state_dir, str) and (state_dir.startswith("/") or ".." in state_dir):
        home = True  # a state dir outside the sandbox: only where the variable overrides it
    with sandbox(base, {"CML_INFRA_TERRAFORM": NO_TERRAFORM}) as box:
        path = box.project / name
        if where == "file":
            path.write_bytes(content)
        elif where == "folder":
            path.mkdir()
        os.environ["CML_INFRA_CONFIG"] = str(path)
        also = []
        if not home:
            del os.environ["CML_INFRA_HOME"]
            also.append(box.home / ".local" / "state" / "cml-infra")
            if isinstance(state_dir, str):
                also.append(box.project / os.path.expanduser(state_dir))
        shown = content.decode("utf-8", "backslashreplace") if where == "file" else f"({where})"
        run(box, command, config=shown, also=also)


# --- what the fuzz found ------------------------------------------------------------------------

# Each class of failure the fuzz found, as its smallest command line (and config file): the same
# contract, checked every run whatever the generator draws. Each fails until the product handles
# it; the right answer is exit 2 with one line naming the flag (or the file), nothing created.
# (id, command line, seeded record or None, config file (name, content) or None)
KNOWN: list[tuple[str, list[Token], str | None, tuple[str, bytes] | None]] = [
    # A duration too large for a timedelta/datetime: OverflowError (lifecycle.prepare).
    ("up-ttl-overflow", ["up", "--ttl", "99999999999999999999d", "--terraform", NO_TERRAFORM],
     None, None),
    ("up-ttl-days-overflow", ["up", "--ttl", "1000000000d", "--terraform", NO_TERRAFORM],
     None, None),
    ("up-ttl-date-overflow", ["up", "--ttl", "2932896d", "--terraform", NO_TERRAFORM],
     None, None),
    ("render-ttl-overflow",
     ["render", "-o", BoxPath("abs", "out"), "--ttl", "99999999999999999999"], None, None),
    # The same in cleanup.settings.
    ("cleanup-max-age-overflow", ["cleanup", "--cloud", "local", "--max-age", "1000000000d"],
     None, None),
    ("cleanup-idle-overflow", ["cleanup", "--cloud", "local", "--idle", "99999999999999999999"],
     None, None),
    ("cleanup-orphan-grace-overflow",
     ["cleanup", "--cloud", "local", "--orphan-grace", "9223372036854775808s"], None, None),
    # More than 4300 digits: int() raises ValueError (spec.parse_duration, catalog.parse_gpu).
    ("up-idle-timeout-digits", ["up", "--idle-timeout", "9" * 5000, "--terraform", NO_TERRAFORM],
     None, None),
    ("up-ttl-unit-digits", ["up", "--ttl", "9" * 4301 + "s", "--terraform", NO_TERRAFORM],
     None, None),
    ("up-gpu-count-digits", ["up", "--gpu", "t4:" + "9" * 5000, "--terraform", NO_TERRAFORM],
     None, None),
    ("cleanup-max-age-digits", ["cleanup", "--cloud", "local", "--max-age", "9" * 5000],
     None, None),
    # A state dir that cannot be one: a file, a path through a file, a name too long, ~nosuchuser.
    ("logs-state-dir-is-a-file", ["logs", "ab", "--state-dir", BoxPath("file")], None, None),
    ("down-state-dir-is-a-file", ["down", "ab", "--state-dir", BoxPath("file")], None, None),
    ("logs-state-dir-under-a-file",
     ["logs", "ab", "--state-dir", BoxPath("literal", "/dev/null/x")], None, None),
    ("status-state-dir-too-long", ["status", "--state-dir", "x" * 300], None, None),
    ("logs-state-dir-too-long", ["logs", "ab", "--state-dir", "x" * 300], None, None),
    ("status-state-dir-unknown-user", ["status", "--state-dir", "~nosuchuser"], None, None),
    ("render-state-dir-not-utf8",
     ["render", "-o", BoxPath("abs", "out"), "--state-dir", BoxPath("rel", "s\udcff")], None, None),
    # A render output folder that cannot be made.
    ("render-output-under-a-file", ["render", "-o", BoxPath("under-file", "out")], None, None),
    ("render-output-in-proc", ["render", "-o", BoxPath("literal", "/proc/cml-infra-fuzz/x")],
     None, None),
    ("render-output-too-long", ["render", "-o", "x" * 300], None, None),
    ("render-output-part-too-long", ["render", "-o", "out/" + "x" * 300], None, None),
    # '~' not expanded: a literal '~' folder in the working folder.
    ("render-output-tilde", ["render", "-o", BoxPath("tilde", "")], None, None),
    ("render-output-tilde-path", ["render", "-o", BoxPath("tilde", "out")], None, None),
    # A folder name that is not UTF-8, printed on a strict UTF-8 stdout (locale-dependent).
    ("render-output-not-utf8", ["render", "-o", BoxPath("rel", "\udcff")], None, None),
    # Bad input reported with exit 1, and the record left "destroying".
    ("down-bad-terraform-live-record", ["down", RECORD_NAME, "--terraform", NO_TERRAFORM],
     "running", None),
    # Config files: not UTF-8, `tool` or `tool.cml-infra` not a table, '~user' of no user.
    ("config-not-utf8", ["status"], None, (".cml-infra.toml", b"\xff\xfe")),
    ("config-latin1", ["status"], None, (".cml-infra.toml", b'cloud = "caf\xe9"\n')),
    ("config-pyproject-tool-not-a-table", ["status"], None, ("pyproject.toml", b'tool = "x"\n')),
    ("config-pyproject-section-not-a-table", ["status"], None,
     ("pyproject.toml", b"[tool]\ncml-infra = 5\n")),
    ("config-state-dir-unknown-user", ["status"], None,
     (".cml-infra.toml", b'state-dir = "~nosuchuser/state"\n')),
    ("config-ttl-overflow", ["render", "-o", BoxPath("abs", "out")], None,
     (".cml-infra.toml", b'ttl = "99999999999999999999d"\n')),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "record", "config"),
    [pytest.param(argv, record, config, id=name) for name, argv, record, config in KNOWN],
)
def test_known_failure(base, argv, record, config):
    env = {"CML_INFRA_TERRAFORM": NO_TERRAFORM}
    with sandbox(base, env) as box:
        if record:
            seed_record(box, record)
        shown = None
        if config is not None:
            name, content = config
            (box.project / name).write_bytes(content)
            os.environ["CML_INFRA_CONFIG"] = str(box.project / name)
            shown = content.decode("utf-8", "backslashreplace")
        run(box, argv, config=shown)
