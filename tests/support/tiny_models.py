"""Tiny random causal LMs of the common architectures, built from configs (no download), for engine tests.

Each has 2 layers and a hidden size of 64, the demo model's tokenizer and chat template (so vocab, special
tokens and prompts are the demo model's), and weights drawn wider than the architecture's default so that
greedy decoding wanders over the vocabulary instead of repeating one token. Sliding-window architectures get
a window of a few tokens, shorter than the prompts, so the window is exercised.

    python -m tests.support.tiny_models OUT_DIR DEMO_MODEL_DIR      # build all of them into OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

SLIDING_WINDOW = 8  # tokens; the chat-templated test prompts are longer
HIDDEN = 64
LAYERS = 2
HEADS = 4
INIT_RANGE = 0.25  # the defaults (0.02) give near-uniform logits and one repeated greedy token

# The decoder-only architectures the engine batches and adapts; each value is its config's size fields.
ARCHITECTURES: dict[str, dict] = {
    "llama": {"num_key_value_heads": 2},
    "qwen2": {"num_key_value_heads": 2},
    "qwen3": {"num_key_value_heads": 2, "head_dim": 16},
    "mistral": {"num_key_value_heads": 2, "sliding_window": SLIDING_WINDOW},
    # alternating sliding and global attention layers (a hybrid cache), logit soft-capping
    "gemma2": {
        "num_key_value_heads": 2,
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "sliding_window": SLIDING_WINDOW,
        "layer_types": ["sliding_attention", "full_attention"],
    },
    "phi3": {"num_key_value_heads": 2, "sliding_window": SLIDING_WINDOW},  # fused qkv_proj, gate_up_proj
    "gpt_neox": {},  # fused query_key_value, partial rotary
    "gpt2": {},  # Conv1D layers (weights stored [in, out]), learned positions
    # fc1/fc2 see every position flattened into one dimension; its config names the init range init_std
    "opt": {"ffn_dim": 2 * HIDDEN, "word_embed_proj_dim": HIDDEN, "init_std": INIT_RANGE},
}


def tiny_config(model_type: str, tokenizer):
    from transformers import AutoConfig

    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "initializer_range": INIT_RANGE,
        "tie_word_embeddings": False,
    }
    if model_type == "gpt2":
        sizes = {
            "n_embd": HIDDEN,
            "n_layer": LAYERS,
            "n_head": HEADS,
            "n_inner": 2 * HIDDEN,
            "n_positions": 512,
        }
    else:
        sizes = {
            "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "max_position_embeddings": 512,
            **ARCHITECTURES[model_type],
        }
    return AutoConfig.for_model(model_type, **ids, **sizes)


def build_tiny_model(model_type: str, out: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Save a tiny random `model_type` causal LM with the tokenizer at `tokenizer_dir` into `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, tokenizer), dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out = Path(out)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


if __name__ == "__main__":
    root, demo = Path(sys.argv[1]), Path(sys.argv[2])
    for name in ARCHITECTURES:
        print(build_tiny_model(name, root / name, demo))
