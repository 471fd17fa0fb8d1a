"""Loads a base model and tokenizer for the LocalEngine: device, dtype and optional bitsandbytes quantization."""

from __future__ import annotations

import logging
from pathlib import Path

from .local import LocalEngine

log = logging.getLogger(__name__)

QUANTIZE_CHOICES = ("none", "8bit", "4bit")


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_local_engine(
    model: str | Path,
    *,
    model_name: str | None = None,
    quantize: str = "none",
    device: str = "auto",
    **engine_options,
) -> LocalEngine:
    """Load `model` (a local directory or a hub id) and wrap it in a LocalEngine (not yet started)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize={quantize!r} is not one of {', '.join(QUANTIZE_CHOICES)}")
    device = pick_device(device)
    dtype = torch.float32
    if device.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    kwargs: dict = {"dtype": dtype}
    if quantize != "none":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True)
            if quantize == "8bit"
            else BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
            )
        )
        kwargs["device_map"] = {"": device}
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = AutoModelForCausalLM.from_pretrained(str(model), **kwargs)
    if quantize == "none":
        base = base.to(device)
    name = model_name or Path(str(model)).name
    log.info("loaded %s on %s (%s, quantize=%s)", model, device, dtype, quantize)
    return LocalEngine(base, tokenizer, model_name=name, model_path=str(model), **engine_options)
