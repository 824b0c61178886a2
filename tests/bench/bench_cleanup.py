"""`make bench`: `cml-infra cleanup --dry-run` against Cloud Custodian and a bare paginator.

A moto server on 127.0.0.1 holds 5,000 of our instances (half of them past their
`cml-infra-expires`) and 1,000 foreign ones over four regions. Three contenders run as whole
processes against it, RUNS (5) rounds, the order of the three rotating from round to round so
that none always goes first (the server warms up, the machine's load drifts):

- `cml-infra cleanup --dry-run --cloud aws --region ... --json`;
- Cloud Custodian (`c7n`, in `.venv-bench`: it pins its own botocore) with the same verdict:
  `cml-infra-expires` has passed or the instance is older than MAX_AGE_HOURS. It gets the
  server-side filters cleanup sends (`cml-infra-managed` = "true", a live state) in its policy's
  `query`, so that neither lists more than the other;
- the floor: in `python -c`, one `describe_instances` paginator per region with those filters,
  the regions in parallel (a thread pool, clients made before the threads, as cleanup does).

Every contender must find what was seeded: as many managed instances, as many of them expired
(Custodian says how many it listed in its debug log, `-v`: "Filtered from N to M"; cleanup in
its "rule expired matched M of N" line). A wrong count fails the bench: the timing of a
contender that does not do the work means nothing.

The second scenario adds security groups, the module's leftover once its instance ended itself:
one per instance (tagged with its launch id) and as many again whose launch has no instance.
cleanup lists them through `AwsCloud.list_leftovers` and judges them with a rule of its own;
while either is missing, the scenario is skipped, saying so. Custodian runs a second policy,
`aws.security-group`, with the tag filter client-side: its security-group source ignores a
policy's `query`. No foreign group is seeded (only each region's default group), so that this
costs Custodian next to nothing. The floor lists instances and groups of every region at once,
and counts the groups whose launch id no instance carries.

Per round: cleanup's wall time over each other's (a ratio of the same round is less bent by
drift than a ratio of medians); the median of those, against the targets (printed as met or
not, they do not fail the bench): <= 0.85x Custodian, <= 1.1x the floor, and peak memory
<= 0.7x Custodian's. The process's own CPU time is a figure beside them (moto's work is not in
it, so it shows the client's cost apart from the server's).

What the fake cloud cannot show, and what is changed in it:
- moto stamps LaunchTime at creation, so no instance is old: the age branch of either policy
  matches nothing and the verdict rests on `cml-infra-expires` alone.
- moto pages DescribeInstances by reservations (100 a page); each of ours is a reservation of
  its own, as Terraform creates them, so a region takes 13 pages. It answers
  DescribeSecurityGroups in one page.
- moto costs that grow with the fleet are taken out, in this process only, so that the
  server does not dominate every figure more than it must: each resource's tags are read from
  the tag table by id (moto scans every tag of the region for each instance it filters or
  serializes, which made one tag-filtered listing of a region 8x slower at this size); an
  instance is looked up without copying every reservation (population was quadratic); moto's
  1,300 default AMIs are not loaded (each new instance was checked against all of them), one
  AMI is registered per region instead. Answers are unchanged. What remains is moto's
  serializer, about 6 ms of server CPU per instance returned: the floor cannot go below
  ~30 s of it for 5,000 instances, so the ratios are squeezed towards 1. Timings are noisy on a
  busy machine: read the per-round spread beside the medians.
- Nothing leaves 127.0.0.1: AWS_ENDPOINT_URL points at the server (botocore reads it from
  1.31 on; checked for both venvs), the AWS_* variables of the caller are dropped, the AWS
  config and credential files point into the temporary folder, and HTTP(S)_PROXY points at a
  closed loopback port with NO_PROXY=127.0.0.1, so a request that would bypass the endpoint
  fails instead of reaching AWS.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("cml-infra"))
BENCH_VENV = ROOT / ".venv-bench"
CUSTODIAN = BENCH_VENV / "bin" / "custodian"

REGIONS = ("us-east-1", "us-east-2", "us-west-2", "eu-west-1")
# Smaller figures make a quick trial run: BENCH_OURS=400 BENCH_FOREIGN=100 BENCH_RUNS=1.
OURS = int(os.environ.get("BENCH_OURS", "5000"))
FOREIGN = int(os.environ.get("BENCH_FOREIGN", "1000"))
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
FOREIGN_BATCH = 50
MAX_AGE_HOURS = 24
MANAGED_TAG = "cml-infra-managed"
EXPIRES_TAG = "cml-infra-expires"
LAUNCH_TAG = "cml-infra-id"
CREATED_TAG = "cml-infra-created"
# What cleanup asks the server for (cml_infra/clouds/aws.py); every contender asks the same.
LIVE_STATES = ("pending", "running", "shutting-down", "stopping", "stopped")

TARGET_VS_CUSTODIAN = 0.85
TARGET_VS_FLOOR = 1.1
TARGET_MEMORY = 0.7

# Custodian's policies. The instance query is c7n's explicit form of EC2 filters (its
# EC2QueryParser checks each name and state); "true", not `present`: the foreign instances
# tagged cml-infra-managed=false would match that.
EC2_POLICY = f"""\
  - name: cml-infra-reap
    resource: aws.ec2
    query:
      - Filters:
          - Name: "tag:{MANAGED_TAG}"
            Values: ["true"]
          - Name: instance-state-name
            Values: {json.dumps(list(LIVE_STATES))}
    filters:
      - or:
          - type: value
            key: "tag:{EXPIRES_TAG}"
            value_type: expiration
            op: less-than
            value: 0
          - type: instance-age
            op: greater-than
            hours: {MAX_AGE_HOURS}
