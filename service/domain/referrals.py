"""Referrals, free of I/O: codes, the settings an admin sets, the fraud rules as checks over
facts, and which rewards a referral pays (and takes back).

A customer (the referrer) shares a code; a new customer (the referee) redeems it in the
app within the redeem window after their enrolment. The referral is `pending` until the
referee's first order at or above the minimum (`qualified`); both sides are rewarded when
that order's return window has passed (`rewarded`), and the referrer's milestones are paid
when their count of rewarded referrals reaches them. A refund of the qualifying order below
the minimum cancels the referral (`cancelled`), taking back what was already paid.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

import msgspec

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
from service.domain.ledger import AccountKind, EntryDraft, customer_account, system_account, transfer
from service.domain.orders import ClawbackSplit, ReturnPolicy, split_clawback, take_back_draft
from service.domain.patterns import END
from service.domain.tiers import Code as TierCode

CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"  # no 0/O, 1/I/L
CODE_LENGTH = 8
_UNBIASED = 256 - 256 % len(CODE_ALPHABET)  # bytes at or above are skipped, so each character is equally likely
VANITY = re.compile(r"^[A-Za-z0-9]{4,20}$")
GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})
MAX_REWARD = 10**9

CodeText = Annotated[str, msgspec.Meta(min_length=4, max_length=20, pattern=r"^[A-Za-z0-9]+" + END)]
Hash = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9+/=_:.\-]+" + END)]


class Status(StrEnum):
    PENDING = "pending"
    QUALIFIED = "qualified"
    REWARDED = "rewarded"
    CANCELLED = "cancelled"


class RewardKind(StrEnum):
    POINTS = "points"  # from system:referral_rewards to the customer's available points
    CREDIT = "credit"  # store credit in minor units, from system:credit_issued
    TIER = "tier"  # a tier granted for tier_days days, as a floor


class Role(StrEnum):
    REFERRER = "referrer"
    REFEREE = "referee"
    MILESTONE = "milestone"  # a referrer's milestone reward


# --- Settings --------------------------------------------------------------------------


class Reward(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A reward: points or credit (`amount`), or a tier for a period (`tier_code`, `tier_days`)."""

    kind: RewardKind
    amount: Annotated[int, msgspec.Meta(ge=1, le=MAX_REWARD)] | None = None
    tier_code: TierCode | None = None
    tier_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] | None = None


