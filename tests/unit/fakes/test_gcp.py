"""The fake GCP (tests/fakes/gcp.py) answers firewall rules, global operations and IAM service
accounts as Google's Discovery documents describe them, and its checks catch what they do not
allow: through the client library, and through plain HTTP.

(Its instance and zone-operation routes are tested beside the code that uses them, in
tests/unit/clouds/test_gcp_api.py.)"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import requests

from tests.fakes.gcp import module_made, response_violations

CREATED = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
LATER = datetime(2030, 1, 2, 4, 4, 5, tzinfo=timezone.utc)
IAM = "/v1/projects/proj/serviceAccounts"
FIREWALLS = "/compute/v1/projects/proj/global/firewalls"


@pytest.fixture
def fake(fake_compute):
    return fake_compute


@pytest.fixture
def http():
    with requests.Session() as session:
        session.trust_env = False  # loopback: no proxy of the machine in the way
        yield session


def _compute(kind, fake):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import compute_v1

    cls = getattr(compute_v1, f"{kind}Client")
    transport = cls.get_transport_class("rest")(
        host=fake.url.removeprefix("http://"),
        url_scheme="http",
        credentials=AnonymousCredentials(),
    )
    return cls(transport=transport)


def _ids(fake):
    return [r["id"] for r in fake.requests]


# --- firewalls and global operations, through google-cloud-compute ----------------------------


def test_firewalls_list_get_and_filter_with_the_client_library(fake):
    from google.cloud import compute_v1

    fake.add_firewall("default-allow-ssh", "Allow SSH from anywhere", created=CREATED)
    fake.add_firewall("cml-infra-a-1234abcd-deny", "ours", priority=0)
    fake.add_firewall("cml-infra-b-5678abcd-deny", description=None)
    firewalls = _compute("Firewalls", fake)

    def names(text="", page=0):
        request = compute_v1.ListFirewallsRequest(project="proj", filter=text, max_results=page)
        return [rule.name for rule in firewalls.list(request=request)]

    assert names() == [
        "cml-infra-a-1234abcd-deny",
        "cml-infra-b-5678abcd-deny",
        "default-allow-ssh",
    ]
    assert (
        names('name eq "cml-infra-.*-deny"')
        == names("name eq cml-infra-.*-deny")
        == [
            "cml-infra-a-1234abcd-deny",
            "cml-infra-b-5678abcd-deny",
        ]
    )
    assert names("name ne cml-infra-.*") == ["default-allow-ssh"]
    assert names('description = "ours"') == ["cml-infra-a-1234abcd-deny"]
    assert names("description:*") == ["cml-infra-a-1234abcd-deny", "default-allow-ssh"]
    assert names(page=2) == names()  # two pages, followed by the pager
    paged = [c["query"] for c in fake.requests if c["query"].get("maxResults") == ["2"]]
    assert ["pageToken" in query for query in paged] == [False, True]

    got = firewalls.get(project="proj", firewall="default-allow-ssh")
    assert (got.direction, got.priority, got.description) == (
        "INGRESS",
        1000,
        "Allow SSH from anywhere",
    )
    assert datetime.fromisoformat(got.creation_timestamp) == CREATED
    assert (
        got.network == "https://www.googleapis.com/compute/v1/projects/proj/global/networks/default"
    )
    assert [(a.I_p_protocol, list(a.ports)) for a in got.allowed] == [("tcp", ["22"])]


def test_firewall_delete_answers_a_global_operation(fake):
    from google.api_core.exceptions import NotFound

    fake.add_firewall("one")
    fake.add_firewall("two")
    fake.operation_polls = 2
    firewalls, operations = _compute("Firewalls", fake), _compute("GlobalOperations", fake)

    running = firewalls.delete_unary(project="proj", firewall="one")
    assert running.status == running.Status.RUNNING
    assert running.zone == ""
    assert running.self_link.endswith(f"/projects/proj/global/operations/{running.name}")
    assert running.target_link.endswith("/projects/proj/global/firewalls/one")
    assert fake.firewall("one") is not None  # until the operation is DONE
    polled = operations.get(project="proj", operation=running.name)
    assert polled.status == polled.Status.RUNNING
    done = operations.get(project="proj", operation=running.name)
    assert done.status == done.Status.DONE
    assert fake.firewall("one") is None

    waited = operations.wait(
        project="proj", operation=firewalls.delete_unary(project="proj", firewall="two").name
    )
    assert waited.status == waited.Status.DONE
    assert fake.firewalls() == []
    with pytest.raises(NotFound):
        firewalls.get(project="proj", firewall="two")
    with pytest.raises(NotFound):
        firewalls.delete_unary(project="proj", firewall="two")
    with pytest.raises(NotFound):
        operations.get(project="proj", operation="operation-0-nothing")
    assert _ids(fake) == [
        "compute.firewalls.delete",
        "compute.globalOperations.get",
        "compute.globalOperations.get",
        "compute.firewalls.delete",
        "compute.globalOperations.wait",
        "compute.firewalls.get",
        "compute.firewalls.delete",
        "compute.globalOperations.get",
    ]
    assert [o["polls"] for o in fake.operations()] == [2, 1]


def test_a_failed_firewall_delete_leaves_the_rule(fake):
    fake.add_firewall("busy")
    fake.operation_polls = 0
    fake.fail_operation(400, "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE", "in use")

    done = _compute("Firewalls", fake).delete_unary(project="proj", firewall="busy")

    assert (done.status, done.http_error_status_code) == (done.Status.DONE, 400)
    assert done.error.errors[0].message == "in use"
    assert fake.firewall("busy") is not None


# --- IAM service accounts, over plain HTTP (what cml_infra.clouds.gcp sends) -------------------


def test_service_accounts_list_in_pages_of_20_unless_asked_and_at_most_100(fake, http):
    for number in range(130):
        fake.add_service_account(f"account-{number:03d}")

    def pages(size=None):
        emails, token, calls = [], None, 0
        while True:
            query = {k: v for k, v in (("pageSize", size), ("pageToken", token)) if v}
            body = http.get(fake.url + IAM, params=query).json()
            calls += 1
            emails += [a["email"] for a in body.get("accounts", [])]
            token = body.get("nextPageToken")
            if not token:
                return emails, calls

    every, calls = pages()
    assert (len(every), calls) == (130, 7)
    assert every == sorted(every) and every[0] == "account-000@proj.iam.gserviceaccount.com"
    assert pages(500) == (every, 2)
    assert pages(50) == (every, 3)


def test_service_accounts_get_and_delete(fake, http):
    made = fake.add_service_account("my-app", "the app", display_name="My app")
    name = f"projects/proj/serviceAccounts/{made['email']}"

    got = http.get(f"{fake.url}/v1/{name}").json()
    assert got == made
    assert got["name"] == name and got["uniqueId"] == got["oauth2ClientId"]
    by_id = http.get(f"{fake.url}/v1/projects/-/serviceAccounts/{made['uniqueId']}")
    assert by_id.json() == made

    deleted = http.delete(f"{fake.url}/v1/{name}")
    assert (deleted.status_code, deleted.json()) == (200, {})
    assert fake.service_accounts() == []
    gone = http.delete(f"{fake.url}/v1/{name}")
    assert gone.status_code == 404
    assert gone.json()["error"]["status"] == "NOT_FOUND"
    empty = http.get(fake.url + IAM)
    assert (empty.status_code, empty.json()) == (200, {})  # IAM leaves out an empty list
    other = http.get(f"{fake.url}/v1/projects/someone-else/serviceAccounts")
    assert (other.status_code, other.json()["error"]["status"]) == (403, "PERMISSION_DENIED")


def test_add_runner_makes_what_the_module_makes(fake):
    made = fake.add_runner("us-east1-b", "gpu-ci", "0123456789abcdef", created=CREATED,
                           expires=LATER)  # fmt: skip
    names = module_made("gpu-ci", "0123456789abcdef", CREATED, LATER)

    assert made["firewall"]["name"] == names["firewall_name"] == "cml-infra-gpu-ci-fe5567e8-deny"
    assert made["firewall"]["targetTags"] == ["cml-infra-gpu-ci-fe5567e8"]
    assert made["firewall"]["denied"] == [{"IPProtocol": "all"}]
    assert made["service_account"]["email"] == "cml-gpu-ci-fe5567@proj.iam.gserviceaccount.com"
    assert made["instance"]["labels"]["cml-infra-id"] == "0123456789abcdef"
    assert made["instance"]["labels"]["cml-infra-created"] == str(int(CREATED.timestamp()))
    bare = fake.add_runner("us-east1-b", "gpu-ci", "fedcba9876543210", created=CREATED,
                           expires=LATER, instance=False)  # fmt: skip
    assert bare["instance"] is None
    assert len(fake.instances()) == 1 and len(fake.firewalls()) == len(fake.service_accounts()) == 2


# --- what the descriptions do not allow is caught ---------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "query", "status", "expected"),
    [
        ("GET", IAM, "?pageSize=ten", 400, "'pageSize'='ten' is not an integer"),
        ("GET", IAM, "?pageSize=3000000000", 400, "'pageSize'='3000000000' is out of range"),
        ("GET", IAM, "?filter=email", 400, "query parameter 'filter' is not described"),
        ("POST", IAM, "", 404, "the path is described for ['DELETE', 'GET'], not POST"),
        ("GET", "/v1/projects/proj", "", 400, "'name'='projects/proj' does not match"),
        ("GET", "/v2/projects/proj/serviceAccounts", "", 404, "no method of the description"),
        (
            "POST",
            f"{IAM}/a@proj.iam.gserviceaccount.com:disable",
            "",
            404,
            "not POST",
        ),
        ("DELETE", f"{FIREWALLS}/Bad_Name", "", 400, "'firewall'='Bad_Name' does not match"),
        ("DELETE", f"{FIREWALLS}/x", "?force=true", 400, "query parameter 'force'"),
        ("POST", FIREWALLS, "", 404, "the path is described for ['GET'], not POST"),
        (
            "GET",
            FIREWALLS,
            "?filter=priority%20=%200",
            400,
            "the fake does not implement the filter 'priority = 0'",
        ),
        (
            "GET",
            FIREWALLS,
            "?filter=name%20eq%20(unclosed",
            400,
            "the fake does not implement the filter 'name eq (unclosed'",
        ),
        (
            "GET",
            "/compute/v1/projects/proj/global/operations",
            "",
            404,
            "no method of the description has the path",
        ),
        (
            "POST",
            f"{FIREWALLS}/x/testIamPermissions",
            "",
            404,
            "no method of the description has the path",
        ),
    ],
)
def test_requests_the_descriptions_do_not_allow_are_recorded(
    fake, http, method, path, query, status, expected
):
    reply = http.request(method, f"{fake.url}{path}{query}")

    assert reply.status_code == status
    assert reply.json()["error"]["code"] == status
    assert response_violations("iam.projects.serviceAccounts.get", status, reply.json()) == []
    assert any(expected in v for v in fake.violations), fake.violations
    fake.violations.clear()


def test_responses_the_descriptions_do_not_allow_are_recorded(fake, http):
    # A misspelt field, a field of the wrong type, a creationTimestamp that is not RFC 3339 and
    # a network that is not a URL, in what the fake serves.
    fake.add_service_account("odd-one", "x", disabeld=True)
    fake.add_service_account("odd-two", "x", disabled="no")
    fake.add_firewall("odd", created="yesterday", network="x", selfLink="http://x/odd")

    http.get(fake.url + IAM)
    http.get(fake.url + FIREWALLS)

    violations = "\n".join(fake.violations)
    assert "'disabeld' was unexpected" in violations
    assert "'no' is not of type 'boolean'" in violations
    assert "'yesterday' is not an RFC 3339 timestamp" in violations
    assert "'http://x/odd' is not a URL under" in violations
    fake.violations.clear()


def test_response_checks_follow_the_iam_document():
    account = {"email": "a@p.iam.gserviceaccount.com", "uniqueId": "1", "disabled": False}
    assert response_violations("iam.projects.serviceAccounts.list", 200, {}) == []
    listing = {"accounts": [account], "nextPageToken": "t"}
    assert response_violations("iam.projects.serviceAccounts.list", 200, listing) == []
    listing["accounts"][0] = {**account, "email": 1, "etag": "x", "labels": {}}
    assert len(response_violations("iam.projects.serviceAccounts.list", 200, listing)) == 2
    assert response_violations("iam.projects.serviceAccounts.delete", 200, {}) == []
    assert response_violations("iam.projects.serviceAccounts.delete", 200, {"done": 1}) != []
    error = {"error": {"code": 404, "message": "gone", "status": "NOT_FOUND"}}
    assert response_violations("iam.projects.serviceAccounts.get", 404, error) == []
    assert response_violations("iam.projects.serviceAccounts.get", 404, {"message": "x"}) != []
    rule = {"kind": "compute#firewall", "name": "x", "priority": 0, "direction": "IN"}
    assert len(response_violations("compute.firewalls.get", 200, rule)) == 1


@pytest.mark.parametrize(
    ("kind", "args"),
    [
        ("firewall", {"name": "Bad_Name"}),
        ("firewall", {"name": "x" * 64}),
        ("firewall", {"name": "ok", "description": "d" * 2049}),
        ("account", {"account_id": "short"}),
        ("account", {"account_id": "1starts-with-a-digit"}),
        ("account", {"account_id": "ends-with-a-dash-"}),
        ("account", {"account_id": "a" * 31}),
        ("account", {"account_id": "fine-name", "description": "é" * 129}),
        ("account", {"account_id": "fine-name", "display_name": "n" * 101}),
    ],
)
def test_the_fake_refuses_what_gcp_would_not_make(fake, kind, args):
    add = fake.add_firewall if kind == "firewall" else fake.add_service_account
    with pytest.raises(ValueError):
        add(**args)
    assert fake.firewalls() == fake.service_accounts() == []
