"""One function per command: raw flag values in, lifecycle call, output through `ui`.

Kept apart from cli.py so that the CLI module stays declarations only, and apart from
lifecycle.py so that lifecycle returns data and prints nothing a script would parse.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from cml_infra import cost, lifecycle, ui
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.spec import build_spec, format_duration
from cml_infra.ui import reported
from cml_infra.workspace import StateDir, resolve_state_dir

STATUS_COLUMNS = (
    "name", "cloud", "region", "state", "idle_seconds", "created_at", "cost_usd", "labels",
)  # fmt: skip
CATALOG_COLUMNS = (
    "cloud", "gpu", "size", "instance_type", "vcpus", "memory_gib", "price", "spot_price", "as_of",
)  # fmt: skip


@reported
def up(
    *,
    state_dir: Path | None,
    terraform: str | None,
    json_output: bool,
    token: str | None,
    **flags: Any,
) -> None:
    spec = build_spec(**flags)
    state = StateDir(resolve_state_dir(state_dir))
    reused = lifecycle.reusable(spec, state, token) if spec.reuse_idle else None
    if reused is not None:
        _report_reuse(reused, json_output)
        return
    record = lifecycle.up(spec, state, terraform, token)
    ui.github_step_outputs(record)
    ui.info(
        f"{record.name} is running on {record.cloud} ({record.region}, {record.instance_type}); "
        f"labels: {','.join(record.labels)}; it ends after {format_duration(spec.idle_timeout)} "
        f"idle, {'after its first task, ' if spec.single else ''}"
        f"or at {record.expires_at:%Y-%m-%d %H:%M:%S} UTC (ttl {format_duration(spec.ttl)})"
        + _price_note(record.hourly_price, record.spot, spec.ttl)
    )
    if json_output:
        ui.emit_json(lifecycle.status(state, include_destroyed=True, only=record.name)[0])
    else:
        ui.result(record.name)


def _report_reuse(runner: dict[str, Any], json_output: bool) -> None:
    name = str(runner["name"])
    labels = [str(label.get("name")) for label in runner.get("labels", [])]
    ui.github_step_outputs_reused(name, labels)
    ui.info(f"{name} is online and idle with the asked-for labels: reusing it, nothing created")
    if json_output:
        ui.emit_json({"name": name, "reused": True, "state": "idle", "labels": labels})
    else:
        ui.result(name)


def _price_note(hourly_price: float | None, spot: bool, ttl: int) -> str:
    if not hourly_price:
        return ""
    market = "spot" if spot else "on-demand"
    return (
        f"; ${hourly_price:.4f}/h {market} (catalog estimate), "
        f"at most ${cost.ceiling(hourly_price, ttl):.2f} before the ttl ends it"
    )


@reported
def down(
    *, names: Sequence[str], all_runners: bool, state_dir: Path | None, terraform: str | None,
    reason: str | None, token: str | None,
) -> None:  # fmt: skip
    state = StateDir(resolve_state_dir(state_dir))
    if all_runners == bool(names):
        raise UsageError("NAME", "give one or more runner names, or --all (not both)")
    targets = lifecycle.all_live(state) if all_runners else list(names)
    if not targets:
        ui.info("no live runners; nothing to destroy")
    lifecycle.down(targets, state, terraform, reason, token)


@reported
def status(*, state_dir: Path | None, include_destroyed: bool, json_output: bool) -> None:
    rows = lifecycle.status(StateDir(resolve_state_dir(state_dir)), include_destroyed)
    if json_output:
        ui.emit_json(rows)
    elif rows:
        ui.table(rows, STATUS_COLUMNS, money=("cost_usd",))
    else:
        ui.info("no runners")


@reported
def logs(*, name: str, follow: bool, state_dir: Path | None) -> None:
    try:
        for chunk in lifecycle.logs(name, StateDir(resolve_state_dir(state_dir)), follow):
            print(chunk, end="", flush=True)
    except KeyboardInterrupt:
        pass


@reported
def render(*, output: Path, state_dir: Path | None, **flags: Any) -> None:
    spec = build_spec(**flags)
    out = lifecycle.render_only(spec, StateDir(resolve_state_dir(state_dir)), output.resolve())
    ui.info(
        f"rendered {spec.name} for {spec.cloud}; to apply: "
        f"terraform -chdir={out} init && terraform -chdir={out} apply"
    )
    ui.result(str(out))


@reported
def catalog(*, cloud: str | None, json_output: bool) -> None:
    rows = lifecycle.catalog_rows(lifecycle.catalog_clouds(cloud))
    if json_output:
        ui.emit_json(rows)
    else:
        ui.table(rows, CATALOG_COLUMNS, money=("price", "spot_price"))


@reported
def doctor(*, cloud: str | None, terraform: str | None) -> None:
    results = lifecycle.doctor([cloud] if cloud else None, terraform)
    for subject, ready, detail in results:
        ui.result(f"{subject}: {'ok' if ready else 'NOT READY'}: {detail}")
    if not all(ready for _, ready, _ in results):
        raise typer.Exit(1)


CLEANUP_COLUMNS = ("kind", "cloud", "region", "name", "rule", "reason", "result", "hourly_price")


@reported
def cleanup(
    *, cloud: str | None, regions: Sequence[str], max_age: str | None, idle: str,
    orphan_grace: str, rules: Sequence[str], dry_run: bool, yes: bool, repo: str | None,
    org: str | None, token: str | None, github_url: str | None, state_dir: Path | None,
    json_output: bool,
) -> None:  # fmt: skip
    from cml_infra import cleanup as reaper

    state = StateDir(resolve_state_dir(state_dir))
    settings = reaper.settings(cloud, regions, max_age, idle, orphan_grace, dry_run, rules, state)
    forge = reaper.forge(repo, org, token, github_url)

    def confirm(found: reaper.Plan) -> bool:
        if yes or not reaper.interactive():
            return True
        # On a terminal: show what would go, then ask (on stderr, so --json stays clean).
        ui.table(
            [r.as_dict() for r in found.rows("to do")],
            CLEANUP_COLUMNS,
            money=("hourly_price",),
            err=True,
        )
        return typer.confirm(f"destroy or deregister these {len(found.matched)}?", err=True)

    rows = reaper.run(settings, state, forge, confirm)
    report = [row.as_dict() for row in rows]
    if json_output:
        ui.emit_json(report)
    elif report:
        ui.table(report, CLEANUP_COLUMNS, money=("hourly_price",))
    stopped = sum(row.hourly_price or 0.0 for row in rows if row.result.startswith("destroyed"))
    failed = [row for row in rows if "failed" in row.result]
    ui.info(f"cleanup: {len(rows)} matched, {len(failed)} failed, ${stopped:.4f}/h stopped")
    if failed:
        raise CmlInfraError("; ".join(f"{row.name}: {row.result}" for row in failed))
