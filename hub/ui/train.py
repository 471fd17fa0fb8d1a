"""The Train tab (admins only): choose a stage, method, data and hyperparameters (a preset, then any setting
in the advanced JSON box, checked by the same `check_spec` as POST /v1/jobs), see the memory estimate for
the served model and the exact command the job will run (one process, or `accelerate launch` over N GPUs),
start the job on the hub's queue, and follow it: status, progress, ETA, loss curve, the
end of its log, and cancel. A gr.Timer polls the job while this tab is on screen."""

from __future__ import annotations

import json
from typing import Any

import gradio as gr
import pandas as pd

from feedback.errors import StoreError
from feedback.reasons import reason_key
from training.jobs.launch import DEFAULT_STRATEGY, STRATEGIES
from training.jobs.spec import EXPORTS, STAGES, JobError
from training.methods import METHODS

from ..feedback_service import THUMBS_DOWN_REASONS
from ..jobs_service import DEFAULT_PRESET, PRESETS, NoBaseModel, job_params, preset_params
from .login import require_admin
from .services import UiServices

SOURCES = ("feedback: everything", "feedback: only new", "file or directory")
REASON_CHOICES = tuple(reason_key(r) for r in THUMBS_DOWN_REASONS)  # others can be typed in
NO_PARENT = "(none)"
ROW_NAMES = {
    "sft": "chat examples",
    "pairs": "preference pairs",
    "kto": "rated answers",
    "prompts": "prompts",
}
POLL_S = 1.0
# DPO first: it learns what votes say (this one over that one); SFT only imitates the preferred answers.
DEFAULT_STAGE, DEFAULT_METHOD, DEFAULT_MAX_LENGTH = "dpo", "lora", 512
JOB_HEADERS = ["Job", "Stage", "Method", "Name", "Status", "Progress", "Adapter"]


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def replay_text(replay: dict[str, Any]) -> str:
    """One line on a finished job's regression replay (its metrics' summary): the candidate beside the model
    it was replayed against."""
    if replay.get("error"):
        return f"Replay failed: {replay['error'][:300]}"

    def side(summary: dict[str, Any]) -> str:
        parts = [f"accuracy {summary['accuracy']:.2f}" if summary.get("accuracy") is not None else None]
        parts.append(f"KL {summary['kl']:.3f}" if summary.get("kl") is not None else None)
        parts.append(f"reward {summary['reward']:.2f}" if summary.get("reward") is not None else None)
        return ", ".join(p for p in parts if p) or "-"

    candidate, incumbent = replay.get("candidate") or {}, replay.get("incumbent") or {}
    return (
        f"Replay: **{candidate.get('name', 'candidate')}** {side(candidate)} · "
        f"**{replay.get('against') or incumbent.get('name', 'base')}** {side(incumbent)} "
        "(answers side by side in the Adapters tab)"
    )


def build_params(
    stage: str,
    method: str,
    max_steps: float | None,
    epochs: float | None,
    learning_rate: float | None,
    batch_size: float | None,
    lora_rank: float | None,
    max_length: float | None,
    advanced: str,
    exclude_reasons: list[str] | None = None,
) -> dict[str, Any]:
    """The job's params from the form (`job_params`): its fields (0 or empty: the job chooses it,
    training/auto.py; no setting takes 0), then the advanced JSON object on top; `JobError` on bad JSON or
    an unknown stage."""
    text = (advanced or "").strip()
    extra: dict[str, Any] = {}
    if text:
        try:
            extra = json.loads(text)
        except json.JSONDecodeError as e:
            raise JobError(f"the advanced settings are not valid JSON: {e}", "params") from None
        if not isinstance(extra, dict):
            raise JobError(f"the advanced settings must be a JSON object, got {text[:80]!r}", "params")
    return job_params(
        stage,
        method,
        max_steps=max_steps or None,
        epochs=epochs or None,
        learning_rate=learning_rate or None,
        batch_size=batch_size or None,
        max_length=max_length or None,
        lora_rank=lora_rank or None,
        exclude_reasons=exclude_reasons,
        extra=extra,
    )


