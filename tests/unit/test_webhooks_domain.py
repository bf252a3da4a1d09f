"""Standard Webhooks signing, the retry schedule, and the event catalogue (no database)."""

from __future__ import annotations

import base64
import random
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.events import (
    CATALOGUE,
    AnyEvent,
    EventType,
    PointsEarned,
    check_payload,
    payload_schema,
    points_earned_by,
    to_event,
)
from service.domain.ledger import AccountKind, EntryDraft, customer_account, system_account, transfer
from service.domain.orders import award_draft
from service.domain.webhooks import (
    RetryPolicy,
    headers,
    is_success,
    new_secret,
    next_attempt,
    retry_delay,
    rotate,
    secret_bytes,
    secrets_in_force,
    should_disable,
    sign,
    verify,
)

# The reference vector of the Standard Webhooks libraries.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MESSAGE_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'


def test_the_signature_matches_the_reference_vector() -> None:
    assert sign(SECRET, MESSAGE_ID, TIMESTAMP, BODY) == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_receiver_verifies_the_headers() -> None:
    sent = headers(SECRET, MESSAGE_ID, TIMESTAMP, BODY)
    assert sent["webhook-id"] == MESSAGE_ID and sent["webhook-timestamp"] == str(TIMESTAMP)
    assert verify(SECRET, sent, BODY, TIMESTAMP + 10)
    assert not verify(SECRET, sent, BODY + b" ", TIMESTAMP)  # body changed
    assert not verify(SECRET, sent | {"webhook-id": "msg_other"}, BODY, TIMESTAMP)
    assert not verify(SECRET, sent, BODY, TIMESTAMP + 301)  # too old: a replay
    assert not verify(SECRET, sent, BODY, TIMESTAMP - 301)  # from the future
    assert not verify(new_secret(), sent, BODY, TIMESTAMP)
    assert not verify(SECRET, {"webhook-id": MESSAGE_ID}, BODY, TIMESTAMP)  # headers missing
    assert not verify(SECRET, sent | {"webhook-timestamp": "soon"}, BODY, TIMESTAMP)
    # during a secret rotation several signatures may be sent; one match is enough
    rotated = sent | {"webhook-signature": f"v1,bm90IGl0 {sent['webhook-signature']}"}
    assert verify(SECRET, rotated, BODY, TIMESTAMP)


def test_secrets_are_whsec_and_base64_of_random_bytes() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert secret_bytes(secret) == base64.b64decode(secret.removeprefix("whsec_"))
    assert len(secret_bytes(secret)) == 24
    assert new_secret() != secret
    with pytest.raises(ValueError, match="base64"):
        secret_bytes("whsec_not*base64")


NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_a_message_signed_with_two_secrets_verifies_with_each_new_first() -> None:
    new = new_secret()
    sent = headers([new, SECRET], MESSAGE_ID, TIMESTAMP, BODY)
    assert sent["webhook-signature"].split() == [
        sign(new, MESSAGE_ID, TIMESTAMP, BODY),
        sign(SECRET, MESSAGE_ID, TIMESTAMP, BODY),
    ]
    assert verify(new, sent, BODY, TIMESTAMP) and verify(SECRET, sent, BODY, TIMESTAMP)
    assert not verify(new_secret(), sent, BODY, TIMESTAMP)
    assert headers([SECRET], MESSAGE_ID, TIMESTAMP, BODY) == headers(SECRET, MESSAGE_ID, TIMESTAMP, BODY)
    with pytest.raises(ValueError, match="at least one"):
        headers([], MESSAGE_ID, TIMESTAMP, BODY)


