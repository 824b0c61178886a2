"""`make bench`: `cml-infra status` over 500 runners kept in an S3 backend, against the same
runners in a local state dir (figures, not pass/fail).

moto's server runs in a process of its own (moto.server on a free port of 127.0.0.1), so that
its work shares neither the measured process's CPU time nor this one's GIL. It holds, as `up`
would have left them:
- PREFIX/runners/<launch id>/{runner.json, workspace.tar.gz, terraform.tfstate} for RUNNERS
  (500) runners: a RunnerRecord of cloud aws, us-east-1, state running, a unique 16-hex launch
  id; a few KiB for each of the other two, so that the listing has the real object count;
- RUNNERS EC2 instances, one reservation each (as Terraform makes them), tagged as the module
  tags them (`cml-infra-managed`, `-name`, `-id` = the record's launch id, `-expires`,
  `-created`): every record has its live instance, so `status` has nothing to write.

Measured, RUNS (5) rounds, whole processes, the order of the three rotating from round to
round (none always goes first), after one warm-up of each:
- `cml-infra status --json --backend s3://BUCKET/PREFIX?region=us-east-1&endpoint=URL` with a
  fresh empty `--state-dir` each run (another CI job's machine);
- `cml-infra status --json --state-dir DIR`: the same records in `DIR/runners/<name>/`;
- the floor: a bare boto3 script (`python -c`) sending the backend `status`'s requests in the
  same order (the check, the listing, the records read by READERS threads, the EC2 listing)
  and matching records to instances: what the server allows at the least.
All three list the same instances from the same server. Printed: medians, min and max; each
process's own CPU time; the server's CPU time for it (from /proc, where there is one); the
ratios of the medians; how many requests one backend `status` sent, from moto's request log
(the S3 ones are those whose path starts with the bucket: path-style addressing). Target: the
backend's median <= 2 s on a 2-core machine; it is printed as met or not.

The bench checks that it measures what it says: every run's JSON has the 500 runners, each
running or idle, none with an end time; no run sent a write (moto logs each request: any but
GET, HEAD and EC2's POST / is one); after the runs, every object and every local file is byte
for byte what was seeded. A failed check fails the bench.

What is changed in the fake cloud: moto looks up an instance's tags by scanning every tag of
the region, for each instance it filters or describes (quadratic in the fleet: it took a local
`status` from 1.5 s to 3.8 s, over 2 s of server CPU more per listing of 500). The server runs
with the lookup by id that bench_cleanup.py uses, which answers the same; `--stock-moto` runs
`python -m moto.server` as it is. The rest of the server's time, about 4 ms of CPU per
request, stays: against moto, the floor itself is over the target.

The CLI runs as its console script would, with this checkout's code (bench_cli.py's
`console_script`), compiled to .pyc first. Of AWS settings it gets only test credentials,
AWS_REGION, AWS_EC2_METADATA_DISABLED=true and AWS_ENDPOINT_URL_EC2, which aws.py's `_ec2`
client honours (botocore reads AWS_ENDPOINT_URL_<SERVICE> from 1.31 on; no EC2 request on the
server fails the bench); the S3 store is reached through the URL's `endpoint`. The AWS config
and credential files point at files that do not exist, and every proxy at a closed port of
127.0.0.1 (NO_PROXY=127.0.0.1): a request meant for AWS fails rather than leaving the machine.

`--profile` then runs one backend `status` under cProfile and prints where its time goes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pstats
import re
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bench_cli import ROOT, BenchError, base_env, console_script, stopped_on_sigterm

CLI, CLI_LABEL = console_script()
RUNNERS = 500
RUNS = 5
TARGET = 2.0  # seconds: the backend's median
REGION = "us-east-1"
BUCKET = "cml-infra-bench"
PREFIX = "ci/bench"
COMMAND_TIMEOUT = 300.0
SERVER_START_TIMEOUT = 60.0
# What cml_infra/clouds/aws.py lists by, and the tags the aws module writes.
MANAGED_TAG, NAME_TAG, LAUNCH_TAG = "cml-infra-managed", "cml-infra-name", "cml-infra-id"
EXPIRES_TAG, CREATED_TAG = "cml-infra-expires", "cml-infra-created"
LIVE_STATES = ("pending", "running", "shutting-down", "stopping", "stopped")
# Sizes of the objects `status` lists but never reads.
WORKSPACE_BYTES = 3 * 1024
STATE_BYTES = 6 * 1024
# S3 answers a listing in pages of 1,000 keys.
LIST_PAGE = 1000
# werkzeug's request log: 127.0.0.1 - - [date] "GET /path HTTP/1.1" 200 -
REQUEST_LINE = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3})')
SERVER_URL_LINE = re.compile(r"Running on (http://127\.0\.0\.1:\d+)")

# moto's server with an instance's tags looked up by its id (see the module docstring).
SERVER = """\
import sys
from moto.ec2.models.core import TaggedEC2Resource
from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix

