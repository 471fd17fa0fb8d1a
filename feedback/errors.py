"""Errors raised by the feedback store, exports and imports.

Each error carries the HTTP status it maps to (datasette style: one handler in hub/ renders them as the
OpenAI error envelope), an OpenAI-style ``code`` string, and the ``param`` it is about when there is one.
Messages name the bad value and say what to do.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the feedback package raises on purpose."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class NotFound(StoreError):
    """An id or name that the store does not hold (a generation, vote, rater, job, adapter, dataset)."""

    status = 404
    code = "not_found"


class Invalid(StoreError):
    """A value of the wrong shape; ``errors`` lists every problem found (imports report one per bad row)."""

    status = 422
    code = "invalid"

    def __init__(self, message: str, *, param: str | None = None, errors: list[str] | None = None) -> None:
        super().__init__(message, param=param)
        self.errors = errors if errors is not None else [message]


MAX_REPORTED = 20  # bad rows listed in a message; the count says how many more there were


def bad_rows(source: object, errors: list[str], *, outcome: str, param: str, problem: str = "bad") -> Invalid:
    """One error for every bad row of a file: ``SOURCE: N bad row(s), nothing imported (and M more):`` then
    the first `MAX_REPORTED` of `errors` (``row 17: field "output" is missing``) a line each; all of them in
    ``errors``."""
    more = f" (and {len(errors) - MAX_REPORTED} more)" if len(errors) > MAX_REPORTED else ""
    return Invalid(
        f"{source}: {len(errors)} {problem} row(s), {outcome}{more}:\n" + "\n".join(errors[:MAX_REPORTED]),
        param=param,
        errors=errors,
    )


class Conflict(StoreError):
    """The request clashes with what is stored (a name already taken, a finished job updated)."""

    status = 409
    code = "conflict"


class CorruptStore(StoreError):
    """The database file is damaged or is not a database. It is left untouched, never recreated."""

    status = 500
    code = "corrupt_database"

    def __init__(self, path: object, detail: str) -> None:
        super().__init__(
            f"the feedback database {path} is damaged ({detail}); it was left as it is. Restore it from a "
            f"backup, or move it aside to start with an empty one (`sqlite3 {path} .recover` may save what "
            "is still readable)"
        )
        self.path = path


class DiskFull(StoreError):
    """A write found the disk holding the database full (SQLITE_FULL). The write's transaction was rolled
    back: nothing of it was stored, and what was stored before is unchanged."""

    status = 507  # Insufficient Storage
    code = "disk_full"

    def __init__(self, path: object) -> None:
        super().__init__(
            f"the disk holding the feedback database {path} is full, so nothing was stored; what was stored "
            "before is kept. Free space on that disk (or move the data directory to a larger one) and retry"
        )
        self.path = path


class WriterBusy(StoreError):
    """A write asked not to wait found the store's writer in use (by another thread of this process, or by
    another process's transaction). Nothing was written; the caller may retry with a write that waits."""

    def __init__(self, path: object) -> None:
        super().__init__(
            f"the feedback database {path} is being written by someone else; nothing was written"
        )
        self.path = path
