"""Program administration: the program, its shops and its API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from service.domain.access import Principal, Scope
from service.domain.clock import Clock
from service.domain.customers import ShopRef
from service.domain.patterns import END
from service.domain.programs import ApiKeyRecord, CreatedApiKey, Name, Program, Shop
from service.http.auth import requires
from service.http.openapi import BODY_PROBLEM_RESPONSES, PROBLEM_RESPONSES, conflicts
from service.http.params import IdempotencyKey
from service.usecases import programs


class ShopRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Name


class ApiKeyRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A key's name and scope; a checkout key may name the one shop it acts for."""

    name: Name
    scope: Annotated[str, msgspec.Meta(pattern="^(checkout|admin|finance)" + END)]
    shop_id: ShopRef | None = None


KEY_CREATE_CONFLICTS = conflicts(
    "`api-key-secret-shown-once`: a retry (the same Idempotency-Key and request) of a create that made a key;"
    " `api_key` is that key without its secret, which is shown only once. `idempotency-key-reused`: the key"
    " was used for another request"
)


class ProgramController(Controller):
    path = "/v1/program"
    tags = ["program"]

    @get(guards=[requires(Scope.ADMIN, Scope.FINANCE, Scope.CHECKOUT)], responses=PROBLEM_RESPONSES)
    async def get_program(self, principal: NamedDependency[Principal]) -> Program:
        """The caller's program."""
        return await programs.get_program(principal.program_id)


class ShopController(Controller):
    path = "/v1/shops"
    tags = ["program"]
    guards = [requires(Scope.ADMIN)]

    @post(status_code=HTTP_201_CREATED, responses=BODY_PROBLEM_RESPONSES)
    async def create_shop(
        self, data: JSONBody[ShopRequest], idempotency_key: IdempotencyKey, principal: NamedDependency[Principal]
    ) -> Shop:
        """Add a sales channel; a retry with the same key answers the shop made first."""
        return await programs.create_shop(principal.program_id, data.name, idempotency_key)

    @get(responses=PROBLEM_RESPONSES)
    async def list_shops(self, principal: NamedDependency[Principal]) -> list[Shop]:
        """All shops of the program."""
        return await programs.list_shops(principal.program_id)


class ApiKeyController(Controller):
    path = "/v1/api-keys"
    tags = ["program"]
    guards = [requires(Scope.ADMIN)]

    @post(status_code=HTTP_201_CREATED, responses=KEY_CREATE_CONFLICTS)
    async def create_key(
        self, data: JSONBody[ApiKeyRequest], idempotency_key: IdempotencyKey, principal: NamedDependency[Principal]
    ) -> CreatedApiKey:
        """Make a key; the response is the only time its plain text is shown, so a retry with the
        same key is a 409 `api-key-secret-shown-once` naming the key made first."""
        return await programs.create_api_key(
            principal.program_id, data.name, Scope(data.scope), data.shop_id, idempotency_key
        )

    @get(responses=PROBLEM_RESPONSES)
    async def list_keys(self, principal: NamedDependency[Principal]) -> list[ApiKeyRecord]:
        """Keys of the program (never their secrets)."""
        return await programs.list_api_keys(principal.program_id)

    @delete("/{key_id:str}", status_code=HTTP_200_OK, responses=PROBLEM_RESPONSES)
    async def revoke_key(
        self,
        key_id: Annotated[str, PathParameter(min_length=1, max_length=64)],
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
    ) -> ApiKeyRecord:
        """Revoke a key at once; revoking again is harmless."""
        return await programs.revoke_api_key(principal.program_id, key_id, clock)


__all__ = ["ApiKeyController", "ProgramController", "ShopController", "datetime"]
