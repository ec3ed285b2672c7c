"""Atomic, resumable training checkpoints in save_pretrained format.

A checkpoint is a directory: the model (config.json + model.safetensors) and ``trainer_state.pt``
(optimizer, scheduler, RNG states, step). It is written to a temporary directory and renamed into place;
the previous version survives as ``<name>.old`` until the new one is complete, so a kill at any moment
leaves at least one whole checkpoint. The state file is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import torch

STATE_FILE = "trainer_state.pt"


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int, extra: dict) -> None:
    path = Path(path)
    for stale in path.parent.glob(f"{path.name}.tmp*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    model.save_pretrained(tmp)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        **({"cuda_rng": torch.cuda.get_rng_state()} if torch.cuda.is_initialized() else {}),
        "python_rng": random.getstate(),
        **extra,
    }
    torch.save(state, tmp / STATE_FILE)
    old = path.with_name(f"{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(path: Path) -> Path | None:
    """``path``, or its ``.old`` twin when a kill came between the two renames."""
    path = Path(path)
    for candidate in (path, path.with_name(f"{path.name}.old")):
        if (candidate / STATE_FILE).is_file():
            return candidate
    return None


def load_state(path: Path) -> dict:
    try:
        return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {exc})") from exc


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():  # sampling on CUDA draws its hash functions there
        torch.cuda.set_rng_state(state["cuda_rng"])
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
