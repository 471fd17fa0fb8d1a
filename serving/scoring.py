"""Teacher-forced token log-probabilities for the local engine's `score` (the replay's KL and perplexity).

Rows are right-padded and run in sub-batches sized so the logits of one sub-batch (rows x positions x
vocabulary, float32) stay under `MAX_LOGITS` values, a few hundred MB: SmolLM2's 49k vocabulary at 32 rows
of 128 tokens would take 800 MB at once. Rows on different adapters share a sub-batch (one slot per row,
as in decoding). Only the engine's worker thread calls this.
"""

from __future__ import annotations

import torch

MAX_LOGITS = 64 * 1024 * 1024  # float32 values of one sub-batch's logits (256 MB)


def score_sequences(
    model, sequences: list[list[int]], adapter_keys: list[str], pad_id: int, device, vocab_size: int
) -> list[list[float | None]]:
    """For each sequence, [None, log p(t1 | t0), log p(t2 | t0 t1), ...] under its adapter key."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # similar lengths pad less
    results: list[list[float | None]] = [[] for _ in sequences]
    start = 0
    while start < len(order):
        longest = len(sequences[order[min(len(order) - 1, start)]])
        rows = 1
        while start + rows < len(order):
            length = len(sequences[order[start + rows]])
            if (rows + 1) * length * vocab_size > MAX_LOGITS:
                break
            rows, longest = rows + 1, length
        chunk = order[start : start + rows]
        ids = torch.full((rows, longest), pad_id, dtype=torch.long)
        mask = torch.zeros((rows, longest), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, : len(sequences[i])] = torch.tensor(sequences[i])
            mask[row, : len(sequences[i])] = 1
        logprobs = model.token_logprobs(ids.to(device), mask.to(device), [adapter_keys[i] for i in chunk])
        for row, i in enumerate(chunk):
            results[i] = [None, *logprobs[row, : len(sequences[i]) - 1].tolist()]
        start += rows
    return results