"""
# c7n's security-group resource reads no `query` (its describe source passes none on), so the
# tag filter can only be a client-side one.
GROUP_POLICY = f"""\
  - name: cml-infra-groups
    resource: aws.security-group
    filters:
      - "tag:{MANAGED_TAG}": "true"
"""

# The floor: what any lister must at least do, with as much parallelism as cleanup's. argv:
# "instances" or "groups", then the regions; prints what it found as JSON.
FLOOR = f"""\
import json, os, sys, time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
import boto3
groups, regions = sys.argv[1] == "groups", sys.argv[2:]
now = time.time()
oldest = datetime.now(timezone.utc) - timedelta(hours={MAX_AGE_HOURS})
managed = {{"Name": "tag:{MANAGED_TAG}", "Values": ["true"]}}
live = {{"Name": "instance-state-name", "Values": {list(LIVE_STATES)!r}}}
clients = {{region: boto3.client("ec2", region_name=region) for region in regions}}

def instances(region):
    pages = clients[region].get_paginator("describe_instances").paginate(Filters=[managed, live])
    return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

def security_groups(region):
    pages = clients[region].get_paginator("describe_security_groups").paginate(Filters=[managed])
    return [group for page in pages for group in page["SecurityGroups"]]

tasks = [(instances, region) for region in regions]
tasks += [(security_groups, region) for region in regions if groups]
with ThreadPoolExecutor(max_workers=min(8, len(tasks))) as pool:
    found = list(pool.map(lambda task: task[0](task[1]), tasks))
counts = {{"instances": 0, "expired": 0}}
launches = set()
for instance in (i for (kind, _), batch in zip(tasks, found) if kind is instances for i in batch):
    tags = {{tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}}
    launches.add(tags.get("{LAUNCH_TAG}"))
    expires = tags.get("{EXPIRES_TAG}", "")
    counts["instances"] += 1
    old = instance["LaunchTime"] < oldest
    counts["expired"] += (expires.isdigit() and int(expires) < now) or old
if groups:
    listed = [g for (kind, _), batch in zip(tasks, found) if kind is security_groups for g in batch]
    counts["groups"] = len(listed)
    counts["leftovers"] = sum(
        all(t["Key"] != "{LAUNCH_TAG}" or t["Value"] not in launches for t in g.get("Tags", []))
        for g in listed
    )
print(json.dumps(counts))
"""


# Each contender is started from this small process rather than from this script: a child's
# peak RSS (ru_maxrss) counts the memory of the process it was forked from, and this script
# holds the moto server and its 6,000 instances. Python with no site: about 8 MiB.
LAUNCHER = """\
import json, os, sys, time
start = time.perf_counter()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
peak = usage.ru_maxrss // (1024 if sys.platform == "darwin" else 1)  # bytes there, else KiB
cpu = usage.ru_utime + usage.ru_stime
code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as out:
    json.dump({"wall": wall, "cpu": cpu, "peak_kib": peak, "code": code}, out)
