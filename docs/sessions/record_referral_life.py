"""Record one referral's whole life against a served app, as Markdown on stdout: a code,
redemption (and two refusals), qualification, both rewards and a milestone paid by the
job, then a refund that cancels the referral and claws the rewards back.

    export LOYALTY_PGDATA=/tmp/ref-pgdata LOYALTY_PORT=8766
    LOYALTY_JOB_INTERVAL_S=2 .venv/bin/loyalty serve          # in one terminal
    .venv/bin/loyalty create-program "Session roasters"        # prints an admin key
    .venv/bin/python docs/sessions/record_referral_life.py --base-url http://127.0.0.1:8766 \\
        --admin-key lk.... > docs/sessions/referral-life.md

Every request goes over HTTP to the served app; the rewards are paid by the app's own
scheduled job (the program's return window is set to 0 days, so the qualifying order's
rewards are due at the job's next run). Secrets in the output are shortened.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from recorder import Recorder  # docs/sessions/recorder.py, beside this script

SETTINGS = {
    "enabled": True,
    "redeem_window_days": 30,
    "min_order_minor": 2000,
    "referrer_reward": {"kind": "points", "amount": 500},
    "referee_reward": {"kind": "credit", "amount": 1000},
    "milestones": [
        {"count": 1, "reward": {"kind": "tier", "tier_code": "silver", "tier_days": 90}},
        {"count": 10, "reward": {"kind": "points", "amount": 1000}},
    ],
    "fraud_rules": {"referee_has_orders": True, "shared_email": True, "shared_device": True, "shared_payment": True},
    "cap": {"count": 20, "period_days": 30},
    "share_url_template": "https://roasters.example/r/{code}",
}
LADDER = {
    "basis": "points",
    "window": "rolling_12_months",
    "levels": [
        {"code": "bronze", "name": "Bronze", "threshold": 0},
        {"code": "silver", "name": "Silver", "threshold": 1000, "earn_multiplier_bp": 12000},
    ],
}


def record(base_url: str, admin: str) -> str:
    r = Recorder(base_url)
    r.say(
        f"# One referral's life against the served app\n\nRecorded {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by "
        "`docs/sessions/record_referral_life.py`; every step is a real request to `loyalty serve`.\n"
    )
    shop, till, audit = r.set_up_program(admin)
    rules = {"currency": "EUR", "points_per_unit": 1, "unit_minor": 100}
    r.call("Publish earning rules", "POST", "/v1/earning/rules", admin, rules, **{"Idempotency-Key": "rules-v1"})
    r.call(
        "The tier ladder (the milestone grants Silver)",
        "PUT",
        "/v1/tiers",
        admin,
        LADDER,
        **{"Idempotency-Key": "ladder-v1"},
    )
    r.call(
        "Referral rules: 500 points for the referrer, 10.00 EUR of credit for the friend, Silver for 90 days"
        " at the first successful referral",
        "PUT",
        "/v1/referrals/settings",
        admin,
        SETTINGS,
        **{"Idempotency-Key": "referrals-v1"},
    )

    r.say("## Ann shares her code\n")
    ann = r.call(
        "Enrol Ann",
        "POST",
        "/v1/customers",
        till,
        {"external_id": "crm-4711", "email": "Ann.Smith@gmail.com", "name": "Ann"},
    )["id"]
    ann_app = r.call("A token for Ann's app", "POST", f"/v1/customers/{ann}/tokens", till)["token"]
    code = r.call("Ann's code and share link (made on the first request)", "GET", "/v1/me/referral-code", ann_app)
    r.call(
        "The shop records the hashes of Ann's phone and card",
        "POST",
        f"/v1/customers/{ann}/fingerprints",
        till,
        {"device_hashes": ["sha256:7f3a91c2"], "payment_hashes": ["sha256:c0ffee42"]},
    )

    r.say("## Bob signs up and redeems it in the app\n")
    bob = r.call(
        "Enrol Bob",
        "POST",
        "/v1/customers",
        till,
        {"external_id": "crm-4712", "email": "bob@example.com", "name": "Bob"},
    )["id"]
    bob_app = r.call("A token for Bob's app", "POST", f"/v1/customers/{bob}/tokens", till)["token"]
    r.call(
        "Redeemed from Ann's phone: refused (shared device)",
        "POST",
        "/v1/me/referral",
        bob_app,
        {"code": code["code"], "device_hash": "sha256:7f3a91c2"},
    )
    r.call("Ann redeeming her own code is refused", "POST", "/v1/me/referral", ann_app, {"code": code["code"]})
    redemption = {"code": code["code"].lower(), "device_hash": "sha256:b0b0b0b0"}
    r.call(
        "Bob redeems the code (any case) from his own phone: pending", "POST", "/v1/me/referral", bob_app, redemption
    )
    r.call("Sent again: the same referral, 200", "POST", "/v1/me/referral", bob_app, redemption)
    r.call("Ann sees the referral in her app", "GET", "/v1/me/referrals", ann_app)

    r.say("## Bob's first order qualifies the referral\n")
    orders = f"/v1/shops/{shop['id']}/orders"
    order = {
        "order_id": "AMS-20001",
        "customer_id": bob,
        "currency": "EUR",
        "placed_at": datetime.now(UTC).isoformat(),
        "lines": [{"sku": "beans-kenya-500", "category": "beans", "unit_price": 2400, "quantity": 1}],
    }
    r.call("Award the order (24.00 EUR, at least the 20.00 EUR minimum)", "POST", orders, till, order)
    r.call("Bob's referral: qualified, rewards due when the order is released", "GET", "/v1/me/referrals", bob_app)

    r.say("## The return window ends; the app's scheduled job pays the rewards\n")
    for _ in range(60):
        page = r.http.get("/v1/me/referrals", headers={"Authorization": f"Bearer {bob_app}"}).json()
        if page["items"] and page["items"][0]["status"] == "rewarded":
            break
        time.sleep(1)
    r.call("The referral, rewarded: each reward linked to its entry or tier grant", "GET", "/v1/me/referrals", ann_app)
    r.call("Ann's balance: 500 points", "GET", f"/v1/customers/{ann}/balance", till)
    r.call("Ann's tier: Silver, granted for 90 days (the milestone)", "GET", f"/v1/customers/{ann}/tier", till)
    r.call("Bob's balance: 10.00 EUR of store credit and his order's points", "GET", "/v1/me/balance", bob_app)
    r.call("Ann's history in plain words", "GET", f"/v1/customers/{ann}/history", till)
    r.call("Bob's history in plain words", "GET", "/v1/me/history", bob_app)

    r.say("## Bob then returns most of the order: the referral is cancelled, the rewards clawed back\n")
    refund = {"refund_id": "RET-1", "amount": 1400}
    r.call(
        "Refund 14.00 EUR: 10.00 EUR remain, below the 20.00 EUR minimum",
        "POST",
        f"{orders}/AMS-20001/refunds",
        till,
        refund,
    )
    r.call("The referral, cancelled: what each clawback took back", "GET", "/v1/me/referrals", ann_app)
    r.call("Ann's balance: the 500 points are taken back", "GET", f"/v1/customers/{ann}/balance", till)
    r.call("Ann's tier: the granted Silver ended", "GET", f"/v1/customers/{ann}/tier", till)
    r.call("Bob's history: the credit taken back", "GET", "/v1/me/history", bob_app)

    r.say("## Results\n")
    r.call("The program's referral stats", "GET", "/v1/referrals/stats", audit)
    r.call("Ann's stats as a referrer", "GET", f"/v1/customers/{ann}/referrals/stats", audit)
    r.call(
        "The lifecycle events of the referral",
        "GET",
        "/v1/events?types=referral.redeemed&types=referral.qualified&types=referral.rewarded&types=referral.cancelled",
        admin,
    )
    r.call(
        "Trial balance: referral_rewards and credit_issued carry the rewards", "GET", "/v1/finance/trial-balance", audit
    )
    return "\n".join(r.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8766")
    parser.add_argument("--admin-key", required=True)
    args = parser.parse_args()
    print(record(args.base_url, args.admin_key), flush=True)


if __name__ == "__main__":
    main()
