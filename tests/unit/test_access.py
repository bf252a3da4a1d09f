"""The access rules: which shop a credential may act for, which keys may be bound to one, and
what a customer token rests on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from service.domain.access import (
    CustomerClaims,
    Principal,
    Scope,
    TokenStanding,
    check_key_shop,
    check_token_standing,
    sign_customer_token,
    verify_customer_token,
)
from service.domain.errors import Forbidden, InvalidInput, Unauthorized
from service.domain.ids import unb64url

TILL = Principal(program_id="prg_a", scope=Scope.CHECKOUT, key_id="key_till", shop_id="shp_a")


@pytest.mark.parametrize(
    "principal",
    [
        Principal(program_id="prg_a", scope=Scope.CHECKOUT, key_id="key_all"),
        Principal(program_id="prg_a", scope=Scope.ADMIN, key_id="key_admin"),
        Principal(program_id="prg_a", scope=Scope.FINANCE, key_id="key_finance"),
        Principal(program_id="prg_a", scope=Scope.CUSTOMER, customer_id="cus_a"),
    ],
)
@pytest.mark.parametrize("shop_id", ["shp_a", "shp_b", "anything"])
def test_a_credential_without_a_shop_acts_for_every_shop(principal: Principal, shop_id: str) -> None:
    principal.check_shop(shop_id)


def test_a_shop_bound_key_acts_for_its_own_shop() -> None:
    TILL.check_shop("shp_a")


@pytest.mark.parametrize("shop_id", ["shp_b", "SHP_A", "shp_a ", ""])
def test_a_shop_bound_key_is_forbidden_any_other_shop_by_name(shop_id: str) -> None:
    with pytest.raises(Forbidden) as refused:
        TILL.check_shop(shop_id)
    assert refused.value.status == 403
    assert refused.value.field == "shop_id"
    assert refused.value.extra == {"key_shop_id": "shp_a"}


def test_the_refusal_names_the_field_it_was_given() -> None:
    with pytest.raises(Forbidden) as refused:
        TILL.check_shop("shp_b", field="items[3].shop_id")
    assert refused.value.field == "items[3].shop_id"


def test_a_refusal_of_the_credential_is_not_kept_under_an_idempotency_key() -> None:
    # the same request with a key that may make it must still succeed
    assert Forbidden.remembered is False


def test_only_checkout_keys_may_be_bound_to_a_shop() -> None:
    check_key_shop(Scope.CHECKOUT, "shp_a")
    for scope in Scope:
        check_key_shop(scope, None)
    for scope in (Scope.ADMIN, Scope.FINANCE, Scope.CUSTOMER):
        with pytest.raises(InvalidInput) as refused:
            check_key_shop(scope, "shp_a")
        assert refused.value.field == "shop_id"
        assert scope.value in refused.value.detail


NOW = datetime(2025, 3, 1, 12, tzinfo=UTC)
SECRET = b"s" * 32


def test_a_token_carries_its_key_and_the_previous_version_still_reads_it() -> None:
    token = sign_customer_token("prg_a", "cus_a", NOW + timedelta(minutes=15), SECRET, key_id="key_till")
    claims = verify_customer_token(token, SECRET, NOW)
    assert claims == CustomerClaims(customer_id="cus_a", expires_at=int(NOW.timestamp()) + 900, key_id="key_till")

    class PreviousClaims(msgspec.Struct, frozen=True):  # the claims as the previous version decodes them
        customer_id: str
        expires_at: int

    body = token.split(".")[2]
    decoded = msgspec.json.decode(unb64url(body), type=PreviousClaims)
    assert decoded == PreviousClaims(customer_id="cus_a", expires_at=claims.expires_at)


def test_a_token_without_a_key_may_have_been_issued_a_day_and_a_margin_before_it_expires() -> None:
    claims = CustomerClaims(customer_id="cus_a", expires_at=int(NOW.timestamp()))
    assert claims.key_id is None
    assert claims.issued_no_earlier_than() == NOW - timedelta(days=1, minutes=5)


IN_FORCE = TokenStanding(customer_known=True, issuer_scope="checkout", issuer_revoked=False)
WITH_KEY = CustomerClaims(customer_id="cus_a", expires_at=0, key_id="key_till")
WITHOUT_KEY = CustomerClaims(customer_id="cus_a", expires_at=0)


@pytest.mark.parametrize("claims", [WITH_KEY, WITHOUT_KEY])
def test_a_token_of_a_checkout_key_in_force_for_a_known_customer_stands(claims: CustomerClaims) -> None:
    check_token_standing(claims, IN_FORCE)


@pytest.mark.parametrize(
    ("claims", "standing", "detail"),
    [
        (WITH_KEY, TokenStanding(customer_known=True, issuer_scope="checkout", issuer_revoked=True), "revoked"),
        (WITHOUT_KEY, TokenStanding(customer_known=True, issuer_scope="checkout", issuer_revoked=True), "revoked"),
        (WITH_KEY, TokenStanding(customer_known=True, issuer_scope=None, issuer_revoked=False), "unknown API key"),
        (WITH_KEY, TokenStanding(customer_known=True, issuer_scope="admin", issuer_revoked=False), "unknown API key"),
        (WITH_KEY, TokenStanding(customer_known=False, issuer_scope="checkout", issuer_revoked=False), "customer"),
        (WITHOUT_KEY, TokenStanding(customer_known=False, issuer_scope="checkout", issuer_revoked=False), "customer"),
    ],
)
def test_a_token_the_program_no_longer_permits_is_unauthorized(
    claims: CustomerClaims, standing: TokenStanding, detail: str
) -> None:
    with pytest.raises(Unauthorized) as refused:
        check_token_standing(claims, standing)
    assert refused.value.status == 401
    assert detail in refused.value.detail
