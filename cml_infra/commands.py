"""One function per command: raw flag values in, one core call, output through `ui`.

Kept apart from cli.py so that the CLI module stays declarations only, and apart from the
lifecycle so that it returns data and prints nothing a script would parse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import typer

from cml_infra import ui
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.state import CATALOG_STATE_DIR, StateDir, resolve_state_dir, user_path
from cml_infra.ui import reported

if TYPE_CHECKING:
    from cml_infra.cleanup.run import Plan
    from cml_infra.forge import Secret
    from cml_infra.forge.base import RunnerInfo
    from cml_infra.record import RunnerRecord
    from cml_infra.spec import RunnerSpec

STATUS_COLUMNS = (
    "name", "cloud", "region", "state", "idle_seconds", "exit_code", "created_at",
    "hourly_price", "cost_usd", "labels",
)  # fmt: skip
CATALOG_COLUMNS = (
    "cloud", "gpu", "size", "instance_type", "vcpus", "memory_gib", "region", "price",
    "spot_price", "source", "as_of", "age",
)  # fmt: skip
CLEANUP_COLUMNS = (
    "kind", "cloud", "region", "name", "launch", "rule", "reason", "result", "hourly_price",
)  # fmt: skip
# Flags of `up` that are not part of what it makes.
_LAUNCH_ONLY = (
    "state_dir", "backend", "token", "github_app_id", "github_app_key", "terraform", "json_output",
    "detach", "retry_on_preemption",
)  # fmt: skip


def _state(state_dir: str | None, backend: str | None = None) -> StateDir:
    """The ledger: the state dir, or a backend with a work area in it. Placements resolved
    from here on are priced with the state dir's refreshed catalog, if it has one."""
    from cml_infra.backends import open_ledger

    root = resolve_state_dir(state_dir)
    CATALOG_STATE_DIR.set(root)
    return open_ledger(StateDir(root), backend)


def _secret(token: str | None, app: tuple[str | None, str | None]) -> Secret:
    """The forge credential: a GitHub App when its id is given (inside Actions GITHUB_TOKEN is
    always set, so the App must win), else the token."""
    from cml_infra.forge import github_app

    return github_app.from_options(*app) or token


def _spec(command: Sequence[str], flags: dict[str, Any]) -> RunnerSpec:
    from cml_infra.spec import build_spec

    spec_flags = {key: value for key, value in flags.items() if key not in _LAUNCH_ONLY}
    spec = build_spec(
        command=command,
        **{
            **spec_flags,
            "tags": spec_flags["tags"] or (),
            "labels": spec_flags["labels"] or (),
            "var": spec_flags["var"] or (),
            "security_group_id": spec_flags["security_group_id"] or (),
            "out": spec_flags["out"] or (),
        },
    )
    for warning in spec.warnings():
        ui.warn(warning)
    return spec


@reported
def up(command: Sequence[str], flags: dict[str, Any]) -> None:
    from cml_infra.lifecycle import up as lifecycle

    spec = _spec(command, flags)
    attached = bool(spec.single and spec.command and not flags["detach"])
    _check_attach(spec, flags, attached)
    state = _state(flags["state_dir"], flags["backend"])
    token = _secret(flags["token"], (flags["github_app_id"], flags["github_app_key"]))
    reused = lifecycle.reusable(spec, state, token, flags["terraform"]) if spec.reuse_idle else None
    if reused is not None:
        _report_reuse(reused, flags["json_output"])
        return
    record = lifecycle.up(spec, state, flags["terraform"], token)
    _step_outputs(record)
    ui.info(_summary(spec, record))
    if attached:
        from cml_infra.lifecycle import attached as run_attached

        done = run_attached.until_done(spec, state, record, flags["terraform"], token,
                                       retries=flags["retry_on_preemption"])  # fmt: skip
        if flags["json_output"]:
            from cml_infra import queries

            rows = queries.status(state, include_destroyed=True, only=state.key(done.record))
            ui.emit_json(rows[0] if rows else {})
        if done.exit_code:
            raise typer.Exit(done.exit_code)
        return
    if flags["json_output"]:
        from cml_infra import queries

        ui.emit_json(queries.status(state, include_destroyed=True, only=state.key(record))[0])
    else:
        ui.result(record.name)


def _check_attach(spec: RunnerSpec, flags: dict[str, Any], attached: bool) -> None:
    """--detach and --retry-on-preemption make sense for an attached task only."""
    if flags["detach"] and not (spec.single and spec.command):
        raise UsageError("--detach", "applies to --single with a task (the only kind up waits on)")
    if flags["retry_on_preemption"]:
        if not attached:
            raise UsageError(
                "--retry-on-preemption",
                "relaunches a task that up is attached to: give --single and a task, "
                "without --detach",
            )
        if not spec.spot:
            raise UsageError(
                "--retry-on-preemption", "only spot instances are preempted: add --spot"
            )


