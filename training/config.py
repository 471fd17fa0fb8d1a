"""The config fields every training stage shares, validated on creation, and a parser built from them.

Each stage module subclasses `StageConfig` (which extends `training.methods.MethodOptions`), adds its own
fields with help text, and gets `--flag` per field from `build_parser`:

    from training.config import StageConfig, parse_config
    config = parse_config(SFTConfig, "Supervised fine-tuning.", ["--model", "m", "--data", "d.jsonl", ...])
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from feedback.errors import Invalid
from feedback.reasons import parse_reasons
from training.methods import DTYPE_NAMES, PRECISIONS, MethodOptions, normalise_precision

LR_SCHEDULERS: tuple[str, ...] = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "warmup_stable_decay",
)

# The preference stages' default KL bound (DPO, KTO: `max_kl`), the promotion guard's default too
# (feedback/promotion_rule.py), so early stopping keeps candidates that the guard lets through.
MAX_KL = 2.0
# The generative stages' default perplexity bound (SFT, DPO, KTO: `max_perplexity_rise`, a share of the
# perplexity of the replay's held-out text at the start of the run), the promotion guard's default too.
MAX_PERPLEXITY_RISE = 0.10


def kl_bound() -> Any:
    """The `max_kl` field of a preference stage (DPO, KTO: `training.callbacks.DriftWatch`)."""
    return field(
        default=MAX_KL,
        metadata={
            "help": "stop when the mean per-token KL from the base on held-out prompts (the promotion guard's "
            "measure) passes this many nats, keeping the best weights within it (0: no bound)"
        },
    )


def perplexity_bound() -> Any:
    """The `max_perplexity_rise` field of a stage that generates text (`training.callbacks.DriftWatch`)."""
    return field(
        default=MAX_PERPLEXITY_RISE,
        metadata={
            "help": "stop when the perplexity of the regression replay's held-out text (a real model's; the "
            "promotion guard's measure) rises more than this share over its value at the start, keeping "
            "weights evaluated within it (0.10 = 10%; 0: no bound)"
        },
    )


@dataclass
class StageConfig(MethodOptions):
    """Fields every stage has; each stage subclass adds its own and may change defaults."""

    model: str | None = field(
        default=None,
        metadata={"help": "base model: a local model directory or a Hugging Face hub id", "required": True},
    )
    data: str | None = field(
        default=None,
        metadata={
            "help": "training data: a JSON/JSONL/parquet file or directory in TRL, alpaca, sharegpt, LLaMA-Factory KTO "
            "or UltraFeedback layout "
            "(an export directory with train.jsonl and eval.jsonl works as is)",
            "required": True,
        },
    )
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "where the adapter (or full model) is written; it is built in a temporary sibling and "
            "renamed into place, replacing an earlier training result there",
            "required": True,
        },
    )
    eval_data: str | None = field(
        default=None, metadata={"help": "held-out rows (default: the export's eval file, else a split)"}
    )
    eval_fraction: float = field(
        default=0.1,
        metadata={"help": "share of prompts held out for evaluation when no eval file exists, in [0, 1)"},
    )
    exclude_reasons: str | None = field(
        default=None,
        metadata={
            "help": "leave out rows whose votes gave any of these reasons, comma-separated (e.g. "
            "too_long,wrong; any spelling: 'too long' = too_long); rows need a reasons column, as exports have"
        },
    )
    parent_adapter: str | None = field(
        default=None,
        metadata={
            "help": "adapter directory to start from: its weights are the starting point (full and freeze "
            "tuning merge it into the base first)"
        },
    )
    learning_rate: float = field(default=2e-4, metadata={"help": "peak learning rate (AdamW)"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "passes over the training rows"})
    max_steps: int = field(
        default=-1, metadata={"help": "optimizer steps to run; overrides --num-train-epochs when positive"}
    )
    per_device_batch_size: int = field(default=8, metadata={"help": "rows per forward pass on each device"})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "forward passes per optimizer step (effective batch = batch x this)"}
    )
    warmup_ratio: float = field(
        default=0.05, metadata={"help": "share of the steps spent warming the learning rate up, in [0, 1)"}
    )
    lr_scheduler: str = field(
        default="cosine",
        metadata={"help": "learning-rate schedule after warmup", "choices": LR_SCHEDULERS},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_length: int = field(default=1024, metadata={"help": "longest tokenised row, in tokens"})
    precision: str = field(
        default="auto",
        metadata={
            "help": "compute precision (mixed, through autocast; `tunehub train --dtype`): auto (bf16 on GPUs "
            "and CPUs with AVX512_BF16/AMX, fp16 on older GPUs, fp32 on other CPUs), fp32, bf16 or fp16; "
            "float32, bfloat16 and float16 are the same",
            "choices": (*PRECISIONS, *DTYPE_NAMES),
        },
    )
    chat_template: str | None = field(
        default=None,
        metadata={
            "help": "a Jinja chat template (its text, or the path of a .jinja file) for a model without one, "
            "or to replace its own (`tunehub train --chat-template` also takes a shipped name: chatml, llama3...)"
        },
    )
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "trade compute for memory (default: on for GPU, off on CPU)"}
    )
    seed: int = field(
        default=0, metadata={"help": "seed of the weights of new layers, the split and the batches"}
    )
    logging_steps: int | None = field(
        default=None,
        metadata={
            "help": "steps between logged losses (default: every step for runs of up to 20 steps, then about "
            "20 points a run, at most 10 steps apart)"
        },
    )
    eval_steps: int | None = field(
        default=None, metadata={"help": "steps between evaluations (default: about 8 per run)"}
    )
    early_stopping_patience: int = field(
        default=3,
        metadata={
            "help": "stop after this many evaluations without improvement and keep the best checkpoint "
            "(0: never stop early)"
        },
    )
    checkpoint_steps: int = field(
        default=0,
        metadata={
            "help": "save a resumable checkpoint (weights, optimizer, schedule, RNG) every this many steps beside "
            "--output-dir, so --resume can continue an interrupted run (0: none; at every evaluation instead "
            "when early stopping or the KL bound keeps the best weights: they are kept as a checkpoint)"
        },
    )
    keep_best_weights: bool = field(
        default=True,
        metadata={
            "help": "end on the evaluated weights with the best held-out metric (false: on the weights the run "
            "stopped with, once early stopping saw no improvement for --early-stopping-patience evaluations "
            "or the steps ran out; past the KL or perplexity bound it still goes back to the last evaluation "
            "within them)"
        },
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "continue from the newest resumable checkpoint an interrupted run with --checkpoint-steps "
            "left beside --output-dir (a fresh start when there is none)"
        },
    )
    loss_check_steps: int = field(
        default=100,
        metadata={
            "help": "stop with advice if after this many steps the training loss has not fallen by 1 percent, "
            "or has risen by 10 percent "
            "(0: no check); a NaN or infinite loss always stops training"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("model", "data", "output_dir"):
            value = getattr(self, name)
            if value is None or not str(value).strip():
                raise ValueError(f"{name} is required, got {value!r}")
            setattr(self, name, str(value))
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction!r}")
        if self.exclude_reasons is not None:
            try:
                self.exclude_reasons = ",".join(parse_reasons(self.exclude_reasons)) or None
            except Invalid as e:
                raise ValueError(
                    f"exclude_reasons {self.exclude_reasons!r} is not a list of reasons: {e}"
                ) from None
        if not (isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate < 1):
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate!r}")
        if not self.num_train_epochs > 0:
            raise ValueError(f"num_train_epochs must be positive, got {self.num_train_epochs!r}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be positive (or -1 to use epochs), got {self.max_steps!r}")
        for name in ("per_device_batch_size", "gradient_accumulation_steps", "max_length", "logging_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if not getattr(self, "max_kl", 0) >= 0:
            raise ValueError(f"max_kl must be 0 or more, got {self.max_kl!r}")
        if not getattr(self, "max_perplexity_rise", 0) >= 0:
            raise ValueError(
                f"max_perplexity_rise must be 0 or more (0.10 = 10%), got {self.max_perplexity_rise!r}"
            )
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must not be negative, got {self.weight_decay!r}")
        self.precision = normalise_precision(self.precision)
        if self.chat_template is not None and not str(self.chat_template).strip():
            raise ValueError(
                f"chat_template must be a template or a .jinja file path, got {self.chat_template!r}"
            )
        if self.eval_steps is not None and self.eval_steps < 1:
            raise ValueError(f"eval_steps must be at least 1, got {self.eval_steps!r}")
        if self.early_stopping_patience < 0:
            raise ValueError(
                f"early_stopping_patience must be 0 or more, got {self.early_stopping_patience!r}"
            )
        if self.checkpoint_steps < 0:
            raise ValueError(f"checkpoint_steps must be 0 or more, got {self.checkpoint_steps!r}")
        if self.loss_check_steps < 0:
            raise ValueError(f"loss_check_steps must be 0 or more, got {self.loss_check_steps!r}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"lr_scheduler {self.lr_scheduler!r} is not one of {', '.join(LR_SCHEDULERS)}")


# -- the command line -----------------------------------------------------------------------------------


def build_parser(config_class: type[StageConfig], description: str) -> argparse.ArgumentParser:
    """An argparse parser with one `--flag` per config field, its help text, default and choices."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    hints = typing.get_type_hints(config_class)
    # Required fields first, then the rest in declaration order (method options come from the base class).
    fields = sorted(dataclasses.fields(config_class), key=lambda f: not f.metadata.get("required"))
    for f in fields:
        kind = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        # argparse formats help with %: escape the literal ones ("{% generation %}").
        kwargs: dict[str, Any] = {"help": f.metadata.get("help", "").replace("%", "%%"), "dest": f.name}
        if f.metadata.get("required"):
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            kwargs["metavar"] = f.name.upper()
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag, **kwargs)
    return parser


def logging_interval(config: StageConfig, steps: int) -> int:
    """Steps between logged losses: the configured value, or enough points for a loss curve on any run
    (a short run logged nothing at the old fixed 10 and its job showed no loss at all)."""
    return config.logging_steps or max(1, min(10, steps // 20))


def parse_config(config_class: type[StageConfig], description: str, argv: list[str] | None) -> StageConfig:
    """Parse `argv` into `config_class`; a value its validation rejects is a usage error naming it."""
    parser = build_parser(config_class, description)
    namespace = parser.parse_args(argv)
    try:
        return config_class(**vars(namespace))
    except ValueError as e:
        parser.error(str(e))
        raise  # pragma: no cover - parser.error exits


def _base_type(hint: Any) -> type:
    """The scalar type of `int`, `float | None`, `typing.Optional[str]`..."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint
