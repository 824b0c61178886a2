"""The `local` cloud: an "instance" is a sandbox folder on this machine running the startup script
in a process group of its own. It exercises the whole lifecycle with real Terraform and no
credentials; module `terraform/local/` needs no provider download."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

from cml_infra import packaged
from cml_infra.clouds import register, tags
from cml_infra.clouds.base import Boot, Cloud, Feature, ManagedInstance, RenderContext
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.placement import Placement
from cml_infra.spec import RunnerSpec
from cml_infra.state import StateDir
from cml_infra.terraform import environment_without_secrets

REGION = "local"
# How long the module waits for the agent to report before it calls the boot failed.
READY_TIMEOUT_SECONDS = 60
# The module hands the startup script to its create step as the environment string
# `STARTUP_SCRIPT=<script>`, and Linux takes none longer than 128 KiB with its NUL
# (MAX_ARG_STRLEN): the local cloud's user data limit.
STARTUP_SCRIPT_LIMIT = 128 * 1024 - len("STARTUP_SCRIPT=") - 1
# A metadata service (as AWS's instance metadata answers) that the local cloud's instances ask
# for spot interruption notices: with it, `--spot` is a rehearsal of preemption handling
# (checkpoints, outputs, --retry-on-preemption) on this machine.
SPOT_METADATA_ENV = "CML_INFRA_LOCAL_SPOT_METADATA"
# What a pgid file may hold to name an instance's process group: a decimal integer above 1
# (`kill -- -1` is every process, `-0` the caller's own group), as destroy.sh checks it.
_PGID = re.compile(r"[1-9][0-9]{0,6}")


@register("local")
class LocalCloud(Cloud):
    module = "local"
    ON_THIS_MACHINE = True
    # The listing reads this machine's folders: never behind.
    LISTING_LAG = timedelta(0)
    REAPED: ClassVar[Mapping[str, str]] = {
        "terraform_data": "with the instance: it is the sandbox, whose process group and "
        "folder terminate (destroy.sh) removes; nothing is made beside it",
    }
    UNSUPPORTED: ClassVar[dict[Feature, str]] = {
        Feature.SPOT: "a local instance is never preempted",
        Feature.GPU: "the local cloud runs on this machine, which it does not partition",
    }

    @property
    def home(self) -> StateDir:
        if self.state is None:
            raise CmlInfraError("the local cloud keeps its instances in a state dir; none given")
        return self.state

    @property
    def instances_root(self) -> Path:
        return self.home.local_root / "instances"

    def resolve(
        self, spec: RunnerSpec, *, region: str | None, spot: bool, max_price: float | None
    ) -> Placement:
        if region not in (None, REGION):
            raise UsageError("--region", f"unknown region {region!r} for cloud local; valid: local")
        if spec.gpu is not None:
            raise UsageError("--gpu", f"not on the local cloud: {self.UNSUPPORTED[Feature.GPU]}")
        if spot and not spot_rehearsal():
            raise UsageError(
                "--spot",
                f"not on the local cloud: {self.UNSUPPORTED[Feature.SPOT]} (to rehearse "
                f"preemption, set {SPOT_METADATA_ENV} to a metadata service that sends AWS's "
                "spot interruption notice)",
            )
        for flag, value in (
            ("--size", spec.size),
            ("--type", spec.instance_type),
            ("--image", spec.image),
        ):
            if value is not None:
                raise UsageError(
                    flag,
                    "the local cloud runs each instance as a process on this machine; "
                    "sizes, types and images apply to aws, gcp and azure",
                )
        # Its jobs run as you, with whatever credentials and groups you have: no role to give
        # them, and no Docker to install on this machine.
        spec.data_identity_for(self.name, None)
        # Its "instance" is a process here, on this machine's network and disk: it takes none.
        self.network_of(spec)
        if spec.docker:
            raise UsageError(
                "--docker", "the local cloud runs jobs as you: they use Docker if you may"
            )
        return Placement(
            cloud=self.name, region=REGION, instance_type="process", hourly_price=0.0, spot=spot
        )

    def boot(self, spec: RunnerSpec) -> Boot:
        return Boot(
            self_destroy=self._self_destroy(spec.name),
            python=sys.executable,
            home=str(self.instances_root / spec.name),
            poll_seconds=1,
            # As whoever runs cml-infra: this machine has no user made for it.
            runner_user=None,
            reads_launcher_files=True,
            # A spot rehearsal: the agent watches the given metadata service as on AWS.
            preemption_probe="aws-spot-notice" if spec.spot else None,
            endpoints={"aws_metadata": spot_rehearsal() or ""} if spec.spot else {},
        )

    def _self_destroy(self, name: str) -> tuple[str, ...]:
        """With the ledger in this state dir, the instance ends itself with a `down` of its own
        workspace, run by this same install. With a backend it ends the way a VM does: the
        instance goes and its Terraform state stays for `cleanup` (or `down`) to finish, since
        an instance has a clean environment and so no credential of the store."""
        if not self.home.remote:
            return (sys.executable, "-m", "cml_infra", "down", name, *self.home.cli_args())
        script = packaged.module_dir(self.module) / "scripts" / "destroy.sh"
        return (
            "env",
            f"SANDBOX={self.instances_root / name}",
            f"LOG_ARCHIVE_DIR={self.home.instance_logs(name)}",
            "sh",
            str(script),
        )

    def module_vars(
        self, spec: RunnerSpec, placement: Placement, context: RenderContext
    ) -> dict[str, Any]:
        size = len(context.startup_script.encode("utf-8"))
        if size > STARTUP_SCRIPT_LIMIT:
            sizes = (
                f"{size:,} bytes; the local cloud hands it to the instance in an environment "
                f"variable, which Linux caps at {STARTUP_SCRIPT_LIMIT:,} bytes"
            )
            if spec.startup_script is None:
                raise UsageError("startup script", sizes)
            raise UsageError(
                "--startup-script",
                f"your script ({len(spec.startup_script.encode('utf-8')):,} bytes) makes the "
                f"startup script {sizes}",
            )
        return {
            "name": spec.name,
            "instances_root": str(self.instances_root),
            "startup_script": context.startup_script,
            "created_at": context.created_at.isoformat(),
            "tags": tags.managed_tags(
                spec, context.expires_at, context.launch_id, context.created_at
            ),
            "log_archive_dir": str(self.home.instance_logs(spec.name)),
            "ready_timeout_seconds": READY_TIMEOUT_SECONDS,
        }

    def searched_regions(self, regions: Iterable[str] | None) -> Iterable[str] | None:
        return None  # one region, whatever `cleanup --region` names

    def list_managed(self, regions: Iterable[str] | None) -> list[ManagedInstance]:
        if (regions is not None and REGION not in set(regions)) or not self.instances_root.is_dir():
            return []
        found = []
        for sandbox in sorted(self.instances_root.iterdir()):
            if sandbox.is_dir():
                found.append(self._describe(sandbox))
        return [instance for instance in found if tags.is_managed(instance.tags)]

    def terminate(self, ids: Iterable[str]) -> None:
        script = packaged.module_dir(self.module) / "scripts" / "destroy.sh"
        for instance_id in ids:
            sandbox = self.instances_root / instance_id
            env = {
                **environment_without_secrets(),
                "SANDBOX": str(sandbox),
                "LOG_ARCHIVE_DIR": str(self.home.instance_logs(instance_id)),
            }
            done = subprocess.run(
                ["sh", str(script)], env=env, capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise CmlInfraError(
                    f"local instance {instance_id}: could not stop it: {done.stderr.strip()}"
                )

    def instance_log(self, name: str) -> Path | None:
        for path in (
            self.instances_root / name / "instance.log",
            self.home.instance_logs(name) / "instance.log",
        ):
            if path.is_file():
                return path
        return None

    def _describe(self, sandbox: Path) -> ManagedInstance:
        meta = _read_json(sandbox / "instance.json")
        status = _read_json(sandbox / "agent-status.json")
        found = meta.get("tags", {})
        found = {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}
        # A sandbox whose create step died before writing instance.json is still ours to reap.
        found.setdefault(tags.MANAGED, "true")
        state = _state(sandbox, status)
        idle_seconds = None
        if state == "idle" and "last_activity" in status:
            idle_seconds = max(0.0, time.time() - _number(status["last_activity"]))
        return tags.instance(
            found,
            id=sandbox.name,
            cloud=self.name,
            region=REGION,
            state=state,
            created_at=_parse_time(meta.get("created_at")),
            fallback_name=sandbox.name,
            idle_seconds=idle_seconds,
        )


def spot_rehearsal() -> str | None:
    """The rehearsal's metadata service (an http URL), if one is set."""
    url = os.environ.get(SPOT_METADATA_ENV, "").strip().rstrip("/")
    if not url:
        return None
    if not url.startswith("http://"):
        raise UsageError(SPOT_METADATA_ENV, f"{url!r}: a metadata service is asked over http://")
    return url


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _parse_time(value: object) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def _state(sandbox: Path, status: dict[str, Any]) -> str:
    """The agent's own state while it runs; `stopped` when the sandbox's process group is gone,
    `agent-dead` when the group lives on without its agent (nothing would ever end it)."""
    if not _group_alive(sandbox):
        return "stopped"
    if not status:
        return "booting"
    if not _agent_alive(status.get("pid"), sandbox):
        return "agent-dead"
    return str(status.get("state", "booting"))


