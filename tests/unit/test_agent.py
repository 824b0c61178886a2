"""cml_infra.agent: the on-instance loop, with time under control, and as the script it ships as."""

from __future__ import annotations

import ast
import json
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from cml_infra import agent
from cml_infra.agent import STATUS_FILE, Agent

AGENT_PY = Path(agent.__file__)


def config(**changes):
    values = {
        "name": "box-1",
        "idle_timeout": 60,
        "expires_at": time.time() + 3600,
        "single": False,
        "command": [],
        "self_destroy": ["true"],
        "poll_seconds": 0.1,
    }
    values.update(changes)
    return values


class FakeTask:
    """Stands in for a Popen: poll() gives None while running, then the exit code."""

    def __init__(self):
        self.code = None
        self.terminated = False

    def poll(self):
        return self.code


@pytest.fixture
def quiet_log(monkeypatch):
    lines = []
    monkeypatch.setattr(agent, "log", lines.append)
    return lines


def test_constructor_reads_the_config(tmp_path):
    a = Agent(
        config(command=["echo", 1], self_destroy=["shutdown", "-h", "now"], single=True),
        tmp_path,
    )
    assert a.command == ["echo", "1"]
    assert a.self_destroy_argv == ["shutdown", "-h", "now"]
    assert a.single is True
    assert a.idle_timeout == 60.0
    assert a.poll == 0.1
    assert a.state == "idle"
    assert a.home == tmp_path


def test_idle_past_timeout_returns_an_idle_reason(tmp_path, quiet_log):
    a = Agent(config(idle_timeout=60), tmp_path)
    start = a.last_activity
    assert a._tick(start + 1) is None
    assert a._tick(start + 59.9) is None
    assert a.state == "idle"
    assert a._tick(start + 60) == "idle for 60s"


def test_running_task_keeps_it_busy(tmp_path, quiet_log):
    a = Agent(config(idle_timeout=60), tmp_path)
    task = FakeTask()
    a.task = task
    start = a.last_activity
    for later in (30, 120, 600):
        assert a._tick(start + later) is None
        assert a.state == "busy"
        assert a.last_activity == start + later
    # The idle clock starts when the task ends.
    task.code = 0
    assert a._tick(start + 700) is None
    assert a.state == "idle"
    assert a.task is None
    assert a.last_exit_code == 0
    assert "task ended with exit code 0" in quiet_log
    assert a._tick(start + 759) is None
    assert a._tick(start + 760) == "idle for 60s"


def test_single_returns_a_reason_once_the_task_ends(tmp_path, quiet_log):
    a = Agent(config(single=True), tmp_path)
    task = FakeTask()
    a.task = task
    now = a.last_activity
    assert a._tick(now + 1) is None
    assert a.state == "busy"
    task.code = 3
    assert a._tick(now + 2) == "single task done"
    assert a.last_exit_code == 3
    assert a.task is None


def test_without_single_a_finished_task_does_not_end_the_instance(tmp_path, quiet_log):
    a = Agent(config(single=False), tmp_path)
    a.task = FakeTask()
    a.task.code = 0
    assert a._tick(a.last_activity + 1) is None


def test_ttl_ends_an_idle_instance_before_its_idle_timeout(tmp_path, quiet_log):
    a = Agent(config(idle_timeout=3600, expires_at=time.time() + 10), tmp_path)
    assert a._tick(a.expires_at - 1) is None
    assert a._tick(a.expires_at) == "ttl reached"


def test_ttl_stops_a_running_task(tmp_path, quiet_log):
    a = Agent(config(command=["sleep", "30"], expires_at=time.time() + 100), tmp_path)
    a._start_task()
    process = a.task
    try:
        assert isinstance(process, subprocess.Popen)
        assert a.tasks_run == 1
        assert (tmp_path / "work").is_dir()
        assert a._tick(time.time()) is None
        assert a.state == "busy"
        assert process.poll() is None
        started = time.monotonic()
        assert a._tick(a.expires_at + 1) == "ttl reached"
        assert time.monotonic() - started < 5
        assert process.poll() == -signal.SIGTERM
        assert a.task is None
        assert a.last_exit_code == -signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_stop_task_kills_a_task_that_ignores_sigterm(tmp_path, quiet_log, monkeypatch):
    monkeypatch.setattr(agent, "TASK_STOP_GRACE", 0.3)
    a = Agent(config(command=["sh", "-c", "trap '' TERM; echo ready; exec sleep 30"]), tmp_path)
    process = a.task = subprocess.Popen(a.command, stdout=subprocess.PIPE)
    try:
        assert process.stdout.readline() == b"ready\n"
        a._stop_task()
        assert process.returncode == -signal.SIGKILL
        assert a.last_exit_code == -signal.SIGKILL
    finally:
        process.stdout.close()
        if process.poll() is None:
            process.kill()
            process.wait()


