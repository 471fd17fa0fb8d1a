"""`tunehub estimate` (memory, time and cost per method) and `tunehub doctor` (what the machine can do)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from feedback.store import Store
from tests.support.cli import tunehub_process
from training.estimate import ModelShape, estimate, load_gpus, trainable_parameters

GIB = 1024**3


def test_parameter_counts_match_real_models(demo_model: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    shape = ModelShape.from_config(json.loads((demo_model / "config.json").read_text()))
    model = AutoModelForCausalLM.from_pretrained(demo_model)
    assert shape.parameters == sum(p.numel() for p in model.parameters())
    lora = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
    trained = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert trainable_parameters(shape, "lora", lora_rank=8) == trained
    # published sizes of the reference shapes
    assert round(ModelShape.from_size("8B").parameters / 1e9, 2) == 8.03
    assert round(ModelShape.from_size("0.5b").parameters / 1e9, 2) == 0.49


def test_memory_orders_the_methods_and_time_scales_with_tokens():
    shape, gpu = ModelShape.from_size("7B"), load_gpus(None)["A100-80GB"]
    rows = {r.method: r for r in estimate(shape, seq_len=1024, batch_size=2, gpu=gpu, tokens=1e8)}
    assert rows["full"].total > rows["freeze"].total > rows["lora"].total > rows["qlora"].total
    assert rows["full"].total > 100 * GIB  # 16 bytes a parameter: no full fine-tuning of 7B on one card
    assert rows["qlora"].total < 16 * GIB  # the point of QLoRA
    assert rows["ia3"].trainable < rows["lora"].trainable < rows["dora"].trainable
    double = {r.method: r for r in estimate(shape, seq_len=1024, batch_size=2, gpu=gpu, tokens=2e8)}
    assert double["lora"].hours == pytest.approx(2 * rows["lora"].hours)
    assert double["lora"].usd == pytest.approx(2 * rows["lora"].usd)
    no_ckpt = estimate(shape, seq_len=1024, batch_size=2, gradient_checkpointing=False, methods=("lora",))
    assert no_ckpt[0].activations > rows["lora"].activations


@pytest.mark.parametrize(
    "kwargs, bad",
    [({"seq_len": 0}, "seq_len"), ({"batch_size": -1}, "batch_size"), ({"mfu": 1.5}, "mfu")],
)
def test_estimate_names_the_bad_value(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        estimate(ModelShape.from_size("1.5B"), **{"seq_len": 512, "batch_size": 1, **kwargs})


def test_estimate_cli_table_json_and_an_edited_price_table(demo_model: Path, tmp_path: Path):
    out = tunehub_process(
        "estimate", "--model", str(demo_model), "--seq-len", "128", "--tokens", "2M", "--gpu", "T4"
    )
    assert out.returncode == 0, out.stderr
    for method in ("full", "freeze", "lora", "dora", "qlora", "ia3"):
        assert f"\n{method} " in out.stdout
    assert "623,488" in out.stdout  # the demo model's parameters, read from its config

    prices = tmp_path / "gpus.json"
    assert tunehub_process("estimate", "--write-prices", str(prices)).returncode == 0
    table = json.loads(prices.read_text())
    table["T4"]["usd_per_hour"] = 100.0
    prices.write_text(json.dumps(table))
    cheap = json.loads(
        tunehub_process("estimate", "--params", "7B", "--tokens", "1M", "--gpu", "T4", "--json").stdout
    )
    dear = tunehub_process(
        "estimate", "--params", "7B", "--tokens", "1M", "--gpu", "T4", "--prices", str(prices), "--json"
    )
    dear_rows = json.loads(dear.stdout)["rows"]
    assert dear_rows[0]["usd"] == pytest.approx(cheap["rows"][0]["usd"] * 100 / 0.35)

    table["T4"]["usd_per_hour"] = "cheap"
    prices.write_text(json.dumps(table))
    bad = tunehub_process("estimate", "--params", "7B", "--prices", str(prices))
    assert bad.returncode == 2 and "T4.usd_per_hour" in bad.stderr and "'cheap'" in bad.stderr
    for args, named in [
        (["--params", "huge"], "'huge'"),
        (["--gpu", "Z80"], "'Z80'"),
        (["--model", str(tmp_path)], "config.json"),
        (["--params", "7B", "--seq-len", "0"], "'0'"),
    ]:
        result = tunehub_process("estimate", *args)
        assert result.returncode == 2 and named in result.stderr, (args, result.stderr)


def test_doctor_passes_here_and_reports_the_machine(tmp_path: Path):
    with Store(tmp_path / "feedback.db") as store:
        store.add_generation(
            prompt=[{"role": "user", "content": "hi"}], model="m", text="hello", source="api"
        )
    result = tunehub_process("doctor", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stdout
    lines = {
        line.split()[1]: line for line in result.stdout.splitlines() if line[:4].strip() in ("OK", "WARN")
    }
    assert "2.13.0" in lines["torch"]
    assert "4-bit NF4 works" in result.stdout
    assert "intact, 0 votes" in lines["feedback"]
    assert "0 problem(s)" in result.stdout


def test_doctor_names_each_problem_with_its_fix(tmp_path: Path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = tunehub_process("doctor", "--data-dir", str(not_a_dir), "--vllm-url", "http://127.0.0.1:9/v1")
    assert result.returncode == 1
    assert f"FAIL  data dir        {not_a_dir} exists and is not a directory" in result.stdout
    assert "FAIL  vllm            http://127.0.0.1:9/health is not reachable" in result.stdout
    assert result.stdout.count("fix: ") == 2

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "feedback.db").write_bytes(b"this is not a database" * 100)
    result = tunehub_process("doctor", "--data-dir", str(broken))
    assert result.returncode == 1 and "FAIL  feedback store" in result.stdout
    assert "never recreates a damaged store" in result.stdout
    assert (broken / "feedback.db").read_bytes() == b"this is not a database" * 100  # untouched
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(broken / "feedback.db").execute("SELECT 1 FROM sqlite_master").fetchall()


def test_doctor_checks_the_model_it_is_given(tmp_path: Path, demo_model: Path):
    """--model: a directory's chat template, a GGUF file's architecture; nothing is converted."""
    from tests.test_model_source import copy_model, write_gguf

    result = tunehub_process("doctor", "--data-dir", str(tmp_path / "data"), "--model", str(demo_model))
    assert "OK    model           transformers directory, llama" in result.stdout
    assert "chat template" not in result.stdout

    bare = copy_model(demo_model, tmp_path / "bare", drop_template=True)
    result = tunehub_process("doctor", "--data-dir", str(tmp_path / "data"), "--model", str(bare))
    assert f"WARN  chat template   {bare} has none" in result.stdout
    assert "fix: pass --chat-template (chatml, llama3, mistral, zephyr or a .jinja file)" in result.stdout

    rwkv = write_gguf(tmp_path / "rwkv.gguf", "rwkv7")
    result = tunehub_process("doctor", "--data-dir", str(tmp_path / "data"), "--model", str(rwkv))
    assert result.returncode == 1
    assert "FAIL  model" in result.stdout and "'rwkv7' model, which transformers cannot read" in result.stdout
    assert not (tmp_path / "data" / "models").exists()


def test_estimate_names_a_gguf_file_it_cannot_read(tmp_path: Path):
    """A readable file's shape comes from its header (tests/test_real_model.py, on SmolLM2's file)."""
    from tests.test_model_source import write_gguf

    result = tunehub_process("estimate", "--model", str(write_gguf(tmp_path / "x.gguf", "rwkv7")))
    assert result.returncode == 2 and "'rwkv7' model, which transformers cannot read" in result.stderr
