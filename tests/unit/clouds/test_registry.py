"""cml_infra.clouds: the registry, what every registered cloud must bring, that no code outside
clouds/ decides by a cloud's name, and the local cloud (sandboxes on this machine)."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import cml_infra
from cml_infra import catalog, clouds, packaged
from cml_infra.clouds.base import Cloud, ErrorClass, Feature, RenderContext
from cml_infra.clouds.local import READY_TIMEOUT_SECONDS, LocalCloud
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.placement import Placement, attempts
from cml_infra.spec import RunnerSpec
from cml_infra.state import StateDir


def _spec(**changes):
    fields = {"name": "box-1", "cloud": "local", "idle_timeout": 60, "ttl": 3600}
    fields.update(changes)
    return RunnerSpec(**fields)


def _resolve(cloud, spec):
    """The placement of `spec` in its first region, on the market it asks for."""
    return cloud.resolve(spec, region=spec.region, spot=spec.spot, max_price=spec.max_price)


@pytest.fixture
def state(tmp_path):
    return StateDir(tmp_path / "state")


@pytest.fixture
def cloud(state):
    return clouds.get("local", state)


# --- the registry -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["local", "LOCAL", "Local"])
def test_get_local(name, state):
    cloud = clouds.get(name, state)
    assert isinstance(cloud, LocalCloud)
    assert cloud.name == "local"
    assert cloud.state is state


UNKNOWN_CLOUD_CHOICES = "valid: aws, azure, gcp, local (aliases: az, ec2, gce, google)"


def test_names():
    assert clouds.names() == ["aws", "azure", "gcp", "local"]


def test_classes_are_the_registered_clouds_by_name():
    registered = clouds.classes()
    assert list(registered) == clouds.names()
    for name, cls in registered.items():
        assert issubclass(cls, Cloud)
        assert cls.name == name


@pytest.mark.parametrize(
    ("given", "name"), [("gcp", "gcp"), ("GCE", "gcp"), ("ec2", "aws"), ("Az", "azure")]
)
def test_canonical_turns_an_alias_into_the_name(given, name):
    assert clouds.canonical(given) == name


def test_get_without_a_state_dir(tmp_path):
    assert clouds.get("gcp").state is None


def refusal_of(name: str, tmp_path) -> str:
    """What `clouds.get(name)` says of an unknown cloud: a --cloud error that makes no folder."""
    with pytest.raises(UsageError) as caught:
        clouds.get(name, StateDir(tmp_path))
    assert caught.value.source == "--cloud"
    assert not (tmp_path / "local").exists()
    return str(caught.value)


def test_get_unknown_lists_valid_names(tmp_path):
    message = refusal_of("gpc", tmp_path)
    assert message.startswith("--cloud: unknown cloud 'gpc'")
    assert message.endswith(UNKNOWN_CLOUD_CHOICES)


def test_get_unknown_names_every_cloud_and_alias(tmp_path):
    message = refusal_of("nope", tmp_path)
    assert message.startswith("--cloud: unknown cloud 'nope'; valid: ")
    listed = re.findall(r"[a-z0-9]+", message.partition("valid: ")[2])
    assert set(listed) >= {*clouds.names(), "az", "ec2", "gce", "google"}
    assert "did you mean" not in message


@pytest.mark.parametrize(
    ("alias", "name"),
    [("ec2", "aws"), ("AWS", "aws"), ("google", "gcp"), ("gce", "gcp"), ("az", "azure")],
)
def test_get_by_alias(alias, name, state):
    cloud = clouds.get(alias, state)
    assert cloud.name == name
    assert cloud.state is state


def test_get_unknown_suggests_a_close_name():
    with pytest.raises(UsageError, match=r"did you mean 'local'\?"):
        clouds.get("locl")


def test_get_unknown_suggests_the_name_of_a_close_alias():
    with pytest.raises(UsageError, match=r"did you mean 'gcp'\?"):
        clouds.get("googel")


def test_get_unknown_uses_the_given_flag():
    with pytest.raises(UsageError, match=r"^runner-a: cloud: unknown cloud"):
        clouds.get("nope", flag="runner-a: cloud")


# --- every registered cloud brings all of its pieces -------------------------------------------

MODULE_FILES = ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md")


def missing_pieces(cls):
    """What `cls` lacks of what a cloud needs: a name, its catalog exactly when it says it has
    one, its Terraform module, its provider template, and an error table for failover."""
    if not (isinstance(cls, type) and issubclass(cls, Cloud)):
        return [f"{cls!r} is not a Cloud subclass"]
    missing = []
    name = getattr(cls, "name", "")
    module = getattr(cls, "module", "")
    if not name:
        missing.append("a name")
    if not module:
        return [*missing, "a module"]
    data = catalog.path(name)
    if cls.HAS_CATALOG and not data.is_file():
        missing.append(f"catalog/data/{name}.yaml (HAS_CATALOG is set)")
    if data.is_file() and not cls.HAS_CATALOG:
        missing.append(f"HAS_CATALOG (catalog/data/{name}.yaml exists)")
    if cls.HAS_CATALOG and data.is_file():
        try:
            if catalog.load(name).cloud != name:
                missing.append(f"catalog/data/{name}.yaml saying `cloud: {name}`")
        except Exception as exc:  # a broken file is a missing piece, whatever the error
            missing.append(f"a catalog that loads ({type(exc).__name__}: {exc})")
    folder = packaged.module_dir(module)
    missing += [f"terraform/{module}/{f}" for f in MODULE_FILES if not (folder / f).is_file()]
    provider = packaged.templates_dir() / "providers" / f"{module}.tf.j2"
    if not provider.is_file():
        missing.append(f"templates/providers/{module}.tf.j2")
    if cls.HAS_CATALOG and not cls.ERROR_PATTERNS:
        missing.append("an error table (ERROR_PATTERNS)")
    for pattern, error_class in cls.ERROR_PATTERNS:
        if not pattern or not isinstance(error_class, ErrorClass):
            missing.append(f"an error table entry, not {(pattern, error_class)!r}")
    return missing


@pytest.mark.parametrize("name", clouds.names())
def test_every_registered_cloud_has_all_of_its_pieces(name):
    assert missing_pieces(clouds.classes()[name]) == []


def test_a_cloud_without_its_pieces_is_told_what_it_lacks():
    class Nowhere(LocalCloud):
        name = "nowhere"
        module = "nowhere"
        HAS_CATALOG = True

    assert missing_pieces(Nowhere) == [
        "catalog/data/nowhere.yaml (HAS_CATALOG is set)",
        *(f"terraform/nowhere/{file}" for file in MODULE_FILES),
        "templates/providers/nowhere.tf.j2",
        "an error table (ERROR_PATTERNS)",
    ]
    assert missing_pieces(int) == ["<class 'int'> is not a Cloud subclass"]


def test_the_local_cloud_needs_no_error_table(cloud):
    """Its table is empty on purpose. The table only steers failover (lifecycle/failover.py),
    and a local runner has a single attempt: one region, no zones, no spot market, so no
    on-demand fallback either. Nor does a provider answer it with error codes: its module
    runs its own scripts on this machine. Every error is OTHER and ends `up`."""
    assert cloud.ERROR_PATTERNS == ()
    assert [a.placement.where for a in attempts(_spec(), cloud)] == ["local (on-demand)"]


# --- no code outside clouds/ decides by a cloud's name -----------------------------------------

CLOUD_WORDS = frozenset(
    word for cls in clouds.classes().values() for word in (cls.name, *cls.aliases)
)
# Cloud names that are everyday words too: compared, matched or used as a key, they count only
# where the code around them speaks of a cloud (`spec.cloud == "local"`, not `scope == "local"`).
EVERYDAY_WORDS = frozenset({"local"})


def _speaks_of_a_cloud(node):
    return "cloud" in ast.unparse(node).lower()


def _cloud_words(node):
    """The cloud names `node` spells out: a string, or strings anywhere in it (a tuple, a set,
    `frozenset({...})`)."""
    return [
        e.value
        for e in ast.walk(node)
        if isinstance(e, ast.Constant) and isinstance(e.value, str) and e.value in CLOUD_WORDS
    ]


def _counts(words, *context):
    """Whether cloud names used beside `context` are a cloud's: plainly, unless each is an
    everyday word and nothing beside it speaks of a cloud."""
    if not words:
        return False
    return not set(words) <= EVERYDAY_WORDS or any(_speaks_of_a_cloud(n) for n in context)


def _is_cloud_name_attribute(node):
    return isinstance(node, ast.Attribute) and node.attr == "name" and _speaks_of_a_cloud(node)


def name_leaks(source, filename):
    """`file:line: what: code` for each place `source` decides by a cloud's name."""
    leaks = []

    def leak(node, what):
        leaks.append(f"{filename}:{node.lineno}: {what}: {ast.unparse(node)}")

    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            words = [word for operand in operands for word in _cloud_words(operand)]
            if _counts(words, *operands):
                leak(node, f"compares with {', '.join(map(repr, words))}")
            elif any(_is_cloud_name_attribute(operand) for operand in operands):
                leak(node, "compares a cloud's .name")
        elif isinstance(node, ast.Match):
            for case in node.cases:
                words = [
                    p.value.value
                    for p in ast.walk(case.pattern)
                    if isinstance(p, ast.MatchValue) and _cloud_words(p.value)
                ]
                if _counts(words, node.subject):
                    leak(case.pattern, f"matches {', '.join(map(repr, words))}")
        elif isinstance(node, ast.Dict):
            words = [word for key in node.keys if key is not None for word in _cloud_words(key)]
            if _counts(words):
                leak(node, f"is keyed by {', '.join(map(repr, words))}")
        elif isinstance(node, ast.Call) and ast.unparse(node.func) == "dict":
            words = [k.arg for k in node.keywords if k.arg in CLOUD_WORDS]
            if _counts(words):
                leak(node, f"is keyed by {', '.join(map(repr, words))}")
    return leaks


