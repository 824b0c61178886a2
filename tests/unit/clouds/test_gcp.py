"""cml_infra.clouds.gcp: metadata startup script, accelerators, labels, TTL, credentials."""

from __future__ import annotations

import base64
import gzip
import json
import os
import random
import re
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cml_infra import clouds, packaged, render
from cml_infra.clouds.gcp import METADATA_LIMIT, GcpCloud, metadata_script
from cml_infra.errors import UsageError
from cml_infra.placement import attempts
from tests.unit.clouds.specs import CREATED, EXPIRES, module_vars, resolve, spec_on


def _spec(**changes):
    return spec_on("gcp", **changes)


@pytest.fixture
def cloud():
    return clouds.get("gcp")


def _vars(cloud, spec, script="#!/bin/bash\necho hi\n"):
    """The variables of the first placement `up` would try (in the region's first zone)."""
    return module_vars(cloud, spec, script, placement=attempts(spec, cloud)[0].placement)


def _unwrap(wrapper):
    packed = re.fullmatch(
        r"#!/bin/bash\nset -euo pipefail\n"
        r"echo '([A-Za-z0-9+/=]+)' \| base64 -d \| gunzip \| bash\n",
        wrapper,
    )
    assert packed is not None, wrapper[:200]
    return gzip.decompress(base64.b64decode(packed[1], validate=True)).decode("utf-8")


def test_get_gcp(cloud):
    assert isinstance(cloud, GcpCloud)
    assert cloud.module == "gcp"
    assert cloud.sensitive_vars() == frozenset({"startup_script"})


@pytest.mark.parametrize("size", [12, 1000, METADATA_LIMIT])
def test_startup_script_up_to_256_kib_goes_as_is(size):
    script = "#!/bin/bash\n" + "#" * (size - len("#!/bin/bash\n"))
    assert len(script.encode()) == size
    assert metadata_script(script) == script


