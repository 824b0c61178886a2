"""cml_infra.registry: one shape for clouds, forges, cleanup rules and actions."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cml_infra import clouds
from cml_infra.errors import UsageError
from cml_infra.registry import Registry


def test_a_plugin_is_found_by_name_or_alias_and_keeps_them():
    plugins: Registry[type] = Registry("widget")

    @plugins.register("round", aliases=("circle",))
    class Round:
        pass

    assert plugins.find("circle", "--widget") is Round
    assert (Round.name, Round.aliases) == ("round", ("circle",))  # type: ignore[attr-defined]
    assert list(plugins) == ["round"] and len(plugins) == 1


def test_an_unknown_name_lists_the_valid_ones_with_the_closest_first():
    plugins: Registry[type] = Registry("widget")
    for name in ("square", "round"):
        plugins.register(name)(type(name, (), {}))
    with pytest.raises(UsageError) as caught:
        plugins.find("rund", "--widget")
    assert str(caught.value) == (
        "--widget: unknown widget 'rund'; did you mean 'round'? valid: square, round"
    )


def test_naming_a_cloud_imports_only_that_cloud():
    """Every `up` and `down` names its cloud: the others' modules stay unloaded."""
    script = (
        "import sys; from cml_infra import clouds; clouds.get('local'); "
        "print(sorted(m for m in sys.modules if m.startswith('cml_infra.clouds.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == str(
        ["cml_infra.clouds.base", "cml_infra.clouds.local", "cml_infra.clouds.tags"]
    )
    assert clouds.names() == ["aws", "azure", "gcp", "local"]
    assert clouds.canonical("google") == "gcp"