def test_the_cloud_words_are_every_name_and_alias():
    assert {"aws", "gcp", "azure", "local", "ec2", "google", "gce", "az"} <= CLOUD_WORDS


def test_no_code_outside_clouds_decides_by_a_clouds_name():
    package = Path(cml_infra.__file__).parent
    leaks = []
    for path in sorted(package.rglob("*.py")):
        if path.relative_to(package).parts[0] == "clouds":
            continue
        source = path.read_text(encoding="utf-8")
        leaks += name_leaks(source, str(path.relative_to(package.parent)))
    for found in leaks:
        print(found)
    assert leaks == [], "ask the cloud (a class attribute or method) instead:\n" + "\n".join(leaks)


LEAKY = """\
if spec.cloud == "gcp": pass
if name != "aws": pass
if cloud in ("azure", "gcp"): pass
if "ec2" not in names: pass
if cloud.name == record.cloud: pass
match spec.cloud:
    case "google" | "gce": pass
PRICES = {"az": 1.0, "other": 2.0}
LIMITS = dict(aws=16, azure=64)
if record.cloud == "local": pass
if cloud not in frozenset({"gcp"}): pass
"""

UNRELATED = """\
headers = {"Metadata-Flavor": "Google"}
if scope == "local": pass
paths = {"local": here, "remote": there}
default = config.default("up", "cloud", "local")
if instance.name == name: pass
if mode in ("locale", "gcp-preempted"): pass
match where:
    case "local": pass
"""


