"""Model sources, compute dtype and chat templates (issue 12): what `--model`, `--dtype` and `--chat-template`
accept, and the clear errors for what they do not. The real GGUF file (SmolLM2) is exercised end to end in
tests/test_real_model.py; here GGUF files are written small with the gguf package's own writer.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving.chat_templates import ChatTemplateError, read_chat_template, shipped_templates
from serving.engine import GenerationRequest, SamplingParams
from serving.loader import load_local_engine, pick_dtype
from serving.model_source import (
    ModelSourceError,
    file_digest,
    find_gguf,
    looks_like_path,
    resolve_model_source,
    strip_gguf_quantization,
)
from tests.support.server import TEST_ENVIRONMENT

REPO = Path(__file__).resolve().parents[1]


def write_gguf(path: Path, architecture: str) -> Path:
    """A GGUF file that declares `architecture` and holds one tensor."""
    import gguf
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def copy_model(source: Path, target: Path, *, drop_template: bool = False, config_extra: dict | None = None):
    """A copy of a model directory, optionally without its chat template or with extra config keys."""
    shutil.copytree(source, target)
    if drop_template:
        (target / "chat_template.jinja").unlink(missing_ok=True)
        tokenizer_config = target / "tokenizer_config.json"
        config = json.loads(tokenizer_config.read_text())
        config.pop("chat_template", None)
        tokenizer_config.write_text(json.dumps(config))
    if config_extra:
        config = json.loads((target / "config.json").read_text())
        config.update(config_extra)
        (target / "config.json").write_text(json.dumps(config))
    return target


def answer(engine, content: str, max_tokens: int = 24) -> tuple[str, str]:
    """(text, finish_reason) of one greedy chat answer from a LocalEngine started and closed here."""

    async def run() -> tuple[str, str]:
        await engine.start()
        try:
            request = GenerationRequest(
                messages=[{"role": "user", "content": content}],
                sampling=SamplingParams(max_tokens=max_tokens, temperature=0),
            )
            text, finish = "", ""
            async for delta in engine.generate(request):
                text += delta.text
                finish = delta.finish_reason or finish
            return text, finish
        finally:
            await engine.close()

    return asyncio.run(run())


# ----- where a model comes from ---------------------------------------------------------------------------


def test_a_gguf_file_or_a_directory_holding_one_is_found(tmp_path):
    file = write_gguf(tmp_path / "one" / "model.Q4_K_M.gguf", "llama")
    assert find_gguf(str(file)) == file
    assert find_gguf(str(file.parent)) == file
    (file.parent / "config.json").write_text("{}")  # a transformers directory is loaded as one
    assert find_gguf(str(file.parent)) is None
    assert find_gguf("HuggingFaceTB/SmolLM2-135M-Instruct") is None  # a hub id


def test_a_directory_of_several_gguf_files_or_a_missing_file_is_refused_by_name(tmp_path):
    write_gguf(tmp_path / "q4.gguf", "llama")
    write_gguf(tmp_path / "q8.gguf", "llama")
    with pytest.raises(ModelSourceError, match=r"holds 2 GGUF files \(q4.gguf, q8.gguf\); name the one"):
        find_gguf(str(tmp_path))
    with pytest.raises(ModelSourceError, match=r"'nowhere/model.gguf': no such GGUF file"):
        find_gguf("nowhere/model.gguf")


def test_an_architecture_transformers_cannot_read_from_gguf_is_named_with_those_it_can(tmp_path):
    file = write_gguf(tmp_path / "rwkv.gguf", "rwkv7")
    with pytest.raises(ModelSourceError) as caught:
        resolve_model_source(str(file), tmp_path / "cache")
    message = str(caught.value)
    assert "holds a 'rwkv7' model, which transformers cannot read from GGUF" in message
    assert "llama" in message and "qwen2" in message and "gemma2" in message
    assert not any((tmp_path / "cache").glob("rwkv*")), "nothing half-converted is left in the cache"


def test_the_file_hash_is_remembered_by_path_size_and_mtime(tmp_path):
    file = tmp_path / "weights.gguf"
    file.write_bytes(b"a" * 1000)
    index = tmp_path / "digests.json"
    first = file_digest(file, index)
    assert json.loads(index.read_text()) == {f"{file.resolve()}:1000:{file.stat().st_mtime_ns}": first}
    file.write_bytes(b"b" * 1000)  # same size, new content and mtime: hashed again
    os.utime(file, ns=(1, 1))
    assert file_digest(file, index) != first


def test_directories_and_hub_ids_pass_through_unchanged(tmp_path, demo_model):
    source = resolve_model_source(str(demo_model), tmp_path)
    assert (source.path, source.name, source.gguf_file) == (str(demo_model), demo_model.name, None)
    hub_id = resolve_model_source("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path)
    assert (hub_id.path, hub_id.name) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    )


def test_a_missing_path_is_refused_by_name_and_a_hub_id_is_not_taken_for_one(tmp_path):
    for given in (str(tmp_path / "absent"), "./absent-model", "~/absent-model", "models/org/absent"):
        with pytest.raises(ModelSourceError, match="no such file or directory") as caught:
            resolve_model_source(given, tmp_path)
        assert repr(given) in str(caught.value)
    for hub_id in ("gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        assert not looks_like_path(hub_id)
        assert resolve_model_source(hub_id, tmp_path).path == hub_id


def test_a_hub_id_that_cannot_be_fetched_is_named_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on this machine: the hub is out of reach
    with pytest.raises(ModelSourceError) as caught:
        load_local_engine("tunehub-tests/no-such-model")
    message = str(caught.value)
    assert "--model 'tunehub-tests/no-such-model' is not a local directory or file" in message
    assert "as a Hugging Face Hub id it could not be loaded: " in message


def test_a_directory_saved_from_a_gguf_load_serves_without_its_quantization_config(tmp_path, demo_model):
    """A transformers directory written from a GGUF-loaded model keeps quantization_config (quant_method
    "gguf"); its weights are already plain, so the engine drops it and serves."""
    copy = copy_model(
        demo_model, tmp_path / "from-gguf", config_extra={"quantization_config": {"quant_method": "gguf"}}
    )
    engine = load_local_engine(copy, dtype="float32")
    assert not hasattr(engine._model.base.config, "quantization_config")
    text, _ = answer(engine, "Convert 3 km to m.")
    assert text


def test_strip_gguf_quantization_leaves_other_quantization_alone():
    from transformers import LlamaConfig

    config = LlamaConfig(quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True})
    assert strip_gguf_quantization(config) is False and config.quantization_config["load_in_4bit"]
    config = LlamaConfig(quantization_config={"quant_method": "gguf"})
    assert strip_gguf_quantization(config) is True and not hasattr(config, "quantization_config")


@pytest.mark.parametrize(
    "name, why", [("absent.gguf", "no such GGUF file"), ("absent", "no such file or directory")]
)
def test_serve_refuses_a_missing_model_file_or_directory_before_loading_anything(tmp_path, name, why):
    result = subprocess.run(
        [sys.executable, "-m", "hub.cli", "serve", "--model", str(tmp_path / name)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **TEST_ENVIRONMENT},
        timeout=120,
    )
    assert result.returncode == 2
    assert f"tunehub: --model '{tmp_path / name}': {why}" in result.stderr
    assert "Traceback" not in result.stderr


# ----- compute dtype --------------------------------------------------------------------------------------


def test_dtype_auto_follows_the_hardware_and_a_bad_dtype_is_named():
    import torch

    from serving.loader import cpu_has_bf16

    dtype, why = pick_dtype("auto", "cpu")
    assert dtype == (torch.bfloat16 if cpu_has_bf16() else torch.float32) and why.startswith("auto: ")
    assert pick_dtype("float16", "cpu") == (torch.float16, "asked for")
    with pytest.raises(ValueError, match=r"dtype='fp8' is not one of auto, float32, bfloat16, float16"):
        pick_dtype("fp8", "cpu")


def test_the_engine_computes_in_the_dtype_asked_for(demo_model):
    import torch

    engine = load_local_engine(demo_model, dtype="bfloat16")
    assert engine._model.base.dtype == torch.bfloat16
    text, _ = answer(engine, "Convert 3 km to m.")
    assert text


# ----- chat templates -------------------------------------------------------------------------------------


def test_a_model_without_a_chat_template_is_refused_naming_the_flag(tmp_path, demo_model):
    bare = copy_model(demo_model, tmp_path / "bare", drop_template=True)
    with pytest.raises(ChatTemplateError, match=r"has no chat template; give it one with --chat-template"):
        load_local_engine(bare, dtype="float32")


def test_a_shipped_template_serves_a_model_that_has_none(tmp_path, demo_model):
    bare = copy_model(demo_model, tmp_path / "bare", drop_template=True)
    engine = load_local_engine(bare, dtype="float32", chat_template="chatml")
    prompt = engine.tokenizer.decode(
        engine.prompt_ids(GenerationRequest(messages=[{"role": "user", "content": "Hi"}]))
    )
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    text, _ = answer(engine, "Convert 3 km to m.")
    assert text


def test_a_template_file_is_read_and_a_bad_name_lists_the_shipped_ones(tmp_path):
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    assert read_chat_template(str(template)) == (template.read_text(), None)
    assert {"chatml", "llama3", "mistral", "zephyr"} <= set(shipped_templates())
    with pytest.raises(
        ChatTemplateError, match=r"'vicuna' is neither a file nor one of the shipped templates"
    ):
        read_chat_template("vicuna")
    (tmp_path / "notes.txt").write_text("just words")
    with pytest.raises(ChatTemplateError, match=r"holds no Jinja template"):
        read_chat_template(str(tmp_path / "notes.txt"))


def test_every_shipped_template_marks_assistant_turns_for_assistant_only_loss(demo_model):
    """TRL's assistant-only loss needs {% generation %}: the mask covers the answer and its turn end."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(demo_model))
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]
    for name in shipped_templates():
        tokenizer.chat_template, _ = read_chat_template(name)
        out = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        marked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
        assert "Hello there" in tokenizer.decode(marked), name
        assert "Hi" not in tokenizer.decode(marked), name


