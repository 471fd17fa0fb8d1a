"""Before training: how much memory each method needs, how long a run takes and what it costs.

Rules of thumb, stated so they can be checked (bench/training.py measures peak memory on the demo model):

* parameters from the model's shape (a Llama-like decoder: attention with grouped KV heads, a gated MLP);
* weights as tunehub loads them on a GPU with bf16: fp32 when they train (mixed precision comes from
  autocast), bf16 for the frozen base under LoRA/DoRA/IA3, 4-bit NF4 for QLoRA (0.5 byte a weight plus its
  quantisation constants: 0.127 bits with double quantisation) with the embeddings in bf16;
* each trained parameter adds its fp32 gradient and AdamW's two moments: 12 bytes;
* activations per layer and token, in the compute dtype's bytes, 17 values of the hidden size (the
  34·s·b·h bytes of Korthikanti et al., 2022, for 16-bit, with flash attention: no s² term), plus the
  logits (fp32, with their gradient) for the whole batch; gradient checkpointing keeps only each layer's
  input, plus one layer's full activations during recomputation;
* time: forward 2·N FLOPs a token, backward 4·N when the weights are trained and 2·N when only adapters are
  (the weight gradients are skipped), at a utilisation (MFU) of the GPU's dense bf16 peak.

    from training.estimate import ModelShape, estimate
    shape = ModelShape.from_config(json.load(open("model/config.json")))
    for row in estimate(shape, seq_len=2048, batch_size=4, tokens=50e6, gpu=GPUS["H100"]): ...
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from training.methods import METHODS

GiB = 1024**3

# name -> memory (GiB), dense bf16 peak (TFLOP/s), on-demand price (USD per GPU-hour). The prices are
# typical cloud list prices at the time of writing and change often: edit a copy (`tunehub estimate
# --write-prices FILE`) and pass it with --prices.
DEFAULT_GPUS: dict[str, dict[str, float]] = {
    "T4": {"memory_gib": 16, "tflops": 65, "usd_per_hour": 0.35},
    "L4": {"memory_gib": 24, "tflops": 121, "usd_per_hour": 0.80},
    "A10G": {"memory_gib": 24, "tflops": 125, "usd_per_hour": 1.00},
    "RTX4090": {"memory_gib": 24, "tflops": 165, "usd_per_hour": 0.70},
    "L40S": {"memory_gib": 48, "tflops": 362, "usd_per_hour": 1.90},
    "A100-40GB": {"memory_gib": 40, "tflops": 312, "usd_per_hour": 1.80},
    "A100-80GB": {"memory_gib": 80, "tflops": 312, "usd_per_hour": 2.40},
    "H100": {"memory_gib": 80, "tflops": 989, "usd_per_hour": 3.50},
    "H200": {"memory_gib": 141, "tflops": 989, "usd_per_hour": 4.50},
}

# Reference shapes for `--params 7B` when there is no config to read (Qwen2.5 / Llama families).
REFERENCE_SHAPES: dict[str, dict[str, int]] = {
    "0.5B": dict(vocab=151936, hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2, tied=1),
    "1.5B": dict(vocab=151936, hidden=1536, intermediate=8960, layers=28, heads=12, kv_heads=2, tied=1),
    "3B": dict(vocab=151936, hidden=2048, intermediate=11008, layers=36, heads=16, kv_heads=2, tied=1),
    "7B": dict(vocab=32000, hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, tied=0),
    "8B": dict(vocab=128256, hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, tied=0),
    "13B": dict(vocab=32000, hidden=5120, intermediate=13824, layers=40, heads=40, kv_heads=40, tied=0),
    "32B": dict(vocab=152064, hidden=5120, intermediate=27648, layers=64, heads=40, kv_heads=8, tied=0),
    "70B": dict(vocab=128256, hidden=8192, intermediate=28672, layers=80, heads=64, kv_heads=8, tied=0),
}


@dataclass(frozen=True)
class ModelShape:
    """The sizes that decide a decoder's memory: vocabulary, widths, depth, heads."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    tied: bool = False

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        """From a Hugging Face config.json (Llama, Qwen2, Mistral and other Llama-like decoders)."""
        try:
            heads = config["num_attention_heads"]
            return cls(
                vocab=config["vocab_size"],
                hidden=config["hidden_size"],
                intermediate=config["intermediate_size"],
                layers=config["num_hidden_layers"],
                heads=heads,
                kv_heads=config.get("num_key_value_heads") or heads,
                tied=bool(config.get("tie_word_embeddings", False)),
            )
        except KeyError as e:
            raise ValueError(
                f"the model config has no {e.args[0]!r}: estimates need a Llama-like decoder config"
            ) from None

    @classmethod
    def from_size(cls, size: str) -> ModelShape:
        """The reference shape closest to a size such as '7B' or '0.5b'."""
        try:
            wanted = float(size.strip().upper().removesuffix("B"))
        except ValueError:
            raise ValueError(f"--params {size!r} is not a size like 0.5B or 7B") from None
        if not wanted > 0:
            raise ValueError(f"--params {size!r} must be a positive size like 0.5B or 7B")
        name = min(REFERENCE_SHAPES, key=lambda k: abs(math.log(float(k[:-1]) / wanted)))
        return cls(**REFERENCE_SHAPES[name])

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer in one decoder layer."""
        kv = self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def layer_parameters(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values()) + 2 * self.hidden

    @property
    def embedding_parameters(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def parameters(self) -> int:
        return self.layers * self.layer_parameters + self.embedding_parameters + self.hidden


@dataclass(frozen=True)
class Estimate:
    """One method's estimate; memory in bytes, time in hours (None without a token count)."""

    method: str
    trainable: int
    weights: float
    optimizer: float  # gradients and AdamW moments of the trained parameters
    activations: float
    hours: float | None
    usd: float | None

    @property
    def total(self) -> float:
        return self.weights + self.optimizer + self.activations

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def trainable_parameters(shape: ModelShape, method: str, lora_rank: int = 16, freeze_layers: int = 2) -> int:
    """Parameters the method trains (LoRA-family adapters on every linear layer, as `auto` targets do)."""
    linears = shape.linear_shapes()
    if method == "full":
        return shape.parameters
    if method == "freeze":  # the last layers, the final norm and the head
        return freeze_layers * shape.layer_parameters + shape.vocab * shape.hidden + shape.hidden
    if method in ("lora", "qlora", "dora"):
        per_layer = sum(lora_rank * (a + b) for a, b in linears.values())
        if method == "dora":  # a magnitude per output feature
            per_layer += sum(b for _, b in linears.values())
        return shape.layers * per_layer
    if method == "ia3":  # a vector per adapted layer: k, v and the MLP input (PEFT's Llama defaults)
        return shape.layers * (linears["k_proj"][1] + linears["v_proj"][1] + linears["down_proj"][0])
    raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")


