"""Which adapter version is promoted: promote one (the one promoted before it for the same base is retired)
and roll back to the one it replaced. Every promotion is recorded with the version it replaced, so rollbacks
walk back through the history one step at a time.

    store.promote_adapter("km", 2)     # km@2 promoted, km@1 (promoted before) retired
    store.rollback_adapter()           # km@1 promoted again, km@2 retired
    store.promotion_history()          # [Promotion(km@2, "promote", at), Promotion(km@1, "rollback", at)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from feedback.connections import StoreConnections
from feedback.errors import Conflict, NotFound
from feedback.lineage import adapter_from_row
from feedback.records import Adapter, utc_now


def _adapter_row(db: Database, name: str, version: int) -> dict[str, Any]:
    rows = list(db.query("SELECT * FROM adapters WHERE name = ? AND version = ?", [name, version]))
    if not rows:
        raise NotFound(f"adapter {name!r} version {version} not found", param="adapter")
    return rows[0]


def _promoted_rows(db: Database, base: str | None) -> list[dict[str, Any]]:
    where, params = ("AND base = ?", [base]) if base is not None else ("", [])
    return list(db.query(f"SELECT * FROM adapters WHERE status = 'promoted' {where} ORDER BY id", params))


@dataclass(frozen=True)
class Promotion:
    """One change of the promoted version: ``adapter`` became promoted at ``at`` by a promote or a rollback."""

    adapter: Adapter
    action: str  # "promote" or "rollback"
    at: str


class PromotionMethods(StoreConnections):
    """Promotion and rollback of adapter versions (mixed into :class:`~feedback.store.Store`)."""

    def promoted_adapter(self, base: str | None = None) -> Adapter | None:
        """The promoted adapter version (of ``base``, if given), or None."""
        rows = _promoted_rows(self._read(), base)
        return adapter_from_row(rows[-1]) if rows else None

    def promote_adapter(self, name: str, version: int) -> Adapter:
        """Promote ``name`` at ``version``; the version promoted before it for the same base is retired.
        Promoting the promoted version again changes nothing."""
        with self._write() as db:
            row = _adapter_row(db, name, version)
            previous = [r for r in _promoted_rows(db, row["base"]) if r["id"] != row["id"]]
            if row["status"] == "promoted" and not previous:
                return adapter_from_row(row)
            for old in previous:
                db.execute("UPDATE adapters SET status = 'retired' WHERE id = ?", [old["id"]])
            db.execute("UPDATE adapters SET status = 'promoted' WHERE id = ?", [row["id"]])
            db["promotions"].insert(
                {
                    "adapter_id": row["id"],
                    "previous_id": previous[-1]["id"] if previous else None,
                    "action": "promote",
                    "at": utc_now(),
                }
            )
        return self.get_adapter(name, version)

    def rollback_adapter(self, base: str | None = None) -> Adapter:
        """Retire the promoted version (of ``base``, if given) and promote again the one it replaced; returns
        that one. Raises ``Conflict`` when nothing is promoted or the promoted one replaced nothing."""
        with self._write() as db:
            current = _promoted_rows(db, base)
            if not current:
                raise Conflict("no adapter is promoted; there is nothing to roll back")
            row = current[-1]
            last = list(
                db.query(
                    "SELECT * FROM promotions WHERE adapter_id = ? ORDER BY id DESC LIMIT 1", [row["id"]]
                )
            )
            previous_id = last[0]["previous_id"] if last else None
            if previous_id is None:
                raise Conflict(
                    f"{row['name']}@{row['version']} was the first promoted version; there is no earlier "
                    "one to roll back to (retire it with a promote of another version instead)"
                )
            (target,) = db.query("SELECT * FROM adapters WHERE id = ?", [previous_id])
            # the version rolled back to keeps what it replaced, so a second rollback goes one step further
            earlier = list(
                db.query(
                    "SELECT previous_id FROM promotions WHERE adapter_id = ? ORDER BY id DESC LIMIT 1",
                    [previous_id],
                )
            )
            db.execute("UPDATE adapters SET status = 'retired' WHERE id = ?", [row["id"]])
            db.execute("UPDATE adapters SET status = 'promoted' WHERE id = ?", [previous_id])
            db["promotions"].insert(
                {
                    "adapter_id": previous_id,
                    "previous_id": earlier[0]["previous_id"] if earlier else None,
                    "action": "rollback",
                    "at": utc_now(),
                }
            )
        return self.get_adapter(target["name"], target["version"])

    def promotion_history(self) -> list[Promotion]:
        """Every promotion and rollback, oldest first, with the version that became promoted."""
        db = self._read()
        rows = list(
            db.query(
                "SELECT a.*, p.action AS promotion_action, p.at AS promotion_at FROM promotions p "
                "JOIN adapters a ON a.id = p.adapter_id ORDER BY p.id"
            )
        )
        return [Promotion(adapter_from_row(r), r["promotion_action"], r["promotion_at"]) for r in rows]
