"""Which engine `tunehub serve` runs (local, a managed vLLM, a remote vLLM) and its flags, and the
`tunehub engine` command (the embedded engine as a standalone vLLM-protocol server).

    tunehub serve --engine vllm --vllm-url http://gpu-box:8000 [--vllm-api-key KEY]          # remote
    tunehub serve --engine vllm --model Qwen/Qwen2.5-0.5B-Instruct --vllm-bin ~/vllm-venv/bin/vllm  # managed
    tunehub serve --vllm-url http://gpu-a:8000 --vllm-url http://gpu-b:8000        # replicas of one base
    tunehub engine --model DIR --port 8000 [--api-key KEY]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import sys
from dataclasses import replace

from ..settings import Settings

log = logging.getLogger("tunehub")


def add_vllm_arguments(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("vLLM engine (--engine vllm, or auto with a CUDA GPU and vllm on PATH)")
    group.add_argument(
        "--vllm-url",
        action="append",
        help="use the vLLM server at this URL instead of starting one; give it again for each replica of the "
        "same base (requests go to the least busy replica, adapters load on all)",
    )
    group.add_argument(
        "--vllm-api-key", default=os.environ.get("VLLM_API_KEY"), help="vLLM's --api-key (or VLLM_API_KEY)"
    )
    group.add_argument(
        "--vllm-bin", default="vllm", help="the vllm executable to start (e.g. its own venv's)"
    )
    group.add_argument("--vllm-port", type=int, help="port of the started vLLM (default: a free one)")
    group.add_argument("--max-loras", type=int, default=4, help="adapters in one vLLM batch")
    group.add_argument("--max-cpu-loras", type=int, default=16, help="adapters vLLM keeps in CPU memory")
    group.add_argument("--tensor-parallel-size", type=int, help="GPUs vLLM shards the model over")
    group.add_argument("--gpu-memory-utilization", type=float, help="share of GPU memory vLLM takes")
    group.add_argument(
        "--vllm-sleep-mode",
        action="store_true",
        help="start vLLM with --enable-sleep-mode, so it can free the GPU while a job trains",
    )
    group.add_argument(
        "--vllm-start-timeout", type=float, default=900.0, help="seconds to wait for vLLM's /health"
    )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def choose_engine(settings: Settings, args: argparse.Namespace) -> str:
    """ "local" or "vllm"; auto picks vLLM for --vllm-url, or a CUDA GPU with a vllm executable."""
    if settings.engine != "auto":
        return settings.engine
    if args.vllm_url:
        log.info("--engine auto: using the vLLM server at %s", args.vllm_url)
        return "vllm"
    found = shutil.which(args.vllm_bin)
    if found is None:
        log.info("--engine auto: local engine (no %r executable; see `tunehub doctor`)", args.vllm_bin)
        return "local"
    if not _cuda_available():
        log.info("--engine auto: local engine (%s found, but no CUDA GPU)", found)
        return "local"
    log.info("--engine auto: vLLM (%s, CUDA GPU found)", found)
    return "vllm"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


VLLM_DEFAULT_GPU_SHARE = 0.9  # vLLM's own default --gpu-memory-utilization


def make_vllm_bases(settings: Settings, args: argparse.Namespace, resolve_model) -> list:
    """One vLLM engine per base model, the first `--model` first. With one base, `make_vllm_engine`'s; with
    several, each `--model` takes the `--vllm-url` at its place (one server per model, given in the same
    order), or, with no URL at all, a vLLM server of its own that tunehub starts (without
    --gpu-memory-utilization, each takes an even share of vLLM's default 0.9, as they share the GPUs).
    Raises ValueError for flags that do not pair up."""
    models = [settings.model, *settings.more_models]
    if len(models) == 1:
        return [make_vllm_engine(settings, args, resolve_model)]
    urls = [args.vllm_url] if isinstance(args.vllm_url, str) else list(args.vllm_url or [])
    if urls and len(urls) != len(models):
        raise ValueError(
            f"--model given {len(models)} times and --vllm-url {len(urls)} times: with several base models, "
            "give one --vllm-url per --model, in the same order (replicas of one base need a hub of their "
            "own), or none to start one vLLM server per model"
        )
    share = args.gpu_memory_utilization
    if not urls and share is None:  # several servers tunehub starts share the GPU: vLLM's 0.9 split evenly
        share = round(VLLM_DEFAULT_GPU_SHARE / len(models), 3)
        log.info("%d vLLM servers: each takes --gpu-memory-utilization %s", len(models), share)
    engines = []
    for i, model in enumerate(models):
        first = i == 0
        one = replace(
            settings,
            model=model,
            more_models=[],
            served_model_name=settings.served_model_name if first else None,
        )
        own = argparse.Namespace(
            **{
                **vars(args),
                "vllm_url": urls[i] if urls else None,
                "vllm_port": args.vllm_port if first else None,
                "gpu_memory_utilization": share,
            }
        )
        engines.append(
            make_vllm_engine(one, own, resolve_model, log_name="vllm.log" if first else f"vllm-{i + 1}.log")
        )
    return engines


def make_vllm_engine(
    settings: Settings, args: argparse.Namespace, resolve_model, *, log_name: str = "vllm.log"
):
    """A remote VLLMEngine for --vllm-url, a ReplicaSet for several, a managed one otherwise (its log in
    the data dir's `log_name`). Raises ValueError for bad flags."""
    from serving.replicas import ReplicaSet
    from serving.vllm import VLLMEngine
    from serving.vllm_process import VLLMOptions

    urls = [args.vllm_url] if isinstance(args.vllm_url, str) else list(args.vllm_url or [])
    if len(urls) > 1:
        return ReplicaSet(
            urls,
            api_key=args.vllm_api_key,
            model_name=settings.served_model_name,
            model_path=settings.model or "",
            max_lora_rank=settings.max_lora_rank,
        )
    if urls:
        return VLLMEngine(
            urls[0],
            api_key=args.vllm_api_key,
            model_name=settings.served_model_name,
            model_path=settings.model or "",
            max_lora_rank=settings.max_lora_rank,
        )
    source = resolve_model(settings)
    name = settings.served_model_name or source.name
    options = VLLMOptions(
        model=source.path,
        port=args.vllm_port or _free_port(),
        log_path=settings.data_dir / log_name,
        executable=args.vllm_bin,
        served_model_name=name,
        api_key=args.vllm_api_key,
        max_loras=args.max_loras,
        max_lora_rank=settings.max_lora_rank,
        max_cpu_loras=args.max_cpu_loras,
        tensor_parallel_size=args.tensor_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enable_sleep_mode=args.vllm_sleep_mode,
        health_timeout_s=args.vllm_start_timeout,
    )
    return VLLMEngine.managed(options)


# ----- tunehub engine -------------------------------------------------------------------------------------


def cmd_engine(args: argparse.Namespace) -> int:
    import uvicorn

    from ..engine_server import build_engine_app
    from .common import load_engine_for

    try:
        settings = Settings.from_sources(args, env={})  # the engine's own flags only
        engine = load_engine_for(settings)
    except ValueError as exc:  # a bad setting, source or template
        print(f"tunehub engine: {exc}", file=sys.stderr)
        return 2
    app = build_engine_app(engine, api_key=args.api_key)
    print(f"tunehub engine: serving {engine.model_name} on http://{args.host}:{args.port}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


# the settings `tunehub engine` shares with `tunehub serve` (declared in hub/settings.py)
ENGINE_SETTINGS = (
    "served_model_name", "max_lora_rank", "max_batch_size", "quantize", "dtype", "chat_template", "threads", "data_dir",
)  # fmt: skip


def add_engine_command(sub) -> None:
    engine = sub.add_parser(
        "engine", help="serve the embedded engine alone, speaking vLLM's HTTP protocol (no UI, no store)"
    )
    engine.add_argument(
        "--model", help="hub id, local model directory or .gguf file (default: the demo model)"
    )
    engine.add_argument("--host", default="127.0.0.1")
    engine.add_argument("--port", type=int, default=8000)
    engine.add_argument(
        "--api-key", default=os.environ.get("VLLM_API_KEY"), help="require this Bearer key on /v1 paths"
    )
    Settings.add_arguments(engine, names=ENGINE_SETTINGS)
    engine.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    engine.set_defaults(func=cmd_engine)
