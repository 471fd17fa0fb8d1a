"""The `tunehub` command line: help works, and `serve` refuses unsafe or invalid settings before it loads a
model or opens a port (binding beyond loopback needs both --admin-password and --api-key).

Run: .venv/bin/python -m pytest tests/test_cli.py -q
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.server import TEST_ENVIRONMENT, free_port

REPO = Path(__file__).resolve().parents[1]
QUICK_EXIT_S = 20  # generous for a loaded 2-core machine; a server that started would not exit at all


def run_cli(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, **TEST_ENVIRONMENT}
    env.pop("TUNEHUB_API_KEY", None)
    env.pop("TUNEHUB_ADMIN_PASSWORD", None)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "hub.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )
    return result, time.monotonic() - started


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_help():
    console_script = Path(sys.executable).with_name("tunehub")
    result = subprocess.run([str(console_script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout and "demo-model" in result.stdout

    serve_help, _ = run_cli("serve", "--help")
    assert serve_help.returncode == 0
    for flag in ("--model", "--host", "--port", "--api-key", "--admin-password", "--max-lora-rank"):
        assert flag in serve_help.stdout


def test_no_command_is_a_usage_error():
    result, _ = run_cli()
    assert result.returncode == 2
    assert "usage:" in result.stderr


@pytest.mark.parametrize(
    "host, secrets, missing, present",
    [
        ("0.0.0.0", [], ["--admin-password", "--api-key"], []),
        ("0.0.0.0", ["--api-key", "k"], ["--admin-password"], ["--api-key"]),
        ("0.0.0.0", ["--admin-password", "pw"], ["--api-key"], ["--admin-password"]),
        ("::", [], ["--admin-password", "--api-key"], []),
        ("192.168.1.20", ["--api-key", "k"], ["--admin-password"], ["--api-key"]),
    ],
    ids=["neither", "only api key", "only admin password", "ipv6 any", "lan address"],
)
def test_serve_beyond_loopback_needs_both_secrets(demo_model, host, secrets, missing, present):
    port = free_port()
    result, elapsed = run_cli(
        "serve", "--host", host, "--port", str(port), "--model", str(demo_model), *secrets
    )
    assert result.returncode != 0
    assert elapsed < QUICK_EXIT_S, f"took {elapsed:.1f}s: it went on to load the model"
    assert not listening(port)
    message = result.stderr
    assert f"refusing to listen on {host}" in message
    for flag in missing:
        assert flag in message
    for flag in present:  # only what is missing is named
        assert flag not in message
    assert "Traceback" not in message


@pytest.mark.parametrize(
    "port, words",
    [
        ("70000", ["70000", "1-65535"]),
        ("0", ["--port 0", "1-65535"]),
        ("-1", ["-1"]),
        ("http", ["invalid int"]),
    ],
)
def test_serve_refuses_an_invalid_port(demo_model, port, words):
    result, elapsed = run_cli("serve", "--port", port, "--model", str(demo_model))
    assert result.returncode == 2
    assert elapsed < QUICK_EXIT_S
    for word in words:
        assert word in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_bad_max_lora_rank(demo_model):
    result, elapsed = run_cli("serve", "--max-lora-rank", "0", "--model", str(demo_model))
    assert result.returncode == 2
    assert elapsed < QUICK_EXIT_S
    assert "--max-lora-rank 0" in result.stderr
