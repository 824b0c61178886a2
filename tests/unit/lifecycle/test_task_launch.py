"""What a launch tells the agent of its task and its channel, before anything is created."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import pytest

from cml_infra.backends import parse
from cml_infra.backends.ledger import RemoteLedger
from cml_infra.clouds import aws
from cml_infra.lifecycle import prepare
from cml_infra.spec import ForgeTarget, RunnerSpec, build_spec
from cml_infra.state import StateDir

BACKEND = "s3://bucket/ci?region=us-east-1"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "train.py").write_text("print('hi')\n")
    monkeypatch.chdir(folder)
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    return folder


def _ledger(tmp_path: Path) -> RemoteLedger:
    return RemoteLedger(StateDir(tmp_path / "state"), parse(BACKEND))


def _agent_config(launch: prepare.Launch) -> dict:
    script = launch.checked_script
    body = script.split("<<'CML_INFRA_CONFIG_EOF'\n", 1)[1].split("\nCML_INFRA_CONFIG_EOF", 1)[0]
    return json.loads(body)


def test_a_vm_task_with_a_backend_is_told_stand_ins_until_up_signs(
    tmp_path: Path, project: Path
) -> None:
    spec = build_spec(cloud="aws", name="job", region=None, idle_timeout="5m", ttl="1h",
                      single=True, labels=(), command=("python", "train.py"), size="s",
                      spot=True, out=("model.bin",))  # fmt: skip
    launch = prepare.plan(spec, _ledger(tmp_path))

    config = _agent_config(launch)
    assert config["workdir"]["url"].startswith("https://presigned-url.invalid/runners/")
    assert set(config["report"]["urls"]) == {"status.json", "instance.log", "outputs.tar.gz"}
    assert config["outputs"] == ["model.bin"]
    assert config["preemption"] == "aws-spot-notice"
    assert launch.packed is not None and launch.packed.files == 1


def test_a_runner_whose_reports_do_not_fit_the_user_data_goes_without_them(
    tmp_path: Path, project: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    spec = RunnerSpec(name="gpu-ci", cloud="aws", idle_timeout=300, ttl=3600, size="s",
                      forge=ForgeTarget(repo="octo/repo"))  # fmt: skip
    without = prepare.plan(spec, StateDir(tmp_path / "plain"))
    fits = len(gzip.compress(without.checked_script.encode()))
    # The script with the reports' URLs (and what sends them) is larger: only that one
    # does not fit.
    monkeypatch.setattr(aws, "USER_DATA_LIMIT", fits + 64)

    launch = prepare.plan(spec, _ledger(tmp_path))

    assert launch.task is None
    assert "report" not in _agent_config(launch)
    assert "do not fit in the user data aws takes beside the runner" in capsys.readouterr().err
    variables = launch.cloud.module_vars(spec, launch.attempts[0].placement,
                                         launch.context(launch.checked_script))  # fmt: skip
    assert gzip.decompress(base64.b64decode(variables["user_data_base64"])).decode() == (
        launch.checked_script
    )


def test_a_task_whose_script_does_not_fit_is_refused(
    tmp_path: Path, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cml_infra.errors import UsageError

    monkeypatch.setattr(aws, "USER_DATA_LIMIT", 4096)
    spec = build_spec(cloud="aws", name="job", region=None, idle_timeout="5m", ttl="1h",
                      single=True, labels=(), command=("python", "train.py"), size="s")  # fmt: skip
    with pytest.raises(UsageError, match=r"startup script: .* aws allows 4,096 bytes"):
        prepare.plan(spec, _ledger(tmp_path))
