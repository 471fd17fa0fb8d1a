"""A transformers tokenizer written as GGUF tokenizer metadata, the way llama.cpp's convert_hf_to_gguf writes
a byte-level BPE vocabulary: ``tokenizer.ggml.model = "gpt2"``, the pre-tokenizer's name, every token with its
type (normal, control, user-defined, unused padding), the merges, the special token ids and the chat template (less transformers' training-only {% generation %} markers).

    write_tokenizer(writer, tokenizer, vocab_size=config.vocab_size)

Only byte-level BPE vocabularies (GPT-2 style: the demo model, SmolLM2, Qwen2, Llama 3) are written; a
sentencepiece or WordPiece one raises `TokenizerNotSupported` naming what it is. The pre-tokenizer is named
from what the tokenizer.json says, among the splits both llama.cpp and transformers' GGUF loader know the same
way; another split would tokenize differently once loaded, so it is refused too.
"""

from __future__ import annotations

import json
import re
from typing import Any

# transformers' {% generation %} ... {% endgeneration %} (assistant-token masks for training) is no Jinja that
# llama.cpp or Ollama know; without it the template renders the same text
GENERATION_MARKERS = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")

# transformers' qwen2 split (models/qwen2/tokenization_qwen2.py) and llama.cpp's llama-bpe (Llama 3) split
QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLITS = {QWEN2_SPLIT: "qwen2", LLAMA3_SPLIT: "llama-bpe"}

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # gguf.TokenType


class TokenizerNotSupported(ValueError):
    """A tokenizer this export cannot write faithfully; the message names what it is."""


def pre_tokenizer_name(spec: dict[str, Any]) -> str:
    """llama.cpp's name (``tokenizer.ggml.pre``) for the pre-tokenizer of a tokenizer.json ``spec``.

    - ByteLevel with its GPT-2 regex: "gpt-2".
    - Digits (one by one) then ByteLevel with its regex: "starcoder" (the demo model's; SmolLM's too): llama.cpp
      splits digits first, then the GPT-2 regex. transformers' loader keeps the plain GPT-2 split for it, which
      cuts the same tokens, since no merge of such a vocabulary joins a digit to anything.
    - A Split with Qwen2's or Llama 3's regex, then ByteLevel without regex: "qwen2" or "llama-bpe".
    """
    steps = spec.get("pretokenizers") if spec.get("type") == "Sequence" else [spec]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if (
        kinds == ["Digits", "ByteLevel"]
        and steps[0].get("individual_digits")
        and steps[1].get("use_regex", True)
    ):
        return "starcoder"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        if pattern in SPLITS:
            return SPLITS[pattern]
    raise TokenizerNotSupported(
        f"its pre-tokenizer ({' + '.join(str(k) for k in kinds)}) is not one GGUF readers split the same way "
        "(supported: GPT-2 byte-level, digits + byte-level, the Qwen2 and Llama 3 splits)"
    )


def write_tokenizer(writer, tokenizer, *, vocab_size: int, config=None) -> dict[str, Any]:
    """Add ``tokenizer`` (a transformers fast tokenizer) to the GGUF ``writer``, padded to ``vocab_size`` tokens
    (the model's embedding rows); ``config`` supplies special token ids the tokenizer does not name. Returns
    what was written about it: the pre-tokenizer's name and the special tokens."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = "sentencepiece BPE" if model.get("byte_fallback") else (model.get("type") or "unknown")
        raise TokenizerNotSupported(
            f"its tokenizer is {kind}, and only byte-level BPE (GPT-2 style) vocabularies are exported"
        )
    pre = pre_tokenizer_name(spec.get("pre_tokenizer") or {})

    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["id"]: t for t in spec.get("added_tokens") or []}
    for token_id, token in added.items():
        vocab.setdefault(token["content"], token_id)
    by_id = {token_id: text for text, token_id in vocab.items()}
    size = max(vocab_size, max(by_id) + 1)
    tokens, types = [], []
    for token_id in range(size):
        if token_id not in by_id:
            tokens.append(f"[PAD{token_id}]")  # embedding rows no token uses, as llama.cpp names them
            types.append(UNUSED)
        elif token_id in added:
            tokens.append(by_id[token_id])
            types.append(CONTROL if added[token_id].get("special") else USER_DEFINED)
        else:
            tokens.append(by_id[token_id])
            types.append(NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(model.get("merges") or []))

    special: dict[str, int] = {}
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is None and config is not None:
            token_id = getattr(config, f"{kind}_token_id", None)
        if isinstance(token_id, list):  # a config may list several end tokens: the first is the main one
            token_id = token_id[0] if token_id else None
        if isinstance(token_id, int) and 0 <= token_id < size:
            special[kind] = token_id
            getattr(writer, f"add_{kind}_token_id")(token_id)
    # chat prompts carry their own markers: a BOS added to every text would change what the model saw
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    writer.add_add_eos_token(False)
    template = GENERATION_MARKERS.sub("", tokenizer.chat_template or "")
    if template:
        writer.add_chat_template(template)
    return {"pre": pre, "special": {kind: tokens[i] for kind, i in special.items()}, "tokens": len(tokens)}


def _merges(merges: list) -> list[str]:
    """tokenizer.json merges (pairs, or "a b" strings in older files) as GGUF's "a b" strings."""
    if merges and isinstance(merges[0], list):
        # a space inside a part is moved up by 256 (to U+0120), as llama.cpp's SpecialVocab writes it
        return [" ".join(part.replace(" ", chr(ord(" ") + 256)) for part in pair) for pair in merges]
    return list(merges)
