"""GCP: Compute Engine VMs from `terraform/gcp/`; Spot VMs; GPUs built in (a2/g2/a3) or
attached to n1 machine types.

The hard TTL is GCP's own `max_run_duration` with DELETE. The agent ends the VM by deleting it
with the VM's own identity, which may delete only this instance (resource-level IAM).

A VM that deleted itself leaves the module's service account and firewall rule, which take no
labels: their descriptions end in a fixed mark (`_MARK`: launch id, created, expires) and their
names follow from the runner name and the launch id's hash, which is how `list_leftovers` finds
them when no Terraform state is left. Both are global: their region is "global", and
`cleanup --region` narrows the search for instances, never for them.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from cml_infra.clouds import register, tags
from cml_infra.clouds.base import ErrorClass, Feature, Leftover, ManagedInstance, RenderContext
from cml_infra.clouds.vm import VmCloud, too_large
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.placement import Placement
from cml_infra.spec import Network, RunnerSpec

if TYPE_CHECKING:
    from cml_infra.catalog import Offer
    from cml_infra.state import StateDir

METADATA_LIMIT = 256 * 1024
MIN_RUN_SECONDS, MAX_RUN_SECONDS = 30, 120 * 86400
OPERATION_TIMEOUT = 600
# GPUs that attach to n1 machine types, by our name.
ATTACHABLE = {"t4": "nvidia-tesla-t4", "v100": "nvidia-tesla-v100"}
_LABEL = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
# A service account's email: a user-managed one (NAME@PROJECT.iam.gserviceaccount.com) or one
# Google made (the Compute Engine default, PROJECT_NUMBER-compute@developer.gserviceaccount.com).
_SERVICE_ACCOUNT = re.compile(r"[a-z0-9][a-z0-9-]{0,62}@[a-z0-9][a-z0-9.-]*\.gserviceaccount\.com")
# A project id (6 to 30 characters), optionally under a domain (`example.com:my-project`).
_PROJECT_ID = r"(?:[a-z][a-z0-9.-]*:)?[a-z][a-z0-9-]{4,28}[a-z0-9]"
# A network or subnetwork name (RFC 1035, up to 63 characters).
_RESOURCE = r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?"
# What the provider takes besides a bare name: the resource's path or its self link.
_SELF_LINK = r"(?:https://(?:www|compute)\.googleapis\.com/compute/(?:v1|beta)/)?"
_NETWORK = re.compile(
    rf"(?P<name>{_RESOURCE})|{_SELF_LINK}projects/(?P<project>{_PROJECT_ID})/global/networks/"
    rf"(?P<linked>{_RESOURCE})"
)
_SUBNETWORK = re.compile(
    rf"(?P<name>{_RESOURCE})|{_SELF_LINK}projects/(?P<project>{_PROJECT_ID})/regions/"
    rf"(?P<region>[a-z]+-[a-z]+[0-9]+)/subnetworks/(?P<linked>{_RESOURCE})"
)
# Where firewall rules and service accounts are: the whole project.
GLOBAL = "global"
FIREWALL = "google_compute_firewall"
SERVICE_ACCOUNT = "google_service_account"
# What may be ours of a project's firewall rules, asked of the API (a regular expression that
# must match the whole name); the description and the launch hash decide.
_FIREWALL_FILTER = 'name eq "cml-infra-.*-deny"'
IAM_ENDPOINT = "https://iam.googleapis.com"
IAM_PAGE_SIZE = 100  # the most IAM's ListServiceAccounts gives
HTTP_TIMEOUT = 60
# The end of the description of the module's service account and firewall rule
# (terraform/gcp/main.tf, `local.mark`), and of those older modules made: no `created` (the
# firewall rule's), or the launch and expiry in the middle (the service account's).
_NAME = r"(?P<name>[a-z][a-z0-9-]{0,37}[a-z0-9])"
_LAUNCH = r"launch (?P<launch>[a-z0-9]{8,32})"
_TIMES = r"(?:, created (?P<created>[0-9]{1,12}))?, expires (?P<expires>[0-9]{1,12})"
_MARK = rf"\(managed by cml-infra, {_LAUNCH}{_TIMES}\)\."
_DESCRIPTIONS = {
    FIREWALL: (re.compile(rf"cml-infra runner {_NAME}: no inbound traffic at all {_MARK}"),),
    SERVICE_ACCOUNT: (
        re.compile(
            rf"Identity of cml-infra runner VM {_NAME}; may delete only that instance {_MARK}"
        ),
        re.compile(
            rf"Identity of cml-infra runner VM {_NAME} \({_LAUNCH}{_TIMES}\); "
            r"may delete only that instance\."
        ),
    ),
}


@register("gcp", aliases=("google", "gce"))
class GcpCloud(VmCloud):
    module = "gcp"
    PREEMPTION_PROBE = "gcp-preempted"
    UNSUPPORTED: ClassVar[dict[Feature, str]] = {
        Feature.LOGS: "launched without --backend, its log has no way back (no inbound ports, no "
        "SSH); the agent logs to /var/lib/cml-infra/instance.log on "
        "the instance, and the startup script to "
        "its serial port: gcloud compute instances get-serial-port-output NAME --zone ZONE",
    }
    NETWORK_VARS: ClassVar[Mapping[str, str]] = {
        "project": "project",
        "network": "network",
        "subnetwork": "subnetwork",
        "disk_size_gb": "boot_disk_size_gb",
        "public_ip": "assign_external_ip",
    }
    NETWORK_FLAGS: ClassVar[frozenset[str]] = frozenset(NETWORK_VARS)
    NETWORK_INSTEAD: ClassVar[Mapping[str, str]] = {"subnet_id": "--subnetwork"}
    # The module's range; the Deep Learning VM image is 50 GB, Ubuntu's 10.
    DISK_SIZE_GB: ClassVar[tuple[int, int]] = (10, 65536)
    IMAGE_DISK_GB: ClassVar[Mapping[bool, int]] = {False: 10, True: 50}
    REAPED: ClassVar[Mapping[str, str]] = {
        "google_compute_instance": "with the instance: it is the instance, and its boot disk "
        "(auto_delete) goes with it",
        "google_compute_instance_iam_member": "with the instance: the binding is part of the "
        "instance's own IAM policy",
        FIREWALL: "leftover: a global rule named after the runner and its launch hash, the "
        "launch id in its description; terminate deletes it with its launch's last instance",
        SERVICE_ACCOUNT: "leftover: a project-wide account named after the runner and its "
        "launch hash, the launch id and creation time in its description; terminate deletes "
        "it with its launch's last instance (none is made with --service-account)",
    }
    ERROR_PATTERNS: ClassVar[tuple[tuple[str, ErrorClass], ...]] = (
        ("ZONE_RESOURCE_POOL_EXHAUSTED", ErrorClass.CAPACITY),
        ("does not have enough resources", ErrorClass.CAPACITY),
        # Catalogs list types per region; a zone of it may not have the machine or GPU type.
        ("does not exist in zone", ErrorClass.CAPACITY),
        ("QUOTA_EXCEEDED", ErrorClass.QUOTA),
        ("Quota '", ErrorClass.QUOTA),
        ("googleapi: Error 403", ErrorClass.AUTH),
        ("could not find default credentials", ErrorClass.AUTH),
        ("googleapi: Error 400", ErrorClass.INVALID),
    )

    def __init__(self, state: StateDir | None = None) -> None:
        super().__init__(state)
        # The project this cloud's own API calls go to (see _project): the one a resolved
        # spec names with --project, so that `up`'s name check, its rollback's sweep and its
        # look for an instance that ended itself ask the project its runner goes to.
        self.project: str | None = None

    def resolve(
        self, spec: RunnerSpec, *, region: str | None, spot: bool, max_price: float | None
    ) -> Placement:
        placement = super().resolve(spec, region=region, spot=spot, max_price=max_price)
        self.project = spec.network.project or self.project
        return placement

    def check_network(self, spec: RunnerSpec, network: Network, *, region: str) -> None:
        """The project id, and a network and subnetwork each a name or a path or self link
        (`projects/P/global/networks/N`, `projects/P/regions/R/subnetworks/S`) of the project,
        the subnetwork's in the region being resolved."""
        if network.project is not None and not re.fullmatch(_PROJECT_ID, network.project):
            raise UsageError(
                "--project",
                f"{network.project!r} is not a project id (6 to 30 lowercase letters, digits "
                "and '-', starting with a letter, not ending with '-')",
            )
        projects = {"--project": network.project}
        for flag, value, pattern, form in (
            ("--network", network.network, _NETWORK, "projects/P/global/networks/N"),
            ("--subnetwork", network.subnetwork, _SUBNETWORK, "projects/P/regions/R/subnetworks/S"),
        ):
            if value is None:
                continue
            found = pattern.fullmatch(value)
            if found is None:
                raise UsageError(
                    flag,
                    f"{value!r} is not a name (lowercase letters, digits and '-', up to 63) "
                    f"nor a path or self link ({form})",
                )
            linked = found["project"]
            # The firewall rule goes into the project, in the network: both must be one
            # project's (a Shared VPC's host project is not; see the module's README).
            for other, project in projects.items():
                if linked and project and linked != project:
                    raise UsageError(
                        flag, f"{value} is in project {linked}, and {other} names {project}"
                    )
            projects[flag] = linked or projects.get("--project")
            if found.groupdict().get("region") not in (None, region):
                raise UsageError(
                    flag,
                    f"{value} is in region {found['region']}, not {region}: give --region "
                    f"{found['region']} alone",
                )

    def attach_gpu(self, spec: RunnerSpec, instance_type: str) -> Offer:
        from cml_infra.catalog import Offer

        if spec.gpu_count not in (1, 2, 4, 8):
            raise UsageError("--gpu", f"gcp attaches 1, 2, 4 or 8 GPUs, not {spec.gpu_count}")
        if not instance_type.startswith("n1-") or spec.gpu not in ATTACHABLE:
            raise UsageError(
                "--type",
                f"gcp attaches GPUs ({', '.join(ATTACHABLE)}) to n1 machine types only; "
                f"{instance_type!r} with {spec.gpu} is not possible",
            )
        return Offer(
            id=f"{instance_type}+{spec.gpu}x{spec.gpu_count}",
            instance_type=instance_type,
            vcpus=0,
            memory_gib=0,
            gpu=spec.gpu,
            gpu_count=spec.gpu_count,
            accelerator=ATTACHABLE[spec.gpu],
            price=None,
        )

    def validate(
        self, spec: RunnerSpec, offer: Offer, *, spot: bool, max_price: float | None
    ) -> None:
        if not MIN_RUN_SECONDS <= spec.ttl <= MAX_RUN_SECONDS:
            raise UsageError(
                "--ttl", "GCP's max run duration (the hard TTL) must be between 30s and 120d"
            )
        if max_price is not None:
            raise UsageError(
                "--max-price",
                "GCP Spot VMs have no bid price (GCP charges its current Spot price); drop it",
            )
        account = spec.data_identity_for(self.name, "--service-account")
        if account is not None and not _SERVICE_ACCOUNT.fullmatch(account):
            raise UsageError(
                "--service-account",
                f"{account!r} is not a service account's email "
                "(NAME@PROJECT.iam.gserviceaccount.com)",
            )
        for key, value in spec.tags.items():
            if not _LABEL.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
                raise UsageError(
                    "--tag",
                    f"{key}={value}: GCP labels need lowercase letters, digits, '_' and '-' "
                    "(keys start with a letter, both up to 63 characters)",
                )

    def self_destroy(self) -> tuple[str, ...]:
        return ("@gcp-delete-instance",)

    def module_vars(
        self, spec: RunnerSpec, placement: Placement, context: RenderContext
    ) -> dict[str, Any]:
        return {
            "name": spec.name,
            "zone": placement.zone,
            "machine_type": placement.instance_type,
            "gpu": placement.gpu is not None,
            "accelerator_type": placement.accelerator,
            "accelerator_count": placement.gpu_count if placement.accelerator else 0,
            "spot": placement.spot,
            "image": spec.image,
            # None: the VM runs as a service account of its own, which may only delete it.
            "service_account_email": spec.service_account,
            "startup_script": metadata_script(context.startup_script, spec.startup_script),
            "max_run_duration_seconds": spec.ttl,
            "launch_id": context.launch_id,
            "created_at": int(context.created_at.timestamp()),
            "expires_at": int(context.expires_at.timestamp()),
            "labels": tags.resource_tags(spec),
            **self.network_vars(spec),
        }

    def list_managed(self, regions: Iterable[str] | None) -> list[ManagedInstance]:
        from google.api_core.exceptions import GoogleAPIError
        from google.auth.exceptions import GoogleAuthError
        from requests.exceptions import RequestException

        try:
            return self._list(None if regions is None else set(regions))
        except (GoogleAPIError, GoogleAuthError, RequestException) as exc:
            raise CmlInfraError(f"gcp: could not list instances: {exc}") from None

    def _list(self, wanted: set[str] | None) -> list[ManagedInstance]:
        from google.cloud import compute_v1

        project = _project(self.project)
        request = compute_v1.AggregatedListInstancesRequest(
            project=project, filter=f'labels.{tags.MANAGED} = "true"'
        )
        found = []
        pages = _client("Instances").aggregated_list(request=request, retry=_retry())
        for scope, scoped in pages:
            zone = scope.rpartition("/")[2]
            region = zone.rpartition("-")[0]
            if wanted is not None and region not in wanted:
                continue
            for instance in scoped.instances:
                found.append(_managed(zone, region, instance))
        return found

    def searched_regions(self, regions: Iterable[str] | None) -> Iterable[str] | None:
        """The regions given, and "global", where the firewall rules and service accounts are:
        an instance in the regions searched may have left them."""
        return None if regions is None else [*regions, GLOBAL]

    def terminate(self, ids: Iterable[str]) -> None:
        """Delete the instances, then the firewall rule and service account of their launches
        (read from each instance's labels before it goes): nothing else deletes those when no
        Terraform state is left. A launch that another instance still carries keeps them, for
        that instance's own end."""
        instances, operations = _client("Instances"), _client("ZoneOperations")
        project = _project(self.project)
        launches = set()
        for full_id in ids:
            launch = _delete_instance(instances, operations, project, full_id)
            if launch:
                launches.add(launch)
        if launches:
            launches -= self._live_launches()
            self._delete(project, [f for f in self._leftovers(project) if f.launch_id in launches])

    def list_leftovers(self, regions: Iterable[str] | None) -> list[Leftover]:
        """The project's firewall rules and service accounts that carry the module's mark in
        their description and the name the module gives them for that launch: never one by its
        name alone. All are global, so a list of regions without "global" finds none."""
        if regions is not None and GLOBAL not in set(regions):
            return []
        return self._leftovers(_project(self.project))

    def delete_leftovers(self, leftovers: Iterable[Leftover]) -> None:
        """Delete them, but none whose launch still has an instance anywhere in the project,
        whatever regions the caller searched: a live VM's deny-ingress rule is all that keeps
        the default network's allow rules off it. Those kept are named in the error raised
        once the others are deleted."""
        chosen = list(leftovers)
        if not chosen:
            return
        live = self._live_launches()
        self._delete(_project(self.project), [f for f in chosen if f.launch_id not in live])
        kept = [f.label for f in chosen if f.launch_id in live]
        if kept:
            raise CmlInfraError(
                f"gcp: {', '.join(kept)} kept: an instance of its launch still exists"
            )

    def _live_launches(self) -> set[str]:
        """The launch ids of every instance of ours in the project, whatever its state."""
        return {instance.launch_id for instance in self.list_managed(None)} - {""}

    def _delete(self, project: str, leftovers: list[Leftover]) -> None:
        if not leftovers:
            return
        firewalls, operations = _client("Firewalls"), _client("GlobalOperations")
        iam = _Iam()
        for leftover in leftovers:
            if leftover.kind == FIREWALL:
                _delete_firewall(firewalls, operations, project, leftover.id)
            elif leftover.kind == SERVICE_ACCOUNT:
                iam.delete(project, leftover.id)
            else:
                raise CmlInfraError(f"gcp: {leftover.label}: not something gcp makes")

    def _leftovers(self, project: str) -> list[Leftover]:
        from google.api_core.exceptions import GoogleAPIError
        from google.auth.exceptions import GoogleAuthError
        from google.cloud import compute_v1
        from requests.exceptions import RequestException

        found = []
        try:
            request = compute_v1.ListFirewallsRequest(project=project, filter=_FIREWALL_FILTER)
            for rule in _client("Firewalls").list(request=request, retry=_retry()):
                found.append(_firewall_leftover(rule))
            for account in _Iam().service_accounts(project):
                found.append(_account_leftover(account))
        except (GoogleAPIError, GoogleAuthError, RequestException) as exc:
            raise CmlInfraError(
                f"gcp: could not list firewall rules and service accounts: {exc}"
            ) from None
        return [leftover for leftover in found if leftover is not None]

    def listed_id(self, outputs: Mapping[str, Any]) -> str | None:
        if outputs.get("zone") and outputs.get("name"):
            return f"{outputs['zone']}/{outputs['name']}"
        return None

    def check(self) -> tuple[bool, str]:
        try:
            return True, f"project {_project(self.project)}"
        except CmlInfraError as exc:
            return False, str(exc).removeprefix("gcp: ")


