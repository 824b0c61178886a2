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
from cml_infra.clouds.base import Leftover
from cml_infra.errors import CmlInfraError
from tests.fakes.gcp import module_made, response_violations

MANAGED = "cml-infra-managed"
DELETE = "compute.instances.delete"
FILTER = 'labels.cml-infra-managed = "true"'
CREATED = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
EXPIRES = 1_893_553_445  # 2030-01-02T03:04:05Z
LEFTOVER = Leftover("google_service_account", "cml-x-012345@proj.iam.gserviceaccount.com",
                    "gcp", "global", "x", "0123456789abcdef", None)  # fmt: skip


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
    # What is gone already is not deleted: its get answers 404.
    assert [r["status"] for r in _calls(fake, "compute.instances.get")] == [200, 404, 200]
    assert [r["status"] for r in _calls(fake, "compute.instances.delete")] == [200, 200]
    assert len(fake.instances()) == 4


def test_terminate_a_missing_instance_is_fine(fake, cloud):
    cloud.terminate(["us-central1-a/x"])

    (call,) = fake.requests
    assert (call["id"], call["status"]) == ("compute.instances.get", 404)
    assert fake.operations() == []


def test_terminate_an_instance_gone_between_get_and_delete_is_fine(fake, cloud):
    _seed(fake)
    fake.fail(404, "The resource was not found", method=DELETE)

    cloud.terminate(["us-central1-a/cml-a"])

    assert [r["status"] for r in _calls(fake, DELETE)] == [404]


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


# ---------------------------------------------------------------------------------------------
# Leftovers: the firewall rule and service account a VM that deleted itself leaves


FIREWALLS_LIST = "compute.firewalls.list"
FIREWALL_DELETE = "compute.firewalls.delete"
ACCOUNTS_LIST = "iam.projects.serviceAccounts.list"
ACCOUNT_DELETE = "iam.projects.serviceAccounts.delete"
LAUNCH_A, LAUNCH_B = "0123456789abcdef", "fedcba9876543210"
LATER = datetime(2030, 1, 2, 4, 4, 5, tzinfo=timezone.utc)


def _runner(fake, name, launch, instance=True, zone="us-central1-a", **more):
    return fake.add_runner(zone, name, launch, created=CREATED, expires=LATER,
                           instance=instance, **more)  # fmt: skip


def _decoys(fake):
    """What is not ours, though some of it looks it."""
    fake.add_firewall("default-allow-ssh", "Allow SSH from anywhere")
    fake.add_service_account("my-app", "the app's own identity")
    fake.add_service_account("cml-foo-123456")  # our naming, no description
    made = module_made("box-x", LAUNCH_B, CREATED, LATER)
    # Our description on a name that is not the one the module gives that launch, and ours
    # for launch B described as launch A: both are somebody's imitation, or a mistake.
    fake.add_firewall("cml-infra-box-x-00000000-deny", made["firewall_description"])
    fake.add_service_account(
        module_made("box-x", LAUNCH_A, CREATED, LATER)["account_id"], made["account_description"]
    )
    # A description that ends in our mark after text of someone else's.
    fake.add_firewall(made["firewall_name"], "theirs; " + made["firewall_description"])


def _names(fake):
    return {f["name"] for f in fake.firewalls()}, {a["email"] for a in fake.service_accounts()}


def test_list_leftovers_finds_the_module_s_firewall_rules_and_service_accounts(fake, cloud):
    made = _runner(fake, "box-a", LAUNCH_A, instance=False)
    _runner(fake, "box-b", LAUNCH_B)
    _decoys(fake)

    found = {(f.kind, f.id): f for f in cloud.list_leftovers(None)}

    firewall = ("google_compute_firewall", made["firewall"]["name"])
    account = ("google_service_account", made["service_account"]["email"])
    assert firewall in found and account in found
    assert len(found) == 4  # both runners' (list_leftovers does not ask about instances)
    for leftover in (found[firewall], found[account]):
        assert (leftover.cloud, leftover.region, leftover.name) == ("gcp", "global", "box-a")
        assert leftover.launch_id == LAUNCH_A
        assert leftover.created_at == CREATED
    assert found[account].label == f"google_service_account {account[1]}"
    # The name filter went to the API; the description decided the rest.
    (call,) = _calls(fake, FIREWALLS_LIST)
    assert call["query"] == {"filter": ['name eq "cml-infra-.*-deny"']}
    assert [c["query"]["pageSize"] for c in _calls(fake, ACCOUNTS_LIST)] == [["100"]]
    assert _calls(fake, FIREWALL_DELETE) == _calls(fake, ACCOUNT_DELETE) == []