def _summary(spec: RunnerSpec, record: RunnerRecord) -> str:
    from cml_infra import cost
    from cml_infra.spec import OPTIMIZE_PRICE, format_duration

    text = (
        f"{record.name} is running on {record.cloud} ({record.region}, {record.instance_type}); "
        f"labels: {','.join(record.labels)}; it ends after {format_duration(spec.idle_timeout)} "
        f"idle, {'after its first task, ' if spec.single else ''}"
        f"or at {record.expires_at:%Y-%m-%d %H:%M:%S} UTC (ttl {format_duration(spec.ttl)})"
    )
    if record.hourly_price:
        market = "spot" if record.spot else "on-demand"
        text += (
            f"; ${record.hourly_price:.4f}/h {market} (catalog estimate), "
            f"at most ${cost.ceiling(record.hourly_price, spec.ttl):.2f} before the ttl ends it"
        )
    if spec.optimize == OPTIMIZE_PRICE:
        text += "; placed by --optimize price (cheapest first with capacity)"
    return text


def _step_outputs(record: RunnerRecord) -> None:
    """Inside a CI job: where the runner really is (after a failover it differs from the ask),
    and a line in the job summary."""
    from cml_infra.forge.base import step_outputs

    labels = ",".join(record.labels)
    price = "-" if record.hourly_price is None else f"${record.hourly_price:.4f}"
    summary = (
        "| name | cloud | type | GPU | spot | $/h | labels |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n"
        f"| {record.name} | {record.cloud} ({record.region}) | {record.instance_type} "
        f"| {record.gpu or '-'} | {'yes' if record.spot else 'no'} | {price} | `{labels}` |\n"
    )
    step_outputs(
        {
            "name": record.name,
            # The launch's unique id (the `cml-infra-id` tag): the name may be another's too.
            "id": record.launch_id,
            "labels": labels,
            "region": record.region,
            "spot": "true" if record.spot else "false",
            "reused": "false",
        },
        summary,
    )


def _report_reuse(runner: RunnerInfo, json_output: bool) -> None:
    from cml_infra.forge.base import step_outputs

    step_outputs({"name": runner.name, "labels": ",".join(runner.labels), "reused": "true"})
    ui.info(
        f"{runner.name} is online and idle with the asked-for labels: reusing it, nothing created"
    )
    if json_output:
        ui.emit_json(
            {"name": runner.name, "reused": True, "state": "idle", "labels": list(runner.labels)}
        )
    else:
        ui.result(runner.name)


@reported
def down(
    *, names: Sequence[str], all_runners: bool, state_dir: str | None, backend: str | None,
    terraform: str | None, reason: str | None, token: str | None,
    app: tuple[str | None, str | None] = (None, None),
) -> None:  # fmt: skip
    from cml_infra.lifecycle import down as lifecycle

    state = _state(state_dir, backend)
    if all_runners == bool(names):
        raise UsageError("NAME", "give one or more runner names, or --all (not both)")
    targets = lifecycle.all_live(state) if all_runners else list(names)
    if not targets:
        ui.info("no live runners; nothing to destroy")
        return
    lifecycle.down(targets, state, terraform, reason, _secret(token, app))


@reported
def status(
    *, state_dir: str | None, backend: str | None, include_destroyed: bool, json_output: bool
) -> None:
    from cml_infra import queries

    rows = queries.status(_state(state_dir, backend), include_destroyed, warn=ui.warn)
    if json_output:
        ui.emit_json(rows)
    elif rows:
        ui.table(rows, STATUS_COLUMNS, money=("hourly_price", "cost_usd"))
    else:
        ui.info("no runners")


@reported
def logs(*, name: str, follow: bool, state_dir: str | None, backend: str | None) -> None:
    from cml_infra import queries

    try:
        for chunk in queries.logs(name, _state(state_dir, backend), follow):
            print(chunk, end="", flush=True)
    except KeyboardInterrupt:
        pass


@reported
def pull(*, name: str, dest: str | None, state_dir: str | None, backend: str | None) -> None:
    from pathlib import Path

    from cml_infra.lifecycle.down import resolve
    from cml_infra.task import attach

    state = _state(state_dir, backend)
    folder = user_path(dest, "DEST") if dest is not None else Path.cwd()
    record = state.load(resolve([name], state, "nothing to pull")[0])
    if record is None:
        raise CmlInfraError(f"{name}: its record went while it was read")
    written = attach.pull(state, record, folder)
    ui.info(f"{record.name}: {len(written)} file(s) of its outputs in {folder}")
    for path in written:
        ui.result(path)


