"""Row lookups the store's method groups share: the one row a query names (or `NotFound`), and the check
that an id another row refers to exists."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlite_utils import Database

from feedback.errors import NotFound


def one_row(rows: Iterable[dict[str, Any]], what: str, param: str) -> dict[str, Any]:
    """The first of `rows`; `NotFound` ("<what> not found", about `param`) when there is none."""
    found = list(rows)
    if not found:
        raise NotFound(f"{what} not found", param=param)
    return found[0]


def require_row(db: Database, table: str, id: str | None, param: str) -> None:
    """`NotFound` unless `table` holds a row with this `id` (None: nothing is referred to, nothing checked)."""
    if id is not None and not db.execute(f"SELECT 1 FROM {table} WHERE id = ?", [id]).fetchone():
        raise NotFound(f"{param} {id!r} not found", param=param)
