"""The docker-compose examples' wiring (issue 17, item 6), checked without Docker or a GPU: the replicas
example puts two vLLM servers on one GPU each behind one hub that names both with --vllm-url, serve the
same model with runtime LoRA loading, and read the adapters the hub writes at the same path.

Run: python -m pytest tests/test_compose.py -q
"""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def services(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())["services"]


def test_the_replicas_example_puts_two_vllm_servers_behind_one_hub():
    found = services("docker-compose.replicas.yml")
    replicas = {name: s for name, s in found.items() if s.get("image", "").startswith("vllm/")}
    assert sorted(replicas) == ["vllm-a", "vllm-b"]
    gpus = [s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for s in replicas.values()]
    assert sorted(gpus) == [["0"], ["1"]]  # one GPU each
    models = {s["command"][0] for s in replicas.values()}
    assert len(models) == 1  # replicas of one base
    for replica in replicas.values():
        assert "--enable-lora" in replica["command"]
        assert replica["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
        assert "tunehub-data:/data:ro" in replica["volumes"]

    hub = found["tunehub"]["command"]
    assert [a for a in hub if a.startswith("--vllm-url=")] == [
        "--vllm-url=http://vllm-a:8000",
        "--vllm-url=http://vllm-b:8000",
    ]
    assert f"--model={models.pop()}" in hub and "--engine=vllm" in hub
    assert "tunehub-data:/data" in found["tunehub"]["volumes"]


def test_the_replicas_example_parses_with_the_flags_tunehub_serve_takes():
    """Every flag the hub's command gives is one `tunehub serve` accepts."""
    from hub.cli.main import build_parser

    command = services("docker-compose.replicas.yml")["tunehub"]["command"]
    assert command[:2] == ["tunehub", "serve"]
    args = [
        a.replace("${TUNEHUB_MODEL:-Qwen/Qwen2.5-0.5B-Instruct}", "Qwen/Qwen2.5-0.5B-Instruct")
        for a in command[1:]
    ]
    parsed = build_parser().parse_args(args)
    assert parsed.vllm_url == ["http://vllm-a:8000", "http://vllm-b:8000"]
