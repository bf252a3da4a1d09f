"""Record one order's whole life against a served app, as Markdown on stdout.

    LOYALTY_JOB_INTERVAL_S=2 make serve            # in one terminal
    .venv/bin/loyalty create-program "Session roasters"   # prints an admin key
    .venv/bin/python docs/sessions/record_order_life.py --admin-key lk.... > docs/sessions/order-life.md

Every request goes over HTTP to the served app; the release of pending points is done by
the app's own scheduled job (the program's return window is set to 0 days so the session
need not wait 14). Secrets in the output are shortened.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from recorder import Recorder  # docs/sessions/recorder.py, beside this script


def record(base_url: str, admin: str) -> str:
    r = Recorder(base_url)
    r.say(
        f"# One order's life against the served app\n\nRecorded {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by "
        "`docs/sessions/record_order_life.py`; every step is a real request to `make serve`.\n"
    )
    shop, till, audit = r.set_up_program(admin)
    rules = {
        "currency": "EUR",
        "points_per_unit": 1,
        "unit_minor": 100,
        "category_multipliers": {"beans": 20000},
        "campaigns": [
            {
                "name": "autumn",
                "starts_on": "2026-11-01",
                "ends_on": "2026-11-30",
                "bonus_points": 25,
                "customer_cap": 25,
            }
        ],
    }
    r.call("Publish earning rules", "POST", "/v1/earning/rules", admin, rules, **{"Idempotency-Key": "rules-v1"})

    r.say("## At the till\n")
    customer = r.call(
        "Enrol the customer",
        "POST",
        "/v1/customers",
        till,
        {"external_id": "crm-4711", "email": "ann@example.com", "name": "Ann"},
    )
    ann = customer["id"]
    order = {
        "order_id": "AMS-10001",
        "customer_id": ann,
        "currency": "EUR",
        "placed_at": datetime.now(UTC).isoformat(),
        "lines": [
            {"sku": "beans-ethiopia-250", "category": "beans", "unit_price": 1250, "quantity": 2},
            {"sku": "mug-white", "category": "homeware", "unit_price": 1800, "quantity": 1, "discount": 300},
        ],
    }
    orders = f"/v1/shops/{shop['id']}/orders"
    r.call("Award the order (points per rule for the receipt)", "POST", orders, till, order)
    r.call("The till sends it again (network retry): the same answer, no second award", "POST", orders, till, order)
    r.call(
        "The same order id with other content is refused", "POST", orders, till, order | {"lines": order["lines"][:1]}
    )
    r.call("Balance: the points are pending", "GET", f"/v1/customers/{ann}/balance", till)

    r.say("## The return window ends; the app's scheduled job releases the points\n")
    for _ in range(60):
        state = r.http.get(f"{orders}/AMS-10001", headers={"Authorization": f"Bearer {till}"}).json()
        if state["status"] == "released":
            break
        time.sleep(1)
    r.call("The order, released", "GET", f"{orders}/AMS-10001", till)
    r.call("Balance: available now", "GET", f"/v1/customers/{ann}/balance", till)

    r.say("## Redeeming at the next visit\n")
    r.call(
        "What would a 0.40 EUR discount cost?",
        "POST",
        "/v1/redemptions/quote",
        till,
        {"customer_id": ann, "discount_minor": 40, "order_total_minor": 900},
    )
    hold = r.call(
        "Reserve 40 points (a hold)",
        "POST",
        "/v1/holds",
        till,
        {"customer_id": ann, "amount": 40, "reference": "AMS-10002"},
        **{"Idempotency-Key": "redeem-10002"},
    )
    r.call(
        "Not enough points is refused: 409 says how many are available",
        "POST",
        "/v1/holds",
        till,
        {"customer_id": ann, "amount": 5000},
        **{"Idempotency-Key": "redeem-too-much"},
    )
    r.call(
        "The basket changed: capture 30 of the 40",
        "POST",
        f"/v1/holds/{hold['id']}/capture",
        till,
        {"amount": 30},
        **{"Idempotency-Key": "capture-10002"},
    )

    r.say("## A partial return of the first order\n")
    refund = {"refund_id": "RET-1", "lines": [{"line": 1, "quantity": 1}]}
    r.call("The mug comes back", "POST", f"{orders}/AMS-10001/refunds", till, refund)
    r.call("Sent twice: the same refund", "POST", f"{orders}/AMS-10001/refunds", till, refund)
    r.call(
        "Refunding more than was bought is refused",
        "POST",
        f"{orders}/AMS-10001/refunds",
        till,
        {"refund_id": "RET-2", "amount": 5000},
    )
    r.call("The order now", "GET", f"{orders}/AMS-10001", till)
    r.call("Balance", "GET", f"/v1/customers/{ann}/balance", till)
    r.call("The customer's history in plain words", "GET", f"/v1/customers/{ann}/history", till)

    r.say("## Finance\n")
    r.call("Trial balance", "GET", "/v1/finance/trial-balance", audit)
    time.sleep(2)  # the sealer runs every second
    r.call("Hash chain verification", "GET", "/v1/finance/chain", audit)
    return "\n".join(r.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--admin-key", required=True)
    args = parser.parse_args()
    print(record(args.base_url, args.admin_key), flush=True)


if __name__ == "__main__":
    main()
