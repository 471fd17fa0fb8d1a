"""What the benchmarks share: the model flags, an offline and quiet environment, the model to run on."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tests.support.server import TEST_ENVIRONMENT


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model directory (default: the demo model, built if missing)")
    parser.add_argument("--data-dir", default="./tunehub-data", help="where the demo model is cached")


def offline() -> None:
    """Nothing phones home, and the libraries keep quiet: the tests' environment."""
    for key, value in TEST_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def prepare(args: argparse.Namespace) -> Path:
    """Nothing phones home; returns the model directory: --model, or the demo model cached in --data-dir."""
    offline()
    if args.model:
        return Path(args.model)
    from training.demo.build import ensure_demo_model

    return ensure_demo_model(Path(args.data_dir))