def test_list_leftovers_reads_the_descriptions_of_older_modules(fake, cloud):
    """Before `created`: the firewall rule's age is its creationTimestamp, the service
    account's its expiry, a time after it was made, so it never looks older than it is."""
    made = module_made("old-box", LAUNCH_A, CREATED, LATER)
    expires = int(LATER.timestamp())
    fake.add_firewall(
        made["firewall_name"],
        f"cml-infra runner old-box: no inbound traffic at all (managed by cml-infra, "
        f"launch {LAUNCH_A}, expires {expires}).",
        created=CREATED,
    )
    fake.add_service_account(
        made["account_id"],
        f"Identity of cml-infra runner VM old-box (launch {LAUNCH_A}, expires {expires}); "
        "may delete only that instance.",
    )

    found = {f.kind: f for f in cloud.list_leftovers(None)}

    assert found["google_compute_firewall"].created_at == CREATED
    assert found["google_service_account"].created_at == LATER
    assert {f.launch_id for f in found.values()} == {LAUNCH_A}


def test_leftovers_are_global_and_cleanup_s_regions_keep_them(fake, cloud):
    _runner(fake, "box-a", LAUNCH_A, instance=False, zone="europe-west4-a")

    assert cloud.list_leftovers(["us-east1"]) == []
    assert fake.requests == []
    searched = cloud.searched_regions(["us-east1"])
    assert set(searched) == {"us-east1", "global"}
    assert len(cloud.list_leftovers(searched)) == 2
    assert cloud.searched_regions(None) is None
    # The instances' search is still narrowed: "global" is no instance's region.
    fake.add_instance("europe-west4-a", "vm", {MANAGED: "true"})
    assert cloud.list_managed(searched) == []


def test_list_leftovers_follows_pages(fake, cloud):
    for number in range(230):
        _runner(fake, f"box-{number}", f"launch{number:04d}", instance=False)
    for number in range(40):
        fake.add_service_account(f"other-{number:03d}")

    found = cloud.list_leftovers(None)

    assert len(found) == 460
    assert len({(f.kind, f.id) for f in found}) == 460
    assert len(_calls(fake, ACCOUNTS_LIST)) == 3  # 270 accounts, 100 a page
    assert [("pageToken" in c["query"]) for c in _calls(fake, ACCOUNTS_LIST)] == [
        False,
        True,
        True,
    ]


@pytest.mark.parametrize("method", [FIREWALLS_LIST, ACCOUNTS_LIST])
def test_list_leftovers_turns_a_403_into_cml_infra_error(fake, cloud, method):
    fake.fail(403, "Permission denied", method=method)

    with pytest.raises(CmlInfraError, match=r"gcp: could not list firewall rules and service"):
        cloud.list_leftovers(None)


def test_list_leftovers_retries_what_iam_throttles(fake, cloud):
    _runner(fake, "box-a", LAUNCH_A, instance=False)
    fake.fail(429, "Quota exceeded for quota metric 'Read requests'", method=ACCOUNTS_LIST)

    assert len(cloud.list_leftovers(None)) == 2
    assert [c["status"] for c in _calls(fake, ACCOUNTS_LIST)] == [429, 200]


def test_delete_leftovers_deletes_them_and_what_is_gone_is_fine(fake, cloud):
    _runner(fake, "box-a", LAUNCH_A, instance=False)
    _decoys(fake)
    before = _names(fake)
    fake.operation_polls = 1  # the firewall rule's delete answers RUNNING, as GCE does

    found = cloud.list_leftovers(None)
    cloud.delete_leftovers(found)

    firewalls, accounts = _names(fake)
    assert before[0] - firewalls == {f.id for f in found if f.kind == "google_compute_firewall"}
    assert before[1] - accounts == {f.id for f in found if f.kind == "google_service_account"}
    # Waited for through the same endpoint (globalOperations.wait).
    assert [o["status"] for o in fake.operations()] == ["DONE"]
    assert len(_calls(fake, "compute.globalOperations.wait")) == 1

    cloud.delete_leftovers(found)  # again: gone already
    assert [c["status"] for c in _calls(fake, FIREWALL_DELETE)] == [200, 404]
    assert [c["status"] for c in _calls(fake, ACCOUNT_DELETE)] == [200, 404]
    cloud.delete_leftovers([])
    assert _names(fake) == (firewalls, accounts)


