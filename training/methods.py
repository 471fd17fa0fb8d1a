"""Method presets: what `--method full|freeze|lora|dora|qlora|ia3` means for loading and wrapping a model.

`resolve_method(options, task)` turns the method and its options into a `MethodPlan`: the PEFT config to
wrap the model with (None for full and freeze tuning), the extra `from_pretrained` kwargs (4-bit NF4 for
QLoRA) and how many top layers freeze tuning trains. `detect_hardware()` and `resolve_precision()` pick
bf16 where the GPU or the CPU (AVX512_BF16/AMX) computes it, fp16 on older GPUs, fp32 elsewhere;
`precision_kwargs()` turns that into trainer arguments and keeps gradient checkpointing off on CPU (TRL
turns it on by default).

    from training.methods import MethodOptions, resolve_method
    plan = resolve_method(MethodOptions(method="lora", lora_rank=8), task="causal_lm")
    plan.peft_config, plan.model_kwargs
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from peft import PeftConfig

METHODS: tuple[str, ...] = ("full", "freeze", "lora", "dora", "qlora", "ia3")
ADAPTER_METHODS: tuple[str, ...] = ("lora", "dora", "qlora", "ia3")
LORA_METHODS: tuple[str, ...] = ("lora", "dora", "qlora")
TASKS: tuple[str, ...] = ("causal_lm", "seq_cls")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
# the torch names the serving side and `--dtype` use, for the same precisions
DTYPE_NAMES: dict[str, str] = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


@dataclass
class MethodOptions:
    """Which parameters a stage trains and how: the options shared by every training stage."""

    method: str = field(
        default="lora",
        metadata={
            "help": "what to train: full (every weight), freeze (only the last --freeze-layers layers and the "
            "head), lora, dora (weight-decomposed LoRA), qlora (LoRA on a 4-bit NF4 base, bitsandbytes) or "
            "ia3 (learned rescaling vectors)",
            "choices": METHODS,
        },
    )
    lora_rank: int = field(default=16, metadata={"help": "LoRA/DoRA/QLoRA rank r (the adapter's inner size)"})
    lora_alpha: float | None = field(
        default=None, metadata={"help": "LoRA scaling numerator alpha (default: 2 x rank)"}
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input, in [0, 1)"})
    target_modules: str = field(
        default="auto",
        metadata={
            "help": "comma-separated module names to adapt (e.g. q_proj,v_proj), 'all-linear', or 'auto': "
            "all linear layers for LoRA/DoRA/QLoRA, PEFT's per-architecture defaults for IA3"
        },
    )
    use_rslora: bool = field(
        default=False, metadata={"help": "rank-stabilised LoRA: scale by alpha/sqrt(r) instead of alpha/r"}
    )
    freeze_layers: int = field(
        default=2,
        metadata={"help": "freeze tuning: how many of the last decoder layers to train (with the head)"},
    )
    qlora_double_quant: bool = field(
        default=True,
        metadata={"help": "QLoRA: also quantise the 4-bit quantisation constants (saves memory)"},
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if not isinstance(self.lora_rank, int) or self.lora_rank < 1:
            raise ValueError(f"lora_rank must be a positive integer, got {self.lora_rank!r}")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha must be positive, got {self.lora_alpha!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if not isinstance(self.freeze_layers, int) or self.freeze_layers < 1:
            raise ValueError(f"freeze_layers must be a positive integer, got {self.freeze_layers!r}")
        targets = parse_targets(self.target_modules)
        if self.method == "ia3" and targets == "all-linear":
            raise ValueError(
                "target_modules 'all-linear' is not supported for ia3; use 'auto' or name the modules "
                "(e.g. k_proj,v_proj,down_proj)"
            )


@dataclass
class MethodPlan:
    """How to load and wrap the model for one method."""

    method: str
    peft_config: PeftConfig | None  # None: full or freeze tuning
    model_kwargs: dict[str, Any]  # extra kwargs for from_pretrained (quantization_config, dtype)
    freeze_layers: int | None  # freeze tuning: train only the last N decoder layers and the head

    @property
    def trains_adapter(self) -> bool:
        return self.peft_config is not None


@dataclass(frozen=True)
class Hardware:
    """What the training device supports: `bf16` is native bfloat16 compute (a GPU that has it, or a CPU
    with AVX512_BF16 or AMX)."""

    cuda: bool
    bf16: bool
    name: str


def detect_hardware() -> Hardware:
    import torch

    if torch.cuda.is_available():
        return Hardware(cuda=True, bf16=torch.cuda.is_bf16_supported(), name=torch.cuda.get_device_name(0))
    return Hardware(cuda=False, bf16=cpu_has_bf16(), name="cpu")


def cpu_has_bf16() -> bool:
    """The CPU computes bfloat16 natively (AVX512_BF16 or AMX): bf16 matmuls beat fp32 there.

    The same probe as serving/loader.py (training does not import serving)."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def normalise_precision(precision: str) -> str:
    """'bfloat16' -> 'bf16' (the `--dtype` spelling), 'bf16' -> 'bf16'; raises on anything else."""
    value = DTYPE_NAMES.get(precision, precision)
    if value not in PRECISIONS:
        names = ", ".join((*PRECISIONS, *DTYPE_NAMES))
        raise ValueError(f"precision {precision!r} is not one of {names}")
    return value


