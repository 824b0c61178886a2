"""cml_infra.clouds.gcp against the Compute API: list_managed and terminate, through
google-cloud-compute's REST transport, on the loopback fake (tests/fakes/gcp.py) that checks
every request and response against Google's Discovery description."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from datetime import datetime, timezone

import pytest

from cml_infra import clouds
from cml_infra.errors import CmlInfraError
from tests.fakes.gcp import response_violations

MANAGED = "cml-infra-managed"
DELETE = "compute.instances.delete"
FILTER = 'labels.cml-infra-managed = "true"'
CREATED = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
EXPIRES = 1_893_553_445  # 2030-01-02T03:04:05Z


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Name lookups of anything but loopback fail at once (and are recorded), so that a request
    the code sends past the fake can neither reach Google nor wait on DNS."""
    escaped: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in ("127.0.0.1", "localhost", "::1"):
            escaped.append(name)
            raise socket.gaierror(socket.EAI_NONAME, f"{name}: blocked in the unit tests")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return escaped


@pytest.fixture
def fake(fake_compute):
    """The fake Compute API that every test here talks to (tests/unit/conftest.py)."""
    return fake_compute


@pytest.fixture
def cloud():
    return clouds.get("gcp")


def _labels(name, **more):
    return {MANAGED: "true", "cml-infra-name": name, "cml-infra-expires": str(EXPIRES), **more}


def _seed(fake):
    fake.add_instance("us-central1-a", "cml-a", _labels("box-a"), created=CREATED)
    fake.add_instance("us-central1-b", "cml-b", _labels("box-b"), status="STOPPING")
    fake.add_instance("europe-west4-a", "cml-c", _labels("box-c", team="ml"))
    fake.add_instance("asia-east1-b", "cml-d", {MANAGED: "true"}, status="TERMINATED")
    fake.add_instance("us-central1-a", "plain")
    fake.add_instance("europe-west4-a", "not-ours", {MANAGED: "false", "cml-infra-name": "x"})


def _calls(fake, method_id):
    return [r for r in fake.requests if r["id"] == method_id]


# ---------------------------------------------------------------------------------------------
# list_managed


def test_list_managed_returns_the_labelled_instances_of_every_region(fake, cloud):
    _seed(fake)

    found = {m.id: m for m in cloud.list_managed(None)}

    assert set(found) == {
        "us-central1-a/cml-a",
        "us-central1-b/cml-b",
        "europe-west4-a/cml-c",
        "asia-east1-b/cml-d",
    }
    a = found["us-central1-a/cml-a"]
    assert (a.name, a.cloud, a.region, a.state) == ("box-a", "gcp", "us-central1", "running")
    assert a.created_at == CREATED
    assert a.expires_at == datetime.fromtimestamp(EXPIRES, timezone.utc)
    assert a.tags == _labels("box-a")
    assert (found["us-central1-b/cml-b"].state, found["europe-west4-a/cml-c"].region) == (
        "stopping",
        "europe-west4",
    )
    assert found["europe-west4-a/cml-c"].tags["team"] == "ml"
    # No name or expiry label: the instance name, no expiry.
    d = found["asia-east1-b/cml-d"]
    assert (d.name, d.region, d.state, d.expires_at) == ("cml-d", "asia-east1", "terminated", None)
    # The filter went to the API (the fake applies it); one page, nothing else asked.
    (call,) = fake.requests
    assert call["id"] == "compute.instances.aggregatedList"
    assert call["path"] == "/compute/v1/projects/proj/aggregated/instances"
    assert call["query"] == {"filter": [FILTER]}


def test_list_managed_with_regions_keeps_only_those_regions(fake, cloud):
    _seed(fake)

    assert {m.id for m in cloud.list_managed(["us-central1"])} == {
        "us-central1-a/cml-a",
        "us-central1-b/cml-b",
    }
    assert {m.id for m in cloud.list_managed(["europe-west4", "asia-east1"])} == {
        "europe-west4-a/cml-c",
        "asia-east1-b/cml-d",
    }
    assert cloud.list_managed(["us-east1"]) == []
    assert cloud.list_managed([]) == []