"""

# What each contender is asked to find: always instances and expired; with groups, groups.
# `leftovers` is checked only where a contender says it (Custodian has no such join).
Counts = dict[str, int]


@dataclass(frozen=True)
class Sample:
    wall: float
    cpu: float  # the contender's own user + system time: moto's share is not in it
    peak_kib: int


@dataclass(frozen=True)
class Output:
    """What a contender left: stdout, stderr, and Custodian's output folder."""

    stdout: str
    stderr: str
    folder: Path


@dataclass
class Contender:
    label: str
    args: list[str]
    counts: Callable[[Output], Counts]
    samples: dict[int, Sample] = field(default_factory=dict)  # by round
    found: Counts = field(default_factory=dict)
    failure: str = ""  # set: no (more) samples; the row prints this instead

    @property
    def walls(self) -> list[float]:
        return [sample.wall for sample in self.samples.values()]

    @property
    def cpus(self) -> list[float]:
        return [sample.cpu for sample in self.samples.values()]

    @property
    def peak_mib(self) -> float:
        return max(sample.peak_kib for sample in self.samples.values()) / 1024


@dataclass(frozen=True)
class Scenario:
    name: str
    expected: Counts
    groups: bool


def main() -> None:
    ensure_custodian()
    tmp = Path(tempfile.mkdtemp(prefix="cml-infra-bench-cleanup-"))
    # Bound but never listening: a connection to it is refused. The proxy for everything
    # that is not 127.0.0.1, so that nothing can reach a real endpoint.
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closed.bind(("127.0.0.1", 0))
    server: Any = None
    failures: list[str] = []
    try:
        from moto.server import ThreadedMotoServer

        patch_moto()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        env = loopback_env(f"http://{host}:{port}", closed.getsockname()[1], tmp)
        os.environ.clear()
        os.environ.update(env)
        check_botocore()

        print(f"populating moto at {host}:{port} ...", flush=True)
        start = time.perf_counter()
        managed, expired = populate()
        print(
            f"populated {managed + FOREIGN:,} instances in {len(REGIONS)} regions in "
            f"{time.perf_counter() - start:.0f}s: {managed:,} ours ({expired:,} expired), "
            f"{FOREIGN:,} foreign",
            flush=True,
        )
        instances = Scenario("instances", {"instances": managed, "expired": expired}, False)
        failures += run_scenario(instances, env, tmp)

        print("\n== instances and security groups", flush=True)
        if not cleanup_lists_groups():
            print("skipped: cleanup does not list security groups yet", flush=True)
        else:
            start = time.perf_counter()
            groups, leftovers = populate_groups()
            print(
                f"populated {groups:,} managed security groups in "
                f"{time.perf_counter() - start:.0f}s: one per instance, {leftovers:,} of "
                "launches with no instance",
                flush=True,
            )
            expected = instances.expected | {"groups": groups, "leftovers": leftovers}
            both = Scenario("instances and security groups", expected, True)
            failures += run_scenario(both, env, tmp)
    finally:
        if server is not None:
            server.stop()
        closed.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print(file=sys.stderr)
        for failure in failures:
            print(f"bench_cleanup: FAILED: {failure}", file=sys.stderr)
        sys.exit(1)


