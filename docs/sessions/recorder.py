"""Records requests to a served app and their answers as Markdown (for docs/sessions)."""

from __future__ import annotations

import json
from typing import Any

import httpx


class Recorder:
    """Send requests, keep each with its answer; a step answering an error it did not expect stops the session."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=10)
        self.step = 0
        self.out: list[str] = []

    def say(self, text: str) -> None:
        self.out.append(text)

    def call(self, title: str, method: str, path: str, key: str, body: Any = None, **headers: str) -> Any:
        self.step += 1
        sent = {"Authorization": f"Bearer {key}", **headers}
        response = self.http.request(method, path, json=body, headers=sent)
        shown = {name: (_short(value) if name == "Authorization" else value) for name, value in sent.items()}
        request_text = f"{method} {path}\n" + "".join(f"{name}: {value}\n" for name, value in shown.items())
        if body is not None:
            request_text += "\n" + json.dumps(body, indent=2)
        answer = response.json() if response.content else None
        self.say(f"### {self.step}. {title}\n")
        self.say(f"```http\n{request_text.rstrip()}\n```\n")
        self.say(f"`{response.status_code}`\n\n```json\n{json.dumps(_redact(answer), indent=2)}\n```\n")
        if response.status_code >= 500 or (response.status_code >= 400 and "refused" not in title):
            raise SystemExit(f"step {self.step} ({title}) answered {response.status_code}: {response.text}")
        return answer

    def set_up_program(self, admin: str) -> tuple[dict[str, Any], str, str]:
        """The admin's first steps: a shop, a till key and a finance key, a year's expiry, and
        a return window of 0 days (14 by default) so the session need not wait for it.
        Returns the shop, the till's key and finance's key."""
        self.say("## Set-up by the program admin\n")
        shop = self.call(
            "Add a shop", "POST", "/v1/shops", admin, {"name": "Amsterdam roastery"}, **{"Idempotency-Key": "shop-ams"}
        )
        till = self.call(
            "A key for the shop's till",
            "POST",
            "/v1/api-keys",
            admin,
            {"name": "till", "scope": "checkout"},
            **{"Idempotency-Key": "key-till"},
        )
        audit = self.call(
            "A key for finance",
            "POST",
            "/v1/api-keys",
            admin,
            {"name": "audit", "scope": "finance"},
            **{"Idempotency-Key": "key-audit"},
        )
        expiry = {"policy": "days", "period": 365}
        self.call("Points expire a year after they are earned", "PUT", "/v1/ledger/expiry-policy", admin, expiry)
        returns = {"window_days": 0, "policy": "within_balance"}
        self.call(
            "Return window: 0 days for this session (14 by default)", "PUT", "/v1/program/returns", admin, returns
        )
        return shop, till["key"], audit["key"]


def _short(value: str) -> str:
    return value[:22] + "…" if len(value) > 24 else value


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (_short(v) if k in ("key", "token") and isinstance(v, str) else _redact(v)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value