def default_params(stage: str, method: str = DEFAULT_METHOD) -> dict[str, Any]:
    """What Start training sends for `stage` when nothing on the form was changed (bench/loop.py posts it)."""
    values = preset_params(DEFAULT_PRESET, stage)
    return build_params(
        stage,
        method,
        values["max_steps"],
        values["num_train_epochs"],
        values["learning_rate"],
        values["per_device_batch_size"],
        values["lora_rank"],
        DEFAULT_MAX_LENGTH,
        "{}",
    )


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count()


def training_outcome(metrics: dict) -> str:
    """The job's summary in words: the settings it chose, what early stopping did (the step it stopped at, why,
    the step whose weights were kept) and the held-out preference accuracy of the result."""
    steps, metric = metrics.get("steps"), metrics.get("eval_metric")
    lowest = metrics.get("best_step")
    kept_step = metrics.get("kept_step", lowest)  # jobs from before kept_step ended on their best
    on_kl = metrics.get("stopped_on_kl") is not None
    on_perplexity = metrics.get("stopped_on_perplexity") is not None
    if on_kl:
        why = f"the KL from the base passed {metrics.get('max_kl')} at step {metrics['stopped_on_kl']}"
    elif on_perplexity:
        why = (
            f"the held-out text's perplexity rose more than {metrics.get('max_perplexity_rise', 0):.0%} over "
            f"the start ({metrics.get('start_perplexity', 0):.1f}) at step {metrics['stopped_on_perplexity']}"
        )
    elif metrics.get("stopped_early"):
        why = f"{metric} stopped improving on the held-out rows"
    else:
        why = None
    if not kept_step or kept_step == steps:
        kept = "kept the weights it stopped with"
    elif (on_kl or on_perplexity) and kept_step != lowest:
        kept = f"went back to step {kept_step}, the last evaluation within the bound"
    else:
        kept = f"kept the weights of step {kept_step}, the best on {metric}"
    lines = [chosen_text(metrics)]
    if why:
        lines.append(f"Stopped early at step {steps} of {metrics.get('max_steps')}: {why}; {kept}.")
    elif kept_step and kept_step != steps:
        lines.append(f"Ran all {steps} steps; {kept}.")
    accuracy = heldout_accuracy(metrics)
    if accuracy is not None:
        lines.append(f"Held-out preference accuracy of the result: **{accuracy:.2f}**.")
    return "\n\n".join(line for line in lines if line)


def chosen_text(metrics: dict) -> str:
    """The settings the job chose for what its params left out (training/auto.py), and why."""
    chosen = metrics.get("chosen_settings") or {}
    if not chosen:
        return ""
    parts = [f"{key} **{c['value']}** ({c['reason']})" for key, c in chosen.items()]
    return "Chosen for what was left empty: " + "; ".join(parts) + "."


def heldout_accuracy(metrics: dict) -> float | None:
    """How often the result prefers the rater's choice on held-out pairs (DPO and reward jobs)."""
    for key in ("eval_rewards/accuracies", "eval_accuracy"):
        if isinstance(metrics.get(key), (int, float)):
            return float(metrics[key])
    return None


