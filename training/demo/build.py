"""Build, cache and score the demo model: corpus -> tokenizer -> pre-training -> a Hugging Face model directory.

The build is offline and deterministic: the same `seed` and `steps` on the same machine give the same
weights. The full recipe takes about a minute on two CPU cores; a small `steps` gives a quick, weaker model
for tests. `ensure_demo_model` caches the result under `data_dir/models/demo-<DEMO_MODEL_VERSION>`.

    python -m training.demo.build --out /tmp/demo            # full recipe, then held-out accuracy
    python -m training.demo.build --out /tmp/demo --steps 150
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from training.demo.corpus import FAMILIES, checkable_prompts, conversations, is_correct

# Bump when anything below, the corpus, the facts or the tokenizer changes: it names the cached model.
DEMO_MODEL_VERSION = "1"

# The recipe, tuned on 2 CPU cores to build in about a minute (see the module docstring of pretrain.py).
STEPS = 600
BATCH_SIZE = 16
SEQ_LEN = 256
LR = 4e-3
# Each step reads BATCH_SIZE * SEQ_LEN tokens; a conversation renders to ~43 tokens. The corpus is sized
# for about one pass, so a quick build (small `steps`) also generates and tokenises less.
TOKENS_PER_CONVERSATION = 40
MIN_CONVERSATIONS = 2_000
TOKENIZER_CONVERSATIONS = 10_000  # a BPE of 1024 symbols has seen everything it needs by then

METADATA_FILE = "tunehub_demo.json"


def build_demo_model(
    out_dir: Path,
    *,
    steps: int | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Build the demo model into `out_dir` (a standard Hugging Face model directory) and return its path.

    `steps=None` runs the full recipe. The model is written to a temporary sibling directory and renamed
    into place, so a half-built model never appears at `out_dir`; an earlier demo model there is replaced.
    `progress(done, total)` is called after every training step.
    """
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    from training.demo.pretrain import encode_conversations, llama_config, pack, pretrain
    from training.demo.tokenizer import train_tokenizer

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / METADATA_FILE).exists():
        raise FileExistsError(
            f"{out_dir} exists and is not a demo model directory; choose an empty or new directory for --out"
        )
    steps = STEPS if steps is None else steps
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    started = time.perf_counter()

    # 1. Corpus and tokenizer.
    n_conversations = max(
        MIN_CONVERSATIONS, math.ceil(steps * BATCH_SIZE * SEQ_LEN / TOKENS_PER_CONVERSATION)
    )
    corpus = conversations(n_conversations, seed=seed)
    tokenizer = train_tokenizer(corpus[:TOKENIZER_CONVERSATIONS])

    # 2. Tokenise the conversations as the chat template renders them (the one prompt path) and pack them.
    rows = pack(encode_conversations(tokenizer, corpus), SEQ_LEN)

    # 3. Model and training. The seed fixes both the initial weights and the batch order.
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(tokenizer))
    train_started = time.perf_counter()
    losses = pretrain(model, rows, steps=steps, batch_size=BATCH_SIZE, lr=LR, seed=seed, progress=progress)
    train_seconds = time.perf_counter() - train_started

    # 4. Write to a temporary sibling, then rename into place.
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A unique hidden sibling (same filesystem, so the rename is atomic); mkdir applies the usual umask.
    tmp_dir = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_dir.mkdir()
    try:
        model.save_pretrained(tmp_dir)
        # The chat template goes into tokenizer_config.json too, where tools older than transformers 5 look.
        tokenizer.save_pretrained(tmp_dir, save_jinja_files=False)
        metadata = {
            "version": DEMO_MODEL_VERSION,
            "steps": steps,
            "seed": seed,
            "parameters": sum(p.numel() for p in model.parameters()),
            "conversations": n_conversations,
            "tokens_trained": steps * BATCH_SIZE * SEQ_LEN,
            "train_seconds": round(train_seconds, 2),
            "build_seconds": round(time.perf_counter() - started, 2),
            "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),  # mean of the last 10 steps
            "torch_threads": torch.get_num_threads(),
        }
        (tmp_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        _move_into_place(tmp_dir, out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


def _move_into_place(tmp_dir: Path, out_dir: Path) -> None:
    # os.replace cannot overwrite a non-empty directory: move the old one aside first, then drop it.
    old_dir = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if out_dir.exists():
        os.replace(out_dir, old_dir)
    os.replace(tmp_dir, out_dir)
    shutil.rmtree(old_dir, ignore_errors=True)


def ensure_demo_model(data_dir: Path, *, progress: Callable[[int, int], None] | None = None) -> Path:
    """Return `data_dir/models/demo-<DEMO_MODEL_VERSION>`, building the full demo model there if missing."""
    model_dir = Path(data_dir) / "models" / f"demo-{DEMO_MODEL_VERSION}"
    # Directories only appear complete (built aside, then renamed), so the metadata file marks a finished build.
    if (model_dir / METADATA_FILE).exists():
        return model_dir
    return build_demo_model(model_dir, progress=progress)


def evaluate_checkable(model_dir: Path, n_per_family: int = 200, seed: int = 1234) -> dict[str, float]:
    """Greedy accuracy on held-out checkable prompts, per family and their mean ("macro")."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"  # generation continues each row from its last real token
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompts = checkable_prompts(n_per_family * len(FAMILIES), seed=seed)
    correct = dict.fromkeys(FAMILIES, 0)
    batch_size = 64
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        texts = tokenizer.apply_chat_template(
            [p.messages for p in batch], add_generation_prompt=True, tokenize=False
        )
        inputs = tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
        replies = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for prompt, reply in zip(batch, replies):
            correct[prompt.family] += is_correct(prompt, reply)
    scores = {family: correct[family] / n_per_family for family in FAMILIES}
    scores["macro"] = sum(scores.values()) / len(FAMILIES)
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Build the tunehub demo model and print its held-out accuracy."
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to write the model to")
    parser.add_argument(
        "--steps", type=int, default=None, help=f"training steps (default: the recipe's {STEPS})"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus, the weights and the batches")
    args = parser.parse_args(argv)

    out_dir = build_demo_model(args.out, steps=args.steps, seed=args.seed)
    metadata = json.loads((out_dir / METADATA_FILE).read_text())
    print(json.dumps(metadata, indent=2))
    scores = evaluate_checkable(out_dir)
    print(" ".join(f"{name}={value:.3f}" for name, value in scores.items()))


if __name__ == "__main__":
    main()
