"""`tunehub estimate` and `tunehub doctor`: plan a training run, and check what this machine can do.

tunehub estimate (--model DIR | --params 7B) [--seq-len 2048] [--batch-size 4] [--tokens 50M] [--gpu H100]
                 [--gpus 1] [--lora-rank 16] [--no-checkpointing] [--mfu 0.35] [--prices FILE] [--json]
tunehub estimate --write-prices FILE      (an editable copy of the GPU memory/speed/price table)
tunehub doctor [--data-dir DIR] [--vllm-url URL] [--vllm-bin PATH] [--model PATH_OR_ID]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SUFFIXES = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


def parse_count(text: str) -> float:
    """'50M' -> 5e7, '1.5B' -> 1.5e9, '2000' -> 2000."""
    value = text.strip().upper()
    scale = SUFFIXES.get(value[-1:], 1)
    try:
        number = float(value[:-1] if value[-1:] in SUFFIXES else value) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count like 50M or 2000") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return number


def _model_shape(args: argparse.Namespace):
    from training.estimate import ModelShape

    if args.params:
        return ModelShape.from_size(args.params), f"a {args.params} reference shape"
    from serving.model_source import find_gguf, read_gguf_config

    gguf = find_gguf(args.model)
    if gguf is not None:  # its header holds the config: nothing is dequantised for an estimate
        return ModelShape.from_config(read_gguf_config(gguf)), str(args.model)
    path = Path(args.model) / "config.json"
    if not path.is_file():
        raise ValueError(
            f"--model {args.model!r} has no config.json; pass a model directory, a .gguf file or --params 7B"
        )
    return ModelShape.from_config(json.loads(path.read_text())), str(args.model)


def cmd_estimate(args: argparse.Namespace) -> int:
    from training.estimate import DEFAULT_GPUS, GiB, estimate, format_table, load_gpus

    if args.write_prices:
        Path(args.write_prices).write_text(json.dumps(DEFAULT_GPUS, indent=2) + "\n")
        print(f"wrote {args.write_prices}; edit it and pass it with --prices")
        return 0
    try:
        gpus = load_gpus(Path(args.prices) if args.prices else None)
        if args.gpu not in gpus:
            raise ValueError(f"--gpu {args.gpu!r} is not in the table; choose one of {', '.join(gpus)}")
        shape, source = _model_shape(args)
        rows = estimate(
            shape,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            gpu=gpus[args.gpu],
            tokens=args.tokens,
            lora_rank=args.lora_rank,
            gradient_checkpointing=not args.no_checkpointing,
            mfu=args.mfu,
            gpus=args.gpus,
        )
    except ValueError as exc:
        print(f"tunehub estimate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"parameters": shape.parameters, "rows": [r.as_dict() for r in rows]}, indent=2))
        return 0
    gpu = gpus[args.gpu]
    print(
        f"{shape.parameters / 1e9:.3g}B parameters ({source}); micro-batch {args.batch_size} x {args.seq_len} "
        f"tokens, gradient checkpointing {'off' if args.no_checkpointing else 'on'}, LoRA rank {args.lora_rank}"
    )
    print(
        f"{args.gpu}: {gpu['memory_gib']:g} GiB, {gpu['tflops']:g} TFLOP/s bf16 at MFU {args.mfu}, "
        f"${gpu['usd_per_hour']:.2f}/GPU-hour" + (f", {args.gpus} GPUs" if args.gpus > 1 else "")
    )
    print(format_table(rows, gpu))
    if args.tokens is None:
        print("pass --tokens (dataset tokens x epochs) for time and cost")
    smallest = min(rows, key=lambda r: r.total)
    if smallest.total / GiB > 0.9 * gpu["memory_gib"]:
        print(
            "nothing fits one device: lower --batch-size or --seq-len, or shard with DeepSpeed ZeRO-3 / FSDP"
        )
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import report, run_checks

    checks = run_checks(Path(args.data_dir), vllm_url=args.vllm_url, vllm_bin=args.vllm_bin, model=args.model)
    print(report(checks))
    return 1 if any(c.status == "fail" for c in checks) else 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def add_tool_commands(sub) -> None:
    est = sub.add_parser("estimate", help="memory per training method, time and cost of a run")
    source = est.add_mutually_exclusive_group()
    source.add_argument("--model", help="a model directory with a config.json, or a .gguf file")
    source.add_argument("--params", help="a model size such as 0.5B, 7B or 70B (a reference shape)")
    est.add_argument("--seq-len", type=_positive_int, default=2048, help="tokens per sequence")
    est.add_argument("--batch-size", type=_positive_int, default=4, help="sequences per device per step")
    est.add_argument(
        "--tokens", type=parse_count, help="tokens of the whole run (dataset x epochs), e.g. 50M"
    )
    est.add_argument("--gpu", default="H100", help="a GPU from the table (default H100)")
    est.add_argument("--gpus", type=_positive_int, default=1, help="GPUs in data parallel")
    est.add_argument("--lora-rank", type=_positive_int, default=16)
    est.add_argument("--no-checkpointing", action="store_true", help="without gradient checkpointing")
    est.add_argument("--mfu", type=float, default=0.35, help="share of the GPU's peak FLOP/s reached")
    est.add_argument("--prices", help="a JSON GPU table (see --write-prices) overriding the defaults")
    est.add_argument("--write-prices", metavar="FILE", help="write the default GPU table to FILE and stop")
    est.add_argument("--json", action="store_true", help="print JSON")
    est.set_defaults(func=cmd_estimate)

    doctor = sub.add_parser("doctor", help="check versions, GPU, bitsandbytes, vLLM and the data dir")
    doctor.add_argument("--data-dir", default="./tunehub-data")
    doctor.add_argument("--vllm-url", help="a remote vLLM server to check")
    doctor.add_argument("--model", help="a model to check: hub id, directory or .gguf file")
    doctor.add_argument("--vllm-bin", help="the vllm executable to look for (default: vllm on PATH)")
    doctor.set_defaults(func=cmd_doctor)
