"""Opening models beside the served base (serving/model_set.py): the further base models of `tunehub serve
--model A --model B` at start, and a full or freeze fine-tune as a model of its own while the hub runs.

The local engine opens it the way the base was opened (device, compute dtype, quantization, chat template,
limits), after checking that it fits: its parameters (training/estimate.py's count from its config, or its
weight files' size) at the compute dtype, against the memory free now. One that does not fit is refused
before anything is loaded, naming both figures. A vLLM hub cannot open one yet: it needs a vLLM server of
its own, and the refusal says how to serve it instead.

    open_model = local_model_opener(settings)     # ModelSet(engine, open_model=open_model)
    engine = open_model("full-sft", Path("adapters/full-sft/job_1"))     # a LocalEngine, not yet started
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from serving.engine import Engine
from serving.errors import EngineError, InvalidAdapter

from .settings import Settings

OVERHEAD = 1.2  # activations, the KV cache of a batch, allocator slack: on top of the weights
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "8bit": 1, "4bit": 0.5}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


class ModelDoesNotFit(EngineError):
    """A whole model needs more memory than is free; nothing was loaded."""

    status = 507
    code = "insufficient_memory"
    error_type = "server_error"


def parameter_count(path: str | Path) -> int:
    """The model's parameters: from its config (Llama-like decoders), else from its weight files' size at
    the dtype its config names. `path` is a model directory or a hub id (its config read through
    transformers)."""
    from training.estimate import ModelShape

    local = Path(path)
    if (local / "config.json").is_file():
        config = json.loads((local / "config.json").read_text())
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(path)).to_dict()
    try:
        return ModelShape.from_config(config).parameters
    except ValueError:
        pass
    stored = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    files = local.iterdir() if local.is_dir() else ()
    size = sum(f.stat().st_size for f in files if f.suffix in _WEIGHT_SUFFIXES)
    return int(size / _DTYPE_BYTES.get(stored, 4))


def free_memory(device: str) -> int:
    """Bytes free now on `device`: the GPU's free memory, or the machine's available memory."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[0]
    import psutil

    return psutil.virtual_memory().available


def check_fits(name: str, path: Path, dtype_name: str, free: int) -> int:
    """The bytes `path` needs at `dtype_name`; raises ModelDoesNotFit when more than `free`."""
    parameters = parameter_count(path)
    needed = int(parameters * _DTYPE_BYTES.get(dtype_name, 4) * OVERHEAD)
    if needed > free:
        raise ModelDoesNotFit(
            f"model {name!r} ({path}) needs about {needed / 1e9:.2f} GB ({parameters / 1e6:.1f}M parameters "
            f"in {dtype_name}) and {free / 1e9:.2f} GB is free: unload a model first, or serve it on its own "
            f"with `tunehub serve --model {path}`",
            param="adapter",
        )
    return needed


def local_model_opener(
    settings: Settings, *, free: Callable[[str], int] = free_memory
) -> Callable[[str, Path], Engine]:
    """Open a whole model as a LocalEngine the way `settings` opened the base, once it is known to fit."""

    def open_model(name: str, path: str | Path) -> Engine:
        from serving.loader import pick_device, pick_dtype

        device = pick_device("auto")
        dtype, _ = pick_dtype(settings.dtype, device)
        dtype_name = settings.quantize if settings.quantize != "none" else str(dtype).removeprefix("torch.")
        check_fits(name, path, dtype_name, free(device))
        return open_local_engine(settings, path, name)

    return open_model


def open_more_bases(
    settings: Settings, *, taken: set[str], free: Callable[[str], int] = free_memory
) -> list[Engine]:
    """An engine for each further `--model` (a hub id, directory or GGUF file, resolved as the first is),
    in order, each after checking that it fits beside those already loaded; raises ModelDoesNotFit naming
    the model and both figures, or ValueError for a bad source or a name served twice."""
    from serving.model_source import resolve_model_source

    open_model = local_model_opener(settings, free=free)
    engines: list[Engine] = []
    for given in settings.more_models:
        source = resolve_model_source(given, settings.models_dir)
        if source.name in taken:
            raise ValueError(
                f"--model {given!r} would be served as {source.name!r}, a name already served: "
                "give each base model once"
            )
        engines.append(open_model(source.name, source.path))
        taken.add(source.name)
    return engines


def open_local_engine(settings: Settings, path: str | Path, name: str) -> Engine:
    """A LocalEngine on `path` served as `name`, with the settings' dtype, quantization, chat template and
    limits: how `tunehub serve` opens its base, and whole models beside it. Not yet started."""
    from serving.loader import load_local_engine

    return load_local_engine(
        path,
        model_name=name,
        quantize=settings.quantize,
        dtype=settings.dtype,
        chat_template=settings.chat_template,
        threads=settings.threads,
        max_lora_rank=settings.max_lora_rank,
        max_batch_size=settings.max_batch_size,
    )


def refusing(why: str) -> Callable[[str, Path], Engine]:
    """An opener that opens nothing: loading a whole model is refused, saying `why` and how to serve it."""

    def refuse(name: str, path: Path) -> Engine:
        raise InvalidAdapter(
            f"{name!r} is a whole model ({path}): {why}; serve it with `tunehub serve --model {path}`",
            param="adapter",
        )

    return refuse


# a whole model needs a vLLM server of its own, which the hub does not start beside a running one
refuse_on_vllm = refusing("a vLLM hub serves adapters of its bases only")
no_opener = refusing("this hub was built without a way to open one")  # embedded uses, tests of other parts
