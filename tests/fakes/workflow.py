"""A small GitHub Actions executor: a workflow file's jobs, run on this machine, in this process.

It exists so that the examples (examples/*.yml) and action.yml are tested as written: their
`run:` steps go through bash with the environment Actions gives them (the workflow's, job's and
step's `env`, GITHUB_OUTPUT, GITHUB_ENV, GITHUB_PATH, GITHUB_STEP_SUMMARY, GITHUB_EVENT_PATH,
GITHUB_WORKSPACE), their `${{ }}` expressions are evaluated (github, env, vars, secrets,
inputs, steps, needs, runner, job; literals, `!`, `==`, `!=`, `<`, `>`, `&&`, `||`, and the
functions always, success, failure, cancelled, contains, startsWith, endsWith, format, join,
toJSON, fromJSON), `if:` decides on jobs and steps, and `uses: ./` runs action.yml's composite
steps with its inputs.

What it is not: jobs run one after another (in `needs` order) on this machine whatever their
`runs-on` says; a third-party action is either one of KNOWN_ACTIONS (a recorded no-op, or the
artifact actions, which copy files through a folder of the run) or an error, never fetched.
Anything else it does not know (a matrix, a container, a reusable workflow) is an error too,
so that a test never passes by skipping what it meant to run.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class WorkflowError(Exception):
    """The workflow uses something this executor does not do, or is malformed."""


# ---------------------------------------------------------------------------------------------
# Expressions


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^']|'')*')
      | (?P<number>-?(?:0x[0-9a-fA-F]+|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?))
      | (?P<op>==|!=|<=|>=|&&|\|\||[!<>()\[\].,*])
      | (?P<name>[A-Za-z_][A-Za-z0-9_-]*)
    )""",
    re.VERBOSE,
)
STATUS_FUNCTIONS = {"always", "success", "failure", "cancelled"}


@dataclass(frozen=True)
class Token:
    kind: str
    text: str


def _tokens(source: str) -> list[Token]:
    tokens, position = [], 0
    while position < len(source):
        if source[position:].strip() == "":
            break
        match = _TOKEN.match(source, position)
        if match is None:
            raise WorkflowError(f"cannot read expression {source!r} at {source[position:]!r}")
        kind = match.lastgroup or ""
        tokens.append(Token(kind, match.group(kind)))
        position = match.end()
    return tokens


class _Parser:
    """Recursive descent over GitHub's expression grammar, to a small tuple tree."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = _tokens(source)
        self.position = 0

    def parse(self) -> tuple:
        tree = self._or()
        if self.position != len(self.tokens):
            raise WorkflowError(
                f"unexpected {self.tokens[self.position].text!r} in {self.source!r}"
            )
        return tree

    def _peek(self) -> Token | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self, text: str | None = None) -> Token:
        token = self._peek()
        if token is None or (text is not None and token.text != text):
            raise WorkflowError(f"expected {text or 'more'} in {self.source!r}")
        self.position += 1
        return token

    def _accept(self, *texts: str) -> str | None:
        token = self._peek()
        if token is not None and token.kind == "op" and token.text in texts:
            self.position += 1
            return token.text
        return None

    def _or(self) -> tuple:
        tree = self._and()
        while self._accept("||"):
            tree = ("or", tree, self._and())
        return tree

    def _and(self) -> tuple:
        tree = self._compare()
        while self._accept("&&"):
            tree = ("and", tree, self._compare())
        return tree

    def _compare(self) -> tuple:
        tree = self._unary()
        while operator := self._accept("==", "!=", "<", "<=", ">", ">="):
            tree = ("compare", operator, tree, self._unary())
        return tree

    def _unary(self) -> tuple:
        if self._accept("!"):
            return ("not", self._unary())
        return self._postfix()

    def _postfix(self) -> tuple:
        tree = self._primary()
        while True:
            if self._accept("."):
                token = self._take()
                if token.text == "*":
                    raise WorkflowError(f"object filters (.*) are not supported: {self.source!r}")
                tree = ("index", tree, ("literal", token.text))
            elif self._accept("["):
                tree = ("index", tree, self._or())
                self._take("]")
            else:
                return tree

    def _primary(self) -> tuple:
        token = self._take()
        if token.kind == "string":
            return ("literal", token.text[1:-1].replace("''", "'"))
        if token.kind == "number":
            text = token.text
            return ("literal", float(int(text, 16)) if "x" in text.lower() else float(text))
        if token.kind == "op" and token.text == "(":
            tree = self._or()
            self._take(")")
            return tree
        if token.kind != "name":
            raise WorkflowError(f"unexpected {token.text!r} in {self.source!r}")
        keywords = {"true": True, "false": False, "null": None}
        if token.text in keywords:
            return ("literal", keywords[token.text])
        if self._accept("("):
            arguments = []
            if not self._accept(")"):
                arguments.append(self._or())
                while self._accept(","):
                    arguments.append(self._or())
                self._take(")")
            return ("call", token.text, arguments)
        return ("context", token.text)


def _uses_status(tree: tuple) -> bool:
    if tree[0] == "call" and tree[1].lower() in STATUS_FUNCTIONS:
        return True
    return any(isinstance(part, tuple) and _uses_status(part) for part in tree[1:]) or any(
        isinstance(part, list) and any(_uses_status(item) for item in part) for part in tree[1:]
    )


def _lookup(mapping: Any, key: Any) -> Any:
    """Contexts are case-insensitive, and a missing property is null, not an error."""
    if isinstance(mapping, Mapping):
        key = to_string(key)
        if key in mapping:
            return mapping[key]
        folded = key.lower()
        return next((v for k, v in mapping.items() if str(k).lower() == folded), None)
    if isinstance(mapping, list) and isinstance(key, (int, float)) and not isinstance(key, bool):
        index = int(key)
        return mapping[index] if 0 <= index < len(mapping) else None
    return None


def to_string(value: Any) -> str:
    """How a value is written into a string (`${{ }}`) or compared as one."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, indent=2)
    return str(value)


