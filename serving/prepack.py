"""bfloat16 linear layers of a CPU model on weights packed once for oneDNN, where memory allows.

`F.linear` in bfloat16 on a CPU already runs through oneDNN, but re-lays-out the weight on every call;
a decode step reads each weight once, so that reorder is a large part of the step. Packed once at load, the
same oneDNN matmul gives bit-identical outputs about twice as fast (measured on the 2-core AVX512_BF16
machine, a 576 x 1536 layer: 325 -> 169 us for one row, 470 -> 242 us for 16). float32 is left alone: its
unpacked path is MKL, and oneDNN's float32 results differ in the last bits, which would change greedy tokens.
Only plain `torch.nn.Linear` modules are packed; forward hooks (the per-row LoRA of lora_model) still run,
since the packed forward replaces `forward`, not `__call__`. The original weights stay (the packed copies
cost as much memory again as the linear weights): other code reads them, and a tied LM head shares its
weight with the embedding.

The packed copies need as much memory again as the linear weights, so packing is skipped (and the log says
so) when they would take more than a quarter of the memory the system has available: +270 MB for
SmolLM2-135M is nothing, +14 GB for a 7B model on a CPU box may be what it does not have.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

MEMORY_SHARE = 0.25  # the packed copies may take at most this share of the available memory
UNKNOWN_MEMORY_LIMIT = 1 << 30  # bytes the copies may take where the available memory cannot be read


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (Linux), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def packable_bytes(model) -> int:
    """Bytes of the weights prepack_linears would copy (plain bfloat16 CPU nn.Linear layers)."""
    import torch

    return sum(
        m.weight.numel() * m.weight.element_size()
        for m in model.modules()
        if type(m) is torch.nn.Linear
        and m.weight is not None
        and m.weight.device.type == "cpu"
        and m.weight.dtype == torch.bfloat16
    )


def prepack_if_memory_allows(model) -> int:
    """prepack_linears(model) unless its copies would crowd the machine's memory; returns layers packed."""
    extra = packable_bytes(model)
    if not extra:
        return 0
    free = available_memory()
    limit = UNKNOWN_MEMORY_LIMIT if free is None else int(free * MEMORY_SHARE)
    if extra > limit:
        log.info(
            "not packing bfloat16 linear weights for oneDNN: the copies would take %.1f GB of %s",
            extra / 1e9,
            "an unknown amount of free memory" if free is None else f"{free / 1e9:.1f} GB available",
        )
        return 0
    return prepack_linears(model)


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
            except (RuntimeError, AttributeError) as exc:
                # a oneDNN build without this dtype, or a torch without these internal ops: keep plain layers
                log.info("not packing %s weights for oneDNN: %s", weight.dtype, exc)
                return packed
            module.forward = _packed_forward(module, packed_weight)
            packed += 1
    return packed


def _packed_forward(module, packed_weight):
    """A forward for the linear `module` that multiplies by `packed_weight` (its weight as
    `torch.ops.mkldnn._reorder_linear_weight` packs it) where it can, else as the layer did before."""
    import torch

    weight_dtype = module.weight.dtype

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != weight_dtype or x.device.type != "cpu" or torch.is_grad_enabled():
            return torch.nn.functional.linear(x, module.weight, module.bias)  # what the layer did before
        return torch.ops.mkldnn._linear_pointwise(x, packed_weight, module.bias, "none", [], "")

    return forward
