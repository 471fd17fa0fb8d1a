"""Resumable checkpoints of a PPO run (`training.ppo_loop`): the trainable weights, the value head, the
optimizer, schedule and gradient scaler, the RNG and the step log, in one file per step; only the newest
is kept. The prompt order is a function of the seed and the step, so a resumed run takes the same batches.

A job's runner restarts an interrupted job with ``resume``; `load_checkpoint` then continues from the
newest file in the run directory (a fresh start when there is none).
"""

from __future__ import annotations

from pathlib import Path

import torch


def save_checkpoint(loop, directory: Path | None, step: int) -> None:
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    trainable = {name: p.detach().cpu() for name, p in loop.model.named_parameters() if p.requires_grad}
    state = {
        "step": step,
        "trainable": trainable,
        "value_head": loop.value_head.state_dict(),
        "optimizer": loop.optimizer.state_dict(),
        "scheduler": loop.scheduler.state_dict(),
        "scaler": loop.scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "history": loop.history,
    }
    tmp = directory / f".checkpoint-{step}.pt"
    torch.save(state, tmp)
    tmp.replace(directory / f"checkpoint-{step}.pt")  # a kill mid-write leaves the previous one whole
    for old in directory.glob("checkpoint-*.pt"):
        if old.name != f"checkpoint-{step}.pt":
            old.unlink(missing_ok=True)


def load_checkpoint(loop, directory: Path | None) -> int:
    """Restore the newest checkpoint in `directory` into `loop`; returns its step (0 when there is none)."""
    if directory is None or not directory.is_dir():
        return 0
    files = sorted(directory.glob("checkpoint-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    if not files:
        return 0
    state = torch.load(files[-1], map_location="cpu", weights_only=False)  # our own file, not a download
    parameters = dict(loop.model.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            parameters[name].copy_(value.to(parameters[name].device))
    loop.value_head.load_state_dict(state["value_head"])
    loop.optimizer.load_state_dict(state["optimizer"])
    loop.scheduler.load_state_dict(state["scheduler"])
    loop.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    loop.history = state["history"]
    return state["step"]