def metadata_script(script: str, team_script: str | None = None) -> str:
    """The startup script as GCP metadata: as is, or a self-unpacking gzip if too large.
    `team_script`: the `--startup-script` it carries, which the error names."""
    raw = script.encode("utf-8")
    if len(raw) <= METADATA_LIMIT:
        return script
    packed = base64.b64encode(gzip.compress(raw, mtime=0)).decode("ascii")
    wrapper = f"#!/bin/bash\nset -euo pipefail\necho '{packed}' | base64 -d | gunzip | bash\n"
    if len(wrapper) > METADATA_LIMIT:
        raise too_large(
            len(raw),
            len(wrapper),
            cloud="gcp",
            limit=METADATA_LIMIT,
            what="metadata",
            team_script=team_script,
        )
    return wrapper


def _client(kind: str) -> Any:
    """A Compute client; CML_INFRA_GCP_API_ENDPOINT (http(s)://host:port) points it elsewhere,
    anonymously: a private endpoint or the loopback fake the tests use."""
    from google.cloud import compute_v1

    cls = getattr(compute_v1, f"{kind}Client")
    endpoint = os.environ.get("CML_INFRA_GCP_API_ENDPOINT")
    if not endpoint:
        return cls()
    from google.auth.credentials import AnonymousCredentials

    parts = urlsplit(endpoint)
    transport = cls.get_transport_class("rest")(
        host=parts.netloc,
        url_scheme=parts.scheme or "https",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
    )
    return cls(transport=transport)


