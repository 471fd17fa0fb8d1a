"""Merge-and-export (issue 4, item 5): an adapter merged into the demo model gives the same logits as the
PeftModel and loads with plain AutoModelForCausalLM; 8-bit and 4-bit exports save and load on CPU with
bitsandbytes; an existing output is refused; `tunehub adapters export` prints the new directory.

Run: .venv/bin/python -m pytest tests/test_adapters_export.py -q
"""

from __future__ import annotations

import json

import pytest

from feedback.errors import Invalid
from feedback.store import Store
from hub.adapters_service import AdapterService
from tests.support.adapters import make_lora_adapter
from tests.support.cli import tunehub
from training.merge import EXPORT_FILE, ExportError, export_merged

PROMPT = [[1, 5, 9, 42, 77, 100, 3]]


@pytest.fixture(scope="module")
def lora(tmp_path_factory, demo_model):
    return make_lora_adapter(demo_model, tmp_path_factory.mktemp("export") / "km", rank=4, seed=3)


@pytest.fixture
def adapters(tmp_path, demo_model, lora):
    with Store(tmp_path / "data" / "feedback.db") as store:
        store.add_adapter("km", base=str(demo_model), method="lora", path=str(lora), metrics={"stage": "sft"})
        yield AdapterService(store)


def logits(model):
    import torch

    with torch.no_grad():
        return model(torch.tensor(PROMPT)).logits.float()


def test_the_merged_model_answers_as_the_peft_model_and_loads_plainly(adapters, demo_model, lora):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = adapters.export("km")
    assert out == adapters.export_dir("km") and out.name == "km-v1"
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(demo_model)), str(lora))
    merged = AutoModelForCausalLM.from_pretrained(str(out))  # no PEFT: plain weights
    assert not any("lora" in name for name, _ in merged.named_parameters())
    expected, got = logits(peft_model), logits(merged)
    assert not torch.allclose(expected, logits(AutoModelForCausalLM.from_pretrained(str(demo_model))))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert AutoTokenizer.from_pretrained(str(out)).chat_template  # the chat template came along
    metadata = json.loads((out / EXPORT_FILE).read_text())
    assert metadata["merged"] and metadata["quantize"] == "none"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary directory left
    with pytest.raises(Invalid, match="already exists"):
        adapters.export("km")  # never overwritten


@pytest.mark.parametrize(("quantize", "layer"), [("8bit", "Linear8bitLt"), ("4bit", "Linear4bit")])
def test_quantized_exports_save_and_load_on_cpu(adapters, tmp_path, quantize, layer):
    import torch
    from transformers import AutoModelForCausalLM

    out = adapters.export("km", tmp_path / f"km-{quantize}", quantize=quantize)
    model = AutoModelForCausalLM.from_pretrained(str(out), device_map="cpu")
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == layer
    full = AutoModelForCausalLM.from_pretrained(str(adapters.export("km", tmp_path / "full")))
    got, expected = logits(model), logits(full)
    assert torch.isfinite(got).all()
    # quantization moves the logits a little, not the answer: the top token mostly agrees
    agree = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
    assert agree >= 0.7, agree


def test_bad_exports_are_refused_with_the_reason(tmp_path, lora, demo_model):
    with pytest.raises(ExportError, match="quantize '3bit' is not one of none, 8bit, 4bit"):
        export_merged(lora, base=str(demo_model), out=tmp_path / "x", quantize="3bit")
    with pytest.raises(ExportError, match="give the base model"):
        export_merged(lora, base=None, out=tmp_path / "x")
    with pytest.raises(ExportError, match="does not exist"):
        export_merged(tmp_path / "nope", base=str(demo_model), out=tmp_path / "x")


def test_tunehub_adapters_export_prints_the_directory(adapters, tmp_path):
    data_dir = adapters.store.path.parent
    code, out, _ = tunehub(
        "adapters", "export", "km@1", "--out", str(tmp_path / "cli"), "--data-dir", str(data_dir)
    )
    assert code == 0 and out.strip() == str((tmp_path / "cli").resolve())
    assert (tmp_path / "cli" / "model.safetensors").is_file()


def test_the_adapters_tab_exports_off_the_event_loop(adapters, tmp_path):
    import asyncio
    import inspect

    import gradio as gr

    from hub.auth import Auth
    from hub.ui import UiServices
    from hub.ui.adapters import adapters_tab

    services = UiServices(None, None, None, None, None, auth=Auth(None, None), jobs=None, adapters=adapters)
    with gr.Blocks() as blocks, gr.Tab("Adapters") as tab:
        adapters_tab(services, blocks, tab)
    button = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "adapters-export")
    handler = next(f for f in blocks.fns.values() if any(t[0] == button._id for t in f.targets)).fn
    assert inspect.iscoroutinefunction(handler)  # awaits the merge in a thread: the server keeps answering
    shown = asyncio.run(handler("km", str(tmp_path / "from-ui"), "4bit", "transformers", None))
    assert "4bit weights" in shown and str(tmp_path / "from-ui") in shown
    assert (tmp_path / "from-ui" / "config.json").is_file()
    with pytest.raises(gr.Error, match="already exists"):
        asyncio.run(handler("km", str(tmp_path / "from-ui"), "none", "transformers", None))