def get_tags(self):
    resource_id = getattr(self, "id", None)
    tags = self.ec2_backend.tags.get(resource_id) if resource_id else None
    if not tags:
        return []
    kind = EC2_PREFIX_TO_RESOURCE.get(get_prefix(resource_id), "")
    return [{"resource_id": resource_id, "key": key, "value": value, "resource_type": kind}
            for key, value in tags.items()]

TaggedEC2Resource.get_tags = get_tags
from moto.server import main
main(sys.argv[1:])
"""

# The floor. argv: endpoint, bucket, prefix, readers; prints what it matched as JSON. Its
# clients are configured as cml-infra's (backends/s3.py, clouds/aws.py).
FLOOR = f"""\
import json, sys
from concurrent.futures import ThreadPoolExecutor
import boto3
from botocore.config import Config
endpoint, bucket, prefix, readers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
config = Config(retries={{"mode": "standard", "max_attempts": 5}},
                s3={{"addressing_style": "path"}}, max_pool_connections=32)
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="{REGION}", config=config)
s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/", MaxKeys=1)
pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/runners/")
keys = [e["Key"] for page in pages for e in page.get("Contents", ())]
def read(key):
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
with ThreadPoolExecutor(max_workers=readers) as pool:
    records = list(pool.map(read, [key for key in keys if key.endswith("/runner.json")]))
ec2 = boto3.client("ec2", region_name="{REGION}",
                   config=Config(retries={{"mode": "adaptive", "max_attempts": 10}}))
filters = [{{"Name": "tag:{MANAGED_TAG}", "Values": ["true"]}},
           {{"Name": "instance-state-name", "Values": {list(LIVE_STATES)!r}}}]
listed = set()
for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
    for reservation in page["Reservations"]:
        for instance in reservation["Instances"]:
            tags = {{tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}}
            listed.add(tags.get("{LAUNCH_TAG}"))
print(json.dumps({{"records": len(records),
                  "matched": sum(record["launch_id"] in listed for record in records)}}))
"""

# One `status` under cProfile. argv: the stats file, "wall" (the main thread, wall clock) or
# "cpu" (every thread, each its own CPU time), the console script's code, then its arguments.
PROFILED = """\
import cProfile, pstats, sys, threading, time
out, mode, console = sys.argv[1:4]
del sys.argv[1:4]
timer = time.thread_time if mode == "cpu" else time.perf_counter
profiles = [cProfile.Profile(timer)]
if mode == "cpu":
    run = threading.Thread.run
    def profiled(self):
        profile = cProfile.Profile(timer)
        profiles.append(profile)
        profile.runcall(run, self)
    threading.Thread.run = profiled
try:
    profiles[0].runctx(console, {"__name__": "__main__"}, None)
except SystemExit as exc:
    if exc.code not in (None, 0):
        raise
finally:
    stats = pstats.Stats(profiles[0])
    for profile in profiles[1:]:
        stats.add(profile)
    stats.dump_stats(out)
