"""What the `tunehub` command groups share: the model to serve (a hub id, directory, GGUF file or the demo
model) and its local engine, the progress bar of long steps, and the feedback store of a data directory."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..settings import Settings

if TYPE_CHECKING:
    from serving.model_source import ModelSource

DATA_DIR_HELP = "the hub's data directory (its store, jobs and adapters)"


def progress_bar(description: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=description, unit="step", file=sys.stderr)
        bar.n = done
        bar.refresh()

    def close() -> None:
        if bar is not None:
            bar.close()

    return update, close


def resolve_model(settings: Settings) -> ModelSource:
    """The model to serve: the given hub id, directory or GGUF file (converted once into the data dir's
    models/), or the demo model (built on first run, then cached). Raises ModelSourceError."""
    from serving.model_source import ModelSource, resolve_model_source

    if settings.model:
        return resolve_model_source(settings.model, settings.models_dir)
    from training.demo.build import ensure_demo_model

    update, close = progress_bar("building the demo model (first run only)")
    try:
        path = str(ensure_demo_model(settings.data_dir, progress=update))
    finally:
        close()
    return ModelSource(given="", path=path, name="tunehub-demo")


def load_engine_for(settings: Settings):
    """The LocalEngine for `settings` (model, dtype, chat template, quantization, limits), not yet started.
    Raises ValueError (ModelSourceError, ChatTemplateError) with a message for the user."""
    from ..whole_models import open_local_engine

    source = resolve_model(settings)
    return open_local_engine(settings, source.path, settings.served_model_name or source.name)


def store_problem(path: Path) -> str | None:
    """Check the feedback database before anything slow starts: a damaged file stops the hub with a message
    naming it (returned), and is never replaced by a new one. None: it is sound (or new)."""
    from feedback.errors import CorruptStore
    from feedback.store import Store

    try:
        with Store(path) as store:
            store.check_integrity()
    except CorruptStore as exc:
        return str(exc)
    return None


def open_store(args: argparse.Namespace, *, create: bool = False):
    """The feedback store of `args.data_dir`; exits with a message naming the path when there is none
    (unless `create`)."""
    from feedback.store import Store

    path = Path(args.data_dir) / "feedback.db"
    if not path.exists() and not create:
        raise SystemExit(f"tunehub: no feedback store at {path}; pass the --data-dir the hub serves from")
    return Store(path)