def _delete_instance(instances: Any, operations: Any, project: str, full_id: str) -> str:
    """Delete one instance (`zone/name`) and wait until it is gone; its launch id ("" for one
    that is gone already, or older than launch ids)."""
    from google.api_core.exceptions import GoogleAPIError, NotFound
    from requests.exceptions import RequestException

    zone, _, name = full_id.partition("/")
    launch = ""
    try:
        found = instances.get(project=project, zone=zone, instance=name, retry=_retry())
        launch = str(dict(found.labels).get(tags.LAUNCH_ID, ""))
        operation: Any = instances.delete_unary(
            project=project, zone=zone, instance=name, retry=_retry()
        )
        _wait_done(
            lambda op: operations.wait(project=project, zone=zone, operation=op),
            operation,
            full_id,
        )
    except NotFound:
        pass
    except (GoogleAPIError, RequestException) as exc:
        raise CmlInfraError(f"gcp {full_id}: delete failed: {exc}") from None
    return launch


def _delete_firewall(firewalls: Any, operations: Any, project: str, name: str) -> None:
    from google.api_core.exceptions import GoogleAPIError, NotFound
    from requests.exceptions import RequestException

    what = f"firewall rule {name}"
    try:
        operation: Any = firewalls.delete_unary(project=project, firewall=name, retry=_retry())
        _wait_done(lambda op: operations.wait(project=project, operation=op), operation, what)
    except NotFound:
        pass
    except (GoogleAPIError, RequestException) as exc:
        raise CmlInfraError(f"gcp {what}: delete failed: {exc}") from None