def test_delete_leftovers_keeps_those_of_a_launch_with_an_instance(fake, cloud):
    """Whatever regions a cleanup searched: the instance may be in any of them."""
    live = _runner(fake, "box-a", LAUNCH_A, zone="asia-east1-b")
    gone = _runner(fake, "box-b", LAUNCH_B, instance=False)

    with pytest.raises(CmlInfraError, match=r"cml-infra-box-a-.*kept: an instance of its"):
        cloud.delete_leftovers(cloud.list_leftovers(None))

    firewalls, accounts = _names(fake)
    assert firewalls == {live["firewall"]["name"]}
    assert accounts == {live["service_account"]["email"]}
    assert gone["firewall"]["name"] not in firewalls


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        (FIREWALL_DELETE, r"gcp firewall rule cml-infra-box-a-\w+-deny: delete failed: 403"),
        (ACCOUNT_DELETE, r"gcp service account cml-box-a-\w+@proj\..*: delete failed: 403"),
    ],
)
def test_delete_leftovers_turns_a_403_into_cml_infra_error(fake, cloud, method, expected):
    _runner(fake, "box-a", LAUNCH_A, instance=False)
    found = cloud.list_leftovers(None)
    fake.fail(403, "Permission denied", method=method)

    with pytest.raises(CmlInfraError, match=expected):
        cloud.delete_leftovers(found)


def test_delete_leftovers_reports_a_failed_operation(fake, cloud):
    _runner(fake, "box-a", LAUNCH_A, instance=False)
    fake.operation_polls = 0
    fake.fail_operation(400, "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE", "in use by something")

    with pytest.raises(CmlInfraError, match=r"firewall rule .*: delete failed: 400 .*in use by"):
        cloud.delete_leftovers(cloud.list_leftovers(None))
    assert len(fake.firewalls()) == 1


def test_terminate_removes_its_launch_s_firewall_rule_and_service_account(fake, cloud):
    ended = _runner(fake, "box-a", LAUNCH_A)
    other = _runner(fake, "box-b", LAUNCH_B, zone="us-central1-b")
    _decoys(fake)
    before = _names(fake)

    cloud.terminate(["us-central1-a/box-a"])

    assert fake.instance("us-central1-a", "box-a") is None
    assert fake.instance("us-central1-b", "box-b") is not None
    firewalls, accounts = _names(fake)
    assert before[0] - firewalls == {ended["firewall"]["name"]}
    assert before[1] - accounts == {ended["service_account"]["email"]}
    assert other["firewall"]["name"] in firewalls
    # The deny rule goes only once its VM is gone.
    ids = [r["id"] for r in fake.requests]
    assert ids.index("compute.zoneOperations.wait") < ids.index(FIREWALL_DELETE)
    assert fake.violations == []


def test_terminate_keeps_what_another_instance_of_the_launch_needs(fake, cloud):
    """One launch's failover attempts share a launch id: a stray first attempt's instance
    goes, the second attempt keeps its firewall rule and service account."""
    _runner(fake, "box-a", LAUNCH_A)
    fake.add_instance("us-central1-b", "box-a", {MANAGED: "true", "cml-infra-id": LAUNCH_A})
    before = _names(fake)

    cloud.terminate(["us-central1-a/box-a"])

    assert _names(fake) == before
    assert _calls(fake, FIREWALL_DELETE) == []


def test_terminate_of_instances_older_than_launch_ids_lists_no_leftovers(fake, cloud):
    _seed(fake)
    fake.operation_polls = 0

    cloud.terminate(["us-central1-a/cml-a", "europe-west4-a/cml-c"])

    assert {r["id"] for r in fake.requests} == {DELETE, "compute.instances.get"}


@pytest.mark.parametrize("call", ["list", "terminate", "leftovers", "delete leftovers"])
def test_an_unreachable_endpoint_is_a_cml_infra_error(monkeypatch, cloud, call):
    with socket.socket() as probe:  # a loopback port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("CML_INFRA_GCP_API_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "proj")

    with pytest.raises(CmlInfraError):
        if call == "list":
            cloud.list_managed(None)
        elif call == "terminate":
            cloud.terminate(["us-central1-a/x"])
        elif call == "leftovers":
            cloud.list_leftovers(None)
        else:
            cloud.delete_leftovers([LEFTOVER])


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
            "?filter=(name%20eq%20cml-.*)%20OR%20(status%20=%20RUNNING)",
            400,
            "the fake does not implement the filter '(name eq cml-.*) OR (status = RUNNING)'",
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