def test_list_managed_of_an_empty_project(fake, cloud):
    fake.add_instance("us-central1-a", "plain")
    assert cloud.list_managed(None) == []


def test_list_managed_follows_pages_past_500_instances(fake, cloud):
    zones = ("us-central1-a", "us-central1-b", "europe-west4-a")
    for number in range(1001):
        fake.add_instance(zones[number % 3], f"cml-{number:04d}", _labels(f"box-{number}"))
    for number in range(7):
        fake.add_instance("us-central1-c", f"other-{number}")

    found = cloud.list_managed(None)

    assert len(found) == 1001
    assert len({m.id for m in found}) == 1001
    calls = _calls(fake, "compute.instances.aggregatedList")
    assert len(calls) == 3  # 500 + 500 + 1
    assert "pageToken" not in calls[0]["query"]
    assert all(call["query"]["filter"] == [FILTER] for call in calls)
    assert all(len(call["query"]["pageToken"]) == 1 for call in calls[1:])
    assert sum(m.region == "europe-west4" for m in found) == 333


def test_list_managed_turns_a_403_into_cml_infra_error(fake, cloud):
    _seed(fake)
    fake.fail(403)

    with pytest.raises(CmlInfraError, match=r"gcp: could not list instances: 403 .*permission"):
        cloud.list_managed(None)
    assert [r["status"] for r in fake.requests] == [403]
    # The fault was used up: the next listing works.
    assert len(cloud.list_managed(None)) == 4


# ---------------------------------------------------------------------------------------------
# terminate


def test_terminate_deletes_exactly_that_instance(fake, cloud):
    _seed(fake)
    fake.operation_polls = 0  # the delete answers an operation that is already DONE
    before = {(i["zone"].rpartition("/")[2], i["name"]) for i in fake.instances()}

    cloud.terminate(["us-central1-a/cml-a"])

    after = {(i["zone"].rpartition("/")[2], i["name"]) for i in fake.instances()}
    assert before - after == {("us-central1-a", "cml-a")}
    assert len(after) == len(before) - 1
    (call,) = _calls(fake, "compute.instances.delete")
    assert call["path"] == "/compute/v1/projects/proj/zones/us-central1-a/instances/cml-a"
    assert call["method"] == "DELETE" and call["status"] == 200
    (operation,) = fake.operations()
    assert operation["status"] == "DONE"
    assert operation["targetLink"].endswith("/zones/us-central1-a/instances/cml-a")


def test_terminate_several_and_a_missing_one(fake, cloud):
    _seed(fake)
    fake.operation_polls = 0

    cloud.terminate(["europe-west4-a/cml-c", "us-central1-a/gone", "asia-east1-b/cml-d"])

    assert fake.instance("europe-west4-a", "cml-c") is None
    assert fake.instance("asia-east1-b", "cml-d") is None
    assert [r["status"] for r in _calls(fake, "compute.instances.delete")] == [200, 404, 200]
    assert len(fake.instances()) == 4


def test_terminate_a_missing_instance_is_fine(fake, cloud):
    cloud.terminate(["us-central1-a/x"])

    (call,) = fake.requests
    assert (call["id"], call["status"]) == ("compute.instances.delete", 404)
    assert fake.operations() == []


def test_terminate_turns_a_403_into_cml_infra_error(fake, cloud):
    _seed(fake)
    fake.fail(403, "Required 'compute.instances.delete' permission", method=DELETE)

    with pytest.raises(CmlInfraError, match=r"gcp us-central1-a/cml-a: delete failed: 403"):
        cloud.terminate(["us-central1-a/cml-a"])
    assert fake.instance("us-central1-a", "cml-a") is not None


def test_terminate_reports_a_failed_operation(fake, cloud):
    """terminate looks at the operation's outcome (operation.result()), not only the 200."""
    _seed(fake)
    fake.operation_polls = 0
    fake.fail_operation(400, "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE", "in use by something")

    with pytest.raises(CmlInfraError, match=r"delete failed: 400 .*in use by something"):
        cloud.terminate(["us-central1-a/cml-a"])
    assert fake.instance("us-central1-a", "cml-a")["status"] == "RUNNING"


