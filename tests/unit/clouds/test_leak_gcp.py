"""The GCP leak ledger: runners that ended themselves leave nothing behind once `cleanup` ran.

A GCP runner VM ends itself by deleting its own instance (the agent's `@gcp-delete-instance`,
or Compute Engine's max_run_duration DELETE). When `up` ran in an ephemeral CI job its Terraform
state is gone with the job, so the module's service account and firewall rule stay; a project
holds 100 service accounts by default, and `up` stops working after about 100 runs.

Here 50 runners are made on the fake Compute and IAM APIs as terraform/gcp makes them
(instance with the module's labels, deny-ingress firewall rule, service account), each instance
is deleted the way the VM deletes it (the instance only), and `cleanup` runs with no state at
all, as a fresh CI job would: nothing of those launches is left, and nothing that is not theirs
is touched: the default network's rule, other service accounts (one named the way the module
names them), a live runner of ours, and one whose `up` is under way (younger than the grace).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import requests

from cml_infra.cleanup import run as reaper
from cml_infra.state import StateDir
from tests.fakes.gcp import module_made

RUNNERS = 50
LIVE = "1ive1ive1ive1ive"
ZONES = ("us-central1-a", "us-east1-b", "europe-west4-a")


def confirmed(found):
    """As `--yes` answers: go ahead."""
    return True


def _ended_itself(fake, zone, name):
    """What the agent's hook sends with the VM's own token: DELETE of its own instance."""
    path = f"/compute/v1/projects/proj/zones/{zone}/instances/{name}"
    with requests.Session() as session:
        session.trust_env = False
        reply = session.delete(fake.url + path, headers={"Authorization": "Bearer vm-token"})
    assert reply.status_code == 200, reply.text


@pytest.fixture
def project(fake_compute):
    """50 runners that ended themselves, and what must stay: returns their launches and the
    names of what stays."""
    fake = fake_compute
    fake.operation_polls = 0  # the VM does not wait for its own end
    now = datetime.now(timezone.utc)
    made, expires = now - timedelta(hours=2), now + timedelta(hours=22)
    ended = []
    for number in range(RUNNERS):
        zone, name, launch = ZONES[number % 3], f"gpu-{number}", f"{number:04d}launch{number:04d}"
        fake.add_runner(zone, name, launch, created=made, expires=expires)
        _ended_itself(fake, zone, name)
        ended.append((name, launch))
    # Outside the region a narrowed cleanup searches: its instance is not in that listing.
    live = fake.add_runner("europe-west4-a", "gpu-live", LIVE, created=made,
                           expires=expires)  # fmt: skip
    young = fake.add_runner("us-central1-a", "gpu-young", "y0ungy0ungy0ung0",
                            created=now - timedelta(minutes=1), expires=expires,
                            instance=False)  # fmt: skip
    fake.add_firewall("default-allow-ssh", "Allow SSH from anywhere", created=made)
    fake.add_service_account("my-app", "the application's own identity")
    fake.add_service_account("cml-foo-123456", display_name="someone else's, named like ours")
    stays = {
        "firewalls": {"default-allow-ssh", live["firewall"]["name"], young["firewall"]["name"]},
        "accounts": {
            "my-app@proj.iam.gserviceaccount.com",
            "cml-foo-123456@proj.iam.gserviceaccount.com",
            live["service_account"]["email"],
            young["service_account"]["email"],
        },
        "instances": {"gpu-live"},
    }
    fake.requests.clear()
    return fake, ended, stays


def _left(fake):
    return (
        {f["name"] for f in fake.firewalls()},
        {a["email"] for a in fake.service_accounts()},
        {i["name"] for i in fake.instances()},
    )


def _theirs(ended):
    now = datetime.now(timezone.utc)
    firewalls, accounts = set(), set()
    for name, launch in ended:
        made = module_made(name, launch, now, now)
        firewalls.add(made["firewall_name"])
        accounts.add(f"{made['account_id']}@proj.iam.gserviceaccount.com")
    return firewalls, accounts


def test_cleanup_with_no_state_leaves_nothing_of_runners_that_ended_themselves(project, tmp_path):
    fake, ended, stays = project
    firewalls, accounts = _theirs(ended)
    assert len(firewalls) == len(accounts) == RUNNERS
    before = _left(fake)
    assert firewalls <= before[0] and accounts <= before[1]
    assert before[2] == stays["instances"]

    state = StateDir(tmp_path / "state")  # a fresh CI job: no record, no workspace
    # The default --max-destroy counts runners: 50 runners' accounts and rules are 50.
    settings = reaper.settings("gcp", (), None, "30m", "10m", False, [], state)
    rows = reaper.run(settings, state, None, confirmed)

    left = _left(fake)
    assert left[0] & firewalls == set()
    assert left[1] & accounts == set()
    assert left == (stays["firewalls"], stays["accounts"], stays["instances"])
    reaped = [row for row in rows if row.rule == "leftover" and not row.failed]
    assert len(reaped) == 2 * RUNNERS
    assert {row.launch for row in reaped} == {launch for _, launch in ended}
    assert {row.region for row in reaped} == {"global"}
    # Nothing of a launch with an instance is matched.
    assert [row for row in rows if row.launch == LIVE] == []
    # A second run finds nothing more to do.
    again = reaper.run(settings, state, None, confirmed)
    assert [row for row in again if not row.failed] == []
    assert _left(fake) == left


def test_a_cleanup_narrowed_to_regions_judges_no_global_leftover(project, tmp_path):
    """A service account or firewall rule belongs to no region, and its launch's instance may
    be in one this run did not list (gpu-live, in europe-west4): only a cleanup of every region
    judges them."""
    fake, _, _ = project
    before = _left(fake)
    state = StateDir(tmp_path / "state")
    settings = reaper.settings("gcp", ("us-central1",), None, "30m", "10m", False, [], state)
    rows = reaper.run(settings, state, None, confirmed)
    assert [row for row in rows if row.rule == "leftover"] == []
    assert _left(fake) == before