def _to_number(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return 0.0
        try:
            return float(int(text, 16)) if text.lower().startswith("0x") else float(text)
        except ValueError:
            return math.nan
    return math.nan


def truthy(value: Any) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return False
    return value not in (None, False, 0, "")


def _equal(left: Any, right: Any) -> bool:
    if isinstance(left, str) and isinstance(right, str):
        return left.lower() == right.lower()
    if isinstance(left, (dict, list)) or isinstance(right, (dict, list)):
        return left is right
    if type(left) is type(right) and not isinstance(left, (int, float)):
        return bool(left == right)
    return _to_number(left) == _to_number(right)


def _compare(operator: str, left: Any, right: Any) -> bool:
    if operator == "==":
        return _equal(left, right)
    if operator == "!=":
        return not _equal(left, right)
    if isinstance(left, str) and isinstance(right, str):
        a, b = left.lower(), right.lower()
    else:
        a, b = _to_number(left), _to_number(right)  # type: ignore[assignment]
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[operator]


def _format(template: str, *arguments: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) in ("{{", "}}"):
            return match.group(0)[0]
        index = int(match.group(1))
        if index >= len(arguments):
            raise WorkflowError(f"format({template!r}): no argument {index}")
        return to_string(arguments[index])

    return re.sub(r"\{\{|\}\}|\{(\d+)\}", replace, template)


def _contains(search: Any, item: Any) -> bool:
    if isinstance(search, list):
        return any(_equal(element, item) for element in search)
    return to_string(item).lower() in to_string(search).lower()


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "contains": _contains,
    "startswith": lambda s, p: to_string(s).lower().startswith(to_string(p).lower()),
    "endswith": lambda s, p: to_string(s).lower().endswith(to_string(p).lower()),
    "format": lambda template, *args: _format(to_string(template), *args),
    "join": lambda items, sep=",": (
        to_string(sep).join(to_string(i) for i in items) if isinstance(items, list)
        else to_string(items)
    ),
    "tojson": lambda value: json.dumps(value, indent=2),
    "fromjson": lambda text: json.loads(to_string(text)),
}  # fmt: skip


