"""Runs a real `tunehub engine` (the embedded engine behind vLLM's protocol) for tests, stopped by its pid."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .server import ServerProcess, free_port


@dataclass
class EngineProcess(ServerProcess):
    model: Path
    log_path: Path
    api_key: str | None = None
    extra_args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    name = "tunehub engine"

    def command(self) -> list[str]:
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
        return args

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env.pop("VLLM_API_KEY", None)
        return env