"""

Request = tuple[str, str, int]  # method, path, status


@dataclass(frozen=True)
class Sample:
    wall: float
    cpu: float  # the process's own user + system time
    server_cpu: float | None  # moto's, while it ran; None where /proc has no figure


@dataclass
class Contender:
    label: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def walls(self) -> list[float]:
        return [sample.wall for sample in self.samples]

    @property
    def median(self) -> float:
        return statistics.median(self.walls)


# --- moto's server, in a process of its own


class MotoServer:
    """moto.server on a free port of 127.0.0.1, its request log in a file."""

    def __init__(self, folder: Path, stock: bool) -> None:
        self.log_path = folder / "moto.log"
        self.stock = stock
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, env: dict[str, str]) -> None:
        program = ["-m", "moto.server"] if self.stock else ["-c", SERVER]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, *program, "-H", "127.0.0.1", "-p", "0"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # stopped by us, after a Ctrl-C too
            )
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"moto's server exited {self.process.returncode}: {self.tail()}")
            found = SERVER_URL_LINE.search(self.log_path.read_text(errors="replace"))
            if found and _answers(found.group(1)):
                self.url = found.group(1)
                return
            time.sleep(0.1)
        raise BenchError(f"moto's server did not answer within {SERVER_START_TIMEOUT:.0f}s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def cpu(self) -> float | None:
        """The server's user + system seconds so far (Linux's /proc)."""
        assert self.process is not None
        try:
            text = Path(f"/proc/{self.process.pid}/stat").read_text()
        except OSError:
            return None
        fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def offset(self) -> int:
        return self.log_path.stat().st_size

    def requests_since(self, offset: int) -> list[Request]:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", errors="replace")
        return [(method, path, int(code)) for method, path, code in REQUEST_LINE.findall(text)]

    def tail(self) -> str:
        return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-5:])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


# --- what `up` would have left


@dataclass(frozen=True)
class Fleet:
    records: list[Any]  # RunnerRecord
    backend_url: str
    local_state: Path


def seed(endpoint: str, folder: Path, count: int) -> Fleet:
    import boto3
    from botocore.config import Config

    from cml_infra.record import RunnerRecord

    config = Config(max_pool_connections=16, retries={"mode": "standard", "max_attempts": 5})
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION, config=config)
    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=REGION, config=config)
    s3.create_bucket(Bucket=BUCKET)
    # moto's 1,300 default AMIs are not loaded (MOTO_EC2_LOAD_DEFAULT_AMIS=false): one will do.
    image = ec2.register_image(Name="cml-infra-bench")["ImageId"]

    now = datetime.now(timezone.utc).replace(microsecond=0)
    created, expires = now - timedelta(minutes=20), now + timedelta(hours=4)
    launch_ids: set[str] = set()
    records = []
    for n in range(count):
        launch_id = secrets.token_hex(8)
        while launch_id in launch_ids:
            launch_id = secrets.token_hex(8)
        launch_ids.add(launch_id)
        name = f"bench-{n:03d}"
        tags = {
            MANAGED_TAG: "true",
            NAME_TAG: name,
            LAUNCH_TAG: launch_id,
            EXPIRES_TAG: str(int(expires.timestamp())),
            CREATED_TAG: str(int(created.timestamp())),
            "Name": name,
        }
        instance = ec2.run_instances(
            ImageId=image,
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                }
            ],
        )["Instances"][0]
        outputs = {
            "id": instance["InstanceId"],
            "name": name,
            "instance_type": "g5.xlarge",
            "availability_zone": instance["Placement"]["AvailabilityZone"],
            "region": REGION,
            "spot": False,
            "private_ip": instance.get("PrivateIpAddress"),
            "tags": tags,
        }
        records.append(
            RunnerRecord(
                name=name,
                cloud="aws",
                region=REGION,
                state="running",
                created_at=created,
                updated_at=created + timedelta(minutes=3),
                expires_at=expires,
                idle_timeout=1800,
                ttl=4 * 3600,
                labels=("cml-infra", "gpu", name),
                instance_type="g5.xlarge",
                gpu="a10g:1",
                hourly_price=1.006,
                instance_id=instance["InstanceId"],
                launch_id=launch_id,
                engine=("terraform",),
                outputs=outputs,
                forge={
                    "kind": "github",
                    "scope": "acme/models",
                    "api_url": "https://api.github.com",
                },
            )
        )

    workspace = os.urandom(WORKSPACE_BYTES)  # incompressible, like a gzip stream
    tfstate = os.urandom(STATE_BYTES // 2).hex().encode("ascii")
    objects = [
        (f"{PREFIX}/runners/{record.launch_id}/{name}", data)
        for record in records
        for name, data in (
            ("runner.json", record.to_json().encode("utf-8")),
            ("workspace.tar.gz", workspace),
            ("terraform.tfstate", tfstate),
        )
    ]
    from concurrent.futures import ThreadPoolExecutor

    def put(item: tuple[str, bytes]) -> None:
        s3.put_object(Bucket=BUCKET, Key=item[0], Body=item[1])

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, objects))

    local = folder / "local-state"
    for record in records:
        runner = local / "runners" / record.name
        runner.mkdir(parents=True, mode=0o700)
        (runner / "runner.json").write_text(record.to_json(), encoding="utf-8")
    url = f"s3://{BUCKET}/{PREFIX}?region={REGION}&endpoint={endpoint}"
    return Fleet(records, url, local)


def snapshot(endpoint: str, fleet: Fleet) -> dict[str, str]:
    """Every object under the prefix and every file of the local state dir, by digest."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
    found: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX):
        for entry in page.get("Contents", ()):
            body = s3.get_object(Bucket=BUCKET, Key=entry["Key"])["Body"].read()
            found[f"s3:{entry['Key']}"] = hashlib.sha256(body).hexdigest()
    for path in sorted(fleet.local_state.rglob("*")):
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[f"local:{path.relative_to(fleet.local_state)}"] = digest
    return found


