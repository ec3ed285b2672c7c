"""The device a training process uses, and joining and leaving the torchrun process group (gloo on CPU, nccl on
CUDA)."""

from __future__ import annotations

import os
import traceback
from contextlib import contextmanager

import torch
import torch.distributed as dist


def training_device(requested: str) -> torch.device:
    """``requested`` "cuda" (this process's GPU under torchrun: LOCAL_RANK), "cpu", or "auto": cuda when torch sees
    a CUDA device."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    index = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def is_first_rank() -> bool:
    """Whether this process prints notes: rank 0 under torchrun, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def process_group(device: torch.device):
    """Yield ``(rank, world_size)``: ``(0, 1)`` outside torchrun; under it, join the group and leave it on exit.

    Run the DistributedDataParallel wrapper in a function called inside this block, so that it is freed
    before the group is. The order matters: DDP's Reducer holds a reference to the group and its destructor
    keeps the GIL, while gloo's worker threads may still need the GIL to free a finished all-reduce; if the
    Reducer drops the last reference, the group's destructor joins those threads under the GIL and the
    process hangs at exit. ``destroy_process_group`` drops it without the GIL.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield 0, 1
        return
    joined_here = not dist.is_initialized()
    if joined_here:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield dist.get_rank(), world
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)  # frames of the failed call hold the DDP wrapper
        raise
    finally:
        if joined_here:
            dist.destroy_process_group()
