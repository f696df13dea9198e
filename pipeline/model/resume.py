"""Resuming a training run from its last.pt: read and check the file against this run, then restore the state.

The train stage writes last.pt (pipeline.files.save_torch) with the head and optimiser settings it ran with;
a run resumes only with the same ones, and every refusal says the way out first (--no-resume or another --out).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.checkpoints import CheckpointError
from pipeline.model.config import HeadConfig

FIX = "start afresh with --no-resume (it will be overwritten), or train into another --out"
KEYS = ("head", "optim", "trainable", "optimizer", "scheduler", "best_mj", "history", "seconds", "epoch")


@dataclass
class Restored:
    """What a resumed run continues from."""

    next_epoch: int
    best_mj: float
    history: list[dict[str, Any]]
    seconds: float


def held_head(fields: Any) -> Any:
    """A checkpoint's head fields as this version dumps them (a field added since takes its default)."""
    try:
        return HeadConfig.model_validate(fields).model_dump(mode="json")
    except ValueError:  # not a head of this version: compared as held, so it differs
        return fields


def brief(text: str, limit: int = 240) -> str:
    """text cut at about `limit` characters (at a separator), with how much was left out."""
    if len(text) <= limit:
        return text
    cut = max(text.rfind(sep, 0, limit) for sep in (", ", "; "))
    cut = cut if cut > 0 else limit
    return f"{text[:cut]} ... ({len(text) - cut} more characters)"


def read_last(path: Path, head: HeadConfig, optim: Any) -> dict[str, Any] | None:
    """last.pt's contents when it belongs to this run (same head and optimiser settings); None without one."""
    if not path.is_file():
        return None
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # garbage, truncated, or a pickle of other objects: no common base class
        text = str(e).strip()
        cause = (
            "not a torch file of tensors and plain values"
            if text.startswith("Weights only load failed")
            else (text.splitlines()[0][:160] if text else type(e).__name__)
        )
        raise CheckpointError(f"{path}: cannot be read as a training checkpoint ({cause}); {FIX}") from e
    missing = [k for k in (*KEYS, "torch_rng") if k not in ck] if isinstance(ck, dict) else None
    if missing is None or missing:
        gone = ", ".join(missing[:4]) + (", ..." if len(missing or ()) > 4 else "") if missing else ""
        what = f"a {type(ck).__name__}" if missing is None else f"a checkpoint without {gone}"
        raise CheckpointError(f"{path}: not a last.pt of the train stage ({what}: a best.pt?); {FIX}")
    if held_head(ck["head"]) != head.model_dump(mode="json"):
        raise CheckpointError(f"{path}: was trained with another head config; {FIX}")
    now = optim.model_dump()
    if ck["optim"] != now:
        held = ck["optim"] if isinstance(ck["optim"], dict) else {}
        diffs = [
            f"{k} {held.get(k)!r} -> {now.get(k)!r}"
            for k in sorted({*held, *now})
            if held.get(k) != now.get(k)
        ]
        raise CheckpointError(
            f"{path}: was trained with other optimiser settings (the schedule would not match): {FIX}; "
            f"differences: {brief(', '.join(diffs))}"
        )
    return ck


def restore(ck: dict[str, Any], path: Path, model: Any, opt: Any, sched: Any) -> Restored:
    """Load last.pt's trainable weights, optimiser, scheduler and RNG into a run; what it continues from."""
    try:
        model.load_trainable_state_dict(ck["trainable"], source=path)
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["torch_rng"])
        return Restored(int(ck["epoch"]) + 1, ck["best_mj"], list(ck["history"]), ck["seconds"])
    except (CheckpointError, RuntimeError, ValueError, KeyError, TypeError) as e:
        cause = (
            str(e).strip().splitlines()[0].removeprefix(f"{path}: ") if str(e).strip() else type(e).__name__
        )
        # The way out first: the differences (a preset change: dozens of keys) are only the evidence.
        raise CheckpointError(
            f"{path}: does not fit this run (another preset or model?): {FIX}; differences: {brief(cause)}"
        ) from e
