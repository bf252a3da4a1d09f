"""Referrals over HTTP: the program's settings and stats (admin), codes, redemption in the
app or by the shop, fingerprints, and each customer's referrals."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Response, get, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from service.domain.access import Principal, Scope
from service.domain.clock import Clock
from service.domain.earning import Text
from service.domain.patterns import END
from service.domain.referrals import CodeText, Hash, ReferralSettings
from service.http.auth import requires
from service.http.openapi import BODY_PROBLEM_RESPONSES, PROBLEM_RESPONSES, create_or_repeat
from service.http.params import CustomerId, IdempotencyKey
from service.http.responses import created_or_repeated
from service.usecases import referrals
from service.usecases.referrals import (
    Fingerprints,
    Redemption,
    ReferralCodeView,
    ReferralPage,
    ReferralStats,
    ReferralView,
)

CodePath = Annotated[
    str, PathParameter(title="Referral code", min_length=4, max_length=20, pattern=r"^[A-Za-z0-9]+" + END)
]
Limit = Annotated[int, QueryParameter(name="limit", ge=1, le=200, description="referrals per page")]
Cursor = Annotated[
    str | None,
    QueryParameter(
        name="cursor", pattern=r"^ref_[0-9a-z]{26}" + END, description="the previous page's next_cursor (a referral id)"
    ),
]


class RedeemRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A referral code, matched case-insensitively, with the shop's hashes of the device and
    payment method if it has them (the fraud rules compare them with the referrer's)."""

    code: CodeText
    device_hash: Hash | None = None
    payment_hash: Hash | None = None

    def redemption(self) -> Redemption:
        return Redemption(code=self.code, device_hash=self.device_hash, payment_hash=self.payment_hash)


class VanityCodeRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    code: CodeText


class CodeStateRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: Text


class FingerprintsRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Hashes the shop computed of the customer's device ids and payment instruments."""

    device_hashes: Annotated[tuple[Hash, ...], msgspec.Meta(max_length=20)] = ()
    payment_hashes: Annotated[tuple[Hash, ...], msgspec.Meta(max_length=20)] = ()


REDEEMED_BEFORE = create_or_repeat(ReferralView, "Redeemed before: the same referral")


class ReferralProgramController(Controller):
    """The program's referral rules and results."""

    path = "/v1/referrals"
    tags = ["referrals"]

    @put("/settings", guards=[requires(Scope.ADMIN)], status_code=HTTP_200_OK, responses=BODY_PROBLEM_RESPONSES)
    async def configure(
        self,
        data: JSONBody[ReferralSettings],
        idempotency_key: IdempotencyKey,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
    ) -> ReferralSettings:
        """Set the referral rules: window, minimum order, rewards, milestones, fraud rules, cap, share link."""
        return await referrals.configure(principal, data, idempotency_key, clock)

    @get("/settings", guards=[requires(Scope.ADMIN, Scope.CHECKOUT, Scope.FINANCE)], responses=PROBLEM_RESPONSES)
    async def settings(self, principal: NamedDependency[Principal]) -> ReferralSettings:
        """The referral rules in force (the defaults, disabled, until set)."""
        return await referrals.get_settings(principal.program_id)

    @get("/stats", guards=[requires(Scope.ADMIN, Scope.FINANCE)], responses=PROBLEM_RESPONSES)
    async def stats(self, principal: NamedDependency[Principal]) -> ReferralStats:
        """Codes issued, referrals by state, rewards paid and conversion rates."""
        return await referrals.referral_stats(principal.program_id)


class ReferralCodeController(Controller):
    """An admin looks up, disables and enables codes."""

    path = "/v1/referral-codes/{code:str}"
    tags = ["referrals"]

    @get(guards=[requires(Scope.ADMIN)], responses=PROBLEM_RESPONSES)
    async def get_code(self, code: CodePath, principal: NamedDependency[Principal]) -> ReferralCodeView:
        """A code (case-insensitive), its owner and whether it is disabled."""
        return await referrals.get_code(principal.program_id, code)

    @post("/disable", guards=[requires(Scope.ADMIN)], status_code=HTTP_200_OK, responses=BODY_PROBLEM_RESPONSES)
    async def disable(
        self,
        code: CodePath,
        data: JSONBody[CodeStateRequest],
        idempotency_key: IdempotencyKey,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
    ) -> ReferralCodeView:
        """Stop a code from being redeemed, with a reason (referrals made with it go on)."""
        return await referrals.set_code_disabled(principal, code, data.reason, idempotency_key, clock)

    @post("/enable", guards=[requires(Scope.ADMIN)], status_code=HTTP_200_OK, responses=PROBLEM_RESPONSES)
    async def enable(
        self,
        code: CodePath,
        idempotency_key: IdempotencyKey,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
    ) -> ReferralCodeView:
        """Let a disabled code be redeemed again."""
        return await referrals.set_code_disabled(principal, code, None, idempotency_key, clock)


