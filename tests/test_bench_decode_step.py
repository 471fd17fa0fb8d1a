"""bench/decode_step.py on the demo model: it loads the model as the hub does and prints the engine's one-row
step, its linear layers alone and fused, each against the bandwidth limit, in float32 and in bfloat16 (packed
for oneDNN, the fused matrices too).

Run: .venv/bin/python -m pytest tests/test_bench_decode_step.py -q
"""

from __future__ import annotations

import re

import pytest

from bench.decode_step import main


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_it_prints_the_step_the_matmuls_and_the_fused_matmuls_against_the_limit(demo_model, capsys, dtype):
    assert main(["--model", str(demo_model), "--dtype", dtype, "--threads", "1", "--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert f"{dtype}, 1 thread(s)" in out and "read bandwidth" in out
    for row in ("engine step (one row)", "its linear layers alone", "the same, q/k/v and gate/up fused"):
        assert re.search(rf"{re.escape(row)}\s+\|\s+[\d.]+ \|\s+[\d.]+ \|\s+\d+% \| [\d.]+ GB/s", out), row
    assert "the rest of the step" in out
