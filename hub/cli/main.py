"""The `tunehub` command line's parser and its own commands: serve the hub, build the demo model (the other
command groups: the modules beside this one, listed in hub/cli/__init__.py).

tunehub serve [--model PATH_OR_HF_ID] [--host 127.0.0.1] [--port 7860] [--data-dir ./tunehub-data] ...
tunehub demo-model [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..settings import LIMIT_FLAGS, Settings, SettingsError, quiet_environment
from .adapters import add_adapter_commands
from .common import load_engine_for, progress_bar, resolve_model, store_is_sound
from .data import add_data_commands
from .engine import (
    add_engine_command,
    add_model_options,
    add_vllm_arguments,
    choose_engine,
    make_vllm_bases,
)
from .tools import add_tool_commands
from .train import add_train_commands

if TYPE_CHECKING:
    pass

log = logging.getLogger("tunehub")


def cmd_serve(args: argparse.Namespace) -> int:
    models = args.model or []
    settings = Settings(
        model=models[0] if models else None,
        more_models=models[1:],
        engine=args.engine,
        host=args.host,
        port=args.port,
        data_dir=Path(args.data_dir),
        quantize=args.quantize,
        dtype=args.dtype,
        chat_template=args.chat_template,
        threads=args.threads,
        max_lora_rank=args.max_lora_rank,
        max_batch_size=args.max_batch_size,
        served_model_name=args.served_model_name,
        **{limit.setting: getattr(args, limit.setting) for limit in LIMIT_FLAGS},
    )
    if args.api_key:
        settings.api_key = args.api_key
    if args.admin_password:
        settings.admin_password = args.admin_password
    try:
        settings.check()
    except SettingsError as exc:
        print(f"tunehub: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from ..app import build_app

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not store_is_sound(settings.data_dir / "feedback.db"):
        return 2
    from serving.errors import EngineError

    from ..whole_models import local_model_opener, open_more_bases, refuse_on_vllm

    try:
        if choose_engine(settings, args) == "vllm":
            engine, *others = make_vllm_bases(settings, args, resolve_model)
            open_model = refuse_on_vllm
        else:
            engine, open_model = load_engine_for(settings), local_model_opener(settings)
            others = open_more_bases(settings, taken={engine.model_name})
    except (ValueError, EngineError) as exc:  # a bad source or template; a model that does not fit
        print(f"tunehub: {exc}", file=sys.stderr)
        return 2
    app = build_app(settings, engine, open_model=open_model, other_bases=others)
    print(
        f"tunehub: serving {engine.model_name or args.vllm_url} on http://{settings.host}:{settings.port}  (UI at /, API at /v1)",
        file=sys.stderr,
    )
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=args.log_level, timeout_graceful_shutdown=5
    )
    return 0


def cmd_demo_model(args: argparse.Namespace) -> int:
    from training.demo.build import build_demo_model, ensure_demo_model

    update, close = progress_bar("building the demo model")
    try:
        if args.out:
            path = build_demo_model(Path(args.out), progress=update)
        else:
            path = ensure_demo_model(Path(args.data_dir), progress=update)
    finally:
        close()
    print(path)
    return 0


def _default(setting: str):
    return Settings.__dataclass_fields__[setting].default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunehub", description="Chat, rate, retrain and hot-swap LLM adapters."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the UI and the OpenAI-compatible API")
    serve.add_argument(
        "--model",
        action="append",
        help="hub id, local model directory or .gguf file (default: the self-built demo model); give it "
        "again to serve more base models beside the first (local engine), each with its own adapters",
    )
    serve.add_argument(
        "--engine",
        choices=["auto", "local", "vllm"],
        default="auto",
        help="inference engine (auto: vLLM with --vllm-url, or with a CUDA GPU and vllm on PATH; local otherwise)",
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (non-loopback needs --admin-password and --api-key)",
    )
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument(
        "--data-dir", default="./tunehub-data", help="models, adapters and the feedback database"
    )
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 (or TUNEHUB_API_KEY)")
    serve.add_argument("--admin-password", help="password for admin actions (or TUNEHUB_ADMIN_PASSWORD)")
    serve.add_argument(
        "--quantize",
        choices=["none", "8bit", "4bit"],
        default="none",
        help="load the base through bitsandbytes",
    )
    add_model_options(serve)
    serve.add_argument("--max-lora-rank", type=int, default=64, help="largest adapter rank accepted")
    serve.add_argument("--max-batch-size", type=int, default=32, help="rows decoded together")
    serve.add_argument(
        "--served-model-name", help="name of the base model on the API (default: its directory name)"
    )
    for limit in LIMIT_FLAGS:
        default = _default(limit.setting)
        serve.add_argument(
            limit.flag, dest=limit.setting, type=type(default), default=default, help=limit.help
        )
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    add_vllm_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo-model", help="build the demo model (cached in the data dir)")
    demo.add_argument("--out", help="write it to this directory instead of the data dir's cache")
    demo.add_argument("--data-dir", default="./tunehub-data")
    demo.set_defaults(func=cmd_demo_model)
    add_data_commands(sub)
    add_tool_commands(sub)
    add_train_commands(sub)
    add_adapter_commands(sub)
    add_engine_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_environment()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
