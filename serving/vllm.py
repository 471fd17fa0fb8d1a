"""VLLMEngine: the Engine interface over a vLLM server's OpenAI API, either one that runs elsewhere (remote) or
one this engine starts and supervises (managed: restarted with backoff when it dies, adapters re-loaded).

    engine = VLLMEngine("http://gpu-box:8000", api_key="...")                       # remote
    engine = VLLMEngine.managed(VLLMOptions(model=..., port=8000, log_path=...))  # managed
    await engine.start()
    async for delta in engine.generate(GenerationRequest(messages=[...])): ...

The same code is tested on CPU against `tunehub engine`, which speaks the same protocol; `score` (vLLM's
/tokenize and the ``prompt_logprobs`` of /v1/completions, which `tunehub engine` does not answer) is tested
against a stand-in transport that answers as vLLM documents, from a real local engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from .adapters import AdapterSpec, LoraSupport, check_adapter_name, check_lora_support, inspect_adapter
from .engine import BASE_ADAPTER, AdapterInfo, Delta, GenerationRequest, ScoreRequest, TokenScores
from .errors import (
    AdapterConflict,
    ContextTooLong,
    EngineError,
    EngineUnavailable,
    InvalidRequest,
    ModelNotFound,
)
from .probe import PROBE_INTERVAL_S, PROBE_TIMEOUT_S, HealthProbe
from .vllm_process import VLLM_LORA_RANKS, VLLMOptions, VLLMProcess

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_AFTER_S = 120.0  # up this long after a restart: the next crash starts the backoff again


def vllm_error(status: int, body: bytes | str, *, url: str = "vLLM") -> EngineError:
    """One of vLLM's error answers as tunehub's error. vLLM has used three shapes:
    `{"object": "error", "message", "type", "param", "code": 400}` (older), `{"error": {"message", "type",
    "param", "code": 400}}` (newer), and `{"error": "Unauthorized"}` from its API-key check."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    message, param = text.strip() or f"HTTP {status}", None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        inner = data.get("error", data)
        if isinstance(inner, str):
            message = inner
        elif isinstance(inner, dict) and inner.get("message"):
            message, param = str(inner["message"]), inner.get("param")
    if status == 401:
        return EngineUnavailable(
            f"the vLLM server at {url} refused tunehub's API key ({message}); check --vllm-api-key"
        )
    if status == 404:
        return ModelNotFound(message, param=param or "model")
    lowered = message.lower()
    if status == 409 or "already been loaded" in lowered or "already loaded" in lowered:
        return AdapterConflict(message, param=param or "lora_name")
    if status in (400, 413, 422):
        if "context length" in lowered:
            return ContextTooLong(message, param=param)
        return InvalidRequest(message, param=param)
    if status == 503:
        return EngineUnavailable(f"the vLLM server at {url} is not ready: {message}")
    error = EngineError(f"the vLLM server at {url} failed (HTTP {status}): {message}", param=param)
    error.status = 502
    return error


VLLM_LORA = LoraSupport(
    engine="vLLM serves",
    other_types="vLLM serves only LoRA adapters (merge it into full weights, or serve it with --engine local)",
    dora="which vLLM cannot load; merge it into the base or use --engine local",
    modules_to_save="which vLLM's LoRA loader rejects; train without modules_to_save or use --engine local",
    rank_advice=lambda spec, max_rank: (
        f"has rank {spec.rank}, above vLLM's --max-lora-rank {max_rank}; restart vLLM with a --max-lora-rank "
        f"of at least {spec.rank} (vLLM accepts "
        f"{', '.join(str(r) for r in VLLM_LORA_RANKS if r >= spec.rank) or 'none'})"
    ),
)


def check_adapter_for_vllm(spec: AdapterSpec, *, served_names: set[str], max_rank: int) -> None:
    """What vLLM can hot-load: plain LoRA (no DoRA, no modules_to_save) on this base, rank <= --max-lora-rank."""
    check_lora_support(spec, served_names=served_names, max_rank=max_rank, support=VLLM_LORA)


