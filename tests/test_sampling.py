"""sample_next: each row of a decode step picks its next token with its own temperature, top-k, top-p and seed.

Run: python -m pytest tests/test_sampling.py -q
"""

from __future__ import annotations

import torch

from serving.engine import SamplingParams
from serving.sampling import make_generator, sample_next

VOCAB = 64


def random_logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 2


def draw(
    logits: torch.Tensor, params: list[SamplingParams], seeds: list[int | None], steps: int
) -> list[list[int]]:
    """Sample `steps` times with one generator per row (kept across steps, as the engine does)."""
    generators = [make_generator(seed) for seed in seeds]
    draws = [sample_next(logits, params, generators) for _ in range(steps)]
    return [list(column) for column in zip(*draws)]  # per row


def test_greedy_rows_take_the_argmax():
    logits = random_logits(4)
    tokens = sample_next(logits, [SamplingParams(temperature=0)] * 4, [make_generator(i) for i in range(4)])
    assert tokens == logits.argmax(-1).tolist()


def test_top_k_1_is_the_argmax_whatever_the_seed():
    logits = random_logits(3, seed=1)
    params = [SamplingParams(temperature=1.5, top_k=1)] * 3
    for seed in range(20):
        assert (
            sample_next(logits, params, [make_generator(seed + i) for i in range(3)])
            == logits.argmax(-1).tolist()
        )


def test_tiny_top_p_is_the_argmax_whatever_the_seed():
    logits = random_logits(3, seed=2)
    params = [SamplingParams(temperature=2.0, top_p=1e-6)] * 3
    for seed in range(20):
        assert (
            sample_next(logits, params, [make_generator(seed + i) for i in range(3)])
            == logits.argmax(-1).tolist()
        )


def test_top_k_keeps_only_the_k_most_likely_tokens():
    logits = torch.zeros(1, VOCAB)  # flat: without the cut every token is equally likely
    logits[0, [5, 17, 40]] = torch.tensor([0.3, 0.2, 0.1])
    (row,) = draw(logits, [SamplingParams(temperature=1.0, top_k=3)], [0], steps=200)
    assert set(row) == {5, 17, 40}


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().unsqueeze(0)
    (row,) = draw(logits, [SamplingParams(temperature=1.0, top_p=0.75)], [0], steps=300)
    assert set(row) == {0, 1}
    (row,) = draw(logits, [SamplingParams(temperature=1.0, top_p=0.85)], [0], steps=300)
    assert set(row) == {0, 1, 2}


def test_same_seed_reproduces_the_samples_and_other_seeds_differ():
    logits = random_logits(1, seed=3) / 4  # soft: many tokens are plausible
    params = [SamplingParams(temperature=1.0)]
    first = draw(logits, params, [1234], steps=30)
    assert draw(logits, params, [1234], steps=30) == first
    others = [draw(logits, params, [seed], steps=30) for seed in (1, 2, 3)]
    assert all(other != first for other in others)


def test_unseeded_generators_differ():
    logits = random_logits(1, seed=4) / 4
    params = [SamplingParams(temperature=1.0)]
    assert draw(logits, params, [None], steps=30) != draw(logits, params, [None], steps=30)


def test_greedy_rows_stay_greedy_while_other_rows_sample():
    logits = random_logits(1, seed=5).repeat(3, 1) / 4  # the same soft distribution on every row
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.0), SamplingParams(temperature=0)]
    greedy_row, sampled_row, other_greedy_row = draw(logits, params, [7, 8, 9], steps=50)
    best = int(logits[0].argmax())
    assert set(greedy_row) == {best}
    assert set(other_greedy_row) == {best}
    assert len(set(sampled_row)) > 5, "the sampling row next to greedy rows still samples"


def test_each_row_samples_as_if_it_were_alone():
    logits = random_logits(4, seed=6) / 3
    params = [
        SamplingParams(temperature=0.7, seed=11),
        SamplingParams(temperature=1.3, top_k=5, seed=12),
        SamplingParams(temperature=0),
        SamplingParams(temperature=1.0, top_p=0.5, seed=13),
    ]
    seeds = [p.seed for p in params]
    together = draw(logits, params, seeds, steps=40)
    for i, p in enumerate(params):
        (alone,) = draw(logits[i : i + 1], [p], [seeds[i]], steps=40)
        assert together[i] == alone, f"row {i} was changed by its neighbours' settings"
    top5 = set(logits[1].topk(5).indices.tolist())
    assert set(together[1]) <= top5, "row 1's top_k applies to row 1"
    assert len(set(together[0])) > 5, "row 1's top_k does not cut row 0"


def test_low_temperature_concentrates_on_the_argmax():
    logits = random_logits(1, seed=7)
    (cold,) = draw(logits, [SamplingParams(temperature=0.01)], [0], steps=100)
    (hot,) = draw(logits, [SamplingParams(temperature=5.0)], [0], steps=100)
    best = int(logits.argmax())
    assert cold.count(best) == 100
    assert hot.count(best) < 50
