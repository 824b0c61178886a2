"""`up`/`render` with --repo/--org through the CLI: bad input is exit 2 with one line and nothing
created; a GitHub that refuses is exit 1 with one error line and nothing left running."""

from __future__ import annotations

import json
import re
import socket

import pytest
from typer.testing import CliRunner

from cml_infra.cli import app
from cml_infra.forge.github_runner import PLACEHOLDER, pinned
from tests.fakes.github import FakeGitHub

TOKEN = "ghp_unit_CANARY_123"
WRONG_TOKEN = "ghp_wrong_CANARY_456"
CONFIG = re.compile(r"<<'CML_INFRA_CONFIG_EOF'\n(.*?)\nCML_INFRA_CONFIG_EOF\n", re.DOTALL)


@pytest.fixture
def state_root(tmp_path, monkeypatch, no_proxy):
    root = tmp_path / "state"
    monkeypatch.setenv("CML_INFRA_HOME", str(root))
    for key in ("GITHUB_TOKEN", "GH_TOKEN", "GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY"):
        monkeypatch.delenv(key, raising=False)
    return root


def invoke(*args):
    return CliRunner().invoke(app, list(args))


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def assert_usage_error(result, flag, state_root):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {flag}: "), result.output
    assert result.stdout == ""
    assert "Traceback" not in result.output
    assert not state_root.exists(), "bad input must create nothing"


def agent_config(out) -> dict:
    match = CONFIG.search((out / "startup.sh").read_text())
    assert match is not None
    return json.loads(match.group(1))


@pytest.mark.parametrize(
    ("args", "flag", "fragment"),
    [
        (["--repo", "octo/repo"], "--token", "no GitHub token"),
        (["--repo", "bad", "--token", TOKEN], "--repo", "'bad' is not OWNER/NAME"),
        (["--repo", "a/b/c", "--token", TOKEN], "--repo", "is not OWNER/NAME"),
        (["--repo", "octo/repo", "--org", "octo", "--token", TOKEN], "--repo", "one of them"),
        (["--org", "a/b", "--token", TOKEN], "--org", "not an organization name"),
        (["--repo", "octo/repo", "--token", TOKEN, "--", "echo", "hi"], "--repo", "drop the task"),
        (["--runner-archive", "x"], "--runner-archive", "add --repo"),
        (["--runner-group", "3"], "--runner-group", "add --repo"),
        (["--reuse-idle", "--labels", "gpu"], "--reuse-idle", "add --repo"),
        (["--repo", "o/r", "--token", TOKEN, "--reuse-idle"], "--reuse-idle", "needs --labels"),
        (
            ["--runner-archive", "/nonexistent/runner.tgz", "--repo", "o/r", "--token", TOKEN],
            "--runner-archive",
            "no such file",
        ),
        (
            ["--repo", "o/r", "--token", TOKEN, "--github-url", "ftp://x"],
            "--github-url",
            "not an http(s) URL",
        ),
        (
            ["--org", "octo", "--runner-group=--ephemeral", "--token", TOKEN],
            "--runner-group",
            "must not start with '-'",
        ),
        (
            ["--org", "octo", "--runner-group", "--ephemeral", "--token", TOKEN],
            "--runner-group",
            "must not start with '-'",
        ),
        (["--repo", "o/..", "--token", TOKEN], "--repo", "is not OWNER/NAME"),
        (["--repo", "o/.", "--token", TOKEN], "--repo", "is not OWNER/NAME"),
        (["--org", "-x", "--token", TOKEN], "--org", "not an organization name"),
        (["--org", "a--b", "--token", TOKEN], "--org", "not an organization name"),
        (
            ["--repo", "o/r", "--token", TOKEN, "--github-url", "http://example.com/api/v3"],
            "--github-url",
            "https",
        ),
        (
            ["--repo", "o/r", "--token", TOKEN, "--startup-timeout", "0"],
            "--startup-timeout",
            "longer than zero",
        ),
    ],
)
def test_up_bad_runner_input_is_one_line_and_creates_nothing(state_root, args, flag, fragment):
    result = invoke("up", "--name", "bad-input", *args)
    assert_usage_error(result, flag, state_root)
    assert fragment in result.output
    assert TOKEN not in result.output


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to reach the network, recorded (and refused)."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_up_never_sends_the_token_over_plain_http(state_root, no_network):
    result = invoke(
        "up", "--repo", "o/r", "--token", TOKEN, "--github-url", "http://example.com/api/v3",
        "--terraform", "false",
    )  # fmt: skip
    assert_usage_error(result, "--github-url", state_root)
    assert "https" in result.output and TOKEN not in result.output
    assert no_network == [], "a request was attempted before the URL was refused"


