"""The migrations run in the order of their numbers, each once: piccolo orders and records
them by their ID, so two with one ID would run only one of them."""

from __future__ import annotations

import re
from pathlib import Path

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def test_each_migration_has_its_own_id_in_the_order_of_its_number() -> None:
    found = []
    for path in sorted(MIGRATIONS.glob("m[0-9][0-9][0-9][0-9]_*.py")):
        match = re.search(r'^ID = "([^"]+)"', path.read_text(), re.MULTILINE)
        assert match is not None, f"{path.name} has no ID"
        found.append((path.name, match.group(1)))
    ids = [migration_id for _, migration_id in found]
    assert len(found) >= 25
    assert len(set(ids)) == len(ids), [name for name, i in found if ids.count(i) > 1]
    # 0010's ID sorts after 0011-0014's (piccolo runs them by ID; databases record them by
    # it, so it stays); every migration since sorts after all the earlier ones
    for n in range(14, len(ids)):
        assert ids[n] > max(ids[:n]), f"{found[n][0]}'s ID sorts before an earlier migration's"


def test_each_migration_runs_its_own_numbered_script() -> None:
    for path in sorted(MIGRATIONS.glob("m[0-9][0-9][0-9][0-9]_*.py")):
        number = path.name[1:5]
        scripts = re.findall(r'sql_migration\(ID, "([^"]+)"\)', path.read_text())
        assert all(script.startswith(number + "_") for script in scripts), (path.name, scripts)