def estimate(
    shape: ModelShape,
    *,
    seq_len: int,
    batch_size: int,
    gpu: dict[str, float] | None = None,
    tokens: float | None = None,
    methods: tuple[str, ...] = METHODS,
    lora_rank: int = 16,
    freeze_layers: int = 2,
    gradient_checkpointing: bool = True,
    mfu: float = 0.35,
    gpus: int = 1,
) -> list[Estimate]:
    """Memory per method for one device's micro-batch of `batch_size` x `seq_len` tokens; with `tokens`
    (the whole run: dataset tokens x epochs) and a `gpu` entry, time and cost on `gpus` such devices."""
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size), ("gpus", gpus)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu!r}")
    if tokens is not None and not tokens > 0:
        raise ValueError(f"tokens must be positive, got {tokens!r}")
    n = shape.parameters
    s, b, h, L = seq_len, batch_size, shape.hidden, shape.layers
    act_bytes = 2  # activations in bf16/fp16 under autocast
    per_layer = 17 * s * b * h * act_bytes
    layers = 2 * s * b * h * L + per_layer if gradient_checkpointing else per_layer * L
    logits = 2 * s * b * shape.vocab * 4  # fp32 logits and their gradient
    rows = []
    for method in methods:
        trainable = trainable_parameters(shape, method, lora_rank, freeze_layers)
        if method == "qlora":  # 4-bit linear layers, the embeddings and norms stay 16-bit
            quantized = L * sum(a * o for a, o in shape.linear_shapes().values())
            weights = quantized * (0.5 + 0.127 / 8) + (n - quantized) * 2 + trainable * 4
        else:
            weights = n * 4 if method in ("full", "freeze") else n * 2 + trainable * 4
        optimizer = trainable * 12
        activations = layers + logits
        if method == "dora":  # the weight norm needs each adapted weight once more in the compute dtype
            activations += max(a * o for a, o in shape.linear_shapes().values()) * 4
        hours = usd = None
        if tokens is not None and gpu is not None:
            # gradients of the activations (2N) reach every layer an adapter is on; weight gradients (2N) only
            # where weights train; freeze tuning stops the backward pass below its last layers
            backward = {"full": 4.0, "freeze": 4.0 * trainable / n}.get(method, 2.0)
            flops = (2 + backward + (2 if gradient_checkpointing else 0)) * n * tokens
            hours = flops / (gpu["tflops"] * 1e12 * mfu * gpus) / 3600
            usd = hours * gpus * gpu["usd_per_hour"]
        rows.append(Estimate(method, trainable, weights, optimizer, activations, hours, usd))
    return rows


