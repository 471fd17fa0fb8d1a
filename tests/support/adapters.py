"""Makes small LoRA adapters for the demo model (random but fixed weights, so they change its answers)."""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_TARGETS = ("q_proj", "v_proj")


def make_lora_adapter(
    base: Path,
    out: Path,
    *,
    rank: int = 4,
    targets: tuple[str, ...] | str = DEFAULT_TARGETS,
    seed: int = 0,
    scale: float = 1.0,
    **lora_options,
) -> Path:
    """Save a LoRA adapter for `base` in PEFT's format, with B non-zero so outputs differ from the base.
    `targets` is module names or one string PEFT reads as a whole ("all-linear", a regex).
    `lora_options` go to LoraConfig (lora_alpha, use_rslora, rank_pattern, ...)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    options = {"lora_alpha": 2 * rank, **lora_options}
    target_modules = targets if isinstance(targets, str) else list(targets)
    config = LoraConfig(r=rank, target_modules=target_modules, init_lora_weights=False, **options)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(scale)
    peft_model.save_pretrained(str(out))
    return out


def rewrite_config(adapter: Path, **changes) -> Path:
    config_file = adapter / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config.update(changes)
    config_file.write_text(json.dumps(config))
    return adapter
