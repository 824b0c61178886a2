"""The VM boot, executed: each cloud's startup script, built as `up` builds it (the runner
release resolved through the fake GitHub, a registration minted from it), run as root in a
Debian root file system (tests/fakes/rootfs.py) until its runner listens for jobs and takes
one; then the agent ends the instance the cloud's way (idle timeout, or the single job done),
and the TTL timer's own command, run as systemd would at the deadline, ends it again.

Runs for real: bash, useradd/usermod/gpasswd, file modes, iptables (in the VM's own network
namespace), the agent as the script writes it, the download of the runner double (published as
GitHub's latest actions/runner release in the fake) and its checksum, config.sh and run.sh as
the runner user, a job's Runner.Worker. Stubbed: systemd-run, systemctl, shutdown, nvidia-smi,
docker and nvidia-ctk (recording stubs on the VM's PATH); the metadata service (a route table
at 169.254.169.254:80 in the VM's network namespace; metadata.google.internal resolves to it
through /etc/hosts, as on GCE images); the cloud APIs (HTTPS hosts: on loopback, through the
agent config's `endpoints`, which render never sets).

What the test changes in the rendered script, both in the agent config: `endpoints` (above),
and `poll_seconds` 1 instead of 5 (seconds per boot)."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from cml_infra.lifecycle import prepare
from cml_infra.render import CONFIG_DELIMITER
from cml_infra.spec import build_spec
from tests.e2e.conftest import SCOPE, TOKEN
from tests.fakes import rootfs
from tests.fakes.github import FakeGitHub
from tests.fakes.rootfs import MetadataService, Process, Vm
from tests.fakes.routes import Routes
from tests.fakes.runner_double import RUNNER_VERSION, build_archive, sha256

pytestmark = pytest.mark.e2e

RUNNER_USER = "cml-runner"
PLATFORM = "linux-x64"
HOME = "/var/lib/cml-infra"
IDLE_TIMEOUT = 3
TTL = 3600
BOOT_TIMEOUT = 90.0
# Where the runner user may own files: its home, the runner's folder, and scratch space.
RUNNER_MAY_OWN = (f"/home/{RUNNER_USER}", f"{HOME}/runner", "/tmp", "/var/tmp")
# The identities the fake metadata services hand out; the fake APIs require them.
GCP_VM_TOKEN = "ya29.vm-boot-test-access-token"
AZURE_VM_TOKEN = "eyJ0eXAi.vm-boot-test-access-token"
IMDS_TOKEN = "AQAEAvm-boot-test-imds-token"
GCP_PROJECT, GCP_ZONE = "proj-vm", "us-central1-a"
TEAM_LINE = "team boot step ran"
TEAM_MARKER = "/etc/team-boot-step"
# A team's script: says it ran, and leaves a marker only root may write.
TEAM_SCRIPT = f"#!/bin/bash\nset -eu\necho '{TEAM_LINE}'\nid -u >{TEAM_MARKER}\n"
AZURE_SUBSCRIPTION, AZURE_GROUP = "00000000-0000-0000-0000-00000000cafe", "cml-infra-vm-azure"


@dataclass(frozen=True)
class Case:
    id: str
    cloud: str
    # None: a CPU runner (--size s).
    gpu: str | None
    single: bool = False
    # False: the image has no systemd-run, and the TTL falls back to `shutdown -h +MIN`.
    systemd_run: bool = True
    # AWS's --instance-profile: a role for the job's data, so the metadata service stays open.
    instance_profile: str | None = None
    # The image's own setup, as root, before the startup script (a GPU image ships Docker).
    prepare: str = "groupadd --system docker"
    # The team's own boot steps (--startup-script), as the file's text.
    startup_script: str | None = None

    @property
    def name(self) -> str:
        return f"vm-{self.id}"


CASES = (
    Case("aws", "aws", "t4"),
    Case("gcp", "gcp", "t4:2", single=True, startup_script=TEAM_SCRIPT),
    Case("azure", "azure", "t4", systemd_run=False),
    # An image that made the runner user a docker member: without --docker it must not stay one.
    Case("aws-cpu", "aws", None, instance_profile="ml-data",
         prepare="groupadd --system docker && useradd --create-home --shell /bin/bash "
                 f"{RUNNER_USER} && usermod -aG docker {RUNNER_USER}"),
)  # fmt: skip


@dataclass
class Booted:
    """One boot, ended: what the test saw while it ran, and the VM (halted) to inspect."""

    case: Case
    vm: Vm
    github: FakeGitHub
    metadata: Routes
    api: Routes
    archive_url: str
    secret: str
    gpus: int
    expires_at: float
    booted_at: float
    runner: tuple[int, int]
    # Commands run inside the live VM, by what they checked.
    probes: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    listening: list[Process] = field(default_factory=list)
    job: dict[str, Any] = field(default_factory=dict)

    @property
    def log(self) -> str:
        return self.vm.read(f"{HOME}/instance.log")


def cannot_run(reason: str) -> None:
    """Outside CI a machine without namespaces or mmdebstrap skips, saying why; in CI (where
    .ci/run installs mmdebstrap as root) that is a failure, never a silent skip."""
    if os.environ.get("CI"):
        pytest.fail(f"the VM boot cannot run here, and CI is set: {reason}", pytrace=False)
    pytest.skip(f"the VM boot cannot run here: {reason}")


@pytest.fixture(scope="module")
def base_rootfs() -> Path:
    reason = rootfs.unavailable()
    if reason is None:
        try:
            return rootfs.base()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            reason = f"the Debian root file system could not be built: {exc}"
    cannot_run(reason)
    raise AssertionError("unreachable")


@pytest.fixture(scope="module", params=CASES, ids=[case.id for case in CASES])
def booted(
    request: pytest.FixtureRequest, base_rootfs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Booted]:
    work = tmp_path_factory.mktemp(request.param.name)
    with VmBoot(request.param, base_rootfs, work) as done:
        yield done


# --- the boot ------------------------------------------------------------------------------------


class VmBoot:
    """Context manager: the whole boot of one case, from the fakes to the halted VM."""

    def __init__(self, case: Case, base: Path, work: Path) -> None:
        self.case, self.base, self.work = case, base, work
        self.closers: list[Callable[[], None]] = []

    def __enter__(self) -> Booted:
        try:
            return self._run()
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        while self.closers:
            self.closers.pop()()

    def _run(self) -> Booted:
        case = self.case
        netns = rootfs.NetNamespace(self.base)
        self.closers.append(netns.close)
        github = netns.call(lambda: FakeGitHub(token=TOKEN, repos=("octo/repo",), orgs=("octo",)))
        self.closers.append(github.close)
        # The double is GitHub's latest actions/runner release: `up` resolves it, the instance
        # downloads it from the fake and checks it against the checksum in its release notes.
        archive = build_archive(self.work / "archive")
        download = github.publish_runner(RUNNER_VERSION, archive)[PLATFORM]
        metadata = netns.call(lambda: MetadataService({}))
        self.closers.append(metadata.close)
        api = netns.call(lambda: Routes(api_routes(case)))
        self.closers.append(api.close)

        team_script = None
        if case.startup_script is not None:
            team_script = self.work / "team-startup.sh"
            team_script.write_text(case.startup_script, encoding="utf-8")
        # As `up` does it (lifecycle/up.py): plan, resolve the release, register, render.
        spec = build_spec(
            cloud=case.cloud, name=case.name, region=None, idle_timeout=f"{IDLE_TIMEOUT}s",
            ttl=f"{TTL}s", single=case.single, labels=("gpu",), command=(), gpu=case.gpu,
            size=None if case.gpu else "s", instance_profile=case.instance_profile,
            repo="octo/repo", github_url=github.url,
            startup_script=str(team_script) if team_script else None,
        )  # fmt: skip
        launch = prepare.plan(spec, None)
        forge = launch.forge(TOKEN)
        assert forge is not None
        release = netns.call(lambda: forge.resolve_runner(spec, launch.boot))
        launch = replace(launch, runner_release=release)
        registration = netns.call(lambda: forge.register(spec.name, launch.labels, spec.single))

        def amend(config: dict[str, Any]) -> None:
            config["endpoints"] = {"gcp_api": f"{api.url}/compute/v1", "azure_api": api.url}
            config["poll_seconds"] = 1

        script, config = amend_config(launch.startup_script(registration), amend)
        metadata.routes.update(metadata_routes(case, script))
        installs = config["runner"]["archive"]
        assert installs == {"url": download, "sha256": sha256(archive)}, installs

        gpus = launch.gpus
        vm = Vm(self.base, self.work / "vm", netns)
        self.closers.append(vm.halt)
        # The driver comes late (the first nvidia-smi fails), as on a Deep Learning VM image.
        vm.install_stubs(gpus=gpus, driver_late=1)
        if not case.systemd_run:
            vm.remove_stub("systemd-run")
        if case.cloud == "gcp":
            hosts = (self.base / "etc/hosts").read_text()
            vm.put("/etc/hosts", f"{hosts}{rootfs.METADATA_ADDRESS} metadata.google.internal\n")
        booted_at = time.time()
        vm.boot(script, prepare=case.prepare)
        result = Booted(
            case=case, vm=vm, github=github, metadata=metadata, api=api, archive_url=download,
            secret=registration.secret, gpus=gpus, expires_at=launch.expires_at.timestamp(),
            booted_at=booted_at, runner=(-1, -1),
        )  # fmt: skip

        wait_for(lambda: online(result), "the runner to be online in the fake GitHub", vm)
        wait_for(lambda: "Listening for Jobs" in result.log, "Listening for Jobs", vm)
        runner = vm.passwd(RUNNER_USER)
        assert runner is not None, f"no user {RUNNER_USER} in the VM"
        result.runner = runner
        result.listening = [p for p in vm.running() if p.program == "Runner.Listener"]
        result.probes = probe_live(result)
        # One job; then a multi-job runner idles out, a single-job one is done.
        job = github.queue_job(["self-hosted", f"cml-infra-{case.name}"], seconds=1)
        wait_for(lambda: github.job(job)["status"] == "completed", "the job to end", vm)
        result.job = github.job(job)
        wait_for(lambda: self_ends(result) >= 1, "the agent to end the instance", vm)
        fire_ttl_timer(result)
        vm.halt()
        return result


def wait_for(
    predicate: Callable[[], bool], what: str, vm: Vm, timeout: float = BOOT_TIMEOUT
) -> None:
    """Poll until `predicate`; a startup script that has exited, or the deadline, fails with
    what the VM logged."""
    deadline = time.monotonic() + timeout
    while not predicate():
        code = vm.startup_exit()
        if code is not None:
            raise AssertionError(
                f"the startup script exited with {code} before {what}\n{diagnosis(vm)}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what}\n{diagnosis(vm)}"
            )
        time.sleep(0.1)


def diagnosis(vm: Vm) -> str:
    def tail(text: str) -> str:
        return "\n".join(text.splitlines()[-40:])

    return (
        f"--- startup script output:\n{tail(vm.read(rootfs.STARTUP_LOG))}\n"
        f"--- instance.log:\n{tail(vm.read(f'{HOME}/instance.log'))}\n"
        f"--- stub calls:\n{json.dumps(vm.stub_calls())}"
    )


def online(result: Booted) -> bool:
    runner = next((r for r in result.github.runners(SCOPE) if r["name"] == result.case.name), None)
    return runner is not None and runner["status"] == "online"


def amend_config(
    script: str, amend: Callable[[dict[str, Any]], None]
) -> tuple[str, dict[str, Any]]:
    """The script with its agent config (the JSON heredoc) changed by `amend`."""
    head, opening, rest = script.partition(f"<<'{CONFIG_DELIMITER}'\n")
    body, closing, tail = rest.partition(f"\n{CONFIG_DELIMITER}\n")
    assert opening and closing, "no agent config heredoc in the startup script"
    config = json.loads(body)
    amend(config)
    return head + opening + json.dumps(config, indent=2) + closing + tail, config


def metadata_routes(case: Case, script: str) -> dict[tuple[str, str], tuple[Any, ...]]:
    """The cloud's metadata service, with what the runner user must not read: the user data
    (the registration is in it) and the VM identity's token."""
    if case.cloud == "aws":
        ttl = {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
        return {
            ("PUT", "/latest/api/token"): (200, IMDS_TOKEN, ttl),
            ("GET", "/latest/user-data"): (200, script, {"X-aws-ec2-metadata-token": IMDS_TOKEN}),
        }
    if case.cloud == "gcp":
        flavor = {"Metadata-Flavor": "Google"}
        base = "/computeMetadata/v1"
        return {
            ("GET", f"{base}/instance/service-accounts/default/token"): (
                200, {"access_token": GCP_VM_TOKEN, "expires_in": 3599, "token_type": "Bearer"},
                flavor,
            ),
            ("GET", f"{base}/project/project-id"): (200, GCP_PROJECT, flavor),
            ("GET", f"{base}/instance/zone"): (200, f"projects/123/zones/{GCP_ZONE}", flavor),
            ("GET", f"{base}/instance/name"): (200, case.name, flavor),
            ("GET", f"{base}/instance/attributes/startup-script"): (200, script, flavor),
        }  # fmt: skip
    header = {"Metadata": "true"}
    return {
        ("GET", "/metadata/identity/oauth2/token"): (
            200, {"access_token": AZURE_VM_TOKEN, "expires_in": "86399", "token_type": "Bearer"},
            header,
        ),
        ("GET", "/metadata/instance/compute"): (
            200, {"subscriptionId": AZURE_SUBSCRIPTION, "resourceGroupName": AZURE_GROUP,
                  "name": case.name}, header,
        ),
    }  # fmt: skip


def api_routes(case: Case) -> dict[tuple[str, str], tuple[Any, ...]]:
    """The cloud API the agent ends the instance through; only the VM's own token is let in."""
    if case.cloud == "gcp":
        path = f"/compute/v1/projects/{GCP_PROJECT}/zones/{GCP_ZONE}/instances/{case.name}"
        operation = {"kind": "compute#operation", "name": "operation-vm-boot", "status": "RUNNING",
                     "operationType": "delete"}  # fmt: skip
        return {("DELETE", path): (200, operation, {"Authorization": f"Bearer {GCP_VM_TOKEN}"})}
    if case.cloud == "azure":
        path = f"/subscriptions/{AZURE_SUBSCRIPTION}/resourceGroups/{AZURE_GROUP}"
        return {("DELETE", path): (202, "", {"Authorization": f"Bearer {AZURE_VM_TOKEN}"})}
    return {}


# What the runner user must not read from the metadata service, per cloud (a shell command
# that succeeds only if it got the secret).
METADATA_SECRET = {
    "aws": (
        "t=$(curl -sf -m 3 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "
        "http://169.254.169.254/latest/api/token) && "
        'curl -sf -m 3 -H "X-aws-ec2-metadata-token: $t" http://169.254.169.254/latest/user-data'
    ),
    "gcp": (
        "curl -sf -m 3 -H 'Metadata-Flavor: Google' "
        "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"
    ),
    "azure": (
        "curl -sf -m 3 -H 'Metadata: true' 'http://169.254.169.254/metadata/identity/oauth2/"
        "token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F'"
    ),
}


def probe_live(result: Booted) -> dict[str, subprocess.CompletedProcess[str]]:
    """Checks that need the running VM: what root and the runner user can reach and read."""
    vm, secret = result.vm, METADATA_SECRET[result.case.cloud]
    return {
        "metadata as root": vm.enter("sh", "-c", secret),
        "metadata as runner": vm.enter("sh", "-c", secret, user=RUNNER_USER),
        # The control: the runner user's network works, but for the metadata service.
        "github as runner": vm.enter(
            "curl", "-sf", "-m", "3", "-o", "/dev/null", result.archive_url, user=RUNNER_USER
        ),
        "config as runner": vm.enter("cat", f"{HOME}/agent-config.json", user=RUNNER_USER),
        "groups of runner": vm.enter("id", "-nG", RUNNER_USER),
    }


def self_ends(result: Booted) -> int:
    """How often the instance has been ended the cloud's way so far."""
    if result.case.cloud == "aws":
        return sum(call["argv"] == ["-h", "now"] for call in result.vm.stub_calls("shutdown"))
    return sum(r["method"] == "DELETE" for r in result.api.requests)


def fire_ttl_timer(result: Booted) -> None:
    """Run the TTL timer's command as systemd would at its deadline: the instance ends again."""
    calls = result.vm.stub_calls("systemd-run")
    if not calls:
        return
    argv = calls[0]["argv"]
    # systemd-run's own options come first, then the command it runs.
    count = next(i for i, arg in enumerate(argv) if not arg.startswith("--"))
    options, command = argv[:count], argv[count:]
    folder = next(
        (o.split("=", 1)[1] for o in options if o.startswith("--working-directory=")), "/"
    )
    before = self_ends(result)
    shell = f"cd {shlex.quote(folder)} && exec env -i PATH={rootfs.VM_PATH} {shlex.join(command)}"
    with (result.vm.work / "ttl-timer.log").open("wb") as out:
        # nsenter forks into the VM's PID namespace; that child ends with the VM.
        timer = subprocess.Popen(
            ["nsenter", f"--target={result.vm.pid1}", "--mount", "--pid", "--net", "--root",
             "--wd=/", "--", "/bin/sh", "-c", shell],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(lambda: self_ends(result) > before, "the TTL timer's command to end the instance",
                 result.vm, timeout=30)  # fmt: skip
    finally:
        timer.kill()
        timer.wait()


# --- the assertions, per cloud ------------------------------------------------------------------


def test_runner_is_online_and_takes_a_job(booted: Booted) -> None:
    assert "Listening for Jobs" in booted.log
    assert booted.job["runner_name"] == booted.case.name
    assert booted.job["conclusion"] == "success"
    # The VM installed GitHub's latest release, from GitHub (the fake's download host).
    assert [d for d in booted.github.downloads if RUNNER_VERSION in d and PLATFORM in d]
    assert booted.github.violations == []


def test_runner_user_exists_and_owns_only_what_it_must(booted: Booted) -> None:
    vm, (uid, gid) = booted.vm, booted.runner
    assert uid != 0 and gid != 0
    owned = sorted(vm.inside(p) for p in vm.written() if p.lstat().st_uid == uid)
    assert owned, "the runner user owns nothing: not even its home"
    stray = [p for p in owned if not p.startswith(tuple(f"{root}/" for root in RUNNER_MAY_OWN))
             and p not in RUNNER_MAY_OWN]  # fmt: skip
    assert stray == []
    assert f"{HOME}/runner/run.sh" in owned


def test_agent_config_and_secrets_are_root_only(booted: Booted) -> None:
    vm = booted.vm
    for private in (f"{HOME}/agent-config.json", rootfs.STARTUP_SCRIPT):
        info = vm.file(private).stat()
        assert (info.st_uid, info.st_mode & 0o777) == (0, 0o600), private
    home = vm.file(HOME).stat()
    assert home.st_uid == 0 and not home.st_mode & 0o002, "the agent's folder is writable by others"
    # Every file that holds the registration: its owner's alone, and that owner root or the runner.
    for path in regular_files(vm):
        if booted.secret.encode() in path.read_bytes():
            info = path.lstat()
            assert info.st_uid in (0, booted.runner[0]), vm.inside(path)
            assert info.st_mode & 0o077 == 0, f"{vm.inside(path)} is {info.st_mode & 0o777:o}"
    denied = booted.probes["config as runner"]
    assert denied.returncode != 0 and booted.secret not in denied.stdout


def test_runner_runs_as_its_user(booted: Booted) -> None:
    uid, gid = booted.runner
    assert booted.listening, "no Runner.Listener process while the runner listened"
    runner_programs = {"config.sh", "run.sh", "Runner.Listener", "Runner.Worker"}
    seen = [p for p in booted.vm.seen if p.program in runner_programs]
    assert {p.program for p in seen} >= {"Runner.Listener"}
    assert "Runner.Worker" in {p.program for p in seen}, "the job's worker was never seen"
    wrong = [
        (p.program, p.uids, p.gids) for p in seen if set(p.uids) != {uid} or set(p.gids) != {gid}
    ]
    assert wrong == []
    agents = [p for p in booted.vm.seen if "cml_infra_agent" in p.argv]
    assert any(set(p.uids) == {0} for p in agents), "the agent never ran as root"
    # A process the agent forks shows the agent's argv until it execs: as the runner user, it
    # may only be on its way to the runner's scripts.
    forks = {p.pid for p in agents if set(p.uids) != {0}}
    assert forks <= {p.pid for p in seen}, [p for p in agents if p.pid in forks]


def test_ttl_timer_is_armed(booted: Booted) -> None:
    left = booted.expires_at - booted.booted_at
    timers = booted.vm.stub_calls("systemd-run")
    if booted.case.systemd_run:
        assert len(timers) == 1, timers
        argv = timers[0]["argv"]
        delay = next(a for a in argv if a.startswith("--on-active="))
        seconds = int(delay.removeprefix("--on-active=").removesuffix("s"))
        assert left - 30 <= seconds <= left + 1
        assert argv[-2:] == ["--end-now", "ttl reached"]
        assert "--unit=cml-infra-ttl" in argv
        assert self_ends(booted) == 2, "the TTL timer's command did not end the instance"
        timer_log = (booted.vm.work / "ttl-timer.log").read_text()
        assert "ending the instance: ttl reached" in timer_log, timer_log
    else:
        assert timers == []
        fallback = [
            c["argv"] for c in booted.vm.stub_calls("shutdown") if c["argv"] != ["-h", "now"]
        ]
        assert len(fallback) == 1, fallback
        minutes = int(fallback[0][1].removeprefix("+"))
        assert fallback[0][0] == "-h"
        assert math.ceil((left - 30) / 60) <= minutes <= math.ceil((left + 1) / 60)


def test_gpu_wait_and_toolkit_decision_are_logged(booted: Booted) -> None:
    log, groups = booted.log, booted.probes["groups of runner"].stdout.split()
    if booted.case.gpu is None:
        # A CPU runner without --docker: no GPU wait, and no docker group (root on the VM)
        # for its jobs, even where the image had put the runner user in it.
        assert booted.vm.stub_calls("nvidia-smi") == []
        assert "GPU wait" not in log
        assert "docker" not in groups
        return
    n = booted.gpus
    assert n >= 1
    assert re.search(rf"GPU wait: expecting {n} GPU", log), log
    # The first nvidia-smi failed (the driver came late): the wait said so, then saw them all.
    assert re.search(rf"GPU wait: 0/{n} GPUs after \d+s \(nvidia-smi exited with 9", log), log
    assert re.search(rf"GPU ready: nvidia-smi sees {n} GPU\(s\) after \d+s", log), log
    assert "docker present, skipping its install" in log
    assert "nvidia-container-toolkit present (nvidia-ctk), skipping its install" in log
    # Before the runner took jobs: its download starts after the GPUs are there.
    assert log.index("GPU ready") < log.index("downloading the runner")
    # --docker is on by default for GPU runners.
    assert f"adding {RUNNER_USER} to the docker group" in log
    assert "docker" in groups


def test_the_team_script_runs_as_root_before_the_gpu_wait(booted: Booted) -> None:
    log, vm = booted.log, booted.vm
    if booted.case.startup_script is None:
        assert "startup script:" not in log
        return
    assert vm.read(TEAM_MARKER).strip() == "0", "the team's script did not run as root"
    lines = log.splitlines()
    assert lines.index(TEAM_LINE) < next(i for i, x in enumerate(lines) if "GPU wait" in x), log
    assert re.search(r"startup script: done in \d+s", log), log
    # Written privately, beside the agent, as given.
    written = vm.file(f"{HOME}/team-startup-script")
    assert written.read_text() == booted.case.startup_script
    assert (written.stat().st_uid, written.stat().st_mode & 0o777) == (0, 0o700)


def test_self_end_reaches_the_cloud_with_the_vm_identity(booted: Booted) -> None:
    log, cloud = booted.log, booted.case.cloud
    ending = "runner finished its job" if booted.case.single else f"idle for {IDLE_TIMEOUT}s"
    assert f"ending the instance: {ending}" in log, log
    if cloud == "aws":
        ends = [c for c in booted.vm.stub_calls("shutdown") if c["argv"] == ["-h", "now"]]
        assert ends and all(c["uid"] == 0 for c in ends)
        return
    deletes = [r for r in booted.api.requests if r["method"] == "DELETE"]
    assert deletes, booted.api.requests
    token = GCP_VM_TOKEN if cloud == "gcp" else AZURE_VM_TOKEN
    assert all(r["headers"].get("authorization") == f"Bearer {token}" for r in deletes)
    assert all((r["method"], r["path"]) in api_routes(booted.case) for r in deletes)
    # The identity came from the metadata service, asked as the cloud requires.
    asked = [r for r in booted.metadata.requests if "token" in r["path"]]
    assert asked and all(
        r["headers"].get("metadata-flavor") == "Google" or r["headers"].get("metadata") == "true"
        for r in asked
    )


def test_runner_user_cannot_read_the_metadata_secrets(booted: Booted) -> None:
    as_root, as_runner = booted.probes["metadata as root"], booted.probes["metadata as runner"]
    assert as_root.returncode == 0, f"root could not reach the metadata service: {as_root.stderr}"
    control = booted.probes["github as runner"]
    assert control.returncode == 0, f"the runner user reaches nothing: {control.stderr}"
    if booted.case.instance_profile:
        # A role for the job's data: its credentials come from the metadata service, which
        # stays open to jobs, user data included (as the README says).
        assert as_runner.returncode == 0, as_runner.stderr
        return
    # curl's 7: the connection was refused (the firewall's REJECT), not any other failure.
    assert as_runner.returncode == 7, "the runner user read the instance's metadata secrets"
    assert booted.secret not in as_runner.stdout


def test_the_token_is_nowhere_in_the_vm(booted: Booted) -> None:
    vm = booted.vm
    assert vm.seen, "the sampler saw no process"
    in_processes = [p.argv for p in vm.seen if any(TOKEN in text for text in (*p.argv, *p.environ))]
    assert in_processes == []
    in_files = [vm.inside(p) for p in regular_files(vm) if TOKEN.encode() in p.read_bytes()]
    assert in_files == []
    stubs = json.dumps(vm.stub_calls())
    assert TOKEN not in stubs and booted.secret not in stubs


def test_the_registration_is_in_no_process_arguments(booted: Booted) -> None:
    holding = [p.argv[:3] for p in booted.vm.seen if any(booted.secret in a for a in p.argv)]
    assert holding == []
    # In an environment only where the runner reads it: config.sh's or run.sh's, and what those
    # run (as the runner user), never a job's (Runner.Worker) nor any other user's process.
    uid = booted.runner[0]
    environ = [
        (p.argv[:3], p.uids)
        for p in booted.vm.seen
        if any(booted.secret in e for e in p.environ)
        and (set(p.uids) != {uid} or p.program == "Runner.Worker")
    ]
    assert environ == []


def regular_files(vm: Vm) -> list[Path]:
    """The regular files the boot wrote (not links, devices or overlay whiteouts)."""
    return [p for p in vm.written() if p.is_file() and not p.is_symlink()]