class CustomerReferralController(Controller):
    """A customer's code, referrals, fingerprints and stats, for shops and admins."""

    path = "/v1/customers/{customer_id:str}"
    tags = ["referrals"]

    @get("/referral-code", guards=[requires(Scope.CHECKOUT, Scope.ADMIN)], responses=PROBLEM_RESPONSES)
    async def code(
        self, customer_id: CustomerId, principal: NamedDependency[Principal], clock: NamedDependency[Clock]
    ) -> ReferralCodeView:
        """The customer's code and share link (made on the first request)."""
        return await referrals.referral_code(principal.program_id, customer_id, principal.actor, clock)

    @put("/referral-code", guards=[requires(Scope.ADMIN)], status_code=HTTP_200_OK, responses=BODY_PROBLEM_RESPONSES)
    async def vanity(
        self,
        customer_id: CustomerId,
        data: JSONBody[VanityCodeRequest],
        idempotency_key: IdempotencyKey,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
    ) -> ReferralCodeView:
        """Give the customer a code of the admin's choosing (4 to 20 letters and digits); 409 if taken."""
        return await referrals.set_vanity_code(principal, customer_id, data.code, idempotency_key, clock)

    @post("/referral", guards=[requires(Scope.CHECKOUT)], status_code=HTTP_201_CREATED, responses=REDEEMED_BEFORE)
    async def redeem(
        self,
        customer_id: CustomerId,
        data: JSONBody[RedeemRequest],
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
    ) -> Response[ReferralView]:
        """The customer redeems a code: 201 with the pending referral, 200 if it was redeemed before."""
        return created_or_repeated(*await referrals.redeem(principal, customer_id, data.redemption(), clock))

    @get("/referrals", guards=[requires(Scope.CHECKOUT, Scope.ADMIN, Scope.FINANCE)], responses=PROBLEM_RESPONSES)
    async def list_referrals(
        self,
        customer_id: CustomerId,
        principal: NamedDependency[Principal],
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> ReferralPage:
        """Referrals where the customer is the referrer or the referee, newest first."""
        return await referrals.list_referrals(principal.program_id, customer_id, limit, cursor)

    @get("/referrals/stats", guards=[requires(Scope.CHECKOUT, Scope.ADMIN, Scope.FINANCE)], responses=PROBLEM_RESPONSES)
    async def stats(self, customer_id: CustomerId, principal: NamedDependency[Principal]) -> ReferralStats:
        """The customer's results as a referrer."""
        return await referrals.referral_stats(principal.program_id, customer_id)

    @post(
        "/fingerprints",
        guards=[requires(Scope.CHECKOUT, Scope.ADMIN)],
        status_code=HTTP_200_OK,
        responses=BODY_PROBLEM_RESPONSES,
    )
    async def fingerprints(
        self,
        customer_id: CustomerId,
        data: JSONBody[FingerprintsRequest],
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
    ) -> Fingerprints:
        """Record device and payment hashes of the customer; answers with every hash recorded."""
        return await referrals.record_fingerprints(
            principal.program_id, customer_id, data.device_hashes, data.payment_hashes, clock
        )


class MyReferralController(Controller):
    """The customer's own code and referrals, in the app."""

    path = "/v1/me"
    tags = ["customer app"]

    @get("/referral-code", guards=[requires(Scope.CUSTOMER)], responses=PROBLEM_RESPONSES)
    async def my_code(self, principal: NamedDependency[Principal], clock: NamedDependency[Clock]) -> ReferralCodeView:
        """The token's customer's code and share link (made on the first request)."""
        customer_id = principal.own_customer_id()
        return await referrals.referral_code(principal.program_id, customer_id, principal.actor, clock)

    @post("/referral", guards=[requires(Scope.CUSTOMER)], status_code=HTTP_201_CREATED, responses=REDEEMED_BEFORE)
    async def my_redeem(
        self, data: JSONBody[RedeemRequest], principal: NamedDependency[Principal], clock: NamedDependency[Clock]
    ) -> Response[ReferralView]:
        """Redeem a friend's code: 201 with the pending referral, 200 if it was redeemed before."""
        return created_or_repeated(
            *await referrals.redeem(principal, principal.own_customer_id(), data.redemption(), clock)
        )

    @get("/referrals", guards=[requires(Scope.CUSTOMER)], responses=PROBLEM_RESPONSES)
    async def my_referrals(
        self, principal: NamedDependency[Principal], limit: Limit = 50, cursor: Cursor = None
    ) -> ReferralPage:
        """The referrals the customer made or was referred by, newest first."""
        return await referrals.list_referrals(principal.program_id, principal.own_customer_id(), limit, cursor)
