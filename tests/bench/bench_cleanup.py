"""`make bench`: `cml-infra cleanup --dry-run` against Cloud Custodian and a bare paginator.

A moto server on 127.0.0.1 holds 5,000 of our instances (half of them past their
`cml-infra-expires`) and 1,000 foreign ones over four regions. Three contenders run as whole
processes against it, RUNS times each, interleaved:

- `cml-infra cleanup --dry-run --cloud aws --region ... --json`;
- Cloud Custodian (`c7n`, in `.venv-bench`: it pins its own botocore) with the same policy:
  `cml-infra-managed` is "true", and `cml-infra-expires` has passed or the instance is older
  than MAX_AGE_HOURS;
- the floor: one `describe_instances` paginator per region, one after the other, with the tag
  filter on the server side, in `python -c`.

The table gives wall time (median, min, max), the process's own CPU time (median; the server's
work is not in it, so it shows the client's cost apart from moto's), peak RSS and the targets:
cleanup <= 0.85x Custodian's wall time and <= 1.1x the paginator's, peak memory <= Custodian's.

What the fake cloud cannot show, and what is changed in it:
- moto stamps LaunchTime at creation, so no instance is old: the age branch of either policy
  matches nothing and the verdict rests on `cml-infra-expires` alone.
- moto pages DescribeInstances by reservations (100 a page); each of ours is a reservation of
  its own, as Terraform creates them, so a region takes 13 pages.
- moto costs that grow with the fleet are taken out, in this process only, so that the
  server does not dominate every figure more than it must: each resource's tags are read from
  the tag table by id (moto scans every tag of the region for each instance it filters or
  serializes, which made one tag-filtered listing of a region 8x slower at this size); an
  instance is looked up without copying every reservation (population was quadratic); moto's
  1,300 default AMIs are not loaded (each new instance was checked against all of them), one
  AMI is registered per region instead. Answers are unchanged. What remains is moto's
  serializer, about 6 ms of server CPU per instance returned: the floor cannot go below
  ~30 s of it for 5,000 instances, so the ratios are squeezed towards 1.
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
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
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
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
FOREIGN_BATCH = 50
MAX_AGE_HOURS = 24
MANAGED_TAG = "cml-infra-managed"
EXPIRES_TAG = "cml-infra-expires"

TARGET_VS_CUSTODIAN = 0.85
TARGET_VS_PAGINATOR = 1.1

# "true", not `present`: the foreign instances tagged cml-infra-managed=false would match that.
POLICY = f"""\
policies:
  - name: cml-infra-reap
    resource: aws.ec2
    filters:
      - "tag:{MANAGED_TAG}": "true"
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

