"""Loading a model for a method plan: 4-bit weights, the parent adapter, frozen layers, checked targets; its
tokenizer with the chat template the run gives it.

from training.models import load_model, load_tokenizer
tokenizer = load_tokenizer("path/to/base", chat_template=None)
model, peft_config = load_model("path/to/base", plan, task="causal_lm", tokenizer=tokenizer, precision="bf16")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.methods import MethodPlan


def load_tokenizer(model: str, chat_template: str | None = None, *, conversational: bool = True):
    """The base's tokenizer, with `chat_template` (template text or a .jinja file's path) replacing its own.

    Conversational rows need a chat template: a base without one (and no `chat_template`) is refused with
    the flag that gives it one. Plain prompt/completion strings train without one.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template:
        tokenizer.chat_template = read_chat_template(chat_template)
    if conversational and not tokenizer.chat_template:
        raise ValueError(
            f"the tokenizer of {model!r} has no chat template, and these rows are conversations: give it one with "
            "--chat-template (a shipped name such as chatml or llama3, or a .jinja file; the stage's "
            "chat_template setting takes the template text or a file), or train on plain prompt/completion strings"
        )
    return tokenizer


def read_chat_template(value: str) -> str:
    """The template text of `value`: the path of a .jinja file, or the template itself."""
    text = value
    if "{" not in value:  # every template has a {% %} or {{ }}: this is a file name
        path = Path(value).expanduser()
        if not path.is_file():
            raise ValueError(
                f"chat_template {value!r} is neither a Jinja template nor a readable file "
                "(shipped names such as chatml are resolved by `tunehub train --chat-template`)"
            )
        text = path.read_text()
    if "{{" not in text and "{%" not in text:
        raise ValueError(f"chat_template {value[:60]!r} holds no Jinja template")
    return text


def load_config(model_name: str, **overrides):
    """The base's config, without the `quantization_config` (quant_method "gguf") that a model loaded from a
    GGUF file and saved keeps: its weights are already dequantised, and trainers refuse to train a model
    that says it is GGUF-quantised."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_name, **overrides)
    quant = getattr(config, "quantization_config", None)
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    if str(getattr(method, "value", method) or "").lower() == "gguf":
        del config.quantization_config
    return config


# -- the model ------------------------------------------------------------------------------------------


def load_model(
    model_name: str,
    plan: MethodPlan,
    *,
    task: str,
    tokenizer,
    parent: Path | None = None,
    seed: int = 0,
    precision: str = "fp32",
) -> tuple[Any, Any]:
    """(model, peft_config for the trainer): the base loaded for `plan`, with the parent adapter applied.

    `precision` is the run's resolved one (`training.methods.resolve_precision`). With a parent the returned
    model is already a trainable PeftModel and the trainer gets no peft_config; full and freeze tuning merge
    the parent into the base weights first.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed

    from training.trl_patches import score_only_labelled_positions

    score_only_labelled_positions()  # every trainer scores through this model: no softmax over prompt tokens
    set_seed(seed)  # new weights (a reward head, adapter matrices) start the same for the same seed
    kwargs = dict(plan.model_kwargs)
    if "quantization_config" not in kwargs:
        # Trained weights stay fp32 (mixed precision comes from autocast). A frozen base under an adapter
        # is only read, so in a bf16 run (a GPU or CPU with bf16) it is loaded in bf16: half the memory, and
        # no cast of every weight at every autocast matmul (PEFT keeps the adapter's own weights in fp32; a
        # reward model's head, trained in full, stays fp32 with its model).
        frozen_bf16 = plan.trains_adapter and task == "causal_lm" and precision == "bf16"
        kwargs["dtype"] = torch.bfloat16 if frozen_bf16 else torch.float32
    if task == "seq_cls":
        config = load_config(model_name, num_labels=1, pad_token_id=tokenizer.pad_token_id)
        auto_class = AutoModelForSequenceClassification
    else:
        config = load_config(model_name)
        auto_class = AutoModelForCausalLM
    model = auto_class.from_pretrained(model_name, config=config, **kwargs)
    if model.config.pad_token_id is None:  # sequence classification needs it to find the last token
        model.config.pad_token_id = tokenizer.pad_token_id
    peft_config = plan.peft_config
    if peft_config is not None:
        check_targets(model, peft_config)
    if parent is not None:
        model = _apply_parent(model, parent, plan, task)
        if plan.trains_adapter:
            peft_config = None
    if plan.freeze_layers is not None:
        apply_freeze(model, plan.freeze_layers)
    return model, peft_config


