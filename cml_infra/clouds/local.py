"""The `local` cloud: an "instance" is a sandbox folder on this machine running the startup script
in a process group of its own. It exercises the whole lifecycle with real Terraform and no
credentials; module `terraform/local/` needs no provider download."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

from cml_infra import resources
from cml_infra.clouds import register
from cml_infra.clouds.base import Boot, Cloud, Feature, ManagedInstance, Placement, RenderContext
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.spec import RunnerSpec
from cml_infra.terraform import environment_without_secrets

REGION = "local"
# How long the module waits for the agent to report before it calls the boot failed.
READY_TIMEOUT_SECONDS = 60


@register("local")
class LocalCloud(Cloud):
    module = "local"
    UNSUPPORTED: ClassVar[dict[Feature, str]] = {
        Feature.SPOT: "a local instance is never preempted",
        Feature.GPU: "the local cloud runs on this machine, which it does not partition",
    }

    @property
    def instances_root(self) -> Path:
        return self.state_dir / "local" / "instances"

    def resolve(self, spec: RunnerSpec) -> Placement:
        if spec.region not in (None, REGION):
            raise UsageError(
                "--region", f"unknown region {spec.region!r} for cloud local; valid: local"
            )
        if spec.gpu is not None:
            raise UsageError("--gpu", f"not on the local cloud: {self.UNSUPPORTED[Feature.GPU]}")
        if spec.spot:
            raise UsageError("--spot", f"not on the local cloud: {self.UNSUPPORTED[Feature.SPOT]}")
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
        return Placement(cloud=self.name, region=REGION, instance_type="process", hourly_price=0.0)

    def boot(self, spec: RunnerSpec) -> Boot:
        # The instance ends itself with a `down` of its own workspace, run by this same install.
        return Boot(
            self_destroy=(
                sys.executable,
                "-m",
                "cml_infra",
                "down",
                spec.name,
                "--state-dir",
                str(self.state_dir),
            ),
            python=sys.executable,
            home=str(self.instances_root / spec.name),
        )

    def module_vars(
        self, spec: RunnerSpec, placement: Placement, context: RenderContext
    ) -> dict[str, Any]:
        return {
            "name": spec.name,
            "instances_root": str(self.instances_root),
            "startup_script": context.startup_script,
            "created_at": context.created_at.isoformat(),
            "tags": context.tags(spec),
            "log_archive_dir": str(self.state_dir / "runners" / spec.name / "logs"),
            "ready_timeout_seconds": READY_TIMEOUT_SECONDS,
        }

    def list_managed(self, regions: Iterable[str] | None) -> list[ManagedInstance]:
        if (regions is not None and REGION not in set(regions)) or not self.instances_root.is_dir():
            return []
        found = []
        for sandbox in sorted(self.instances_root.iterdir()):
            if sandbox.is_dir():
                found.append(self._describe(sandbox))
        return [instance for instance in found if instance.tags.get("cml-infra-managed") == "true"]

    def terminate(self, ids: Iterable[str]) -> None:
        script = resources.module_dir(self.module) / "scripts" / "destroy.sh"
        for instance_id in ids:
            sandbox = self.instances_root / instance_id
            env = {
                **environment_without_secrets(),
                "SANDBOX": str(sandbox),
                "LOG_ARCHIVE_DIR": str(self.state_dir / "runners" / instance_id / "logs"),
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
            self.state_dir / "runners" / name / "logs" / "instance.log",
        ):
            if path.is_file():
                return path
        return None

    def _describe(self, sandbox: Path) -> ManagedInstance:
        meta = _read_json(sandbox / "instance.json")
        status = _read_json(sandbox / "agent-status.json")
        tags = {str(k): str(v) for k, v in meta.get("tags", {}).items()}
        # A sandbox whose create step died before writing instance.json is still ours to reap.
        tags.setdefault("cml-infra-managed", "true")
        tags.setdefault("cml-infra-name", sandbox.name)
        alive = _group_alive(sandbox / "pgid")
        state = str(status.get("state", "booting")) if alive else "stopped"
        idle_seconds = None
        if alive and state == "idle" and "last_activity" in status:
            idle_seconds = max(0.0, time.time() - float(status["last_activity"]))
        expires = tags.get("cml-infra-expires", "")
        return ManagedInstance(
            id=sandbox.name,
            name=tags["cml-infra-name"],
            cloud=self.name,
            region=REGION,
            state=state,
            created_at=_parse_time(meta.get("created_at")),
            expires_at=datetime.fromtimestamp(int(expires), timezone.utc)
            if expires.isdigit()
            else None,
            tags=tags,
            idle_seconds=idle_seconds,
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _parse_time(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def _group_alive(pgid_file: Path) -> bool:
    try:
        pgid = int(pgid_file.read_text(encoding="utf-8").strip())
        os.killpg(pgid, 0)
    except (OSError, ValueError):
        return False
    return True
