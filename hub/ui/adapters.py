"""The Adapters tab (admins only): every registered adapter version with its status (candidate, promoted,
retired), the name the engine serves it under, method, stage, parent, metrics (a reward model's held-out
accuracy, flagged when too weak for PPO/RLOO/GRPO) and age; the selected one's
lineage down to its job, dataset snapshot and votes; load/unload into the running engine; promote and
rollback (a promotion the replay guard refuses needs the override box); the selected one's regression replay
beside the promoted model's answers, the prompts that flipped (against the promoted model and the base, with
the answers' lengths) and the promotion rule's decision; the adapters a vote trained;
merge-and-export of full or 8-bit/4-bit weights, or a GGUF file (f16/q8_0) for llama.cpp and Ollama (in a
worker thread); the promotions over time with each promoted version's rating and replay accuracy (a plot,
hub/ui/charts.py). Thin handlers over `AdapterService` and
`PromotionService`, the same ones `tunehub adapters` and /v1/adapters use."""

from __future__ import annotations

import asyncio
import json

import gradio as gr

from feedback.errors import StoreError
from training.gguf_export import GGUF_QUANTIZE
from training.merge import QUANTIZE
from training.replay_flips import flip_lines, flip_report
from training.reward_check import MIN_HELDOUT_ACCURACY, accuracy_text

from .charts import promotion_history
from .login import require_admin, shown_to_user
from .services import UiServices

REPLAY_HEADERS = ["Prompt", "Expected", "Candidate", "✓", "Promoted model", "✓ "]
HEADERS = ["Adapter", "Status", "Served as", "Method", "Stage", "Parent", "Metrics", "Created"]
METRICS_SHOWN = ("train_loss", "eval_loss", "steps", "eval_accuracy")


def _metrics(metrics: dict) -> str:
    shown = []
    for key in METRICS_SHOWN:
        value = metrics.get(key)
        if isinstance(value, float):
            shown.append(f"{key} {value:.4g}")
        elif value is not None:
            shown.append(f"{key} {value}")
    quality = reward_quality_text(metrics)
    if quality:
        shown.append(quality)
    return ", ".join(shown)


def reward_quality_text(metrics: dict) -> str:
    """A reward model's held-out pairwise accuracy, flagged when PPO/RLOO/GRPO would refuse it."""
    if metrics.get("stage") != "reward" or "heldout_pairs" not in metrics:
        return ""
    accuracy, pairs = metrics.get("heldout_accuracy"), metrics.get("heldout_pairs")
    if accuracy is None:
        return "held-out accuracy not measured (no held-out pairs)"
    text = f"held-out accuracy {accuracy_text(accuracy)} on {pairs} pairs"
    if accuracy < MIN_HELDOUT_ACCURACY:
        text += f" (below {MIN_HELDOUT_ACCURACY:g}: too weak for PPO/RLOO/GRPO)"
    return text


VERDICTS = {
    "promote": "meets the promotion rule",
    "not_yet": "does not meet the promotion rule yet",
    "refuse": "is refused by the replay guard",
}


def verdict_text(decision) -> str:
    """The promotion rule and the replay guard's answer in one sentence, with their reasons."""
    said = VERDICTS.get(decision.verdict, decision.verdict)
    reasons = "; ".join(decision.reasons)
    return f"**{decision.candidate} {said}** (against {decision.incumbent}): {reasons}."