def test_task_that_cannot_start(tmp_path, quiet_log):
    a = Agent(config(command=[str(tmp_path / "no-such-program")]), tmp_path)
    a._start_task()
    assert a.task is None
    assert a.last_exit_code == 127
    assert a.tasks_run == 0
    assert any("could not start" in line for line in quiet_log)


def _fixed_clock(monkeypatch, now):
    clock = types.SimpleNamespace(
        time=lambda: now, strftime=time.strftime, gmtime=time.gmtime, sleep=time.sleep
    )
    monkeypatch.setattr(agent, "time", clock)


def test_write_status_idle(tmp_path, monkeypatch):
    a = Agent(config(), tmp_path)
    a.last_activity = 1000.0
    _fixed_clock(monkeypatch, 1012.34)
    a._write_status()
    status = json.loads((tmp_path / STATUS_FILE).read_text())
    assert status["state"] == "idle"
    assert status["idle_seconds"] == 12.3
    assert status["last_activity"] == 1000.0
    assert status["updated_at"] == 1012.34
    assert status["name"] == "box-1"
    assert status["expires_at"] == a.expires_at
    assert status["tasks_run"] == 0
    assert status["last_exit_code"] is None
    assert status["reason"] is None
    assert isinstance(status["pid"], int)
    assert [p.name for p in tmp_path.iterdir()] == [STATUS_FILE]


def test_write_status_busy_has_zero_idle_and_a_reason(tmp_path, monkeypatch):
    a = Agent(config(), tmp_path)
    a.last_activity = 1000.0
    a.state = "busy"
    _fixed_clock(monkeypatch, 2000.0)
    a._write_status("ttl reached")
    status = json.loads((tmp_path / STATUS_FILE).read_text())
    assert status["state"] == "busy"
    assert status["idle_seconds"] == 0.0
    assert status["reason"] == "ttl reached"


def test_agent_imports_only_the_standard_library():
    tree = ast.parse(AGENT_PY.read_text(encoding="utf-8"))
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in agent.py"
            modules.add(node.module.split(".")[0])
    assert modules, "no imports found: the check is broken"
    outside = sorted(m for m in modules if m not in sys.stdlib_module_names)
    assert outside == []


