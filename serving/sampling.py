"""Turns one decode step's logits into the next token of each row, with each row's own sampling settings."""

from __future__ import annotations

import torch

from .engine import SamplingParams


def make_generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def sample_next(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]
) -> list[int]:
    """logits [rows, vocab] (float32, CPU) -> one token id per row."""
    greedy = logits.argmax(dim=-1).tolist()
    sampled_rows = [i for i, p in enumerate(params) if p.temperature > 0]
    if not sampled_rows:
        return greedy
    rows = torch.tensor(sampled_rows)
    scores = logits.index_select(0, rows).float()
    temperature = torch.tensor([params[i].temperature for i in sampled_rows]).unsqueeze(1)
    scores = scores / temperature
    vocab = scores.shape[-1]
    top_k = torch.tensor([params[i].top_k if 0 < params[i].top_k < vocab else vocab for i in sampled_rows])
    top_p = torch.tensor([params[i].top_p for i in sampled_rows]).unsqueeze(1)
    if bool((top_k < vocab).any()) or bool((top_p < 1.0).any()):
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        positions = torch.arange(vocab).unsqueeze(0)
        drop = positions >= top_k.unsqueeze(1)
        probs = sorted_scores.softmax(dim=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop |= (probs.cumsum(dim=-1) - probs) >= top_p
        drop[:, 0] = False  # the most likely token always stays, whatever top_p and top_k say
        sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(1, order, sorted_scores)
    probs = scores.softmax(dim=-1)
    tokens = list(greedy)
    for j, i in enumerate(sampled_rows):
        tokens[i] = int(torch.multinomial(probs[j], 1, generator=generators[i]).item())
    return tokens