@contextmanager
def aws_settings(env: dict[str, str]) -> Iterator[None]:
    """This process's environment is `env` while it seeds and checks the server with boto3:
    the caller's AWS settings (a profile, an endpoint) must not steer those calls."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# --- the runs


def cli_env(endpoint: str, folder: Path, closed_port: int) -> dict[str, str]:
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {
        key: value
        for key, value in base_env().items()
        if not key.startswith("AWS_") and key.lower() not in proxies
    }
    dead = f"http://127.0.0.1:{closed_port}"
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_ENDPOINT_URL_EC2=endpoint,
        AWS_CONFIG_FILE=str(folder / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(folder / "no-aws-credentials"),
        HTTP_PROXY=dead,
        HTTPS_PROXY=dead,
        http_proxy=dead,
        https_proxy=dead,
        NO_PROXY="127.0.0.1",
        no_proxy="127.0.0.1",
    )
    return env


def measure(
    who: str, args: list[str], env: dict[str, str], server: MotoServer
) -> tuple[Sample, str, list[Request]]:
    """One whole process: its figures, its stdout, and the requests the server logged."""
    offset, server_before = server.offset(), server.cpu()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with subprocess.Popen(
        args,
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            out, err = child.communicate(timeout=COMMAND_TIMEOUT)
        except BaseException:
            child.kill()
            child.communicate()
            raise
    wall = time.perf_counter() - start
    after, server_after = resource.getrusage(resource.RUSAGE_CHILDREN), server.cpu()
    if child.returncode != 0:
        tail = " | ".join((err or out).strip().splitlines()[-5:])
        raise BenchError(f"{who} exited {child.returncode}: {tail}")
    if err.strip():
        raise BenchError(f"{who} warned: {err.strip()[:500]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    server_cpu = (
        None if server_before is None or server_after is None else server_after - server_before
    )
    return Sample(wall, cpu, server_cpu), out, server.requests_since(offset)


def check_rows(output: str, fleet: Fleet, who: str) -> None:
    rows = json.loads(output)
    expected = {record.launch_id for record in fleet.records}
    found = {row["launch_id"] for row in rows}
    if len(rows) != len(fleet.records) or found != expected:
        raise BenchError(f"{who}: {len(rows)} rows, {len(found & expected)} of the seeded runners")
    states = {row["state"] for row in rows}
    if not states <= {"running", "idle"}:
        raise BenchError(f"{who}: rows in states {sorted(states)}, not only running or idle")
    if any(row["ended_at"] for row in rows):
        raise BenchError(f"{who}: a row has an end time: its instance was not listed")


def writes(requests: list[Request]) -> list[str]:
    """The requests that could change the store: any but a GET, a HEAD or EC2's POST /."""
    return [
        f"{method} {path}"
        for method, path, _ in requests
        if method not in ("GET", "HEAD") and not (method == "POST" and path == "/")
    ]


@dataclass(frozen=True)
class Counted:
    """The requests of one process: S3's (path-style: the bucket first) and EC2's (POST /)."""

    listings: int
    gets: int
    other_s3: int
    ec2: int
    other: int

    @classmethod
    def of(cls, requests: list[Request]) -> Counted:
        s3 = [(method, path) for method, path, _ in requests if path.startswith(f"/{BUCKET}")]
        listings = sum(1 for method, path in s3 if method == "GET" and "list-type=2" in path)
        gets = sum(1 for method, path in s3 if method == "GET") - listings
        ec2 = sum(1 for method, path, _ in requests if method == "POST" and path == "/")
        return cls(listings, gets, len(s3) - listings - gets, ec2, len(requests) - len(s3) - ec2)


