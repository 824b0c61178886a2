"""`cml-infra modules eject DIR`: start a fork in one command. The packaged modules (every
cloud's, or one) and templates are copied into DIR with a README.md of the contract, written
from the code's contract object (contract.py), so that it says what this version relies on.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from cml_infra import __version__, packaged
from cml_infra.errors import UsageError
from cml_infra.modules import contract

README = "README.md"
# The README's first line: a README that starts with it is ours to rewrite.
MARK = "<!-- Written by `cml-infra modules eject`"
# Never copied out of a module folder: Terraform's working files, if someone ran it there.
IGNORED = (".*", "*.tfstate", "*.tfstate.*", "__pycache__")


def modules_of(cloud: str | None, flag: str = "--cloud") -> dict[str, str]:
    """Cloud name → module folder name, of every cloud or of `cloud`."""
    from cml_infra import clouds

    classes = clouds.classes()
    if cloud is not None:
        name = clouds.canonical(cloud, flag)
        return {name: classes[name].module}
    return {name: cls.module for name, cls in classes.items()}


def eject(target: Path, cloud: str | None, force: bool) -> list[str]:
    """Copy the modules and templates into `target`; what was done, one sentence each. A
    module folder that is there and not empty is refused (nothing is copied) unless `force`,
    which replaces it; templates/ that is there is kept unless `force`."""
    if target.exists() and (target.is_symlink() or not target.is_dir()):
        raise UsageError("DIR", f"{target} is not a folder")
    wanted = modules_of(cloud)
    taken = [module for module in wanted.values() if _non_empty(target / module)]
    if taken and not force:
        listed = ", ".join(f"{module}/" for module in taken)
        raise UsageError(
            "DIR",
            f"{target} already holds {listed} (a fork?); `cml-infra modules diff {target}` "
            "shows how it differs from this version, --force replaces it",
        )
    for module in wanted.values():
        if (target / module).is_symlink() or (target / module).is_file():
            raise UsageError("DIR", f"{target / module} is not a folder")
    done = []
    target.mkdir(parents=True, exist_ok=True)
    for module in wanted.values():
        dest = target / module
        if dest.is_dir():
            shutil.rmtree(dest)
        _copy(packaged.module_dir(module), dest)
        done.append(f"copied the {module} module to {dest}")
    templates = target / packaged.TEMPLATES
    if not _non_empty(templates) or force:
        if templates.is_dir() and not templates.is_symlink():
            shutil.rmtree(templates)
        _copy(packaged.templates_dir(), templates)
        done.append(f"copied the templates to {templates}")
    else:
        done.append(f"kept {templates} (--force replaces it)")
    readme = target / README
    if force or not readme.exists() or _ours(readme):
        readme.write_text(describe(target), encoding="utf-8")
        done.append(f"wrote {readme}: the contract, and how to use the forks")
    else:
        done.append(f"kept {readme}, which is not ours (--force replaces it)")
    return done


def _copy(source: Path, dest: Path) -> None:
    # copy2 keeps the modes: a module's scripts stay executable.
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(*IGNORED))


def _non_empty(folder: Path) -> bool:
    try:
        return any(folder.iterdir())
    except OSError:
        return False


def _ours(readme: Path) -> bool:
    try:
        return readme.read_text(encoding="utf-8").startswith(MARK)
    except (OSError, UnicodeDecodeError):
        return False


def describe(target: Path) -> str:
    """The README of a folder of forks: how to use them, and the contract of each module the
    folder holds."""
    from cml_infra import clouds
    from cml_infra.clouds import tags

    classes = {
        name: cls for name, cls in clouds.classes().items() if (target / cls.module).is_dir()
    }
    lines = [
        f"{MARK} (cml-infra {__version__}); the next eject rewrites it. -->",
        "# Module forks for cml-infra",
        "",
        "Forks of the Terraform modules cml-infra creates instances with (one folder per "
        "cloud), and of its templates. Use them with",
        "",
        "```",
        f"cml-infra up --modules-dir {target} ...",
        "```",
        "",
        "(or `render`; or `CML_INFRA_MODULES_DIR`; or `modules-dir` in `.cml-infra.toml`, "
        "which is taken from a file only with `CML_INFRA_TRUST_CONFIG=1`: a module runs code). "
        "`up` copies `<cloud>/` into the runner's workspace, which keeps that copy: `down` and "
        "`cleanup` destroy with it, whatever this folder holds by then.",
        "",
        "A file in `templates/` replaces the packaged template of the same name: "
        "`startup.sh.j2` (the instance's boot script), `root.tf.j2` (the root module that calls "
        "the module) and `providers/<cloud>.tf.j2` (its provider block); delete those you do "
        "not change, and the packaged ones are used.",
        "",
        "A variable your fork adds is given with `--var NAME=VALUE` (VALUE as JSON for numbers, "
        "booleans, lists and maps; repeatable) or in a `[vars]` table of the config file "
        "(`--var` wins per name). After an upgrade of cml-infra, `cml-infra modules diff "
        f"{target}` shows how your forks differ from the packaged modules.",
        "",
        "## The contract",
        "",
        "Checked before anything is created (exit 2, naming what is missing): a fork declares "
        "every variable cml-infra passes it and every output cml-infra reads; each variable it "
        "declares without a default is given by `--var`; `--var` sets only variables the fork "
        "declares and cml-infra does not set itself; and every value passes the fork's own "
        "`validation` rules (run by Terraform on the variable blocks alone).",
        "",
        "Beyond names, keep what the packaged modules do with them: every resource carries the "
        f"tags (GCP: labels) `{tags.MANAGED}`, `{tags.NAME}`, `{tags.LAUNCH_ID}`, "
        f"`{tags.EXPIRES}` and `{tags.CREATED}` besides the `tags`/`labels` variable's, since "
        "`down` and `cleanup` find instances and what was made beside them by those tags; and "
        "the instance runs the startup script it is given, whose agent ends it when idle or "
        "expired.",
    ]
    for cls in classes.values():
        lines += ["", *_cloud_section(contract.of(cls), cls.ON_THIS_MACHINE)]
    if not classes:
        lines += ["", "(This folder holds no module fork yet.)"]
    return "\n".join(lines) + "\n"


def _cloud_section(terms: contract.Contract, on_this_machine: bool) -> Iterable[str]:
    yield f"### {terms.cloud} (`{terms.module}/`)"
    yield ""
    yield "| variable cml-infra passes | set from | when |"
    yield "| --- | --- | --- |"
    for name in terms.variables:
        sensitive = " (sensitive)" if name in terms.sensitive else ""
        yield f"| `{name}`{sensitive} | {terms.set_by(name)} | always |"
    for name, flag in terms.flag_variables.items():
        yield f"| `{name}` | {flag} | only with {flag} (the module's default otherwise) |"
    yield ""
    outputs = ", ".join(f"`{name}`" for name in terms.outputs)
    yield f"Outputs cml-infra reads: {outputs}."
    if on_this_machine:
        yield ""
        yield (
            "The local instance is the folder `instances_root/name` (its sandbox): `status` "
            "and `cleanup` list the sandboxes there, read their `instance.json`, and stop one "
            "with the packaged `scripts/destroy.sh` when no Terraform state is left."
        )
