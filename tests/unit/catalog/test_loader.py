"""cml_infra.catalog: the dated catalogs of the clouds that have one, their validator, and
GPU/size/region/GPU-family lookups."""

from __future__ import annotations

import copy
from datetime import date

import pytest
import yaml
from pydantic import ValidationError

from cml_infra import clouds
from cml_infra.catalog import Catalog, hourly, known_regions, load, offerings_of, path
from cml_infra.errors import UsageError
from cml_infra.spec import GPU_NAMES, SIZES, RunnerSpec, parse_gpu

CLOUDS = ("aws", "gcp", "azure")


def _spec(cloud, **changes):
    fields = {"name": "box-1", "cloud": cloud, "idle_timeout": 60, "ttl": 3600}
    fields.update(changes)
    return RunnerSpec(**fields)


def _raw(cloud):
    """The catalog file as plain data, for breaking it on purpose."""
    return yaml.safe_load(path(cloud).read_text("utf-8"))


def _resolve(cloud, spec):
    """The placement of `spec` in its first region, on the market it asks for."""
    return cloud.resolve(spec, region=spec.region, spot=spec.spot, max_price=spec.max_price)


def _every_gpu_offer():
    return [
        pytest.param(cloud, name, count, ref, id=f"{cloud}-{name}:{count}")
        for cloud in CLOUDS
        for name, counts in load(cloud).gpus.items()
        for count, ref in counts.items()
    ]


def test_clouds_with_catalog():
    with_catalog = [name for name, cls in clouds.classes().items() if cls.HAS_CATALOG]
    assert sorted(with_catalog) == sorted(CLOUDS)


def test_the_data_files_are_the_catalogs_of_those_clouds():
    assert sorted(f.name for f in path("aws").parent.iterdir() if f.name.endswith(".yaml")) == [
        f"{cloud}.yaml" for cloud in sorted(CLOUDS)
    ]
    assert not path("local").is_file()


@pytest.mark.parametrize("cloud", CLOUDS)
def test_each_catalog_loads(cloud):
    catalog = load(cloud)
    assert isinstance(catalog, Catalog)
    assert catalog.cloud == cloud
    assert isinstance(catalog.as_of, date)
    assert catalog.source
    assert catalog.default_region in catalog.regions
    assert sorted(catalog.sizes) == sorted(SIZES)
    assert catalog.gpus
    assert set(catalog.gpus) <= set(GPU_NAMES)
    assert catalog.gpu_type_prefixes
    assert load(cloud) is catalog, "load() is cached"


@pytest.mark.parametrize("cloud", CLOUDS)
def test_every_reference_is_a_row_of_instance_types(cloud):
    catalog = load(cloud)
    ids = {offer.id for offer in catalog.instance_types}
    assert len(ids) == len(catalog.instance_types)
    for size, ref in catalog.sizes.items():
        assert ref in ids, size
        assert catalog.offer(ref).gpu is None, size
    for name, counts in catalog.gpus.items():
        for count, ref in counts.items():
            assert ref in ids, f"{name}:{count}"
            offer = catalog.offer(ref)
            assert (offer.gpu, offer.gpu_count) == (name, count)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_every_row_is_priced_and_spot_is_cheaper(cloud):
    for offer in load(cloud).instance_types:
        assert offer.price is not None and offer.price > 0, offer.id
        assert offer.spot_price is not None and 0 < offer.spot_price < offer.price, offer.id
        assert offer.hourly(spot=False) == offer.price
        assert offer.hourly(spot=True) == offer.spot_price
        assert offer.vcpus > 0 and offer.memory_gib > 0, offer.id


@pytest.mark.parametrize(("cloud", "name", "count", "ref"), _every_gpu_offer())
@pytest.mark.parametrize("spot", [False, True], ids=["on-demand", "spot"])
def test_every_gpu_offer_resolves_to_its_row(cloud, name, count, ref, spot):
    catalog = load(cloud)
    offer = catalog.offer(ref)
    placement = _resolve(clouds.get(cloud), _spec(cloud, gpu=name, gpu_count=count, spot=spot))
    assert placement.cloud == cloud
    assert placement.region == catalog.default_region
    assert placement.instance_type == offer.instance_type
    assert (placement.gpu, placement.gpu_count) == (name, count)
    assert placement.accelerator == offer.accelerator
    assert placement.spot is spot
    # The offerings' figure in the region when there is one, else the yaml's fallback.
    index = offerings_of(cloud)
    assert placement.hourly_price == hourly(offer, index, catalog.default_region, spot)
    if cloud == "gcp" and offer.instance_type.startswith("n1-"):
        # GCP n1 machine types carry no GPU: the row names the accelerator to attach.
        assert placement.accelerator is not None
        assert placement.accelerator.startswith("nvidia-tesla-")
    else:
        assert placement.accelerator is None


@pytest.mark.parametrize(
    ("cloud", "gpu", "accelerator"),
    [("gcp", "t4", "nvidia-tesla-t4"), ("gcp", "v100", "nvidia-tesla-v100")],
)
def test_gcp_n1_rows_attach_an_accelerator(cloud, gpu, accelerator):
    placement = _resolve(clouds.get(cloud), _spec(cloud, gpu=gpu, gpu_count=1))
    assert placement.instance_type.startswith("n1-")
    assert placement.accelerator == accelerator


