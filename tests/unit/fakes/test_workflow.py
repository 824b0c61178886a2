"""The workflow executor (tests/fakes/workflow.py) runs a workflow as Actions would: outputs
between steps and jobs, `if:`, artifacts, env precedence, composite actions; and its
expressions read as GitHub's do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes.workflow import Options, Scope, WorkflowError, WorkflowRun

WORKFLOW = """
name: synthetic
on: pull_request
env:
  LEVEL: workflow
  ONLY_WORKFLOW: w
  OVERRIDDEN: from-workflow
jobs:
  build:
    runs-on: [self-hosted, "gpu-${{ github.run_id }}-${{ github.run_attempt }}"]
    env:
      LEVEL: job
    outputs:
      greeting: ${{ steps.hello.outputs.greeting }}
      multi: ${{ steps.hello.outputs.multi }}
    steps:
      - uses: actions/checkout@0000000000000000000000000000000000000000 # v0
      - id: hello
        env:
          LEVEL: step
          WHO: ${{ vars.WHO || 'nobody' }}
        run: |
          echo "levels: $LEVEL $ONLY_WORKFLOW $OVERRIDDEN"
          echo "greeting=hello $WHO" >> "$GITHUB_OUTPUT"
          { echo "multi<<EOF"; echo one; echo two; echo EOF; } >> "$GITHUB_OUTPUT"
          echo "LATER=set-by-env-file" >> "$GITHUB_ENV"
          mkdir -p bin && printf '#!/bin/sh\\necho tool ran\\n' > bin/tool && chmod +x bin/tool
          echo "$GITHUB_WORKSPACE/bin" >> "$GITHUB_PATH"
          echo "## summary line" >> "$GITHUB_STEP_SUMMARY"
      - id: after
        run: |
          echo "later=$LATER level=$LEVEL"
          tool
          echo "pr=$(tr -d ' ' < "$GITHUB_EVENT_PATH")"
      - id: skipped
        if: github.event_name == 'push'
        run: echo never
      - id: local
        uses: ./greet
        with:
          who: ${{ steps.hello.outputs.greeting }}
      - id: in-folder
        working-directory: sub
        shell: bash
        run: |
          pwd
          echo "x" > made-here.txt
      - uses: actions/upload-artifact@0000000000000000000000000000000000000000 # v0
        with:
          name: results
          path: |
            sub/made-here.txt
            missing-is-fine.txt
  use:
    needs: build
    if: needs.build.outputs.greeting != ''
    runs-on: ubuntu-latest
    steps:
      - uses: actions/download-artifact@0000000000000000000000000000000000000000 # v0
        with:
          name: results
      - id: read
        env:
          GREETING: ${{ needs.build.outputs.greeting }}
          MULTI: ${{ needs.build.outputs.multi }}
        run: |
          echo "got=$GREETING/$(cat made-here.txt)"
          echo "lines=$(printf '%s' "$MULTI" | wc -l)"
      - id: fails
        run: exit 3
      - id: not-after-failure
        run: echo should not run
      - id: cleanup
        if: always()
        run: echo "cleanup ran, failure=${{ failure() }}"
  skipped-by-failure:
    needs: use
    runs-on: ubuntu-latest
    steps:
      - run: echo never
  always:
    needs: use
    if: always() && needs.use.result == 'failure'
    runs-on: ubuntu-latest
    steps:
      - run: echo "ran after ${{ needs.use.result }}"
"""

ACTION = """
name: greet
inputs:
  who:
    required: true
  punctuation:
    default: "!"
outputs:
  line:
    value: ${{ steps.say.outputs.line }}
runs:
  using: composite
  steps:
    - id: say
      shell: bash
      env:
        WHO: ${{ inputs.who }}
        MARK: ${{ inputs.punctuation }}
      run: |
        echo "line=$WHO$MARK from $(basename "$GITHUB_ACTION_PATH")" >> "$GITHUB_OUTPUT"
        echo "level inside: $LEVEL"
