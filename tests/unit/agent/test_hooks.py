"""cml_infra.agent.hooks: the per-cloud calls of the agent, against loopback fakes of the
metadata servers and cloud APIs (tests/fakes/routes.py): spot interruption probes, and the
built-in self-destroys (also as Agent._destroy_once runs them: failures logged, never the token).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cml_infra import clouds
from cml_infra.agent import hooks, hooks_aws, hooks_azure, hooks_gcp, hooks_http
from cml_infra.agent.loop import Agent
from cml_infra.clouds.vm import VmCloud
from tests.unit.agent.test_loop import _write_package, _write_shipped


def config(**changes):
    values = {
        "name": "box-1",
        "idle_timeout": 60,
        "expires_at": 2_000_000_000,
        "command": [],
        "self_destroy": ["true"],
        "poll_seconds": 0.1,
    }
    values.update(changes)
    return values


def test_every_probe_and_self_destroy_a_cloud_names_is_here():
    """The hooks by the names the VM clouds' Boots give them (clouds/*.py)."""
    probes, destroys = set(), set()
    for name, cls in clouds.classes().items():
        if issubclass(cls, VmCloud):
            probes.add(cls.PREEMPTION_PROBE)
            destroys.update(step for step in clouds.get(name).self_destroy() if step[0] == "@")
    assert probes == {"aws-spot-notice", "gcp-preempted", "azure-preempt-event"}
    assert probes == set(hooks.PREEMPTION_PROBES)
    assert destroys == {"@gcp-delete-instance", "@azure-delete-resource-group"}
    assert destroys == set(hooks.SELF_DESTROY)


SHARED = {"hooks_http.py"}


@pytest.mark.parametrize(
    ("cloud", "spot", "expected"),
    [
        # An on-demand AWS VM ends with a shutdown and watches no notice: no hook at all.
        ("aws", False, set()),
        ("aws", True, {"hooks_aws.py"} | SHARED),
        ("gcp", False, {"hooks_gcp.py"} | SHARED),
        ("gcp", True, {"hooks_gcp.py"} | SHARED),
        ("azure", False, {"hooks_azure.py"} | SHARED),
        ("azure", True, {"hooks_azure.py"} | SHARED),
        ("local", False, set()),
        # The local cloud's spot rehearsal watches a metadata service as on AWS.
        ("local", True, {"hooks_aws.py"} | SHARED),
    ],
)
def test_an_instance_carries_its_own_clouds_hooks_and_they_load(tmp_path, cloud, spot, expected):
    """The startup script ships the modules of the hooks its config names, and no other
    cloud's; each named hook loads from what was shipped, and one not shipped is a KeyError."""
    from cml_infra import render
    from cml_infra.spec import RunnerSpec
    from cml_infra.state import StateDir

    spec = RunnerSpec(name="box-1", cloud=cloud, idle_timeout=60, ttl=60, spot=spot)
    boot = clouds.get(cloud, StateDir(tmp_path / "state")).boot(spec)
    runner = {"kind": "github", "user": boot.runner_user, "preemption": boot.preemption_probe,
              "registration": {"kind": "jit", "secret": "s", "url": "u"}}  # fmt: skip
    script = render.startup_script(boot, spec, 2e9, runner)
    package = tmp_path / "instance" / render.AGENT_PACKAGE
    shipped = _write_shipped(script, package.parent)
    assert {name for name in shipped if name.startswith("hooks_")} == expected
    named = [name for name in (boot.preemption_probe, boot.self_destroy[0]) if name and
             name in {**hooks.PREEMPTION_PROBES, **hooks.SELF_DESTROY}]  # fmt: skip
    assert bool(named) == bool(expected)
    absent = sorted(set(hooks.PREEMPTION_PROBES) - {boot.preemption_probe})[0]
    probe = (
        "from cml_infra_agent.hooks import hook\n"
        f"for name in {named!r}:\n    assert callable(hook(name)), name\n"
        f"try:\n    hook({absent!r})\nexcept KeyError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-E", "-S", "-c", probe], cwd=package.parent,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    module = hooks.PREEMPTION_PROBES[absent]
    assert f"{absent}: {module}.py is not on this instance" in done.stdout


