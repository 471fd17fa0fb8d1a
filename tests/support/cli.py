"""The `tunehub` command in tests: in this process with its output captured (fast, the usual way), or as
the real console command in a fresh process (where the test is about the process: its exit, its environment).

    code, out, err = tunehub("adapters", "list", "--data-dir", str(data_dir))
    key = tunehub_ok("users", "key", "rita", "--data-dir", str(data_dir)).strip()
    done = tunehub_process("train", "sft", ...)          # subprocess.CompletedProcess, text output
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

from tests.support.server import REPO, TEST_ENVIRONMENT


def tunehub(*args: str) -> tuple[int, str, str]:
    """Run `tunehub ARGS` in this process: (exit code, what it printed, what it printed to stderr)."""
    from hub.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def tunehub_ok(*args: str) -> str:
    """`tunehub` in this process, which must succeed (exit 0); what it printed."""
    code, out, err = tunehub(*args)
    assert code == 0, f"tunehub {' '.join(args)} exited {code}: {err}"
    return out


def tunehub_process(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m hub.cli ARGS` from the repository in a fresh process, in the test environment (this
    process's environment and TEST_ENVIRONMENT, or exactly `env` when given)."""
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **TEST_ENVIRONMENT} if env is None else env,
        cwd=REPO,
        timeout=timeout,
        input=input,
    )
