"""cml_infra.comment.markdown: which links of a report are local files, rewriting them byte for
byte, and the watermark."""

from __future__ import annotations

import os

import pytest

from cml_infra.comment import markdown
from cml_infra.comment.markdown import Link, find_links, local_links, local_path, rewrite
from cml_infra.errors import UsageError


def written(text: str) -> list[str]:
    """Each link destination as it stands in the text."""
    return [text[link.start : link.end] for link in find_links(text)]


def local(text: str) -> list[str]:
    return [path for link in find_links(text) if (path := local_path(link.target))]


# --- finding links -----------------------------------------------------------------------------


def test_inline_links_and_images_with_titles():
    text = "[t](a.png \"title\") ![alt](b.png) ![x](c.png 'single') [p](d.html (paren))"
    assert written(text) == ["a.png", "b.png", "c.png", "d.html"]


def test_angle_bracket_destinations_may_hold_spaces():
    text = '![plot](<plots/loss curve.png> "t")'
    [link] = find_links(text)
    assert text[link.start : link.end] == "plots/loss curve.png"
    assert link.target == "plots/loss curve.png"


def test_reference_definitions_are_links_wherever_they_stand():
    text = "See [the plot][p] and ![][img].\n\n[p]: plot.png\n> [img]: <img one.png> 'x'\n"
    assert written(text) == ["plot.png", "img one.png"]
    assert {link.kind for link in find_links(text)} == {"definition"}


def test_a_reference_definition_on_two_lines():
    assert local("![x][a]\n\n[a]:\n   card.html\n") == ["card.html"]


def test_html_img_and_a_tags_in_blocks_and_inline():
    text = (
        '<div align="center">\n<img width=300 src="fig.png">\n</div>\n\n'
        "text <a href='model.html'>card</a> and <IMG SRC=bare.png>\n"
    )
    assert written(text) == ["fig.png", "model.html", "bare.png"]
    assert [link.quoted for link in find_links(text)] == [True, True, False]


def test_nothing_inside_code_fences_indented_code_or_code_spans():
    text = (
        "```markdown\n![a](fenced.png)\n```\n\n"
        "~~~~\n<img src='tilde.png'>\n~~~~\n\n"
        "    ![b](indented.png)\n\n"
        "Inline `![c](span.png)` and ``[d](double`tick.png)`` but [e](real.png).\n"
    )
    assert written(text) == ["real.png"]


def test_a_code_fence_left_open_runs_to_the_end():
    assert written("[a](before.png)\n```\n[b](after.png)\n") == ["before.png"]


def test_html_comments_and_escaped_brackets_are_not_links():
    text = "<!-- ![x](commented.png) -->\n\n\\[not](escaped.png) <!-- <img src='c.png'> -->\n"
    assert written(text) == []


def test_nested_image_in_a_link_gives_both():
    assert written("[![badge](badge.svg)](report.html)") == ["badge.svg", "report.html"]


def test_brackets_that_are_not_a_link_are_left_alone():
    # An unclosed destination, a space in a bare destination, text after the title.
    assert written("[a](b.png [c](d e.png) [f](g.png 'x' y)") == []


def test_balanced_parentheses_and_escapes_in_a_bare_destination():
    [link] = find_links(r"[a](plot\(1\).png) ")
    assert link.target == "plot(1).png"
    assert written("[b](runs/(best).png)") == ["runs/(best).png"]


def test_entities_in_html_attributes_are_decoded():
    [link] = find_links('<img src="a&amp;b.png">')
    assert link.target == "a&b.png"


@pytest.mark.parametrize(
    "destination",
    [
        "https://example.com/a.png",
        "http://x/y",
        "data:image/png;base64,iVBORw0KGgo=",
        "mailto:a@b.c",
        "ftp://host/file",
        "//cdn.example/a.png",
        "#results",
        "/site/absolute.png",
        "",
    ],
)
def test_remote_urls_data_uris_anchors_and_site_paths_are_not_local(destination):
    assert local_path(destination) is None


@pytest.mark.parametrize(
    ("destination", "path"),
    [
        ("plot.png", "plot.png"),
        ("./plots/a.png", "./plots/a.png"),
        ("loss%20curve.png", "loss curve.png"),
        ("card.html#metrics", "card.html"),
        ("C:/x.png", "C:/x.png"),  # a one-letter "scheme" is a path, as in CommonMark
    ],
)
def test_relative_paths_are_local(destination, path):
    assert local_path(destination) == path