def test_name_leaks_finds_every_kind_of_comparison():
    lines = [int(leak.split(":")[1]) for leak in name_leaks(LEAKY, "leaky.py")]
    assert sorted(lines) == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]


def test_name_leaks_leaves_the_same_words_meaning_something_else():
    assert name_leaks(UNRELATED, "unrelated.py") == []


# --- the GPU families are the catalog's knowledge only -----------------------------------------

VM_CLOUDS = [name for name, cls in clouds.classes().items() if cls.HAS_CATALOG]
# A native type of each family that the catalog does not list: only the family can say it has
# GPUs (and each cloud's own check of a type name must accept it).
UNLISTED_TYPE = {"gcp": "{}unlisted-1g", "aws": "{}unlisted.xlarge", "azure": "{}Unlisted_v9"}
CPU_TYPES = {
    "gcp": ["n1-standard-4", "e2-standard-4"],
    "aws": ["m7i.large", "c7i.large"],
    "azure": ["Standard_D4s_v5", "Standard_F4s_v2"],
}
CREATED = datetime(2030, 1, 1, tzinfo=timezone.utc)


def _gpu_var(cloud_name, instance_type):
    cloud = clouds.get(cloud_name)
    spec = RunnerSpec(
        name="box-1", cloud=cloud_name, idle_timeout=60, ttl=3600, instance_type=instance_type
    )
    placement = attempts(spec, cloud)[0].placement
    context = RenderContext("#!/bin/sh\n", CREATED, CREATED + timedelta(hours=1))
    return cloud.module_vars(spec, placement, context)["gpu"]