def ensure_custodian() -> None:
    """`.venv-bench` with c7n; made once, like `.venv-checkov`."""
    marker = BENCH_VENV / "bin" / ".installed"
    if marker.exists():
        return
    print(f"creating {BENCH_VENV.name} with c7n (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(BENCH_VENV)], check=True)
    pip = [str(BENCH_VENV / "bin" / "pip"), "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "c7n"], check=True)
    marker.touch()


def cleanup_lists_groups() -> bool:
    """Whether `cleanup` lists security groups: AwsCloud lists leftovers itself (the Cloud
    protocol's default lists none) and a rule looks at them."""
    from cml_infra.cleanup.rules import RULES
    from cml_infra.clouds import base
    from cml_infra.clouds.aws import AwsCloud

    own = getattr(AwsCloud, "list_leftovers", None)
    if own is None or own is getattr(base.Cloud, "list_leftovers", None):
        return False
    return any(rule.item not in known_items() for rule in RULES.values())


def known_items() -> tuple[type, ...]:
    """The items of the reaper's rules that are not leftovers."""
    from cml_infra.cleanup.world import InstanceItem, RecordItem, RegistrationItem

    return InstanceItem, RecordItem, RegistrationItem


def patch_moto() -> None:
    """Take out the two moto costs that grow with the fleet (see the module docstring)."""
    from moto.ec2.exceptions import InvalidInstanceIdError
    from moto.ec2.models.core import TaggedEC2Resource
    from moto.ec2.models.instances import InstanceBackend
    from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix

    # moto's get_tags runs describe_tags(resource-id=[id]): a regex over every tag it holds.
    def get_tags(self: Any) -> list[dict[str, str]]:
        resource_id = getattr(self, "id", None)
        if not resource_id:
            return []
        tags = self.ec2_backend.tags.get(resource_id)
        if not tags:
            return []
        kind = EC2_PREFIX_TO_RESOURCE.get(get_prefix(resource_id), "")
        return [
            {"resource_id": resource_id, "key": key, "value": value, "resource_type": kind}
            for key, value in tags.items()
        ]

    # get_instance copies every reservation of the region to find one instance; each new
    # instance's root volume attachment calls it, so creating a fleet was quadratic.
    def get_instance(self: Any, instance_id: str) -> Any:
        for reservation in self.reservations.values():
            for instance in reservation.instances:
                if instance.id == instance_id:
                    return instance
        raise InvalidInstanceIdError(instance_id)

    TaggedEC2Resource.get_tags = get_tags  # type: ignore[method-assign]
    InstanceBackend.get_instance = get_instance  # type: ignore[method-assign]
    os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"  # read when a region's backend is made
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise


def loopback_env(endpoint: str, closed_port: int, tmp: Path) -> dict[str, str]:
    assert endpoint.startswith("http://127.0.0.1:"), endpoint
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {
        key: value
        for key, value in os.environ.items()
        # C7N_USE_STS_REGIONAL would give c7n an explicit https://sts.<region> endpoint.
        if not key.startswith(("AWS_", "C7N_")) and key.lower() not in proxies
    }
    dead = f"http://127.0.0.1:{closed_port}"
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGIONS[0],
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(tmp / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp / "aws-credentials"),
        HTTP_PROXY=dead,
        HTTPS_PROXY=dead,
        http_proxy=dead,
        https_proxy=dead,
        NO_PROXY="127.0.0.1",
        no_proxy="127.0.0.1",
        CML_INFRA_HOME=str(tmp / "cml-infra-home"),
        MOTO_EC2_LOAD_DEFAULT_AMIS="false",
    )
    return env


def check_botocore() -> None:
    _, c7n_botocore = venv_versions(BENCH_VENV / "bin" / "python", "c7n", "botocore")
    _, our_botocore = venv_versions(Path(sys.executable), "boto3", "botocore")
    for where, version in (("Custodian's", c7n_botocore), ("our", our_botocore)):
        # AWS_ENDPOINT_URL is read from botocore 1.31 on; an older one would ignore it.
        if tuple(int(part) for part in version.split(".")[:2]) < (1, 31):
            sys.exit(f"{where} botocore {version} does not read AWS_ENDPOINT_URL; not running")
    print(f"botocore: ours {our_botocore}, Custodian's {c7n_botocore}", flush=True)


def populate() -> tuple[int, int]:
    """Ours one reservation each (as Terraform makes them), foreign in batches; (ours, expired)."""
    now = int(time.time())
    clients = ec2_clients()
    amis = {
        region: client.register_image(Name="bench")["ImageId"] for region, client in clients.items()
    }
    expired = 0
    for n in range(OURS):
        region = REGIONS[n % len(REGIONS)]
        # Alternate per region, so that every region has both; 1 to 48 hours either side.
        past = (n // len(REGIONS)) % 2 == 0
        expired += past
        expires = now + (-1 if past else 1) * 3600 * (1 + n % 48)
        tags = {
            MANAGED_TAG: "true",
            "cml-infra-name": f"bench-{n}",
            EXPIRES_TAG: str(expires),
            LAUNCH_TAG: launch_id(n),
        }
        run(clients[region], amis[region], 1, tags)
    for n, start in enumerate(range(0, FOREIGN, FOREIGN_BATCH)):
        region = REGIONS[n % len(REGIONS)]
        count = min(FOREIGN_BATCH, FOREIGN - start)
        tags = {"Name": f"web-{n}", "team": "platform"}
        if n % 2:
            # Not ours although it looks it: managed "false" and long expired.
            tags |= {MANAGED_TAG: "false", EXPIRES_TAG: str(now - 86400)}
        run(clients[region], amis[region], count, tags)
    return OURS, expired


def populate_groups() -> tuple[int, int]:
    """One group per instance of ours (its launch id, in its region), and as many of launches
    that have no instance, made two days ago (past any grace); (groups, leftovers)."""
    clients = ec2_clients()
    created = str(int(time.time()) - 2 * 86400)
    for n in range(2 * OURS):
        region = REGIONS[n % len(REGIONS)]
        launch = launch_id(n)  # from OURS on, no instance has it
        tags = {MANAGED_TAG: "true", LAUNCH_TAG: launch, CREATED_TAG: created}
        clients[region].create_security_group(
            GroupName=f"cml-infra-{launch}",
            Description="bench",
            TagSpecifications=[
                {
                    "ResourceType": "security-group",
                    "Tags": [{"Key": key, "Value": value} for key, value in tags.items()],
                }
            ],
        )
    return 2 * OURS, OURS


def ec2_clients() -> dict[str, Any]:
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    import boto3

    return {region: boto3.client("ec2", region_name=region) for region in REGIONS}


def launch_id(n: int) -> str:
    return f"bench{n:08d}"  # a launch id's format: [a-z0-9]{8,32}


def run(client: Any, ami: str, count: int, tags: dict[str, str]) -> None:
    # No InstanceType: moto then skips checking it against 1,271 offerings (m1.small).
    client.run_instances(
        ImageId=ami,
        MinCount=count,
        MaxCount=count,
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [{"Key": key, "Value": value} for key, value in tags.items()],
            }
        ],
    )