def _wait_done(wait: Callable[[str], Any], operation: Any, what: str) -> None:
    """Until the (zone or global) operation is DONE, asking `wait` (its operations client's
    `wait`) through the same endpoint as the call that made it: the client library's own
    waiting always asks Google's public endpoint."""
    from google.cloud import compute_v1

    deadline = time.monotonic() + OPERATION_TIMEOUT
    while operation.status != compute_v1.Operation.Status.DONE:
        if time.monotonic() > deadline:
            raise CmlInfraError(f"gcp {what}: still deleting after {OPERATION_TIMEOUT}s")
        operation = wait(operation.name)
    if operation.error and operation.error.errors:
        details = "; ".join(f"{e.code}: {e.message}" for e in operation.error.errors)
        status = operation.http_error_status_code or ""
        raise CmlInfraError(f"gcp {what}: delete failed: {status} {details}".replace("  ", " "))


def _retry() -> Any:
    """google-api-core's backoff for throttling and passing server errors."""
    from google.api_core import exceptions, retry

    transient = retry.if_exception_type(
        exceptions.TooManyRequests, exceptions.ServiceUnavailable, exceptions.InternalServerError
    )
    return retry.Retry(
        predicate=transient, initial=1.0, maximum=30.0, multiplier=2.0, timeout=300.0
    )