def _families(cloud_name):
    return [prefix.rstrip("-_") for prefix in catalog.load(cloud_name).gpu_type_prefixes]


def family_mentions(tf_text, families):
    """The lines of a .tf file's code (no comments, descriptions or error messages: prose for
    people) that name one of the GPU families."""
    mention = re.compile(
        r"(?<![A-Za-z0-9_])(" + "|".join(map(re.escape, families)) + ")", re.IGNORECASE
    )
    prose = re.compile(r"\s*(#|//|/\*|\*|description\s*=|error_message\s*=)")
    return [
        line.strip()
        for line in tf_text.splitlines()
        if not prose.match(line) and mention.search(line)
    ]


def test_family_mentions_finds_a_family_pattern():
    old = 'builtin_gpu = can(regex("^(a2|a3|a4|a4x|g2|g4)-", var.machine_type))'
    assert family_mentions(old, _families("gcp")) == [old]
    assert family_mentions(f'  description = "{old}"\n  # {old}', _families("gcp")) == []


@pytest.mark.parametrize("cloud_name", VM_CLOUDS)
def test_no_module_keeps_its_own_list_of_gpu_families(cloud_name):
    folder = packaged.module_dir(clouds.classes()[cloud_name].module)
    files = sorted(folder.glob("*.tf"))
    assert files
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert family_mentions(text, _families(cloud_name)) == [], path.name


def test_the_clouds_keep_no_gpu_type_pattern_of_their_own():
    for cls in clouds.classes().values():
        assert not hasattr(cls, "GPU_TYPE_PATTERN"), cls.name


@pytest.mark.parametrize(
    ("cloud_name", "prefix"),
    [(name, prefix) for name in VM_CLOUDS for prefix in catalog.load(name).gpu_type_prefixes],
)
def test_a_type_of_each_catalog_gpu_family_boots_as_a_gpu_machine(cloud_name, prefix):
    instance_type = UNLISTED_TYPE[cloud_name].format(prefix)
    assert catalog.load(cloud_name).for_type(instance_type) is None
    assert _gpu_var(cloud_name, instance_type) is True


@pytest.mark.parametrize(
    ("cloud_name", "instance_type"),
    [(name, instance_type) for name in VM_CLOUDS for instance_type in CPU_TYPES[name]],
)
def test_a_type_of_no_gpu_family_boots_as_a_cpu_machine(cloud_name, instance_type):
    assert not catalog.load(cloud_name).has_builtin_gpu(instance_type)
    assert _gpu_var(cloud_name, instance_type) is False


# --- the local cloud --------------------------------------------------------------------------


@pytest.mark.parametrize("region", [None, "local"])
def test_resolve(cloud, region):
    assert _resolve(cloud, _spec(region=region)) == Placement(
        cloud="local", region="local", instance_type="process", hourly_price=0.0
    )


def test_resolve_unknown_region(cloud):
    with pytest.raises(UsageError) as caught:
        _resolve(cloud, _spec(region="us-east-1"))
    assert caught.value.source == "--region"
    assert str(caught.value).startswith("--region: ")
    assert "'us-east-1'" in str(caught.value)
    assert "valid: local" in str(caught.value)


def test_the_local_cloud_runs_on_this_machine(cloud):
    assert cloud.ON_THIS_MACHINE is True
    assert cloud.HAS_CATALOG is False
    # One region: cleanup searches it whatever `--region` names.
    assert cloud.searched_regions(["us-east-1"]) is None


def test_the_local_cloud_needs_a_state_dir():
    with pytest.raises(CmlInfraError, match="keeps its instances in a state dir; none given"):
        _ = clouds.get("local").instances_root


def test_boot_runs_our_own_down(cloud, tmp_path):
    boot = cloud.boot(_spec())
    assert boot.self_destroy == (
        sys.executable,
        "-m",
        "cml_infra",
        "down",
        "box-1",
        "--state-dir",
        str(tmp_path / "state"),
    )
    assert boot.python == sys.executable
    assert boot.home == str(tmp_path / "state" / "local" / "instances" / "box-1")
    assert (boot.runner_user, boot.reads_launcher_files, boot.ttl_timer) == (None, True, False)
    assert (boot.preemption_probe, boot.poll_seconds) == (None, 1)


