"""Settings of one hub process, from CLI flags and TUNEHUB_* environment variables."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

QUIET_ENVIRONMENT = {
    # nothing phones home: no analytics, no telemetry, no tokenizer fork warnings
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # OpenMP threads that busy-wait between torch ops steal the cores from the other process when the
    # server and a training job (or a test client) share a small CPU machine: measured 10-30x slower steps.
    # Read when torch loads, so it must be set before the first `import torch`.
    "OMP_WAIT_POLICY": "PASSIVE",
}


def quiet_environment() -> None:
    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


class SettingsError(ValueError):
    """A setting that makes the hub refuse to start; the message says what to change."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class LimitFlag:
    """A `tunehub serve` flag for one of the limits of hub/limits.py; the Settings field gives its default."""

    setting: str  # the Settings field it sets
    flag: str
    help: str
    zero_allowed: bool = False  # 0 turns the limit off


LIMIT_FLAGS = (
    LimitFlag(
        "rate_limit_key",
        "--rate-limit-key",
        "requests per minute for the shared --api-key (0: no limit; 429 with Retry-After beyond it)",
        zero_allowed=True,
    ),
    LimitFlag(
        "rate_limit_rater",
        "--rate-limit-rater",
        "requests per minute for each rater's API key (0: no limit); admins are never limited",
        zero_allowed=True,
    ),
    LimitFlag("rate_limit_burst", "--rate-limit-burst", "requests allowed at once"),
    LimitFlag(
        "max_concurrent_generations",
        "--max-concurrent-generations",
        "choices generating at once; more wait in a queue",
    ),
    LimitFlag(
        "max_queued_generations",
        "--max-queued-generations",
        "choices waiting for room; beyond that requests get 503 at once",
        zero_allowed=True,
    ),
    LimitFlag(
        "generation_timeout_s",
        "--generation-timeout",
        "seconds a generation may take, queueing included, before it is cancelled",
    ),
    LimitFlag("max_body_bytes", "--max-body-bytes", "largest API request body (413 beyond it)"),
)


@dataclass
class Settings:
    model: str | None = None  # a hub id, local directory or GGUF file; None: the self-built demo model
    # further base models served beside the first (`--model` given again), each by an engine of its own
    more_models: list[str] = field(default_factory=list)
    engine: str = "auto"
    host: str = "127.0.0.1"
    port: int = 7860
    data_dir: Path = Path("./tunehub-data")
    api_key: str | None = field(default_factory=lambda: os.environ.get("TUNEHUB_API_KEY") or None)
    admin_password: str | None = field(
        default_factory=lambda: os.environ.get("TUNEHUB_ADMIN_PASSWORD") or None
    )
    quantize: str = "none"
    dtype: str = "auto"  # compute dtype of the local engine (serving/loader.pick_dtype)
    chat_template: str | None = None  # a .jinja file or a shipped name, for models without a template
    threads: int | None = None  # CPU threads of the local engine; None: all cores but one (serving.loader)
    max_lora_rank: int = 64
    max_batch_size: int = 32
    served_model_name: str | None = None
    # limits (hub/limits.py); 0 turns a rate limit off
    rate_limit_key: float = 0.0  # requests per minute for the shared --api-key (and keyless callers)
    rate_limit_rater: float = 0.0  # requests per minute for each rater's own API key
    rate_limit_burst: int = 10  # requests a caller may send at once before the per-minute rate applies
    max_concurrent_generations: int = 64  # choices generating at once (the engine batches up to 32)
    max_queued_generations: int = 256  # choices waiting for room; beyond that 503 at once
    generation_timeout_s: float = 600.0  # a generation (queue wait included) is cancelled after this
    max_body_bytes: int = 8 * 1024 * 1024  # larger API request bodies get 413
    # how many times as often the arena draws a candidate adapter as any other model
    arena_candidate_boost: float = field(
        default_factory=lambda: float(os.environ.get("TUNEHUB_ARENA_BOOST") or 3.0)
    )

    def check(self) -> None:
        if not is_loopback(self.host) and not (self.admin_password and self.api_key):
            missing = " and ".join(
                name
                for name, value in (("--admin-password", self.admin_password), ("--api-key", self.api_key))
                if not value
            )
            raise SettingsError(
                f"refusing to listen on {self.host}: binding to anything but loopback needs {missing} "
                "(or TUNEHUB_ADMIN_PASSWORD / TUNEHUB_API_KEY), so nobody else can use or change this hub"
            )
        if not 0 < self.port < 65536:
            raise SettingsError(f"--port {self.port} is not a TCP port (1-65535)")
        if self.max_lora_rank < 1:
            raise SettingsError(f"--max-lora-rank {self.max_lora_rank} must be at least 1")
        if not self.arena_candidate_boost > 0:
            raise SettingsError(f"TUNEHUB_ARENA_BOOST {self.arena_candidate_boost} must be a number above 0")
        for limit in LIMIT_FLAGS:
            value = getattr(self, limit.setting)
            if limit.zero_allowed and not value >= 0:
                raise SettingsError(f"{limit.flag} {value} must be 0 or more")
            if not limit.zero_allowed and not value > 0:
                raise SettingsError(f"{limit.flag} {value} must be above 0")
        if self.max_batch_size < 1:
            raise SettingsError(f"--max-batch-size {self.max_batch_size} must be at least 1")

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"