class Milestone(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A reward for the referrer when their `count`-th referral is rewarded."""

    count: Annotated[int, msgspec.Meta(ge=1, le=100_000)]
    reward: Reward


class FraudRules(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The configurable refusals (self-referral and already-referred are always on)."""

    referee_has_orders: bool = True
    shared_email: bool = True
    shared_device: bool = True
    shared_payment: bool = True


class Cap(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """At most `count` referrals per referrer in any `period_days` days (cancelled ones do not count)."""

    count: Annotated[int, msgspec.Meta(ge=1, le=100_000)]
    period_days: Annotated[int, msgspec.Meta(ge=1, le=3650)]


class ReferralSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A program's referral rules."""

    enabled: bool = False
    redeem_window_days: Annotated[int, msgspec.Meta(ge=0, le=3650)] = 30
    min_order_minor: Annotated[int, msgspec.Meta(ge=0, le=10**15)] = 0
    referrer_reward: Reward | None = None
    referee_reward: Reward | None = None
    milestones: Annotated[tuple[Milestone, ...], msgspec.Meta(max_length=50)] = ()
    fraud_rules: FraudRules = FraudRules()
    cap: Cap | None = None
    share_url_template: Annotated[str, msgspec.Meta(min_length=6, max_length=500)] | None = None

    def rewards(self) -> list[tuple[str, Reward]]:
        """Every configured reward with the name of its field."""
        named = [("referrer_reward", self.referrer_reward), ("referee_reward", self.referee_reward)]
        named += [(f"milestones[{i}].reward", m.reward) for i, m in enumerate(self.milestones)]
        return [(name, reward) for name, reward in named if reward is not None]


def _check_reward(field: str, reward: Reward) -> None:
    if reward.kind is RewardKind.TIER:
        if reward.tier_code is None:
            raise InvalidInput("a tier reward needs tier_code", field=f"{field}.tier_code")
        if reward.tier_days is None:
            raise InvalidInput("a tier reward needs tier_days", field=f"{field}.tier_days")
        if reward.amount is not None:
            raise InvalidInput("a tier reward has no amount", field=f"{field}.amount")
        return
    if reward.amount is None:
        raise InvalidInput(f"a {reward.kind.value} reward needs an amount", field=f"{field}.amount")
    if reward.tier_code is not None or reward.tier_days is not None:
        name = "tier_code" if reward.tier_code is not None else "tier_days"
        raise InvalidInput(f"a {reward.kind.value} reward has no {name}", field=f"{field}.{name}")


def checked_settings(settings: ReferralSettings) -> ReferralSettings:
    """The settings if they hang together; InvalidInput naming the field otherwise."""
    for field, reward in settings.rewards():
        _check_reward(field, reward)
    counts = [milestone.count for milestone in settings.milestones]
    for index in range(1, len(counts)):
        if counts[index] <= counts[index - 1]:
            raise InvalidInput("milestone counts must rise strictly", field=f"milestones[{index}].count")
    template = settings.share_url_template
    if template is not None and ("{code}" not in template or not template.startswith(("https://", "http://"))):
        raise InvalidInput(
            "share_url_template is an http(s) URL containing {code}", field="share_url_template", example=EXAMPLE_URL
        )
    return settings


EXAMPLE_URL = "https://shop.example/r/{code}"


def tier_codes(settings: ReferralSettings) -> list[tuple[str, str]]:
    """(field, tier code) of every tier reward, for checking against the ladder."""
    return [
        (f"{field}.tier_code", reward.tier_code)
        for field, reward in settings.rewards()
        if reward.kind is RewardKind.TIER and reward.tier_code is not None
    ]


def share_url(template: str | None, code: str) -> str | None:
    return None if template is None else template.replace("{code}", code)


# --- Codes -----------------------------------------------------------------------------


def code_from_bytes(random: bytes) -> str | None:
    """An 8-character code from random bytes (each character equally likely: bytes that
    would bias the alphabet are skipped); None if the bytes run out first."""
    chars = [CODE_ALPHABET[byte % len(CODE_ALPHABET)] for byte in random if byte < _UNBIASED]
    return "".join(chars[:CODE_LENGTH]) if len(chars) >= CODE_LENGTH else None


def normalise_code(text: str) -> str:
    """Codes match case-insensitively: they are stored and looked up upper case."""
    return text.strip().upper()


def vanity_code(text: str) -> str:
    """An admin's chosen code: 4 to 20 letters and digits, upper-cased."""
    if not VANITY.match(text):
        raise InvalidInput("a code is 4 to 20 letters (A-Z) and digits", field="code")
    return text.upper()


def normalise_email(email: str | None) -> str | None:
    """The address as a mailbox, for comparison: lower case, any `+tag` dropped, and for
    Gmail the dots of the local part dropped (googlemail.com is gmail.com)."""
    if email is None or "@" not in email:
        return None
    local, _, domain = email.strip().lower().rpartition("@")
    local = local.split("+", 1)[0]
    if domain in GMAIL_DOMAINS:
        local, domain = local.replace(".", ""), "gmail.com"
    return f"{local}@{domain}" if local else None


# --- Redemption: the fraud rules -------------------------------------------------------


class Party(msgspec.Struct, frozen=True, kw_only=True):
    """What the rules need to know of one side of a referral."""

    customer_id: str
    email: str | None
    devices: frozenset[str] = frozenset()
    payments: frozenset[str] = frozenset()


class RedemptionFacts(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a redemption is decided on, loaded under the code's lock."""

    code: str
    code_disabled_reason: str | None
    referrer: Party
    referee: Party
    referee_enrolled_at: datetime
    referee_orders: int
    referee_referred_with: str | None  # the code of the referee's existing referral
    referrer_recent: int  # the referrer's referrals in the cap's period (not cancelled)
    now: datetime


def check_redemption(facts: RedemptionFacts, settings: ReferralSettings) -> None:
    """Refuse a redemption by the first rule it breaks, each with its own error naming the rule."""
    refusal = redemption_refusal(facts, settings)
    if refusal is not None:
        raise refusal


def redemption_refusal(facts: RedemptionFacts, settings: ReferralSettings) -> DomainError | None:
    """The refusal, or None if the referral may be made. Each refusal names its `rule`."""
    rules = settings.fraud_rules
    referrer, referee = facts.referrer, facts.referee
    if referrer.customer_id == referee.customer_id:
        return SelfReferral("a customer cannot redeem their own code", field="code", rule="self_referral")
    if facts.referee_referred_with is not None:
        return RefereeAlreadyReferred(
            "the customer has already redeemed another referral code",
            field="code",
            rule="already_referred",
            referred_with=facts.referee_referred_with,
        )
    if not settings.enabled:
        return ReferralsDisabled("the program does not take referrals now", field="code", rule="enabled")
    if facts.code_disabled_reason is not None:
        return ReferralCodeDisabled(
            f"code {facts.code} is disabled", field="code", rule="code_disabled", reason=facts.code_disabled_reason
        )
    closes = facts.referee_enrolled_at + timedelta(days=settings.redeem_window_days)
    if facts.now > closes:
        return RedeemWindowClosed(
            f"codes can be redeemed up to {settings.redeem_window_days} days after enrolment",
            field="code",
            rule="redeem_window",
            closed_at=closes.isoformat(),
        )
    if rules.referee_has_orders and facts.referee_orders > 0:
        return RefereeHasOrders(
            "only customers without orders can redeem a referral code", field="code", rule="referee_has_orders"
        )
    mailbox = normalise_email(referee.email)
    if rules.shared_email and mailbox is not None and mailbox == normalise_email(referrer.email):
        return SharedEmail("the referee's email address is the referrer's", field="code", rule="shared_email")
    shared = shared_fingerprint(referrer, referee, rules)
    if shared is not None:
        return shared
    cap = settings.cap
    if cap is not None and facts.referrer_recent >= cap.count:
        return ReferralCapReached(
            f"the code's owner has reached {cap.count} referrals in {cap.period_days} days",
            field="code",
            rule="cap",
            cap=cap.count,
            period_days=cap.period_days,
        )
    return None


def shared_fingerprint(referrer: Party, referee: Party, rules: FraudRules) -> DomainError | None:
    """The refusal if the referee shares a device or payment fingerprint with the referrer
    (by the rules switched on): checked at the redemption, and again before the rewards are
    paid, since fingerprints (a referee's card, above all) are often recorded after it."""
    if rules.shared_device and referrer.devices & referee.devices:
        return SharedDevice("the referee's device was used by the referrer", field="device_hash", rule="shared_device")
    if rules.shared_payment and referrer.payments & referee.payments:
        return SharedPayment(
            "the referee's payment method was used by the referrer", field="payment_hash", rule="shared_payment"
        )
    return None


def qualifies(net: int, settings: ReferralSettings) -> bool:
    """Whether an order of the referee qualifies the referral: it is paid for (a free order
    makes no paying customer, and no refund could take its rewards back) and at or above
    the minimum."""
    return net > 0 and net >= settings.min_order_minor


def still_qualifies(net: int, refunded_net: int, settings: ReferralSettings) -> bool:
    """Whether the qualifying order still qualifies after refunds (a full refund never does)."""
    remaining = net - refunded_net
    return remaining > 0 and remaining >= settings.min_order_minor


# --- Rewards ---------------------------------------------------------------------------


class PlannedReward(msgspec.Struct, frozen=True, kw_only=True):
    beneficiary_id: str
    role: Role
    reward: Reward
    milestone: int | None = None


def milestones_due(milestones: Sequence[Milestone], rewarded: int, held: Collection[int]) -> list[Milestone]:
    """The milestones a referrer with `rewarded` rewarded referrals has reached and does not
    hold (a milestone whose reward was clawed back may be reached again)."""
    return [milestone for milestone in milestones if milestone.count <= rewarded and milestone.count not in held]


def plan_rewards(
    settings: ReferralSettings, referrer_id: str, referee_id: str, rewarded_before: int, held: Collection[int]
) -> list[PlannedReward]:
    """What rewarding one referral pays: the referee's and referrer's rewards, and the
    referrer's milestones reached with this referral counted."""
    planned = []
    if settings.referee_reward is not None:
        planned.append(PlannedReward(beneficiary_id=referee_id, role=Role.REFEREE, reward=settings.referee_reward))
    if settings.referrer_reward is not None:
        planned.append(PlannedReward(beneficiary_id=referrer_id, role=Role.REFERRER, reward=settings.referrer_reward))
    for milestone in milestones_due(settings.milestones, rewarded_before + 1, held):
        planned.append(
            PlannedReward(
                beneficiary_id=referrer_id, role=Role.MILESTONE, reward=milestone.reward, milestone=milestone.count
            )
        )
    return planned


def reward_metadata(referral_id: str, planned: PlannedReward) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "referral_id": referral_id,
        "beneficiary": planned.beneficiary_id,
        "role": planned.role.value,
    }
    if planned.milestone is not None:
        metadata["milestone"] = planned.milestone
    return metadata


def reward_draft(planned: PlannedReward, referral_id: str, lot_expires_at: datetime | None) -> EntryDraft:
    """Points from `referral_rewards` to the customer's available points (a lot expiring by
    the program's policy), or credit from `credit_issued` to `credit_available`."""
    amount = planned.reward.amount
    assert amount is not None and planned.reward.kind is not RewardKind.TIER
    points = planned.reward.kind is RewardKind.POINTS
    return transfer(
        system_account(AccountKind.REFERRAL_REWARDS if points else AccountKind.CREDIT_ISSUED),
        customer_account(planned.beneficiary_id, AccountKind.AVAILABLE if points else AccountKind.CREDIT_AVAILABLE),
        amount,
        kind="referral.reward",
        metadata=reward_metadata(referral_id, planned),
        lot_expires_at=lot_expires_at if points else None,
    )


def plan_clawback(kind: RewardKind, amount: int, balance: int, policy: ReturnPolicy) -> ClawbackSplit:
    """Points by the return policy (from available, the rest owed or forgiven); credit
    within the balance, the rest forgiven. A reward is never pending."""
    return split_clawback(amount, 0, balance, policy if kind is RewardKind.POINTS else ReturnPolicy.WITHIN_BALANCE)


def clawback_draft(
    kind: RewardKind, customer_id: str, clawback: ClawbackSplit, metadata: dict[str, Any]
) -> EntryDraft | None:
    """The entry that takes a reward back to where it came from; None if nothing moves."""
    points = kind is RewardKind.POINTS
    return take_back_draft(
        customer_id,
        clawback,
        metadata,
        kind="referral.clawback",
        source=AccountKind.REFERRAL_REWARDS if points else AccountKind.CREDIT_ISSUED,
        spendable=AccountKind.AVAILABLE if points else AccountKind.CREDIT_AVAILABLE,
    )


def rates(redeemed: int, qualified: int, rewarded: int) -> tuple[float | None, float | None]:
    """Conversion: qualified / redeemed and rewarded / redeemed (None without redemptions)."""
    if redeemed == 0:
        return None, None
    return round(qualified / redeemed, 4), round(rewarded / redeemed, 4)