def contenders(scenario: Scenario, tmp: Path) -> list[Contender]:
    c7n_version = venv_versions(BENCH_VENV / "bin" / "python", "c7n")[0]
    policy = tmp / f"policy-{'groups' if scenario.groups else 'instances'}.yml"
    policy.write_text("policies:\n" + EC2_POLICY + (GROUP_POLICY if scenario.groups else ""))
    region_flags = [flag for region in REGIONS for flag in ("--region", region)]
    return [
        Contender(
            "cml-infra cleanup",
            [CLI, "cleanup", "--dry-run", "--cloud", "aws", *region_flags, "--json"],
            cleanup_counts,
        ),
        Contender(
            f"Cloud Custodian {c7n_version}",
            # --cache-period 0: by default c7n reuses what it listed in the last 15 minutes.
            # -v: its debug log says how many resources it listed before its filters.
            [
                *(str(CUSTODIAN), "run", "-v", "--dryrun", "--cache-period", "0"),
                *("-s", "OUT", str(policy), *region_flags),
            ],
            custodian_counts,
        ),
        Contender(
            "boto3 paginators (floor)",
            [sys.executable, "-c", FLOOR, "groups" if scenario.groups else "instances", *REGIONS],
            lambda output: {key: int(value) for key, value in json.loads(output.stdout).items()},
        ),
    ]


def run_scenario(scenario: Scenario, env: dict[str, str], tmp: Path) -> list[str]:
    """RUNS rounds of every contender, in rotating order; the report; what failed."""
    expected = ", ".join(f"{value:,} {key}" for key, value in scenario.expected.items())
    print(f"scenario {scenario.name}: every contender must find {expected}", flush=True)
    entrants = contenders(scenario, tmp)
    cleanup = entrants[0]
    probe = subprocess.run([CLI, "cleanup", "--help"], env=env, capture_output=True, check=False)
    if probe.returncode != 0:
        cleanup.failure = "not available yet"
    # Warm the page cache and .pyc files of both venvs; not timed.
    subprocess.run([CLI, "--help"], env=env, capture_output=True, check=False)
    subprocess.run([str(CUSTODIAN), "version"], env=env, capture_output=True, check=False)

    for number in range(1, RUNS + 1):
        shift = (number - 1) % len(entrants)
        for contender in entrants[shift:] + entrants[:shift]:
            if not contender.failure:
                measure_one(contender, number, scenario, env, tmp)
        print_round(entrants, number)
    report(entrants, scenario)
    return [
        f"{scenario.name}: {contender.label}: {contender.failure}"
        for contender in entrants
        if contender.failure and contender.failure != "not available yet"
    ]