@dataclass
class Scope:
    """What an expression can see: the contexts, and the status its status functions read
    ("success", "failure" or "cancelled")."""

    contexts: Mapping[str, Any]
    status: Callable[[], str] = lambda: "success"

    def evaluate(self, source: str) -> Any:
        return self._eval(_Parser(source).parse())

    def _eval(self, tree: tuple) -> Any:
        kind = tree[0]
        if kind == "literal":
            return tree[1]
        if kind == "context":
            name = tree[1].lower()
            if name not in self.contexts:
                raise WorkflowError(f"unknown context {tree[1]!r} here")
            return self.contexts[name]
        if kind == "index":
            return _lookup(self._eval(tree[1]), self._eval(tree[2]))
        if kind == "not":
            return not truthy(self._eval(tree[1]))
        if kind == "and":
            left = self._eval(tree[1])
            return self._eval(tree[2]) if truthy(left) else left
        if kind == "or":
            left = self._eval(tree[1])
            return left if truthy(left) else self._eval(tree[2])
        if kind == "compare":
            return _compare(tree[1], self._eval(tree[2]), self._eval(tree[3]))
        name, arguments = tree[1].lower(), [self._eval(a) for a in tree[2]]
        if name == "always":
            return True
        if name in ("success", "failure", "cancelled"):
            return self.status() == name
        if name not in FUNCTIONS:
            raise WorkflowError(f"function {tree[1]}() is not supported by this executor")
        return FUNCTIONS[name](*arguments)

    def interpolate(self, text: Any) -> Any:
        """`${{ }}` in a string replaced by their values; a string that is one expression and
        nothing else keeps its value's type (as `if:` and `with:` see it)."""
        if isinstance(text, list):
            return [self.interpolate(item) for item in text]
        if isinstance(text, dict):
            return {key: self.interpolate(value) for key, value in text.items()}
        if not isinstance(text, str) or "${{" not in text:
            return text
        parts, position, whole = [], 0, None
        for start, end, source in _expressions(text):
            parts.append(text[position:start])
            value = self.evaluate(source)
            if start == 0 and end == len(text):
                whole = value
            parts.append(to_string(value))
            position = end
        parts.append(text[position:])
        return whole if whole is not None else "".join(parts)

    def text(self, value: Any) -> str:
        return to_string(self.interpolate(value))

    def condition(self, value: Any) -> bool:
        """An `if:`: with no status function, `success() && (...)`, as Actions reads it."""
        if value is None:
            return self.status() == "success"
        if isinstance(value, bool):
            return value and self.status() == "success"
        source = str(value).strip()
        if source.startswith("${{") and source.endswith("}}") and source.count("${{") == 1:
            source = source[3:-2]
        tree = _Parser(source).parse()
        if not _uses_status(tree) and self.status() != "success":
            return False
        return truthy(self._eval(tree))


def _expressions(text: str) -> Iterable[tuple[int, int, str]]:
    position = 0
    while (start := text.find("${{", position)) != -1:
        index, quoted = start + 3, False
        while index < len(text):
            if text[index] == "'":
                quoted = not quoted
            elif not quoted and text.startswith("}}", index):
                break
            index += 1
        else:
            raise WorkflowError(f"unclosed ${{{{ in {text!r}")
        yield start, index + 2, text[start + 3 : index]
        position = index + 2


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class StepResult:
    """One step as it ran: `uses` and the `with:` inputs it got (evaluated), its outputs, and
    the output of its process (run steps; a composite step's children are in `steps`)."""

    job: str
    id: str
    name: str
    uses: str | None
    outcome: str
    conclusion: str
    outputs: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    log: str = ""
    stubbed: bool = False
    steps: list[StepResult] = field(default_factory=list)

    def walk(self) -> Iterable[StepResult]:
        yield self
        for child in self.steps:
            yield from child.walk()


@dataclass
class JobResult:
    id: str
    result: str
    outputs: dict[str, str]
    steps: list[StepResult]
    summary: str
    workspace: Path | None
    runs_on: Any = None

    def step(self, step_id: str) -> StepResult:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(f"job {self.id} has no step {step_id!r}")


@dataclass
class RunResult:
    jobs: dict[str, JobResult]
    root: Path

    @property
    def conclusion(self) -> str:
        results = {job.result for job in self.jobs.values()}
        return "failure" if "failure" in results else "success"

    def steps(self) -> Iterable[StepResult]:
        for job in self.jobs.values():
            for step in job.steps:
                yield from step.walk()

    def calls(self, uses: str) -> list[StepResult]:
        """The steps (composite steps' included) that used an action, e.g.
        "aws-actions/configure-aws-credentials"; `./` for the local action."""
        return [s for s in self.steps() if s.uses is not None and _action_name(s.uses) == uses]

    @property
    def log(self) -> str:
        """Everything every step printed, and the job summaries."""
        parts = [s.log for s in self.steps()] + [j.summary for j in self.jobs.values()]
        return "\n".join(parts)


def _action_name(uses: str) -> str:
    if uses.startswith("./"):
        return uses
    return uses.split("@", 1)[0].lower()


# ---------------------------------------------------------------------------------------------
# The executor


NOOP_ACTIONS = {
    "actions/cache",
    "aws-actions/configure-aws-credentials",
    "google-github-actions/auth",
    "azure/login",
}
# The actions a workflow may use besides `./`: recorded no-ops, or done here (checkout copies
# `checkout`, setup-python puts this Python on PATH, the artifact actions copy files).
KNOWN_ACTIONS = NOOP_ACTIONS | {
    "actions/checkout",
    "actions/setup-python",
    "actions/create-github-app-token",
    "actions/upload-artifact",
    "actions/download-artifact",
}
# action.yml's own install, replaced by this interpreter's environment (use_current_venv):
# `prepare` says where the venv is, `install` would build it.
CURRENT_VENV_STUBS: dict[str, dict[str, str]] = {
    "prepare": {"venv": sys.prefix, "key": "current-venv"},
    "install": {},
}
SHELLS = {
    None: ["bash", "-e", "{0}"],
    "bash": ["bash", "--noprofile", "--norc", "-eo", "pipefail", "{0}"],
    "sh": ["sh", "-e", "{0}"],
    "python": [sys.executable, "{0}"],
}
# Left out of the job's environment: the machine's own CI variables would mislead the steps.
_MACHINE_PREFIXES = ("GITHUB_", "RUNNER_", "ACTIONS_", "INPUT_")
_CHECKOUT_SKIP = shutil.ignore_patterns(
    ".git", ".venv*", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis"
)


