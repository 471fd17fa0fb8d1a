"""Training on the bases users bring (issue 12): a directory saved from a GGUF-loaded model (its config still
says quant_method "gguf"), a base model without a chat template (refused for conversations with the flag
named, trained on plain prompt/completion strings or with `--chat-template`), the jobs the hub starts
with the template it serves, and a LoRA SFT job on the real SmolLM2-135M-Instruct whose result loads back.

Run: .venv/bin/python -m pytest tests/test_training_base_models.py -q   (add -m "not slow" to skip training)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from feedback.store import Store
from serving.chat_templates import read_chat_template
from tests.support.cli import tunehub_process
from tests.support.rows import write_jsonl
from tests.support.server import TEST_ENVIRONMENT
from training.demo.corpus import conversations
from training.jobs.queue import JobQueue, job_spec
from training.jobs.runner import JobRunner
from training.jobs.spec import JobSpec

REPO = Path(__file__).resolve().parents[1]
CLI_ENV = {**TEST_ENVIRONMENT, "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}  # all `tunehub` sees here


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gguf_saved_model(demo_model, tmp_path_factory) -> Path:
    """The demo model as a transformers directory saved from a GGUF-loaded model looks: its config keeps
    the `quantization_config` (quant_method "gguf") of the file it was read from."""
    out = tmp_path_factory.mktemp("gguf-saved") / "model"
    shutil.copytree(demo_model, out)
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gguf"}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


@pytest.fixture(scope="module")
def base_without_template(demo_model, tmp_path_factory) -> Path:
    """The demo model with the chat template removed from its tokenizer files: a base model as released."""
    out = tmp_path_factory.mktemp("no-template") / "model"
    shutil.copytree(demo_model, out)
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (out / "chat_template.jinja").unlink(missing_ok=True)
    return out


def conversation_rows(n: int) -> list[dict]:
    return [{"messages": messages} for messages in conversations(n, seed=5)]


def prompt_completion_rows(n: int) -> list[dict]:
    """The corpus's first exchanges as plain strings (TRL's standard, not conversational, form)."""
    rows = []
    for messages in conversations(n, seed=6):
        user = next(i for i, m in enumerate(messages) if m["role"] == "user")
        rows.append({"prompt": messages[user]["content"], "completion": " " + messages[user + 1]["content"]})
    return rows


# -- loading --------------------------------------------------------------------------------------------


def test_a_gguf_saved_config_loads_without_its_quantization_config(gguf_saved_model):
    from training.methods import MethodOptions, resolve_method
    from training.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(gguf_saved_model))
    plan = resolve_method(MethodOptions(method="lora"), task="causal_lm")
    model, _ = load_model(str(gguf_saved_model), plan, task="causal_lm", tokenizer=tokenizer)
    assert getattr(model.config, "quantization_config", None) is None
    reward, _ = load_model(str(gguf_saved_model), plan, task="seq_cls", tokenizer=tokenizer)
    assert getattr(reward.config, "quantization_config", None) is None and reward.config.num_labels == 1


def test_a_base_without_a_template_is_refused_for_conversations_naming_the_flag(base_without_template):
    from training.models import load_tokenizer

    with pytest.raises(ValueError, match="has no chat template.*--chat-template"):
        load_tokenizer(str(base_without_template))
    assert not load_tokenizer(str(base_without_template), conversational=False).chat_template
    chatml, _ = read_chat_template("chatml")
    assert load_tokenizer(str(base_without_template), chatml).chat_template == chatml


def test_a_chat_template_may_be_a_jinja_file_and_nonsense_is_refused(base_without_template, tmp_path):
    from training.models import load_tokenizer

    chatml, _ = read_chat_template("chatml")
    path = tmp_path / "mine.jinja"
    path.write_text(chatml)
    assert load_tokenizer(str(base_without_template), str(path)).chat_template == chatml
    with pytest.raises(ValueError, match="neither a Jinja template nor a readable file"):
        load_tokenizer(str(base_without_template), str(tmp_path / "missing.jinja"))


def test_plain_prompt_completion_strings_stay_strings(tmp_path):
    from training.data import load_training_data

    plain = load_training_data(write_jsonl(tmp_path / "plain.jsonl", prompt_completion_rows(20)), "sft")
    assert not plain.conversational
    assert all(isinstance(row["prompt"], str) and isinstance(row["completion"], str) for row in plain.train)
    chat = load_training_data(write_jsonl(tmp_path / "chat.jsonl", conversation_rows(20)), "sft")
    assert chat.conversational and "messages" in chat.train[0]


def test_sft_on_conversations_refuses_a_base_without_a_template_before_training(
    base_without_template, tmp_path
):
    from training.sft import SFTConfig, main

    data = write_jsonl(tmp_path / "chat.jsonl", conversation_rows(20))
    config = SFTConfig(model=str(base_without_template), data=str(data), output_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match="--chat-template"):
        main(config)
    assert not (tmp_path / "out").exists()


def test_conversations_train_on_their_last_reply_where_the_template_cannot_mark_replies(demo_model):
    from tests.support.real_model import smollm2_directory
    from training.models import load_tokenizer
    from training.sft import last_replies, markable

    assert markable(load_tokenizer(str(demo_model)))  # {% generation %} markers
    assert not markable(load_tokenizer(str(smollm2_directory())))  # none, and TRL cannot patch them in
    messages = conversations(1, seed=5)[0]
    (row,) = last_replies([{"messages": messages}])
    assert row == {"prompt": messages[:-1], "completion": messages[-1:]}


# -- the template a job trains with ---------------------------------------------------------------------


def test_the_hub_passes_the_template_it_serves_with_to_its_jobs(base_without_template, tmp_path):
    from hub.app import served_chat_template
    from hub.jobs_service import JobsService
    from hub.settings import Settings
    from serving.loader import load_local_engine
    from training.jobs.worker import build_config

    engine = load_local_engine(base_without_template, chat_template="chatml")
    chatml, _ = read_chat_template("chatml")
    settings = Settings(model=str(base_without_template), data_dir=tmp_path, chat_template="chatml")
    assert served_chat_template(engine, settings) == chatml
    assert served_chat_template(engine, Settings(model=str(base_without_template), data_dir=tmp_path)) is None

    data = write_jsonl(tmp_path / "chat.jsonl", conversation_rows(10))
    with Store(tmp_path / "feedback.db") as store:
        jobs = JobsService(store, str(base_without_template), tmp_path, chat_template=chatml)
        job = jobs.submit(stage="sft", method="lora", data=str(data), name="templated")
    spec = job_spec(job)
    assert spec.chat_template == chatml
    launch = {"params": {}, "parent_path": None}
    assert build_config(spec, launch, str(data), tmp_path / "out").chat_template == chatml
    # the job's own setting wins over the served template
    launch = {"params": {"chat_template": "{{ messages }}"}, "parent_path": None}
    assert build_config(spec, launch, str(data), tmp_path / "out").chat_template == "{{ messages }}"


# -- training -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_base_without_a_template_trains_on_prompt_completion_strings(base_without_template, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.result import METADATA_FILE
    from training.sft import SFTConfig, main

    data = write_jsonl(tmp_path / "plain.jsonl", prompt_completion_rows(64))
    out = main(
        SFTConfig(
            model=str(base_without_template), data=str(data), output_dir=str(tmp_path / "out"),
            max_steps=16, learning_rate=1e-3, per_device_batch_size=8, logging_steps=2, eval_fraction=0,
            loss_check_steps=0,
        )
    )  # fmt: skip
    metrics = json.loads((out / METADATA_FILE).read_text())["metrics"]
    assert metrics["train_loss"] < 0.8 * metrics["first_loss"], metrics["loss_curve"]
    assert not AutoTokenizer.from_pretrained(out).chat_template
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_without_template), str(out))


@pytest.mark.slow
def test_tunehub_train_chat_template_trains_conversations_on_a_base_without_one(
    base_without_template, tmp_path
):
    data = write_jsonl(tmp_path / "chat.jsonl", conversation_rows(40))
    refused = tunehub_process(
        "train", "sft", "--data", str(data), "--name", "plain", "--base", str(base_without_template),
        "--data-dir", str(tmp_path / "hub"), "--max-steps", "2", env=CLI_ENV, timeout=600,
    )  # fmt: skip
    assert refused.returncode == 1 and "--chat-template" in refused.stderr
    done = tunehub_process(
        "train", "sft", "--data", str(data), "--name", "chatml", "--base", str(base_without_template),
        "--data-dir", str(tmp_path / "hub"), "--max-steps", "4", "--batch-size", "4", "--chat-template", "chatml",
        "--dtype", "float32", "--set", "eval_fraction=0", "--set", "loss_check_steps=0", env=CLI_ENV, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    adapter = Path(done.stdout.strip().splitlines()[-1])
    metadata = json.loads((adapter / "tunehub_training.json").read_text())
    assert metadata["metrics"]["precision"] == "fp32" and metadata["config"]["precision"] == "fp32"
    from transformers import AutoTokenizer

    chatml, _ = read_chat_template("chatml")
    assert AutoTokenizer.from_pretrained(adapter).chat_template == chatml  # saved with what it trained on


def run_job(data_dir: Path, spec: JobSpec):
    """A job as the hub runs it: queued, then run by the job runner in a worker process."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with Store(data_dir / "feedback.db") as store:
        job = JobQueue(store).submit(spec)
        return JobRunner(store, data_dir).run_foreground(job.id)


