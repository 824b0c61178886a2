"""cml_infra.report.markdown: cells that cannot break a table, numbers without float noise."""

from __future__ import annotations

import pytest

from cml_infra.report import markdown


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.30000000000000004, "0.3"),
        (0.1 + 0.2 - 0.3, "5.55112e-17"),
        (2.5, "2.5"),
        (2.0, "2"),
        (-0.04999999999999999, "-0.05"),
        (0.123456789, "0.123457"),
        (1234567.891, "1234568"),
        (0.00012345678, "0.000123457"),
        (1e20, "1e+20"),
        (0.0, "0"),
        (-0.0, "0"),
        (float("nan"), "nan"),
        (float("-inf"), "-inf"),
    ],
)
def test_floats_keep_six_significant_digits_and_no_noise(value, shown):
    assert markdown.number(value) == shown


@pytest.mark.parametrize("value", [0, 7, -3, 10**20])
def test_ints_stay_ints(value):
    assert markdown.number(value) == str(value)


@pytest.mark.parametrize(
    ("value", "shown"), [(0.1, "+0.1"), (-2, "-2"), (0, "0"), (0.0, "0"), (3, "+3")]
)
def test_signed_shows_the_plus(value, shown):
    assert markdown.signed(value) == shown


def test_money_has_four_decimals_as_in_status():
    assert markdown.money(0.05263) == "$0.0526"
    assert markdown.money(12) == "$12.0000"


def test_a_cell_cannot_end_the_cell_or_the_table():
    assert markdown.cell("a|b\nc\\d") == "a\\|b c\\\\d"
    assert markdown.cell("") == " "


def test_table_aligns_the_number_columns_right():
    assert markdown.table(["k", "v"], [["a", "1"]], right=[1]) == (
        "| k | v |\n| --- | ---: |\n| a | 1 |\n"
    )
