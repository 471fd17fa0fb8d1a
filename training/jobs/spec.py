"""What a training job asks for, checked before it is queued: stage, method, data, name, parent and the
stage's own settings (`params`, checked against the stage's config dataclass, so a bad value is refused
with the field it names before anything runs).

    from training.jobs.spec import JobSpec, check_spec
    spec = check_spec(JobSpec(stage="dpo", method="lora", data="feedback", name="polite", base="./demo",
                              params={"max_steps": 100, "beta": 0.2}))
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.jobs.launch import DEFAULT_STRATEGY, MAX_GPUS, STRATEGIES
from training.methods import METHODS

# stage -> (module, config class, the rows it trains on)
STAGES: dict[str, tuple[str, str, str]] = {
    "sft": ("training.sft", "SFTConfig", "sft"),
    "reward": ("training.reward", "RewardConfig", "pairs"),
    "dpo": ("training.dpo", "DPOConfig", "pairs"),
    "kto": ("training.kto", "KTOConfig", "kto"),
    "ppo": ("training.ppo", "PPOConfig", "prompts"),
    "rloo": ("training.rloo", "RLOOConfig", "prompts"),
    "grpo": ("training.grpo", "GRPOConfig", "prompts"),
}
# stage -> (export kind, how rankings become pairs) for the "feedback" data source
EXPORTS: dict[str, tuple[str, str]] = {
    "sft": ("sft", "dpo"),
    "reward": ("pairs", "reward"),
    "dpo": ("pairs", "dpo"),
    "kto": ("kto", "dpo"),
    "ppo": ("prompts", "dpo"),
    "rloo": ("prompts", "dpo"),
    "grpo": ("prompts", "dpo"),
}
# Stages whose result is a chat adapter the engine can answer with (a reward model scores, it does not chat).
CHAT_STAGES: tuple[str, ...] = ("sft", "dpo", "kto", "ppo", "rloo", "grpo")
# PPO is tunehub's own training loop (no Accelerator): it runs in one process.
SINGLE_PROCESS_STAGES: tuple[str, ...] = ("ppo",)
# QLoRA's 4-bit layers are not sharded by tunehub's loader (no bnb_4bit_quant_storage): data parallel only.
QLORA_STRATEGIES: tuple[str, ...] = ("ddp", "zero2")
FEEDBACK = "feedback"
# Config fields the job sets itself, from its own top-level fields or its directory.
RESERVED: dict[str, str] = {
    "model": "the hub's base model (or `tunehub train --base`)",
    "data": "the job's `data`",
    "output_dir": "the job's directory",
    "parent_adapter": "the job's `parent`",
    "method": "the job's `method`",
    "resume": "the runner, after a restart",
}
# The promotion guard's bounds that a job's own watch applies as it trains (training.callbacks.DriftWatch):
# the hub gives its guard's values to the jobs it queues, so a job stops where the guard would refuse it
GUARD_BOUNDS: tuple[str, ...] = ("max_kl", "max_perplexity_rise")
DEFAULT_CHECKPOINT_STEPS = 50  # resumable checkpoints of a job, unless its params say otherwise
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,47}")


class JobError(ValueError):
    """A job request that cannot run; `param` names the field at fault (``params.beta``, ``data``...)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message, self.param = message, param


@dataclass
class JobSpec:
    """A training job as queued: what to train, on what, from what, and under which adapter name."""

    stage: str
    method: str
    data: str  # "feedback" (a snapshot exported from the store) or a file/directory path
    name: str  # the adapter's name; a later version of an existing name is served as NAME@vN
    base: str  # the base model directory or hub id
    parent: str | None = None  # an adapter in the store (name, name@N, name@vN) or an adapter directory
    params: dict[str, Any] = field(default_factory=dict)  # the stage config's own fields
    only_new: bool = False  # feedback data: only votes newer than the stage's last successful run
    device: str = "default"  # jobs on one device run one at a time
    foreground: bool = False  # run by `tunehub train` itself: the hub's runner leaves it alone
    gpus: int = 1  # more than 1: `accelerate launch --num_processes gpus` with the strategy's config
    strategy: str = DEFAULT_STRATEGY  # ddp, zero2, zero3 or fsdp (training/accelerate/*.yaml)
    trigger: dict[str, Any] | None = None  # queued by the automatic trigger: its count and newest vote
    # the chat template the hub serves the base with (`--chat-template`), when the base has none of its
    # own or the hub replaced it: the job trains with it unless its params set one
    chat_template: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> JobSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @property
    def trains_chat_adapter(self) -> bool:
        """Whether the result can be hot-loaded into the engine and chatted with: an adapter of a chat stage,
        or a full or freeze fine-tune, which the hub serves as a model of its own beside the base."""
        return self.stage in CHAT_STAGES


def config_class(stage: str) -> type:
    module, name, _ = STAGES[stage]
    return getattr(importlib.import_module(module), name)


