"""Real `tunehub serve` hubs on 127.0.0.1 for tests and benchmarks: in a process of their own (HubProcess,
stopped by its pid), or built by the same CLI code inside the test process and served by uvicorn in a thread
(InProcessHub: no interpreter start, imports or model load per hub; for tests that need no process of the
hub's own: no signals, no restart, no crash)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

TEST_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_WAIT_POLICY": "PASSIVE",
}


REPO = Path(__file__).resolve().parents[2]


def gone(pid: int, timeout: float = 30) -> bool:
    """Whether the process `pid` has ended within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A server on 127.0.0.1 a test started: awaited until /health answers, its log read back, stopped when the
    `with` block ends. Subclasses hold `port` and `log_path` and say how they start (`launch`), whether they
    still run (`stopped`: why not, else None) and how they `stop`."""

    port: int
    log_path: Path
    name = "tunehub"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> None:
        raise NotImplementedError

    def stopped(self) -> str | None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def start(self, timeout: float = 120):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            why = self.stopped()
            if why is not None:
                self.stop()
                raise RuntimeError(f"{self.name} {why}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not become healthy in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ServerProcess(Served):
    """A `tunehub` command serving on 127.0.0.1 in a process of its own, stopped by its pid.

    Subclasses (dataclasses) hold `port`, `process` and `log_path` and say what to run (`command`)."""

    process: subprocess.Popen | None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {**os.environ, **TEST_ENVIRONMENT}

    def launch(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.environment(), cwd=REPO
            )

    def stopped(self) -> str | None:
        code = self.process.poll()
        return None if code is None else f"exited with {code}"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@dataclass
class HubArguments:
    """What a test hub is started with (`tunehub serve`'s arguments: `serve_arguments`)."""

    model: Path
    data_dir: Path
    api_key: str | None = None
    admin_password: str | None = None
    extra_args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "serve.log"


@dataclass
class HubProcess(HubArguments, ServerProcess):
    process: subprocess.Popen | None = None
    name = "tunehub serve"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "hub.cli", *serve_arguments(self)]

    def environment(self) -> dict[str, str]:
        return hub_environment()


def serve_arguments(hub: HubArguments) -> list[str]:
    """`tunehub serve`'s arguments for a hub of either kind."""
    args = ["serve", "--model", str(hub.model), "--port", str(hub.port), "--data-dir", str(hub.data_dir)]
    args += ["--log-level", "warning", *hub.extra_args]
    if hub.api_key:
        args += ["--api-key", hub.api_key]
    if hub.admin_password:
        args += ["--admin-password", hub.admin_password]
    return args


def hub_environment() -> dict[str, str]:
    """The test environment without the secrets a developer's shell may hold: a hub gets them by flag."""
    env = {**os.environ, **TEST_ENVIRONMENT}
    env.pop("TUNEHUB_API_KEY", None)
    env.pop("TUNEHUB_ADMIN_PASSWORD", None)
    return env


@dataclass
class InProcessHub(HubArguments, Served):
    """`tunehub serve` in this process: the app `hub.cli.main.served_app` builds from the same arguments as
    HubProcess, served by a real uvicorn server on 127.0.0.1 in a thread of its own, its lifespan (engine,
    job runner) run there. Its log (data_dir/serve.log) has what this process logged while it ran: with two
    hubs up at once, both hubs' lines."""

    name = "tunehub serve (in process)"

    def __post_init__(self) -> None:
        self._server = None
        self._thread: threading.Thread | None = None
        self._log_handler: logging.Handler | None = None

    def launch(self) -> None:
        import uvicorn

        from hub.cli.main import build_parser, served_app

        self._capture_log()
        args = build_parser().parse_args(serve_arguments(self))
        settings, app = served_app(args, hub_environment())
        config = uvicorn.Config(
            app, host="127.0.0.1", port=settings.port, log_level="warning", timeout_graceful_shutdown=5
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"hub-{self.port}", daemon=True)
        self._thread.start()

    def stopped(self) -> str | None:
        return None if self._thread is not None and self._thread.is_alive() else "stopped before it served"

    def stop(self) -> None:
        """Shut down as SIGTERM would: the lifespan stops the runner and the engine."""
        if self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=60)
            self._thread = None
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
            logging.getLogger().setLevel(self._root_level)
            self._log_handler.close()
            self._log_handler = None

    def _capture_log(self) -> None:
        handler = logging.FileHandler(self.log_path)
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        self._root_level = root.level  # back at stop
        root.setLevel(logging.INFO)  # as `tunehub serve` logs
        root.addHandler(handler)
        self._log_handler = handler
