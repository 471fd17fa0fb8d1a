"""Merge-and-export: an adapter merged into its base model as one ordinary model directory (full weights),
optionally saved 8-bit or 4-bit with bitsandbytes.

    from training.merge import export_merged
    export_merged("/data/adapters/km/v2", base="/models/base", out="/exports/km-v2", quantize="4bit")

    python -m training.merge ADAPTER_DIR --base BASE --out DIR [--quantize none|8bit|4bit]

The result loads with plain `AutoModelForCausalLM.from_pretrained(out)` (a reward model's with
`AutoModelForSequenceClassification`; a quantized one needs bitsandbytes installed where it is loaded). It is
written to a hidden sibling of `out` and renamed into place, so `out` is never half-written. A full or freeze
result is already whole weights: it is re-saved (and quantized if asked). Quantized saving was checked on CPU
with transformers 5.24 and bitsandbytes 0.50.2: both 8-bit and 4-bit (NF4) save and load again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.result import ADAPTER_CONFIG, METADATA_FILE

QUANTIZE = ("none", "8bit", "4bit")
EXPORT_FILE = "tunehub_export.json"


class ExportError(ValueError):
    """An export that cannot run; the message says what to change."""


def export_merged(adapter: str | Path, *, base: str | None, out: str | Path, quantize: str = "none") -> Path:
    """Merge `adapter` (a PEFT adapter directory, or a full model tunehub trained) into `base` and save the
    result to `out` (which must not exist yet); returns `out`. Raises `ExportError` with the reason."""
    adapter, out = Path(adapter), Path(out).expanduser().resolve()
    if quantize not in QUANTIZE:
        raise ExportError(f"quantize {quantize!r} is not one of {', '.join(QUANTIZE)}")
    if not adapter.is_dir():
        raise ExportError(f"adapter directory {str(adapter)!r} does not exist")
    peft_adapter = (adapter / ADAPTER_CONFIG).is_file()
    if peft_adapter and not base:
        raise ExportError(f"{str(adapter)!r} is an adapter: give the base model it was trained on")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"output {str(out)!r} already exists: choose another directory or remove it")
    if quantize != "none":
        _check_bitsandbytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, merged_dir = out.parent / f".{out.name}.export", out.parent / f".{out.name}.merged"
    for leftover in (tmp, merged_dir):
        shutil.rmtree(leftover, ignore_errors=True)
    task = _task(adapter)
    try:
        model = _merged_model(adapter, base, task) if peft_adapter else _load(adapter, task)
        if quantize == "none":
            model.save_pretrained(str(tmp))
        else:
            # bitsandbytes quantizes while loading: save the merged weights, then load them quantized
            model.save_pretrained(str(merged_dir))
            del model
            _load(merged_dir, task, quantize=quantize).save_pretrained(str(tmp))
        _tokenizer(adapter, base).save_pretrained(str(tmp))
        metadata = {
            "adapter": str(adapter),
            "base": base if peft_adapter else None,
            "merged": peft_adapter,
            "quantize": quantize,
            "task": task,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / EXPORT_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above): os.replace cannot replace a directory
        os.replace(tmp, out)
    finally:
        for leftover in (tmp, merged_dir):
            shutil.rmtree(leftover, ignore_errors=True)
    return out


def load_merged(adapter: str | Path, base: str | None):
    """``(model, tokenizer, task)``: ``adapter`` merged into ``base`` (or, for a full model tunehub trained,
    the model itself), in memory. Raises `ExportError` with the reason. The GGUF export starts from this."""
    adapter = Path(adapter)
    if not adapter.is_dir():
        raise ExportError(f"adapter directory {str(adapter)!r} does not exist")
    peft_adapter = (adapter / ADAPTER_CONFIG).is_file()
    if peft_adapter and not base:
        raise ExportError(f"{str(adapter)!r} is an adapter: give the base model it was trained on")
    task = _task(adapter)
    model = _merged_model(adapter, base, task) if peft_adapter else _load(adapter, task)
    return model, _tokenizer(adapter, base), task


def _task(adapter: Path) -> str:
    try:
        return json.loads((adapter / METADATA_FILE).read_text()).get("task") or "causal_lm"
    except (OSError, json.JSONDecodeError):
        return "causal_lm"


def _auto_class(task: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if task == "seq_cls" else AutoModelForCausalLM


def _load(path: Path | str, task: str, quantize: str = "none"):
    kwargs: dict[str, Any] = {"dtype": "auto"}
    if quantize != "none":
        import torch
        from transformers import BitsAndBytesConfig

        if quantize == "8bit":
            config = BitsAndBytesConfig(load_in_8bit=True)
        else:
            compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
            config = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute
            )
        kwargs.update(quantization_config=config, device_map={"": 0} if torch.cuda.is_available() else "cpu")
    if task == "seq_cls":
        kwargs["num_labels"] = 1
    return _auto_class(task).from_pretrained(str(path), **kwargs)


def _merged_model(adapter: Path, base: str, task: str):
    from peft import PeftModel

    model = _load(base, task)
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter))
    except (ValueError, KeyError, RuntimeError) as e:
        raise ExportError(f"adapter {str(adapter)!r} does not fit base {base!r}: {e}") from None
    return peft_model.merge_and_unload()


def _tokenizer(adapter: Path, base: str | None):
    from transformers import AutoTokenizer

    has_own = (adapter / "tokenizer_config.json").is_file()
    return AutoTokenizer.from_pretrained(str(adapter) if has_own or not base else base)


def _check_bitsandbytes() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise ExportError(
            f"quantized export needs bitsandbytes ({e}): `pip install bitsandbytes`, or export with quantize none"
        ) from None


def run_export_cli(
    export: Callable[..., Path],
    description: str,
    *,
    out_help: str,
    quantize: tuple[str, ...],
    quantize_help: str,
    argv: list[str] | None,
) -> int:
    """`python -m training.merge` and `python -m training.gguf_export`: ADAPTER [--base] --out [--quantize]
    (the first of `quantize` by default); prints what `export` wrote, or the `ExportError` in one line (exit 2)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("adapter", help="the adapter directory (or a full model tunehub trained)")
    parser.add_argument("--base", help="the base model the adapter was trained on")
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--quantize", default=quantize[0], choices=quantize, help=quantize_help)
    args = parser.parse_args(argv)
    try:
        print(export(args.adapter, base=args.base, out=args.out, quantize=args.quantize))
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_export_cli(
        export_merged,
        "Merge an adapter into its base and save full weights.",
        out_help="a new directory for the merged model",
        quantize=QUANTIZE,
        quantize_help="save 8-bit or 4-bit weights",
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
