"""Which catalog types have 64-bit Arm CPUs (the instance then installs the runner's linux-arm64
build), and what that asks of a launch: an arm64 image, since the modules' defaults are x86_64."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from cml_infra import clouds
from cml_infra.catalog import Catalog, load, path
from cml_infra.errors import UsageError
from cml_infra.spec import RunnerSpec
from cml_infra.state import StateDir

CLOUDS = ("aws", "gcp", "azure")
# An arm64 image each cloud would take (the module has no arm64 default).
ARM_IMAGES = {
    "aws": "ami-0123456789abcdef0",
    "gcp": "projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-arm64",
    "azure": "/subscriptions/0/resourceGroups/images/providers/Microsoft.Compute/images/arm64",
}


def spec(cloud, **changes):
    fields = {"name": "box-1", "cloud": cloud, "idle_timeout": 60, "ttl": 3600}
    fields.update(changes)
    return RunnerSpec(**fields)


def cloud_of(name):
    return clouds.get(name, StateDir(Path("/nonexistent/state")))


@pytest.mark.parametrize(
    ("cloud", "instance_type", "arch"),
    [
        ("aws", "t4g.large", "arm64"),
        ("aws", "m7g.xlarge", "arm64"),
        ("aws", "c7gn.16xlarge", "arm64"),
        ("aws", "r8gd.metal-24xl", "arm64"),
        ("aws", "x2gd.large", "arm64"),
        ("aws", "im4gn.large", "arm64"),
        ("aws", "g5g.xlarge", "arm64"),
        ("aws", "a1.large", "arm64"),
        ("aws", "m7i.large", "x86_64"),
        ("aws", "m7a.large", "x86_64"),
        ("aws", "g4dn.xlarge", "x86_64"),
        ("aws", "gr6.4xlarge", "x86_64"),
        ("aws", "p5.48xlarge", "x86_64"),
        ("aws", "inf2.xlarge", "x86_64"),
        ("gcp", "t2a-standard-4", "arm64"),
        ("gcp", "c4a-highcpu-8", "arm64"),
        ("gcp", "e2-standard-4", "x86_64"),
        ("gcp", "n1-standard-8", "x86_64"),
        ("gcp", "a2-highgpu-1g", "x86_64"),
        ("azure", "Standard_D2ps_v5", "arm64"),
        ("azure", "Standard_D4plds_v5", "arm64"),
        ("azure", "Standard_E8pds_v5", "arm64"),
        ("azure", "Standard_B2pts_v2", "arm64"),
        ("azure", "Standard_D4ps_v6", "arm64"),
        ("azure", "Standard_D2s_v5", "x86_64"),
        ("azure", "Standard_NC4as_T4_v3", "x86_64"),
        ("azure", "Standard_ND96isr_H100_v5", "x86_64"),
    ],
)
def test_the_catalog_knows_the_cpu_by_the_type_name(cloud, instance_type, arch):
    assert load(cloud).arch(instance_type) == arch


@pytest.mark.parametrize("cloud", CLOUDS)
def test_every_size_and_gpu_offer_is_x86(cloud):
    """What a launch gets without --type must boot the default (x86_64) images."""
    catalog = load(cloud)
    refs = [
        *catalog.sizes.values(),
        *(ref for counts in catalog.gpus.values() for ref in counts.values()),
    ]
    assert {catalog.arch(catalog.offer(ref).instance_type) for ref in refs} == {"x86_64"}


@pytest.mark.parametrize("cloud", CLOUDS)
def test_every_catalog_offers_arm_cpu_types(cloud):
    catalog = load(cloud)
    arm = [o for o in catalog.instance_types if catalog.arch(o.instance_type) == "arm64"]
    assert arm, f"{cloud} lists no arm64 type"
    assert all(o.gpu is None and o.price for o in arm)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_an_arm_type_boots_the_arm_build_with_an_arm_image(cloud):
    catalog = load(cloud)
    offer = next(o for o in catalog.instance_types if catalog.arch(o.instance_type) == "arm64")
    asked = spec(cloud, instance_type=offer.instance_type, image=ARM_IMAGES[cloud])
    vm = cloud_of(cloud)
    placement = vm.resolve(asked, region=None, spot=False, max_price=None)
    assert placement.hourly_price == offer.price
    assert vm.boot(asked).arch == "arm64"
    assert vm.boot(spec(cloud)).arch == "x86_64"


@pytest.mark.parametrize("cloud", CLOUDS)
def test_an_arm_type_without_an_image_is_refused(cloud):
    catalog = load(cloud)
    offer = next(o for o in catalog.instance_types if catalog.arch(o.instance_type) == "arm64")
    with pytest.raises(UsageError) as raised:
        cloud_of(cloud).resolve(
            spec(cloud, instance_type=offer.instance_type), region=None, spot=False, max_price=None
        )
    assert raised.value.source == "--image"
    assert "arm64" in str(raised.value) and "x86_64" in str(raised.value)


def test_a_pattern_that_is_no_regular_expression_is_refused():
    raw = yaml.safe_load(path("aws").read_text("utf-8"))
    raw["arm64_types"] = ["[unclosed"]
    with pytest.raises(ValidationError, match="is not a regular expression"):
        Catalog.model_validate(raw)
