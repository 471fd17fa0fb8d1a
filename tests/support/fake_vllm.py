"""A stand-in for the `vllm` executable: takes `vllm serve MODEL ...` with vLLM's flags and environment, checks
them as vLLM would, and becomes `tunehub engine` (same pid, via exec), which speaks the same HTTP protocol.

FAKE_VLLM_MODE=fail   print an error and exit 1 at start-up (like a CUDA OOM)
FAKE_VLLM_MODE=hang   never answer /health
FAKE_VLLM_FAILURES=FILE  fail like "fail" while FILE holds a count above 0, counting it down
FAKE_VLLM_ARGS=FILE   append the pid, start time, argv and the VLLM_* environment as one JSON line to FILE
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    if os.environ.get("FAKE_VLLM_ARGS"):
        with open(os.environ["FAKE_VLLM_ARGS"], "a") as out:
            env = {k: v for k, v in os.environ.items() if k.startswith("VLLM_")}
            out.write(
                json.dumps({"pid": os.getpid(), "time": time.time(), "argv": sys.argv[1:], "env": env}) + "\n"
            )
    parser = argparse.ArgumentParser(prog="vllm")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("model")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name")
    parser.add_argument("--api-key", default=os.environ.get("VLLM_API_KEY"))
    parser.add_argument("--enable-lora", action="store_true")
    parser.add_argument("--max-loras", type=int, default=1)
    parser.add_argument("--max-lora-rank", type=int, default=16)
    parser.add_argument("--max-cpu-loras", type=int)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--enable-sleep-mode", action="store_true")
    args = parser.parse_args()
    print(f"INFO fake vllm {args.model} on {args.host}:{args.port}", flush=True)
    if args.max_lora_rank not in (8, 16, 32, 64, 128, 256, 320, 512):
        sys.exit(f"error: argument --max-lora-rank: invalid choice: {args.max_lora_rank}")
    mode = os.environ.get("FAKE_VLLM_MODE", "")
    failures = Path(os.environ.get("FAKE_VLLM_FAILURES") or "/nonexistent")
    if failures.is_file() and int(failures.read_text() or 0) > 0:
        failures.write_text(str(int(failures.read_text()) - 1))
        mode = "fail"
    if mode == "fail":
        print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (fake)", flush=True)
        sys.exit(1)
    if mode == "hang":
        while True:
            time.sleep(60)
    engine = [sys.executable, "-m", "hub.cli", "engine", "--model", args.model, "--host", args.host]
    engine += ["--port", str(args.port), "--max-lora-rank", str(args.max_lora_rank), "--log-level", "warning"]
    if args.served_model_name:
        engine += ["--served-model-name", args.served_model_name]
    if args.api_key:
        engine += ["--api-key", args.api_key]
    os.chdir(REPO)
    os.execv(sys.executable, engine)


if __name__ == "__main__":
    main()