def load_gpus(path: Path | None) -> dict[str, dict[str, float]]:
    """The GPU table: the defaults, or a JSON file of the same shape (entries there override or add)."""
    table = {name: dict(entry) for name, entry in DEFAULT_GPUS.items()}
    if path is None:
        return table
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"GPU price table {str(path)!r} could not be read: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"GPU price table {str(path)!r} must map GPU names to entries")
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise ValueError(f"GPU price table {str(path)!r}: entry {name!r} must be an object")
        merged = {**table.get(name, {}), **entry}
        for key in ("memory_gib", "tflops", "usd_per_hour"):
            value = merged.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(
                    f"GPU price table {str(path)!r}: {name}.{key} must be a number >= 0, got {value!r}"
                )
        table[name] = merged
    return table


def format_table(rows: list[Estimate], gpu: dict[str, float] | None) -> str:
    """A plain-text table: one row per method, memory per device (GiB, or MiB for small models), whether it
    fits, time and cost."""
    unit, scale = ("GiB", GiB) if max(r.total for r in rows) >= GiB else ("MiB", 1024**2)
    timed = any(r.hours is not None for r in rows)
    head = f"{'method':<7} {'trainable':>13} {'weights':>8} {'optim':>8} {'activ':>8} {'total':>8}"
    head += "  fits" if gpu is not None else ""
    head += f" {'hours':>9} {'USD':>9}" if timed else ""
    lines = [head + f"   (memory in {unit})"]
    for r in rows:
        line = (
            f"{r.method:<7} {r.trainable:>13,} {r.weights / scale:>8.2f} {r.optimizer / scale:>8.2f} "
            f"{r.activations / scale:>8.2f} {r.total / scale:>8.2f}"
        )
        if gpu is not None:  # 10% kept for the CUDA context, allocator fragmentation and buffers
            line += "  yes " if r.total / GiB <= 0.9 * gpu["memory_gib"] else "  no  "
        if r.hours is not None and r.usd is not None:
            line += f" {r.hours:>9.3g} {r.usd:>9.3g}"
        lines.append(line)
    return "\n".join(lines)