@reported
def render(command: Sequence[str], output: str, flags: dict[str, Any]) -> None:
    from cml_infra.lifecycle import up as lifecycle

    spec = _spec(command, flags)
    out = user_path(output, "--output")
    launch = lifecycle.render_only(spec, _state(flags["state_dir"], flags["backend"]), out)
    first = launch.attempts[0].placement
    price = f", ${first.hourly_price:.4f}/h {first.market}" if first.hourly_price else ""
    order = ""
    if spec.optimize == "price":  # spec.OPTIMIZE_PRICE
        from cml_infra import placement

        order = f" ({placement.describe(spec, launch.attempts)})"
    ui.info(
        f"rendered {spec.name} for {spec.cloud}: {first.instance_type} in {first.where}{price}"
        f"{order}; to apply: terraform -chdir={out} init && terraform -chdir={out} apply"
    )
    ui.result(str(out))


@reported
def catalog(
    *, cloud: str | None, json_output: bool, region: str | None = None,
    state_dir: str | None = None,
) -> None:  # fmt: skip
    from cml_infra import queries
    from cml_infra.state import resolve_state_dir

    rows = queries.catalog_rows(queries.catalog_clouds(cloud), region, resolve_state_dir(state_dir))
    if region not in (None, "all") and not rows:
        raise UsageError("--region", f"no catalog sells anything in {region!r}")
    if json_output:
        ui.emit_json(rows)
    else:
        # Prices older than a week are flagged where they are read.
        shown = [{**row, "age": f"{row['age_days']}d" + (" STALE" if row["stale"] else "")}
                 for row in rows]  # fmt: skip
        ui.table(shown, CATALOG_COLUMNS, money=("price", "spot_price"))


@reported
def catalog_refresh(
    *, cloud: str | None, regions: Sequence[str] | None, state_dir: str | None
) -> None:
    from cml_infra.catalog.refresh import run

    # Every flag checked before any cloud is asked.
    root = resolve_state_dir(state_dir)
    clouds = run.clouds(cloud)
    wanted = run.regions_of(regions, clouds)
    for done in run.refresh(clouds, wanted, root, ui.warn, named=cloud is not None):
        ui.result(done.summary())


@reported
def doctor(
    *, cloud: str | None, terraform: str | None, state_dir: str | None, backend: str | None
) -> None:
    from cml_infra import config, queries

    default = str(config.default("up", "cloud", "local"))
    state = _state(state_dir, backend)
    results = queries.doctor([cloud] if cloud else None, default, terraform, state)
    for subject, ready, detail in results:
        verdict = {True: "ok", False: "NOT READY", None: "not set up (not used here)"}[ready]
        ui.result(f"{subject}: {verdict}: {detail}")
    if any(ready is False for _, ready, _ in results):
        raise typer.Exit(1)


@reported
def cleanup(
    *, cloud: str | None, regions: Sequence[str], max_age: str | None, idle: str,
    orphan_grace: str, rules: Sequence[str], max_destroy: int, dry_run: bool, yes: bool,
    repo: str | None, org: str | None, token: str | None, github_url: str | None,
    state_dir: str | None, backend: str | None, json_output: bool,
    app: tuple[str | None, str | None] = (None, None),
) -> None:  # fmt: skip
    from cml_infra.cleanup import run as reaper

    state = _state(state_dir, backend)
    settings = reaper.settings(
        cloud, regions, max_age, idle, orphan_grace, dry_run, rules, state, max_destroy
    )
    forge = reaper.forge_of(repo, org, _secret(token, app), github_url)

    def confirm(found: Plan) -> bool:
        if yes or not reaper.interactive():
            return True
        # On a terminal: show what would go, then ask (on stderr, so --json stays clean).
        rows = [row.as_dict() for row in found.rows("to do")]
        ui.table(rows, CLEANUP_COLUMNS, money=("hourly_price",), err=True)
        return typer.confirm(f"destroy or deregister these {len(found.matched)}?", err=True)

    rows = reaper.run(settings, state, forge, confirm)
    report = [row.as_dict() for row in rows]
    if json_output:
        ui.emit_json(report)
    elif report:
        ui.table(report, CLEANUP_COLUMNS, money=("hourly_price",))
    stopped = sum(row.hourly_price or 0.0 for row in rows if row.result.startswith("destroyed"))
    failed = [row for row in rows if row.failed]
    ui.info(f"cleanup: {len(rows)} matched, {len(failed)} failed, ${stopped:.4f}/h stopped")
    if failed:
        # One reason for all (the --max-destroy guard) is said once.
        results = {row.result for row in failed}
        if len(results) == 1 and len(failed) > 1:
            raise CmlInfraError(f"{', '.join(row.name for row in failed)}: {results.pop()}")
        raise CmlInfraError("; ".join(f"{row.name}: {row.result}" for row in failed))