def adapters_tab(services: UiServices, blocks: gr.Blocks, tab: gr.Tab) -> None:
    adapters, auth = services.adapters, services.auth
    table = gr.Dataframe(headers=HEADERS, interactive=False, elem_id="adapters-table")
    promotions = gr.Plot(label="Promotions over time", show_label=False, elem_id="adapters-promotions")
    with gr.Row():
        chosen = gr.Dropdown([], label="Adapter", elem_id="adapters-select", scale=3, interactive=True)
        refresh = gr.Button("Refresh", elem_id="adapters-refresh", scale=1)
    with gr.Row():
        load = gr.Button("Load into the engine", elem_id="adapters-load")
        unload = gr.Button("Unload", elem_id="adapters-unload")
        promote = gr.Button("Promote", variant="primary", elem_id="adapters-promote")
        rollback = gr.Button("Roll back the promotion", elem_id="adapters-rollback")
    with gr.Row():
        export_out = gr.Textbox(
            label="Export to (a new directory; empty: DATA_DIR/exports/NAME-vN)",
            elem_id="adapters-export-out",
            scale=3,
        )
        export_format = gr.Radio(
            ["transformers", "gguf"], value="transformers", label="Format", elem_id="adapters-format", scale=1
        )
        quantize = gr.Radio(
            list(QUANTIZE), value="none", label="Weights", elem_id="adapters-quantize", scale=2
        )
        export = gr.Button("Merge and export", elem_id="adapters-export", scale=1)
    override = gr.Checkbox(
        False,
        label="Override the replay guard (promote even if accuracy fell or KL is high)",
        elem_id="adapters-override",
    )
    message = gr.Markdown(elem_id="adapters-message")
    verdict = gr.Markdown(elem_id="adapters-verdict")
    confirming = gr.State(None)  # the adapter a Promote against the rule waits to be confirmed for
    gr.Markdown("### Regression replay")
    with gr.Row():
        replay = gr.Button("Replay now", elem_id="adapters-replay")
        check = gr.Button("Check the promotion rule", elem_id="adapters-check")
    replay_summary = gr.Markdown(elem_id="adapters-replay-summary")
    replay_table = gr.Dataframe(headers=REPLAY_HEADERS, interactive=False, elem_id="adapters-replay-table")
    replay_flips = gr.Markdown(elem_id="adapters-replay-flips")  # which checkable prompts flipped, lengths
    with gr.Row():
        vote_id = gr.Number(label="Vote id", precision=0, elem_id="adapters-vote-id", scale=1)
        vote_find = gr.Button("Which adapters did this vote train?", elem_id="adapters-vote-find", scale=2)
    vote_lineage = gr.Code(
        language="json", label="Vote lineage", elem_id="adapters-vote-lineage", max_lines=20
    )
    lineage = gr.Code(language="json", label="Lineage", elem_id="adapters-lineage", max_lines=20)

    def listing(ref: str | None, request: gr.Request):
        require_admin(auth, request)
        rows = adapters.rows()
        data = [
            [
                r.ref,
                r.adapter.status,
                r.served or "",
                r.adapter.method,
                r.stage or "",
                r.adapter.parent or "",
                _metrics(r.adapter.metrics),
                r.adapter.created_at[:19].replace("T", " "),
            ]
            for r in rows
        ]
        refs = [r.ref for r in rows]
        if ref not in refs:
            ref = refs[0] if refs else None
        summary, replay_rows, flips = show_replay(ref, request)  # the selected one's replay, without a click
        return (
            data,
            gr.update(choices=refs, value=ref),
            show_lineage(ref, request),
            summary,
            replay_rows,
            current_verdict(ref),
            flips,
        )

    def show_verdict(ref: str | None, request: gr.Request) -> str:
        require_admin(auth, request)
        return current_verdict(ref)

    def current_verdict(ref: str | None) -> str:
        """The rule's word on `ref` from its stored replay and the votes (nothing is replayed here)."""
        if not ref or services.promotion is None:
            return ""
        try:
            return verdict_text(services.promotion.decision(ref, replay=False))
        except StoreError as e:
            return e.message

    def show_lineage(ref: str | None, request: gr.Request) -> str:
        require_admin(auth, request)
        if not ref:
            return ""
        try:
            return json.dumps(adapters.lineage(ref), indent=1)
        except StoreError as e:
            return f"// {e.message}"

    def need(ref: str | None) -> str:
        if not ref:
            raise gr.Error("pick an adapter first")
        return ref

    async def on_load(ref: str | None, request: gr.Request) -> str:
        require_admin(auth, request)
        with shown_to_user():
            name = await adapters.load(need(ref))
        return f"**{ref}** is served as **{name}**."

    async def on_unload(ref: str | None, request: gr.Request) -> str:
        require_admin(auth, request)
        with shown_to_user():
            name = await adapters.unload(need(ref))
        return f"**{ref}** unloaded (it was served as {name})."

    def on_promote(ref: str | None, override_: bool, waiting: str | None, request: gr.Request):
        """Promote; against a rule not met yet (too few votes, too low a win rate) only when pressed twice."""
        require_admin(auth, request)
        ref = need(ref)
        if not override_ and waiting != ref and services.promotion is not None:
            decision = services.promotion.decision(ref, replay=False)
            if decision.verdict == "not_yet":
                return (
                    f"{verdict_text(decision)}\n\nPress **Promote** again to promote {ref} anyway.",
                    ref,
                )
        with (
            shown_to_user()
        ):  # the guard may replay the candidate first (seconds; gradio runs this in a thread)
            adapter = services.promotion.promote(ref, override=bool(override_))
        said = (
            " (guard overridden)." if override_ else (" (against the rule, confirmed)." if waiting else ".")
        )
        return f"**{adapter.ref}** promoted{said}", None

    def on_rollback(request: gr.Request) -> str:
        require_admin(auth, request)
        with shown_to_user():
            adapter = adapters.rollback()
        return f"Rolled back: **{adapter.ref}** is promoted again."

    async def on_export(
        ref: str | None, out: str | None, quantize_: str, format_: str | None, request: gr.Request
    ) -> str:
        require_admin(auth, request)
        ref = need(ref)
        with shown_to_user():  # a merge takes seconds to minutes: off the event loop
            path = await asyncio.to_thread(
                adapters.export, ref, (out or "").strip() or None, quantize_, format_ or "transformers"
            )
        if format_ == "gguf":
            return f"**{ref}** merged into its base as GGUF ({quantize_}), an Ollama Modelfile beside it: `{path}`"
        weights = "full" if quantize_ == "none" else quantize_
        return f"**{ref}** merged into its base ({weights} weights): `{path}`"

    def weights_for(format_: str, request: gr.Request):
        """The weight types the chosen format offers (bitsandbytes for transformers, f16/q8_0 for GGUF)."""
        require_admin(auth, request)
        choices = list(GGUF_QUANTIZE) if format_ == "gguf" else list(QUANTIZE)
        return gr.update(choices=choices, value=choices[0])

    def replay_view(report: dict | None) -> tuple[str, list[list], str]:
        if not report:
            return "No replay yet: press **Replay now**.", [], ""
        parts = []
        for side in ("candidate", "incumbent"):
            m = report[side]
            accuracy = "n/a" if m.get("accuracy") is None else f"{m['accuracy']:.0%}"
            kl = "n/a" if m.get("kl") is None else f"{m['kl']:.3g}"
            reward = f", reward {m['reward']:.3g}" if m.get("reward") is not None else ""
            parts.append(
                f"**{m['name']}**: accuracy {accuracy} on {m['checkable']} checkable, KL {kl}{reward}"
            )
        rows = [
            [
                r["messages"][-1]["content"],
                r.get("answer") or "",
                r["candidate"],
                {True: "✓", False: "✗"}.get(r.get("candidate_correct"), ""),
                r["incumbent"],
                {True: "✓", False: "✗"}.get(r.get("incumbent_correct"), ""),
            ]
            for r in report["rows"]
        ]
        flips = report.get("flips") or flip_report(report)
        return " · ".join(parts), rows, "\n".join(flip_lines(flips))

    def show_replay(ref: str | None, request: gr.Request):
        require_admin(auth, request)
        if not ref or services.promotion is None:
            return replay_view(None)
        try:
            return replay_view(services.promotion.report(ref))
        except StoreError as e:
            return f"{e.message}", [], ""

    async def on_replay(ref: str | None, request: gr.Request):
        require_admin(auth, request)
        ref = need(ref)
        with shown_to_user():  # loads the model and answers the prompt set: off the event loop
            report = await asyncio.to_thread(services.promotion.replay, ref)
        return replay_view(report)

    async def on_check(ref: str | None, request: gr.Request) -> str:
        require_admin(auth, request)
        ref = need(ref)
        with shown_to_user():
            decision = await asyncio.to_thread(services.promotion.decision, ref)
        return verdict_text(decision)

    def on_vote_lineage(id_: float | None, request: gr.Request) -> str:
        user = require_admin(auth, request)
        if id_ is None or not 1 <= id_ <= 2**63 - 1:  # beyond SQLite's integers no vote can exist
            raise gr.Error(f"enter a vote id (a whole number from 1), not {id_!r}")
        try:
            found = services.feedback.lineage(int(id_), user)
        except StoreError as e:
            return f"// {e.message}"
        vote = found["vote"]
        return json.dumps(
            {
                "vote": vote.id,
                "kind": vote.kind,
                "rater": vote.rater,
                "trained_adapters": found["trained_adapters"],
            },
            indent=1,
        )

    replay_shown = [replay_summary, replay_table, replay_flips]
    replay.click(on_replay, [chosen], replay_shown)
    check.click(on_check, [chosen], verdict)
    vote_find.click(on_vote_lineage, [vote_id], vote_lineage)
    chosen.input(show_replay, [chosen], replay_shown)
    chosen.input(show_verdict, [chosen], verdict)

    shown = [table, chosen, lineage, replay_summary, replay_table, verdict, replay_flips]
    export.click(on_export, [chosen, export_out, quantize, export_format], message)
    export_format.change(weights_for, [export_format], quantize)
    for trigger in (refresh.click, tab.select):
        trigger(listing, [chosen], shown)
    chosen.input(show_lineage, [chosen], lineage)
    promote.click(on_promote, [chosen, override, confirming], [message, confirming]).then(
        listing, [chosen], shown
    )
    for button, handler, inputs in (
        (load, on_load, [chosen]),
        (unload, on_unload, [chosen]),
        (rollback, on_rollback, []),
    ):
        button.click(handler, inputs, message).then(listing, [chosen], shown)

    def show_promotions(request: gr.Request):
        require_admin(auth, request)
        if services.promotion is None:
            return None
        with shown_to_user():
            return promotion_history(services.promotion.history())

    # redrawn with the tab, on Refresh, and whenever the table changes (a promote, rollback, load, unload)
    for trigger in (refresh.click, tab.select, table.change):
        trigger(show_promotions, None, promotions)
