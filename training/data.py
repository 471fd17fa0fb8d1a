"""Training data: read, check and split a dataset before any model is loaded.

A stage names the rows it needs (sft: ``{"messages"}``, pairs: ``{"prompt", "chosen", "rejected"}``,
kto: ``{"prompt", "completion", "label"}``, prompts: ``{"prompt"}`` for PPO, RLOO and GRPO) and
`load_training_data` reads them through `feedback.imports.import_dataset`, so every format the hub
imports (TRL, alpaca, sharegpt, LLaMA-Factory KTO, UltraFeedback; JSON, JSONL, parquet, `datasets`
directories) trains, and a bad row fails
the run before training with ``row 17: field "chosen" is missing``. Where the eval rows come from, in order:

1. `eval_path`, when given;
2. what an export wrote beside the train rows: ``eval.jsonl`` next to ``train.jsonl`` in a directory, or
   ``<stem>.eval.jsonl`` next to ``<stem>.jsonl``; the ``eval``/``validation``/``test`` split of a saved
   ``DatasetDict``;
3. otherwise a seeded `eval_fraction` of the rows, split by prompt so one prompt never lands on both sides.

`exclude_reasons` leaves out the rows whose ``reasons`` column (an export's: the reason tags of the vote
behind the row) holds any of those reasons, from the train and eval rows alike.

SFT rows of plain prompt/completion strings (TRL's standard, not conversational, form) stay plain strings
(``conversational`` is False), so a base model without a chat template trains on them as text.

    from training.data import load_training_data
    data = load_training_data("exports/pairs", "pairs")
    len(data.train), len(data.eval), data.content_hash
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feedback.errors import Invalid, bad_rows
from feedback.imports import import_dataset
from feedback.reasons import excluded, parse_reasons
from feedback.validation import canonical_json

KINDS: tuple[str, ...] = ("sft", "pairs", "kto", "prompts")
EVAL_SPLITS: tuple[str, ...] = ("eval", "validation", "test")
PAIR_EXTRAS: tuple[str, ...] = ("margin", "weight")


@dataclass
class TrainingData:
    """Checked rows in TRL conversational form, split into train and eval, and where they came from."""

    kind: str
    format: str
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    source: str
    eval_source: str  # a path, "split <fraction>", or "none"
    content_hash: str
    conversational: bool = True  # False: plain prompt/completion strings, trained without a chat template


def load_training_data(
    path: str | Path,
    kind: str,
    *,
    eval_path: str | Path | None = None,
    eval_fraction: float = 0.1,
    seed: int = 0,
    exclude_reasons: str | None = None,
) -> TrainingData:
    """Read and check the rows a stage trains on; raises `Invalid` naming the row and field of a bad row.

    `kind` is sft, pairs, kto or prompts. Pair rows keep numeric ``margin`` and ``weight`` columns when every
    row has them. A kto stage also takes pairs (chosen -> label true, rejected -> label false), as TRL's
    `unpair_preference_dataset` does; a prompts stage takes the distinct prompts of any chat rows.
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction!r}")
    path = Path(path)
    train_file, split, found_eval = _locate(path)
    if eval_path is not None:
        found_eval = (Path(eval_path), "train")
    exclude = parse_reasons(exclude_reasons)
    source_format, train = _read(train_file, split, kind, exclude)
    conversational = not (kind == "sft" and "prompt" in train[0]) if train else True
    if not train:
        raise Invalid(f"{path}: no training rows", param="data")
    if found_eval is not None:
        eval_file, eval_split = found_eval
        evaluation = _read(eval_file, eval_split, kind, exclude)[1]
        if evaluation and ("prompt" in evaluation[0]) != ("prompt" in train[0]) and kind == "sft":
            raise Invalid(
                f"{eval_file} and {train_file} mix plain prompt/completion strings and conversations; "
                "give both in one form",
                param="eval_data",
            )
        eval_source = str(eval_file) if eval_split == "train" else f"{eval_file} [{eval_split}]"
    elif eval_fraction > 0:
        train, evaluation = split_by_prompt(train, eval_fraction, seed)
        eval_source = f"split {eval_fraction:g}"
        if not train:
            raise Invalid(
                f"{path}: all {len(evaluation)} rows fell into the eval split; lower eval_fraction "
                f"({eval_fraction:g}) or give more rows",
                param="eval_fraction",
            )
    else:
        evaluation, eval_source = [], "none"
    content_hash = hashlib.sha256(canonical_json({"train": train, "eval": evaluation}).encode()).hexdigest()
    return TrainingData(
        kind, source_format, train, evaluation, str(path), eval_source, content_hash, conversational
    )


