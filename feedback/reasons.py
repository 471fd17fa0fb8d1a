"""Reason tags as signal: the key a reason is matched by, and the parsing of a list of reasons to exclude.

Raters give reasons as they read in the UI ("too long", "bad format") or as API callers spell them
("too_long", "Too-Long"); all of these are one reason. :func:`reason_key` is the form the store indexes
(``vote_reasons.reason``) and every filter compares.

    reason_key("Too long")                      # "too_long"
    parse_reasons("too_long, wrong")            # ("too_long", "wrong")
    excluded(("too long", "helpful"), {"too_long"})   # True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from feedback.errors import Invalid
from feedback.validation import MAX_TAG_CHARS


def reason_key(tag: str) -> str:
    """Lower case, spaces and hyphens as underscores: ``"Too long"`` and ``"too-long"`` -> ``"too_long"``."""
    return "_".join(tag.strip().lower().replace("-", " ").replace("_", " ").split())


def parse_reasons(value: str | Sequence[str] | None, param: str = "exclude_reasons") -> tuple[str, ...]:
    """Reason keys from ``"too_long,wrong"`` or a list; raises Invalid naming an empty or over-long one."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    keys: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise Invalid(f"{param}: reason {item!r} is not a string", param=param)
        if isinstance(value, str) and not item.strip() and len(items) > 1:
            raise Invalid(
                f"{param} {value!r} has an empty reason; separate reasons with one comma", param=param
            )
        key = reason_key(item)
        if not key:
            if isinstance(value, str) and len(items) == 1:
                continue  # "" means no reasons
            raise Invalid(f"{param}: reason {item!r} is empty", param=param)
        if len(key) > MAX_TAG_CHARS:
            raise Invalid(
                f"{param}: reason {item!r:.80} is longer than {MAX_TAG_CHARS} characters", param=param
            )
        if key not in keys:
            keys.append(key)
    return tuple(keys)


def excluded(tags: Iterable[str], keys: Iterable[str]) -> bool:
    """Whether any of ``tags`` is one of the reason ``keys``."""
    wanted = set(keys)
    return bool(wanted) and any(reason_key(tag) in wanted for tag in tags)