def _group_alive(sandbox: Path) -> bool:
    """Whether the process group the sandbox's pgid file names lives and is the sandbox's, as
    destroy.sh decides before it signals one: an integer above 1, and a live member of the group
    works in the sandbox (a pgid is reused once its group is gone)."""
    try:
        # As the scripts read it: `$(cat pgid)` drops the trailing newlines, nothing else.
        text = (sandbox / "pgid").read_text(encoding="utf-8").rstrip("\n")
    except (OSError, ValueError):
        return False
    if not _PGID.fullmatch(text) or int(text) <= 1:
        return False
    pgid = int(text)
    try:
        os.killpg(pgid, 0)
    except OSError:
        return False
    return any(
        entry.name.isdigit()
        and _process_group(entry.name) == pgid
        and _works_in(int(entry.name), sandbox)
        for entry in Path("/proc").iterdir()
    )


def _process_group(pid: str) -> int | None:
    """The process group of a live (not zombie) process; None for a zombie or a gone one."""
    try:
        # The command name in parentheses may hold spaces: the fields follow the last ')'.
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[2])


def _agent_alive(pid: object, sandbox: Path) -> bool:
    """Whether `pid` is still this sandbox's agent (a pid is reused once its process is gone)."""
    if not isinstance(pid, int) or pid <= 1:
        return False
    return _process_group(str(pid)) is not None and _works_in(pid, sandbox)


def _works_in(pid: int, sandbox: Path) -> bool:
    """Whether process `pid` has its working folder in `sandbox` or below it."""
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    # The kernel reports the cwd with every symlink resolved; the state dir may have some.
    real = Path(os.path.realpath(sandbox))
    return cwd == real or real in cwd.parents
