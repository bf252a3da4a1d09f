"""bench/stripped.py cuts statements out of append_credit_entry by their text: if the
function is redefined so that a statement no longer reads as expected, the experiment must
fail loudly rather than price a function that still has it."""

from __future__ import annotations

from bench.stripped import GUARANTEES, without


def test_each_statement_guarantee_is_cut_and_the_rest_of_the_write_kept() -> None:
    function = without(GUARANTEES)[-1]
    assert function.startswith("CREATE OR REPLACE FUNCTION append_credit_entry(")
    for kept in ("UPDATE accounts", "INSERT INTO entries", "INSERT INTO postings"):
        assert kept in function, kept
    for cut in ("INSERT INTO seal_queue", "INSERT INTO lots", "INSERT INTO event_outbox", "json_build_object"):
        assert cut not in function, cut
    assert "\n\n" not in function  # single-user mode would end the statement there


def test_each_guarantee_alone_removes_something() -> None:
    whole = without(())
    assert whole == []
    for guarantee in GUARANTEES:
        assert without((guarantee,)), guarantee.name