# --- preemption probes against a loopback metadata server --------------------------------------


AWS_TOKEN_PATH = "/latest/api/token"
AWS_ACTION_PATH = "/latest/meta-data/spot/instance-action"
IMDS_TOKEN = "AQAEAimds-token=="


def _aws_routes(action):
    return {
        ("PUT", AWS_TOKEN_PATH): (200, IMDS_TOKEN, {"X-aws-ec2-metadata-token-ttl-seconds": "60"}),
        ("GET", AWS_ACTION_PATH): (*action, {"X-aws-ec2-metadata-token": IMDS_TOKEN}),
    }


def test_aws_without_an_instance_action_is_no_notice(route_server):
    server = route_server(_aws_routes((404, "Not Found")))
    assert hooks_aws.aws_spot_notice({"aws_metadata": server.base}) is None
    put, get = server.requests
    assert (put["method"], put["path"]) == ("PUT", AWS_TOKEN_PATH)
    assert put["headers"]["x-aws-ec2-metadata-token-ttl-seconds"] == "60"
    assert (get["method"], get["path"]) == ("GET", AWS_ACTION_PATH)
    assert get["headers"]["x-aws-ec2-metadata-token"] == IMDS_TOKEN


def test_aws_instance_action_is_a_notice(route_server):
    action = '{"action": "terminate", "time": "2026-01-01T00:02:00Z"}'
    server = route_server(_aws_routes((200, action)))
    notice = hooks_aws.aws_spot_notice({"aws_metadata": server.base})
    assert notice == f"aws spot instance-action {action}"
    assert server.requests[1]["headers"]["x-aws-ec2-metadata-token"] == IMDS_TOKEN


def test_aws_metadata_error_other_than_404_is_raised(route_server):
    server = route_server(_aws_routes((500, "oops")))
    with pytest.raises(OSError):
        hooks_aws.aws_spot_notice({"aws_metadata": server.base})


# --- _metadata: the probes' own plain-HTTP client -------------------------------------------


@contextlib.contextmanager
def answering(reply: bytes):
    """A loopback socket that answers one request with `reply` as given, byte for byte, then
    closes; yields (its base URL, the request it read)."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve():
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            seen.append(data)
            conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", seen
    finally:
        thread.join(timeout=5)
        listener.close()


def test_metadata_sends_one_plain_request_and_reads_the_body():
    with answering(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nTRUEjunk") as (base, seen):
        body = hooks_http._metadata(
            "GET", f"{base}/instance/preempted?x=1", {"Metadata-Flavor": "G"}
        )
    assert body == b"TRUE"
    head = seen[0].decode().split("\r\n")
    assert head[0] == "GET /instance/preempted?x=1 HTTP/1.1"
    assert {"Connection: close", "Metadata-Flavor: G", f"Host: {base[7:]}"} <= set(head)


def test_metadata_joins_a_chunked_body():
    reply = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"3\r\nFAL\r\n2;ext=1\r\nSE\r\n0\r\n\r\n")  # fmt: skip
    with answering(reply) as (base, _):
        assert hooks_http._metadata("GET", base, {}) == b"FALSE"


def test_metadata_puts_with_an_empty_body():
    with answering(b"HTTP/1.1 200 OK\r\n\r\ntoken") as (base, seen):
        assert hooks_http._metadata("PUT", f"{base}/latest/api/token", {}) == b"token"
    assert "Content-Length: 0" in seen[0].decode()


@pytest.mark.parametrize(
    "reply",
    [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 2x OK\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nFA"],
)  # fmt: skip
def test_metadata_refuses_what_is_not_an_http_answer(reply):
    with answering(reply) as (base, _), pytest.raises(ValueError):
        hooks_http._metadata("GET", base, {})


def test_metadata_error_status_is_an_oserror_with_its_code_and_no_body():
    reply = b"HTTP/1.1 503 Busy\r\nContent-Length: 12\r\n\r\nSECRET-TOKEN"
    with answering(reply) as (base, _), pytest.raises(hooks_http.HTTPStatusError) as raised:
        hooks_http._metadata("GET", f"{base}/x", {})
    assert isinstance(raised.value, OSError) and raised.value.code == 503
    assert "SECRET" not in str(raised.value)


def test_metadata_is_asked_over_plain_http_only():
    with pytest.raises(ValueError, match="plain http"):
        hooks_http._metadata("GET", "https://169.254.169.254/latest", {})


def test_metadata_never_goes_through_a_proxy(route_server, monkeypatch):
    server = route_server({("GET", GCP_PREEMPTED): (200, "TRUE")})
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy")
    assert hooks_gcp.gcp_preempted({"gcp_metadata": server.base + "/computeMetadata/v1"})


def test_the_probes_leave_urllib_unloaded(tmp_path):
    """Every few seconds for the instance's life: the probes use _metadata, never urllib."""
    _write_package(tmp_path)
    probe = (
        "import sys; from cml_infra_agent import hooks\n"
        "for name in hooks.PREEMPTION_PROBES:\n"
        "    try:\n"
        "        hooks.hook(name)({k: 'http://127.0.0.1:9' for k in hooks.DEFAULT_ENDPOINTS})\n"
        "    except OSError:\n        pass\n"
        "print(' '.join(sorted(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-E", "-S", "-c", probe], cwd=tmp_path,
                          capture_output=True, text=True, check=True)  # fmt: skip
    loaded = set(done.stdout.split())
    assert "socket" in loaded, "no probe reached its metadata server"
    assert sorted(loaded & {"urllib.request", "http.client", "ssl"}) == []


