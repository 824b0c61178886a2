"""cml_infra.clouds: the registry and the local cloud (sandboxes on this machine)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from cml_infra import clouds, resources
from cml_infra.clouds.base import Cloud, ErrorClass, Feature, Placement, RenderContext
from cml_infra.clouds.local import READY_TIMEOUT_SECONDS, LocalCloud
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.spec import RunnerSpec


def _spec(**changes):
    fields = {"name": "box-1", "cloud": "local", "idle_timeout": 60, "ttl": 3600}
    fields.update(changes)
    return RunnerSpec(**fields)


@pytest.fixture
def cloud(tmp_path):
    return clouds.get("local", tmp_path / "state")


@pytest.mark.parametrize("name", ["local", "LOCAL", "Local"])
def test_get_local(name, tmp_path):
    cloud = clouds.get(name, tmp_path)
    assert isinstance(cloud, LocalCloud)
    assert cloud.name == "local"
    assert cloud.state_dir == tmp_path


UNKNOWN_CLOUD_CHOICES = "valid: aws, azure, gcp, local (aliases: az, ec2, gce, google)"


def test_names():
    assert clouds.names() == ["aws", "azure", "gcp", "local"]


def test_get_unknown_lists_valid_names(tmp_path):
    with pytest.raises(UsageError) as caught:
        clouds.get("gpc", tmp_path)
    message = str(caught.value)
    assert caught.value.source == "--cloud"
    assert message.startswith("--cloud: unknown cloud 'gpc'")
    assert message.endswith(UNKNOWN_CLOUD_CHOICES)
    assert not (tmp_path / "local").exists()


def test_get_unknown_names_every_cloud_and_alias(tmp_path):
    with pytest.raises(UsageError) as caught:
        clouds.get("nope", tmp_path)
    message = str(caught.value)
    assert caught.value.source == "--cloud"
    assert message.startswith("--cloud: unknown cloud 'nope'; valid: ")
    listed = re.findall(r"[a-z0-9]+", message.partition("valid: ")[2])
    assert set(listed) >= {*clouds.names(), "az", "ec2", "gce", "google"}
    assert "did you mean" not in message
    assert not (tmp_path / "local").exists()


@pytest.mark.parametrize(
    ("alias", "name"),
    [("ec2", "aws"), ("AWS", "aws"), ("google", "gcp"), ("gce", "gcp"), ("az", "azure")],
)
def test_get_by_alias(alias, name, tmp_path):
    cloud = clouds.get(alias, tmp_path)
    assert cloud.name == name
    assert cloud.state_dir == tmp_path


def test_get_unknown_suggests_a_close_name(tmp_path):
    with pytest.raises(UsageError, match=r"did you mean 'local'\?"):
        clouds.get("locl", tmp_path)


def test_get_unknown_uses_the_given_flag(tmp_path):
    with pytest.raises(UsageError, match=r"^runner-a: cloud: unknown cloud"):
        clouds.get("nope", tmp_path, flag="runner-a: cloud")


@pytest.mark.parametrize("region", [None, "local"])
def test_resolve(cloud, region):
    assert cloud.resolve(_spec(region=region)) == Placement(
        cloud="local", region="local", instance_type="process", hourly_price=0.0
    )


def test_resolve_unknown_region(cloud):
    with pytest.raises(UsageError) as caught:
        cloud.resolve(_spec(region="us-east-1"))
    assert caught.value.source == "--region"
    assert str(caught.value).startswith("--region: ")
    assert "'us-east-1'" in str(caught.value)
    assert "valid: local" in str(caught.value)


def test_boot_runs_our_own_down(cloud, tmp_path):
    boot = cloud.boot(_spec())
    assert boot.self_destroy == (
        sys.executable,
        "-m",
        "cml_infra",
        "down",
        "box-1",
        "--state-dir",
        str(tmp_path / "state"),
    )
    assert boot.python == sys.executable
    assert boot.home == str(tmp_path / "state" / "local" / "instances" / "box-1")


def test_module_vars(cloud, tmp_path):
    created = datetime(2030, 1, 1, tzinfo=timezone.utc)
    expires = created + timedelta(hours=2)
    spec = _spec()
    context = RenderContext(tmp_path / "state", "#!/bin/sh\n", created, expires)
    variables = cloud.module_vars(spec, cloud.resolve(spec), context)
    assert variables == {
        "name": "box-1",
        "instances_root": str(tmp_path / "state" / "local" / "instances"),
        "startup_script": "#!/bin/sh\n",
        "created_at": "2030-01-01T00:00:00+00:00",
        "tags": {
            "cml-infra-managed": "true",
            "cml-infra-name": "box-1",
            "cml-infra-expires": str(int(expires.timestamp())),
        },
        "log_archive_dir": str(tmp_path / "state" / "runners" / "box-1" / "logs"),
        "ready_timeout_seconds": READY_TIMEOUT_SECONDS,
    }
    assert json.loads(json.dumps(variables)) == variables


def test_module_vars_match_the_module_variables(cloud, tmp_path):
    """Every variable we pass is declared by terraform/local, and every required one is passed."""
    text = (resources.module_dir("local") / "variables.tf").read_text()
    declared = dict(re.findall(r'variable "(\w+)" \{(.*?)\n\}', text, flags=re.DOTALL))
    now = datetime.now(timezone.utc)
    spec = _spec()
    variables = cloud.module_vars(spec, cloud.resolve(spec), RenderContext(tmp_path, "", now, now))
    assert set(variables) <= set(declared)
    required = {key for key, body in declared.items() if "default" not in body}
    assert required <= set(variables)


def test_defaults(cloud):
    assert cloud.sensitive_vars() == frozenset({"startup_script"})
    assert cloud.classify("Error", "whatever") is ErrorClass.OTHER
    assert cloud.check() == (True, "no credentials needed")
    assert Feature.GPU in cloud.UNSUPPORTED
    assert Feature.SPOT in cloud.UNSUPPORTED


def test_list_managed_missing_root(cloud):
    assert cloud.list_managed(["local"]) == []
    assert not cloud.instances_root.exists()


def test_list_managed_empty_root(cloud):
    cloud.instances_root.mkdir(parents=True)
    assert cloud.list_managed(["local"]) == []


def test_list_managed_other_region(cloud):
    _sandbox(cloud, "box-1", pgid=_dead_pgid())
    assert cloud.list_managed(["us-east-1"]) == []
    assert cloud.list_managed([]) == []


def _dead_pgid():
    child = subprocess.Popen(["true"], start_new_session=True)
    child.wait()
    return child.pid


def _sandbox(cloud, name, pgid=None, tags=None, status=None, created_at="2030-01-01T00:00:00"):
    folder = cloud.instances_root / name
    folder.mkdir(parents=True)
    meta = {
        "id": name,
        "name": name,
        "created_at": created_at,
        "tags": tags
        if tags is not None
        else {
            "cml-infra-managed": "true",
            "cml-infra-name": name,
            "cml-infra-expires": "1893456000",
        },
    }
    (folder / "instance.json").write_text(json.dumps(meta))
    if pgid is not None:
        (folder / "pgid").write_text(f"{pgid}\n")
    if status is not None:
        (folder / "agent-status.json").write_text(json.dumps(status))
    return folder


def test_list_managed_stopped_sandbox(cloud):
    _sandbox(cloud, "box-1", pgid=_dead_pgid(), status={"state": "busy"})
    (cloud.instances_root / "stray-file").write_text("")
    [instance] = cloud.list_managed(["local"])
    assert instance.id == "box-1"
    assert instance.name == "box-1"
    assert instance.cloud == "local"
    assert instance.region == "local"
    assert instance.state == "stopped"
    assert instance.idle_seconds is None
    assert instance.created_at == datetime(2030, 1, 1)
    assert instance.expires_at == datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert instance.tags["cml-infra-managed"] == "true"


@pytest.mark.parametrize("pgid", [None, "not-a-number", ""])
def test_list_managed_without_a_usable_pgid_is_stopped(cloud, pgid):
    folder = _sandbox(cloud, "box-1")
    if pgid is not None:
        (folder / "pgid").write_text(pgid)
    [instance] = cloud.list_managed(["local"])
    assert instance.state == "stopped"


def test_list_managed_half_made_sandbox_is_still_ours(cloud):
    (cloud.instances_root / "half-made").mkdir(parents=True)
    [instance] = cloud.list_managed(["local"])
    assert instance.name == "half-made"
    assert instance.state == "stopped"
    assert instance.created_at is None
    assert instance.expires_at is None


def test_list_managed_skips_unmanaged_and_reads_bad_json(cloud):
    _sandbox(cloud, "foreign", tags={"cml-infra-managed": "false"})
    folder = _sandbox(cloud, "box-2")
    (folder / "instance.json").write_text("[1, 2")
    names = [i.name for i in cloud.list_managed(["local"])]
    assert names == ["box-2"]


@pytest.fixture
def live_group():
    """A real process group, reaped by a thread as soon as it dies (as init would)."""
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    reaper = threading.Thread(target=child.wait, daemon=True)
    reaper.start()
    yield child
    if child.poll() is None:
        child.kill()
    reaper.join(5)


def test_list_managed_live_idle_sandbox(cloud, live_group):
    last = time.time() - 42
    _sandbox(cloud, "box-1", pgid=live_group.pid, status={"state": "idle", "last_activity": last})
    [instance] = cloud.list_managed(["local"])
    assert instance.state == "idle"
    assert 41 <= instance.idle_seconds <= 60


def test_list_managed_live_busy_and_booting(cloud, live_group):
    _sandbox(cloud, "box-1", pgid=live_group.pid, status={"state": "busy", "last_activity": 1})
    _sandbox(cloud, "box-2", pgid=live_group.pid)
    busy, booting = cloud.list_managed(["local"])
    assert (busy.state, busy.idle_seconds) == ("busy", None)
    assert booting.state == "booting"


def test_terminate_missing_id_is_fine(cloud):
    cloud.terminate(["never-existed"])
    cloud.instances_root.mkdir(parents=True)
    cloud.terminate(["never-existed", "also-gone"])
    cloud.terminate([])


def test_terminate_stops_the_group_and_keeps_the_log(cloud, live_group, tmp_path):
    folder = _sandbox(cloud, "box-1", pgid=live_group.pid, status={"state": "busy"})
    (folder / "instance.log").write_text("agent line\n")
    started = time.monotonic()
    cloud.terminate(["box-1"])
    assert time.monotonic() - started < 8
    assert live_group.wait(5) is not None
    assert not folder.exists()
    archived = tmp_path / "state" / "runners" / "box-1" / "logs" / "instance.log"
    assert archived.read_text() == "agent line\n"
    assert cloud.list_managed(["local"]) == []
    cloud.terminate(["box-1"])  # again: already gone


def test_terminate_reports_a_failed_destroy(cloud, tmp_path, monkeypatch):
    module = tmp_path / "module"
    (module / "scripts").mkdir(parents=True)
    (module / "scripts" / "destroy.sh").write_text(
        'echo "$SANDBOX|$LOG_ARCHIVE_DIR" >"$(dirname "$0")/seen"\n'
        'echo "permission denied" >&2\n'
        "exit 1\n"
    )
    monkeypatch.setattr(resources, "module_dir", lambda name: module)
    with pytest.raises(CmlInfraError) as caught:
        cloud.terminate(["box-1"])
    assert str(caught.value) == "local instance box-1: could not stop it: permission denied"
    sandbox, archive = (module / "scripts" / "seen").read_text().strip().split("|")
    assert sandbox == str(cloud.instances_root / "box-1")
    assert archive == str(tmp_path / "state" / "runners" / "box-1" / "logs")


def test_instance_log_prefers_the_sandbox_then_the_archive(cloud, tmp_path):
    assert cloud.instance_log("box-1") is None
    archive = tmp_path / "state" / "runners" / "box-1" / "logs"
    archive.mkdir(parents=True)
    (archive / "instance.log").write_text("old")
    assert cloud.instance_log("box-1") == archive / "instance.log"
    folder = _sandbox(cloud, "box-1")
    (folder / "instance.log").write_text("new")
    assert cloud.instance_log("box-1") == folder / "instance.log"
    assert os.path.isfile(cloud.instance_log("box-1"))


@pytest.mark.parametrize(
    ("flag", "changes", "fragment"),
    [
        ("--gpu", {"gpu": "t4", "gpu_count": 1}, "not on the local cloud"),
        ("--spot", {"spot": True}, "not on the local cloud"),
        ("--size", {"size": "m"}, "sizes, types and images apply to aws, gcp and azure"),
        ("--type", {"instance_type": "m7i.large"}, "sizes, types and images apply to aws"),
        ("--image", {"image": "ami-0123456789abcdef0"}, "sizes, types and images apply to aws"),
    ],
)
def test_resolve_rejects_vm_flags(cloud, flag, changes, fragment):
    with pytest.raises(UsageError) as caught:
        cloud.resolve(_spec(**changes))
    assert caught.value.source == flag
    assert str(caught.value).startswith(f"{flag}: ")
    assert fragment in str(caught.value)
    assert not cloud.state_dir.exists()


def test_module_vars_carry_the_user_tags(cloud, tmp_path):
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    spec = _spec(tags={"team": "ml"})
    context = RenderContext(tmp_path / "state", "", now, now)
    assert cloud.module_vars(spec, cloud.resolve(spec), context)["tags"] == {
        "team": "ml",
        "cml-infra-managed": "true",
        "cml-infra-name": "box-1",
        "cml-infra-expires": str(int(now.timestamp())),
    }


def test_render_context_tags_are_ours(tmp_path):
    expires = datetime(2030, 1, 1, tzinfo=timezone.utc)
    context = RenderContext(tmp_path, "", expires, expires)
    tags = context.tags(_spec(tags={"team": "ml"}))
    assert tags["cml-infra-managed"] == "true"
    assert tags["cml-infra-name"] == "box-1"
    assert tags["cml-infra-expires"] == "1893456000"


def test_boot_is_abstract(tmp_path):
    class NoBoot(Cloud):
        module = "none"

        def resolve(self, spec):
            raise NotImplementedError

        def module_vars(self, spec, placement, context):
            return {}

        def list_managed(self, regions):
            return []

        def terminate(self, ids):
            pass

    with pytest.raises(TypeError, match="boot"):
        NoBoot(tmp_path)


def test_local_terminate_keeps_the_token_from_its_destroy_script(cloud, monkeypatch):
    # The destroy script is a process the launcher starts, like Terraform: no forge token in it.
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_unit_CANARY_local")
    seen: list[dict[str, str]] = []

    def run(argv, *, env, **kwargs):
        seen.append(env)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr("cml_infra.clouds.local.subprocess.run", run)
    cloud.terminate(["box-1"])
    assert len(seen) == 1 and "GITHUB_TOKEN" not in seen[0]
    assert "ghp_unit_CANARY_local" not in "".join(seen[0].values())
    assert seen[0]["SANDBOX"].endswith("box-1")
