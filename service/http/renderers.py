"""The metrics' representations: JSON, CSV (`?format=csv` or `Accept: text/csv`) and SVG
charts that open in a browser. Presentation only; the figures come from the use cases."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import date
from typing import Any, Literal
from xml.sax.saxutils import escape

import msgspec
from litestar import Response

from service.usecases import clv, metrics, signals

Format = Literal["json", "csv"]
SVG = "image/svg+xml"
Table = tuple[list[str], list[list[Any]]]


def _table(result: msgspec.Struct) -> Table:
    """The rows of a result as one CSV table."""
    if isinstance(result, metrics.RetentionSeries):
        header = ["start", "end", "window_days", "b", "e", "n", "retained", "lost", "reactivated"]
        header += ["rate_pct", "strict_rate_pct", "churn_rate_pct", "target_pct", "meets_target"]
        return header, [
            [
                *(p.period.start, p.period.end, p.window_days, p.b, p.e, p.n, p.retained, p.lost, p.reactivated),
                *(p.rate_pct, p.strict_rate_pct, p.churn_rate_pct, p.target_pct, p.meets_target),
            ]
            for p in result.periods
        ]
    if isinstance(result, metrics.CohortTable):
        width = max((len(row.active) for row in result.rows), default=0)
        header = ["cohort", "size"] + [f"m{k}_pct" for k in range(width)]
        return header, [[row.cohort, row.size, *row.retention_pct] for row in result.rows]
    if isinstance(result, metrics.RfmPage):
        header = ["customer_id", "recency_days", "frequency", "monetary", "r", "f", "m", "segment"]
        return header, [[getattr(item, name) for name in header] for item in result.items]
    if isinstance(result, signals.RiskPage):
        header = ["customer_id", "colour", "rule", "days_inactive", "never_bought", "open_complaints", "open_tickets"]
        header += ["last_score"]
        return header, [[getattr(item, name) for name in header] for item in result.items]
    if isinstance(result, clv.PredictionPage):
        header = ["customer_id", "x", "t_x", "t", "mean_value", "expected_purchases", "p_alive"]
        header += ["expected_value", "clv"]
        return header, [[getattr(item, name) for name in header] for item in result.items]
    return _flat(msgspec.to_builtins(result))


def _flat(record: dict[str, Any]) -> Table:
    """One row of a nested record: keys joined with dots, lists as their JSON."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        elif isinstance(value, list):
            flat[prefix] = msgspec.json.encode(value).decode()
        else:
            flat[prefix] = value

    walk("", record)
    return list(flat), [list(flat.values())]


# A cell a spreadsheet would read as a formula (OWASP's "CSV injection"): text starting with
# one of these. Such text is written with a leading `'`, which spreadsheets show as text.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows rather than runs: text starting like a formula gets
    a leading `'`. Only text: numbers (a negative amount among them) are left as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header, rows = table
    writer.writerow(header)
    for row in rows:
        writer.writerow(
            [
                "" if value is None else value.isoformat() if isinstance(value, date) else spreadsheet_cell(value)
                for value in row
            ]
        )
    return buffer.getvalue()


def wants_csv(format: Format | None, accept: str | None) -> bool:
    """`?format=` decides; without it, an Accept header naming text/csv before JSON does."""
    if format is not None:
        return format == "csv"
    if not accept:
        return False
    csv_at, json_at = accept.find("text/csv"), accept.find("application/json")
    return csv_at >= 0 and (json_at < 0 or csv_at < json_at)


def render(result: msgspec.Struct, name: str, format: Format | None, accept: str | None) -> Response[Any]:
    """The result as JSON, or its table as CSV."""
    if wants_csv(format, accept):
        return Response(
            _csv(_table(result)),
            media_type="text/csv",  # Litestar adds "; charset=utf-8" to text types
            headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
        )
    return Response(msgspec.json.encode(result), media_type="application/json")


# --- SVG -------------------------------------------------------------------------------

_FONT = "font-family='sans-serif' font-size='11'"