def train_tab(services: UiServices, blocks: gr.Blocks, tab: gr.Tab) -> gr.Timer:
    """Builds the tab; returns its poll timer (build_ui stops it when another tab is selected)."""
    jobs, auth = services.jobs, services.auth
    first = preset_params(DEFAULT_PRESET, DEFAULT_STAGE)

    gr.Markdown("### New training job")
    with gr.Row():
        stage = gr.Dropdown(list(STAGES), value=DEFAULT_STAGE, label="Stage", elem_id="train-stage")
        method = gr.Dropdown(list(METHODS), value=DEFAULT_METHOD, label="Method", elem_id="train-method")
        name = gr.Textbox(label="Adapter name", placeholder="e.g. polite", elem_id="train-name")
        parent = gr.Dropdown([NO_PARENT], value=NO_PARENT, label="Start from adapter", elem_id="train-parent")
    with gr.Row():
        source = gr.Radio(list(SOURCES), value=SOURCES[0], label="Data", elem_id="train-source", scale=2)
        data_path = gr.Textbox(
            label="File or directory (for that data source)",
            placeholder="/path/to/data.jsonl",
            elem_id="train-data-path",
            scale=3,
        )
    exclude_reasons = gr.Dropdown(
        list(REASON_CHOICES),
        value=[],
        multiselect=True,
        allow_custom_value=True,
        label="Leave out votes with these reasons (data filter)",
        elem_id="train-exclude-reasons",
    )
    preset = gr.Radio(
        list(PRESETS),
        value=DEFAULT_PRESET,
        label="Preset",
        info="auto: the job sizes what is left at 0 to its data and model (its summary says what and why)",
        elem_id="train-preset",
    )
    with gr.Row():
        max_steps = gr.Number(
            first["max_steps"],
            label="Max steps (-1: epochs; 0: auto)",
            precision=0,
            elem_id="train-max-steps",
        )
        epochs = gr.Number(first["num_train_epochs"], label="Epochs (0: auto)", elem_id="train-epochs")
        learning_rate = gr.Number(first["learning_rate"], label="Learning rate (0: auto)", elem_id="train-lr")
        batch_size = gr.Number(
            first["per_device_batch_size"],
            label="Batch size (0: default)",
            precision=0,
            elem_id="train-batch",
        )
        lora_rank = gr.Number(
            first["lora_rank"], label="LoRA rank (0: default)", precision=0, elem_id="train-rank"
        )
        max_length = gr.Number(
            DEFAULT_MAX_LENGTH, label="Max length (tokens)", precision=0, elem_id="train-max-length"
        )
    advanced = gr.Code(
        "{}",
        language="json",
        label='Advanced settings (JSON, on top of the fields above), e.g. {"beta": 0.2, "logging_steps": 1}',
        elem_id="train-params",
    )
    with gr.Row():
        several = cuda_devices() > 1  # GPU fields only where there is more than one GPU to spread over
        gpus = gr.Number(
            1, label="GPUs", precision=0, minimum=1, elem_id="train-gpus", scale=1, visible=several
        )
        strategy = gr.Dropdown(
            list(STRATEGIES),
            value=DEFAULT_STRATEGY,
            label="Multi-GPU strategy",
            elem_id="train-strategy",
            scale=1,
            visible=several,
        )
        command = gr.Code(
            jobs.preview_command(),
            language="shell",
            label="Command the job will run",
            elem_id="train-command",
            scale=4,
        )
    estimate = gr.Code(label="Memory estimate per device (served model)", elem_id="train-estimate")
    rows_preview = gr.Markdown(elem_id="train-rows")
    start = gr.Button("Start training", variant="primary", elem_id="train-start")
    message = gr.Markdown(elem_id="train-message")

    gr.Markdown("### Jobs")
    job_table = gr.Dataframe(headers=JOB_HEADERS, interactive=False, elem_id="train-jobs")
    with gr.Row():
        job = gr.Dropdown([], label="Job", elem_id="train-job", scale=3, interactive=True)
        cancel = gr.Button("Cancel job", variant="stop", elem_id="train-cancel", scale=1)
    job_status = gr.Markdown(elem_id="train-job-status")
    loss_plot = gr.LinePlot(
        x="step",
        y="value",
        color="curve",
        title="Training loss (and held-out metric)",
        height=260,
        elem_id="train-loss",
    )
    log = gr.Code(label="Log (last lines)", language=None, elem_id="train-log", max_lines=20)
    poll = gr.Timer(POLL_S, active=False)
    # The job this user follows, kept on the server: a poll fired before a submit (it sent the old dropdown
    # value) would otherwise switch the view back to the previous job once the submit had moved it on.
    following = gr.State(None)

    def show_rows(stage_: str, source_: str, reasons_: list[str] | None, request: gr.Request) -> str:
        """What the stage will train on, before Start: the rows the votes make now, and one of them."""
        require_admin(auth, request)
        if source_ == SOURCES[2]:
            return "The rows are read from the file or directory when the job starts (bad rows are named)."
        kind, mode = EXPORTS[stage_]
        try:
            rows = services.datasets.preview(kind, mode=mode, exclude_reasons=reasons_ or None)
        except StoreError as exc:
            return f"**Nothing to train {stage_} on yet**: {exc.message}"
        example = json.dumps((rows.train + rows.eval)[0], ensure_ascii=False)
        if len(example) > 300:
            example = example[:299] + "…"
        new = " (only the rows from votes since its last run are used)" if source_ == SOURCES[1] else ""
        return (
            f"**{stage_}** trains on **{len(rows.train) + len(rows.eval)} {ROW_NAMES[kind]}** from "
            f"{len(rows.vote_ids)} votes ({len(rows.train)} train, {len(rows.eval)} held out){new}, e.g. "
            f"`{example}`"
        )

    def apply_preset(preset_: str, stage_: str, request: gr.Request):
        require_admin(auth, request)
        values = preset_params(preset_, stage_)
        return (
            values["max_steps"],
            values["num_train_epochs"],
            values["learning_rate"],
            values["per_device_batch_size"],
            values["lora_rank"],
        )

    def show_estimate(
        method_: str, batch: float | None, length: float | None, rank: float | None, request: gr.Request
    ):
        require_admin(auth, request)  # it describes the served model
        try:
            return jobs.estimate_table(
                method_, batch_size=int(batch or 1), seq_len=int(length or 1), lora_rank=int(rank or 16)
            )
        except ValueError as e:
            return f"no estimate: {e}"

    def show_command(gpus_: float | None, strategy_: str, request: gr.Request) -> str:
        require_admin(auth, request)  # the command shows the server's paths
        try:
            return jobs.preview_command(gpus=int(gpus_ or 1), strategy=strategy_)
        except JobError as e:
            return f"# {e.param}: {e.message}"

    def parents(request: gr.Request):
        require_admin(auth, request)
        refs = [a.ref for a in services.adapters.store.list_adapters()]
        return gr.update(choices=[NO_PARENT, *reversed(refs)])

    def submit(
        stage_, method_, source_, path, name_, parent_, steps, epochs_, lr, batch, rank, length, extra,
        gpus_, strategy_, reasons_, request: gr.Request,
    ):  # fmt: skip
        require_admin(auth, request)
        try:
            params = build_params(stage_, method_, steps, epochs_, lr, batch, rank, length, extra, reasons_)
            created = jobs.submit(
                stage=stage_,
                method=method_,
                data=(path or "").strip() if source_ == SOURCES[2] else "feedback",
                name=(name_ or "").strip(),
                parent=None if parent_ in (None, NO_PARENT) else parent_,
                params=params,
                only_new=source_ == SOURCES[1],
                gpus=int(gpus_ or 1),
                strategy=strategy_,
            )
        except JobError as e:
            raise gr.Error(f"{e.param}: {e.message}") from None
        except (NoBaseModel, StoreError) as e:
            raise gr.Error(str(e)) from None
        choices = [j.id for j in jobs.list(limit=50)]
        reward = (created.params.get("params") or {}).get("reward_model")
        scored = f" (answers scored by the reward model `{reward}`)" if reward else ""
        return (
            f"Queued **{created.id}**: {stage_} {method_} → {created.params.get('name')}{scored}\n\n"
            f"`{jobs.command(created)}`",
            gr.update(choices=choices, value=created.id),
            gr.Timer(active=True),
            created.id,
        )

    def refresh(job_id: str | None, request: gr.Request):
        require_admin(auth, request)
        listed = jobs.list(limit=50)
        rows = [
            [j.id, j.stage, j.method, j.params.get("name"), j.status, f"{j.progress:.0%}", j.adapter or ""]
            for j in listed
        ]
        choices = [j.id for j in listed]
        if job_id not in choices:
            job_id = choices[0] if choices else None
        if job_id is None:
            return (
                rows,
                gr.update(choices=choices, value=None),
                "No jobs yet.",
                None,
                "",
                None,
                gr.Timer(active=False),
            )
        view = jobs.live(job_id)
        j = view.job
        total = f"/{view.total}" if view.total else ""
        loss = f" · loss **{view.loss:.4f}**" if view.loss is not None else ""
        text = (
            f"**{j.id}** ({j.stage} {j.method} → {j.params.get('name')}): **{j.status}** · step "
            f"{view.step}{total} ({j.progress:.0%}) · ETA {_eta(view.eta_s)}{loss}"
        )
        if j.adapter:
            text += f" · served as **{j.adapter}**"
            if j.status == "running":
                text += " · replaying the fixed prompt set"
        outcome = training_outcome(j.metrics)
        if outcome:
            text += f"\n\n{outcome}"
        if j.metrics.get("replay"):
            text += f"\n\n{replay_text(j.metrics['replay'])}"
        if j.params.get("trigger"):
            text += f" · queued by the automatic trigger ({j.params['trigger'].get('new_rows')} new rows)"
        text += f"\n\n`{jobs.command(j)}`"
        if j.error:
            text += f"\n\nError: {j.error.splitlines()[0][:500]}"
        curves = [[step, value, "train loss"] for step, value in view.loss_curve]
        metric = j.metrics.get("eval_metric") or "held-out"
        curves += [[step, value, metric] for step, value in j.metrics.get("eval_curve") or []]
        curve = pd.DataFrame(curves, columns=["step", "value", "curve"]) if curves else None
        # polling stops once the followed job has ended; picking or starting a job starts it again
        live = gr.Timer(active=j.status in ("queued", "running"))
        return rows, gr.update(choices=choices, value=job_id), text, curve, view.log, job_id, live

    def cancel_job(job_id: str | None, request: gr.Request):
        require_admin(auth, request)
        if not job_id:
            raise gr.Error("pick a job to cancel first")
        try:
            cancelled = jobs.cancel(job_id)
        except StoreError as e:
            raise gr.Error(e.message) from None
        return f"Cancelled **{cancelled.id}**; its worker is being stopped."

    numbers = [max_steps, epochs, learning_rate, batch_size, lora_rank]
    for trigger in (preset.change, stage.change):
        trigger(apply_preset, [preset, stage], numbers)
    estimate_inputs = [method, batch_size, max_length, lora_rank]
    for trigger in (method.change, batch_size.change, max_length.change, lora_rank.change, tab.select):
        trigger(show_estimate, estimate_inputs, estimate)
    tab.select(parents, outputs=parent)
    for trigger in (stage.change, source.change, tab.select, exclude_reasons.change):
        trigger(show_rows, [stage, source, exclude_reasons], rows_preview)
    tab.select(lambda: gr.Timer(active=True), outputs=poll, queue=False)
    followed = [job_table, job, job_status, loss_plot, log, following, poll]
    for trigger in (gpus.change, strategy.change):
        trigger(show_command, [gpus, strategy], command)
    inputs = [stage, method, source, data_path, name, parent, *numbers, max_length, advanced, gpus, strategy]
    inputs.append(exclude_reasons)
    start.click(submit, inputs, [message, job, poll, following]).then(refresh, [following], followed)
    poll.tick(refresh, [following], followed, show_progress="hidden")
    job.input(refresh, [job], followed)
    cancel.click(cancel_job, [job], message).then(refresh, [following], followed)
    return poll
