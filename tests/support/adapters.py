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
    targets: tuple[str, ...] = DEFAULT_TARGETS,
    seed: int = 0,
    scale: float = 1.0,
) -> Path:
    """Save a LoRA adapter for `base` in PEFT's format, with B non-zero so outputs differ from the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    peft_model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets), init_lora_weights=False)
    )
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