def test_a_rotation_keeps_the_current_secret_for_the_grace_period_only() -> None:
    rotation = rotate(SECRET, 3600, NOW)
    assert rotation.secret.startswith("whsec_") and rotation.secret != SECRET
    assert (rotation.previous_secret, rotation.previous_secret_until) == (SECRET, NOW + timedelta(hours=1))
    during = secrets_in_force(rotation.secret, SECRET, rotation.previous_secret_until, NOW + timedelta(minutes=59))
    assert during == [rotation.secret, SECRET]
    after = secrets_in_force(rotation.secret, SECRET, rotation.previous_secret_until, NOW + timedelta(hours=1))
    assert after == [rotation.secret]
    sent = headers(after, MESSAGE_ID, TIMESTAMP, BODY)
    assert verify(rotation.secret, sent, BODY, TIMESTAMP) and not verify(SECRET, sent, BODY, TIMESTAMP)
    assert secrets_in_force(SECRET, None, None, NOW) == [SECRET]


def test_a_rotation_with_no_grace_retires_the_secret_at_once_and_keeps_one_previous_only() -> None:
    at_once = rotate(SECRET, 0, NOW)
    assert (at_once.previous_secret, at_once.previous_secret_until) == (None, None)
    first = rotate(SECRET, 86_400, NOW)
    second = rotate(first.secret, 60, NOW + timedelta(hours=1))
    assert second.previous_secret == first.secret  # the original secret is no longer kept
    assert secrets_in_force(second.secret, second.previous_secret, second.previous_secret_until, NOW) == [
        second.secret,
        first.secret,
    ]
    for wrong in (-1, 604_801):
        with pytest.raises(ValueError, match="previous_valid_for_s"):
            rotate(SECRET, wrong, NOW)


def test_only_2xx_is_success() -> None:
    assert [is_success(code) for code in (200, 204, 299, 301, 404, 500)] == [True, True, True, False, False, False]


def test_an_endpoint_is_disabled_after_n_consecutive_failures() -> None:
    assert not should_disable(2, 3)
    assert should_disable(3, 3)


POLICY = RetryPolicy(base_delay_s=5.0, max_delay_s=3600.0, retry_for_s=86_400.0)


def test_the_retry_delays_grow_exponentially_with_jitter_up_to_the_cap() -> None:
    low, high = random.Random(0), random.Random(0)
    low.uniform = lambda a, b: a  # type: ignore[method-assign]
    high.uniform = lambda a, b: b  # type: ignore[method-assign]
    assert [retry_delay(POLICY, n, high).total_seconds() for n in range(1, 6)] == [5, 10, 20, 40, 80]
    assert [retry_delay(POLICY, n, low).total_seconds() for n in range(1, 4)] == [2.5, 5, 10]
    assert retry_delay(POLICY, 20, high) == timedelta(hours=1)
    assert retry_delay(POLICY, 10_000, high) == timedelta(hours=1)  # no overflow


def test_retries_stop_after_the_retry_period() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert next_attempt(POLICY, 1, start, start) is not None
    assert next_attempt(POLICY, 30, start, start + timedelta(hours=23, minutes=59)) is None
    # a day of retries at most: with the cap of an hour, about 30 attempts
    now, attempts, rng = start, 0, random.Random(7)
    while (due := next_attempt(POLICY, attempts + 1, start, now, rng)) is not None:
        now, attempts = due, attempts + 1
    assert now <= start + timedelta(days=1)
    assert 25 <= attempts <= 60


@given(
    attempts=st.integers(min_value=1, max_value=200),
    base=st.floats(min_value=0.01, max_value=100),
    cap=st.floats(min_value=0.01, max_value=10_000),
    seed=st.integers(),
)
def test_a_delay_is_between_half_and_all_of_the_capped_exponential(
    attempts: int, base: float, cap: float, seed: int
) -> None:
    policy = RetryPolicy(base_delay_s=base, max_delay_s=cap, retry_for_s=1.0)
    full = min(base * 2.0 ** (attempts - 1), cap)
    delay = retry_delay(policy, attempts, random.Random(seed)).total_seconds()
    assert full / 2 - 1e-6 <= delay <= full + 1e-6


