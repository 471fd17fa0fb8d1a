"""`tunehub doctor`: what this machine can do for tunehub, and how to fix what it cannot.

Each check returns a `Check`: ok, warn (works, but worse than it could) or fail (something tunehub needs is
broken), with the fix for anything that is not ok. The checks read versions, the GPU, bf16, bitsandbytes,
the vLLM server or executable, the data directory and its feedback database, and the --model given (hub id,
directory or GGUF file, its chat template); none changes anything.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "datasets",
    "bitsandbytes",
    "gradio",
    "sqlite-utils",
    "fastapi",
    "uvicorn",
    "gguf",
)


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


def check_python() -> Check:
    return Check("python", "ok", ".".join(map(str, sys.version_info[:3])))  # pip enforces >= 3.10


def check_packages() -> list[Check]:
    checks = []
    for name in PACKAGES:
        try:
            checks.append(Check(name, "ok", importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            checks.append(Check(name, "fail", "not installed", "pip install -e . (after pip install torch)"))
    return checks


def check_torch() -> list[Check]:
    import torch

    threads = f"{torch.get_num_threads()} CPU threads of {os.cpu_count()} cores"
    if not torch.cuda.is_available():
        gpu_present = shutil.which("nvidia-smi") is not None
        if gpu_present and torch.version.cuda is None:
            return [
                Check(
                    "gpu",
                    "warn",
                    f"nvidia-smi is here but torch {torch.__version__} is a CPU build; training and the local "
                    f"engine run on the CPU ({threads})",
                    "install a CUDA build of torch, e.g. pip install torch --index-url "
                    "https://download.pytorch.org/whl/cu128",
                )
            ]
        from serving.loader import cpu_has_bf16

        bf16 = (
            Check("bf16", "ok", "the CPU has AVX512_BF16/AMX: --dtype auto computes in bfloat16")
            if cpu_has_bf16()
            else Check("bf16", "ok", "the CPU has no bfloat16 instructions: --dtype auto computes in float32")
        )
        return [
            Check("gpu", "ok", f"no CUDA GPU: the local engine and training run on the CPU ({threads})"),
            bf16,
        ]
    names = [
        f"{torch.cuda.get_device_name(i)} ({torch.cuda.get_device_properties(i).total_memory / 1024**3:.0f} GiB)"
        for i in range(torch.cuda.device_count())
    ]
    checks = [Check("gpu", "ok", f"CUDA {torch.version.cuda}: {', '.join(names)}")]
    if torch.cuda.is_bf16_supported():
        checks.append(Check("bf16", "ok", "supported: training uses bf16 mixed precision"))
    else:
        checks.append(
            Check("bf16", "warn", "not supported by this GPU: training falls back to fp16 with loss scaling")
        )
    return checks


def check_bitsandbytes() -> Check:
    """Quantise and dequantise a small tensor to 4-bit NF4 on the CPU (what QLoRA and --quantize 4bit do)."""
    try:
        import torch
        from bitsandbytes.functional import dequantize_4bit, quantize_4bit

        weight = torch.linspace(-1, 1, 4096, dtype=torch.float32).reshape(64, 64)
        packed, state = quantize_4bit(weight, quant_type="nf4")
        error = (dequantize_4bit(packed, state) - weight).abs().max().item()
    except Exception as exc:  # an import or backend failure is the finding
        return Check(
            "bitsandbytes",
            "fail",
            f"4-bit NF4 round trip failed: {exc}",
            "pip install -U bitsandbytes; QLoRA and --quantize 8bit/4bit need it",
        )
    if error > 0.2:
        return Check(
            "bitsandbytes", "fail", f"4-bit round trip is off by {error:.3f}", "reinstall bitsandbytes"
        )
    return Check("bitsandbytes", "ok", f"4-bit NF4 works on the CPU (round-trip error {error:.3f})")


def check_vllm(url: str | None, executable: str | None) -> Check:
    if url:
        health = url.rstrip("/").removesuffix("/v1") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=5) as answer:
                return Check("vllm", "ok", f"{health} answered {answer.status}")
        except (urllib.error.URLError, OSError) as exc:
            return Check(
                "vllm",
                "fail",
                f"{health} is not reachable: {getattr(exc, 'reason', exc)}",
                "start the vLLM server, or check --vllm-url and the network between the two machines",
            )
    found = shutil.which(executable or "vllm")
    if found:
        import torch

        if torch.cuda.is_available():
            return Check(
                "vllm", "ok", f"executable {found} and a CUDA GPU: --engine auto serves through vLLM"
            )
        return Check(
            "vllm",
            "ok",
            f"executable {found}, but no CUDA GPU: --engine auto uses the local engine",
            "run on a machine with a CUDA GPU, or point --vllm-url at a vLLM server elsewhere",
        )
    return Check(
        "vllm",
        "ok",
        "no vllm executable on PATH: serving uses the local engine (transformers + peft)",
        "" if executable is None else f"{executable!r} was not found; give the full path to vLLM's venv",
    )


def check_data_dir(data_dir: Path) -> list[Check]:
    if data_dir.exists() and not data_dir.is_dir():
        return [
            Check("data dir", "fail", f"{data_dir} exists and is not a directory", "pass another --data-dir")
        ]
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".doctor-"):
            pass
    except OSError as exc:
        return [
            Check(
                "data dir",
                "fail",
                f"{data_dir} is not writable: {exc.strerror or exc}",
                "give the user running tunehub write access, or pass another --data-dir",
            )
        ]
    free = shutil.disk_usage(data_dir).free / 1024**3
    checks = [Check("data dir", "ok", f"{data_dir.resolve()} is writable, {free:.1f} GiB free")]
    if free < 2:
        checks[0] = Check(
            "data dir",
            "warn",
            f"only {free:.1f} GiB free in {data_dir}",
            "free disk space: adapters and checkpoints need room",
        )
    database = data_dir / "feedback.db"
    if database.exists():
        try:
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
                result = conn.execute("PRAGMA quick_check").fetchone()[0]
                tables = {
                    row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                }
                votes = conn.execute("SELECT count(*) FROM votes").fetchone()[0] if "votes" in tables else 0
        except sqlite3.DatabaseError as exc:
            checks.append(
                Check(
                    "feedback store",
                    "fail",
                    f"{database} cannot be read: {exc}",
                    "restore it from a backup; tunehub never recreates a damaged store over your votes",
                )
            )
        else:
            if result != "ok":
                checks.append(
                    Check("feedback store", "fail", f"{database}: {result}", "restore it from a backup")
                )
            else:
                checks.append(Check("feedback store", "ok", f"{database}: intact, {votes} votes"))
    else:
        checks.append(Check("feedback store", "ok", f"{database} will be created on first start"))
    return checks


def check_model(model: str, data_dir: Path) -> list[Check]:
    """What --model names and whether tunehub can serve it; nothing is downloaded or converted."""
    from serving.chat_templates import shipped_templates
    from serving.model_source import ModelSourceError, find_gguf, gguf_architecture, read_gguf_config

    no_template = Check(
        "chat template",
        "warn",
        f"{model} has none: chat and chat training are refused",
        f"pass --chat-template ({', '.join(shipped_templates())} or a .jinja file)",
    )
    try:
        gguf = find_gguf(model)
        if gguf is not None:
            architecture = gguf_architecture(gguf)
            config = read_gguf_config(gguf)
            cached = sorted((data_dir / "models").glob(f"{gguf.stem}-*/tunehub-source.json"))
            detail = f"GGUF file, {architecture} ({config.get('model_type')}), " + (
                f"converted copy cached at {cached[-1].parent}"
                if cached
                else f"converted once on first start into {data_dir / 'models'}"
            )
            from gguf import GGUFReader

            has_template = "tokenizer.chat_template" in GGUFReader(str(gguf)).fields
            return [Check("model", "ok", detail), *([] if has_template else [no_template])]
    except ModelSourceError as exc:
        return [
            Check("model", "fail", str(exc), "convert it with llama.cpp's tools or use a supported model")
        ]
    path = Path(model)
    if not path.exists():
        return [
            Check(
                "model",
                "ok",
                f"{model!r} is not a local path: loaded as a hub id (needs the network and no HF_HUB_OFFLINE)",
            )
        ]
    config_file = path / "config.json"
    if not config_file.is_file():
        return [
            Check(
                "model",
                "fail",
                f"{model} has no config.json",
                "pass a transformers directory or a .gguf file",
            )
        ]
    config = json.loads(config_file.read_text())
    checks = [Check("model", "ok", f"transformers directory, {config.get('model_type')}")]
    tokenizer_config = path / "tokenizer_config.json"
    template = (path / "chat_template.jinja").is_file() or (
        tokenizer_config.is_file() and bool(json.loads(tokenizer_config.read_text()).get("chat_template"))
    )
    return checks if template else [*checks, no_template]


def run_checks(
    data_dir: Path, *, vllm_url: str | None = None, vllm_bin: str | None = None, model: str | None = None
) -> list[Check]:
    return [
        check_python(),
        *check_packages(),
        *check_torch(),
        check_bitsandbytes(),
        check_vllm(vllm_url, vllm_bin),
        *check_data_dir(data_dir),
        *(check_model(model, data_dir) if model else []),
    ]


def report(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"{check.status.upper():<4}  {check.name:<15} {check.detail}")
        if check.fix and check.status != "ok":
            lines.append(f"{'':<6}{'':<15} fix: {check.fix}")
    problems = sum(c.status == "fail" for c in checks)
    warnings = sum(c.status == "warn" for c in checks)
    lines.append(f"\n{problems} problem(s), {warnings} warning(s)")
    return "\n".join(lines)
