"""What a VM's startup script does for the runner user before the agent starts the runner, run
for real with stand-ins for the system tools: the metadata services closed to it (unless a role
for the job's data was given), no docker group without --docker, a home it can only pass
through, and no runner at all when the firewall cannot be set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cml_infra import clouds, render
from cml_infra.spec import RunnerSpec

USER = "cml-runner"
AGENT = ["python3", "-m", render.AGENT_PACKAGE, "--config", "agent-config.json"]
# A stand-in records its argv; `id USER` says the user exists, `id -nG USER` prints GROUPS;
# FAIL_TOOLS lists the tools that fail, `-C` (is the rule there?) always does.
STAND_IN = """#!{python}
import json, os, sys
tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open({record!r}, "a") as out:
    out.write(json.dumps([tool, *args]) + "\\n")
if tool in os.environ.get("FAIL_TOOLS", "").split() or "-C" in args:
    sys.exit(1)
if tool == "id" and "-nG" in args:
    print(os.environ.get("GROUPS", ""))
"""
TOOLS = ("python3", "systemd-run", "id", "useradd", "gpasswd", "iptables", "ip6tables")


def rule(*match: str) -> list[str]:
    return ["-w", "-I", "OUTPUT", "1", "-m", "owner", "--uid-owner", USER, *match, "-j", "REJECT"]


WIRESERVER = rule("-d", "168.63.129.16", "-p", "tcp", "-m", "multiport", "--dports", "80,32526")
METADATA = [
    ("iptables", rule("-d", "169.254.169.254")),
    *(
        [("ip6tables", rule("-d", "fd00:ec2::254")), ("ip6tables", rule("-d", "fd20:ce::254"))]
        if Path("/proc/net/if_inet6").exists()  # the script skips IPv6 where the kernel has none
        else []
    ),
]


def boot_script(tmp_path: Path, cloud: str, groups: str = "", fail: str = "", **spec_fields):
    """Run `cloud`'s runner startup script (root's part) with stand-ins; its tools' calls."""
    record = tmp_path / "calls.jsonl"
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in TOOLS:
        (tools / tool).write_text(STAND_IN.format(python=sys.executable, record=str(record)))
        (tools / tool).chmod(0o755)
    spec = RunnerSpec(name="box-1", cloud=cloud, idle_timeout=60, ttl=3600, **spec_fields)
    boot = clouds.get(cloud).boot(spec)
    expires = datetime.now(timezone.utc) + timedelta(hours=1)
    script = render.startup_script(boot, spec, expires.timestamp(), {"user": boot.runner_user})
    (tmp_path / "startup.sh").write_text(script)
    home = tmp_path / "home"
    env = {
        "PATH": f"{tools}{os.pathsep}/usr/bin:/bin",
        "CML_INFRA_INSTANCE_DIR": str(home),
        "GROUPS": groups,
        "FAIL_TOOLS": fail,
    }
    done = subprocess.run(["bash", str(tmp_path / "startup.sh")], env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    return calls, home, done.stderr


def inserted(calls: list[list[str]]) -> list[tuple[str, list[str]]]:
    return [(call[0], call[1:]) for call in calls if "-I" in call]


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_the_metadata_services_are_closed_to_the_runner_user_before_the_agent(cloud, tmp_path):
    calls, home, _ = boot_script(tmp_path, cloud)
    assert inserted(calls) == [("iptables", WIRESERVER), *METADATA]
    # The agent (root, which reaches them still) starts the runner: after every rule.
    assert calls[-1] == AGENT
    assert max(i for i, call in enumerate(calls) if "-I" in call) < len(calls) - 1
    assert ["gpasswd", "--delete", USER, "docker"] not in calls
    # The runner user passes through the instance folder to its own, and can list nothing.
    assert (home.stat().st_mode & 0o777) == 0o711


@pytest.mark.parametrize(
    ("cloud", "field", "value"),
    [
        ("aws", "instance_profile", "data-reader"),
        ("gcp", "service_account", "data@proj-123.iam.gserviceaccount.com"),
        (
            "azure",
            "identity",
            "/subscriptions/0/resourceGroups/ids/providers/"
            "Microsoft.ManagedIdentity/userAssignedIdentities/data",
        ),
    ],
)
def test_a_role_for_the_jobs_data_leaves_the_metadata_service_open(cloud, field, value, tmp_path):
    """Job code fetches that role's credentials from the metadata service, as CML's
    --cloud-permission-set jobs do; only the WireServer stays closed."""
    calls, _, _ = boot_script(tmp_path, cloud, **{field: value})
    assert inserted(calls) == [("iptables", WIRESERVER)]
    assert calls[-1] == AGENT


def test_without_the_firewall_the_runner_never_starts(tmp_path):
    """No iptables (or one that fails): the agent ends the instance, saying why."""
    calls, _, stderr = boot_script(tmp_path, "aws", fail="iptables")
    assert calls[-1] == [
        *AGENT, "--end-now", "could not close the metadata services to the runner user (iptables)"
    ]  # fmt: skip
    assert "could not close the metadata services" in stderr


def test_without_docker_the_runner_user_leaves_an_images_docker_group(tmp_path):
    calls, _, _ = boot_script(tmp_path, "gcp", groups=f"{USER} docker")
    assert ["gpasswd", "--delete", USER, "docker"] in calls


@pytest.mark.parametrize("docker", [True, None])
def test_with_docker_its_group_is_kept(docker, tmp_path):
    """--docker, or a GPU runner by default: the agent adds the user to the group."""
    fields = {"docker": docker} if docker else {"gpu": "t4", "gpu_count": 1}
    calls, _, _ = boot_script(tmp_path, "gcp", groups=f"{USER} docker", **fields)
    assert not [call for call in calls if call[0] == "gpasswd"]
    assert not [call for call in calls if call[:2] == ["id", "-nG"]]


@pytest.mark.parametrize(("docker", "gpu", "expected"),
                         [(None, None, False), (None, "t4", True), (False, "t4", False),
                          (True, None, True)])  # fmt: skip
def test_the_agent_config_says_whether_jobs_get_docker(docker, gpu, expected):
    spec = RunnerSpec(name="box-1", cloud="gcp", idle_timeout=60, ttl=3600, docker=docker,
                      gpu=gpu, gpu_count=1 if gpu else 0)  # fmt: skip
    script = render.startup_script(clouds.get("gcp").boot(spec), spec, 2e9, {"user": USER})
    config = script.split("<<'CML_INFRA_CONFIG_EOF'\n")[1].split("\nCML_INFRA_CONFIG_EOF")[0]
    assert json.loads(config)["docker"] is expected