@reported
def comment(report: str, *, update: bool, flags: dict[str, Any]) -> None:
    from cml_infra.comment import CommentOptions
    from cml_infra.comment import comment as post
    from cml_infra.forge.base import step_outputs

    dry_run = flags["dry_run"]
    # A dry run sends nothing, so it needs (and mints) no credential.
    secret = None if dry_run else _secret(flags["token"], _app(flags))
    options = CommentOptions(
        source=report,
        update=update,
        target=flags["target"],
        pr=flags["pr"],
        repo=flags["repo"],
        token=secret,
        github_url=flags["github_url"],
        watermark_title=flags["watermark_title"],
        rm_watermark=flags["rm_watermark"],
        publish=flags["publish"],
        assets_branch=flags["assets_branch"],
        dry_run=dry_run,
    )
    result = post(options)
    if dry_run:
        for upload in result.uploads:
            ui.info(f"would upload {upload.local} to {upload.branch_path}")
        print(result.markdown, end="" if result.markdown.endswith("\n") else "\n")
        return
    uploaded = [upload for upload in result.uploads if upload.uploaded]
    if result.uploads:
        ui.info(
            f"{len(uploaded)} file(s) uploaded to {flags['assets_branch']}, "
            f"{len(result.uploads) - len(uploaded)} already there"
        )
    step_outputs({"comment-url": result.url or ""})
    ui.result(result.url or "")


@reported
def modules_eject(folder: str, *, cloud: str | None, force: bool) -> None:
    from cml_infra.modules import eject

    target = user_path(folder, "DIR")
    for line in eject.eject(target, cloud, force):
        ui.info(line)
    ui.info(f"to use them: cml-infra up --modules-dir {target}")
    ui.result(str(target))


@reported
def modules_diff(folder: str, *, cloud: str | None, exit_code: bool) -> None:
    from cml_infra.modules import diff

    found = diff.diff(user_path(folder, "DIR"), cloud)
    for compared in found:
        for item in compared.files:
            print(item.text, end="", flush=True)
    for compared in found:
        ui.info(compared.summary())
    if exit_code and any(compared.files for compared in found):
        raise typer.Exit(1)


def _app(flags: dict[str, Any]) -> tuple[str | None, str | None]:
    return flags["github_app_id"], flags["github_app_key"]


@reported
def report(
    *, metrics: Sequence[str], baseline: str | None, images: Sequence[str], title: str | None,
    cost: bool | None, run_id: str | None, output: str | None, repo: str | None,
    token: str | None, app: tuple[str | None, str | None], github_url: str | None,
    state_dir: str | None, backend: str | None,
) -> None:  # fmt: skip
    import os

    from cml_infra import report as reports
    from cml_infra.forge.base import step_outputs

    out = user_path(output, "--output") if output else None
    run = run_id or os.environ.get("GITHUB_RUN_ID") or None
    # Inside a workflow run the bill is what the report is for; elsewhere it needs --run-id.
    with_cost = cost if cost is not None else run is not None
    state = _state(state_dir, backend) if with_cost else None

    def settle() -> None:
        from cml_infra import queries

        # What `status` does first: a runner whose instance ended itself gets its end time, so
        # that its cost stops there rather than running on to now.
        if state is not None:
            queries.status(state, include_destroyed=False, warn=ui.warn)

    found = None
    secret = _secret(token, app) if with_cost else None
    repository = repo or os.environ.get("GITHUB_REPOSITORY") or None
    if secret and repository:
        from cml_infra import forge
        from cml_infra.spec import ForgeTarget

        target = ForgeTarget(repo=repository, api_url=github_url or None)
        found = forge.for_target(target, secret)
    options = reports.ReportOptions(
        metrics=list(metrics),
        baseline=baseline,
        images=list(images),
        cost=with_cost,
        run_id=run,
        title=title,
        # Image links are written relative to where the markdown goes, as `comment` reads them.
        relative_to=str(out.parent) if out else None,
    )
    built = reports.build(options, state, found, settle)
    if out is None:
        print(built.markdown, end="" if built.markdown.endswith("\n") else "\n")
    else:
        try:
            out.write_text(built.markdown, encoding="utf-8")
        except OSError as exc:
            raise UsageError("--output", f"{out}: cannot write ({exc.strerror})") from None
        ui.info(f"report written to {out}")
    if built.summary:
        step_outputs({}, built.summary)