def _svg(width: int, height: int, title: str, body: list[str]) -> Response[Any]:
    text = (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' viewBox='0 0 {width} {height}'>"
        f"<title>{escape(title)}</title><rect width='100%' height='100%' fill='white'/>"
        f"<text x='10' y='18' font-family='sans-serif' font-size='14'>{escape(title)}</text>{''.join(body)}</svg>"
    )
    return Response(text, media_type=SVG)


def _polyline(points: Sequence[tuple[float, float | None]], colour: str, dash: str = "") -> str:
    drawn = " ".join(f"{x:.1f},{y:.1f}" for x, y in points if y is not None)
    style = f" stroke-dasharray='{dash}'" if dash else ""
    return f"<polyline points='{drawn}' fill='none' stroke='{colour}' stroke-width='2'{style}/>"


def retention_chart(series: metrics.RetentionSeries) -> Response[Any]:
    """Seed and strict retention per period, with the target as a dashed line."""
    width, height, left, top, bottom = 720, 360, 50, 40, 60
    plot_h = height - top - bottom
    count = max(len(series.periods), 1)
    step = (width - left - 20) / max(count - 1, 1)
    rates = [p.rate_pct for p in series.periods if p.rate_pct is not None]
    high = max([100.0, series.target_pct, *rates])

    def y(value: float | None) -> float | None:
        return None if value is None else top + plot_h * (1 - value / high)

    def x(index: int) -> float:
        return left + index * step

    body = [f"<line x1='{left}' y1='{top + plot_h}' x2='{width - 20}' y2='{top + plot_h}' stroke='black'/>"]
    for tick in range(0, int(high) + 1, 20):
        body.append(f"<text x='10' y='{y(tick) or 0:.1f}' {_FONT}>{tick} %</text>")
    body.append(_polyline([(left, y(series.target_pct)), (width - 20, y(series.target_pct))], "#999", "6 4"))
    body.append(_polyline([(x(i), y(p.rate_pct)) for i, p in enumerate(series.periods)], "#1f77b4"))
    body.append(_polyline([(x(i), y(p.strict_rate_pct)) for i, p in enumerate(series.periods)], "#ff7f0e"))
    for i, period in enumerate(series.periods):
        label = period.period.start.isoformat()[:7]
        body.append(f"<text x='{x(i):.1f}' y='{height - 40}' {_FONT} text-anchor='middle'>{label}</text>")
    legend = f"seed ((E - N) / B) (blue), strict retained / B (orange), target {series.target_pct} % (dashed)"
    body.append(f"<text x='{left}' y='{height - 15}' {_FONT}>{escape(legend)}; W = {series.window_days} days</text>")
    return _svg(width, height, "Retention by period", body)


def cohort_chart(table: metrics.CohortTable) -> Response[Any]:
    """The cohort table as a heat map: darker is a higher share of the cohort buying."""
    cell, left, top = 36, 110, 50
    width = max((len(row.active) for row in table.rows), default=1)
    body = []
    for k in range(width):
        body.append(f"<text x='{left + k * cell + cell / 2}' y='{top - 6}' {_FONT} text-anchor='middle'>m{k}</text>")
    for r, row in enumerate(table.rows):
        y = top + r * cell
        body.append(f"<text x='10' y='{y + cell / 2 + 4}' {_FONT}>{row.cohort.isoformat()[:7]} ({row.size})</text>")
        for k, share in enumerate(row.retention_pct):
            shade = 255 - int(200 * (share or 0) / 100)
            body.append(
                f"<rect x='{left + k * cell}' y='{y}' width='{cell - 2}' height='{cell - 2}'"
                f" fill='rgb({shade},{shade},255)'/>"
                f"<text x='{left + k * cell + cell / 2 - 1}' y='{y + cell / 2 + 4}' {_FONT} text-anchor='middle'>"
                f"{'' if share is None else round(share)}</text>"
            )
    total_w = left + width * cell + 20
    total_h = top + len(table.rows) * cell + 20
    return _svg(max(total_w, 320), total_h, "Cohort retention (% of cohort buying in month k)", body)