def measure_one(
    contender: Contender, number: int, scenario: Scenario, env: dict[str, str], tmp: Path
) -> None:
    folder = tmp / f"custodian-{number}"
    args = [str(folder) if arg == "OUT" else arg for arg in contender.args]
    sample, code, stdout, stderr = measure(args, env, tmp)
    try:
        if code != 0:
            tail = " | ".join(stderr.strip().splitlines()[-3:])
            contender.failure = f"failed (exit {code}): {tail[:300]}"
            return
        try:
            contender.found = contender.counts(Output(stdout, stderr, folder))
        except (ValueError, KeyError, TypeError) as exc:
            contender.failure = f"round {number}: could not read what it found: {exc!r}"
            return
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    contender.samples[number] = sample
    found = ", ".join(
        f"{value:,} {key}" for key, value in sorted(contender.found.items(), key=order)
    )
    print(
        f"  round {number}/{RUNS} {contender.label:<26} {sample.wall:7.2f}s "
        f"(cpu {sample.cpu:5.2f}s) {sample.peak_kib / 1024:7.1f} MiB  found {found}",
        flush=True,
    )
    wrong = wrong_counts(contender.found, scenario)
    if wrong:
        contender.failure = f"round {number}: {wrong}"
        print(f"  {contender.label}: WRONG COUNT: {wrong}", flush=True)


def order(count: tuple[str, int]) -> int:
    """Counts in the order the scenario says them."""
    keys = ("instances", "expired", "groups", "leftovers")
    return keys.index(count[0]) if count[0] in keys else len(keys)


def wrong_counts(found: Counts, scenario: Scenario) -> str:
    """What a contender found that is not what was seeded, or did not say; "" when right."""
    required = ["instances", "expired", *(["groups"] if scenario.groups else [])]
    wrong = [f"did not say how many {key}" for key in required if key not in found]
    wrong += [
        f"found {found[key]:,} {key}, {value:,} were seeded"
        for key, value in scenario.expected.items()
        if key in found and found[key] != value
    ]
    # cleanup says how many groups it listed once it lists them, in either scenario.
    wrong += [
        f"found {found[key]:,} {key}, none were seeded"
        for key in sorted(found.keys() - scenario.expected.keys())
        if found[key]
    ]
    return "; ".join(wrong)


# The row kinds of cleanup's other items (world.py).
OTHER_KINDS = ("instance", "state", "registration")
CLEANUP_RULE_LINE = re.compile(r"^cleanup: rule (\S+) matched (\d+) of (\d+)$", re.MULTILINE)


def cleanup_counts(output: Output) -> Counts:
    """Listed: how many items each rule looked at ("rule expired matched M of N"); found: the
    rows of --json by kind (a leftover's is its Terraform type, aws_security_group)."""
    from cml_infra.cleanup.rules import RULES
    from cml_infra.cleanup.world import InstanceItem

    counts: Counts = {}
    for name, _, total in CLEANUP_RULE_LINE.findall(output.stderr):
        item = RULES[name].item
        if item is InstanceItem:
            counts["instances"] = int(total)
        elif item not in known_items():
            counts["groups"] = int(total)
    rows = json.loads(output.stdout)
    counts["expired"] = sum(1 for row in rows if row["kind"] == "instance")
    if "groups" in counts:
        counts["leftovers"] = sum(1 for row in rows if row["kind"] not in OTHER_KINDS)
    return counts


CUSTODIAN_FILTERED = re.compile(r"Filtered from (\d+) to (\d+) (\S+)$", re.MULTILINE)


def custodian_counts(output: Output) -> Counts:
    """Listed: "Filtered from N to M ec2" per region (-v); found: each policy's resources.json
    (OUT/<region>/<policy>/resources.json with several regions)."""
    listed = [int(n) for n, _, kind in CUSTODIAN_FILTERED.findall(output.stderr) if kind == "ec2"]
    counts: Counts = {"instances": sum(listed)} if len(listed) == len(REGIONS) else {}
    for key, policy in (("expired", "cml-infra-reap"), ("groups", "cml-infra-groups")):
        found = list(output.folder.glob(f"*/{policy}/resources.json"))
        if found:
            counts[key] = sum(len(json.loads(path.read_text())) for path in found)
    return counts