@pytest.mark.parametrize(("cloud", "size"), [(c, s) for c in CLOUDS for s in SIZES])
def test_every_size_resolves(cloud, size):
    catalog = load(cloud)
    placement = _resolve(clouds.get(cloud), _spec(cloud, size=size))
    assert placement.instance_type == catalog.offer(catalog.sizes[size]).instance_type
    assert placement.gpu is None
    assert placement.gpu_count == 0


@pytest.mark.parametrize("cloud", CLOUDS)
def test_no_size_means_m(cloud):
    catalog = load(cloud)
    placement = _resolve(clouds.get(cloud), _spec(cloud))
    assert placement.instance_type == catalog.offer(catalog.sizes["m"]).instance_type


@pytest.mark.parametrize(("cloud", "gpu"), [("gcp", "a10g"), ("azure", "a10g"), ("azure", "l4")])
def test_a_gpu_the_cloud_does_not_offer(cloud, gpu):
    with pytest.raises(UsageError) as caught:
        _resolve(clouds.get(cloud), _spec(cloud, gpu=gpu, gpu_count=1))
    assert caught.value.source == "--gpu"
    message = str(caught.value)
    assert message.startswith(f"--gpu: {cloud} does not offer '{gpu}'; it offers: ")
    offered = message.partition("it offers: ")[2].split(", ")
    assert offered == sorted(load(cloud).gpus)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_a_count_the_cloud_does_not_offer(cloud):
    with pytest.raises(UsageError) as caught:
        _resolve(clouds.get(cloud), _spec(cloud, gpu="t4", gpu_count=3))
    assert caught.value.source == "--gpu"
    message = str(caught.value)
    assert message.startswith(f"--gpu: {cloud} does not offer t4:3; it offers: ")
    offered = message.partition("it offers: ")[2].split(", ")
    assert offered == [f"t4:{count}" for count in sorted(load(cloud).gpus["t4"])]


def test_aws_a100_comes_in_eights_only():
    with pytest.raises(UsageError, match=r"^--gpu: aws does not offer a100:1; it offers: a100:8$"):
        _resolve(clouds.get("aws"), _spec("aws", gpu="a100", gpu_count=1))


@pytest.mark.parametrize(
    ("cloud", "region", "hint"),
    [
        ("aws", "eu-west1", "did you mean 'eu-west-1'? "),
        ("gcp", "us-central", "did you mean 'us-central1'? "),
        ("azure", "east-us", "did you mean 'eastus'? "),
        ("aws", "mars-1", ""),
    ],
)
def test_unknown_region_lists_the_regions(cloud, region, hint):
    catalog = load(cloud)
    with pytest.raises(UsageError) as caught:
        _resolve(clouds.get(cloud), _spec(cloud, region=region))
    assert caught.value.source == "--region"
    assert str(caught.value) == (
        f"--region: unknown region {region!r} for {cloud}; "
        f"{hint}valid: {', '.join(known_regions(catalog, offerings_of(cloud)))}"
    )


@pytest.mark.parametrize("cloud", CLOUDS)
def test_every_region_resolves_and_offers_its_zones(cloud):
    catalog = load(cloud)
    cloud_obj = clouds.get(cloud)
    for region, zones in catalog.regions.items():
        placement = _resolve(cloud_obj, _spec(cloud, region=region))
        assert placement.region == region
        assert placement.zone is None, "the attempts choose the zone"
        if zones and not cloud_obj.ZONE_REQUIRED:  # the cloud's own pick first
            assert cloud_obj.zones(region) == (None, *zones)
        else:
            assert cloud_obj.zones(region) == tuple(zones)


def test_gcp_regions_have_zones_in_them():
    for region, zones in load("gcp").regions.items():
        assert zones, region
        assert all(zone.rpartition("-")[0] == region for zone in zones), region


def test_region_default():
    assert load("aws").region(None) == "us-east-1"
    assert load("gcp").region(None) == "us-central1"
    assert load("azure").region(None) == "eastus"


@pytest.mark.parametrize(
    ("cloud", "instance_type", "builtin"),
    [
        ("aws", "g4dn.xlarge", True),
        ("aws", "p5.48xlarge", True),
        ("aws", "m7i.large", False),
        ("gcp", "a2-highgpu-1g", True),
        ("gcp", "g2-standard-4", True),
        ("gcp", "n1-standard-4", False),  # GPUs attach to n1; none are built in
        ("gcp", "e2-standard-4", False),
        ("azure", "Standard_NC6s_v3", True),
        ("azure", "Standard_D4s_v5", False),
    ],
)
def test_has_builtin_gpu_by_the_catalogs_families(cloud, instance_type, builtin):
    assert load(cloud).has_builtin_gpu(instance_type) is builtin


