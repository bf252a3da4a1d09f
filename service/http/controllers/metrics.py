"""Retention and repeat-purchase metrics over HTTP (admin, finance), the program's metric
settings, and customer signals from shops and the support desk (checkout).

Every table answers as JSON, or as CSV with `?format=csv` or `Accept: text/csv`."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from litestar import Controller, Response, get, post, put
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from service.domain.access import Principal, Scope
from service.domain.clock import Clock
from service.domain.metrics import DEFAULT_WINDOW_DAYS, Colour, Granularity, MetricSettings, PurchaseCount
from service.http.auth import requires
from service.http.openapi import BODY_PROBLEM_RESPONSES, PROBLEM_RESPONSES, TableOperation, create_or_repeat
from service.http.params import ZERO_MINIMUM
from service.http.renderers import SVG, Format, cohort_chart, render, retention_chart
from service.http.responses import created_or_repeated
from service.usecases import clv, metrics, signals

From = Annotated[date, QueryParameter(name="from", description="first local day, included")]
To = Annotated[date, QueryParameter(name="to", description="last local day, included")]
Window = Annotated[int, QueryParameter(name="window_days", ge=1, le=3660, description="activity window W in days")]
Target = Annotated[
    float | None,
    QueryParameter(name="target_pct", ge=0, le=100, description="default: program's", schema_extra=ZERO_MINIMUM),
]
# Literal, not the enums: Litestar leaves the default out of a parameter whose schema is a reference
Period = Annotated[
    Literal["month", "quarter", "custom"], QueryParameter(name="granularity", description="month, quarter or custom")
]
Count = Annotated[Literal["purchases", "distinct_days"], QueryParameter(name="count")]
FormatQuery = Annotated[Format | None, QueryParameter(name="format", description="json (default) or csv")]
Accept = Annotated[str | None, HeaderParameter(name="Accept", required=False)]
Cursor = Annotated[str | None, QueryParameter(name="cursor", max_length=64)]
Limit = Annotated[int, QueryParameter(name="limit", ge=1, le=1000)]


class MetricsController(Controller):
    """Read-only figures from the rollups; each names its definition and parameters."""

    path = "/v1/metrics"
    tags = ["metrics"]
    guards = [requires(Scope.ADMIN, Scope.FINANCE)]

    @get("/retention", responses=PROBLEM_RESPONSES, operation_class=TableOperation)
    async def retention(
        self,
        principal: NamedDependency[Principal],
        start: From,
        end: To,
        granularity: Period = "month",
        window_days: Window = DEFAULT_WINDOW_DAYS,
        target_pct: Target = None,
        format: FormatQuery = None,
        accept: Accept = None,
    ) -> Response[metrics.RetentionSeries]:
        """Retention per month, quarter or custom range: B, E, N, retained, lost, reactivated,
        the seed rate, the strict rate, churn and the target check."""
        series = await metrics.retention_series(
            principal.program_id, start, end, Granularity(granularity), window_days, target_pct
        )
        return render(series, "retention", format, accept)

    @get("/retention/chart.svg", responses=PROBLEM_RESPONSES, media_type=SVG)
    async def retention_chart(
        self,
        principal: NamedDependency[Principal],
        start: From,
        end: To,
        granularity: Period = "month",
        window_days: Window = DEFAULT_WINDOW_DAYS,
        target_pct: Target = None,
    ) -> Response[str]:
        """The retention series as an SVG line chart."""
        series = await metrics.retention_series(
            principal.program_id, start, end, Granularity(granularity), window_days, target_pct
        )
        return retention_chart(series)

    @get("/repeat", responses=PROBLEM_RESPONSES, operation_class=TableOperation)
    async def repeat(
        self,
        principal: NamedDependency[Principal],
        start: From,
        end: To,
        count: Count = "purchases",
        format: FormatQuery = None,
        accept: Accept = None,
    ) -> Response[metrics.RepeatReport]:
        """Repeat customer rate, purchase frequency and average order value over a range."""
        report = await metrics.repeat_report(principal.program_id, start, end, PurchaseCount(count))
        return render(report, "repeat", format, accept)

    @get("/lifetime-value", responses=PROBLEM_RESPONSES, operation_class=TableOperation)
    async def lifetime_value(
        self,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
        format: FormatQuery = None,
        accept: Accept = None,
    ) -> Response[metrics.LifetimeValue]:
        """Historical lifetime value: net revenue per customer to date, total, mean, median."""
        ltv = await metrics.historical_ltv(principal.program_id, clock.now())
        return render(ltv, "lifetime-value", format, accept)

    @get("/cohorts", responses=PROBLEM_RESPONSES, operation_class=TableOperation)
    async def cohorts(
        self,
        principal: NamedDependency[Principal],
        start: From,
        end: To,
        format: FormatQuery = None,
        accept: Accept = None,
    ) -> Response[metrics.CohortTable]:
        """Cohort retention by month of first purchase, followed month by month to `to`."""
        return render(await metrics.cohort_table(principal.program_id, start, end), "cohorts", format, accept)

    @get("/cohorts/chart.svg", responses=PROBLEM_RESPONSES, media_type=SVG)
    async def cohorts_chart(self, principal: NamedDependency[Principal], start: From, end: To) -> Response[str]:
        """The cohort table as an SVG heat map."""
        return cohort_chart(await metrics.cohort_table(principal.program_id, start, end))

    @get("/rfm/segments", responses=PROBLEM_RESPONSES, operation_class=TableOperation)
    async def segments(
        self,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
        format: FormatQuery = None,
        accept: Accept = None,
    ) -> Response[metrics.SegmentSizes]:
        """The named RFM segments, their rules and sizes."""
        return render(await metrics.segment_sizes(principal.program_id, clock.now()), "segments", format, accept)

    @get("/rfm/customers", responses=PROBLEM_RESPONSES, operation_class=TableOperation)
    async def rfm_customers(
        self,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
        segment: Annotated[str | None, QueryParameter(name="segment", max_length=32)] = None,
        cursor: Cursor = None,
        limit: Limit = 100,
        format: FormatQuery = None,
        accept: Accept = None,
    ) -> Response[metrics.RfmPage]:
        """Customers with their R, F, M scores and segment, of one segment or all (cursor pages)."""
        page = await metrics.rfm_customers(principal.program_id, clock.now(), segment, cursor, limit)
        return render(page, "rfm", format, accept)

    @get("/sell-rates", responses=PROBLEM_RESPONSES, operation_class=TableOperation)
    async def sell_rates(
        self,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
        format: FormatQuery = None,
        accept: Accept = None,
    ) -> Response[metrics.SellRates]:
        """Upsell and cross-sell rates from the order lines' category and level."""
        return render(await metrics.sell_rates(principal.program_id, clock.now()), "sell-rates", format, accept)

    @get("/risk", responses=PROBLEM_RESPONSES, operation_class=TableOperation)
    async def risk(
        self,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
        format: FormatQuery = None,
        accept: Accept = None,
    ) -> Response[signals.RiskCounts]:
        """Customers per churn-risk colour today, and per rule that set it."""
        return render(await signals.risk_counts(principal.program_id, clock.now()), "risk", format, accept)

    @get("/risk/customers", responses=PROBLEM_RESPONSES, operation_class=TableOperation)
    async def risk_customers(
        self,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
        colour: Annotated[Colour | None, QueryParameter(name="colour")] = None,
        cursor: Cursor = None,
        limit: Limit = 100,
        format: FormatQuery = None,
        accept: Accept = None,
    ) -> Response[signals.RiskPage]:
        """Each customer's churn-risk colour and the rule that set it (cursor pages)."""
        page = await signals.risk_customers(principal.program_id, clock.now(), colour, cursor, limit)
        return render(page, "risk-customers", format, accept)

    @get("/predicted-ltv", responses=PROBLEM_RESPONSES, operation_class=TableOperation)
    async def predicted_ltv(
        self,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
        horizon_months: Annotated[int, QueryParameter(name="horizon_months", ge=1, le=120)] = 12,
        monthly_discount: Annotated[float, QueryParameter(name="monthly_discount", ge=0, le=1)] = 0.01,
        cursor: Cursor = None,
        limit: Limit = 100,
        format: FormatQuery = None,
        accept: Accept = None,
    ) -> Response[clv.PredictionPage]:
        """BG/NBD + Gamma-Gamma predictions from the cached fit: per customer and program totals."""
        page = await clv.predictions(principal.program_id, clock.now(), horizon_months, monthly_discount, cursor, limit)
        return render(page, "predicted-ltv", format, accept)


