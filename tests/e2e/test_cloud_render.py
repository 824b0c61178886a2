"""Every cloud x {CPU, GPU} x {spot, on-demand}, rendered with no credentials, then held against
`terraform fmt`, the offline provider-schema checker, checkov and shellcheck."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import hcl2
import pytest

from cml_infra.terraform import Engine, EngineHome
from tests.unit.clouds import least_privilege

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
TFSCHEMA = Path(os.environ.get("CML_INFRA_TFSCHEMA", REPO.parent / "shared" / "tfschema"))
CHECKOV = os.environ.get("CML_INFRA_CHECKOV") or str(REPO / ".venv-checkov" / "bin" / "checkov")
CLOUDS = ("aws", "gcp", "azure")
MATRIX = list(itertools.product(CLOUDS, ("cpu", "gpu"), ("spot", "on-demand")))
# Each cloud's flag for the job's data identity (CML's --cloud-permission-set), and a value.
DATA_IDENTITY = {
    "aws": ("--instance-profile", "iam_instance_profile", "cml-data-reader"),
    "gcp": ("--service-account", "service_account_email", "data@proj-123.iam.gserviceaccount.com"),
    "azure": (
        "--identity",
        "user_assigned_identity_id",
        "/subscriptions/0000/resourceGroups/ids/providers/"
        "Microsoft.ManagedIdentity/userAssignedIdentities/data-reader",
    ),
}

# Each cloud's bring-your-own-network flags, all given, and the module variables they set.
AZURE_SUBNET = (
    "/subscriptions/0000/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/ci/"
    "subnets/runners"
)
NETWORK = {
    "aws": (
        ["--subnet-id", "subnet-0123456789abcdef0", "--security-group-id", "sg-0123456789abcdef0",
         "--security-group-id", "sg-01234567", "--disk-size", "120", "--no-public-ip"],
        {"subnet_id": "subnet-0123456789abcdef0", "root_volume_size_gb": 120,
         "security_group_ids": ["sg-0123456789abcdef0", "sg-01234567"],
         "associate_public_ip_address": False},
    ),
    "gcp": (
        ["--project", "ci-proj-123", "--network", "projects/ci-proj-123/global/networks/ci",
         "--subnetwork", "https://www.googleapis.com/compute/v1/projects/ci-proj-123/regions/"
         "us-central1/subnetworks/runners", "--region", "us-central1", "--disk-size", "120",
         "--no-public-ip"],
        {"project": "ci-proj-123", "network": "projects/ci-proj-123/global/networks/ci",
         "subnetwork": "https://www.googleapis.com/compute/v1/projects/ci-proj-123/regions/"
         "us-central1/subnetworks/runners", "boot_disk_size_gb": 120,
         "assign_external_ip": False},
    ),
    "azure": (
        ["--subnet-id", AZURE_SUBNET, "--disk-size", "120", "--no-public-ip"],
        {"subnet_id": AZURE_SUBNET, "os_disk_size_gb": 120, "public_ip": False},
    ),
}  # fmt: skip


# A task's folder and reports travel through a backend: renders of tasks name one (a render
# reaches no store; the URLs in the startup script are stand-ins).
TASK_BACKEND = {
    "aws": "s3://renders/ci?region=us-east-1",
    "gcp": "gs://renders/ci",
    "azure": "azurerm://rendersaccount/renders/ci",
}


def clean_env() -> dict[str, str]:
    """No credentials of any cloud: rendering must not need them."""
    prefixes = ("AWS_", "GOOGLE_", "CLOUDSDK_", "ARM_", "AZURE_", "CML_INFRA_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str, str], Path]:
    root = tmp_path_factory.mktemp("rendered")
    env = {**clean_env(), "CML_INFRA_HOME": str(root / "state")}
    out = {}
    for cloud, kind, market in MATRIX:
        dest = root / f"{cloud}-{kind}-{market}"
        args = ["render", "--cloud", cloud, "--name", f"m-{cloud}-{kind}", "-o", str(dest)]
        args += ["--gpu", "t4"] if kind == "gpu" else ["--size", "s"]
        args += ["--spot"] if market == "spot" else ["--no-spot"]
        args += ["--tag", "team=ml", "--backend", TASK_BACKEND[cloud], "--", "python3", "train.py"]
        done = subprocess.run([sys.executable, "-m", "cml_infra", *args], env=env,
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert done.returncode == 0, f"{args}: {done.stderr}"
        out[(cloud, kind, market)] = dest
    # A runner with a role for its job's data: held to fmt, the schemas, checkov and shellcheck
    # like the others.
    for cloud, (flag, _, value) in DATA_IDENTITY.items():
        dest = root / f"{cloud}-data"
        args = ["render", "--cloud", cloud, "--name", f"d-{cloud}", "-o", str(dest), flag, value,
                "--size", "s", "--repo", "octo/repo", "--single"]  # fmt: skip
        done = subprocess.run([sys.executable, "-m", "cml_infra", *args], env=env,
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert done.returncode == 0, f"{args}: {done.stderr}"
        out[(cloud, "data", "on-demand")] = dest
    # In a network of the team's own, with no public address and a disk of its size; and, on
    # the GPU image, the first of those flags alone (the rest as the module's defaults).
    for cloud, (flags, _) in NETWORK.items():
        for kind, more in (("network", flags), ("network-gpu", [*flags[:2], "--gpu", "t4"])):
            dest = root / f"{cloud}-{kind}"
            args = ["render", "--cloud", cloud, "--name", f"n-{cloud}", "-o", str(dest), *more,
                    "--backend", TASK_BACKEND[cloud], "--", "python3", "train.py"]  # fmt: skip
            done = subprocess.run([sys.executable, "-m", "cml_infra", *args], env=env,
                                  capture_output=True, text=True, check=False)  # fmt: skip
            assert done.returncode == 0, f"{args}: {done.stderr}"
            out[(cloud, kind, "on-demand")] = dest
    assert not (root / "state").exists(), "render wrote to the state dir"
    return out


def test_terraform_fmt(rendered: dict[tuple[str, str, str], Path]) -> None:
    engine = Engine.discover(None, EngineHome(Path("/nonexistent")))
    for dest in rendered.values():
        done = subprocess.run([*engine.argv, "fmt", "-check", "-recursive", "-diff", str(dest)],
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert done.returncode == 0, f"{dest}: {done.stdout}{done.stderr}"


def test_provider_schema_checker_finds_nothing(rendered: dict[tuple[str, str, str], Path]) -> None:
    checker = TFSCHEMA / "check.py"
    if not checker.is_file():
        pytest.skip(f"the offline provider-schema checker is not at {checker}")
    done = subprocess.run([sys.executable, str(checker), *map(str, rendered.values())],
                          capture_output=True, text=True, check=False)  # fmt: skip
    last = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 0, done.stdout + done.stderr
    assert last.endswith(" 0 findings"), last


def test_checkov_fails_nothing(rendered: dict[tuple[str, str, str], Path], tmp_path: Path) -> None:
    if not Path(CHECKOV).is_file() and shutil.which(CHECKOV) is None:
        pytest.skip(f"checkov is not at {CHECKOV} (make install-checkov)")
    parent = next(iter(rendered.values())).parent
    done = subprocess.run(
        [CHECKOV, "-d", str(parent), "--framework", "terraform", "--quiet", "-o", "json",
         "--skip-download"],
        env={**clean_env(), "BC_SKIP_MAPPING": "TRUE"}, capture_output=True, text=True,
        check=False, timeout=600,
    )  # fmt: skip
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [
        f"{c['check_id']} {c['file_path']} {c['resource']}"
        for r in reports
        for c in r.get("results", {}).get("failed_checks", [])
    ]
    assert failed == []
    skipped = [c for r in reports for c in r.get("results", {}).get("skipped_checks", [])]
    assert all(c.get("suppress_comment", "").strip() for c in skipped), "a skip without a reason"
    passed = sum(r.get("summary", {}).get("passed", 0) for r in reports)
    assert passed > 0


def test_shellcheck_startup_scripts(rendered: dict[tuple[str, str, str], Path]) -> None:
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))
    for dest in rendered.values():
        done = subprocess.run([shellcheck, str(dest / "startup.sh")], capture_output=True,
                              text=True, check=False)  # fmt: skip
        assert done.returncode == 0, f"{dest}: {done.stdout}"


def unquote(value: object) -> object:
    """python-hcl2 keeps HCL's quotes on names and strings; compare without them."""
    if isinstance(value, dict):
        return {str(unquote(k)): unquote(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unquote(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def module_resources(dest: Path) -> dict[str, dict[str, dict[str, object]]]:
    """resource type → name → body, from the module copy in a rendered workspace."""
    found: dict[str, dict[str, dict[str, object]]] = {}
    for path in (dest / "module").glob("*.tf"):
        for block in unquote(hcl2.loads(path.read_text())).get("resource", []):
            for rtype, named in block.items():
                found.setdefault(rtype, {}).update(named)
    return found


def tfvars(dest: Path) -> dict[str, object]:
    return json.loads((dest / "terraform.tfvars.json").read_text())


@pytest.mark.parametrize(("cloud", "kind", "market"), MATRIX)
def test_inputs_ask_for_what_was_asked(rendered, cloud: str, kind: str, market: str) -> None:
    values = tfvars(rendered[(cloud, kind, market)])
    assert values["spot"] is (market == "spot")
    assert values["gpu"] is (kind == "gpu")
    assert values["tags" if cloud != "gcp" else "labels"] == {"team": "ml"}
    assert isinstance(values["expires_at"], int)
    # The launch's start, for the cml-infra-created tag cleanup judges a leftover's age by.
    assert isinstance(values["created_at"], int)
    assert values["created_at"] < values["expires_at"]
    if cloud == "gcp":
        assert values["max_run_duration_seconds"] == 24 * 3600
        # What takes no labels (service account, firewall rule) carries it in its description.
        assert values["expires_at"] - values["created_at"] == 24 * 3600
        assert values["accelerator_type"] == ("nvidia-tesla-t4" if kind == "gpu" else None)


@pytest.mark.parametrize("cloud", ["aws", "azure"])
def test_every_resource_is_tagged_with_the_launchs_start(rendered, cloud: str) -> None:
    """The modules' one tag map (local.tags, on every resource) carries cml-infra-created."""
    text = (rendered[(cloud, "cpu", "on-demand")] / "module" / "main.tf").read_text()
    assert re.search(r'"cml-infra-created"\s*=\s*tostring\(var\.created_at\)', text)


def test_aws_module_settings(rendered) -> None:
    resources = module_resources(rendered[("aws", "gpu", "spot")])
    (instance,) = resources["aws_instance"].values()
    text = json.dumps(instance)
    assert instance["instance_initiated_shutdown_behavior"] == "terminate"
    assert '"http_tokens": "required"' in text
    assert '"encrypted": true' in text
    assert (
        "instance_market_options" in text
        and '"instance_interruption_behavior": "terminate"' in text
    )
    groups = resources.get("aws_security_group", {})
    assert groups and all("ingress" not in json.dumps(g) for g in groups.values())
    assert "aws_vpc_security_group_ingress_rule" not in resources


def test_gcp_module_settings(rendered) -> None:
    resources = module_resources(rendered[("gcp", "gpu", "spot")])
    (instance,) = resources["google_compute_instance"].values()
    text = json.dumps(instance)
    settings = (
        "instance_termination_action", "max_run_duration", "provisioning_model",
        "on_host_maintenance", "shielded_instance_config", "guest_accelerator",
    )  # fmt: skip
    for setting in settings:
        assert setting in text, setting
    rules = resources.get("google_compute_firewall", {})
    assert rules and all("deny" in rule and "allow" not in rule for rule in rules.values())
    assert "google_compute_instance_iam_member" in resources


def test_azure_module_settings(rendered) -> None:
    resources = module_resources(rendered[("azure", "gpu", "spot")])
    (vm,) = resources["azurerm_linux_virtual_machine"].values()
    text = json.dumps(vm)
    assert vm["disable_password_authentication"] is True
    assert "eviction_policy" in text and "max_bid_price" in text
    assert "SystemAssigned" in text
    (assignment,) = resources["azurerm_role_assignment"].values()
    assert "azurerm_resource_group" in json.dumps(assignment["scope"])
    nsg_text = json.dumps(resources["azurerm_network_security_group"])
    assert '"access": "Deny"' in nsg_text and '"Allow"' not in nsg_text


def test_the_vm_identity_may_only_end_the_vm(rendered) -> None:
    """Least privilege, read from each workspace's copy of its module and its tfvars: the VM's
    own identity can end the VM and nothing else; a role for the job's data only where asked."""
    for (cloud, kind, _), dest in rendered.items():
        assert least_privilege.problems(cloud, dest / "module") == [], dest
        _, variable, value = DATA_IDENTITY[cloud]
        assert tfvars(dest)[variable] == (value if kind == "data" else None), dest
        script = (dest / "startup.sh").read_text()
        if kind == "data":
            # Job code fetches that role's credentials from the metadata service.
            assert "-d 169.254.169.254" not in script


@pytest.mark.parametrize("cloud", [*CLOUDS, "local"])
def test_another_clouds_data_identity_is_refused_naming_its_flag(cloud, tmp_path: Path) -> None:
    env = {**clean_env(), "CML_INFRA_HOME": str(tmp_path / "state")}
    for other, (flag, _, value) in DATA_IDENTITY.items():
        if other == cloud:
            continue
        args = ["render", "--cloud", cloud, "-o", str(tmp_path / other), flag, value]
        done = subprocess.run([sys.executable, "-m", "cml_infra", *args, "--", "true"], env=env,
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"error: {flag}: "), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert not (tmp_path / other).exists()


@pytest.mark.parametrize("cloud", CLOUDS)
def test_runner_mode_renders_within_user_data_limits(cloud: str, tmp_path: Path) -> None:
    """A runner instance carries more (the runner config, the user, Docker for GPUs) and must
    still fit the cloud's user data and pass shellcheck."""
    dest = tmp_path / "out"
    args = ["render", "--cloud", cloud, "--gpu", "t4", "--spot", "--repo", "octo/repo",
            "--single", "--name", f"r-{cloud}", "-o", str(dest)]  # fmt: skip
    env = {**clean_env(), "CML_INFRA_HOME": str(tmp_path / "state")}
    done = subprocess.run([sys.executable, "-m", "cml_infra", *args], env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    script = (dest / "startup.sh").read_text()
    assert "useradd --create-home --shell /bin/bash cml-runner" in script
    # Its jobs cannot read the user data or the VM's tokens (tests/unit/clouds/
    # test_runner_isolation.py runs this part).
    assert "--uid-owner cml-runner" in script and "-d 169.254.169.254" in script
    config = json.loads(
        script.split("<<'CML_INFRA_CONFIG_EOF'\n")[1].split("\nCML_INFRA_CONFIG_EOF")[0]
    )
    # The agent waits for the one T4 and sets up Docker and the toolkit (agent/host.py) within
    # the startup timeout, so that a GPU that never comes ends the instance before `up` gives up.
    assert config["gpus"] == 1
    assert 0 < config["gpu_timeout"] < config["runner"]["startup_timeout"]
    assert config["runner"]["user"] == "cml-runner"
    probes = {"aws": "aws-spot-notice", "gcp": "gcp-preempted", "azure": "azure-preempt-event"}
    assert config["runner"]["preemption"] == probes[cloud]
    assert (
        config["runner"]["archive"]["sha256"] and config["runner"]["registration"]["kind"] == "jit"
    )
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))
    assert subprocess.run([shellcheck, str(dest / "startup.sh")], check=False).returncode == 0


@pytest.mark.parametrize("cloud", CLOUDS)
def test_network_flags_reach_the_module(rendered, cloud: str) -> None:
    _, expected = NETWORK[cloud]
    values = tfvars(rendered[(cloud, "network", "on-demand")])
    assert {key: values.get(key) for key in expected} == expected
    first, *rest = expected
    alone = tfvars(rendered[(cloud, "network-gpu", "on-demand")])
    assert alone[first] == expected[first] and set(rest).isdisjoint(alone)
    # Without the flags, the module's defaults hold: none of their variables is passed.
    assert set(expected).isdisjoint(tfvars(rendered[(cloud, "cpu", "on-demand")]))


@pytest.mark.parametrize(
    ("cloud", "args"),
    [
        ("gcp", ["--subnet-id", "subnet-0123456789abcdef0"]),
        ("aws", ["--network", "ci"]),
        ("azure", ["--security-group-id", "sg-0123456789abcdef0"]),
        ("local", ["--disk-size", "50"]),
        ("local", ["--no-public-ip"]),
    ],
)
def test_a_network_flag_of_another_cloud_is_refused(cloud, args, tmp_path: Path) -> None:
    env = {**clean_env(), "CML_INFRA_HOME": str(tmp_path / "state")}
    dest = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "cml_infra", "render", "--cloud", cloud, "-o", str(dest), *args,
         "--", "true"], env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: {args[0]}: does not apply to {cloud} "), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not dest.exists()