def test_for_type_finds_a_bare_row_only():
    assert load("aws").for_type("g4dn.xlarge").id == "g4dn.xlarge"
    assert load("aws").for_type("c7i.large") is None
    # n1-standard-4 is in the GCP table only with a T4 attached: not a bare row.
    assert load("gcp").for_type("n1-standard-4") is None
    assert load("gcp").for_type("e2-standard-2").price == 0.067


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("t4", ("t4", 1)),
        ("a100:8", ("a100", 8)),
        ("T4", ("t4", 1)),
        (" A100-80GB:2 ", ("a100-80gb", 2)),
        ("h100:16", ("h100", 16)),
        ("l4:1", ("l4", 1)),
    ],
)
def test_parse_gpu_accepts(text, parsed):
    assert parse_gpu(text) == parsed


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("t4:0", "'t4:0': the count after ':' must be a whole number from 1 to 16"),
        ("t4:17", "'t4:17': the count after ':' must be a whole number from 1 to 16"),
        ("t4:x", "'t4:x': the count after ':' must be a whole number from 1 to 16"),
        ("t4:-1", "from 1 to 16"),
        ("t4:²", "from 1 to 16"),
        ("nope", "unknown GPU 'nope'; valid: "),
        ("h10", "unknown GPU 'h10'; did you mean 'h100'? valid: "),
        ("", "unknown GPU ''"),
    ],
)
def test_parse_gpu_rejects(text, fragment):
    with pytest.raises(UsageError) as caught:
        parse_gpu(text)
    assert caught.value.source == "--gpu"
    assert fragment in str(caught.value)


def test_parse_gpu_unknown_lists_every_gpu():
    with pytest.raises(UsageError) as caught:
        parse_gpu("x100")
    assert str(caught.value).endswith("valid: " + ", ".join(sorted(GPU_NAMES)))


def test_parse_gpu_uses_the_given_flag():
    with pytest.raises(UsageError, match=r"^CML_INFRA_GPU: "):
        parse_gpu("nope", flag="CML_INFRA_GPU")


def _break(cloud, change):
    raw = copy.deepcopy(_raw(cloud))
    change(raw)
    return raw


BROKEN = {
    "unknown gpu reference": (
        "aws",
        lambda raw: raw["gpus"]["t4"].update({1: "g4dn.nope"}),
        "gpus t4:1: 'g4dn.nope' is not a row with that GPU",
    ),
    "wrong gpu count": (
        "aws",
        lambda raw: raw["gpus"]["t4"].update({2: "g4dn.xlarge"}),
        "gpus t4:2: 'g4dn.xlarge' is not a row with that GPU",
    ),
    "row of another gpu": (
        "gcp",
        lambda raw: raw["gpus"]["t4"].update({1: "g2-standard-4"}),
        "gpus t4:1: 'g2-standard-4' is not a row with that GPU",
    ),
    "unknown gpu name": (
        "azure",
        lambda raw: raw["gpus"].update({"x100": {1: "Standard_NC6s_v3"}}),
        "gpus: unknown GPU name 'x100'",
    ),
    "missing size": (
        "gcp",
        lambda raw: raw["sizes"].pop("xl"),
        "sizes must be exactly s, m, l, xl",
    ),
    "extra size": (
        "aws",
        lambda raw: raw["sizes"].update({"xxl": "m7i.4xlarge"}),
        "sizes must be exactly s, m, l, xl",
    ),
    "unknown size reference": (
        "azure",
        lambda raw: raw["sizes"].update({"s": "Standard_Nope"}),
        "size s: 'Standard_Nope' is not a CPU row of instance_types",
    ),
    "size pointing at a gpu row": (
        "aws",
        lambda raw: raw["sizes"].update({"s": "g4dn.xlarge"}),
        "size s: 'g4dn.xlarge' is not a CPU row of instance_types",
    ),
    "duplicate id": (
        "aws",
        lambda raw: raw["instance_types"].append(dict(raw["instance_types"][0])),
        "instance_types: duplicate id",
    ),
    "default region not listed": (
        "gcp",
        lambda raw: raw.update({"default_region": "mars-central1"}),
        "default_region 'mars-central1' is not in regions",
    ),
    "unknown field": (
        "aws",
        lambda raw: raw["instance_types"][0].update({"prcie": 1.0}),
        "prcie",
    ),
    "missing price": (
        "azure",
        lambda raw: raw["instance_types"][0].pop("price"),
        "price",
    ),
    "gpu row of no listed family": (
        "gcp",
        lambda raw: raw["gpu_type_prefixes"].remove("g2-"),
        "g2-standard-4, g2-standard-24, g2-standard-48, g2-standard-96: GPU types no "
        "gpu_type_prefixes entry names",
    ),
    "no gpu families": (
        "gcp",
        lambda raw: raw.pop("gpu_type_prefixes"),
        "gpu_type_prefixes",
    ),
}


@pytest.mark.parametrize(("cloud", "change", "fragment"), list(BROKEN.values()), ids=list(BROKEN))
def test_a_broken_catalog_is_refused(cloud, change, fragment):
    Catalog.model_validate(_raw(cloud))  # the unbroken file is fine
    with pytest.raises(ValidationError) as caught:
        Catalog.model_validate(_break(cloud, change))
    assert fragment in str(caught.value)
