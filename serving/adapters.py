"""Checks an adapter directory must pass before any engine loads it; a failed check changes nothing."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .engine import BASE_ADAPTER
from .errors import InvalidAdapter

ADAPTER_NAME = re.compile(r"[A-Za-z0-9._-][A-Za-z0-9._@-]{0,63}")  # "@" for versions: name@v2
WEIGHTS_FILE = "adapter_model.safetensors"


@dataclass(frozen=True)
class AdapterSpec:
    """What the checks learned about an adapter directory."""

    path: Path
    peft_type: str
    base_model: str
    rank: int
    target_modules: list[str]
    use_dora: bool
    modules_to_save: list[str]
    target_parameters: list[str] = field(default_factory=list)  # parameters adapted directly


def check_adapter_name(name: str, *, reserved: set[str] = frozenset()) -> None:
    if not isinstance(name, str) or not ADAPTER_NAME.fullmatch(name) or set(name) == {"."}:
        raise InvalidAdapter(
            f"adapter name {name!r} is not allowed: use 1 to 64 letters, digits, '.', '_', '-' or '@' (not first)",
            param="lora_name",
        )
    if name == BASE_ADAPTER or name in reserved:
        raise InvalidAdapter(f"adapter name {name!r} is reserved for the base model", param="lora_name")


def read_adapter_config(path: Path) -> dict:
    if not path.is_dir():
        raise InvalidAdapter(f"adapter path {str(path)!r} is not a directory", param="lora_path")
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise InvalidAdapter(f"adapter path {str(path)!r} has no adapter_config.json", param="lora_path")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidAdapter(f"{config_file} is not valid JSON: {exc}", param="lora_path") from exc
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{config_file} must hold a JSON object", param="lora_path")
    return config


def _module_matches(target: str, module_names: list[str]) -> bool:
    return any(name == target or name.endswith("." + target) for name in module_names)


def inspect_adapter(path: Path) -> AdapterSpec:
    """Read and sanity-check an adapter directory without knowing the model it will go on."""
    path = Path(path)
    config = read_adapter_config(path)
    if not (path / WEIGHTS_FILE).is_file():
        found = sorted(p.name for p in path.iterdir() if p.name.startswith("adapter_model"))
        detail = f" (found {', '.join(found)}; only safetensors are loaded)" if found else ""
        raise InvalidAdapter(f"adapter path {str(path)!r} has no {WEIGHTS_FILE}{detail}", param="lora_path")
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    rank_values = [config.get("r") or 0, *(config.get("rank_pattern") or {}).values()]
    try:
        rank = max(int(value) for value in rank_values)
    except (TypeError, ValueError) as exc:  # a malformed config is the caller's error, not a server error
        raise InvalidAdapter(
            f"{path / 'adapter_config.json'} has an invalid rank: r={config.get('r')!r}, "
            f"rank_pattern={config.get('rank_pattern')!r} (ranks are whole numbers)",
            param="lora_path",
        ) from exc
    return AdapterSpec(
        path=path,
        peft_type=str(config.get("peft_type", "")).upper(),
        base_model=str(config.get("base_model_name_or_path") or ""),
        rank=rank,
        target_modules=list(targets),
        use_dora=bool(config.get("use_dora")),
        modules_to_save=list(config.get("modules_to_save") or []),
        target_parameters=list(config.get("target_parameters") or []),
    )


def base_model_matches(declared: str, served_names: set[str]) -> bool:
    """An adapter's declared base matches when it names the served model by id, path or final path part."""
    if not declared:
        return True  # PEFT leaves it empty for models built in memory; shapes are checked on load
    candidates = {declared, declared.rstrip("/").rsplit("/", 1)[-1]}
    known = set(served_names) | {n.rstrip("/").rsplit("/", 1)[-1] for n in served_names}
    return bool(candidates & known)


@dataclass(frozen=True)
class LoraSupport:
    """What an engine can hot-load, and the advice its refusals give (each engine has its own way out)."""

    engine: str  # how a refusal names the engine: "this server runs", "vLLM serves"
    other_types: str  # what to do with an adapter that is not LoRA
    dora: str  # why DoRA is refused and what to do instead
    rank_advice: Callable[[AdapterSpec, int], str]  # the refusal of a rank outside 1..max_rank
    modules_to_save: str | None = None  # the refusal of whole saved modules; None when they load


