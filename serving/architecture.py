"""Whether the LocalEngine can serve a model's architecture, checked once at load: a refusal, never wrong output.

The engine batches decoder-only transformers whose forward pass keeps keys and values in the DynamicCache it
is given, takes per-row positions and a left-padded attention mask. Encoder-decoders, recurrent and state-space
models (mamba, rwkv, ...) and hybrids with linear-attention layers do not, and some fail only by answering
differently in a batch than alone. So besides reading the config, the check runs the engine's own batching
(kvbatch: a left-padded prefill, rows merged as when they join, steps, a row leaving) on a few token ids and
compares every logit with a plain forward pass over each row alone: four forward passes over a dozen tokens.
"""

from __future__ import annotations

import copy

import torch

from . import kvbatch
from .engine import BASE_ADAPTER
from .lora_model import MultiLoraModel

SUPPORTED = (
    "decoder-only transformers with a key/value cache, such as llama, qwen2, qwen3, mistral, gemma2, phi3, "
    "gpt_neox and gpt2"
)
# max |batched - alone| over max |alone| logit; wrong positions, masks or caches give errors near 1
TOLERANCE = {torch.float32: 1e-2, torch.float64: 1e-6}  # float32 leaves room for TF32 matmuls on GPUs
LOW_PRECISION_TOLERANCE = 0.1  # bfloat16, float16 and quantized bases: padding changes the rounding

# prompt lengths of the three rows; each row's tokens past its prompt are fed one a step
PROMPT_LENGTHS = (7, 3, 10)
LENGTH = 12


class UnsupportedArchitecture(ValueError):
    """The model's architecture cannot be batched or adapted by the LocalEngine."""


def check_config(config) -> None:
    """Refuse, before any weights load, what the config alone shows the engine cannot serve."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if getattr(config, "is_encoder_decoder", False):
        _refuse(config, "it is an encoder-decoder model; the engine serves decoder-only models")
    # the cache transformers builds for the model says what each layer keeps: sliding-window key/value
    # layers are served (the engine keeps them whole and the model's mask applies the window), recurrent
    # state is not (mamba, linear attention: nothing in it can be left-padded, merged or cut by position)
    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # configs without decoder fields; the self-check on the model decides
        layers = []
    recurrent = sorted({type(layer).__name__ for layer in layers if not isinstance(layer, DynamicLayer)})
    if recurrent:
        _refuse(
            config,
            f"some of its layers keep a recurrent state ({', '.join(recurrent)}: state-space or linear "
            "attention layers) instead of keys and values, which the engine cannot pad, merge or cut",
        )


def check_batching(base: torch.nn.Module, pad_id: int) -> None:
    """Raise UnsupportedArchitecture, naming the architecture and what is supported, unless the engine's
    batched decoding gives `base` the same logits as running each row alone."""
    config = base.config
    check_config(config)
    try:
        error = _batched_error(base, pad_id)
    except UnsupportedArchitecture:
        raise
    except Exception as exc:
        _refuse(
            config,
            f"the engine's batched decoding (left-padded rows, a key/value cache) fails on it "
            f"({type(exc).__name__}: {exc})",
        )
    tolerance = TOLERANCE.get(_compute_dtype(base), LOW_PRECISION_TOLERANCE)
    if error > tolerance:
        _refuse(
            config,
            f"its logits in a left-padded batch differ from the same rows run alone (relative error "
            f"{error:.3g}, allowed {tolerance:g}): it does not take per-row positions, padding masks or the "
            "engine's key/value cache",
        )


def _batched_error(base: torch.nn.Module, pad_id: int) -> float:
    """The largest relative logit error of the engine's batched decoding against each row alone."""
    model = MultiLoraModel(base)  # the engine's forward call, with no adapter loaded
    device, prompt = model.device, PROMPT_LENGTHS
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, base.get_input_embeddings().num_embeddings, (3, LENGTH), generator=generator)
    with torch.inference_mode():  # rows of one length side by side: no padding, no cache
        alone = base(input_ids=tokens.to(device), use_cache=False).logits.float().cpu()
    rows = tokens.tolist()
    errors: list[float] = []

    def compare(logits: torch.Tensor, positions: list[tuple[int, int]]) -> None:
        for out, (row, position) in zip(logits, positions, strict=True):
            reference = alone[row, position]
            errors.append(float((out - reference).abs().max() / reference.abs().max().clamp(min=1e-6)))

    # the three rows arrive together: one left-padded prefill
    logits, batch = kvbatch.prefill(
        model.forward, [row[:length] for row, length in zip(rows, prompt)], [BASE_ADAPTER] * 3, pad_id, device
    )
    compare(logits, [(r, prompt[r] - 1) for r in range(3)])
    _check_cache(base, batch)
    # split, then merge back in another order as rows that join a running batch are (no forward pass)
    order = [2, 0, 1]
    batch = kvbatch.merge(kvbatch.keep_rows(copy.deepcopy(batch), [2]), kvbatch.keep_rows(batch, [0, 1]))
    logits = kvbatch.step(model.forward, batch, [rows[r][prompt[r]] for r in order], [BASE_ADAPTER] * 3)
    compare(logits, [(r, prompt[r]) for r in order])
    _check_cache(base, batch)
    # the longest row leaves, and with it the padding columns only it needed
    batch = kvbatch.keep_rows(batch, [1, 2])
    order = [0, 1]
    logits = kvbatch.step(model.forward, batch, [rows[r][prompt[r] + 1] for r in order], [BASE_ADAPTER] * 2)
    compare(logits, [(r, prompt[r] + 1) for r in order])
    _check_cache(base, batch)
    return max(errors)


def _check_cache(base: torch.nn.Module, batch: kvbatch.KVBatch) -> None:
    """The cache must hold one key/value layer per attention layer, [rows, heads, length, head_dim] each,
    which is what kvbatch pads, merges and cuts."""
    from transformers.cache_utils import DynamicLayer

    layers = batch.cache.layers
    if not layers or not any(getattr(layer, "is_initialized", False) for layer in layers):
        _refuse(base.config, "it does not keep its state in the key/value cache it is given")
    for index, layer in enumerate(layers):
        if not getattr(layer, "is_initialized", False):
            _refuse(
                base.config,
                f"its cache layer {index} stays empty (it reuses another layer's keys and values)",
            )
        if type(layer) is not DynamicLayer:
            _refuse(
                base.config,
                f"its cache layer {index} is a {type(layer).__name__}, not a plain key/value layer",
            )
        for name in ("keys", "values"):
            tensor = getattr(layer, name)
            if tensor.dim() != 4 or tensor.shape[0] != batch.rows or tensor.shape[2] != batch.mask.shape[1]:
                _refuse(
                    base.config,
                    f"its cache layer {index} holds {name} of shape {list(tensor.shape)}, not "
                    f"[{batch.rows} rows, heads, {batch.mask.shape[1]} positions, head size]",
                )


def _compute_dtype(base: torch.nn.Module) -> torch.dtype:
    if getattr(base, "is_quantized", False) or getattr(base, "quantization_method", None):
        return torch.bfloat16  # quantized weights: the low-precision tolerance
    return getattr(base, "dtype", torch.float32)


def _refuse(config, reason: str):
    architecture = ", ".join(getattr(config, "architectures", None) or []) or type(config).__name__
    raise UnsupportedArchitecture(
        f"the local engine cannot serve {architecture} (model_type {getattr(config, 'model_type', '?')!r}): "
        f"{reason}. It serves {SUPPORTED}; serve this model with vLLM (--engine vllm) instead"
    )