def venv_versions(python: Path, *packages: str) -> list[str]:
    code = "import sys, importlib.metadata as m; print(*(m.version(p) for p in sys.argv[1:]))"
    answer = subprocess.run(
        [str(python), "-c", code, *packages], capture_output=True, text=True, check=True
    )
    return answer.stdout.split()


def measure(args: list[str], env: dict[str, str], tmp: Path) -> tuple[Sample, int, str, str]:
    """Wall time and peak RSS of one process, its exit code, stdout and stderr."""
    stdout_path, stderr_path, figures = tmp / "stdout", tmp / "stderr", tmp / "figures.json"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        subprocess.run(
            [sys.executable, "-S", "-E", "-c", LAUNCHER, str(figures), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            check=True,
        )
    answer = json.loads(figures.read_text())
    return (
        Sample(answer["wall"], answer["cpu"], answer["peak_kib"]),
        answer["code"],
        stdout_path.read_text(errors="replace"),
        stderr_path.read_text(errors="replace"),
    )


def round_ratios(entrants: list[Contender]) -> list[tuple[int, float, float]]:
    """(round, cleanup / Custodian, cleanup / floor) for every round all three finished."""
    cleanup, custodian, floor = entrants
    return [
        (number, wall / custodian.samples[number].wall, wall / floor.samples[number].wall)
        for number, wall in sorted((n, sample.wall) for n, sample in cleanup.samples.items())
        if number in custodian.samples and number in floor.samples
    ]


def print_round(entrants: list[Contender], number: int) -> None:
    for done, vs_custodian, vs_floor in round_ratios(entrants):
        if done == number:
            print(
                f"  round {number}/{RUNS}: cleanup {vs_custodian:.2f}x Custodian, "
                f"{vs_floor:.2f}x the floor",
                flush=True,
            )


def report(entrants: list[Contender], scenario: Scenario) -> None:
    print(f"\n{scenario.name}")
    print(f"{'wall time':<28}{'median':>9}{'min':>9}{'max':>9}{'cpu':>9}{'peak MiB':>10}  runs")
    for contender in entrants:
        if not contender.samples:
            print(f"{contender.label:<28}{contender.failure or 'no runs'}")
            continue
        walls = contender.walls
        print(
            f"{contender.label:<28}{statistics.median(walls):8.2f}s{min(walls):8.2f}s"
            f"{max(walls):8.2f}s{statistics.median(contender.cpus):8.2f}s"
            f"{contender.peak_mib:10.1f}  {len(walls)}"
            f"{'  ' + contender.failure if contender.failure else ''}"
        )
    cleanup, custodian, floor = entrants
    ratios = round_ratios(entrants)
    if not ratios:
        print("targets: n/a (needs a round that all three finished)\n")
        return
    print("per round (cleanup's wall time over the other's, same round):")
    for number, vs_custodian, vs_floor in ratios:
        print(f"  round {number}: {vs_custodian:.2f}x Custodian, {vs_floor:.2f}x the floor")
    targets = (
        ("time vs Custodian", statistics.median(r[1] for r in ratios), TARGET_VS_CUSTODIAN),
        ("time vs floor", statistics.median(r[2] for r in ratios), TARGET_VS_FLOOR),
        ("peak memory vs Custodian", cleanup.peak_mib / custodian.peak_mib, TARGET_MEMORY),
    )
    for label, ratio, target in targets:
        verdict = "met" if ratio <= target else "NOT MET"
        median = "median " if label.startswith("time") else ""
        print(f"cleanup {label:<26}{median:>7}{ratio:5.2f}x  (target <= {target:.2f}x)  {verdict}")
    # Wall time here is mostly moto's and moves with the machine's load; CPU time is the
    # contender's own and steadier: a figure to read beside the targets, not one of them.
    cleanup_cpu = statistics.median(cleanup.cpus)
    for label, other in (("cpu vs Custodian", custodian), ("cpu vs floor", floor)):
        ratio = cleanup_cpu / statistics.median(other.cpus)
        print(f"cleanup {label:<26}{'':>7}{ratio:5.2f}x  (a figure, no target)")
    print()


if __name__ == "__main__":
    main()