def _project(explicit: str | None = None) -> str:
    """The project cml-infra works in, chosen one way for every command: `explicit` (a spec's
    --project), else CML_INFRA_PROJECT (which `up --project` reads too, so that `down`,
    `status` and `cleanup` see the same), else the default credentials' (GOOGLE_CLOUD_PROJECT,
    else theirs)."""
    explicit = explicit or os.environ.get("CML_INFRA_PROJECT") or None
    if os.environ.get("CML_INFRA_GCP_API_ENDPOINT"):
        fixed = explicit or os.environ.get("GOOGLE_CLOUD_PROJECT")
        if fixed:
            return fixed
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        _, project = google.auth.default()
    except DefaultCredentialsError as exc:
        raise CmlInfraError(
            f"gcp: no default credentials ({exc}); run `gcloud auth application-default login`, "
            "set GOOGLE_APPLICATION_CREDENTIALS, or use OIDC (google-github-actions/auth)"
        ) from None
    project = explicit or project or os.environ.get("GOOGLE_CLOUD_PROJECT")
    if not project:
        raise CmlInfraError(
            "gcp: credentials found but no project; set CML_INFRA_PROJECT (or "
            "GOOGLE_CLOUD_PROJECT), or give --project"
        )
    return str(project)


def _managed(zone: str, region: str, instance: Any) -> ManagedInstance:
    created = instance.creation_timestamp
    return tags.instance(
        dict(instance.labels),
        id=f"{zone}/{instance.name}",
        cloud=GcpCloud.name,
        region=region,
        state=str(instance.status).lower(),
        created_at=datetime.fromisoformat(created) if created else None,
        fallback_name=instance.name,
        instance_type=str(instance.machine_type).rpartition("/")[2] or None,
    )


