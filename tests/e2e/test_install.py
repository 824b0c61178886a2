"""The acceptance path from a non-editable install, run from an unrelated folder.

The wheel is built from this checkout and installed into a new virtualenv. Its dependencies are
taken from the test environment (a .pth line) rather than downloaded again, but cml_infra itself,
with terraform/ and templates/ as package data, comes only from the wheel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import assert_no_processes_in

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("install")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(root / "dist"), str(REPO)],
        check=True,
    )  # fmt: skip
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    wheel = next((root / "dist").glob("cml_infra-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-deps", str(wheel)],
        check=True,
    )  # fmt: skip
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv


def test_wheel_carries_modules_and_templates(installed: Path, tmp_path: Path) -> None:
    probe = subprocess.run(
        [str(installed / "bin" / "python"), "-c",
         "import cml_infra, cml_infra.packaged as r; "
         "print(cml_infra.__file__); print(r.data_root())"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    package_file, data_root = probe.stdout.split()
    assert package_file.startswith(str(installed))
    assert data_root.startswith(str(installed))
    assert (Path(data_root) / "terraform" / "local" / "main.tf").is_file()
    assert (Path(data_root) / "templates" / "startup.sh.j2").is_file()


def test_acceptance_from_an_unrelated_folder(installed: Path, tmp_path: Path) -> None:
    cli = str(installed / "bin" / "cml-infra")
    state = tmp_path / "state"
    env = {
        "PATH": f"{installed / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "CML_INFRA_HOME": str(state),
    }
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([cli, *args], cwd=workdir, env=env, capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip

    up = run(
        "up", "--cloud", "local", "--name", "demo1", "--idle-timeout", "10s", "--", "echo", "hello"
    )
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == "demo1"
    assert "hello" in run("logs", "demo1").stdout
    assert "demo1" in {row["name"] for row in json.loads(run("status", "--json").stdout)}

    deadline = time.monotonic() + 60
    while True:
        rows = {row["name"]: row for row in json.loads(run("status", "--all", "--json").stdout)}
        if rows.get("demo1", {}).get("state", "destroyed") == "destroyed":
            break
        assert time.monotonic() < deadline, f"demo1 still {rows['demo1']['state']} after 60s"
        time.sleep(1)
    sandbox = state / "local" / "instances" / "demo1"
    assert not sandbox.exists()
    assert_no_processes_in(sandbox)


def test_cloud_render_and_catalog_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    """Issue 3's "done when": render for every cloud from a non-editable install, no credentials."""
    prefixes = ("AWS_", "GOOGLE_", "CLOUDSDK_", "ARM_", "AZURE_", "CML_INFRA_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["CML_INFRA_HOME"] = str(tmp_path / "state")
    cli = str(installed / "bin" / "cml-infra")
    for cloud in ("aws", "gcp", "azure"):
        out = tmp_path / cloud
        done = subprocess.run(
            [cli, "render", "--cloud", cloud, "--gpu", "t4", "--spot", "-o", str(out)],
            cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert (out / "module" / "main.tf").is_file() and (out / "main.tf").is_file()
    catalog = subprocess.run([cli, "catalog", "--json"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, check=True)  # fmt: skip
    assert {row["cloud"] for row in json.loads(catalog.stdout)} == {"aws", "gcp", "azure"}
