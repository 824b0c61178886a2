"""cml_infra/action.py: the composite action's inputs become one cml-infra command, the secrets
travel in variables and never in the argument vector, and bad inputs are one line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cml_infra import __version__, action
from cml_infra.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIEfake\n-----END RSA PRIVATE KEY-----\n"


def inputs(**given):
    return {"INPUT_" + name.upper(): value for name, value in given.items()}


def test_up_maps_named_inputs_to_variables_and_args_to_words():
    invocation = action.plan(
        inputs(
            command="up", cloud="aws", gpu="t4", spot="true", region="us-east-1,us-west-2",
            labels="gpu,big", idle_timeout="10m", ttl="3h", single="True", backend="s3://b/p",
            args="--name 'gpu 1' --on-demand-fallback -- python train.py",
        ),
        executable="/venv/bin/cml-infra",
    )  # fmt: skip
    assert invocation.argv == (
        "/venv/bin/cml-infra", "up", "--name", "gpu 1", "--on-demand-fallback",
        "--", "python", "train.py",
    )  # fmt: skip
    assert invocation.env == {
        "CML_INFRA_CLOUD": "aws",
        "CML_INFRA_GPU": "t4",
        "CML_INFRA_SPOT": "true",
        "CML_INFRA_REGION": "us-east-1,us-west-2",
        "CML_INFRA_LABELS": "gpu,big",
        "CML_INFRA_IDLE_TIMEOUT": "10m",
        "CML_INFRA_TTL": "3h",
        "CML_INFRA_SINGLE": "true",
        "CML_INFRA_BACKEND": "s3://b/p",
    }


def test_empty_inputs_are_not_given_so_the_workflow_env_holds():
    invocation = action.plan(inputs(command="down", args="gpu-1", cloud="", token="  "))
    assert invocation.argv == ("cml-infra", "down", "gpu-1")
    assert invocation.env == {}


def test_secrets_go_to_variables_exactly_and_never_into_argv():
    invocation = action.plan(
        inputs(
            command="comment",
            token="ghs_secret",
            github_app_id="42",
            github_app_key=KEY,
            args="update report.md --pr",
        )
    )
    assert invocation.argv == ("cml-infra", "comment", "update", "report.md", "--pr")
    # The key keeps its last newline: a PEM is passed on as given.
    assert invocation.env == {
        "CML_INFRA_TOKEN": "ghs_secret",
        "CML_INFRA_GITHUB_APP_ID": "42",
        "CML_INFRA_GITHUB_APP_PRIVATE_KEY": KEY,
    }
    assert not any("ghs_secret" in word or "PRIVATE" in word for word in invocation.argv)


def test_false_booleans_are_passed_to_override_a_config_file():
    invocation = action.plan(inputs(command="up", spot="FALSE", single="false"))
    assert invocation.env == {"CML_INFRA_SPOT": "false", "CML_INFRA_SINGLE": "false"}


@pytest.mark.parametrize(
    ("given", "source", "words"),
    [
        ({"command": ""}, "command", ["got nothing", "up, down, cleanup, comment, report"]),
        ({"command": "destroy"}, "command", ["'destroy'", "valid: up, down"]),
        ({"command": "up\ndown"}, "command", ["'up\\ndown'"]),
        ({"command": "up", "spot": "yes"}, "spot", ["'yes'", "valid: true, false"]),
        ({"command": "down", "gpu": "t4"}, "gpu", ["`down` does not read", "only up"]),
        ({"command": "comment", "backend": "s3://b"}, "backend",
         ["only up, down, cleanup, report"]),
        ({"command": "up", "args": "--name 'unclosed"}, "args", ["cannot split"]),
    ],
)  # fmt: skip
def test_bad_inputs_name_the_input_and_the_valid_choices(given, source, words):
    with pytest.raises(UsageError) as caught:
        action.plan(inputs(**given))
    assert caught.value.source == source
    assert caught.value.exit_code == 2
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_the_child_environment_drops_the_raw_inputs():
    environ = {"PATH": "/bin", "CML_INFRA_HOME": "/state", **inputs(command="up", token="t0k")}
    invocation = action.plan(environ)
    child = action.child_environment(environ, invocation)
    assert child == {"PATH": "/bin", "CML_INFRA_HOME": "/state", "CML_INFRA_TOKEN": "t0k"}


def test_every_input_of_action_yml_is_mapped_and_passed_to_the_run_step():
    """action.yml and the table here agree: an input added to one and not the other fails."""
    metadata = yaml.safe_load((ROOT / "action.yml").read_text())
    declared = set(metadata["inputs"]) - {"command", "args", "python"}
    assert declared == {spec.name for spec in action.INPUTS}
    run = next(s for s in metadata["runs"]["steps"] if s.get("id") == "run")
    for spec in action.INPUTS:
        assert run["env"][spec.environment_name] == f"${{{{ inputs.{spec.name} }}}}"
    # No input is pasted into a script: template injection.
    for step in metadata["runs"]["steps"]:
        assert "inputs." not in step.get("run", "")


def test_the_cache_key_follows_the_sources_and_the_interpreter(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    (tmp_path / "cml_infra").mkdir()
    (tmp_path / "cml_infra" / "a.py").write_text("A = 1\n")
    (tmp_path / "cml_infra" / "__pycache__").mkdir()
    first = action.cache_key(tmp_path, (3, 12, 1))
    assert first.startswith("cml-infra-") and "-py3.12.1-" in first
    (tmp_path / "cml_infra" / "__pycache__" / "a.cpython-312.pyc").write_bytes(b"\0")
    assert action.cache_key(tmp_path, (3, 12, 1)) == first
    assert action.cache_key(tmp_path, (3, 13, 0)) != first
    (tmp_path / "cml_infra" / "a.py").write_text("A = 2\n")
    assert action.cache_key(tmp_path, (3, 12, 1)) != first


def test_prepare_puts_the_venv_in_the_tool_cache_under_its_key(tmp_path):
    outputs = action.prepare({"RUNNER_TOOL_CACHE": str(tmp_path)}, ROOT)
    assert outputs["venv"] == str(tmp_path / "cml-infra" / outputs["key"])


def run_module(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "cml_infra.action", *args],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_main_fails_in_one_line_with_exit_2():
    completed = run_module(env=inputs(command="destroy"))
    assert completed.returncode == 2
    assert completed.stderr == (
        "error: command: got 'destroy'; valid: up, down, cleanup, comment, report\n"
    )


def test_main_execs_cml_infra_with_the_mapped_variables(tmp_path):
    """The exec replaces the process: cml-infra's exit code and messages are the step's."""
    completed = run_module(env={**inputs(command="up", cloud="nowhere"), "CML_INFRA_CONFIG": ""})
    assert completed.returncode == 2
    assert "nowhere" in completed.stderr
    assert completed.stderr.count("\n") == 1


def test_main_prepare_writes_step_outputs(tmp_path):
    output = tmp_path / "output"
    completed = run_module(
        "prepare", env={"GITHUB_OUTPUT": str(output), "RUNNER_TOOL_CACHE": str(tmp_path)}
    )
    assert completed.returncode == 0, completed.stderr
    lines = dict(line.split("=", 1) for line in output.read_text().splitlines())
    assert set(lines) == {"key", "venv"}
    assert lines["venv"].startswith(str(tmp_path / "cml-infra" / "cml-infra-"))


def action_workflow(tmp_path, args):
    workflow = tmp_path / "workflow.yml"
    workflow.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - id: down\n        uses: ./\n        with:\n          command: down\n"
        f"          args: {args}\n"
    )
    return workflow


@pytest.mark.parametrize(
    ("args", "outcome", "said"),
    [
        ("--all", "success", "nothing to destroy"),
        # The exec: cml-infra's exit code is the step's, its one line the step's log.
        ("gpu-1", "failure", "error: NAME: no runner named 'gpu-1'"),
    ],
)
def test_uses_dot_runs_the_composite_action_with_this_venv(tmp_path, args, outcome, said):
    from tests.fakes.workflow import Options, WorkflowRun

    options = Options(
        action_root=ROOT,
        use_current_venv=True,
        env_overrides={"CML_INFRA_HOME": str(tmp_path / "state"), "CML_INFRA_CONFIG": ""},
    )
    result = WorkflowRun(action_workflow(tmp_path, args), tmp_path / "runs", options).run()
    step = result.jobs["a"].step("down")
    children = {child.id: child for child in step.steps}
    assert children["prepare"].stubbed and children["install"].stubbed
    assert children["cache"].outcome == "success"
    assert children["version"].log == f"cml-infra {__version__}\n"
    assert children["run"].outcome == outcome
    assert said in children["run"].log
    assert step.outcome == outcome


def test_a_fork_pull_request_skips_every_job_of_the_gpu_example(tmp_path):
    """A fork's run has no secrets and no OIDC token: nothing starts, rather than a failure
    (and teardown, with nothing launched, does not run `down` without credentials either)."""
    from tests.fakes.workflow import Options, WorkflowRun

    event = {"pull_request": {"number": 5, "head": {"repo": {"full_name": "fork/repo"}}}}
    options = Options(event_name="pull_request", event=event, repository="octo/repo")
    result = WorkflowRun(ROOT / "examples" / "train-report.yml", tmp_path, options).run()
    assert {job: r.result for job, r in result.jobs.items()} == dict.fromkeys(
        ("launch", "train", "report", "teardown"), "skipped"
    )
