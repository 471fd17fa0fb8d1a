"""GGUF export (issue 16, item 1): an adapter merged into the demo model and written as one GGUF file loads back
with transformers (`gguf_file=`) and answers the checkable prompts as the merged model does (f16: identical
tokens for at least 95% of prompts; q8_0: accuracy within 2 points); tokenizer, special tokens and chat
template come along; an Ollama Modelfile is written beside it; qwen2 and mistral round-trip too; another
architecture, a bad quantization or an existing output is refused with the reason; `tunehub adapters export
--format gguf` prints the file. The slow test does the same round trip on SmolLM2-135M-Instruct.

Run: .venv/bin/python -m pytest tests/test_gguf_export.py -q        (add -m slow for SmolLM2)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feedback.errors import Invalid
from feedback.store import Store
from hub.adapters_service import AdapterService
from tests.support.adapters import make_lora_adapter
from tests.support.cli import tunehub
from training.demo.corpus import checkable_prompts, is_correct
from training.gguf_export import export_gguf
from training.merge import EXPORT_FILE, ExportError, load_merged
from training.replay import greedy_answers

PROMPTS = 100
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


@pytest.fixture(scope="module")
def lora(tmp_path_factory, full_demo_model):
    # small enough to keep the demo model's skills (so accuracy means something), large enough to move answers
    root = tmp_path_factory.mktemp("gguf")
    return make_lora_adapter(full_demo_model, root / "km", rank=4, seed=3, scale=0.1, targets=ATTENTION)


@pytest.fixture(scope="module")
def merged_answers(lora, full_demo_model):
    prompts = checkable_prompts(PROMPTS, seed=1616)
    model, tokenizer, _ = load_merged(lora, str(full_demo_model))
    tokenizer.padding_side = "left"
    return prompts, greedy_answers(model.eval(), tokenizer, prompts, 32), tokenizer


@pytest.fixture
def adapters(tmp_path, full_demo_model, lora):
    with Store(tmp_path / "data" / "feedback.db") as store:
        store.add_adapter("km", base=str(full_demo_model), method="lora", path=str(lora))
        yield AdapterService(store)


def load_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer.padding_side = "left"
    return model, tokenizer


def accuracy(prompts, replies) -> float:
    return sum(is_correct(p, r) for p, r in zip(prompts, replies, strict=True)) / len(prompts)


def test_f16_answers_as_the_merged_model_and_carries_tokenizer_template_and_modelfile(
    adapters, merged_answers
):
    prompts, expected, merged_tokenizer = merged_answers
    path = adapters.export("km", format="gguf")
    assert path == adapters.export_dir("km", "f16", "gguf") / "km-v1-f16.gguf" and path.is_file()
    model, tokenizer = load_gguf(path)
    # the tokenizer came along: the template renders the same text (less the {% generation %} markers
    # llama.cpp does not know), the text gets the same ids, the special tokens are the same
    template = tokenizer.chat_template
    assert "<|im_start|>" in template and "endgeneration" not in template and "- generation" not in template
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|pad|>")
    conversations = [p.messages + [{"role": "assistant", "content": "Paris."}] for p in prompts[:5]]
    assert tokenizer.apply_chat_template(
        conversations, tokenize=False
    ) == merged_tokenizer.apply_chat_template(conversations, tokenize=False)
    texts = merged_tokenizer.apply_chat_template(
        [p.messages for p in prompts], add_generation_prompt=True, tokenize=False
    )
    assert texts == tokenizer.apply_chat_template(
        [p.messages for p in prompts], add_generation_prompt=True, tokenize=False
    )
    for text in texts[:20]:
        assert (
            tokenizer(text, add_special_tokens=False)["input_ids"]
            == merged_tokenizer(text, add_special_tokens=False)["input_ids"]
        )
    got = greedy_answers(model, tokenizer, prompts, 32)
    same = sum(a == b for a, b in zip(expected, got, strict=True)) / len(prompts)
    assert same >= 0.95, same
    assert accuracy(prompts, expected) > 0.5  # the merged model still answers: the comparison means something

    modelfile = (path.parent / "Modelfile").read_text()
    assert "FROM ./km-v1-f16.gguf" in modelfile
    assert 'TEMPLATE """' in modelfile and "{{ .Content }}<|im_end|>" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    metadata = json.loads((path.parent / EXPORT_FILE).read_text())
    assert metadata["format"] == "gguf" and metadata["architecture"] == "llama"
    assert metadata["tokenizer"]["pre"] == "starcoder"  # digits one by one, then byte-level
    assert not [p for p in path.parent.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    with pytest.raises(Invalid, match="already exists"):
        adapters.export("km", format="gguf")  # never overwritten


def test_q8_0_keeps_the_accuracy_within_two_points(adapters, merged_answers, tmp_path):
    prompts, expected, _ = merged_answers
    path = adapters.export("km", tmp_path / "q8", quantize="q8_0", format="gguf")
    f16 = adapters.export("km", tmp_path / "f16", format="gguf")
    assert path.name == "km-v1-q8_0.gguf" and path.stat().st_size < 0.7 * f16.stat().st_size
    got = greedy_answers(*load_gguf(path), prompts, 32)
    assert abs(accuracy(prompts, got) - accuracy(prompts, expected)) <= 0.02


@pytest.mark.parametrize("model_type", ["qwen2", "mistral"])
def test_qwen2_and_mistral_round_trip(tmp_path, demo_model, model_type):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.support.tiny_models import tiny_config

    tokenizer = AutoTokenizer.from_pretrained(str(demo_model))
    config = tiny_config(model_type, tokenizer)
    config.sliding_window = None  # a GGUF of llama's layout keeps no window (llama.cpp writes mistral so)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(tmp_path / "full"))
    tokenizer.save_pretrained(str(tmp_path / "full"))

    path = export_gguf(tmp_path / "full", base=None, out=tmp_path / "out", name=model_type)
    loaded, _ = load_gguf(path)
    ids = torch.tensor([[0, 5, 9, 42, 77, 100, 3, 17, 250, 900, 11, 64]])
    with torch.no_grad():
        expected, got = model(ids).logits, loaded(ids).logits
    assert type(loaded).__name__ == ("Qwen2ForCausalLM" if model_type == "qwen2" else "LlamaForCausalLM")
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=1e-2)  # f16 weights
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.9


