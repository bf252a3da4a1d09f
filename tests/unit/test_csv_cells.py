"""CSV exports opened in a spreadsheet: text that a spreadsheet would run as a formula is
written with a leading `'`, numbers never are (a negative amount stays a number)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from service.http.controllers.finance import _csv as journal_csv
from service.http.renderers import _csv as table_csv
from service.http.renderers import spreadsheet_cell

FORMULAS = ["=1+2", "+1+2", "-1+2", "@SUM(A1)", "\t=1", "\r=1", '=HYPERLINK("http://x","y")']


@pytest.mark.parametrize("text", FORMULAS)
def test_text_a_spreadsheet_would_run_is_prefixed(text: str) -> None:
    assert spreadsheet_cell(text) == "'" + text


@pytest.mark.parametrize("value", [-250, 0, 17, -1.5, None, True, "plain", '{"reason": "=1"}', "", "a=b", "'=x"])
def test_numbers_and_other_text_are_kept(value: Any) -> None:
    assert spreadsheet_cell(value) == value


async def _rows(rows: list[tuple[Any, ...]]) -> AsyncIterator[tuple[Any, ...]]:
    for row in rows:
        yield row


async def test_the_journal_csv_prefixes_formula_text_but_not_negative_amounts() -> None:
    posted = datetime(2026, 3, 1, tzinfo=UTC)
    row = (7, posted, "=kind", "@actor", None, 1, "-account", "+unit", -250, -40, '{"reason": "x"}')
    body = b"".join([chunk async for chunk in journal_csv(_rows([row]))]).decode()
    [header, cells] = list(csv.reader(io.StringIO(body, newline="")))
    assert header[0] == "entry_id"
    assert cells == [
        "7",
        "2026-03-01T00:00:00Z",  # as every answer gives an instant
        "'=kind",
        "'@actor",
        "",
        "1",
        "'-account",
        "'+unit",
        "-250",
        "-40",
        '{"reason": "x"}',
    ]


def test_the_metric_tables_prefix_formula_text_but_not_negative_numbers() -> None:
    body = table_csv((["customer_id", "segment", "monetary"], [["=cmd|' /C calc'!A0", "-x", -12]]))
    [_, cells] = list(csv.reader(io.StringIO(body, newline="")))
    assert cells == ["'=cmd|' /C calc'!A0", "'-x", "-12"]
