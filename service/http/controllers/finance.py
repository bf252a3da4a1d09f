"""Finance's read-only audit API."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, get
from litestar.background_tasks import BackgroundTask
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from litestar.response import Stream

from service.domain.access import Principal, Scope
from service.domain.clock import Clock
from service.domain.ids import MAX_ROW_ID
from service.domain.patterns import END
from service.http.auth import requires
from service.http.openapi import PROBLEM_RESPONSES, JournalOperation
from service.http.params import ZERO_MINIMUM, AccountId, EntryId
from service.http.renderers import spreadsheet_cell
from service.usecases import finance

AsOf = Annotated[datetime | None, QueryParameter(description="RFC 3339 instant; default now")]
From = Annotated[datetime, QueryParameter(name="from", description="inclusive RFC 3339 instant")]
To = Annotated[datetime, QueryParameter(name="to", description="exclusive RFC 3339 instant")]


class AccountPageResponse(msgspec.Struct, kw_only=True):
    items: list[finance.AccountBalance]
    next_cursor: int | None


def _ndjson(rows: AsyncIterator[tuple[Any, ...]]) -> AsyncIterator[bytes]:
    async def lines() -> AsyncIterator[bytes]:
        async for row in rows:
            record = dict(zip(finance.JOURNAL_COLUMNS, row, strict=True))
            record["metadata"] = json.loads(record["metadata"])
            yield msgspec.json.encode(record) + b"\n"

    return lines()


def _csv(rows: AsyncIterator[tuple[Any, ...]]) -> AsyncIterator[bytes]:
    async def lines() -> AsyncIterator[bytes]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(finance.JOURNAL_COLUMNS)
        async for row in rows:
            # instants as every answer gives them (and the NDJSON export): RFC 3339 in UTC, `...Z`
            writer.writerow(
                [
                    msgspec.to_builtins(value) if isinstance(value, datetime) else spreadsheet_cell(value)
                    for value in row
                ]
            )
            if buffer.tell() > 64_000:
                yield buffer.getvalue().encode()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue().encode()

    return lines()


class FinanceController(Controller):
    """Read-only: nothing here can change the ledger."""

    path = "/v1/finance"
    tags = ["finance"]
    guards = [requires(Scope.FINANCE, Scope.ADMIN)]

    @get("/journal", responses=PROBLEM_RESPONSES, operation_class=JournalOperation)
    async def journal(
        self,
        principal: NamedDependency[Principal],
        start: From,
        end: To,
        format: Annotated[Literal["ndjson", "csv"], QueryParameter()] = "ndjson",
    ) -> Stream:
        """Every posting of the period in journal order, streamed in constant memory."""
        rows = finance.journal_rows(principal.program_id, start, end)
        first = await anext(rows, None)  # validates the period before the response starts

        async def with_first() -> AsyncIterator[tuple[Any, ...]]:
            if first is not None:
                yield first
                async for row in rows:
                    yield row

        async def release() -> None:
            # Litestar stops iterating a stream whose client left without closing it: the
            # export's transaction and pooled connection would wait for the garbage collector
            await rows.aclose()

        body = _csv(with_first()) if format == "csv" else _ndjson(with_first())
        media_type = "text/csv" if format == "csv" else "application/x-ndjson"
        filename = f"journal-{principal.program_id}.{format}"
        return Stream(
            body,
            media_type=media_type,
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
            background=BackgroundTask(release),
        )

    @get("/accounts", responses=PROBLEM_RESPONSES)
    async def accounts(
        self,
        principal: NamedDependency[Principal],
        customer_id: Annotated[str | None, QueryParameter(max_length=64)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
        cursor: Annotated[int | None, QueryParameter(ge=0, le=MAX_ROW_ID, schema_extra=ZERO_MINIMUM)] = None,
    ) -> AccountPageResponse:
        """Accounts with their current balances, a page at a time."""
        items, next_cursor = await finance.list_accounts(principal.program_id, customer_id, limit, cursor)
        return AccountPageResponse(items=items, next_cursor=next_cursor)

    @get("/accounts/{account_id:int}/balance", responses=PROBLEM_RESPONSES)
    async def balance(
        self, account_id: AccountId, principal: NamedDependency[Principal], as_of: AsOf = None
    ) -> finance.AccountBalance:
        """An account's balance now or at any instant."""
        return await finance.account_balance(principal.program_id, account_id, as_of)

    @get("/accounts/{account_id:int}/statement", responses=PROBLEM_RESPONSES)
    async def statement(
        self,
        account_id: AccountId,
        principal: NamedDependency[Principal],
        start: From,
        end: To,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 200,
        cursor: Annotated[str | None, QueryParameter(max_length=100)] = None,
    ) -> finance.Statement:
        """The account's postings in the period with opening and running balances."""
        return await finance.statement(principal.program_id, account_id, start, end, limit, cursor)

    @get("/trial-balance", responses=PROBLEM_RESPONSES)
    async def trial_balance(
        self,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
        as_of: AsOf = None,
    ) -> finance.TrialBalance:
        """Debit and credit totals per account kind; per unit they agree."""
        return await finance.trial_balance(principal.program_id, as_of or clock.now())

    @get("/liability", responses=PROBLEM_RESPONSES)
    async def liability(
        self,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
        as_of: AsOf = None,
    ) -> finance.Liability:
        """Outstanding points valued at the program's point value, per shop and in total."""
        return await finance.liability(principal.program_id, as_of or clock.now())

    @get("/activity", responses=PROBLEM_RESPONSES)
    async def activity(self, principal: NamedDependency[Principal], start: From, end: To) -> finance.Activity:
        """Points issued, redeemed and expired (breakage) in the period."""
        return await finance.activity(principal.program_id, start, end)

    @get("/entries/{entry_id:int}", responses=PROBLEM_RESPONSES)
    async def entry(self, entry_id: EntryId, principal: NamedDependency[Principal]) -> finance.EntryDetail:
        """One entry: postings, the lots it spent (traced to where they were earned), its seal."""
        return await finance.entry_detail(principal.program_id, entry_id)

    @get("/chain", responses=PROBLEM_RESPONSES)
    async def chain(
        self,
        principal: NamedDependency[Principal],
        anchor_seq: Annotated[
            int | None, QueryParameter(ge=1, le=MAX_ROW_ID, description="seq of a link recorded earlier")
        ] = None,
        anchor_hash: Annotated[
            str | None,
            QueryParameter(
                pattern="^[0-9a-fA-F]{64}" + END, description="its chain hash, hex (a past report's `head`)"
            ),
        ] = None,
    ) -> finance.ChainReport:
        """Recompute the hash chain; name the first broken entry if any; check an anchor."""
        return await finance.verify_chain(principal.program_id, finance.chain_anchor(anchor_seq, anchor_hash))
