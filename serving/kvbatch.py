"""The running batch's key/value cache: prefill new rows, merge them in, step, and drop finished rows.

Rows are left-padded to a common length; the attention mask marks real tokens and positions are counted
per row from the mask, so rows that joined at different times decode side by side (continuous batching).

The cache is a DynamicCache built without the model's config, so every layer is a plain key/value layer that
keeps the whole past, also where the model attends through a sliding window (mistral, gemma2's alternate
layers): the model's own mask applies the window over cache columns, which count tokens exactly because
padding only ever sits left of a row's first token. Windowed cache layers (DynamicSlidingWindowLayer) would
drop columns per layer and could not be padded, merged or cut like the others. serving.architecture checks
at load that a model's batched logits match its logits alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache

# forward(input_ids, attention_mask, position_ids, cache, adapter_names) -> last-position logits [rows, vocab]
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, DynamicCache, list[str]], torch.Tensor]


@dataclass
class KVBatch:
    cache: DynamicCache
    mask: torch.Tensor  # [rows, length] int64, 0 = padding

    @property
    def rows(self) -> int:
        return self.mask.shape[0]


def prefill(
    forward: Forward, prompts: list[list[int]], adapter_names: list[str], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, KVBatch]:
    """Run the prompts through the model together; return their next-token logits and their cache."""
    length = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (length - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    logits = forward(ids, mask, positions, cache, adapter_names)
    return logits, KVBatch(cache, mask)


def step(forward: Forward, batch: KVBatch, tokens: list[int], adapter_names: list[str]) -> torch.Tensor:
    """Feed one token per row; return the logits for the token after it."""
    device = batch.mask.device
    batch.mask = torch.cat([batch.mask, torch.ones(batch.rows, 1, dtype=batch.mask.dtype, device=device)], 1)
    positions = batch.mask.sum(-1, keepdim=True) - 1
    ids = torch.tensor(tokens, device=device).unsqueeze(1)
    return forward(ids, batch.mask, positions, batch.cache, adapter_names)


def _pad_left(t: torch.Tensor, amount: int, dim: int) -> torch.Tensor:
    if amount == 0:
        return t
    shape = list(t.shape)
    shape[dim] = amount
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def merge(a: KVBatch | None, b: KVBatch) -> KVBatch:
    """Append b's rows after a's, left-padding the shorter cache."""
    if a is None:
        return b
    length = max(a.mask.shape[1], b.mask.shape[1])
    pad_a, pad_b = length - a.mask.shape[1], length - b.mask.shape[1]
    cache = DynamicCache()
    for index, (layer_a, layer_b) in enumerate(zip(a.cache.layers, b.cache.layers, strict=True)):
        keys = torch.cat([_pad_left(layer_a.keys, pad_a, 2), _pad_left(layer_b.keys, pad_b, 2)])
        values = torch.cat([_pad_left(layer_a.values, pad_a, 2), _pad_left(layer_b.values, pad_b, 2)])
        cache.update(keys, values, index)
    mask = torch.cat([_pad_left(a.mask, pad_a, 1), _pad_left(b.mask, pad_b, 1)])
    return KVBatch(cache, mask)


def keep_rows(batch: KVBatch, keep: list[int]) -> KVBatch | None:
    """Drop every row not in `keep`, then cut padding columns no remaining row needs."""
    if not keep:
        return None
    if len(keep) < batch.rows:
        index = torch.tensor(keep, device=batch.mask.device)
        batch.cache.batch_select_indices(index)
        batch.mask = batch.mask.index_select(0, index)
    unused = int((batch.mask.cumsum(-1) == 0).sum(-1).min())
    if unused:
        batch.mask = batch.mask[:, unused:]
        for layer in batch.cache.layers:
            layer.keys = layer.keys[:, :, unused:]
            layer.values = layer.values[:, :, unused:]
    return batch
