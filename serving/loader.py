"""Loads a base model and tokenizer for the LocalEngine: device, compute dtype, chat template, optional
bitsandbytes quantization, and on CPUs bfloat16 linear layers on weights packed once for oneDNN.

Packing: `F.linear` in bfloat16 on a CPU already runs through oneDNN, but re-lays-out the weight on every call;
a decode step reads each weight once, so that reorder is a large part of the step. Packed once at load, the
same oneDNN matmul gives bit-identical outputs about twice as fast (measured on the 2-core AVX512_BF16
machine, a 576 x 1536 layer: 325 -> 169 us for one row, 470 -> 242 us for 16). float32 is left alone: its
unpacked path is MKL, and oneDNN's float32 results differ in the last bits, which would change greedy tokens.
Only plain `torch.nn.Linear` modules are packed; forward hooks (the per-row LoRA of lora_model) still run,
since the packed forward replaces `forward`, not `__call__`. The original weights stay (the packed copies
cost as much memory again as the linear weights): other code reads them, and a tied LM head shares its
weight with the embedding.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .chat_templates import apply_chat_template_option

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


def load_local_engine(
    model: str | Path,
    *,
    model_name: str | None = None,
    quantize: str = "none",
    device: str = "auto",
    dtype: str = "auto",
    chat_template: str | None = None,
    **engine_options,
) -> LocalEngine:
    """Load `model` (a local directory or a hub id) and wrap it in a LocalEngine (not yet started)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .local import LocalEngine
    from .model_source import strip_gguf_quantization

    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize={quantize!r} is not one of {', '.join(QUANTIZE_CHOICES)}")
    device = pick_device(device)
    torch_dtype, why = pick_dtype(dtype, device)
    config = AutoConfig.from_pretrained(str(model))
    strip_gguf_quantization(config)
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
    base = AutoModelForCausalLM.from_pretrained(str(model), **kwargs)
    if quantize == "none":
        base = base.to(device)
        if device == "cpu":
            prepack_linears(base)  # bfloat16 only: same outputs, about twice as fast per step
    name = model_name or Path(str(model)).name
    log.info("loaded %s on %s in %s (%s), quantize=%s", model, device, torch_dtype, why, quantize)
    return LocalEngine(
        base, tokenizer, model_name=name, model_path=str(model), turn_end=turn_end, **engine_options
    )


def prepack_linears(model) -> int:
    """Pack the weights of `model`'s CPU linear layers in bfloat16; returns how many were packed. (float16 is
    left alone too: oneDNN runs it natively only on CPUs with AVX512_FP16/AMX-FP16, untested here.)"""
    import torch

    if not torch.backends.mkldnn.is_available():
        return 0
    packed = 0
    with torch.inference_mode():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if type(module) is not torch.nn.Linear or weight is None:
                continue
            if weight.device.type != "cpu" or weight.dtype != torch.bfloat16:
                continue
            try:
                packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)
            except RuntimeError as exc:  # a oneDNN build without this dtype: keep the plain layer
                log.info("not packing %s weights for oneDNN: %s", weight.dtype, exc)
                return packed
            module.forward = _packed_forward(module, packed_weight)
            packed += 1
    return packed


def _packed_forward(module, packed_weight):
    import torch

    weight_dtype = module.weight.dtype

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != weight_dtype or x.device.type != "cpu" or torch.is_grad_enabled():
            return torch.nn.functional.linear(x, module.weight, module.bias)  # what the layer did before
        return torch.ops.mkldnn._linear_pointwise(x, packed_weight, module.bias, "none", [], "")

    return forward