class VLLMEngine:
    """Generation and adapters through a vLLM server. Build a managed one with `VLLMEngine.managed(...)`."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        model_name: str | None = None,
        model_path: str = "",
        max_lora_rank: int = 64,
        process: VLLMProcess | None = None,
        health_interval_s: float = PROBE_INTERVAL_S,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.model_name = model_name or ""  # from /v1/models at start when not given
        self.model_path = model_path
        self.max_context = 0
        self.max_lora_rank = max_lora_rank
        self.process = process
        self.restarts = 0
        self._adapters: dict[str, AdapterInfo] = {}
        self._client: httpx.AsyncClient | None = None
        self._watcher: asyncio.Task | None = None
        self._up = False
        self._probe = HealthProbe(self.check_health, interval_s=health_interval_s)

    @classmethod
    def managed(cls, options: VLLMOptions, *, model_name: str | None = None) -> VLLMEngine:
        return cls(
            options.url,
            api_key=options.api_key,
            model_name=model_name or options.served_model_name,
            model_path=options.model,
            max_lora_rank=options.max_lora_rank,
            process=VLLMProcess(options),
        )

    # ----- lifecycle -----------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._up and (self.process is None or self.process.running)

    def replica_status(self) -> list[dict]:
        return []

    def observe_steps(self, callback) -> None:
        """vLLM's steps are its own (its /metrics has them): nothing to observe here."""

    @property
    def chat_template(self) -> str | None:
        return None  # vLLM applies the model's template (or its --chat-template) itself

    @property
    def can_sleep(self) -> bool:
        return self.process is not None and self.process.options.enable_sleep_mode

    async def health_problem(self) -> str | None:
        """None while the vLLM server answers its /health, else why not (naming its URL). A cached probe,
        so the hub's /health stays cheap: a remote server can die without `ready` noticing."""
        if not self.ready:
            return f"the vLLM server at {self.url} is not ready (starting or restarting)"
        return await self._probe.problem()

    async def check_health(self) -> str | None:
        """Ask the server's /health now (uncached): None when it answers 200, else why not, naming its URL."""
        if self._client is None:
            return f"the vLLM engine for {self.url} is not started"
        try:
            response = await self._client.get("/health", timeout=PROBE_TIMEOUT_S)
        except httpx.TimeoutException:
            return f"the vLLM server at {self.url} did not answer /health within {PROBE_TIMEOUT_S:g} s"
        except httpx.HTTPError as exc:
            return f"the vLLM server at {self.url} is not reachable: {type(exc).__name__}: {exc}"
        if response.status_code != 200:
            return f"the vLLM server at {self.url} answered /health with {response.status_code}"
        return None

    def _open_client(self) -> None:
        if self._client is not None:
            return
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        # no read timeout: a stream may wait long between tokens under load; connects fail fast
        self._client = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=httpx.Timeout(None, connect=10.0)
        )

    async def start(self) -> None:
        self._open_client()
        if self.process is not None:
            await self.process.start()
        await self._read_models()
        self._up = True
        if self.process is not None:
            self._watcher = asyncio.create_task(self._supervise(), name="tunehub-vllm-supervisor")
        log.info("vLLM engine: serving %s through %s", self.model_name, self.url)

    async def close(self) -> None:
        self._up = False
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        if self.process is not None:
            await self.process.stop()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _read_models(self) -> None:
        response = await self._request("GET", "/v1/models")
        cards = response.json().get("data") or []
        bases = [c for c in cards if not c.get("parent")]
        if not bases:
            raise EngineUnavailable(f"the vLLM server at {self.url} lists no base model in /v1/models")
        base = next((c for c in bases if c.get("id") == self.model_name), bases[0])
        if self.model_name and base.get("id") != self.model_name:
            raise EngineUnavailable(
                f"the vLLM server at {self.url} serves {[c.get('id') for c in bases]}, not {self.model_name!r}"
            )
        self.model_name = base["id"]
        self.max_context = int(base.get("max_model_len") or 0)
        self.model_path = self.model_path or str(base.get("root") or "")
        for card in cards:  # adapters the server already has (its --lora-modules, another hub's loads)
            if card.get("parent") and card["id"] not in self._adapters:
                self._adapters[card["id"]] = AdapterInfo(
                    name=card["id"],
                    path=Path(str(card.get("root") or "")),
                    base_model=self.model_name,
                    rank=0,  # vLLM does not say
                    target_modules=[],
                    loaded_at=float(card.get("created") or time.time()),
                )

    async def resync(self) -> None:
        """After the server answered again (it may have restarted and lost its adapters): read /v1/models
        anew, keep only the adapters it lists, and mark the engine up. A replica set (serving/replicas.py)
        calls it before it puts a replica back in rotation; raises EngineUnavailable if the server does not
        answer or serves another base model."""
        self._open_client()
        known = self._adapters
        self._adapters = {}
        await self._read_models()
        for name in self._adapters:
            if name in known:  # ours: keep what we know of it (its path, rank) rather than the listing's
                self._adapters[name] = known[name]
        self._up = True

    async def _supervise(self) -> None:
        """Restart a managed vLLM that died, with backoff, and load every adapter it had again."""
        attempt = 0
        while True:
            up_since = time.monotonic()
            code = await self.process.wait_exit()
            self._up = False
            if time.monotonic() - up_since > STABLE_AFTER_S:
                attempt = 0  # it had been up a while: this crash starts the backoff again
            log.error("vLLM exited with code %s; the end of its log:\n%s", code, self.process.log_tail())
            while True:
                delay = RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S) - 1)]
                attempt += 1
                log.warning("restarting vLLM in %.0fs (attempt %d)", delay, attempt)
                await asyncio.sleep(delay)
                try:
                    await self.process.start()
                    break
                except EngineUnavailable as exc:
                    log.error("%s", exc)
            self.restarts += 1
            await self._reload_adapters()
            self._up = True

    async def _reload_adapters(self) -> None:
        for info in list(self._adapters.values()):
            try:
                await self._post_adapter(
                    "/v1/load_lora_adapter", {"lora_name": info.name, "lora_path": str(info.path)}
                )
                log.info("re-loaded adapter %s into the restarted vLLM", info.name)
            except EngineError as exc:
                log.error("could not re-load adapter %s after the restart: %s", info.name, exc.message)
                self._adapters.pop(info.name, None)

    # ----- requests -------------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        if self._client is None:
            raise EngineUnavailable("the vLLM engine is not started")
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"the vLLM server at {self.url} is not reachable: {exc!r}") from exc
        if response.status_code != 200:
            raise vllm_error(response.status_code, response.content, url=self.url)
        return response

    def _body(self, request: GenerationRequest) -> tuple[str, dict]:
        sampling = request.sampling
        adapter = request.adapter
        body: dict = {
            "model": adapter if adapter and adapter != BASE_ADAPTER else self.model_name,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if sampling.max_tokens is not None:
            body["max_tokens"] = sampling.max_tokens
        if sampling.top_k and sampling.top_k > 0:
            body["top_k"] = sampling.top_k  # a vLLM extra: sent only when set
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.ignore_eos:
            body["ignore_eos"] = True
        if request.messages is not None:
            return "/v1/chat/completions", {**body, "messages": request.messages}
        return "/v1/completions", {**body, "prompt": request.prompt or ""}

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Stream one completion. Request errors raise before the first delta; closing this generator
        closes the upstream stream, and vLLM aborts the request."""
        if not self.ready or self._client is None:
            raise EngineUnavailable(f"the vLLM server at {self.url} is not ready (starting or restarting)")
        path, body = self._body(request)
        chat = request.messages is not None
        try:
            async with self._client.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    raise vllm_error(response.status_code, await response.aread(), url=self.url)
                final: Delta | None = None
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:  # vLLM reports failures inside a started stream this way
                        raise vllm_error(500, data, url=self.url)
                    for choice in chunk.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                        if choice.get("finish_reason"):
                            final = Delta(text=text or "", finish_reason=choice["finish_reason"])
                        elif text:
                            yield Delta(text=text)
                    usage = chunk.get("usage")
                    if usage and final is not None:
                        final.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                        final.completion_tokens = int(usage.get("completion_tokens") or 0)
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"the vLLM server at {self.url} dropped the stream: {exc!r}") from exc
        if final is None:
            raise EngineUnavailable(f"the vLLM server at {self.url} ended a stream without a finish reason")
        yield final  # held back until the usage chunk that follows it

    # ----- scoring --------------------------------------------------------------------------------------

    async def _tokens(self, model: str, request: ScoreRequest) -> list[int]:
        """The prompt's tokens as vLLM templates them (its /tokenize), then the continuation's."""
        if request.messages is not None:
            body = {"model": model, "messages": request.messages, "add_generation_prompt": True}
        else:
            body = {"model": model, "prompt": request.prompt or "", "add_special_tokens": False}
        tokens = list((await self._request("POST", "/tokenize", json=body)).json()["tokens"])
        prompt_tokens = len(tokens)
        tokens += list(request.continuation_ids)
        if request.continuation:
            body = {"model": model, "prompt": request.continuation, "add_special_tokens": False}
            tokens += list((await self._request("POST", "/tokenize", json=body)).json()["tokens"])
        return [prompt_tokens, *tokens]

    async def _score_one(self, request: ScoreRequest) -> TokenScores:
        adapter = request.adapter
        model = adapter if adapter and adapter != BASE_ADAPTER else self.model_name
        prompt_tokens, *tokens = await self._tokens(model, request)
        # vLLM's prompt_logprobs (a sampling extra of /v1/completions): for each prompt position after the
        # first, the log-probability of the token there, keyed by its id; max_tokens 1 is the least it takes
        body = {"model": model, "prompt": tokens, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}
        choice = (await self._request("POST", "/v1/completions", json=body)).json()["choices"][0]
        logprobs: list[float | None] = []
        for token, entry in zip(tokens, choice.get("prompt_logprobs") or [], strict=True):
            found = (entry or {}).get(str(token))
            logprobs.append(None if found is None else float(found["logprob"]))
        return TokenScores(tokens, logprobs, prompt_tokens)

    async def score(self, requests: list[ScoreRequest]) -> list[TokenScores]:
        """Each sequence's token log-probabilities, one /v1/completions request each, sent together (vLLM
        batches them)."""
        if not self.ready or self._client is None:
            raise EngineUnavailable(f"the vLLM server at {self.url} is not ready (starting or restarting)")
        return list(await asyncio.gather(*(self._score_one(r) for r in requests)))

    # ----- adapters -------------------------------------------------------------------------------------

    def adapters(self) -> list[AdapterInfo]:
        return list(self._adapters.values())

    def _served_names(self) -> set[str]:
        return {n for n in (self.model_name, self.model_path) if n}

    def check_adapter(self, name: str, path: Path) -> AdapterSpec:
        check_adapter_name(name, reserved={self.model_name})
        spec = inspect_adapter(Path(path))
        check_adapter_for_vllm(spec, served_names=self._served_names(), max_rank=self.max_lora_rank)
        return spec

    async def _post_adapter(self, path: str, body: dict) -> str:
        return (await self._request("POST", path, json=body)).text  # plain text on success

    async def load_adapter(self, name: str, path: Path) -> AdapterInfo:
        """Check the adapter here, then have vLLM load it (the path must be readable where vLLM runs)."""
        spec = await asyncio.to_thread(self.check_adapter, name, Path(path))
        if name in self._adapters:
            raise AdapterConflict(
                f"an adapter named {name!r} is already loaded; a retrained adapter needs a new name "
                "(name@v2): vLLM could answer from cache blocks of the old weights",
                param="lora_name",
            )
        resolved = spec.path.resolve()
        await self._post_adapter("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(resolved)})
        info = AdapterInfo(
            name=name,
            path=resolved,
            base_model=spec.base_model or self.model_name,
            rank=spec.rank,
            target_modules=spec.target_modules,
            loaded_at=time.time(),
        )
        self._adapters[name] = info
        return info

    async def unload_adapter(self, name: str) -> None:
        try:
            await self._post_adapter("/v1/unload_lora_adapter", {"lora_name": name})
        except ModelNotFound:
            self._adapters.pop(name, None)  # gone there (a restart elsewhere): forget it here too
            raise ModelNotFound(f"no adapter named {name!r} is loaded", param="lora_name") from None
        self._adapters.pop(name, None)

    # ----- sleep mode (one GPU shared with training) -----------------------------------------------------

    async def sleep(self, level: int = 1) -> None:
        """Free the GPU (level 1: weights to CPU, KV cache dropped; level 2: both dropped). Needs
        --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1 on the vLLM server."""
        await self._request("POST", "/sleep", params={"level": level})

    async def wake_up(self) -> None:
        await self._request("POST", "/wake_up")

    async def is_sleeping(self) -> bool:
        return bool((await self._request("GET", "/is_sleeping")).json().get("is_sleeping"))
