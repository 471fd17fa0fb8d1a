"""The `tunehub` command line's parser and its own commands: serve the hub, build the demo model (the other
command groups: the modules beside this one, listed in hub/cli/__init__.py).

tunehub serve [--model PATH_OR_HF_ID] [--host 127.0.0.1] [--port 7860] [--data-dir ./tunehub-data] ...
tunehub demo-model [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..settings import Settings, SettingsError, quiet_environment
from .adapters import add_adapter_commands
from .common import load_engine_for, progress_bar, resolve_model, store_problem
from .data import add_data_commands
from .engine import (
    add_engine_command,
    add_vllm_arguments,
    choose_engine,
    make_vllm_bases,
)
from .tools import add_tool_commands
from .train import add_train_commands

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("tunehub")


class CannotServe(Exception):
    """What stops `tunehub serve` before it listens, in words for the user: a bad setting, a damaged feedback
    store, a model source or chat template that does not load, a model that does not fit."""


def served_app(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> tuple[Settings, FastAPI]:
    """The hub `tunehub serve` runs for `args` (and the TUNEHUB_* variables of `env`, else the process's):
    settings checked, the store checked, the engine or engines made and the app wired around them, not yet
    started (the app's lifespan starts them). Raises CannotServe."""
    from serving.errors import EngineError

    from ..app import build_app
    from ..whole_models import local_model_opener, open_more_bases, refuse_on_vllm

    try:
        settings = Settings.from_sources(args, env)
        settings.check()
    except SettingsError as exc:
        raise CannotServe(str(exc)) from None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    problem = store_problem(settings.data_dir / "feedback.db")
    if problem:
        raise CannotServe(problem)
    try:
        if choose_engine(settings, args) == "vllm":
            engine, *others = make_vllm_bases(settings, args, resolve_model)
            open_model = refuse_on_vllm
        else:
            engine, open_model = load_engine_for(settings), local_model_opener(settings)
            others = open_more_bases(settings, taken={engine.model_name})
    except (ValueError, EngineError) as exc:  # a bad source or template; a model that does not fit
        raise CannotServe(str(exc)) from None
    app = build_app(settings, engine, open_model=open_model, other_bases=others)
    log.info(
        "serving %s on http://%s:%s  (UI at /, API at /v1)",
        engine.model_name or args.vllm_url,
        settings.host,
        settings.port,
    )
    return settings, app


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    try:
        settings, app = served_app(args)
    except CannotServe as exc:
        print(f"tunehub: {exc}", file=sys.stderr)
        return 2
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunehub", description="Chat, rate, retrain and hot-swap LLM adapters."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the UI and the OpenAI-compatible API")
    Settings.add_arguments(serve)
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