@dataclass
class Options:
    """How the run is made. `with_overrides` and `env_overrides` are keyed by "JOB.STEP_ID"
    (`with:`) or are for every step (env), and win over the workflow; a None value removes the
    input or variable. `checkout` is the tree actions/checkout copies into each job's
    workspace; `action_root` is where `uses: ./` looks (default: the job's workspace)."""

    event_name: str = "push"
    event: Mapping[str, Any] = field(default_factory=dict)
    repository: str = "octo/repo"
    run_id: int = 1
    run_attempt: int = 1
    sha: str = "0" * 40
    ref: str = "refs/heads/main"
    actor: str = "octocat"
    vars: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)
    github_token: str = "ghs_fake_github_token"
    app_token: str = "ghs_fake_app_installation_token"
    server_url: str = "https://github.com"
    api_url: str = "https://api.github.com"
    base_env: Mapping[str, str] | None = None
    env_overrides: Mapping[str, str | None] = field(default_factory=dict)
    with_overrides: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)
    checkout: Path | None = None
    action_root: Path | None = None
    use_current_venv: bool = False
    step_timeout: float = 600.0
    jobs: Iterable[str] | None = None


class _Status:
    """A job's (or a composite action's) running status, for success()/failure()."""

    def __init__(self, parent: _Status | None = None) -> None:
        self.failed = False
        self.parent = parent

    def __call__(self) -> str:
        if self.failed or (self.parent is not None and self.parent() == "failure"):
            return "failure"
        return "success"


@dataclass
class _Job:
    """What a job's steps share while it runs."""

    id: str
    workspace: Path
    temp: Path
    env: dict[str, str]  # workflow + job `env`, evaluated
    env_file: dict[str, str] = field(default_factory=dict)  # GITHUB_ENV, so far
    paths: list[str] = field(default_factory=list)  # GITHUB_PATH, so far
    summary: list[str] = field(default_factory=list)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    counter: int = 0


