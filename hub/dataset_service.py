"""Dataset exports for the Data tab and `tunehub export`: counts of what was collected, a preview of each
export that records nothing, and export files written under the data directory's exports/ folder."""

from __future__ import annotations

import time
from pathlib import Path

from feedback.exports import Export, export_dataset
from feedback.records import VoteCounts
from feedback.store import Store

PREVIEW_ROWS = 3


class DatasetService:
    def __init__(self, store: Store, exports_dir: Path) -> None:
        self.store = store
        self.exports_dir = exports_dir

    def counts(self) -> VoteCounts:
        return self.store.counts()

    def preview(
        self, kind: str, format: str = "trl", mode: str = "dpo", exclude_reasons: list[str] | None = None
    ) -> Export:
        """The export as it would be now, without writing files or recording a snapshot (``mode``: how a
        ranking becomes pairs; ``exclude_reasons``: votes with any of these reasons left out)."""
        return export_dataset(
            self.store, kind, format=format, mode=mode, snapshot=False, exclude_reasons=exclude_reasons
        )

    def export(self, kind: str, format: str = "trl") -> Export:
        """Write ``<kind>-<format>-<time>.jsonl`` (and its ``.eval.jsonl``) and record the snapshot."""
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 1_000_000:06d}"
        out = self.exports_dir / f"{kind}-{format}-{stamp}.jsonl"
        return export_dataset(self.store, kind, out, format=format)
