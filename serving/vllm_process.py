"""A managed `vllm serve` process: the command line and environment, start and wait for /health, the tail of
its log when it fails, and stop (its whole process group: vLLM forks engine-core and worker processes).

    process = VLLMProcess(VLLMOptions(model="Qwen/Qwen2.5-0.5B-Instruct", port=8000, log_path=Path("vllm.log")))
    await process.start()          # raises EngineUnavailable with the log's tail when it does not come up
    code = await process.wait_exit()
    await process.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .errors import EngineUnavailable

log = logging.getLogger(__name__)

# vLLM's --max-lora-rank takes only these values
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


@dataclass
class VLLMOptions:
    model: str
    port: int
    log_path: Path
    executable: str = "vllm"  # e.g. a separate venv's bin/vllm: vLLM pins its own torch
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    api_key: str | None = None
    max_loras: int = 4  # adapters in one batch on the GPU
    max_lora_rank: int = 64
    max_cpu_loras: int = 16  # adapters kept in CPU memory, swapped in as requests name them
    tensor_parallel_size: int | None = None
    gpu_memory_utilization: float | None = None
    enable_sleep_mode: bool = False  # lets the hub free the GPU for a training job (POST /sleep)
    extra_args: list[str] = field(default_factory=list)
    health_timeout_s: float = 900.0  # first starts download and compile; later ones are faster

    def __post_init__(self) -> None:
        if self.max_lora_rank not in VLLM_LORA_RANKS:
            raise ValueError(
                f"--max-lora-rank {self.max_lora_rank} is not one vLLM accepts; "
                f"use one of {', '.join(map(str, VLLM_LORA_RANKS))}"
            )
        if self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"--max-cpu-loras {self.max_cpu_loras} must be at least --max-loras {self.max_loras}"
            )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        args = [self.executable, "serve", self.model, "--host", self.host, "--port", str(self.port)]
        if self.served_model_name:
            args += ["--served-model-name", self.served_model_name]
        args += [
            "--enable-lora",
            "--max-loras",
            str(self.max_loras),
            "--max-lora-rank",
            str(self.max_lora_rank),
        ]
        args += ["--max-cpu-loras", str(self.max_cpu_loras)]
        if self.tensor_parallel_size:
            args += ["--tensor-parallel-size", str(self.tensor_parallel_size)]
        if self.gpu_memory_utilization:
            args += ["--gpu-memory-utilization", str(self.gpu_memory_utilization)]
        if self.enable_sleep_mode:
            args += ["--enable-sleep-mode"]
        return args + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key  # not on the command line, where `ps` would show it
        if self.enable_sleep_mode:
            env["VLLM_SERVER_DEV_MODE"] = "1"  # /sleep and /wake_up exist only in dev mode
        return env


class VLLMProcess:
    def __init__(self, options: VLLMOptions) -> None:
        self.options = options
        self.process: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def start(self) -> None:
        """Start vLLM and wait for /health; on failure it is stopped and the error holds its log's tail."""
        options = self.options
        options.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting vLLM: %s (log: %s)", " ".join(options.command()), options.log_path)
        with options.log_path.open("ab") as log_file:
            try:
                self.process = subprocess.Popen(
                    options.command(),
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=options.environment(),
                    start_new_session=True,  # its own process group, so stop() reaches its workers
                )
            except OSError as exc:
                raise EngineUnavailable(
                    f"could not run the vLLM executable {options.executable!r}: {exc}; install vLLM in its own "
                    "venv and pass --vllm-bin /path/to/venv/bin/vllm"
                ) from exc
        try:
            await self._wait_healthy()
        except BaseException:
            await self.stop()
            raise

    async def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.options.health_timeout_s
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise EngineUnavailable(
                        f"vLLM exited with code {code} while starting; the end of {self.options.log_path}:\n"
                        + self.log_tail()
                    )
                try:
                    if (await client.get(f"{self.options.url}/health")).status_code == 200:
                        log.info("vLLM is up at %s (pid %d)", self.options.url, self.process.pid)
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise EngineUnavailable(
                        f"vLLM did not answer {self.options.url}/health within {self.options.health_timeout_s:.0f}s; "
                        f"the end of {self.options.log_path}:\n" + self.log_tail()
                    )
                await asyncio.sleep(0.5)

    async def wait_exit(self) -> int:
        """Return vLLM's exit code once it has exited (at once if it is not running)."""
        while self.process is not None and self.process.poll() is None:
            await asyncio.sleep(0.5)
        return self.process.returncode if self.process is not None else 0

    async def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM to its process group, SIGKILL after `timeout_s`."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        self._signal(process, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if process.poll() is None:
            log.warning("vLLM (pid %d) did not stop in %.0fs; killing it", process.pid, timeout_s)
            self._signal(process, signal.SIGKILL)
            await asyncio.to_thread(process.wait, 10)

    @staticmethod
    def _signal(process: subprocess.Popen, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)  # the group we created with start_new_session

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.options.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
