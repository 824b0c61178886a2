"""RunnerSpec: what the user asked for, parsed and validated once; every error names its flag.

Forge-neutral: a runner's forge is a ForgeTarget (which forge, which repository or
organization); whether a name is valid there is the forge's to say (forge/).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import secrets
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cml_infra.errors import UsageError
from cml_infra.state import user_path

DEFAULT_IDLE_TIMEOUT = "5m"
DEFAULT_TTL = "24h"
DEFAULT_STARTUP_TIMEOUT = "15m"
# How long one attempt's `terraform apply` may take before `up` interrupts it and tries the next
# placement. Creating a GPU VM takes a minute or two on AWS and GCP and several on Azure, so a
# healthy attempt finishes well inside it; a region whose API hangs or a spot request that
# never settles would otherwise hold `up` for the provider's own create timeout (10 to 20
# minutes), and seven bad regions would then take over an hour instead of about half of one.
DEFAULT_ATTEMPT_TIMEOUT = "5m"

_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# No lifetime, timeout or age we take is longer than a year; larger numbers are typos (and
# overflow the date arithmetic).
MAX_DURATION_SECONDS = 366 * 86400
_MAX_DURATION_TEXT = 40
_INTEGER = re.compile(r"-?[0-9]+")
_DURATION = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")
# Short enough for every cloud's instance name and for the GitHub label `cml-infra-<name>`;
# lowercase because GCP and Azure reject upper case in names.
_NAME = re.compile(r"[a-z][a-z0-9-]{0,37}[a-z0-9]")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
AUTO_LABEL_PREFIX = "cml-infra-"
# Registrations also carry `cml-infra-on-<cloud>` (where the runner lives) and
# `cml-infra-since-<unix seconds>` (when it was registered), for cleanup's eyes; a runner's
# own label `cml-infra-<name>` must not look like either.
CLOUD_LABEL = AUTO_LABEL_PREFIX + "on-"
SINCE_LABEL = AUTO_LABEL_PREFIX + "since-"
RESERVED_NAME_PREFIXES = ("on-", "since-")


GPU_NAMES = ("t4", "l4", "a10g", "v100", "a100", "a100-80gb", "h100")
SIZES = ("s", "m", "l", "xl")


def choices(value: str, choices: Iterable[str]) -> str:
    """`valid: a, b, c`, led by the closest match to `value` when there is one."""
    names = sorted(choices)
    close = difflib.get_close_matches(value, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}valid: {', '.join(names)}"


def parse_gpu(text: str, flag: str = "--gpu") -> tuple[str, int]:
    """`t4` → ("t4", 1); `a100:8` → ("a100", 8); unknown names list every known GPU."""
    name, colon, count_text = text.strip().lower().partition(":")
    if name not in GPU_NAMES:
        raise UsageError(flag, f"unknown GPU {name!r}; " + choices(name, GPU_NAMES))
    if not colon:
        return name, 1
    if (
        not count_text.isascii()
        or not count_text.isdigit()
        or len(count_text) > 2
        or not 1 <= int(count_text) <= 16
    ):
        raise UsageError(flag, f"{text!r}: the count after ':' must be a whole number from 1 to 16")
    return name, int(count_text)


def parse_duration(text: str, flag: str) -> int:
    """Seconds in `text` (`90`, `30s`, `5m`, `6h`, `1d`, `1h30m`); zero or negative is an error."""
    value = text.strip().lower()
    hint = "use a whole number with a unit: 30s, 5m, 6h, 1d or 1h30m"
    if len(value) > _MAX_DURATION_TEXT:
        # Far more digits than any duration up to the maximum has (Python refuses to turn
        # over 4,300 digits into a number at all).
        raise UsageError(flag, f"{text[:20]!r}... is longer than the maximum, 366d")
    if _INTEGER.fullmatch(value):
        seconds = int(value)
    else:
        match = _DURATION.fullmatch(value)
        if not value or match is None:
            raise UsageError(flag, f"{text!r} is not a duration; {hint}")
        seconds = sum(
            int(amount) * _UNIT_SECONDS[unit]
            for amount, unit in zip(match.groups(), "dhms", strict=True)
            if amount is not None
        )
    if seconds <= 0:
        raise UsageError(flag, f"{text!r} must be longer than zero; {hint}")
    if seconds > MAX_DURATION_SECONDS:
        raise UsageError(flag, f"{text!r} is longer than the maximum, 366d")
    return seconds


def format_duration(seconds: int) -> str:
    parts = []
    for unit, size in _UNIT_SECONDS.items():
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0s"


def validate_name(name: str, flag: str = "--name") -> str:
    if not _NAME.fullmatch(name):
        raise UsageError(
            flag,
            f"{name!r} is not a valid name; use 2 to 39 lowercase letters, digits and '-', "
            "starting with a letter and not ending with '-'",
        )
    if name.startswith(RESERVED_NAME_PREFIXES):
        raise UsageError(
            flag,
            f"{name!r} is not a valid name; names starting with "
            f"{' or '.join(map(repr, RESERVED_NAME_PREFIXES))} are reserved for cml-infra's "
            "own labels",
        )
    return name


def generate_name() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "cml-" + "".join(secrets.choice(alphabet) for _ in range(6))


def parse_labels(values: Iterable[str], flag: str = "--labels") -> tuple[str, ...]:
    """Labels from repeated and/or comma-separated values, in order, without duplicates."""
    labels: list[str] = []
    for value in values:
        for label in (part.strip() for part in value.split(",")):
            if not label:
                raise UsageError(
                    flag, f"{value!r} has an empty label; give LABEL or LABEL,LABEL,..."
                )
            if not _LABEL.fullmatch(label):
                raise UsageError(
                    flag,
                    f"{label!r} is not a valid label; use up to 64 letters, digits, '.', '_' "
                    "and '-', starting with a letter or digit",
                )
            if label.startswith(AUTO_LABEL_PREFIX):
                raise UsageError(
                    flag, f"{label!r}: labels starting with {AUTO_LABEL_PREFIX!r} are reserved"
                )
            if label not in labels:
                labels.append(label)
    return tuple(labels)


_TAG_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")
_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RESERVED_TAG_PREFIX = "cml-infra-"


def parse_tags(values: Iterable[str], flag: str = "--tag") -> dict[str, str]:
    """`k=v` pairs; our own `cml-infra-*` keys are reserved. Cloud-specific rules come later."""
    tags: dict[str, str] = {}
    for value in values:
        key, sep, tag_value = value.partition("=")
        key = key.strip()
        if not sep or not _TAG_KEY.fullmatch(key):
            raise UsageError(
                flag,
                f"{value!r} is not KEY=VALUE with a key of letters, digits and ._/- "
                "(up to 63 characters)",
            )
        if key.lower().startswith(RESERVED_TAG_PREFIX):
            raise UsageError(
                flag, f"{key!r}: keys starting with {RESERVED_TAG_PREFIX!r} are reserved"
            )
        if len(tag_value) > 255:
            raise UsageError(flag, f"{key!r}: the value is longer than 255 characters")
        tags[key] = tag_value
    return tags


# A module variable's name, as HCL takes it.
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
# A team's startup script is user data: even the roomiest cloud takes no more than this.
STARTUP_SCRIPT_MAX_BYTES = 256 * 1024
DISK_SIZE_MAX_GB = 65536


def parse_vars(
    values: Iterable[str], flag: str = "--var", defaults: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """`KEY=VALUE` pairs for module variables, over `defaults` (the config file's [vars]) key by
    key. A VALUE that is JSON is taken as JSON (numbers, booleans, lists, maps, null, or a
    quoted string), any other as the string it is; whether the module declares KEY is the
    module's to say, once it is known."""
    found: dict[str, Any] = {}
    for value in values:
        key, sep, text = value.partition("=")
        key = key.strip()
        if not sep or not _VARIABLE.fullmatch(key):
            raise UsageError(
                flag,
                f"{value!r} is not KEY=VALUE with KEY a variable name (letters, digits, '_' "
                "and '-', not starting with a digit)",
            )
        if key in found:
            raise UsageError(flag, f"{key} is given twice")
        try:
            # NaN and Infinity are no JSON a tfvars file may hold: those stay strings.
            found[key] = json.loads(text, parse_constant=_not_json)
        except ValueError:
            found[key] = text
    return {**(defaults or {}), **found}


def _not_json(constant: str) -> Any:
    raise ValueError(constant)


def _file_vars() -> dict[str, Any]:
    """The config file's [vars] (empty outside a command, or with no config file)."""
    from cml_infra import config

    return config.module_vars()


def parse_modules_dir(value: str, flag: str = "--modules-dir") -> Path:
    """A folder of module forks; whether it holds the cloud's module is checked once the cloud
    is known."""
    if not value.strip():
        raise UsageError(flag, "the path is empty; give the folder holding <cloud>/ forks")
    folder = Path(value).expanduser()
    try:
        folder = folder.resolve()
    except (OSError, RuntimeError) as exc:
        raise UsageError(flag, f"{value!r} is not a usable path ({exc})") from None
    if not folder.is_dir():
        raise UsageError(flag, f"{value}: no such folder (make one with `cml-infra modules eject`)")
    return folder


def parse_network(
    *,
    subnet_id: str | None,
    security_group_ids: Sequence[str],
    project: str | None,
    network: str | None,
    subnetwork: str | None,
    disk_size_gb: int | None,
    public_ip: bool,
) -> Network:
    """The network flags' values, each a single word; which cloud takes which, and each cloud's
    own format, is the cloud's to check."""
    words = [
        ("--subnet-id", subnet_id),
        ("--project", project),
        ("--network", network),
        ("--subnetwork", subnetwork),
        *(("--security-group-id", group) for group in security_group_ids),
    ]
    for flag, word in words:
        if word is not None and (not word.strip() or any(c.isspace() for c in word)):
            raise UsageError(flag, f"{word!r} must be one word, without spaces")
    if len(set(security_group_ids)) != len(security_group_ids):
        raise UsageError("--security-group-id", "a security group is given twice")
    if disk_size_gb is not None and not 1 <= disk_size_gb <= DISK_SIZE_MAX_GB:
        raise UsageError("--disk-size", f"{disk_size_gb} is not 1 to {DISK_SIZE_MAX_GB} (GB)")
    return Network(
        subnet_id=subnet_id,
        security_group_ids=tuple(security_group_ids),
        project=project,
        network=network,
        subnetwork=subnetwork,
        disk_size_gb=disk_size_gb,
        public_ip=public_ip,
    )


def read_startup_script(path: str, flag: str = "--startup-script") -> str:
    """The team's boot steps: a text file (its size counts against the cloud's user data
    limit, which the cloud checks once the whole startup script is rendered)."""
    file = Path(path).expanduser()
    try:
        if file.stat().st_size > STARTUP_SCRIPT_MAX_BYTES:
            raise UsageError(
                flag,
                f"{path}: over {STARTUP_SCRIPT_MAX_BYTES // 1024} KiB, more than any "
                "cloud's user data takes",
            )
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(flag, f"{path}: not UTF-8 text") from None
    except IsADirectoryError:
        raise UsageError(flag, f"{path}: a folder, not a script") from None
    except OSError as exc:
        raise UsageError(flag, f"{path}: cannot read ({exc.strerror})") from None
    if not text.strip():
        raise UsageError(flag, f"{path}: the script is empty")
    if "\x00" in text:
        raise UsageError(flag, f"{path}: holds a NUL byte")
    return text


def parse_task_files(
    workdir: str | None, out: Sequence[str], command: Sequence[str], *, runner: bool
) -> tuple[Path | None, tuple[str, ...]]:
    """The task's folder (`--workdir`, else the current folder when a task is given) and its
    `--out` paths; both belong to a task, not to a runner."""
    for flag, given in (("--workdir", workdir), ("--out", out)):
        if given and runner:
            raise UsageError(flag, "applies to a task; a runner's jobs check out their own code")
        if given and not command:
            raise UsageError(flag, "applies to a task: give the task after --")
    if not command:
        return None, ()
    from cml_infra.task.pack import parse_outputs

    folder = user_path(workdir, "--workdir") if workdir else Path.cwd()
    if not folder.is_dir():
        raise UsageError("--workdir", f"{workdir}: not a folder")
    return folder.resolve(), parse_outputs(out)


# `--region any`: every region the cloud's catalog knows sells the row (placement.attempts).
REGION_ANY = "any"
# How `up` orders the placements it may try: `order`, the regions as given (then each one's
# zones); `price`, cheapest first by the catalog's current prices.
OPTIMIZE_ORDER, OPTIMIZE_PRICE = "order", "price"
OPTIMIZE_CHOICES = (OPTIMIZE_ORDER, OPTIMIZE_PRICE)


def parse_regions(text: str | None, flag: str = "--region") -> tuple[str, ...]:
    """`us-east-1`, a preference list `us-east-1,us-west-2`, or `any` alone (whether each
    exists is the cloud's to say)."""
    if text is None:
        return ()
    regions = tuple(part.strip() for part in text.split(","))
    if not all(regions):
        raise UsageError(flag, f"{text!r} has an empty region; give REGION or REGION,REGION,...")
    if REGION_ANY in (region.lower() for region in regions):
        if len(regions) > 1:
            raise UsageError(
                flag, f"{text!r}: {REGION_ANY!r} means every region; give it alone or list regions"
            )
        return (REGION_ANY,)
    repeated = sorted({region for region in regions if regions.count(region) > 1})
    if repeated:
        raise UsageError(flag, f"{text!r} lists {', '.join(repeated)} more than once")
    return regions


def parse_optimize(text: str | None, any_region: bool, flag: str = "--optimize") -> str:
    """`order` or `price`; None: `price` with `--region any` (which has no order of its own),
    else `order`."""
    if text is None:
        return OPTIMIZE_PRICE if any_region else OPTIMIZE_ORDER
    value = text.strip().lower()
    if value not in OPTIMIZE_CHOICES:
        raise UsageError(
            flag, f"unknown optimization {text!r}; " + choices(value, OPTIMIZE_CHOICES)
        )
    if value == OPTIMIZE_ORDER and any_region:
        raise UsageError(
            flag,
            f"{OPTIMIZE_ORDER!r} walks the regions in the order given, and --region "
            f"{REGION_ANY} gives none: use --optimize {OPTIMIZE_PRICE} or list the regions",
        )
    return value


def parse_usd(text: str, flag: str, unit: str = "USD", example: str = "25") -> float:
    """A positive, finite amount of money."""
    try:
        amount = float(text)
    except ValueError:
        raise UsageError(flag, f"{text!r} is not a price; give {unit}, e.g. {example}") from None
    if not amount > 0 or amount == float("inf"):
        raise UsageError(flag, f"{text!r} must be a positive price in {unit}, e.g. {example}")
    return amount


_RUNNER_VERSION = re.compile(r"v?([0-9]{1,4}\.[0-9]{1,4}\.[0-9]{1,4})")


def parse_runner_version(text: str, flag: str = "--runner-version") -> str:
    """`2.330.0` (a leading `v` is dropped); whether the forge has it, or would take it, is
    the forge's to say."""
    match = _RUNNER_VERSION.fullmatch(text.strip())
    if match is None:
        raise UsageError(
            flag, f"{text!r} is not a release version; give MAJOR.MINOR.PATCH, e.g. 2.330.0"
        )
    return match[1]


def parse_max_price(text: str | None, spot: bool, flag: str = "--max-price") -> float | None:
    if text is None:
        return None
    price = parse_usd(text, flag, "USD per hour", "0.75")
    if not spot:
        raise UsageError(flag, "a maximum price applies to spot instances only; add --spot")
    return price


# The flags that give a VM an identity for the job's data (DVC pulls, artifact uploads: CML's
# --cloud-permission-set), each taken by one cloud (`RunnerSpec.data_identity_for`), and what
# each one names, for the message that refuses it elsewhere.
DATA_IDENTITY_FLAGS = {
    "--instance-profile": "an AWS instance profile",
    "--service-account": "a GCP service account",
    "--identity": "an Azure user-assigned managed identity",
}


def parse_data_identity(
    instance_profile: str | None, service_account: str | None, identity: str | None
) -> dict[str, str]:
    """The data identity flags given (flag → value): none empty, at most one (each belongs to
    one cloud; whether its value is valid there is that cloud's to say)."""
    given = _given_identities(instance_profile, service_account, identity)
    for flag, value in given.items():
        if not value.strip() or value != value.strip():
            raise UsageError(flag, f"{value!r}: give the name or id without spaces around it")
    if len(given) > 1:
        raise UsageError(
            next(iter(given)), f"give one of {', '.join(given)}: each is for another cloud"
        )
    return given


def _given_identities(*values: str | None) -> dict[str, str]:
    """DATA_IDENTITY_FLAGS' values, in its order: flag → value of those given."""
    pairs = zip(DATA_IDENTITY_FLAGS, values, strict=True)
    return {flag: value for flag, value in pairs if value is not None}


@dataclass(frozen=True)
class ForgeTarget:
    """Where a runner registers: a repository or an organization of one forge, forge-neutral.

    Whether `repo` and `org` are valid names there, and the API URL, are checked by the forge.
    """

    kind: str = "github"
    repo: str | None = None
    org: str | None = None
    group: str | None = None
    # The forge's API; None: its public one.
    api_url: str | None = None

    @property
    def scope_path(self) -> str:
        return f"repos/{self.repo}" if self.repo else f"orgs/{self.org}"

    @property
    def slug(self) -> str:
        return self.repo or self.org or ""

    @property
    def scope_tag(self) -> str:
        """A label-safe mark of the scope (GCP labels allow no '/', '.' or capitals)."""
        return hashlib.sha256(self.scope_path.lower().encode()).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class Network:
    """Where the instance goes on the cloud's network, and its disk: each field is one flag,
    taken only by the clouds whose `Cloud.NETWORK_FLAGS` name it (refused elsewhere)."""

    subnet_id: str | None = None
    security_group_ids: tuple[str, ...] = ()
    project: str | None = None
    network: str | None = None
    subnetwork: str | None = None
    disk_size_gb: int | None = None
    # False: no public address; egress goes through the network's NAT.
    public_ip: bool = True

    # field → the flag that sets it.
    FLAGS: ClassVar[Mapping[str, str]] = {
        "subnet_id": "--subnet-id",
        "security_group_ids": "--security-group-id",
        "project": "--project",
        "network": "--network",
        "subnetwork": "--subnetwork",
        "disk_size_gb": "--disk-size",
        "public_ip": "--no-public-ip",
    }

    def given(self) -> dict[str, str]:
        """The flags given (field → flag), in FLAGS order."""
        default = Network()
        return {
            name: flag
            for name, flag in self.FLAGS.items()
            if getattr(self, name) != getattr(default, name)
        }


@dataclass(frozen=True, kw_only=True)
class RunnerSpec:
    """One runner as asked for; immutable once built (build_spec checks every field)."""

    name: str
    cloud: str
    idle_timeout: int
    ttl: int
    # The first region to try (None: the cloud's default), then the others in order.
    region: str | None = None
    fallback_regions: tuple[str, ...] = ()
    # `--region any`: every region where the catalog sells the row (region is then None).
    any_region: bool = False
    # OPTIMIZE_CHOICES: how `up` orders the placements it may try.
    optimize: str = OPTIMIZE_ORDER
    # Seconds one attempt's apply may take before it is interrupted and the next one tried.
    attempt_timeout: float = 300
    single: bool = False
    labels: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    gpu: str | None = None
    gpu_count: int = 0
    size: str | None = None
    instance_type: str | None = None
    spot: bool = False
    max_price: float | None = None
    on_demand_fallback: bool = False
    # USD that the hourly price times the ttl may reach; None: no limit.
    budget: float | None = None
    image: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    # The identity jobs use for data (at most one of these; the cloud that takes it checks it).
    instance_profile: str | None = None
    service_account: str | None = None
    identity: str | None = None
    # Jobs may use Docker: the runner user joins the docker group, which is root on the VM.
    # None: on where the placement has GPUs (GPU jobs mostly run in CUDA containers), else off.
    docker: bool | None = None
    # Runner mode (a forge given): the instance runs the forge's runner instead of a task.
    forge: ForgeTarget | None = None
    startup_timeout: int = 900
    wait: bool = True
    runner_archive: str | None = None
    # The runner release to install (None: the forge's latest).
    runner_version: str | None = None
    # Hand the job to an idle runner that already has the labels instead of making one.
    reuse_idle: bool = False
    # A folder of module forks (`<cloud>/`, optionally `templates/`) used instead of the
    # packaged ones; None: the packaged modules.
    modules_dir: Path | None = None
    # Extra module variables (`--var KEY=VALUE`, the config's [vars]): passed through the
    # tfvars file, once the module is known to declare each.
    extra_vars: dict[str, Any] = field(default_factory=dict)
    # The network to run in, where the cloud takes it (Network.FLAGS says which flag is which).
    network: Network = field(default_factory=lambda: Network())
    # The team's own boot steps (`--startup-script FILE`'s text), run as root before the
    # runner or task starts.
    startup_script: str | None = None
    # Task mode: the folder packed and unpacked as the task's folder on the instance (None: no
    # task), and the paths in it (`--out`) that come back when the task ends.
    workdir: Path | None = None
    outputs: tuple[str, ...] = ()

    @property
    def runner_mode(self) -> bool:
        return self.forge is not None

    @property
    def regions(self) -> tuple[str | None, ...]:
        """The regions `up` may try, in order (None: the cloud's default)."""
        return (self.region, *self.fallback_regions)

    @property
    def one_region(self) -> bool:
        """Whether `up` stays in one region (neither fallback regions nor `--region any`): what
        a subnet, which lives in one region, needs."""
        return len(self.regions) == 1 and not self.any_region

    @property
    def data_identities(self) -> dict[str, str]:
        """The data identity flags given, flag → value (at most one, see build_spec)."""
        return _given_identities(self.instance_profile, self.service_account, self.identity)

    def data_identity_for(self, cloud: str, flag: str | None) -> str | None:
        """The value of `flag`, the data identity flag `cloud` takes (None: it takes none), if
        given; a UsageError naming any other data identity flag given, which is another
        cloud's."""
        for given in self.data_identities:
            if given != flag:
                instead = f"; on {cloud}, give {flag}" if flag else ""
                raise UsageError(
                    given, f"{DATA_IDENTITY_FLAGS[given]} does not apply to {cloud}{instead}"
                )
        return self.data_identities.get(flag) if flag else None

    @property
    def all_labels(self) -> tuple[str, ...]:
        """The user's labels plus the unique one a workflow's `runs-on` can target."""
        return (*self.labels, AUTO_LABEL_PREFIX + self.name)

    def warnings(self) -> list[str]:
        """Sentences about settings that are allowed but likely not what was meant."""
        found = []
        if self.idle_timeout >= self.ttl:
            found.append(
                f"--idle-timeout {format_duration(self.idle_timeout)} is not shorter than "
                f"--ttl {format_duration(self.ttl)}: the ttl ends the instance first"
            )
        return found


def build_spec(
    *,
    cloud: str,
    name: str | None,
    region: str | None,
    idle_timeout: str,
    ttl: str,
    single: bool,
    labels: Sequence[str],
    command: Sequence[str],
    gpu: str | None = None,
    size: str | None = None,
    instance_type: str | None = None,
    spot: bool = False,
    max_price: str | None = None,
    on_demand_fallback: bool = False,
    budget: str | None = None,
    image: str | None = None,
    tags: Sequence[str] = (),
    instance_profile: str | None = None,
    service_account: str | None = None,
    identity: str | None = None,
    docker: bool | None = None,
    repo: str | None = None,
    org: str | None = None,
    runner_group: str | None = None,
    github_url: str | None = None,
    startup_timeout: str = DEFAULT_STARTUP_TIMEOUT,
    optimize: str | None = None,
    attempt_timeout: str = DEFAULT_ATTEMPT_TIMEOUT,
    wait: bool = True,
    runner_archive: str | None = None,
    reuse_idle: bool = False,
    runner_version: str | None = None,
    modules_dir: str | None = None,
    var: Sequence[str] = (),
    subnet_id: str | None = None,
    security_group_id: Sequence[str] = (),
    project: str | None = None,
    network: str | None = None,
    subnetwork: str | None = None,
    disk_size: int | None = None,
    public_ip: bool = True,
    startup_script: str | None = None,
    workdir: str | None = None,
    out: Sequence[str] = (),
) -> RunnerSpec:
    """Parse raw flag values into a RunnerSpec; cloud, region and catalog names are checked by
    the cloud that resolves it, repository and organization names by the forge."""
    gpu_name, gpu_count = parse_gpu(gpu) if gpu else (None, 0)
    if size is not None and size not in SIZES:
        raise UsageError("--size", f"unknown size {size!r}; valid: {', '.join(SIZES)}")
    if size is not None and (gpu or instance_type):
        raise UsageError("--size", "give one of --size, --gpu or --type, not several")
    if instance_type is not None and not _TYPE.fullmatch(instance_type):
        raise UsageError("--type", f"{instance_type!r} is not an instance type name")
    if image is not None and not image.strip():
        raise UsageError("--image", "the image must not be empty")
    forge = None
    if repo or org:
        if bool(repo) == bool(org):
            raise UsageError("--repo", "give --repo OWNER/NAME or --org ORG (one of them)")
        if runner_group is not None and not org:
            raise UsageError("--runner-group", "runner groups belong to organizations: use --org")
        if runner_group is not None and single and not runner_group.isdigit():
            raise UsageError(
                "--runner-group",
                "single-job (JIT) runners need the group's numeric id, e.g. --runner-group 3",
            )
        if command:
            raise UsageError("--repo", "a runner takes jobs from the forge; drop the task after --")
        forge = ForgeTarget(
            repo=repo or None,
            org=org or None,
            group=runner_group,
            api_url=github_url.rstrip("/") if github_url else None,
        )
    elif runner_group or runner_archive or reuse_idle or github_url or runner_version:
        flag = next(
            flag
            for flag, value in (
                ("--runner-group", runner_group),
                ("--runner-archive", runner_archive),
                ("--runner-version", runner_version),
                ("--github-url", github_url),
                ("--reuse-idle", reuse_idle),
            )
            if value
        )
        raise UsageError(flag, "applies to runners: add --repo OWNER/NAME or --org ORG")
    elif single and not command:
        raise UsageError(
            "--single",
            "the instance would have nothing to do: give a task after -- or a forge "
            "(--repo OWNER/NAME or --org ORG)",
        )
    if reuse_idle and not labels:
        raise UsageError(
            "--reuse-idle", "needs --labels: an idle runner is reused when it has all of them"
        )
    if on_demand_fallback and not spot:
        raise UsageError("--on-demand-fallback", "falls back from spot capacity: add --spot")
    task_folder, outputs = parse_task_files(workdir, out, command, runner=forge is not None)
    regions = parse_regions(region)
    any_region = regions == (REGION_ANY,)
    if any_region:
        regions = ()
    parse_data_identity(instance_profile, service_account, identity)
    return RunnerSpec(
        name=validate_name(name) if name is not None else generate_name(),
        cloud=cloud,
        region=regions[0] if regions else None,
        fallback_regions=regions[1:],
        any_region=any_region,
        optimize=parse_optimize(optimize, any_region),
        attempt_timeout=parse_duration(attempt_timeout, "--attempt-timeout"),
        idle_timeout=parse_duration(idle_timeout, "--idle-timeout"),
        ttl=parse_duration(ttl, "--ttl"),
        single=single,
        labels=parse_labels(labels),
        command=tuple(command),
        gpu=gpu_name,
        gpu_count=gpu_count,
        size=size,
        instance_type=instance_type,
        spot=spot,
        max_price=parse_max_price(max_price, spot),
        on_demand_fallback=on_demand_fallback,
        budget=parse_usd(budget, "--budget") if budget is not None else None,
        image=image,
        tags=parse_tags(tags),
        instance_profile=instance_profile,
        service_account=service_account,
        identity=identity,
        docker=docker,
        forge=forge,
        startup_timeout=parse_duration(startup_timeout, "--startup-timeout"),
        wait=wait,
        runner_archive=runner_archive,
        runner_version=parse_runner_version(runner_version) if runner_version else None,
        reuse_idle=reuse_idle,
        modules_dir=parse_modules_dir(modules_dir) if modules_dir else None,
        extra_vars=parse_vars(var, defaults=_file_vars()),
        network=parse_network(
            subnet_id=subnet_id,
            security_group_ids=security_group_id,
            project=project,
            network=network,
            subnetwork=subnetwork,
            disk_size_gb=disk_size,
            public_ip=public_ip,
        ),
        startup_script=read_startup_script(startup_script) if startup_script else None,
        workdir=task_folder,
        outputs=outputs,
    )
