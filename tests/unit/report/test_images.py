"""cml_infra.report.images: `--image FILE[=Caption]` → markdown images whose links stay the
local paths `comment` publishes."""

from __future__ import annotations

import pytest

from cml_infra.errors import UsageError
from cml_infra.report import images


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plots").mkdir()
    for name in ("plots/loss_curve.png", "plots/my plot.svg", "a=b.png", "notes.html"):
        (tmp_path / name).write_bytes(b"\x89PNG")
    return tmp_path


def test_the_caption_is_the_stem_and_the_link_stays_relative(folder):
    assert images.section(["plots/loss_curve.png"]) == (
        "![loss\\_curve](plots/loss_curve.png)\n\n*loss\\_curve*\n"
    )


def test_a_caption_after_equals(folder):
    shown = images.section(["plots/loss_curve.png=Validation  loss [%]"])
    assert shown == (
        "![Validation loss \\[%\\]](plots/loss_curve.png)\n\n*Validation loss \\[%\\]*\n"
    )


def test_a_file_whose_name_holds_equals_is_taken_whole(folder):
    assert images.parse("a=b.png") == images.Image("a=b.png", "a=b")


def test_a_link_is_percent_encoded(folder):
    """A space or parenthesis would end the link, a `#` or `?` cut the path short."""
    (folder / "plots" / "a#1 (b)?.png").write_bytes(b"\x89PNG")
    assert "](plots/my%20plot.svg)" in images.section(["plots/my plot.svg"])
    assert "](plots/a%231%20%28b%29%3F.png)" in images.section(["plots/a#1 (b)?.png"])


def test_links_are_relative_to_the_report_folder(folder):
    """`comment` publishes relative links only, resolved from the report's folder."""
    (folder / "out").mkdir()
    shown = images.section(["plots/loss_curve.png", str(folder / "a=b.png")], "out")
    assert "](../plots/loss_curve.png)" in shown
    assert "](../a=b.png)" in shown
    assert "](a=b.png)" in images.section([str(folder / "a=b.png")])


def test_images_are_separate_paragraphs(folder):
    shown = images.section(["plots/loss_curve.png", "a=b.png=Second"])
    assert shown.count("\n\n![") == 1


@pytest.mark.parametrize(
    ("spec", "said"),
    [
        ("gone.png", "--image: gone.png: no such file"),
        ("gone.png=Caption", "--image: gone.png: no such file"),
        ("plots", "--image: plots: is not a file"),
        ("notes.html", "--image: notes.html: not an image GitHub shows in a comment; give one of"),
        ("a\nb.png", "--image: 'a\\nb.png': a path with a line break cannot be a link"),
    ],
)
def test_bad_images_are_one_line_usage_errors(folder, spec, said):
    with pytest.raises(UsageError) as caught:
        images.section([spec])
    assert str(caught.value).startswith(said), str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_caption_may_hold_equals_too(folder):
    assert images.parse("a=b.png=lr=0.1") == images.Image("a=b.png", "lr=0.1")