def test_startup_script_counts_bytes_not_characters():
    script = "é" * (METADATA_LIMIT // 2 + 1)  # fewer characters than the limit, more bytes
    assert len(script) < METADATA_LIMIT < len(script.encode())
    assert _unwrap(metadata_script(script)) == script


def test_startup_script_just_over_the_limit_is_wrapped():
    script = "#" * (METADATA_LIMIT + 1)
    assert _unwrap(metadata_script(script)) == script


def test_startup_script_over_256_kib_unpacks_itself(cloud):
    spec = _spec(command=("echo", "x" * METADATA_LIMIT))
    script = render.startup_script(cloud.boot(spec), spec, EXPIRES.timestamp())
    assert len(script.encode()) > METADATA_LIMIT
    wrapper = _vars(cloud, spec, script)["startup_script"]
    assert len(wrapper) <= METADATA_LIMIT
    assert _unwrap(wrapper) == script


def test_the_wrapper_runs_the_original_script(tmp_path):
    marker = tmp_path / "ran"
    script = f'#!/bin/bash\necho "unpacked $((6 * 7))" >"{marker}"\n' + "# pad\n" * 50_000
    wrapper = metadata_script(script)
    assert wrapper != script
    done = subprocess.run(["bash", "-c", wrapper], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "unpacked 42\n"


def test_startup_script_too_large_even_compressed():
    noise = base64.b64encode(random.Random(3).randbytes(300 * 1024)).decode()
    with pytest.raises(UsageError) as caught:
        metadata_script(noise)
    assert caught.value.source == "startup script"
    assert "gcp allows 262,144 bytes of metadata" in str(caught.value)


def test_the_launch_s_times_go_in_unix_seconds(cloud):
    variables = _vars(cloud, _spec())
    assert variables["created_at"] == int(CREATED.timestamp())
    assert variables["expires_at"] == int(EXPIRES.timestamp())


def test_the_module_is_given_every_variable_it_needs_and_no_other(cloud):
    import hcl2

    text = (packaged.module_dir("gcp") / "variables.tf").read_text()
    declared = {
        name.strip('"'): body
        for block in hcl2.loads(text)["variable"]
        for name, body in block.items()
    }
    required = {name for name, body in declared.items() if "default" not in body}
    given = set(_vars(cloud, _spec(gpu="t4", gpu_count=1, tags={"team": "ml"})))
    assert given <= set(declared)
    assert required <= given


# The module's expressions for what cleanup reads back, from terraform/gcp/main.tf's text.
_LOCALS = ("launch_hash", "network_tag", "service_account_id", "mark")
_ATTRIBUTES = {
    "firewall_name": ("google_compute_firewall", "name"),
    "firewall_description": ("google_compute_firewall", "description"),
    "account_description": ("google_service_account", "description"),
}


def _module_expressions():
    text = (packaged.module_dir("gcp") / "main.tf").read_text()
    found = {}
    for name in _LOCALS:
        (line,) = re.findall(rf"^  {name}\s*=\s*(.+)$", text, flags=re.MULTILINE)
        found[name] = line
    for key, (rtype, attribute) in _ATTRIBUTES.items():
        block = re.search(rf'^resource "{rtype}" "\w+" {{\n(.*?)^}}$', text, re.M | re.S)
        assert block is not None, rtype
        (line,) = re.findall(rf"^  {attribute}\s*=\s*(.+)$", block[1], flags=re.MULTILINE)
        found[key] = re.sub(r'"\s+#[^"]*$', '"', line)  # a comment after the string
    return found


@pytest.mark.parametrize(
    ("name", "launch_id"),
    [
        ("gpu-ci", "0123456789abcdef"),
        # The service account id keeps 19 characters of the name, less the dashes at its end.
        ("abcdefghijklmnopqr-stuvwxyz", "fedcba9876543210"),
        ("abcdefghijklmnopq--rstuvwxyz", "a1b2c3d4"),
        # The longest of each: the service account's description is the closest to its limit.
        ("n" + "a1-" * 12 + "z9", "z" * 32),
    ],
)
def test_what_the_module_names_and_writes_is_what_cleanup_reads(name, launch_id, tmp_path):
    """Terraform's own evaluation of the module's names and descriptions: the reaper's
    parser reads them back (launch id, name, created, expires), and the fake's runners
    (tests/fakes/gcp.py `module_made`) are what the module makes."""
    from cml_infra.clouds.gcp import FIREWALL, SERVICE_ACCOUNT, _marked, account_id, firewall_name
    from cml_infra.terraform import Engine, EngineHome
    from tests.fakes.gcp import module_made

    # Near the last 10-digit Unix seconds: the longest times the module writes for centuries.
    expires = datetime(2286, 11, 20, 17, 46, 39, tzinfo=timezone.utc)
    created = expires - timedelta(hours=1)
    expressions = _module_expressions()
    types = {
        "name": "string",
        "launch_id": "string",
        "created_at": "number",
        "expires_at": "number",
    }
    variables = "".join(f'variable "{v}" {{ type = {t} }}\n' for v, t in types.items())
    body = "".join(f"  {key} = {value}\n" for key, value in expressions.items())
    (tmp_path / "main.tf").write_text(f"{variables}locals {{\n{body}}}\n")
    rc = tmp_path / "terraformrc"
    rc.write_text("disable_checkpoint = true\n")
    engine = Engine.discover(None, EngineHome(Path("/nonexistent")))
    args = [f"-var=name={name}", f"-var=launch_id={launch_id}"]
    args += [f"-var=created_at={int(created.timestamp())}"]
    args += [f"-var=expires_at={int(expires.timestamp())}"]
    wanted = ", ".join(f"{key} = local.{key}" for key in expressions)
    done = subprocess.run(
        [*engine.argv, "console", *args],
        cwd=tmp_path,
        input=f"base64encode(jsonencode({{{wanted}}}))\n",
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "TF_CLI_CONFIG_FILE": str(rc), "CHECKPOINT_DISABLE": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    made = json.loads(base64.b64decode(done.stdout.strip().strip('"')))

    assert made["firewall_name"] == firewall_name(name, launch_id)
    assert made["service_account_id"] == account_id(name, launch_id)
    for kind, key in ((FIREWALL, "firewall_description"), (SERVICE_ACCOUNT, "account_description")):
        mark = _marked(kind, made[key])
        assert mark is not None, made[key]
        assert (mark.name, mark.launch_id) == (name, launch_id)
        assert (mark.created_at, mark.expires_at) == (created, expires)
    assert len(made["account_description"].encode("utf-8")) <= 256
    assert len(made["firewall_description"]) <= 2048
    assert len(made["firewall_name"]) <= 63 and 6 <= len(made["service_account_id"]) <= 30
    fake = module_made(name, launch_id, created, expires)
    assert fake == {
        "network_tag": made["network_tag"],
        "firewall_name": made["firewall_name"],
        "firewall_description": made["firewall_description"],
        "account_id": made["service_account_id"],
        "account_description": made["account_description"],
    }


def test_max_run_duration_is_the_ttl(cloud):
    assert _vars(cloud, _spec(ttl=5400))["max_run_duration_seconds"] == 5400
    assert _vars(cloud, _spec(ttl=30))["max_run_duration_seconds"] == 30


@pytest.mark.parametrize("ttl", [1, 29, 120 * 86400 + 1])
def test_ttl_outside_what_gcp_accepts(cloud, ttl):
    with pytest.raises(UsageError) as caught:
        resolve(cloud, _spec(ttl=ttl))
    assert caught.value.source == "--ttl"


@pytest.mark.parametrize(
    ("gpu", "count", "machine_type", "accelerator"),
    [
        ("t4", 1, "n1-standard-4", "nvidia-tesla-t4"),
        ("t4", 4, "n1-standard-16", "nvidia-tesla-t4"),
        ("v100", 8, "n1-standard-64", "nvidia-tesla-v100"),
        ("l4", 1, "g2-standard-4", None),
        ("a100", 2, "a2-highgpu-2g", None),
        ("a100-80gb", 8, "a2-ultragpu-8g", None),
        ("h100", 8, "a3-highgpu-8g", None),
    ],
)
def test_accelerator_only_for_n1_rows(cloud, gpu, count, machine_type, accelerator):
    variables = _vars(cloud, _spec(gpu=gpu, gpu_count=count))
    assert variables["machine_type"] == machine_type
    assert variables["gpu"] is True
    assert variables["accelerator_type"] == accelerator
    assert variables["accelerator_count"] == (count if accelerator else 0)


def test_cpu_has_no_accelerator(cloud):
    variables = _vars(cloud, _spec(size="l"))
    assert (variables["gpu"], variables["accelerator_type"], variables["accelerator_count"]) == (
        False,
        None,
        0,
    )


def test_native_n1_type_with_attached_gpus(cloud):
    spec = _spec(instance_type="n1-standard-16", gpu="t4", gpu_count=2)
    placement = resolve(cloud, spec)
    assert placement.instance_type == "n1-standard-16"
    assert placement.hourly_price is None
    assert (placement.gpu, placement.gpu_count) == ("t4", 2)
    variables = _vars(cloud, spec)
    assert variables["machine_type"] == "n1-standard-16"
    assert variables["accelerator_type"] == "nvidia-tesla-t4"
    assert variables["accelerator_count"] == 2
    assert variables["gpu"] is True


@pytest.mark.parametrize(
    ("instance_type", "gpu"),
    [("e2-standard-4", "t4"), ("n2-standard-8", "v100"), ("n1-standard-8", "l4")],
)
def test_gpus_attach_to_n1_only(cloud, instance_type, gpu):
    with pytest.raises(UsageError) as caught:
        resolve(cloud, _spec(instance_type=instance_type, gpu=gpu, gpu_count=1))
    assert caught.value.source == "--type"
    assert "to n1 machine types only" in str(caught.value)


def test_attached_gpu_count_gcp_cannot_attach(cloud):
    with pytest.raises(UsageError) as caught:
        resolve(cloud, _spec(instance_type="n1-standard-16", gpu="t4", gpu_count=3))
    assert caught.value.source == "--gpu"


def test_zone_is_the_regions_first(cloud):
    assert _vars(cloud, _spec())["zone"] == "us-central1-a"
    assert _vars(cloud, _spec(region="europe-west4"))["zone"] == "europe-west4-a"


def test_image_passes_through(cloud):
    image = "projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64"
    assert _vars(cloud, _spec(image=image))["image"] == image


def test_max_price_is_refused(cloud):
    with pytest.raises(UsageError) as caught:
        resolve(cloud, _spec(spot=True, max_price=0.5, gpu="t4", gpu_count=1))
    assert caught.value.source == "--max-price"
    assert "no bid price" in str(caught.value)


def test_spot_without_max_price(cloud):
    variables = _vars(cloud, _spec(spot=True, gpu="t4", gpu_count=1))
    assert variables["spot"] is True
    assert resolve(cloud, _spec(spot=True, gpu="t4", gpu_count=1)).hourly_price == 0.18


def test_labels(cloud):
    tags = {"team": "ml", "cost_center": "cc-42", "empty": ""}
    assert _vars(cloud, _spec(tags=tags))["labels"] == tags


@pytest.mark.parametrize(
    "tags",
    [{"Team": "ml"}, {"TEAM": "ml"}, {"1team": "ml"}, {"team.name": "ml"}, {"k" * 64: "v"}],
)
def test_label_keys_gcp_refuses(cloud, tags):
    with pytest.raises(UsageError) as caught:
        resolve(cloud, _spec(tags=tags))
    assert caught.value.source == "--tag"
    assert "GCP labels" in str(caught.value)


# --- credentials: google.auth.default() reads files only; the metadata server is off-limits ---


@pytest.fixture(scope="module")
def private_key_pem():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


@pytest.fixture
def gcp_env(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.startswith(("GOOGLE_", "CLOUDSDK_")) or key in ("GCLOUD_PROJECT",):
            monkeypatch.delenv(key)
    # No gcloud configuration of this machine: its ADC file would be found otherwise.
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))


def _service_account(tmp_path, pem, project="proj-123456"):
    info = {
        "type": "service_account",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": f"runner@{project or 'x'}.iam.gserviceaccount.com",
        "client_id": "123456789",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    if project:
        info["project_id"] = project
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps(info))
    return path


def test_check_with_a_missing_credentials_file(cloud, gcp_env, monkeypatch, tmp_path):
    missing = tmp_path / "nonexistent.json"
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(missing))
    ready, sentence = cloud.check()
    assert ready is False
    assert sentence.startswith("no default credentials (")
    assert str(missing) in sentence
    assert "GOOGLE_APPLICATION_CREDENTIALS" in sentence
    assert not sentence.startswith("gcp: ")


def test_check_with_a_service_account(cloud, gcp_env, monkeypatch, tmp_path, private_key_pem):
    path = _service_account(tmp_path, private_key_pem)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    assert cloud.check() == (True, "project proj-123456")


def test_check_without_a_project(cloud, gcp_env, monkeypatch, tmp_path, private_key_pem):
    path = _service_account(tmp_path, private_key_pem, project=None)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    ready, sentence = cloud.check()
    assert ready is False
    assert "GOOGLE_CLOUD_PROJECT" in sentence
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "from-env-1")
    assert cloud.check() == (True, "project from-env-1")