@dataclass(frozen=True)
class _Mark:
    """What the end of a description says: the runner, its launch, and when."""

    name: str
    launch_id: str
    created_at: datetime | None
    expires_at: datetime | None


def _marked(kind: str, description: str) -> _Mark | None:
    for pattern in _DESCRIPTIONS[kind]:
        found = pattern.fullmatch(description)
        if found:
            created, expires = found["created"], found["expires"]
            return _Mark(
                found["name"],
                found["launch"],
                _seconds(created) if created else None,
                _seconds(expires),
            )
    return None


def _seconds(text: str) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(text), timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None


def _launch_hash(launch_id: str) -> str:
    """The module's `local.launch_hash`: what its names carry of the launch id."""
    return hashlib.sha1(launch_id.encode("utf-8")).hexdigest()[:8]


def firewall_name(name: str, launch_id: str) -> str:
    """The module's firewall rule name for a runner name and launch id."""
    return f"cml-infra-{name}-{_launch_hash(launch_id)}-deny"


def account_id(name: str, launch_id: str) -> str:
    """The module's service account id: `cml-`, up to 19 characters of the name without the
    dashes a cut leaves at its end, `-`, 6 hex digits of the launch hash."""
    return f"cml-{name[:19].rstrip('-')}-{_launch_hash(launch_id)[:6]}"