def test_module_vars(cloud, tmp_path):
    created = datetime(2030, 1, 1, tzinfo=timezone.utc)
    expires = created + timedelta(hours=2)
    spec = _spec()
    context = RenderContext("#!/bin/sh\n", created, expires, "0123456789abcdef")
    variables = cloud.module_vars(spec, _resolve(cloud, spec), context)
    assert variables == {
        "name": "box-1",
        "instances_root": str(tmp_path / "state" / "local" / "instances"),
        "startup_script": "#!/bin/sh\n",
        "created_at": "2030-01-01T00:00:00+00:00",
        "tags": {
            "cml-infra-managed": "true",
            "cml-infra-name": "box-1",
            "cml-infra-expires": str(int(expires.timestamp())),
            "cml-infra-id": "0123456789abcdef",
            "cml-infra-created": str(int(created.timestamp())),
        },
        "log_archive_dir": str(tmp_path / "state" / "runners" / "box-1" / "logs"),
        "ready_timeout_seconds": READY_TIMEOUT_SECONDS,
    }
    assert json.loads(json.dumps(variables)) == variables


def test_module_vars_match_the_module_variables(cloud):
    """Every variable we pass is declared by terraform/local, and every required one is passed."""
    text = (packaged.module_dir("local") / "variables.tf").read_text()
    declared = dict(re.findall(r'variable "(\w+)" \{(.*?)\n\}', text, flags=re.DOTALL))
    now = datetime.now(timezone.utc)
    spec = _spec()
    variables = cloud.module_vars(spec, _resolve(cloud, spec), RenderContext("", now, now))
    assert set(variables) <= set(declared)
    required = {key for key, body in declared.items() if "default" not in body}
    assert required <= set(variables)


def test_defaults(cloud):
    assert cloud.sensitive_vars() == frozenset({"startup_script"})
    assert cloud.classify("Error", "whatever") is ErrorClass.OTHER
    assert cloud.check() == (True, "no credentials needed")
    assert Feature.GPU in cloud.UNSUPPORTED
    assert Feature.SPOT in cloud.UNSUPPORTED


def test_list_managed_missing_root(cloud):
    assert cloud.list_managed(["local"]) == []
    assert not cloud.instances_root.exists()


def test_list_managed_empty_root(cloud):
    cloud.instances_root.mkdir(parents=True)
    assert cloud.list_managed(["local"]) == []


def test_list_managed_other_region(cloud):
    _sandbox(cloud, "box-1", pgid=_dead_pgid())
    assert cloud.list_managed(["us-east-1"]) == []
    assert cloud.list_managed([]) == []


def _dead_pgid():
    child = subprocess.Popen(["true"], start_new_session=True)
    child.wait()
    return child.pid


def _sandbox(cloud, name, pgid=None, tags=None, status=None, created_at="2030-01-01T00:00:00"):
    folder = cloud.instances_root / name
    folder.mkdir(parents=True)
    meta = {
        "id": name,
        "name": name,
        "created_at": created_at,
        "tags": tags
        if tags is not None
        else {
            "cml-infra-managed": "true",
            "cml-infra-name": name,
            "cml-infra-expires": "1893456000",
        },
    }
    (folder / "instance.json").write_text(json.dumps(meta))
    if pgid is not None:
        (folder / "pgid").write_text(f"{pgid}\n")
    if status is not None:
        (folder / "agent-status.json").write_text(json.dumps(status))
    return folder


def test_list_managed_stopped_sandbox(cloud):
    _sandbox(cloud, "box-1", pgid=_dead_pgid(), status={"state": "busy"})
    (cloud.instances_root / "stray-file").write_text("")
    [instance] = cloud.list_managed(["local"])
    assert instance.id == "box-1"
    assert instance.name == "box-1"
    assert instance.cloud == "local"
    assert instance.region == "local"
    assert instance.state == "stopped"
    assert instance.dead
    assert instance.idle_seconds is None
    # A creation time without a zone is the module's UTC.
    assert instance.created_at == datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert instance.expires_at == datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert instance.tags["cml-infra-managed"] == "true"


@pytest.mark.parametrize("pgid", [None, "not-a-number", ""])
def test_list_managed_without_a_usable_pgid_is_stopped(cloud, pgid):
    folder = _sandbox(cloud, "box-1")
    if pgid is not None:
        (folder / "pgid").write_text(pgid)
    [instance] = cloud.list_managed(["local"])
    assert instance.state == "stopped"