def test_bad_exports_are_refused_with_the_reason(tmp_path, demo_model, lora, full_demo_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.support.tiny_models import tiny_config

    with pytest.raises(ExportError, match="quantize 'q4_k' is not one of f16, q8_0 for gguf"):
        export_gguf(lora, base=str(full_demo_model), out=tmp_path / "x", quantize="q4_k")
    tokenizer = AutoTokenizer.from_pretrained(str(demo_model))
    AutoModelForCausalLM.from_config(tiny_config("gpt_neox", tokenizer)).save_pretrained(
        str(tmp_path / "neox")
    )
    tokenizer.save_pretrained(str(tmp_path / "neox"))
    with pytest.raises(
        ExportError, match=r"architecture 'gpt_neox' is not exported to GGUF: supported are llama, "
    ):
        export_gguf(tmp_path / "neox", base=None, out=tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_tunehub_adapters_export_gguf_prints_the_file(adapters, tmp_path):
    data_dir = str(adapters.store.path.parent)
    code, out, _ = tunehub(
        "adapters", "export", "km", "--format", "gguf", "--quantize", "q8_0", "--data-dir", data_dir
    )
    bad, _, err = tunehub(
        "adapters", "export", "km", "--format", "gguf", "--quantize", "4bit", "--data-dir", data_dir
    )
    printed = Path(out.strip())
    assert code == 0 and printed.name == "km-v1-q8_0.gguf" and printed.is_file()
    assert (printed.parent / "Modelfile").is_file()
    assert bad == 1 and "quantize '4bit' is not one of f16, q8_0 for gguf" in err


@pytest.mark.slow
def test_smollm2_round_trips_through_gguf(tmp_path, smollm2_dir):
    """SmolLM2-135M-Instruct (llama, 9 query heads over 3 key/value heads, GPT-2 style vocabulary of 49,152)."""
    lora = make_lora_adapter(smollm2_dir, tmp_path / "smol", rank=4, seed=3, scale=0.05)
    prompts = checkable_prompts(40, seed=1616)
    model, tokenizer, _ = load_merged(lora, str(smollm2_dir))
    tokenizer.padding_side = "left"
    expected = greedy_answers(model.eval(), tokenizer, prompts, 24)
    del model
    for quantize in ("f16", "q8_0"):
        path = export_gguf(lora, base=str(smollm2_dir), out=tmp_path / quantize, quantize=quantize)
        loaded, loaded_tokenizer = load_gguf(path)
        assert loaded_tokenizer.chat_template == tokenizer.chat_template
        got = greedy_answers(loaded, loaded_tokenizer, prompts, 24)
        del loaded
        if quantize == "f16":
            same = sum(a == b for a, b in zip(expected, got, strict=True)) / len(prompts)
            assert same >= 0.95, same
        else:
            assert abs(accuracy(prompts, got) - accuracy(prompts, expected)) <= 0.02
        assert "FROM ./smol-" in (path.parent / "Modelfile").read_text()