def with_guard_bounds(stage: str, params: dict[str, Any], bounds: Mapping[str, float]) -> dict[str, Any]:
    """`params` with each of the hub's promotion-guard `bounds` (`GUARD_BOUNDS`) that the stage watches and
    `params` does not name: a value the job names wins. An unknown stage is left to `check_spec`."""
    if stage not in STAGES:
        return params
    watched = {f.name for f in dataclasses.fields(config_class(stage))} & set(GUARD_BOUNDS)
    return {**{k: v for k, v in bounds.items() if k in watched}, **params}


def check_spec(spec: JobSpec) -> JobSpec:
    """The spec with its data path made absolute; raises `JobError` naming the first bad field."""
    if spec.stage not in STAGES:
        raise JobError(f"stage {spec.stage!r} is not one of {', '.join(STAGES)}", "stage")
    if spec.method not in METHODS:
        raise JobError(f"method {spec.method!r} is not one of {', '.join(METHODS)}", "method")
    if not isinstance(spec.name, str) or not NAME.fullmatch(spec.name):
        raise JobError(
            f"name {spec.name!r} is not a valid adapter name: use 1-48 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            "name",
        )
    if not isinstance(spec.data, str) or not spec.data.strip():
        raise JobError(f"data must be {FEEDBACK!r} or a file or directory path, got {spec.data!r}", "data")
    data = spec.data
    if data != FEEDBACK:
        path = Path(data).expanduser()
        if not path.exists():
            raise JobError(f"data {data!r} is neither {FEEDBACK!r} nor an existing file or directory", "data")
        data = str(path.resolve())
    elif spec.only_new is not True and spec.only_new is not False:
        raise JobError(f"only_new must be true or false, got {spec.only_new!r}", "only_new")
    if spec.only_new and data != FEEDBACK:
        raise JobError("only_new applies to data 'feedback' only", "only_new")
    check_devices(spec)
    params = check_params(spec.stage, spec.method, spec.params)
    return dataclasses.replace(spec, data=data, params=params)


def check_devices(spec: JobSpec) -> None:
    """`gpus` and `strategy` make a launch that can work; raises `JobError` naming the field."""
    gpus, strategy = spec.gpus, spec.strategy
    if not isinstance(gpus, int) or isinstance(gpus, bool) or not 1 <= gpus <= MAX_GPUS:
        raise JobError(f"gpus must be a whole number from 1 to {MAX_GPUS}, got {gpus!r}", "gpus")
    if strategy not in STRATEGIES:
        raise JobError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}", "strategy")
    if gpus == 1 and strategy != DEFAULT_STRATEGY:
        raise JobError(
            f"strategy {strategy!r} shards over several GPUs, but gpus is 1: set gpus to 2 or more, or "
            f"leave strategy at {DEFAULT_STRATEGY!r} (one GPU runs in one process)",
            "strategy",
        )
    if gpus > 1 and spec.stage in SINGLE_PROCESS_STAGES:
        raise JobError(
            f"stage {spec.stage!r} runs in one process (tunehub's own loop), got gpus {gpus}: use gpus 1, "
            "or rloo/grpo, which run on several GPUs",
            "gpus",
        )
    if gpus > 1 and spec.method == "qlora" and strategy not in QLORA_STRATEGIES:
        raise JobError(
            f"method 'qlora' cannot be sharded with strategy {strategy!r}: use {' or '.join(QLORA_STRATEGIES)}, "
            "or lora with zero3/fsdp",
            "strategy",
        )


def check_params(stage: str, method: str, params: object) -> dict[str, Any]:
    """`params` checked against the stage's config dataclass: known fields, right types, valid values."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise JobError(f"params must be a JSON object of {stage} settings, got {params!r:.80}", "params")
    cls = config_class(stage)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in params.items():
        param = f"params.{key}"
        if key in RESERVED:
            raise JobError(f"{param} cannot be set: it comes from {RESERVED[key]}", param)
        if key not in fields:
            known = ", ".join(sorted(name for name in fields if name not in RESERVED))
            raise JobError(f"{param} is not a {stage} setting; the settings are: {known}", param)
        _check_type(value, hints[key], param)
        choices = fields[key].metadata.get("choices")
        if choices and value not in choices:
            raise JobError(f"{param} {value!r} is not one of {', '.join(choices)}", param)
    try:
        cls(model="model", data="data", output_dir="out", method=method, **params)
    except ValueError as e:
        name = str(e).split(" ", 1)[0]
        param = f"params.{name}" if name in params else (name if name in fields else "params")
        raise JobError(str(e), param) from None
    return dict(params)


def _check_type(value: object, hint: Any, param: str) -> None:
    args = typing.get_args(hint)
    optional = type(None) in args
    kind = next((a for a in args if a is not type(None)), hint) if args else hint
    if value is None:
        if optional:
            return
        raise JobError(f"{param} must not be null", param)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(kind, True)
    if not ok:
        raise JobError(f"{param} must be {kind.__name__}, got {value!r:.80}", param)