def test_list_managed_half_made_sandbox_is_still_ours(cloud):
    (cloud.instances_root / "half-made").mkdir(parents=True)
    [instance] = cloud.list_managed(["local"])
    assert instance.name == "half-made"
    assert instance.state == "stopped"
    assert instance.created_at is None
    assert instance.expires_at is None


def test_list_managed_skips_unmanaged_and_reads_bad_json(cloud):
    _sandbox(cloud, "foreign", tags={"cml-infra-managed": "false"})
    folder = _sandbox(cloud, "box-2")
    (folder / "instance.json").write_text("[1, 2")
    names = [i.name for i in cloud.list_managed(["local"])]
    assert names == ["box-2"]


def test_list_managed_reads_tags_that_are_not_a_mapping(cloud):
    folder = _sandbox(cloud, "box-1")
    (folder / "instance.json").write_text(json.dumps({"tags": ["not", "a", "mapping"]}))
    [instance] = cloud.list_managed(["local"])
    assert (instance.name, instance.expires_at) == ("box-1", None)


@pytest.fixture
def start_agent():
    """Starts a stand-in agent in a sandbox, in a process group of its own as the module starts
    the startup script, and writes its pgid (and status, if given) where the agent would. A
    thread reaps it as soon as it dies, as init would."""
    started = []

    def start(folder, **status):
        child = subprocess.Popen(["sleep", "30"], cwd=folder, start_new_session=True)
        reaper = threading.Thread(target=child.wait, daemon=True)
        reaper.start()
        started.append((child, reaper))
        (folder / "pgid").write_text(f"{child.pid}\n")
        if status:
            (folder / "agent-status.json").write_text(json.dumps({"pid": child.pid, **status}))
        return child

    yield start
    for child, reaper in started:
        if child.poll() is None:
            child.kill()
        reaper.join(5)


def test_list_managed_live_idle_sandbox(cloud, start_agent):
    last = time.time() - 42
    start_agent(_sandbox(cloud, "box-1"), state="idle", last_activity=last)
    [instance] = cloud.list_managed(["local"])
    assert instance.state == "idle"
    assert not instance.dead
    assert 41 <= instance.idle_seconds <= 60


def test_list_managed_live_busy_and_booting(cloud, start_agent):
    start_agent(_sandbox(cloud, "box-1"), state="busy", last_activity=1)
    start_agent(_sandbox(cloud, "box-2"))
    busy, booting = cloud.list_managed(["local"])
    assert (busy.state, busy.idle_seconds) == ("busy", None)
    assert booting.state == "booting"


def test_list_managed_live_agent_under_a_symlinked_state_dir_is_alive(tmp_path, start_agent):
    # The kernel names the agent's working folder with the symlink resolved.
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    cloud = clouds.get("local", StateDir(tmp_path / "link" / "state"))
    start_agent(_sandbox(cloud, "box-1"), state="idle", last_activity=time.time())
    [instance] = cloud.list_managed(["local"])
    assert instance.state == "idle"


@pytest.mark.parametrize(
    "agent_pid",
    [
        pytest.param(lambda: _dead_pgid(), id="gone"),
        pytest.param(lambda: os.getpid(), id="another-process"),
        pytest.param(lambda: None, id="not-reported"),
    ],
)
def test_list_managed_live_group_without_its_agent_is_agent_dead(cloud, start_agent, agent_pid):
    folder = _sandbox(cloud, "box-1")
    start_agent(folder)
    (folder / "agent-status.json").write_text(json.dumps({"state": "idle", "pid": agent_pid()}))
    [instance] = cloud.list_managed(["local"])
    assert instance.state == "agent-dead"
    assert instance.dead


def test_terminate_missing_id_is_fine(cloud):
    cloud.terminate(["never-existed"])
    cloud.instances_root.mkdir(parents=True)
    cloud.terminate(["never-existed", "also-gone"])
    cloud.terminate([])