@dataclass
class Bench:
    fleet: Fleet
    env: dict[str, str]
    folder: Path
    server: MotoServer
    counted: Counted | None = None

    def backend(self) -> Sample:
        state = Path(tempfile.mkdtemp(prefix="job-", dir=self.folder))
        try:
            args = ["--backend", self.fleet.backend_url, "--state-dir", str(state)]
            sample, out, requests = measure(
                "backend status", [*CLI, "status", "--json", *args], self.env, self.server
            )
        finally:
            shutil.rmtree(state, ignore_errors=True)
        self._check(out, requests, "backend status")
        self.counted = Counted.of(requests)
        if self.counted.ec2 == 0:
            raise BenchError("backend status: no EC2 request reached the server")
        return sample

    def local(self) -> Sample:
        args = ["--state-dir", str(self.fleet.local_state)]
        sample, out, requests = measure(
            "local status", [*CLI, "status", "--json", *args], self.env, self.server
        )
        self._check(out, requests, "local status")
        return sample

    def floor(self) -> Sample:
        from cml_infra.backends.ledger import READERS

        args = [sys.executable, "-c", FLOOR, self.server.url, BUCKET, PREFIX, str(READERS)]
        sample, out, requests = measure("the floor", args, self.env, self.server)
        count = len(self.fleet.records)
        if json.loads(out) != {"records": count, "matched": count}:
            raise BenchError(f"the floor found {out.strip()}, not {count} records and instances")
        if writes(requests):
            raise BenchError(f"the floor wrote: {', '.join(writes(requests)[:5])}")
        return sample

    def _check(self, out: str, requests: list[Request], who: str) -> None:
        check_rows(out, self.fleet, who)
        changed = writes(requests)
        if changed:
            raise BenchError(f"{who} wrote: {', '.join(changed[:5])}")

    def profile(self) -> None:
        """Two backend `status` runs under cProfile: where the main thread's wall time goes
        in cml-infra's code, then which calls take the CPU, in every thread (the records
        are read in READERS threads, which a plain cProfile run does not see)."""
        views = (
            (
                "wall",
                "main thread's wall time, cml-infra's calls, cumulative",
                "cumulative",
                ("cml_infra/", 20),
            ),
            ("cpu", "CPU time of every thread, cumulative", "cumulative", (30,)),
        )
        for mode, title, order, restriction in views:
            stats = self.folder / f"status-{mode}.prof"
            state = Path(tempfile.mkdtemp(prefix="profiled-", dir=self.folder))
            args = [
                sys.executable,
                "-c",
                PROFILED,
                str(stats),
                mode,
                CLI[-1],
                "status",
                "--json",
                "--backend",
                self.fleet.backend_url,
                "--state-dir",
                str(state),
            ]
            try:
                answer = subprocess.run(
                    args,
                    env=self.env,
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=COMMAND_TIMEOUT,
                    check=False,
                )
            finally:
                shutil.rmtree(state, ignore_errors=True)
            if answer.returncode != 0 or not stats.is_file():
                tail = answer.stderr.strip()[-500:]
                raise BenchError(f"profiled status exited {answer.returncode}: {tail}")
            out = io.StringIO()
            found = pstats.Stats(str(stats), stream=out)
            found.sort_stats(order).print_stats(*restriction)
            table = out.getvalue()
            total = sum(entry[2] for entry in found.stats.values())  # type: ignore[attr-defined]
            print(f"\nprofile of one backend status: {title} ({total:.2f}s in all, profiled)")
            print(table[table.find("   ncalls") :].rstrip())


# --- reporting


def row(label: str, contender: Contender) -> None:
    cpu = statistics.median(sample.cpu for sample in contender.samples)
    servers = [s.server_cpu for s in contender.samples if s.server_cpu is not None]
    server = f"{statistics.median(servers):7.3f}s" if servers else f"{'n/a':>8}"
    walls = contender.walls
    print(
        f"  {label:<36} {contender.median:7.3f}s {min(walls):7.3f}s {max(walls):7.3f}s "
        f"{cpu:7.3f}s {server}"
    )


