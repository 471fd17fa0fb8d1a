"""Runs a real `tunehub serve` process on 127.0.0.1 for tests and benchmarks, and stops it by its pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

TEST_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_WAIT_POLICY": "PASSIVE",
}


REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A `tunehub` command serving on 127.0.0.1: started, awaited until /health answers, stopped by its pid.

    Subclasses (dataclasses) hold `port`, `process` and `log_path` and say what to run (`command`)."""

    port: int
    process: subprocess.Popen | None
    log_path: Path
    name = "tunehub"

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {**os.environ, **TEST_ENVIRONMENT}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.environment(), cwd=REPO
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} did not become healthy in {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
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

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class HubProcess(ServerProcess):
    model: Path
    data_dir: Path
    api_key: str | None = None
    admin_password: str | None = None
    extra_args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    name = "tunehub serve"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "serve.log"

    def command(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "hub.cli",
            "serve",
            "--model",
            str(self.model),
            "--port",
            str(self.port),
        ]
        args += ["--data-dir", str(self.data_dir), "--log-level", "warning", *self.extra_args]
        if self.api_key:
            args += ["--api-key", self.api_key]
        if self.admin_password:
            args += ["--admin-password", self.admin_password]
        return args

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env.pop("TUNEHUB_API_KEY", None)
        env.pop("TUNEHUB_ADMIN_PASSWORD", None)
        return env
