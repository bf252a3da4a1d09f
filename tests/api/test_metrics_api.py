"""The metrics over HTTP: orders placed through the order API, figures read back as JSON,
CSV and SVG, signals and the churn-risk light, predicted lifetime value from a cached fit."""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ElementTree
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from service.domain.clock import ManualClock
from tests.api.orders_support import RULES
from tests.api.support import assert_problem, enrol_customer
from tests.conftest import ProgramFixture

NOW = datetime(2026, 6, 15, 10, 0, tzinfo=UTC)
LEVELS = {"basic": 1, "premium": 2}


def order(customer: str, order_id: str, at: datetime, *items: tuple[str, str, int]) -> dict[str, Any]:
    lines = [
        {"sku": sku, "category": category, "unit_price": price, "quantity": 1, "level": LEVELS.get(sku)}
        for sku, category, price in items
    ]
    return {
        "order_id": order_id,
        "customer_id": customer,
        "currency": "EUR",
        "placed_at": at.isoformat(),
        "lines": lines,
    }


async def shop(client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock) -> dict[str, str]:
    """Three customers over five months; returns their ids by name."""
    clock.set(NOW - timedelta(days=400))
    rules = await client.post(
        "/v1/earning/rules", json=RULES, headers={**program.auth("admin"), "Idempotency-Key": "r"}
    )
    assert rules.status_code == 201, rules.text
    clock.set(NOW)
    ids = {name: await enrol_customer(client, program, name) for name in ("ann", "bob", "cat", "dan")}
    day = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
    placed = [
        order(ids["ann"], "A1", day, ("basic", "coffee", 500)),
        order(ids["ann"], "A2", day + timedelta(days=31), ("premium", "coffee", 900)),  # upsell
        order(ids["ann"], "A3", day + timedelta(days=62), ("mug", "homeware", 1500)),  # cross-sell
        order(ids["bob"], "B1", day, ("basic", "coffee", 400)),
        order(ids["bob"], "B2", day, ("basic", "coffee", 400)),  # same day: 2 purchases, 1 day
        order(ids["cat"], "C1", day + timedelta(days=120), ("basic", "coffee", 700)),
    ]
    for body in placed:
        response = await client.post(f"/v1/shops/{program.shop_id}/orders", json=body, headers=program.auth("checkout"))
        assert response.status_code == 201, response.text
    return ids


