"""cml_infra.spec: durations, names, labels and the RunnerSpec built from raw flag values."""

from __future__ import annotations

import pytest

from cml_infra import spec
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.spec import (
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
    assert parse_labels(["gpu,linux", "gpu", " big , ,linux", "x.y_z-1"]) == (
        "gpu",
        "linux",
        "big",
        "x.y_z-1",
    )


def test_parse_labels_empty():
    assert parse_labels([]) == ()
    assert parse_labels(["", " , "]) == ()


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
    with pytest.raises(ValueError):
        runner.name = "other"


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
    )


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
