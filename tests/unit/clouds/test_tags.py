"""cml_infra.clouds.tags: the tags every resource carries, and the one parser of what a cloud
reports back into a ManagedInstance."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest

from cml_infra.clouds import tags
from cml_infra.spec import ForgeTarget, RunnerSpec

EXPIRES = datetime(2030, 1, 1, tzinfo=timezone.utc)
EXPIRES_TAG = "1893456000"
CREATED = datetime(2029, 12, 31, tzinfo=timezone.utc)
CREATED_TAG = "1893369600"
LAUNCH_ID = "0123456789abcdef"


def _spec(**changes):
    fields = {"name": "box-1", "cloud": "aws", "idle_timeout": 60, "ttl": 3600}
    fields.update(changes)
    return RunnerSpec(**fields)


def _instance(found, **changes):
    fields = {
        "id": "us-east-1/i-0abc",
        "cloud": "aws",
        "region": "us-east-1",
        "state": "running",
        "created_at": CREATED,
        "fallback_name": "i-0abc",
    }
    fields.update(changes)
    return tags.instance(found, **fields)


# --- resource_tags and managed_tags -----------------------------------------------------------


def test_a_task_carries_the_users_tags_only():
    assert tags.resource_tags(_spec(tags={"team": "ml"})) == {"team": "ml"}
    assert tags.resource_tags(_spec()) == {}


def test_the_users_tags_are_copied_not_shared():
    spec = _spec(tags={"team": "ml"})
    tags.resource_tags(spec)["team"] = "changed"
    assert spec.tags == {"team": "ml"}


def test_a_runner_also_carries_its_forge_and_scope():
    forge = ForgeTarget(repo="octo/repo")
    assert tags.resource_tags(_spec(tags={"team": "ml"}, forge=forge)) == {
        "team": "ml",
        "cml-infra-forge": "github",
        "cml-infra-scope": forge.scope_tag,
    }


def test_the_scope_mark_tells_repositories_and_organizations_apart():
    repo = tags.resource_tags(_spec(forge=ForgeTarget(repo="octo/repo")))
    same_repo = tags.resource_tags(_spec(forge=ForgeTarget(repo="Octo/Repo")))
    org = tags.resource_tags(_spec(forge=ForgeTarget(org="octo")))
    assert repo[tags.SCOPE] == same_repo[tags.SCOPE]
    assert repo[tags.SCOPE] != org[tags.SCOPE]
    # A label value every cloud accepts (GCP: lowercase letters, digits, '_' and '-').
    assert repo[tags.SCOPE].isalnum() and repo[tags.SCOPE].islower()


def test_managed_tags_add_the_marks_cleanup_finds_a_resource_by():
    assert tags.managed_tags(_spec(tags={"team": "ml"}), EXPIRES, LAUNCH_ID, CREATED) == {
        "team": "ml",
        "cml-infra-managed": "true",
        "cml-infra-name": "box-1",
        "cml-infra-expires": EXPIRES_TAG,
        "cml-infra-id": LAUNCH_ID,
        "cml-infra-created": CREATED_TAG,
    }


def test_managed_tags_of_a_runner_keep_its_forge_marks():
    managed = tags.managed_tags(_spec(forge=ForgeTarget(org="octo")), EXPIRES, LAUNCH_ID, CREATED)
    assert managed[tags.FORGE] == "github"
    assert tags.SCOPE in managed
    assert tags.is_managed(managed)


def test_our_marks_win_over_a_user_tag_of_the_same_key():
    spec = _spec(
        tags={
            "cml-infra-name": "spoofed",
            "cml-infra-managed": "false",
            "cml-infra-id": "x",
            "cml-infra-created": "1",
        }
    )
    managed = tags.managed_tags(spec, EXPIRES, LAUNCH_ID, CREATED)
    assert (managed[tags.NAME], managed[tags.MANAGED]) == ("box-1", "true")
    assert managed[tags.LAUNCH_ID] == LAUNCH_ID
    assert managed[tags.CREATED] == CREATED_TAG


def test_every_key_of_ours_has_the_prefix():
    assert all(
        key.startswith(tags.PREFIX)
        for key in (
            tags.MANAGED,
            tags.NAME,
            tags.EXPIRES,
            tags.FORGE,
            tags.SCOPE,
            tags.LAUNCH_ID,
            tags.CREATED,
        )
    )


# --- is_managed --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("found", "managed"),
    [
        ({"cml-infra-managed": "true"}, True),
        ({"cml-infra-managed": "True"}, False),
        ({"cml-infra-managed": "false"}, False),
        ({"cml-infra-managed": ""}, False),
        ({"cml-infra-name": "box-1"}, False),
        ({}, False),
    ],
)
def test_is_managed_only_with_exactly_true(found, managed):
    assert tags.is_managed(found) is managed


# --- instance ----------------------------------------------------------------------------------


def test_instance_takes_name_and_deadline_from_our_tags():
    found = {
        "cml-infra-managed": "true",
        "cml-infra-name": "box-1",
        "cml-infra-expires": "1893456000",
    }
    instance = _instance(found, instance_type="g4dn.xlarge", hourly_price=0.526, idle_seconds=3.0)
    assert instance.id == "us-east-1/i-0abc"
    assert instance.name == "box-1"
    assert (instance.cloud, instance.region, instance.state) == ("aws", "us-east-1", "running")
    assert instance.created_at == CREATED
    assert instance.expires_at == EXPIRES
    assert instance.tags == found
    assert (instance.instance_type, instance.hourly_price, instance.idle_seconds) == (
        "g4dn.xlarge",
        0.526,
        3.0,
    )
    assert not instance.dead


def test_instance_without_a_name_tag_is_named_by_the_fallback():
    instance = _instance({"cml-infra-managed": "true"})
    assert instance.name == "i-0abc"
    assert instance.expires_at is None


def test_instance_takes_its_launch_id_from_our_tag():
    found = {"cml-infra-managed": "true", "cml-infra-name": "gpu-ci", "cml-infra-id": LAUNCH_ID}
    assert _instance(found).launch_id == LAUNCH_ID


def test_an_instance_older_than_launch_ids_has_none():
    """Not its name, nor anything else: teardown then matches it by nothing but its id."""
    instance = _instance({"cml-infra-managed": "true", "cml-infra-name": "gpu-ci"})
    assert instance.launch_id == ""


def test_the_launch_id_of_managed_tags_is_what_instance_reads_back():
    managed = tags.managed_tags(_spec(name="gpu-ci"), EXPIRES, LAUNCH_ID, CREATED)
    instance = _instance(managed, created_at=None)
    assert (instance.name, instance.launch_id) == ("gpu-ci", LAUNCH_ID)
    assert instance.created_at == CREATED


def test_a_fresh_launch_id_is_valid_for_every_module_and_unique():
    from cml_infra.clouds.base import RenderContext, new_launch_id

    minted = {new_launch_id() for _ in range(1000)}
    assert len(minted) == 1000
    assert all(tags.LAUNCH_ID_FORMAT.fullmatch(launch_id) for launch_id in minted)
    # A GCP label value: lowercase letters, digits, '_' and '-', 63 at most.
    assert all(re.fullmatch(r"[a-z0-9_-]{0,63}", launch_id) for launch_id in minted)
    # Each render context gets its own unless it is given one.
    assert (
        RenderContext("", CREATED, EXPIRES).launch_id
        != RenderContext("", CREATED, EXPIRES).launch_id
    )


@pytest.mark.parametrize(
    "expires",
    [
        "",
        "soon",
        "-1",
        "1.5e9",
        " 1893456000",
        "\uff11\uff18\uff19\uff13",  # digits, but fullwidth ones
        "²",
        "999999999999",  # past the year 9999
        "9" * 40,
        "9" * 5000,  # longer than int() reads
    ],
)
def test_instance_with_a_bad_or_huge_expiry_has_no_deadline(expires):
    instance = _instance({"cml-infra-managed": "true", "cml-infra-expires": expires})
    assert instance.expires_at is None
    # Nor a creation time, from a creation tag just as bad.
    unknown = _instance(
        {"cml-infra-managed": "true", "cml-infra-created": expires}, created_at=None
    )
    assert unknown.created_at is None


def test_instance_created_at_comes_from_our_tag_where_the_cloud_does_not_say():
    found = {"cml-infra-managed": "true", "cml-infra-created": CREATED_TAG}
    assert _instance(found, created_at=None).created_at == CREATED
    # What the cloud reports wins over a tag anyone may write.
    reported = datetime(2029, 6, 1, tzinfo=timezone.utc)
    assert _instance(found, created_at=reported).created_at == reported
    assert _instance({"cml-infra-managed": "true"}, created_at=None).created_at is None


def test_instance_tags_become_strings():
    instance = _instance({"cml-infra-managed": "true", "count": 3, 7: True})
    assert instance.tags == {"cml-infra-managed": "true", "count": "3", "7": "True"}


@pytest.mark.parametrize(
    ("state", "dead"),
    [
        ("running", False),
        ("idle", False),
        ("booting", False),
        ("stopped", True),
        ("terminated", True),
        ("agent-dead", True),
    ],
)
def test_an_instance_is_dead_when_nothing_on_it_can_take_work(state, dead):
    assert _instance({}, state=state).dead is dead