def test_terminate_waits_for_a_running_operation(fake, cloud, loopback_only):
    _seed(fake)
    fake.operation_polls = 1  # as GCE does: the delete answers RUNNING; one poll later, DONE

    try:
        cloud.terminate(["us-central1-a/cml-a"])
    finally:
        assert loopback_only == [], f"requests went past the fake to {loopback_only}"
    assert fake.instance("us-central1-a", "cml-a") is None
    (operation,) = fake.operations()
    assert (operation["status"], operation["polls"]) == ("DONE", 1)
    # It waits on the zone operation through the same endpoint (zoneOperations.wait).
    assert len(_calls(fake, "compute.zoneOperations.wait")) == 1


@pytest.mark.parametrize("call", ["list", "terminate"])
def test_an_unreachable_endpoint_is_a_cml_infra_error(monkeypatch, cloud, call):
    with socket.socket() as probe:  # a loopback port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("CML_INFRA_GCP_API_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "proj")

    with pytest.raises(CmlInfraError):
        if call == "list":
            cloud.list_managed(None)
        else:
            cloud.terminate(["us-central1-a/x"])


# ---------------------------------------------------------------------------------------------
# The fake itself: what the client library sends it, and that its checks can fail.


def _compute(kind, fake):
    """A compute_v1 client of `kind` on the fake, as _client builds it."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import compute_v1

    cls = getattr(compute_v1, f"{kind}Client")
    transport = cls.get_transport_class("rest")(
        host=fake.url.removeprefix("http://"),
        url_scheme="http",
        credentials=AnonymousCredentials(),
    )
    return cls(transport=transport)


def test_fake_operation_polling_with_the_client_library(fake):
    """ExtendedOperation.result() polls zoneOperations.get (given a ZoneOperationsClient on the
    fake: the fix for the bug above); zoneOperations.wait finishes an operation at once."""
    from google.api_core.exceptions import NotFound

    fake.add_instance("us-central1-a", "one")
    fake.add_instance("us-central1-a", "two")
    instances = _compute("Instances", fake)
    instances._transport._extended_operations_services["zone_operations"] = _compute(
        "ZoneOperations", fake
    )

    operation = instances.delete(project="proj", zone="us-central1-a", instance="one")
    assert operation.status.name == "RUNNING"
    assert fake.instance("us-central1-a", "one")["status"] == "STOPPING"
    operation.result(timeout=10)
    assert fake.instance("us-central1-a", "one") is None

    running = instances.delete_unary(project="proj", zone="us-central1-a", instance="two")
    done = _compute("ZoneOperations", fake).wait(
        project="proj", zone="us-central1-a", operation=running.name
    )
    assert done.status == done.Status.DONE
    assert fake.instances() == []
    with pytest.raises(NotFound):
        instances.get(project="proj", zone="us-central1-a", instance="two")

    ids = [r["id"] for r in fake.requests]
    assert ids == [
        "compute.instances.delete",
        "compute.zoneOperations.get",
        "compute.instances.delete",
        "compute.zoneOperations.wait",
        "compute.instances.get",
    ]


def test_fake_get_and_max_results_paging_with_the_client_library(fake):
    from google.cloud import compute_v1

    for number in range(5):
        fake.add_instance("us-east1-b", f"vm-{number}", {"n": str(number)}, created=CREATED)
    instances = _compute("Instances", fake)

    got = instances.get(project="proj", zone="us-east1-b", instance="vm-3")
    assert (got.name, got.status, dict(got.labels)) == ("vm-3", "RUNNING", {"n": "3"})
    assert got.zone == "https://www.googleapis.com/compute/v1/projects/proj/zones/us-east1-b"
    assert datetime.fromisoformat(got.creation_timestamp) == CREATED
    assert int(got.id) > 0

    request = compute_v1.AggregatedListInstancesRequest(project="proj", max_results=2)
    names = [
        instance.name
        for _, scoped in instances.aggregated_list(request=request)
        for instance in scoped.instances
    ]
    assert names == [f"vm-{n}" for n in range(5)]
    calls = _calls(fake, "compute.instances.aggregatedList")
    assert [c["query"]["maxResults"] for c in calls] == [["2"]] * 3
    assert [("pageToken" in c["query"]) for c in calls] == [False, True, True]


def _raw(fake, method, path, query=""):
    request = urllib.request.Request(f"{fake.url}{path}{query}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize(
    ("method", "path", "query", "status", "expected"),
    [
        ("GET", "/compute/v1/projects/proj/nothing", "", 404, "no method of the description"),
        ("GET", "/compute/v2/projects/proj/aggregated/instances", "", 404, "no method"),
        ("PUT", "/compute/v1/projects/proj/zones/us-central1-a/instances/a", "", 404, "not PUT"),
        (
            "GET",
            "/compute/v1/projects/proj/aggregated/instances",
            "?bogus=1",
            400,
            "query parameter 'bogus' is not described",
        ),
        (
            "GET",
            "/compute/v1/projects/proj/aggregated/instances",
            "?maxResults=many",
            400,
            "'maxResults'='many' is not an integer",
        ),
        (
            "GET",
            "/compute/v1/projects/proj/zones/us-central1-a/instances/a",
            "?requestId=1",
            400,
            "query parameter 'requestId' is not described",
        ),
        (
            "GET",
            "/compute/v1/projects/proj/zones/US_CENTRAL/instances/a",
            "",
            400,
            "'zone'='US_CENTRAL' does not match",
        ),
        (
            "DELETE",
            "/compute/v1/projects/proj/zones/us-central1-a/instances/a",
            "?noGracefulShutdown=yes",
            400,
            "'noGracefulShutdown'='yes' is not a boolean",
        ),
        (
            "GET",
            "/compute/v1/projects/proj/aggregated/instances",
            "?filter=name%20eq%20cml-.*",
            400,
            "the fake does not implement the filter 'name eq cml-.*'",
        ),
        (
            "GET",
            "/compute/v1/projects/proj/zones/us-central1-a/instances",
            "",
            404,
            "compute.instances.list: described, but the fake does not implement it",
        ),
    ],
)
def test_fake_records_requests_the_description_does_not_allow(
    fake, method, path, query, status, expected
):
    got_status, body = _raw(fake, method, path, query)

    assert got_status == status
    assert body["error"]["code"] == status
    assert any(expected in v for v in fake.violations), fake.violations
    fake.violations.clear()


def test_fake_records_responses_the_description_does_not_allow(fake, cloud):
    # A misspelt field and a timestamp that is not RFC 3339 in what the fake serves.
    fake.add_instance("us-central1-a", "odd", {MANAGED: "true"}, created="yesterday", lables={})

    cloud.list_managed(["us-east1"])

    assert any("'lables' was unexpected" in v for v in fake.violations), fake.violations
    assert any("'yesterday' is not an RFC 3339 timestamp" in v for v in fake.violations)
    fake.violations.clear()


@pytest.mark.parametrize(
    ("zone", "name", "labels", "status"),
    [
        ("us-central1-a", "Upper", {}, "RUNNING"),
        ("us_central1", "vm", {}, "RUNNING"),
        ("us-central1-a", "vm", {"Key": "v"}, "RUNNING"),
        ("us-central1-a", "vm", {"k": "Value"}, "RUNNING"),
        ("us-central1-a", "vm", {}, "running"),
    ],
)
def test_fake_refuses_instances_gce_would_not_have(fake, zone, name, labels, status):
    with pytest.raises(ValueError):
        fake.add_instance(zone, name, labels, status=status)
    assert fake.instances() == []


def test_response_checks_follow_the_discovery_schemas():
    operation = {"kind": "compute#operation", "id": "1", "name": "op-1", "status": "DONE"}
    assert response_violations("compute.zoneOperations.get", 200, operation) == []
    bad = {**operation, "id": 1, "status": "FINISHED", "progres": 100}
    errors = response_violations("compute.zoneOperations.get", 200, bad)
    assert len(errors) == 3, errors
    listing = {"items": {"zones/a": {"instances": [{"name": "x", "status": "RUNNING"}]}}}
    assert response_violations("compute.instances.aggregatedList", 200, listing) == []
    listing["items"]["zones/a"]["instances"][0].update(labels={"a": 1}, id="x1")
    assert len(response_violations("compute.instances.aggregatedList", 200, listing)) == 2
    assert response_violations("compute.instances.get", 404, {"error": {"message": "x"}}) != []
