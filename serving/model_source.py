"""Where a base model comes from: a hub id, a transformers directory, or a GGUF file (or a directory holding one).

    source = resolve_model_source("SmolLM2-135M-Instruct.Q4_1.gguf", cache_dir=Path("tunehub-data/models"))
    source.path   # what from_pretrained loads: the directory or hub id; for GGUF, its converted copy
    source.name   # the name it is served under by default: directory name, hub id, or the file's stem

A GGUF file is read once through transformers' GGUF support (the `gguf` package), its weights dequantised to
float32, and written as an ordinary transformers directory (config without the GGUF quantization_config,
tokenizer and chat template from the file) under `cache_dir/<stem>-<sha256[:16]>`. The content hash names
the copy, so the same file anywhere is the same base for adapter checks, lineage and replays, and later
starts and jobs load the copy (seconds) instead of dequantising again (about 20 s for 135M parameters).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .openmp import in_passing_thread

log = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"
SOURCE_FILE = "tunehub-source.json"  # written beside a converted copy: which file, which hash
DIGESTS_FILE = "gguf-digests.json"  # path, size and mtime -> sha256, so a start does not rehash gigabytes


class ModelSourceError(ValueError):
    """A --model that cannot be loaded; the message names it and what to do."""


@dataclass(frozen=True)
class ModelSource:
    given: str  # as the user named it
    path: str  # what from_pretrained loads
    name: str  # the default served name
    gguf_file: Path | None = None  # the GGUF file it was converted from
    digest: str = ""  # the GGUF file's sha256


def find_gguf(given: str) -> Path | None:
    """The GGUF file `given` names: the file itself, or the only .gguf in a directory without config.json."""
    path = Path(given).expanduser()
    if path.suffix.lower() == GGUF_SUFFIX:
        if not path.is_file():
            raise ModelSourceError(f"--model {given!r}: no such GGUF file")
        return path
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    found = sorted(p for p in path.iterdir() if p.suffix.lower() == GGUF_SUFFIX and p.is_file())
    if len(found) > 1:
        raise ModelSourceError(
            f"--model {given!r} holds {len(found)} GGUF files ({', '.join(p.name for p in found)}); "
            "name the one to serve"
        )
    return found[0] if found else None


def looks_like_path(given: str) -> bool:
    """True for a --model that can only be a local path: absolute, relative to . or ~, or deeper than the
    ORG/NAME of a hub id."""
    return given.startswith(("/", ".", "~")) or given.count("/") > 1 or "\\" in given


def resolve_model_source(given: str, cache_dir: Path, *, progress=None) -> ModelSource:
    """A ModelSource for `given`; a GGUF file is converted into `cache_dir` the first time it is seen."""
    gguf = find_gguf(given)
    if gguf is None:
        path = Path(given).expanduser()
        if path.exists():
            return ModelSource(given=given, path=str(path), name=path.name)
        if looks_like_path(given):
            raise ModelSourceError(
                f"--model {given!r}: no such file or directory (a Hugging Face Hub id is NAME or ORG/NAME)"
            )
        return ModelSource(given=given, path=given, name=given)
    digest = file_digest(gguf, Path(cache_dir) / DIGESTS_FILE)
    out = Path(cache_dir) / f"{gguf.stem}-{digest[:16]}"
    if not (out / SOURCE_FILE).is_file():
        in_passing_thread(lambda: convert_gguf(gguf, out, digest))  # no OpenMP team left behind
    return ModelSource(given=given, path=str(out), name=gguf.stem, gguf_file=gguf, digest=digest)


def file_digest(path: Path, index_file: Path) -> str:
    """sha256 of the file, remembered by (path, size, mtime) in `index_file`."""
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        index = {}
    if key in index:
        return index[key]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    index[key] = digest.hexdigest()
    index_file.parent.mkdir(parents=True, exist_ok=True)
    staging = index_file.with_suffix(f".{os.getpid()}.tmp")
    staging.write_text(json.dumps(index, indent=1))
    os.replace(staging, index_file)
    return index[key]


def gguf_architecture(path: Path) -> str:
    """The architecture a GGUF file declares (general.architecture), read from its header."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(str(path)).fields["general.architecture"]
    except KeyError as exc:
        raise ModelSourceError(f"{str(path)!r} has no general.architecture; is it a GGUF model?") from exc
    except Exception as exc:
        raise ModelSourceError(f"{str(path)!r} is not a readable GGUF file: {exc}") from exc
    return bytes(field.parts[field.data[0]]).decode()


def read_gguf_config(path: Path) -> dict:
    """The transformers config a GGUF file's header describes, as a dict (no tensor is read)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    except ValueError as exc:
        raise _unreadable(path, gguf_architecture(path), exc) from exc
    return config.to_dict()


def _unreadable(path: Path, architecture: str, exc: Exception) -> ModelSourceError:
    readable = readable_architectures()
    if architecture.replace("_", "") in {a.replace("_", "") for a in readable}:
        return ModelSourceError(f"{str(path)!r} could not be read: {exc}")
    return ModelSourceError(
        f"{str(path)!r} holds a {architecture!r} model, which transformers cannot read from GGUF; "
        f"it reads {', '.join(readable)}"
    )


def readable_architectures() -> list[str]:
    """Architectures transformers can load from GGUF (its own list, less the non-model sections)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]


def convert_gguf(gguf: Path, out: Path, digest: str) -> Path:
    """Dequantise `gguf` into a transformers directory at `out`, written aside and renamed into place."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    architecture = gguf_architecture(gguf)
    log.info("converting %s (%s) to a transformers directory, once: %s", gguf.name, architecture, out)
    folder, name = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except ValueError as exc:
        raise _unreadable(gguf, architecture, exc) from exc
    # A GGUF-loaded model refuses save_pretrained and carries quant_method "gguf", which trainers refuse:
    # an ordinary model built from the same config takes its (already dequantised) weights.
    config = loaded.config
    strip_gguf_quantization(config)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k not in _tied_keys(model)]
    if missing or unexpected:
        raise ModelSourceError(
            f"{str(gguf)!r}: its weights do not fill a {type(model).__name__} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    del loaded
    if not tokenizer.chat_template:
        log.warning("%s carries no chat template; give one with --chat-template", gguf.name)
    staging = out.with_name(f".{out.name}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / SOURCE_FILE).write_text(
        json.dumps({"gguf_file": gguf.name, "sha256": digest, "architecture": architecture}, indent=1)
    )
    try:
        os.rename(staging, out)
    except OSError:  # another process converted the same file first: theirs is the same
        shutil.rmtree(staging, ignore_errors=True)
        if not (out / SOURCE_FILE).is_file():
            raise
    return out


def _tied_keys(model) -> set[str]:
    tied = getattr(model, "_tied_weights_keys", None) or []
    return set(tied if isinstance(tied, list | tuple | set) else tied.keys())


def strip_gguf_quantization(config) -> bool:
    """Drop a quantization_config with quant_method "gguf" (weights already dequantised); True if it had one."""
    quant = getattr(config, "quantization_config", None)
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    if str(getattr(method, "value", method) or "").lower() != "gguf":
        return False
    del config.quantization_config
    return True
