"""Credentials: API keys (stored as hashes) and signed customer tokens for the app."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import msgspec

from service.domain.errors import Forbidden, InvalidInput, Unauthorized
from service.domain.ids import b64url, new_id, unb64url

API_KEY_PREFIX = "lk"
CUSTOMER_TOKEN_PREFIX = "ct"  # noqa: S105 - a prefix, not a secret
# The longest a customer token lives (`ttl_seconds`, LOYALTY_CUSTOMER_TOKEN_TTL_S: 60 s to 24 h).
MAX_CUSTOMER_TOKEN_TTL_S = 86_400
# How far the clocks of the processes that issued a token and revoked a key may disagree.
_CLOCK_MARGIN = timedelta(minutes=5)
# Keys and tokens are made of ids and url-safe base64 joined by dots; anything else (a NUL,
# say, which PostgreSQL would refuse in a query) is not a credential.
_CREDENTIAL_CHARACTERS = re.compile(r"[A-Za-z0-9_.\-]+")


class Scope(StrEnum):
    """What a credential may do."""

    CHECKOUT = "checkout"
    ADMIN = "admin"
    FINANCE = "finance"
    CUSTOMER = "customer"


class Principal(msgspec.Struct, frozen=True):
    """Who is calling: always exactly one program, for the app exactly one customer, and for
    a shop-bound checkout key (`shop_id`) exactly one shop."""

    program_id: str
    scope: Scope
    key_id: str | None = None
    customer_id: str | None = None
    shop_id: str | None = None

    def check_shop(self, shop_id: str, *, field: str = "shop_id") -> None:
        """Forbidden if the credential is bound to a shop other than `shop_id`; a key without
        a shop acts for every shop of its program."""
        if self.shop_id is not None and shop_id != self.shop_id:
            raise Forbidden(f"this key acts for shop {self.shop_id} only", field=field, key_shop_id=self.shop_id)

    def own_customer_id(self) -> str:
        """The customer a customer token stands for; Forbidden for any other credential."""
        if self.customer_id is None:
            raise Forbidden("a customer token is required")
        return self.customer_id

    @property
    def actor(self) -> str:
        """How entries and audit rows name this caller."""
        if self.customer_id is not None:
            return f"customer:{self.customer_id}"
        return f"key:{self.key_id}"


def check_key_shop(scope: Scope, shop_id: str | None) -> None:
    """Only a checkout key may be bound to a shop (admin and finance keys span the program)."""
    if shop_id is not None and scope is not Scope.CHECKOUT:
        raise InvalidInput(f"only checkout keys act for one shop, not {scope.value} keys", field="shop_id")


class IssuedApiKey(msgspec.Struct, frozen=True):
    """A freshly made key: the plain text is shown once, only the hash is stored."""

    key_id: str
    plain_text: str
    secret_hash: bytes


class ParsedApiKey(msgspec.Struct, frozen=True):
    program_id: str
    key_id: str
    secret: str


def hash_secret(secret: str) -> bytes:
    """SHA-256 of a high-entropy secret (no salt needed: secrets are 256-bit random)."""
    return hashlib.sha256(secret.encode()).digest()


def issue_api_key(program_id: str) -> IssuedApiKey:
    """Make a new key `lk.<program>.<key id>.<secret>` for a program."""
    key_id = new_id("key")
    secret = secrets.token_urlsafe(32)
    return IssuedApiKey(
        key_id=key_id,
        plain_text=f"{API_KEY_PREFIX}.{program_id}.{key_id}.{secret}",
        secret_hash=hash_secret(secret),
    )


def parse_api_key(text: str) -> ParsedApiKey | None:
    """Split a presented API key, or None if it is not one."""
    if not _CREDENTIAL_CHARACTERS.fullmatch(text):
        return None
    parts = text.split(".")
    if len(parts) != 4 or parts[0] != API_KEY_PREFIX or not all(parts[1:]):
        return None
    return ParsedApiKey(program_id=parts[1], key_id=parts[2], secret=parts[3])


def secret_matches(secret: str, stored_hash: bytes) -> bool:
    """Constant-time comparison of a presented secret with a stored hash."""
    return hmac.compare_digest(hash_secret(secret), stored_hash)


class CustomerClaims(msgspec.Struct, frozen=True):
    """What a customer token asserts. `key_id` is the checkout key that issued it; tokens
    signed before tokens named their key have none (and decoders of that version ignore it)."""

    customer_id: str
    expires_at: int  # unix seconds
    key_id: str | None = None

    def issued_no_earlier_than(self) -> datetime:
        """The earliest the token can have been issued: no token lives longer than
        MAX_CUSTOMER_TOKEN_TTL_S (plus a margin for the clocks of the other processes)."""
        latest_life = timedelta(seconds=MAX_CUSTOMER_TOKEN_TTL_S) + _CLOCK_MARGIN
        return datetime.fromtimestamp(self.expires_at, UTC) - latest_life


def sign_customer_token(program_id: str, customer_id: str, expires_at: datetime, key: bytes, *, key_id: str) -> str:
    """`ct.<program>.<claims>.<hmac>`: readable by the service only, bound to one customer and
    to the checkout key `key_id` that asked for it."""
    claims = msgspec.json.encode(
        CustomerClaims(customer_id=customer_id, expires_at=int(expires_at.timestamp()), key_id=key_id)
    )
    body = f"{CUSTOMER_TOKEN_PREFIX}.{program_id}.{b64url(claims)}"
    signature = hmac.new(key, body.encode(), hashlib.sha256).digest()
    return f"{body}.{b64url(signature)}"


def token_program(text: str) -> str | None:
    """The program a customer token claims to belong to, before verification."""
    if not _CREDENTIAL_CHARACTERS.fullmatch(text):
        return None
    parts = text.split(".")
    if len(parts) != 4 or parts[0] != CUSTOMER_TOKEN_PREFIX or not parts[1]:
        return None
    return parts[1]


def verify_customer_token(text: str, key: bytes, now: datetime) -> CustomerClaims:
    """Check the signature and expiry; raise Unauthorized otherwise."""
    body, _, signature = text.rpartition(".")
    expected = hmac.new(key, body.encode(), hashlib.sha256).digest()
    try:
        presented = unb64url(signature)
        claims = msgspec.json.decode(unb64url(body.split(".")[2]), type=CustomerClaims)
    except (ValueError, IndexError, msgspec.DecodeError):
        raise Unauthorized("malformed customer token") from None
    if not hmac.compare_digest(expected, presented):
        raise Unauthorized("customer token signature does not match")
    if claims.expires_at <= int(now.timestamp()):
        raise Unauthorized("customer token expired")
    return claims


class TokenStanding(msgspec.Struct, frozen=True, kw_only=True):
    """What the database says, on each request, of what a customer token rests on.

    `issuer_scope` is the scope of the key the token names (None: no such key in the token's
    program). `issuer_revoked` says that key is revoked; for a token that names no key, that
    a checkout key of its program was revoked since the token may have been issued."""

    customer_known: bool
    issuer_scope: str | None
    issuer_revoked: bool


def check_token_standing(claims: CustomerClaims, standing: TokenStanding) -> None:
    """Unauthorized unless the program still permits a verified token: its key is a checkout
    key of the program that is not revoked, and its customer exists.

    A token that names no key (signed before tokens did) cannot be tied to one, so it is
    refused as soon as any checkout key of its program that might have issued it is revoked."""
    if claims.key_id is not None and standing.issuer_scope != Scope.CHECKOUT.value:
        raise Unauthorized("customer token issued by an unknown API key")
    if standing.issuer_revoked:
        if claims.key_id is not None:
            raise Unauthorized("the API key that issued this customer token is revoked")
        raise Unauthorized(
            "this customer token does not name the API key that issued it, and a checkout key of its"
            " program was revoked since it may have been issued; ask for a new token"
        )
    if not standing.customer_known:
        raise Unauthorized("customer token for an unknown customer")
