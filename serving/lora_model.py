"""A base causal LM with any number of LoRA adapters, run with one adapter per batch row.

PEFT holds the adapters under internal keys; `forward` passes `adapter_names=[...]` so rows on different
adapters (or on the base, "__base__") share one batch. Only the engine's worker thread may touch it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import InvalidAdapter


class MultiLoraModel:
    def __init__(self, base: torch.nn.Module) -> None:
        self.base = base.eval()
        self.peft = None  # a PeftModel once the first adapter is loaded
        self.device = next(base.parameters()).device
        self.module_names = [name for name, _ in base.named_modules()]
        self.module_shapes = {
            name: (m.in_features, m.out_features)
            for name, m in base.named_modules()
            if hasattr(m, "in_features") and hasattr(m, "out_features")
        }

    def forward(self, ids, mask, positions, cache, adapter_names: list[str]) -> torch.Tensor:
        """One forward pass over the batch; returns the last position's logits [rows, vocab] on the CPU."""
        kwargs = dict(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        if self.peft is None:
            out = self.base(**kwargs)
        else:
            out = self.peft(**kwargs, adapter_names=adapter_names)
        return out.logits[:, -1, :].float().cpu()

    def load(self, key: str, path: Path) -> None:
        """Load the adapter at `path` under `key`; on failure the model is as it was."""
        from peft import PeftModel

        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(
                    self.base, str(path), adapter_name=key, is_trainable=False
                )
                self.peft.eval()
            else:
                self.peft.load_adapter(str(path), adapter_name=key, is_trainable=False)
        except Exception as exc:
            if self.peft is None:
                self._strip_adapter_layers()
            else:
                self.delete(key)
            raise InvalidAdapter(
                f"adapter {str(path)!r} could not be loaded: {exc}", param="lora_path"
            ) from exc

    def delete(self, key: str) -> None:
        if self.peft is None or key not in self.peft.peft_config:
            return
        if len(self.peft.peft_config) == 1:
            # PEFT cannot run with zero adapters: take the LoRA layers out and go back to the plain base
            self.base = self.peft.unload().eval()
            self.peft = None
        else:
            self.peft.delete_adapter(key)
            if self.peft.active_adapter not in self.peft.peft_config:
                # PEFT picks the next active adapter from the first LoRA layer; when the remaining adapters
                # target other modules it picks none and every forward raises KeyError. Rows name their own
                # adapter, so any remaining one will do as the active one.
                self.peft.set_adapter(next(iter(self.peft.peft_config)), inference_mode=True)

    def _strip_adapter_layers(self) -> None:
        """Undo a first load that failed half-way: PEFT wraps the base's layers in place before it reads the
        weights, and a wrapped layer with random LoRA weights would silently change every base answer."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for name, module in list(self.base.named_modules()):
            if isinstance(module, BaseTunerLayer):
                parent_name, _, child = name.rpartition(".")
                setattr(self.base.get_submodule(parent_name), child, module.get_base_layer())
