"""A base causal LM with any number of LoRA adapters, run with one adapter per batch row (punica / S-LoRA style).

Each loaded adapter owns a slot. Every linear layer (nn.Linear, bitsandbytes' quantized linears, and GPT-2's
Conv1D, whose weight is stored [in, out]: PEFT marks its adapters fan_in_fan_out, but their A and B are the
same [r, in] and [out, r] and apply the same way) that some adapter targets keeps the LoRA weights of all
slots stacked, A^T as [slots, in, r_max] and (scaling * B)^T as [slots, r_max, out] (smaller ranks zero-padded,
slot 0 = the base = zeros), and a forward hook adds `x @ A^T[slot] @ B^T[slot]` to the layer's output row by
row: two batched matmuls per layer however many adapters the batch mixes, plain matmuls when every row is on
one adapter, nothing when no row's adapter targets the layer. The base model itself is left untouched.

Adapters are PEFT directories: the config is read with PEFT's LoraConfig and the safetensors weights by key,
but PEFT does not run. LoRA variants whose forward is not plain A-then-B (DoRA, aLoRA, ...) and adapters that
also carry whole modules or new token embeddings are refused. Only the engine's worker thread may touch it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .adapters import WEIGHTS_FILE
from .engine import BASE_ADAPTER
from .errors import InvalidAdapter

FIRST_CAPACITY = 8  # slots per stack, the base's included; doubled when every slot is taken
LORA_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight")
# LoraConfig fields that add something plain LoRA cannot apply per row; their value must be empty
UNSERVED_FIELDS = ("modules_to_save", "trainable_token_indices", "target_parameters", "layer_replication")


@dataclass(frozen=True)
class _Rows:
    """Which slot each row of the forward pass in flight uses."""

    slots: frozenset[int]
    index: torch.Tensor | None  # [rows] slot of each row; None when every row uses the same slot
    tokens: int = 1  # positions per row in this forward pass


class _LoraLayer:
    """One linear layer's LoRA weights for every slot, added to the layer's output by a forward hook."""

    def __init__(
        self,
        module: torch.nn.Module,
        shape: tuple[int, int],
        owner: MultiLoraModel,
        slots: int,
        dtype: torch.dtype,
    ) -> None:
        device = next(module.parameters()).device
        in_features, out_features = shape
        self.owner = owner
        self.a = torch.zeros(slots, in_features, 0, dtype=dtype, device=device)  # A^T per slot
        self.b = torch.zeros(slots, 0, out_features, dtype=dtype, device=device)  # (scaling * B)^T
        self.filled: set[int] = set()
        self.handle = module.register_forward_hook(self._add_lora)

    def resize(self, slots: int, rank: int) -> None:
        """Grow the stacks to at least `slots` slots and rank `rank`; the new room is zeros."""
        old_slots, old_rank = self.a.shape[0], self.a.shape[2]
        slots, rank = max(slots, old_slots), max(rank, old_rank)
        if (slots, rank) != (old_slots, old_rank):
            a = self.a.new_zeros(slots, self.a.shape[1], rank)
            b = self.b.new_zeros(slots, rank, self.b.shape[2])
            a[:old_slots, :, :old_rank] = self.a
            b[:old_slots, :old_rank] = self.b
            self.a, self.b = a, b

    def write(self, slot: int, a: torch.Tensor, b: torch.Tensor) -> None:
        """Put an adapter's A [r, in] and scaled B [out, r] into `slot`."""
        rank = a.shape[0]
        self.resize(slot + 1, rank)
        self.a[slot].zero_()
        self.b[slot].zero_()
        self.a[slot, :, :rank] = a.T
        self.b[slot, :rank] = b.T
        self.filled.add(slot)

    def clear(self, slot: int) -> None:
        if slot in self.filled:
            self.a[slot].zero_()
            self.b[slot].zero_()
            self.filled.discard(slot)

    def _add_lora(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        rows = self.owner.rows
        if rows is None or rows.slots.isdisjoint(self.filled):
            return output  # outside MultiLoraModel.forward, or no row's adapter targets this layer
        x = args[0].to(self.a.dtype)
        if rows.index is None:
            (slot,) = rows.slots
            delta = x @ self.a[slot] @ self.b[slot]
        else:
            index = rows.index.to(self.a.device)
            batch = index.shape[0]
            # [rows, ...] as most layers see it, or [rows * tokens, in]: every position flattened row by row
            # (OPT's fc1/fc2, MoE routers and shared experts); a subset of positions (an MoE expert) has no rows
            flattened = x.dim() == 2 and x.shape[0] == batch * rows.tokens
            if x.shape[0] != batch and not flattened:
                raise RuntimeError(
                    f"a LoRA layer got input of shape {list(x.shape)} for a batch of {batch} rows of "
                    f"{rows.tokens} positions; mixed adapters need the rows as the first dimension"
                )
            flat = x.reshape(batch, -1, x.shape[-1])
            delta = torch.bmm(torch.bmm(flat, self.a[index]), self.b[index]).view(output.shape)
        return output + delta.to(output.dtype)


class MultiLoraModel:
    def __init__(self, base: torch.nn.Module) -> None:
        self.base = base.eval()
        self.device = next(base.parameters()).device
        self.dtype = getattr(base, "dtype", torch.float32)  # quantized bases report their compute dtype
        self.module_names = [name for name, _ in base.named_modules()]
        self.module_shapes = {
            name: shape for name, m in base.named_modules() if (shape := lora_shape(m)) is not None
        }
        self.slots: dict[str, int] = {}  # adapter key -> slot; slot 0 is the base
        self.capacity = FIRST_CAPACITY
        self.layers: dict[str, _LoraLayer] = {}  # only the modules some loaded adapter targets
        self.rows: _Rows | None = None  # set for the duration of a forward pass

    @torch.inference_mode()
    def forward(self, ids, mask, positions, cache, adapter_names: list[str]) -> torch.Tensor:
        """One forward pass over the batch; returns the last position's logits [rows, vocab] on the CPU."""
        slots = [0 if name == BASE_ADAPTER else self.slots[name] for name in adapter_names]
        unique = frozenset(slots)
        index = torch.tensor(slots, device=self.device) if len(unique) > 1 else None
        self.rows = _Rows(unique, index, tokens=ids.shape[1])
        try:
            out = self.base(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        finally:
            self.rows = None
        return out.logits[:, -1, :].float().cpu()

    @torch.inference_mode()
    def token_logprobs(self, ids, mask, adapter_names: list[str]) -> torch.Tensor:
        """Teacher forcing over right-padded rows: [rows, length - 1] log p(ids[:, t + 1] | ids[:, :t + 1])."""
        slots = [0 if name == BASE_ADAPTER else self.slots[name] for name in adapter_names]
        unique = frozenset(slots)
        index = torch.tensor(slots, device=self.device) if len(unique) > 1 else None
        self.rows = _Rows(unique, index, tokens=ids.shape[1])
        try:
            logits = self.base(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        finally:
            self.rows = None
        return torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1).cpu()

    @torch.inference_mode()
    def load(self, key: str, path: Path) -> None:
        """Load the adapter at `path` under `key`; on failure the model is as it was."""
        try:
            weights = self._read(Path(path))
            slot = self._free_slot()
        except Exception as exc:
            raise InvalidAdapter(
                f"adapter {str(path)!r} could not be loaded: {exc}", param="lora_path"
            ) from exc
        try:
            for module, (a, b) in weights.items():
                layer = self.layers.get(module)
                if layer is None:
                    layer = self.layers[module] = _LoraLayer(
                        self.base.get_submodule(module),
                        self.module_shapes[module],
                        self,
                        self.capacity,
                        self.dtype,
                    )
                layer.write(slot, a, b)
        except Exception as exc:  # out of memory while growing a stack: take back what was written
            self._clear(slot)
            raise InvalidAdapter(
                f"adapter {str(path)!r} could not be loaded: {exc}", param="lora_path"
            ) from exc
        self.slots[key] = slot

    @torch.inference_mode()
    def delete(self, key: str) -> None:
        slot = self.slots.pop(key, None)
        if slot is not None:
            self._clear(slot)

    def _clear(self, slot: int) -> None:
        """Zero `slot` everywhere; a layer no adapter targets any more loses its hook (plain base again)."""
        for module, layer in list(self.layers.items()):
            layer.clear(slot)
            if not layer.filled:
                layer.handle.remove()
                del self.layers[module]

    def _free_slot(self) -> int:
        taken = set(self.slots.values())
        free = next((s for s in range(1, self.capacity) if s not in taken), None)
        if free is None:
            free, self.capacity = self.capacity, 2 * self.capacity
            for layer in self.layers.values():  # every stack must hold every slot a batch may index
                layer.resize(self.capacity, 0)
        return free

    def _read(self, path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """module name -> (A [r, in], scaling * B [out, r]) in the model's dtype, every shape checked."""
        from peft import LoraConfig
        from safetensors.torch import load_file

        config = LoraConfig.from_pretrained(str(path))
        refuse_unserved_features(config)
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for name, tensor in load_file(str(path / WEIGHTS_FILE)).items():
            match = LORA_KEY.fullmatch(name)
            if match is None:
                raise ValueError(
                    f"it holds {name!r}, which is not a LoRA A or B matrix (only LoRA on linear layers is "
                    "served; merge other trained weights into the base model)"
                )
            pairs.setdefault(match["module"], {})[match["part"]] = tensor
        if not pairs:
            raise ValueError(f"{WEIGHTS_FILE} holds no LoRA weights")
        weights = {}
        for module, pair in pairs.items():
            if module not in self.module_shapes:
                raise ValueError(f"it has weights for module {module!r}, which the base model does not have")
            if "A" not in pair or "B" not in pair:
                raise ValueError(f"module {module!r} has lora_A or lora_B but not both")
            a, b = pair["A"], pair["B"]
            rank = int(_pattern_value(config.rank_pattern, module, config.r))
            in_features, out_features = self.module_shapes[module]
            if tuple(a.shape) != (rank, in_features) or tuple(b.shape) != (out_features, rank):
                raise ValueError(
                    f"module {module!r} has lora_A {list(a.shape)} and lora_B {list(b.shape)}; "
                    f"rank {rank} on this model needs {[rank, in_features]} and {[out_features, rank]}"
                )
            alpha = float(_pattern_value(config.alpha_pattern, module, config.lora_alpha))
            scaling = alpha / math.sqrt(rank) if config.use_rslora else alpha / rank
            weights[module] = (a.to(self.dtype), (b.float() * scaling).to(self.dtype))
        return weights


def lora_shape(module: torch.nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a layer whose output LoRA adds x @ A^T @ B^T to; None for other layers.

    Linear layers (nn.Linear, bitsandbytes' Linear8bitLt / Linear4bit) say so; GPT-2's Conv1D stores its
    weight as [in, out] and says nf = out, nx = in.
    """
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D):
        return module.nx, module.nf
    if isinstance(getattr(module, "in_features", None), int) and isinstance(
        getattr(module, "out_features", None), int
    ):
        return module.in_features, module.out_features
    return None


def refuse_unserved_features(config) -> None:
    """Raise ValueError for LoRA configs whose forward pass is not plain A-then-B on linear layers."""
    fields = {field.name: field for field in dataclasses.fields(config)}
    variants = [
        name
        for name, field in fields.items()
        if field.metadata.get("is_lora_variant") and getattr(config, name)
    ]
    if config.init_lora_weights in fields["init_lora_weights"].metadata.get("lora_variants", []):
        variants.append(f"init_lora_weights={config.init_lora_weights!r}")
    if getattr(config, "use_qalora", False):
        variants.append("use_qalora")
    if variants:
        raise ValueError(
            f"it uses the LoRA variant {', '.join(variants)}, whose forward pass cannot share a batch with plain "
            "LoRA adapters; merge it into full weights to serve it"
        )
    for name in UNSERVED_FIELDS:
        if getattr(config, name, None):
            raise ValueError(
                f"it sets {name}={getattr(config, name)!r}, which rows on other adapters cannot share; "
                "merge it into full weights to serve it"
            )
    if getattr(config, "lora_bias", False):
        raise ValueError("it sets lora_bias=True (a bias on lora_B), which this engine does not apply")
    if config.bias not in ("none", "all", "lora_only"):
        raise ValueError(f"bias={config.bias!r} is not one of 'none', 'all', 'lora_only'")


def _pattern_value(patterns: dict | None, module: str, default):
    """The value of the first pattern that matches the module's name, as PEFT's get_pattern_key picks it."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default