async def test_retention_series_json_csv_and_chart(
    client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    await shop(client, program, clock)
    params: dict[str, str | int] = {"from": "2026-02-01", "to": "2026-05-31", "window_days": 30}
    response = await client.get("/v1/metrics/retention", params=params, headers=program.auth("finance"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["window_days"] == 30 and body["target_pct"] == 85.0 and "E - N" in body["definition"]
    feb, mar, apr, may = body["periods"]
    # at 1 Feb: ann and bob bought on 10 Jan (within 30 days): B = 2; at 1 Mar only ann (10 Feb)
    assert (feb["b"], feb["e"], feb["n"], feb["retained"], feb["lost"]) == (2, 1, 0, 1, 1)
    assert (feb["rate_pct"], feb["strict_rate_pct"], feb["churn_rate_pct"], feb["meets_target"]) == (
        50.0,
        50.0,
        50.0,
        False,
    )
    assert (mar["b"], mar["e"], mar["retained"]) == (1, 1, 1)  # ann again on 13 March
    assert (apr["b"], apr["e"], apr["rate_pct"]) == (1, 0, 0.0)
    assert (may["b"], may["e"], may["n"], may["rate_pct"], may["meets_target"]) == (0, 1, 1, None, None)  # cat

    as_csv = await client.get(
        "/v1/metrics/retention", params=params, headers={**program.auth("admin"), "Accept": "text/csv"}
    )
    assert as_csv.headers["content-type"] == "text/csv; charset=utf-8"
    table = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [row["b"] for row in table] == ["2", "1", "1", "0"] and table[3]["rate_pct"] == ""
    quarter = await client.get(
        "/v1/metrics/retention",
        params={"from": "2026-01-01", "to": "2026-06-30", "granularity": "quarter", "format": "csv", "target_pct": 40},
        headers=program.auth("admin"),
    )
    assert quarter.text.splitlines()[0].startswith("start,end,window_days,b,e,n")
    assert [line.split(",")[0] for line in quarter.text.splitlines()[1:]] == ["2026-01-01", "2026-04-01"]

    chart = await client.get("/v1/metrics/retention/chart.svg", params=params, headers=program.auth("admin"))
    assert chart.headers["content-type"].startswith("image/svg+xml")
    assert chart.text.startswith("<svg") and "<polyline" in chart.text and "2026-02" in chart.text
    assert ElementTree.fromstring(chart.text).tag == "{http://www.w3.org/2000/svg}svg"  # noqa: S314 (our own output)


async def test_repeat_value_cohorts_rfm_and_sell_rates(
    client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    ids = await shop(client, program, clock)
    admin = program.auth("admin")
    year = {"from": "2026-01-01", "to": "2026-12-31"}
    purchases = (await client.get("/v1/metrics/repeat", params=year, headers=admin)).json()
    assert purchases["figures"]["counted_as"] == "purchases"
    # ann 3, bob 2 (same day), cat 1: repeat 2 of 3; 6 purchases, net 4400
    assert purchases["figures"]["repeat_customer_rate_pct"] == 66.67
    assert (purchases["figures"]["purchase_frequency"], purchases["figures"]["average_order_value"]) == (2.0, 733.33)
    days = (await client.get("/v1/metrics/repeat", params={**year, "count": "distinct_days"}, headers=admin)).json()
    assert days["figures"]["repeat_customer_rate_pct"] == 33.33 and days["figures"]["counted"] == 5

    ltv = (await client.get("/v1/metrics/lifetime-value", headers=admin)).json()
    assert (ltv["customers"], ltv["net"], ltv["mean"], ltv["as_of"]) == (3, 4400, 1466.67, "2026-06-15")

    cohorts = (
        await client.get("/v1/metrics/cohorts", params={"from": "2026-01-01", "to": "2026-05-31"}, headers=admin)
    ).json()
    january, may = cohorts["rows"]
    assert (january["cohort"], january["size"], january["active"]) == ("2026-01-01", 2, [2, 1, 1, 0, 0])
    assert january["retention_pct"] == [100.0, 50.0, 50.0, 0.0, 0.0]
    assert (may["cohort"], may["active"]) == ("2026-05-01", [1])
    svg = await client.get(
        "/v1/metrics/cohorts/chart.svg", params={"from": "2026-01-01", "to": "2026-05-31"}, headers=admin
    )
    assert svg.headers["content-type"].startswith("image/svg+xml") and "<rect" in svg.text
    cells = ElementTree.fromstring(svg.text).findall("{http://www.w3.org/2000/svg}rect")  # noqa: S314
    assert len(cells) == 1 + 5 + 1  # the background, January's 5 months, May's 1

    segments = (await client.get("/v1/metrics/rfm/segments", headers=admin)).json()
    assert segments["customers"] == 3 and sum(s["size"] for s in segments["segments"]) == 3
    everyone = (await client.get("/v1/metrics/rfm/customers", params={"limit": 2}, headers=admin)).json()
    assert len(everyone["items"]) == 2 and everyone["next_cursor"] == everyone["items"][1]["customer_id"]
    rest = (
        await client.get("/v1/metrics/rfm/customers", params={"cursor": everyone["next_cursor"]}, headers=admin)
    ).json()
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    by_id = {item["customer_id"]: item for item in everyone["items"] + rest["items"]}
    assert (by_id[ids["cat"]]["r"], by_id[ids["cat"]]["frequency"], by_id[ids["cat"]]["segment"]) == (4, 1, "new")
    # ann: 3 purchases, last 94 days ago (R 2, F 4); bob: 2 purchases on the oldest day (R 1, F 2)
    assert (by_id[ids["ann"]]["r"], by_id[ids["ann"]]["f"], by_id[ids["ann"]]["segment"]) == (2, 4, "at_risk")
    assert (by_id[ids["bob"]]["r"], by_id[ids["bob"]]["f"], by_id[ids["bob"]]["segment"]) == (1, 2, "hibernating")
    one = await client.get("/v1/metrics/rfm/customers", params={"segment": "new", "format": "csv"}, headers=admin)
    assert one.text.splitlines()[1].startswith(ids["cat"])
    bad = await client.get("/v1/metrics/rfm/customers", params={"segment": "vip"}, headers=admin)
    assert assert_problem(bad, 422, "invalid-input")["field"] == "segment"

    sells = (await client.get("/v1/metrics/sell-rates", headers=admin)).json()
    assert (sells["repeat_customers"], sells["upsold"], sells["cross_sold"]) == (2, 1, 1)
    assert (sells["upsell_rate_pct"], sells["cross_sell_rate_pct"], sells["as_of"]) == (50.0, 50.0, "2026-06-15")


async def test_signals_and_the_churn_risk_light(
    client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    ids = await shop(client, program, clock)
    till = program.auth("checkout")
    clock.set(datetime(2026, 5, 25, 10, 0, tzinfo=UTC))  # cat bought 10 May: 15 days ago

    def signal(signal_id: str, kind: str, **more: Any) -> dict[str, Any]:
        return {
            "signal_id": signal_id,
            "customer_id": ids["cat"],
            "kind": kind,
            "occurred_at": "2026-05-20T10:00:00Z",
        } | more

    low = await client.post("/v1/signals", json=signal("s1", "satisfaction", score=4), headers=till)
    assert low.status_code == 201, low.text
    again = await client.post("/v1/signals", json=signal("s1", "satisfaction", score=4), headers=till)
    assert again.status_code == 200
    changed = await client.post("/v1/signals", json=signal("s1", "satisfaction", score=9), headers=till)
    assert assert_problem(changed, 409, "conflict")["field"] == "signal_id"
    missing = await client.post("/v1/signals", json=signal("s2", "ticket_opened"), headers=till)
    assert assert_problem(missing, 422, "invalid-input")["field"] == "reference"
    unknown = await client.post("/v1/signals", json=signal("s2", "satisfaction", score=5, mood="sad"), headers=till)
    assert assert_problem(unknown, 422, "invalid-input")["field"] == "mood"
    admin = program.auth("admin")
    risk = (await client.get("/v1/metrics/risk/customers", headers=admin)).json()
    colours = {item["customer_id"]: (item["colour"], item["rule"]) for item in risk["items"]}
    assert colours[ids["cat"]] == ("orange", "satisfaction score below 7")
    # dan never bought, and joined on 15 June, after the day of this view: not inactive
    assert colours[ids["dan"]] == ("green", "no risk rule applies")
    assert colours[ids["ann"]] == ("red", "inactive 60+ days")  # last bought 13 March

    complaint = await client.post("/v1/signals", json=signal("s3", "complaint_opened", reference="C-9"), headers=till)
    assert complaint.status_code == 201
    counts = (await client.get("/v1/metrics/risk", headers=admin)).json()
    assert (counts["customers"], counts["red"], counts["orange"], counts["green"]) == (4, 3, 0, 1)
    assert counts["by_rule"]["red: open complaint"] == 1
    await client.post("/v1/signals", json=signal("s4", "complaint_closed", reference="C-9"), headers=till)
    await client.post("/v1/signals", json=signal("s5", "satisfaction", score=9), headers=till)
    reds = (await client.get("/v1/metrics/risk/customers", params={"colour": "green"}, headers=admin)).json()
    assert {item["customer_id"] for item in reds["items"]} == {ids["cat"], ids["dan"]}

    # rules per program: orange from 10 days without a purchase
    rules = {"retention_target_pct": 90, "risk": {"orange_inactive_days": 10, "red_inactive_days": 60}}
    saved = await client.put("/v1/metrics/settings", json=rules, headers=admin)
    assert saved.status_code == 200, saved.text
    counts = (await client.get("/v1/metrics/risk", headers=admin)).json()
    assert (counts["orange"], counts["by_rule"]) == (1, counts["by_rule"]) and "orange: inactive 10+ days" in counts[
        "by_rule"
    ]
    bad = await client.put("/v1/metrics/settings", json={"risk": {"orange_inactive_days": 70}}, headers=admin)
    assert assert_problem(bad, 422, "invalid-input")["field"] == "risk.orange_inactive_days"
    target = (
        await client.get("/v1/metrics/retention", params={"from": "2026-02-01", "to": "2026-02-28"}, headers=admin)
    ).json()
    assert target["target_pct"] == 90.0


async def test_predicted_lifetime_value_from_the_cached_fit(
    client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    await shop(client, program, clock)
    admin = program.auth("admin")
    none_yet = await client.get("/v1/metrics/predicted-ltv", headers=admin)
    assert assert_problem(none_yet, 404, "not-found")["field"] == "fit"
    fitted = await client.post("/v1/metrics/predicted-ltv/fit", headers=admin)
    assert fitted.status_code == 200, fitted.text
    fit = fitted.json()
    assert set(fit["bgnbd"]) >= {"r", "alpha", "a", "b", "log_likelihood"} and fit["bgnbd"]["customers"] == 3
    page = (await client.get("/v1/metrics/predicted-ltv", params={"horizon_months": 6}, headers=admin)).json()
    assert page["customers"] == 3 and page["horizon_months"] == 6 and page["fit"]["bgnbd"] == fit["bgnbd"]
    assert all(0 <= item["p_alive"] <= 1 and item["clv"] >= 0 for item in page["items"])
    assert abs(sum(item["clv"] for item in page["items"]) - page["clv"]) < 0.05
    longer = (await client.get("/v1/metrics/predicted-ltv", params={"horizon_months": 24}, headers=admin)).json()
    assert longer["expected_purchases"] > page["expected_purchases"]
    as_csv = await client.get("/v1/metrics/predicted-ltv", params={"format": "csv"}, headers=admin)
    assert as_csv.text.startswith("customer_id,x,t_x,t,mean_value,expected_purchases,p_alive")


async def test_bad_requests_name_the_field(client: httpx.AsyncClient, program: ProgramFixture) -> None:
    admin = program.auth("admin")
    backwards = await client.get(
        "/v1/metrics/retention", params={"from": "2026-03-01", "to": "2026-02-01"}, headers=admin
    )
    assert assert_problem(backwards, 422, "invalid-input")["field"] == "to"
    window = await client.get(
        "/v1/metrics/retention", params={"from": "2026-01-01", "to": "2026-02-01", "window_days": 0}, headers=admin
    )
    assert assert_problem(window, 422, "invalid-input")["field"] == "window_days"
    for path in ("/v1/metrics/retention", "/v1/metrics/cohorts", "/v1/metrics/repeat"):
        for field, params in (
            ("from", {"from": "0001-01-01", "to": "2026-01-01"}),
            ("to", {"from": "2026-01-01", "to": "9999-12-31"}),
        ):
            beyond = await client.get(path, params=params, headers=admin)
            assert assert_problem(beyond, 422, "invalid-input")["field"] == field, path
    empty = (
        await client.get("/v1/metrics/retention", params={"from": "2026-01-01", "to": "2026-01-31"}, headers=admin)
    ).json()
    assert empty["periods"][0]["b"] == 0 and empty["periods"][0]["rate_pct"] is None
    forbidden = await client.get("/v1/metrics/lifetime-value", headers=program.auth("checkout"))
    assert_problem(forbidden, 403, "forbidden")


async def test_a_customer_who_never_bought_is_inactive_since_joining(
    client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    """Not red from the day they join: inactive since the local day of enrolment."""
    clock.set(datetime(2026, 3, 1, 22, 30, tzinfo=UTC))  # 23:30 in Amsterdam: joined on 1 March, local
    eve = await enrol_customer(client, program, "eve")
    admin = program.auth("admin")

    async def light(day: datetime) -> tuple[str, str, int, bool]:
        clock.set(day)
        items = (await client.get("/v1/metrics/risk/customers", headers=admin)).json()["items"]
        item = next(item for item in items if item["customer_id"] == eve)
        return item["colour"], item["rule"], item["days_inactive"], item["never_bought"]

    assert await light(datetime(2026, 3, 11, 10, 0, tzinfo=UTC)) == ("green", "no risk rule applies", 10, True)
    assert await light(datetime(2026, 3, 31, 10, 0, tzinfo=UTC)) == ("orange", "inactive 30+ days", 30, True)
    assert await light(datetime(2026, 4, 30, 10, 0, tzinfo=UTC)) == ("red", "inactive 60+ days", 60, True)
