"""Loads a base model and tokenizer for the LocalEngine: device, compute dtype, CPU threads (a fixed count, or
the process's serving.cpu_share), chat template and optional bitsandbytes quantization; on a CPU, bfloat16
linear layers on packed weights (serving.prepack); an architecture the engine cannot batch is refused here
(serving.architecture)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .architecture import check_batching, check_config
from .chat_templates import apply_chat_template_option
from .cpu_share import CpuShare
from .openmp import in_passing_thread
from .prepack import prepack_if_memory_allows

if TYPE_CHECKING:
    from .local import LocalEngine

log = logging.getLogger(__name__)

QUANTIZE_CHOICES = ("none", "8bit", "4bit")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_bf16() -> bool:
    """The CPU computes bfloat16 natively (AVX512_BF16 or AMX): bfloat16 matmuls beat float32 there."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def pick_dtype(requested: str, device: str):
    """(torch dtype, why) for `requested` on `device`; auto: bfloat16 where the hardware has it, else
    float16 on older GPUs and float32 on other CPUs."""
    import torch

    if requested not in DTYPE_CHOICES:
        raise ValueError(f"dtype={requested!r} is not one of {', '.join(DTYPE_CHOICES)}")
    if requested != "auto":
        return getattr(torch, requested), "asked for"
    if device.startswith("cuda"):
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "auto: the GPU supports bfloat16"
        return torch.float16, "auto: the GPU has no bfloat16"
    if cpu_has_bf16():
        return torch.bfloat16, "auto: the CPU has AVX512_BF16/AMX"
    return torch.float32, "auto: the CPU has no bfloat16 instructions"


def check_threads(requested: int | None) -> int | None:
    """`requested` when it is a usable thread count; None (the engine takes its CpuShare) stays None."""
    if requested is not None and requested < 1:
        raise ValueError(f"threads={requested!r}: the engine needs at least 1 thread")
    return requested


def read_model_config(model: str | Path):
    """The model's transformers config; a hub id that cannot be fetched (offline, unknown, gated) or a
    directory without a readable config raises ModelSourceError naming it."""
    from transformers import AutoConfig

    from .model_source import ModelSourceError

    try:
        return AutoConfig.from_pretrained(str(model))
    except OSError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if Path(str(model)).is_dir():
            message = f"--model {str(model)!r}: the directory's model config could not be read: {reason}"
        else:
            message = (
                f"--model {str(model)!r} is not a local directory or file, and as a Hugging Face Hub id it "
                f"could not be loaded: {reason}"
            )
        raise ModelSourceError(message) from exc


def load_local_engine(
    model: str | Path,
    *,
    model_name: str | None = None,
    quantize: str = "none",
    device: str = "auto",
    dtype: str = "auto",
    chat_template: str | None = None,
    threads: int | None = None,
    cpu_share: CpuShare | None = None,
    **engine_options,
) -> LocalEngine:
    """Load `model` (a local directory or a hub id) and wrap it in a LocalEngine (not yet started). With no
    `threads` it decodes on `cpu_share`, by default the process's (all cores, less those other processes keep
    busy, one fewer while a job trains).

    Raises serving.architecture.UnsupportedArchitecture for a model the engine cannot batch or adapt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .local import LocalEngine
    from .model_source import strip_gguf_quantization

    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize={quantize!r} is not one of {', '.join(QUANTIZE_CHOICES)}")
    threads = check_threads(threads)
    device = pick_device(device)
    torch_dtype, why = pick_dtype(dtype, device)
    config = read_model_config(model)
    strip_gguf_quantization(config)
    check_config(config)
    kwargs: dict = {"dtype": torch_dtype, "config": config}
    if quantize != "none":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True)
            if quantize == "8bit"
            else BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch_dtype
            )
        )
        kwargs["device_map"] = {"": device}
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    turn_end = apply_chat_template_option(tokenizer, chat_template, model=str(model))

    def build():
        base = AutoModelForCausalLM.from_pretrained(str(model), **kwargs)
        if quantize == "none":
            base = base.to(device)
            if device == "cpu":
                prepack_if_memory_allows(base)  # bfloat16 only: the same outputs, about twice as fast a step
        check_batching(base, tokenizer.pad_token_id)
        return base

    base = in_passing_thread(build)  # the main thread keeps no OpenMP team (serving.openmp)
    name = model_name or Path(str(model)).name
    share = None if threads is not None else cpu_share or CpuShare.of_process()
    counts = threads or f"up to {share.most}, less the cores other work takes"
    log.info(
        "loaded %s on %s in %s (%s), quantize=%s, CPU threads: %s",
        *(model, device, torch_dtype, why, quantize, counts),
    )
    return LocalEngine(
        base,
        tokenizer,
        model_name=name,
        model_path=str(model),
        turn_end=turn_end,
        threads=threads,
        cpu_share=share,
        **engine_options,
    )
