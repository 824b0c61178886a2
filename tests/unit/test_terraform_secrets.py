"""Forge tokens stay with the launcher: Terraform's environment never carries them."""

from __future__ import annotations

import pytest

from cml_infra.terraform import SECRET_VARIABLES, Engine, EngineHome


def test_secret_variables_are_the_github_tokens():
    assert {"CML_INFRA_TOKEN", "GITHUB_TOKEN", "GH_TOKEN"} <= SECRET_VARIABLES


@pytest.mark.parametrize("variable", ["CML_INFRA_TOKEN", "GITHUB_TOKEN", "GH_TOKEN"])
def test_environment_drops_the_token(tmp_path, monkeypatch, variable):
    monkeypatch.setenv(variable, "ghp_unit_CANARY_123")
    monkeypatch.setenv("KEEP_ME", "yes")
    env = Engine(("terraform",), "terraform", EngineHome(tmp_path / "home")).environment()
    assert variable not in env
    assert "ghp_unit_CANARY_123" not in "".join(env.values())
    assert env["KEEP_ME"] == "yes"


def test_environment_drops_all_of_them_at_once(tmp_path, monkeypatch):
    for variable in ("CML_INFRA_TOKEN", "GITHUB_TOKEN", "GH_TOKEN"):
        monkeypatch.setenv(variable, f"ghp_{variable}_CANARY")
    env = Engine(("terraform",), "terraform", EngineHome(tmp_path / "home")).environment()
    assert not [key for key, value in env.items() if "CANARY" in value]