# The floor: what any lister must at least do. Prints "<managed> <reapable>".
PAGINATOR = f"""\
import os, sys, time
from datetime import datetime, timedelta, timezone
assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
import boto3
now = time.time()
oldest = datetime.now(timezone.utc) - timedelta(hours={MAX_AGE_HOURS})
managed = reapable = 0
for region in sys.argv[1:]:
    pages = boto3.client("ec2", region_name=region).get_paginator("describe_instances").paginate(
        Filters=[{{"Name": "tag:{MANAGED_TAG}", "Values": ["true"]}}]
    )
    for page in pages:
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                managed += 1
                tags = {{tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}}
                expires = tags.get("{EXPIRES_TAG}", "")
                if (expires.isdigit() and int(expires) < now) or instance["LaunchTime"] < oldest:
                    reapable += 1
print(managed, reapable)
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


@dataclass
class Sample:
    wall: float
    cpu: float  # the contender's own user + system time: moto's share is not in it
    peak_kib: int


@dataclass
class Contender:
    label: str
    args: list[str]
    samples: list[Sample] = field(default_factory=list)
    found: str = ""
    failure: str = ""  # set: no (more) samples, the row prints this instead

    @property
    def walls(self) -> list[float]:
        return [sample.wall for sample in self.samples]

    @property
    def cpus(self) -> list[float]:
        return [sample.cpu for sample in self.samples]

    @property
    def peak_mib(self) -> float:
        return max(sample.peak_kib for sample in self.samples) / 1024


def main() -> None:
    ensure_custodian()
    tmp = Path(tempfile.mkdtemp(prefix="cml-infra-bench-cleanup-"))
    # Bound but never listening: a connection to it is refused. The proxy for everything
    # that is not 127.0.0.1, so that nothing can reach a real endpoint.
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closed.bind(("127.0.0.1", 0))
    server: Any = None
    try:
        from moto.server import ThreadedMotoServer

        patch_moto()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        env = loopback_env(f"http://{host}:{port}", closed.getsockname()[1], tmp)
        os.environ.clear()
        os.environ.update(env)

        print(f"populating moto at {host}:{port} ...", flush=True)
        start = time.perf_counter()
        managed, reapable = populate()
        print(
            f"populated {managed + FOREIGN:,} instances in {len(REGIONS)} regions in "
            f"{time.perf_counter() - start:.0f}s: {managed:,} ours ({reapable:,} expired), "
            f"{FOREIGN:,} foreign; expecting {reapable:,} to reap",
            flush=True,
        )
        run_all(env, tmp, reapable)
    finally:
        if server is not None:
            server.stop()
        closed.close()
        shutil.rmtree(tmp, ignore_errors=True)


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


def patch_moto() -> None:
    """Take out the two moto costs that grow with the fleet (see the module docstring)."""
    from moto.ec2.exceptions import InvalidInstanceIdError
    from moto.ec2.models.core import TaggedEC2Resource
    from moto.ec2.models.instances import InstanceBackend
    from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix

    # moto's get_tags runs describe_tags(resource-id=[id]): a regex over every tag it holds.
    def get_tags(self: Any) -> list[dict[str, str]]:
        resource_id = getattr(self, "id", None)
        tags = self.ec2_backend.tags.get(resource_id) if resource_id else None
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


def populate() -> tuple[int, int]:
    """Ours one reservation each (as Terraform makes them), foreign in batches; (ours, expired)."""
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    import boto3

    now = int(time.time())
    clients = {region: boto3.client("ec2", region_name=region) for region in REGIONS}
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
        tags = {MANAGED_TAG: "true", "cml-infra-name": f"bench-{n}", EXPIRES_TAG: str(expires)}
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


def run_all(env: dict[str, str], tmp: Path, expected: int) -> None:
    c7n_version, c7n_botocore = venv_versions(BENCH_VENV / "bin" / "python", "c7n", "botocore")
    _, our_botocore = venv_versions(Path(sys.executable), "boto3", "botocore")
    for where, version in (("Custodian's", c7n_botocore), ("our", our_botocore)):
        # AWS_ENDPOINT_URL is read from botocore 1.31 on; an older one would ignore it.
        if tuple(int(part) for part in version.split(".")[:2]) < (1, 31):
            sys.exit(f"{where} botocore {version} does not read AWS_ENDPOINT_URL; not running")
    print(f"botocore: ours {our_botocore}, Custodian's {c7n_botocore}", flush=True)

    policy = tmp / "policy.yml"
    policy.write_text(POLICY)
    region_flags = [flag for region in REGIONS for flag in ("--region", region)]
    cleanup = Contender(
        "cml-infra cleanup",
        [CLI, "cleanup", "--dry-run", "--cloud", "aws", *region_flags, "--json"],
    )
    custodian = Contender(
        f"Cloud Custodian {c7n_version}",
        # --cache-period 0: by default c7n reuses what it listed in the last 15 minutes.
        [
            *(str(CUSTODIAN), "run", "--dryrun", "--cache-period", "0"),
            *("-s", "OUT", str(policy), *region_flags),
        ],
    )
    paginator = Contender("boto3 paginator (floor)", [sys.executable, "-c", PAGINATOR, *REGIONS])
    contenders = [cleanup, custodian, paginator]

    probe = subprocess.run([CLI, "cleanup", "--help"], env=env, capture_output=True, check=False)
    if probe.returncode != 0:
        cleanup.failure = "not available yet"
    # Warm the page cache and .pyc files of both venvs; not timed.
    subprocess.run([CLI, "--help"], env=env, capture_output=True, check=False)
    subprocess.run([str(CUSTODIAN), "version"], env=env, capture_output=True, check=False)

    for number in range(1, RUNS + 1):
        for contender in contenders:
            if contender.failure:
                continue
            out = tmp / f"custodian-{number}"
            args = [str(out) if arg == "OUT" else arg for arg in contender.args]
            sample, code, stdout, stderr = measure(args, env, tmp)
            if code != 0:
                tail = " | ".join(stderr.strip().splitlines()[-3:])
                contender.failure = f"failed (exit {code}): {tail[:300]}"
                continue
            contender.samples.append(sample)
            if contender is custodian:
                contender.found = str(custodian_count(out))
                shutil.rmtree(out, ignore_errors=True)
            elif contender is paginator:
                contender.found = (stdout.split() or ["?"])[-1]
            else:
                contender.found = json_count(stdout)
            print(
                f"  run {number}/{RUNS} {contender.label:<26} {sample.wall:7.2f}s "
                f"(cpu {sample.cpu:5.2f}s) {sample.peak_kib / 1024:7.1f} MiB  "
                f"found {contender.found}",
                flush=True,
            )
    report(contenders, expected)


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


def custodian_count(out: Path) -> int:
    # Several regions: c7n writes OUT/<region>/<policy>/resources.json.
    return sum(len(json.loads(path.read_text())) for path in out.rglob("resources.json"))


def json_count(text: str) -> str:
    """How many instances `cleanup --json` names, when its shape says so; else '?'."""
    try:
        answer = json.loads(text)
    except ValueError:
        return "?"
    if isinstance(answer, dict):
        lists = [value for value in answer.values() if isinstance(value, list)]
        answer = lists[0] if len(lists) == 1 else answer
    return str(len(answer)) if isinstance(answer, list) else "?"


def report(contenders: list[Contender], expected: int) -> None:
    print(
        f"\n{'wall time':<28}{'median':>9}{'min':>9}{'max':>9}{'cpu':>9}{'peak MiB':>10}"
        f"  found (expect {expected})"
    )
    for contender in contenders:
        if not contender.samples:
            print(f"{contender.label}: {contender.failure or 'no runs'}")
            continue
        walls = contender.walls
        print(
            f"{contender.label:<28}{statistics.median(walls):8.2f}s{min(walls):8.2f}s"
            f"{max(walls):8.2f}s{statistics.median(contender.cpus):8.2f}s"
            f"{contender.peak_mib:10.1f}  {contender.found}"
            f"  ({len(walls)} runs){'  ' + contender.failure if contender.failure else ''}"
        )
    cleanup, custodian, paginator = contenders
    print()
    if not (cleanup.samples and custodian.samples and paginator.samples):
        print("targets: n/a (needs all three rows)")
        return
    cleanup_wall = statistics.median(cleanup.walls)
    targets = (
        (
            "time vs Custodian",
            cleanup_wall / statistics.median(custodian.walls),
            TARGET_VS_CUSTODIAN,
        ),
        (
            "time vs paginator",
            cleanup_wall / statistics.median(paginator.walls),
            TARGET_VS_PAGINATOR,
        ),
        ("peak memory vs Custodian", cleanup.peak_mib / custodian.peak_mib, 1.0),
    )
    for label, ratio, target in targets:
        verdict = "PASS" if ratio <= target else "MISS"
        print(f"cleanup {label:<26}{ratio:6.2f}x  (target <= {target:.2f}x)  {verdict}")
    # Wall time here is mostly moto's and moves with the machine's load; CPU time is the
    # contender's own and steadier: a figure to read beside the targets, not one of them.
    cleanup_cpu = statistics.median(cleanup.cpus)
    for label, other in (("cpu vs Custodian", custodian), ("cpu vs paginator", paginator)):
        ratio = cleanup_cpu / statistics.median(other.cpus)
        print(f"cleanup {label:<26}{ratio:6.2f}x  (a figure, no target)")


if __name__ == "__main__":
    main()