def resolve_precision(precision: str, hardware: Hardware) -> tuple[str, str]:
    """(fp32|bf16|fp16, why) for `precision` on `hardware`: auto picks bf16 where the GPU or CPU computes
    it natively, fp16 on a GPU without bf16, fp32 on other CPUs. Raises on a precision the device lacks."""
    precision = normalise_precision(precision)
    if precision == "fp16" and not hardware.cuda:
        raise ValueError("precision 'fp16' needs a CUDA GPU; this machine has none (use auto, fp32 or bf16)")
    if precision == "bf16" and hardware.cuda and not hardware.bf16:
        raise ValueError(
            f"precision 'bf16' needs a GPU with bfloat16 support; this machine has {hardware.name} "
            "(use auto, fp32, or fp16)"
        )
    if precision != "auto":
        slow = " (this CPU has no bfloat16 instructions: slower than fp32)"
        return precision, "asked for" + (slow if precision == "bf16" and not hardware.bf16 else "")
    if hardware.cuda:
        if hardware.bf16:
            return "bf16", f"auto: {hardware.name} supports bfloat16"
        return "fp16", f"auto: {hardware.name} has no bfloat16"
    if hardware.bf16:
        return "bf16", "auto: the CPU has AVX512_BF16/AMX"
    return "fp32", "auto: the CPU has no bfloat16 instructions"


def parse_targets(value: str) -> str | list[str] | None:
    """'auto' -> None, 'all-linear' -> 'all-linear', 'q_proj, v_proj' -> ['q_proj', 'v_proj']."""
    text = (value or "").strip()
    if text.lower() in ("", "auto"):
        return None
    if text.lower() == "all-linear":
        return "all-linear"
    names = [name.strip() for name in text.split(",") if name.strip()]
    bad = [name for name in names if not all(c.isalnum() or c in "._-" for c in name)]
    if bad:
        raise ValueError(
            f"target_modules has a bad module name {bad[0]!r}: use names like q_proj,v_proj or 'all-linear'"
        )
    return names


def compute_dtype(hardware: Hardware, precision: str = "auto") -> torch.dtype:
    """The dtype 4-bit layers compute in: the run's precision (`resolve_precision`), so bf16 where the GPU
    or the CPU has it, fp16 on older GPUs, fp32 on other CPUs."""
    import torch

    resolved, _ = resolve_precision(precision, hardware)
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[resolved]


def resolve_method(
    options: MethodOptions, task: str = "causal_lm", hardware: Hardware | None = None
) -> MethodPlan:
    """The PEFT config and model-loading kwargs for `options.method` on a `task` model.

    `task` is causal_lm (SFT, DPO, KTO) or seq_cls (reward model: the `score` head is trained in full
    next to the adapter, through `modules_to_save`).
    """
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {', '.join(TASKS)}")
    hardware = hardware or detect_hardware()
    method = options.method
    if method in ("full", "freeze"):
        return MethodPlan(method, None, {}, options.freeze_layers if method == "freeze" else None)

    from peft import IA3Config, LoraConfig, TaskType

    task_type = TaskType.CAUSAL_LM if task == "causal_lm" else TaskType.SEQ_CLS
    modules_to_save = ["score"] if task == "seq_cls" else None
    targets = parse_targets(options.target_modules)
    model_kwargs: dict[str, Any] = {}
    if method == "ia3":
        peft_config: PeftConfig = IA3Config(
            task_type=task_type,
            target_modules=targets,
            # Explicit targets all scale their outputs; 'auto' lets PEFT pick the feed-forward ones per architecture.
            feedforward_modules=None if targets is None else [],
            modules_to_save=modules_to_save,
        )
    else:
        peft_config = LoraConfig(
            task_type=task_type,
            r=options.lora_rank,
            lora_alpha=options.lora_alpha if options.lora_alpha is not None else 2 * options.lora_rank,
            lora_dropout=options.lora_dropout,
            target_modules=targets if targets is not None else "all-linear",
            use_rslora=options.use_rslora,
            use_dora=method == "dora",
            modules_to_save=modules_to_save,
        )
    if method == "qlora":
        precision = getattr(options, "precision", "auto")  # a stage's config has one; MethodOptions not
        model_kwargs["quantization_config"] = qlora_quantization_config(options, hardware, precision)
    return MethodPlan(method, peft_config, model_kwargs, None)


def qlora_quantization_config(options: MethodOptions, hardware: Hardware, precision: str = "auto"):
    """4-bit NF4 base weights (bitsandbytes; its CPU backend works too), computing in `compute_dtype`."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:  # pragma: no cover - bitsandbytes is a dependency
        raise RuntimeError(
            f"method 'qlora' needs bitsandbytes, which failed to import ({e}); run `tunehub doctor`"
        ) from e
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=options.qlora_double_quant,
        bnb_4bit_compute_dtype=compute_dtype(hardware, precision),
    )


def precision_kwargs(
    precision: str, gradient_checkpointing: bool | None, hardware: Hardware
) -> dict[str, Any]:
    """TrainingArguments for precision and memory: mixed precision (autocast) as `resolve_precision` picks
    it, gradient checkpointing off on CPU.

    TRL turns bf16 and gradient checkpointing on by default; on a CPU without bfloat16 instructions bf16
    only slows training down, and checkpointing does on every CPU.
    """
    precision, _ = resolve_precision(precision, hardware)
    checkpointing = hardware.cuda if gradient_checkpointing is None else gradient_checkpointing
    return {
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "use_cpu": not hardware.cuda,
        "gradient_checkpointing": checkpointing,
    }
