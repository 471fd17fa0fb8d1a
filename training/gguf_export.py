"""GGUF export: an adapter merged into its base model and written as one GGUF file (llama.cpp, Ollama, LM Studio)
with the `gguf` package's writer and tensor-name maps, no llama.cpp binary. Tokenizer and chat template go
into the file; an Ollama Modelfile goes beside it.

    from training.gguf_export import export_gguf
    export_gguf("/data/adapters/km/v2", base="/models/base", out="/exports/km-v2-gguf-f16", quantize="q8_0")

    python -m training.gguf_export ADAPTER_DIR --base BASE --out DIR [--quantize f16|q8_0]

``out`` is a new directory holding ``NAME-QUANTIZE.gguf``, ``Modelfile`` and ``tunehub_export.json``; it is
written to a hidden sibling and renamed into place, so it is never half-written. It loads back with
``AutoModelForCausalLM.from_pretrained(out, gguf_file="NAME-f16.gguf")``.

Architectures: llama (the demo model, SmolLM2), mistral (written as llama, as llama.cpp does) and qwen2. As in
llama.cpp's convert_hf_to_gguf, llama's q and k projections are permuted to the interleaved rotary layout
llama.cpp computes with (transformers' GGUF loader permutes them back). 1-D tensors (norms, biases) stay
float32; q8_0 quantizes every matrix whose rows split into 32-value blocks (gguf.quants), the rest is f16.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .merge import EXPORT_FILE, ExportError, load_merged, run_export_cli

GGUF_QUANTIZE = ("f16", "q8_0")
# transformers model_type -> the GGUF architecture it is written as
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
PERMUTED_QK = {"llama"}  # GGUF architectures whose q/k rows llama.cpp interleaves
Q8_BLOCK = 32


def export_gguf(
    adapter: str | Path,
    *,
    base: str | None,
    out: str | Path,
    quantize: str = "f16",
    name: str | None = None,
) -> Path:
    """Merge ``adapter`` into ``base`` and write ``out/NAME-QUANTIZE.gguf`` with a Modelfile beside it (``out``
    must not exist yet, or be empty); returns the GGUF file's path. ``name`` defaults to the adapter
    directory's. Raises `ExportError` with the reason."""
    out = Path(out).expanduser().resolve()
    if quantize not in GGUF_QUANTIZE:
        raise ExportError(f"quantize {quantize!r} is not one of {', '.join(GGUF_QUANTIZE)} for gguf")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"output {str(out)!r} already exists: choose another directory or remove it")
    model, tokenizer, task = load_merged(adapter, base)
    if task != "causal_lm":
        raise ExportError(
            f"{str(adapter)!r} is a {task} model (a reward model scores): only chat models go to GGUF"
        )
    model_type = model.config.model_type
    if model_type not in ARCHITECTURES:
        raise ExportError(
            f"architecture {model_type!r} is not exported to GGUF: supported are {', '.join(sorted(ARCHITECTURES))}"
        )
    name = name or Path(adapter).name
    file_name = f"{name}-{quantize}.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        written = write_gguf(model, tokenizer, tmp / file_name, quantize=quantize, name=name)
        from .ollama import modelfile

        stops = [tokenizer.eos_token] if tokenizer.eos_token else []
        (tmp / "Modelfile").write_text(modelfile(file_name, tokenizer.chat_template, stops))
        metadata = {
            "adapter": str(adapter),
            "base": base if (Path(adapter) / "adapter_config.json").is_file() else None,
            "format": "gguf",
            "file": file_name,
            "quantize": quantize,
            **written,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / EXPORT_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above): os.replace cannot replace a directory
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / file_name


def write_gguf(model, tokenizer, path: Path, *, quantize: str, name: str) -> dict[str, Any]:
    """Write ``model`` (a transformers causal LM of a supported architecture) and ``tokenizer`` to ``path``;
    returns what was written (architecture, tensor count, tokenizer facts)."""
    import gguf

    from .gguf_tokenizer import TokenizerNotSupported, write_tokenizer

    config = model.config
    arch = ARCHITECTURES[config.model_type]
    writer = gguf.GGUFWriter(str(path), arch)
    # "tunehub ..." and never a bare "mistral": transformers' loader reads that name as its own architecture
    writer.add_name(f"tunehub {name}")
    writer.add_type("model")
    _write_hparams(writer, config, arch)
    file_type = gguf.LlamaFileType.MOSTLY_F16 if quantize == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    try:
        tokenizer_facts = write_tokenizer(writer, tokenizer, vocab_size=config.vocab_size, config=config)
    except TokenizerNotSupported as e:
        raise ExportError(f"the tokenizer cannot be written to GGUF: {e}") from None
    tensors = _write_tensors(writer, model, arch, quantize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {
        "architecture": arch,
        "model_type": config.model_type,
        "tensors": tensors,
        "tokenizer": tokenizer_facts,
    }


def _rope_theta(config) -> float:
    parameters = getattr(config, "rope_parameters", None) or {}
    rope_type = parameters.get("rope_type", "default")
    if rope_type != "default":
        raise ExportError(
            f"rope scaling {rope_type!r} is not exported to GGUF (only the default rotary embedding)"
        )
    theta = parameters.get("rope_theta", getattr(config, "rope_theta", None))
    return float(theta if theta is not None else 10000.0)


def _write_hparams(writer, config, arch: str) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)


def permute_qk(weights, n_head: int, n_head_kv: int | None = None):
    """llama.cpp's permutation of a q or k projection (convert_hf_to_gguf.LlamaModel.permute): each head's
    rotary halves interleaved. transformers' loader (LlamaTensorProcessor) undoes exactly this."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    shape = weights.shape
    return weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _write_tensors(writer, model, arch: str, quantize: str) -> int:
    import gguf

    config = model.config
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    count = 0
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # the embedding matrix serves as the output layer (no output.weight: readers tie it)
        stem, _, suffix = hf_name.rpartition(".")
        gguf_name = name_map.get_name(stem)
        if gguf_name is None:
            raise ExportError(f"tensor {hf_name!r} has no GGUF name for architecture {arch!r}")
        data = tensor.detach().float().cpu().numpy()
        if arch in PERMUTED_QK and hf_name.endswith("self_attn.q_proj.weight"):
            data = permute_qk(data, n_head, n_head)
        elif arch in PERMUTED_QK and hf_name.endswith("self_attn.k_proj.weight"):
            data = permute_qk(data, n_head, n_kv)
        full_name = f"{gguf_name}.{suffix}"
        if data.ndim < 2:
            writer.add_tensor(full_name, data.astype("float32"))
        elif quantize == "q8_0" and data.shape[-1] % Q8_BLOCK == 0:
            qtype = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(full_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(full_name, data.astype("float16"))
        count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    return run_export_cli(
        export_gguf,
        "Merge an adapter into its base and write one GGUF file.",
        out_help="a new directory for the GGUF file and its Modelfile",
        quantize=GGUF_QUANTIZE,
        quantize_help="tensor type of the matrices",
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
