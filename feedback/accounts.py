"""The store's rater accounts: raters with roles and hashed passwords, and their hashed API keys."""

from __future__ import annotations

import functools
from typing import Any

from feedback.connections import StoreConnections, new_id
from feedback.errors import Conflict, NotFound
from feedback.hashing import hash_api_key, hash_password, new_api_key, verify_password
from feedback.records import ROLES, ApiKey, Rater, utc_now
from feedback.validation import check_choice, check_name, check_optional_text, check_text


@functools.cache
def _dummy_hash() -> str:
    return hash_password("not a password")


def _rater(row: dict[str, Any]) -> Rater:
    return Rater(
        name=row["name"],
        role=row["role"],
        has_password=row["password_hash"] is not None,
        created_at=row["created_at"],
    )


def _api_key(row: dict[str, Any]) -> ApiKey:
    return ApiKey(
        id=row["id"],
        rater=row["rater"],
        label=row["label"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


class AccountMethods(StoreConnections):
    """Raters and API keys (mixed into :class:`~feedback.store.Store`)."""

    def add_rater(self, name: str, *, role: str = "rater", password: str | None = None) -> Rater:
        """Create a rater. Raises ``Conflict`` if the name is taken, ``Invalid`` for a bad name or role."""
        check_name(name, "name")
        check_choice(role, ROLES, "role")
        password_hash = hash_password(check_text(password, "password")) if password is not None else None
        with self._write() as db:
            if db.execute("SELECT 1 FROM raters WHERE name = ?", [name]).fetchone():
                raise Conflict(f"rater {name!r} already exists; pick another name", param="name")
            row = {"name": name, "role": role, "password_hash": password_hash, "created_at": utc_now()}
            db["raters"].insert(row)
        return _rater(row)

    def get_rater(self, name: str) -> Rater:
        """The rater called ``name``; raises ``NotFound`` if there is none."""
        rows = list(self._read().query("SELECT * FROM raters WHERE name = ?", [name]))
        if not rows:
            raise NotFound(f"rater {name!r} not found", param="rater")
        return _rater(rows[0])

    def list_raters(self) -> list[Rater]:
        """Every rater, by name."""
        return [_rater(row) for row in self._read().query("SELECT * FROM raters ORDER BY name")]

    def set_password(self, name: str, password: str) -> None:
        """Set or change a rater's password (stored as a salted scrypt hash)."""
        password_hash = hash_password(check_text(password, "password"))
        with self._write() as db:
            cursor = db.execute("UPDATE raters SET password_hash = ? WHERE name = ?", [password_hash, name])
            if cursor.rowcount == 0:
                raise NotFound(f"rater {name!r} not found", param="rater")

    def check_password(self, name: str, password: str) -> Rater | None:
        """The rater if ``password`` is theirs, else None (also for unknown names and raters without one)."""
        rows = list(self._read().query("SELECT * FROM raters WHERE name = ?", [name]))
        if not rows or rows[0]["password_hash"] is None:
            verify_password(password, _dummy_hash())  # same time as a wrong password: names stay private
            return None
        return _rater(rows[0]) if verify_password(password, rows[0]["password_hash"]) else None

    def create_api_key(self, rater: str, *, label: str | None = None) -> tuple[ApiKey, str]:
        """Make an API key for ``rater``; returns the record and the key, which is shown only this once."""
        label = check_optional_text(label, "label", max_chars=200)
        key = new_api_key()
        row = {
            "id": new_id("key"),
            "rater": rater,
            "label": label,
            "key_hash": hash_api_key(key),
            "created_at": utc_now(),
            "revoked_at": None,
        }
        with self._write() as db:
            if not db.execute("SELECT 1 FROM raters WHERE name = ?", [rater]).fetchone():
                raise NotFound(f"rater {rater!r} not found; add the rater first", param="rater")
            db["api_keys"].insert(row)
        return _api_key(row), key

    def check_api_key(self, key: str) -> ApiKey | None:
        """The API key record if ``key`` is a live (not revoked) key, else None."""
        rows = list(
            self._read().query(
                "SELECT * FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", [hash_api_key(key)]
            )
        )
        return _api_key(rows[0]) if rows else None

    def api_key_owner(self, key: str) -> Rater | None:
        """The rater whose live API key ``key`` is, else None: one indexed read, on every API request."""
        row = (
            self._read()
            .conn.execute(
                "SELECT r.name, r.role, r.password_hash, r.created_at FROM api_keys k "
                "JOIN raters r ON r.name = k.rater WHERE k.key_hash = ? AND k.revoked_at IS NULL",
                [hash_api_key(key)],
            )
            .fetchone()
        )
        if row is None:
            return None
        return _rater(dict(zip(("name", "role", "password_hash", "created_at"), row)))

    def list_api_keys(self, rater: str | None = None) -> list[ApiKey]:
        """API keys (never the keys themselves), oldest first; only ``rater``'s if given."""
        sql, params = "SELECT * FROM api_keys", []
        if rater is not None:
            sql, params = sql + " WHERE rater = ?", [rater]
        return [_api_key(row) for row in self._read().query(sql + " ORDER BY created_at, id", params)]

    def revoke_api_key(self, key_id: str) -> ApiKey:
        """Revoke an API key by id; revoking twice keeps the first revocation time."""
        with self._write() as db:
            db.execute(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?", [utc_now(), key_id]
            )
            rows = list(db.query("SELECT * FROM api_keys WHERE id = ?", [key_id]))
        if not rows:
            raise NotFound(f"API key {key_id!r} not found", param="key_id")
        return _api_key(rows[0])
