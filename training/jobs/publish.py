"""A finished job's result: renamed into the adapters directory, registered in the store with its lineage
(dataset snapshot, parent, config, metrics), and the name the engine serves it under.

    adapter = register_result(store, job_id, spec, job_dir / "adapter", data_dir / "adapters",
                              parent_ref="polite@1", dataset_id="ds_...")
    served_name(adapter, loaded={"polite"})       # "polite@v2": a new name, never new weights under an old one
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from feedback.errors import NotFound
from feedback.records import Adapter
from training.jobs.spec import JobError, JobSpec
from training.result import ADAPTER_CONFIG, METADATA_FILE

_VERSIONED = re.compile(r"(?P<name>.+)@v?(?P<version>\d+)")


def resolve_parent(store, parent: str | None) -> tuple[str | None, str | None]:
    """(the store's ``name@version`` of the parent, its directory) for an adapter name (``name``, ``name@2``,
    ``name@v2``: the latest or that version) or an adapter directory; raises `JobError` on ``parent``."""
    if parent is None:
        return None, None
    if not isinstance(parent, str) or not parent.strip():
        raise JobError(f"parent must be an adapter name or directory, got {parent!r}", "parent")
    path = Path(parent).expanduser()
    if path.is_dir():
        if not (path / ADAPTER_CONFIG).is_file():
            raise JobError(f"parent {parent!r} is a directory without {ADAPTER_CONFIG}", "parent")
        path = path.resolve()
        known = [a for a in store.list_adapters() if Path(a.path).resolve() == path]
        return (known[-1].ref if known else None), str(path)
    match = _VERSIONED.fullmatch(parent)
    name, version = (match["name"], int(match["version"])) if match else (parent, None)
    try:
        adapter = store.get_adapter(name, version)
    except NotFound:
        raise JobError(
            f"parent {parent!r} is neither a registered adapter (name, name@N) nor an adapter directory",
            "parent",
        ) from None
    return adapter.ref, adapter.path


def newest_reward_model(store) -> Adapter | None:
    """The newest registered reward model (a `reward` job's adapter) that is not retired and is on disk: what
    scores a prompt stage's answers when its job names none."""
    rewards = [
        a
        for a in store.list_adapters()
        if a.metrics.get("stage") == "reward" and a.status != "retired" and Path(a.path).is_dir()
    ]
    return max(rewards, key=lambda a: a.id) if rewards else None


def register_result(
    store,
    job_id: str,
    spec: JobSpec,
    output_dir: Path,
    adapters_dir: Path,
    *,
    parent_ref: str | None,
    dataset_id: str | None,
) -> Adapter:
    """Move the trained result to ``adapters_dir/NAME/JOB_ID`` (one rename on one filesystem, so no
    half-written adapter is ever registered) and register it as a candidate version of ``spec.name``."""
    metadata = json.loads((output_dir / METADATA_FILE).read_text())
    if dataset_id is None:  # a file or directory: record what was read, as an imported snapshot
        data = metadata["dataset"]
        dataset_id = store.add_dataset(
            kind=data["kind"],
            format=data["format"],
            content_hash=data["content_hash"],
            n_rows=data["n_train"] + data["n_eval"],
            n_train=data["n_train"],
            n_eval=data["n_eval"],
            path=data["path"],
            source="import",
        ).id
    target = adapters_dir / spec.name / job_id
    target.parent.mkdir(parents=True, exist_ok=True)
    if output_dir.resolve() != target.resolve():
        os.replace(output_dir, target)
    metrics = dict(metadata.get("metrics") or {})
    metrics["stage"] = spec.stage
    return store.add_adapter(
        spec.name,
        base=metadata["base"],
        method=metadata["method"],
        path=str(target.resolve()),
        parent=parent_ref,
        job_id=job_id,
        dataset_id=dataset_id,
        metrics=metrics,
        status="candidate",
    )


def served_name(adapter: Adapter, loaded: set[str]) -> str:
    """The engine name of a new adapter version: its plain name the first time, ``NAME@vN`` when the name
    has an earlier version or is already served (new weights under a served name could answer from stale
    caches)."""
    if adapter.version == 1 and adapter.name not in loaded:
        return adapter.name
    return f"{adapter.name}@v{adapter.version}"