def check_targets(model, peft_config) -> None:
    """Every named target module exists in the model (PEFT's own error does not list what does)."""
    targets = peft_config.target_modules
    if targets is None or isinstance(targets, str):
        return
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, _linear())})
        raise ValueError(
            f"target_modules names {missing[0]!r}, which {type(model).__name__} does not have; "
            f"its linear layers are {', '.join(leaves)}"
        )


def _linear():
    import torch

    return torch.nn.Linear


def _name(value) -> str:
    """An enum member or the plain string a loaded adapter_config.json holds."""
    return str(getattr(value, "value", value) or "")


def _apply_parent(model, parent: Path, plan: MethodPlan, task: str):
    from peft import (
        PeftConfig,
        PeftModel,
        get_peft_model,
        get_peft_model_state_dict,
        set_peft_model_state_dict,
    )
    from peft.utils import load_peft_weights

    parent_config = PeftConfig.from_pretrained(str(parent))
    if not plan.trains_adapter:
        return PeftModel.from_pretrained(model, str(parent)).merge_and_unload()
    wanted = plan.peft_config
    parent_kind = (
        "dora" if getattr(parent_config, "use_dora", False) else _name(parent_config.peft_type).lower()
    )
    wanted_kind = "dora" if getattr(wanted, "use_dora", False) else _name(wanted.peft_type).lower()
    if parent_kind != wanted_kind:
        raise ValueError(
            f"parent_adapter {str(parent)!r} is a {parent_kind} adapter, but method is {plan.method!r}; "
            f"train with --method {parent_kind} (or qlora for a LoRA parent on a 4-bit base)"
        )
    parent_task, wanted_task = _name(parent_config.task_type), _name(wanted.task_type)
    if parent_task == wanted_task:
        return PeftModel.from_pretrained(model, str(parent), is_trainable=True)
    # A causal-LM adapter as the start of a reward model: same layers, plus a new score head.
    parent_config.task_type = wanted.task_type
    parent_config.modules_to_save = wanted.modules_to_save
    parent_config.inference_mode = False
    peft_model = get_peft_model(model, parent_config)
    weights = get_peft_model_state_dict(peft_model)  # the parent has no score head: keep the new one
    parent_weights = load_peft_weights(str(parent))
    unknown = sorted(set(parent_weights) - set(weights))
    if unknown:
        raise ValueError(f"parent_adapter {str(parent)!r} has weights this model lacks, e.g. {unknown[0]!r}")
    weights.update(parent_weights)
    set_peft_model_state_dict(peft_model, weights)
    return peft_model


# -- freeze tuning ------------------------------------------------------------------------------------


def decoder_layers(model) -> Any:
    """The model's stack of decoder layers: the ModuleList as long as `config.num_hidden_layers`."""
    import torch

    n_layers = model.config.get_text_config().num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError(f"cannot find the {n_layers} decoder layers of {type(model).__name__} for freeze tuning")


def apply_freeze(model, n_layers: int) -> list[str]:
    """Freeze everything but the last `n_layers` decoder layers, the final norm and the head; returns their names.

    The head is the LM head (with tied embeddings that is the input embedding too) or a classifier `score`.
    """
    layers = decoder_layers(model)
    if n_layers > len(layers):
        raise ValueError(f"freeze_layers is {n_layers}, but the model has only {len(layers)} decoder layers")
    for param in model.parameters():
        param.requires_grad_(False)
    trained = list(layers[len(layers) - n_layers :])
    head = model.get_output_embeddings() or getattr(model, "score", None)
    if head is not None:
        trained.append(head)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    norm = getattr(decoder, "norm", None)
    if norm is not None:
        trained.append(norm)
    for module in trained:
        for param in module.parameters():
            param.requires_grad_(True)
    return [name for name, param in model.named_parameters() if param.requires_grad]