def test_the_catalogue_covers_every_type_with_a_schema_and_an_envelope() -> None:
    assert set(CATALOGUE) == set(EventType)
    for event_type, entry in CATALOGUE.items():
        schema = payload_schema(event_type)
        assert "$defs" in schema and "customer_id" in str(schema)
        assert entry.envelope.__struct_config__.tag == event_type.value
    emitted = {event_type.value for event_type, entry in CATALOGUE.items() if entry.emitted}
    assert {"customer.enrolled", "purchase.first", "points.earned", "customer.win_back_due"} <= emitted
    assert "tier.upgraded" in emitted
    assert emitted == {event_type.value for event_type in EventType}


def test_an_event_is_encoded_with_its_type_and_typed_data() -> None:
    payload = b'{"customer_id":"cus_1","points":5,"entry_id":9}'
    at = datetime(2026, 1, 1, tzinfo=UTC)
    event = to_event("evt_1", 3, "points.expired", at, "cus_1", payload)
    assert msgspec.json.decode(msgspec.json.encode(event)) == {
        "type": "points.expired",
        "id": "evt_1",
        "seq": 3,
        "timestamp": "2026-01-01T00:00:00Z",
        "customer_id": "cus_1",
        "data": {"customer_id": "cus_1", "points": 5, "entry_id": 9},
    }
    assert msgspec.json.decode(msgspec.json.encode(event), type=AnyEvent) == event


def test_a_payload_must_be_its_types_struct() -> None:
    entry = CATALOGUE[EventType.POINTS_EXPIRED]
    check_payload(EventType.POINTS_EXPIRED, entry.payload(customer_id="c", points=1, entry_id=1))
    with pytest.raises(TypeError):
        check_payload(EventType.POINTS_REDEEMED, entry.payload(customer_id="c", points=1, entry_id=1))


AT = datetime(2026, 3, 10, 11, 0, tzinfo=UTC)
EXPIRES = datetime(2027, 3, 11, 23, 0, tzinfo=UTC)


def credit(kind: str, source: AccountKind, to: AccountKind, amount: int = 40) -> EntryDraft:
    return transfer(system_account(source), customer_account("cus_1", to), amount, kind=kind, lot_expires_at=EXPIRES)


def test_grants_and_referral_rewards_of_points_announce_points_earned() -> None:
    grant = credit("adjustment.grant", AccountKind.ISSUED, AccountKind.AVAILABLE)
    assert points_earned_by(grant, 7, AT) == PointsEarned(
        customer_id="cus_1",
        points=40,
        source="grant",
        shop_id=None,
        order_id=None,
        entry_id=7,
        available_from=AT,
        expires_at=EXPIRES,
    )
    reward = credit("referral.reward", AccountKind.REFERRAL_REWARDS, AccountKind.AVAILABLE, 500)
    earned = points_earned_by(reward, 8, AT)
    assert earned is not None and (earned.source, earned.points, earned.entry_id) == ("referral", 500, 8)


@pytest.mark.parametrize(
    "draft",
    [
        transfer(  # a deduction
            customer_account("cus_1", AccountKind.AVAILABLE),
            system_account(AccountKind.ADJUSTMENTS),
            40,
            kind="adjustment.deduct",
        ),
        credit("adjustment.grant", AccountKind.CREDIT_ISSUED, AccountKind.CREDIT_AVAILABLE),  # store credit
        credit("referral.reward", AccountKind.CREDIT_ISSUED, AccountKind.CREDIT_AVAILABLE),
        award_draft("cus_1", 40, {}, EXPIRES),  # an order: its use case announces it, with the order
        credit("order.release", AccountKind.ISSUED, AccountKind.AVAILABLE),
    ],
)
def test_other_entries_announce_nothing(draft: EntryDraft) -> None:
    assert points_earned_by(draft, 7, AT) is None


def test_points_earned_always_carries_the_order_fields_null_when_not_from_an_order() -> None:
    schema = payload_schema(EventType.POINTS_EARNED)["$defs"]["PointsEarned"]
    assert {"source", "shop_id", "order_id"} <= set(schema["required"])
    assert schema["properties"]["shop_id"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert schema["properties"]["order_id"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