class WorkflowRun:
    """Runs one workflow file; `run()` returns what each job and step did.

    result = WorkflowRun(Path("examples/train-report.yml"), tmp_path, Options(
        event_name="pull_request", event=payload, use_current_venv=True,
        action_root=repository_root, checkout=project,
        with_overrides={"launch.up": {"cloud": "local", "gpu": None, "spot": None}},
        env_overrides={"CML_INFRA_BACKEND": None},
    )).run()
    assert result.jobs["report"].result == "success"
    """

    def __init__(self, workflow: Path, root: Path, options: Options | None = None) -> None:
        self.path = workflow
        self.document = yaml.safe_load(workflow.read_text(encoding="utf-8"))
        if not isinstance(self.document, dict) or not isinstance(self.document.get("jobs"), dict):
            raise WorkflowError(f"{workflow}: no jobs")
        self.options = options or Options()
        self.root = root / f"run-{self.options.run_id}-{self.options.run_attempt}"
        self.artifacts = self.root / "artifacts"
        self.tool_cache = self.root / "tool-cache"
        for folder in (self.artifacts, self.tool_cache):
            folder.mkdir(parents=True, exist_ok=True)
        self.event_path = self.root / "event.json"
        self.event_path.write_text(json.dumps(self.options.event), encoding="utf-8")

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> RunResult:
        results: dict[str, JobResult] = {}
        wanted = set(self.options.jobs) if self.options.jobs is not None else None
        for job_id in self._order():
            if wanted is not None and job_id not in wanted:
                continue
            results[job_id] = self._job(job_id, self.document["jobs"][job_id], results)
        return RunResult(jobs=results, root=self.root)

    def _order(self) -> list[str]:
        jobs: dict[str, Any] = self.document["jobs"]
        needs = {name: _as_list(job.get("needs")) for name, job in jobs.items()}
        for name, wanted in needs.items():
            for need in wanted:
                if need not in jobs:
                    raise WorkflowError(f"job {name} needs unknown job {need}")
        order: list[str] = []
        while len(order) < len(jobs):
            ready = [n for n in jobs if n not in order and all(d in order for d in needs[n])]
            if not ready:
                raise WorkflowError("the jobs' needs form a cycle")
            order.append(ready[0])
        return order

    def _github(self, job_id: str, workspace: Path | None) -> dict[str, Any]:
        o = self.options
        ref_name = o.ref.split("/", 2)[-1] if o.ref.startswith("refs/") else o.ref
        pull = o.event.get("pull_request") or {}
        return {
            "event_name": o.event_name,
            "event": o.event,
            "event_path": str(self.event_path),
            "repository": o.repository,
            "repository_owner": o.repository.split("/")[0],
            "run_id": str(o.run_id),
            "run_number": str(o.run_id),
            "run_attempt": str(o.run_attempt),
            "sha": o.sha,
            "ref": o.ref,
            "ref_name": ref_name,
            "head_ref": (pull.get("head") or {}).get("ref", ""),
            "base_ref": (pull.get("base") or {}).get("ref", ""),
            "actor": o.actor,
            "token": o.github_token,
            "server_url": o.server_url,
            "api_url": o.api_url,
            "workflow": str(self.document.get("name") or self.path.name),
            "job": job_id,
            "workspace": str(workspace) if workspace else "",
            "action_path": "",
        }

    def _job(self, job_id: str, job: Mapping[str, Any], done: Mapping[str, JobResult]) -> JobResult:
        for unsupported in ("strategy", "container", "services", "uses"):
            if unsupported in job:
                raise WorkflowError(f"job {job_id}: `{unsupported}` is not supported")
        needs = {n: done[n] for n in _as_list(job.get("needs")) if n in done}
        missing = [n for n in _as_list(job.get("needs")) if n not in done]
        if missing:
            raise WorkflowError(f"job {job_id} needs {missing}, which this run left out")
        needs_context = {n: {"result": r.result, "outputs": r.outputs} for n, r in needs.items()}

        def job_status() -> str:
            results = {r.result for r in needs.values()}
            return "failure" if results - {"success"} else "success"

        base = {
            "github": self._github(job_id, None),
            "needs": needs_context,
            "vars": dict(self.options.vars),
            "secrets": self._secrets(),
            "inputs": {},
        }
        if not Scope(base, job_status).condition(job.get("if")):
            return JobResult(job_id, "skipped", {}, [], "", None)

        workspace = self.root / job_id / "workspace"
        temp = self.root / job_id / "temp"
        workspace.mkdir(parents=True)
        temp.mkdir(parents=True)
        github = self._github(job_id, workspace)
        contexts = {**base, "github": github, "env": {}}
        workflow_env = self._evaluate_env(self.document.get("env"), Scope(contexts))
        contexts["env"] = dict(workflow_env)
        job_env = self._evaluate_env(job.get("env"), Scope(contexts))
        defaults = {
            **((self.document.get("defaults") or {}).get("run") or {}),
            **((job.get("defaults") or {}).get("run") or {}),
        }
        state = _Job(job_id, workspace, temp, {**workflow_env, **job_env}, defaults=defaults)
        status = _Status()
        steps_context: dict[str, Any] = {}
        results: list[StepResult] = []
        for index, step in enumerate(job.get("steps") or [], start=1):
            scope_contexts = {
                **contexts,
                "steps": steps_context,
                "job": {"status": status()},
                "runner": self._runner(state),
            }
            result = self._step(state, index, step, scope_contexts, status, steps_context, None)
            results.append(result)
        runs_on = Scope({**contexts, "steps": steps_context}).interpolate(job.get("runs-on"))
        outputs_scope = Scope({**contexts, "steps": steps_context, "runner": self._runner(state)})
        outputs = {
            name: outputs_scope.text(value) for name, value in (job.get("outputs") or {}).items()
        }
        return JobResult(
            job_id,
            "failure" if status.failed else "success",
            outputs,
            results,
            "".join(state.summary),
            workspace,
            runs_on,
        )

    def _secrets(self) -> dict[str, str]:
        return {"GITHUB_TOKEN": self.options.github_token, **self.options.secrets}

    def _runner(self, state: _Job) -> dict[str, str]:
        return {
            "os": "Linux",
            "arch": "X64",
            "name": "workflow-executor",
            "temp": str(state.temp),
            "tool_cache": str(self.tool_cache),
        }

    @staticmethod
    def _evaluate_env(env: Any, scope: Scope) -> dict[str, str]:
        if env is None:
            return {}
        if not isinstance(env, Mapping):
            raise WorkflowError(f"env must be a mapping, not {env!r}")
        return {str(name): scope.text(value) for name, value in env.items()}

    # -- steps -----------------------------------------------------------------------------

    def _step(
        self,
        state: _Job,
        index: int,
        step: Mapping[str, Any],
        contexts: dict[str, Any],
        status: _Status,
        steps_context: dict[str, Any],
        parent: _Composite | None,
        stubs: Mapping[str, Mapping[str, str]] | None = None,
    ) -> StepResult:
        # A step without an id is known by its place, "__1" for the first (of its job, or of
        # its composite action), which is what with_overrides and JobResult.step take.
        state.counter += 1
        step_id = str(step.get("id") or f"__{index}")
        uses = step.get("uses")
        scope = Scope(contexts, status)
        name = scope.text(step.get("name") or uses or step.get("run", "").split("\n")[0])
        result = StepResult(state.id, step_id, name, uses, "skipped", "skipped")
        if not scope.condition(step.get("if")):
            steps_context[step_id] = {"outputs": {}, "outcome": "skipped", "conclusion": "skipped"}
            return result
        if stubs is not None and step_id in stubs:
            result.outcome = result.conclusion = "success"
            result.outputs, result.stubbed = dict(stubs[step_id]), True
            steps_context[step_id] = {
                "outputs": result.outputs, "outcome": "success", "conclusion": "success"
            }  # fmt: skip
            return result
        env = self._step_env(state, step, contexts, parent)
        try:
            if uses is not None:
                ok = self._uses(state, step, result, env, Scope({**contexts, "env": env}, status))
            elif "run" in step:
                ok = self._run(state, step, result, env, Scope({**contexts, "env": env}, status),
                               parent)  # fmt: skip
            else:
                raise WorkflowError(f"job {state.id}: step {step_id} has neither run nor uses")
        except subprocess.TimeoutExpired:
            result.log += f"\n(step timed out after {self.options.step_timeout} s)"
            ok = False
        result.outcome = "success" if ok else "failure"
        continue_on_error = truthy(scope.interpolate(step.get("continue-on-error", False)))
        result.conclusion = "success" if ok or continue_on_error else "failure"
        if result.conclusion == "failure":
            status.failed = True
        steps_context[step_id] = {
            "outputs": result.outputs, "outcome": result.outcome, "conclusion": result.conclusion
        }  # fmt: skip
        return result

    def _step_env(
        self,
        state: _Job,
        step: Mapping[str, Any],
        contexts: dict[str, Any],
        parent: _Composite | None,
    ) -> dict[str, str]:
        """The `env` context of a step: workflow and job env, GITHUB_ENV, the composite
        action's caller, the step's own, then the test's overrides."""
        outer = dict(parent.env if parent is not None else state.env)
        merged = {**outer, **state.env_file}
        own = self._evaluate_env(step.get("env"), Scope({**contexts, "env": merged}))
        merged.update(own)
        for name, value in self.options.env_overrides.items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        return merged

    def _process_env(
        self, state: _Job, env: Mapping[str, str], files: Mapping[str, Path], step_id: str,
        parent: _Composite | None,
    ) -> dict[str, str]:  # fmt: skip
        base = self.options.base_env
        if base is None:
            base = {k: v for k, v in os.environ.items() if not k.startswith(_MACHINE_PREFIXES)}
        process = {**base, **env}
        github = self._github(state.id, state.workspace)
        defaults = {
            "CI": "true",
            "GITHUB_ACTIONS": "true",
            "GITHUB_WORKSPACE": str(state.workspace),
            "GITHUB_REPOSITORY": github["repository"],
            "GITHUB_REPOSITORY_OWNER": github["repository_owner"],
            "GITHUB_RUN_ID": github["run_id"],
            "GITHUB_RUN_NUMBER": github["run_number"],
            "GITHUB_RUN_ATTEMPT": github["run_attempt"],
            "GITHUB_SHA": github["sha"],
            "GITHUB_REF": github["ref"],
            "GITHUB_REF_NAME": github["ref_name"],
            "GITHUB_HEAD_REF": github["head_ref"],
            "GITHUB_BASE_REF": github["base_ref"],
            "GITHUB_EVENT_NAME": github["event_name"],
            "GITHUB_EVENT_PATH": github["event_path"],
            "GITHUB_ACTOR": github["actor"],
            "GITHUB_SERVER_URL": github["server_url"],
            "GITHUB_API_URL": github["api_url"],
            "GITHUB_WORKFLOW": github["workflow"],
            "GITHUB_JOB": state.id,
            "GITHUB_ACTION": step_id,
            "RUNNER_OS": "Linux",
            "RUNNER_ARCH": "X64",
            "RUNNER_NAME": "workflow-executor",
            "RUNNER_TEMP": str(state.temp),
            "RUNNER_TOOL_CACHE": str(self.tool_cache),
            **{name: str(path) for name, path in files.items()},
        }
        if parent is not None:
            defaults["GITHUB_ACTION_PATH"] = str(parent.path)
        process.update(defaults)
        if state.paths:
            process["PATH"] = os.pathsep.join([*reversed(state.paths), process.get("PATH", "")])
        return process

    def _step_files(self, state: _Job) -> dict[str, Path]:
        folder = state.temp / f"_step{state.counter}"
        folder.mkdir()
        files = {
            name: folder / name.lower()
            for name in ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_PATH", "GITHUB_STEP_SUMMARY")
        }
        for path in files.values():
            path.touch()
        return files

    def _collect(self, state: _Job, files: Mapping[str, Path], result: StepResult) -> None:
        """What the step wrote to the command files, taken as Actions takes it."""
        result.outputs.update(_read_assignments(files["GITHUB_OUTPUT"]))
        state.env_file.update(_read_assignments(files["GITHUB_ENV"]))
        lines = files["GITHUB_PATH"].read_text(encoding="utf-8").splitlines()
        state.paths.extend(line for line in lines if line.strip())
        state.summary.append(files["GITHUB_STEP_SUMMARY"].read_text(encoding="utf-8"))

    def _run(
        self, state: _Job, step: Mapping[str, Any], result: StepResult, env: Mapping[str, str],
        scope: Scope, parent: _Composite | None,
    ) -> bool:  # fmt: skip
        shell = step.get("shell", state.defaults.get("shell") if parent is None else None)
        if parent is not None and shell is None:
            raise WorkflowError(f"{parent.path}: a composite action's run step needs `shell`")
        if shell not in SHELLS:
            raise WorkflowError(f"job {state.id}: shell {shell!r} is not supported")
        script = scope.text(step["run"])
        files = self._step_files(state)
        script_path = files["GITHUB_OUTPUT"].parent / "script"
        script_path.write_text(script, encoding="utf-8")
        directory = step.get("working-directory", state.defaults.get("working-directory"))
        cwd = state.workspace / scope.text(directory) if directory else state.workspace
        if not cwd.is_dir():
            result.log = f"working-directory {cwd} does not exist"
            return False
        command = [part.replace("{0}", str(script_path)) for part in SHELLS[shell]]
        completed = subprocess.run(
            command,
            cwd=cwd,
            env=self._process_env(state, env, files, result.id, parent),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=self.options.step_timeout,
        )
        result.log = completed.stdout + completed.stderr
        self._collect(state, files, result)
        return completed.returncode == 0

    # -- actions ---------------------------------------------------------------------------

    def _uses(
        self, state: _Job, step: Mapping[str, Any], result: StepResult, env: Mapping[str, str],
        scope: Scope,
    ) -> bool:  # fmt: skip
        uses = str(step["uses"])
        inputs = {str(k): scope.text(v) for k, v in (step.get("with") or {}).items()}
        for name, value in self.options.with_overrides.get(f"{state.id}.{result.id}", {}).items():
            if value is None:
                inputs.pop(name, None)
            else:
                inputs[name] = value
        result.inputs = inputs
        if uses.startswith("./"):
            return self._composite(state, uses, inputs, result, env, scope)
        action = _action_name(uses)
        if action not in KNOWN_ACTIONS:
            raise WorkflowError(f"job {state.id}: action {uses} is not one this executor knows")
        if "@" not in uses:
            raise WorkflowError(f"job {state.id}: {uses} has no ref")
        if action in NOOP_ACTIONS:
            result.outputs = {"cache-hit": "false"} if action == "actions/cache" else {}
            return True
        if action == "actions/checkout":
            if self.options.checkout is not None:
                shutil.copytree(self.options.checkout, state.workspace, dirs_exist_ok=True,
                                ignore=_CHECKOUT_SKIP)  # fmt: skip
            return True
        if action == "actions/setup-python":
            state.paths.append(str(Path(sys.executable).parent))
            result.outputs = {
                "python-version": ".".join(str(p) for p in sys.version_info[:3]),
                "python-path": sys.executable,
            }
            return True
        if action == "actions/create-github-app-token":
            result.outputs = {
                "token": self.options.app_token, "installation-id": "1", "app-slug": "cml-infra"
            }  # fmt: skip
            return True
        if action == "actions/upload-artifact":
            return self._upload(state, inputs, result)
        return self._download(state, inputs, result)

    def _upload(self, state: _Job, inputs: Mapping[str, str], result: StepResult) -> bool:
        name = inputs.get("name") or "artifact"
        target = self.artifacts / name
        if target.exists() and inputs.get("overwrite", "false") != "true":
            result.log = f"an artifact named {name} exists already"
            return False
        files: list[Path] = []
        for line in inputs.get("path", "").splitlines():
            pattern = line.strip()
            if not pattern:
                continue
            if pattern.startswith("!"):
                raise WorkflowError("upload-artifact: exclusions (!) are not supported")
            found = sorted(p for p in state.workspace.glob(pattern))
            for path in found:
                files.extend(
                    [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                )
        if not files:
            behaviour = inputs.get("if-no-files-found", "warn")
            result.log = f"no files found for artifact {name}"
            return behaviour != "error"
        # Paths are kept relative to the files' least common ancestor, as the action keeps them.
        common = Path(os.path.commonpath([str(p.parent) for p in files]))
        if target.exists():
            shutil.rmtree(target)
        for path in files:
            destination = target / path.relative_to(common)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
        result.outputs = {"artifact-id": str(len(list(self.artifacts.iterdir())))}
        return True

    def _download(self, state: _Job, inputs: Mapping[str, str], result: StepResult) -> bool:
        destination = state.workspace / inputs.get("path", ".")
        name = inputs.get("name")
        if name:
            source = self.artifacts / name
            if not source.is_dir():
                result.log = f"artifact {name} not found"
                return False
            shutil.copytree(source, destination, dirs_exist_ok=True)
        else:
            merge = inputs.get("merge-multiple", "false") == "true"
            for source in sorted(self.artifacts.iterdir()):
                shutil.copytree(source, destination if merge else destination / source.name,
                                dirs_exist_ok=True)  # fmt: skip
        result.outputs = {"download-path": str(destination)}
        return True

    def _composite(
        self, state: _Job, uses: str, inputs: Mapping[str, str], result: StepResult,
        env: Mapping[str, str], scope: Scope,
    ) -> bool:  # fmt: skip
        base = self.options.action_root or state.workspace
        folder = (base / uses).resolve()
        metadata_path = next(
            (folder / n for n in ("action.yml", "action.yaml") if (folder / n).is_file()), None
        )
        if metadata_path is None:
            raise WorkflowError(f"job {state.id}: no action.yml in {folder}")
        metadata = yaml.safe_load(metadata_path.read_text(encoding="utf-8"))
        if (metadata.get("runs") or {}).get("using") != "composite":
            raise WorkflowError(f"{metadata_path}: only composite actions are supported")
        declared: Mapping[str, Any] = metadata.get("inputs") or {}
        unknown = sorted(set(inputs) - set(declared))
        if unknown:
            raise WorkflowError(f"job {state.id}: {uses} has no input(s) {unknown}")
        values: dict[str, str] = {}
        for name, spec in declared.items():
            spec = spec or {}
            if name in inputs:
                values[name] = inputs[name]
            elif spec.get("required") and "default" not in spec:
                raise WorkflowError(f"job {state.id}: {uses} needs input {name!r}")
            else:
                values[name] = scope.text(spec.get("default", ""))
        composite = _Composite(folder, dict(env))
        github = {**scope.contexts["github"], "action_path": str(folder)}
        local_steps: dict[str, Any] = {}
        status = _Status(parent=scope.status if isinstance(scope.status, _Status) else None)
        stubs = CURRENT_VENV_STUBS if self.options.use_current_venv else None
        for index, step in enumerate(metadata["runs"].get("steps") or [], start=1):
            contexts = {
                "github": github,
                "inputs": values,
                "steps": local_steps,
                "runner": self._runner(state),
                "job": {"status": status()},
                "env": env,
            }
            child = self._step(state, index, step, contexts, status, local_steps, composite, stubs)
            result.steps.append(child)
        result.log = "\n".join(child.log for child in result.steps if child.log)
        outputs_scope = Scope({"github": github, "inputs": values, "steps": local_steps})
        result.outputs = {
            name: outputs_scope.text((spec or {}).get("value", ""))
            for name, spec in (metadata.get("outputs") or {}).items()
        }
        return not status.failed


@dataclass
class _Composite:
    """A composite action running: its folder (GITHUB_ACTION_PATH) and its caller's env."""

    path: Path
    env: dict[str, str]


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _read_assignments(path: Path) -> dict[str, str]:
    """NAME=value lines and NAME<<DELIMITER blocks, as GITHUB_OUTPUT and GITHUB_ENV hold."""
    values: dict[str, str] = {}
    lines = path.read_text(encoding="utf-8").split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.strip():
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            block: list[str] = []
            while index < len(lines) and lines[index] != delimiter:
                block.append(lines[index])
                index += 1
            if index >= len(lines):
                raise WorkflowError(f"{path.name}: no closing {delimiter!r} for {name}")
            index += 1
            values[name] = "\n".join(block)
        elif "=" in line:
            name, value = line.split("=", 1)
            values[name] = value
        else:
            raise WorkflowError(f"{path.name}: cannot read line {line!r}")
    return values