"""


@pytest.fixture
def project(tmp_path):
    checkout = tmp_path / "project"
    (checkout / "greet").mkdir(parents=True)
    (checkout / "greet" / "action.yml").write_text(ACTION)
    (checkout / "sub").mkdir()
    (checkout / ".git").mkdir()  # left behind by the checkout, as the action leaves .git alone
    workflow = tmp_path / "workflow.yml"
    workflow.write_text(WORKFLOW)
    return workflow, checkout


def run(project, tmp_path, **options):
    workflow, _ = project
    defaults = dict(
        event_name="pull_request", event={"number": 7}, run_id=41, run_attempt=2,
        vars={"WHO": "octocat"}, env_overrides={"OVERRIDDEN": "by-test"},
    )  # fmt: skip
    return WorkflowRun(workflow, tmp_path / "runs", Options(**{**defaults, **options})).run()


def test_a_workflow_runs_as_actions_would(project, tmp_path):
    _, checkout = project
    # actions/checkout copies the tree into the job's workspace, where `uses: ./greet` finds it.
    result = run(project, tmp_path, checkout=checkout)
    build, use = result.jobs["build"], result.jobs["use"]

    assert build.result == "success"
    assert build.runs_on == ["self-hosted", "gpu-41-2"]
    _, hello, after, skipped, local, folder, upload = build.steps
    # Env precedence: step over job over workflow; the test's override over all.
    assert "levels: step w by-test" in hello.log
    # GITHUB_ENV and GITHUB_PATH hold for the steps after; the event file is the payload.
    assert "later=set-by-env-file level=job" in after.log
    assert "tool ran" in after.log
    assert 'pr={"number":7}' in after.log
    assert skipped.outcome == "skipped"
    # A composite action: its inputs (defaults included), its folder, its outputs.
    assert local.outputs == {"line": "hello octocat! from greet"}
    assert local.steps[0].outputs["line"] == "hello octocat! from greet"
    assert "level inside: job" in local.log
    assert folder.log.strip().endswith("/build/workspace/sub")
    assert upload.outcome == "success"
    assert build.outputs == {"greeting": "hello octocat", "multi": "one\ntwo"}
    assert build.summary == "## summary line\n"

    # Outputs across jobs, an artifact across workspaces, a failure and always().
    assert use.result == "failure"
    download, read, fails, not_after, cleanup = use.steps
    assert download.outcome == "success"
    assert "got=hello octocat/x" in read.log
    assert "lines=1" in read.log  # two lines: one newline between them
    assert fails.outcome == "failure"
    assert not_after.outcome == "skipped"
    assert "cleanup ran, failure=true" in cleanup.log
    assert result.jobs["skipped-by-failure"].result == "skipped"
    assert "ran after failure" in result.jobs["always"].steps[0].log
    assert result.conclusion == "failure"


def test_overrides_of_with_and_a_job_subset(project, tmp_path):
    _, checkout = project
    result = run(
        project, tmp_path, checkout=checkout, jobs=["build"],
        with_overrides={"build.local": {"who": "tester", "punctuation": None}},
    )  # fmt: skip
    local = result.jobs["build"].step("local")
    # punctuation removed by the override: the action's default applies.
    assert local.inputs == {"who": "tester"}
    assert local.outputs == {"line": "tester! from greet"}
    assert set(result.jobs) == {"build"}


def test_checkout_copies_the_tree_into_each_job(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "train.py").write_text("print('trained')\n")
    (source / ".git").mkdir()
    workflow = tmp_path / "w.yml"
    workflow.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - uses: actions/checkout@0000000000000000000000000000000000000000\n"
        "        with: {persist-credentials: false}\n"
        "      - uses: actions/setup-python@0000000000000000000000000000000000000000\n"
        "      - run: python train.py && ls -a\n"
    )
    result = WorkflowRun(workflow, tmp_path / "runs", Options(checkout=source)).run()
    job = result.jobs["a"]
    assert job.result == "success", job.steps[-1].log
    assert "trained" in job.steps[-1].log
    assert ".git" not in job.steps[-1].log.split()
    assert [s.inputs for s in result.calls("actions/checkout")] == [
        {"persist-credentials": "false"}
    ]


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ("uses: someone/else@v1", "not one this executor knows"),
        ("uses: ./greet\n        with: {nope: 1}", "no input(s) ['nope']"),
        ("run: echo ${{ nothing.here }}", "unknown context"),
        ("run: echo ${{ hashFiles('x') }}", "hashFiles() is not supported"),
    ],
)
def test_what_it_does_not_know_is_an_error_not_a_pass(project, tmp_path, step, message):
    workflow, checkout = project
    workflow.write_text(f"on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - {step}\n")
    with pytest.raises(WorkflowError) as caught:
        WorkflowRun(workflow, tmp_path / "runs", Options(action_root=checkout)).run()
    assert message in str(caught.value)


CONTEXTS = {
    "github": {"event_name": "pull_request", "run_id": "41", "event": {"labels": ["a", "GPU"]}},
    "env": {"EMPTY": "", "NAME": "x"},
    "steps": {"up": {"outputs": {"name": "gpu-1"}}},
}


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("github.event_name == 'PULL_REQUEST'", True),
        ("github.event_name != 'push' && 'yes'", "yes"),
        ("env.EMPTY || 'fallback'", "fallback"),
        ("env.MISSING", None),
        ("steps.up.outputs.name", "gpu-1"),
        ("steps['up'].outputs['name']", "gpu-1"),
        ("github.run_id == 41", True),
        ("format('{0}-{1} {{x}}', 'a', 2)", "a-2 {x}"),
        ("contains(github.event.labels, 'gpu')", True),
        ("contains('cml-infra', 'INFRA')", True),
        ("startsWith(env.NAME, 'X') && endsWith('abc', 'c')", True),
        ("!env.EMPTY", True),
        ("fromJSON('{\"a\": [1, 2]}').a[1]", 2.0),
        ("join(github.event.labels, '+')", "a+GPU"),
        ("'it''s'", "it's"),
    ],
)
def test_expressions_read_as_githubs(source, value):
    assert Scope(CONTEXTS).evaluate(source) == value


def test_interpolation_and_conditions():
    scope = Scope(CONTEXTS)
    assert scope.text("gpu-${{ github.run_id }}-${{ '}}' }}") == "gpu-41-}}"
    assert scope.interpolate("${{ github.run_id == 41 }}") is True
    assert scope.condition("${{ env.NAME == 'x' }}")
    failed = Scope(CONTEXTS, status=lambda: "failure")
    # Without a status function an `if:` means success() && (...).
    assert not failed.condition("env.NAME == 'x'")
    assert failed.condition("failure() && env.NAME == 'x'")
    assert failed.condition("always()")


def test_the_event_file_is_the_payload(project, tmp_path):
    workflow, _ = project
    runner = WorkflowRun(workflow, tmp_path / "runs", Options(event={"number": 9}))
    assert json.loads(Path(runner.event_path).read_text()) == {"number": 9}
