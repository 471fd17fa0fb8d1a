"""The Data tab (admins only): what has been collected, by kind and by rater; a preview of each export;
export files to download (recorded as dataset snapshots, so a trained adapter can name its votes); and the
vote browser (vote_browser.py: filter, page, open a vote's answers and lineage)."""

from __future__ import annotations

import json

import gradio as gr

from feedback.errors import StoreError
from feedback.exports import FORMATS, KINDS

from .login import require_admin, shown_to_user
from .services import UiServices
from .vote_browser import vote_browser

KINDS_SHOWN = ("thumbs", "pairwise", "ranking", "edit")
EXPORT_HELP = {
    "sft": "chat examples: thumbs-up answers, corrections, arena winners, best of each ranking",
    "pairs": "preference pairs {prompt, chosen, rejected}: arena votes, rankings, corrections",
    "kto": "unpaired {prompt, completion, label}: thumbs, arena votes, best and worst of rankings",
    "prompts": "every distinct prompt served (for PPO, RLOO, GRPO)",
}


def data_tab(services: UiServices, blocks: gr.Blocks, tab: gr.Tab) -> None:
    datasets, auth = services.datasets, services.auth
    totals = gr.Markdown(elem_id="data-totals")
    with gr.Row():
        by_kind = gr.Dataframe(headers=["Kind", "Votes"], interactive=False, elem_id="data-by-kind")
        by_rater = gr.Dataframe(headers=["Rater", *KINDS_SHOWN], interactive=False, elem_id="data-by-rater")
    refresh = gr.Button("Refresh", elem_id="data-refresh")
    gr.Markdown("### Exports")
    with gr.Row():
        kind = gr.Radio(list(KINDS), value="sft", label="Dataset", elem_id="export-kind")
        format = gr.Radio(
            list(FORMATS),
            value="trl",
            label="Format (alpaca and sharegpt: sft only)",
            elem_id="export-format",
        )
    about = gr.Markdown(EXPORT_HELP["sft"], elem_id="export-about")
    preview = gr.Code(language="json", label="Preview (first rows)", elem_id="export-preview", max_lines=20)
    export = gr.Button("Export and download", variant="primary", elem_id="export-button")
    files = gr.File(label="Exported files", file_count="multiple", interactive=False, elem_id="export-files")

    def counts(request: gr.Request):
        require_admin(auth, request)
        c = datasets.counts()
        text = (
            f"**{c.generations}** answers in **{c.conversations}** conversations; **{c.votes}** votes "
            f"({c.replaced} replaced by a later vote)."
        )
        kinds = [[k, c.by_kind.get(k, 0)] for k in KINDS_SHOWN]
        raters = [[rater, *(row.get(k, 0) for k in KINDS_SHOWN)] for rater, row in sorted(c.by_rater.items())]
        return text, kinds, raters

    def show_preview(kind_: str, format_: str, request: gr.Request):
        require_admin(auth, request)
        try:
            rows = datasets.preview(kind_, format_)
        except StoreError as exc:
            return EXPORT_HELP[kind_], f"// {exc.message}"
        head = (rows.train + rows.eval)[:3]
        text = (
            f"{EXPORT_HELP[kind_]}. Now: **{len(rows.train) + len(rows.eval)}** rows "
            f"({len(rows.train)} train, {len(rows.eval)} eval) from {len(rows.vote_ids)} votes."
        )
        return text, "\n".join(json.dumps(row, ensure_ascii=False, indent=1) for row in head)

    def download(kind_: str, format_: str, request: gr.Request):
        require_admin(auth, request)
        with shown_to_user():
            written = datasets.export(kind_, format_)
        gr.Info(f"exported {kind_} ({format_}) as dataset {written.dataset_id}")
        return list(written.paths.values())

    def formats_for(kind_: str, format_: str, request: gr.Request):
        """Only the formats the dataset can be written in: alpaca and sharegpt hold chat examples (sft)."""
        require_admin(auth, request)
        allowed = list(FORMATS) if kind_ == "sft" else ["trl"]
        return gr.update(choices=allowed, value=format_ if format_ in allowed else "trl")

    for trigger in (refresh.click, tab.select):
        trigger(counts, outputs=[totals, by_kind, by_rater])
    kind.change(formats_for, [kind, format], format)
    for trigger in (kind.change, format.change, tab.select):
        trigger(show_preview, [kind, format], [about, preview])
    export.click(download, [kind, format], files)
    vote_browser(services)