def test_terminate_stops_the_group_and_keeps_the_log(cloud, start_agent, tmp_path):
    folder = _sandbox(cloud, "box-1")
    agent = start_agent(folder, state="busy")
    (folder / "instance.log").write_text("agent line\n")
    started = time.monotonic()
    cloud.terminate(["box-1"])
    assert time.monotonic() - started < 8
    assert agent.wait(5) is not None
    assert not folder.exists()
    archived = tmp_path / "state" / "runners" / "box-1" / "logs" / "instance.log"
    assert archived.read_text() == "agent line\n"
    assert cloud.list_managed(["local"]) == []
    cloud.terminate(["box-1"])  # again: already gone


def test_terminate_reports_a_failed_destroy(cloud, tmp_path, monkeypatch):
    module = tmp_path / "module"
    (module / "scripts").mkdir(parents=True)
    (module / "scripts" / "destroy.sh").write_text(
        'echo "$SANDBOX|$LOG_ARCHIVE_DIR" >"$(dirname "$0")/seen"\n'
        'echo "permission denied" >&2\n'
        "exit 1\n"
    )
    monkeypatch.setattr(packaged, "module_dir", lambda name: module)
    with pytest.raises(CmlInfraError) as caught:
        cloud.terminate(["box-1"])
    assert str(caught.value) == "local instance box-1: could not stop it: permission denied"
    sandbox, archive = (module / "scripts" / "seen").read_text().strip().split("|")
    assert sandbox == str(cloud.instances_root / "box-1")
    assert archive == str(tmp_path / "state" / "runners" / "box-1" / "logs")


def test_instance_log_prefers_the_sandbox_then_the_archive(cloud, tmp_path):
    assert cloud.instance_log("box-1") is None
    archive = tmp_path / "state" / "runners" / "box-1" / "logs"
    archive.mkdir(parents=True)
    (archive / "instance.log").write_text("old")
    assert cloud.instance_log("box-1") == archive / "instance.log"
    folder = _sandbox(cloud, "box-1")
    (folder / "instance.log").write_text("new")
    assert cloud.instance_log("box-1") == folder / "instance.log"
    assert os.path.isfile(cloud.instance_log("box-1"))


@pytest.mark.parametrize(
    ("flag", "changes", "fragment"),
    [
        ("--gpu", {"gpu": "t4", "gpu_count": 1}, "not on the local cloud"),
        ("--spot", {"spot": True}, "not on the local cloud"),
        ("--size", {"size": "m"}, "sizes, types and images apply to aws, gcp and azure"),
        ("--type", {"instance_type": "m7i.large"}, "sizes, types and images apply to aws"),
        ("--image", {"image": "ami-0123456789abcdef0"}, "sizes, types and images apply to aws"),
    ],
)
def test_resolve_rejects_vm_flags(cloud, flag, changes, fragment):
    with pytest.raises(UsageError) as caught:
        _resolve(cloud, _spec(**changes))
    assert caught.value.source == flag
    assert str(caught.value).startswith(f"{flag}: ")
    assert fragment in str(caught.value)
    assert not cloud.state.root.exists()


def test_module_vars_carry_the_user_tags(cloud):
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    spec = _spec(tags={"team": "ml"})
    context = RenderContext("", now, now, "feedc0de12345678")
    assert cloud.module_vars(spec, _resolve(cloud, spec), context)["tags"] == {
        "team": "ml",
        "cml-infra-managed": "true",
        "cml-infra-name": "box-1",
        "cml-infra-expires": str(int(now.timestamp())),
        "cml-infra-id": "feedc0de12345678",
        "cml-infra-created": str(int(now.timestamp())),
    }


def test_boot_is_abstract():
    class NoBoot(Cloud):
        module = "none"

        def resolve(self, spec, *, region, spot, max_price):
            raise NotImplementedError

        def module_vars(self, spec, placement, context):
            return {}

        def list_managed(self, regions):
            return []

        def terminate(self, ids):
            pass

    with pytest.raises(TypeError, match="boot"):
        NoBoot()


def test_local_terminate_keeps_the_token_from_its_destroy_script(cloud, monkeypatch):
    # The destroy script is a process the launcher starts, like Terraform: no forge token in it.
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_unit_CANARY_local")
    seen: list[dict[str, str]] = []

    def run(argv, *, env, **kwargs):
        seen.append(env)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr("cml_infra.clouds.local.subprocess.run", run)
    cloud.terminate(["box-1"])
    assert len(seen) == 1 and "GITHUB_TOKEN" not in seen[0]
    assert "ghp_unit_CANARY_local" not in "".join(seen[0].values())
    assert seen[0]["SANDBOX"].endswith("box-1")