def split_by_prompt(
    rows: list[dict[str, Any]], eval_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A deterministic split: a row goes to eval when the hash of its prompt falls in `eval_fraction`. When
    no prompt's does but there are at least two prompts, the one with the smallest hash is held out: a few
    rows asked for a held-out share still get one (early stopping and the KL bound need it)."""
    train, evaluation = [], []
    points = []
    for row in rows:
        digest = hashlib.sha256(f"{seed}:{canonical_json(prompt_of(row))}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64
        points.append(point)
        (evaluation if point < eval_fraction else train).append(row)
    if eval_fraction > 0 and not evaluation and len(set(points)) >= 2:
        lowest = min(points)
        train = [row for row, point in zip(rows, points) if point != lowest]
        evaluation = [row for row, point in zip(rows, points) if point == lowest]
    return train, evaluation


def prompt_of(row: dict[str, Any]) -> list[dict[str, str]]:
    """The messages a row answers: its prompt, or an SFT conversation without its last reply."""
    if "prompt" in row:
        return row["prompt"]
    return row["messages"][:-1]


# -- locating and reading -------------------------------------------------------------------------------


def _locate(path: Path) -> tuple[Path, str, tuple[Path, str] | None]:
    """(train file, its split, the eval file and split an export left beside it, if any)."""
    if not path.exists():
        raise Invalid(f"training data {str(path)!r} does not exist", param="data")
    if path.is_dir():
        if (path / "train.jsonl").is_file():  # a directory an export wrote
            eval_file = path / "eval.jsonl"
            return path / "train.jsonl", "train", (eval_file, "train") if eval_file.is_file() else None
        splits = _saved_splits(path)
        eval_split = next((s for s in EVAL_SPLITS if s in splits), None)
        return path, "train", (path, eval_split) if eval_split else None
    if path.name.endswith(".jsonl"):
        eval_file = path.with_name(path.name[: -len(".jsonl")] + ".eval.jsonl")
        if eval_file.is_file() and eval_file != path:
            return path, "train", (eval_file, "train")
    return path, "train", None


def _saved_splits(path: Path) -> list[str]:
    index = path / "dataset_dict.json"
    if not index.is_file():
        return []
    try:
        return list(json.loads(index.read_text()).get("splits", []))
    except (json.JSONDecodeError, AttributeError):
        return []


def _read(
    path: Path, split: str, kind: str, exclude: tuple[str, ...] = ()
) -> tuple[str, list[dict[str, Any]]]:
    """(source format, rows of `kind`) from one file or saved split; every row checked; rows whose reasons
    include one of `exclude` left out."""
    result = import_dataset(path, split=split)
    keep = _kept_by_reasons(path, split, exclude)
    if result.kind == kind:
        rows = result.rows
        if kind == "pairs" and result.format != "ultrafeedback":  # its rows are not one pair per record
            rows = _with_pair_extras(path, split, rows)
        if kind == "sft" and result.format == "trl":
            rows = _plain_text_rows(path, split) or rows
        return result.format, _kept(rows, keep)
    if kind == "kto" and result.kind == "pairs":
        return result.format, unpair(_kept(result.rows, keep))
    if kind == "prompts":
        return result.format, distinct_prompts(_kept(result.rows, keep))
    hint = {
        "sft": "SFT needs conversations ending in an assistant reply (messages, alpaca output, sharegpt gpt turn)",
        "pairs": "reward and DPO training need preference pairs; accepted layouts: prompt + chosen + rejected "
        "(TRL), sharegpt conversations + chosen/rejected turns, alpaca instruction + chosen/rejected, "
        "ultrafeedback prompt/instruction + completions with scores",
        "kto": "KTO needs labelled answers; accepted layouts: prompt + completion + label (TRL), messages + "
        "label (LLaMA-Factory), alpaca/sharegpt with kto_tag, or any preference pairs",
    }[kind]
    columns = f"; columns {', '.join(result.columns)}" if result.columns else ""
    raise Invalid(
        f"{path} holds {result.kind} rows ({result.format} format{columns}), not {kind}: {hint}; "
        f"export them with `tunehub export {'pairs' if kind == 'pairs' else kind}`",
        param="data",
    )


def unpair(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Preference pairs as unpaired KTO rows: each chosen answer desirable, each rejected one not."""
    unpaired = []
    for row in rows:
        unpaired.append({"prompt": row["prompt"], "completion": row["chosen"], "label": True})
        unpaired.append({"prompt": row["prompt"], "completion": row["rejected"], "label": False})
    return unpaired


def distinct_prompts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``{"prompt"}`` rows from SFT, pair or KTO rows, each prompt once, in first-seen order."""
    seen: set[str] = set()
    prompts = []
    for row in rows:
        prompt = prompt_of(row)
        key = canonical_json(prompt)
        if prompt and key not in seen:
            seen.add(key)
            prompts.append({"prompt": prompt})
    return prompts


def _plain_text_rows(path: Path, split: str) -> list[dict[str, str]] | None:
    """``{"prompt", "completion"}`` string rows when every source record is one (TRL's standard form), else None.

    The importer has checked the records and turned them into messages; a base without a chat template
    trains on the strings themselves, so they are read again as they are.
    """
    from feedback.imports import _read_rows  # shortcut: the importer's private reader, as below

    records = [record for _, record in _read_rows(path, split)]
    if all(
        isinstance(record.get("prompt"), str)
        and isinstance(record.get("completion"), str)
        and record.get("messages") is None
        for record in records
    ):
        return [{"prompt": record["prompt"], "completion": record["completion"]} for record in records]
    return None


def _with_pair_extras(path: Path, split: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copy numeric ``margin``/``weight`` columns onto the normalised pair rows, checking each value.

    The importer normalises rows to prompt/chosen/rejected only, so the columns are read again from the
    source records (same order, one record per row).
    """
    # Shortcut: the importer's reader is private; it returns the records in the order of `rows`.
    from feedback.imports import _read_rows

    numbered = _read_rows(path, split)
    if len(numbered) != len(rows):  # pragma: no cover - the importer keeps every row or raises
        return rows
    numbers = [number for number, _ in numbered]
    records = [record for _, record in numbered]
    errors: list[str] = []
    present = {name for name in PAIR_EXTRAS if any(r.get(name) is not None for r in records)}
    extended = [dict(row) for row in rows]
    for name in sorted(present):
        for number, record, row in zip(numbers, records, extended):
            value = record.get(name)
            if value is None:
                errors.append(f'row {number}: field "{name}" is missing; give it on every row or on none')
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                errors.append(f'row {number}: field "{name}" must be a finite number, got {value!r:.60}')
            elif name == "weight" and value < 0:
                errors.append(f'row {number}: field "weight" must not be negative, got {value!r}')
            else:
                row[name] = float(value)
    if errors:
        raise bad_rows(path, errors, outcome="nothing trained", param="data")
    return extended


def _kept_by_reasons(path: Path, split: str, exclude: tuple[str, ...]) -> list[bool] | None:
    """Per source record, whether its ``reasons`` column (a list of tags, or absent) avoids `exclude`;
    None when nothing is excluded."""
    if not exclude:
        return None
    from feedback.imports import _read_rows  # shortcut: the importer's private reader, as above

    keep = []
    for number, record in _read_rows(path, split):
        reasons = record.get("reasons") or []
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            raise Invalid(
                f'{path}: row {number}: field "reasons" must be a list of strings, got {reasons!r:.60}',
                param="data",
            )
        keep.append(not excluded(reasons, exclude))
    return keep


def _kept(rows: list[dict[str, Any]], keep: list[bool] | None) -> list[dict[str, Any]]:
    """`rows` (one per source record) without those `keep` marks False."""
    if keep is None:
        return rows
    if len(keep) != len(rows):  # pragma: no cover - the importer keeps every row or raises
        raise Invalid("the rows and their reasons do not line up; cannot exclude reasons", param="data")
    return [row for row, kept in zip(rows, keep) if kept]
