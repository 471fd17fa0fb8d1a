"""Settings of one hub process, each declared once (flag, TUNEHUB_* variable, default, help), from which
`tunehub serve`'s parser is generated; read once at start from the flags, else the environment."""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

QUIET_ENVIRONMENT = {
    # nothing phones home: no analytics, no telemetry, no tokenizer fork warnings
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # OpenMP threads that busy-wait between torch ops steal the cores from the other process when the
    # server and a training job (or a test client) share a small CPU machine: measured 10-30x slower steps.
    # Read when torch loads, so it must be set before the first `import torch`.
    "OMP_WAIT_POLICY": "PASSIVE",
    # ... but for about 0.1 ms after each op (libgomp's spin count; PASSIVE alone makes it 0): a decode step's
    # ops come microseconds apart, and a team woken for every one of them ran SmolLM2 bfloat16 at 16-17 tok/s
    # for one client with --threads 2 on the 2-core machine, 25-32 with the spin (serving.openmp). Serving
    # beside an SFT job did not slow down with it. Intel's OpenMP (KMP_BLOCKTIME) does not read it.
    "GOMP_SPINCOUNT": "10000",
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
class Option:
    """How a setting is given: its `tunehub serve` flag and its TUNEHUB_* variable (either may be None),
    the help both show, and the choices it takes. A flag beats the variable; the variable beats the
    default."""

    flag: str | None
    env: str | None
    help: str
    kind: Callable[[str], Any] = str  # reads a given value: str, int, float, Path or bool
    choices: tuple[str, ...] | None = None
    positive: bool = False  # must be above 0
    zero_allowed: bool = False  # must be 0 or more (0 turns it off)


def setting(
    default: Any = None,
    *,
    flag: str | None = None,
    env: str | None = None,
    help: str,
    kind: Callable[[str], Any] | None = None,
    **kw,
) -> Any:
    """A Settings field declared once: its default and how it is given (see Option); its kind is the
    default's type unless the default is None."""
    if kind is None:
        kind = Path if isinstance(default, Path) else str if default is None else type(default)
    option = Option(flag, env, help, kind, **kw)
    return field(default=default, metadata={"option": option})


@dataclass
class Settings:
    """Everything one hub process is told, each setting declared once: `tunehub serve`'s parser is
    generated from these declarations (`add_arguments`), `from_sources` reads the flags and the environment
    once at start, and the parts of the hub get values from here instead of reading the environment."""

    model: str | None = setting(
        flag="--model",
        help="hub id, local model directory or .gguf file (default: the self-built demo model); give it "
        "again to serve more base models beside the first, each with its own adapters",
    )
    more_models: list[str] = field(default_factory=list)  # the further --model values
    engine: str = setting(
        "auto",
        flag="--engine",
        help="inference engine (auto: vLLM with --vllm-url, or with a CUDA GPU and vllm on PATH; local "
        "otherwise)",
        choices=("auto", "local", "vllm"),
    )
    host: str = setting(
        "127.0.0.1", flag="--host", help="address to bind (non-loopback needs --admin-password and --api-key)"
    )
    port: int = setting(7860, flag="--port", help="TCP port of the UI and the API")
    data_dir: Path = setting(
        Path("./tunehub-data"), flag="--data-dir", help="models, adapters and the feedback database"
    )
    api_key: str | None = setting(
        flag="--api-key", env="TUNEHUB_API_KEY", help="require 'Authorization: Bearer KEY' on /v1"
    )
    admin_password: str | None = setting(
        flag="--admin-password",
        env="TUNEHUB_ADMIN_PASSWORD",
        help="password of admin actions and the UI's admin",
    )
    quantize: str = setting(
        "none", flag="--quantize", help="load the base through bitsandbytes", choices=("none", "8bit", "4bit")
    )
    dtype: str = setting(
        "auto",
        flag="--dtype",
        help="compute dtype (auto: bfloat16 on GPUs and CPUs that have it, else float16 on GPU, float32)",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    chat_template: str | None = setting(
        flag="--chat-template",
        help="a .jinja file or a shipped template (chatml, llama3, mistral, zephyr) for models without one",
    )
    threads: int | None = setting(
        kind=int,
        flag="--threads",
        help="CPU threads of the local engine's matmuls (default: all cores, less those other processes keep busy "
        "and one fewer while a training job of this hub runs; a count fixes it)",
    )
    max_lora_rank: int = setting(
        64, flag="--max-lora-rank", help="largest adapter rank accepted", positive=True
    )
    max_batch_size: int = setting(32, flag="--max-batch-size", help="rows decoded together", positive=True)
    served_model_name: str | None = setting(
        flag="--served-model-name", help="name of the base model on the API (default: its directory name)"
    )
    # limits (hub/limits.py)
    rate_limit_key: float = setting(
        0.0,
        flag="--rate-limit-key",
        help="requests per minute for the shared --api-key (0: no limit; 429 with Retry-After beyond it)",
        zero_allowed=True,
    )
    rate_limit_rater: float = setting(
        0.0,
        flag="--rate-limit-rater",
        help="requests per minute for each rater's API key (0: no limit); admins are never limited",
        zero_allowed=True,
    )
    rate_limit_burst: int = setting(
        10, flag="--rate-limit-burst", help="requests allowed at once", positive=True
    )
    max_concurrent_generations: int = setting(
        64,
        flag="--max-concurrent-generations",
        help="choices generating at once (API and UI together); more wait in a queue",
        positive=True,
    )
    max_queued_generations: int = setting(
        256,
        flag="--max-queued-generations",
        help="choices waiting for room; beyond that the API answers 503 and the UI an error, at once",
        zero_allowed=True,
    )
    generation_timeout_s: float = setting(
        600.0,
        flag="--generation-timeout",
        help="seconds a generation may take, queueing included, before it is cancelled",
        positive=True,
    )
    max_body_bytes: int = setting(
        8 * 1024 * 1024,
        flag="--max-body-bytes",
        help="largest API request body (413 beyond it)",
        positive=True,
    )
    # the arena and promotion
    arena_candidate_boost: float = setting(
        3.0,
        flag="--arena-boost",
        env="TUNEHUB_ARENA_BOOST",
        help="how many times as often the arena draws a candidate adapter as any other model",
        positive=True,
    )
    promotion_rule: str | None = setting(
        flag="--promotion-rule",
        env="TUNEHUB_PROMOTION_RULE",
        help="when a candidate may replace the promoted model: bt_lower_above_upper or win_rate",
        choices=("bt_lower_above_upper", "win_rate"),
    )
    promotion_win_rate: float | None = setting(
        kind=float,
        flag="--promotion-win-rate",
        env="TUNEHUB_PROMOTION_WIN_RATE",
        help="the win_rate rule's bar (0.55)",
    )
    promotion_min_votes: int | None = setting(
        kind=int,
        flag="--promotion-min-votes",
        env="TUNEHUB_PROMOTION_MIN_VOTES",
        help="votes between candidate and incumbent before the rule decides (30)",
    )
    promotion_max_accuracy_drop: float | None = setting(
        kind=float,
        flag="--promotion-max-accuracy-drop",
        env="TUNEHUB_PROMOTION_MAX_ACCURACY_DROP",
        help="the replay guard: largest fall in checkable accuracy (0.05 = 5 points)",
    )
    promotion_max_kl: float | None = setting(
        kind=float,
        flag="--promotion-max-kl",
        env="TUNEHUB_PROMOTION_MAX_KL",
        help="the replay guard: largest KL from the base (the hub's DPO and KTO jobs stop at it too)",
    )
    promotion_max_perplexity_rise: float | None = setting(
        kind=float,
        flag="--promotion-max-perplexity-rise",
        env="TUNEHUB_PROMOTION_MAX_PERPLEXITY_RISE",
        help="the replay guard: largest rise in held-out perplexity (0.10 = 10%%; the hub's SFT, DPO and KTO jobs "
        "stop at it too)",
    )
    auto_promote: bool = setting(
        False,
        flag="--auto-promote",
        env="TUNEHUB_AUTO_PROMOTE",
        help="promote every candidate the rule accepts, checked every --auto-promote-interval seconds",
    )
    auto_promote_interval_s: float = setting(
        60.0,
        flag="--auto-promote-interval",
        env="TUNEHUB_AUTO_PROMOTE_INTERVAL",
        help="seconds between automatic promotion checks",
        positive=True,
    )
    replay_prompts: str | None = setting(
        flag="--replay-prompts",
        env="TUNEHUB_REPLAY_PROMPTS",
        help="a JSONL prompt set for the regression replay (default: the set chosen for the base)",
    )
    auto_train: Path | None = setting(
        kind=Path,
        flag="--auto-train",
        env="TUNEHUB_AUTO_TRAIN",
        help="the automatic trigger's settings file (default: DATA_DIR/auto-train.json when it exists)",
    )

    @classmethod
    def options(cls) -> dict[str, Option]:
        """Each declared setting's Option, by field name."""
        return {f.name: f.metadata["option"] for f in fields(cls) if "option" in f.metadata}

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, names: Iterable[str] | None = None) -> None:
        """Add the flags of the declared settings (or of `names`) to `parser`; an unset flag stays None, so
        `from_sources` can tell it from a given one."""
        defaults = {f.name: f.default for f in fields(cls)}
        for name, option in cls.options().items():
            if option.flag is None or (names is not None and name not in names):
                continue
            default = defaults[name]
            shown = f" (default: {default})" if default not in (None, MISSING) else ""
            via = f"; or {option.env}" if option.env else ""
            kwargs: dict[str, Any] = {"dest": name, "default": None, "help": f"{option.help}{shown}{via}"}
            if name == "model":
                kwargs["action"] = "append"
            elif option.kind is bool:
                kwargs["action"] = "store_const"
                kwargs["const"] = True
            else:
                kwargs["type"] = option.kind
                kwargs["choices"] = option.choices
            parser.add_argument(option.flag, **kwargs)

    @classmethod
    def from_sources(
        cls, args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None
    ) -> Settings:
        """The settings from the given flags, else the TUNEHUB_* variables, else the defaults; read once at
        start. A variable that does not parse raises SettingsError naming it."""
        env = os.environ if env is None else env
        given = vars(args) if args is not None else {}
        values: dict[str, Any] = {}
        for name, option in cls.options().items():
            value = given.get(name)
            if value is None and option.env and env.get(option.env):
                raw = env[option.env]
                try:
                    value = _parse_env(raw, option.kind)
                except ValueError:
                    raise SettingsError(f"{option.env}={raw!r} is not a {_KIND_NAMES[option.kind]}") from None
                if option.choices and value not in option.choices:
                    raise SettingsError(f"{option.env}={raw!r} is not one of {', '.join(option.choices)}")
            if value is not None:
                values[name] = value
        models = values.pop("model", None) or []
        if isinstance(models, str):
            models = [models]
        if models:
            values["model"], values["more_models"] = models[0], list(models[1:])
        return cls(**values)

    def promotion_rule_values(self) -> dict[str, Any]:
        """The promotion rule's settings that were given (the rest keep the rule's defaults)."""
        given = {
            "kind": self.promotion_rule,
            "win_rate": self.promotion_win_rate,
            "min_votes": self.promotion_min_votes,
            "max_accuracy_drop": self.promotion_max_accuracy_drop,
            "max_kl": self.promotion_max_kl,
            "max_perplexity_rise": self.promotion_max_perplexity_rise,
        }
        return {k: v for k, v in given.items() if v is not None} | {"auto": self.auto_promote}

    def guard_bounds(self) -> dict[str, float]:
        """The promotion guard's bounds that were given, by the job params that watch them as a job trains
        (training/jobs/spec.py, GUARD_BOUNDS): a job the hub queues stops where its guard would refuse."""
        from training.jobs.spec import GUARD_BOUNDS

        given = self.promotion_rule_values()
        return {name: given[name] for name in GUARD_BOUNDS if name in given}

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
        from feedback.errors import Invalid
        from feedback.promotion_rule import PromotionRule

        try:
            PromotionRule(**self.promotion_rule_values())
        except Invalid as exc:
            raise SettingsError(f"the promotion rule: {exc.message}") from None
        for name, option in self.options().items():
            value = getattr(self, name)
            if value is None:
                continue
            given_as = option.flag or option.env
            if option.zero_allowed and not value >= 0:
                raise SettingsError(f"{given_as} {value} must be 0 or more")
            if option.positive and not value > 0:
                raise SettingsError(f"{given_as} {value} must be above 0")

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"


_KIND_NAMES = {str: "text", int: "whole number", float: "number", bool: "yes/no value", Path: "path"}


def _parse_env(raw: str, kind: Callable[[str], Any]) -> Any:
    """A TUNEHUB_* value read as `kind`; raises ValueError when it is not one."""
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(raw)
    return kind(raw)
