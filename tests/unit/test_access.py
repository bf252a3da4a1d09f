"""The access rules: which shop a credential may act for, and which keys may be bound to one."""

from __future__ import annotations

import pytest

from service.domain.access import Principal, Scope, check_key_shop
from service.domain.errors import Forbidden, InvalidInput

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
