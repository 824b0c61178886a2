"""Every rendered VM module puts the launch id on everything it creates.

A name is not an identity (two teams' `gpu-ci`), so teardown goes by the launch id `up` mints:
it must be on every resource that takes tags (GCP: labels), as `cml-infra-id`; where a resource
takes none (GCP service accounts and firewall rules, Azure role assignments) its description
names it; and the names the modules choose in a project- or subscription-wide namespace carry
its hash, so that two launches of one name never collide.

Which resource types take tags, and where, comes from the providers' own schemas (the offline
checker's, in ../shared/tfschema); without them that part is skipped, saying so.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import hcl2
import pytest

from tests.e2e.test_cloud_render import (
    TASK_BACKEND,
    TFSCHEMA,
    clean_env,
    module_resources,
    tfvars,
)

pytestmark = pytest.mark.e2e
CLOUDS = ("aws", "gcp", "azure")
VARIANTS = {
    "gpu-spot": ["--gpu", "t4", "--spot"],
    "cpu-on-demand": ["--size", "s", "--no-spot"],
}
# The attribute that holds tags, per provider; GCP's `tags` are network tags, not labels.
TAG_ATTRIBUTES = {"aws": ("tags", "volume_tags"), "google": ("labels",), "azurerm": ("tags",)}
LAUNCH_TAG = re.compile(r'"cml-infra-id"\s*[=:]\s*var\.launch_id\b')
# Names the modules choose in a namespace wider than the runner's own: (type, attribute).
WIDE_NAMES = {
    "gcp": {("google_service_account", "account_id"), ("google_compute_firewall", "name")},
    "azure": {("azurerm_resource_group", "name")},
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("launch-id")
    env = {**clean_env(), "CML_INFRA_HOME": str(root / "state")}
    out = {}
    for cloud in CLOUDS:
        for variant, flags in VARIANTS.items():
            dest = root / f"{cloud}-{variant}"
            args = ["render", "--cloud", cloud, "--name", "gpu-ci", "-o", str(dest), *flags]
            args += [
                "--tag",
                "team=ml",
                "--backend",
                TASK_BACKEND[cloud],
                "--",
                "python3",
                "train.py",
            ]
            done = subprocess.run([sys.executable, "-m", "cml_infra", *args], env=env,
                                  capture_output=True, text=True, check=False)  # fmt: skip
            assert done.returncode == 0, f"{args}: {done.stderr}"
            out[(cloud, variant)] = dest
    return out


def module_locals(dest: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in (dest / "module").glob("*.tf"):
        for block in hcl2.loads(path.read_text()).get("locals", []):
            found.update({k: _text(v) for k, v in block.items() if k != "__comments__"})
    return found


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def resolved(value: Any, local_values: dict[str, str]) -> str:
    """The text of an expression with every `local.X` it uses spelled out, recursively."""
    text = _text(value)
    seen: set[str] = set()
    while True:
        names = set(re.findall(r"\blocal\.(\w+)", text)) - seen
        if not names:
            return text
        for name in names:
            text += " " + local_values.get(name, "")
        seen |= names


def cloud_schema(rtype: str) -> dict[str, Any] | None:
    """The provider's schema of a resource type of a cloud's provider; None for any other
    provider's (tls_private_key: nothing in a cloud). Skips when the schemas are not here."""
    provider = rtype.split("_", 1)[0]
    if provider not in TAG_ATTRIBUTES:
        return None
    path = TFSCHEMA / "schemas" / "cdktn" / f"{provider}.json"
    if not path.is_file():
        pytest.skip(f"no {provider} provider schema under {TFSCHEMA}")
    found: dict[str, Any] = _load(path)["resources"][rtype]
    return found


_SCHEMAS: dict[Path, Any] = {}


def _load(path: Path) -> Any:
    if path not in _SCHEMAS:
        _SCHEMAS[path] = json.loads(path.read_text())
    return _SCHEMAS[path]


def settable(attribute: dict[str, Any] | None) -> bool:
    return bool(attribute) and bool(attribute.get("o") or attribute.get("r"))


def tag_places(rtype: str, body: dict[str, Any], schema: dict[str, Any], path: str = ""):
    """(where, value) of every tag attribute the schema has on this resource, and in the nested
    blocks the module writes; a nested `tags` is left out where `volume_tags` covers it (AWS
    refuses both)."""
    names = TAG_ATTRIBUTES[rtype.split("_", 1)[0]]
    for name in names:
        attribute = schema.get("attrs", {}).get(name)
        if settable(attribute) and str(attribute.get("t", "")).startswith("map"):
            if path and name == "tags" and rtype == "aws_instance":
                continue
            yield f"{rtype}{path}.{name}", body.get(name)
    for block, nested in schema.get("blocks", {}).items():
        for index, inner in enumerate(body.get(block) or []):
            if isinstance(inner, dict):
                yield from tag_places(rtype, inner, nested, f"{path}.{block}[{index}]")


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("cloud", CLOUDS)
def test_the_workspace_carries_a_fresh_valid_launch_id(rendered, cloud, variant):
    launch_id = tfvars(rendered[(cloud, variant)])["launch_id"]
    assert re.fullmatch(r"[a-z0-9]{8,32}", launch_id)
    everyone = {tfvars(dest)["launch_id"] for dest in rendered.values()}
    assert len(everyone) == len(rendered), "each render mints its own"


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("cloud", CLOUDS)
def test_every_resource_that_takes_tags_carries_the_launch_id(rendered, cloud, variant):
    dest = rendered[(cloud, variant)]
    local_values = module_locals(dest)
    resources = module_resources(dest)
    checked = 0
    missing = []
    for rtype, named in resources.items():
        schema = cloud_schema(rtype)
        if schema is None:
            continue  # tls_private_key and the like: nothing in a cloud
        for name, body in named.items():
            for where, value in tag_places(rtype, body, schema):
                checked += 1
                if value is None or not LAUNCH_TAG.search(resolved(value, local_values)):
                    missing.append(f"{where} ({name})")
    assert missing == []
    assert checked >= {"aws": 5, "gcp": 2, "azure": 6}[cloud]


@pytest.mark.parametrize("cloud", CLOUDS)
def test_what_takes_no_tags_names_the_launch_in_its_description(rendered, cloud):
    dest = rendered[(cloud, "gpu-spot")]
    local_values = module_locals(dest)
    unnamed = []
    for rtype, named in module_resources(dest).items():
        schema = cloud_schema(rtype)
        if schema is None:
            continue
        attrs = schema.get("attrs", {})
        takes_tags = any(settable(attrs.get(n)) for n in TAG_ATTRIBUTES[rtype.split("_", 1)[0]])
        if takes_tags or not settable(attrs.get("description")):
            continue
        for name, body in named.items():
            if "var.launch_id" not in resolved(body.get("description"), local_values):
                unnamed.append(f"{rtype}.{name}")
    assert unnamed == []


@pytest.mark.parametrize("cloud", CLOUDS)
def test_names_in_a_wide_namespace_carry_the_launch_id(rendered, cloud):
    dest = rendered[(cloud, "cpu-on-demand")]
    resources, values = module_resources(dest), module_locals(dest)
    for rtype, attribute in WIDE_NAMES.get(cloud, ()):
        for name, body in resources[rtype].items():
            assert "var.launch_id" in resolved(body[attribute], values), f"{rtype}.{name}"
    if cloud == "aws":
        # EC2 makes the group's name unique itself.
        (group,) = resources["aws_security_group"].values()
        assert "name_prefix" in group and "name" not in group