def report(
    contenders: dict[str, Contender], counted: Counted | None, runs: int, count: int
) -> None:
    backend, local, floor = contenders["backend"], contenders["local"], contenders["floor"]
    print(
        f"\n`cml-infra status --json` over {count} runners, {runs} rounds, the order rotating; "
        "the instances listed from the same moto server"
    )
    print(f"  {'':<36} {'median':>8} {'min':>8} {'max':>8} {'cpu':>8} {'server':>8}")
    row("backend s3:// (fresh --state-dir)", backend)
    row("local --state-dir", local)
    row("floor: bare boto3, the same requests", floor)
    print(
        f"  ratio backend / local: {backend.median / local.median:.2f}x; "
        f"backend / floor: {backend.median / floor.median:.2f}x (figures, no target)"
    )
    verdict = "met" if backend.median <= TARGET else "NOT MET"
    print(f"  backend median {backend.median:.3f}s, target <= {TARGET:.1f}s: {verdict}")
    if counted is not None:
        pages = -(-count * 3 // LIST_PAGE)
        expected = (1 + pages, count, 0)
        found = (counted.listings, counted.gets, counted.other_s3)
        print(
            f"  requests of one backend status: S3 {counted.listings} listings, "
            f"{counted.gets} GETs, {counted.other_s3} other; EC2 {counted.ec2}; "
            f"other {counted.other} (expected S3: the check + {pages} page(s) of "
            f"{count * 3} objects, {count} GETs: {'as expected' if found == expected else 'NOT'})"
        )


@contextmanager
def closed_port() -> Iterator[int]:
    """A port of 127.0.0.1 bound but never listening: a connection to it is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def run_bench(runs: int, count: int, stock_moto: bool, with_profile: bool) -> None:
    folder = Path(tempfile.mkdtemp(prefix="cml-infra-bench-backend-")).resolve()
    server = MotoServer(folder, stock_moto)
    try:
        with closed_port() as port:
            server.start({**base_env(), "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"})
            env = cli_env(server.url, folder, port)
            code = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import cml_infra, os; print(os.path.dirname(cml_infra.__file__))",
                ],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            # Time what an installed package runs: compiled modules.
            subprocess.run([sys.executable, "-m", "compileall", "-q", code], env=env, check=True)
            kind = "python -m moto.server" if stock_moto else "moto.server, tags by id"
            print(f"code: {code} ({CLI_LABEL}); {kind} at {server.url}", flush=True)

            started = time.perf_counter()
            with aws_settings(env):
                fleet = seed(server.url, folder, count)
                before = snapshot(server.url, fleet)
            print(
                f"seeded {count} records, {count * 3} objects and {count} instances in "
                f"{time.perf_counter() - started:.0f}s",
                flush=True,
            )
            bench = Bench(fleet, env, folder, server)
            sides = {"backend": bench.backend, "local": bench.local, "floor": bench.floor}
            contenders = {label: Contender(label) for label in sides}
            for measure_one in sides.values():  # warm-up: page cache, the server's first answers
                measure_one()
            labels = list(sides)
            for number in range(runs):
                shift = number % len(labels)
                for label in labels[shift:] + labels[:shift]:
                    contenders[label].samples.append(sides[label]())
                figures = ", ".join(
                    f"{label} {contenders[label].samples[-1].wall:.3f}s" for label in labels
                )
                print(f"  round {number + 1}/{runs}: {figures}", flush=True)
            with aws_settings(env):
                after = snapshot(server.url, fleet)
            if after != before:
                changed = sorted(
                    k for k in before.keys() | after.keys() if before.get(k) != after.get(k)
                )
                raise BenchError(f"changed during the runs: {', '.join(changed[:5])}")
            report(contenders, bench.counted, runs, count)
            if with_profile:
                bench.profile()
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=RUNS, help=f"rounds (default {RUNS})")
    parser.add_argument("--runners", type=int, default=RUNNERS, help=f"default {RUNNERS}")
    parser.add_argument(
        "--stock-moto",
        action="store_true",
        help="run moto's server as it is (its tag lookup is quadratic)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="then profile one backend status (cProfile)"
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # this checkout's cml_infra, for the records it seeds
    with stopped_on_sigterm():
        try:
            run_bench(args.runs, args.runners, args.stock_moto, args.profile)
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench interrupted; moto's server is stopped", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