# --- resolving local files ---------------------------------------------------------------------


def test_links_resolve_from_the_report_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out" / "plots").mkdir(parents=True)
    (tmp_path / "out" / "plots" / "a.png").write_bytes(b"png")
    (tmp_path / "shared.png").write_bytes(b"png")
    text = "![a](plots/a.png#frag) ![s](../shared.png) ![r](https://x/r.png)"
    found = local_links(text, "out/report.md", tmp_path / "out")
    assert [(item.file, item.fragment) for item in found] == [
        (tmp_path / "out" / "plots" / "a.png", "frag"),
        (tmp_path / "shared.png", ""),
    ]


def test_a_missing_file_names_the_report_and_the_link(tmp_path):
    with pytest.raises(UsageError) as raised:
        local_links("![x](nope.png)", "report.md", tmp_path, roots=[tmp_path])
    assert raised.value.source == "report.md"
    assert "'nope.png'" in str(raised.value) and "does not exist" in str(raised.value)
    assert raised.value.exit_code == 2


def test_a_folder_is_refused(tmp_path):
    (tmp_path / "plots").mkdir()
    with pytest.raises(UsageError) as raised:
        local_links("[all](plots)", "report.md", tmp_path, roots=[tmp_path])
    assert "folder" in str(raised.value)


def test_files_outside_the_workspace_are_refused_symbolic_links_too(tmp_path):
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("s")
    os.symlink(outside / "secret.txt", work / "innocent.png")
    for link in ("../outside/secret.txt", "innocent.png"):
        with pytest.raises(UsageError) as raised:
            local_links(f"![x]({link})", "report.md", work, roots=[work])
        assert "outside" in str(raised.value)


def test_a_link_in_code_needs_no_file(tmp_path):
    assert local_links("`![x](nope.png)`\n", "report.md", tmp_path, roots=[tmp_path]) == []


# --- rewriting -------------------------------------------------------------------------------


def test_rewrite_changes_only_the_destinations():
    text = (
        '# Report\r\n\r\n![loss](<loss curve.png> "Loss")  [card][c]\r\n\r\n'
        "<img src=fig.png width=2>\r\n\r\n[c]: card.html\r\n"
    )
    links = find_links(text)
    urls = {link: f"https://u/{index}" for index, link in enumerate(links)}
    assert rewrite(text, urls) == (
        '# Report\r\n\r\n![loss](<https://u/0> "Loss")  [card][c]\r\n\r\n'
        '<img src="https://u/1" width=2>\r\n\r\n[c]: https://u/2\r\n'
    )


def test_rewrite_with_nothing_to_change_is_the_same_text():
    text = "é 😀 text\r\n`x`\n"
    assert rewrite(text, {}) == text


def test_url_path_encodes_what_would_break_a_link():
    assert markdown.url_path("ab/loss curve (1).png") == "ab/loss%20curve%20%281%29.png"
    assert markdown.url_path('q"<>.png') == "q%22%3C%3E.png"


def test_a_link_is_a_value():
    assert Link(1, 2, "a", "inline") == Link(1, 2, "a", "inline")


# --- the watermark -----------------------------------------------------------------------------


def test_the_watermark_is_a_hidden_comment_appended():
    body = markdown.with_watermark("# Report\n", "nightly")
    assert body == "# Report\n\n<!-- cml-infra: nightly -->"
    assert markdown.is_ours(body, "nightly")
    assert not markdown.is_ours(body, "night")
    assert not markdown.is_ours(markdown.with_watermark("x", "nightly-2"), "nightly")


def test_the_watermark_goes_first_when_the_report_ends_in_an_open_fence():
    body = markdown.with_watermark("Log:\n```\nstill open", "report")
    assert body.startswith("<!-- cml-infra: report -->\n\n")
    assert body.endswith("still open")


@pytest.mark.parametrize("title", ["", " ", "a--b", "x>y", "two\nlines"])
def test_a_title_that_cannot_stand_in_a_comment_is_refused(title):
    with pytest.raises(UsageError) as raised:
        markdown.check_title(title)
    assert raised.value.source == "--watermark-title"


def test_titles_with_spaces_and_unicode_are_fine():
    markdown.check_title("GPU run — ResNet 50")