def _run_agent(tmp_path, cfg, timeout=20):
    """agent.py as the startup script runs it: a copy beside its config, no site-packages."""
    home = tmp_path / "instance"
    home.mkdir()
    (home / "agent.py").write_text(AGENT_PY.read_text())
    (home / "agent-config.json").write_text(json.dumps(cfg))
    done = subprocess.run(
        [sys.executable, "-I", "-S", "agent.py", "--config", "agent-config.json"],
        cwd=home,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return home, done


def _self_destroy_by_sigterm(record):
    # What the real destroy does to the agent: SIGTERM its process group. $PPID is the agent.
    return ["sh", "-c", f'echo "$CML_INFRA_END_REASON" >"{record}"; kill -TERM "$PPID"']


def test_agent_script_ends_an_idle_instance(tmp_path):
    record = tmp_path / "reason.txt"
    cfg = config(idle_timeout=1, self_destroy=_self_destroy_by_sigterm(record))
    started = time.monotonic()
    home, done = _run_agent(tmp_path, cfg)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 1 <= time.monotonic() - started < 15
    assert record.read_text().strip() == "idle for 1s"
    assert "ending the instance: idle for 1s" in done.stdout
    assert "stopping (SIGTERM)" in done.stdout
    status = json.loads((home / STATUS_FILE).read_text())
    assert status["state"] == "stopped"


def test_agent_script_single_task(tmp_path):
    record = tmp_path / "reason.txt"
    cfg = config(
        single=True,
        idle_timeout=600,
        command=["sh", "-c", "echo task-output; pwd; exit 3"],
        self_destroy=_self_destroy_by_sigterm(record),
    )
    home, done = _run_agent(tmp_path, cfg)
    assert done.returncode == 0, done.stdout + done.stderr
    assert record.read_text().strip() == "single task done"
    assert "task-output" in done.stdout
    assert str(home / "work") in done.stdout
    assert "task ended with exit code 3" in done.stdout
    status = json.loads((home / STATUS_FILE).read_text())
    assert status["tasks_run"] == 1
    assert status["last_exit_code"] == 3


def test_agent_script_needs_a_config(tmp_path):
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(AGENT_PY)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 2
    assert "--config" in done.stderr


# --- built-in self-destroys, against a loopback fake of the metadata server and the cloud API --

GCP_DISCOVERY = Path(__file__).resolve().parents[1] / "data" / "gcp-compute-subset.json"
TOKEN = "tok-SECRET"


@pytest.fixture(scope="module")
def gcp_delete_method():
    discovery = json.loads(GCP_DISCOVERY.read_text(encoding="utf-8"))
    return discovery, discovery["resources"]["instances"]["methods"]["delete"]


GCP_METADATA = "/computeMetadata/v1"
GCP_DELETE_PATH = "/compute/v1/projects/proj/zones/us-central1-a/instances/vm1"


def _gcp_routes(delete=(200, None)):
    operation = {
        "kind": "compute#operation",
        "id": "8123456789012345678",
        "name": "operation-1764252000000-delete",
        "zone": "https://www.googleapis.com/compute/v1/projects/proj/zones/us-central1-a",
        "operationType": "delete",
        "targetLink": "https://www.googleapis.com/compute/v1" + GCP_DELETE_PATH[11:],
        "status": "RUNNING",
        "progress": 0,
    }
    return {
        ("GET", f"{GCP_METADATA}/instance/service-accounts/default/token"): (
            200,
            {"access_token": TOKEN, "expires_in": 3599, "token_type": "Bearer"},
        ),
        ("GET", f"{GCP_METADATA}/project/project-id"): (200, "proj"),
        ("GET", f"{GCP_METADATA}/instance/zone"): (200, "projects/123/zones/us-central1-a"),
        ("GET", f"{GCP_METADATA}/instance/name"): (200, "vm1"),
        ("DELETE", GCP_DELETE_PATH): (delete[0], delete[1] or operation),
    }


def _gcp_agent(tmp_path, server):
    endpoints = {
        "gcp_metadata": server.base + GCP_METADATA,
        "gcp_api": server.base + "/compute/v1",
    }
    return Agent(config(self_destroy=["@gcp-delete-instance"], endpoints=endpoints), tmp_path)


def test_gcp_delete_instance(tmp_path, quiet_log, route_server, gcp_delete_method):
    server = route_server(_gcp_routes())
    assert _gcp_agent(tmp_path, server)._destroy_once("idle") == 0
    *metadata, delete = server.requests
    assert [r["path"] for r in metadata] == [
        f"{GCP_METADATA}/instance/service-accounts/default/token",
        f"{GCP_METADATA}/project/project-id",
        f"{GCP_METADATA}/instance/zone",
        f"{GCP_METADATA}/instance/name",
    ]
    for request in metadata:
        assert request["method"] == "GET"
        assert request["headers"]["metadata-flavor"] == "Google"
        assert "authorization" not in request["headers"]
    assert delete["method"] == "DELETE"
    assert delete["path"] == GCP_DELETE_PATH
    assert delete["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert "metadata-flavor" not in delete["headers"]


def test_gcp_delete_matches_the_compute_api(tmp_path, quiet_log, route_server, gcp_delete_method):
    """The request the fake saw, held against compute.instances.delete in Google's Discovery
    document: method, URL template under servicePath, and each path parameter's pattern."""
    discovery, method = gcp_delete_method
    server = route_server(_gcp_routes())
    assert _gcp_agent(tmp_path, server)._destroy_once("idle") == 0
    delete = server.requests[-1]
    assert method["id"] == "compute.instances.delete"
    assert delete["method"] == method["httpMethod"] == "DELETE"
    assert method["flatPath"] == method["path"]
    template = "/" + discovery["servicePath"] + method["flatPath"]
    pattern = re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(template))
    match = re.fullmatch(pattern, delete["path"])
    assert match is not None, (template, delete["path"])
    assert match.groupdict() == {"project": "proj", "zone": "us-central1-a", "instance": "vm1"}
    assert set(match.groupdict()) == set(method["parameterOrder"])
    for name, value in match.groupdict().items():
        parameter = method["parameters"][name]
        assert parameter["location"] == "path"
        assert re.fullmatch(parameter.get("pattern", ".+"), value), name
    for name, parameter in method["parameters"].items():
        if parameter.get("required"):
            assert name in match.groupdict(), name
    assert delete["query"] == {}
    # The fake's reply is an Operation as the API defines it, not a shape of our own.
    operation = _gcp_routes()[("DELETE", GCP_DELETE_PATH)][1]
    assert method["response"]["$ref"] == "Operation"
    assert set(operation) <= set(discovery["schemas"]["Operation"]["properties"])


def test_gcp_api_failure_does_not_log_the_token(tmp_path, quiet_log, route_server):
    server = route_server(_gcp_routes(delete=(500, {"error": {"message": f"bad token {TOKEN}"}})))
    assert _gcp_agent(tmp_path, server)._destroy_once("idle") == 1
    assert server.requests[-1]["method"] == "DELETE"
    assert len(quiet_log) == 1
    assert "self-destroy through the cloud API failed: HTTPError" in quiet_log[0]
    assert TOKEN not in quiet_log[0]


@pytest.mark.parametrize(
    ("token_reply", "error"),
    [((200, "not json"), "JSONDecodeError"), ((200, {"token": "x"}), "KeyError")],
)
def test_gcp_bad_token_reply(tmp_path, quiet_log, route_server, token_reply, error):
    routes = _gcp_routes()
    routes[("GET", f"{GCP_METADATA}/instance/service-accounts/default/token")] = token_reply
    server = route_server(routes)
    assert _gcp_agent(tmp_path, server)._destroy_once("idle") == 1
    assert error in quiet_log[0]
    assert not any(r["method"] == "DELETE" for r in server.requests)


def test_metadata_server_unreachable(tmp_path, quiet_log, route_server):
    server = route_server({})
    server.close()
    a = _gcp_agent(tmp_path, server)
    assert a._destroy_once("idle") == 1
    assert "URLError" in quiet_log[0]


AZURE_TOKEN_PATH = "/metadata/identity/oauth2/token"
AZURE_DELETE_PATH = "/subscriptions/sub/resourceGroups/cml-infra-x"


def _azure_routes(delete=(202, "")):
    return {
        ("GET", AZURE_TOKEN_PATH): (
            200,
            {"access_token": TOKEN, "expires_in": "86399", "token_type": "Bearer"},
        ),
        ("GET", "/metadata/instance/compute"): (
            200,
            {"subscriptionId": "sub", "resourceGroupName": "cml-infra-x", "name": "vm1"},
        ),
        ("DELETE", AZURE_DELETE_PATH): delete,
    }


def _azure_agent(tmp_path, server):
    endpoints = {"azure_metadata": server.base + "/metadata", "azure_api": server.base}
    return Agent(
        config(self_destroy=["@azure-delete-resource-group"], endpoints=endpoints), tmp_path
    )


def test_azure_delete_resource_group(tmp_path, quiet_log, route_server):
    server = route_server(_azure_routes())
    assert _azure_agent(tmp_path, server)._destroy_once("ttl reached") == 0
    token, compute, delete = server.requests
    assert (token["method"], token["path"]) == ("GET", AZURE_TOKEN_PATH)
    assert token["query"]["resource"] == ["https://management.azure.com/"]
    assert token["query"]["api-version"] == ["2018-02-01"]
    assert (compute["method"], compute["path"]) == ("GET", "/metadata/instance/compute")
    assert compute["query"]["api-version"] == ["2021-02-01"]
    for request in (token, compute):
        assert request["headers"]["metadata"] == "true"
        assert "authorization" not in request["headers"]
    assert (delete["method"], delete["path"]) == ("DELETE", AZURE_DELETE_PATH)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", delete["query"]["api-version"][0])
    assert delete["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert "metadata" not in delete["headers"]


def test_azure_api_failure_does_not_log_the_token(tmp_path, quiet_log, route_server):
    server = route_server(_azure_routes(delete=(500, {"error": {"message": TOKEN}})))
    assert _azure_agent(tmp_path, server)._destroy_once("idle") == 1
    assert len(quiet_log) == 1
    assert "HTTPError" in quiet_log[0]
    assert TOKEN not in quiet_log[0]


def test_azure_metadata_without_a_resource_group(tmp_path, quiet_log, route_server):
    routes = _azure_routes()
    routes[("GET", "/metadata/instance/compute")] = (200, {"subscriptionId": "sub"})
    server = route_server(routes)
    assert _azure_agent(tmp_path, server)._destroy_once("idle") == 1
    assert "KeyError" in quiet_log[0]
    assert not any(r["method"] == "DELETE" for r in server.requests)


def test_default_endpoints_are_the_real_ones():
    assert agent.DEFAULT_ENDPOINTS == {
        "gcp_metadata": "http://metadata.google.internal/computeMetadata/v1",
        "gcp_api": "https://compute.googleapis.com/compute/v1",
        "azure_metadata": "http://169.254.169.254/metadata",
        "azure_api": "https://management.azure.com",
        "aws_metadata": "http://169.254.169.254",
    }


def test_gcp_api_default_is_the_discovery_base_url(gcp_delete_method):
    discovery, _ = gcp_delete_method
    assert agent.DEFAULT_ENDPOINTS["gcp_api"] + "/" == discovery["baseUrl"]


# --- agent.main --end-now: the TTL timer's way in -------------------------------------------


@pytest.fixture
def restore_sigterm():
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def agents(monkeypatch):
    """Every Agent made during the test, to reach the one agent.main() builds."""
    made = []
    original = Agent.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Agent, "__init__", init)
    return made


def _config_file(tmp_path, **changes):
    path = tmp_path / "agent-config.json"
    path.write_text(json.dumps(config(**changes)))
    return path


def test_end_now_destroys_once_and_exits_when_stopped(
    tmp_path, quiet_log, monkeypatch, restore_sigterm, agents
):
    record = tmp_path / "destroyed.txt"
    path = _config_file(
        tmp_path, self_destroy=["sh", "-c", f'echo "$CML_INFRA_END_REASON" >>"{record}"']
    )
    sleeps = []

    def sleep(seconds):
        # The cloud ends the VM while the agent waits: SIGTERM arrives and the agent stops.
        sleeps.append(seconds)
        agents[0].stopping = True

    monkeypatch.setattr(agent.time, "sleep", sleep)
    assert agent.main(["--config", str(path), "--end-now", "ttl reached"]) == 0
    assert record.read_text() == "ttl reached\n"
    assert sleeps == [30.0]
    assert "ending the instance: ttl reached" in quiet_log
    status = json.loads((tmp_path / STATUS_FILE).read_text())
    assert (status["state"], status["reason"]) == ("destroying", "ttl reached")
    assert signal.getsignal(signal.SIGTERM) == agents[0]._on_term


def test_end_now_retries_a_failing_destroy_with_backoff(
    tmp_path, quiet_log, monkeypatch, restore_sigterm, agents
):
    path = _config_file(tmp_path, self_destroy=["false"], poll_seconds=1)
    calls = []
    sleeps = []

    def destroy_once(self, reason):
        calls.append(reason)
        return 1

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) > agent.SELF_DESTROY_ATTEMPTS + 2:
            agents[0].stopping = True

    monkeypatch.setattr(Agent, "_destroy_once", destroy_once)
    monkeypatch.setattr(agent.time, "sleep", sleep)
    assert agent.main(["--config", str(path), "--end-now", "ttl reached"]) == 1
    assert calls == ["ttl reached"] * agent.SELF_DESTROY_ATTEMPTS
    assert sleeps[: agent.SELF_DESTROY_ATTEMPTS] == [5.0, 10.0, 20.0, 40.0, 80.0]
    assert set(sleeps[agent.SELF_DESTROY_ATTEMPTS :]) == {1.0}
    assert any("cml-infra cleanup" in line for line in quiet_log)
