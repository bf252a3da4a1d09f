"""The one-grant write without the ledger's guarantees, one at a time: an experiment that
prices each of them, never a configuration.

`bench.instructions --guarantees` counts a grant with each guarantee below removed (alone,
and with every one above it removed too); `bench.ledger_throughput --without-guarantees`
runs the benchmark on a database with all of them removed, for the ceiling the write could
reach on this machine if it checked and recorded nothing beyond the balance, the entry and
its postings. Both apply the statements to their own scratch databases only.

What is removed is either database objects (CHECK constraints, triggers) or statements of
`append_credit_entry` (the one-grant call, migration 0019), re-created without them from the
migration's own text, so the experiment always prices the function as migrated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations" / "sql"
FUNCTION = "append_credit_entry"


@dataclass(frozen=True)
class Guarantee:
    name: str
    drop: tuple[str, ...] = ()  # statements removing database objects
    statement: tuple[str, str] | None = None  # (first, last) text of a statement of the function


GUARANTEES = (
    Guarantee(
        "CHECK constraints (accounts 4, lots 2, postings 1, idempotency_keys 1)",
        drop=(
            "ALTER TABLE accounts DROP CONSTRAINT accounts_balance_check, DROP CONSTRAINT accounts_check,"
            " DROP CONSTRAINT accounts_normal_side_check, DROP CONSTRAINT accounts_unit_check",
            "ALTER TABLE lots DROP CONSTRAINT lots_amount_check, DROP CONSTRAINT lots_check",
            "ALTER TABLE postings DROP CONSTRAINT postings_amount_check",
            "ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_key_check",
        ),
    ),
    Guarantee(
        "balance check at COMMIT (entries_have_postings)", drop=("DROP TRIGGER entries_have_postings ON entries",)
    ),
    Guarantee(
        "postings' statement check (postings_written_once)", drop=("DROP TRIGGER postings_written_once ON postings",)
    ),
    Guarantee("keys of lots (lots_keys)", drop=("DROP TRIGGER lots_keys ON lots",)),
    Guarantee("seal-queue row (the hash chain)", statement=("    INSERT INTO seal_queue", "v_entry_id);\n")),
    Guarantee("points.earned event (outbox row)", statement=("    IF p_event_id IS NOT NULL THEN", "    END IF;\n")),
    Guarantee("lot (expiry, spending order)", statement=("    INSERT INTO lots", "p_lot_expires_at);\n")),
    Guarantee(
        "idempotency record (the stored answer)",
        statement=("    IF p_key IS NOT NULL THEN\n        v_response", "    END IF;\n"),
    ),
)


def _function_text() -> str:
    """`CREATE OR REPLACE FUNCTION append_credit_entry(...)` as its latest migration defines it."""
    defining = sorted(p for p in MIGRATIONS.glob("*.sql") if f"FUNCTION {FUNCTION}(" in p.read_text())
    if not defining:
        raise RuntimeError(f"no migration defines {FUNCTION}")
    text = defining[-1].read_text()
    start = text.index(f"CREATE FUNCTION {FUNCTION}(")
    body = text[start : text.index("$$;", start) + 3]
    return body.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def without(guarantees: tuple[Guarantee, ...]) -> list[str]:
    """Statements that remove the given guarantees (no blank lines: single-user mode ends a
    statement at a semicolon and a blank line)."""
    statements = [drop for guarantee in guarantees for drop in guarantee.drop]
    cut = [g.statement for g in guarantees if g.statement is not None]
    if cut:
        function = _function_text()
        for first, last in cut:
            start = function.index(first)  # ValueError: the function no longer has that statement
            function = function[:start] + function[function.index(last, start) + len(last) :]
        statements.append(re.sub(r"\n\s*\n", "\n", function))
    return statements