@pytest.mark.slow
def test_a_dpo_job_trains_a_base_saved_from_a_gguf_model(gguf_saved_model, tmp_path):
    from tests.support.rows import preference_pairs

    data = write_jsonl(tmp_path / "pairs.jsonl", preference_pairs(48, seed=1, split="train"))
    spec = JobSpec(
        stage="dpo", method="lora", data=str(data), name="from-gguf", base=str(gguf_saved_model),
        params={"max_steps": 4, "per_device_batch_size": 4},
    )  # fmt: skip
    job = run_job(tmp_path / "hub", spec)
    assert job.status == "succeeded", job.error
    assert (Path(job.metrics["adapter_path"]) / "adapter_config.json").is_file()


@pytest.mark.slow
def test_a_lora_sft_job_on_smollm2_trains_and_its_result_loads_back(tmp_path):
    """The real model through the job runner with the default job settings (only the steps capped, to keep
    it to about a minute)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.support.real_model import smollm2_directory

    base = smollm2_directory()
    data = write_jsonl(tmp_path / "chat.jsonl", conversation_rows(48))
    spec = JobSpec(
        stage="sft", method="lora", data=str(data), name="smol", base=str(base), params={"max_steps": 2}
    )
    job = run_job(tmp_path / "hub", spec)
    assert job.status == "succeeded", job.error
    adapter = Path(job.metrics["adapter_path"])
    metadata = json.loads((adapter / "tunehub_training.json").read_text())
    assert metadata["metrics"]["steps"] == 2 and metadata["metrics"]["precision"] in ("bf16", "fp32")
    log = Path(job.log_path).read_text()
    assert f"sft: training in {metadata['metrics']['precision']} on cpu (auto: " in log  # says which and why
    assert "training on the last assistant reply" in log  # SmolLM2's template has no generation markers

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval()
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
