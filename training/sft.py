"""Supervised fine-tuning (trl.SFTTrainer) on chat conversations, the loss on the assistant replies only.

Rows are conversations (``{"messages"}``: system prompts and several turns welcome) in any format the hub
imports, or plain ``{"prompt", "completion"}`` strings (the loss on the completion; no chat template needed,
so a base model without one trains on them). The assistant-only loss relies on the chat template's ``{% generation %}`` markers; packing puts
several short conversations in one row (padding-free, so they do not attend to each other). With held-out
rows, early stopping watches their loss, and on a real model the run stops once the perplexity of the
regression replay's held-out text has risen more than ``--max-perplexity-rise`` (10%, the promotion guard's
bound; `training.callbacks.DriftWatch`) over its value at the start: a few dozen answers learned too well
make a candidate the guard refuses, while the held-out loss barely moves.

    python -m training.sft --model ./demo --data exports/sft --output-dir adapters/sft-1 --method lora
    python -m training.sft --help
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from training.config import StageConfig, parse_config, perplexity_bound
from training.config import build_parser as build_config_parser
from training.models import load_tokenizer
from training.result import cleanup, run_dir_for, save_result
from training.stage_run import (
    drift_watch,
    load_run_model,
    prepare_run,
    run_cli,
    run_training,
    stage_callbacks,
    trainer_arguments,
)

DESCRIPTION = "Supervised fine-tuning on chat conversations (TRL SFTTrainer), loss on assistant replies."


@dataclass
class SFTConfig(StageConfig):
    """SFT: the shared stage fields plus the loss mask and packing."""

    learning_rate: float = field(default=2e-4, metadata={"help": "peak learning rate (AdamW)"})
    assistant_only_loss: bool = field(
        default=True,
        metadata={
            "help": "train only on assistant replies (needs {% generation %} markers in the chat template); "
            "--no-assistant-only-loss trains on every token"
        },
    )
    packing: bool = field(
        default=False,
        metadata={
            "help": "pack several conversations into each row of --max-length tokens (faster on short rows)"
        },
    )
    max_perplexity_rise: float = perplexity_bound()


def main(config: SFTConfig, callbacks: list | None = None) -> Path:
    """Train, then return the directory holding the adapter (or model) and `tunehub_training.json`.

    The data is read and checked first: a bad row raises `feedback.errors.Invalid` before any model loads.
    `callbacks` are extra transformers `TrainerCallback`s (the job runner's progress reporting).
    """
    run = prepare_run("sft", config, "sft")
    from datasets import Dataset
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    tokenizer = load_tokenizer(config.model, config.chat_template, conversational=run.data.conversational)
    plan, model, peft_config = load_run_model(run, tokenizer)
    run_dir = run_dir_for(run)
    try:
        arguments = trainer_arguments(run, run_dir, metric="eval_loss", greater_is_better=False)
        if config.packing:
            arguments.update(packed_batches(config, model))
        # Plain prompt/completion strings have no assistant turns: TRL masks the prompt instead.
        assistant_only = config.assistant_only_loss and run.data.conversational
        train, evaluation = run.data.train, run.data.eval
        if assistant_only and not markable(tokenizer):
            train, evaluation = last_replies(train), last_replies(evaluation)
            assistant_only = False  # the completion-only loss of prompt/completion rows
            print(
                "sft: the chat template has no {% generation %} markers (nor one TRL can patch in): training on "
                "the last assistant reply of each conversation; --chat-template with markers (chatml...) trains "
                "on every reply",
                flush=True,
            )
        args = TRLSFTConfig(**arguments, assistant_only_loss=assistant_only, packing=config.packing)
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(train),
            eval_dataset=Dataset.from_list(evaluation) if evaluation else None,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=stage_callbacks(run, callbacks, drift_watch(run, "eval_loss", greater_is_better=False)),
        )
        metrics = run_training(trainer, run)
        return save_result(trainer, run, plan, metrics, task="causal_lm")
    finally:
        cleanup(run_dir)


def markable(tokenizer) -> bool:
    """The chat template marks assistant replies for the assistant-only loss, or TRL can swap in a version
    that does (it knows the templates of several model families)."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if has_generation_markers(template["default"] if isinstance(template, dict) else template):
        return True
    try:
        get_training_chat_template(tokenizer)
    except ValueError:
        return False
    return True


def last_replies(rows: list[dict]) -> list[dict]:
    """Conversations as conversational prompt/completion rows: everything before the last assistant reply is
    the prompt (masked from the loss), that reply the completion. SmolLM2's template, for one, has no
    generation markers; ChatML-like templates keep the prompt a prefix of the whole, as TRL needs."""
    return [{"prompt": row["messages"][:-1], "completion": row["messages"][-1:]} for row in rows]


def packed_batches(config: SFTConfig, model) -> dict:
    """Batch sizes for packing: TRL packs padding-free, flattening a batch of B packed rows of L tokens
    into one row of B x L. A varlen (flash) attention kernel keeps each conversation to itself at the
    cost of its own length; any other kernel (the CPU's, SDPA) computes a masked (B x L)^2 attention, B^2
    times the work. Without flash attention one packed row goes per forward pass and the B rows of a step
    are accumulated instead: the same tokens per optimizer step (bench/training.py measures it)."""
    if "flash" in str(getattr(model.config, "_attn_implementation", "")):
        return {}
    batch = config.per_device_batch_size
    return {
        "per_device_train_batch_size": 1,
        "per_device_eval_batch_size": 1,
        "gradient_accumulation_steps": config.gradient_accumulation_steps * batch,
    }


def build_parser():
    return build_config_parser(SFTConfig, DESCRIPTION)


def parse_args(argv: list[str] | None = None) -> SFTConfig:
    return parse_config(SFTConfig, DESCRIPTION, argv)


if __name__ == "__main__":
    run_cli(main, SFTConfig, DESCRIPTION, None)
