"""The pure referral rules: codes, email normalisation, the fraud checks, rewards and milestones."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.errors import (
    DomainError,
    InvalidInput,
    RedeemWindowClosed,
    RefereeAlreadyReferred,
    RefereeHasOrders,
    ReferralCapReached,
    ReferralCodeDisabled,
    ReferralsDisabled,
    SelfReferral,
    SharedDevice,
    SharedEmail,
    SharedPayment,
)
from service.domain.ledger import AccountKind, customer_account, system_account, validate_entry
from service.domain.orders import ClawbackSplit, ReturnPolicy
from service.domain.referrals import (
    CODE_ALPHABET,
    CODE_LENGTH,
    Milestone,
    Party,
    PlannedReward,
    RedemptionFacts,
    ReferralSettings,
    Reward,
    RewardKind,
    Role,
    checked_settings,
    clawback_draft,
    code_from_bytes,
    milestones_due,
    normalise_code,
    normalise_email,
    plan_clawback,
    plan_rewards,
    qualifies,
    rates,
    redemption_refusal,
    reward_draft,
    share_url,
    still_qualifies,
    vanity_code,
)

NOW = datetime(2026, 3, 10, 11, 0, tzinfo=UTC)


def test_the_alphabet_has_no_ambiguous_characters() -> None:
    assert len(CODE_ALPHABET) == len(set(CODE_ALPHABET)) == 31
    assert not set("01OIL") & set(CODE_ALPHABET)
    assert CODE_ALPHABET.upper() == CODE_ALPHABET


@given(st.binary(min_size=0, max_size=64))
def test_codes_use_only_the_alphabet(random: bytes) -> None:
    code = code_from_bytes(random)
    usable = [byte for byte in random if byte < 248]
    if len(usable) < CODE_LENGTH:
        assert code is None
    else:
        assert code is not None and len(code) == CODE_LENGTH and set(code) <= set(CODE_ALPHABET)


def test_codes_skip_bytes_that_would_bias_the_alphabet() -> None:
    assert code_from_bytes(bytes([248, 255, 0, 1, 2, 3, 4, 5, 6, 30, 31])) == "2345678Z"
    assert code_from_bytes(bytes([30, 31, 61, 247, 0, 0, 0, 0])) == "Z2ZZ2222"
    assert code_from_bytes(bytes([0] * 7 + [250])) is None
    every = {code_from_bytes(os.urandom(24)) for _ in range(200)}
    assert None not in every and len(every) == 200


def test_codes_match_case_insensitively() -> None:
    assert normalise_code(" abcd2345 ") == normalise_code("ABCD2345") == "ABCD2345"
    assert vanity_code("AnnLoves2") == "ANNLOVES2"
    for bad in ("abc", "a" * 21, "ann-loves", "ann loves", "ÄNNLOVES"):
        with pytest.raises(InvalidInput) as refused:
            vanity_code(bad)
        assert refused.value.field == "code"


@pytest.mark.parametrize(
    ("email", "mailbox"),
    [
        ("Ann.Smith@Gmail.com", "annsmith@gmail.com"),
        ("ann.smith+shop@googlemail.com", "annsmith@gmail.com"),
        ("a.n.n@gmail.com", "ann@gmail.com"),
        ("Ann.Smith+news@Example.org", "ann.smith@example.org"),  # dots count outside Gmail
        ("ann@sub.gmail.com", "ann@sub.gmail.com"),
        ("+only@example.org", None),
        (None, None),
    ],
)
def test_email_normalisation(email: str | None, mailbox: str | None) -> None:
    assert normalise_email(email) == mailbox


def settings(**changes: Any) -> ReferralSettings:
    return msgspec.convert({"enabled": True} | changes, ReferralSettings)


def facts(**changes: Any) -> RedemptionFacts:
    values: dict[str, Any] = {
        "code": "ABCD2345",
        "code_disabled_reason": None,
        "referrer": Party(customer_id="cus_a", email="ann@example.com", devices=frozenset({"d1"})),
        "referee": Party(customer_id="cus_b", email="bob@example.com", devices=frozenset({"d2"})),
        "referee_enrolled_at": NOW - timedelta(days=1),
        "referee_orders": 0,
        "referee_referred_with": None,
        "referrer_recent": 0,
        "now": NOW,
    }
    return RedemptionFacts(**(values | changes))


SHARED = Party(customer_id="cus_b", email="Ann+x@Example.com", devices=frozenset({"d1"}), payments=frozenset({"p1"}))


@pytest.mark.parametrize(
    ("changes", "error", "rule"),
    [
        ({"referee": Party(customer_id="cus_a", email=None)}, SelfReferral, "self_referral"),
        ({"referee_referred_with": "OTHER234"}, RefereeAlreadyReferred, "already_referred"),
        ({"code_disabled_reason": "abuse"}, ReferralCodeDisabled, "code_disabled"),
        ({"referee_enrolled_at": NOW - timedelta(days=30, seconds=1)}, RedeemWindowClosed, "redeem_window"),
        ({"referee_orders": 1}, RefereeHasOrders, "referee_has_orders"),
        ({"referee": Party(customer_id="cus_b", email="ann+x@example.com")}, SharedEmail, "shared_email"),
        ({"referee": Party(customer_id="cus_b", email=None, devices=frozenset({"d1"}))}, SharedDevice, "shared_device"),
        (
            {
                "referrer": Party(customer_id="cus_a", email=None, payments=frozenset({"p1"})),
                "referee": Party(customer_id="cus_b", email=None, payments=frozenset({"p1"})),
            },
            SharedPayment,
            "shared_payment",
        ),
        ({"referrer_recent": 3}, ReferralCapReached, "cap"),
    ],
)
def test_each_rule_refuses_with_its_own_error(changes: dict[str, Any], error: type[DomainError], rule: str) -> None:
    rules = settings(cap={"count": 3, "period_days": 30})
    assert redemption_refusal(facts(), rules) is None
    refusal = redemption_refusal(facts(**changes), rules)
    assert type(refusal) is error and refusal.extra["rule"] == rule
    assert refusal.problem_type.startswith("referral")


def test_configurable_rules_can_be_switched_off_but_not_self_referral_or_already_referred() -> None:
    off = settings(
        fraud_rules={
            "referee_has_orders": False,
            "shared_email": False,
            "shared_device": False,
            "shared_payment": False,
        }
    )
    assert redemption_refusal(facts(referee=SHARED, referee_orders=4), off) is None
    assert isinstance(redemption_refusal(facts(referee=SHARED, referee_orders=4), settings()), RefereeHasOrders)
    assert isinstance(redemption_refusal(facts(referee=Party(customer_id="cus_a", email=None)), off), SelfReferral)
    assert isinstance(redemption_refusal(facts(referee_referred_with="X2345678"), off), RefereeAlreadyReferred)
    assert isinstance(redemption_refusal(facts(), settings(enabled=False)), ReferralsDisabled)
    assert redemption_refusal(facts(referrer_recent=1000), settings()) is None  # no cap configured


def test_a_refunded_order_qualifies_while_its_remaining_net_reaches_the_minimum() -> None:
    rules = settings(min_order_minor=2000)
    assert still_qualifies(3000, 1000, rules) and not still_qualifies(3000, 1001, rules)
    assert still_qualifies(10, 9, settings()) and not still_qualifies(10, 10, settings())  # fully refunded


def test_an_order_qualifies_at_the_minimum_and_never_for_nothing() -> None:
    assert qualifies(2000, settings(min_order_minor=2000)) and not qualifies(1999, settings(min_order_minor=2000))
    assert qualifies(1, settings()) and not qualifies(0, settings())  # a free order, even without a minimum


GOLD = {"kind": "tier", "tier_code": "gold", "tier_days": 180}


def test_milestones_are_reached_once_and_again_after_a_clawback() -> None:
    milestones = [
        Milestone(count=3, reward=Reward(kind=RewardKind.TIER, tier_code="gold", tier_days=180)),
        Milestone(count=10, reward=Reward(kind=RewardKind.POINTS, amount=1000)),
    ]
    assert milestones_due(milestones, 2, set()) == []
    assert [m.count for m in milestones_due(milestones, 3, set())] == [3]
    assert milestones_due(milestones, 4, {3}) == []
    assert [m.count for m in milestones_due(milestones, 4, set())] == [3]  # the 3rd's reward was clawed back
    assert [m.count for m in milestones_due(milestones, 10, {3})] == [10]


def test_plan_rewards_pays_both_sides_and_the_milestones_reached() -> None:
    rules = settings(
        referrer_reward={"kind": "points", "amount": 500},
        referee_reward={"kind": "credit", "amount": 1000},
        milestones=[{"count": 3, "reward": GOLD}],
    )
    plan = plan_rewards(rules, "cus_a", "cus_b", 2, set())
    assert [(p.beneficiary_id, p.role, p.reward.kind, p.milestone) for p in plan] == [
        ("cus_b", Role.REFEREE, RewardKind.CREDIT, None),
        ("cus_a", Role.REFERRER, RewardKind.POINTS, None),
        ("cus_a", Role.MILESTONE, RewardKind.TIER, 3),
    ]
    assert len(plan_rewards(rules, "cus_a", "cus_b", 1, set())) == 2
    assert plan_rewards(settings(), "cus_a", "cus_b", 0, set()) == []


def test_reward_entries_come_from_the_referral_accounts() -> None:
    points = PlannedReward(beneficiary_id="cus_a", role=Role.REFERRER, reward=Reward(kind=RewardKind.POINTS, amount=5))
    draft = reward_draft(points, "ref_1", NOW)
    validate_entry(draft)
    assert [(p.account, p.amount) for p in draft.postings] == [
        (system_account(AccountKind.REFERRAL_REWARDS), -5),
        (customer_account("cus_a", AccountKind.AVAILABLE), 5),
    ]
    assert (draft.kind, draft.lot_expires_at, draft.metadata["referral_id"]) == ("referral.reward", NOW, "ref_1")
    credit = PlannedReward(beneficiary_id="cus_b", role=Role.REFEREE, reward=Reward(kind=RewardKind.CREDIT, amount=7))
    assert reward_draft(credit, "ref_1", NOW).postings[0].account == system_account(AccountKind.CREDIT_ISSUED)


def test_clawbacks_follow_the_return_policy_for_points_and_the_balance_for_credit() -> None:
    assert plan_clawback(RewardKind.POINTS, 500, 200, ReturnPolicy.ALLOW_NEGATIVE) == ClawbackSplit(
        from_pending=0, from_available=200, owed=300, forgiven=0
    )
    assert plan_clawback(RewardKind.POINTS, 500, 200, ReturnPolicy.WITHIN_BALANCE) == ClawbackSplit(
        from_pending=0, from_available=200, owed=0, forgiven=300
    )
    assert plan_clawback(RewardKind.CREDIT, 1000, 600, ReturnPolicy.ALLOW_NEGATIVE) == ClawbackSplit(
        from_pending=0, from_available=600, owed=0, forgiven=400
    )
    draft = clawback_draft(
        RewardKind.POINTS, "cus_a", ClawbackSplit(from_pending=0, from_available=200, owed=300, forgiven=0), {}
    )
    assert draft is not None
    validate_entry(draft)
    assert (
        clawback_draft(
            RewardKind.CREDIT, "cus_a", ClawbackSplit(from_pending=0, from_available=0, owed=0, forgiven=9), {}
        )
        is None
    )


def test_settings_are_checked_field_by_field() -> None:
    with pytest.raises(InvalidInput) as amount:
        checked_settings(settings(referee_reward={"kind": "points"}))
    assert amount.value.field == "referee_reward.amount"
    with pytest.raises(InvalidInput) as days:
        checked_settings(settings(milestones=[{"count": 3, "reward": {"kind": "tier", "tier_code": "gold"}}]))
    assert days.value.field == "milestones[0].reward.tier_days"
    with pytest.raises(InvalidInput) as order:
        checked_settings(settings(milestones=[{"count": 3, "reward": GOLD}, {"count": 3, "reward": GOLD}]))
    assert order.value.field == "milestones[1].count"
    with pytest.raises(InvalidInput) as template:
        checked_settings(settings(share_url_template="https://shop.example/r/"))
    assert template.value.field == "share_url_template"
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"enabled": True, "surprise": 1}, ReferralSettings)
    assert share_url("https://shop.example/r/{code}", "ABCD2345") == "https://shop.example/r/ABCD2345"
    assert share_url(None, "ABCD2345") is None


def test_conversion_rates() -> None:
    assert rates(0, 0, 0) == (None, None)
    assert rates(3, 2, 1) == (0.6667, 0.3333)