def _firewall_leftover(rule: Any) -> Leftover | None:
    mark = _marked(FIREWALL, rule.description or "")
    if mark is None or rule.name != firewall_name(mark.name, mark.launch_id):
        return None
    created = rule.creation_timestamp
    return Leftover(
        kind=FIREWALL,
        id=rule.name,
        cloud=GcpCloud.name,
        region=GLOBAL,
        name=mark.name,
        launch_id=mark.launch_id,
        created_at=datetime.fromisoformat(created) if created else mark.created_at,
    )


def _account_leftover(account: Mapping[str, Any]) -> Leftover | None:
    """A service account of the module's; IAM says nothing of when an account was made, so
    its age is the description's `created`, or for an older module's, its expiry: a time
    after it was made, so it never looks older than it is."""
    mark = _marked(SERVICE_ACCOUNT, str(account.get("description", "")))
    email = str(account.get("email", ""))
    if mark is None or email.partition("@")[0] != account_id(mark.name, mark.launch_id):
        return None
    return Leftover(
        kind=SERVICE_ACCOUNT,
        id=email,
        cloud=GcpCloud.name,
        region=GLOBAL,
        name=mark.name,
        launch_id=mark.launch_id,
        created_at=mark.created_at or mark.expires_at,
    )


class _Iam:
    """The IAM API's service accounts, over REST: google-cloud-iam's IAMClient (iam_admin_v1)
    speaks gRPC only, so it cannot be pointed at an HTTP endpoint. Calls go through
    google-auth's AuthorizedSession (what the REST transports of the google-cloud libraries
    use), with google-api-core's errors and backoff. CML_INFRA_GCP_API_ENDPOINT points it
    elsewhere, anonymously, as `_client` does Compute."""

    def __init__(self) -> None:
        endpoint = os.environ.get("CML_INFRA_GCP_API_ENDPOINT")
        if endpoint:
            import requests

            self.base = endpoint.rstrip("/")
            self.session: Any = requests.Session()
            return
        import google.auth
        from google.auth.transport.requests import AuthorizedSession

        credentials, _ = google.auth.default(
            scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
        self.base = IAM_ENDPOINT
        self.session = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]

    def service_accounts(self, project: str) -> Iterator[dict[str, Any]]:
        token = ""
        while True:
            query: dict[str, Any] = {"pageSize": IAM_PAGE_SIZE}
            if token:
                query["pageToken"] = token
            page = self._call("GET", f"projects/{project}/serviceAccounts", query)
            yield from page.get("accounts", [])
            token = page.get("nextPageToken", "")
            if not token:
                return

    def delete(self, project: str, email: str) -> None:
        """Delete a service account; one that is gone already is fine."""
        from google.api_core.exceptions import GoogleAPIError, NotFound
        from requests.exceptions import RequestException

        try:
            self._call("DELETE", f"projects/{project}/serviceAccounts/{email}")
        except NotFound:
            pass
        except (GoogleAPIError, RequestException) as exc:
            raise CmlInfraError(f"gcp service account {email}: delete failed: {exc}") from None

    def _call(
        self, method: str, path: str, query: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        from google.api_core import exceptions

        def once() -> dict[str, Any]:
            response = self.session.request(
                method, f"{self.base}/v1/{path}", params=query, timeout=HTTP_TIMEOUT
            )
            if response.status_code >= 400:
                raise exceptions.from_http_response(response)  # type: ignore[no-untyped-call]
            found: dict[str, Any] = response.json() if response.content else {}
            return found

        result: dict[str, Any] = _retry()(once)()
        return result