GCP_PREEMPTED = "/computeMetadata/v1/instance/preempted"


@pytest.mark.parametrize(("flag", "expected"), [("FALSE", None), ("TRUE", "TRUE")])
def test_gcp_preempted(route_server, flag, expected):
    server = route_server({("GET", GCP_PREEMPTED): (200, flag, {"Metadata-Flavor": "Google"})})
    notice = hooks_gcp.gcp_preempted({"gcp_metadata": server.base + "/computeMetadata/v1"})
    assert notice == (None if expected is None else "gcp instance/preempted is TRUE")
    assert server.requests[0]["headers"]["metadata-flavor"] == "Google"


AZURE_EVENTS = "/metadata/scheduledevents"


def _azure_events(*kinds):
    events = [
        {
            "EventId": f"EVT-{number}",
            "EventType": kind,
            "ResourceType": "VirtualMachine",
            "Resources": ["vm1"],
            "EventStatus": "Scheduled",
            "NotBefore": "Mon, 19 Sep 2026 18:29:47 GMT",
        }
        for number, kind in enumerate(kinds)
    ]
    return {"DocumentIncarnation": 1, "Events": events}


@pytest.mark.parametrize(
    ("kinds", "preempted"),
    [((), False), (("Freeze", "Reboot"), False), (("Freeze", "Preempt"), True)],
)
def test_azure_scheduled_events(route_server, kinds, preempted):
    server = route_server(
        {("GET", AZURE_EVENTS): (200, _azure_events(*kinds), {"Metadata": "true"})}
    )
    notice = hooks_azure.azure_preempt_event({"azure_metadata": server.base + "/metadata"})
    if preempted:
        assert notice == "azure scheduled event Preempt at Mon, 19 Sep 2026 18:29:47 GMT"
    else:
        assert notice is None
    [request] = server.requests
    assert request["headers"]["metadata"] == "true"
    assert request["query"] == {"api-version": ["2020-07-01"]}


# --- built-in self-destroys, against a loopback fake of the metadata server and the cloud API

GCP_DISCOVERY = Path(__file__).resolve().parents[2] / "data" / "gcp-compute-subset.json"
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
    assert hooks.DEFAULT_ENDPOINTS == {
        "gcp_metadata": "http://metadata.google.internal/computeMetadata/v1",
        "gcp_api": "https://compute.googleapis.com/compute/v1",
        "azure_metadata": "http://169.254.169.254/metadata",
        "azure_api": "https://management.azure.com",
        "aws_metadata": "http://169.254.169.254",
    }


def test_gcp_api_default_is_the_discovery_base_url(gcp_delete_method):
    discovery, _ = gcp_delete_method
    assert hooks.DEFAULT_ENDPOINTS["gcp_api"] + "/" == discovery["baseUrl"]
