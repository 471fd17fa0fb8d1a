"""Registered adapters as the Adapters tab and `tunehub adapters` see them: the store's versions with their
status and whether the engine serves them, lineage down to the votes, load/unload, promote and rollback,
merge-and-export of full or quantized weights (a transformers directory, or one GGUF file for llama.cpp and
Ollama), and the re-load of registered adapters when the hub starts.

    adapters = AdapterService(store, chat_service)       # chat_service None: store-only (the CLI)
    adapters.rows()                                      # every version, newest name first
    adapters.lineage("km@2")                             # job, dataset snapshot, votes, parents
    adapters.promote("km@2"); adapters.rollback()    # unguarded: PromotionService.promote guards
    adapters.export("km@2", "/exports/km", quantize="4bit")   # merged full weights (blocking: use a thread)
    adapters.export("km@2", format="gguf", quantize="q8_0")  # DATA_DIR/exports/km-v2-gguf-q8_0/km-v2-q8_0.gguf
    await adapters.load("km@2"); await adapters.reload_registered()
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feedback.errors import Conflict, Invalid, NotFound
from feedback.records import Adapter
from training.jobs.publish import served_name
from training.jobs.spec import CHAT_STAGES
from training.methods import METHODS

log = logging.getLogger("tunehub.adapters")

_REF = re.compile(r"(?P<name>.+?)(?:@v?(?P<version>\d+))?")
EXPORT_FORMATS = ("transformers", "gguf")
RELOADED_STATUSES = ("candidate", "promoted")  # retired versions stay on disk but are not served at start


@dataclass(frozen=True)
class AdapterRow:
    """One adapter version as listed: its lineage fields and, if the engine serves it, under which name."""

    adapter: Adapter
    stage: str | None
    served: str | None  # the engine's name for it, when loaded

    @property
    def ref(self) -> str:
        return self.adapter.ref

    @property
    def chat_adapter(self) -> bool:
        """Whether the engine can answer with it: an adapter or a whole model (full, freeze) of a chat stage;
        a reward model scores, it does not chat."""
        return (self.stage is None or self.stage in CHAT_STAGES) and self.adapter.method in METHODS


def split_ref(ref: str) -> tuple[str, int | None]:
    """``name``, ``name@2`` or ``name@v2`` -> (name, version or None for the latest)."""
    match = _REF.fullmatch(ref.strip()) if isinstance(ref, str) else None
    if match is None or not match["name"]:
        raise Invalid(f"adapter {ref!r} is not name, name@N or name@vN", param="adapter")
    return match["name"], int(match["version"]) if match["version"] else None


class AdapterService:
    def __init__(self, store, chat=None) -> None:
        self.store = store
        self.chat = chat  # hub.chat_service.ChatService, or None where there is no engine (the CLI)

    # ----- reading -------------------------------------------------------------------------------------

    def get(self, ref: str) -> Adapter:
        return self.store.get_adapter(*split_ref(ref))

    def served_names(self) -> dict[str, str]:
        """Resolved adapter directory -> the engine's name for it."""
        if self.chat is None:
            return {}
        return {str(Path(info.path).resolve()): info.name for info in self.chat.engine.adapters()}

    def rows(self) -> list[AdapterRow]:
        """Every registered version, newest first."""
        served = self.served_names()
        adapters = sorted(self.store.list_adapters(), key=lambda a: a.id, reverse=True)
        return [
            AdapterRow(a, a.metrics.get("stage"), served.get(str(Path(a.path).resolve()))) for a in adapters
        ]

    def row(self, ref: str) -> AdapterRow:
        adapter = self.get(ref)
        served = self.served_names().get(str(Path(adapter.path).resolve()))
        return AdapterRow(adapter, adapter.metrics.get("stage"), served)

    def lineage(self, ref: str) -> dict[str, Any]:
        """The version, its job, the dataset snapshot and the votes it trained on, and its parents back to
        the first (each parent as name@version)."""
        adapter = self.get(ref)
        job = self.store.get_job(adapter.job_id) if adapter.job_id else None
        dataset_id = adapter.dataset_id or (job.dataset_id if job else None)
        dataset = self.store.get_dataset(dataset_id) if dataset_id else None
        parents, parent = [], adapter.parent
        while parent and parent not in parents and len(parents) < 100:
            parents.append(parent)
            try:
                parent = self.get(parent).parent
            except NotFound:
                break
        return {
            "adapter": adapter.ref,
            "status": adapter.status,
            "method": adapter.method,
            "stage": adapter.metrics.get("stage"),
            "base": adapter.base,
            "path": adapter.path,
            "created_at": adapter.created_at,
            "parents": parents,
            "job": None
            if job is None
            else {
                "id": job.id,
                "status": job.status,
                "data": job.params.get("data"),
                "only_new": job.params.get("only_new"),
                "params": job.params.get("params", {}),
                "served_as": job.adapter,
            },
            "dataset": None
            if dataset is None
            else {
                "id": dataset.id,
                "kind": dataset.kind,
                "source": dataset.source,
                "rows": dataset.n_rows,
                "content_hash": dataset.content_hash,
                "path": dataset.path,
            },
            "votes": len(dataset.vote_ids) if dataset else 0,
            "vote_ids": list(dataset.vote_ids) if dataset else [],
            "metrics": {k: v for k, v in adapter.metrics.items() if k != "loss_curve"},
        }

    # ----- status --------------------------------------------------------------------------------------

    def promote(self, ref: str) -> Adapter:
        """Promote a version; the one promoted before it (same base) is retired. Unguarded: the hub, the
        API and the CLI promote through PromotionService.promote, which checks the replay first."""
        adapter = self.get(ref)
        return self.store.promote_adapter(adapter.name, adapter.version)

    def rollback(self) -> Adapter:
        """Promote again the version the promoted one replaced; returns it."""
        return self.store.rollback_adapter()

    # ----- merge-and-export ----------------------------------------------------------------------------

    def export_dir(self, ref: str, quantize: str = "none", format: str = "transformers") -> Path:
        """Where an export goes unless told: ``DATA_DIR/exports/NAME-vN[-8bit|-4bit]``, or for GGUF
        ``DATA_DIR/exports/NAME-vN-gguf-f16|q8_0``."""
        adapter = self.get(ref)
        if format == "gguf":
            suffix = f"-gguf-{quantize}"
        else:
            suffix = "" if quantize == "none" else f"-{quantize}"
        return Path(self.store.path).parent / "exports" / f"{adapter.name}-v{adapter.version}{suffix}"

    def export(
        self,
        ref: str,
        out: str | Path | None = None,
        quantize: str | None = None,
        format: str = "transformers",
    ) -> Path:
        """Merge a version into its base and save it to a new directory: full (or 8-bit/4-bit) weights for
        transformers, or one GGUF file (f16 or q8_0) with an Ollama Modelfile beside it. Returns the directory
        (transformers) or the GGUF file. Blocking (seconds to minutes): the hub calls it in a worker thread.
        `Invalid` with the reason."""
        from training.merge import ExportError, export_merged

        if format not in EXPORT_FORMATS:
            raise Invalid(f"format {format!r} is not one of {', '.join(EXPORT_FORMATS)}", param="format")
        quantize = quantize or ("f16" if format == "gguf" else "none")
        adapter = self.get(ref)
        target = Path(out).expanduser() if out else self.export_dir(ref, quantize, format)
        try:
            if format == "gguf":
                from training.gguf_export import export_gguf

                name = f"{adapter.name}-v{adapter.version}"
                return export_gguf(adapter.path, base=adapter.base, out=target, quantize=quantize, name=name)
            return export_merged(adapter.path, base=adapter.base, out=target, quantize=quantize)
        except ExportError as e:
            raise Invalid(f"{adapter.ref} cannot be exported: {e}", param="out") from None

    # ----- the engine ----------------------------------------------------------------------------------

    def _engine(self):
        if self.chat is None:
            raise Conflict("no engine here: load and unload adapters in the running hub")
        return self.chat

    def served_name_for(self, adapter: Adapter) -> str:
        """The name it was (or would be) served under: its job's, else the next free one."""
        job_name = None
        if adapter.job_id:
            try:
                job_name = self.store.get_job(adapter.job_id).adapter
            except NotFound:
                job_name = None
        loaded = {info.name for info in self._engine().engine.adapters()}
        if job_name and job_name not in loaded:
            return job_name
        return served_name(adapter, loaded)

    async def load(self, ref: str) -> str:
        """Load a registered version into the engine (if it is not already); returns its served name."""
        chat = self._engine()
        row = self.row(ref)
        if row.served is not None:
            return row.served
        if not row.chat_adapter:
            raise Conflict(
                f"{row.ref} is a {row.stage or row.adapter.method} result, not a chat adapter the engine can serve"
            )
        if not Path(row.adapter.path).is_dir():
            raise NotFound(f"{row.ref}'s directory {row.adapter.path!r} is gone", param="adapter")
        name = self.served_name_for(row.adapter)
        await chat.load_adapter(name, Path(row.adapter.path))
        return name

    async def unload(self, ref: str) -> str:
        """Unload a registered version from the engine; returns the name it was served under."""
        chat = self._engine()
        row = self.row(ref)
        if row.served is None:
            raise Conflict(f"{row.ref} is not loaded")
        await chat.unload_adapter(row.served)
        return row.served

    async def reload_registered(self) -> list[str]:
        """At hub start: load every candidate or promoted chat adapter of a served base whose directory exists.
        One that fails to load is logged and skipped; the hub serves the rest."""
        chat = self._engine()
        paths = [engine.model_path for engine in chat.base_engines()]
        bases = {p for path in paths if path for p in (path, str(Path(path).resolve()))}
        loaded = []
        for row in reversed(self.rows()):  # oldest first, so earlier versions keep their plain names
            adapter = row.adapter
            if adapter.status not in RELOADED_STATUSES or not row.chat_adapter or row.served is not None:
                continue
            if bases and adapter.base not in bases and str(Path(adapter.base).resolve()) not in bases:
                continue  # trained on another base model
            if not Path(adapter.path).is_dir():
                log.warning("adapter %s not re-loaded: its directory %s is gone", adapter.ref, adapter.path)
                continue
            try:
                name = self.served_name_for(adapter)
                await chat.load_adapter(name, Path(adapter.path))
            except Exception as e:  # one bad adapter must not keep the hub from starting
                log.warning("adapter %s not re-loaded: %s", adapter.ref, e)
                continue
            loaded.append(name)
        if loaded:
            log.info("re-loaded %d registered adapters: %s", len(loaded), ", ".join(loaded))
        return loaded
