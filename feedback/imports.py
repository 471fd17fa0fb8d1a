"""Dataset imports: community files in TRL, alpaca or sharegpt format, normalised to TRL conversational rows.

    from feedback.imports import import_dataset
    result = import_dataset("data/alpaca_en_demo.json")        # or .jsonl, .parquet, a save_to_disk dir
    result.kind, result.format, result.rows[0]                 # "sft", "alpaca", {"messages": [...]}

Accepted rows (the forms of LLaMA-Factory's demo data and TRL's docs), detected from the first row:

- TRL: ``messages``; ``prompt``+``chosen``+``rejected`` (also without ``prompt``: the shared start of
  chosen and rejected becomes the prompt; a prompt repeated at the start of both is taken off them, as
  HuggingFaceH4/ultrafeedback_binarized has it, whose ``messages`` column then is ignored);
  ``prompt``+``completion``+``label``; ``prompt``+``completion``; ``prompt``. Columns may be message lists
  (conversational) or plain strings (standard).
- LLaMA-Factory KTO (kto_en_demo.json): ``messages`` plus a boolean ``label``; the last assistant message is
  the completion, the messages before it the prompt.
- alpaca: ``instruction``, ``input``, ``output``, optional ``system`` and ``history`` ``[[q, a], ...]``;
  ``chosen``/``rejected`` instead of ``output`` for preferences, ``kto_tag`` for KTO labels.
- sharegpt: ``conversations`` of ``{"from": "human"|"gpt"|"system", "value"}``, optional ``system``;
  ``chosen``/``rejected`` turns for preferences, ``kto_tag`` for KTO labels.
- ultrafeedback: a prompt (``prompt`` or ``instruction``) with several scored ``completions`` (or distilabel's
  ``generations`` and ``ratings``), turned into pairs by score (`feedback.scored_completions`).

Rows normalise to the export kinds: ``sft`` ``{"messages"}`` (prompt+completion rows become messages),
``pairs`` ``{"prompt", "chosen", "rejected"}``, ``kto`` ``{"prompt", "completion", "label"}``, ``prompts``
``{"prompt"}``. Every row is checked; a bad file raises ``Invalid`` listing the first problems as
``row 17: field "output" is missing`` (rows count from 1: the line of a JSONL file, the item of a JSON
list, the row of a table) and imports nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feedback.errors import Invalid, bad_rows
from feedback.formats import (
    RowError,
    alpaca_prompt,
    assistant,
    sharegpt_messages,
    sharegpt_turn,
    trl_messages,
)
from feedback.scored_completions import is_scored_completions, scored_pairs
from feedback.store import Store
from feedback.validation import canonical_json

LAYOUTS = (  # what a file may hold, said in the errors of a file that holds something else
    "messages (SFT)",
    "prompt + chosen + rejected (pairs)",
    "prompt + completion + label (KTO)",
    "messages + label (LLaMA-Factory KTO)",
    "prompt + completion (SFT)",
    "prompt (prompts)",
    "alpaca instruction + output | chosen/rejected | kto_tag",
    "sharegpt conversations [+ chosen/rejected | kto_tag]",
    "ultrafeedback prompt/instruction + completions with scores",
)


@dataclass(frozen=True)
class ImportResult:
    """Rows normalised to TRL conversational form, what they were, and the snapshot id if stored."""

    kind: str
    format: str
    rows: list[dict[str, Any]]
    content_hash: str
    dataset_id: str | None
    source: str
    columns: tuple[str, ...] = ()  # the first row's fields, for errors that name what a file holds


def import_dataset(
    path: str | Path,
    *,
    format: str | None = None,
    split: str = "train",
    store: Store | None = None,
    out: str | Path | None = None,
) -> ImportResult:
    """Read, check and normalise a dataset file or ``save_to_disk`` directory.

    ``format`` (trl, alpaca, sharegpt, ultrafeedback) insists on one format; by default the first row decides. ``split``
    picks the split of a saved ``DatasetDict``. With ``out`` the normalised rows are written there as
    JSONL; with ``store`` a dataset snapshot (source ``import``) is recorded. Raises ``Invalid`` for an
    unreadable file or any bad row, before writing or recording anything.
    """
    path = Path(path)
    if format is not None and format not in _DETECT_ORDER:
        raise Invalid(f"format {format!r} is not one of {', '.join(_DETECT_ORDER)}", param="format")
    records = _read_rows(path, split)
    if not records:
        raise Invalid(f"{path}: no rows to import", param="path")
    errors: list[str] = []
    rows: list[dict[str, Any]] = []
    expected: tuple[str, str] | None = None
    for number, record in records:
        try:
            if not isinstance(record, dict):
                raise RowError("(row)", f"must be a JSON object, got {type(record).__name__}")
            detected = _detect(record)
            if format is not None and detected[0] != format:
                raise RowError(detected[2], f"marks a {detected[0]} row, but format {format!r} was asked for")
            if expected is None:
                expected = detected[:2]
            elif detected[0] != expected[0]:
                raise RowError(
                    detected[2],
                    f"marks a {detected[0]} row, but the first row is {expected[0]}; "
                    "one file holds one format",
                )
            # Same format, other kind: a field is missing, and the first row's normaliser says which.
            normalised = _NORMALISERS[expected](record)
            if isinstance(normalised, list):  # a row of scored completions gives several pairs
                rows.extend(normalised)
            else:
                rows.append(normalised)
        except RowError as e:
            errors.append(f"row {number}: {e}")
    if errors:
        raise bad_rows(path, errors, outcome="nothing imported", param="path")
    assert expected is not None
    source_format, kind = expected
    if not rows:  # only scored rows can give nothing: every row's completions tied
        raise Invalid(
            f"{path}: no preference pairs: in every row the completions have the same score", param="path"
        )
    content_hash = hashlib.sha256("\n".join(canonical_json(r) for r in rows).encode()).hexdigest()
    if out is not None:
        _write_jsonl(Path(out), rows)
    dataset_id = None
    if store is not None:
        snapshot = store.add_dataset(
            kind=kind,
            format=source_format,
            content_hash=content_hash,
            n_rows=len(rows),
            path=str(out) if out is not None else str(path),
            source="import",
            params={"source_path": str(path), "split": split},
        )
        dataset_id = snapshot.id
    columns = tuple(records[0][1]) if isinstance(records[0][1], dict) else ()
    return ImportResult(kind, source_format, rows, content_hash, dataset_id, str(path), columns)


# -- reading ------------------------------------------------------------------------------------------


def _read_rows(path: Path, split: str) -> list[tuple[int, Any]]:
    """(row number, record) pairs from a JSON, JSONL or parquet file or a ``save_to_disk`` directory."""
    if not path.exists():
        raise Invalid(f"{path} does not exist", param="path")
    if path.is_dir():
        return _read_saved_dataset(path, split)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(enumerate(pq.read_table(path).to_pylist(), start=1))
    if suffix not in (".json", ".jsonl"):
        raise Invalid(
            f"{path}: unsupported file type {suffix!r}; use .json, .jsonl, .parquet or a datasets directory"
        )
    text = path.read_text(encoding="utf-8")
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # maybe JSON lines in a .json file, as `datasets` also accepts
        if isinstance(data, list):
            return list(enumerate(data, start=1))
        if data is not None and not isinstance(data, dict):
            raise Invalid(f"{path}: expected a JSON list of rows, got {type(data).__name__}", param="path")
        if isinstance(data, dict):
            return [(1, data)]
    rows, errors = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as e:
            errors.append(f"row {number}: not valid JSON ({e.msg} at column {e.colno})")
    if errors:
        raise bad_rows(path, errors, outcome="nothing imported", param="path", problem="unreadable")
    return rows


def _read_saved_dataset(path: Path, split: str) -> list[tuple[int, Any]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise Invalid(f"{path}: not a datasets save_to_disk directory ({e})", param="path") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise Invalid(f"{path} has no split {split!r}; it has {', '.join(loaded)}", param="split")
        loaded = loaded[split]
    return list(enumerate(loaded.to_list(), start=1))


def _write_jsonl(out: Path, rows: list[dict[str, Any]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, out)


# -- detecting and normalising rows -------------------------------------------------------------------

_DETECT_ORDER = ("trl", "alpaca", "sharegpt", "ultrafeedback")


def _present(row: dict[str, Any], field: str) -> bool:
    return row.get(field) is not None


def _detect(row: dict[str, Any]) -> tuple[str, str, str]:
    """(format, kind, the field that decided) of one row."""
    if is_scored_completions(row):
        return "ultrafeedback", "pairs", "completions" if _present(row, "completions") else "generations"
    if _present(row, "instruction") or (_present(row, "output") and not _present(row, "conversations")):
        field = "instruction" if _present(row, "instruction") else "output"
        return "alpaca", _alpaca_or_sharegpt_kind(row), field
    if _present(row, "conversations"):
        return "sharegpt", _alpaca_or_sharegpt_kind(row), "conversations"
    if _present(row, "chosen") or _present(row, "rejected"):  # before messages: ultrafeedback_binarized
        return "trl", "pairs", "chosen" if _present(row, "chosen") else "rejected"
    if _present(row, "messages"):
        return "trl", "kto" if _present(row, "label") else "sft", "messages"
    if _present(row, "label"):
        return "trl", "kto", "label"
    if _present(row, "completion"):
        return "trl", "sft", "completion"
    if _present(row, "prompt"):
        return "trl", "prompts", "prompt"
    if _present(row, "text"):
        raise RowError("text", "holds plain text, not chat data; convert it to messages")
    fields = ", ".join(map(repr, row)) or "none"
    raise RowError("(row)", f"has no known fields (it has {fields}); accepted layouts: {'; '.join(LAYOUTS)}")


def _alpaca_or_sharegpt_kind(row: dict[str, Any]) -> str:
    if _present(row, "chosen") or _present(row, "rejected"):
        return "pairs"
    return "kto" if _present(row, "kto_tag") else "sft"


def _label(row: dict[str, Any], field: str) -> bool:
    value = row.get(field)
    if value is None:
        raise RowError(field, "is missing")
    if not isinstance(value, bool):
        raise RowError(field, f"must be true or false, got {value!r:.60}")
    return value


def _text(row: dict[str, Any], field: str) -> str:
    value = row.get(field)
    if value is None:
        raise RowError(field, "is missing")
    if not isinstance(value, str):
        raise RowError(field, f"must be a string, got {type(value).__name__} {value!r:.60}")
    return value


def _answer(value: Any, field: str) -> list[dict[str, str]]:
    """An alpaca or sharegpt ``chosen``/``rejected`` answer: a string or a ``{"from", "value"}`` turn."""
    if value is None:
        raise RowError(field, "is missing")
    if isinstance(value, str):
        return assistant(value)
    turn = sharegpt_turn(value, field)
    if turn["role"] != "assistant":
        raise RowError(f"{field}.from", f"is {value['from']!r}; an answer comes from gpt")
    return [turn]


def _ends_with(messages: list[dict[str, str]], role: str, field: str) -> None:
    if messages[-1]["role"] != role:
        raise RowError(field, f"must end with a {role} message, but the last is from {messages[-1]['role']}")


def _trl_sft(row: dict[str, Any]) -> dict[str, Any]:
    if _present(row, "messages"):
        messages = trl_messages(row["messages"], "messages", default_role="user")
    else:
        prompt = trl_messages(row.get("prompt"), "prompt", default_role="user")
        messages = prompt + trl_messages(row.get("completion"), "completion", default_role="assistant")
    _ends_with(messages, "assistant", "messages" if _present(row, "messages") else "completion")
    return {"messages": messages}


def _trl_pairs(row: dict[str, Any]) -> dict[str, Any]:
    chosen = trl_messages(row.get("chosen"), "chosen", default_role="assistant")
    rejected = trl_messages(row.get("rejected"), "rejected", default_role="assistant")
    if _present(row, "prompt"):
        prompt = trl_messages(row["prompt"], "prompt", default_role="user")
        n = len(prompt)
        if all(len(c) > n and c[:n] == prompt for c in (chosen, rejected)):
            # ultrafeedback_binarized repeats the prompt in chosen and rejected: keep it once
            chosen, rejected = chosen[n:], rejected[n:]
    else:
        # Implicit prompt (TRL accepts it): the shared start of both conversations.
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == 0:
            raise RowError("prompt", "is missing, and chosen and rejected share no opening messages")
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _trl_kto(row: dict[str, Any]) -> dict[str, Any]:
    if _present(row, "messages"):  # LLaMA-Factory's KTO layout: the last assistant message is the completion
        messages = trl_messages(row["messages"], "messages", default_role="user")
        _ends_with(messages, "assistant", "messages")
        if len(messages) < 2:
            raise RowError("messages", "must hold a prompt before the assistant message it labels")
        return {"prompt": messages[:-1], "completion": messages[-1:], "label": _label(row, "label")}
    return {
        "prompt": trl_messages(row.get("prompt"), "prompt", default_role="user"),
        "completion": trl_messages(row.get("completion"), "completion", default_role="assistant"),
        "label": _label(row, "label"),
    }


def _trl_prompts(row: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": trl_messages(row.get("prompt"), "prompt", default_role="user")}


def _alpaca_sft(row: dict[str, Any]) -> dict[str, Any]:
    prompt = alpaca_prompt(row)
    return {"messages": prompt + assistant(_text(row, "output"))}


def _alpaca_pairs(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "prompt": alpaca_prompt(row),
        "chosen": _answer(row.get("chosen"), "chosen"),
        "rejected": _answer(row.get("rejected"), "rejected"),
    }


def _alpaca_kto(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "prompt": alpaca_prompt(row),
        "completion": assistant(_text(row, "output")),
        "label": _label(row, "kto_tag"),
    }


def _sharegpt_sft(row: dict[str, Any]) -> dict[str, Any]:
    messages = sharegpt_messages(row)
    _ends_with(messages, "assistant", "conversations")
    return {"messages": messages}


def _sharegpt_pairs(row: dict[str, Any]) -> dict[str, Any]:
    prompt = sharegpt_messages(row)
    _ends_with(prompt, "user", "conversations")
    return {
        "prompt": prompt,
        "chosen": _answer(row.get("chosen"), "chosen"),
        "rejected": _answer(row.get("rejected"), "rejected"),
    }


def _sharegpt_kto(row: dict[str, Any]) -> dict[str, Any]:
    messages = sharegpt_messages(row)
    _ends_with(messages, "assistant", "conversations")
    return {"prompt": messages[:-1], "completion": messages[-1:], "label": _label(row, "kto_tag")}


_NORMALISERS: dict[tuple[str, str], Callable[[dict[str, Any]], dict[str, Any] | list[dict[str, Any]]]] = {
    ("trl", "sft"): _trl_sft,
    ("trl", "pairs"): _trl_pairs,
    ("trl", "kto"): _trl_kto,
    ("trl", "prompts"): _trl_prompts,
    ("alpaca", "sft"): _alpaca_sft,
    ("alpaca", "pairs"): _alpaca_pairs,
    ("alpaca", "kto"): _alpaca_kto,
    ("sharegpt", "sft"): _sharegpt_sft,
    ("sharegpt", "pairs"): _sharegpt_pairs,
    ("sharegpt", "kto"): _sharegpt_kto,
    ("ultrafeedback", "pairs"): scored_pairs,
}