LOCAL_LORA = LoraSupport(
    engine="this server runs",
    other_types="this engine serves LoRA adapters (merge other adapter types into full weights to serve them)",
    dora="which cannot share a batch with other adapters; merge it into full weights to serve it",
    rank_advice=lambda spec, max_rank: (
        f"has rank {spec.rank}; the allowed range is 1 to {max_rank} (raise --max-lora-rank to serve it)"
    ),
)


def check_lora_support(
    spec: AdapterSpec, *, served_names: set[str], max_rank: int, support: LoraSupport
) -> None:
    """Raise InvalidAdapter, naming the adapter and what to do, unless `support`'s engine can load it on a
    base served under one of `served_names`."""
    where = repr(str(spec.path))

    def refuse(reason: str) -> InvalidAdapter:
        return InvalidAdapter(f"adapter {where} {reason}", param="lora_path")

    if spec.peft_type != "LORA":
        raise refuse(f"is a {spec.peft_type or 'unknown'} adapter; {support.other_types}")
    if spec.use_dora:
        raise refuse(f"uses DoRA, {support.dora}")
    if spec.modules_to_save and support.modules_to_save:
        raise refuse(f"saves whole modules ({', '.join(spec.modules_to_save)}), {support.modules_to_save}")
    if not base_model_matches(spec.base_model, served_names):
        raise refuse(
            f"was trained on base model {spec.base_model!r}, but {support.engine} {sorted(served_names)[0]!r}"
        )
    if not 1 <= spec.rank <= max_rank:
        raise refuse(support.rank_advice(spec, max_rank))


def check_adapter_for_model(
    spec: AdapterSpec, *, module_names: list[str], served_names: set[str], max_rank: int
) -> None:
    """Raise InvalidAdapter unless the adapter fits the model it is about to be loaded on."""
    check_lora_support(spec, served_names=served_names, max_rank=max_rank, support=LOCAL_LORA)
    if spec.target_parameters:
        # PEFT turns target_modules="all-linear" on some fused mixture-of-experts layers (mixtral) into these
        raise InvalidAdapter(
            f"adapter {str(spec.path)!r} adapts parameters directly (target_parameters="
            f"{spec.target_parameters}, such as fused mixture-of-experts weights), which this engine cannot apply "
            "per row; train it with --target-modules naming linear layers (e.g. q_proj,k_proj,v_proj,o_proj) "
            "or merge it into full weights to serve it",
            param="lora_path",
        )
    if not spec.target_modules:
        raise InvalidAdapter(f"adapter {str(spec.path)!r} names no target_modules", param="lora_path")
    for target in spec.target_modules:
        regex_hit = (
            any(re.fullmatch(target, name) for name in module_names)
            if len(spec.target_modules) == 1
            else False
        )
        if not (_module_matches(target, module_names) or regex_hit):
            raise InvalidAdapter(
                f"adapter {str(spec.path)!r} targets module {target!r}, which the base model does not have",
                param="lora_path",
            )


def check_weight_shapes(spec: AdapterSpec, module_shapes: dict[str, tuple[int, int]]) -> None:
    """Compare LoRA A/B matrix shapes with the base model's linear layers, reading only file headers."""
    from safetensors import safe_open

    try:
        with safe_open(str(spec.path / WEIGHTS_FILE), framework="pt") as weights:
            shapes = {key: weights.get_slice(key).get_shape() for key in weights.keys()}  # noqa: SIM118
    except Exception as exc:
        raise InvalidAdapter(
            f"{spec.path / WEIGHTS_FILE} is not a readable safetensors file: {exc}", param="lora_path"
        ) from exc
    if not shapes:
        raise InvalidAdapter(f"{spec.path / WEIGHTS_FILE} holds no tensors", param="lora_path")
    for key, shape in shapes.items():
        for part, axis in ((".lora_A.weight", 1), (".lora_B.weight", 0)):
            if not key.endswith(part):
                continue
            module = key[: -len(part)].removeprefix("base_model.model.")
            if module not in module_shapes:
                raise InvalidAdapter(
                    f"adapter {str(spec.path)!r} has weights for module {module!r}, which the base model does not have",
                    param="lora_path",
                )
            in_features, out_features = module_shapes[module]
            expected = in_features if axis == 1 else out_features
            if len(shape) != 2 or shape[axis] != expected:
                raise InvalidAdapter(
                    f"adapter {str(spec.path)!r} has {key} of shape {list(shape)}, which does not fit the base "
                    f"model's {module} ({in_features} -> {out_features}); it was trained on another model",
                    param="lora_path",
                )
