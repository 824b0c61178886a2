"""A ledger in Azure Blob Storage. Terraform's azurerm backend finds the blob endpoint from the
account name alone, so it cannot be pointed at Azurite: the block cml-infra writes is checked
by real Terraform, which must accept every argument and stop only for want of credentials.
The ledger's own side runs through the CLI against Azurite on loopback."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cml_infra import backends
from cml_infra.backends.ledger import RemoteLedger
from cml_infra.state import StateDir
from cml_infra.terraform import Engine, EngineHome
from tests.e2e.conftest import Cli
from tests.fakes.emulators import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    azurite_or_skip,
)
from tests.unit.conftest import record_of

pytestmark = pytest.mark.e2e
# What Terraform says of a block it does not accept (a schema error), as against one it
# accepts and then cannot use for want of credentials or a network.
_SCHEMA_ERRORS = ("Unsupported argument", "Invalid ", "Missing required argument",
                  "is not expected here", "Unsupported block type")  # fmt: skip
_NO_CREDENTIALS = re.compile(r"authoriz|credential|az login|Azure CLI|authenticat", re.I)


def _run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> Any:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip


def _no_azure(cli: Cli, tmp_path: Path) -> dict[str, str]:
    """The CLI's environment with no Azure identity of the machine's in reach: no ARM_/AZURE_
    variable, and an Azure CLI (if any) with an empty profile."""
    env = {k: v for k, v in cli.env.items()
           if not k.startswith(("ARM_", "AZURE_", "MSI_", "IDENTITY_"))}  # fmt: skip
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), AZURE_CONFIG_DIR=str(home / ".azure"), CHECKPOINT_DISABLE="1",
               TF_IN_AUTOMATION="1", TF_INPUT="0")  # fmt: skip
    return env


def test_terraform_accepts_the_backend_block(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = _no_azure(cli, tmp_path)
    url = "azurerm://cmlinfraledger/ledger/ci/runners-of-test"
    done = _run([sys.executable, "-m", "cml_infra", "render", "--backend", url, "-o", str(out)],
                env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    block = (out / "backend.tf").read_text()
    assert 'backend "azurerm" {' in block
    assert re.search(r'key += "ci/runners-of-test/runners/[0-9a-f]{16}/terraform\.tfstate"', block)
    assert re.search(r"use_azuread_auth += true", block)

    terraform = Engine.discover(None, EngineHome(tmp_path / "engine")).argv
    init = [*terraform, f"-chdir={out}", "init", "-input=false", "-no-color"]
    done = _run(init, env)
    said = done.stdout + done.stderr
    assert done.returncode != 0, said  # no credentials: it cannot have reached any account
    assert "Initializing the backend..." in said, said
    assert not any(error in said for error in _SCHEMA_ERRORS), said
    assert _NO_CREDENTIALS.search(said), said

    # The same Terraform does tell a block it does not accept: the check above can fail.
    (out / "backend.tf").write_text(block.replace("use_azuread_auth", "use_azuread_auths"))
    done = _run(init, env)
    assert done.returncode != 0 and "Unsupported argument" in done.stdout + done.stderr


# The ledger through the CLI, against Azurite.


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with azurite_or_skip() as url:
        yield url


@pytest.fixture
def container(endpoint: str) -> str:
    from azure.storage.blob import BlobServiceClient

    name = f"ledger-{secrets.token_hex(4)}"
    credential = {"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}
    service = BlobServiceClient(endpoint, credential=credential)
    service.get_container_client(name).create_container()
    return name


def _names(endpoint: str, container: str) -> list[str]:
    from azure.storage.blob import BlobServiceClient

    credential = {"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}
    client = BlobServiceClient(endpoint, credential=credential).get_container_client(container)
    return sorted(blob.name for blob in client.list_blobs())


def _azurite_env(cli: Cli, tmp_path: Path) -> dict[str, str]:
    # Azurite's key reaches the CLI as a CI job's would, from the environment.
    return {**_no_azure(cli, tmp_path), "AZURE_STORAGE_KEY": AZURITE_KEY, "NO_PROXY": "127.0.0.1",
            "no_proxy": "127.0.0.1", "XDG_STATE_HOME": str(tmp_path / "machine")}  # fmt: skip


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cml_infra", *args]


def test_the_ledger_is_read_from_azurite(
    cli: Cli, endpoint: str, container: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"azurerm://{AZURITE_ACCOUNT}/{container}/ci?endpoint={endpoint}"
    env = _azurite_env(cli, tmp_path)
    # Another machine recorded a runner in the container.
    monkeypatch.setenv("AZURE_STORAGE_KEY", AZURITE_KEY)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "elsewhere"))
    elsewhere = RemoteLedger(StateDir(tmp_path / "elsewhere"), backends.parse(url))
    elsewhere.save(record_of("seen", launch_id="0123456789abcdef", state="destroyed"))

    done = _run(_cli("status", "--all", "--json", "--backend", url), env)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [(row["name"], row["launch_id"], row["state"]) for row in rows] == [
        ("seen", "0123456789abcdef", "destroyed")
    ]
    # Terraform's state could not follow the endpoint: `up` says so, and creates nothing.
    done = _run(_cli("up", "--name", "nothing", "--backend", url), env)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == (f"error: --backend: {url}: Terraform's azurerm backend has no setting for a "
                    "custom blob endpoint, so runners cannot keep their state there; drop "
                    "?endpoint=")  # fmt: skip
    assert _names(endpoint, container) == ["ci/runners/0123456789abcdef/runner.json"]
    assert not os.path.exists(tmp_path / "machine" / "cml-infra" / "local")


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        (f"azurerm://{AZURITE_ACCOUNT}/no-such-container/p?endpoint={{endpoint}}",
         f"--backend: azurerm://{AZURITE_ACCOUNT}/no-such-container/p?endpoint={{endpoint}}: "
         f"container 'no-such-container' does not exist in '{AZURITE_ACCOUNT}'"),
        ("azurerm://account/Upper/p", "--backend: container 'Upper': use 3 to 63 lowercase"),
        ("azurerm://account/ledger/p?sas=x", "--backend: unknown URL parameter 'sas'"),
    ],
)  # fmt: skip
def test_bad_backend_is_one_line_and_creates_nothing(
    cli: Cli, endpoint: str, tmp_path: Path, backend: str, expected: str
) -> None:
    url = backend.format(endpoint=endpoint)
    env = _azurite_env(cli, tmp_path)
    for command in (["up", "--name", "nothing"], ["status"], ["down", "nothing"], ["cleanup"]):
        done = _run(_cli(*command, "--backend", url), env)
        assert done.returncode == 2, (command, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, (command, lines)
        assert lines[0].startswith(f"error: {expected.format(endpoint=endpoint)}"), command
    assert not (cli.state_dir / "runners").exists()
    assert not list((cli.state_dir / "backends").glob("*/runners/*"))