def test_cleanup_never_sends_the_token_over_plain_http(state_root, no_network):
    result = invoke(
        "cleanup", "--cloud", "local", "--dry-run", "--repo", "o/r", "--token", TOKEN,
        "--github-url", "http://example.com/api/v3",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --github-url: "), result.output
    assert no_network == []


def test_up_without_a_token_ignores_no_variable(state_root, monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", "")
    assert_usage_error(invoke("up", "--repo", "octo/repo"), "--token", state_root)


def test_up_archive_path_on_a_vm_cloud_is_refused(state_root, tmp_path):
    archive = tmp_path / "runner.tgz"
    archive.write_bytes(b"not really")
    result = invoke(
        "render", "-o", str(tmp_path / "out"), "--cloud", "aws", "--repo", "o/r",
        "--runner-archive", str(archive),
    )  # fmt: skip
    assert_usage_error(result, "--runner-archive", state_root)
    assert "give a URL" in result.output
    assert not (tmp_path / "out").exists()


def test_render_a_runner_needs_no_token_and_carries_the_placeholder(tmp_path, state_root):
    out = tmp_path / "out"
    result = invoke("render", "--name", "rend-1", "--repo", "octo/repo", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"
    assert not state_root.exists(), "render must not touch the state dir"
    config = agent_config(out)
    registration = config["runner"]["registration"]
    assert registration == {
        "kind": PLACEHOLDER.kind,
        "secret": PLACEHOLDER.secret,
        "url": PLACEHOLDER.url,
    }
    assert config["runner"]["archive"] == {
        "url": pinned()["platforms"]["linux-x64"]["url"],
        "sha256": pinned()["platforms"]["linux-x64"]["sha256"],
    }
    *labels, since = config["runner"]["labels"]
    assert labels == ["cml-infra-rend-1", "cml-infra-on-local"]
    registered_at = int(since.removeprefix("cml-infra-since-"))
    assert registered_at == config["expires_at"] - 24 * 3600  # the default ttl
    assert config["command"] == []


def test_render_accepts_an_https_mirror(tmp_path, state_root):
    out = tmp_path / "out"
    mirror = "https://mirror/x.tgz"
    result = invoke(
        "render", "--name", "rend-2", "--repo", "octo/repo", "--runner-archive", mirror,
        "-o", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    archive = agent_config(out)["runner"]["archive"]
    assert archive == {"url": mirror, "sha256": pinned()["platforms"]["linux-x64"]["sha256"]}


def test_render_a_local_archive_on_the_local_cloud(tmp_path, state_root):
    archive = tmp_path / "runner.tgz"
    archive.write_bytes(b"archive bytes")
    out = tmp_path / "out"
    result = invoke(
        "render", "--repo", "octo/repo", "--runner-archive", str(archive), "--single",
        "-o", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    runner = agent_config(out)["runner"]
    assert runner["archive"]["path"] == str(archive.resolve())
    assert runner["ephemeral"] is True


@pytest.fixture
def gh():
    with FakeGitHub(TOKEN) as fake:
        yield fake
        assert fake.violations == [], fake.violations


def test_up_with_a_rejected_token_rolls_back_and_leaves_nothing(state_root, gh):
    # --terraform false: were GitHub to accept, terraform would fail rather than start anything.
    result = invoke(
        "up", "--name", "tok-1", "--repo", "octo/repo", "--github-url", gh.url,
        "--token", WRONG_TOKEN, "--terraform", "false",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    errors = error_lines(result)
    assert len(errors) == 1, result.output
    assert "token was rejected" in errors[0]
    assert result.stdout == ""
    assert "Traceback" not in result.output
    assert WRONG_TOKEN not in result.output and TOKEN not in result.output
    assert gh.runners() == []

    # Nothing was created, so nothing is recorded: not even a `destroyed` record.
    assert json.loads(invoke("status", "--all", "--json").stdout) == []
    assert not (state_root / "runners" / "tok-1").exists()
    assert not (state_root / "local" / "instances" / "tok-1").exists()
    assert not (state_root / "runners" / "tok-1" / "workspace").exists()
    leaked = [
        p for p in state_root.rglob("*") if p.is_file() and WRONG_TOKEN.encode() in p.read_bytes()
    ]
    assert leaked == []


def test_reuse_idle_hands_out_an_idle_runner_and_creates_nothing(state_root, gh):
    gh.add_runner("octo/repo", "warm-1", ["self-hosted", "gpu", "t4"], status="online")
    result = invoke(
        "up", "--repo", "octo/repo", "--github-url", gh.url, "--token", TOKEN,
        "--labels", "gpu,t4", "--reuse-idle", "--terraform", "false",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == "warm-1\n"
    assert "reusing it, nothing created" in result.output
    assert not state_root.exists(), "a reused runner needs no record, workspace or instance"


def test_reuse_idle_without_a_fitting_runner_creates_one(state_root, gh):
    gh.add_runner("octo/repo", "busy-1", ["self-hosted", "gpu", "t4"], status="online", busy=True)
    gh.add_runner("octo/repo", "cpu-1", ["self-hosted", "cpu"], status="online")
    # --terraform false: the create starts, and then fails and rolls back, as any other would.
    result = invoke(
        "up", "--name", "new-1", "--repo", "octo/repo", "--github-url", gh.url,
        "--token", TOKEN, "--labels", "gpu,t4", "--reuse-idle", "--terraform", "false",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "terraform init failed" in result.output
    # The failure came before apply: nothing was created, so nothing is recorded.
    assert json.loads(invoke("status", "--all", "--json").stdout) == []


def test_up_with_an_unknown_repo_is_one_error_line(state_root, gh):
    result = invoke(
        "up", "--name", "nf-1", "--repo", "octo/nope", "--github-url", gh.url,
        "--token", TOKEN, "--terraform", "false", "--single",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    errors = error_lines(result)
    assert len(errors) == 1 and "not found" in errors[0], result.output
    assert TOKEN not in result.output
    assert not (state_root / "local" / "instances" / "nf-1").exists()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_up_single_with_a_runner_group_name_creates_nothing(state_root):
    result = invoke(
        "up", "--org", "octo", "--runner-group", "gpu-pool", "--single", "--token", TOKEN,
        "--github-url", f"http://127.0.0.1:{_closed_port()}", "--terraform", "false",
    )  # fmt: skip
    assert_usage_error(result, "--runner-group", state_root)
