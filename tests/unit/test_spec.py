"""cml_infra.spec: durations, names, labels and the RunnerSpec built from raw flag values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cml_infra import forge, spec
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.spec import (
    ForgeTarget,
    RunnerSpec,
    build_spec,
    format_duration,
    generate_name,
    parse_duration,
    parse_labels,
    validate_name,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("30s", 30),
        ("5m", 300),
        ("6h", 21600),
        ("1d", 86400),
        ("1h30m", 5400),
        ("1d2h3m4s", 86400 + 7200 + 180 + 4),
        ("5M", 300),
        (" 5m ", 300),
    ],
)
def test_parse_duration_accepts(text, seconds):
    assert parse_duration(text, "--ttl") == seconds


@pytest.mark.parametrize(
    "text",
    ["5x", "", "   ", "0", "-5", "0s", "0m0s", "1h30", "m", "5 m", "30m1h", "1.5h", "-5m", "5mm"],
)
def test_parse_duration_rejects_with_the_flag_first(text):
    with pytest.raises(UsageError) as caught:
        parse_duration(text, "--idle-timeout")
    assert caught.value.source == "--idle-timeout"
    assert str(caught.value).startswith("--idle-timeout: ")
    assert caught.value.exit_code == 2


def test_parse_duration_error_quotes_the_input_and_gives_a_hint():
    with pytest.raises(UsageError, match=r"'5x' is not a duration; use .*30s, 5m"):
        parse_duration("5x", "--ttl")
    with pytest.raises(UsageError, match=r"'0' must be longer than zero"):
        parse_duration("0", "--ttl")


@pytest.mark.parametrize("text", ["--5", "²"])
def test_parse_duration_never_raises_anything_but_usage_error(text):
    with pytest.raises(UsageError):
        parse_duration(text, "--ttl")


@pytest.mark.parametrize("seconds", [1, 59, 60, 90, 3600, 5400, 86400, 90061])
def test_format_duration_roundtrips(seconds):
    assert parse_duration(format_duration(seconds), "--ttl") == seconds


def test_format_duration_shapes():
    assert format_duration(5400) == "1h30m"
    assert format_duration(86400) == "1d"
    assert format_duration(0) == "0s"


@pytest.mark.parametrize("name", ["ab", "a1", "cml-abc123", "gpu-runner-2", "a" + "b" * 37 + "c"])
def test_validate_name_accepts(name):
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a",
        "Bad_Name",
        "UPPER",
        "1abc",
        "-abc",
        "abc-",
        "a_b",
        "a.b",
        "a b",
        "a" * 40,
        "ab/cd",
        "../x",
    ],
)
def test_validate_name_rejects(name):
    with pytest.raises(UsageError) as caught:
        validate_name(name)
    assert str(caught.value).startswith("--name: ")


def test_validate_name_uses_the_given_flag():
    with pytest.raises(UsageError, match=r"^CML_INFRA_NAME: "):
        validate_name("Bad", flag="CML_INFRA_NAME")


@pytest.mark.parametrize("name", ["on-aws", "on-demand", "on-local", "since-1", "since-x"])
def test_names_starting_with_on_are_reserved_for_the_cloud_label(name):
    # A runner called `on-aws` would carry the label cleanup reads as "lives on aws".
    with pytest.raises(UsageError, match=r"^--name: .*reserved"):
        validate_name(name)


def test_a_name_containing_on_elsewhere_is_fine():
    assert validate_name("run-on-gpu") == "run-on-gpu"


def test_validate_name_rejects_a_trailing_newline():
    with pytest.raises(UsageError):
        validate_name("abc\n")


def test_generate_name_matches_the_name_rule_and_varies():
    names = {generate_name() for _ in range(50)}
    assert len(names) > 1
    for name in names:
        assert validate_name(name) == name
        assert name.startswith("cml-")
        assert len(name) == len("cml-") + 6


def test_parse_labels_comma_and_repeated_in_order_without_duplicates():
    assert parse_labels(["gpu,linux", "gpu", " big ,linux", "x.y_z-1"]) == (
        "gpu",
        "linux",
        "big",
        "x.y_z-1",
    )


def test_parse_labels_none_given():
    assert parse_labels([]) == ()


@pytest.mark.parametrize("value", ["", " ", "a,,b", "a,", ",a", " , "])
def test_parse_labels_refuses_an_empty_label(value):
    with pytest.raises(UsageError, match=r"^--labels: .*has an empty label"):
        parse_labels([value])


@pytest.mark.parametrize("value", ["cml-infra-x", "gpu,cml-infra-mine"])
def test_parse_labels_reserved_prefix(value):
    with pytest.raises(UsageError, match=r"^--labels: .*reserved"):
        parse_labels([value])


@pytest.mark.parametrize("value", ["a b", "gpu,-x", "é", "a/b", "x" * 65, ".hidden", "a:b"])
def test_parse_labels_invalid_characters(value):
    with pytest.raises(UsageError) as caught:
        parse_labels([value])
    assert str(caught.value).startswith("--labels: ")
    assert "is not a valid label" in str(caught.value)


def test_parse_labels_accepts_64_characters():
    assert parse_labels(["x" * 64]) == ("x" * 64,)


def _spec(**changes):
    fields = {"name": "gpu-box", "cloud": "local", "idle_timeout": 60, "ttl": 3600}
    fields.update(changes)
    return RunnerSpec(**fields)


def test_all_labels_adds_the_unique_label_last():
    assert _spec(labels=("gpu", "linux")).all_labels == ("gpu", "linux", "cml-infra-gpu-box")
    assert _spec().all_labels == ("cml-infra-gpu-box",)
    assert spec.AUTO_LABEL_PREFIX == "cml-infra-"


def test_runner_spec_is_frozen():
    runner = _spec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        runner.name = "other"  # type: ignore[misc]


def test_build_spec_parses_every_flag():
    built = build_spec(
        cloud="local",
        name="abc",
        region=None,
        idle_timeout="1m",
        ttl="1h30m",
        single=True,
        labels=["gpu,linux", "gpu"],
        command=["echo", "hi"],
    )
    assert built == RunnerSpec(
        name="abc",
        cloud="local",
        idle_timeout=60,
        ttl=5400,
        single=True,
        labels=("gpu", "linux"),
        command=("echo", "hi"),
        # A task takes the folder it is launched from.
        workdir=Path.cwd().resolve(),
    )


def _task_spec(**changes):
    fields = {"cloud": "local", "name": "abc", "region": None, "idle_timeout": "1m", "ttl": "1h",
              "single": True, "labels": [], "command": ["python", "train.py"]}  # fmt: skip
    fields.update(changes)
    return build_spec(**fields)


def test_a_task_takes_its_workdir_and_out_paths(tmp_path):
    (tmp_path / "project").mkdir()
    built = _task_spec(workdir=str(tmp_path / "project"), out=["./model.bin", "runs//", "runs"])
    assert built.workdir == (tmp_path / "project").resolve()
    assert built.outputs == ("model.bin", "runs")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"command": [], "single": False, "workdir": "."}, "--workdir: applies to a task"),
        ({"command": [], "single": False, "out": ["m"]}, "--out: applies to a task"),
        ({"command": [], "repo": "octo/repo", "workdir": "."}, "--workdir: applies to a task"),
        ({"workdir": "/nonexistent/project"}, "--workdir: /nonexistent/project: not a folder"),
        ({"out": ["../etc/passwd"]}, "--out: '../etc/passwd' must be a path inside"),
        ({"out": ["/abs"]}, "--out: '/abs' must be a path inside"),
    ],
)
def test_task_flags_are_checked(changes, message):
    with pytest.raises(UsageError) as caught:
        _task_spec(**changes)
    assert str(caught.value).startswith(message), caught.value


def test_build_spec_generates_a_name_when_none_given():
    built = build_spec(
        cloud="local",
        name=None,
        region=None,
        idle_timeout="5m",
        ttl="24h",
        single=False,
        labels=[],
        command=[],
    )
    assert validate_name(built.name) == built.name


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"name": "Bad"}, "--name"),
        ({"idle_timeout": "5x"}, "--idle-timeout"),
        ({"ttl": "0"}, "--ttl"),
        ({"labels": ["a b"]}, "--labels"),
    ],
)
def test_build_spec_errors_name_their_flag(changes, flag):
    fields = {
        "cloud": "local",
        "name": "abc",
        "region": None,
        "idle_timeout": "5m",
        "ttl": "24h",
        "single": False,
        "labels": [],
        "command": [],
    }
    fields.update(changes)
    with pytest.raises(UsageError) as caught:
        build_spec(**fields)
    assert caught.value.source == flag
    assert isinstance(caught.value, CmlInfraError)


def _build(**changes):
    fields = {
        "cloud": "aws",
        "name": "abc",
        "region": None,
        "idle_timeout": "5m",
        "ttl": "24h",
        "single": False,
        "labels": [],
        "command": [],
    }
    fields.update(changes)
    return build_spec(**fields)


def test_build_spec_parses_the_placement_flags():
    built = _build(
        region="eu-west-1",
        gpu="A10G:4",
        spot=True,
        max_price="2.5",
        image="ami-0123456789abcdef0",
        tags=["team=ml", "cost-center=42"],
    )
    assert built == RunnerSpec(
        name="abc",
        cloud="aws",
        region="eu-west-1",
        idle_timeout=300,
        ttl=86400,
        gpu="a10g",
        gpu_count=4,
        spot=True,
        max_price=2.5,
        image="ami-0123456789abcdef0",
        tags={"team": "ml", "cost-center": "42"},
    )


def test_build_spec_defaults_leave_placement_to_the_cloud():
    built = _build()
    assert (built.gpu, built.gpu_count, built.size, built.instance_type) == (None, 0, None, None)
    assert (built.spot, built.max_price, built.image, built.tags) == (False, None, None, {})


def test_build_spec_size_and_type():
    assert _build(size="xl").size == "xl"
    assert _build(instance_type="g5.2xlarge").instance_type == "g5.2xlarge"
    assert _build(instance_type="Standard_NC6s_v3").instance_type == "Standard_NC6s_v3"
    # GCP attaches GPUs to an n1 type: --type and --gpu together are for the cloud to judge.
    built = _build(cloud="gcp", instance_type="n1-standard-16", gpu="t4:2")
    assert (built.instance_type, built.gpu, built.gpu_count) == ("n1-standard-16", "t4", 2)


@pytest.mark.parametrize("price", ["-1", "0", "0.0", "abc", "inf", "-inf", "nan", "", "1e400"])
def test_max_price_must_be_a_positive_number(price):
    with pytest.raises(UsageError) as caught:
        _build(spot=True, max_price=price)
    assert caught.value.source == "--max-price"
    assert str(caught.value).startswith(f"--max-price: {price!r} ")


@pytest.mark.parametrize(("price", "value"), [("0.75", 0.75), ("2", 2.0), (" 1.5 ", 1.5)])
def test_max_price_accepts(price, value):
    assert _build(spot=True, max_price=price).max_price == value


def test_max_price_without_spot():
    with pytest.raises(UsageError) as caught:
        _build(max_price="0.75")
    assert caught.value.source == "--max-price"
    assert "add --spot" in str(caught.value)


def test_parse_max_price_none_is_none():
    assert spec.parse_max_price(None, spot=False) is None
    assert spec.parse_max_price(None, spot=True) is None


@pytest.mark.parametrize(
    "changes",
    [
        {"size": "s", "gpu": "t4"},
        {"size": "m", "instance_type": "m7i.large"},
        {"size": "xl", "gpu": "a100:8", "instance_type": "p4d.24xlarge"},
    ],
)
def test_size_with_gpu_or_type(changes):
    with pytest.raises(UsageError) as caught:
        _build(**changes)
    assert caught.value.source == "--size"
    assert "give one of --size, --gpu or --type, not several" in str(caught.value)


@pytest.mark.parametrize("size", ["xxl", "M", "medium", ""])
def test_unknown_size(size):
    with pytest.raises(UsageError) as caught:
        _build(size=size)
    assert caught.value.source == "--size"
    assert str(caught.value).endswith("valid: s, m, l, xl")


@pytest.mark.parametrize("gpu", ["x100", "t4:0", "t4:x", "t4:17"])
def test_bad_gpu_names_its_flag(gpu):
    with pytest.raises(UsageError) as caught:
        _build(gpu=gpu)
    assert caught.value.source == "--gpu"


@pytest.mark.parametrize(
    "instance_type",
    ["g5 2xlarge", "g5/2xlarge", "", "-g5.xlarge", "g5.xlarge;rm", "é", "x" * 65, "a\n"],
)
def test_type_with_bad_characters(instance_type):
    with pytest.raises(UsageError) as caught:
        _build(instance_type=instance_type)
    assert caught.value.source == "--type"
    assert "is not an instance type name" in str(caught.value)


@pytest.mark.parametrize("image", ["", "   "])
def test_empty_image(image):
    with pytest.raises(UsageError, match=r"^--image: the image must not be empty$"):
        _build(image=image)


@pytest.mark.parametrize(
    ("values", "parsed"),
    [
        (["team=ml"], {"team": "ml"}),
        (["team=ml", "team=cv"], {"team": "cv"}),
        (["empty="], {"empty": ""}),
        (["url=a=b=c"], {"url": "a=b=c"}),
        ([" k =v "], {"k": "v "}),
        (["k.a_b/c-d=x"], {"k.a_b/c-d": "x"}),
        (["Team=ML"], {"Team": "ML"}),
        (["k=" + "v" * 255], {"k": "v" * 255}),
        (["k" * 63 + "=v"], {"k" * 63: "v"}),
        ([], {}),
    ],
)
def test_parse_tags_accepts(values, parsed):
    assert spec.parse_tags(values) == parsed


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("team", "'team' is not KEY=VALUE"),
        ("=ml", "'=ml' is not KEY=VALUE"),
        ("a b=c", "'a b=c' is not KEY=VALUE"),
        ("k" * 64 + "=v", "is not KEY=VALUE"),
        ("-k=v", "is not KEY=VALUE"),
        ("cml-infra-managed=false", "'cml-infra-managed': keys starting with 'cml-infra-'"),
        ("CML-INFRA-Name=x", "'CML-INFRA-Name': keys starting with 'cml-infra-'"),
        ("k=" + "v" * 256, "'k': the value is longer than 255 characters"),
    ],
)
def test_parse_tags_rejects(value, fragment):
    with pytest.raises(UsageError) as caught:
        spec.parse_tags(["ok=1", value])
    assert caught.value.source == "--tag"
    assert fragment in str(caught.value)


def test_build_spec_tag_errors_name_the_flag():
    with pytest.raises(UsageError) as caught:
        _build(tags=["no-equals-sign"])
    assert caught.value.source == "--tag"


# --- runner mode: --repo / --org and the flags that go with them ------------------------------


def test_build_spec_runner_flags():
    built = _build(
        org="octo",
        runner_group="3",
        github_url="https://ghe.example/api/v3/",
        startup_timeout="2m",
        wait=False,
        runner_archive="https://mirror.example/r.tgz",
    )
    assert built.runner_mode
    assert built.forge == ForgeTarget(org="octo", group="3", api_url="https://ghe.example/api/v3")
    assert built.startup_timeout == 120
    assert built.wait is False
    assert built.runner_archive == "https://mirror.example/r.tgz"


def test_build_spec_defaults_outside_runner_mode():
    built = _build()
    assert not built.runner_mode and built.forge is None
    assert built.startup_timeout == 900 and built.wait is True
    assert _build(org="octo").runner_mode
    # The forge's own API unless one is given.
    assert _build(repo="octo/repo").forge.api_url is None


@pytest.mark.parametrize(
    ("changes", "flag", "fragment"),
    [
        ({"repo": "octo/repo", "org": "octo"}, "--repo", "one of them"),
        ({"repo": "octo/repo", "command": ["echo", "hi"]}, "--repo", "drop the task"),
        ({"runner_group": "3"}, "--runner-group", "add --repo"),
        ({"runner_archive": "x.tgz"}, "--runner-archive", "add --repo"),
        ({"reuse_idle": True, "labels": ["gpu"]}, "--reuse-idle", "add --repo"),
        ({"repo": "o/r", "reuse_idle": True}, "--reuse-idle", "needs --labels"),
        ({"github_url": "https://ghe.example/api/v3"}, "--github-url", "add --repo"),
        ({"repo": "o/r", "startup_timeout": "0"}, "--startup-timeout", "longer than zero"),
    ],
)
def test_build_spec_runner_flag_errors(changes, flag, fragment):
    with pytest.raises(UsageError) as caught:
        _build(**changes)
    assert caught.value.source == flag
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("text", "regions"),
    [
        (None, ()),
        ("us-east-1", ("us-east-1",)),
        ("us-east-1,us-west-2", ("us-east-1", "us-west-2")),
        (" us-east-1 , us-west-2 ", ("us-east-1", "us-west-2")),
    ],
)
def test_parse_regions(text, regions):
    assert spec.parse_regions(text) == regions


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "empty region"), ("a,,b", "empty region"), ("a,", "empty region"), ("a,b,a", "a more")],
)
def test_parse_regions_rejects(text, fragment):
    with pytest.raises(UsageError, match=rf"^--region: .*{fragment}"):
        spec.parse_regions(text)


def test_a_region_list_is_a_first_choice_and_fallbacks():
    built = _build(region="us-east-1,us-west-2,eu-west-1")
    assert built.region == "us-east-1"
    assert built.fallback_regions == ("us-west-2", "eu-west-1")


def test_on_demand_fallback_needs_spot():
    with pytest.raises(UsageError, match=r"^--on-demand-fallback: .*add --spot"):
        _build(on_demand_fallback=True)


@pytest.mark.parametrize(
    ("changes", "flag", "fragment"),
    [
        ({"repo": "noslash"}, "--repo", "is not OWNER/NAME"),
        ({"repo": "a/b/c"}, "--repo", "is not OWNER/NAME"),
        ({"org": "a/b"}, "--org", "is not an organization name"),
        ({"repo": "o/r", "github_url": "api.github.com"}, "--github-url", "not an http(s) URL"),
        ({"repo": "o/r", "github_url": "https://a b"}, "--github-url", "not an http(s) URL"),
    ],
)
def test_names_the_forge_refuses_are_checked_by_the_forge(changes, flag, fragment):
    """The spec is forge-neutral; whether a name is valid there is the forge's to say, before
    anything is created (lifecycle.prepare asks it)."""
    built = _build(**changes)
    with pytest.raises(UsageError) as caught:
        forge.check(built.forge)
    assert caught.value.source == flag
    assert fragment in str(caught.value)


# --- bounds: what the new-user run found accepted without complaint ------------------


@pytest.mark.parametrize(
    "text", ["99999999999999999999d", "9999999999999s", "367d", "8785h", "99999999999999999999"]
)
@pytest.mark.parametrize("flag", ["--ttl", "--idle-timeout", "--max-age"])
def test_a_duration_over_the_maximum_is_refused_not_overflowed(text, flag):
    with pytest.raises(UsageError) as caught:
        parse_duration(text, flag)
    assert caught.value.source == flag and "366d" in str(caught.value)


def test_the_maximum_duration_itself_is_fine():
    assert parse_duration("366d", "--ttl") == spec.MAX_DURATION_SECONDS


def test_single_with_nothing_to_do_is_refused():
    with pytest.raises(UsageError, match=r"^--single: the instance would have nothing to do"):
        _build(single=True)
    assert _build(single=True, command=["true"]).single
    assert _build(single=True, repo="octo/repo").single


def test_an_empty_name_is_refused_not_replaced():
    with pytest.raises(UsageError) as caught:
        _build(name="")
    assert caught.value.source == "--name"


def test_a_ttl_no_longer_than_the_idle_timeout_gets_a_warning():
    assert _build(ttl="10s", idle_timeout="1h").warnings() == [
        "--idle-timeout 1h is not shorter than --ttl 10s: the ttl ends the instance first"
    ]
    assert _build(ttl="2h", idle_timeout="1h").warnings() == []


def test_the_data_identity_and_docker_flags_reach_the_spec_as_given():
    built = _build(instance_profile="data-reader", docker=False)
    assert built.instance_profile == "data-reader"
    assert built.service_account is None and built.identity is None
    assert built.docker is False
    assert built.data_identities == {"--instance-profile": "data-reader"}
    assert _build().docker is None, "unset: the placement's GPUs decide"


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"instance_profile": ""}, "--instance-profile"),
        ({"service_account": " data@p.iam.gserviceaccount.com"}, "--service-account"),
        ({"instance_profile": "a", "identity": "/subscriptions/x"}, "--instance-profile"),
    ],
)
def test_an_empty_padded_or_second_data_identity_is_refused(changes, flag):
    with pytest.raises(UsageError) as caught:
        _build(**changes)
    assert caught.value.source == flag


def test_region_any_and_optimize():
    from cml_infra.spec import build_spec

    base = {"cloud": "aws", "name": "box-1", "idle_timeout": "5m", "ttl": "1h", "single": False,
            "labels": (), "command": ("true",)}  # fmt: skip
    spec = build_spec(**base, region="any")
    assert (spec.region, spec.any_region, spec.optimize, spec.attempt_timeout) == (
        None, True, "price", 300,
    )  # fmt: skip
    listed = build_spec(**base, region="us-east-1,us-west-2", optimize="price")
    assert (listed.regions, listed.optimize) == (("us-east-1", "us-west-2"), "price")
    assert build_spec(**base, region=None).optimize == "order"
    assert build_spec(**base, region=None, attempt_timeout="90s").attempt_timeout == 90
    with pytest.raises(UsageError, match="--optimize: unknown optimization 'cheap'"):
        build_spec(**base, region=None, optimize="cheap")
    with pytest.raises(UsageError, match="--region: 'any,us-east-1'"):
        build_spec(**base, region="any,us-east-1")
