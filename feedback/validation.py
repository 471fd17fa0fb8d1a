"""Checks on the values the feedback store accepts, and the canonical JSON it hashes.

Every check raises :class:`~feedback.errors.Invalid` with a message that names the parameter and the bad
value, and returns the value in the form the store keeps.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from feedback.errors import Invalid

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MAX_TAGS, MAX_TAG_CHARS = 16, 64
MAX_COMMENT_CHARS = 4000
MIN_RANKED, MAX_RANKED = 2, 6


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal strings (and equal hashes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def check_object(value: object, param: str) -> dict[str, Any]:
    """A JSON object (a job's params or metrics, an adapter's metrics); None is an empty one."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(f"{param} must be a JSON object, got {value!r:.80}", param=param)
    return value


def check_name(value: object, param: str) -> str:
    """A rater or adapter name: 1-64 characters of letters, digits and ``._@-``, starting alphanumeric."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise Invalid(
            f"{param} {value!r} is not a valid name: use 1-64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit",
            param=param,
        )
    return value


def check_choice(value: object, choices: Sequence[str], param: str) -> str:
    if value not in choices:
        raise Invalid(f"{param} {value!r} is not one of {', '.join(choices)}", param=param)
    return str(value)


def check_text(value: object, param: str, *, max_chars: int | None = None, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise Invalid(f"{param} must be a string, got {type(value).__name__} {value!r:.80}", param=param)
    if not allow_empty and not value.strip():
        raise Invalid(f"{param} is empty", param=param)
    if max_chars is not None and len(value) > max_chars:
        raise Invalid(f"{param} has {len(value)} characters; the limit is {max_chars}", param=param)
    return value


def check_optional_text(value: object, param: str, *, max_chars: int = MAX_COMMENT_CHARS) -> str | None:
    if value is None or value == "":
        return None
    return check_text(value, param, max_chars=max_chars)


def check_tags(tags: Iterable[str] | None, param: str = "tags") -> tuple[str, ...]:
    """Reason tags: short non-empty strings, duplicates dropped, order kept."""
    if tags is None:
        return ()
    if isinstance(tags, str):
        raise Invalid(f"{param} must be a list of strings, got the string {tags!r}", param=param)
    out: list[str] = []
    for tag in tags:
        tag = check_text(tag, param, max_chars=MAX_TAG_CHARS).strip()
        if tag not in out:
            out.append(tag)
    if len(out) > MAX_TAGS:
        raise Invalid(f"{param} has {len(out)} tags; the limit is {MAX_TAGS}", param=param)
    return tuple(out)


def check_messages(messages: object, param: str = "prompt") -> list[dict[str, Any]]:
    """A non-empty list of chat messages, each a dict with a string ``role`` and a ``content``."""
    if not isinstance(messages, list) or not messages:
        raise Invalid(f"{param} must be a non-empty list of chat messages, got {messages!r:.80}", param=param)
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise Invalid(
                f"{param}[{i}] must be a message with a string 'role', got {message!r:.80}", param=param
            )
        if "content" not in message:
            raise Invalid(f"{param}[{i}] has no 'content'", param=param)
    return messages


def check_count(value: object, param: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Invalid(f"{param} must be a non-negative integer, got {value!r}", param=param)
    return value


def check_ms(value: object, param: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise Invalid(f"{param} must be a non-negative number of milliseconds, got {value!r}", param=param)
    return float(value)


def check_ranking(ranking: object, param: str = "ranking") -> tuple[tuple[str, ...], ...]:
    """Generation ids best first; an inner list holds answers tied with each other.

    ``["g1", ["g2", "g3"], "g4"]`` ranks g1 first, g2 and g3 tied second, g4 last. Returns tiers:
    ``(("g1",), ("g2", "g3"), ("g4",))``. Between 2 and 6 distinct answers.
    """
    if not isinstance(ranking, (list, tuple)):
        raise Invalid(
            f"{param} must be a list of generation ids, best first; got {ranking!r:.80}", param=param
        )
    tiers: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for entry in ranking:
        tier = (entry,) if isinstance(entry, str) else entry
        if not isinstance(tier, (list, tuple)) or not tier or not all(isinstance(g, str) and g for g in tier):
            raise Invalid(
                f"{param} entry {entry!r:.80} must be a generation id or a non-empty list of tied ids",
                param=param,
            )
        for generation_id in tier:
            if generation_id in seen:
                raise Invalid(f"{param} lists generation {generation_id!r} twice", param=param)
            seen.add(generation_id)
        tiers.append(tuple(tier))
    if not MIN_RANKED <= len(seen) <= MAX_RANKED:
        raise Invalid(
            f"{param} ranks {len(seen)} answers; rank between {MIN_RANKED} and {MAX_RANKED}", param=param
        )
    return tuple(tiers)
