"""Every resource type a module creates has a known way to go when no Terraform state is left.

When `up` ran in a CI job whose machine is gone, only the cloud API can remove what a runner
left, and each cloud says how, per type, in `REAPED` (with the instance, with its group, as a
leftover that cleanup finds by its tags, ...). A module that gains a resource type its cloud
does not name fails here, before a runner leaks it; a name no module creates fails too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cml_infra import clouds, packaged

# `resource "TYPE" "NAME" {` at the start of a line: data sources and modules are not made.
RESOURCE = re.compile(r'^resource\s+"([A-Za-z0-9_]+)"\s+"[A-Za-z0-9_-]+"\s*\{', re.MULTILINE)


def module_types(folder: Path) -> dict[str, list[str]]:
    """Resource type → the .tf files of the module (not its examples) that create one."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.glob("*.tf")):
        for resource_type in RESOURCE.findall(path.read_text(encoding="utf-8")):
            found.setdefault(resource_type, []).append(path.name)
    return found


def unreaped(cls) -> list[str]:
    """What a cloud's REAPED and its module disagree on, one sentence each."""
    made = module_types(packaged.module_dir(cls.module))
    reaped = dict(cls.REAPED)
    problems = [
        f"terraform/{cls.module}/{', '.join(files)} creates {resource_type}, which "
        f"{cls.__name__}.REAPED does not name"
        for resource_type, files in sorted(made.items())
        if resource_type not in reaped
    ]
    problems += [
        f"{cls.__name__}.REAPED names {resource_type}, which terraform/{cls.module} does not create"
        for resource_type in sorted(reaped)
        if resource_type not in made
    ]
    problems += [
        f"{cls.__name__}.REAPED says nothing of how {resource_type} goes"
        for resource_type, how in sorted(reaped.items())
        if not how.strip()
    ]
    return problems


@pytest.mark.parametrize("name", clouds.names())
def test_every_resource_type_of_a_module_is_reaped_somehow(name):
    cls = clouds.classes()[name]
    assert module_types(packaged.module_dir(cls.module)), f"no resource in terraform/{cls.module}"
    assert unreaped(cls) == []


def test_the_parser_reads_resources_not_data_sources_nor_comments(tmp_path):
    (tmp_path / "main.tf").write_text(
        'data "aws_ami" "this" {\n}\n'
        '# resource "aws_commented" "out" {\n'
        'resource "aws_instance" "this" {\n  ami = "x"\n}\n'
        'resource  "aws_security_group"  "a-b" {\n}\n'
    )
    (tmp_path / "extra.tf").write_text('resource "aws_instance" "other" {\n}\n')
    assert module_types(tmp_path) == {
        "aws_instance": ["extra.tf", "main.tf"],
        "aws_security_group": ["main.tf"],
    }


def test_a_cloud_that_forgets_a_type_or_names_a_stranger_is_told(monkeypatch):
    aws = clouds.classes()["aws"]
    known = dict(aws.REAPED)
    forgetful = {k: v for k, v in known.items() if k != "aws_security_group"}
    monkeypatch.setattr(aws, "REAPED", {**forgetful, "aws_nat_gateway": "with the instance"})
    assert unreaped(aws) == [
        "terraform/aws/main.tf creates aws_security_group, which AwsCloud.REAPED does not name",
        "AwsCloud.REAPED names aws_nat_gateway, which terraform/aws does not create",
    ]
    monkeypatch.setattr(aws, "REAPED", {**known, "aws_security_group": " "})
    assert unreaped(aws) == ["AwsCloud.REAPED says nothing of how aws_security_group goes"]