class MetricSettingsController(Controller):
    path = "/v1/metrics/settings"
    tags = ["metrics"]

    @get(guards=[requires(Scope.ADMIN, Scope.FINANCE)], responses=PROBLEM_RESPONSES)
    async def read(self, principal: NamedDependency[Principal]) -> MetricSettings:
        """The retention target and the churn-risk rules in force."""
        return await metrics.get_settings(principal.program_id)

    @put(guards=[requires(Scope.ADMIN)], status_code=HTTP_200_OK, responses=BODY_PROBLEM_RESPONSES)
    async def replace(
        self, data: JSONBody[MetricSettings], principal: NamedDependency[Principal], clock: NamedDependency[Clock]
    ) -> MetricSettings:
        """Set the retention target (default 85 %) and the churn-risk rules."""
        return await metrics.set_settings(principal.program_id, data, clock.now())


class LifetimeFitController(Controller):
    path = "/v1/metrics/predicted-ltv/fit"
    tags = ["metrics"]

    @post(guards=[requires(Scope.ADMIN)], status_code=HTTP_200_OK, responses=PROBLEM_RESPONSES)
    async def refit(self, principal: NamedDependency[Principal], clock: NamedDependency[Clock]) -> clv.Fit:
        """Fit BG/NBD and Gamma-Gamma now (the metrics job does it daily) and cache the fit."""
        return await clv.refit(principal.program_id, clock)


class SignalController(Controller):
    path = "/v1/signals"
    tags = ["metrics"]

    @post(
        guards=[requires(Scope.CHECKOUT)],
        status_code=HTTP_201_CREATED,
        responses=create_or_repeat(signals.SignalView, "Sent before: the signal as recorded"),
    )
    async def record(
        self, data: JSONBody[signals.Signal], principal: NamedDependency[Principal], clock: NamedDependency[Clock]
    ) -> Response[signals.SignalView]:
        """A complaint or support ticket opened or closed, or a satisfaction score (0..10);
        201 when new, 200 when the same signal id was sent before."""
        return created_or_repeated(*await signals.record_signal(principal, data, clock))
