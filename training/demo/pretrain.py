"""Pre-training of the demo model: a 0.6M-parameter Llama trained from scratch on the packed chat corpus.

A plain PyTorch loop (AdamW, linear warmup then cosine decay, fp32) over a fixed number of steps, so the
same seed gives the same weights on the same machine. The loss covers every token of each conversation as
the chat template renders it, the newline after `<|im_end|>` included: that newline is part of what TRL
trains on later, and an untrained one turns SFT/DPO on this model into byte garbage (DESIGN.md).

    from training.demo.pretrain import encode_conversations, llama_config, pack, pretrain
    rows = pack(encode_conversations(tokenizer, corpus), seq_len=128)
    model = LlamaForCausalLM(llama_config(tokenizer))
    losses = pretrain(model, rows, steps=800, batch_size=8, lr=3e-3)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import LlamaConfig, PreTrainedModel, PreTrainedTokenizerFast


def llama_config(tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """The demo architecture: 0.62M parameters, a fifth of them the (tied) embeddings.

    Smaller than the 1M first planned: on 2 CPU cores the smaller model learns more in the time budget
    (see the recipe in build.py). Three layers leave room for the two-step circuits that copy from the
    question (a head that looks at the previous token, then one that matches it).
    """
    from transformers import LlamaConfig

    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        tie_word_embeddings=True,
        # Every conversation starts with <|im_start|>, so it plays the part of BOS; the tokenizer adds none.
        bos_token_id=im_start,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def encode_conversations(
    tokenizer: PreTrainedTokenizerFast, conversations: list[list[dict]]
) -> list[list[int]]:
    """Token ids of each conversation as the chat template renders it (no generation prompt).

    Shortcut, for speed: ChatML renders a conversation as its messages one after another, each opening
    with <|im_start|> and closing with "<|im_end|>\n", and the tokenizer splits text at special tokens
    before anything else. So a conversation's ids are its messages' ids joined, and each distinct message
    (the corpus repeats them a lot) is rendered and encoded once. A test checks this against the plain path.
    """
    distinct = list({(m["role"], m["content"]): m for c in conversations for m in c}.values())
    texts = [tokenizer.apply_chat_template([m], tokenize=False) for m in distinct]
    ids = {
        (m["role"], m["content"]): encoding.ids
        for m, encoding in zip(distinct, tokenizer.backend_tokenizer.encode_batch(texts))
    }
    return [[t for m in c for t in ids[(m["role"], m["content"])]] for c in conversations]


def pack(token_ids: list[list[int]], seq_len: int) -> torch.Tensor:
    """Concatenate tokenised conversations and cut them into rows of `seq_len` (the ragged tail is dropped).

    Rows cross conversation boundaries and attention is not reset there: each conversation opens with
    <|im_start|>, which is enough for a model this small, and it keeps every token useful.
    """
    import torch

    stream = torch.tensor([t for ids in token_ids for t in ids], dtype=torch.long)
    n_rows = len(stream) // seq_len
    return stream[: n_rows * seq_len].view(n_rows, seq_len)


def lr_at(step: int, steps: int, lr: float, warmup: int, min_ratio: float = 0.1) -> float:
    """Linear warmup to `lr` over `warmup` steps, then cosine decay to `min_ratio * lr` at `steps`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(
    model: PreTrainedModel,
    rows: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    warmup_fraction: float = 0.05,
    weight_decay: float = 0.01,
    progress: Callable[[int, int], None] | None = None,
) -> list[float]:
    """Train `model` in place on random batches of `rows` for exactly `steps` steps; returns the loss per step."""
    import torch

    generator = torch.Generator().manual_seed(seed)  # batch order; independent of the global RNG
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    warmup = max(1, int(steps * warmup_fraction))
    order, cursor = torch.randperm(len(rows), generator=generator), 0
    losses = []
    model.train()
    for step in range(steps):
        # Walk a shuffled permutation of the rows, reshuffling at each epoch boundary.
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(rows), generator=generator), 0
        batch = rows[order[cursor : cursor + batch_size]]
        cursor += batch_size
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        loss = model(input_ids=batch, labels=batch).loss  # the model shifts labels itself
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step + 1, steps)
    model.eval()
    return losses
