"""Runs a real `tunehub engine` (the embedded engine behind vLLM's protocol) for tests, stopped by its pid."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .server import TEST_ENVIRONMENT, free_port


@dataclass
class EngineProcess:
    model: Path
    log_path: Path
    api_key: str | None = None
    extra_args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> EngineProcess:
        args = [
            sys.executable,
            "-m",
            "hub.cli",
            "engine",
            "--model",
            str(self.model),
            "--port",
            str(self.port),
        ]
        args += ["--log-level", "warning", *self.extra_args]
        if self.api_key:
            args += ["--api-key", self.api_key]
        env = {**os.environ, **TEST_ENVIRONMENT}
        env.pop("VLLM_API_KEY", None)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).parents[2]
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"tunehub engine exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"tunehub engine did not become healthy in {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> EngineProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
