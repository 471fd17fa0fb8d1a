"""An engine for tests that build the hub's app to reach its routes, never to generate: the Engine protocol's
answers for a base that is never started (`build_app` asks for its replicas, step observer and template)."""

from __future__ import annotations

from collections.abc import Callable


class NoEngine:
    """Enough of an engine for build_app to wire its routes; never started, never asked to generate."""

    model_path = ""
    max_context = 16
    ready = False
    chat_template = None
    can_sleep = False

    def __init__(self, model_name: str = "no-engine") -> None:
        self.model_name = model_name

    def adapters(self) -> list:
        return []

    def replica_status(self) -> list[dict]:
        return []

    def observe_steps(self, callback: Callable[[int], None]) -> None:
        """No steps: nothing is ever generated."""

    async def health_problem(self) -> str | None:
        return "never started"

    async def start(self) -> None:
        """Nothing to start."""

    async def close(self) -> None:
        """Nothing to stop."""
