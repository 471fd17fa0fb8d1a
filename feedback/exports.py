"""Dataset exports from the feedback store in TRL's conversational formats (and alpaca/sharegpt for SFT).

    from feedback.exports import export_dataset
    export = export_dataset(store, "pairs", "data/pairs", mode="dpo")   # writes train.jsonl, eval.jsonl
    export.dataset_id, len(export.train), export.vote_ids

Kinds and what they hold (only active votes count; a revote replaces the earlier vote):

- ``sft``: ``{"messages"}``: thumbs-up answers, edits (the corrected answer), pairwise winners and the
  best tier of rankings. Formats ``trl``, ``alpaca``, ``sharegpt``.
- ``pairs``: ``{"prompt", "chosen", "rejected"}`` (+ ``margin``, ``weight`` when asked): pairwise a/b
  votes, rankings through :func:`feedback.pairs.expand_ranking` (``mode`` reward or dpo), and edits
  (correction chosen over the original). Ties and both_bad give no pair.
- ``kto``: ``{"prompt", "completion", "label"}``: thumbs up True / down False, pairwise winner True and
  loser False, both answers of a both_bad vote False, a ranking's best tier True and worst tier False,
  edits True and their originals False.
- ``prompts``: ``{"prompt"}``: every distinct prompt the hub answered (for PPO, RLOO, GRPO).

Every row made from votes carries a ``reasons`` column: the reason tags its vote gave (thumbs-down reasons
such as "too long" included), so the signal survives the export; ``exclude_reasons`` leaves out the votes
that gave any of those reasons (matched in any spelling, feedback/reasons.py).

Duplicate rows are removed (the vote ids and reasons of all copies are kept). Rows are split into train and eval by
conversation, with a deterministic hash, so no conversation's rows land on both sides. Each export
records a dataset snapshot (content hash, vote ids) in the store.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from feedback.errors import Invalid
from feedback.formats import assistant, messages_to_alpaca, messages_to_sharegpt, normalise_messages
from feedback.pairs import PairMode, expand_ranking
from feedback.reasons import excluded, parse_reasons
from feedback.records import Generation, Vote
from feedback.store import Store
from feedback.validation import canonical_json, check_choice

ExportKind = Literal["sft", "pairs", "kto", "prompts"]
ExportFormat = Literal["trl", "alpaca", "sharegpt"]
KINDS = ("sft", "pairs", "kto", "prompts")
FORMATS = ("trl", "alpaca", "sharegpt")


@dataclass(frozen=True)
class Export:
    """What an export wrote: the rows of each split, the votes they came from and the snapshot id."""

    kind: str
    format: str
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    vote_ids: tuple[int, ...]
    content_hash: str
    dataset_id: str | None  # None for a preview (``snapshot=False``)
    paths: dict[str, str] = field(default_factory=dict)


@dataclass
class _Row:
    data: dict[str, Any]
    conversation_id: str
    vote_ids: set[int]


def export_dataset(
    store: Store,
    kind: ExportKind,
    out: str | Path | None = None,
    *,
    format: ExportFormat = "trl",
    mode: PairMode = "dpo",
    margin: bool = False,
    weight: bool = False,
    eval_fraction: float = 0.1,
    split_salt: str = "tunehub",
    snapshot: bool = True,
    after_vote: int = 0,
    exclude_reasons: str | Sequence[str] | None = None,
) -> Export:
    """Export the store's votes as a dataset of ``kind`` and record a snapshot; returns the rows.

    ``out`` ending in ``.jsonl`` is the train file (eval goes to ``<stem>.eval.jsonl`` beside it); any
    other ``out`` is a directory that gets ``train.jsonl`` and ``eval.jsonl``; None writes no files. An
    empty split writes no file. ``mode`` picks the pairs a ranking gives (see ``expand_ranking``);
    ``margin`` adds the ranking gap as ``margin`` and ``weight`` each pair's weight, to pair rows.
    ``eval_fraction`` of conversations (by hash of ``split_salt`` and the conversation id) go to eval.
    ``snapshot=False`` records nothing (a preview). ``after_vote`` keeps only votes with a larger id (what
    is new since an earlier snapshot; prompts ignore it). ``exclude_reasons`` (``"too_long,wrong"`` or a
    list) leaves out every vote that gave one of those reasons. Raises ``Invalid`` for a bad argument or when there is
    nothing to export.
    """
    check_choice(kind, KINDS, "kind")
    check_choice(format, FORMATS, "format")
    if format != "trl" and kind != "sft":
        raise Invalid(f"format {format!r} holds SFT data only; export {kind} as trl", param="format")
    if not 0 <= eval_fraction < 1:
        raise Invalid(f"eval_fraction must be in [0, 1), got {eval_fraction!r}", param="eval_fraction")
    dropped = parse_reasons(exclude_reasons)
    if kind == "prompts":
        rows = _prompt_rows(store.list_generations())
    else:
        votes = sorted(
            (v for v in store.list_votes() if v.id > after_vote and not excluded(v.tags, dropped)),
            key=lambda vote: vote.id,
        )
        generations = store.get_generations(g for vote in votes for g in vote.generation_ids)
        if kind == "sft":
            rows = _sft_rows(votes, generations)
        elif kind == "pairs":
            rows = _pair_rows(votes, generations, mode=mode, margin=margin, weight=weight)
        else:
            rows = _kto_rows(votes, generations)
    rows = _dedupe(rows)
    if not rows:
        since = f" after vote {after_vote}" if after_vote else ""
        since += f" without reasons {', '.join(dropped)}" if dropped else ""
        raise Invalid(
            f"nothing to export as {kind}: no votes of the kinds it uses{since} yet; rate some answers first"
        )
    if format in ("alpaca", "sharegpt"):
        convert = messages_to_alpaca if format == "alpaca" else messages_to_sharegpt
        rows = [
            _Row({**convert(r.data["messages"]), "reasons": r.data["reasons"]}, r.conversation_id, r.vote_ids)
            for r in rows
        ]
    train = [r for r in rows if not _in_eval(r.conversation_id, eval_fraction, split_salt)]
    evaluation = [r for r in rows if _in_eval(r.conversation_id, eval_fraction, split_salt)]
    splits = {"train": [r.data for r in train], "eval": [r.data for r in evaluation]}
    content_hash = hashlib.sha256(canonical_json(splits).encode()).hexdigest()
    vote_ids = tuple(sorted({id for r in rows for id in r.vote_ids}))
    paths = _write(out, splits) if out is not None else {}
    if not snapshot:
        return Export(kind, format, splits["train"], splits["eval"], vote_ids, content_hash, None, paths)
    record = store.add_dataset(
        kind=kind,
        format=format,
        content_hash=content_hash,
        n_rows=len(rows),
        n_train=len(train),
        n_eval=len(evaluation),
        vote_ids=vote_ids,
        path=str(out) if out is not None else None,
        source="export",
        params={
            "mode": mode,
            "margin": margin,
            "weight": weight,
            "eval_fraction": eval_fraction,
            "split_salt": split_salt,
            "after_vote": after_vote,
            "exclude_reasons": list(dropped),
        },
    )
    return Export(kind, format, splits["train"], splits["eval"], vote_ids, content_hash, record.id, paths)


def _sft_rows(votes: list[Vote], generations: dict[str, Generation]) -> list[_Row]:
    rows = []
    for vote in votes:
        answers: list[tuple[Generation, str]] = []
        if vote.kind == "thumbs" and vote.value == "up":
            answers = [(generations[vote.generation_ids[0]], generations[vote.generation_ids[0]].text)]
        elif vote.kind == "edit":
            answers = [(generations[vote.generation_ids[0]], vote.edited_text or "")]
        elif vote.kind == "pairwise" and vote.value in ("a", "b"):
            winner = generations[vote.generation_ids[0 if vote.value == "a" else 1]]
            answers = [(winner, winner.text)]
        elif vote.kind == "ranking" and vote.ranking and len(vote.ranking) > 1:
            answers = [(generations[id], generations[id].text) for id in vote.ranking[0]]
        for generation, text in answers:
            messages = [*normalise_messages(generation.prompt), *assistant(text)]
            rows.append(
                _Row({"messages": messages, "reasons": list(vote.tags)}, vote.conversation_id, {vote.id})
            )
    return rows


def _pair_rows(
    votes: list[Vote], generations: dict[str, Generation], *, mode: PairMode, margin: bool, weight: bool
) -> list[_Row]:
    rows = []
    for vote in votes:
        prompt = normalise_messages(generations[vote.generation_ids[0]].prompt)
        if vote.kind == "edit":
            # The correction is chosen over the original: texts, not generation ids, on both sides.
            tiers = [[vote.edited_text or ""], [generations[vote.generation_ids[0]].text]]
        elif vote.kind == "pairwise" and vote.value in ("a", "b"):
            a, b = (generations[id].text for id in vote.generation_ids)
            tiers = [[a], [b]] if vote.value == "a" else [[b], [a]]
        elif vote.kind == "ranking" and vote.ranking:
            tiers = [[generations[id].text for id in tier] for tier in vote.ranking]
        else:
            continue
        for pair in expand_ranking(tiers, mode):
            if pair.chosen == pair.rejected:
                continue  # two answers with the same text teach nothing
            data: dict[str, Any] = {
                "prompt": prompt,
                "chosen": assistant(pair.chosen),
                "rejected": assistant(pair.rejected),
            }
            if margin:
                data["margin"] = float(pair.gap)
            if weight:
                data["weight"] = pair.weight
            data["reasons"] = list(vote.tags)
            rows.append(_Row(data, vote.conversation_id, {vote.id}))
    return rows


def _kto_rows(votes: list[Vote], generations: dict[str, Generation]) -> list[_Row]:
    rows = []
    for vote in votes:
        first = generations[vote.generation_ids[0]]
        labelled: list[tuple[str, bool]] = []
        if vote.kind == "thumbs":
            labelled = [(first.text, vote.value == "up")]
        elif vote.kind == "edit":
            labelled = [(vote.edited_text or "", True), (first.text, False)]
        elif vote.kind == "pairwise" and vote.value in ("a", "b", "both_bad"):
            a, b = (generations[id].text for id in vote.generation_ids)
            labelled = {
                "a": [(a, True), (b, False)],
                "b": [(b, True), (a, False)],
                "both_bad": [(a, False), (b, False)],
            }[vote.value]
        elif vote.kind == "ranking" and vote.ranking and len(vote.ranking) > 1:
            labelled = [(generations[id].text, True) for id in vote.ranking[0]]
            labelled += [(generations[id].text, False) for id in vote.ranking[-1]]
        prompt = normalise_messages(first.prompt)
        for text, label in labelled:
            rows.append(
                _Row(
                    {
                        "prompt": prompt,
                        "completion": assistant(text),
                        "label": label,
                        "reasons": list(vote.tags),
                    },
                    vote.conversation_id,
                    {vote.id},
                )
            )
    return rows


def _prompt_rows(generations: Iterable[Generation]) -> list[_Row]:
    return [_Row({"prompt": normalise_messages(g.prompt)}, g.conversation_id, set()) for g in generations]


def _dedupe(rows: list[_Row]) -> list[_Row]:
    """Drop repeated rows (same content, ignoring weight, margin and reasons), merging their vote ids and
    reasons."""
    kept: dict[str, _Row] = {}
    for row in rows:
        key = canonical_json({k: v for k, v in row.data.items() if k not in ("weight", "margin", "reasons")})
        if key in kept:
            kept[key].vote_ids |= row.vote_ids
            if "reasons" in row.data:
                reasons = kept[key].data["reasons"]
                reasons.extend(r for r in row.data["reasons"] if r not in reasons)
        else:
            kept[key] = row
    return list(kept.values())


def _in_eval(conversation_id: str, eval_fraction: float, salt: str) -> bool:
    digest = hashlib.sha256(f"{salt}:{conversation_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction


def _write(out: str | Path, splits: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """Write each non-empty split as JSONL (to a temporary file renamed into place); return the paths."""
    out = Path(out)
    if out.suffix == ".jsonl":
        targets = {"train": out, "eval": out.with_name(out.stem + ".eval.jsonl")}
    else:
        targets = {"train": out / "train.jsonl", "eval": out / "eval.jsonl"}
    paths = {}
    for split, rows in splits.items():
        target = targets[split]
        if not rows:
            target.unlink(missing_ok=True)  # a stale file from an earlier export would mislead training
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, target)
        paths[split] = str(target)
    return paths