def test_a_turn_end_that_is_not_one_token_stops_the_answer_as_a_stop_string(demo_model):
    """On a base that never saw a template's turn marker, the marker arrives as several tokens: the engine
    ends the answer where it starts, as a stop string, and never shows it."""
    from serving.local import LocalEngine

    plain = load_local_engine(demo_model, dtype="float32")
    full, _ = answer(plain, "Convert 3 km to m.")
    assert " = " in full, full  # the demo model answers in a formula: "3 km = 3000 m."
    engine = LocalEngine(plain._model.base, plain.tokenizer, model_name="m", turn_end=" = ")
    text, finish = answer(engine, "Convert 3 km to m.")
    assert (text, finish) == (full.split(" = ")[0], "stop")


@pytest.mark.slow
def test_greedy_answers_in_bfloat16_are_as_right_as_float32s_on_the_checkable_prompts(full_demo_model):
    """The auto dtype on a CPU with bfloat16 instructions: accuracy within 2 points of float32, per family
    and overall, through the engine as the hub serves (batched)."""
    from training.demo.corpus import FAMILIES, checkable_prompts, is_correct

    prompts = checkable_prompts(100 * len(FAMILIES), seed=4321)

    def accuracy(dtype: str) -> dict[str, float]:
        engine = load_local_engine(full_demo_model, dtype=dtype)

        async def run() -> list[str]:
            await engine.start()
            try:

                async def one(prompt) -> str:
                    request = GenerationRequest(
                        messages=prompt.messages, sampling=SamplingParams(max_tokens=24, temperature=0)
                    )
                    return "".join([delta.text async for delta in engine.generate(request)])

                return await asyncio.gather(*(one(p) for p in prompts))
            finally:
                await engine.close()

        replies = asyncio.run(run())
        right = dict.fromkeys(FAMILIES, 0)
        for prompt, reply in zip(prompts, replies):
            right[prompt.family] += is_correct(prompt, reply)
        scores = {family: right[family] / 100 for family in FAMILIES}
        return {**scores, "macro": sum(scores.values()) / len(FAMILIES)}

    float32, bfloat16 = accuracy("float32"), accuracy("bfloat16")
    assert abs(bfloat16["macro"] - float32["macro"]) <= 0.02, (float32, bfloat16)
